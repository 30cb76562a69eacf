"""Kernel bugs found by the DIAGNOSTIC checker and the tests, each reproduced deterministically.

Each test states the correct behaviour and stays as a regression test now that the bug
is fixed (the commit that fixed it is named where it helps).  The interleavings that
need two CPUs are replayed on
cpu0 by running "the other CPU's" code at the exact point where it can run (a wrapped
kernel function), which is what a real second CPU may do at that moment.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import smp
from kernharness import (
    RW,
    booted,
    configs,
    ptp_hog,
    run_program,
    sleeps,
    stealable_setup,
    two_pages_one_ptp,
)

from smp.kern import kern_synch, lock, pmap, uvm_anon, uvm_km, uvm_map, uvm_page, uvm_pdaemon
from smp.kern import uvm as U
from smp.kern.kernel import Kernel
from smp.kern.param import NBPG, PG_BUSY, PG_RELEASED, PMAP_CANFAIL
from smp.machine.boot import Machine
from smp.machine.cpu import CPU
from smp.machine.schedule import Lockstep
from smp.machine.trace import NullSink
from smp.workload.interp import ProcessKind, ProgramLoad
from smp.workload.program import Assembler, Op

REPO = Path(__file__).resolve().parent.parent


class WouldBlock(Exception):  # noqa: N818 - a control transfer
    """The code running as "the other CPU" asked for a lock cpu0 holds: it would wait."""


def as_other_cpu(real_lock):
    """simple_lock as the code running as "the other CPU" takes it: a lock cpu0 holds
    raises WouldBlock instead of spinning against ourselves."""
    def simple_lock(lk):
        if lock.lock_held(lk):                           # held by cpu0, not by "cpu1"
            raise WouldBlock(lk)
        real_lock(lk)
    return simple_lock


def test_neighbour_mapping_waits_for_the_anon_the_pagedaemon_is_paging_out(monkeypatch):
    """Found by the DIAGNOSTIC check (fixed in 4ac0ebc): the lookahead loop of uvm_fault
    read an anon's page without the anon lock, so it could map a page the pagedaemon had
    just unmapped and was about to page out and free -- a process left mapping a free
    page."""
    with booted() as b:
        va = b.mmap(0, 8)
        for k in range(3):
            assert b.fault(0, va + k * NBPG) == 0
        victim = b.extract(0, va)                        # the pagedaemon's choice
        b.unmap_keep_pages(0, va + NBPG)                 # its neighbour will refault
        lock.simple_lock(uvm_page.pageq_lock)
        uvm_page.uvm_pagedeactivate(victim)
        lock.simple_unlock(uvm_page.pageq_lock)
        real_alloc, real_lock = uvm_pdaemon.uvm_swap_alloc, lock.simple_lock
        blocked = []
        other_cpu_lock = as_other_cpu(real_lock)

        def swap_alloc():
            # the page is unmapped and about to go out; meanwhile on "cpu1": process 0
            # touches the page next door (case 1A)
            monkeypatch.setattr(lock, "simple_lock", other_cpu_lock)
            try:
                b.fault(0, va + NBPG, write=False)
            except WouldBlock as e:
                blocked.append(e.args[0])
                for lk in (uvm_map.amap_lock + b.tid(0), uvm_map.vm_map_lock + b.tid(0)):
                    lock.simple_unlock(lk)               # (cpu1 would just keep spinning)
            finally:
                monkeypatch.setattr(lock, "simple_lock", real_lock)
            b.ci.area["curproc"] = 0
            pmap.pmap_activate(pmap.KERNEL_PMAP)
            return real_alloc()

        monkeypatch.setattr(uvm_pdaemon, "uvm_swap_alloc", swap_alloc)
        an = int(b.a["pg_anon"][victim])
        with b.as_pagedaemon():
            pmap.pmap_activate(pmap.KERNEL_PMAP)
            lock.simple_lock(uvm_page.pageq_lock)
            cluster = []
            assert uvm_pdaemon._pageout_anon(victim, cluster) == "queued"
            assert uvm_pdaemon._put_swap_cluster(cluster) == "paging"
            lock.simple_unlock(uvm_page.pageq_lock)
            assert b.complete_pageouts() == 1                # written, then freed
        assert blocked == [uvm_anon.an_lock + an]                # the lookahead waits for the anon
        b.forget_lock_order()          # cpu1's fault ran on cpu0's held stack (see above)
        assert b.fault(0, va + NBPG, write=False) == 0   # cpu1 goes on: nothing to map
        assert b.extract(0, va) == -1 and b.check() == []


def test_an_anon_freed_while_its_pageout_found_no_va_is_freed_by_the_pagedaemon(monkeypatch):
    """Seen while chasing the stop-18 flake: munmap frees an anon whose page the pagedaemon
    has made busy for a pageout (uvm_anfree leaves it to the write's completion,
    PG_RELEASED); if the write then cannot start (no pager VA), the pagedaemon's give-up
    path must free the anon itself, or the anon, its page and its swap slot leak."""
    with booted() as b:
        va = b.mmap(0, 4)
        assert b.fault(0, va) == 0
        victim = b.extract(0, va)
        an = int(b.a["pg_anon"][victim])
        lock.simple_lock(uvm_page.pageq_lock)
        uvm_page.uvm_pagedeactivate(victim)
        lock.simple_unlock(uvm_page.pageq_lock)
        monkeypatch.setattr(uvm_pdaemon.uvm_pager, "uvm_pager_put", lambda pages: False)
        with b.as_pagedaemon():
            pmap.pmap_activate(pmap.KERNEL_PMAP)
            lock.simple_lock(uvm_page.pageq_lock)
            cluster = []
            assert uvm_pdaemon._pageout_anon(victim, cluster) == "queued"
            lock.simple_unlock(uvm_page.pageq_lock)
            b.switch_to(0)
            assert uvm_map.uvm_unmap(b.tid(0), va) == 0      # "cpu1": the process unmaps
            assert b.a["pg_flags"][victim] & PG_RELEASED
            b.ci.area["curproc"] = 0
            pmap.pmap_activate(pmap.KERNEL_PMAP)
            lock.simple_lock(uvm_page.pageq_lock)
            assert uvm_pdaemon._put_swap_cluster(cluster) == "nova"
            lock.simple_unlock(uvm_page.pageq_lock)
        assert int(b.a["an_ref"][an]) == 0 and int(b.a["an_page"][an]) == -1
        assert int(b.a["an_swslot"][an]) == 0 and int(b.ux[U.SWPGINUSE]) == 0
        assert not b.a["pg_flags"][victim] & (PG_BUSY | PG_RELEASED)
        assert b.check() == []


def test_ptp_stealing_and_pv_stealing_take_two_locks_in_opposite_orders_as_in_1_91():
    """A hazard of the 1.91 code the model keeps on purpose (pmap.py docstring): PTP
    stealing holds pmap_tmpptp_lock while pmap_remove_ptes frees pv entries under
    pvalloc_lock; pv stealing holds pvalloc_lock while pmap_tmpmap_pvepte takes
    pmap_tmpptp_lock.  Harmless on a uniprocessor or under the big lock; LOCKDEBUG
    reports it on one CPU, before any second CPU could deadlock on it: one finding, the
    pv steal's, since the PTP steal takes the two locks in the table's order."""
    with booted(["steal=ptp,pv"]) as b:
        def both_steals():
            _, tva = stealable_setup(b, thief=1, victims=(0,))
            b.free_to(1)
            assert b.fault(1, tva) == 0                  # a PTP steal (victim had a pv entry)
            b.free_to(30)
            tva2, pg = two_pages_one_ptp(b, 2)
            vva = b.mmap(0, 4)
            assert b.fault(0, vva) == 0
            b.free_to(1)
            held = b.hold_pv_entries()
            b.switch_to(2)
            assert pmap.pmap_enter(b.pm(2), tva2, pg, RW, RW | PMAP_CANFAIL) == 0   # pv steal
            b.release_pv_entries(held)

        both_steals()
        assert b.cnt("ptp_steals") == 1 and b.cnt("pv_steals") == 1 and b.check() == []
        found = b.lock_order()
        assert [(f["held"], f["held_at"], f["wanted"], f["wanted_at"], f["count"])
                for f in found] == [("pvalloc_lock", "pmap_alloc_pv", "pmap_tmpptp_lock",
                                     "_try_steal_pv", 1)]
        assert b.kernel.audit(b.seg)["lock_order"] == found


STEAL_BOTH = ["pmap_alloc_ptp:p=0.3", "pmap_alloc_pvpage:p=0.995"]   # both steals, often


def test_two_cpus_stealing_ptps_and_pv_entries_deadlock_without_the_big_lock():
    """The same inversion on a real two-CPU machine, found by lockstep schedules: one CPU
    in pmap_steal_ptp holds pmap_tmpptp_lock and spins on pvalloc_lock while the other,
    in pmap_try_steal_pv, holds pvalloc_lock and spins on pmap_tmpptp_lock."""
    outcomes = []
    for seed in range(3):                                # lockstep: each seed reproducible
        mach, o = run_program(ptp_hog(8, 6, 4, stride=32), 6,
                              ["ncpu=2", "physmem=8M", "swap=16M", "steal=ptp,pv",
                               "biglock=off"], amap_per_proc=8 * 1024, fail=STEAL_BOTH,
                              seed=seed, lockstep="random", time_limit_s=60)
        outcomes.append((seed, o.status, o.message))
        found = {(f["held"], f["wanted"]) for f in mach.lock_order}
        assert found <= {("pvalloc_lock", "pmap_tmpptp_lock")}, found
        if o.status == "deadlock":          # LOCKDEBUG saw the inversion first
            assert found == {("pvalloc_lock", "pmap_tmpptp_lock")}
    deadlocks = [m for _, st, m in outcomes if st == "deadlock"]
    assert deadlocks, outcomes
    assert "pmap_tmpptp_lock" in deadlocks[0] and "pvalloc_lock" in deadlocks[0]


def test_a_deadlock_report_names_every_lock_the_cpus_held():
    # lockstep seed 0 deadlocks this load (seeds 0-3 do, 4 and 5 finish): pinned, so the
    # test asserts instead of hoping a deadlock turns up
    mach, o = run_program(ptp_hog(8, 6, 4, stride=32), 6,
                          ["ncpu=2", "physmem=8M", "swap=16M", "steal=ptp,pv", "biglock=off"],
                          amap_per_proc=8 * 1024, fail=STEAL_BOTH, seed=0,
                          lockstep="random", time_limit_s=60)
    assert o.status == "deadlock", (o.status, o.message)
    thief = next(c for c in o.cpus if any(h["name"] == "pmap_tmpptp_lock" for h in c.held))
    names = {h["name"] for h in thief.held}
    # pmap_steal_ptp runs inside pmap_enter, under the main lock (shared) and the pmap lock
    assert "pmap_main_lock" in names and any(n.startswith("pmap[") for n in names), names


def test_pmap_canfail_leak_models_the_leak_instead_of_crashing_the_simulator():
    mach, o = run_program(ptp_hog(8, 4, 2), 4,
                          ["ncpu=2", "physmem=8M", "swap=16M", "steal=none",
                           "pmap_canfail_leak=on"], amap_per_proc=8 * 1024,
                          fail=["pmap_alloc_ptp:p=0.5"], seed=1, lockstep="random",
                          time_limit_s=60)
    errors = [c.text for c in o.cpus if "internal error" in c.text]
    assert o.status != "internal-error" and errors == [], (o.status, errors)


class BoomLoad(ProgramLoad):
    """A load whose second process makes the simulator itself fail (an internal error)."""

    def step(self, ci, tid):
        if tid == 2:
            raise RuntimeError("boom")
        return super().step(ci, tid)


def test_an_internal_error_in_lockstep_mode_is_not_reported_as_done(tmp_path):
    m, k = configs(["ncpu=2", "physmem=8M"])
    a = Assembler()
    pc = a.pc
    a.emit(Op.COMPUTE, 1_000_000)
    a.emit(Op.EXIT)
    load = BoomLoad(name="boom", table=a.table(), kinds=[ProcessKind("p", 2, pc)], maxproc=2)
    statuses = []
    for seed in range(4):
        mach = Machine(m, Kernel(k, load, seed=seed), NullSink(), Lockstep("random", seed),
                       time_limit_s=30)
        statuses.append(mach.run().status)
    assert statuses == ["internal-error"] * 4


def test_pageout_without_kernel_va_does_not_sleep_holding_the_page_queues():
    """Found by these tests (fixed in 5824a3a): with the pager's VA used up, uvm_pagermapin
    slept inside uvmpd_scan with the page queues locked; the pager now uses its emergency
    window (NetBSD's emergva)."""
    with booted() as b:
        va = b.mmap(0, 64)
        for k in range(48):
            assert b.fault(0, va + k * NBPG) == 0
        b.switch_to(0)
        while uvm_km.uvm_km_valloc(uvm_km.PAGER_MAP, 1) >= 0:   # pager_map VA all taken
            pass
        b.free_to(40)
        for _ in range(2):                               # deactivate, then page out
            b.a["proc"][0]["reg"][0] = 1
            with b.as_pagedaemon():
                pmap.pmap_activate(pmap.KERNEL_PMAP)
                try:
                    uvm_pdaemon.uvm_pageout_step(0)
                except kern_synch.Sleep as s:
                    if s.interlock >= 0:
                        lock.simple_unlock(s.interlock)
                    # a sleeping thread holds no lock but its interlock (kern_synch)
                    assert b.held() == 0, "slept holding the page queue lock"
                    assert s.chan == U.CHAN_PAGEDAEMON, "slept somewhere inside the pass"
        assert b.cnt("pgswapout") > 0 and b.check() == []


def test_an_anon_freed_while_the_pagedaemon_deactivates_its_page_waits_for_the_page_queues(
        monkeypatch):
    """The rare "freeing free page" panic (uvm_unmap -> uvm_anfree -> uvm_pagefree) of
    test_fork_and_copy_on_write_under_pressure_biglock_off: uvm_pagefree read the page's
    queue without the page queues locked.  Caught between the pagedaemon's
    _dequeue_paging and its insert on the inactive queue (pg_pq PQ_NONE, no lock
    operation in between, so lockstep never interleaves there), a munmap on another CPU
    put the page on the free list while it went on the inactive queue too -- both lists
    corrupt, the page later handed out twice.  NetBSD 1.5's uvm_anfree locks the page
    queues around uvm_pagefree ("lock out pagedaemon"), as uvm_pagefree requires."""
    with booted() as b:
        va = b.mmap(0, 1)
        assert b.fault(0, va) == 0
        pg = b.extract(0, va)
        an = int(b.a["pg_anon"][pg])
        assert b.a["pg_pq"][pg] == uvm_page.PQ_ACTIVE
        real_insert, real_lock = uvm_page._q_insert_tail, lock.simple_lock
        blocked = []
        other_cpu_lock = as_other_cpu(real_lock)

        def insert_tail(q, p):
            if q == uvm_page.Q_INACTIVE and p == pg and not blocked:
                # off the active queue, not yet on the inactive one; meanwhile on "cpu1":
                # process 0's munmap, its anon's last reference
                monkeypatch.setattr(lock, "simple_lock", other_cpu_lock)
                try:
                    uvm_map.uvm_unmap(b.tid(0), va)
                    blocked.append(None)
                except WouldBlock as e:
                    blocked.append(e.args[0])
                    lock.simple_unlock(uvm_anon.an_lock + an)   # (cpu1 would keep spinning)
                finally:
                    monkeypatch.setattr(lock, "simple_lock", real_lock)
            real_insert(q, p)

        monkeypatch.setattr(uvm_page, "_q_insert_tail", insert_tail)
        with b.as_pagedaemon():                          # uvmpd_scan refills the inactive queue
            lock.simple_lock(uvm_page.pageq_lock)
            uvm_page.uvm_pagedeactivate(pg)
            lock.simple_unlock(uvm_page.pageq_lock)
        assert blocked == [uvm_page.pageq_lock], "uvm_pagefree did not wait for the queues"
        b.forget_lock_order()          # cpu1's munmap ran on cpu0's held stack (see above)
        uvm_anon.uvm_anfree(an)                          # cpu1 goes on: the page is freed
        assert b.a["pg_pq"][pg] == uvm_page.PQ_FREE and b.check() == []


def test_a_childs_munmap_does_not_unwire_its_parents_mlocked_page():
    """Found by these tests (fixed in 5824a3a): uvm_unmap unwired every wired page of the
    range, also a COW-shared page the parent had mlocked, which then became pageable
    under the parent's wired PTE (the checker's "wiring" invariant)."""
    with booted() as b:
        parent, child = b.tid(0), b.tid(1)
        va = b.mmap(0, 4)
        assert b.fault(0, va, wire=True) == 0            # mlock
        uvm_map.set_wired(parent, va, True)
        pg = b.extract(0, va)
        b.switch_to(0)
        uvm_map.uvmspace_fork(parent, child, b.pm(1))    # fork: a wired page is not shared
        assert b.fault(1, va, write=False) == 0 and b.extract(1, va) != pg
        b.switch_to(1)
        assert uvm_map.uvm_unmap(child, va) == 0         # the child's munmap
        assert b.a["pg_wire"][pg] == 1 and b.ux[U.WIRED] == 1, "parent's page unwired"
        assert b.check() == []


def test_sleeps_helper_reports_a_held_lock():
    """(The harness's own check that the bug tests above can fail for the right reason.)"""
    with booted() as b:
        b.free_to(1)
        s = sleeps(uvm_km.uvm_km_alloc1, uvm_km.KERNEL_MAP, 1)
        assert s.chan == U.CHAN_FREE and b.held() == 0


def test_a_64_cpu_machine_boots_and_its_last_cpu_runs_a_pmap():
    with booted(["ncpu=64", "physmem=64M"]) as b:
        ci = CPU(b.seg, 63, b.machine.sched_lock, b.machine.decl.nthreads)
        b.kernel.cpu_attach(ci, wait_for_others=False)   # cpu63 from now on
        b.ci = ci
        b.switch_to(0)                                   # pmap_activate: pm_cpus |= 1 << 63
        assert int(b.a["pm_cpus"][b.pm(0)]) == 1 << 63
        va = b.mmap(0, 4)
        assert b.fault(0, va) == 0 and b.check() == []


def test_mlock_twice_then_munlock_leaves_nothing_wired():
    with booted() as b:
        tid = b.tid(0)
        va = b.mmap(0, 4)
        for _ in range(2):                               # mlock: every page, then the entry
            for k in range(4):
                assert b.fault(0, va + k * NBPG, wire=True) == 0
            uvm_map.set_wired(tid, va, True)
        pg = b.extract(0, va)
        uvm_map.set_wired(tid, va, False)
        assert not pmap.pmap_is_wired(b.pm(0), va)
        assert b.a["pg_wire"][pg] == 0 and b.ux[U.WIRED] == 0
        assert b.check() == []


def test_fork_does_not_make_the_parents_mlocked_pages_copy_on_write():
    with booted() as b:
        parent, child = b.tid(0), b.tid(1)
        va = b.mmap(0, 4)
        assert b.fault(0, va, wire=True) == 0
        uvm_map.set_wired(parent, va, True)
        b.switch_to(0)
        uvm_map.uvmspace_fork(parent, child, b.pm(1))
        before = b.counters()
        b.touch(0, va, write=True)                       # the parent writes its mlocked page
        assert "faults" not in b.delta(before)
        assert b.check() == []


# --- issue 10, item 9: "panic: freeing free page" at exit ----------------------------------

SPARSE_FORK = REPO / "tests" / "fixtures" / "workloads" / "sparse-fork.toml"


def test_exit_gives_back_the_kernel_buffers_before_a_fork_can_reuse_the_proc_slot(
        monkeypatch):
    """exit1 freed the proc slot first and let the load free the process's kernel buffers
    after: a fork on another CPU took the slot, its short-lived child exited while the
    dead process was still freeing, and both freed the same pages ("freeing free page",
    exit1 -> _kfree -> uvm_km_free -> uvm_pagefree).  Now the slot is still in use while
    exit1 gives things back, so "the other CPU's" fork gets another slot."""
    with booted(nprocs=4) as b:
        dying, forker = b.tid(0), b.tid(1)
        b.switch_to(0)
        b.load._kmalloc(dying, 0, 4, 0)                    # uvm_km_alloc1, 4 pages
        assert b.a["pkmem"][dying, 0, 0] != 0
        b.a["proc"]["stat"][b.tid(2):] = 0                  # free slots for the fork
        b.a["proc"]["stat"][b.tid(3)] = 0
        real_exited = b.load.exited
        forked = []

        def exited(ci, tid):
            assert int(b.a["proc"][tid]["stat"]) != 0       # the slot is not free yet
            forked.append(b.kernel.fork1(ci, forker, 0))    # meanwhile on "cpu1"
            real_exited(ci, tid)

        monkeypatch.setattr(b.load, "exited", exited)
        b.kernel.exit1(b.ci, dying)
        assert forked and forked[0] not in (-1, dying)
        assert int(b.a["proc"][dying]["stat"]) == 0 and not b.a["pkmem"][dying].any()
        b.switch_to(1)
        b.kernel.exit1(b.ci, forked[0])                      # the child exits: nothing twice
        assert b.check() == []


def _sparse_fork(tmp_path, seed: int, *limit: str) -> dict:
    out = tmp_path / f"run{seed}"
    r = smp("run", str(SPARSE_FORK), "-o", "diagnostic=on", "--seed", str(seed), "--out",
            str(out), "--quiet", *limit, cwd=tmp_path, timeout=300)
    s = json.loads((out / "summary.json").read_text())
    assert r.returncode == 0, (seed, r.returncode, s["message"], r.stderr[-2000:])
    assert s["status"] in ("done", "timeout")
    d = s["diagnostic"]
    assert d["violations"] == [] and d["skipped"] == [], (seed, d)
    return s


def test_the_sparse_fork_reproducer_ends_cleanly_with_diagnostic_on(tmp_path):
    """The load of issue 10 for 2 s of virtual time in lockstep (the free-running full runs
    are the slow test below): the drain processes' children fork and exit hundreds of
    times, which is where the slot recycling freed kernel buffers twice.  (Each sparse
    fault's lookahead asks pmap_extract about its seven neighbours, each a lock of the
    pmap, as 1.5's does: 1 s of virtual time holds about 110 forks.)"""
    s = _sparse_fork(tmp_path, 0, "--lockstep", "--time-limit", "2s")
    c = s["kernel_counters"]["counters"]
    assert c["forks"] > 100 and c["exits"] > 100, c


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_sparse_fork_reproducer_runs_to_its_end_on_seeds_0_to_3(tmp_path, seed):
    """The reproducer as the issue gives it: 4 CPUs, 90 s limit, seeds 0-3."""
    _sparse_fork(tmp_path, seed)


def test_more_one_page_pageouts_in_flight_than_64k_clusters_keep_a_record_each():
    """pager_map holds a 64 KiB cluster 64 times over, but a write may be one page: every
    write in flight needs its own record (a struct buf).  With records for 64 clusters
    only, the 66th one-page write took a live record over, and uvmexp.paging kept pages
    no write held (DIAGNOSTIC: "uvmexp.paging 120, pages in writes 46", found by
    `smp explore raw-dd -o biglock=off`)."""
    from smp.kern import uvm_pager
    from smp.kern.param import PG_CLEAN

    with booted(["physmem=2M"]) as b:
        n = 80
        va = b.mmap(0, n)
        pages = []
        for i in range(n):
            assert b.fault(0, va + i * NBPG) == 0
            pages.append(b.anon_page(0, va + i * NBPG))
        for pg in pages:                      # what _pageout_anon does, one page a cluster
            an = int(b.a["pg_anon"][pg])
            lock.simple_lock(uvm_anon.an_lock + an)
            pmap.pmap_page_remove(pg)
            slot = uvm_anon.uvm_swap_alloc()
            assert slot >= 0
            b.a["an_swslot"][an] = slot + 1
            b.a["pg_flags"][pg] = (b.a["pg_flags"][pg] | PG_BUSY) & ~PG_CLEAN
            lock.simple_unlock(uvm_anon.an_lock + an)
            assert uvm_pager.uvm_pager_put([pg])
        assert int(b.ux[U.PAGING]) == n
        assert b.check() == []                # paging == the pages the writes hold
        assert b.complete_pageouts() == n
        assert int(b.ux[U.PAGING]) == 0 and b.check() == []
