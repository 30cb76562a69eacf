"""First fit in a map of allocation units (the part of kern/subr_extent.c the model needs).

NetBSD manages swap slots with extent(9); the model keeps both of its unit maps -- swap
slots (``swap_used``) and kernel virtual pages (``kva_used``) -- as one byte per unit,
0 = free, and both allocators ask the same question: where does the first run of n free
units start, at or after a hint?
"""

from __future__ import annotations

import numpy as np


def first_fit(used: np.ndarray, lo: int, end: int, npages: int) -> int:
    """The first index >= ``lo`` that starts a run of ``npages`` zeros within
    ``used[:end]``, or -1.

    Looked for in windows that grow fourfold (kernel_map has a quarter of a million pages,
    swap 16,384 slots, and the fit is almost always near the hint); consecutive windows
    overlap by npages - 1 so that no run is cut in two.
    """
    width = max(1024, 4 * npages)
    while lo + npages <= end:
        hi = min(end, lo + width)
        free = used[lo:hi] == 0
        if npages == 1:
            z = np.flatnonzero(free)
        else:
            c = np.concatenate(([0], np.cumsum(free, dtype=np.int64)))
            z = np.flatnonzero(c[npages:] - c[:-npages] == npages)
        if len(z):
            return lo + int(z[0])
        if hi == end:
            break
        lo, width = hi - npages + 1, width * 4
    return -1
