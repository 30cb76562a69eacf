"""The pagedaemon and uvm_wait (uvm_pdaemon.c [PD39]).

uvm_wait(wmsg): a thread that cannot get memory wakes the pagedaemon and
sleeps on ``&uvmexp.free`` with ``pagedaemon_lock`` as interlock (so the
pagedaemon's wakeup cannot be missed).  The pagedaemon itself never sleeps
there: with no pageout in flight it prints "pagedaemon: deadlock detected!"
and naps for hz/8.

uvm_pageout (a kernel thread, one pass per wakeup; with ``biglock`` it runs
under the big lock and gives it up whenever it sleeps):
    sleep on &uvm.pagedaemon until uvm_pagealloc, uvm_wait or aiodoned wakes
        us; pdwoke++
    inactarg = max((active + inactive) / 3, freetarg + 1)
    if free + paging < freetarg or inactive < inactarg: uvmpd_scan()
    if free > reserve_kernel or nothing is being paged out: wakeup(&uvmexp.free)
        (every uvm_wait sleeper, flt_pmfail* included)
    pool_drain: one pool gives its idle pages back

uvmpd_scan_inactive: walk the inactive queue (oldest first) until free + paging
(the pages whose pageout is in flight or gathered) reaches 4 * freetarg, or
UVMPD_NUMDIRTYREACTS = 16 dirty pages were reactivated because swap is full:
    busy (being written) or wired -> skip
    referenced since it was deactivated (pmap_clear_reference) -> reactivate
    anon page: try-lock the anon (the pagedaemon holds the page queues, the
        reverse of the fault path's order); unmap it (pmap_page_remove); clean
        with a copy in swap -> free it; dirty: swap full (swpgonly == swpages)
        -> reactivate, dirtyreacts++; no free slot (swap is held by pages that
        are also in memory) -> leave it; else a swap slot, PG_BUSY, into the swap
        cluster; a full cluster (MAXBSIZE) is written
    file page: unmap; clean -> free it; dirty -> written with its cluster
    (the writes are asynchronous, uvm_pager: pages are freed when the I/O is
    done, by aiodoned or by a later pass; a write that finds no pager VA ends
    the pass)
uvmpd_scan: below freetarg, swap some processes out first (pdswout; uvm_glue), then the
inactive scan, then walk the active queue (oldest first):
    deactivate pages (after clearing their reference bits) until inactive
    reaches inactarg, and, if the scan freed nothing because every swap slot is
    taken while some of them belong to pages still in memory, free those pages'
    slots (they are dirty again) until freetarg - free slots are back.
"""

from __future__ import annotations

from smp.kern import (
    intr,
    kern_fail,
    kern_synch,
    lock,
    pmap,
    subr_prf,
    uvm_anon,
    uvm_glue,
    uvm_page,
    uvm_pager,
    uvm_vnode,
)
from smp.kern import uvm as U
from smp.kern.param import (
    OWN_ANON,
    OWN_UOBJ,
    PG_BUSY,
    PG_CLEAN,
    PG_RELEASED,
    PG_WANTED,
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
MAXCLUSTER = uvm_pager.MAXCLUSTER
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
    if _ci.area["curproc"] == _pagedaemon_tid and shared.uvmexp[U.PAGING] == 0:
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
    if ux[U.FREE] + ux[U.PAGING] < ux[U.FREETARG] or ux[U.INACTIVE] < ux[U.INACTARG]:
        uvmpd_scan()
    lock.simple_unlock(uvm_page.pageq_lock)
    if ux[U.FREE] > ux[U.RESERVE_KERN] or ux[U.PAGING] == 0:
        kern_synch.wakeup(U.CHAN_FREE)
    intr.pool_drain()


def uvmpd_scan() -> None:
    """Meet the free target from the inactive queue, then the inactive target (and a
    swap shortage) from the active queue.

    => page queues locked (dropped around each page's pmap work and each write).
    """
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(uvm_page.pageq_lock)
    _cnt(counter.pdrevs)
    ux = shared.uvmexp
    if ux[U.FREE] < ux[U.FREETARG] and uvm_glue.enabled():
        _cnt(counter.pdswout)                 # swap out some processes (uvm_glue)
        lock.simple_unlock(uvm_page.pageq_lock)
        uvm_glue.uvm_swapout_threads()
        lock.simple_lock(uvm_page.pageq_lock)
    pages_freed = uvmpd_scan_inactive()
    inactive_shortage = ux[U.INACTARG] - ux[U.INACTIVE]
    # Every slot taken, but not all by pages that live only in swap: nothing can be
    # paged out until some resident pages give their (stale-to-be) copies back.
    swap_shortage = 0
    if ux[U.FREE] < ux[U.FREETARG] and ux[U.SWPGINUSE] == ux[U.SWPAGES] and \
            ux[U.SWPGONLY] < ux[U.SWPAGES] and pages_freed == 0:
        swap_shortage = ux[U.FREETARG] - ux[U.FREE]
    pg = shared.uvmq[Q_ACTIVE]
    while pg >= 0 and (inactive_shortage > 0 or swap_shortage > 0):
        nxt = shared.pg_next[pg]
        if not shared.pg_flags[pg] & PG_BUSY:
            if swap_shortage > 0 and _drop_swslot(pg):
                swap_shortage -= 1
            if inactive_shortage > 0:
                lock.simple_unlock(uvm_page.pageq_lock)
                pmap.pmap_clear_reference(pg)
                lock.simple_lock(uvm_page.pageq_lock)
                if shared.pg_pq[pg] == PQ_ACTIVE:
                    uvm_pagedeactivate(pg)
                    _cnt(counter.pddeact)
                    inactive_shortage -= 1
        pg = nxt if nxt < 0 or shared.pg_pq[nxt] == PQ_ACTIVE else shared.uvmq[Q_ACTIVE]


def uvmpd_scan_inactive() -> int:
    """Free inactive pages until free + paging >= 4 * freetarg; the number freed.

    => page queues locked (dropped around each page's work and each write started).
    Dirty anonymous pages are gathered into a swap cluster, written MAXCLUSTER at a time
    (and what is left when the scan ends); a dirty file page is written with its cluster
    at once.  Writes are asynchronous (uvm_pager): the pass does not wait.  With swap
    full the scan ends after UVMPD_NUMDIRTYREACTS dirty pages were put back on the active
    queue: going on would only cycle the active pages through here too fast.
    """
    ux = shared.uvmexp
    target = ux[U.FREETARG] << 2
    dirtyreacts = 0
    freed = 0
    pg = shared.uvmq[Q_INACTIVE]
    scanned = 0
    limit = ux[U.INACTIVE]
    cluster: list[int] = []
    cnt, c_scans = shared.cnt, _ci.cnt_base + counter.pdscans
    while pg >= 0 and scanned < limit:
        if ux[U.FREE] + ux[U.PAGING] + len(cluster) >= target or \
                dirtyreacts == UVMPD_NUMDIRTYREACTS:
            break                                 # "met free target: exit loop"
        nxt = shared.pg_next[pg]
        scanned += 1
        cnt[c_scans] += 1
        if shared.pg_flags[pg] & PG_BUSY or shared.pg_wire[pg]:
            _cnt(counter.pdbusy)
            pg = nxt
            continue
        owner = shared.pg_owner[pg]
        if owner == OWN_ANON:
            r = _pageout_anon(pg, cluster)
        elif owner == OWN_UOBJ:
            r = _pageout_file(pg)
        else:
            r = "skip"
        if r == "dirtyreact":
            dirtyreacts += 1
        elif r == "freed":
            freed += 1
        if len(cluster) == MAXCLUSTER:
            r = _put_swap_cluster(cluster)
        if r == "nova":                           # no VA to start a write: end the pass
            break
        pg = nxt if nxt < 0 or shared.pg_pq[nxt] == PQ_INACTIVE else shared.uvmq[Q_INACTIVE]
    if cluster:
        _put_swap_cluster(cluster)
    return freed


def _drop_swslot(pg: int) -> bool:
    """Give back the swap slot of a resident anon page, which is dirty from now on
    (uvmpd_scan's swap shortage; => page queues locked).  False if the anon was busy
    or had no slot."""
    if shared.pg_owner[pg] != OWN_ANON:
        return False
    an = shared.pg_anon[pg]
    if an < 0 or not lock.simple_lock_try(uvm_anon.an_lock + an):
        return False
    dropped = False
    slot = shared.an_swslot[an]
    if shared.an_page[an] == pg and slot and not shared.pg_flags[pg] & PG_BUSY:
        uvm_anon.uvm_swap_free(slot - 1)
        shared.an_swslot[an] = 0
        shared.pg_flags[pg] &= ~PG_CLEAN
        dropped = True
    lock.simple_unlock(uvm_anon.an_lock + an)
    return dropped


def _reactivate(pg: int) -> str:
    """Back to the active queue: referenced again, or nowhere to page it out to."""
    lock.simple_lock(uvm_page.pageq_lock)
    uvm_pageactivate(pg)
    lock.simple_unlock(uvm_page.pageq_lock)
    _cnt(counter.pdreact)
    return "react"


def _pageout_anon(pg: int, cluster: list[int]) -> str:
    """One inactive anon page (=> page queues locked): freed if clean with a swap copy,
    else given a swap slot, made busy and added to ``cluster``; with swap full it goes
    back to the active queue ("dirtyreact")."""
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
        if not dirty:                             # clean, its data in swap: free it
            shared.pvh_attrs[pg] = 0
            shared.an_page[an] = -1
            swpgonly_add(1)
            _pagefree(pg)
            _cnt(counter.pdfreed)
            return "freed"
        slot = shared.an_swslot[an] - 1
        if slot < 0:
            if uvm_anon.swap_full():              # nowhere to page it out to
                lock.simple_lock(uvm_page.pageq_lock)
                uvm_pageactivate(pg)
                lock.simple_unlock(uvm_page.pageq_lock)
                return "dirtyreact"
            slot = uvm_swap_alloc()
            if slot < 0:                          # slots held by resident pages: leave it
                return "noslot"
        shared.an_swslot[an] = slot + 1
        shared.pg_flags[pg] = (shared.pg_flags[pg] | PG_BUSY) & ~PG_CLEAN
        cluster.append(pg)
        _cnt(counter.pgswapout)
        return "queued"
    finally:
        lock.simple_unlock(uvm_anon.an_lock + an)
        lock.simple_lock(uvm_page.pageq_lock)


def _pagefree(pg: int) -> None:
    """uvm_pagefree of a page we took from the inactive queue (=> its owner locked): with
    the page queues, which NetBSD's scan holds throughout and ours dropped for the pmap."""
    lock.simple_lock(uvm_page.pageq_lock)
    uvm_pagefree(pg)
    lock.simple_unlock(uvm_page.pageq_lock)


def _put_swap_cluster(cluster: list[int]) -> str:
    """Start writing the gathered anon pages (=> page queues locked; dropped meanwhile)."""
    pages = list(cluster)
    cluster.clear()
    lock.simple_unlock(uvm_page.pageq_lock)
    try:
        if uvm_pager.uvm_pager_put(pages):
            return "paging"
        for pg in pages:                          # no VA for the write: they stay dirty
            an = shared.pg_anon[pg]
            lock.simple_lock(uvm_anon.an_lock + an)
            released = shared.pg_flags[pg] & PG_RELEASED
            _unbusy(pg)
            lock.simple_unlock(uvm_anon.an_lock + an)
            if released:                          # freed while busy: what the write's
                uvm_anon.uvm_anfree(an)           # completion would have done
        return "nova"
    finally:
        lock.simple_lock(uvm_page.pageq_lock)


def _unbusy(pg: int) -> None:
    """Clear PG_BUSY (and PG_RELEASED) of a page we made busy, waking whoever waits
    (=> its owner locked)."""
    f = shared.pg_flags[pg]
    if f & PG_WANTED:
        kern_synch.wakeup(U.CHAN_PAGE + pg)
    shared.pg_flags[pg] = f & ~(PG_BUSY | PG_WANTED | PG_RELEASED)


def _pageout_file(pg: int) -> str:
    """One inactive file page (=> page queues locked): freed if clean, else written with
    the dirty inactive pages of its MAXBSIZE block (uvm_mk_pcluster)."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(uvm_page.pageq_lock)
    obj = shared.pg_obj[pg]
    lk = uvm_vnode.vnode_lock + obj % uvm_vnode.NVNODE
    if not lock.simple_lock_try(lk):
        _cnt(counter.pdbusy)
        return "busy"
    lock.simple_unlock(uvm_page.pageq_lock)
    locked = True
    try:
        if pmap.pmap_clear_reference(pg):
            return _reactivate(pg)
        pmap.pmap_page_remove(pg)
        if shared.pg_flags[pg] & PG_CLEAN and not pmap.pmap_is_modified(pg):
            shared.file_page[shared.file_base[obj] + shared.pg_off[pg]] = -1
            shared.pvh_attrs[pg] = 0
            _pagefree(pg)
            _cnt(counter.pdfreed)
            return "freed"
        pages = _mk_pcluster(obj, pg)
        lock.simple_unlock(lk)
        locked = False
        if uvm_pager.uvm_pager_put(pages):
            return "paging"
        lock.simple_lock(lk)
        locked = True
        for p in pages:
            _unbusy(p)
        return "nova"
    finally:
        if locked:
            lock.simple_unlock(lk)
        lock.simple_lock(uvm_page.pageq_lock)


def _mk_pcluster(obj: int, pg: int) -> list[int]:
    """uvm_mk_pcluster for a vnode: ``pg`` and its dirty, inactive, unbusy neighbours in
    the MAXBSIZE block around it (=> the object locked); all busy, unmapped, in file
    order."""
    off = shared.pg_off[pg]
    lo = off - off % MAXCLUSTER
    hi = min(lo + MAXCLUSTER, shared.file_size[obj])
    base = shared.file_base[obj]
    pages = []
    for o in range(lo, hi):
        p = shared.file_page[base + o]
        if p < 0:
            continue
        if p != pg:
            f = shared.pg_flags[p]
            if f & PG_BUSY or shared.pg_pq[p] != PQ_INACTIVE or shared.pg_wire[p]:
                continue
            pmap.pmap_page_remove(p)
            if f & PG_CLEAN and not pmap.pmap_is_modified(p):
                continue
        shared.pg_flags[p] = (shared.pg_flags[p] | PG_BUSY) & ~PG_CLEAN
        pages.append(p)
    return pages
