"""The pagedaemon and uvm_wait (uvm_pdaemon.c [PD39]) and the pager's mappings (uvm_pager.c).

uvm_wait(wmsg): a thread that cannot get memory wakes the pagedaemon and
sleeps on ``&uvmexp.free`` with ``pagedaemon_lock`` as interlock (so the
pagedaemon's wakeup cannot be missed).  The pagedaemon itself never sleeps
there: it prints "pagedaemon: deadlock detected!" and naps for hz/8.

uvm_pageout (a kernel thread, one pass per wakeup):
    sleep on &uvm.pagedaemon until uvm_pagealloc or uvm_wait wakes us; pdwoke++
    inactarg = max((active + inactive) / 3, freetarg + 1)
    if free < freetarg or inactive < inactarg: uvmpd_scan()
    if free > reserve_kernel: wakeup(&uvmexp.free)   (every uvm_wait sleeper,
                                                      flt_pmfail* included)

uvmpd_scan: walk the inactive queue (oldest first) until free >= freetarg:
    referenced since it was deactivated (pmap_clear_reference) -> reactivate
    anon page: try-lock the anon (the pagedaemon holds the page queues, the
        reverse of the fault path's order); unmap it (pmap_page_remove); if it
        is dirty or has no swap copy it needs a pageout: a swap slot, then the
        pager maps it into pager_map with a plain pmap_enter on the kernel
        pmap (no PMAP_CANFAIL: uvm_pagermapin), writes, unmaps; swap full ->
        reactivate (at most UVMPD_NUMDIRTYREACTS = 16
PAGEDAEMON_NAP = 100_000_000       # ns; see uvm_pageout_step per pass); then free it
    file page: unmap; dirty -> write it back the same way; free it
then deactivate active pages (oldest first, after clearing their reference
bits) until inactive reaches inactarg.
"""

from __future__ import annotations

from smp.kern import kern_fail, kern_synch, lock, pmap, subr_prf
from smp.kern import uvm as U
from smp.kern.param import NBPG, PMAP_WIRED, VM_PROT_READ
from smp.kern.uvm import A, C, L
from smp.kern.uvm_anon import swpgonly_add, uvm_swap_alloc
from smp.kern.uvm_page import (
    OWN_ANON,
    OWN_UOBJ,
    PG_BUSY,
    PG_CLEAN,
    PQ_ACTIVE,
    PQ_INACTIVE,
    Q_ACTIVE,
    Q_INACTIVE,
    uvm_pageactivate,
    uvm_pagedeactivate,
    uvm_pagefree,
)

UVMPD_NUMDIRTYREACTS = 16
PAGEDAEMON_NAP = 100_000_000       # ns; see uvm_pageout_step
W_PGDAEMON = subr_prf.intern("pgdaemon")
W_FREE = subr_prf.intern("uvm_wait")
MSG_DEADLOCK = subr_prf.message("", "pagedaemon: deadlock detected!")
H = subr_prf.UVMHIST_FUNC("uvm_pageout")
H_SLEEP = subr_prf.message("uvm_pageout", "  <<SLEEPING>>", "hist", "pdhist")
H_WOKE = subr_prf.message("uvm_pageout", "  <<WOKE UP>>", "hist", "pdhist")
H_TARG = subr_prf.message("uvm_pageout", "  free/ftarg=%d/%d, inact/itarg=%d/%d", "hist", "pdhist")

_ci = None
PAGEDAEMON_TID = 0


def attach(ci) -> None:
    global _ci
    _ci = ci


def _cnt(idx: int, n: int = 1) -> None:
    A.cnt[_ci.cnt_base + idx] += n


def uvm_wait(wmesg: int) -> None:
    """Wake the pagedaemon and sleep until it frees memory; never returns (restart).

    => caller holds no locks.
    """
    if _ci.area["curproc"] == PAGEDAEMON_TID:
        subr_prf.printf(MSG_DEADLOCK)
        kern_synch.ltsleep(U.CHAN_FREE, wmesg, _ci.tick_ns * 100 // 8)
    lock.simple_lock(L.pagedaemon)
    kern_synch.wakeup(U.CHAN_PAGEDAEMON)
    kern_synch.ltsleep(U.CHAN_FREE, wmesg, 0, L.pagedaemon)


def uvm_pageout_step(tid: int) -> int:
    """One turn of the pagedaemon thread: a pass if we were woken, then sleep again.

    The real loop sleeps without a timeout and can lose a wakeup that arrives while it
    is scanning (uvm_wait's wakeup finds nobody asleep); a real machine recovers at the
    next allocation anywhere in the system.  A closed simulation may have none, so the
    pagedaemon's sleep is bounded by PAGEDAEMON_NAP (documented deviation).
    """
    p = A.np["proc"][tid]
    if p["reg"][0] == 1:                         # woken (or napped out): one pass
        _pass()
    p["reg"][0] = 1
    call = subr_prf.UVMHIST_CALLED(H)
    subr_prf.UVMHIST_LOG(H_SLEEP, call)
    lock.simple_lock(L.pagedaemon)
    kern_synch.ltsleep(U.CHAN_PAGEDAEMON, W_PGDAEMON, PAGEDAEMON_NAP, L.pagedaemon)
    return 0


def _pass() -> None:
    _cnt(C.pdwoke)
    ux = A.uvmexp
    call = subr_prf.UVMHIST_CALLED(H)
    subr_prf.UVMHIST_LOG(H_WOKE, call)
    lock.simple_lock(L.pageq)
    ux[U.INACTARG] = max((ux[U.ACTIVE] + ux[U.INACTIVE]) // 3, ux[U.FREETARG] + 1)
    subr_prf.UVMHIST_LOG(H_TARG, call, ux[U.FREE], ux[U.FREETARG], ux[U.INACTIVE],
                         ux[U.INACTARG])
    if ux[U.FREE] < ux[U.FREETARG] or ux[U.INACTIVE] < ux[U.INACTARG]:
        uvmpd_scan()
    lock.simple_unlock(L.pageq)
    if ux[U.FREE] > ux[U.RESERVE_KERN] or ux[U.PAGING] == 0:
        kern_synch.wakeup(U.CHAN_FREE)


def uvmpd_scan() -> None:
    """Free inactive pages until free >= freetarg, then refill the inactive queue.

    => page queues locked (dropped around each pageout, as the I/O would).
    """
    _cnt(C.pdrevs)
    ux = A.uvmexp
    dirtyreacts = 0
    pg = A.uvmq[Q_INACTIVE]
    scanned = 0
    limit = ux[U.INACTIVE]
    while pg >= 0 and ux[U.FREE] < ux[U.FREETARG] and scanned < limit:
        nxt = A.pg_next[pg]
        scanned += 1
        _cnt(C.pdscans)
        if A.pg_flags[pg] & PG_BUSY or A.pg_wire[pg]:
            _cnt(C.pdbusy)
            pg = nxt
            continue
        owner = A.pg_owner[pg]
        if owner == OWN_ANON:
            r = _pageout_anon(pg, dirtyreacts < UVMPD_NUMDIRTYREACTS)
        elif owner == OWN_UOBJ:
            r = _pageout_file(pg)
        else:
            r = "skip"
        if r == "react":
            dirtyreacts += 1
        pg = nxt if nxt < 0 or A.pg_pq[nxt] == PQ_INACTIVE else A.uvmq[Q_INACTIVE]
    # refill the inactive queue from the oldest active pages
    pg = A.uvmq[Q_ACTIVE]
    while pg >= 0 and ux[U.INACTIVE] < ux[U.INACTARG]:
        nxt = A.pg_next[pg]
        if A.pg_pq[pg] == PQ_ACTIVE:
            lock.simple_unlock(L.pageq)
            pmap.pmap_clear_reference(pg)
            lock.simple_lock(L.pageq)
            if A.pg_pq[pg] == PQ_ACTIVE:
                uvm_pagedeactivate(pg)
                _cnt(C.pddeact)
        pg = nxt if nxt < 0 or A.pg_pq[nxt] == PQ_ACTIVE else A.uvmq[Q_ACTIVE]


def _reactivate(pg: int) -> str:
    """Back to the active queue: referenced again, or nowhere to page it out to."""
    lock.simple_lock(L.pageq)
    uvm_pageactivate(pg)
    lock.simple_unlock(L.pageq)
    _cnt(C.pdreact)
    return "react"


def _pageout_anon(pg: int, may_react: bool) -> str:
    """Try to free one inactive anon page (=> page queues locked)."""
    an = A.pg_anon[pg]
    if an < 0 or kern_fail.trylock_fails("uvmpd_scan") or not lock.simple_lock_try(L.anon + an):
        _cnt(C.pdbusy)
        return "busy"
    if A.an_page[an] != pg:
        lock.simple_unlock(L.anon + an)
        return "busy"
    lock.simple_unlock(L.pageq)
    try:
        if pmap.pmap_clear_reference(pg):
            return _reactivate(pg)
        pmap.pmap_page_remove(pg)
        dirty = not A.pg_flags[pg] & PG_CLEAN or pmap.pmap_is_modified(pg) or \
            not A.an_swslot[an]
        if dirty:
            slot = A.an_swslot[an] - 1
            if slot < 0:
                slot = uvm_swap_alloc()
            if slot < 0:                          # swap full: keep it
                if not may_react:
                    return "busy"                 # UVMPD_NUMDIRTYREACTS used up this pass
                return _reactivate(pg)
            A.an_swslot[an] = slot + 1
            uvm_pager_put(pg)
            _cnt(C.pgswapout)
            _cnt(C.pdpageouts)
        A.pvh_attrs[pg] = 0
        A.an_page[an] = -1
        swpgonly_add(1)
        uvm_pagefree(pg)
        _cnt(C.pdfreed)
        return "freed"
    finally:
        lock.simple_unlock(L.anon + an)
        lock.simple_lock(L.pageq)


def _pageout_file(pg: int) -> str:
    """Free one inactive file page, writing it back if dirty (=> page queues locked)."""
    obj = A.pg_obj[pg]
    lk = L.vnode + obj % 8
    if not lock.simple_lock_try(lk):
        _cnt(C.pdbusy)
        return "busy"
    lock.simple_unlock(L.pageq)
    try:
        if pmap.pmap_clear_reference(pg):
            return _reactivate(pg)
        pmap.pmap_page_remove(pg)
        if not A.pg_flags[pg] & PG_CLEAN or pmap.pmap_is_modified(pg):
            uvm_pager_put(pg)
            _cnt(C.pdpageouts)
        A.file_page[A.file_base[obj] + A.pg_off[pg]] = -1
        A.pvh_attrs[pg] = 0
        uvm_pagefree(pg)
        _cnt(C.pdfreed)
        return "freed"
    finally:
        lock.simple_unlock(lk)
        lock.simple_lock(L.pageq)


def uvm_pager_put(pg: int) -> None:
    """Write one page: map it for the I/O (uvm_pagermapin), "write", unmap, mark clean."""
    va = uvm_pagermapin(pg, VM_PROT_READ)
    A.pg_flags[pg] |= PG_CLEAN
    uvm_pagermapout(va)


def uvm_pagermapin(pg: int, prot: int) -> int:
    """Map a page into pager_map: a plain pmap_enter on the kernel pmap (no PMAP_CANFAIL)."""
    from smp.kern import uvm_km

    _cnt(C.pagermapin)
    lock.simple_lock(L.pager_map)
    va = uvm_km.uvm_km_valloc(1)
    if va < 0:
        # pager_map is full: the pagedaemon (our only pager) uses the emergency
        # window rather than sleep with the page's anon locked ("emergva")
        va = uvm_km.emergva()
    lock.simple_unlock(L.pager_map)
    pmap.pmap_enter(pmap.KERNEL_PMAP, va, pg, prot, PMAP_WIRED | prot)
    return va


def uvm_pagermapout(va: int) -> None:
    from smp.kern import uvm_km

    pmap.pmap_remove(pmap.KERNEL_PMAP, va, va + NBPG)
    if va != uvm_km.emergva():
        uvm_km.uvm_km_vfree(va, 1)
