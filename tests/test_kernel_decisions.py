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

from smp.kern import (
    intr,
    kern_exec,
    kern_physio,
    kern_synch,
    lock,
    pmap,
    subr_prf,
    uvm_anon,
    uvm_km,
    uvm_map,
    uvm_page,
    uvm_pdaemon,
)
from smp.kern import uvm as U
from smp.kern.kern_proc import SIDL, SRUN
from smp.kern.kernel import SLEEPING
from smp.kern.param import (
    EAGAIN,
    ENOMEM,
    NBPD,
    NBPG,
    PDSLOT_KERN,
    PG_BUSY,
    PG_CLEAN,
    PG_M,
    PG_RELEASED,
    PG_V,
    PG_WANTED,
    PMAP_CANFAIL,
    UPAGES,
)
from smp.kern.uvm_page import (
    OWN_ANON,
    OWN_PTP,
    PQ_INACTIVE,
    Q_INACTIVE,
    UVM_PGA_USERESERVE,
    UVM_PGA_ZERO,
    uvm_pagealloc,
    uvm_pagefree,
)
from smp.workload.interp import Interrupt

# --- §9.1 the data page: reserve_kernel ------------------------------------------------------

def try_alloc(owner: int, flags: int) -> bool:
    pg = uvm_pagealloc(owner, -1 if owner == OWN_ANON else 0, 0, -1, flags)
    if pg < 0:
        return False
    lock.simple_lock(uvm_page.pageq_lock)          # (uvm_pagefree's caller holds them)
    uvm_pagefree(pg)
    lock.simple_unlock(uvm_page.pageq_lock)
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
        # one page more: the data page takes 6 -> 5, the PTP (USERESERVE) 5 -> 4; the pv
        # entry comes from pv_initpage, the page pmap_init set aside at boot
        b.free_to(6)
        before = b.counters()
        assert b.fault(0, va) == 0
        d = b.delta(before)
        assert d["ptp_alloc"] == 1 and "pvpage_alloc" not in d and d["flt_przero"] == 1
        assert b.free() == 4 and b.extract(0, va) >= 0
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
        d = b.delta(before, times=True)
        assert d["ptp_steals"] == 1 and d["flt_anon"] == 1 and "fltnoram" not in d
        # issue 11: the steal's time is counted, and it is part of pmap_enter's
        assert 0 < d["steal_ns"] < d["pmap_enter_ns"]
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


def test_only_a_wiring_fault_wires_the_page():
    """1.5 wires a page only on VM_FAULT_WIRE; a plain fault in a wired entry whose
    mapping went away (as pmap_collect's would) enters it wired again and leaves the
    page's wire count alone -- it does not wire the page a second time."""
    with booted() as b:
        va = b.mmap(0, 2)
        tid = b.tid(0)
        for k in range(2):
            assert b.fault(0, va + k * NBPG, wire=True) == 0    # mlock's uvm_fault_wire
        assert uvm_map.set_wired(tid, va, True) == 0            # then the entry is wired
        pg = b.anon_page(0, va)
        assert int(b.a["pg_wire"][pg]) == 1 and pmap.pmap_is_wired(b.pm(0), va)
        assert b.fault(0, va, wire=True) == 0                   # mlock again: still once
        assert int(b.a["pg_wire"][pg]) == 1
        b.unmap_keep_pages(0, va)
        assert b.extract(0, va) == -1
        assert b.fault(0, va, write=False) == 0                 # a plain fault
        assert b.extract(0, va) == pg and pmap.pmap_is_wired(b.pm(0), va)
        assert int(b.a["pg_wire"][pg]) == 1
        assert b.a["pg_pq"][pg] == uvm_page.PQ_NONE             # wired: on no queue
        assert uvm_map.set_wired(tid, va, False) == 0           # munlock unwires once
        assert int(b.a["pg_wire"][pg]) == 0
        assert b.check() == []


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
        assert int(g[pmap.G_PVUNUSED]) == int(g[pmap.G_PVINITPAGE]) == 0   # pmap_init's
        assert b.fault(0, va) == 0                          # pv_initpage, unused till now
        assert "pvpage_alloc" not in b.delta(before)
        assert int(g[pmap.G_PVFREE]) == 0 and int(g[pmap.G_PVUNUSED]) == -1
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
        msg = panics(uvm_km.uvm_km_alloc1, uvm_km.KERNEL_MAP, 1)
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


def test_the_lookahead_asks_pmap_extract_first_and_reactivates_what_it_maps(monkeypatch):
    """1.5's loop: every neighbour is asked about with pmap_extract (the pmap's lock) and a
    mapped one is left alone -- its anon's lock is not taken; an unmapped neighbour with a
    resident anon page is reactivated under the page queues' lock and entered."""
    with booted() as b:
        va = b.mmap(0, 16)
        for k in range(5):
            assert b.fault(0, va + k * NBPG) == 0
        b.unmap_keep_pages(0, va + NBPG)
        b.unmap_keep_pages(0, va + 3 * NBPG)
        pg1 = b.anon_page(0, va + NBPG)
        lock.simple_lock(uvm_page.pageq_lock)
        uvm_page.uvm_pagedeactivate(pg1)
        lock.simple_unlock(uvm_page.pageq_lock)
        assert b.a["pg_pq"][pg1] == uvm_page.PQ_INACTIVE
        taken: list[int] = []
        real = lock.simple_lock
        monkeypatch.setattr(lock, "simple_lock", lambda lk: (taken.append(lk), real(lk)))
        before = b.counters()
        assert b.fault(0, va + 2 * NBPG, write=False) == 0     # centre: mapped already
        monkeypatch.undo()
        assert b.delta(before)["fltnamap"] == 2
        assert b.extract(0, va + NBPG) == pg1 and b.extract(0, va + 3 * NBPG) >= 0
        assert b.a["pg_pq"][pg1] == uvm_page.PQ_ACTIVE
        an_locks = [lk for lk in taken if uvm_anon.an_lock <= lk < uvm_anon.an_lock +
                    len(b.a["an_page"])]
        # the two remapped neighbours' anons and the centre's (case 1): not pages 0 and 4
        assert len(an_locks) == 3
        assert taken.count(uvm_page.pageq_lock) == 3           # two reactivations + case 1
        assert b.check() == []


def test_write_fault_through_the_mmu_sets_pg_m():
    with booted() as b:
        va = b.mmap(0, 2)
        b.touch(0, va, write=True)
        pte_idx = (b.a["pm_memq_head"][b.pm(0)] << 10) + ((va >> 12) & 0x3FF)
        assert b.a["physmem"][pte_idx] & PG_M
        assert b.fault(0, va, write=True) == 0              # re-entering is harmless
        assert b.check() == []


@pytest.mark.parametrize("advice", ["normal", "sequential"])
def test_sequential_advice_deactivates_the_pages_behind_instead_of_mapping_them(advice):
    """1.5's MADV_SEQUENTIAL: the fault flushes (unmaps and deactivates) the anons of
    the 8 pages behind it and maps only the pages ahead; MADV_NORMAL keeps its
    neighbours mapped and active."""
    with booted() as b:
        tid = b.tid(0)
        va = uvm_map.uvm_mmap(tid, 32, RW, uvm_map.EF_COPY, advice=uvm_map.ADVICE[advice])
        for k in range(16):
            assert b.fault(0, va + k * NBPG) == 0
        pages = [b.anon_page(0, va + k * NBPG) for k in range(16)]
        mapped = [b.extract(0, va + k * NBPG) >= 0 for k in range(16)]
        queues = [int(b.a["pg_pq"][pg]) for pg in pages]
        if advice == "sequential":
            assert mapped == [False] * 15 + [True]
            assert queues == [uvm_page.PQ_INACTIVE] * 15 + [uvm_page.PQ_ACTIVE]
        else:
            assert all(mapped) and set(queues) == {uvm_page.PQ_ACTIVE}
        assert b.check() == []


def test_sequential_advice_deactivates_the_object_pages_behind_a_file_fault():
    """The object's back pages too (pgo_flush(..., PGO_DEACTIVATE)): a private file
    mapping read sequentially leaves only the last page mapped and active."""
    with booted(files=[32]) as b:
        tid = b.tid(0)
        va = uvm_map.uvm_mmap(tid, 16, RW, uvm_map.EF_FILE | uvm_map.EF_COPY, uobj=0,
                              advice=uvm_map.ADVICE["sequential"])
        for k in range(16):
            assert b.fault(0, va + k * NBPG, write=False) == 0
        fbase = int(b.a["file_base"][0])
        pages = [int(b.a["file_page"][fbase + k]) for k in range(16)]
        assert min(pages) >= 0
        assert [b.extract(0, va + k * NBPG) >= 0 for k in range(16)] == [False] * 15 + [True]
        assert [int(b.a["pg_pq"][pg]) for pg in pages] == \
            [uvm_page.PQ_INACTIVE] * 15 + [uvm_page.PQ_ACTIVE]
        assert b.check() == []


def test_sequential_advice_on_a_shared_file_mapping_without_an_amap():
    """A shared file mapping has no amap: MADV_SEQUENTIAL flushes only the object's back
    pages, and the pages ahead that are resident are mapped by the object layer."""
    with booted(files=[32]) as b:
        tid = b.tid(0)
        va = uvm_map.uvm_mmap(tid, 16, 1, uvm_map.EF_FILE | uvm_map.EF_SHARED, uobj=0,
                              advice=uvm_map.ADVICE["sequential"])
        assert va > 0
        for k in range(16):
            assert b.fault(0, va + k * NBPG, write=False) == 0
        assert [b.extract(0, va + k * NBPG) >= 0 for k in range(16)] == [False] * 15 + [True]
        b.unmap_keep_pages(0, va + 15 * NBPG)
        before = b.counters()
        assert b.fault(0, va, write=False) == 0          # the first page: 7 ahead resident
        assert b.delta(before)["fltnomap"] == 7
        assert b.check() == []


def _file_va(b, i: int, npages: int, flags: int) -> int:
    prot = RW if flags & uvm_map.EF_COPY else 1                     # VM_PROT_READ
    va = uvm_map.uvm_mmap(b.tid(i), npages, prot, uvm_map.EF_FILE | flags, uobj=0)
    assert va > 0
    return va


def test_a_file_fault_maps_the_objects_resident_neighbours():
    """1.5's object layer: the locked pgo_get (fltlget, every unshadowed file fault) hands
    over the resident pages that are not busy; the unmapped neighbours among them are
    reactivated and entered (fltnomap); a neighbour not resident, or busy, is left."""
    with booted(files=[32]) as b:
        shared_ro = uvm_map.EF_SHARED
        va0 = _file_va(b, 0, 16, shared_ro)
        for k in (2, 3, 5, 6):                          # read in by process 0
            assert b.fault(0, va0 + k * NBPG, write=False) == 0
        fbase = int(b.a["file_base"][0])
        page = [int(b.a["file_page"][fbase + k]) for k in range(16)]
        assert [k for k in range(16) if page[k] >= 0] == [2, 3, 5, 6]
        b.a["pg_flags"][page[6]] |= PG_BUSY             # its pageout in flight
        lock.simple_lock(uvm_page.pageq_lock)
        uvm_page.uvm_pagedeactivate(page[3])
        lock.simple_unlock(uvm_page.pageq_lock)
        va1 = _file_va(b, 1, 16, shared_ro)             # no amap: a shared mapping
        before = b.counters()
        assert b.fault(1, va1 + 4 * NBPG, write=False) == 0   # range 1..8, centre 4
        d = b.delta(before)
        assert d["fltlget"] == 1 and d["fltget"] == 1 and d["fltnomap"] == 3
        assert d["flt_obj"] == 1 and "fltnamap" not in d
        mapped = {k for k in range(16) if b.extract(1, va1 + k * NBPG) >= 0}
        assert mapped == {2, 3, 4, 5}                   # not 6 (busy), nor 1, 7, 8
        assert b.extract(1, va1 + 3 * NBPG) == page[3]
        assert b.a["pg_pq"][page[3]] == uvm_page.PQ_ACTIVE    # reactivated
        b.a["pg_flags"][page[6]] &= ~PG_BUSY
        before = b.counters()
        assert b.fault(1, va1 + 4 * NBPG, write=False) == 0   # mapped: all resident now
        d = b.delta(before)
        assert d["fltlget"] == 1 and "fltget" not in d and d["fltnomap"] == 1    # page 6
        assert b.check() == []


def test_a_private_file_mappings_neighbours_are_entered_read_only():
    """enter_prot & MASK(entry): in a copy-on-write mapping the object's pages go in
    read-only, so a write to a neighbour still faults and promotes it into an anon."""
    with booted(files=[32]) as b:
        va0 = _file_va(b, 0, 8, uvm_map.EF_SHARED)
        for k in range(8):
            assert b.fault(0, va0 + k * NBPG, write=False) == 0
        va1 = _file_va(b, 1, 8, uvm_map.EF_COPY)
        before = b.counters()
        assert b.fault(1, va1 + 2 * NBPG, write=False) == 0
        assert b.delta(before)["fltnomap"] == 6         # 0, 1 and 3-6 (nforw 4)
        fbase = int(b.a["file_base"][0])
        assert b.extract(1, va1 + 5 * NBPG) == int(b.a["file_page"][fbase + 5])
        before = b.counters()
        b.touch(1, va1 + 5 * NBPG, write=True)          # through the MMU: read-only PTE
        d = b.delta(before)
        assert d["faults"] == 1 and d["flt_prcopy"] == 1
        assert b.anon_page(1, va1 + 5 * NBPG) == b.extract(1, va1 + 5 * NBPG)
        assert b.check() == []


def test_a_shadowed_file_fault_skips_the_object_layer():
    """A page that has an anon (written once in a private mapping) faults through the
    anon layer: no locked pgo_get, and the object's pages around it stay unmapped."""
    with booted(files=[32]) as b:
        va0 = _file_va(b, 0, 8, uvm_map.EF_SHARED)
        for k in range(8):
            assert b.fault(0, va0 + k * NBPG, write=False) == 0
        va1 = _file_va(b, 1, 8, uvm_map.EF_COPY)
        assert b.fault(1, va1 + 2 * NBPG, write=True) == 0     # promoted: an anon at 2
        b.unmap_keep_pages(1, va1, 8)
        before = b.counters()
        assert b.fault(1, va1 + 2 * NBPG, write=False) == 0    # case 1 now
        d = b.delta(before)
        assert d["flt_anon"] == 1 and "fltlget" not in d and "fltnomap" not in d
        assert [k for k in range(8) if b.extract(1, va1 + k * NBPG) >= 0] == [2]
        assert b.check() == []


def test_the_lookahead_scan_in_one_call_finds_what_the_pmap_extract_loop_finds():
    """pmap_scan_current (the current pmap, one call into the atomic core) and the loop
    of pmap_extract calls used for any other pmap stop at the same neighbours, with
    amap slots or without (a file mapping's lookahead)."""
    from smp.kern import uvm_fault as F

    with booted() as b:
        va = b.mmap(0, 16)
        for k in (0, 1, 2, 4, 6, 7, 9):
            assert b.fault(0, va + k * NBPG) == 0
        b.unmap_keep_pages(0, va + 2 * NBPG)
        b.unmap_keep_pages(0, va + 7 * NBPG)
        tid = b.switch_to(0)
        lock.simple_lock(uvm_map.vm_map_lock + tid)
        ent = uvm_map.uvm_map_lookup(tid, va)
        lock.simple_unlock(uvm_map.vm_map_lock + tid)
        slot = uvm_map.entry(tid, ent)[4]
        pm = b.pm(0)
        for skip in (-1, 2, 5):
            for i in range(12):
                c = pmap.pmap_scan_current(pm, va + i * NBPG, 12 - i, skip - i, F._amap_off,
                                           slot + i)
                assert c >= 0
                assert i + c == F._extract_loop(pm, va, 12, skip, slot, i), (skip, i)
                c = pmap.pmap_scan_current(pm, va + i * NBPG, 12 - i, skip - i, -1, 0)
                assert i + c == F._extract_loop(pm, va, 12, skip, -1, i), (skip, i)
        assert F._extract_loop(pm, va, 12, -1, slot, 0) == 2
        assert F._extract_loop(pm, va, 12, 2, slot, 0) == 7
        assert F._extract_loop(pm, va, 12, 2, -1, 0) == 3      # any unmapped page: 3
        b.switch_to(1)                                       # pm is not current now
        assert pmap.pmap_scan_current(pm, va, 12, -1, F._amap_off, slot) == -1
        assert b.check() == []


# --- issue 10: kernel_map growth, the pv allocator as 1.91, UBC windows -----------------------

def grow_one_ptp(b) -> int:
    """kernel_map pages up to one past the kernel PTPs grown at boot; returns the count."""
    g = b.a["kva_glob"]
    covered = int(g[uvm_km.KV_MAXKADDR])
    hint = int(b.a["kmap"][uvm_km.KERNEL_MAP, uvm_km.KM_HINT])
    return covered - hint + 1


def test_kernel_map_growth_allocates_a_kernel_ptp_and_gives_its_pde_to_every_pmap():
    with booted() as b:
        nk = int(b.a["pmap_glob"][pmap.G_NKPDE])
        b.switch_to(0)
        n = grow_one_ptp(b)
        before = b.counters()
        va = uvm_km.uvm_km_valloc(uvm_km.KERNEL_MAP, n)
        assert va > 0 and b.delta(before) == {"growkernel_ptps": 1}
        assert int(b.a["pmap_glob"][pmap.G_NKPDE]) == nk + 1
        slot = PDSLOT_KERN + nk
        phys = b.a["physmem"]
        kpde = int(phys[int(b.a["pm_pdir"][pmap.KERNEL_PMAP]) * 1024 + slot])
        assert kpde & PG_V and all(int(phys[int(b.a["pm_pdir"][b.pm(i)]) * 1024 + slot])
                                   == kpde for i in range(3))
        uvm_km.uvm_km_vfree(va, n)
        assert b.check() == []


def test_growkernel_steals_a_user_ptp_at_free_1_and_panics_without_stealing():
    """pmap_growkernel -> pmap_alloc_ptp(kernel pmap, slot, just_try = FALSE): the kernel
    grows its page tables out of a user pmap's (§4.6), or panics without stealing."""
    with booted(["steal=ptp"]) as b:
        vas, _ = stealable_setup(b)
        b.switch_to(2)
        n = grow_one_ptp(b)
        b.free_to(1)
        b.console()
        before = b.counters()
        va = uvm_km.uvm_km_valloc(uvm_km.KERNEL_MAP, n)
        assert va > 0
        d = b.delta(before)
        assert d["growkernel_ptps"] == 1 and d["ptp_steals"] == 1
        assert b.extract(0, vas[0]) == -1                  # the victim lost its PTP
        (line,) = b.console()
        assert "pmap_steal_ptp: stole PTP" in line and "for pmap 0xc0c00000" in line
        # 1.91's growkernel holds the kernel pmap's lock, not pmap_main_lock, so the
        # victim's pv heads are locked in the map-to-head direction unguarded: LOCKDEBUG
        # says so (the pagedaemon's head-to-map walk locks the kernel pmap: a deadlock)
        assert [(f["held"], f["held_at"], f["wanted"], f["wanted_at"], f["why"])
                for f in b.lock_order()] == [
            ("pmap", "pmap_steal_ptp", "pvh", "pmap_remove_ptes", "unguarded")]
        uvm_km.uvm_km_vfree(va, n)
        assert b.check() == []
    with booted(["steal=none"]) as b:
        stealable_setup(b)
        b.switch_to(2)
        n = grow_one_ptp(b)
        b.free_to(1)
        assert panics(uvm_km.uvm_km_valloc, uvm_km.KERNEL_MAP, n) == \
            "pmap_growkernel: alloc ptp failed"


def test_a_failed_pv_page_keeps_its_kmem_map_va_in_pv_cachedva():
    """pmap_alloc_pvpage got its VA (kmem_map, try-locked) but no page: 1.91 keeps the VA
    for the next attempt instead of giving it back."""
    with booted(["steal=none"]) as b:
        tva, pg = two_pages_one_ptp(b)
        g = b.a["pmap_glob"]
        b.free_to(1)
        held = b.hold_pv_entries()                         # ... whose refill failed
        cva = int(g[pmap.G_PVCACHEDVA])
        assert cva >= 0 and b.a["kva_used"][cva]
        assert pmap.pmap_enter(b.pm(0), tva, pg, RW, RW | PMAP_CANFAIL) == ENOMEM
        assert int(g[pmap.G_PVCACHEDVA]) == cva            # the same VA, still cached
        b.free_to(2)
        b.switch_to(0)
        before = b.counters()
        assert pmap.pmap_enter(b.pm(0), tva, pg, RW, RW | PMAP_CANFAIL) == 0
        assert b.delta(before)["pvpage_alloc"] == 1
        p = int(g[pmap.G_PVFREE])                          # the new page, the only one
        assert int(b.a["pvp_va"][p]) == uvm_km.kva(cva) and int(g[pmap.G_PVCACHEDVA]) == -1
        b.release_pv_entries(held)
        assert b.check() == []


def test_free_pv_pages_go_back_above_pve_hiwat_but_not_for_the_kernel_pmap():
    with booted(["steal=none"]) as b:
        b.switch_to(0)
        g = b.a["pmap_glob"]
        held = [pmap.pmap_alloc_pv(b.pm(0), pmap.ALLOCPV_NEED) for _ in range(800)]
        assert min(held) >= 0 and int(g[pmap.G_NFPVENTS]) < pmap.PVE_HIWAT
        before = b.counters()
        pmap.pmap_free_pvs(pmap.KERNEL_PMAP, held[:400])   # "the pmap is already locked"
        assert "pvpage_free" not in b.delta(before)
        pmap.pmap_free_pvs(b.pm(0), held[400:])
        d = b.delta(before)
        assert d["pvpage_free"] >= 1 and int(g[pmap.G_NFPVENTS]) <= pmap.PVE_HIWAT + \
            pmap.PVE_PER_PVPAGE
        assert b.check() == []


def test_pv_stealing_scans_the_pages_from_the_first_on_every_call():
    """1.91's steal_one walks vm_physmem from index 0 each time, so it takes from the
    lowest-numbered page with a stealable entry again and again."""
    with booted(["steal=pv"]) as b:
        tva, pg = two_pages_one_ptp(b, 0)
        vva = b.mmap(1, 4)
        assert b.fault(1, vva) == 0 and b.fault(1, vva + NBPG) == 0
        lo = min(b.extract(1, vva), b.extract(1, vva + NBPG))
        lo_va = vva if b.extract(1, vva) == lo else vva + NBPG
        b.free_to(1)
        held = b.hold_pv_entries()
        b.switch_to(0)
        assert pmap.pmap_enter(b.pm(0), tva, pg, RW, RW | PMAP_CANFAIL) == 0
        assert b.extract(1, lo_va) == -1                   # the lower page's entry went
        b.unmap_keep_pages(0, tva)                         # its entry comes back free ...
        held.append(pmap.pmap_alloc_pv(pmap.KERNEL_PMAP, pmap.ALLOCPV_TRY))
        b.switch_to(1)
        lock_free = b.free()
        b.free_to(lock_free)
        pmap.pmap_enter(b.pm(1), lo_va, lo, RW, RW | PMAP_CANFAIL)   # ... to the victim
        b.switch_to(0)
        before = b.counters()
        assert pmap.pmap_enter(b.pm(0), tva, pg, RW, RW | PMAP_CANFAIL) == 0
        assert b.delta(before)["pv_steals"] == 1
        assert b.extract(1, lo_va) == -1                   # the same page again, not the next
        b.release_pv_entries([x for x in held if x >= 0])
        assert b.check() == []


def test_ubc_windows_keep_their_mappings_until_reused():
    """ubc_release keeps a window's mapping; the same piece of the file read again needs no
    ubc_fault.  Windows are reused least recently released first, and the reused one's
    old mapping goes (ubc_alloc's pmap_remove)."""
    from smp.kern import uvm_bio

    with booted(files=[8]) as b:
        tid = b.switch_to(0)
        reg = [0]
        before = b.counters()
        uvm_bio.ubc_rw(tid, 0, 0, 1, False, reg)
        assert b.delta(before)["ubc_faults"] == 1
        w0 = uvm_bio.window_va(0)
        pg = int(b.a["file_page"][0])
        assert pmap.pmap_extract(pmap.KERNEL_PMAP, w0) == pg       # still mapped
        before = b.counters()
        uvm_bio.ubc_rw(tid, 0, 0, 1, False, reg)
        assert "ubc_faults" not in b.delta(before)                  # no fault this time
        before = b.counters()
        uvm_bio.ubc_rw(tid, 0, 1, 1, True, reg)                    # same window, next page
        assert b.delta(before)["ubc_faults"] == 1
        uvm_bio.ubc_rw(tid, 0, 2, 1, False, reg)                   # takes window 1
        assert pmap.pmap_extract(pmap.KERNEL_PMAP, w0) == pg      # window 0 keeps its own
        # as if every other window had been released since: window 0 is the oldest
        lock.simple_lock(uvm_bio.ubc_lock)
        uvm_bio._q_remove(0)
        head = int(b.a["ubc_glob"][uvm_bio.U_INACT_HEAD])
        b.a["ubc_qnext"][0], b.a["ubc_qprev"][head] = head, 0
        b.a["ubc_glob"][uvm_bio.U_INACT_HEAD] = 0
        lock.simple_unlock(uvm_bio.ubc_lock)
        uvm_bio.ubc_rw(tid, 0, 4, 1, False, reg)                   # a new piece: window 0
        assert int(b.a["ubc_obj"][0]) == 0 and int(b.a["ubc_off"][0]) == 4
        assert pmap.pmap_extract(pmap.KERNEL_PMAP, w0) == int(b.a["file_page"][4])
        assert pmap.pmap_extract(pmap.KERNEL_PMAP, w0 + NBPG) == -1   # page 1's went
        assert b.check() == []


# --- issue 10, item 1: fork and exit as in NetBSD 1.5 --------------------------------------

def kernel_pv_entries(b) -> int:
    a = b.a
    n = 0
    for pg in (a["pvh_list"] >= 0).nonzero()[0]:
        pve = int(a["pvh_list"][pg])
        while pve >= 0:
            n += int(a["pv_pmap"][pve]) == pmap.KERNEL_PMAP
            pve = int(a["pv_next"][pve])
    return n


def free_slots(b, *idx):
    for i in idx:
        b.a["proc"]["stat"][b.tid(i)] = 0


def test_fork_takes_a_page_directory_and_a_u_area_from_kernel_map_and_exit_gives_them_back():
    with booted(nprocs=3) as b:
        free_slots(b, 2)
        parent = b.switch_to(0)
        free, kmem, kpv = b.free(), int(b.ux[U.KMEMPAGES]), kernel_pv_entries(b)
        before = b.counters()
        child = b.kernel.fork1(b.ci, parent, 0)
        assert child == b.tid(2)
        d = b.delta(before)
        assert d["forks"] == 1 and d["uarea_allocs"] == 1 and d["km_allocs"] == 1
        pm = int(b.a["vm_pmap"][child])
        pdva, uva = int(b.a["pm_pdirva"][pm]), int(b.a["proc"][child]["uarea"])
        assert pmap.pmap_extract(pmap.KERNEL_PMAP, pdva) == int(b.a["pm_pdir"][pm])
        assert all(pmap.pmap_extract(pmap.KERNEL_PMAP, uva + k * NBPG) >= 0
                   for k in range(UPAGES))
        # PDP + u-area: kernel_object pages with managed (pv) kernel mappings
        assert b.free() == free - 1 - UPAGES and int(b.ux[U.KMEMPAGES]) == kmem + UPAGES
        assert kernel_pv_entries(b) == kpv + 1 + UPAGES
        assert b.check() == []
        b.switch_to(2)
        b.kernel.exit1(b.ci, child)
        assert b.free() == free and kernel_pv_entries(b) == kpv
        assert int(b.a["proc"][child]["uarea"]) == 0 and int(b.a["pm_inuse"][pm]) == 0
        assert b.check() == []


def test_a_fork_that_must_wait_for_memory_resumes_where_it_stopped():
    """pmap_pinit's uvm_km_alloc sleeps in "km_alloc1w" at free <= 1 (the page directory
    is a kernel_object page: the reserve, but not the last page); the child's slot and
    u-area VA wait with the parent, which goes on with them after the wakeup."""
    with booted(nprocs=3) as b:
        free_slots(b, 2)
        parent = b.switch_to(0)
        b.free_to(1)
        s = sleeps(b.kernel.fork1, b.ci, parent, 0)
        assert wmesg(s) == "km_alloc1w"
        child = int(b.a["proc"][parent]["forkchild"]) - 1
        assert child == b.tid(2) and int(b.a["proc"][child]["stat"]) == SIDL
        uva = int(b.a["proc"][child]["uarea"])
        assert uva > 0 and int(b.a["vm_pmap"][child]) == -1
        b.free_to(20)
        b.switch_to(0)
        assert b.kernel.fork1(b.ci, parent, 0) == child
        assert int(b.a["proc"][child]["uarea"]) == uva and b.cnt("forks") == 1
        assert int(b.a["proc"][parent]["forkchild"]) == 0 and b.check() == []


def test_fork_fails_with_eagain_without_a_proc_slot_and_enomem_without_kernel_va():
    with booted(nprocs=3) as b:
        parent = b.switch_to(0)
        assert b.kernel.fork1(b.ci, parent, 0) == -EAGAIN         # every slot in use
        assert b.console() == ["proc: table is full"]
        free_slots(b, 2)
        km = b.a["kmap"][uvm_km.KERNEL_MAP]
        lo, hi = int(km[uvm_km.KM_HINT]), int(km[uvm_km.KM_END])
        used = b.a["kva_used"]
        was = used[lo:hi].copy()
        used[lo:hi] = 1                                           # kernel_map full
        assert b.kernel.fork1(b.ci, parent, 0) == -ENOMEM
        assert int(b.a["proc"]["stat"][b.tid(2)]) == 0            # the slot went back
        assert b.cnt("fork_fail") == 2 and b.cnt("forks") == 0
        used[lo:hi] = was
        km[uvm_km.KM_HINT] = lo
        assert b.check() == []


def test_wiring_the_u_area_waits_in_flt_pmfail2_when_no_pv_entry_can_be_had(monkeypatch):
    """uvm_fork's uvm_fault_wire: the u-area's pmap_enter passes PMAP_CANFAIL, so running
    out of pv entries is a wait, not a panic, even without stealing."""
    with booted(["steal=none"], nprocs=3) as b:
        free_slots(b, 2)
        parent = b.switch_to(0)
        real = pmap.pmap_alloc_pvpage
        held = [pmap.pmap_alloc_pv(pmap.KERNEL_PMAP, pmap.ALLOCPV_NEED)]  # pv_initpage in use
        monkeypatch.setattr(pmap, "pmap_alloc_pvpage", lambda pm, mode: -1)   # no pv page
        while (pve := pmap.pmap_alloc_pv(pmap.KERNEL_PMAP, pmap.ALLOCPV_TRY)) >= 0:
            held.append(pve)
        pmap.pmap_free_pvs(pmap.KERNEL_PMAP, [held.pop()])    # one: the PDP's plain enter
        s = sleeps(b.kernel.fork1, b.ci, parent, 0)
        assert wmesg(s) == "flt_pmfail2" and b.cnt("pmfail_waits") == 1
        child = int(b.a["proc"][parent]["forkchild"]) - 1
        assert int(b.a["vm_pmap"][child]) >= 0                 # the page directory is there
        monkeypatch.setattr(pmap, "pmap_alloc_pvpage", real)
        b.release_pv_entries(held)
        b.switch_to(0)
        assert b.kernel.fork1(b.ci, parent, 0) == child and b.check() == []


# --- issue 10, item 8: asynchronous, clustered pageout -----------------------------------------

def dirty_inactive(b, n: int) -> tuple[int, list[int]]:
    """Process 0 writes n pages, which then sit on the inactive queue, dirty."""
    va = b.mmap(0, n)
    for k in range(n):
        assert b.fault(0, va + k * NBPG) == 0
    pages = [b.anon_page(0, va + k * NBPG) for k in range(n)]
    lock.simple_lock(uvm_page.pageq_lock)
    for pg in pages:
        pmap.pmap_clear_reference(pg)
        uvm_page.uvm_pagedeactivate(pg)
    lock.simple_unlock(uvm_page.pageq_lock)
    return va, pages


def pagedaemon_pass(b) -> None:
    b.a["proc"][0]["reg"][0] = 1                     # woken: one pass, then it sleeps
    with b.as_pagedaemon():
        pmap.pmap_activate(pmap.KERNEL_PMAP)
        s = sleeps(uvm_pdaemon.uvm_pageout_step, 0)
        assert s.chan == U.CHAN_PAGEDAEMON


@pytest.mark.parametrize("when", ["aiodone", "rescan"])
def test_the_pagedaemon_starts_clustered_writes_and_does_not_wait_for_them(when):
    with booted([f"pageout_free={when}"]) as b:
        va, pages = dirty_inactive(b, 20)
        b.free_to(40)                                # freetarg 68: 28 pages wanted
        before = b.counters()
        pagedaemon_pass(b)
        d = b.delta(before)
        assert d["pageout_clusters"] == 2 and d["pdpageouts"] == 20      # 16 + 4
        # nothing freed yet but the PTP the unmapped pages emptied
        assert int(b.ux[U.PAGING]) == 20 and b.free() == 41 and d["ptp_free"] == 1
        assert all(b.a["pg_flags"][pg] & PG_BUSY for pg in pages)
        assert b.check() == []
        before = b.counters()
        assert b.complete_pageouts() == 2
        assert int(b.ux[U.PAGING]) == 0 and not any(b.a["pg_flags"][pg] & PG_BUSY
                                                     for pg in pages)
        if when == "aiodone":                        # freed by the I/O's completion
            assert b.free() == 61 and b.delta(before)["pdfreed"] == 20
        else:                                        # clean, freed by the next pass
            assert b.free() == 41 and "pdfreed" not in b.delta(before)
            pagedaemon_pass(b)
            assert b.free() == 61
        assert int(b.ux[U.SWPGONLY]) == 20 and b.check() == []


def swap_out_20(b) -> tuple[int, list[int]]:
    """On a 20-slot swap, 20 of process 0's pages paged out and freed: swap full."""
    va, pages = dirty_inactive(b, 20)
    b.free_to(40)
    pagedaemon_pass(b)
    assert b.complete_pageouts() == 2
    assert int(b.ux[U.SWPGONLY]) == int(b.ux[U.SWPAGES]) == 20
    return va, pages


def test_with_swap_full_the_scan_ends_at_the_16th_dirty_page_it_reactivates():
    """uvmpd_scan_inactive: with swpgonly == swpages a dirty anon page has nowhere to go
    and goes back to the active queue; UVMPD_NUMDIRTYREACTS (16) of them end the scan,
    however long the inactive queue ("met free target: exit loop")."""
    with booted(["swap=80K"]) as b:
        swap_out_20(b)
        _, pages = dirty_inactive(b, 40)
        b.free_to(40)
        before = b.counters()
        pagedaemon_pass(b)
        d = b.delta(before)
        # 16 scanned, none paged out; back on the active queue, the 16 were deactivated
        # again by the same pass (inactarg is freetarg + 1 on this small machine), so
        # they now follow the 24 the scan never reached; the pass began below freetarg,
        # so it tried a swapout first (pdswout), and found nobody to swap out
        assert d == {"pdwoke": 1, "pdrevs": 1, "pdswout": 1, "pdscans": 16, "pddeact": 16}
        queue, pg = [], int(b.a["uvmq"][Q_INACTIVE])
        while pg >= 0:
            queue.append(pg)
            pg = int(b.a["pg_next"][pg])
        assert queue[-40:] == pages[16:] + pages[:16]
        assert b.check() == []


def test_with_every_slot_held_by_resident_pages_the_pagedaemon_frees_their_slots():
    """uvmpd_scan's swap shortage: every slot is taken (swpginuse == swpages) but not by
    pages that live only in swap, and the inactive scan freed nothing; the active scan
    then gives back the slots of resident pages (dirty again from then on), so the next
    pass can page the new dirty pages out."""
    with booted(["swap=80K"]) as b:
        va, _ = swap_out_20(b)
        b.free_to(200)
        for k in range(20):                               # swapped back in, slots kept
            assert b.fault(0, va + k * NBPG) == 0
        back = [b.anon_page(0, va + k * NBPG) for k in range(20)]
        assert int(b.ux[U.SWPGINUSE]) == 20 and int(b.ux[U.SWPGONLY]) == 0
        _, pages = dirty_inactive(b, 10)
        b.free_to(40)
        before = b.counters()
        pagedaemon_pass(b)
        d = b.delta(before)
        assert "pdpageouts" not in d and "pdfreed" not in d     # no slot for the new pages
        assert int(b.ux[U.SWPGINUSE]) == 0                    # shortage 28: all 20 given back
        assert not any(b.a["pg_flags"][pg] & PG_CLEAN for pg in back)
        assert all(b.a["pg_pq"][pg] == PQ_INACTIVE for pg in pages)
        pagedaemon_pass(b)                                    # now with slots to write to
        assert b.delta(before)["pdpageouts"] >= 10
        assert all(b.a["pg_flags"][pg] & PG_BUSY for pg in pages)
        assert b.check() == []


def test_swap_slots_come_from_the_rotor_on_as_a_slot_by_slot_walk_finds_them():
    """uvm_swap_alloc's vectorised search against the plain walk it replaced, through a
    random run of allocations and frees that fills and drains a 64-slot device."""
    import random


    rng = random.Random(5)
    with booted(["swap=256K"]) as b:
        n, used, rotor, held = 64, [0] * 64, 0, []
        for _ in range(2000):
            if held and (rng.random() < 0.45 or len(held) == n):
                slot = held.pop(rng.randrange(len(held)))
                uvm_anon.uvm_swap_free(slot)
                used[slot] = 0
                continue
            want = next((k % n for k in range(rotor, rotor + n) if not used[k % n]), -1)
            got = uvm_anon.uvm_swap_alloc()
            assert got == want
            if got >= 0:
                used[got], rotor = 1, (got + 1) % n
                held.append(got)
            assert int(b.ux[U.SWPGINUSE]) == sum(used) == len(held)
        assert uvm_anon.uvm_swap_alloc() == (-1 if len(held) == n else
                                             next(k % n for k in range(rotor, rotor + n)
                                                  if not used[k % n]))


def test_a_pageout_started_during_another_cpus_poll_stays_due(monkeypatch):
    """intr.poll scans the sources and the writes in flight, then publishes the earliest
    due time.  A write started by another CPU after the scan (uvm_pager's set_due) must
    stay due: a plain store of the scan's result once made it never complete, and the
    processes waiting for its pages slept until the run's time limit."""
    from smp.kern import uvm_pager

    with booted() as b:
        g = b.a["intr_glob"]
        assert int(g[intr.IG_NEXT_DUE]) == intr.NEVER         # nothing due, no sources
        g[intr.IG_NEXT_DUE] = 0                                  # something is due now
        later = b.ci.core.now() + 10**9
        real = uvm_pager.poll_aio

        def scan_then_another_cpu_starts_a_write(now):
            r = real(now)                                        # (nothing in flight)
            intr.set_due(later)                                  # the other CPU's write
            return r

        monkeypatch.setattr(uvm_pager, "poll_aio", scan_then_another_cpu_starts_a_write)
        intr.poll()
        assert int(g[intr.IG_NEXT_DUE]) == later
        monkeypatch.setattr(uvm_pager, "poll_aio", real)
        intr.poll()                                              # nobody interferes:
        assert int(g[intr.IG_NEXT_DUE]) == intr.NEVER            # the scan's result


def test_a_fault_on_a_page_being_paged_out_waits_for_the_write():
    """uvmfault_anonget: a busy page (PG_BUSY) is PG_WANTED and slept on ("anonget2");
    the write's completion wakes the process, which refaults."""
    with booted(["pageout_free=rescan"]) as b:
        va, pages = dirty_inactive(b, 4)
        b.free_to(60)
        pagedaemon_pass(b)
        b.switch_to(0)
        before = b.counters()
        s = sleeps(b.fault, 0, va, False)
        assert wmesg(s) == "anonget2" and b.delta(before)["fltpgwait"] == 1
        assert b.a["pg_flags"][pages[0]] & PG_WANTED and b.held() == 0
        b.sleep_queue(b.tid(0), s)
        b.complete_pageouts()
        assert int(b.a["proc"][b.tid(0)]["stat"]) == SRUN          # woken
        assert b.fault(0, va, False) == 0 and b.extract(0, va) == pages[0]
        assert b.check() == []


def test_an_anon_freed_while_its_page_is_written_goes_when_the_write_is_done():
    with booted() as b:
        va, pages = dirty_inactive(b, 4)
        b.free_to(60)
        pagedaemon_pass(b)
        nfree = int(b.ux[U.NFREEANON])
        assert uvm_map.uvm_unmap(b.tid(0), va) == 0           # exit, or munmap
        assert all(b.a["pg_flags"][pg] & PG_RELEASED for pg in pages)
        assert int(b.ux[U.NFREEANON]) == nfree and b.check() == []   # kept for the I/O
        b.complete_pageouts()
        assert int(b.ux[U.NFREEANON]) == nfree + 4 and int(b.ux[U.SWPGINUSE]) == 0
        assert b.check() == []


def test_the_pagedaemon_gives_up_the_big_lock_while_its_writes_are_in_flight():
    with booted(["biglock=on"]) as b:
        dirty_inactive(b, 20)
        b.free_to(40)
        b.a["proc"][0]["reg"][0] = 1
        b.ci.area["curproc"] = 0
        assert b.kernel.run(b.ci, 0) == SLEEPING               # a pass, then asleep
        assert not lock.lock_held(lock.KERNEL_LOCK_ID) and int(b.ux[U.PAGING]) == 20
        b.complete_pageouts()
        assert b.check() == []


# --- issue 10, item 3: interrupts and the mbufs they allocate ----------------------------------

NET1500 = Interrupt(cpu=0, period_ns=10**9, size=1500, hold_ns=10**12)   # an mbuf + a cluster


def test_a_packet_takes_an_mbuf_and_a_cluster_from_pool_pages_mapped_with_pmap_kenter_pa():
    with booted(interrupts=[NET1500]) as b:
        b.switch_to(0)
        free, kmem = b.free(), int(b.ux[U.KMEMPAGES])
        before = b.counters()
        b.interrupt()
        intr.at_point()                                   # a delivery point: served
        d = b.delta(before)
        assert d["intr_allocs"] == 1 and "intr_alloc_fail" not in d
        # an mbuf pool page (kmem_map, kmem_object) and a cluster pool page (mb_map,
        # mb_object): kernel objects from the reserve, unmanaged mappings (no pv entry)
        assert b.free() == free - 2 and int(b.ux[U.KMEMPAGES]) == kmem + 2
        mva, cva = int(b.a["pool_va"][0][0]), int(b.a["pool_va"][1][0])
        assert uvm_km.map_of(mva) == uvm_km.KMEM_MAP and uvm_km.map_of(cva) == uvm_km.MB_MAP
        for va in (mva, cva):
            pg = pmap.pmap_extract(pmap.KERNEL_PMAP, va)
            assert int(b.a["pvh_list"][pg]) == -1          # pmap_kenter_pa: no pv entry
        b.interrupt()                                     # the next one fits in those pages
        intr.at_point()
        assert b.free() == free - 2 and b.cnt("intr_allocs") == 2
        assert b.check() == []


def test_an_interrupt_takes_the_kernel_reserve_and_drops_the_packet_at_free_1():
    """Interrupt-safe kernel objects use the reserve down to free = 1; below it
    uvm_km_kmemalloc(UVM_KMF_NOWAIT) fails and the handler drops the packet -- it never
    sleeps."""
    with booted(interrupts=[NET1500]) as b:
        b.switch_to(0)
        b.free_to(3)                                      # below reserve_kernel (5)
        b.interrupt()
        intr.at_point()
        assert b.cnt("intr_allocs") == 1 and b.free() == 1
        b.interrupt(2)                                    # one fits, the next needs a page
        b.a["pool_nfree"][1][0] = 0                       # (the cluster page used up)
        b.a["pkt_item"][0, 1, 1] = 0                      # (by a packet a consumer holds)
        b.a["pkt_ht"][0, 1] += 1
        intr.at_point()
        assert b.cnt("intr_alloc_fail") >= 1 and b.free() == 1 and b.held() == 0
        assert b.check() == []


def test_an_interrupt_waits_while_the_cpu_holds_a_lock_its_handler_takes():
    with booted(interrupts=[NET1500]) as b:
        b.switch_to(0)
        b.interrupt()
        lock.simple_lock(uvm_page.fpageq_lock)            # splvm: masked
        intr.at_point()
        assert b.cnt("intr_allocs") == 0 and intr._ipending      # held back (ipending)
        lock.simple_unlock(uvm_page.fpageq_lock)
        intr.at_point()                                   # the next point serves it
        assert b.cnt("intr_allocs") == 1
        assert b.check() == []


@pytest.mark.parametrize("spin_on, served", [
    ("pageq", True),            # a paging-queue lock, taken at spl0: the spinner serves it
    ("fpageq", False),          # splvm: it waits until the CPU has the lock and gives it up
])
def test_a_cpu_spinning_on_a_lock_serves_interrupts_its_handler_allows(spin_on, served):
    """The atomic core's spin loop calls the IPI handler while the CPU waits for a lock
    another CPU holds (as it answers TLB shootdowns there); the handler serves the
    packet unless the lock it waits for is one the handler takes."""
    with booted(interrupts=[NET1500]) as b:
        b.switch_to(0)
        lk = {"pageq": uvm_page.pageq_lock, "fpageq": uvm_page.fpageq_lock}[spin_on]
        b.interrupt()
        b.ci.area["spinning_on"] = lk + 1                 # (as spin_turn announces it)
        try:
            intr.i386_ipi_handler()                       # the spin loop's call
            assert b.cnt("intr_allocs") == (1 if served else 0)
            assert intr._ipending == (not served)         # a deferred one is held back ...
            assert not b.ci.ipi_pending()                 # ... not posted again: the spin
            intr.i386_ipi_handler()                       # loop would call us every turn
            assert b.cnt("intr_allocs") == (1 if served else 0)
        finally:
            b.ci.area["spinning_on"] = 0
        intr.at_point()                                   # out of the spin: served now
        assert b.cnt("intr_allocs") == 1
        assert b.check() == []


def test_an_interrupt_between_a_faults_page_and_its_ptp_drains_the_reserve_into_a_steal(
        monkeypatch):
    """§13: a fault that got its data page at free = 6 (5 after) takes an interrupt
    before pmap_enter gets its PTP; the handler's pool pages take free from 5 to 1, where
    the PTP allocation fails and the 1.91 pmap steals -- the fault itself is held back
    by the reserve, the interrupt is not."""
    with booted(["steal=ptp", "biglock=off"], interrupts=[NET1500]) as b:
        vas, _ = stealable_setup(b, thief=1, victims=(0,))
        va = b.mmap(1, 4, align=NBPD)                     # a new 4 MiB region: a new PTP
        b.switch_to(1)
        b.free_to(6)
        real = pmap.pmap_get_ptp

        def get_ptp(pm, idx):
            b.interrupt(6)                                # six packets arrive just now
            return real(pm, idx)

        monkeypatch.setattr(pmap, "pmap_get_ptp", get_ptp)
        before = b.counters()
        assert b.fault(1, va) == 0
        d = b.delta(before)
        assert d["intr_allocs"] == 6 and d["ptp_steals"] == 1 and d["flt_przero"] == 1
        assert b.extract(0, vas[0]) == -1 and b.free() == 1
        assert b.check() == []


# --- issue 10, items 2 and 5: exec and physio ---------------------------------------------

def test_exec_releases_the_old_space_and_maps_text_shared_and_data_private():
    with booted(files=[32]) as b:
        tid = b.switch_to(0)
        old = b.mmap(0, 8)
        assert b.fault(0, old) == 0
        kpv, kva = kernel_pv_entries(b), int(b.a["kva_used"].sum())
        before = b.counters()
        tva, dva = kern_exec.execve(tid, 0, 16, 8, 2)
        d = b.delta(before)
        assert d["execs"] == 1 and "km_allocs" not in d and d["faults"] == 2  # 2 arg pages
        assert b.extract(0, old) == -1 and int(b.a["vm_nentries"][tid]) == 2
        assert kernel_pv_entries(b) == kpv and int(b.a["kva_used"].sum()) == kva
        start, end, prot, flags, *_ = uvm_map.entry(tid, 0)
        assert (start, end - start) == (tva, 16 * NBPG) and prot == 5       # r-x, shared
        assert flags & uvm_map.EF_FILE and flags & uvm_map.EF_SHARED
        _, _, prot, flags, *_ = uvm_map.entry(tid, 1)
        assert prot == RW and flags & uvm_map.EF_COPY                        # data: private
        assert b.fault(0, tva, write=False) == 0                             # reads the file
        b.unmap_keep_pages(0, tva)
        before = b.counters()
        free = b.free()
        assert b.fault(0, tva, write=False) == 0          # resident now: case 2, no page
        d = b.delta(before)
        assert d["flt_obj"] == 1 and d["fltlget"] == 1 and "pageins" not in d
        assert b.free() == free - 1 and d["ptp_alloc"] == 1          # just its PTP again
        assert b.check() == []


def test_exec_that_waits_for_its_argument_pages_goes_on_with_the_same_va():
    with booted(files=[32]) as b:
        tid = b.switch_to(0)
        b.free_to(1)
        s = sleeps(kern_exec.execve, tid, 0, 16, 0, 4)
        assert wmesg(s) == "uao_getpage"
        va = int(b.a["proc"][tid]["execargs"])
        assert uvm_km.map_of(va) == uvm_km.EXEC_MAP
        b.free_to(50)
        b.switch_to(0)
        kern_exec.execve(tid, 0, 16, 0, 4)
        assert int(b.a["proc"][tid]["execargs"]) == 0 and b.cnt("execs") == 1
        assert b.check() == []


def test_physio_wires_the_buffer_and_maps_it_into_phys_map_with_a_plain_pmap_enter():
    with booted() as b:
        tid = b.switch_to(0)
        buf = b.mmap(0, 16)
        kpv = kernel_pv_entries(b)
        reg = [0, 0, 0, 0]
        s = sleeps(kern_physio.physio_read, tid, buf, 16, 2, reg)
        assert wmesg(s) == "physio" and b.cnt("vmapbuf_maps") == 1
        kva = int(b.a["proc"][tid]["physva"])
        assert uvm_km.map_of(kva) == uvm_km.PHYS_MAP
        assert all(pmap.pmap_is_wired(b.pm(0), buf + k * NBPG) for k in range(16))
        assert kernel_pv_entries(b) == kpv + 16                # PMAP_WIRED, no CANFAIL
        assert b.check() == []
        b.switch_to(0)
        with pytest.raises(kern_synch.Sleep):                  # transfer 1 done, 2 starts
            kern_physio.physio_read(tid, buf, 16, 2, reg)
        b.switch_to(0)
        kern_physio.physio_read(tid, buf, 16, 2, reg)          # transfer 2 done
        assert int(b.a["proc"][tid]["physva"]) == 0 and kernel_pv_entries(b) == kpv
        assert not any(pmap.pmap_is_wired(b.pm(0), buf + k * NBPG) for k in range(16))
        assert b.cnt("vmapbuf_maps") == 2 and b.check() == []


def test_a_raw_read_panics_without_pv_entries_when_nothing_can_be_stolen():
    """Cranor's worry, reached from user space: vmapbuf's pmap_enter passes no
    PMAP_CANFAIL, so with no pv entry to be had (free <= 1, no stealing) dd panics the
    kernel."""
    with booted(["steal=none"]) as b:
        tid = b.switch_to(0)
        buf = b.mmap(0, 4)
        for k in range(4):
            assert b.fault(0, buf + k * NBPG) == 0            # resident, mapped: no new pv
        b.free_to(1)
        b.hold_pv_entries()
        b.switch_to(0)
        msg = panics(kern_physio.physio_read, tid, buf, 4, 1, [0, 0, 0, 0])
        assert msg == "pmap_enter: no pv entries available"
