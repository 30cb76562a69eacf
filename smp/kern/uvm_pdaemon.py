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
        reactivate (at most UVMPD_NUMDIRTYREACTS = 16 per pass); then free it
    file page: unmap; dirty -> write it back the same way; free it
then deactivate active pages (oldest first, after clearing their reference
bits) until inactive reaches inactarg.
"""

from __future__ import annotations

from smp.kern import (
    kern_fail,
    kern_synch,
    lock,
    pmap,
    subr_prf,
    uvm_anon,
    uvm_km,
    uvm_page,
    uvm_vnode,
)
from smp.kern import uvm as U
from smp.kern.param import (
    KERNEL_PMAP,
    NBPG,
    OWN_ANON,
    OWN_UOBJ,
    PG_BUSY,
    PG_CLEAN,
    PMAP_WIRED,
    VM_PROT_READ,
)
from smp.kern.uvm import counter, shared
from smp.kern.uvm_anon import swpgonly_add, uvm_swap_alloc
from smp.kern.uvm_page import (
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
W_PGDAEMON = subr_prf.String("pgdaemon")
W_FREE = subr_prf.String("uvm_wait")
MSG_DEADLOCK = subr_prf.Message("", "pagedaemon: deadlock detected!")
HIST_PAGEOUT = subr_prf.UVMHIST_FUNC("uvm_pageout")
H_SLEEP = subr_prf.Message("uvm_pageout", "  <<SLEEPING>>", "hist", "pdhist")
H_WOKE = subr_prf.Message("uvm_pageout", "  <<WOKE UP>>", "hist", "pdhist")
H_TARG = subr_prf.Message("uvm_pageout", "  free/ftarg=%d/%d, inact/itarg=%d/%d", "hist",
                          "pdhist")

_ci = None
_pagedaemon_tid = 0


def attach(ci, kernel) -> None:
    global _ci, _pagedaemon_tid
    _ci = ci
    _pagedaemon_tid = kernel.PAGEDAEMON


def _cnt(idx: int, n: int = 1) -> None:
    shared.cnt[_ci.cnt_base + idx] += n


def uvm_wait(wmesg: int) -> None:
    """Wake the pagedaemon and sleep until it frees memory; never returns (restart).

    => caller holds no locks.
    """
    if _ci.area["curproc"] == _pagedaemon_tid:
        subr_prf.printf(MSG_DEADLOCK)
        kern_synch.ltsleep(U.CHAN_FREE, wmesg, _ci.tick_ns * 100 // 8)
    lock.simple_lock(U.pagedaemon_lock)
    kern_synch.wakeup(U.CHAN_PAGEDAEMON)
    kern_synch.ltsleep(U.CHAN_FREE, wmesg, 0, U.pagedaemon_lock)


def uvm_pageout_step(tid: int) -> int:
    """One turn of the pagedaemon thread: a pass if we were woken, then sleep again.

    The real loop sleeps without a timeout and can lose a wakeup that arrives while it
    is scanning (uvm_wait's wakeup finds nobody asleep); a real machine recovers at the
    next allocation anywhere in the system.  A closed simulation may have none, so the
    pagedaemon's sleep is bounded by PAGEDAEMON_NAP (documented deviation).
    """
    p = shared.np["proc"][tid]
    if p["reg"][0] == 1:                         # woken (or napped out): one pass
        _pass()
    p["reg"][0] = 1
    call = subr_prf.UVMHIST_CALLED(HIST_PAGEOUT)
    subr_prf.UVMHIST_LOG(H_SLEEP, call)
    lock.simple_lock(U.pagedaemon_lock)
    kern_synch.ltsleep(U.CHAN_PAGEDAEMON, W_PGDAEMON, PAGEDAEMON_NAP, U.pagedaemon_lock)
    return 0


def _pass() -> None:
    _cnt(counter.pdwoke)
    ux = shared.uvmexp
    call = subr_prf.UVMHIST_CALLED(HIST_PAGEOUT)
    subr_prf.UVMHIST_LOG(H_WOKE, call)
    lock.simple_lock(uvm_page.pageq_lock)
    ux[U.INACTARG] = max((ux[U.ACTIVE] + ux[U.INACTIVE]) // 3, ux[U.FREETARG] + 1)
    subr_prf.UVMHIST_LOG(H_TARG, call, ux[U.FREE], ux[U.FREETARG], ux[U.INACTIVE],
                         ux[U.INACTARG])
    if ux[U.FREE] < ux[U.FREETARG] or ux[U.INACTIVE] < ux[U.INACTARG]:
        uvmpd_scan()
    lock.simple_unlock(uvm_page.pageq_lock)
    if ux[U.FREE] > ux[U.RESERVE_KERN] or ux[U.PAGING] == 0:
        kern_synch.wakeup(U.CHAN_FREE)


def uvmpd_scan() -> None:
    """Free inactive pages until free >= freetarg, then refill the inactive queue.

    => page queues locked (dropped around each pageout, as the I/O would).
    """
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(uvm_page.pageq_lock)
    _cnt(counter.pdrevs)
    ux = shared.uvmexp
    dirtyreacts = 0
    pg = shared.uvmq[Q_INACTIVE]
    scanned = 0
    limit = ux[U.INACTIVE]
    while pg >= 0 and ux[U.FREE] < ux[U.FREETARG] and scanned < limit:
        nxt = shared.pg_next[pg]
        scanned += 1
        _cnt(counter.pdscans)
        if shared.pg_flags[pg] & PG_BUSY or shared.pg_wire[pg]:
            _cnt(counter.pdbusy)
            pg = nxt
            continue
        owner = shared.pg_owner[pg]
        if owner == OWN_ANON:
            r = _pageout_anon(pg, dirtyreacts < UVMPD_NUMDIRTYREACTS)
        elif owner == OWN_UOBJ:
            r = _pageout_file(pg)
        else:
            r = "skip"
        if r == "react":
            dirtyreacts += 1
        pg = nxt if nxt < 0 or shared.pg_pq[nxt] == PQ_INACTIVE else shared.uvmq[Q_INACTIVE]
    # refill the inactive queue from the oldest active pages
    pg = shared.uvmq[Q_ACTIVE]
    while pg >= 0 and ux[U.INACTIVE] < ux[U.INACTARG]:
        nxt = shared.pg_next[pg]
        if shared.pg_pq[pg] == PQ_ACTIVE:
            lock.simple_unlock(uvm_page.pageq_lock)
            pmap.pmap_clear_reference(pg)
            lock.simple_lock(uvm_page.pageq_lock)
            if shared.pg_pq[pg] == PQ_ACTIVE:
                uvm_pagedeactivate(pg)
                _cnt(counter.pddeact)
        pg = nxt if nxt < 0 or shared.pg_pq[nxt] == PQ_ACTIVE else shared.uvmq[Q_ACTIVE]


def _reactivate(pg: int) -> str:
    """Back to the active queue: referenced again, or nowhere to page it out to."""
    lock.simple_lock(uvm_page.pageq_lock)
    uvm_pageactivate(pg)
    lock.simple_unlock(uvm_page.pageq_lock)
    _cnt(counter.pdreact)
    return "react"


def _pageout_anon(pg: int, may_react: bool) -> str:
    """Try to free one inactive anon page (=> page queues locked)."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(uvm_page.pageq_lock)
    an = shared.pg_anon[pg]
    if an < 0 or kern_fail.trylock_fails("uvmpd_scan") or \
            not lock.simple_lock_try(uvm_anon.an_lock + an):
        _cnt(counter.pdbusy)
        return "busy"
    if shared.an_page[an] != pg:
        lock.simple_unlock(uvm_anon.an_lock + an)
        return "busy"
    lock.simple_unlock(uvm_page.pageq_lock)
    try:
        if pmap.pmap_clear_reference(pg):
            return _reactivate(pg)
        pmap.pmap_page_remove(pg)
        dirty = not shared.pg_flags[pg] & PG_CLEAN or pmap.pmap_is_modified(pg) or \
            not shared.an_swslot[an]
        if dirty:
            slot = shared.an_swslot[an] - 1
            if slot < 0:
                slot = uvm_swap_alloc()
            if slot < 0:                          # swap full: keep it
                if not may_react:
                    return "busy"                 # UVMPD_NUMDIRTYREACTS used up this pass
                return _reactivate(pg)
            shared.an_swslot[an] = slot + 1
            uvm_pager_put(pg)
            _cnt(counter.pgswapout)
            _cnt(counter.pdpageouts)
        shared.pvh_attrs[pg] = 0
        shared.an_page[an] = -1
        swpgonly_add(1)
        uvm_pagefree(pg)
        _cnt(counter.pdfreed)
        return "freed"
    finally:
        lock.simple_unlock(uvm_anon.an_lock + an)
        lock.simple_lock(uvm_page.pageq_lock)


def _pageout_file(pg: int) -> str:
    """Free one inactive file page, writing it back if dirty (=> page queues locked)."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(uvm_page.pageq_lock)
    obj = shared.pg_obj[pg]
    lk = uvm_vnode.vnode_lock + obj % uvm_vnode.NVNODE
    if not lock.simple_lock_try(lk):
        _cnt(counter.pdbusy)
        return "busy"
    lock.simple_unlock(uvm_page.pageq_lock)
    try:
        if pmap.pmap_clear_reference(pg):
            return _reactivate(pg)
        pmap.pmap_page_remove(pg)
        if not shared.pg_flags[pg] & PG_CLEAN or pmap.pmap_is_modified(pg):
            uvm_pager_put(pg)
            _cnt(counter.pdpageouts)
        shared.file_page[shared.file_base[obj] + shared.pg_off[pg]] = -1
        shared.pvh_attrs[pg] = 0
        uvm_pagefree(pg)
        _cnt(counter.pdfreed)
        return "freed"
    finally:
        lock.simple_unlock(lk)
        lock.simple_lock(uvm_page.pageq_lock)


def uvm_pager_put(pg: int) -> None:
    """Write one page: map it for the I/O (uvm_pagermapin), "write", unmap, mark clean."""
    va = uvm_pagermapin(pg, VM_PROT_READ)
    shared.pg_flags[pg] |= PG_CLEAN
    uvm_pagermapout(va)


def uvm_pagermapin(pg: int, prot: int) -> int:
    """Map a page into pager_map: a plain pmap_enter on the kernel pmap (no PMAP_CANFAIL)."""
    _cnt(counter.pagermapin)
    va = uvm_km.uvm_km_valloc(uvm_km.PAGER_MAP, 1)
    if va < 0:
        # pager_map is full: the pagedaemon (our only pager) uses the emergency
        # window rather than sleep with the page's anon locked ("emergva")
        va = uvm_km.emergva()
    pmap.pmap_enter(KERNEL_PMAP, va, pg, prot, PMAP_WIRED | prot)
    return va


def uvm_pagermapout(va: int) -> None:
    pmap.pmap_remove(KERNEL_PMAP, va, va + NBPG)
    if va != uvm_km.emergva():
        uvm_km.uvm_km_vfree(va, 1)
