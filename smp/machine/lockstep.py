"""Lockstep mode: the same CPUs and code, one CPU running at a time.

In lockstep mode (``smp run --lockstep --seed N``) exactly one CPU holds the
*turn*.  At every scheduling point -- each lock operation (the atomic core
calls ``sched_hook`` on lock and unlock, and on every turn of a spin loop),
each load-script operation, each idle turn -- the CPU holding the turn
advances the virtual clock and asks the schedule which CPU runs next:

* ``random``: a CPU drawn from a xorshift64* generator seeded with N;
* ``pct``: probabilistic concurrency testing (Burckhardt et al.): CPUs get
  distinct priorities from the seed, the highest-priority CPU that can make
  progress runs, and at ``depth`` change points drawn from the seed the
  running CPU drops to the lowest priority.

The generator's state, the virtual clock and the turn live in the segment,
so whichever CPU decides continues the same sequence: the schedule is a pure
function of the seed and the code, and so are every timestamp, console line,
trace record and lock statistic.  A ring that fills waits for the drainer
instead of dropping (a drop would depend on host timing).

The schedule is also watched: a deadlock (every CPU spinning on a lock whose
holder is itself spinning, around a cycle) and a livelock (no progress in
``livelock_bound`` scheduling points) halt the machine with a report.
"""

from __future__ import annotations

import numpy as np

from smp.machine import _atomic
from smp.machine.layout import ArraySpec
from smp.machine.waitfor import cycle_from

VTICK = 1_000                     # ns of virtual time per scheduling point
PCT_HORIZON = 5_000               # pct change points fall within this many points
MASK64 = (1 << 64) - 1
(ST_RNG, ST_POINTS, ST_SWITCHES, ST_PROGRESS, ST_LASTPROG, ST_LIMIT, ST_DEPTHLEFT,
 ST_BOUND, ST_END, ST_NCYCLE, ST_DEPTH) = range(11)
NSTATE = 16
# why a lockstep run ended (ls_state[ST_END]); the parent words it, naming locks
END_NONE, END_TIME_LIMIT, END_DEADLOCK, END_LIVELOCK = range(4)


def lockstep_arrays(ncpu: int) -> list[ArraySpec]:
    return [
        ArraySpec("ls_go", np.dtype("<u4"), (ncpu,)),        # 1: this CPU holds the turn
        ArraySpec("ls_state", np.dtype("<u8"), (NSTATE,)),
        ArraySpec("ls_prio", np.dtype("<i8"), (ncpu,)),
        ArraySpec("ls_change", np.dtype("<u8"), (16,)),      # pct change points
        ArraySpec("ls_cycle", np.dtype("<i4"), (ncpu, 2)),   # deadlock: (cpu, lock) pairs
    ]


def _xorshift(x: int) -> int:
    x ^= (x >> 12)
    x ^= (x << 25) & MASK64
    x ^= (x >> 27)
    return x & MASK64


def seed_state(seed: int) -> int:
    x = (seed * 0x9E3779B97F4A7C15 + 0x2545F4914F6CDD1D) & MASK64
    return x or 1


def format_lockstep(seg, schedule, time_limit_ns: int | None, depth: int = 3) -> None:
    """Parent, before the CPUs start: the turn to CPU 0, the generator, priorities.

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
    st[ST_DEPTHLEFT] = st[ST_DEPTH] = depth if schedule.strategy == "pct" else 0
    st[ST_BOUND] = schedule.livelock_bound
    rng = np.random.default_rng(schedule.seed)
    a["ls_prio"][:] = rng.permutation(ncpu) + depth + 1
    # pct: the depth change points, in ascending order, spread over the first part of a
    # run (short runs matter: a deadlock is usually a few thousand points away)
    a["ls_change"][:] = 0
    a["ls_change"][:depth] = np.sort(rng.integers(1, PCT_HORIZON, size=depth))
    seg.hdr["vclock"] = 0


def end_report(seg) -> tuple[int, int, list[tuple[int, int]]]:
    """Parent, after the run: (END_* kind, livelock bound, deadlock cycle as (cpu, lock))."""
    st = seg.arrays["ls_state"]
    n = int(st[ST_NCYCLE])
    cyc = [(int(c), int(lk)) for c, lk in seg.arrays["ls_cycle"][:n]]
    return int(st[ST_END]), int(st[ST_BOUND]), cyc


class Lockstep:
    """One CPU's side of the lockstep scheduler (installed as its core's sched_hook)."""

    def __init__(self, ci, strategy: str = "random"):
        self.ci = ci
        self.core = ci.core
        self.cpu = ci.cpu
        self.ncpu = ci.ncpu
        self.strategy = strategy
        # the pct depth as formatted: ST_DEPTHLEFT may already be counting down when a
        # late worker starts (cpu0 runs first), so it is not the depth any more
        self.depth = int(ci.seg.arrays["ls_state"][ST_DEPTH])
        seg = ci.seg
        lay = seg.layout.arrays
        self.go_off = lay["ls_go"][0]
        self.st_off = lay["ls_state"][0]
        self.go = seg.arrays["ls_go"]
        self.state = seg.arrays["ls_state"]
        self.prio = seg.arrays["ls_prio"]
        self.change = seg.arrays["ls_change"]
        from smp.machine.layout import HDR_DTYPE
        self.vclock_off = HDR_DTYPE.fields["vclock"][1]
        self.halt_off = HDR_DTYPE.fields["halt"][1]
        self.cpus = seg.cpus
        self.livelock_bound = int(self.state[ST_BOUND])

    def install(self) -> None:
        self.core.lockstep = True
        self.core.sched_hook = self.point

    def wait_turn(self) -> None:
        """Block until this CPU holds the turn (or the machine halts)."""
        core = self.core
        off = self.go_off + 4 * self.cpu
        while True:
            # halt first: finish() raises every go flag to wake the waiters, who must
            # stop rather than run on in parallel after the end
            if self.ci.seg.hdr["halt"]:
                raise _atomic.Halted("machine halted while waiting for the turn")
            if self.go[self.cpu]:
                return
            core.futex_wait(off, 0, 5_000_000)

    def point(self, cost: int = VTICK) -> None:
        """A scheduling point: advance time, pick the next CPU, hand over if it is not us."""
        core = self.core
        st = self.state
        vclock = core.fadd64(self.vclock_off, cost) + cost
        points = int(st[ST_POINTS]) + 1
        st[ST_POINTS] = points
        limit = int(st[ST_LIMIT])
        if limit and vclock >= limit:
            self._end(END_TIME_LIMIT, "time limit reached")
        if points - int(st[ST_LASTPROG]) > self.livelock_bound:
            self._end(END_LIVELOCK, "livelock")
        if self.cpus["state"][self.cpu] == _atomic.CS_SPINNING and points % 64 == 0:
            self._check_deadlock()
        nxt = self._choose(points)
        if nxt == self.cpu:
            return
        st[ST_SWITCHES] += 1
        # hand over: the next CPU's go flag up, ours down, wake it, wait for ours
        self.go[self.cpu] = 0
        core.cas32(self.go_off + 4 * nxt, 0, 1)
        core.futex_wake(self.go_off + 4 * nxt, 1)
        self.wait_turn()

    def progress(self) -> None:
        """Something useful happened (an operation completed): livelock watch."""
        self.state[ST_LASTPROG] = self.state[ST_POINTS]

    def _choose(self, points: int) -> int:
        if self.strategy == "pct":
            return self._choose_pct(points)
        x = _xorshift(int(self.state[ST_RNG]))
        self.state[ST_RNG] = x
        return (((x * 0x2545F4914F6CDD1D) & MASK64) >> 33) % self.ncpu

    def _choose_pct(self, points: int) -> int:
        st = self.state
        left = int(st[ST_DEPTHLEFT])
        if left and points >= int(self.change[int(self.depth) - left]):
            self.prio[self.cpu] = left          # drop the running CPU to a low priority
            st[ST_DEPTHLEFT] = left - 1
        states = self.cpus["state"]
        best, best_p = -1, -1
        for c in range(self.ncpu):
            if states[c] in (_atomic.CS_SPINNING, _atomic.CS_IDLE):
                continue                     # waiting for someone: not enabled
            p = int(self.prio[c])
            if p > best_p:
                best, best_p = c, p
        if best < 0:
            # nobody can make progress on its own: let the seeded generator pick, so the
            # CPU that holds what the others wait for eventually runs
            x = _xorshift(int(st[ST_RNG]))
            st[ST_RNG] = x
            return (((x * 0x2545F4914F6CDD1D) & MASK64) >> 33) % self.ncpu
        return best

    def _check_deadlock(self) -> None:
        """Every CPU in a cycle spins on a lock held by the next: a deadlock."""
        cyc = cycle_from(self.ci.seg, self.cpu)
        if cyc is None:
            return
        out = self.ci.seg.arrays["ls_cycle"]
        for i, (c, lk) in enumerate(cyc):
            out[i] = (c, lk)
        self.state[ST_NCYCLE] = len(cyc)
        self._end(END_DEADLOCK, "deadlock")

    def finish(self) -> None:
        """The load is done: halt the machine deterministically, from the turn holder."""
        seg = self.ci.seg
        seg.halt()
        for c in range(self.ncpu):
            self.core.cas32(self.go_off + 4 * c, 0, 1)
            self.core.futex_wake(self.go_off + 4 * c, 1)

    def _end(self, kind: int, why: str) -> None:
        """End the run from the turn holder, recording why (the first reason stays)."""
        if not self.state[ST_END]:
            self.state[ST_END] = kind
        self.finish()
        raise _atomic.Halted(why)
