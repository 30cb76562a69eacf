"""The machine's shared-memory segment: the physical memory every CPU sees.

The parent creates one ``multiprocessing.shared_memory`` segment per machine,
formats it from a :class:`~smp.machine.layout.Layout` and is its only owner:
it alone unlinks it, on every exit path (normal end, panic, a dead worker,
Ctrl-C, an exception during boot).  Workers are forked after the segment is
mapped and inherit the mapping, so they never attach by name and never touch
the resource tracker (the 3.11 tracker would otherwise adopt and unlink
segments it does not own).

Views: ``hdr``, ``locks``, ``cpus`` (control blocks), ``slots``/``pairs``
(lock statistics, per CPU), ``sites`` (call-site registry), ``rings`` (ring
headers) and ``records`` (per-CPU record arrays) are numpy views; the kernel's
named arrays are in ``arrays``.
"""

from __future__ import annotations

import os
import secrets
from multiprocessing import shared_memory

import numpy as np
import psutil

from smp.machine import _atomic
from smp.machine.layout import (
    CPU_DTYPE,
    CPU_STRIDE,
    HDR_DTYPE,
    LOCK_DTYPE,
    MAGIC,
    PAIR_DTYPE,
    REC_DTYPE,
    RING_HDR_DTYPE,
    SITE_DTYPE,
    SITE_HDR_DTYPE,
    SLOT_DTYPE,
    Layout,
)

SEGMENT_PREFIX = "smp-"

_stat_clock: tuple[int, int] | None = None


def _tsc_trusted() -> bool:
    """The host kernel keeps the time-stamp counter invariant and synchronised across
    cores (it chose it as its clocksource, and the CPU says constant and nonstop)."""
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            if f.read().strip() != "tsc":
                return False
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split()
                    return "constant_tsc" in flags and "nonstop_tsc" in flags
    except OSError:
        pass
    return False


def stat_clock() -> tuple[int, int]:
    """(tsc_boot, tsc_mult) for a segment header: the clock of lock statistics.

    Reading CLOCK_MONOTONIC twice per lock pair was half the cost of an instrumented
    pair; the time-stamp counter is a third of it.  Calibrated once per process (5 ms
    against CLOCK_MONOTONIC: a relative error of ~1e-5); (0, 0) where the host's TSC is
    not trusted, and the core falls back to CLOCK_MONOTONIC (``SMP_STAT_CLOCK=monotonic``
    forces that)."""
    global _stat_clock
    if _stat_clock is None:
        if os.environ.get("SMP_STAT_CLOCK") == "monotonic" or not _tsc_trusted():
            _stat_clock = (0, 0)
        else:
            _stat_clock = _atomic.tsc_calibrate(5_000_000)
    return _stat_clock


class Segment:
    """One machine's shared memory, created and owned by the parent."""

    def __init__(self, layout: Layout):
        self.layout = layout
        name = f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.shm = shared_memory.SharedMemory(name=name, create=True, size=layout.size)
        self.owner_pid = os.getpid()
        self.name = name
        self._views()
        self.hdr["magic"] = MAGIC
        self.hdr["boot_ns"] = _atomic.monotonic_ns()
        self.hdr["tsc_boot"], self.hdr["tsc_mult"] = stat_clock()
        self.sites_hdr["capacity"] = layout.site_capacity
        self.sites[0]["name"] = b"<unknown>"     # site 0: no frame, or the registry is full
        self.sites_hdr["count"] = 1
        for r in self.rings:
            r["capacity"] = layout.ring_capacity
        self.cpus["curproc"] = -1
        overflow = self.slots[:, -1]               # each CPU's overflow slot
        overflow["lock"] = 0xFFFFFFFF
        overflow["wait_min"] = np.iinfo(np.uint64).max
        overflow["hold_min"] = np.iinfo(np.uint64).max

    def _views(self) -> None:
        lay, buf = self.layout, self.shm.buf
        self.buf = buf
        self.hdr = np.ndarray((), HDR_DTYPE, buf, 0)
        self.locks = np.ndarray((lay.nlocks,), LOCK_DTYPE, buf, lay.lock_off)
        self.cpus = np.ndarray((lay.ncpu,), CPU_DTYPE, buf, lay.cpu_off, (CPU_STRIDE,))
        self.slots = np.ndarray((lay.ncpu, lay.nslots), SLOT_DTYPE, buf, lay.stats_off,
                                (lay.stats_stride, SLOT_DTYPE.itemsize))
        self.pairs = np.ndarray((lay.ncpu, lay.npairs), PAIR_DTYPE, buf,
                                lay.stats_off + lay.nslots * SLOT_DTYPE.itemsize,
                                (lay.stats_stride, PAIR_DTYPE.itemsize))
        self.sites_hdr = np.ndarray((), SITE_HDR_DTYPE, buf, lay.sites_off)
        self.sites = np.ndarray((lay.site_capacity,), SITE_DTYPE, buf,
                                lay.sites_off + SITE_HDR_DTYPE.itemsize)
        self.rings = np.ndarray((lay.ncpu,), RING_HDR_DTYPE, buf, lay.rings_off,
                                (lay.ring_stride,))
        self.records = np.ndarray((lay.ncpu, lay.ring_capacity), REC_DTYPE, buf,
                                  lay.rings_off + RING_HDR_DTYPE.itemsize,
                                  (lay.ring_stride, REC_DTYPE.itemsize))
        self.arrays = {
            name: np.ndarray(spec.shape, spec.dtype, buf, off)
            for name, (off, spec) in lay.arrays.items()
        }

    def core(self, cpu: int) -> _atomic.Core:
        """The atomic core of simulated CPU ``cpu`` (made inside its worker)."""
        return _atomic.Core(self.shm.buf, *self.layout.core_args(cpu))

    def site_names(self) -> list[str]:
        """Call-site names by id, as registered by the CPUs so far."""
        n = int(self.sites_hdr["count"])
        return [bytes(s).decode("utf-8", "replace") for s in self.sites["name"][:n]]

    def stop(self) -> None:
        """Ask every CPU to leave its dispatch loop at its next clean point (no locks held):
        the normal end of a run, so the machine is left in a consistent state."""
        self.hdr["stop"] = 1

    def halt(self) -> None:
        """Ask every CPU to stop (they notice in spin loops and the dispatcher)."""
        self.hdr["halt"] = 1

    @property
    def halted(self) -> bool:
        return bool(self.hdr["halt"])

    def close(self) -> None:
        """Drop this process's views and mapping (workers and owner alike)."""
        for attr in ("hdr", "locks", "cpus", "slots", "pairs", "sites_hdr", "sites", "rings",
                     "records", "arrays", "buf"):
            self.__dict__.pop(attr, None)
        try:
            self.shm.close()
        except BufferError:
            # a Core or a caller's numpy view still exports the buffer; the mapping
            # goes with the process, unlink() still removes the name, and the
            # SharedMemory finalizer must not retry the close and complain
            self.shm.close = lambda: None

    def unlink(self) -> None:
        """Remove the segment's name (owner only, idempotent)."""
        if os.getpid() != self.owner_pid:
            return
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass

    def destroy(self) -> None:
        self.close()
        self.unlink()

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()


def leaked_segments(orphans_only: bool = False) -> list[str]:
    """Names of smp segments in /dev/shm (tests check that none survive a run).

    ``orphans_only``: just those whose owner (the pid in the name) is gone --
    the real leaks, as opposed to segments of runs still going on.
    """
    try:
        names = sorted(n for n in os.listdir("/dev/shm") if n.startswith(SEGMENT_PREFIX))
    except FileNotFoundError:  # pragma: no cover - not Linux
        return []
    if orphans_only:
        names = [n for n in names if not _owner_alive(n)]
    return names


def _owner_alive(name: str) -> bool:
    """Is the process that created segment ``name`` still running?  A pid that exists
    but started after the segment was made belongs to someone else (pid reuse)."""
    pid = _owner(name)
    if not _alive(pid):
        return False
    try:
        born = psutil.Process(pid).create_time()
        made = os.stat(os.path.join("/dev/shm", name)).st_mtime
    except (psutil.Error, OSError):
        return True                       # cannot tell: leave it alone
    return born <= made + 1.0


def remove_orphans() -> list[tuple[str, int]]:
    """Unlink the segments whose owner process is gone (a run killed with SIGKILL, or a
    whole process group killed at once); returns (name, bytes) of each one removed.

    A segment's name carries its owner's pid (``smp-<pid>-<random>``), so a segment of a
    run that is still going on is never touched.
    """
    removed = []
    for name in leaked_segments(orphans_only=True):
        path = os.path.join("/dev/shm", name)
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            continue                      # another smp command removed it meanwhile
        except OSError:
            continue                      # not ours to remove (permissions): leave it
        removed.append((name, size))
    return removed


def _owner(name: str) -> int:
    try:
        return int(name[len(SEGMENT_PREFIX):].split("-")[0])
    except ValueError:
        return -1


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
