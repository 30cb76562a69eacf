"""Swapout and swapin (smp.kern.uvm_glue, NetBSD 1.5 uvm_glue.c) and the wiring rules that
come with them: pmap_collect takes every mapping of a swapped-out process, wired ones too
(pmap.c 1.91), so its PTPs go back to the free list; what its map wired stays wired, and
unwiring a page whose mapping is gone is 1.5's "unwiring non-wired memory" panic.
"""

from __future__ import annotations

import json

import pytest
from conftest import smp
from kernharness import booted, panics, sleeps
from test_kernel_decisions import pagedaemon_pass

from smp.kern import kern_synch, pmap, uvm_glue, uvm_map
from smp.kern import uvm as U
from smp.kern.kern_proc import P_INMEM, SRUN, SSLEEP
from smp.kern.param import NBPD, NBPG

NS = 1_000_000_000
CHAN = 0xC0FF_0000


def _asleep(b, i: int, seconds: float) -> int:
    """Put process i to sleep on CHAN, as if it went to sleep ``seconds`` ago."""
    tid = b.tid(i)
    if int(b.ci.area["curproc"]) == tid:
        b.ci.area["curproc"] = -1                      # off the CPU: it went to sleep
    b.sleep_queue(tid, kern_synch.Sleep(CHAN + i, 0, 0, -1))
    b.a["proc"][tid]["slptime0"] = b.ci.core.now() - int(seconds * NS)
    return tid


def _resident(b, i: int, seconds: float) -> int:
    tid = b.tid(i)
    b.a["proc"][tid]["swtime0"] = b.ci.core.now() - int(seconds * NS)
    return tid


def _inmem(b, tid: int) -> bool:
    return bool(b.a["proc"][tid]["flag"] & P_INMEM)


def _three_blocks(b, i: int = 0) -> list[int]:
    """Process i maps and touches one page in each of three 4 MiB blocks: three PTPs."""
    va = b.mmap(i, 3 * 1024, align=NBPD)
    vas = [va, va + NBPD, va + 2 * NBPD]
    for v in vas:
        assert b.fault(i, v) == 0
    return vas


def _mlocked_then_swapped_out(b) -> tuple[int, int, int]:
    """Process 0 mlocks the first page of a 4-page region, goes to sleep for longer than
    maxslp and is swapped out; (tid, va, page)."""
    va = b.mmap(0, 4)
    _mlock_page(b, 0, va)
    pg = b.extract(0, va)
    tid = _asleep(b, 0, uvm_glue.MAXSLP + 1)
    assert uvm_glue.uvm_swapout(tid) == 1
    return tid, va, pg


def _mlock_page(b, i: int, va: int) -> None:
    """mlock(va, 4096): a wiring fault, then the page on the map's list (as the load's
    mlock op does it)."""
    assert uvm_map.mlock_check(1) == 0
    assert b.fault(i, va, wire=True) == 0
    assert uvm_map.mlock_page_done(b.tid(i), va) == 0


def test_a_process_asleep_maxslp_seconds_is_swapped_out_and_its_ptps_freed():
    with booted() as b:
        vas = _three_blocks(b)
        pages = [b.anon_page(0, v) for v in vas]
        pm = b.pm(0)
        tid = _asleep(b, 0, uvm_glue.MAXSLP + 1)
        _asleep(b, 1, uvm_glue.MAXSLP - 1)             # not long enough: stays in
        b.free_to(40)                                  # below freetarg
        before = b.counters()
        pagedaemon_pass(b)
        d = b.delta(before)
        assert d["pdswout"] == 1 and d["swapouts"] == 1 and d["ptp_free"] == 3
        assert not _inmem(b, tid) and _inmem(b, b.tid(1))
        assert int(b.a["pm_npages"][pm]) == 0 and all(b.extract(0, v) == -1 for v in vas)
        # the data stays: the anons keep their pages, the page directory stays
        assert [b.anon_page(0, v) for v in vas] == pages
        assert b.check() == []
        # woken, it is swapped in by the CPU that runs it, and faults its mappings back
        kern_synch.wakeup(CHAN)
        assert int(b.a["proc"][tid]["stat"]) == SRUN
        uvm_glue.uvm_swapin(tid)
        assert _inmem(b, tid) and b.cnt("swapins") == 1
        before = b.counters()
        for v in vas:
            assert b.fault(0, v) == 0
        d = b.delta(before)
        assert d["ptp_alloc"] == 3 and "flt_przero" not in d   # the same pages, new PTPs
        assert [b.extract(0, v) for v in vas] == pages
        assert b.check() == []


def test_short_of_memory_the_longest_sleeper_goes_else_the_longest_resident():
    """1.5: with no process asleep maxslp seconds, only when free <= atop(USPACE) (2
    pages): the longest asleep (p_slptime >= 1 s), else the longest resident (p_swtime
    >= 1 s) that is not on a CPU."""
    with booted(nprocs=4) as b:
        for i in range(4):
            _three_blocks(b, i)
        short, long_ = _asleep(b, 0, 1.5), _asleep(b, 1, 3.5)
        b.free_to(3)
        assert uvm_glue.uvm_swapout_threads() == 0     # free 3 > 2: nobody
        b.give_back()
        b.free_to(2)
        assert uvm_glue.uvm_swapout_threads() == 1
        assert not _inmem(b, long_) and _inmem(b, short)
        assert b.free() == 5                           # its three PTPs came back
        assert uvm_glue.uvm_swapout_threads() == 0
        b.free_to(2)
        assert uvm_glue.uvm_swapout_threads() == 1
        assert not _inmem(b, short)
        # nobody asleep: the longest resident of the runnable ones, not the one on a CPU
        b.give_back()
        b.free_to(2)
        _resident(b, 2, 5.0)
        oncpu = b.switch_to(3)
        _resident(b, 3, 9.0)
        assert uvm_glue.uvm_swapout_threads() == 1
        assert not _inmem(b, b.tid(2)) and _inmem(b, oncpu)
        assert b.check() == []


def test_a_process_doing_physio_is_held_in():
    with booted() as b:
        _three_blocks(b)
        tid = _asleep(b, 0, uvm_glue.MAXSLP + 5)
        b.a["proc"][tid]["holdcnt"] = 1                # PHOLD
        b.free_to(2)
        assert uvm_glue.uvm_swapout_threads() == 0 and _inmem(b, tid)
        b.a["proc"][tid]["holdcnt"] = 0
        assert uvm_glue.uvm_swapout_threads() == 1 and not _inmem(b, tid)


def test_swapin_waits_schedpwait_while_free_memory_is_at_the_u_areas_two_pages():
    with booted() as b:
        tid = _asleep(b, 0, uvm_glue.MAXSLP + 1)
        assert uvm_glue.uvm_swapout(tid) == 1
        kern_synch.wakeup(CHAN)
        b.free_to(2)
        s = sleeps(uvm_glue.uvm_swapin, tid)
        assert s.chan == U.CHAN_FREE and not _inmem(b, tid)
        b.give_back()
        uvm_glue.uvm_swapin(tid)
        assert _inmem(b, tid)


def test_swapout_off_never_swaps_out():
    with booted(["swapout=off"]) as b:
        _three_blocks(b)
        tid = _asleep(b, 0, uvm_glue.MAXSLP + 1)
        b.free_to(40)
        before = b.counters()
        pagedaemon_pass(b)
        d = b.delta(before)
        assert "pdswout" not in d and "swapouts" not in d and _inmem(b, tid)


# --- what the map wired, across a swapout ---------------------------------------------------

def test_munlock_after_a_swapout_panics_unwiring_non_wired_memory():
    """pmap_collect (1.91) took the wired mapping too; 1.5's munlock (uvm_fault_unwire_
    locked) asks the pmap for the page and panics when it is not there."""
    with booted() as b:
        tid, va, pg = _mlocked_then_swapped_out(b)
        assert b.extract(0, va) == -1
        assert int(b.a["pg_wire"][pg]) == 1 and b.ux[U.WIRED] == 1     # still wired
        assert b.check() == []                         # not a leak: the map wires it
        msg = panics(uvm_map.unwire_pages, tid, [va])
        assert msg == "uvm_fault_unwire_locked: unwiring non-wired memory"


def test_exit_after_a_swapout_panics_the_same_way():
    with booted() as b:
        va = b.mmap(0, 2)
        for k in range(2):
            assert b.fault(0, va + k * NBPG, wire=True) == 0
        uvm_map.set_wired(b.tid(0), va, True)          # mlock of the whole region
        tid = _asleep(b, 0, uvm_glue.MAXSLP + 1)
        assert uvm_glue.uvm_swapout(tid) == 1
        assert b.check() == []
        assert panics(uvm_map.uvmspace_free, tid) == \
            "uvm_fault_unwire_locked: unwiring non-wired memory"


def test_a_wired_page_touched_after_swapin_is_mapped_wired_again_and_unwires_cleanly():
    with booted() as b:
        tid, va, pg = _mlocked_then_swapped_out(b)
        kern_synch.wakeup(CHAN)
        uvm_glue.uvm_swapin(tid)
        before = b.counters()
        assert b.fault(0, va, write=False) == 0        # a plain fault on the listed page
        assert "fltnomap" not in b.delta(before)       # one page: no lookahead
        assert b.extract(0, va) == pg and pmap.pmap_is_wired(b.pm(0), va)
        assert int(b.a["pg_wire"][pg]) == 1            # not wired a second time
        uvm_map.unwire_pages(tid, [va])                # munlock
        assert int(b.a["pg_wire"][pg]) == 0 and not pmap.pmap_is_wired(b.pm(0), va)
        assert b.check() == []


def test_skipwired_collect_keeps_the_wired_mapping_and_its_ptp():
    """pmap.c 1.135's pmap_collect (PMAP_REMOVE_SKIPWIRED): the wired mapping and the PTP
    holding it stay; the rest goes; munlock is fine."""
    with booted(["swapout=skipwired"]) as b:
        va = b.mmap(0, 3 * 1024, align=NBPD)
        _mlock_page(b, 0, va)
        assert b.fault(0, va + NBPG) == 0              # same PTP, not wired
        assert b.fault(0, va + NBPD) == 0              # its own PTP
        tid = _asleep(b, 0, uvm_glue.MAXSLP + 1)
        before = b.counters()
        assert uvm_glue.uvm_swapout(tid) == 1
        assert b.delta(before)["ptp_free"] == 1
        assert b.extract(0, va) >= 0 and b.extract(0, va + NBPG) == -1
        assert b.extract(0, va + NBPD) == -1
        uvm_map.unwire_pages(tid, [va])
        assert b.ux[U.WIRED] == 0 and b.check() == []


def test_mlock_is_refused_up_front_past_wiredmax_but_physio_wiring_is_not():
    """1.5: sys_mlock tests atop(size) + uvmexp.wired > uvmexp.wiredmax (EAGAIN) before it
    wires anything; uvm_vslock (physio) and the wiring fault itself make no such test."""
    with booted() as b:
        va = b.mmap(0, 4)
        b.ux[U.WIREDMAX] = 2
        assert uvm_map.mlock_check(3) == uvm_map.EAGAIN and uvm_map.mlock_check(2) == 0
        b.ux[U.WIREDMAX] = 0                           # at wiredmax already
        assert b.fault(0, va, wire=True) == 0          # a vslock's fault still wires
        assert int(b.ux[U.WIRED]) == 1
        uvm_map.uvm_vsunlock(b.tid(0), [va])
        assert int(b.ux[U.WIRED]) == 0


def test_a_woken_process_that_was_swapped_out_is_not_swapped_out_again_until_back_in():
    with booted() as b:
        tid = _asleep(b, 0, uvm_glue.MAXSLP + 1)
        assert uvm_glue.uvm_swapout(tid) == 1
        assert uvm_glue.uvm_swapout(tid) == 0          # not P_INMEM: not swappable
        kern_synch.wakeup(CHAN)
        assert int(b.a["proc"][tid]["stat"]) == SRUN and not _inmem(b, tid)
        b.a["proc"][tid]["stat"] = SSLEEP              # (asleep again, still out)
        b.a["proc"][tid]["slptime0"] = 0
        assert uvm_glue.uvm_swapout_threads() == 0


@pytest.mark.parametrize("manifest_key, expected", [(None, "off"), ("on", "on")])
def test_a_manifest_from_before_swapout_replays_without_it(manifest_key, expected):
    from smp.config import RunConfig, load_kernel, load_machine

    m, k = load_machine("tiny"), load_kernel("default")
    man = {"machine": m.to_dict(), "kernel": k.to_dict(), "overrides": []}
    if manifest_key is None:
        del man["kernel"]["swapout"]
    else:
        man["kernel"]["swapout"] = manifest_key
    assert RunConfig.from_manifest(man, "manifest.json").kernel.swapout == expected


WIRE_TWO = """[run]
machine = "i386mp-4"
[[process]]
name = "big"
program = [ { op = "mmap", region = "r", size = "8M" }, { op = "mlock", region = "r" },
            { op = "sleep", time = "10s" } ]
[[process]]
name = "small"
program = [ { op = "mmap", region = "r", size = "4M" }, { op = "mlock", region = "r" },
            { op = "sleep", time = "10s" } ]
"""


def test_an_mlock_past_wiredmax_wires_nothing_and_a_smaller_one_still_fits(tmp_path):
    """sys_mlock of 1.5 is all or nothing: on 16 MiB (wiredmax 1,365 pages) the 2,048-page
    mlock is refused before it wires a page, so the 1,024-page one wires all of its pages
    (the model used to wire the first until wiredmax and leave the second nothing)."""
    script = tmp_path / "wire-two.toml"
    script.write_text(WIRE_TWO)
    out = tmp_path / "r"
    r = smp("run", str(script), "-o", "physmem=16M", "-o", "ncpu=2", "--lockstep",
            "--time-limit", "1s", "--seed", "0", "-q", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ux = json.loads((out / "summary.json").read_text())["kernel_counters"]["uvmexp"]
    assert ux["wiredmax"] == 1365 and ux["wired"] == 1024
