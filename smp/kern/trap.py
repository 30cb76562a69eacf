"""Memory references, the MMU and trap() (arch/i386/i386/trap.c, the i386 MMU).

A simulated process touching a page goes through what the hardware does:

    take pending interrupts first (the TLB-shootdown IPI, device interrupts)
    TLB hit -> done (setting PG_M on the first write through the entry)
    miss -> walk the current pmap's page tables without locks: PDE, then PTE;
            valid and permitted -> set PG_U (and PG_M) with a locked cmpxchg,
            fill the TLB
    otherwise a page fault -> trap() -> uvm_fault(); ENOMEM kills the process
            ("UVM: pid %d (%s), uid %d killed: out of swap"), other errors are
            a SIGSEGV

Each CPU's TLB caches (page, page version, PTP, PTP version) per virtual page
of its current pmap and is flushed when %cr3 changes.  With ``diagnostic``
on, a TLB hit whose page or PTP has been freed or handed to someone else
since the entry was filled is a *stale TLB entry*: the translation the CPU
used is no longer the page table's, which a correct kernel prevents by
shooting the entry down before the page can be reused.  It is reported on
the console and counted (``stale_tlb``), and the reference is retried
through the page tables.
"""

from __future__ import annotations

from smp.kern import intr, lock, pmap, subr_prf
from smp.kern.param import ENOMEM, PG_M, PG_RW, PG_U, PG_V, VM_PROT_READ, VM_PROT_WRITE
from smp.kern.uvm import counter, shared
from smp.kern.uvm_fault import uvm_fault

MSG_STALE = subr_prf.Message(
    "", "pmap: stale TLB entry: pid %d va 0x%08x -> pa 0x%08x via PTP pa 0x%08x (pmap %p)")
MSG_KILL = subr_prf.Message("", "UVM: pid %d (%s), uid %d killed: out of swap")
MSG_SEGV = subr_prf.Message("", "pid %d (%s): SIGSEGV at va 0x%08x (error %d)")

SIGKILL, SIGSEGV = 9, 11
TLB_ENTRIES = 64          # the Pentium Pro's data TLB: 64 entries for 4 KiB pages
_ci = None
_diag = False
_phys_off = 0


class Killed(Exception):  # noqa: N818 - a signal, not an error
    """The process got a fatal signal in trap(); the kernel makes it exit."""

    def __init__(self, sig: int):
        super().__init__(sig)
        self.sig = sig


def attach(ci, kernel) -> None:
    global _ci, _diag, _phys_off
    _ci = ci
    _diag = kernel.config.diagnostic
    _phys_off = ci.seg.layout.arrays["physmem"][0]


def memref(tid: int, va: int, write: bool) -> None:
    """Touch ``va`` as thread ``tid`` (its pmap is loaded on this CPU).  May sleep/kill."""
    ci = _ci
    cb = ci.cnt_base
    cnt = shared.cnt
    cnt[cb + counter.memrefs] += 1
    if ci.ipi_pending() or intr.due():
        intr.at_point()                      # interrupts and IPIs between instructions
    tlb = ci.pmap.tlb
    vpn = va >> 12
    e = tlb.get(vpn)
    ver = shared.pg_version
    if e is not None:
        pg, pgv, ptp, ptpv, rw, dirty = e
        if _diag and (ver[pg] != pgv or ver[ptp] != ptpv):
            cnt[cb + counter.stale_tlb] += 1
            pm = shared.cpu_pmap[ci.cpu]
            subr_prf.printf(MSG_STALE, shared.np["proc"][tid]["pid"], va, pg << 12, ptp << 12,
                            pmap.pmap_addr(pm))
            del tlb[vpn]
        elif not write or (rw and dirty):
            cnt[cb + counter.tlb_hits] += 1
            return
        elif not rw:
            pass                                    # write to a read-only entry: fault
        else:
            del tlb[vpn]                            # first write: the walk sets PG_M
    cnt[cb + counter.tlb_misses] += 1
    core = ci.core
    phys = shared.physmem
    while True:
        pm = shared.cpu_pmap[ci.cpu]
        pde = phys[(shared.pm_pdir[pm] << 10) + (va >> 22)]
        if pde & PG_V:
            ptp = pde >> 12
            idx = (ptp << 10) + ((va >> 12) & 0x3FF)
            pte = phys[idx]
            if pte & PG_V and (not write or pte & PG_RW):
                want = PG_U | (PG_M if write else 0)
                if pte & want == want or core.cas32(_phys_off + 4 * idx, pte, pte | want):
                    pg = pte >> 12
                    if len(tlb) >= TLB_ENTRIES:
                        del tlb[next(iter(tlb))]      # evict the oldest entry
                    tlb[vpn] = (pg, ver[pg], ptp, ver[ptp], bool(pte & PG_RW),
                                bool(write or pte & PG_M))
                    return
                continue                           # the PTE changed under us: walk again
        trap_pagefault(tid, va, VM_PROT_WRITE if write else VM_PROT_READ)


def trap_pagefault(tid: int, va: int, access: int) -> None:
    """T_PAGEFLT from user mode: uvm_fault, and the 2001 branch's reaction to failure."""
    big = _ci.md.biglock
    if big:
        lock.kernel_lock()                         # KERNEL_PROC_LOCK(p)
    try:
        r = uvm_fault(tid, va, access)
    finally:
        if big and lock.lock_held(lock.KERNEL_LOCK_ID):
            lock.kernel_unlock()
    if r == 0:
        return
    trap_fatal(tid, va, r)


def trap_fatal(tid: int, va: int, r: int) -> None:
    """A fault that uvm_fault could not resolve: SIGKILL for ENOMEM, else SIGSEGV."""
    p = shared.np["proc"][tid]
    if r == ENOMEM:
        shared.cnt[_ci.cnt_base + counter.oom_kills] += 1
        subr_prf.printf(MSG_KILL, int(p["pid"]), int(p["name"]), int(p["uid"]))
        raise Killed(SIGKILL)
    subr_prf.printf(MSG_SEGV, int(p["pid"]), int(p["name"]), va, r)
    raise Killed(SIGSEGV)
