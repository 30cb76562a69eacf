"""Swapping processes out and in (uvm_glue.c of NetBSD 1.5: uvm_swapout_threads,
uvm_swapout, uvm_swapin, uvm_scheduler).

In 1.5 "swapping out" a process is unwiring its u-area and calling pmap_collect on
its pmap, which in the pmap.c 1.91 lineage is ``pmap_remove(pmap, VM_MIN_ADDRESS,
VM_MAX_ADDRESS)``: every user mapping goes, wired ones too, and every PTP with them.
It is the one path of the January 2001 kernel besides stealing that gives page-table
pages back while their process lives, so the question of the thread -- is stealing
needed? -- has to be asked with it in place.  i386 does not define __SWAP_BROKEN, so
the pagedaemon runs it:

    uvmpd_scan: if free < freetarg: pdswout++; uvm_swapout_threads()

    uvm_swapout_threads:
        for each swappable process (P_INMEM, not P_SYSTEM or P_WEXIT, not held):
            SRUN (on a run queue, not on a CPU: SONPROC is not in 1.5's switch):
                remember the longest resident (p_swtime)
            SSLEEP:
                asleep maxslp (20) seconds or more: uvm_swapout it
                else remember the longest asleep (p_slptime)
        none swapped and free <= atop(USPACE) (2 pages): uvm_swapout the longest
            asleep (p_slptime >= 1), else the longest resident (p_swtime >= 1)

    uvm_swapout(p): clear P_INMEM (the run queue will not run it: below), unwire the
        u-area, pmap_collect(p's pmap), p_swtime = 0, swapouts++

    uvm_scheduler (proc0), for a runnable process that is not P_INMEM: if free >
        atop(USPACE), uvm_swapin -- fault the u-area in wired, set P_INMEM,
        p_swtime = 0, swapins++ -- else uvm_wait("schedpwait") and look again

What the model does differently, and why:

* There is no proc0.  A swapped-out process stays on its run queue (the machine's
  queues are rings, with no remrunqueue of one thread), and the CPU that takes it
  swaps it in before it runs (:func:`uvm_swapin`), waiting "schedpwait" while free
  memory is at or below the u-area's two pages, as proc0 waits.  A process woken from
  its sleep comes back the same way.
* The u-area stays resident and wired.  In 1.5 it becomes pageable, and the
  pagedaemon may write its two pages to swap through the aobj pager; the model keeps
  kernel_object pages off the paging queues and has no pager for them, so the two
  pages a swapout gave back in 1.5 are not given back here (the PTPs are).
* The process's vm_map lock is held across the swapout, and its swapin takes it
  too, so the CPU that dequeues a process being swapped out waits for the collect to
  finish.  A process dequeued in the instant between the pagedaemon's look and its
  clearing of P_INMEM runs its slice anyway (its faults put its mappings back) and is
  swapped in when it next runs; 1.5 on the MP branch has the same window.
* p_slptime and p_swtime are whole seconds from moments kept in the proc row
  (smp.kern.kern_proc), not counters schedcpu() bumps once a second.
* allproc is walked in thread-id order (1.5's list is newest first); ties go to the
  first found, as there.
* PHOLD is physio's only (``p_holdcnt``), the model's one holder.

``swapout`` in the kernel configuration: ``on`` (default, 1.91's pmap_collect), ``off``
(never), ``skipwired`` (pmap.c 1.135's pmap_collect, which keeps wired mappings).
"""

from __future__ import annotations

import numpy as np

from smp.kern import lock, pmap, subr_prf, uvm_map, uvm_pdaemon
from smp.kern import uvm as U
from smp.kern.kern_proc import P_INMEM, P_SYSTEM, P_WEXIT, SRUN, SSLEEP, slptime
from smp.kern.param import UPAGES
from smp.kern.uvm import counter, shared

MAXSLP = 20                        # seconds asleep before a process is swapped out at once
NS = 1_000_000_000

W_SCHEDPWAIT = subr_prf.String("schedpwait", late=True)
HIST_SWAPOUT = subr_prf.UVMHIST_FUNC("uvm_swapout")
H_SWAPOUT = subr_prf.Message("uvm_swapout", "swapout: pid %d stat %d pri %d free %d", "hist",
                             "pdhist", late=True)
# uvm_fault.c's, raised by uvm_map's unwiring; declared here, in the last subsystem, so
# that its catalogue id comes after every earlier one (old run directories keep theirs)
P_UNWIRE_NONWIRED = subr_prf.Message(
    "", "uvm_fault_unwire_locked: unwiring non-wired memory", "panic", late=True)
HIST_SWAPIN = subr_prf.UVMHIST_FUNC("uvm_swapin")
H_SWAPIN = subr_prf.Message("uvm_swapin", "swapin: pid %d free %d", "hist", "pdhist",
                            late=True)

_ci = None
_mode = "off"
_first_user = 2


def attach(ci, kernel) -> None:
    global _ci, _mode, _first_user
    _ci = ci
    _mode = kernel.config.swapout
    _first_user = kernel.FIRST_USER_TID


def enabled() -> bool:
    return _mode != "off"


def _swappable(proc: np.ndarray, tids: np.ndarray) -> np.ndarray:
    """1.5's swappable(p) for the threads ``tids``: user processes in memory, not
    exiting, not held, runnable (off every CPU) or asleep."""
    p = proc[tids]
    stat = p["stat"]
    ok = (p["flag"] & (P_SYSTEM | P_INMEM | P_WEXIT)) == P_INMEM
    ok &= (p["pid"] != 0) & (p["holdcnt"] == 0) & ((stat == SRUN) | (stat == SSLEEP))
    ok &= tids >= _first_user
    ok &= ~np.isin(tids, _ci.seg.cpus["curproc"])      # SONPROC: not in 1.5's switch
    return ok


def uvm_swapout_threads() -> int:
    """Swap out the processes asleep maxslp seconds, or, short of memory (free <= the
    u-area's pages) and with none of those, the longest asleep or longest resident one;
    returns how many were swapped out.  (=> page queues not held: the pagedaemon drops
    them around this, as uvmpd_scan does.)"""
    proc = shared.np["proc"]
    now = _ci.core.now()
    tids = np.arange(len(proc))
    cand = tids[_swappable(proc, tids)]
    if not len(cand):
        return 0
    stat = proc["stat"][cand]
    didswap = 0
    sleepers = cand[stat == SSLEEP]
    slp = (now - proc["slptime0"][sleepers].astype(np.int64)) // NS
    for tid in sleepers[slp >= MAXSLP].tolist():
        didswap += uvm_swapout(int(tid))
    if didswap or shared.uvmexp[U.FREE] > UPAGES:
        return didswap
    outp = -1
    short = slp < MAXSLP
    if short.any() and slp[short].max() > 0:
        outp = int(sleepers[short][int(np.argmax(slp[short]))])
    if outp < 0:
        running = cand[stat == SRUN]
        if len(running):
            sw = (now - proc["swtime0"][running].astype(np.int64)) // NS
            if sw.max() > 0:
                outp = int(running[int(np.argmax(sw))])
    if outp >= 0:
        didswap += uvm_swapout(outp)
    return didswap


def uvm_swapout(tid: int) -> int:
    """Swap process ``tid`` out: P_INMEM cleared, its pmap collected; 1 if it was, 0 if it
    had stopped being swappable meanwhile (it is checked again under sched_lock)."""
    ci = _ci
    proc = shared.np["proc"]
    p = proc[tid]
    mlk = uvm_map.vm_map_lock + tid
    lock.simple_lock(mlk)
    try:
        lock.simple_lock(ci.sched_lock)
        try:
            if not _swappable(proc, np.array([tid]))[0]:
                return 0
            p["flag"] = int(p["flag"]) & ~P_INMEM
            p["swtime0"] = ci.core.now()
            stat, pid = int(p["stat"]), int(p["pid"])
        finally:
            lock.simple_unlock(ci.sched_lock)
        call = subr_prf.UVMHIST_CALLED(HIST_SWAPOUT)
        subr_prf.UVMHIST_LOG(H_SWAPOUT, call, pid, stat, slptime(p, ci.core.now()),
                             shared.uvmexp[U.FREE])
        pm = shared.vm_pmap[tid]
        if pm > 0:
            pmap.pmap_collect(pm, skipwired=_mode == "skipwired")
    finally:
        lock.simple_unlock(mlk)
    shared.cnt[ci.cnt_base + counter.swapouts] += 1
    return 1


def uvm_swapin(tid: int) -> None:
    """Bring process ``tid`` back in before its CPU runs it (uvm_scheduler's part and
    uvm_swapin); may sleep "schedpwait" while free memory is at or below the u-area's
    two pages (restart: the CPU that next takes it tries again).

    => caller holds no locks (but the big lock, with biglock).
    """
    ci = _ci
    if shared.uvmexp[U.FREE] <= UPAGES:
        shared.cnt[ci.cnt_base + counter.uvm_wait] += 1
        uvm_pdaemon.uvm_wait(W_SCHEDPWAIT)
    p = shared.np["proc"][tid]
    mlk = uvm_map.vm_map_lock + tid
    lock.simple_lock(mlk)                  # after a swapout still collecting: wait for it
    lock.simple_lock(ci.sched_lock)
    p["flag"] |= P_INMEM
    p["swtime0"] = ci.core.now()
    lock.simple_unlock(ci.sched_lock)
    lock.simple_unlock(mlk)
    call = subr_prf.UVMHIST_CALLED(HIST_SWAPIN)
    subr_prf.UVMHIST_LOG(H_SWAPIN, call, int(p["pid"]), shared.uvmexp[U.FREE])
    shared.cnt[ci.cnt_base + counter.swapins] += 1
