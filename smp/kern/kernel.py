"""The kernel image the machine boots (init_main.c, kern_fork.c, kern_exit.c, cpu_switch).

``Kernel`` is what ``smp.machine.boot.Machine`` is handed: it declares the
kernel's locks and arrays, formats them in the parent (``main()`` before the
APs start: vm_page[], the kernel pmap, anons, the pagedaemon and the load's
first processes), attaches every subsystem in each CPU's worker, and runs
threads a slice at a time for the machine's dispatch loop:

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
Thread 0 is the pagedaemon; user processes are threads 1..maxproc.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from smp.config import KernelConfig, MachineProfile

# Every kernel module is imported here, in the parent, before any CPU forks: their
# console messages and wait channels must be in the catalogue the run directory keeps
# (subr_prf refuses entries declared after boot).
from smp.kern import (  # noqa: F401 - uvm_bio, uvm_anon: for their catalogue entries
    kern_fail,
    kern_synch,
    lock,
    pmap,
    subr_prf,
    trap,
    uvm_anon,
    uvm_bio,
    uvm_fault,
    uvm_km,
    uvm_map,
    uvm_page,
    uvm_pdaemon,
)
from smp.kern import uvm as U
from smp.kern.kern_proc import P_SYSTEM, PROC_DTYPE, SIDL, SRUN, SZOMB
from smp.machine.boot import Declaration
from smp.machine.cpu import CPU, EXITED, RUNNABLE, SLEEPING, boot_enqueue
from smp.machine.layout import ArraySpec
from smp.machine.lockspace import LockSpace

PAGEDAEMON = 0
USER_BASE = 1

# kglob slots
KG_LIVE, KG_NEXTPID, KG_STARTED, KG_EXITED, KG_KILLED = range(5)

MSG_EXIT = subr_prf.message("exit1", "pid %d (%s) exited on cpu%d", "hist", "prochist")
MSG_FORKFAIL = subr_prf.message("", "proc: table is full")
W_FORK = subr_prf.intern("km_alloc1w")
P_LOCKDEBUG = subr_prf.message("", "simple_lock: locking against myself (lock %d)", "panic")
P_LOCKPROTO = subr_prf.message("", "lockmgr: lock protocol violation (lock %d)", "panic")
H_EXIT = subr_prf.UVMHIST_FUNC("exit1")


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

    def __init__(self, config: KernelConfig, load: Load, failspecs: list[str] = (),
                 seed: int = 0):

        self.config = config
        self.load = load
        self.stats_on = config.lockstat
        self.failspecs = list(failspecs)
        self.failpoints, self.delays = kern_fail.parse(self.failspecs)
        self.seed = seed

    # -- parent side -----------------------------------------------------------

    def declare(self, machine: MachineProfile, locks: LockSpace) -> Declaration:
        self.machine = machine
        self.nthreads = USER_BASE + self.load.nprocs
        self.sched_lock = 0                   # the machine declared it first
        self.lockspace = locks
        lock.declare_kernel_lock(locks)
        files = getattr(self.load, "files", [])
        arrays = U.declare(machine, self.config, locks, self.nthreads,
                           amap_per_proc=getattr(self.load, "amap_per_proc", 16),
                           nfiles_pages=sum(files))

        arrays += [
            ArraySpec("fail_counts", np.dtype("<i8"), (len(kern_fail.all_sites()),)),
            ArraySpec("proc", PROC_DTYPE, (self.nthreads,)),
            ArraySpec("kglob", np.dtype("<i8"), (8,)),
        ]
        arrays += kern_synch.arrays()
        self.load.base = USER_BASE
        arrays += self.load.declare(locks, machine)
        arrays += subr_prf.arrays()
        known = {c.name for c in locks.classes}
        for d in self.delays:
            if d.lock_class not in known:
                from smp.errors import BadInput
                raise BadInput(f"delay:{d.lock_class}: no lock class of that name (known: "
                               f"{', '.join(sorted(known))})")
        return Declaration(arrays=arrays, nthreads=self.nthreads, catalogue=subr_prf.CATALOGUE)

    def format(self, seg: Any) -> None:

        a = seg.arrays
        proc = a["proc"]
        proc["slpnext"] = -1
        proc["cpu"] = -1
        a["vm_pmap"][:] = -1
        kern_synch.format_sleepq(seg)
        uvm_page.format_pages(seg, U.S.npages, self.config, self.machine)
        pmap.pmap_bootstrap(seg, U.S.nkva + 1)     # + the pager's emergency window
        uvm_anon.format_anons(seg, U.S.nanon)
        base = 0
        for i, size in enumerate(getattr(self.load, "files", [])):
            a["file_base"][i] = base
            a["file_size"][i] = size
            base += size
        a["file_page"][:] = -1
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
        tid = USER_BASE + local
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
            pm = _boot_pmap_create(seg, tid)
            uvm_map_boot(seg, tid, pm)
        boot_enqueue(seg, cpu, tid)

    def finished(self, seg: Any) -> bool:
        g = seg.arrays["kglob"]
        return g[KG_STARTED] > 0 and g[KG_LIVE] == 0

    def progress(self, seg: Any) -> tuple[float, float]:
        return self.load.progress(seg)

    def audit(self, seg: Any) -> dict:
        """DIAGNOSTIC: the VM invariants on the stopped machine (when configured)."""
        if not self.config.diagnostic:
            return {}
        from smp.kern.diagnostic import check_after_run

        r = check_after_run(seg)
        return {"checked": True, "violations": list(r), "skipped": r.skipped,
                "reason": r.reason}

    def summary(self, seg: Any) -> dict:
        c = seg.arrays["cnt"]
        ux = seg.arrays["uvmexp"]
        g = seg.arrays["kglob"]
        return {
            "counters": {n: int(c[:, i].sum()) for i, n in enumerate(U.COUNTERS)},
            "per_cpu_counters": [{n: int(c[cpu, i]) for i, n in enumerate(U.COUNTERS)
                                  if c[cpu, i]} for cpu in range(c.shape[0])],
            "uvmexp": {n: int(ux[i]) for i, n in enumerate(U.UVMEXP_FIELDS)},
            "processes": {"started": int(g[KG_STARTED]), "exited": int(g[KG_EXITED]),
                          "killed": int(g[KG_KILLED]), "alive": int(g[KG_LIVE])},
            "load": self.load.summary(seg),
        }

    # -- CPU side --------------------------------------------------------------

    def cpu_attach(self, ci: CPU) -> None:

        lock.attach(ci.core)
        ci.core.stats_on = self.stats_on
        ci.cnt_base = ci.cpu * len(U.COUNTERS)
        off = ci.seg.layout.cpu_off + ci.cpu * _cpu_stride()
        ci.area_ipi = ci.seg.shm.buf[off:off + 8].cast("Q")
        ci.md = PerCPU(ci, self)
        ci.tick_ns = 1_000_000_000 // self.machine.hz
        U.attach(ci.seg)
        subr_prf.attach(ci, self.config.hist)
        kern_synch.attach(ci)
        uvm_page.attach(ci, PAGEDAEMON)
        pmap.attach(ci, self.config)
        uvm_km.attach(ci)
        uvm_fault.attach(ci)
        uvm_pdaemon.attach(ci)
        trap.attach(ci, self.config.diagnostic)
        from smp.kern import kern_fail
        kern_fail.attach(ci, self.failpoints, self.delays, self.seed,
                         ci.seg.layout.arrays["fail_counts"][0], self.lockspace)
        ci.core.ipi_handler = pmap.pmap_do_tlb_shootdown
        self.load.attach(ci)

    def run(self, ci: CPU, tid: int) -> int:

        md = ci.md
        A = U.A
        p = md.proc[tid]
        p["cpu"] = ci.cpu
        t0 = ci.core.now()
        try:
            if tid == PAGEDAEMON:
                pmap.pmap_activate(pmap.KERNEL_PMAP)
                if md.biglock:
                    lock.kernel_lock()           # kernel threads ran under the big lock
                status = uvm_pdaemon.uvm_pageout_step(tid)
                self._release_biglock()
            else:
                pm = A.vm_pmap[tid]
                pmap.pmap_activate(pm if pm >= 0 else pmap.KERNEL_PMAP)
                status = self.load.step(ci, tid)
        except kern_synch.Sleep as s:
            self._release_biglock()
            kern_synch.sleepq_enter(ci, tid, s)
            status = SLEEPING
        except lock.LockError as e:
            # LOCKDEBUG: a lock protocol violation is a kernel panic, as in NetBSD
            import re
            m = re.search(r"lock (\d+)", str(e))
            subr_prf.panic(P_LOCKDEBUG if "myself" in str(e) else P_LOCKPROTO,
                           int(m[1]) if m else -1)
            raise                                    # (panic does not return)
        except trap.Killed:
            self._release_biglock()
            lock.simple_lock(ci.sched_lock)
            A.np["kglob"][KG_KILLED] += 1
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
        if U.A.vm_pmap[tid] >= 0:
            uvm_map.uvmspace_free(tid)
        subr_prf.UVMHIST_LOG(MSG_EXIT, subr_prf.UVMHIST_CALLED(H_EXIT), int(p["pid"]),
                             int(p["name"]), ci.cpu)
        U.A.cnt[ci.cnt_base + U.C.exits] += 1      # before the load can look finished
        lock.simple_lock(ci.sched_lock)
        p["stat"] = SZOMB
        g = U.A.np["kglob"]
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
        free = np.nonzero(stat[USER_BASE:] == 0)[0]
        if len(free):
            child = USER_BASE + int(free[0])
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
        g = U.A.np["kglob"]
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
        U.A.cnt[ci.cnt_base + U.C.forks] += 1
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


def _cpu_stride() -> int:
    from smp.machine.layout import CPU_STRIDE
    return CPU_STRIDE


def _boot_pmap_create(seg: Any, tid: int) -> int:
    """pmap_create at boot, in the parent (no CPU runs yet, so no locks)."""
    from smp.kern.uvm_page import OWN_PDP

    a = seg.arrays
    inuse = a["pm_inuse"]
    pm = int(np.nonzero(inuse[1:] == 0)[0][0]) + 1
    pdp = pmap._boot_page(seg, OWN_PDP, pm, 0)
    inuse[pm] = 1
    a["pm_refs"][pm] = 1
    a["pm_pdir"][pm] = pdp
    a["pm_ptphint"][pm] = -1
    a["pm_resident"][pm] = 1
    a["pm_memq_head"][pm] = a["pm_memq_tail"][pm] = -1
    a["pm_owner"][pm] = tid
    phys = a["physmem"]
    from smp.kern.param import PDSLOT_KERN, PDSLOT_PTE, PG_RW, PG_V
    base = pdp * 1024
    phys[base + PDSLOT_PTE] = (pdp << 12) | PG_V | PG_RW
    kb = int(a["pm_pdir"][0]) * 1024
    nk = int(a["pmap_glob"][pmap.G_NKPDE])
    phys[base + PDSLOT_KERN: base + PDSLOT_KERN + nk] = \
        phys[kb + PDSLOT_KERN: kb + PDSLOT_KERN + nk]
    g = a["pmap_glob"]
    head = int(g[pmap.G_PMAPS])
    a["pm_next"][pm] = head
    a["pm_prev"][pm] = -1
    if head >= 0:
        a["pm_prev"][head] = pm
    g[pmap.G_PMAPS] = pm
    g[pmap.G_NPMAPS] += 1
    return pm


def uvm_map_boot(seg: Any, tid: int, pm: int) -> None:
    a = seg.arrays
    a["vm_pmap"][tid] = pm
    a["vm_nentries"][tid] = 0
    a["vm_aused"][tid] = 0


__all__ = ["Kernel", "Load", "RUNNABLE", "SLEEPING", "EXITED"]
