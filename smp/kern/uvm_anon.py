"""Anonymous memory and swap (uvm_anon.c, uvm_swap.c).

An anon is one page of anonymous memory: a reference count (processes that
share it after fork), the resident page or -1, and its swap slot (0 = none,
else slot + 1).  Anons come from a free list under ``uvm_anon_lock``; each
has its own lock (``anon[i]``).

Swap is one device of ``swpages`` slots (``swap_used``) under
``swap_data_lock``.  ``swpginuse`` counts allocated slots; ``swpgonly``
counts anons whose only copy is in swap (page freed after pageout).  When
``swpgonly == swpages`` swap is full: faults that need new memory then fail
with ENOMEM and the process is killed ("out of swap"), and the pagedaemon
reactivates dirty anonymous pages instead of paging them out.

A pageout is asynchronous (uvm_pager): while it is in flight the page is
busy, and an anon freed meanwhile keeps it (PG_RELEASED) until the write
completes and frees both.

Two subsystems of the kernel's tuple come from this file: the anons
(``declare``: the per-anon locks) and swap (``declare_swap``: the swap map,
swap_data_lock and the anon free list's uvm_anon_lock), declared after the
maps so that lock ids stay those of earlier versions.
"""

from __future__ import annotations

import numpy as np

from smp.kern import lock, pmap, uvm_page
from smp.kern import uvm as U
from smp.kern.param import PG_BUSY, PG_RELEASED
from smp.kern.subr_extent import first_fit
from smp.kern.uvm import shared
from smp.kern.uvm_page import uvm_pagefree
from smp.machine.layout import ArraySpec

# lock ids (declare): an_lock + an is anon an's lock; the anon free list's and swap's locks
an_lock = uvm_anon_lock = swap_data_lock = -1
nanon = 0                          # anons (declare): every page, every swap slot, and 64


def declare(kernel, locks) -> list[ArraySpec]:
    """The anons and their locks (uvm_anon_init)."""
    global an_lock, nanon
    machine = kernel.machine
    nanon = machine.npages + machine.swpages + 64
    an_lock = locks.declare("anon", count=nanon, label="anon[{i}]")
    i4 = np.dtype("<i4")
    return [*(ArraySpec(f, i4, (nanon,)) for f in ("an_ref", "an_page", "an_swslot", "an_next")),
            ArraySpec("amap_glob", np.dtype("<i8"), (4,))]   # [0]: the anon free list's head


def declare_swap(kernel, locks) -> list[ArraySpec]:
    """The swap map (uvm_swap_init) and the locks of swap and of the anon free list.

    Declared after the maps' locks rather than with the anons', so the lock ids stay
    those of earlier versions (old run directories replay identically).
    """
    global swap_data_lock, uvm_anon_lock
    swap_data_lock = locks.declare("swap_data_lock")
    uvm_anon_lock = locks.declare("uvm_anon_lock")
    i4 = np.dtype("<i4")
    return [ArraySpec("swap_used", i4, (max(1, kernel.machine.swpages),)),
            ArraySpec("swap_glob", i4, (4,))]


def format(seg, kernel) -> None:
    """Boot (uvm_anon_init): every anon on the free list, no swap in use."""
    a = seg.arrays
    a["an_next"][:] = np.arange(1, nanon + 1, dtype=np.int32)
    a["an_next"][nanon - 1] = -1
    a["an_page"][:] = -1
    a["an_ref"][:] = 0
    a["an_swslot"][:] = 0
    a["amap_glob"][0] = 0             # head of the anon free list
    ux = a["uvmexp"]
    ux[U.NANON] = nanon
    ux[U.NFREEANON] = nanon


def uvm_analloc() -> int:
    """A fresh anon (ref 1, no page, no swap), or -1.  => returns it unlocked."""
    lock.simple_lock(uvm_anon_lock)
    glob = shared.amap_glob
    an = glob[0]
    if an >= 0:
        an_next = shared.an_next
        glob[0] = an_next[an]
        an_next[an] = -1
        shared.uvmexp[U.NFREEANON] -= 1
    lock.simple_unlock(uvm_anon_lock)
    if an < 0:
        return -1
    shared.an_ref[an] = 1
    shared.an_page[an] = -1
    shared.an_swslot[an] = 0
    return an


def uvm_anfree(an: int) -> None:
    """Free an anon whose last reference is gone (its page and swap slot too).

    => anon unlocked, no amap refers to it any more.  A page being paged out (PG_BUSY)
    is marked PG_RELEASED instead, and the pageout's completion frees the anon.
    """
    lock.simple_lock(an_lock + an)
    pg = shared.an_page[an]
    if pg >= 0 and shared.pg_flags[pg] & PG_BUSY:
        # its pageout is in flight: the I/O's completion frees the anon (PG_RELEASED)
        shared.pg_flags[pg] |= PG_RELEASED
        lock.simple_unlock(an_lock + an)
        return
    if pg >= 0:
        pmap.pmap_page_remove(pg)
        lock.simple_lock(uvm_page.pageq_lock)       # lock out the pagedaemon
        shared.an_page[an] = -1
        uvm_pagefree(pg)
        lock.simple_unlock(uvm_page.pageq_lock)
    elif shared.an_swslot[an]:
        _swpgonly(-1)
    if shared.an_swslot[an]:
        uvm_swap_free(shared.an_swslot[an] - 1)
        shared.an_swslot[an] = 0
    shared.an_ref[an] = 0
    lock.simple_unlock(an_lock + an)
    lock.simple_lock(uvm_anon_lock)
    shared.an_next[an] = shared.amap_glob[0]
    shared.amap_glob[0] = an
    shared.uvmexp[U.NFREEANON] += 1
    lock.simple_unlock(uvm_anon_lock)


def swap_full() -> bool:
    """uvmexp.swpgonly == uvmexp.swpages: the fault handler's give-up test."""
    return shared.uvmexp[U.SWPGONLY] >= shared.uvmexp[U.SWPAGES]


def uvm_swap_alloc() -> int:
    """A free swap slot, or -1: the first free one from the rotor on, wrapping around."""
    lock.simple_lock(swap_data_lock)
    ux = shared.uvmexp
    if ux[U.SWPAGES] == 0 or ux[U.SWPGINUSE] >= ux[U.SWPAGES]:
        lock.simple_unlock(swap_data_lock)
        return -1
    used = shared.swap_used
    n = len(used)
    i = shared.swap_glob[0]
    if used[i]:                                   # (the rotor's slot is usually free)
        arr = shared.np["swap_used"]
        j = first_fit(arr, i, n, 1)
        i = j if j >= 0 else first_fit(arr, 0, i, 1)
    if i < 0:                                     # (swpginuse said there was one)
        lock.simple_unlock(swap_data_lock)
        return -1
    used[i] = 1
    shared.swap_glob[0] = (i + 1) % n
    ux[U.SWPGINUSE] += 1
    lock.simple_unlock(swap_data_lock)
    return i


def uvm_swap_free(slot: int) -> None:
    lock.simple_lock(swap_data_lock)
    shared.swap_used[slot] = 0
    shared.uvmexp[U.SWPGINUSE] -= 1
    lock.simple_unlock(swap_data_lock)


def _swpgonly(d: int) -> None:
    lock.simple_lock(swap_data_lock)
    shared.uvmexp[U.SWPGONLY] += d
    lock.simple_unlock(swap_data_lock)


def swpgonly_add(d: int) -> None:
    _swpgonly(d)
