"""Physical pages (uvm_page.c): vm_page[], the free list, the paging queues.

Every physical page has a ``vm_page`` (struct-of-arrays in the segment): its
owner (free, anon, file object, PTP of a pmap, pv page, kernel memory, PDP),
the object and offset it belongs to, ``wire_count`` (a PTP's is 1 + its valid
PTEs), paging-queue links and, for pages of an object, the object's ``memq``
links -- for a PTP, the pmap's list of PTPs in allocation order, which is the
order ``pmap_steal_ptp`` scans.

``uvm_pagealloc`` (uvm_pagealloc_strat, [PG23]) under the free-page-queue
lock ``fpageq``:

    wake the pagedaemon if free < freemin, or free < freetarg and
        inactive < inactarg
    refuse if free <= reserve_kernel and the caller may not use the reserve
        (UVM_PGA_USERESERVE, or a kernel object: kernel_object, kmem_object)
    refuse if free <= reserve_pagedaemon unless the caller may use the reserve
        and is the pagedaemon
    take the head of the free list; free--

An interrupt that is due is taken at the top of every allocation (it may
come in "between instructions" there, holding the caller's spl-0 locks), so
an interrupt handler's own allocations can drain the reserve right before
the caller's.

So user data pages fail at free <= 5 while PTPs and pv pages (USERESERVE)
fail only at free <= 1 -- the arithmetic behind Sommerfeld never seeing his
steal printf (NETBSD-FACTS §5.3).  A refused caller decides whether to sleep
(``uvm_wait``) or fail.  ``uvm_pagefree`` appends to the tail of the free
list.  Only page-table pages have simulated contents, and the pmap zeroes
the ones it allocates itself (``pmap_zero_page``); zeroing any other page
(UVM_PGA_ZERO) is counted but not performed.

Paging queues (active, inactive) are guarded by the page-queue lock
``pageq``; ``uvm_pageactivate``/``uvm_pagedeactivate``/``uvm_pagewire``
move pages between them as in NetBSD.  The pagedaemon moves pages holding
only ``pageq``, not their owners' locks, so ``uvm_pagefree`` of an anon or
object page is called with ``pageq`` held (NetBSD 1.5: "caller must lock
page queues"; uvm_anfree takes them "to lock out pagedaemon").
"""

from __future__ import annotations

import numpy as np

from smp.kern import intr, kern_fail, kern_synch, lock, subr_prf
from smp.kern import uvm as U
from smp.kern.param import (
    OWN_ANON,
    OWN_FREE,
    OWN_KMEM,
    OWN_KPTP,
    OWN_PDP,
    OWN_PTP,
    OWN_PVPAGE,
    OWN_UOBJ,
    PG_BUSY,
    PG_CLEAN,
    PG_FAKE,
    UVM_PGA_USERESERVE,
    UVM_PGA_ZERO,
)
from smp.kern.uvm import counter, shared
from smp.machine.layout import ArraySpec

OWNER_COUNTER = {OWN_ANON: U.ANONPAGES, OWN_UOBJ: U.FILEPAGES, OWN_PTP: U.PTPPAGES,
                  OWN_PVPAGE: U.PVPAGES, OWN_KMEM: U.KMEMPAGES, OWN_PDP: U.PDPPAGES,
                  OWN_KPTP: U.PTPPAGES}
_PAGE_TABLE = (OWN_PTP, OWN_PDP, OWN_KPTP)        # the pmap zeroes these itself

# pg_pq: which queue the page is on
PQ_NONE, PQ_FREE, PQ_ACTIVE, PQ_INACTIVE = 0, 1, 2, 3
# uvmq slots
Q_FREE, Q_ACTIVE, Q_INACTIVE = 0, 2, 4
PG_FIELDS = ("pg_flags", "pg_pq", "pg_owner", "pg_obj", "pg_off", "pg_anon", "pg_wire",
             "pg_next", "pg_prev", "pg_lnext", "pg_lprev", "pg_version")

P_DOUBLE_FREE = subr_prf.Message("uvm_pagefree", "freeing free page %p", "panic")

fpageq_lock = pageq_lock = -1      # uvm.fpageqlock, uvm.pageqlock (declare)
_ci = None
_kobj_reserve = (OWN_PVPAGE, OWN_KMEM, OWN_PDP, OWN_KPTP)   # kernel objects use the reserve
_FREE, _FREEMIN, _FREETARG, _INACTIVE, _INACTARG, _ACTIVE = (
    U.FREE, U.FREEMIN, U.FREETARG, U.INACTIVE, U.INACTARG, U.ACTIVE)
_RESERVE_KERN, _RESERVE_PD, _PGA_ZEROMISS = U.RESERVE_KERN, U.RESERVE_PD, counter.pga_zeromiss
_pagedaemon_tid = -1


def declare(kernel, locks) -> list[ArraySpec]:
    """vm_page[] (one array per field), the queue heads and the two queue locks."""
    global fpageq_lock, pageq_lock
    fpageq_lock = locks.declare("fpageq")                    # uvm_lock_fpageq
    pageq_lock = locks.declare("pageq")                      # uvm_lock_pageq
    i4 = np.dtype("<i4")
    npages = kernel.machine.npages
    return [ArraySpec("uvmq", i4, (8,))] + [ArraySpec(f, i4, (npages,)) for f in PG_FIELDS]


def attach(ci, kernel) -> None:
    global _ci, _pagedaemon_tid
    _ci = ci
    _pagedaemon_tid = kernel.PAGEDAEMON


# --- queues: doubly linked through pg_next/pg_prev, heads in uvmq -------------

def _q_insert_tail(q: int, pg: int) -> None:
    tail = shared.uvmq[q + 1]
    shared.pg_next[pg] = -1
    shared.pg_prev[pg] = tail
    if tail < 0:
        shared.uvmq[q] = pg
    else:
        shared.pg_next[tail] = pg
    shared.uvmq[q + 1] = pg


def _q_remove(q: int, pg: int) -> None:
    nxt, prv = shared.pg_next[pg], shared.pg_prev[pg]
    if prv < 0:
        shared.uvmq[q] = nxt
    else:
        shared.pg_next[prv] = nxt
    if nxt < 0:
        shared.uvmq[q + 1] = prv
    else:
        shared.pg_prev[nxt] = prv
    shared.pg_next[pg] = shared.pg_prev[pg] = -1


def format(seg, kernel) -> None:
    """Boot (uvm_page_init): every page free, in address order; tune the pagedaemon."""
    a = seg.arrays
    kernel_config, machine = kernel.config, kernel.machine
    n = machine.npages
    a["pg_next"][:] = np.arange(1, n + 1, dtype=np.int32)
    a["pg_next"][n - 1] = -1
    a["pg_prev"][:] = np.arange(-1, n - 1, dtype=np.int32)
    a["pg_pq"][:] = PQ_FREE
    a["pg_owner"][:] = OWN_FREE
    a["pg_obj"][:] = -1
    a["pg_anon"][:] = -1
    a["pg_lnext"][:] = -1
    a["pg_lprev"][:] = -1
    q = a["uvmq"]
    q[:] = -1
    q[Q_FREE], q[Q_FREE + 1] = 0, n - 1
    ux = a["uvmexp"]
    freemin, freetarg = kernel_config.tuned(n)
    ux[U.NPAGES] = n
    ux[U.FREE] = n
    ux[U.RESERVE_KERN] = kernel_config.reserve_kernel
    ux[U.RESERVE_PD] = kernel_config.reserve_pagedaemon
    ux[U.FREEMIN] = freemin
    ux[U.FREETARG] = freetarg
    ux[U.INACTARG] = freetarg + 1
    ux[U.WIREDMAX] = n // 3
    ux[U.SWPAGES] = machine.swpages


def uvm_pagealloc(owner: int, obj: int, off: int, anon: int, flags: int) -> int:
    """Allocate a page for ``owner``/``obj``/``off`` (or ``anon``); -1 when refused.

    => caller holds the object's or anon's lock (the page goes into it).
    => a page-table page (UVM_PGA_ZERO or not) is the pmap's to zero: only page-table
       pages have simulated contents, and the pmap zeroes them through its own window.
    """
    if kern_fail.ON and kern_fail.fail("uvm_pagealloc"):
        return -1
    if intr.due():
        intr.at_point()             # an interrupt may come in right before (and drain)
    ux = shared.uvmexp
    lock.simple_lock(fpageq_lock)
    free = ux[_FREE]
    if free < ux[_FREEMIN] or (free < ux[_FREETARG] and ux[_INACTIVE] < ux[_INACTARG]):
        kern_synch.wakeup(U.CHAN_PAGEDAEMON)
    use_reserve = (flags & UVM_PGA_USERESERVE) or owner in _kobj_reserve
    if (free <= ux[_RESERVE_KERN] and not use_reserve) or (
            free <= ux[_RESERVE_PD] and not (use_reserve and _is_pagedaemon())):
        lock.simple_unlock(fpageq_lock)
        return -1
    uvmq = shared.uvmq
    pg = uvmq[Q_FREE]
    if pg < 0:                                  # cannot happen while free > 0
        lock.simple_unlock(fpageq_lock)
        return -1
    pg_next, pg_prev = shared.pg_next, shared.pg_prev
    nxt, prv = pg_next[pg], pg_prev[pg]         # _q_remove(Q_FREE, pg)
    if prv < 0:
        uvmq[Q_FREE] = nxt
    else:
        pg_next[prv] = nxt
    if nxt < 0:
        uvmq[Q_FREE + 1] = prv
    else:
        pg_prev[nxt] = prv
    pg_next[pg] = pg_prev[pg] = -1
    ux[_FREE] = free - 1
    shared.pg_pq[pg] = PQ_NONE
    c = OWNER_COUNTER.get(owner)
    if c is not None:
        ux[c] += 1                              # uvmexp counts: under fpageq, like free
    lock.simple_unlock(fpageq_lock)
    shared.pg_owner[pg] = owner
    shared.pg_obj[pg] = obj
    shared.pg_off[pg] = off
    shared.pg_anon[pg] = anon
    shared.pg_wire[pg] = 0
    shared.pg_flags[pg] = PG_BUSY | PG_FAKE | (0 if flags & UVM_PGA_ZERO else PG_CLEAN)
    shared.pg_version[pg] += 1
    if flags & UVM_PGA_ZERO and owner not in _PAGE_TABLE:
        shared.cnt[_ci.cnt_base + _PGA_ZEROMISS] += 1
    return pg


def uvm_pagefree(pg: int) -> None:
    """Return a page to the free list.

    => caller holds its object/anon lock and, for a pageable page (an anon's or a file
       object's), the page queues, as NetBSD 1.5's uvm_pagefree requires ("caller must
       lock page queues"; uvm_anfree takes them "to lock out pagedaemon"): the page's
       queue is read under them.  Read without them, it could be caught in the middle of
       the pagedaemon's uvm_pagedeactivate (off the active queue, pg_pq PQ_NONE, not yet
       on the inactive one), and the page went on the free list while it went on the
       inactive queue too.  Other pages (page tables, pv pages, kernel memory) are never
       on a paging queue.
    """
    pq = shared.pg_pq[pg]
    if pq == PQ_FREE:
        subr_prf.panic(P_DOUBLE_FREE, pg << 12)
    ux = shared.uvmexp
    owner = shared.pg_owner[pg]
    if owner in (OWN_ANON, OWN_UOBJ):
        if lock.DIAGNOSTIC:
            lock.KASSERT_LOCKED(pageq_lock)
        _dequeue_paging(pg)
        if shared.pg_wire[pg]:
            ux[U.WIRED] -= 1
    shared.pg_owner[pg] = OWN_FREE
    shared.pg_obj[pg] = -1
    shared.pg_anon[pg] = -1
    shared.pg_wire[pg] = 0
    shared.pg_flags[pg] = 0
    shared.pg_version[pg] += 1
    lock.simple_lock(fpageq_lock)
    c = OWNER_COUNTER.get(owner)
    if c is not None:
        ux[c] -= 1
    _q_insert_tail(Q_FREE, pg)
    shared.pg_pq[pg] = PQ_FREE
    ux[U.FREE] += 1
    lock.simple_unlock(fpageq_lock)


def uvm_pagerealloc(pg: int, owner: int, obj: int, off: int) -> None:
    """Move a page to another object (pmap_steal_ptp hands a PTP to its thief).

    => caller holds both objects' locks.  The version changes: the page is
       someone else's now, and any cached translation through it is stale.
    """
    shared.pg_owner[pg] = owner
    shared.pg_obj[pg] = obj
    shared.pg_off[pg] = off
    shared.pg_version[pg] += 1


# --- paging queues (=> caller holds pageq) -------------------------------------

def _dequeue_paging(pg: int) -> None:
    pq = shared.pg_pq[pg]
    ux = shared.uvmexp
    if pq == PQ_ACTIVE:
        _q_remove(Q_ACTIVE, pg)
        ux[U.ACTIVE] -= 1
    elif pq == PQ_INACTIVE:
        _q_remove(Q_INACTIVE, pg)
        ux[U.INACTIVE] -= 1
    shared.pg_pq[pg] = PQ_NONE


def uvm_pageactivate(pg: int) -> None:
    """Put a (pageable, unwired) page at the tail of the active queue (=> pageq held)."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pageq_lock)
    if shared.pg_wire[pg]:
        return
    pg_pq = shared.pg_pq
    pq = pg_pq[pg]
    if pq == PQ_ACTIVE:
        _q_remove(Q_ACTIVE, pg)
        _q_insert_tail(Q_ACTIVE, pg)
        return
    if pq != PQ_NONE:
        _dequeue_paging(pg)
    uvmq, pg_next = shared.uvmq, shared.pg_next
    tail = uvmq[Q_ACTIVE + 1]                   # _q_insert_tail(Q_ACTIVE, pg)
    pg_next[pg] = -1
    shared.pg_prev[pg] = tail
    if tail < 0:
        uvmq[Q_ACTIVE] = pg
    else:
        pg_next[tail] = pg
    uvmq[Q_ACTIVE + 1] = pg
    pg_pq[pg] = PQ_ACTIVE
    shared.uvmexp[_ACTIVE] += 1


def uvm_pagedeactivate(pg: int) -> None:
    """Move a page to the inactive queue (=> pageq held)."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pageq_lock)
    if shared.pg_wire[pg] or shared.pg_pq[pg] == PQ_INACTIVE:
        return
    _dequeue_paging(pg)
    _q_insert_tail(Q_INACTIVE, pg)
    shared.pg_pq[pg] = PQ_INACTIVE
    shared.uvmexp[U.INACTIVE] += 1


def uvm_pagewire(pg: int) -> None:
    """Wire a data page: off the paging queues (=> pageq held)."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pageq_lock)
    if shared.pg_wire[pg] == 0:
        _dequeue_paging(pg)
        shared.uvmexp[U.WIRED] += 1
    shared.pg_wire[pg] += 1


def uvm_pageunwire(pg: int) -> None:
    """Unwire a data page; at zero it goes back on the active queue (=> pageq held)."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pageq_lock)
    shared.pg_wire[pg] -= 1
    if shared.pg_wire[pg] == 0:
        shared.uvmexp[U.WIRED] -= 1
        uvm_pageactivate(pg)


# --- object memq (listq links), heads passed in by the owner ----------------

def memq_insert_tail(head: memoryview, tail: memoryview, obj: int, pg: int) -> None:
    t = tail[obj]
    shared.pg_lnext[pg] = -1
    shared.pg_lprev[pg] = t
    if t < 0:
        head[obj] = pg
    else:
        shared.pg_lnext[t] = pg
    tail[obj] = pg


def memq_remove(head: memoryview, tail: memoryview, obj: int, pg: int) -> None:
    nxt, prv = shared.pg_lnext[pg], shared.pg_lprev[pg]
    if prv < 0:
        head[obj] = nxt
    else:
        shared.pg_lnext[prv] = nxt
    if nxt < 0:
        tail[obj] = prv
    else:
        shared.pg_lprev[nxt] = prv
    shared.pg_lnext[pg] = shared.pg_lprev[pg] = -1


def _is_pagedaemon() -> bool:
    return _ci is not None and _ci.area["curproc"] == _pagedaemon_tid


def _cnt(idx: int, n: int = 1) -> None:
    shared.cnt[_ci.cnt_base + idx] += n
