"""The wait-for graph of spinning CPUs: who waits for whom, and deadlock cycles.

A CPU spinning on a lock waits for the lock's holder; when the holders form a cycle
back to the first CPU, none can ever go on -- a deadlock, as a LOCKDEBUG kernel or a
hung box would show it.  The supervisor (free mode, read racily while the CPUs run,
so it only believes a cycle that stands for a while) and the lockstep scheduler (exact,
at a scheduling point) both ask this module.
"""

from __future__ import annotations

from smp.machine import _atomic


def holder(state: int, flags: int) -> int:
    """The CPU holding a lock word exclusively, or -1 (free, or held by readers)."""
    if flags & _atomic.LF_RW:
        if state & _atomic.RW_WRITER:
            return (state & 0xFFFF) - 1
        return -1
    return state - 1 if state else -1


def cycle_from(seg, start: int) -> tuple[tuple[int, int], ...] | None:
    """The deadlock cycle CPU ``start`` is part of or leads into, as (cpu, lock) pairs
    starting with the lowest CPU of the cycle; None if its wait chain ends."""
    cpus = seg.cpus
    state, spin = cpus["state"], cpus["spinning_on"]
    lock_state, lock_flags = seg.locks["state"], seg.locks["flags"]
    seen: list[int] = []
    cpu = start
    while cpu not in seen:
        if state[cpu] != _atomic.CS_SPINNING or not spin[cpu]:
            return None
        seen.append(cpu)
        lk = int(spin[cpu]) - 1
        cpu = holder(int(lock_state[lk]), int(lock_flags[lk]))
        if cpu < 0:
            return None
    cyc = seen[seen.index(cpu):]
    k = cyc.index(min(cyc))
    cyc = cyc[k:] + cyc[:k]
    return tuple((c, int(spin[c]) - 1) for c in cyc)


def find_deadlock(seg) -> tuple[tuple[int, int], ...] | None:
    """Any deadlock cycle among the machine's CPUs, or None."""
    for start in range(len(seg.cpus)):
        cyc = cycle_from(seg, start)
        if cyc is not None:
            return cyc
    return None
