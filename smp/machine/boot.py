"""Boot and supervision: the parent process of a simulated machine.

``Machine.run()`` is the whole life of a run:

 1. Declare: the machine's own locks (``sched_lock``) and arrays, then the
    kernel's (``kernel.declare``): lock classes, named arrays, thread slots and
    the message catalogue.
 2. Boot: plan the layout, create the segment, format lock words, let the
    kernel format its arrays (free lists, pmaps, ...) -- all in the parent,
    before any CPU exists, like a kernel's ``main()`` before it starts the APs.
 3. Start the CPUs: the kernel prints its boot messages on CPU 0's console
    (``kernel.startup``: the BSP's ``main()`` before the APs start), then one worker
    per CPU is forked (``smp.machine.cpu.worker_main``).
 4. Supervise: drain the trace rings into the run directory, update the
    progress bar, sample host figures (psutil), and watch for the end: the
    kernel says the load is finished, a CPU panicked, a worker died (seen
    within one poll interval, 0.1 s), a time limit passed, or Ctrl-C.
 5. Halt: set the halt word; CPUs stop at their next dispatch, spin turn or
    idle tick; stragglers are killed after a grace period so nothing hangs.
 6. Collect: after a normal end or the time limit, the kernel's shutdown messages
    on CPU 0's console (``kernel.shutdown``: ``cpu_reboot()``); final drain, lock
    statistics, the kernel's counters, each CPU's last words and held locks -- then
    unlink the segment, whatever happened.

The machine never imports the kernel: the kernel object is handed in.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing import connection
from typing import Any, Protocol

import numpy as np
import psutil

from smp.errors import WorkerExit, exit_for
from smp.machine import _atomic
from smp.machine.cpu import CPU, RUSAGE_FIELDS, Kernel, machine_arrays, worker_main
from smp.machine.layout import ArraySpec, Layout
from smp.machine.lockspace import LockSpace
from smp.machine.lockstat import collect_lockstat
from smp.machine.lockstep import (
    END_DEADLOCK,
    END_LIVELOCK,
    END_TIME_LIMIT,
    ST_POINTS,
    ST_SWITCHES,
    end_report,
    format_lockstep,
    lockstep_arrays,
    release_host_core,
)
from smp.machine.schedule import FREE, Schedule
from smp.machine.segment import Segment
from smp.machine.trace import Drainer, RecordSink
from smp.machine.waitfor import find_deadlock

log = logging.getLogger("smp.machine")

POLL_S = 0.1           # supervision period: a dead worker is seen within this
STOP_S = 2.0           # how long a normal end waits for the CPUs to reach a clean point
DEADLOCK_S = 2.0       # a waits-for cycle that stands this long is a deadlock (free mode)
GRACE_S = 3.0          # how long halted CPUs get to stop before they are killed


class KernelImage(Kernel, Protocol):
    """What ``Machine`` calls on a kernel, in the parent (``Kernel`` has the CPU side).

    ``declare`` (before the segment exists: locks, arrays, the message catalogue),
    ``format`` (the segment exists, no CPU runs), ``startup`` (the boot messages, printed
    through ``cnputc``: CPU 0's ring writer, ``Core.trace``'s signature), then while the
    run goes on ``finished`` (has the load ended?), ``quiet`` (is every CPU outside the
    kernel? a lockstep run past its time limit stops there) and ``progress`` (for the
    progress bar), and on the stopped machine ``shutdown`` (after a normal end or the time
    limit: the shutdown messages), ``audit`` (DIAGNOSTIC checks; {} when off) and
    ``summary``.  ``startup`` and ``shutdown`` are optional, and so is ``unfinished``
    (why a run that reached its time limit had not finished, when the kernel can tell:
    the timeout message carries it).  ``stats_on`` says whether the CPUs keep lock
    statistics.
    """

    stats_on: bool

    def declare(self, machine: Any, locks: LockSpace) -> Declaration: ...
    def format(self, seg: Segment) -> None: ...
    def startup(self, seg: Segment, cnputc: Callable[..., bool]) -> None: ...
    def shutdown(self, seg: Segment, cnputc: Callable[..., bool]) -> None: ...
    def finished(self, seg: Segment) -> bool: ...
    def quiet(self, seg: Segment) -> bool: ...
    def progress(self, seg: Segment) -> tuple[float, float]: ...
    def audit(self, seg: Segment) -> dict: ...
    def summary(self, seg: Segment) -> dict: ...


@dataclass
class Declaration:
    """The kernel's answer to ``declare``: what it needs in the segment."""

    arrays: list[ArraySpec]
    nthreads: int
    catalogue: Any                      # smp.rundir.format.Catalogue


@dataclass
class CpuReport:
    cpu: int
    pid: int
    exitcode: int | None
    state: str
    text: str
    held: list[dict]
    spinning_on: str = ""
    host: dict = field(default_factory=dict)


@dataclass
class RunOutcome:
    status: str                  # a key of smp.errors.STATUS_EXIT: done, timeout, panic, ...
    exit_code: int
    elapsed_s: float
    message: str
    cpus: list[CpuReport]
    trace: dict
    lockstat: dict
    kernel: dict
    layout: dict
    schedule: dict = field(default_factory=dict)
    diagnostic: dict = field(default_factory=dict)


CPU_STATES = {
    _atomic.CS_OFFLINE: "offline", _atomic.CS_IDLE: "idle", _atomic.CS_RUNNING: "running",
    _atomic.CS_SPINNING: "spinning", _atomic.CS_HALTED: "halted", _atomic.CS_PANIC: "panic",
    _atomic.CS_DONE: "done",
}


class Machine:
    """One simulated machine: ``profile.ncpu`` workers on one segment, run once.

    ``kernel`` is the kernel image (:class:`KernelImage`), ``sink`` where the trace
    records go (:class:`~smp.machine.trace.RecordSink`), ``schedule`` free or lockstep
    (:mod:`smp.machine.schedule`).
    """

    def __init__(self, profile: Any, kernel: KernelImage, sink: RecordSink,
                 schedule: Schedule = FREE, *, time_limit_s: float | None = None,
                 progress: bool = False):
        self.ncpu = profile.ncpu
        self.ring_capacity = profile.trace_ring
        self.kernel = kernel
        self.profile = profile
        self.sink = sink
        self.schedule = schedule
        self.time_limit_s = time_limit_s
        self.progress = progress
        self.locks = LockSpace()
        self.sched_lock = self.locks.declare("sched_lock", "spin")

    @property
    def lockstep(self) -> bool:
        return self.schedule.lockstep

    # -- boot -----------------------------------------------------------------

    def boot(self) -> Segment:
        """Declare, plan, create and format the segment (parent only)."""
        decl = self.kernel.declare(self.profile, self.locks)
        self.decl = decl
        arrays = machine_arrays(self.ncpu, decl.nthreads) + list(decl.arrays)
        if self.lockstep:
            arrays += lockstep_arrays(self.ncpu)
        self.layout = Layout.plan(self.ncpu, self.locks.nlocks, self.ring_capacity, arrays)
        seg = Segment(self.layout)
        try:
            self.locks.format_words(seg.locks)
            self.kernel.format(seg)
            if self.lockstep:
                limit = int(self.time_limit_s * 1e9) if self.time_limit_s else None
                format_lockstep(seg, self.schedule, limit)
        except BaseException:
            seg.destroy()
            raise
        return seg

    def attach_local_cpu(self, seg: Segment, cpu: int = 0) -> CPU:
        """CPU ``cpu`` of a booted (unforked) machine, run by this very process: the
        kernel attached, the run queue emptied (tests drive the kernel by hand)."""
        ci = CPU(seg, cpu, self.sched_lock, self.decl.nthreads)
        self.kernel.cpu_attach(ci, wait_for_others=False)
        while ci.remrunqueue() is not None:
            pass
        return ci

    # -- the run --------------------------------------------------------------

    def run(self) -> RunOutcome:
        """Boot, run and collect (module docstring).

        Ctrl-C and SIGTERM only set a flag the supervisor looks at every poll, so they
        end the run cleanly (status "interrupted") wherever they land -- inside boot,
        inside a fork() of the CPUs (where a raised KeyboardInterrupt would be lost in
        an at-fork hook), or during the cleanup (which they cannot cut short).
        """
        self._stop_signal = ""

        def on_signal(signum, frame) -> None:
            if not self._stop_signal:
                self._stop_signal = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"

        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s, h in old.items():
            if h is not signal.SIG_IGN:          # a background job ignores Ctrl-C: keep it so
                signal.signal(s, on_signal)
        try:
            seg = self.boot()
        except BaseException:
            _restore(old)
            raise
        procs: list[Any] = []
        drainer = None
        t0 = time.monotonic()
        status, message = "internal-error", ""
        samples: dict[int, dict] = {}
        mp_logging = False
        try:
            mp_logging = _install_worker_logging()
            drainer = Drainer(seg, self.sink, self.decl.catalogue)
            self._console(seg, drainer, "startup")
            self._start_cpus(seg, procs)
            drainer.start_thread()
            status, message = self._supervise(seg, procs, drainer, t0, samples)
        except KeyboardInterrupt:                # (a handler someone else installed)
            status, message = "interrupted", "Ctrl-C"
        finally:
            try:
                if status in ("done", "timeout") and not self.lockstep:
                    seg.stop()                   # let the CPUs reach a clean point first
                    self._stop_workers(procs, grace=STOP_S)
                seg.halt()
                self._stop_workers(procs)
                elapsed = time.monotonic() - t0
                vclock = int(seg.hdr["vclock"])
                if status in ("done", "timeout") and drainer is not None \
                        and all(p.exitcode is not None for p in procs):
                    if self.lockstep:          # the shutdown sorts after every record
                        seg.hdr["vclock"] = vclock + 1
                    self._console(seg, drainer, "shutdown")
                outcome = self._collect(seg, procs, drainer, status, message, elapsed,
                                        samples, vclock)
            finally:
                seg.destroy()
                if self.lockstep:
                    release_host_core(getattr(seg, "name", ""))
                if mp_logging:
                    _uninstall_worker_logging()
                if status != "interrupted":       # after Ctrl-C, stay deaf until exit
                    _restore(old)
        return outcome

    def _console(self, seg: Segment, drainer: Drainer, hook: str) -> None:
        """Let the kernel print on CPU 0's console while no CPU runs (``startup`` before
        the CPUs start, ``shutdown`` after they stopped): the records go into CPU 0's
        ring through its atomic core, stamped by the machine's clock (virtual time in
        lockstep); a full ring is drained first, so nothing waits and nothing drops."""
        fn = getattr(self.kernel, hook, None)
        if fn is None:
            return
        core = seg.core(0)
        core.lockstep = self.lockstep
        rings, cap = seg.rings, self.ring_capacity

        def cnputc(msgid: int, call: int, *args: int) -> bool:
            if int(rings["head"][0]) - int(rings["tail"][0]) >= cap:
                drainer.drain()
            return core.trace(msgid, call, *args)

        fn(seg, cnputc)

    def _start_cpus(self, seg: Segment, procs: list) -> None:
        """Fork one worker per CPU (the APs start; the parent is the BSP's firmware)."""
        ctx = _fork_context()
        # a Ctrl-C landing inside fork() would be raised in an at-fork hook, which Python
        # reports and swallows: hold SIGINT/SIGTERM until every CPU exists (the workers
        # unblock them once their own handlers are set)
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            self._fork_cpus(ctx, seg, procs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _fork_cpus(self, ctx, seg: Segment, procs: list) -> None:
        for cpu in range(self.ncpu):
            p = ctx.Process(target=worker_main, name=f"cpu{cpu}",
                            args=(seg, cpu, self.kernel, self.sched_lock, self.decl.nthreads,
                                  self.schedule.strategy,
                                  getattr(self.profile, "park_after", 256)),
                            daemon=True)
            p.start()
            procs.append(p)

    def boot_and_wait(self, timeout_s: float = 30.0) -> BootedMachine:
        """Boot, start every CPU and return once all are in their dispatch loops.

        For benchmarks and tests of boot itself; ``destroy()`` halts and cleans up.
        """
        seg = self.boot()
        procs: list = []
        try:
            self._start_cpus(seg, procs)
            deadline = time.monotonic() + timeout_s
            while not np.all(seg.cpus["heartbeat"] > 0):
                if time.monotonic() > deadline or any(p.exitcode is not None for p in procs):
                    raise RuntimeError("CPUs did not come up")
                time.sleep(0.0002)
        except BaseException:
            seg.halt()
            self._stop_workers(procs)
            seg.destroy()
            raise
        return BootedMachine(self, seg, procs)

    def _supervise(self, seg: Segment, procs: list, drainer, t0: float,
                   samples: dict) -> tuple[str, str]:
        bar = _progress_bar(self.progress)
        last_sample = 0.0
        stuck_since, stuck = None, None
        try:
            while True:
                if self._stop_signal:
                    return "interrupted", self._stop_signal
                ready = connection.wait([p.sentinel for p in procs], timeout=POLL_S)
                now = time.monotonic()
                if seg.hdr["panic_cpu"]:
                    cpu = int(seg.hdr["panic_cpu"]) - 1
                    return "panic", f"cpu{cpu} panicked"
                if ready:
                    dead = [p for p in procs if p.exitcode is not None]
                    if self.lockstep and seg.halted:
                        # wait for every CPU, so a failing one is not classified by
                        # another's normal halted exit
                        self._stop_workers(procs)
                        codes = [p.exitcode for p in procs]
                        if WorkerExit.PANIC in codes or seg.hdr["panic_cpu"]:
                            return "panic", f"cpu{int(seg.hdr['panic_cpu']) - 1} panicked"
                        ok = (WorkerExit.DONE, WorkerExit.HALTED)
                        if any(c not in ok for c in codes):
                            bad = next(i for i, c in enumerate(codes) if c not in ok)
                            return ("internal-error" if codes[bad] == WorkerExit.INTERNAL
                                    else "cpu-died"), f"cpu{bad}: {_why(codes[bad])}"
                        return self._lockstep_status(seg)
                    for p in dead:
                        cpu = procs.index(p)
                        if p.exitcode == WorkerExit.PANIC or seg.hdr["panic_cpu"]:
                            return "panic", f"cpu{int(seg.hdr['panic_cpu']) - 1} panicked"
                        if p.exitcode == WorkerExit.INTERNAL:
                            return "internal-error", f"cpu{cpu}: internal error of the simulator"
                        if p.exitcode != WorkerExit.DONE or not seg.halted:
                            return "cpu-died", f"cpu{cpu} (pid {p.pid}) died: {_why(p.exitcode)}"
                if drainer.error is not None:
                    return "write-error", f"trace drainer: {drainer.error}"
                if self.kernel.finished(seg):
                    return "done", "load finished"
                cycle = find_deadlock(seg)
                if cycle is None:
                    stuck_since, stuck = None, None
                elif cycle != stuck:
                    stuck_since, stuck = now, cycle
                elif now - stuck_since >= DEADLOCK_S:
                    desc = ", ".join(f"cpu{c} spins on {self.locks.name_of(lk)}"
                                     for c, lk in cycle)
                    return "deadlock", f"deadlock: {desc}"
                if self.lockstep and seg.halted:
                    continue                 # the CPUs are stopping by themselves
                if (self.time_limit_s is not None and not self.lockstep
                        and now - t0 > self.time_limit_s):
                    why = getattr(self.kernel, "unfinished", lambda seg: "")(seg)
                    return "timeout", (f"time limit of {self.time_limit_s:g} s reached"
                                       + (f": {why}" if why else ""))
                if now - last_sample > 0.5:
                    last_sample = now
                    _sample_host(procs, samples)
                    if bar is not None:
                        done, total = self.kernel.progress(seg)
                        bar.total = total
                        bar.n = min(done, total)
                        bar.refresh()
        finally:
            _sample_host(procs, samples)
            if bar is not None:
                bar.close()

    def _lockstep_status(self, seg: Segment) -> tuple[str, str]:
        """Why a lockstep run ended: finished, virtual time limit, deadlock, livelock."""
        kind, bound, cycle = end_report(seg)
        if kind == END_TIME_LIMIT:
            return "timeout", f"virtual time limit of {self.time_limit_s:g} s reached"
        if kind == END_DEADLOCK:
            desc = ", ".join(f"cpu{c} spins on {self.locks.name_of(lk)}" for c, lk in cycle)
            return "deadlock", f"deadlock: {desc}"
        if kind == END_LIVELOCK:
            return "livelock", f"livelock: no progress in {bound} scheduling points"
        return "done", "load finished"

    def _stop_workers(self, procs: list, grace: float | None = None) -> None:
        deadline = time.monotonic() + (GRACE_S if grace is None else grace)
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        if grace is not None:
            return                               # a soft stop: the halt follows
        for p in procs:
            if p.exitcode is None:
                log.warning("%s did not stop within %.1f s; killing it", p.name, GRACE_S)
                p.kill()
                p.join(1.0)

    # -- collect ---------------------------------------------------------------

    def _collect(self, seg: Segment, procs: list, drainer, status: str, message: str,
                 elapsed: float, samples: dict, vclock: int) -> RunOutcome:
        trace = drainer.close() if drainer is not None else {}
        cpus = []
        sites = seg.site_names()
        text = seg.arrays["cpu_text"]
        rusage = seg.arrays.get("cpu_rusage")
        for i in range(self.ncpu):
            area = seg.cpus[i]
            nheld = int(area["nheld"])
            held = [{"lock": int(h["lock"]), "name": self.locks.name_of(int(h["lock"])),
                     "class": self.locks.class_of(int(h["lock"])).name,
                     "site": sites[int(h["site"])] if int(h["site"]) < len(sites) else "?",
                     "mode": "shared" if int(h["mode"]) else "excl"}
                    for h in area["held"][:nheld]]
            spin = int(area["spinning_on"])
            p = procs[i] if i < len(procs) else None
            host = dict(samples.get(i, {}))
            if rusage is not None:
                host.update(zip(RUSAGE_FIELDS, map(float, rusage[i]), strict=False))
            cpus.append(CpuReport(
                cpu=i, pid=p.pid if p else 0, exitcode=p.exitcode if p else None,
                state=CPU_STATES.get(int(area["state"]), "?"),
                text=bytes(text[i]).decode("utf-8", "replace"), held=held,
                spinning_on=self.locks.name_of(spin - 1) if spin else "", host=host))
        try:
            audit = self.kernel.audit(seg)          # DIAGNOSTIC, on the stopped machine
        except Exception as e:  # noqa: BLE001 - report it, do not lose the run
            audit = {"error": repr(e)}
        if audit.get("violations") and status in ("done", "timeout"):
            status, message = "invariant", f"DIAGNOSTIC: {audit['violations'][0]}"
        if trace.get("error") and status in ("done", "timeout"):
            status, message = "write-error", f"trace: {trace['error']}"
        exit_code = int(exit_for(status))
        lockstat = collect_lockstat(seg, self.locks,
                                    vclock if self.lockstep else int(elapsed * 1e9))
        try:
            kernel = self.kernel.summary(seg)
        except Exception as e:  # noqa: BLE001 - a half-booted kernel must not hide the report
            kernel = {"error": repr(e)}
        schedule = {}
        if self.lockstep:
            st = seg.arrays["ls_state"]
            schedule = {"strategy": self.schedule.strategy, "seed": self.schedule.seed,
                        "livelock_bound": self.schedule.livelock_bound,
                        "points": int(st[ST_POINTS]), "switches": int(st[ST_SWITCHES]),
                        "virtual_ns": vclock}
        return RunOutcome(status=status, exit_code=exit_code, elapsed_s=elapsed,
                          message=message, cpus=cpus, trace=trace, lockstat=lockstat,
                          kernel=kernel, layout=self.layout.to_dict(), schedule=schedule,
                          diagnostic=audit)


class BootedMachine:
    """A machine whose CPUs are running (see ``Machine.boot_and_wait``)."""

    def __init__(self, machine: Machine, seg: Segment, procs: list):
        self.machine, self.seg, self.procs = machine, seg, procs

    def destroy(self) -> None:
        self.seg.halt()
        self.machine._stop_workers(self.procs)
        self.seg.destroy()


def _restore(handlers: dict) -> None:
    for s, h in handlers.items():
        signal.signal(s, h)


def _why(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return {WorkerExit.HALTED: "halted", WorkerExit.INTERNAL: "internal error",
            WorkerExit.PANIC: "panicked"}.get(code, f"exit {code}")


def _sample_host(procs: list, samples: dict) -> None:
    """psutil figures of each live worker (kept if it dies later)."""
    for i, p in enumerate(procs):
        if p.exitcode is not None:
            continue
        try:
            ps = psutil.Process(p.pid)
            with ps.oneshot():
                ct = ps.cpu_times()
                cs = ps.num_ctx_switches()
                samples[i] = {"user_s": ct.user, "system_s": ct.system,
                              "rss_bytes": float(ps.memory_info().rss),
                              "vcsw": float(cs.voluntary), "ivcsw": float(cs.involuntary)}
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass


def _install_worker_logging() -> bool:
    """Route the workers' diagnostics (the simulator's own errors, not trace data)
    to the parent's stderr through multiprocessing-logging; returns True if installed."""
    import multiprocessing

    import multiprocessing_logging

    logger = logging.getLogger("smp")
    if any(isinstance(h, multiprocessing_logging.MultiProcessingHandler)
           for h in logger.handlers):
        return False
    if multiprocessing.get_start_method(allow_none=True) not in (None, "fork"):
        return False                     # the handler needs fork; stay with plain logging
    if not logger.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("smp: %(name)s: %(message)s"))
        logger.addHandler(h)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    if multiprocessing.get_start_method(allow_none=True) is None:
        multiprocessing.set_start_method("fork")
    multiprocessing_logging.install_mp_handler(logger)
    return True


def _uninstall_worker_logging() -> None:
    import multiprocessing_logging

    multiprocessing_logging.uninstall_mp_handler(logging.getLogger("smp"))


def _fork_context():
    import multiprocessing

    # fork: workers inherit the mapped segment and the imported kernel (2 ms per
    # worker, against ~100 ms for spawn), and multiprocessing-logging needs it
    return multiprocessing.get_context("fork")


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=1.0, unit="", bar_format="{l_bar}{bar}| {elapsed}", leave=False,
                desc="smp run")


def host_info() -> dict:
    return {"hostname": os.uname().nodename, "cpus": os.cpu_count(),
            "python": ".".join(map(str, __import__("sys").version_info[:3])),
            "platform": os.uname().sysname + " " + os.uname().release}
