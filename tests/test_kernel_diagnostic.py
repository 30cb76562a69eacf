"""The DIAGNOSTIC checker itself: silent on a consistent machine, loud on each kind of damage.

A small but busy machine is built in-process (mappings, a wired region, a kernel
allocation, pages paged out to swap and one paged back in), then one
structure at a time is damaged the way a kernel bug would damage it, and the checker
must name exactly that.
"""

from __future__ import annotations

import pytest
from kernharness import (
    booted,
    panics,
    sleeps,
    stealable_setup,
    two_pages_one_ptp,
)

from smp.kern import lock, pmap, uvm_anon, uvm_km, uvm_page, uvm_pdaemon
from smp.kern import uvm as U
from smp.kern.diagnostic import check_after_run, check_invariants, lock_name
from smp.kern.param import NBPG, PG_V
from smp.kern.uvm_page import OWN_ANON, OWN_FREE, OWN_PTP


def busy(b) -> dict:
    """Give the machine one of everything the checker looks at."""
    va = b.mmap(0, 64)
    for k in range(48):
        assert b.fault(0, va + k * NBPG) == 0
    wva = b.mmap(2, 4)
    assert b.fault(2, wva, wire=True) == 0
    b.switch_to(2)
    kva = uvm_km.uvm_km_alloc1(uvm_km.KERNEL_MAP, 2)
    # page some of process 0 out: one pass deactivates, the next pages out
    b.free_to(40)
    for _ in range(2):
        b.a["proc"][0]["reg"][0] = 1
        with b.as_pagedaemon():
            pmap.pmap_activate(pmap.KERNEL_PMAP)
            sleeps(uvm_pdaemon.uvm_pageout_step, 0)
    assert b.complete_pageouts() > 0                     # the writes done, pages freed
    assert b.ux[U.SWPGONLY] > 0
    b.free_to(200)
    k = next(k for k in range(48) if b.anon_page(0, va + k * NBPG) < 0)
    assert b.fault(0, va + k * NBPG) == 0                # swapped back in (case 1)
    return {"va": va, "wva": wva, "kva": kva}


def first_ptp(b, i: int) -> int:
    return int(b.a["pm_memq_head"][b.pm(i)])


def test_a_busy_machine_is_consistent():
    with booted(["steal=ptp,pv"]) as b:
        st = busy(b)
        assert b.cnt("pgswapout") > 0 and b.cnt("pgswapin") > 0
        assert b.ux[U.SWPGINUSE] > b.ux[U.SWPGONLY] > 0
        assert pmap.pmap_extract(pmap.KERNEL_PMAP, st["kva"]) >= 0
        assert check_invariants(b.seg) == []
        b.ci.area["curproc"] = -1                        # cpu0 back in its dispatch loop
        r = check_after_run(b.seg)                       # nothing held: the full check
        assert list(r) == [] and r.skipped == [] and r.reason == ""


def test_a_steal_keeps_both_pmaps_consistent():
    with booted(["steal=ptp"]) as b:
        busy(b)
        stealable_setup(b, thief=1, victims=(0,))
        b.free_to(1)
        assert b.check() == []


def damage(name):
    """Each entry: (what to break, the check's name that must complain)."""
    def ptp_wire(b, st):
        b.a["pg_wire"][first_ptp(b, 0)] += 1

    def resident(b, st):
        b.a["pm_resident"][b.pm(0)] += 1

    def wired(b, st):
        b.a["pm_wired"][b.pm(2)] -= 1

    def lost_pv(b, st):
        pg = b.extract(0, st["va"])
        b.a["pvh_list"][pg] = b.a["pv_next"][b.a["pvh_list"][pg]]

    def pv_wrong_va(b, st):
        pg = b.extract(0, st["va"])
        b.a["pv_va"][b.a["pvh_list"][pg]] += NBPG

    def free_but_mapped(b, st):
        pg = b.extract(0, st["va"])
        b.a["pg_owner"][pg] = OWN_FREE

    def free_count(b, st):
        b.ux[U.FREE] += 1

    def pq_free_stray(b, st):
        pg = b.extract(0, st["va"])
        b.a["pg_pq"][pg] = 1                 # PQ_FREE, not on the list

    def pde_wrong_slot(b, st):
        b.a["pg_off"][first_ptp(b, 0)] += 1

    def memq_broken(b, st):
        pm = b.pm(0)
        b.a["pm_npages"][pm] += 1

    def orphan_ptp(b, st):
        pm = b.pm(0)
        pdir = int(b.a["pm_pdir"][pm])
        slot = st["va"] >> 22
        b.a["physmem"][pdir * 1024 + slot] &= 0xFFFFFFFF ^ PG_V

    def anon_ref(b, st):
        an = int(b.a["amap_slot"][b.tid(0) * (len(b.a["amap_slot"]) // len(b.a["vm_aused"]))])
        b.a["an_ref"][an] += 1

    def swap_leak(b, st):
        free_slot = int((b.a["swap_used"] == 0).nonzero()[0][0])
        b.a["swap_used"][free_slot] = 1
        b.ux[U.SWPGINUSE] += 1

    def swpgonly(b, st):
        b.ux[U.SWPGONLY] += 1

    def anon_counter(b, st):
        b.ux[U.ANONPAGES] -= 1

    def pv_nfree(b, st):
        b.a["pmap_glob"][pmap.G_NFPVENTS] += 1

    def pv_entry_leak(b, st):
        pmap.pmap_alloc_pv(pmap.KERNEL_PMAP, pmap.ALLOCPV_TRY)

    def anon_page_owner(b, st):
        pg = b.extract(0, st["va"])
        b.a["pg_anon"][pg] = -1

    def active_count(b, st):
        b.ux[U.ACTIVE] += 1

    def lock_held(b, st):
        lock.simple_lock(pmap.pvalloc_lock)

    def kernel_pte(b, st):
        b.a["kva_used"][uvm_km.kva_index(st["kva"])] = 0

    table = {
        "ptp_wire": (ptp_wire, "ptp wire_count"), "resident": (resident, "pmap stats"),
        "wired": (wired, "pmap stats"), "lost_pv": (lost_pv, "pv"),
        "pv_wrong_va": (pv_wrong_va, "pv"), "free_but_mapped": (free_but_mapped, "pte"),
        "free_count": (free_count, "free list"), "pq_free_stray": (pq_free_stray, "free list"),
        "pde_wrong_slot": (pde_wrong_slot, "pde"), "memq_broken": (memq_broken, "memq"),
        "orphan_ptp": (orphan_ptp, "pde"), "anon_ref": (anon_ref, "anon refs"),
        "swap_leak": (swap_leak, "swap"), "swpgonly": (swpgonly, "swap"),
        "anon_counter": (anon_counter, "uvmexp"), "pv_nfree": (pv_nfree, "pv pages"),
        "pv_entry_leak": (pv_entry_leak, "pv leak"), "anon_page_owner": (anon_page_owner, "anons"),
        "active_count": (active_count, "active queue"), "lock_held": (lock_held, "locks"),
        "kernel_pte": (kernel_pte, "kva"),
    }
    return table[name]


DAMAGES = ["ptp_wire", "resident", "wired", "lost_pv", "pv_wrong_va", "free_but_mapped",
           "free_count", "pq_free_stray", "pde_wrong_slot", "memq_broken", "orphan_ptp",
           "anon_ref", "swap_leak", "swpgonly", "anon_counter", "pv_nfree", "pv_entry_leak",
           "anon_page_owner", "active_count", "lock_held", "kernel_pte"]


@pytest.mark.parametrize("name", DAMAGES)
def test_each_kind_of_damage_is_named(name):
    with booted() as b:
        st = busy(b)
        assert b.check() == []
        breaker, check = damage(name)
        breaker(b, st)
        found = b.check()
        assert found, name
        assert any(v.startswith(check + ":") for v in found), found


def test_after_a_stop_inside_the_kernel_only_unlocked_structures_are_checked():
    with booted() as b:
        st = busy(b)
        b.a["pg_wire"][first_ptp(b, 0)] += 1             # damage under pmap[pm0]'s lock ...
        b.a["pm_resident"][b.pm(2)] += 1                 # ... and under nobody's
        lock.simple_lock(pmap.pm_lock + b.pm(0))             # cpu0 "stopped" holding pmap[pm0]
        r = check_after_run(b.seg, b.machine.locks)
        assert "stopped inside the kernel: cpu0" in r.reason
        assert any("pmap[" in s for s in r.skipped) and len(r.skipped) > 3
        assert [v.split(":")[0] for v in r] == ["pmap stats"]
        assert f"pmap {b.pm(2)}:" in r[0]
        full = check_invariants(b.seg, b.machine.locks)  # the full check sees both, and the lock
        assert {v.split(":")[0] for v in full} >= {"ptp wire_count", "pmap stats", "locks"}
        lock.simple_unlock(pmap.pm_lock + b.pm(0))
        assert st


def test_many_violations_are_summarised():
    with booted() as b:
        busy(b)
        va = b.mmap(1, 32)                      # resident anons, whatever busy() paged out
        for k in range(32):
            assert b.fault(1, va + k * NBPG) == 0
        owner = b.a["pg_owner"]
        anon = (owner == OWN_ANON).nonzero()[0]
        b.a["pg_wire"][(owner == OWN_PTP).nonzero()[0]] += 5
        b.a["pg_anon"][anon] = -1
        found = b.check()
        assert any(v.startswith("anons: ... and ") for v in found)
        assert len(found) < 100


def test_lock_names():
    with booted() as b:
        locks = b.machine.locks
        assert lock_name(pmap.pvalloc_lock, locks) == "pvalloc_lock"
        assert lock_name(pmap.pm_lock + 3, locks) == "pmap[3]"
        assert lock_name(pmap.pvh_lock + 17, locks) == "pvh[17]"
        assert lock_name(pmap.pvh_lock + 17) == f"lock#{pmap.pvh_lock + 17}"
        assert b.check() == []


def test_a_precondition_not_met_is_a_lock_protocol_violation():
    """KASSERT_LOCKED: "=> pvh lock held", checked in DIAGNOSTIC mode only."""
    with booted() as b:
        tva, pg = two_pages_one_ptp(b)
        pve = pmap.pmap_alloc_pv(b.pm(0), pmap.ALLOCPV_TRY)
        with pytest.raises(lock.LockError, match=f"lock {pmap.pvh_lock + pg} not held"):
            pmap.pmap_enter_pv(pg, pve, b.pm(0), tva, -1)
        lock.simple_lock(pmap.pvh_lock + pg)
        pmap.pmap_enter_pv(pg, pve, b.pm(0), tva, -1)          # held: fine
        assert pmap.pmap_remove_pv(pg, b.pm(0), tva) == pve
        lock.simple_unlock(pmap.pvh_lock + pg)
        pmap.pmap_free_pvs(b.pm(0), [pve])
        assert b.held() == 0 and b.check() == []
    with booted(["diagnostic=off"]) as b:
        tva, pg = two_pages_one_ptp(b)
        pve = pmap.pmap_alloc_pv(b.pm(0), pmap.ALLOCPV_TRY)
        pmap.pmap_enter_pv(pg, pve, b.pm(0), tva, -1)          # not checked
        assert lock.DIAGNOSTIC is False
        assert pmap.pmap_remove_pv(pg, b.pm(0), tva) == pve
        pmap.pmap_free_pvs(b.pm(0), [pve])


def test_a_lock_taken_twice_is_a_lockdebug_panic_naming_the_lock(monkeypatch):
    """A kernel path that re-takes a simple lock it holds: Kernel.run turns the atomic
    core's LockError into NetBSD's LOCKDEBUG panic, the lock id read off the error."""
    with booted() as b:
        tid = b.switch_to(0)
        lk = pmap.pvalloc_lock

        def step(ci, t):
            lock.simple_lock(lk)
            lock.simple_lock(lk)

        monkeypatch.setattr(b.load, "step", step)
        assert panics(b.kernel.run, b.ci, tid) == \
            f"simple_lock: locking against myself (lock {lk})"


def _pageq_then_anon(an: int) -> None:
    lock.simple_lock(uvm_page.pageq_lock)
    lock.simple_lock(uvm_anon.an_lock + an)
    lock.simple_unlock(uvm_anon.an_lock + an)
    lock.simple_unlock(uvm_page.pageq_lock)


def test_a_lock_taken_out_of_order_is_a_finding_not_a_failure():
    """LOCKDEBUG on cpu0: pageq (PAGE QUEUES) held while the kernel takes an anon's lock
    (ANON) is out of the table's order; the core records it, with both call sites, and
    the acquisition goes on as if nothing were checked."""
    with booted() as b:
        _pageq_then_anon(7)
        _pageq_then_anon(9)
        assert b.held() == 0
        found = b.lock_order()
        assert [(f["held"], f["wanted"], f["held_at"], f["wanted_at"], f["count"],
                 f["first"]["wanted"]) for f in found] == [
            ("pageq", "anon", "_pageq_then_anon", "_pageq_then_anon", 2, "anon[7]")]
        audit = b.kernel.audit(b.seg)
        assert audit["lock_order"] == found and audit["violations"] == []
        b.forget_lock_order()                                # (booted() checks the order)
