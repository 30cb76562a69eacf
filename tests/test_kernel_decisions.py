"""The decision points of NETBSD-FACTS §9, one at a time, on a machine booted in-process.

Each test sets up the exact memory situation (really taking pages off the free list),
runs the kernel function under test on cpu0 and checks the outcome, the counters, the
console and the DIAGNOSTIC invariants.  Process 0..2 are the load's processes; the
pmaps list is [pm3, pm2, pm1] (LIST_INSERT_HEAD), which is the order pmap_steal_ptp's
hand visits them.
"""

from __future__ import annotations

import pytest
from kernharness import (
    RW,
    booted,
    drain_before_ptp,
    panics,
    sleeps,
    stealable_setup,
    two_pages_one_ptp,
    wmesg,
)

from smp.kern import pmap, subr_prf, uvm_km
from smp.kern import uvm as U
from smp.kern.param import ENOMEM, NBPD, NBPG, PG_M, PMAP_CANFAIL
from smp.kern.uvm_page import (
    OWN_ANON,
    OWN_PTP,
    UVM_PGA_USERESERVE,
    UVM_PGA_ZERO,
    uvm_pagealloc,
    uvm_pagefree,
)

# --- §9.1 the data page: reserve_kernel ------------------------------------------------------

def try_alloc(owner: int, flags: int) -> bool:
    pg = uvm_pagealloc(owner, -1 if owner == OWN_ANON else 0, 0, -1, flags)
    if pg < 0:
        return False
    uvm_pagefree(pg)
    return True


def test_user_data_pages_stop_at_reserve_kernel_ptps_at_reserve_pagedaemon():
    with booted() as b:
        b.switch_to(0)
        b.free_to(6)
        assert try_alloc(OWN_ANON, 0)                       # 6 > 5
        b.free_to(5)
        assert not try_alloc(OWN_ANON, 0)                   # free <= reserve_kernel
        for n in (5, 4, 3, 2):                              # USERESERVE: down to 2
            b.free_to(n)
            assert try_alloc(OWN_PTP, UVM_PGA_USERESERVE | UVM_PGA_ZERO), n
        b.free_to(1)
        assert not try_alloc(OWN_PTP, UVM_PGA_USERESERVE | UVM_PGA_ZERO)
        with b.as_pagedaemon():                             # only it takes the last page
            assert try_alloc(OWN_PTP, UVM_PGA_USERESERVE)
        assert b.check() == []


def test_zero_fill_fault_sleeps_flt_noram5_at_reserve_kernel():
    with booted() as b:
        va = b.mmap(0, 8)
        b.free_to(5)
        nfree_anon = int(b.ux[U.NFREEANON])
        before = b.counters()
        s = sleeps(b.fault, 0, va)
        assert s.wmesg == subr_prf.intern("flt_noram5") and s.chan == U.CHAN_FREE
        assert b.held() == 0                                # unlocked before uvm_wait
        d = b.delta(before)
        assert d["fltnoram"] == 1 and d["uvm_wait"] == 1 and d["faults"] == 1
        assert "pmfail_waits" not in d
        assert int(b.ux[U.NFREEANON]) == nfree_anon         # the new anon was given back
        assert b.free() == 5 and b.extract(0, va) == -1
        assert b.check() == []
        # one page more: the data page takes 6 -> 5, the PTP (USERESERVE) 5 -> 4 and the
        # machine's first pv page (kernel reserve, needs 2) 4 -> 3
        b.free_to(6)
        before = b.counters()
        assert b.fault(0, va) == 0
        d = b.delta(before)
        assert d["ptp_alloc"] == 1 and d["pvpage_alloc"] == 1 and d["flt_przero"] == 1
        assert b.free() == 3 and b.extract(0, va) >= 0
        assert b.check() == []


def test_fault_with_swap_full_is_enomem_and_trap_kills():
    with booted(["swap=0"]) as b:                           # swpgonly == swpages: full
        va = b.mmap(0, 8)
        b.free_to(5)
        before = b.counters()
        assert b.fault(0, va) == ENOMEM
        assert b.delta(before)["fltnoanon"] == 1 and b.held() == 0
        from smp.kern.trap import Killed
        with pytest.raises(Killed) as ei:
            b.touch(0, va + NBPG)
        assert ei.value.sig == 9
        assert b.console() == ["UVM: pid 100 (proc), uid 0 killed: out of swap"]
        assert b.cnt("oom_kills") == 1
        assert b.check() == []


# --- §9.2 the PTP: reserve_pagedaemon, stealing, CANFAIL ---------------------------------------

def test_ptp_steal_takes_a_victims_ptp_and_leaves_it_consistent():
    with booted(["steal=ptp"]) as b:
        vas, tva = stealable_setup(b)
        victim, thief = b.pm(0), b.pm(1)
        vpg = b.extract(0, vas[0])
        ptp = int(b.a["pm_memq_head"][victim])
        b.free_to(1)                                        # PTPs refused: free <= 1
        before = b.counters()
        assert b.fault(1, tva) == 0
        d = b.delta(before)
        assert d["ptp_steals"] == 1 and d["flt_anon"] == 1 and "fltnoram" not in d
        assert b.free() == 1                                 # no page was allocated
        (line,) = b.console()
        assert line == (f"pmap_steal_ptp: stole PTP pa 0x{ptp << 12:08x} (va 0x{vas[0]:08x}) "
                        f"from pmap 0x{pmap.pmap_addr(victim):08x} for pmap "
                        f"0x{pmap.pmap_addr(thief):08x} va 0x{tva & ~(NBPD - 1):08x} on cpu0")
        # the victim lost its mapping, not its page; its statistics say so
        assert b.extract(0, vas[0]) == -1 and b.anon_page(0, vas[0]) == vpg
        assert int(b.a["pm_resident"][victim]) == 1 and int(b.a["pm_npages"][victim]) == 0
        # the PTP moved: the thief's object, at its PDE index
        assert int(b.a["pg_obj"][ptp]) == thief and int(b.a["pg_off"][ptp]) == tva >> 22
        assert int(b.a["pm_memq_head"][thief]) == ptp and b.extract(1, tva) >= 0
        assert b.check() == []
        # the victim refaults cheaply later: its page is still resident (case 1A)
        b.free_to(20)
        before = b.counters()
        assert b.fault(0, vas[0]) == 0
        d = b.delta(before)
        assert d["flt_anon"] == 1 and d["ptp_alloc"] == 1 and "flt_przero" not in d
        assert b.free() == 19 and b.check() == []


def test_ptp_steal_skips_ptps_with_wired_ptes():
    with booted(["steal=ptp"]) as b:
        # proc 2 (pm3) is first under the hand but wired; proc 1 (pm2) is the victim
        vas, tva = stealable_setup(b, thief=0, victims=(2, 1), wire=(2,))
        b.free_to(1)
        assert b.fault(0, tva) == 0
        (line,) = b.console()
        assert f"from pmap 0x{pmap.pmap_addr(b.pm(1)):08x}" in line
        assert b.extract(2, vas[2]) >= 0 and b.extract(1, vas[1]) == -1
        assert b.check() == []


def test_ptp_steal_fails_when_every_ptp_is_wired_then_canfail_and_pmfail1():
    with booted(["steal=ptp"]) as b:
        vas, tva = stealable_setup(b, thief=0, victims=(1, 2), wire=(1, 2))
        b.free_to(1)
        before = b.counters()
        pg = b.anon_page(0, tva)
        assert pmap.pmap_enter(b.pm(0), tva, pg, RW, RW | PMAP_CANFAIL) == ENOMEM
        d = b.delta(before)
        assert d["ptp_steal_fail"] == 1 and d["canfail_enomem"] == 1
        assert b.held() == 0 and b.console() == []
        s = sleeps(b.fault, 0, tva)                         # uvm_fault: wait and ReFault
        assert wmesg(s) == "flt_pmfail1"
        d = b.delta(before)
        assert d["pmfail_waits"] == 1 and d["flt_pmfail1"] == 1 and d["ptp_steal_fail"] == 2
        assert b.check() == []


def test_no_stealing_canfail_returns_enomem_and_plain_pmap_enter_panics():
    with booted(["steal=none"]) as b:
        _, tva = stealable_setup(b)
        pg = b.anon_page(1, tva)
        b.free_to(1)
        before = b.counters()
        assert pmap.pmap_enter(b.pm(1), tva, pg, RW, RW | PMAP_CANFAIL) == ENOMEM
        assert b.delta(before) == {"canfail_enomem": 1, "pmap_enter": 1}
        assert b.held() == 0 and b.check() == []
        msg = panics(pmap.pmap_enter, b.pm(1), tva, pg, RW, RW)
        assert msg == "pmap_enter: get ptp failed"
        assert b.cnt("noncanfail_panics") == 1
        assert b.console() == ["panic: pmap_enter: get ptp failed"]
        r = b.check_after()
        assert list(r) == [] and "panicked" in r.reason and r.skipped


def test_pmfail1_sleep_for_an_anon_page_and_enomem_when_swap_is_full():
    with booted(["steal=none"]) as b:
        _, tva = stealable_setup(b)
        b.free_to(1)
        before = b.counters()
        s = sleeps(b.fault, 1, tva)
        assert wmesg(s) == "flt_pmfail1"
        d = b.delta(before)
        assert d["pmfail_waits"] == 1 and d["flt_pmfail1"] == 1 and d["canfail_enomem"] == 1
        assert b.check() == []
    with booted(["steal=none", "swap=0"]) as b:
        _, tva = stealable_setup(b)
        b.free_to(1)
        before = b.counters()
        assert b.fault(1, tva) == ENOMEM                    # swap full: no point waiting
        assert "pmfail_waits" not in b.delta(before) and b.held() == 0
        assert b.check() == []



def test_pmfail2_sleep_for_a_zero_fill_page(monkeypatch):
    with booted(["steal=none"]) as b:
        va = b.mmap(0, 4)
        drain_before_ptp(b, monkeypatch)
        before = b.counters()
        s = sleeps(b.fault, 0, va)
        assert wmesg(s) == "flt_pmfail2"
        d = b.delta(before)
        assert d["pmfail_waits"] == 1 and d["flt_pmfail2"] == 1 and d["flt_przero"] == 1
        assert d["canfail_enomem"] == 1 and "fltnoram" not in d
        assert b.anon_page(0, va) >= 0 and b.extract(0, va) == -1     # amap_add stays
        assert b.check() == []


# --- §9.3 pv entries --------------------------------------------------------------------------


def test_pv_entries_come_from_the_free_list_then_an_unused_page_then_a_new_page():
    with booted(["steal=none"]) as b:
        g = b.a["pmap_glob"]
        va = b.mmap(0, 4)
        before = b.counters()
        assert b.fault(0, va) == 0                          # first pv page of the machine
        assert b.delta(before)["pvpage_alloc"] == 1
        assert int(g[pmap.G_NFPVENTS]) == pmap.PVE_PER_PVPAGE - 1
        before = b.counters()
        assert b.fault(0, va + NBPG) == 0                   # a free entry
        assert "pvpage_alloc" not in b.delta(before)
        assert int(g[pmap.G_NFPVENTS]) == pmap.PVE_PER_PVPAGE - 2
        # free both: the page is entirely free -> pv_unusedpgs, pv_freepages empty
        b.unmap_keep_pages(0, va, 2)
        assert int(g[pmap.G_PVFREE]) == -1 and int(g[pmap.G_PVUNUSED]) >= 0
        before = b.counters()
        assert b.fault(0, va) == 0                          # the unused page, reused
        assert "pvpage_alloc" not in b.delta(before) and int(g[pmap.G_PVUNUSED]) == -1
        assert b.check() == []


def test_new_pv_page_needs_two_free_pages():
    with booted(["steal=none"]) as b:
        tva, pg = two_pages_one_ptp(b)
        b.free_to(1)
        held = b.hold_pv_entries()                          # no free pv entry anywhere
        assert held and int(b.a["pmap_glob"][pmap.G_NFPVENTS]) == 0
        before = b.counters()
        assert pmap.pmap_enter(b.pm(0), tva, pg, RW, RW | PMAP_CANFAIL) == ENOMEM
        d = b.delta(before)
        assert d["pvpage_fail"] == 1 and d["canfail_enomem"] == 1 and b.held() == 0
        b.release_pv_entries(held)
        assert b.check() == []                              # the failed enter undid its counts
        held = b.hold_pv_entries()
        b.free_to(2)
        b.switch_to(0)
        before = b.counters()
        assert pmap.pmap_enter(b.pm(0), tva, pg, RW, RW | PMAP_CANFAIL) == 0
        assert b.delta(before)["pvpage_alloc"] == 1 and b.free() == 1
        b.release_pv_entries(held)
        assert b.check() == []


@pytest.mark.parametrize("keep_attrs", [False, True])
def test_pv_steal_takes_an_unwired_user_mapping(keep_attrs):
    with booted(["steal=pv", f"pv_steal_attrs={'on' if keep_attrs else 'off'}"]) as b:
        tva, pg = two_pages_one_ptp(b, 0)
        vva = b.mmap(1, 4)
        b.touch(1, vva, write=True)                         # the MMU sets PG_M
        vpg = b.extract(1, vva)
        victim = b.pm(1)
        b.free_to(1)
        held = b.hold_pv_entries()
        b.switch_to(0)
        before = b.counters()
        assert pmap.pmap_enter(b.pm(0), tva, pg, RW, RW | PMAP_CANFAIL) == 0
        d = b.delta(before)
        assert d["pv_steals"] == 1 and d["pvpage_fail"] == 1 and "canfail_enomem" not in d
        assert b.console() == [
            f"pmap_try_steal_pv: stole pv entry: pmap 0x{pmap.pmap_addr(victim):08x} va "
            f"0x{vva:08x} (pa 0x{vpg << 12:08x}) for pmap 0x{pmap.pmap_addr(b.pm(0)):08x}"]
        assert b.extract(1, vva) == -1 and b.extract(0, tva) == pg
        # the victim's PTP keeps wire_count 1 and stays (§2.4 step 4)
        assert int(b.a["pm_npages"][victim]) == 1 and int(b.a["pm_resident"][victim]) == 2
        # the dirty bit: dropped by the 1.91 code, kept with pv_steal_attrs
        assert bool(b.a["pvh_attrs"][vpg] & PG_M) == keep_attrs
        b.release_pv_entries(held)
        assert b.check() == []


def test_kernel_pmap_enter_without_pv_entry_panics_without_pv_stealing():
    """Cranor's case (§5.6, §11 D): uvm_km_alloc1 passes no PMAP_CANFAIL."""
    with booted(["steal=none"]) as b:
        two_pages_one_ptp(b)
        b.free_to(1)
        b.hold_pv_entries()
        b.free_to(2)                                       # uvm_km_alloc1 gets its page
        before = b.counters()
        msg = panics(uvm_km.uvm_km_alloc1, 1)
        assert msg == "pmap_enter: no pv entries available"
        d = b.delta(before)
        assert d["noncanfail_panics"] == 1 and d["pvpage_fail"] == 1
        assert b.console() == ["panic: pmap_enter: no pv entries available"]


# --- §9.4 neighbours -------------------------------------------------------------------------

@pytest.mark.parametrize("steal", ["none", "ptp"])
def test_neighbour_mappings_are_canfail_and_their_failure_is_ignored(steal):
    with booted([f"steal={steal}"]) as b:
        va0 = b.mmap(0, 2048, align=NBPD)                  # 8 MiB: two PTPs
        centre = va0 + 1023 * NBPG                         # last page of the first 4 MiB
        for v in range(centre - NBPG, centre + 5 * NBPG, NBPG):
            assert b.fault(0, v) == 0
        b.unmap_keep_pages(0, centre, 5)                   # centre + 4 in the second PTP
        assert b.a["pm_npages"][b.pm(0)] == 1              # the second PTP went away
        if steal == "ptp":
            vva = b.mmap(1, 4)
            assert b.fault(1, vva) == 0                    # something to steal
        b.free_to(1)
        before = b.counters()
        assert b.fault(0, centre, write=False) == 0        # centre: case 1A, PTP exists
        d = b.delta(before)
        assert d["fltnamap"] == 4 and "pmfail_waits" not in d
        if steal == "none":                                # all four failed, silently
            assert d["canfail_enomem"] == 4
            assert all(b.extract(0, centre + k * NBPG) == -1 for k in range(1, 5))
        else:                                              # the first one stole a PTP
            assert d["ptp_steals"] == 1 and "canfail_enomem" not in d
            assert all(b.extract(0, centre + k * NBPG) >= 0 for k in range(1, 5))
        assert b.extract(0, centre) >= 0
        assert b.check() == []


def test_write_fault_through_the_mmu_sets_pg_m():
    with booted() as b:
        va = b.mmap(0, 2)
        b.touch(0, va, write=True)
        pte_idx = (b.a["pm_memq_head"][b.pm(0)] << 10) + ((va >> 12) & 0x3FF)
        assert b.a["physmem"][pte_idx] & PG_M
        assert b.fault(0, va, write=True) == 0              # re-entering is harmless
        assert b.check() == []
