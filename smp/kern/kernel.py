"""The kernel image the machine boots (init_main.c and the MI half of cpu_switch).

``Kernel`` is what ``smp.machine.boot.Machine`` is handed: it declares the
kernel's locks and arrays, formats them in the parent (``main()`` before the
APs start), attaches each CPU in its worker, and runs threads for a slice at
a time on behalf of the machine's dispatch loop:

    run(ci, tid):
        let the load run one slice of the thread
        -> RUNNABLE: its quantum is used up; back on the run queue
        -> Sleep:    ltsleep() unwound it; give up the big lock, queue it on its
                     channel, drop the interlock (mi_switch releases the big lock)
        -> EXITED:   mark it a zombie, count it

User code runs without the big kernel lock; with ``biglock = on`` the load
takes it around every kernel entry (``KERNEL_PROC_LOCK`` in trap() and
syscall() on the i386mp branch), so two CPUs are never in the kernel's fault
path at once.  ``ci.md.biglock`` tells the load whether to.

The load (a load script's interpreter) owns what the threads do; this module
owns the process table, sleep queues, the console and the counters.
Counters are per CPU (``cpu_counters[cpu, i]``) so counting never contends;
reports add the rows up.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from smp.config import KernelConfig, MachineProfile
from smp.kern import kern_synch, lock, subr_prf
from smp.kern.kern_proc import PROC_DTYPE, SRUN, SZOMB
from smp.machine.boot import Declaration
from smp.machine.cpu import CPU, EXITED, RUNNABLE, SLEEPING
from smp.machine.layout import ArraySpec
from smp.machine.lockspace import LockSpace

COUNTERS = [
    "swtch",       # thread slices run (context switches)
    "nsleep",      # ltsleep calls that slept
    "nexit",       # threads that exited
    "ticks",       # clock ticks handled by the primary CPU
]


class Load(Protocol):
    """What a load (a load script's interpreter) gives the kernel."""

    name: str
    nprocs: int

    def declare(self, locks: LockSpace, machine: MachineProfile) -> list[ArraySpec]: ...
    def format(self, seg: Any, kernel: Kernel) -> None: ...
    def attach(self, ci: CPU) -> None: ...
    def step(self, ci: CPU, tid: int) -> int: ...
    def progress(self, seg: Any) -> tuple[float, float]: ...
    def summary(self, seg: Any) -> dict: ...


class PerCPU:
    """The kernel's per-CPU state, hung on ``ci.md`` (the cpu_info MD part)."""

    def __init__(self, ci: CPU):
        seg = ci.seg
        self.proc = seg.arrays["proc"]
        self.slpque = seg.arrays["slpque"]
        self.counters = seg.arrays["cpu_counters"][ci.cpu]
        self.next_tick = 0
        self.biglock = False


class Kernel:
    """The simulated NetBSD kernel: configuration + load, bootable by the machine."""

    def __init__(self, config: KernelConfig, load: Load, counters: list[str] | None = None):
        self.config = config
        self.load = load
        self.counter_names = list(COUNTERS) + list(counters or [])
        self.cidx = {n: i for i, n in enumerate(self.counter_names)}
        self.stats_on = config.lockstat

    # -- parent side -----------------------------------------------------------

    def declare(self, machine: MachineProfile, locks: LockSpace) -> Declaration:
        self.machine = machine
        self.nthreads = self.load.nprocs
        lock.declare_kernel_lock(locks)
        self.msg_exit = subr_prf.message("exit1", "pid %d (%s) exited on cpu%d")
        arrays = [
            ArraySpec("proc", PROC_DTYPE, (self.nthreads,)),
            ArraySpec("cpu_counters", np.dtype("<i8"), (machine.ncpu, len(self.counter_names))),
        ]
        arrays += kern_synch.arrays()
        arrays += self.load.declare(locks, machine)
        arrays += subr_prf.arrays()
        return Declaration(arrays=arrays, nthreads=self.nthreads, catalogue=subr_prf.CATALOGUE)

    def format(self, seg: Any) -> None:
        proc = seg.arrays["proc"]
        proc["slpnext"] = -1
        proc["cpu"] = -1
        kern_synch.format_sleepq(seg)
        self.load.format(seg, self)

    def newproc(self, seg: Any, tid: int, pid: int, name: int, kind: int, cpu: int) -> None:
        """Create thread ``tid`` runnable on ``cpu`` (fork1 at boot, in the parent)."""
        from smp.machine.cpu import boot_enqueue

        p = seg.arrays["proc"][tid]
        p["pid"] = pid
        p["stat"] = SRUN
        p["name"] = name
        p["kind"] = kind
        p["cpu"] = cpu
        boot_enqueue(seg, cpu, tid)

    def finished(self, seg: Any) -> bool:
        return int(seg.arrays["cpu_counters"][:, self.cidx["nexit"]].sum()) >= self.nthreads

    def progress(self, seg: Any) -> tuple[float, float]:
        return self.load.progress(seg)

    def summary(self, seg: Any) -> dict:
        c = seg.arrays["cpu_counters"]
        return {
            "counters": {n: int(c[:, i].sum()) for i, n in enumerate(self.counter_names)},
            "per_cpu_counters": [{n: int(c[cpu, i]) for i, n in enumerate(self.counter_names)}
                                 for cpu in range(c.shape[0])],
            "load": self.load.summary(seg),
        }

    # -- CPU side --------------------------------------------------------------

    def cpu_attach(self, ci: CPU) -> None:
        lock.attach(ci.core)
        ci.core.stats_on = self.stats_on
        ci.md = PerCPU(ci)
        ci.md.biglock = self.config.biglock
        ci.tick_ns = 1_000_000_000 // self.machine.hz
        subr_prf.attach(ci, self.config.hist)
        kern_synch.attach(ci)
        self.load.attach(ci)

    def count(self, ci: CPU, name: str, n: int = 1) -> None:
        ci.md.counters[self.cidx[name]] += n

    def run(self, ci: CPU, tid: int) -> int:
        md = ci.md
        md.counters[0] += 1                      # swtch
        p = md.proc[tid]
        p["cpu"] = ci.cpu
        t0 = ci.core.now()
        try:
            status = self.load.step(ci, tid)
        except kern_synch.Sleep as s:
            self._release_biglock()
            md.counters[1] += 1                  # nsleep
            kern_synch.sleepq_enter(ci, tid, s)
            status = SLEEPING
        finally:
            p["rtime_ns"] += ci.core.now() - t0
            p["nrun"] += 1
        if md.biglock and lock.lock_held(lock.KERNEL_LOCK_ID):
            raise RuntimeError(f"pid {int(p['pid'])}: returned to user mode holding "
                               "kernel_lock")
        if status == EXITED:
            p["stat"] = SZOMB
            subr_prf.printf(self.msg_exit, int(p["pid"]), int(p["name"]), ci.cpu)
            md.counters[2] += 1                  # nexit
        if ci.cpu == 0:
            self._hardclock(ci)
        return status

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
            ci.md.counters[3] += 1
            kern_synch.endtsleep(ci)

    def idle(self, ci: CPU) -> bool:
        if ci.cpu == 0:
            self._hardclock(ci)
        return False

    def ipi(self, ci: CPU) -> None:
        ci.take_ipis()           # no IPI users yet (TLB shootdown arrives with the pmap)


__all__ = ["Kernel", "Load", "RUNNABLE", "SLEEPING", "EXITED"]
