"""The first-fit search (``subr_extent.first_fit``: kernel VA for uvm_km_valloc, swap
slots for uvm_swap_alloc) against the plain definition, on random maps: the windowed
search must find exactly the first run of free units at or after the hint, across window
boundaries, or none."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from smp.kern.subr_extent import first_fit


def plain_first_fit(used: np.ndarray, lo: int, end: int, npages: int) -> int:
    run = 0
    for j in range(lo, end):
        run = run + 1 if used[j] == 0 else 0
        if run == npages:
            return j - npages + 1
    return -1


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 9000), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1),
       st.integers(1, 400), st.data())
def test_the_windowed_first_fit_finds_the_plain_first_fit(n, density, seed, npages, data):
    rng = np.random.default_rng(seed)
    used = (rng.random(n) < density).astype(np.uint8)
    if data.draw(st.booleans()):          # a hole of exactly npages somewhere, maybe far
        at = data.draw(st.integers(0, max(0, n - npages)))
        used[at:at + npages] = 0
        if at > 0:
            used[at - 1] = 1
        if at + npages < n:
            used[at + npages] = 1
    lo = data.draw(st.integers(0, n))
    end = data.draw(st.integers(lo, n))
    assert first_fit(used, lo, end, npages) == plain_first_fit(used, lo, end, npages)


@given(st.integers(1, 400), st.integers(0, 50), st.data())
@settings(max_examples=200, deadline=None)
def test_a_run_cut_by_a_window_boundary_is_found(npages, lo, data):
    """The only hole straddles the end of the first (or the second) search window."""
    first = max(1024, 4 * npages)
    boundary = lo + data.draw(st.sampled_from([first, first + 4 * first]))
    at = boundary - data.draw(st.integers(1, npages)) if npages > 1 else boundary
    used = np.ones(boundary + 2 * npages + 8, dtype=np.uint8)
    used[at:at + npages] = 0
    assert first_fit(used, lo, len(used), npages) == at
    assert plain_first_fit(used, lo, len(used), npages) == at
