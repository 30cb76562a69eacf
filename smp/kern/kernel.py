"""The kernel image the machine boots (init_main.c, kern_fork.c, kern_exit.c, cpu_switch).

``Kernel`` is what ``smp.machine.boot.Machine`` is handed.  The kernel is
the tuple ``SUBSYSTEMS``: each subsystem declares its own locks and arrays
(before the segment exists), formats them in the parent (``main()`` before
the APs start: vm_page[], the kernel pmap, anons, ...) and attaches to each
CPU in its worker, and ``Kernel`` calls them in the tuple's order, then does
its own part (the process table, the pagedaemon and the load's first
processes).  The same order numbers the catalogue: the subsystems' console
messages and wait channels get their ids when this module is imported, one
subsystem after another, before any load declares its own and long before a
CPU forks.  The order is also what numbers the lock ids, and it is kept so
that both stay those of earlier versions: a run directory made by an earlier
version replays byte-identically.  Then the kernel runs threads a slice at a
time for the machine's dispatch loop:

    run(ci, tid):
        the pagedaemon: one pass of uvm_pageout; aiodoned: the pageouts done
        a process: swapped out (not P_INMEM)? swap it in first (uvm_glue; may
        sleep "schedpwait"); load its pmap (pmap_activate), let the load run a slice
        -> RUNNABLE: its quantum is used up; back on the run queue
        -> Sleep:    ltsleep() unwound it; give up the big lock, queue it on its
                     channel, drop the interlock (mi_switch)
        -> Killed:   trap() posted SIGKILL/SIGSEGV: it exits
        -> EXITED:   exit1(): free its address space and its proc slot

Each CPU attaches, then waits for the others (cpu_boot_secondary).  fork1
and exit1 are NetBSD 1.5's: a proc slot, the u-area's kernel_map VA, the
page directory from uvm_km_alloc and the u-area wired through faults on
kernel_map; at exit all of them go back before the proc slot is freed.

User code runs without the big kernel lock; with ``biglock = on`` the load
takes it around every kernel entry (``KERNEL_PROC_LOCK`` in trap() and
syscall() on the i386mp branch), so two CPUs are never in uvm_fault at once.
Thread 0 is the pagedaemon (``PAGEDAEMON``), thread 1 the aiodone daemon
(``AIODONED``, uvm_pager); user processes are threads ``FIRST_USER_TID``..
(2..maxproc + 1).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from smp.config import KernelConfig, MachineProfile
from smp.kern import (
    autoconf,
    diagnostic,
    intr,
    kern_exec,
    kern_fail,
    kern_physio,
    kern_synch,
    lock,
    pmap,
    subr_prf,
    trap,
    uvm,
    uvm_anon,
    uvm_bio,
    uvm_fault,
    uvm_glue,
    uvm_km,
    uvm_map,
    uvm_page,
    uvm_pager,
    uvm_pdaemon,
    uvm_vnode,
    vm_machdep,
)
from smp.kern.kern_proc import P_INMEM, P_SYSTEM, PROC_DTYPE, SIDL, SRUN, SZOMB
from smp.kern.param import EAGAIN, ENOMEM, KERNEL_PMAP, UPAGES
from smp.kern.uvm import counter, shared
from smp.machine.boot import Declaration
from smp.machine.cpu import CPU, EXITED, RUNNABLE, SLEEPING, boot_enqueue
from smp.machine.layout import ArraySpec
from smp.machine.lockspace import LockSpace

PAGEDAEMON = 0          # thread id of the pagedaemon
AIODONED = 1            # thread id of the aiodone daemon
FIRST_USER_TID = 2      # thread id of the load's first process

# kglob slots
KG_LIVE, KG_NEXTPID, KG_STARTED, KG_EXITED, KG_KILLED, KG_ATTACHED = range(6)
BOOT_WAIT_S = 30.0      # how long a CPU waits for the others to attach

MSG_EXIT = subr_prf.Message("exit1", "pid %d (%s) exited on cpu%d", "hist", "prochist")
MSG_FORKFAIL = subr_prf.Message("", "proc: table is full")
P_LOCKDEBUG = subr_prf.Message("", "simple_lock: locking against myself (lock %d)", "panic")
P_LOCKPROTO = subr_prf.Message("", "lockmgr: lock protocol violation (lock %d)", "panic")
HIST_EXIT = subr_prf.UVMHIST_FUNC("exit1")


@dataclass(frozen=True)
class Subsystem:
    """One subsystem of the kernel, as the kernel boots it.

    ``declare(kernel, locks) -> [ArraySpec]`` declares its locks and arrays (parent,
    before the segment exists); ``format(seg, kernel)`` initialises them (parent, before
    the CPUs start); ``attach(ci, kernel)`` binds it to a CPU (each worker).  ``module``
    is the source file whose console messages and wait channels the subsystem numbers.
    """

    module: ModuleType
    declare: Callable[[Any, LockSpace], list[ArraySpec]] | None = None
    format: Callable[[Any, Any], None] | None = None
    attach: Callable[[CPU, Any], None] | None = None


SUBSYSTEMS = (
    Subsystem(lock, lock.declare, None, lock.attach),                    # kernel_lock, LOCKDEBUG
    Subsystem(subr_prf, subr_prf.declare, None, subr_prf.attach),        # console, UVMHIST
    Subsystem(kern_fail, kern_fail.declare, None, kern_fail.attach),     # failpoints
    Subsystem(kern_synch, kern_synch.declare, kern_synch.format, kern_synch.attach),  # sleepq
    Subsystem(uvm_page, uvm_page.declare, uvm_page.format, uvm_page.attach),   # vm_page[]
    Subsystem(uvm, uvm.declare, None, uvm.attach),     # uvmexp, cnt, pagedaemon_lock, shared
    Subsystem(pmap, pmap.declare, pmap.format, pmap.attach),        # pmaps, PTPs, pv entries
    Subsystem(trap, None, None, trap.attach),                       # the MMU and trap()
    Subsystem(uvm_km, uvm_km.declare, None, uvm_km.attach),         # kernel VA and memory
    Subsystem(uvm_pdaemon, None, None, uvm_pdaemon.attach),         # uvm_wait, the pagedaemon
    Subsystem(uvm_anon, uvm_anon.declare, uvm_anon.format, None),   # anons
    Subsystem(uvm_map, uvm_map.declare, uvm_map.format, None),      # vmspaces and amaps
    Subsystem(uvm_anon, uvm_anon.declare_swap, None, None),         # swap, the anon free list
    Subsystem(pmap, pmap.declare_tlb, None, None),                  # TLB-shootdown queues
    Subsystem(uvm_vnode, uvm_vnode.declare, uvm_vnode.format, None),  # files
    Subsystem(uvm_bio, uvm_bio.declare, uvm_bio.format, uvm_bio.attach),  # UBC windows
    Subsystem(uvm_fault, None, None, uvm_fault.attach),             # the fault handler
    Subsystem(uvm_km, uvm_km.declare_maps, uvm_km.format_maps, None),  # kernel_map, submaps
    Subsystem(intr, intr.declare, intr.format, intr.attach),       # interrupts, mbuf pools
    Subsystem(uvm_pager, uvm_pager.declare, uvm_pager.format, uvm_pager.attach),  # pageout I/O
    Subsystem(kern_exec, None, None, kern_exec.attach),             # execve
    Subsystem(vm_machdep, None, None, vm_machdep.attach),           # vmapbuf
    Subsystem(kern_physio, None, None, kern_physio.attach),         # physio
    Subsystem(autoconf, None, autoconf.format, None),               # the boot console
    Subsystem(uvm_glue, None, None, uvm_glue.attach),               # swapout, swapin
)


class Load(Protocol):
    """What a load (a load script's interpreter) gives the kernel.

    The hooks after ``summary`` have defaults in :class:`LoadHooks`, which every load
    inherits, so the kernel calls them without probing the load for them.
    """

    name: str
    nprocs: int
    amap_per_proc: int           # anonymous pages one process may map
    files: list[int]             # the load's files, sizes in pages
    needs_vm: bool               # its processes have address spaces
    interrupts: list             # its interrupt sources (cpu, period_ns, size, hold_ns)

    def declare(self, locks: LockSpace, machine: MachineProfile) -> list[ArraySpec]: ...
    def format(self, seg: Any, kernel: Kernel) -> None: ...
    def attach(self, ci: CPU) -> None: ...
    def step(self, ci: CPU, tid: int) -> int: ...
    def progress(self, seg: Any) -> tuple[float, float]: ...
    def summary(self, seg: Any) -> dict: ...
    def forked(self, parent: int, child: int) -> None: ...
    def exited(self, ci: CPU, tid: int) -> None: ...
    def killed(self, ci: CPU, tid: int) -> None: ...


class LoadHooks:
    """The defaults of a load's optional hooks and sizes (see :class:`Load`)."""

    amap_per_proc: int = 16
    files: list[int] = []         # (never mutated: a load declares its own list)
    needs_vm: bool = True
    base: int = 0                 # thread id of its first process (the kernel sets it)
    interrupts: list = []         # its [[interrupt]] sources (smp.workload.interp.Interrupt)

    def forked(self, parent: int, child: int) -> None:
        """``child`` was forked from ``parent`` (its address space is a copy)."""

    def exited(self, ci: CPU, tid: int) -> None:
        """Thread ``tid`` is exiting (=> before its proc slot is freed): the load lets go
        of what it keeps for it (exit1's fdfree and friends)."""

    def killed(self, ci: CPU, tid: int) -> None:
        """Thread ``tid`` got a fatal signal (=> sched_lock held); it exits next."""


class PerCPU:
    """The kernel's per-CPU state, hung on ``ci.md`` (the cpu_info MD part)."""

    def __init__(self, ci: CPU, kernel: Kernel):
        seg = ci.seg
        self.kernel = kernel
        self.proc = seg.arrays["proc"]
        self.slpque = seg.arrays["slpque"]
        self.next_tick = 0
        self.biglock = kernel.config.biglock
        self.refault_narrow: dict[int, int] = {}


class Kernel:
    """The simulated NetBSD kernel: configuration + load, bootable by the machine."""

    PAGEDAEMON = PAGEDAEMON
    AIODONED = AIODONED
    FIRST_USER_TID = FIRST_USER_TID

    def __init__(self, config: KernelConfig, load: Load, failspecs: list[str] = (),
                 seed: int = 0):

        self.config = config
        self.load = load
        self.stats_on = config.lockstat
        self.failspecs = list(failspecs)
        self.failpoints, self.delays = kern_fail.parse(self.failspecs)
        self.seed = seed
        self.files: list[int] = list(load.files)       # sizes in pages
        self.amap_per_proc = load.amap_per_proc

    # -- parent side -----------------------------------------------------------

    def declare(self, machine: MachineProfile, locks: LockSpace) -> Declaration:
        self.machine = machine
        self.nthreads = FIRST_USER_TID + self.load.nprocs
        self.sched_lock = 0                   # the machine declared it first
        self.lockspace = locks
        arrays = []
        for s in SUBSYSTEMS:
            if s.declare is not None:
                arrays += s.declare(self, locks)
        arrays += [
            ArraySpec("proc", PROC_DTYPE, (self.nthreads,)),
            ArraySpec("kglob", np.dtype("<i8"), (8,)),
        ]
        self.load.base = FIRST_USER_TID
        arrays += self.load.declare(locks, machine)
        lock.set_order(locks)
        kern_fail.check_delays(self.delays, locks)
        return Declaration(arrays=arrays, nthreads=self.nthreads, catalogue=subr_prf.CATALOGUE)

    def format(self, seg: Any) -> None:

        for s in SUBSYSTEMS:
            if s.format is not None:
                s.format(seg, self)
        a = seg.arrays
        proc = a["proc"]
        proc["slpnext"] = -1
        proc["cpu"] = -1
        a["kglob"][KG_NEXTPID] = 100
        p = proc[PAGEDAEMON]                 # the pagedaemon, a kernel thread on cpu0
        p["pid"] = 2
        p["stat"] = SRUN
        p["flag"] = P_SYSTEM | P_INMEM
        p["name"] = subr_prf.intern("pagedaemon")
        p["cpu"] = 0
        boot_enqueue(seg, 0, PAGEDAEMON)
        p = proc[AIODONED]                   # the aiodone daemon, a kernel thread
        p["pid"] = 3
        p["stat"] = SRUN
        p["flag"] = P_SYSTEM | P_INMEM
        p["name"] = uvm_pager.W_AIODONED
        p["cpu"] = 1 % seg.layout.ncpu
        boot_enqueue(seg, int(p["cpu"]), AIODONED)
        self.load.format(seg, self)

    def newproc(self, seg: Any, local: int, pid: int, name: int, kind: int, cpu: int,
                pc: int = 0, uid: int = 0) -> None:
        """Create user process ``local`` of the load, runnable on ``cpu`` (boot, parent)."""
        tid = FIRST_USER_TID + local
        p = seg.arrays["proc"][tid]
        p["pid"] = pid
        p["stat"] = SRUN
        p["flag"] = P_INMEM
        p["name"] = name
        p["kind"] = kind
        p["cpu"] = cpu
        p["pc"] = pc
        p["uid"] = uid
        g = seg.arrays["kglob"]
        g[KG_LIVE] += 1
        g[KG_STARTED] += 1
        g[KG_NEXTPID] = max(g[KG_NEXTPID], pid + 1)
        if self.load.needs_vm:
            pm = pmap.pmap_create_boot(seg, tid)
            uvm_map.vmspace_init_boot(seg, tid, pm)
        boot_enqueue(seg, cpu, tid)

    def startup(self, seg: Any, cnputc: Callable[..., bool]) -> None:
        """main() on the boot processor once the segment is formatted and before the APs
        start: the boot messages (smp.kern.autoconf), printed through ``cnputc``, CPU 0's
        ring writer (the machine's boot console)."""
        with subr_prf.console(cnputc):
            autoconf.startup(seg, self)

    def shutdown(self, seg: Any, cnputc: Callable[..., bool]) -> None:
        """cpu_reboot() after the run ended normally or at its time limit, every CPU
        stopped: ``syncing disks... done``, ``rebooting...`` (smp.kern.autoconf)."""
        with subr_prf.console(cnputc):
            autoconf.cpu_reboot(seg, self)

    def finished(self, seg: Any) -> bool:
        """The load has ended (every process it started has exited) and the machine is
        quiet: no CPU is running a thread (the pagedaemon's pass, a last exit) or holds
        a lock.  The machine stops the CPUs right after, so waiting for the quiet moment
        is what lets a normal end leave every CPU outside the kernel, and the DIAGNOSTIC
        checks after the run check everything (lockstep: the CPU that asks halts the
        machine at once; free-running: the CPUs leave at their next dispatch)."""
        g = seg.arrays["kglob"]
        if not (g[KG_STARTED] > 0 and g[KG_LIVE] == 0):
            return False
        return self.quiet(seg) and seg.arrays["uvmexp"][uvm.PAGING] == 0

    def unfinished(self, seg: Any) -> str:
        """Why a load whose processes have all exited has not finished (a run that
        reached its time limit says so): writes still paging -- a pageout whose
        completion was lost, which no later interrupt will pick up -- or a CPU still in
        the kernel; "" while processes live."""
        g = seg.arrays["kglob"]
        if not (g[KG_STARTED] > 0 and g[KG_LIVE] == 0):
            return ""
        paging = int(seg.arrays["uvmexp"][uvm.PAGING])
        if paging:
            return (f"every process had exited, but {paging} pages were still paging "
                    "(a pageout that never completed)")
        if not self.quiet(seg):
            return "every process had exited, but a CPU was still in the kernel"
        return ""

    def quiet(self, seg: Any) -> bool:
        """No CPU is running a thread, holding a lock or serving an interrupt: every CPU is
        outside the kernel (lockstep stops here after its time limit; pageouts may still
        be in flight, as when a free-running run stops)."""
        cpus = seg.cpus
        return bool(np.all(cpus["curproc"] < 0) and np.all(cpus["nheld"] == 0)
                    and not seg.arrays["intr_depth"].any())

    def progress(self, seg: Any) -> tuple[float, float]:
        return self.load.progress(seg)

    def audit(self, seg: Any) -> dict:
        """DIAGNOSTIC: the VM invariants on the stopped machine, and the lock-order
        findings of the run (LOCKDEBUG; findings are not violations: they change
        neither the run nor its exit status)."""
        if not self.config.diagnostic:
            return {}
        r = diagnostic.check_after_run(seg, self.lockspace)
        found, dropped = lock.findings(seg, self.lockspace)
        return {"checked": True, "violations": list(r), "skipped": r.skipped,
                "reason": r.reason, "lock_order": found, "lock_order_dropped": dropped}

    def summary(self, seg: Any) -> dict:
        c = seg.arrays["cnt"]
        ux = seg.arrays["uvmexp"]
        g = seg.arrays["kglob"]
        return {
            "counters": {n: int(c[:, i].sum()) for i, n in enumerate(uvm.COUNTERS)},
            "per_cpu_counters": [{n: int(c[cpu, i]) for i, n in enumerate(uvm.COUNTERS)
                                  if c[cpu, i]} for cpu in range(c.shape[0])],
            "uvmexp": {n: int(ux[i]) for i, n in enumerate(uvm.UVMEXP_FIELDS)},
            "processes": {"started": int(g[KG_STARTED]), "exited": int(g[KG_EXITED]),
                          "killed": int(g[KG_KILLED]), "alive": int(g[KG_LIVE])},
            "load": self.load.summary(seg),
        }

    # -- CPU side --------------------------------------------------------------

    def cpu_attach(self, ci: CPU, wait_for_others: bool = True) -> None:

        ci.core.stats_on = self.stats_on
        ci.md = PerCPU(ci, self)
        ci.tick_ns = 1_000_000_000 // self.machine.hz
        for s in SUBSYSTEMS:
            if s.attach is not None:
                s.attach(ci, self)
        self.load.attach(ci)
        if wait_for_others:          # (a CPU a test drives by hand has no others to meet)
            self._boot_barrier(ci)

    def _boot_barrier(self, ci: CPU) -> None:
        """cpu_boot_secondary: no CPU goes on before every CPU has attached, as the boot
        processor waits for each application processor to come up.  (Host time only: it
        adds no scheduling point.  It also keeps a CPU whose worker starts late from
        joining a lockstep run after the schedule has begun.)"""
        kglob_off = ci.seg.layout.arrays["kglob"][0]
        ci.core.fadd64(kglob_off + 8 * KG_ATTACHED, 1)
        deadline = time.monotonic() + BOOT_WAIT_S
        while ci.core.load64(kglob_off + 8 * KG_ATTACHED) < ci.ncpu:
            if ci.halted or time.monotonic() > deadline:
                return                      # a CPU died on the way: supervision says so
            os.sched_yield()

    def run(self, ci: CPU, tid: int) -> int:

        md = ci.md
        p = md.proc[tid]
        p["cpu"] = ci.cpu
        t0 = ci.core.now()
        try:
            if tid == PAGEDAEMON or tid == AIODONED:
                pmap.pmap_activate(KERNEL_PMAP)
                if md.biglock:
                    lock.kernel_lock()           # kernel threads ran under the big lock
                if tid == PAGEDAEMON:
                    status = uvm_pdaemon.uvm_pageout_step(tid)
                else:
                    status = uvm_pager.uvm_aiodone_daemon_step(tid)
                self._release_biglock()
            else:
                if not p["flag"] & P_INMEM:
                    self._swapin(md, tid)
                pm = shared.vm_pmap[tid]
                pmap.pmap_activate(pm if pm >= 0 else KERNEL_PMAP)
                status = self.load.step(ci, tid)
        except kern_synch.Sleep as s:
            self._release_biglock()
            kern_synch.sleepq_enter(ci, tid, s)
            status = SLEEPING
        except lock.LockError as e:
            # LOCKDEBUG: a lock protocol violation is a kernel panic, as in NetBSD
            subr_prf.panic(P_LOCKDEBUG if e.myself else P_LOCKPROTO, e.lock)
            raise                                    # (panic does not return)
        except trap.Killed:
            self._release_biglock()
            lock.simple_lock(ci.sched_lock)
            shared.np["kglob"][KG_KILLED] += 1
            self.load.killed(ci, tid)            # => sched_lock held
            lock.simple_unlock(ci.sched_lock)
            status = EXITED
        finally:
            p["rtime_ns"] += ci.core.now() - t0
            p["nrun"] += 1
        if md.biglock and lock.lock_held(lock.KERNEL_LOCK_ID) and not ci.halted:
            raise RuntimeError(f"pid {int(p['pid'])}: returned to user mode holding "
                               "kernel_lock")
        if ci.core.nheld() and not self.config.pmap_canfail_leak and not ci.halted:
            raise RuntimeError(f"pid {int(p['pid'])}: returned to user mode holding "
                               f"{ci.core.nheld()} locks")
        if status == EXITED:
            self.exit1(ci, tid)
        if ci.cpu == 0:
            self._hardclock(ci)
        return status

    def exit1(self, ci: CPU, tid: int) -> None:
        """A process exits (exit1, then the reaper's uvm_exit): what the load keeps for it
        (its files, its kernel buffers), its address space, then its proc slot.

        Everything is given back *before* the slot is freed: a fork on another CPU may
        take the slot the moment it is, and the new process must not find (and free a
        second time) what the dead one held -- the "freeing free page" panic of
        issue 10, where a recycled slot's child exited while its predecessor was still
        freeing its kernel buffers.  NetBSD frees a proc only when it is reaped, after
        uvm_exit.
        """

        p = ci.md.proc[tid]
        self.load.exited(ci, tid)
        kern_exec.exit_args(tid)
        if shared.vm_pmap[tid] >= 0:
            uvm_map.uvmspace_free(tid)
        if p["uarea"]:
            uvm_km.uvm_km_free(int(p["uarea"]), UPAGES)   # uvm_exit: the u-area goes too
            p["uarea"] = 0
        subr_prf.UVMHIST_LOG(MSG_EXIT, subr_prf.UVMHIST_CALLED(HIST_EXIT), int(p["pid"]),
                             int(p["name"]), ci.cpu)
        shared.cnt[ci.cnt_base + counter.exits] += 1    # before the load can look finished
        lock.simple_lock(ci.sched_lock)
        p["stat"] = SZOMB
        g = shared.np["kglob"]
        g[KG_LIVE] -= 1
        g[KG_EXITED] += 1
        p["pid"] = 0
        p["stat"] = 0
        lock.simple_unlock(ci.sched_lock)

    def fork1(self, ci: CPU, parent: int, pc: int) -> int:
        """Create a child of ``parent`` that starts at program counter ``pc`` (fork1 and
        uvm_fork of NetBSD 1.5); returns the child's thread id, or -EAGAIN / -ENOMEM.

            a proc slot; none free (nprocs >= maxproc): tablefull("proc"), EAGAIN
            the u-area's VA: uvm_km_valloc(kernel_map, USPACE); none: ENOMEM
            -- from here on the fork cannot fail --
            uvmspace_fork: pmap_create (the page directory from uvm_km_alloc, which may
                sleep) and a copy of the parent's map
            uvm_fork: uvm_fault_wire(kernel_map, u-area) -- UPAGES kernel_object pages,
                each faulted in and wired (may sleep: "uao_getpage", "flt_pmfail2")
            the child is runnable

        A sleep on the way keeps what was done in the child's proc row (it is SIDL, and
        the parent's ``forkchild`` names it), so the parent's fork, run again after the
        wakeup, goes on where it stopped, as the real parent does when it wakes.
        """
        proc = ci.md.proc
        pp = proc[parent]
        child = int(pp["forkchild"]) - 1
        if child < 0:
            lock.simple_lock(ci.sched_lock)
            free = np.nonzero(proc["stat"][FIRST_USER_TID:] == 0)[0]
            if len(free):
                child = FIRST_USER_TID + int(free[0])
                proc[child]["stat"] = SIDL
                proc[child]["uarea"] = 0
                shared.vm_pmap[child] = -1
            lock.simple_unlock(ci.sched_lock)
            if child < 0:
                subr_prf.printf(MSG_FORKFAIL)                 # tablefull("proc")
                shared.cnt[ci.cnt_base + counter.fork_fail] += 1
                return -EAGAIN
            uva = uvm_km.uvm_km_valloc(uvm_km.KERNEL_MAP, UPAGES)
            if uva < 0:
                lock.simple_lock(ci.sched_lock)
                proc[child]["stat"] = 0
                lock.simple_unlock(ci.sched_lock)
                shared.cnt[ci.cnt_base + counter.fork_fail] += 1
                return -ENOMEM
            proc[child]["uarea"] = uva
            pp["forkchild"] = child + 1
        cp = proc[child]
        if shared.vm_pmap[child] < 0:
            pm = pmap.pmap_create(child)             # may sleep: the fork resumes here
            uvm_map.uvmspace_fork(parent, child, pm)
            self.load.forked(parent, child)
        uvm_fault.uvm_fault_wire_kernel(int(cp["uarea"]), UPAGES)      # may sleep too
        shared.cnt[ci.cnt_base + counter.uarea_allocs] += 1
        pp["forkchild"] = 0
        lock.simple_lock(ci.sched_lock)
        g = shared.np["kglob"]
        cp["pid"] = g[KG_NEXTPID]
        g[KG_NEXTPID] += 1
        g[KG_LIVE] += 1
        g[KG_STARTED] += 1
        for f in ("name", "kind", "uid"):
            cp[f] = pp[f]
        cp["pc"] = pc
        cp["reg"] = 0
        cp["nsleep"] = cp["nrun"] = cp["rtime_ns"] = 0
        cp["flag"] = P_INMEM
        cp["holdcnt"] = 0
        cp["swtime0"] = ci.core.now()
        cp["stat"] = SRUN
        cpu = (ci.cpu + 1 + child) % ci.ncpu
        cp["cpu"] = cpu
        ci.setrunqueue(child, cpu, locked=True)
        lock.simple_unlock(ci.sched_lock)
        shared.cnt[ci.cnt_base + counter.forks] += 1
        return child

    def _swapin(self, md: PerCPU, tid: int) -> None:
        """A swapped-out process is about to run: bring it in first (uvm_glue; proc0's
        work in 1.5, under the big lock as all kernel work was)."""
        if md.biglock:
            lock.kernel_lock()
        uvm_glue.uvm_swapin(tid)            # may sleep ("schedpwait")
        self._release_biglock()

    def _release_biglock(self) -> None:
        """mi_switch: a thread going to sleep gives up the big lock, recursion and all."""
        if lock.KERNEL_LOCK_ID >= 0:
            while lock.lock_held(lock.KERNEL_LOCK_ID):
                lock.kernel_unlock()

    def _hardclock(self, ci: CPU) -> None:
        """The primary CPU's clock tick: end timed sleeps (callouts)."""
        now = ci.core.now()
        if now >= ci.md.next_tick:
            ci.md.next_tick = now + ci.tick_ns
            kern_synch.endtsleep(ci)

    def idle(self, ci: CPU) -> bool:
        """An idle CPU: the primary CPU's clock, and the interrupts due (an idle CPU
        takes them at once; one asleep in idle_wait when they come due is kicked)."""
        if ci.cpu == 0:
            self._hardclock(ci)
        intr.at_point()
        return False

    def ipi(self, ci: CPU) -> None:
        """The dispatch loop found IPI bits: the TLB shootdown, device interrupts."""
        intr.i386_ipi_handler()


__all__ = ["Kernel", "Load", "LoadHooks", "RUNNABLE", "SLEEPING", "EXITED"]


def _number_catalogue() -> None:
    """Give the subsystems' console messages and wait channels their ids, in the order of
    SUBSYSTEMS, then the kernel's own (see the module docstring); then, in the same
    order, the entries declared ``late`` (after the January 2001 ids were pinned)."""
    modules = [*dict.fromkeys(s.module for s in SUBSYSTEMS), sys.modules[__name__]]
    for module in modules:
        subr_prf.number(module)
    for module in modules:
        subr_prf.number(module, late=True)


_number_catalogue()
