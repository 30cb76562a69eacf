"""The TLB shootdown's rendezvous when a target waits for a lock or is idle.

pmap_tlb_shootnow acknowledges for a target that is spinning (or parked) for a lock or
idle, without waking it: on the real machine such a CPU takes the IPI at once.  The
target's invalidations stay queued with its IPI bit set, and trap.memref answers
pending IPIs -- also those posted while it was answering others (intr.at_point loops)
-- before it looks in the TLB.  These tests fake cpu1 in a 2-CPU machine booted in the
test process (only cpu0 runs), so each decision is seen on its own.
"""

from __future__ import annotations

import pytest
from kernharness import booted

from smp.kern import intr, pmap, uvm_map
from smp.kern.param import NBPD, NBPG, PG_RW, PG_V, PG_W, VM_PROT_READ
from smp.machine import _atomic


def _share_with_cpu1(b, i: int = 0) -> int:
    """Process i's pmap is loaded on cpu0 and (as the fake) on cpu1; returns the pmap."""
    b.switch_to(i)
    pm = b.pm(i)
    b.a["pm_cpus"][pm] = int(b.a["pm_cpus"][pm]) | 0b10
    return pm


@pytest.mark.parametrize("state", [_atomic.CS_SPINNING, _atomic.CS_IDLE])
def test_the_shooter_answers_for_a_waiting_or_idle_target_and_leaves_its_queue(state):
    with booted(["ncpu=2"]) as b:
        va = b.mmap(0, 2)
        assert b.fault(0, va) == 0
        pm = _share_with_cpu1(b)
        b.seg.cpus["state"][1] = state
        before = b.counters()
        b.unmap_keep_pages(0, va)              # pmap_remove: shootdown to cpu1, rendezvous
        d = b.delta(before)
        assert d["tlb_ipis"] == 1 and d["tlb_ipi_proxied"] == 1
        assert int(b.a["tlb_ipi_mask"][0]) == 0            # nothing left to wait for
        # cpu1 has not run: its IPI and its queued invalidation wait for its next point
        assert int(b.seg.cpus["ipi_pending"][1]) & intr.I386_IPI_TLB
        assert int(b.a["tlbq_count"][1]) == 1
        assert int(b.a["tlbq_va"][pmap.PMAP_TLB_MAXJOBS]) == va
        assert int(b.a["tlbq_pmap"][pmap.PMAP_TLB_MAXJOBS]) == pm
        assert b.check() == []


def test_a_running_target_is_not_answered_for():
    with booted(["ncpu=2"]) as b:
        off = pmap._ipi_mask_off                            # cpu0's tlb_ipi_mask word
        b.ci.core.or64(off, 0b10)
        state = b.seg.cpus["state"]
        for s, left in ((_atomic.CS_RUNNING, 0b10), (_atomic.CS_SPINNING, 0)):
            state[1] = s
            assert pmap._ack_quiet_cpus(off, 0b10) == left
            assert int(b.a["tlb_ipi_mask"][0]) == left
        assert b.cnt("tlb_ipi_proxied") == 1


def test_memref_answers_an_ipi_posted_while_it_served_another(monkeypatch):
    """A TLB IPI that comes while the CPU serves another one (waiting for a lock in the
    handler, as the shooter sees it: CS_SPINNING, so answered for) is applied before
    the TLB is used: the reference does not hit the entry the IPI invalidates."""
    with booted(["ncpu=2"]) as b:
        va = b.mmap(0, 2)
        b.touch(0, va)                                      # fault, then the TLB has va
        b.touch(0, va)
        assert va >> 12 in pmap._pc.tlb
        real_handler = intr.i386_ipi_handler
        calls = []

        def handler_meanwhile_shot():
            calls.append(1)
            real_handler()
            if len(calls) == 1:
                # another CPU invalidated va for cpu0 meanwhile and answered for it
                b.a["tlbq_va"][0] = va
                b.a["tlbq_pmap"][0] = b.pm(0)
                b.a["tlbq_count"][0] = 1
                b.ci.send_ipi(0, intr.I386_IPI_TLB, False)

        monkeypatch.setattr(intr, "i386_ipi_handler", handler_meanwhile_shot)
        b.ci.send_ipi(0, intr.I386_IPI_DEVINTR, False)   # something to make memref look
        before = b.counters()
        b.touch(0, va)
        d = b.delta(before)
        assert d.get("tlb_hits", 0) == 0 and d["tlb_misses"] == 1, d
        assert int(b.seg.cpus["ipi_pending"][0]) == 0 and int(b.a["tlbq_count"][0]) == 0
        b.touch(0, va + NBPG)
        assert b.check() == []


def _pte(b, pm: int, va: int) -> int:
    phys = b.a["physmem"]
    pde = int(phys[(int(b.a["pm_pdir"][pm]) << 10) + (va >> 22)])
    return int(phys[((pde >> 12) << 10) + ((va >> 12) & 0x3FF)]) if pde & PG_V else 0


def test_pmap_protect_walks_by_block_and_shoots_every_page_it_write_protects():
    """1.91's pmap_write_protect: a 4 MiB block at a time (a block without a PTP is
    skipped), each writable PTE in [sva, eva) loses PG_RW and is shot down; fork's
    ``skip_wired`` leaves wired ones writable."""
    with booted(["ncpu=2"]) as b:
        tid = b.tid(0)
        va = b.mmap(0, 3 * 1024, align=NBPD)                 # three blocks, from a PDE
        pages = [va, va + 5 * NBPG, va + NBPD + 7 * NBPG, va + 2 * NBPD + NBPG,
                 va + 3 * NBPD - NBPG]
        for p in pages:
            assert b.fault(0, p) == 0
        assert b.fault(0, pages[1], wire=True) == 0
        uvm_map.set_wired(tid, pages[1], True)
        pm = _share_with_cpu1(b)
        b.seg.cpus["state"][1] = _atomic.CS_SPINNING
        # the middle block's PTP goes (its only page unmapped), so the walk must skip it
        b.unmap_keep_pages(0, pages[2])
        b.a["tlbq_count"][1] = 0
        b.a["tlbq_flush"][1] = 0
        before = b.counters()
        pmap.pmap_protect(pm, va + 3 * NBPG, va + 3 * NBPD, VM_PROT_READ, skip_wired=True)
        d = b.delta(before)
        assert _pte(b, pm, pages[0]) & PG_RW                 # before sva: untouched
        assert _pte(b, pm, pages[1]) & (PG_RW | PG_W) == PG_RW | PG_W    # wired: kept
        for p in pages[3:]:
            assert _pte(b, pm, p) & (PG_V | PG_RW) == PG_V    # write-protected, mapped
        assert d["tlb_shootdowns"] == 2 and d["tlb_ipi_proxied"] == 1
        n = int(b.a["tlbq_count"][1])
        assert [int(x) for x in b.a["tlbq_va"][pmap.PMAP_TLB_MAXJOBS:][:n]] == pages[3:]
        # without skip_wired the wired page is write-protected too
        pmap.pmap_protect(pm, va, va + NBPD, VM_PROT_READ)
        assert _pte(b, pm, pages[1]) & (PG_RW | PG_W) == PG_W
        assert not _pte(b, pm, pages[0]) & PG_RW
        assert b.check() == []



def test_a_device_interrupt_posted_while_the_tlb_handler_runs_stays_pending(monkeypatch):
    """i386_ipi_handler takes the IPI bits once; the TLB part must not take them again, or
    a disk completion posted meanwhile is lost (a run then waits for its time limit with
    the cluster's pages still paging)."""
    with booted(["ncpu=2"]) as b:
        ci = b.ci
        real_take = ci.take_ipis
        taken = []

        def take_then_the_disk_completes():
            taken.append(real_take())
            if len(taken) == 1:
                ci.send_ipi(0, intr.I386_IPI_DEVINTR, False)  # right after the take
            return taken[-1]

        monkeypatch.setattr(ci, "take_ipis", take_then_the_disk_completes)
        b.a["tlbq_flush"][0] = 1
        ci.send_ipi(0, intr.I386_IPI_TLB, False)
        intr.i386_ipi_handler()
        assert taken[0] == intr.I386_IPI_TLB
        assert ci.ipi_pending() & intr.I386_IPI_DEVINTR


def test_an_interrupt_that_comes_while_one_is_served_is_held_and_served_next(monkeypatch):
    """The disk completes a second write while this CPU's biodone waits for aiodoned_lock:
    the spin loop's handler takes the IPI and holds it (no nested service); the next
    delivery point serves it.  (Before, the outer service's end cleared what the nested
    handler held: the completion was lost, and the run waited for its time limit.)"""
    from smp.kern import uvm_pager

    with booted(["ncpu=2"]) as b:
        ci = b.ci
        calls = []
        real = uvm_pager.uvm_aio_biodone

        def biodone(cpu):
            calls.append(cpu)
            if len(calls) == 1:
                ci.send_ipi(0, intr.I386_IPI_DEVINTR, False)
                intr.i386_ipi_handler()          # as spin_turn calls it while waiting
            real(cpu)

        monkeypatch.setattr(uvm_pager, "uvm_aio_biodone", biodone)
        ci.send_ipi(0, intr.I386_IPI_DEVINTR, False)
        intr.at_point()
        assert calls == [0] and intr.due()       # the second one is held ...
        intr.at_point()
        assert calls == [0, 0] and not intr.due()   # ... and served at the next point
