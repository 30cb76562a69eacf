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
        the pagedaemon: one pass of uvm_pageout
        a process: load its pmap (pmap_activate), let the load run a slice
        -> RUNNABLE: its quantum is used up; back on the run queue
        -> Sleep:    ltsleep() unwound it; give up the big lock, queue it on its
                     channel, drop the interlock (mi_switch)
        -> Killed:   trap() posted SIGKILL/SIGSEGV: it exits
        -> EXITED:   exit1(): free its address space and its proc slot

User code runs without the big kernel lock; with ``biglock = on`` the load
takes it around every kernel entry (``KERNEL_PROC_LOCK`` in trap() and
syscall() on the i386mp branch), so two CPUs are never in uvm_fault at once.
Thread 0 is the pagedaemon (``PAGEDAEMON``); user processes are threads
``FIRST_USER_TID``.. (1..maxproc).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from smp.config import KernelConfig, MachineProfile
from smp.kern import (
    autoconf,
    diagnostic,
    kern_fail,
    kern_synch,
    lock,
    pmap,
    subr_prf,
    trap,
    uvm,
    uvm_anon,
    uvm_bio,
    uvm_fault,
    uvm_km,
    uvm_map,
    uvm_page,
    uvm_pdaemon,
    uvm_vnode,
)
from smp.kern.kern_proc import P_SYSTEM, PROC_DTYPE, SIDL, SRUN, SZOMB
from smp.kern.param import KERNEL_PMAP
from smp.kern.uvm import counter, shared
from smp.machine.boot import Declaration
from smp.machine.cpu import CPU, EXITED, RUNNABLE, SLEEPING, boot_enqueue
from smp.machine.layout import CPU_STRIDE, ArraySpec
from smp.machine.lockspace import LockSpace

PAGEDAEMON = 0          # thread id of the pagedaemon
FIRST_USER_TID = 1      # thread id of the load's first process

# kglob slots
KG_LIVE, KG_NEXTPID, KG_STARTED, KG_EXITED, KG_KILLED = range(5)

MSG_EXIT = subr_prf.Message("exit1", "pid %d (%s) exited on cpu%d", "hist", "prochist")
MSG_FORKFAIL = subr_prf.Message("", "proc: table is full")
W_FORK = subr_prf.String("km_alloc1w")
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
    Subsystem(uvm_bio, None, None, uvm_bio.attach),                 # read/write through UBC
    Subsystem(uvm_fault, None, None, uvm_fault.attach),             # the fault handler
    Subsystem(autoconf, None, autoconf.format, None),               # the boot console
)


class Load(Protocol):
    """What a load (a load script's interpreter) gives the kernel."""

    name: str
    nprocs: int
    amap_per_proc: int

    def declare(self, locks: LockSpace, machine: MachineProfile) -> list[ArraySpec]: ...
    def format(self, seg: Any, kernel: Kernel) -> None: ...
    def attach(self, ci: CPU) -> None: ...
    def step(self, ci: CPU, tid: int) -> int: ...
    def progress(self, seg: Any) -> tuple[float, float]: ...
    def summary(self, seg: Any) -> dict: ...


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

    def __init__(self, config: KernelConfig, load: Load, failspecs: list[str] = (),
                 seed: int = 0):

        self.config = config
        self.load = load
        self.stats_on = config.lockstat
        self.failspecs = list(failspecs)
        self.failpoints, self.delays = kern_fail.parse(self.failspecs)
        self.seed = seed
        self.files: list[int] = list(getattr(load, "files", []))   # sizes in pages
        self.amap_per_proc = getattr(load, "amap_per_proc", 16)

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
        p["flag"] = P_SYSTEM
        p["name"] = subr_prf.intern("pagedaemon")
        p["cpu"] = 0
        boot_enqueue(seg, 0, PAGEDAEMON)
        self.load.format(seg, self)

    def newproc(self, seg: Any, local: int, pid: int, name: int, kind: int, cpu: int,
                pc: int = 0, uid: int = 0) -> None:
        """Create user process ``local`` of the load, runnable on ``cpu`` (boot, parent)."""
        tid = FIRST_USER_TID + local
        p = seg.arrays["proc"][tid]
        p["pid"] = pid
        p["stat"] = SRUN
        p["name"] = name
        p["kind"] = kind
        p["cpu"] = cpu
        p["pc"] = pc
        p["uid"] = uid
        g = seg.arrays["kglob"]
        g[KG_LIVE] += 1
        g[KG_STARTED] += 1
        g[KG_NEXTPID] = max(g[KG_NEXTPID], pid + 1)
        if getattr(self.load, "needs_vm", True):
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
        g = seg.arrays["kglob"]
        return g[KG_STARTED] > 0 and g[KG_LIVE] == 0

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

    def cpu_attach(self, ci: CPU) -> None:

        ci.core.stats_on = self.stats_on
        off = ci.seg.layout.cpu_off + ci.cpu * CPU_STRIDE
        ci.area_ipi = ci.seg.shm.buf[off:off + 8].cast("Q")
        ci.md = PerCPU(ci, self)
        ci.tick_ns = 1_000_000_000 // self.machine.hz
        for s in SUBSYSTEMS:
            if s.attach is not None:
                s.attach(ci, self)
        self.load.attach(ci)

    def run(self, ci: CPU, tid: int) -> int:

        md = ci.md
        p = md.proc[tid]
        p["cpu"] = ci.cpu
        t0 = ci.core.now()
        try:
            if tid == PAGEDAEMON:
                pmap.pmap_activate(KERNEL_PMAP)
                if md.biglock:
                    lock.kernel_lock()           # kernel threads ran under the big lock
                status = uvm_pdaemon.uvm_pageout_step(tid)
                self._release_biglock()
            else:
                pm = shared.vm_pmap[tid]
                pmap.pmap_activate(pm if pm >= 0 else KERNEL_PMAP)
                status = self.load.step(ci, tid)
        except kern_synch.Sleep as s:
            self._release_biglock()
            kern_synch.sleepq_enter(ci, tid, s)
            status = SLEEPING
        except lock.LockError as e:
            # LOCKDEBUG: a lock protocol violation is a kernel panic, as in NetBSD
            m = re.search(r"lock (\d+)", str(e))
            subr_prf.panic(P_LOCKDEBUG if "myself" in str(e) else P_LOCKPROTO,
                           int(m[1]) if m else -1)
            raise                                    # (panic does not return)
        except trap.Killed:
            self._release_biglock()
            lock.simple_lock(ci.sched_lock)
            shared.np["kglob"][KG_KILLED] += 1
            if hasattr(self.load, "killed"):
                self.load.killed(ci, tid)        # => sched_lock held
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
        """A process exits: its address space goes, then its proc slot."""

        p = ci.md.proc[tid]
        if shared.vm_pmap[tid] >= 0:
            uvm_map.uvmspace_free(tid)
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
        if hasattr(self.load, "exited"):
            self.load.exited(ci, tid)

    def fork1(self, ci: CPU, parent: int, pc: int) -> int:
        """Create a child of ``parent`` that starts at program counter ``pc``."""

        proc = ci.md.proc
        lock.simple_lock(ci.sched_lock)
        child = -1
        stat = proc["stat"]
        free = np.nonzero(stat[FIRST_USER_TID:] == 0)[0]
        if len(free):
            child = FIRST_USER_TID + int(free[0])
            proc[child]["stat"] = SIDL
        lock.simple_unlock(ci.sched_lock)
        if child < 0:
            pp = proc[parent]
            subr_prf.printf(MSG_FORKFAIL)                 # tablefull("proc")
            return -1
        pm = pmap.pmap_create(child)
        if pm < 0:
            proc[child]["stat"] = 0
            uvm_pdaemon.uvm_wait(W_FORK)     # the PDP comes from uvm_km_alloc: it may sleep
        uvm_map.uvmspace_fork(parent, child, pm)
        if hasattr(self.load, "forked"):
            self.load.forked(parent, child)
        pp, cp = proc[parent], proc[child]
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
        cp["stat"] = SRUN
        cpu = (ci.cpu + 1 + child) % ci.ncpu
        cp["cpu"] = cpu
        ci.setrunqueue(child, cpu, locked=True)
        lock.simple_unlock(ci.sched_lock)
        shared.cnt[ci.cnt_base + counter.forks] += 1
        return child

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
        if ci.cpu == 0:
            self._hardclock(ci)
        return False

    def ipi(self, ci: CPU) -> None:

        pmap.pmap_do_tlb_shootdown()


__all__ = ["Kernel", "Load", "RUNNABLE", "SLEEPING", "EXITED"]


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
