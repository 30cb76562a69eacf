"""Lockstep mode: the same CPUs and code, one CPU running at a time.

In lockstep mode (``smp run --lockstep --seed N``) exactly one CPU holds the
*turn*.  At every scheduling point -- each lock operation (the atomic core
runs the scheduler on lock and unlock, and on every turn of a spin loop),
each load-script operation, each idle turn -- the CPU holding the turn
advances the virtual clock and asks the schedule which CPU runs next:

* ``random``: a CPU drawn from a xorshift64* generator seeded with N;
* ``pct``: probabilistic concurrency testing (Burckhardt et al.): CPUs get
  distinct priorities from the seed, the highest-priority CPU that can make
  progress runs, and at ``depth`` change points drawn from the seed the
  running CPU drops to the lowest priority;
* ``pb``: preemption-bounded (as CHESS and shuttle): the running CPU keeps
  the turn until it blocks -- spins on a lock, idles, or the machine made no
  progress for ``LS_PB_STALL`` points -- and at ``depth`` preemption points
  drawn from the seed (log-uniformly over the first 2**24 points, so short and
  long runs both get some); then the next CPU is drawn from the enabled ones.
  So that virtual time passes for every CPU alike (a load's ``duration`` loops
  would otherwise run one after the other), a CPU that has held the turn for
  ``LS_PB_SLICE`` (1 ms) of virtual time also yields at its next point outside
  any lock -- a yield, not a preemption: it is not counted.

The generator's state, the virtual clock and the turn live in the segment,
so whichever CPU decides continues the same sequence: the schedule is a pure
function of the seed and the code, and so are every timestamp, console line,
trace record and lock statistic.  A ring that fills waits for the drainer
instead of dropping (a drop would depend on host timing).

The scheduler itself is C (``Core.ls_point`` in ``_atomic.c``): a point that
keeps the turn costs no Python at all, and a hand-over is one call that raises
the next CPU's go word, wakes it by futex and sleeps on its own.  A CPU picked
while it spins on a lock that is still held has its turn taken *by proxy* by
the CPU that holds the turn (the same clock step, checks and draw, and a spin
turn counted for it), which changes nothing in the schedule but saves the host
two process switches per spin turn.  A run's workers are pinned to one host
core (:func:`pick_host_core`): only one runs at a time, and a futex hand-over
within a core is several times cheaper than one that wakes another core.

The schedule is also watched: a deadlock (every CPU spinning on a lock whose
holder is itself spinning, around a cycle) and a livelock (no progress in
``livelock_bound`` scheduling points) halt the machine with a report.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np

from smp.machine import _atomic
from smp.machine.layout import ArraySpec

VTICK = 1_000                     # ns of virtual time per scheduling point
PCT_HORIZON = 5_000               # pct change points fall within this many points
PB_HORIZON_LOG2 = 24              # pb preemption points: log-uniform in [1, 2**24)
DEPTH = 3                         # pct change points / pb preemptions per run
STRATEGY_CODES = {"random": _atomic.LS_RANDOM, "pct": _atomic.LS_PCT, "pb": _atomic.LS_PB}
MASK64 = (1 << 64) - 1
(ST_RNG, ST_POINTS, ST_SWITCHES, ST_PROGRESS, ST_LASTPROG, ST_LIMIT, ST_DEPTHLEFT,
 ST_BOUND, ST_END, ST_NCYCLE, ST_DEPTH, ST_PIN, ST_HANDOFFS, ST_TURN_AT,
 ST_STOPPING) = range(15)
NSTATE = 16
# why a lockstep run ended (ls_state[ST_END]); the parent words it, naming locks
END_NONE, END_TIME_LIMIT, END_DEADLOCK, END_LIVELOCK = range(4)
# the C scheduler reads the same slots
assert (NSTATE, ST_POINTS, ST_LASTPROG, ST_DEPTH, ST_PIN, ST_HANDOFFS, ST_TURN_AT,
        ST_STOPPING) == (
    _atomic.LS_NSTATE, _atomic.ST_POINTS, _atomic.ST_LASTPROG, _atomic.ST_DEPTH,
    _atomic.ST_PIN, _atomic.ST_HANDOFFS, _atomic.ST_TURN_AT, _atomic.ST_STOPPING)

PIN_ENV = "SMP_LOCKSTEP_PIN"      # "auto" (default), "off", or a host core number
PROXY_ENV = "SMP_LOCKSTEP_PROXY"  # "off": every spin turn is a real hand-over (to compare)


def lockstep_arrays(ncpu: int) -> list[ArraySpec]:
    return [
        ArraySpec("ls_go", np.dtype("<u4"), (ncpu,)),        # 1: this CPU holds the turn
        ArraySpec("ls_state", np.dtype("<u8"), (NSTATE,)),
        ArraySpec("ls_prio", np.dtype("<i8"), (ncpu,)),
        ArraySpec("ls_change", np.dtype("<u8"), (_atomic.LS_NCHANGE,)),  # pct / pb points
        ArraySpec("ls_cycle", np.dtype("<i4"), (ncpu, 2)),   # deadlock: (cpu, lock) pairs
        # a CPU waiting for the turn in a spin loop: (lock + 1, mode, turns by proxy, -)
        ArraySpec("ls_wait", np.dtype("<u8"), (ncpu, _atomic.LS_WAITW)),
    ]


def _xorshift(x: int) -> int:
    x ^= (x >> 12)
    x ^= (x << 25) & MASK64
    x ^= (x >> 27)
    return x & MASK64


def seed_state(seed: int) -> int:
    x = (seed * 0x9E3779B97F4A7C15 + 0x2545F4914F6CDD1D) & MASK64
    return x or 1


def format_lockstep(seg, schedule, time_limit_ns: int | None, depth: int = DEPTH) -> None:
    """Parent, before the CPUs start: the turn to CPU 0, the generator, priorities,
    the pct change points or pb preemption points, and the host core to pin to.

    ``schedule`` is a :class:`smp.machine.schedule.Lockstep`.
    """
    a = seg.arrays
    ncpu = seg.layout.ncpu
    a["ls_go"][:] = 0
    a["ls_go"][0] = 1
    st = a["ls_state"]
    st[:] = 0
    st[ST_RNG] = seed_state(schedule.seed)
    st[ST_LIMIT] = time_limit_ns or 0
    st[ST_DEPTHLEFT] = st[ST_DEPTH] = depth if schedule.strategy in ("pct", "pb") else 0
    st[ST_BOUND] = schedule.livelock_bound
    rng = np.random.default_rng(schedule.seed)
    a["ls_prio"][:] = rng.permutation(ncpu) + depth + 1
    a["ls_change"][:] = 0
    if schedule.strategy == "pb":
        # preemption points log-uniform over [1, 2**24): as likely in the first thousand
        # points as between a million and sixteen million
        exps = rng.uniform(0, PB_HORIZON_LOG2, size=depth)
        a["ls_change"][:depth] = np.sort(np.floor(np.exp2(exps))).astype(np.uint64)
    else:
        # pct: the depth change points, in ascending order, spread over the first part
        # of a run (short runs matter: a deadlock is usually a few thousand points away)
        a["ls_change"][:depth] = np.sort(rng.integers(1, PCT_HORIZON, size=depth))
    a["ls_wait"][:] = 0
    core = pick_host_core(getattr(seg, "name", ""))
    st[ST_PIN] = 0 if core is None else core + 1
    seg.hdr["vclock"] = 0


def end_report(seg) -> tuple[int, int, list[tuple[int, int]]]:
    """Parent, after the run: (END_* kind, livelock bound, deadlock cycle as (cpu, lock))."""
    st = seg.arrays["ls_state"]
    n = int(st[ST_NCYCLE])
    cyc = [(int(c), int(lk)) for c, lk in seg.arrays["ls_cycle"][:n]]
    return int(st[ST_END]), int(st[ST_BOUND]), cyc


class Lockstep:
    """One CPU's side of the lockstep scheduler (installed in its atomic core).

    ``point(cost)`` and ``progress()`` are the core's own C methods (no Python frame
    per point); ``core.sched_hook`` is ``point`` too, for Python code that waits
    without a lock (the TLB-shootdown wait).
    """

    def __init__(self, ci, strategy: str = "random"):
        if strategy not in STRATEGY_CODES:
            raise ValueError(f"lockstep strategy {strategy!r}")
        self.ci = ci
        self.core = ci.core
        self.cpu = ci.cpu
        self.ncpu = ci.ncpu
        self.strategy = strategy
        seg = ci.seg
        self.seg = seg
        self.state = seg.arrays["ls_state"]
        self.livelock_bound = int(self.state[ST_BOUND])
        self.point = self.core.ls_point
        self.progress = self.core.ls_progress

    def install(self) -> None:
        """Pin this worker to the run's host core and let the core run the scheduler."""
        pin_self(int(self.state[ST_PIN]) - 1)
        lay = self.seg.layout.arrays
        self.core.ls_setup(lay["ls_go"][0], lay["ls_state"][0], lay["ls_prio"][0],
                           lay["ls_change"][0], lay["ls_wait"][0], lay["ls_cycle"][0],
                           STRATEGY_CODES[self.strategy], VTICK)
        if os.environ.get(PROXY_ENV, "").strip().lower() in ("off", "no", "0", "false"):
            self.core.ls_proxy = False
        self.core.sched_hook = self.core.ls_point

    def wait_turn(self) -> None:
        """Block until this CPU holds the turn (Halted if the machine halts)."""
        self.core.ls_wait_turn()

    def finish(self) -> None:
        """The load is done: halt the machine deterministically, from the turn holder."""
        self.core.ls_finish()

    def stopping(self) -> bool:
        """The time limit has passed: CPUs take no new thread, and the first to find the
        machine quiet (no thread running, no lock held) halts it."""
        return bool(self.state[ST_STOPPING])


# -- pinning: one host core per lockstep run -------------------------------------------

def pin_self(core: int) -> bool:
    """Pin this process to host core ``core`` (-1: leave it); False if the host refused."""
    if core < 0:
        return False
    try:
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError, ValueError):
        return False
    return True


def pick_host_core(run_name: str = "") -> int | None:
    """The host core a lockstep run's CPU workers should share, or None (no pinning).

    ``SMP_LOCKSTEP_PIN``: ``auto`` (default), ``off``, or a host core number.  ``auto``
    takes the least loaded of the cores this process may use: fewest lockstep runs
    already pinned there (a small registry in the temp directory, so that runs started
    together, as ``smp explore --jobs 2`` starts them, spread out), then fewest other
    processes pinned to it alone, then fewest running right now.  One usable core:
    that one.  Anything unexpected: None, and the run goes unpinned.
    """
    how = os.environ.get(PIN_ENV, "auto").strip().lower()
    if how in ("off", "no", "none", "false"):
        return None
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if how.isdigit():
        return int(how) if int(how) in allowed else None
    if len(allowed) == 1:
        return allowed[0]
    try:
        return _claim_core(run_name, allowed)
    except OSError:
        return None


def _registry_path() -> str:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"smp-lockstep-pins-{uid}")


def _claim_core(run_name: str, allowed: list[int]) -> int:
    """Choose (under an exclusive lock on the registry) and record our claim.  A claim
    lives while its run's segment exists in /dev/shm (a run ends: its segment goes)."""
    import fcntl

    mine = os.getpid()
    with open(_registry_path(), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        claims = _live_claims(f.read())
        runs = dict.fromkeys(allowed, 0)
        for _, core, _ in claims:
            if core in runs:
                runs[core] += 1
        pinned, running = _host_cores(allowed, {pid for _, _, pid in claims} | {mine})
        best = min(allowed, key=lambda c: (runs[c], pinned[c], running[c], c))
        if run_name:
            claims.append((run_name, best, mine))
        _write_claims(f, claims)
    return best


def _live_claims(text: str, but: str = "") -> list[tuple[str, int, int]]:
    """The registry's claims (run, core, pid) whose runs' segments still exist, but
    ``but``'s."""
    claims = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit() and \
                parts[0] != but and os.path.exists(os.path.join("/dev/shm", parts[0])):
            claims.append((parts[0], int(parts[1]), int(parts[2])))
    return claims


def _write_claims(f, claims: list[tuple[str, int, int]]) -> None:
    f.seek(0)
    f.truncate()
    f.write("".join(f"{n} {c} {p}\n" for n, c, p in claims))


def release_host_core(run_name: str) -> None:
    """Parent, after the run's segment is gone: drop our claim (and claims of runs whose
    segments are gone); the last run out removes the registry, so a run leaves nothing
    behind in the temp directory."""
    import fcntl

    path = _registry_path()
    with contextlib.suppress(OSError), open(path, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        keep = _live_claims(f.read(), but=run_name)
        if not keep:
            os.unlink(path)                  # under the lock: a later run starts afresh
            return
        _write_claims(f, keep)


def _host_cores(allowed: list[int], ours: set[int]) -> tuple[dict[int, int], dict[int, int]]:
    """Per allowed core: other process groups pinned to it alone (counted by parent, so
    a run's workers count once; our own runs' workers are skipped), and processes
    running or runnable on it now."""
    owners: dict[int, set[int]] = {c: set() for c in allowed}
    running = dict.fromkeys(allowed, 0)
    me = os.getpid()
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            pid = int(entry.name)
            try:
                with open(f"/proc/{pid}/stat", "rb") as fh:
                    stat = fh.read()
                fields = stat[stat.rindex(b")") + 2:].split()
                state, ppid, cpu = fields[0], int(fields[1]), int(fields[36])
                mask = os.sched_getaffinity(pid)
            except (OSError, ValueError, IndexError):
                continue
            if state == b"R" and cpu in running:
                running[cpu] += 1
            if len(mask) == 1 and ppid not in ours and pid not in ours:
                (core,) = mask
                if core in owners:
                    owners[core].add(ppid)
    return {c: len(o) for c, o in owners.items()}, running

