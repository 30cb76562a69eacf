"""Kernel locks: simple_lock, spinlockmgr, the big kernel lock, LOCKDEBUG (kern_lock.c).

The functions a kernel module calls are the atomic core's own methods, bound
to this CPU when it attaches (``attach``), so the uncontended path adds no
Python frame and the core sees the kernel function that called it as the
lock's call site -- exactly what lockstat's "Caller" column shows.  Call
them through the module (``lock.simple_lock(id)``), never ``from ... import``
them: the names are rebound in each worker.

    simple_lock(id)        spin until held               (simple_lock)
    simple_lock_try(id)    -> bool                       (simple_lock_try)
    simple_unlock(id)                                    (simple_unlock)
    spinlockmgr_shared(id) / spinlockmgr_exclusive(id)   (spinlockmgr LK_SHARED / LK_EXCLUSIVE)
    spinlockmgr_release_shared(id) / spinlockmgr_release_exclusive(id)
    kernel_lock() / kernel_unlock()                      (KERNEL_LOCK / KERNEL_UNLOCK; recursive)
    lock_held(id) -> bool                                (LOCKDEBUG: "=> caller holds")

Lock ids come from ``declare`` calls each subsystem makes before boot; the
class names are NetBSD's (``pmap_main_lock``, ``pmaps_lock``, ``pvalloc_lock``, ...).

The lock order
--------------
Written once, here, outermost first, as uvm_fault.c's header states the fault's
"MAPS => AMAP => UOBJ => ANON => PAGE QUEUES" and NETBSD-FACTS §3.4 the pmap's:

    kernel_lock                     KERNEL_PROC_LOCK around a user fault (i386mp)
    vm_map                          MAPS: the faulting process's map
    kernel_map, exec_map            MAPS: kernel_map (fork holds the parent's map while
                                    pmap_pinit allocates from it; pmap_growkernel
                                    runs under it; the u-area faults on it), exec_map
                                    (execve's arguments fault on it)
    amap                            AMAP
    vnode, kernel_object,           UOBJ: one object at a time (ubc: the UBC windows'
      kmem_object, mb_object, ubc   object, which ubc_alloc holds to unmap a window)
    anon                            ANON
    pageq                           PAGE QUEUES (NetBSD's pagedaemon calls the pmap
                                    with them held; ours drops them first); held
                                    around uvm_pagefree of an anon or object page
    pmap_main_lock                  the pmap: shared map-to-head, exclusive head-to-map
    pmap                            the pmap, and the current one, lower id first
    pmaps_lock                      pmap_steal_ptp's search (its victims: try-locks)
    pmap_tmpptp_lock                the ptpp window onto a victim's PTP
    pvh                             a page's pv list
    pvalloc_lock                    the pv allocator
    pmap_zero_page_lock,            the zerop and csrcp/cdstp windows
      pmap_copy_page_lock
    pager_map, phys_map,            kernel VA: leaves, taken (or try-locked) under the
      kmem_map, mb_map, pool        pv allocator and the pager; kmem_map, mb_map and
                                    the mbuf pools also at interrupt level
    swap_data_lock, uvm_anon_lock   swap slots, the anon free list
    fpageq, aiodoned_lock           the free page queues (uvm_pagealloc); the pageouts
                                    in flight and done (uvm_pager)
    pagedaemon_lock                 uvm_wait's interlock
    sched_lock                      wakeup() under any of the above
    pmap_tlb_shootdown_q,           the TLB IPI handler runs wherever a CPU spins
      pmap_tlb_shootdown_job_lock

Classes on one line share a rank: siblings, never held together.  Two locks
of one class are in order when the second has the higher id (pmap_map_ptes'
"lower address first").  pmap locks may come after a pv-head lock while
pmap_main_lock is held exclusively: the head-to-map direction, which is safe
because "the exclusive holder is alone" (pmap.c's locking comment).  It is alone
only if every map-to-head path holds pmap_main_lock shared
(PMAP_MAP_TO_HEAD_LOCK), so a pv-head lock taken under a pmap lock without
pmap_main_lock held is a finding too, although in rank order (``GUARDED_BY``;
its ``why`` is "unguarded").

In DIAGNOSTIC mode (kernel config ``diagnostic = on``) every CPU's atomic core
checks each blocking acquisition against this order -- LOCKDEBUG, as
FreeBSD's witness does it -- and records what is out of order as a *finding*
(the two classes, both call sites, how often) in ``lock_findings``;
``findings()`` reads them for the kernel's ``audit()``, which puts them in
summary.json's ``diagnostic`` section.  A finding neither refuses the lock nor
adds a scheduling point, so it never changes a run.  Try-locks cannot
deadlock and are not checked.  The 1.91 code's pv stealing takes
pmap_tmpptp_lock under pvalloc_lock, the reverse of PTP stealing (see
pmap.py): with stealing compiled in and both paths reached, that is one
finding a run reports.  The other: pmap_growkernel holds the kernel pmap's lock
but not pmap_main_lock when pmap_alloc_ptp steals a PTP, whose pmap_remove_ptes
takes pv-head locks -- unguarded, and against the pagedaemon's head-to-map walk,
which locks the kernel pmap as a kernel thread's current pmap (pmap_map_ptes),
a deadlock (README).

``KASSERT_LOCKED(id)`` turns a "=> caller holds ..." precondition into a check:
call it as ``if lock.DIAGNOSTIC: lock.KASSERT_LOCKED(id)``, one test when
DIAGNOSTIC is off.  A failed assertion is a lock protocol violation
(``LockError``), which the kernel turns into a LOCKDEBUG panic.  Every
LockError carries its facts as attributes: ``lock`` (the lock id) and
``myself`` (a CPU asking again for a lock it holds).
"""

from __future__ import annotations

import functools

import numpy as np

from smp.machine import _atomic
from smp.machine.layout import ArraySpec
from smp.machine.lockspace import ORDER_FINDING_DTYPE, LockSpace

Halted = _atomic.Halted
LockError = _atomic.LockError

LOCK_ORDER: list[tuple[str, ...]] = [
    ("kernel_lock",),
    ("vm_map",),
    ("kernel_map", "exec_map"),
    ("amap",),
    ("vnode", "kernel_object", "kmem_object", "mb_object", "ubc"),
    ("anon",),
    ("pageq",),
    ("pmap_main_lock",),
    ("pmap",),
    ("pmaps_lock",),
    ("pmap_tmpptp_lock",),
    ("pvh",),
    ("pvalloc_lock",),
    ("pmap_zero_page_lock", "pmap_copy_page_lock"),
    ("pager_map", "phys_map"),
    ("kmem_map", "mb_map", "pool"),
    ("swap_data_lock", "uvm_anon_lock"),
    ("fpageq", "aiodoned_lock"),
    ("pagedaemon_lock",),
    ("sched_lock",),
    ("pmap_tlb_shootdown_q", "pmap_tlb_shootdown_job_lock"),
]
SERIALIZED_BY = {"pmap": "pmap_main_lock"}     # head-to-map under the exclusive main lock
# map-to-head: a pv head under a pmap lock needs the main lock, shared at least (1.91's
# PMAP_MAP_TO_HEAD_LOCK) -- it is what keeps the exclusive holder above alone
GUARDED_BY = {"pvh": ("pmap", "pmap_main_lock")}
FINDINGS_PER_CPU = 32


def _unattached(*_args):  # pragma: no cover - a kernel bug, before cpu_attach
    raise RuntimeError("lock operation before cpu_attach()")


simple_lock = simple_lock_try = simple_unlock = _unattached
spinlockmgr_shared = spinlockmgr_exclusive = spinlockmgr_try_exclusive = _unattached
spinlockmgr_release_shared = spinlockmgr_release_exclusive = _unattached
lock_held = _unattached
KERNEL_LOCK_ID = -1
DIAGNOSTIC = False              # the kernel's diagnostic option, on this CPU (attach)


kernel_lock = kernel_unlock = _unattached   # KERNEL_LOCK / KERNEL_UNLOCK (recursive)


def declare(kernel, locks: LockSpace) -> list[ArraySpec]:
    """The big kernel lock's word (recursive spin lock, class kernel_lock) and, in
    DIAGNOSTIC mode, every CPU's lock-order findings."""
    declare_kernel_lock(locks)
    if not kernel.config.diagnostic:
        return []
    ncpu = kernel.machine.ncpu
    return [ArraySpec("lock_findings", ORDER_FINDING_DTYPE, (ncpu, FINDINGS_PER_CPU)),
            ArraySpec("lock_findings_n", np.dtype("<u8"), (ncpu, 2))]   # used, dropped


def declare_kernel_lock(space: LockSpace) -> int:
    """Reserve the big kernel lock's word (recursive spin lock, class kernel_lock)."""
    global KERNEL_LOCK_ID
    KERNEL_LOCK_ID = space.declare("kernel_lock", "spin-recursive")
    return KERNEL_LOCK_ID


def set_order(locks: LockSpace) -> None:
    """Hand the lock order to the machine (after every subsystem declared its locks)."""
    locks.set_order(LOCK_ORDER, SERIALIZED_BY, GUARDED_BY)


def attach(ci, kernel) -> None:
    """Bind this worker's lock functions to its CPU's atomic core; in DIAGNOSTIC mode,
    turn on the core's lock-order checking."""
    global simple_lock, simple_lock_try, simple_unlock, lock_held, DIAGNOSTIC
    global spinlockmgr_shared, spinlockmgr_exclusive, spinlockmgr_try_exclusive
    global spinlockmgr_release_shared, spinlockmgr_release_exclusive
    global kernel_lock, kernel_unlock
    core = ci.core
    simple_lock = core.lock
    simple_lock_try = core.trylock
    simple_unlock = core.unlock
    spinlockmgr_shared = core.rlock
    spinlockmgr_exclusive = core.wlock
    spinlockmgr_try_exclusive = core.trywlock
    spinlockmgr_release_shared = core.runlock
    spinlockmgr_release_exclusive = core.wunlock
    lock_held = core.held
    if KERNEL_LOCK_ID >= 0:
        # partial objects are C callables: the caller of kernel_lock() stays the site
        kernel_lock = functools.partial(core.lock, KERNEL_LOCK_ID)
        kernel_unlock = functools.partial(core.unlock, KERNEL_LOCK_ID)
    DIAGNOSTIC = bool(kernel.config.diagnostic)
    if DIAGNOSTIC:
        lay = ci.seg.layout.arrays
        ranks, serializers = kernel.lockspace.order_tables()
        core.set_lock_order(ranks, serializers,
                            lay["lock_findings"][0] + ci.cpu * FINDINGS_PER_CPU
                            * ORDER_FINDING_DTYPE.itemsize,
                            lay["lock_findings_n"][0] + ci.cpu * 16, FINDINGS_PER_CPU,
                            kernel.lockspace.guard_table())
    else:
        core.set_lock_order(None)


def KASSERT_LOCKED(lk: int) -> None:  # noqa: N802 - NetBSD's name
    """DIAGNOSTIC: this CPU holds lock ``lk`` (``=> caller holds ...``), or LockError.

    => only called when DIAGNOSTIC is on (``if lock.DIAGNOSTIC: lock.KASSERT_LOCKED(x)``).
    """
    if not lock_held(lk):
        e = LockError(f"KASSERT_LOCKED: lock {lk} not held")
        e.lock, e.myself = lk, False          # as the atomic core's own LockErrors carry
        raise e


def findings(seg, locks: LockSpace) -> tuple[list[dict], int]:
    """The lock-order findings of every CPU, merged (stopped machine, parent): one entry
    per (held class, wanted class, call sites), with its count and the CPUs that saw it;
    and how many findings did not fit the per-CPU arrays."""
    if "lock_findings" not in seg.arrays:
        return [], 0
    sites = seg.site_names()
    rec, counts = seg.arrays["lock_findings"], seg.arrays["lock_findings_n"]

    def site(i: int) -> str:
        return sites[i] if i < len(sites) else "?"

    merged: dict[tuple, dict] = {}
    for cpu in range(rec.shape[0]):
        for r in rec[cpu][: int(counts[cpu][0])]:
            held = locks.classes[int(r["held_class"])].name
            wanted = locks.classes[int(r["wanted_class"])].name
            key = (held, wanted, site(int(r["held_site"])), site(int(r["site"])))
            f = merged.get(key)
            if f is None:
                in_order = locks.ranks.get(int(r["held_class"]), 0) < locks.ranks.get(
                    int(r["wanted_class"]), 0)
                f = merged[key] = {
                    "held": held, "held_at": key[2], "wanted": wanted, "wanted_at": key[3],
                    # in rank order, yet a finding: taken without its guard (GUARDED_BY)
                    "why": "unguarded" if in_order else "order",
                    "count": 0, "cpus": [], "first": {
                        "held": locks.name_of(int(r["held_lock"])),
                        "wanted": locks.name_of(int(r["wanted_lock"]))}}
            f["count"] += int(r["count"])
            f["cpus"].append(cpu)
    return [merged[k] for k in sorted(merged)], int(counts[:, 1].sum())
