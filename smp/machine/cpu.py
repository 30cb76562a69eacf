"""A simulated CPU: one worker process, its run queue and its dispatch loop.

Each CPU is a forked worker that owns an atomic core (``_atomic.Core``) on the
shared segment.  Its life is the loop in :func:`dispatch`, which is all of the
machine's scheduling and knows nothing about pmaps:

    forever:
        stop if the machine is halted (panic, end of run, a dead CPU, Ctrl-C)
        answer pending IPIs                      (kernel.ipi)
        take the next thread from our run queue, or steal one from another CPU
        none: let the kernel do idle work, else sleep on our kick futex
        run the thread for a slice               (kernel.run) -> RUNNABLE again,
                                                  or it slept / exited

Threads are opaque integers to the machine (the kernel's process and kernel-
thread slots).  Run queues live in the segment under the global ``sched_lock``
(as in NetBSD 1.5, one lock for run and sleep queues), so a thread woken on one
CPU can be run by another: ``setrunqueue`` puts it on a CPU's queue and kicks
that CPU out of its idle sleep.

An idle CPU reads its kick word *before* it looks at the queues and sleeps only
while the word is unchanged, so a wakeup between the look and the sleep is
never lost; the sleep also times out every tick so the CPU notices a halt.
"""

from __future__ import annotations

import os
import signal
import traceback
from typing import Protocol

import numpy as np
import psutil

from smp.errors import WorkerExit
from smp.machine import _atomic
from smp.machine.layout import CPU_DTYPE, CPU_STRIDE, ArraySpec
from smp.machine.segment import Segment

RUNNABLE, SLEEPING, EXITED = 0, 1, 2

RUNQ_HDR_DTYPE = np.dtype([("head", "<u8"), ("tail", "<u8"), ("pad", "<u8", (6,))])
CPU_TEXT = 1024   # bytes of "last words" per CPU: where it was when it stopped

RUSAGE_FIELDS = ("user_s", "system_s", "rss_bytes", "vcsw", "ivcsw")
IDLE_VTICK = 10_000       # ns of virtual time an idle turn lasts (lockstep)


class Panic(Exception):
    """Raised by the simulated kernel's panic() after it has halted the machine."""


class Kernel(Protocol):
    """What a kernel gives the machine (see smp.machine.boot.KernelImage)."""

    def cpu_attach(self, ci: CPU, wait_for_others: bool = True) -> None: ...
    def run(self, ci: CPU, tid: int) -> int: ...
    def idle(self, ci: CPU) -> bool: ...
    def ipi(self, ci: CPU) -> None: ...


def machine_arrays(ncpu: int, nthreads: int) -> list[ArraySpec]:
    """The machine's own named arrays: run queues and the CPUs' last words."""
    return [
        ArraySpec("runq_hdr", RUNQ_HDR_DTYPE, (ncpu,)),
        ArraySpec("runq", np.dtype("<i4"), (ncpu, nthreads + 1)),
        ArraySpec("cpu_text", np.dtype(f"S{CPU_TEXT}"), (ncpu,)),
        ArraySpec("cpu_rusage", np.dtype("<f8"), (ncpu, 5)),
    ]


def boot_enqueue(seg: Segment, cpu: int, tid: int) -> None:
    """Put thread ``tid`` on ``cpu``'s run queue before the CPUs start (parent)."""
    h = seg.arrays["runq_hdr"][cpu]
    q = seg.arrays["runq"]
    tail = int(h["tail"])
    q[cpu, tail % q.shape[1]] = tid
    h["tail"] = tail + 1


class CPU:
    """One simulated CPU as its own worker sees it (NetBSD's ``struct cpu_info``).

    ``core`` is the atomic core; ``seg`` the shared segment; ``cpu`` the number.
    The kernel hangs its per-CPU state on ``self.md`` (machine-dependent part).
    """

    def __init__(self, seg: Segment, cpu: int, sched_lock: int, nthreads: int):
        self.seg = seg
        self.cpu = cpu
        self.ncpu = seg.layout.ncpu
        self.core = seg.core(cpu)
        self.sched_lock = sched_lock
        self.nthreads = nthreads
        self.area = seg.cpus[cpu]
        self.runq_hdr = seg.arrays["runq_hdr"]
        self.runq = seg.arrays["runq"]
        self.qcap = nthreads + 1
        base = seg.layout.cpu_off
        self._kick_off = [base + i * CPU_STRIDE + CPU_DTYPE.fields["kick"][1]
                          for i in range(self.ncpu)]
        self._ipi_off = [base + i * CPU_STRIDE + CPU_DTYPE.fields["ipi_pending"][1]
                         for i in range(self.ncpu)]
        self._state_off = base + self.cpu * CPU_STRIDE + CPU_DTYPE.fields["state"][1]
        # ipi_pending() -> this CPU's pending IPI bits, without taking them: the atomic
        # core's read itself, without a Python frame (trap.memref asks at every reference)
        self.ipi_pending = self.core.ipi_pending
        self.md = None
        self._kick_seen = 0
        self.lockstep = None          # smp.machine.lockstep.Lockstep in lockstep mode
        self.tick_ns = 10_000_000

    # -- run queues (=> caller holds sched_lock) --------------------------------

    def _enqueue(self, cpu: int, tid: int) -> None:
        h = self.runq_hdr[cpu]
        tail = int(h["tail"])
        if tail - int(h["head"]) >= self.qcap:
            raise RuntimeError(f"cpu{cpu}: run queue overflow")
        self.runq[cpu, tail % self.qcap] = tid
        h["tail"] = tail + 1

    def _dequeue(self, cpu: int) -> int | None:
        h = self.runq_hdr[cpu]
        head = int(h["head"])
        if head == int(h["tail"]):
            return None
        tid = int(self.runq[cpu, head % self.qcap])
        h["head"] = head + 1
        return tid

    def setrunqueue(self, tid: int, cpu: int | None = None, locked: bool = False) -> None:
        """Make thread ``tid`` runnable on ``cpu`` (default: this one) and kick it.

        => takes sched_lock unless ``locked`` (the caller holds it already).
        """
        cpu = self.cpu if cpu is None else cpu
        if not locked:
            self.core.lock(self.sched_lock)
        try:
            self._enqueue(cpu, tid)
        finally:
            if not locked:
                self.core.unlock(self.sched_lock)
        if cpu != self.cpu:
            self.kick(cpu)

    def remrunqueue(self) -> int | None:
        """Next thread for this CPU: our own queue first, then another CPU's."""
        core = self.core
        core.lock(self.sched_lock)
        try:
            tid = self._dequeue(self.cpu)
            if tid is None:
                for i in range(1, self.ncpu):
                    tid = self._dequeue((self.cpu + i) % self.ncpu)
                    if tid is not None:
                        break
            return tid
        finally:
            core.unlock(self.sched_lock)

    def runq_empty(self) -> bool:
        h = self.runq_hdr
        return bool(np.all(h["head"] == h["tail"]))

    # -- inter-processor signalling --------------------------------------------

    def kick(self, cpu: int) -> None:
        """Wake ``cpu`` from its idle sleep (its kick word changes)."""
        off = self._kick_off[cpu]
        self.core.fadd32(off, 1)
        self.core.futex_wake(off, 1)

    def send_ipi(self, cpu: int, bits: int, wake: bool = True) -> None:
        """Post IPI ``bits`` to ``cpu`` (i386_send_ipi) and kick it -- out of its idle sleep,
        or off the futex it parked on while waiting for a lock (it must answer) -- unless
        ``wake`` is false (the sender answers for a waiting CPU: pmap_tlb_shootnow)."""
        self.core.send_ipi(cpu, bits, wake)

    def set_state(self, state: int) -> None:
        """Set this CPU's CS_* state with a sequentially consistent store: a CPU leaving
        CS_SPINNING or CS_IDLE must not read its IPI word before the store is seen
        (a TLB shooter acknowledges for waiting and idle CPUs: pmap_tlb_shootnow)."""
        self.core.xchg32(self._state_off, state)

    def take_ipis(self) -> int:
        """Fetch and clear this CPU's pending IPI bits."""
        return self.core.xchg64(self._ipi_off[self.cpu], 0)

    def idle_wait(self, timeout_ns: int | None = None) -> None:
        """Sleep until kicked or a tick passes (=> caller saw nothing to run)."""
        self.core.futex_wait(self._kick_off[self.cpu], self._kick_seen,
                             self.tick_ns if timeout_ns is None else timeout_ns)

    @property
    def halted(self) -> bool:
        return bool(self.seg.hdr["halt"])

    def set_text(self, text: str) -> None:
        """Leave this CPU's last words (where it was) for the parent's report."""
        self.seg.arrays["cpu_text"][self.cpu] = text.encode("utf-8", "replace")[:CPU_TEXT]


def dispatch(ci: CPU, kernel: Kernel) -> None:
    """The CPU's scheduler loop (cpu_switch + idle).  Returns when halted."""
    area = ci.area
    core = ci.core
    kick_off = ci._kick_off[ci.cpu]
    ls = ci.lockstep
    hdr = ci.seg.hdr
    while not ci.halted and not hdr["stop"]:
        area["heartbeat"] += 1
        stopping = ls is not None and ls.stopping()
        if ls is not None and (kernel.finished(ci.seg) or stopping and kernel.quiet(ci.seg)):
            ls.finish()                      # the end is a scheduling decision too
            break
        if ci.ipi_pending():
            kernel.ipi(ci)
        if stopping:                         # past the time limit: no new thread
            area["state"] = _atomic.CS_IDLE
            ls.point(IDLE_VTICK)
            area["state"] = _atomic.CS_RUNNING
            continue
        ci._kick_seen = core.fadd32(kick_off, 0)
        tid = ci.remrunqueue()
        if tid is None:
            if kernel.idle(ci):
                continue
            area["state"] = _atomic.CS_IDLE
            if ls is not None:
                ls.point(IDLE_VTICK)         # idle turns pass virtual time
            else:
                ci.idle_wait()
            ci.set_state(_atomic.CS_RUNNING)
            continue
        area["curproc"] = tid
        status = kernel.run(ci, tid)
        area["curproc"] = -1
        if status == RUNNABLE:
            ci.setrunqueue(tid)


def where(exc: BaseException | None = None, limit: int = 8) -> str:
    """Innermost Python frames of an exception (or of the caller) as a call chain."""
    if exc is not None:
        frames = traceback.extract_tb(exc.__traceback__)
    else:
        frames = traceback.extract_stack()[:-1]
    names = [f"{f.name}:{f.lineno}" for f in frames[-limit:]]
    return " <- ".join(reversed(names))


def worker_main(seg: Segment, cpu: int, kernel: Kernel, sched_lock: int, nthreads: int,
                lockstep: str | None = None, park_after: int = 256) -> None:
    """Body of CPU ``cpu``'s worker process; never returns (os._exit).

    Exit status: a :class:`~smp.errors.WorkerExit` (the run ended, this CPU panicked,
    halted by another CPU's panic or by the parent, an internal error of the simulator).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _die_with_parent()
    code = WorkerExit.INTERNAL
    try:
        ci = CPU(seg, cpu, sched_lock, nthreads)
        ci.area["state"] = _atomic.CS_RUNNING
        ci.core.park_after = park_after
        kernel.cpu_attach(ci)
        try:
            if lockstep:
                from smp.machine.lockstep import Lockstep
                ci.lockstep = Lockstep(ci, lockstep)
                ci.lockstep.install()
                ci.lockstep.wait_turn()
            dispatch(ci, kernel)
            code = WorkerExit.DONE if not seg.hdr["panic_cpu"] else WorkerExit.HALTED
            ci.area["state"] = _atomic.CS_DONE
        except _atomic.Halted as e:
            ci.set_text(f"halted in {where(e)} ({e})")    # why: the lockstep scheduler is C
            ci.area["state"] = _atomic.CS_HALTED
            code = WorkerExit.HALTED
        except Exception as e:  # noqa: BLE001 - a panic or a simulator bug: report, don't hang
            if isinstance(e, Panic):
                ci.set_text("panic in " + where(e))
                ci.area["state"] = _atomic.CS_PANIC
                code = WorkerExit.PANIC
            else:
                text = "".join(traceback.format_exception(e))
                ci.set_text(f"internal error: {e!r} in {where(e)}")
                _log_internal(cpu, text)
                seg.halt()
                code = WorkerExit.INTERNAL
    except BaseException as e:  # noqa: BLE001
        _log_internal(cpu, "".join(traceback.format_exception(e)))
        try:
            seg.halt()
        except Exception:  # noqa: BLE001
            pass
    finally:
        _leave_rusage(seg, cpu)
        _flush_logging()
        os._exit(int(code))


def _flush_logging() -> None:
    """os._exit skips the queue feeder thread of multiprocessing-logging: flush it."""
    import logging

    for h in logging.getLogger("smp").handlers:
        q = getattr(h, "queue", None)
        if q is not None:
            try:
                q.close()
                q.join_thread()
            except Exception:  # noqa: BLE001
                pass


def _die_with_parent() -> None:
    """A CPU must not outlive its machine: ask Linux to SIGKILL us when the parent dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)          # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _leave_rusage(seg: Segment, cpu: int) -> None:
    """This worker's own host figures (psutil), for the run summary."""
    try:
        seg.arrays["cpu_rusage"][cpu] = self_rusage()
    except Exception:  # noqa: BLE001 - figures are nice to have, exiting is not optional
        pass


def self_rusage() -> np.ndarray:
    """This worker's own host figures, in RUSAGE_FIELDS order (written at exit)."""
    ps = psutil.Process()
    ct = ps.cpu_times()
    cs = ps.num_ctx_switches()
    return np.array([ct.user, ct.system, ps.memory_info().rss, cs.voluntary, cs.involuntary],
                    dtype=np.float64)


def _log_internal(cpu: int, text: str) -> None:
    import logging
    logging.getLogger("smp.cpu").error("cpu%d: internal error\n%s", cpu, text)
