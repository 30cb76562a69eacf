"""The worked sequences of NETBSD-FACTS §11 (A-D), replayed step by step on cpu0.

"Another CPU drains the free list between the data-page allocation and the PTP
allocation" (§11 B) is injected by wrapping the pmap's uvm_pagealloc: when pmap_enter
asks for a PTP, pages are first taken away, exactly as a second CPU would.
"""

from __future__ import annotations

import pytest
from kernharness import (
    booted,
    drain_before_ptp,
    panics,
    sleeps,
    two_pages_one_ptp,
    wmesg,
)

from smp.kern import pmap, uvm_km, uvm_pdaemon
from smp.kern import uvm as U
from smp.kern.kern_proc import SRUN, SSLEEP
from smp.kern.param import ENOMEM, NBPG
from smp.kern.trap import Killed


def warm_pv(b, i: int = 2) -> None:
    """Make the machine's first pv page (so later page counts are the fault's alone)."""
    va = b.mmap(i, 1)
    assert b.fault(i, va) == 0


def pagedaemon_pass(b) -> None:
    """One pass of uvm_pageout on cpu0 (it ends by sleeping on &uvm.pagedaemon)."""
    b.a["proc"][0]["reg"][0] = 1                       # woken: run a pass
    with b.as_pagedaemon():
        pmap.pmap_activate(pmap.KERNEL_PMAP)
        s = sleeps(uvm_pdaemon.uvm_pageout_step, 0)
    assert wmesg(s) == "pgdaemon"


def test_A_stealing_era_fault_at_free_3_waits_in_noram5_then_succeeds():
    with booted(["steal=ptp,pv"]) as b:
        warm_pv(b)
        va = b.mmap(0, 1024)                           # a fresh 4 MiB region
        tid = b.tid(0)
        # 1. zero-fill: the anon is allocated, the page refused at 3 <= reserve_kernel
        b.free_to(3)
        before = b.counters()
        s = sleeps(b.fault, 0, va)
        assert wmesg(s) == "flt_noram5"
        assert b.delta(before) == {"faults": 1, "fltnoram": 1, "uvm_wait": 1}
        b.sleep_queue(tid, s)                          # what the dispatcher does
        assert int(b.a["proc"][tid]["stat"]) == SSLEEP
        # 2. the pagedaemon frees pages and wakes &uvmexp.free
        b.free_to(20)
        pagedaemon_pass(b)
        assert int(b.a["proc"][tid]["stat"]) == SRUN and b.ci.remrunqueue() == tid
        # 3. ReFault: the data page (20 -> 19), then the PTP (19 -> 18); nothing stolen
        before = b.counters()
        assert b.fault(0, va) == 0
        d = b.delta(before)
        assert d["flt_przero"] == 1 and d["ptp_alloc"] == 1 and "ptp_steals" not in d
        assert b.free() == 18 and b.console() == []
        assert b.check() == []


def test_B1_free_drops_to_1_between_data_page_and_ptp_a_ptp_is_stolen(monkeypatch):
    with booted(["steal=ptp,pv"]) as b:
        vva = b.mmap(1, 4)
        assert b.fault(1, vva) == 0                    # the victim-to-be
        va = b.mmap(0, 4)
        drain_before_ptp(b, monkeypatch)
        before = b.counters()
        assert b.fault(0, va) == 0
        d = b.delta(before)
        assert d["flt_przero"] == 1 and d["ptp_steals"] == 1 and d["ptp_alloc"] == 1
        (line,) = b.console()
        assert line.startswith("pmap_steal_ptp: stole PTP") and \
            f"from pmap 0x{pmap.pmap_addr(b.pm(1)):08x}" in line
        assert b.extract(0, va) >= 0 and b.extract(1, vva) == -1
        assert b.check() == []
        # the victim refaults later: cheap, its page is still resident (case 1A)
        b.free_to(30)
        before = b.counters()
        assert b.fault(1, vva) == 0
        assert b.delta(before)["flt_anon"] == 1 and b.check() == []


def test_B2_nothing_stealable_waits_in_pmfail_or_dies_with_swap_full(monkeypatch):
    with booted(["steal=ptp,pv"]) as b:
        vva = b.mmap(1, 4)
        assert b.fault(1, vva, wire=True) == 0         # a wired PTE: not stealable
        va = b.mmap(0, 4)
        drain_before_ptp(b, monkeypatch)
        before = b.counters()
        s = sleeps(b.fault, 0, va)
        assert wmesg(s) == "flt_pmfail2"               # case 2 (zero-fill)
        d = b.delta(before)
        assert d["ptp_steal_fail"] == 1 and d["pmfail_waits"] == 1 and d["canfail_enomem"] == 1
        assert b.extract(1, vva) >= 0 and b.check() == []
    with booted(["steal=ptp,pv", "swap=0"]) as b:
        vva = b.mmap(1, 4)
        assert b.fault(1, vva, wire=True) == 0
        va = b.mmap(0, 4)
        drain_before_ptp(b, monkeypatch)
        b.console()
        with pytest.raises(Killed):                    # ENOMEM -> trap(): SIGKILL
            b.touch(0, va)
        assert b.console() == ["UVM: pid 100 (proc), uid 0 killed: out of swap"]
        assert b.cnt("ptp_steal_fail") == 1 and b.check() == []


def test_C_no_stealing_era_enomem_pmfail2_then_refault_after_the_pagedaemon(monkeypatch):
    with booted(["steal=none"]) as b:
        warm_pv(b)
        va = b.mmap(0, 4)
        tid = b.tid(0)
        drain_before_ptp(b, monkeypatch)
        before = b.counters()
        s = sleeps(b.fault, 0, va)
        assert wmesg(s) == "flt_pmfail2"
        d = b.delta(before)
        assert d["canfail_enomem"] == 1 and d["flt_pmfail2"] == 1 and "ptp_steals" not in d
        anonpages = int(b.ux[U.ANONPAGES])
        b.sleep_queue(tid, s)
        monkeypatch.undo()
        b.free_to(20)
        pagedaemon_pass(b)                             # wakeup(&uvmexp.free)
        assert b.ci.remrunqueue() == tid
        before = b.counters()
        assert b.fault(0, va) == 0                     # the anon stayed in the amap: case 1A
        d = b.delta(before)
        assert d["flt_anon"] == 1 and d["ptp_alloc"] == 1 and "flt_przero" not in d
        assert int(b.ux[U.ANONPAGES]) == anonpages and b.free() == 19
        assert b.console() == [] and b.check() == []


def test_D_kernel_path_km_alloc1_waits_at_free_1():
    with booted(["steal=none"]) as b:
        b.switch_to(0)
        b.free_to(1)
        before = b.counters()
        kva = int(b.a["kva_used"].sum())
        s = sleeps(uvm_km.uvm_km_alloc1, uvm_km.KERNEL_MAP, 1)
        assert wmesg(s) == "km_alloc1w"
        assert b.delta(before) == {"km_allocs": 1, "km_waits": 1}
        assert int(b.a["kva_used"].sum()) == kva and b.check() == []   # VA given back


@pytest.mark.parametrize("steal", ["ptp,pv", "pv"])
def test_D_kernel_path_91_lineage_steals_a_user_pv_entry(steal):
    with booted([f"steal={steal}"]) as b:
        vva = b.mmap(1, 4)
        assert b.fault(1, vva) == 0
        b.switch_to(0)
        b.free_to(1)
        held = b.hold_pv_entries()
        b.free_to(2)
        b.console()
        before = b.counters()
        kva = uvm_km.uvm_km_alloc1(uvm_km.KERNEL_MAP, 1)
        assert kva > 0 and pmap.pmap_extract(pmap.KERNEL_PMAP, kva) >= 0
        d = b.delta(before)
        assert d["pv_steals"] == 1 and d["pvpage_fail"] == 1 and "noncanfail_panics" not in d
        (line,) = b.console()
        assert line.startswith(f"pmap_try_steal_pv: stole pv entry: pmap "
                               f"0x{pmap.pmap_addr(b.pm(1)):08x} va 0x{vva:08x}")
        assert b.extract(1, vva) == -1
        b.release_pv_entries(held)
        assert b.check() == []


@pytest.mark.parametrize("steal,wired", [("none", False), ("ptp,pv", True)])
def test_D_kernel_path_panics_no_pv_entries_available(steal, wired):
    """1.135 (no pv stealing), or 1.91 with every user mapping wired: Cranor's panic."""
    with booted([f"steal={steal}"]) as b:
        vva = b.mmap(1, 4)
        assert b.fault(1, vva, wire=wired) == 0
        b.switch_to(0)
        b.free_to(1)
        b.hold_pv_entries()
        b.free_to(2)
        b.console()
        msg = panics(uvm_km.uvm_km_alloc1, uvm_km.KERNEL_MAP, 1)
        assert msg == "pmap_enter: no pv entries available"
        assert b.console() == ["panic: pmap_enter: no pv entries available"]
        assert b.cnt("noncanfail_panics") == 1
        assert b.cnt("pv_steal_fail") == (1 if "pv" in steal else 0)
        assert b.extract(1, vva) >= 0
        r = b.check_after()                            # the machine stopped mid-operation
        assert "cpu0 panicked" in r.reason and r.skipped
        assert [v for v in r if not v.startswith("pv leak")] == []


def test_D_user_pv_failure_with_canfail_is_enomem_with_counts_undone():
    with booted(["steal=none"]) as b:
        tva, pg = two_pages_one_ptp(b)
        resident = int(b.a["pm_resident"][b.pm(0)])
        b.free_to(1)
        held = b.hold_pv_entries()
        b.switch_to(0)
        s = sleeps(b.fault, 0, tva)                    # uvm_fault: case 1A pmfail
        assert wmesg(s) == "flt_pmfail1"
        assert int(b.a["pm_resident"][b.pm(0)]) == resident
        b.release_pv_entries(held)
        assert b.check() == []
        b.free_to(10)
        assert b.fault(0, tva) == 0 and b.extract(0, tva) == pg
        assert b.extract(0, tva - NBPG) >= 0 and b.check() == []


def test_enomem_is_returned_not_slept_when_swap_is_full_even_for_pmfail():
    with booted(["steal=none", "swap=0"]) as b:
        tva, _ = two_pages_one_ptp(b)
        b.free_to(1)
        held = b.hold_pv_entries()
        b.switch_to(0)
        assert b.fault(0, tva) == ENOMEM and b.held() == 0
        b.release_pv_entries(held)
        assert b.check() == []
