"""How a machine's CPUs take turns: the two schedules of one engine.

``Free()``: every CPU worker runs whenever the host runs it; contention is real,
timestamps are host nanoseconds, and no two runs interleave alike.

``Lockstep(strategy, seed, livelock_bound)``: one CPU at a time; at every scheduling
point (lock operation, spin turn, load operation, idle turn) the turn passes to the CPU
a seeded strategy picks (``random``, ``pct`` or ``pb``, see :mod:`smp.machine.lockstep`), time is
a virtual clock, and the run is a function of the seed.  A run that goes
``livelock_bound`` scheduling points without progress is reported as a livelock.

    Machine(profile, kernel, sink, Lockstep("pct", seed=7))
"""

from __future__ import annotations

from dataclasses import dataclass

STRATEGIES = ("random", "pct", "pb")
LIVELOCK_BOUND = 2_000_000       # scheduling points without progress


@dataclass(frozen=True)
class Free:
    """CPUs run truly in parallel (the default)."""

    lockstep = False
    strategy = None


@dataclass(frozen=True)
class Lockstep:
    """One CPU at a time, the next one drawn from ``seed`` by ``strategy``."""

    strategy: str = "random"
    seed: int = 0
    livelock_bound: int = LIVELOCK_BOUND
    lockstep = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"lockstep strategy {self.strategy!r}: expected one of "
                             f"{', '.join(STRATEGIES)}")
        if self.livelock_bound < 1:
            raise ValueError("livelock_bound must be at least 1")


Schedule = Free | Lockstep
FREE = Free()
