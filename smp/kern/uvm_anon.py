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

I/O is synchronous and costs no simulated time: a pageout's pages are
clean again as soon as the pager returns.
"""

from __future__ import annotations

from smp.kern import lock
from smp.kern import uvm as U
from smp.kern.uvm import A, L


def format_anons(seg, nanon: int) -> None:
    import numpy as np

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
    lock.simple_lock(L.anon_free)
    an = int(A.amap_glob[0])
    if an >= 0:
        A.amap_glob[0] = A.an_next[an]
        A.an_next[an] = -1
        A.uvmexp[U.NFREEANON] -= 1
    lock.simple_unlock(L.anon_free)
    if an < 0:
        return -1
    A.an_ref[an] = 1
    A.an_page[an] = -1
    A.an_swslot[an] = 0
    return an


def uvm_anfree(an: int) -> None:
    """Free an anon whose last reference is gone (its page and swap slot too).

    => anon unlocked, no amap refers to it any more.
    """
    from smp.kern import pmap
    from smp.kern.uvm_page import uvm_pagefree

    lock.simple_lock(L.anon + an)
    pg = A.an_page[an]
    if pg >= 0:
        pmap.pmap_page_remove(pg)
        A.an_page[an] = -1
        uvm_pagefree(pg)
    elif A.an_swslot[an]:
        _swpgonly(-1)
    if A.an_swslot[an]:
        uvm_swap_free(A.an_swslot[an] - 1)
        A.an_swslot[an] = 0
    A.an_ref[an] = 0
    lock.simple_unlock(L.anon + an)
    lock.simple_lock(L.anon_free)
    A.an_next[an] = A.amap_glob[0]
    A.amap_glob[0] = an
    A.uvmexp[U.NFREEANON] += 1
    lock.simple_unlock(L.anon_free)


def swap_full() -> bool:
    """uvmexp.swpgonly == uvmexp.swpages: the fault handler's give-up test."""
    return A.uvmexp[U.SWPGONLY] >= A.uvmexp[U.SWPAGES]


def uvm_swap_alloc() -> int:
    """A free swap slot, or -1."""
    lock.simple_lock(L.swap)
    n = len(A.swap_used)
    if A.uvmexp[U.SWPAGES] == 0 or A.uvmexp[U.SWPGINUSE] >= A.uvmexp[U.SWPAGES]:
        lock.simple_unlock(L.swap)
        return -1
    i = A.swap_glob[0]
    for _ in range(n):
        if not A.swap_used[i]:
            A.swap_used[i] = 1
            A.swap_glob[0] = (i + 1) % n
            A.uvmexp[U.SWPGINUSE] += 1
            lock.simple_unlock(L.swap)
            return i
        i = (i + 1) % n
    lock.simple_unlock(L.swap)
    return -1


def uvm_swap_free(slot: int) -> None:
    lock.simple_lock(L.swap)
    A.swap_used[slot] = 0
    A.uvmexp[U.SWPGINUSE] -= 1
    lock.simple_unlock(L.swap)


def _swpgonly(d: int) -> None:
    lock.simple_lock(L.swap)
    A.uvmexp[U.SWPGONLY] += d
    lock.simple_unlock(L.swap)


def swpgonly_add(d: int) -> None:
    _swpgonly(d)
