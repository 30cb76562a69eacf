"""Tests of the machine's atomic core (``smp/machine/_atomic.c``) across real processes.

Each test boots a small segment in the parent and forks one process per simulated CPU, as
the machine itself does: children inherit the mapping and build their own ``Core`` inside.
Children report through their exit status (0 = fine, 99 = exception, traceback on stderr,
other values = the check that failed) and through words of a ``scratch`` array in the
segment.  The parent joins with a deadline, so a deadlock fails a test instead of hanging
the suite, and every segment is destroyed in the fixture's teardown, which then checks
that none of this process's segments is left in /dev/shm.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from smp.machine import _atomic
from smp.machine.layout import CPU_DTYPE, CPU_STRIDE, ArraySpec, Layout
from smp.machine.segment import Segment, leaked_segments

CTX = mp.get_context("fork")  # explicit: workers must inherit the mapping (3.14 default differs)
JOIN_TIMEOUT = 20.0  # a CPU still running after this is treated as deadlocked
WAIT = 10.0  # how long a child waits for a partner's signal
NWORDS = 64  # int64 words of the scratch array
M_EXCL, M_SHARED = 0, 1  # held/stat modes, as in _atomic.c

Job = Callable[[_atomic.Core], "int | None"]


# ---------------------------------------------------------------- helpers


def _my_segments() -> list[str]:
    """Segments created by this process that still exist.

    Other people's test runs may own ``smp-*`` segments on a shared host at the same time,
    so "no leak" is checked for the names this process made (they carry our pid).
    """
    prefix = f"smp-{os.getpid()}-"
    return [n for n in leaked_segments() if n.startswith(prefix)]


@pytest.fixture
def machine() -> Iterator[Callable[..., Segment]]:
    """Factory of segments with a scratch array; destroys them all at the end."""
    made: list[Segment] = []

    def boot(ncpu: int = 4, nlocks: int = 64, ring: int = 64) -> Segment:
        lay = Layout.plan(ncpu, nlocks, ring, [ArraySpec("scratch", np.dtype("<i8"), (NWORDS,))])
        seg = Segment(lay)
        made.append(seg)
        return seg

    try:
        yield boot
    finally:
        for seg in made:
            seg.destroy()
        assert _my_segments() == []


def words(seg: Segment) -> np.ndarray:
    """The scratch words (a numpy view: children inherit it through fork)."""
    return seg.arrays["scratch"]


def woff(seg: Segment, i: int) -> int:
    """Byte offset of scratch word ``i``, for the Core's atomic operations."""
    return seg.layout.arrays["scratch"][0] + 8 * i


def cpu_off(seg: Segment, cpu: int, field: str) -> int:
    """Byte offset of a field of CPU ``cpu``'s control block."""
    return seg.layout.cpu_off + cpu * CPU_STRIDE + CPU_DTYPE.fields[field][1]


def wait_until(pred: Callable[[], object], timeout: float = WAIT) -> bool:
    """Poll ``pred`` until true; False after ``timeout`` (the caller reports the failure)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0002)
    return True


def barrier(core: _atomic.Core, off: int, n: int) -> bool:
    """Arrive at the counter at ``off`` and wait for ``n`` arrivals: forks start a few ms
    apart, so without this a short contended loop may never actually overlap."""
    core.fadd64(off, 1)
    return wait_until(lambda: core.load64(off) >= n)


def _cpu_main(seg: Segment, cpu: int, job: Job) -> None:
    """Body of a forked CPU: build the Core here (never inherit one), run, exit hard."""
    code = 98
    try:
        core = seg.core(cpu)
        r = job(core)
        code = 0 if r is None else int(r)
    except BaseException:
        traceback.print_exc()
        code = 99
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # no atexit, no SharedMemory finalizer: only the parent owns the segment
        os._exit(code)


def start_cpus(seg: Segment, jobs: dict[int, Job]) -> dict[int, mp.Process]:
    procs = {}
    for cpu, job in jobs.items():
        p = CTX.Process(target=_cpu_main, args=(seg, cpu, job), name=f"cpu{cpu}", daemon=True)
        p.start()
        procs[cpu] = p
    return procs


def join_cpus(
    seg: Segment, procs: dict[int, mp.Process], timeout: float = JOIN_TIMEOUT
) -> dict[int, int | None]:
    """Join every CPU by a common deadline; halt and kill the machine on a hang."""
    deadline = time.monotonic() + timeout
    for p in procs.values():
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [cpu for cpu, p in procs.items() if p.is_alive()]
    if hung:
        seg.halt()  # spinning CPUs leave with Halted ...
        for p in procs.values():
            p.join(1.0)
        for p in procs.values():
            if p.is_alive():  # ... anything else is killed
                p.kill()
                p.join(5.0)
        pytest.fail(f"cpus {hung} still running after {timeout} s (deadlock?)")
    return {cpu: p.exitcode for cpu, p in procs.items()}


def run_cpus(seg: Segment, jobs: dict[int, Job], timeout: float = JOIN_TIMEOUT) -> None:
    codes = join_cpus(seg, start_cpus(seg, jobs), timeout)
    assert codes == dict.fromkeys(jobs, 0), f"exit codes {codes} (99: exception, see stderr)"


def slots_of(seg: Segment, cpu: int) -> np.ndarray:
    return seg.slots[cpu][: int(seg.cpus[cpu]["nslots"])]


def pairs_of(seg: Segment, cpu: int) -> np.ndarray:
    return seg.pairs[cpu][: int(seg.cpus[cpu]["npairs"])]


def assert_idle(seg: Segment, locks: list[int]) -> None:
    """Every lock free and no CPU holding anything."""
    assert [int(seg.locks["state"][lk]) for lk in locks] == [0] * len(locks)
    assert seg.cpus["nheld"].tolist() == [0] * seg.layout.ncpu


# ---------------------------------------------------------------- simple_lock


def _increment(core: _atomic.Core, lock: int, counter: np.ndarray, n: int) -> None:
    for _ in range(n):
        core.lock(lock)
        v = counter[0]  # a plain read-modify-write: only the lock makes it atomic
        counter[0] = v + 1
        core.unlock(lock)


def test_lock_mutual_exclusion(machine: Callable[..., Segment]) -> None:
    # Without lock()/unlock() this loop loses thousands of the 80,000 updates on two cores
    # (not asserted: how many depends on the host's scheduling).
    seg = machine(ncpu=4)
    counter, n, lk, go = words(seg)[0:1], 20_000, 5, woff(seg, 1)

    def job(core: _atomic.Core) -> int:
        if not barrier(core, go, 4):
            return 2
        _increment(core, lk, counter, n)
        return 0

    run_cpus(seg, dict.fromkeys(range(4), job))
    assert int(counter[0]) == 4 * n
    assert_idle(seg, [lk])


def test_trylock_against_another_cpu(machine: Callable[..., Segment]) -> None:
    seg = machine(ncpu=2)
    w, lk = words(seg), 9
    HELD, TRIED, RELEASED = 0, 1, 2

    def holder(core: _atomic.Core) -> int:
        core.lock(lk)
        w[HELD] = 1
        if not wait_until(lambda: w[TRIED] == 1):
            return 2
        core.unlock(lk)
        w[RELEASED] = 1
        return 0

    def trier(core: _atomic.Core) -> int:
        if not wait_until(lambda: w[HELD] == 1):
            return 2
        if core.trylock(lk) or core.nheld() != 0:  # held elsewhere: must fail, hold nothing
            return 3
        w[TRIED] = 1
        if not wait_until(lambda: w[RELEASED] == 1):
            return 2
        if not core.trylock(lk):  # free now: must succeed
            return 4
        ok = core.held(lk) and int(seg.locks["state"][lk]) == 2  # holder cpu1 -> 1 + 1
        core.unlock(lk)
        return 0 if ok else 5

    run_cpus(seg, {0: holder, 1: trier})
    assert_idle(seg, [lk])


def test_recursive_lock(machine: Callable[..., Segment]) -> None:
    seg = machine(ncpu=1)
    lk = 4
    seg.locks["flags"][lk] = _atomic.LF_RECURSE  # the big kernel lock's kind
    core = seg.core(0)
    core.lock(lk)
    core.lock(lk)
    assert core.trylock(lk) is True
    assert core.nheld() == 1 and int(seg.locks["recurse"][lk]) == 2
    core.unlock(lk)
    core.unlock(lk)
    assert int(seg.locks["state"][lk]) == 1 and core.held(lk)  # still held once
    core.unlock(lk)
    assert int(seg.locks["state"][lk]) == 0 and core.nheld() == 0
    with pytest.raises(_atomic.LockError):
        core.unlock(lk)


def test_lock_protocol_errors(machine: Callable[..., Segment]) -> None:
    seg = machine(ncpu=1)
    core = seg.core(0)
    core.lock(1)
    with pytest.raises(_atomic.LockError, match="against myself"):
        core.lock(1)
    assert core.trylock(1) is False  # a plain lock is not recursive
    core.unlock(1)
    with pytest.raises(_atomic.LockError):
        core.unlock(1)  # released already
    with pytest.raises(_atomic.LockError):
        core.unlock(2)  # never taken
    with pytest.raises(IndexError):
        core.lock(seg.layout.nlocks)

    rw = 3
    seg.locks["flags"][rw] = _atomic.LF_RW
    with pytest.raises(_atomic.LockError, match="not a reader/writer"):
        core.wlock(1)  # a simple lock taken as spinlockmgr
    with pytest.raises(_atomic.LockError, match="is a reader/writer"):
        core.lock(rw)  # a spinlockmgr lock taken as a simple lock
    core.rlock(rw)
    with pytest.raises(_atomic.LockError, match="shared holder"):
        core.wlock(rw)  # an upgrade by waiting would wait for itself forever
    core.runlock(rw)
    core.wlock(rw)
    with pytest.raises(_atomic.LockError):
        core.wlock(rw)  # exclusive against myself
    with pytest.raises(_atomic.LockError):
        core.rlock(rw)  # shared request by the exclusive holder
    with pytest.raises(_atomic.LockError):
        core.runlock(rw)  # held exclusively, not shared
    core.wunlock(rw)
    with pytest.raises(_atomic.LockError):
        core.wunlock(rw)
    core.rlock(rw)
    with pytest.raises(_atomic.LockError):
        core.wunlock(rw)  # held shared, not exclusively
    core.runlock(rw)
    with pytest.raises(_atomic.LockError):
        core.runlock(rw)
    assert_idle(seg, [1, 2, rw])


def test_lock_errors_carry_the_lock_and_whether_it_was_our_own(
        machine: Callable[..., Segment]) -> None:
    """The kernel turns a LockError into a LOCKDEBUG panic naming the lock: it reads
    the facts off the exception, never out of its text."""
    seg = machine(ncpu=1)
    core = seg.core(0)
    core.lock(1)
    with pytest.raises(_atomic.LockError) as ei:
        core.lock(1)
    assert ei.value.lock == 1 and ei.value.myself is True
    core.unlock(1)
    with pytest.raises(_atomic.LockError) as ei:
        core.unlock(2)
    assert ei.value.lock == 2 and ei.value.myself is False
    rw = 3
    seg.locks["flags"][rw] = _atomic.LF_RW
    core.rlock(rw)
    with pytest.raises(_atomic.LockError) as ei:
        core.wlock(rw)
    assert ei.value.lock == rw and ei.value.myself is True
    core.runlock(rw)
    assert_idle(seg, [1, 2, rw])


def test_held_stack_overflow_leaves_lock_free(machine: Callable[..., Segment]) -> None:
    seg = machine(ncpu=1)
    core = seg.core(0)
    for lk in range(_atomic.MAXHELD):
        core.lock(lk)
    with pytest.raises(_atomic.LockError, match="more than"):
        core.lock(_atomic.MAXHELD)
    assert int(seg.locks["state"][_atomic.MAXHELD]) == 0


# ---------------------------------------------------------------- spinlockmgr (rw)


def test_readers_overlap(machine: Callable[..., Segment]) -> None:
    seg = machine(ncpu=2)
    lk, w = 6, words(seg)
    inside, arrived, most = woff(seg, 0), woff(seg, 1), 2
    seg.locks["flags"][lk] = _atomic.LF_RW

    def reader(core: _atomic.Core) -> int:
        core.rlock(lk)
        if core.fadd64(inside, 1) + 1 == 2:
            w[most] = 2  # two readers inside at the same moment
        core.fadd64(arrived, 1)
        # stay until the other reader has arrived (arrived never goes down, so neither
        # can miss it); if readers excluded each other the second could never arrive
        both = wait_until(lambda: core.load64(arrived) == 2)
        core.fadd64(inside, -1)
        core.runlock(lk)
        return 0 if both else 2

    run_cpus(seg, {0: reader, 1: reader})
    assert int(w[most]) == 2
    assert_idle(seg, [lk])


def _rw_mix(core: _atomic.Core, seg: Segment, lk: int, n: int) -> None:
    """One writer turn in four, reader turns otherwise; check the invariant inside."""
    r_in, w_in, bad = woff(seg, 0), woff(seg, 1), woff(seg, 2)
    nreads, nwrites = woff(seg, 8 + core.cpu), woff(seg, 16 + core.cpu)
    for i in range(n):
        if (i + core.cpu) % 4 == 0:
            core.wlock(lk)
            if core.fadd64(w_in, 1) != 0 or core.load64(r_in) != 0:
                core.fadd64(bad, 1)
            if core.load64(r_in) != 0 or core.load64(w_in) != 1:  # still alone?
                core.fadd64(bad, 1)
            core.fadd64(w_in, -1)
            core.wunlock(lk)
            core.fadd64(nwrites, 1)
        else:
            core.rlock(lk)
            core.fadd64(r_in, 1)
            if core.load64(w_in) != 0:
                core.fadd64(bad, 1)
            core.fadd64(r_in, -1)
            core.runlock(lk)
            core.fadd64(nreads, 1)


def test_writer_excludes_readers_and_writers(machine: Callable[..., Segment]) -> None:
    seg = machine(ncpu=4)
    lk, n, w = 7, 4_000, words(seg)
    seg.locks["flags"][lk] = _atomic.LF_RW

    def job(core: _atomic.Core) -> int:
        if not barrier(core, woff(seg, 3), 4):
            return 2
        _rw_mix(core, seg, lk, n)
        return 0

    run_cpus(seg, dict.fromkeys(range(4), job))
    assert int(w[2]) == 0, f"{int(w[2])} exclusion violations"
    reads, writes = int(w[8:12].sum()), int(w[16:20].sum())
    assert reads + writes == 4 * n and writes == n
    assert_idle(seg, [lk])
    # each mode is accounted separately, per CPU
    acq = {M_EXCL: 0, M_SHARED: 0}
    for cpu in range(4):
        s = slots_of(seg, cpu)
        for mode in acq:
            acq[mode] += int(s["acq"][(s["lock"] == lk) & (s["mode"] == mode)].sum())
    assert acq == {M_EXCL: writes, M_SHARED: reads}


def test_waiting_writer_blocks_new_readers(machine: Callable[..., Segment]) -> None:
    seg = machine(ncpu=3)
    lk, w = 8, words(seg)
    seg.locks["flags"][lk] = _atomic.LF_RW
    R0_IN, TRYING, R2_GOT, SEQ, ORDER_W, ORDER_R = 0, 1, 2, 3, 4, 5

    def wanted() -> bool:
        return bool(int(seg.locks["state"][lk]) & _atomic.RW_WANT)

    def first_reader(core: _atomic.Core) -> int:
        core.rlock(lk)
        w[R0_IN] = 1
        # the new reader must be spinning in rlock(), not merely about to call it
        if not (wait_until(wanted) and wait_until(lambda: w[TRYING] == 1)):
            return 2
        if not wait_until(lambda: seg.cpus[2]["spinning_on"] == lk + 1):
            return 4
        time.sleep(0.2)  # give the new reader every chance to slip in
        starved = w[R2_GOT] != 0
        core.runlock(lk)
        return 3 if starved else 0

    def writer(core: _atomic.Core) -> int:
        if not wait_until(lambda: w[R0_IN] == 1):
            return 2
        core.wlock(lk)  # spins, announcing itself with RW_WANT
        w[ORDER_W] = core.fadd64(woff(seg, SEQ), 1) + 1
        time.sleep(0.02)
        core.wunlock(lk)
        return 0

    def new_reader(core: _atomic.Core) -> int:
        if not wait_until(wanted):
            return 2
        w[TRYING] = 1
        core.rlock(lk)
        w[ORDER_R] = core.fadd64(woff(seg, SEQ), 1) + 1
        w[R2_GOT] = 1
        core.runlock(lk)
        return 0

    run_cpus(seg, {0: first_reader, 1: writer, 2: new_reader})
    assert 0 < w[ORDER_W] < w[ORDER_R], "the new reader went before the waiting writer"
    s = slots_of(seg, 2)
    assert int(s["contended"][(s["lock"] == lk) & (s["mode"] == M_SHARED)].sum()) == 1
    assert_idle(seg, [lk])


# ---------------------------------------------------------------- statistics


def _stats_site_a(core: _atomic.Core, lk: int, counter: np.ndarray, n: int) -> None:
    for _ in range(n):
        core.lock(lk)
        counter[0] += 1
        for _ in range(3):  # a few hundred ns of hold time, so that CPUs collide
            pass
        core.unlock(lk)


def _stats_site_b(core: _atomic.Core, lk: int, counter: np.ndarray, n: int) -> None:
    for _ in range(n):
        core.lock(lk)
        counter[0] += 1
        core.unlock(lk)


def test_statistics_add_up(machine: Callable[..., Segment]) -> None:
    ncpu, na, nb, lk, klass = 4, 10_000, 5_000, 11, 7
    seg = machine(ncpu=ncpu)
    seg.locks["klass"][lk] = klass
    counter = words(seg)[0:1]

    def job(core: _atomic.Core) -> int | None:
        if not barrier(core, woff(seg, 1), ncpu):
            return 2
        _stats_site_a(core, lk, counter, na)
        _stats_site_b(core, lk, counter, nb)

    run_cpus(seg, dict.fromkeys(range(ncpu), job))
    assert int(counter[0]) == ncpu * (na + nb)
    names = seg.site_names()
    per_site: dict[str, int] = {}
    contended = waited = 0
    for cpu in range(ncpu):
        assert int(seg.cpus[cpu]["slot_overflow"]) == 0
        s = slots_of(seg, cpu)
        s = s[s["lock"] == lk]
        assert (s["klass"] == klass).all() and (s["mode"] == M_EXCL).all()
        for row in s:
            name = names[int(row["site"])]
            per_site[name] = per_site.get(name, 0) + int(row["acq"])
            assert row["contended"] <= row["acq"]
            assert row["con_bounces"] <= row["contended"] and row["bounces"] <= row["acq"]
            assert row["wait_max"] <= row["wait_total"]
            assert row["hold_max"] <= row["hold_total"]
            assert row["hold_min"] <= row["hold_max"]
            assert int(row["hold_hist"].sum()) == row["acq"]
            assert int(row["wait_hist"].sum()) == row["contended"]
            assert row["spins"] >= row["contended"]
            if row["contended"]:
                assert row["wait_min"] <= row["wait_max"]
        contended += int(s["contended"].sum())
        waited += int(s["wait_total"].sum())
    # the call site is the Python function that called lock(), counted once per call
    assert per_site == {"_stats_site_a": ncpu * na, "_stats_site_b": ncpu * nb}
    assert contended > 0, "four CPUs on one lock never collided?"
    # every contended acquisition produced one waiter x holder pair record
    pairs = np.concatenate([pairs_of(seg, cpu) for cpu in range(ncpu)])
    assert len(pairs) > 0 and (pairs["klass"] == klass).all()
    assert int(pairs["count"].sum()) == contended
    assert int(pairs["wait_total"].sum()) == waited
    assert {names[int(i)] for i in np.concatenate([pairs["waiter"], pairs["holder"]])} <= {
        "_stats_site_a",
        "_stats_site_b",
    }


def test_stats_off_records_nothing(machine: Callable[..., Segment]) -> None:
    seg = machine(ncpu=2)
    counter, lk, n = words(seg)[0:1], 3, 5_000

    def job(core: _atomic.Core) -> None:
        core.stats_on = False
        _increment(core, lk, counter, n)

    run_cpus(seg, {0: job, 1: job})
    assert int(counter[0]) == 2 * n  # the locks still work
    for cpu in range(2):
        c = seg.cpus[cpu]
        assert (int(c["nslots"]), int(c["npairs"]), int(c["spins_total"])) == (0, 0, 0)
        assert int(c["slot_overflow"]) == 0 and int(seg.slots[cpu]["acq"].sum()) == 0


@pytest.mark.parametrize("clock", ["tsc", "monotonic"])
def test_hold_times_agree_with_the_monotonic_clock(
    machine: Callable[..., Segment], clock: str
) -> None:
    """Lock statistics read the time-stamp counter where the host trusts it (stat_clock):
    a hold of a known length, timed by CLOCK_MONOTONIC around and inside it, is recorded
    between the two, with either clock."""
    seg = machine(ncpu=2)
    if clock == "monotonic":
        seg.hdr["tsc_mult"] = 0
    elif int(seg.hdr["tsc_mult"]) == 0:
        pytest.skip("this host's TSC is not trusted: lock statistics use CLOCK_MONOTONIC")
    lk, now = 5, _atomic.monotonic_ns

    def holder(core: _atomic.Core) -> None:
        out = words(seg)
        for i in range(3):
            t0 = now()
            core.lock(lk)
            t1 = now()
            while now() - t1 < 20_000_000:
                pass
            t2 = now()
            core.unlock(lk)
            t3 = now()
            out[2 * i], out[2 * i + 1] = t2 - t1, t3 - t0

    run_cpus(seg, {1: holder})
    s = slots_of(seg, 1)
    s = s[s["lock"] == lk]
    assert int(s["acq"].sum()) == 3
    inner = sum(int(words(seg)[2 * i]) for i in range(3))
    outer = sum(int(words(seg)[2 * i + 1]) for i in range(3))
    # the calibration's error (~1e-5) is far inside a 0.5 % margin
    assert inner * 0.995 <= int(s["hold_total"].sum()) <= outer * 1.005
    assert 20_000_000 * 0.995 <= int(s["hold_min"].min()) <= int(s["hold_max"].max())


# ---------------------------------------------------------------- IPIs and halting


def test_spinning_cpu_answers_ipi(machine: Callable[..., Segment]) -> None:
    """A holds L and waits for B's answer to an IPI; B spins on L: only servicing IPIs
    while spinning avoids the deadlock (the i386mp TLB-shootdown deadlock)."""
    seg = machine(ncpu=2)
    lk, w = 2, words(seg)
    A_HAS, ACK, CALLS = 0, 1, 2
    b_ipi = cpu_off(seg, 1, "ipi_pending")

    def cpu_a(core: _atomic.Core) -> int:
        core.lock(lk)
        w[A_HAS] = 1
        if not wait_until(lambda: seg.cpus[1]["spinning_on"] == lk + 1):
            return 2
        core.or64(b_ipi, 1)  # the shootdown request
        answered = wait_until(lambda: core.load64(woff(seg, ACK)) != 0)
        core.unlock(lk)
        return 0 if answered else 3

    def cpu_b(core: _atomic.Core) -> int:
        def ipi() -> None:
            core.fadd64(woff(seg, CALLS), 1)
            core.store64(woff(seg, ACK), core.xchg64(b_ipi, 0))  # ack the bits it took

        core.ipi_handler = ipi
        if not wait_until(lambda: w[A_HAS] == 1):
            return 2
        core.lock(lk)
        core.unlock(lk)
        return 0

    run_cpus(seg, {0: cpu_a, 1: cpu_b})
    assert int(w[ACK]) == 1 and int(w[CALLS]) >= 1
    assert int(seg.cpus[1]["ipi_pending"]) == 0
    assert_idle(seg, [lk])


def _hold_two_and_sleep(core: _atomic.Core, seg: Segment, l1: int, l2: int) -> None:
    core.lock(l1)
    core.lock(l2)
    words(seg)[0] = 1
    while True:  # until SIGKILL
        time.sleep(1)


def test_halt_stops_a_cpu_spinning_on_a_dead_holder(machine: Callable[..., Segment]) -> None:
    seg = machine(ncpu=2)
    l1, l2, w = 12, 13, words(seg)
    HALTED = 42

    def spinner(core: _atomic.Core) -> int:
        if not wait_until(lambda: w[0] == 1):
            return 2
        try:
            core.lock(l2)
        except _atomic.Halted:
            return HALTED if core.nheld() == 0 else 3
        return 4  # the dead CPU's lock was never released

    procs = start_cpus(seg, {0: lambda core: _hold_two_and_sleep(core, seg, l1, l2), 1: spinner})
    try:
        assert wait_until(lambda: seg.cpus[1]["spinning_on"] == l2 + 1), "cpu1 never spun"
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].join(5.0)
        assert procs[0].exitcode == -signal.SIGKILL
        time.sleep(0.1)
        assert procs[1].is_alive()  # nobody will ever release l2
        # the dead CPU's held-lock stack says what it held, and where it took it
        dead = seg.cpus[0]
        held = dead["held"][: int(dead["nheld"])]
        assert held["lock"].tolist() == [l1, l2]
        assert held["mode"].tolist() == [M_EXCL, M_EXCL]
        assert {seg.site_names()[int(s)] for s in held["site"]} == {"_hold_two_and_sleep"}
        assert int(seg.locks["state"][l2]) == 1
        seg.halt()
    finally:
        codes = join_cpus(seg, procs, timeout=10.0)
    assert codes[1] == HALTED
    # a halted spinner keeps spinning_on, so the halt report says what it waited for
    assert int(seg.cpus[1]["spinning_on"]) == l2 + 1


# ---------------------------------------------------------------- futexes


def test_futex_wait_and_wake(machine: Callable[..., Segment]) -> None:
    seg = machine(ncpu=2)
    core = seg.core(0)
    off = woff(seg, 0)
    t0 = time.monotonic()
    assert core.futex_wait(off, 0, 20_000_000) == 1  # times out after 20 ms
    assert time.monotonic() - t0 >= 0.015
    assert core.futex_wait(off, 5, 1_000_000_000) == 2  # the word is not 5: no sleep

    def sleeper(c: _atomic.Core) -> int:
        return c.futex_wait(off, 0, 10_000_000_000)  # exit status = result

    procs = start_cpus(seg, {1: sleeper})
    woken = 0
    deadline = time.monotonic() + WAIT
    # wake without changing the word, so only a real wake can return 0; retry until
    # the kernel reports it woke somebody (the sleeper may not be asleep yet)
    while woken == 0 and time.monotonic() < deadline:
        woken = core.futex_wake(off, 1)
        time.sleep(0.001)
    codes = join_cpus(seg, procs)
    assert woken == 1 and codes[1] == 0


# ---------------------------------------------------------------- scale and trace


def test_million_lock_words(machine: Callable[..., Segment]) -> None:
    t0 = time.perf_counter()
    seg = machine(ncpu=2, nlocks=1_000_000, ring=64)
    boot_s = time.perf_counter() - t0
    assert boot_s < 5.0, f"boot with 1M lock words took {boot_s:.2f} s"
    core = seg.core(0)
    last = 999_999
    core.lock(0)
    core.lock(last)
    assert int(seg.locks["state"][0]) == 1 and int(seg.locks["state"][last]) == 1

    def other(c: _atomic.Core) -> int:
        if c.trylock(0) or c.trylock(last):
            return 2
        c.lock(500_000)
        c.unlock(500_000)
        return 0

    run_cpus(seg, {1: other})
    core.unlock(last)
    core.unlock(0)
    assert_idle(seg, [0, 500_000, last])
    with pytest.raises(IndexError):
        core.lock(1_000_000)


def test_trace_records(machine: Callable[..., Segment]) -> None:
    seg = machine(ncpu=2, ring=64)
    cap = seg.layout.ring_capacity

    def tracer(core: _atomic.Core) -> int:
        if not core.trace(42, 7, 1, -2, 3, 2**63 - 1, 2**64 - 1, 0):
            return 2
        if not core.trace(43, 8):
            return 3
        for i in range(cap - 2):  # fill the ring exactly
            if not core.trace(44, i, i):
                return 4
        lost = [core.trace(45, i) for i in range(6)]  # full: dropped, never overwritten
        return 0 if not any(lost) else 5

    run_cpus(seg, {1: tracer})
    ring, rec = seg.rings[1], seg.records[1]
    assert int(ring["head"]) == cap and int(ring["tail"]) == 0
    assert int(ring["dropped"]) == 6 and int(ring["seq"]) == cap + 6
    r0, r1 = rec[0], rec[1]
    assert (int(r0["cpu"]), int(r0["msgid"]), int(r0["call"]), int(r0["seq"])) == (1, 42, 7, 0)
    assert r0["args"].tolist() == [1, -2, 3, 2**63 - 1, -1, 0]  # 2**64-1 keeps its bits
    assert (int(r1["msgid"]), int(r1["call"]), int(r1["seq"])) == (43, 8, 1)
    assert r1["args"].tolist() == [0] * _atomic.NARGS
    assert rec[2]["args"][0] == 0 and rec[cap - 1]["args"][0] == cap - 3
    times = rec["time"].astype(np.int64)
    assert (np.diff(times) >= 0).all()
    assert times[-1] <= _atomic.monotonic_ns() - int(seg.hdr["boot_ns"])
    assert seg.rings[0]["head"] == 0  # other CPUs' rings untouched


def test_call_sites_of_dynamically_made_functions_stay_distinct(
    machine: Callable[..., Segment],
) -> None:
    """A freed code object's address may be reused: its site must not be inherited."""
    seg = machine(ncpu=1)
    core = seg.core(0)
    for i in range(200):
        ns: dict = {"core": core}
        exec(f"def taker_{i}():\n    core.lock(1)\n    core.unlock(1)\n", ns)
        ns[f"taker_{i}"]()
        del ns
    names = set(seg.site_names())
    assert {f"taker_{i}" for i in range(200)} <= names
    sites = {seg.site_names()[int(s["site"])]
             for s in seg.slots[0][: int(seg.cpus[0]["nslots"])]}
    assert {f"taker_{i}" for i in range(200)} <= sites


def pmap_map_ptes() -> None:
    """Stands for the kernel function ptread takes its lock for (its code object names
    the call site); never called."""


def test_ptread_is_a_lock_a_page_table_walk_and_an_unlock() -> None:
    """pmap_extract of the current pmap in one call: lock, PDE, PTE, unlock -- the lock
    taken and released as lock()/unlock() do, charged to the code object's function --
    except for an empty PDE, which 1.91's pmap_extract answers without the lock."""
    va = 0x0840_3000
    lay = Layout.plan(1, 16, 64, [ArraySpec("phys", np.dtype("<u4"), (3 * 1024,))])
    seg = Segment(lay)
    try:
        phys, off, lk = seg.arrays["phys"], lay.arrays["phys"][0], 5
        phys[va >> 22] = (1 << 12) | 0x7                    # PDE -> the PTP in page 1
        phys[1024 + ((va >> 12) & 0x3FF)] = (2 << 12) | 0x67  # PTE -> page 2
        core = seg.core(0)
        code = pmap_map_ptes.__code__
        assert core.ptread(lk, code, off, 0, va) == (2 << 12) | 0x67
        assert core.ptread(lk, code, off, 0, va + 0x1000) == 0          # no PTE
        assert core.ptread(lk, code, off, 0, va + (1 << 22)) == 0       # no PDE: no lock
        assert_idle(seg, [lk])
        s = slots_of(seg, 0)
        assert [seg.site_names()[int(r["site"])] for r in s] == ["pmap_map_ptes"]
        assert int(s[0]["acq"]) == 2 and int(s[0]["hold_hist"].sum()) == 2
        with pytest.raises(TypeError):
            core.ptread(lk, "pmap_map_ptes", off, 0, va)
        with pytest.raises(IndexError):
            core.ptread(lk, code, off, 1 << 30, va)         # a directory past the segment
        core.lock(lk)
        with pytest.raises(_atomic.LockError):
            core.ptread(lk, code, off, 0, va)               # a lock it holds: as lock()
        core.unlock(lk)
        assert_idle(seg, [lk])
    finally:
        seg.destroy()


def test_ipi_pending_reads_this_cpus_bits_without_taking_them(
        machine: Callable[..., Segment]) -> None:
    """Core.ipi_pending(): the bits other CPUs posted to this one, left in place (the
    CPU takes them with xchg64 when it answers), and nobody else's."""
    seg = machine(ncpu=2)
    c0, c1 = seg.core(0), seg.core(1)
    assert c0.ipi_pending() == 0 and c1.ipi_pending() == 0
    c1.send_ipi(0, 0b101, False)
    assert c0.ipi_pending() == 0b101 and c0.ipi_pending() == 0b101
    assert c1.ipi_pending() == 0
    with pytest.raises(TypeError):
        c0.ipi_pending(0)


def test_ptscan_walks_like_ptread_up_to_the_first_unmapped_page_with_a_slot() -> None:
    """The lookahead's loop in one call: a ptread per page but ``skip``, in address
    order, stopping at the first page whose PTE is not valid and whose slot is >= 0
    (without slots, ``slots_off`` -1: at the first page whose PTE is not valid)."""
    va = 0x0840_0000
    lay = Layout.plan(1, 16, 64, [ArraySpec("phys", np.dtype("<u4"), (3 * 1024,)),
                                  ArraySpec("slots", np.dtype("<i4"), (16,))])
    seg = Segment(lay)
    try:
        phys, off, lk = seg.arrays["phys"], lay.arrays["phys"][0], 5
        slots, soff = seg.arrays["slots"], lay.arrays["slots"][0]
        phys[va >> 22] = (1 << 12) | 0x7                    # PDE -> the PTP in page 1
        for k in (0, 1, 3):                                 # pages 0, 1, 3 mapped
            phys[1024 + k] = ((8 + k) << 12) | 0x67
        slots[:] = -1
        slots[[1, 2, 5]] = 7                                # anons at 1 (mapped), 2, 5
        core = seg.core(0)
        code = pmap_map_ptes.__code__
        assert core.ptscan(lk, code, off, 0, va, 8, -1, soff, 0) == 2
        assert core.ptscan(lk, code, off, 0, va, 8, 2, soff, 0) == 5     # 2 is the centre
        assert core.ptscan(lk, code, off, 0, va + 3 * 4096, 5, -1, soff, 3) == 2
        assert core.ptscan(lk, code, off, 0, va + 6 * 4096, 2, -1, soff, 6) == 2  # none
        assert core.ptscan(lk, code, off, 0, va + (1 << 22), 4, -1, soff, 8) == 4  # no PDE
        assert core.ptscan(lk, code, off, 0, va + (1 << 22), 4, -1, soff, 0) == 1  # an anon
        # slots_off -1, no slots: the first unmapped page, anon or not
        assert core.ptscan(lk, code, off, 0, va, 8, -1, -1, 0) == 2
        assert core.ptscan(lk, code, off, 0, va + 3 * 4096, 5, -1, -1, 0) == 1
        assert core.ptscan(lk, code, off, 0, va + 3 * 4096, 5, 1, -1, 0) == 2   # 4: centre
        assert_idle(seg, [lk])
        s = slots_of(seg, 0)
        # one lock per page asked about: 3 + 5 (0, 1, 3, 4, 5) + 3 + 2, none without a
        # PDE; then 3 (0, 1, 2) + 2 (3, 4) + 2 (3, 5)
        assert [seg.site_names()[int(r["site"])] for r in s] == ["pmap_map_ptes"]
        assert int(s[0]["acq"]) == 20
        with pytest.raises(IndexError):
            core.ptscan(lk, code, off, 0, va, 8, -1, soff, 1 << 30)  # past the segment
        with pytest.raises(ValueError):
            core.ptscan(lk, code, off, 0, va, 65, -1, soff, 0)
        with pytest.raises(TypeError):
            core.ptscan(lk, code, off, 0, va, 8, -1)
        assert_idle(seg, [lk])
    finally:
        seg.destroy()


# ---------------------------------------------------------------- lock order (LOCKDEBUG)


ORDER_CAP = 4


def _order_checked(space, guards: bool):
    """A one-CPU segment for ``space``'s locks with lock-order checking on (ORDER_CAP
    findings in array "f", the counters in "n"): (segment, cpu0's core)."""
    from smp.machine.lockspace import ORDER_FINDING_DTYPE

    lay = Layout.plan(1, space.nlocks, 64, [ArraySpec("f", ORDER_FINDING_DTYPE, (ORDER_CAP,)),
                                            ArraySpec("n", np.dtype("<u8"), (2,))])
    seg = Segment(lay)
    space.format_words(seg.locks)
    core = seg.core(0)
    ranks, sers = space.order_tables()
    extra = (space.guard_table(),) if guards else ()
    core.set_lock_order(ranks, sers, lay.arrays["f"][0], lay.arrays["n"][0], ORDER_CAP,
                        *extra)
    return seg, core


def test_lock_order_findings(machine: Callable[..., Segment]) -> None:
    """A blocking acquisition out of rank order is recorded once per (held class, wanted
    class, sites) with a count; try-locks, instances in ascending order, recursion and a
    class taken under its serializer's exclusive hold are not findings; nothing is
    refused and the statistics of the acquisitions are those of an unchecked run."""
    from smp.machine.lockspace import LockSpace

    space = LockSpace()
    outer = space.declare("outer", "rw")
    inner = space.declare("inner")
    pm = space.declare("pm", count=4)
    big = space.declare("big", "spin-recursive")
    free = space.declare("unranked")
    space.set_order([("big",), ("outer",), ("pm",), ("inner",)], {"pm": "outer"})
    seg, core = _order_checked(space, guards=False)
    try:

        def inverted() -> None:          # inner, then a pm lock: out of order
            core.lock(inner)
            core.lock(pm + 1)
            core.unlock(pm + 1)
            core.unlock(inner)

        for _ in range(3):
            inverted()
        core.lock(inner)
        assert core.trylock(pm) is True              # try-locks are never findings
        core.unlock(pm)
        core.lock(free)                              # unranked classes are not checked
        core.unlock(free)
        core.unlock(inner)
        core.lock(pm + 2)
        core.lock(pm + 3)                            # ascending instances: in order
        core.unlock(pm + 3)
        core.lock(pm)                                # descending: a finding
        core.unlock(pm)
        core.unlock(pm + 2)
        core.wlock(outer)
        core.lock(inner)
        core.lock(pm)                    # under its serializer's exclusive hold: allowed
        core.unlock(pm)
        core.unlock(inner)
        core.wunlock(outer)
        core.lock(big)
        core.lock(big)                               # recursion is not an order
        core.rlock(outer)
        core.unlock(big)
        core.unlock(big)
        core.runlock(outer)
        n = seg.arrays["n"]
        f = seg.arrays["f"][: int(n[0])]
        got = [(space.classes[int(r["held_class"])].name,
                space.classes[int(r["wanted_class"])].name, int(r["count"]),
                int(r["held_lock"]), int(r["wanted_lock"])) for r in f]
        assert got == [("inner", "pm", 3, inner, pm + 1), ("pm", "pm", 1, pm + 2, pm)]
        assert int(n[1]) == 0 and core.nheld() == 0
        sites = seg.site_names()
        assert {sites[int(r["site"])] for r in f} == {"test_lock_order_findings.<locals>."
                                                      "inverted", "test_lock_order_findings"}
        core.set_lock_order(None)                    # off: nothing more is recorded
        inverted()
        assert int(n[0]) == 2 and int(seg.arrays["f"][0]["count"]) == 3
    finally:
        seg.destroy()


def test_lock_order_guard():
    """A guarded class (inner under a pm lock needs outer, shared or exclusive: 1.91's
    PMAP_MAP_TO_HEAD_LOCK before a pv head) taken in rank order but without its guard is
    a finding; with the guard in either mode, or without the guarded class held, it is
    not."""
    from smp.machine.lockspace import LockSpace

    space = LockSpace()
    outer = space.declare("outer", "rw")
    pm = space.declare("pm", count=2)
    inner = space.declare("inner")
    space.set_order([("outer",), ("pm",), ("inner",)], {}, {"inner": ("pm", "outer")})
    seg, core = _order_checked(space, guards=True)
    try:
        lay, ncap = seg.layout, ORDER_CAP
        ranks, sers = space.order_tables()

        def pm_then_inner() -> None:
            core.lock(pm + 1)
            core.lock(inner)
            core.unlock(inner)
            core.unlock(pm + 1)

        core.rlock(outer)
        pm_then_inner()                              # guarded (shared)
        core.runlock(outer)
        core.wlock(outer)
        pm_then_inner()                              # guarded (exclusive)
        core.wunlock(outer)
        core.lock(inner)                             # no pm lock held: nothing to guard
        core.unlock(inner)
        pm_then_inner()                              # unguarded: a finding
        pm_then_inner()
        n = seg.arrays["n"]
        f = seg.arrays["f"][: int(n[0])]
        assert [(space.classes[int(r["held_class"])].name,
                 space.classes[int(r["wanted_class"])].name, int(r["count"]),
                 int(r["held_lock"])) for r in f] == [("pm", "inner", 2, pm + 1)]
        with pytest.raises(ValueError):
            core.set_lock_order(ranks, sers, lay.arrays["f"][0], lay.arrays["n"][0], ncap,
                                b"\0\0")
    finally:
        seg.destroy()
