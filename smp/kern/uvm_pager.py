"""Pageout I/O (uvm_pager.c, the swap and vnode pagers' writes, the aiodone daemon).

The pagedaemon writes dirty pages in clusters and does not wait for the disk:

    uvm_pager_put(pages):          the pagedaemon has made them PG_BUSY (and unmapped)
        uvm_pagermapin: pager_map VA for the cluster and a plain
            pmap_enter(kernel pmap, ..., PMAP_WIRED | VM_PROT_READ) per page -- no
            PMAP_CANFAIL: a kernel pv entry each; pager_map full -> the pagedaemon's
            emergency window (emergva); that in use too -> the cluster is not started
            (NetBSD's pagedaemon sleeps "emergva" holding the busy pages; ours gives
            them back, unbusy and still dirty, and ends its pass)
        the write is started: it completes disk_latency later (VM_PAGER_PEND);
        uvmexp.paging += n
    the disk interrupt (smp.kern.intr), on the CPU after the one that started it:
        uvm_aio_biodone: the buffer goes on uvm.aio_done, wakeup(&uvm.aiodoned)
    the aiodoned kernel thread, uvm_aio_aiodone for each:
        uvm_pagermapout: the mappings and the VA go (waking whoever waits for VA)
        each page, under its anon's (or object's) lock: clean -- its U/M bits cleared
            (pmap_clear_modify, pmap_clear_reference) -- and no longer busy (a
            fault waiting for it is woken); if its anon was freed while it was being
            written (PG_RELEASED) the anon goes now (uvm_anfree); with
            ``pageout_free = aiodone`` the page is freed here (its data lives in swap or
            in the file now), with ``rescan`` it stays clean on the inactive queue for
            the pagedaemon's next pass (which one the January 2001 code did is a kernel
            key: see smp.config)
        uvmexp.paging -= n; wakeup(&uvmexp.free), or the pagedaemon if free is still
        at or below reserve_kernel

Clusters: anonymous pages are gathered by the scan, MAXBSIZE/PAGE_SIZE (16) at most,
each with its own swap slot (NetBSD allocates a run of slots for a cluster; the
simulation does not model swap placement); a file's page takes along the dirty,
inactive, unbusy pages of its MAXBSIZE block (uvm_mk_pcluster).
"""

from __future__ import annotations

import numpy as np

from smp.kern import (
    intr,
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
    MAXBSIZE,
    NBPG,
    OWN_ANON,
    PAGER_MAP_SIZE,
    PG_BUSY,
    PG_CLEAN,
    PG_RELEASED,
    PG_WANTED,
    PMAP_WIRED,
    VM_PROT_READ,
)
from smp.kern.uvm import counter, shared
from smp.kern.uvm_anon import swpgonly_add
from smp.kern.uvm_page import uvm_pagefree
from smp.machine.layout import ArraySpec

MAXCLUSTER = MAXBSIZE // NBPG
# a record (struct buf) for as many writes as pager_map can hold -- one page each at
# worst, not a 64 KiB cluster each -- and the emergency window's
NAIO = PAGER_MAP_SIZE // NBPG + 1
# aio_state
A_FREE, A_INFLIGHT, A_DONE, A_QUEUED = range(4)
# aio_glob slots: the done queue's head and tail, emergva in use
AG_HEAD, AG_TAIL, AG_EMERG = range(3)
CHAN_AIODONED = 0xC0F0_0030            # &uvm.aiodoned
W_AIODONED = subr_prf.String("aiodoned", late=True)
HIST_AIODONE = subr_prf.UVMHIST_FUNC("uvm_aio_aiodone")
H_AIODONE = subr_prf.Message("uvm_aio_aiodone", "  aio %d: %d pages at kva 0x%x, swap %d",
                             "hist", "pdhist", late=True)

_ci = None
_free_at_aiodone = True
_latency = 0
aiodoned_lock = -1                     # uvm.aiodoned_lock (declare)


def declare(kernel, locks) -> list[ArraySpec]:
    """The writes in flight (struct buf + the pager's aio) and uvm.aiodoned_lock."""
    global aiodoned_lock
    aiodoned_lock = locks.declare("aiodoned_lock")
    i4, i8 = np.dtype("<i4"), np.dtype("<i8")
    return [ArraySpec("aio_state", i4, (NAIO,)), ArraySpec("aio_n", i4, (NAIO,)),
            ArraySpec("aio_pages", i4, (NAIO, MAXCLUSTER)), ArraySpec("aio_kva", i8, (NAIO,)),
            ArraySpec("aio_due", i8, (NAIO,)), ArraySpec("aio_cpu", i4, (NAIO,)),
            ArraySpec("aio_next", i4, (NAIO,)), ArraySpec("aio_glob", i4, (4,))]


def format(seg, kernel) -> None:
    a = seg.arrays
    a["aio_state"][:] = A_FREE
    a["aio_next"][:] = -1
    a["aio_pages"][:] = -1
    a["aio_glob"][:] = -1
    a["aio_glob"][AG_EMERG] = 0


def attach(ci, kernel) -> None:
    global _ci, _free_at_aiodone, _latency, _state_off
    _ci = ci
    _free_at_aiodone = kernel.config.pageout_free == "aiodone"
    _latency = kernel.machine.disk_latency
    _state_off = ci.seg.layout.arrays["aio_state"][0]


def _cnt(idx: int, n: int = 1) -> None:
    shared.cnt[_ci.cnt_base + idx] += n


# --- starting a write ------------------------------------------------------------------------

def uvm_pager_put(pages: list[int]) -> bool:
    """Start writing a cluster of busy pages (VM_PAGER_PEND); False if there was no VA to
    map them (the caller unbusies them).  => no page, object or queue lock held."""
    va = uvm_pagermapin(pages)
    if va < 0:
        return False
    lock.simple_lock(aiodoned_lock)
    states = shared.np["aio_state"]
    a = int(np.argmin(states))                 # a free record (one per page of pager_map)
    shared.aio_n[a] = len(pages)
    row = shared.np["aio_pages"][a]
    row[:] = -1
    row[:len(pages)] = pages
    shared.aio_kva[a] = va
    due = _ci.core.now() + _latency
    shared.aio_due[a] = due
    shared.aio_cpu[a] = (_ci.cpu + 1) % _ci.ncpu     # "on another CPU's interrupt"
    # in flight last: any CPU's intr.poll reads the record without our lock, and must not
    # see the state before the due time (a stale one would complete the write at once)
    shared.aio_state[a] = A_INFLIGHT
    shared.uvmexp[U.PAGING] += len(pages)
    lock.simple_unlock(aiodoned_lock)
    intr.set_due(due)
    _cnt(counter.pageout_clusters)
    _cnt(counter.pdpageouts, len(pages))
    return True


def uvm_pagermapin(pages: list[int]) -> int:
    """Map pages into pager_map for I/O: a plain pmap_enter on the kernel pmap each (no
    PMAP_CANFAIL); -1 if neither pager_map nor the emergency window has room."""
    _cnt(counter.pagermapin)
    n = len(pages)
    va = uvm_km.uvm_km_valloc(uvm_km.PAGER_MAP, n)
    if va < 0:
        # pager_map is full: the pagedaemon (our only pager) uses the emergency window
        lock.simple_lock(aiodoned_lock)
        if shared.aio_glob[AG_EMERG]:
            lock.simple_unlock(aiodoned_lock)
            return -1
        shared.aio_glob[AG_EMERG] = 1
        lock.simple_unlock(aiodoned_lock)
        va = uvm_km.emergva()
    for i, pg in enumerate(pages):
        pmap.pmap_enter(KERNEL_PMAP, va + i * NBPG, pg, VM_PROT_READ, PMAP_WIRED | VM_PROT_READ)
    return va


def uvm_pagermapout(va: int, n: int) -> None:
    pmap.pmap_remove(KERNEL_PMAP, va, va + n * NBPG)
    if va == uvm_km.emergva():
        lock.simple_lock(aiodoned_lock)
        shared.aio_glob[AG_EMERG] = 0
        lock.simple_unlock(aiodoned_lock)
    else:
        uvm_km.uvm_km_vfree(va, n)


# --- the disk interrupt ---------------------------------------------------------------------

def poll_aio(now: int) -> int:
    """intr.poll: post every write that has completed to its CPU's interrupt; returns the
    earliest completion still to come."""
    states = shared.np["aio_state"]
    inflight = np.flatnonzero(states == A_INFLIGHT)
    if not len(inflight):
        return intr.NEVER
    dues = shared.np["aio_due"][inflight]
    for a in inflight[dues <= now].tolist():
        if _ci.core.cas32(_state_off + 4 * a, A_INFLIGHT, A_DONE):
            _ci.send_ipi(int(shared.aio_cpu[a]), intr.I386_IPI_DEVINTR)
    later = dues[dues > now]
    return int(later.min()) if len(later) else intr.NEVER


_state_off = 0


def uvm_aio_biodone(cpu: int) -> None:
    """biodone of the writes that completed on this CPU (interrupt level): each goes on
    uvm.aio_done, and aiodoned is woken."""
    done = np.flatnonzero((shared.np["aio_state"] == A_DONE) & (shared.np["aio_cpu"] == cpu))
    if not len(done):
        return
    lock.simple_lock(aiodoned_lock)
    for a in done.tolist():
        if shared.aio_state[a] != A_DONE:
            continue
        shared.aio_state[a] = A_QUEUED
        shared.aio_next[a] = -1
        t = shared.aio_glob[AG_TAIL]
        if t < 0:
            shared.aio_glob[AG_HEAD] = a
        else:
            shared.aio_next[t] = a
        shared.aio_glob[AG_TAIL] = a
    lock.simple_unlock(aiodoned_lock)
    kern_synch.wakeup(CHAN_AIODONED)


# --- the aiodone daemon ----------------------------------------------------------------------

def uvm_aiodone_daemon_step(tid: int) -> int:
    """One turn of the aiodoned kernel thread: every completed write, then sleep until
    biodone wakes it (=> holds no lock)."""
    while True:
        lock.simple_lock(aiodoned_lock)
        a = shared.aio_glob[AG_HEAD]
        if a < 0:
            kern_synch.ltsleep(CHAN_AIODONED, W_AIODONED, 0, aiodoned_lock)
        shared.aio_glob[AG_HEAD] = shared.aio_next[a]
        if shared.aio_next[a] < 0:
            shared.aio_glob[AG_TAIL] = -1
        lock.simple_unlock(aiodoned_lock)
        uvm_aio_aiodone(a)


def uvm_aio_aiodone(a: int) -> None:
    """I/O-done processing of one write (thread context): see the module docstring."""
    n = int(shared.aio_n[a])
    pages = [int(x) for x in shared.np["aio_pages"][a][:n]]
    va = int(shared.aio_kva[a])
    call = subr_prf.UVMHIST_CALLED(HIST_AIODONE)
    subr_prf.UVMHIST_LOG(H_AIODONE, call, a, n, va,
                         int(shared.pg_owner[pages[0]] == OWN_ANON))
    uvm_pagermapout(va, n)
    freed = 0
    for pg in pages:
        freed += _page_done(pg)
    lock.simple_lock(aiodoned_lock)
    shared.aio_state[a] = A_FREE
    shared.uvmexp[U.PAGING] -= n
    lock.simple_unlock(aiodoned_lock)
    if freed:
        _cnt(counter.pdfreed, freed)
    ux = shared.uvmexp
    if ux[U.FREE] <= ux[U.RESERVE_KERN]:
        kern_synch.wakeup(U.CHAN_PAGEDAEMON)
    else:
        kern_synch.wakeup(U.CHAN_FREE)


def _page_done(pg: int) -> int:
    """One written page: clean, unbusy, freed as the key says; returns 1 if freed."""
    owner = shared.pg_owner[pg]
    if owner == OWN_ANON:
        an = shared.pg_anon[pg]
        lk = uvm_anon.an_lock + an
    else:
        obj = shared.pg_obj[pg]
        lk = uvm_vnode.vnode_lock + obj % uvm_vnode.NVNODE
    lock.simple_lock(lk)
    pmap.pmap_clear_modify(pg)
    pmap.pmap_clear_reference(pg)
    flags = shared.pg_flags[pg]
    if flags & PG_WANTED:
        kern_synch.wakeup(U.CHAN_PAGE + pg)
    if owner == OWN_ANON and flags & PG_RELEASED:
        # its anon was freed while the page was being written: free the anon now
        shared.pg_flags[pg] = (flags | PG_CLEAN) & ~(PG_BUSY | PG_WANTED | PG_RELEASED)
        lock.simple_unlock(lk)
        uvm_anon.uvm_anfree(an)
        return 1
    shared.pg_flags[pg] = (flags | PG_CLEAN) & ~(PG_BUSY | PG_WANTED)
    if not _free_at_aiodone:
        lock.simple_unlock(lk)
        return 0
    if owner == OWN_ANON:
        shared.an_page[an] = -1
        swpgonly_add(1)
    else:
        shared.file_page[shared.file_base[obj] + shared.pg_off[pg]] = -1
    shared.pvh_attrs[pg] = 0
    lock.simple_lock(uvm_page.pageq_lock)
    uvm_pagefree(pg)
    lock.simple_unlock(uvm_page.pageq_lock)
    lock.simple_unlock(lk)
    return 1


def paging_pages() -> int:
    """Pages of the writes not yet done (for DIAGNOSTIC: uvmexp.paging)."""
    st = shared.np["aio_state"]
    return int(shared.np["aio_n"][st != A_FREE].sum())


__all__ = ["uvm_pager_put", "uvm_pagermapin", "uvm_pagermapout", "uvm_aio_biodone",
           "uvm_aiodone_daemon_step", "uvm_aio_aiodone", "poll_aio",
           "MAXCLUSTER"]
