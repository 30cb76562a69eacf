"""The i386 pmap of the 1.91 lineage, on a multiprocessor (arch/i386/i386/pmap.c).

A pmap is a page directory (PDP, one physical page: user PDEs 0..766, the
recursive PDE 767, kernel PDEs 768.. shared by all pmaps) plus the page-table
pages (PTPs) it has allocated.  A PTP is a vm_page owned by the pmap's object
at offset = its PDE index; its ``wire_count`` is 1 + its valid PTEs; the
pmap's ``memq`` lists its PTPs oldest first.  PTEs live in the PTP's page of
simulated physical memory.  ``resident_count`` counts mappings + PTPs + the
PDP; ``wired_count`` wired mappings.  Every managed page has a pv list of
(pmap, va, ptp) entries under its ``pvh`` lock, and an attrs byte that
collects the U/M bits of removed mappings.

Locking (NETBSD-FACTS §3): ``pmap_main_lock`` (spinlockmgr) shared for
map-to-head operations (pmap_enter, pmap_remove), exclusive for head-to-map
ones (pmap_page_remove); the pmap's own lock (plus the current pmap's, lower
address first, in ``pmap_map_ptes``; none for the kernel pmap); ``pvh``
locks per page; the global ``pvalloc_lock``, ``pmaps_lock``,
``pmap_tmpptp_lock`` and ``pmap_zero_page_lock``.

pmap_enter(pmap, va, pa, prot, flags)       [§4.1]
    main lock shared; map the PTEs (lock pmap, and curpmap if different)
    user pmap: ptp = pmap_get_ptp(): the hint, or the PDE's page, or
        pmap_alloc_ptp(): uvm_pagealloc(USERESERVE|ZERO), failing that
        pmap_steal_ptp() when ``steal`` has ptp; no PTP ->
        PMAP_CANFAIL ? ENOMEM : panic("pmap_enter: get ptp failed")
    old PTE valid: same page -> keep its pv entry; other page -> unlink the
        old pv entry (reused); invalid: resident++, PTP wire_count++
    managed page: a pv entry (pmap_alloc_pv: free entry, unused pv page, a new
        pv page from the kernel reserve, pv stealing when ``steal`` has pv) ->
        none: PMAP_CANFAIL ? ENOMEM : panic("pmap_enter: no pv entries available")
    write the PTE; a changed valid PTE is shot down on every CPU using the pmap

the pv allocator                             [§2.4, as 1.91]
    pv_freepages / pv_unusedpgs are TAILQs of pv pages; pmap_init's pv_initpage
    (from kernel_map) sits on pv_unusedpgs until wanted; below PVE_LOWAT free
    entries a new page is made in advance; a new page needs a kmem_map VA
    (try-locked) -- kept in pv_cachedva when the page itself cannot be had --
    and a kmem_object page (kmem_object try-locked) from the reserve; failing
    that, steal_one walks every managed page from the first for an unwired
    user mapping.  Freeing above PVE_HIWAT gives an unused page back
    (pmap_free_pvpage, map try-locked), except for the kernel pmap's entries.

pmap_create / pmap_release                   [§4.7]
    the page directory comes from uvm_km_alloc(kernel_map) -- a kernel_object
    page mapped with a plain pmap_enter on the kernel pmap (a kernel pv entry)
    -- and goes back with uvm_km_free; kernel_map growth beyond the kernel's
    PTPs calls pmap_growkernel, which may steal a user PTP (§4.6).

pmap_steal_ptp(caller, idx)                  [§4.3, exactly the 1.91 behaviour]
    pmaps_lock for the whole search, from pmaps_hand; the caller's own pmap is
    a candidate (it is locked already); others are only try-locked; a PTP with
    any wired PTE is skipped; the first other PTP is emptied with
    pmap_remove_ptes (pv entries, stats, U/M bits), its PDE zeroed, the page
    moved to the caller's object and zeroed.  The 2000 code flushed only the
    local TLB; ``shootdown_on_steal = on`` also shoots the victim's 4 MiB
    down on every CPU where it is active.  Every steal prints a console line
    (the printf Sommerfeld added on the i386mp branch).  A stolen pv entry is
    flushed the same way (1.91: pmap_update_pg when the victim is current).

Choices where the facts are open (NETBSD-FACTS §12):
* ``pmap_canfail_leak`` (default off): on, a CANFAIL PTP failure returns
  without releasing the pmap locks and the main lock, as the OpenBSD 1.63 copy
  of the 1.91 code does; off, it unlocks (NetBSD 1.135).
* A CANFAIL pv-allocation failure undoes the stats pmap_enter had already
  bumped (§4.1 step 7 notes the real code leaks them); we keep the counts exact
  so the DIAGNOSTIC invariants stay meaningful.
* TLB shootdown follows the merged i386mp/x86_64 design (§6.2): per-CPU job
  queues of PMAP_TLB_MAXJOBS = 16 (overflow -> full flush), an IPI, and a
  rendezvous during which the initiator keeps answering its own IPIs.  PTPs a
  removal empties are freed only after the rendezvous, as the later x86 code
  does, so a correct kernel never leaves a stale translation behind.  A target
  spinning for a lock or idle would take the IPI at once; the initiator
  acknowledges for it rather than wait for the host to run its process, and the
  target applies its queue before it next uses its TLB (pmap_tlb_shootnow).
* Kernel-pmap statistics are updated atomically: the real code changed them
  without a lock (the kernel pmap is never locked in pmap_map_ptes).

A hazard of the 1.91 code kept on purpose (NETBSD-FACTS §6.4 item 2): PTP
stealing holds ``pmap_tmpptp_lock`` while ``pmap_remove_ptes`` frees pv entries
under ``pvalloc_lock``, and pv stealing holds ``pvalloc_lock`` while
``pmap_tmpmap_pvepte`` takes ``pmap_tmpptp_lock``.  Under the big lock (the
i386mp branch of January 2001) or on one CPU the two never run at once; with
``biglock = off`` two CPUs stealing at the same moment deadlock, which runs and
``smp explore`` report as a deadlock naming both locks.
"""

from __future__ import annotations

import os
import time

import numpy as np

from smp.kern import kern_fail, lock, subr_prf
from smp.kern import uvm as U
from smp.kern.param import (
    APTE_BASE,
    ENOMEM,
    KERNBASE,
    KERNEL_PMAP,
    NBPD,
    NBPG,
    NKPTP_MAX,
    OWN_KPTP,
    OWN_PDP,
    OWN_PTP,
    OWN_PVPAGE,
    PDSLOT_KERN,
    PDSLOT_PTE,
    PG_BUSY,
    PG_G,
    PG_M,
    PG_PVLIST,
    PG_RW,
    PG_U,
    PG_V,
    PG_W,
    PGSHIFT,
    PMAP_CANFAIL,
    PMAP_WIRED,
    PTE_BASE,
    UVM_PGA_USERESERVE,
    UVM_PGA_ZERO,
    VM_MAX_KERNEL_ADDRESS,
    VM_MAXUSER_ADDRESS,
    VM_PROT_WRITE,
    PG_u,
    pdei,
    ptei,
)
from smp.kern.uvm import counter, shared
from smp.kern.uvm_page import (
    OWNER_COUNTER,
    memq_insert_tail,
    memq_remove,
    uvm_pagealloc,
    uvm_pagefree,
    uvm_pagerealloc,
)
from smp.machine import _atomic
from smp.machine.layout import ArraySpec

PVE_PER_PVPAGE = 255
MASK64 = (1 << 64) - 1
PVE_LOWAT = PVE_PER_PVPAGE // 2
PVE_HIWAT = PVE_LOWAT + 2 * PVE_PER_PVPAGE
PMAP_TLB_MAXJOBS = 16
I386_IPI_TLB = 0x8
ALLOCPV_NEED, ALLOCPV_TRY, ALLOCPV_NONEED = 0, 1, 2
PMAP_KVA = 0xC0C0_0000          # where struct pmaps "live", for addresses in messages

# pmap_glob slots: the pmaps list and its steal hand, nkpde, the pv allocator's lists (head,
# tail), its free count, the number of pmaps, pv_cachedva (a page index of kmem_map, -1 none),
# pv_initpage (a pv page number, -1 once freed)
(G_PMAPS, G_HAND, G_NKPDE, G_PVFREE, G_PVUNUSED, G_NFPVENTS, G_NPMAPS, G_PVFREE_TAIL,
 G_PVUNUSED_TAIL, G_PVCACHEDVA, G_PVINITPAGE) = range(11)
# pvp_list values
PVL_NONE, PVL_FREE, PVL_UNUSED = 0, 1, 2
PM_FIELDS = ("pm_inuse", "pm_refs", "pm_pdir", "pm_ptphint", "pm_resident", "pm_wired",
             "pm_memq_head", "pm_memq_tail", "pm_npages", "pm_next", "pm_prev", "pm_owner")
# pm_pdirva: the page directory's kernel VA (0: made at boot, before kernel_map)

Message = subr_prf.Message
MSG_STEAL = Message("", "pmap_steal_ptp: stole PTP pa 0x%08x (va 0x%08x) from pmap %p "
                        "for pmap %p va 0x%08x on cpu%d")
MSG_STEAL_PV = Message("", "pmap_try_steal_pv: stole pv entry: pmap %p va 0x%08x (pa 0x%08x) "
                           "for pmap %p")
P_GETPTP = Message("pmap_enter", "pmap_enter: get ptp failed", "panic")
P_NOPV = Message("pmap_enter", "pmap_enter: no pv entries available", "panic")
P_TOOBIG = Message("pmap_enter", "pmap_enter: too big", "panic")
P_PDP = Message("pmap_enter", "pmap_enter: trying to map over PDP/APDP!", "panic")
P_NOKPTP = Message("pmap_enter", "pmap_enter: missing kernel PTP!", "panic")
P_MISMATCH = Message("pmap_steal_ptp", "pmap_steal_ptp: PTP mismatch!", "panic")
P_UNMANAGED = Message("pmap_get_ptp", "pmap_get_ptp: unmanaged user PTP", "panic")
P_GROW = Message("pmap_growkernel", "pmap_growkernel: alloc ptp failed", "panic")
P_PINIT = Message("pmap_pinit", "pmap_pinit: kernel_map out of virtual space!", "panic",
                  late=True)
P_BUSYPTP = Message("pmap_release", "pmap_release: busy page table page", "panic")
P_NOPVLIST = Message("pmap_remove_ptes",
                     "pmap_remove_ptes: managed page without PG_PVLIST for 0x%lx", "panic")
P_PVMISS = Message("pmap_remove_pv", "pmap_remove_pv: no pv entry for pmap %p va 0x%lx",
                   "panic")
P_RENDEZVOUS = Message("pmap_tlb_shootnow", "TLB IPI rendezvous failed (mask %x)", "panic")
P_UNWIRE = Message("pmap_unwire", "pmap_unwire: invalid (unmapped) va 0x%lx", "panic")
MSG_UNWIRE = Message("", "pmap_unwire: wiring for pmap %p va 0x%lx didn't change!")
del Message

# lock ids (declare): the global locks by their NetBSD names; pm_lock + pm is pmap pm's
# lock (pm_obj.vmobjlock), pvh_lock + pg page pg's pv-head lock, tlbq_lock + cpu a CPU's
# TLB-shootdown queue
pmap_main_lock = pmaps_lock = pvalloc_lock = pmap_tmpptp_lock = -1
pmap_zero_page_lock = pmap_copy_page_lock = pm_lock = pvh_lock = -1
tlbq_lock = tlb_job_lock = -1
npvpages = 0                    # kmem_map VA for pv pages (declare)


def declare(kernel, locks) -> list[ArraySpec]:
    """The pmaps, the page-table pages' memory, pv heads and pv pages, and their locks."""
    global pmap_main_lock, pmaps_lock, pvalloc_lock, pmap_tmpptp_lock, pmap_zero_page_lock
    global pmap_copy_page_lock, pm_lock, pvh_lock, npvpages
    npages = kernel.machine.npages
    maxpmap = kernel.nthreads + 1            # pmap 0 is the kernel's
    npvpages = npages // 2 + 64
    npve = npvpages * PVE_PER_PVPAGE
    pmap_main_lock = locks.declare("pmap_main_lock", "rw")      # spinlockmgr
    pmaps_lock = locks.declare("pmaps_lock")
    pvalloc_lock = locks.declare("pvalloc_lock")
    pmap_tmpptp_lock = locks.declare("pmap_tmpptp_lock")
    pmap_zero_page_lock = locks.declare("pmap_zero_page_lock")
    pmap_copy_page_lock = locks.declare("pmap_copy_page_lock")
    pm_lock = locks.declare("pmap", count=maxpmap, label="pmap[{i}]")
    pvh_lock = locks.declare("pvh", count=npages, label="pvh[{i}]")
    i4, i8, u4, u8 = np.dtype("<i4"), np.dtype("<i8"), np.dtype("<u4"), np.dtype("<u8")
    return [
        ArraySpec("physmem", u4, (npages * 1024,)),    # page-table pages' contents
        ArraySpec("pvh_list", i4, (npages,)),
        ArraySpec("pvh_attrs", i4, (npages,)),
        *(ArraySpec(f, i4, (maxpmap,)) for f in PM_FIELDS),       # struct pmap
        ArraySpec("pm_pdirva", i8, (maxpmap,)),
        ArraySpec("pm_cpus", u8, (maxpmap,)),          # CPU bitmask: 64 CPUs need bit 63
        ArraySpec("pmap_glob", i4, (16,)),
        *(ArraySpec(f, i4, (npve,)) for f in ("pv_next", "pv_pmap", "pv_ptp")),
        ArraySpec("pv_va", i8, (npve,)),
        *(ArraySpec(f, i4, (npvpages,)) for f in ("pvp_pg", "pvp_nfree", "pvp_free",
                                                  "pvp_next", "pvp_prev", "pvp_list")),
        ArraySpec("pvp_va", i8, (npvpages,)),
        ArraySpec("cpu_pmap", i4, (kernel.machine.ncpu,)),   # pmap in each CPU's %cr3
    ]


def declare_tlb(kernel, locks) -> list[ArraySpec]:
    """The TLB-shootdown queues (pmap_tlb_shootdown_q), one per CPU, and their locks.

    Declared after the VM objects' locks rather than with the rest of the pmap's, so the
    lock ids stay those of earlier versions (old run directories replay identically).
    """
    global tlbq_lock, tlb_job_lock
    ncpu = kernel.machine.ncpu
    tlbq_lock = locks.declare("pmap_tlb_shootdown_q", count=ncpu, label="tlb_q[{i}]")
    tlb_job_lock = locks.declare("pmap_tlb_shootdown_job_lock")
    i4, i8 = np.dtype("<i4"), np.dtype("<i8")
    return [
        ArraySpec("tlbq_count", i4, (ncpu,)),
        ArraySpec("tlbq_flush", i4, (ncpu,)),
        ArraySpec("tlbq_va", i8, (ncpu * PMAP_TLB_MAXJOBS,)),
        ArraySpec("tlbq_pmap", i4, (ncpu * PMAP_TLB_MAXJOBS,)),
        ArraySpec("tlb_ipi_mask", np.dtype("<u8"), (ncpu,)),   # rendezvous masks
    ]


def format(seg, kernel) -> None:
    """Boot (pmap_bootstrap): no pv entries anywhere, the kernel pmap with the ``nkpde``
    kernel PTPs locore set up (the submaps grow more: uvm_km.format_maps)."""
    seg.arrays["pvh_list"][:] = -1
    pmap_bootstrap(seg, kernel.config.nkpde)


class PerCPU:
    """The pmap's per-CPU state: this CPU's TLB and its place in the shootdown protocol."""

    def __init__(self, ci):
        self.tlb: dict[int, tuple] = {}     # vpn -> (pg, pg_version, ptp, ptp_version, rw)
        self.cpu = ci.cpu


_ci = None
_cfg = None
_steal_ptp = _steal_pv = _shootdown_on_steal = _leak = False
_phys_off = 0      # byte offset of physmem in the segment (atomic PTE operations)
_pm_cpus_off = 0
_ipi_mask_off = 0
_core = None
_ptread = None     # _core.ptread: pmap_extract of the current pmap in one call
_ptscan = None     # _core.ptscan: pmap_extract of a run of its pages in one call
_cpu = 0
_cpu_pmap = _pm_pdir = None      # shared.cpu_pmap, shared.pm_pdir (attach)
_pc: PerCPU | None = None
_physmem_np = None
_cpu_state = None  # every CPU's CS_* state (the shooter's _ack_quiet_cpus reads it)
# targets a shooter answers for: waiting for a lock, idle, or gone (_shootnow_wait)
_QUIET = (_atomic.CS_SPINNING, _atomic.CS_IDLE, _atomic.CS_DONE)


def attach(ci, kernel) -> None:
    global _ci, _cfg, _steal_ptp, _steal_pv, _shootdown_on_steal, _leak, _core, _pc
    global _phys_off, _pm_cpus_off, _ipi_mask_off, _physmem_np, _ptread, _ptscan, _cpu
    global _cpu_pmap, _pm_pdir, _cpu_state
    kernel_config = kernel.config
    _ci = ci
    _cfg = kernel_config
    _steal_ptp = "ptp" in kernel_config.steal
    _steal_pv = "pv" in kernel_config.steal
    _shootdown_on_steal = kernel_config.shootdown_on_steal
    _leak = kernel_config.pmap_canfail_leak
    _core = ci.core
    _ptread = _core.ptread
    _ptscan = _core.ptscan
    _cpu = ci.cpu
    _cpu_pmap, _pm_pdir = shared.cpu_pmap, shared.pm_pdir
    lay = ci.seg.layout.arrays
    _phys_off = lay["physmem"][0]
    _pm_cpus_off = lay["pm_cpus"][0]
    _ipi_mask_off = lay["tlb_ipi_mask"][0]
    _physmem_np = ci.seg.arrays["physmem"]
    _cpu_state = ci.seg.cpus["state"]
    _pc = PerCPU(ci)
    ci.pmap = _pc


def pmap_addr(pm: int) -> int:
    return PMAP_KVA + pm * 0x40


def _cnt(idx: int, n: int = 1) -> None:
    shared.cnt[_ci.cnt_base + idx] += n


def _stat_add(pm: int, arr, d: int) -> None:
    if pm == KERNEL_PMAP:     # unlocked in the real code: keep it exact with atomics
        off = _ci.seg.layout.arrays["pm_resident" if arr is shared.pm_resident else "pm_wired"][0]
        _core.fadd32(off + 4 * pm, d)
    else:
        arr[pm] += d


# --- boot ----------------------------------------------------------------------

def pmap_bootstrap(seg, nkpde: int) -> None:
    """Boot (parent): the kernel pmap, its PDP and the ``nkpde`` kernel PTPs of locore."""
    a = seg.arrays
    a["pm_ptphint"][:] = -1
    a["pm_memq_head"][:] = -1
    a["pm_memq_tail"][:] = -1
    a["pm_next"][:] = -1
    a["pm_prev"][:] = -1
    a["pm_owner"][:] = -1
    g = a["pmap_glob"]
    g[G_PMAPS] = g[G_HAND] = g[G_PVFREE] = g[G_PVUNUSED] = -1
    g[G_PVFREE_TAIL] = g[G_PVUNUSED_TAIL] = g[G_PVCACHEDVA] = g[G_PVINITPAGE] = -1
    for f in ("pv_next", "pv_pmap", "pv_ptp"):
        a[f][:] = -1
    a["pvp_pg"][:] = -1
    a["pvp_free"][:] = -1
    a["pvp_next"][:] = -1
    a["pvp_prev"][:] = -1
    a["cpu_pmap"][:] = KERNEL_PMAP
    pdp = _boot_page(seg, OWN_PDP, KERNEL_PMAP, 0)
    a["pm_inuse"][KERNEL_PMAP] = 1
    a["pm_refs"][KERNEL_PMAP] = 1
    a["pm_pdir"][KERNEL_PMAP] = pdp
    a["pm_resident"][KERNEL_PMAP] = 1
    a["pm_cpus"][KERNEL_PMAP] = (1 << seg.layout.ncpu) - 1      # active everywhere
    phys = a["physmem"]
    phys[pdp * 1024 + PDSLOT_PTE] = (pdp << 12) | PG_V | PG_RW
    g[G_NKPDE] = 0
    pmap_growkernel_boot(seg, KERNBASE + min(nkpde, NKPTP_MAX) * NBPD)


def pmap_growkernel_boot(seg, maxkvaddr: int) -> int:
    """pmap_growkernel before any CPU runs (parent): kernel PTPs from the free list to cover
    ``maxkvaddr``, their PDEs copied into every pmap; returns the VA now covered."""
    a = seg.arrays
    g = a["pmap_glob"]
    phys = a["physmem"]
    kpdir = int(a["pm_pdir"][KERNEL_PMAP]) * 1024
    need = min(-(-(maxkvaddr - KERNBASE) // NBPD), NKPTP_MAX)
    while g[G_NKPDE] < need:
        slot = PDSLOT_KERN + int(g[G_NKPDE])
        ptp = _boot_page(seg, OWN_KPTP, KERNEL_PMAP, slot)
        phys[kpdir + slot] = (ptp << 12) | PG_V | PG_RW
        a["pg_wire"][ptp] = 1
        a["pm_resident"][KERNEL_PMAP] += 1
        pm = int(g[G_PMAPS])
        while pm >= 0:
            phys[int(a["pm_pdir"][pm]) * 1024 + slot] = phys[kpdir + slot]
            pm = int(a["pm_next"][pm])
        g[G_NKPDE] += 1
    return KERNBASE + int(g[G_NKPDE]) * NBPD


def _boot_page(seg, owner: int, obj: int, off: int) -> int:
    """uvm_page_physget: take the first free page at boot (no locks: no CPUs yet)."""
    a = seg.arrays
    q = a["uvmq"]
    pg = int(q[0])
    nxt = int(a["pg_next"][pg])
    q[0] = nxt
    if nxt >= 0:
        a["pg_prev"][nxt] = -1
    a["pg_next"][pg] = a["pg_prev"][pg] = -1
    a["pg_pq"][pg] = 0
    a["pg_owner"][pg] = owner
    a["pg_obj"][pg] = obj
    a["pg_off"][pg] = off
    ux = a["uvmexp"]
    ux[U.FREE] -= 1
    ux[OWNER_COUNTER[owner]] += 1
    a["physmem"][pg * 1024:(pg + 1) * 1024] = 0
    return pg


# --- pmap_create / pmap_destroy ----------------------------------------------

def pmap_create_boot(seg, owner_tid: int) -> int:
    """pmap_create at boot, in the parent (no CPU runs yet, so no locks)."""
    a = seg.arrays
    inuse = a["pm_inuse"]
    pm = int(np.nonzero(inuse[1:] == 0)[0][0]) + 1
    pdp = _boot_page(seg, OWN_PDP, pm, 0)
    inuse[pm] = 1
    a["pm_refs"][pm] = 1
    a["pm_pdir"][pm] = pdp
    a["pm_ptphint"][pm] = -1
    a["pm_resident"][pm] = 1
    a["pm_memq_head"][pm] = a["pm_memq_tail"][pm] = -1
    a["pm_owner"][pm] = owner_tid
    phys = a["physmem"]
    base = pdp * 1024
    phys[base + PDSLOT_PTE] = (pdp << 12) | PG_V | PG_RW
    kb = int(a["pm_pdir"][KERNEL_PMAP]) * 1024
    nk = int(a["pmap_glob"][G_NKPDE])
    phys[base + PDSLOT_KERN: base + PDSLOT_KERN + nk] = \
        phys[kb + PDSLOT_KERN: kb + PDSLOT_KERN + nk]
    g = a["pmap_glob"]
    head = int(g[G_PMAPS])
    a["pm_next"][pm] = head
    a["pm_prev"][pm] = -1
    if head >= 0:
        a["pm_prev"][head] = pm
    g[G_PMAPS] = pm
    g[G_NPMAPS] += 1
    return pm


def pmap_create(owner_tid: int) -> int:
    """A new user pmap (pmap_create -> pmap_pinit); returns it (-1: no pmap slot).

    The page directory is uvm_km_alloc(kernel_map, NBPG): a kernel_object page from the
    kernel reserve, mapped with a plain pmap_enter on the kernel pmap (a kernel pv entry)
    -- so it may sleep ("km_alloc1w"), which it does before anything else is taken (the
    caller runs it again after the wakeup), may grow the kernel's page tables, and may
    panic "pmap_enter: no pv entries available".  Then the recursive PDE and the kernel
    PDEs, copied under pmaps_lock (which freezes nkpde), and LIST_INSERT_HEAD(&pmaps).
    """
    # pmap_pinit -> uvm_km_alloc(kernel_map): the pmap calls up into UVM for its own
    # page directory, as in NetBSD (uvm_km imports the pmap, so only at run time)
    from smp.kern import uvm_km
    pdva = uvm_km.uvm_km_alloc1(uvm_km.KERNEL_MAP, 1, owner=OWN_PDP, obj=-1, off=0)
    if pdva < 0:
        subr_prf.panic(P_PINIT)                  # kernel_map out of virtual space
    pdp = pmap_extract(KERNEL_PMAP, pdva)
    lock.simple_lock(pmaps_lock)
    pm = -1
    for i in range(1, len(shared.pm_inuse)):
        if not shared.pm_inuse[i]:
            pm = i
            break
    if pm < 0:
        lock.simple_unlock(pmaps_lock)
        uvm_km.uvm_km_free(pdva, 1)
        return -1
    shared.pm_inuse[pm] = 1
    lock.simple_unlock(pmaps_lock)
    shared.pg_obj[pdp] = pm                  # (the simulation's owner tag of a PDP)
    pmap_zero_page(pdp)
    shared.pm_refs[pm] = 1
    shared.pm_pdir[pm] = pdp
    shared.pm_pdirva[pm] = pdva
    shared.pm_ptphint[pm] = -1
    shared.pm_resident[pm] = 1
    shared.pm_wired[pm] = 0
    shared.pm_memq_head[pm] = shared.pm_memq_tail[pm] = -1
    shared.pm_npages[pm] = 0
    shared.pm_owner[pm] = owner_tid
    shared.pm_cpus[pm] = 0
    phys = shared.physmem
    base = pdp << 10
    phys[base + PDSLOT_PTE] = (pdp << 12) | PG_V | PG_RW
    lock.simple_lock(pmaps_lock)          # freezes nkpde while the kernel PDEs are copied
    kbase = shared.pm_pdir[KERNEL_PMAP] << 10
    nk = shared.pmap_glob[G_NKPDE]
    phys[base + PDSLOT_KERN: base + PDSLOT_KERN + nk] = \
        phys[kbase + PDSLOT_KERN: kbase + PDSLOT_KERN + nk]
    _list_insert_head(shared.pm_next, shared.pm_prev, G_PMAPS, pm)      # LIST_INSERT_HEAD(&pmaps)
    shared.pmap_glob[G_NPMAPS] += 1
    lock.simple_unlock(pmaps_lock)
    return pm


def pmap_destroy(pm: int) -> None:
    """Drop a reference; the last one releases the pmap (pmap_release): off the pmaps list,
    its PTPs freed, its page directory given back with uvm_km_free(kernel_map) (a page
    directory made at boot, before kernel_map, is simply freed)."""
    lock.simple_lock(pm_lock + pm)
    shared.pm_refs[pm] -= 1
    refs = shared.pm_refs[pm]
    lock.simple_unlock(pm_lock + pm)
    if refs > 0:
        return
    lock.simple_lock(pmaps_lock)
    if shared.pmap_glob[G_HAND] == pm:
        shared.pmap_glob[G_HAND] = shared.pm_next[pm]
    _list_remove(shared.pm_next, shared.pm_prev, G_PMAPS, pm)
    shared.pmap_glob[G_NPMAPS] -= 1
    lock.simple_unlock(pmaps_lock)
    lock.simple_lock(pm_lock + pm)
    ptp = shared.pm_memq_head[pm]
    while ptp >= 0:
        nxt = shared.pg_lnext[ptp]
        if shared.pg_wire[ptp] > 1:
            subr_prf.panic(P_BUSYPTP)
        shared.physmem[(shared.pm_pdir[pm] << 10) + shared.pg_off[ptp]] = 0
        memq_remove(shared.pm_memq_head, shared.pm_memq_tail, pm, ptp)
        _free_ptp_page(ptp)
        ptp = nxt
    pdp, pdva = shared.pm_pdir[pm], shared.pm_pdirva[pm]
    shared.pm_pdir[pm] = -1
    shared.pm_pdirva[pm] = 0
    shared.pm_inuse[pm] = 0
    shared.pm_owner[pm] = -1
    lock.simple_unlock(pm_lock + pm)
    if pdva:
        # (pmap_release -> uvm_km_free(kernel_map): the same upcall as pmap_create's)
        from smp.kern import uvm_km
        uvm_km.uvm_km_free(pdva, 1)
    else:
        uvm_pagefree(pdp)


def _free_ptp_page(ptp: int) -> None:
    shared.pg_wire[ptp] = 0
    _cnt(counter.ptp_free)
    uvm_pagefree(ptp)


def pmap_zero_page(pg: int) -> None:
    """Zero a page-table page through the single zerop window (pmap_zero_page_lock)."""
    lock.simple_lock(pmap_zero_page_lock)
    base = pg << 10
    shared.physmem[base:base + 1024] = _ZEROS
    lock.simple_unlock(pmap_zero_page_lock)


_ZEROS = memoryview(bytes(4096)).cast("I")


def _pagealloc_zeroed(owner: int, obj: int, off: int, flags: int) -> int:
    """uvm_pagealloc(UVM_PGA_ZERO) of a page-table page: the page is zeroed here, through
    pmap_zero_page, since page-table pages are the only ones with contents; -1 if none."""
    pg = uvm_pagealloc(owner, obj, off, -1, flags | UVM_PGA_ZERO)
    if pg >= 0:
        pmap_zero_page(pg)
    return pg


# --- pmap_map_ptes / pmap_unmap_ptes -------------------------------------------

def pmap_map_ptes(pm: int) -> int:
    """Lock what is needed to edit ``pm``'s PTEs; returns the other pmap locked, or -1.

    Kernel pmap: no lock.  The pmap in this CPU's %cr3: its own lock.  Any other:
    both it and the current pmap, lower address first (deadlock avoidance).
    """
    if pm == KERNEL_PMAP:
        return -1
    cur = shared.cpu_pmap[_ci.cpu]
    if cur == pm:
        lock.simple_lock(pm_lock + pm)
        return -1
    if pm < cur:
        lock.simple_lock(pm_lock + pm)
        lock.simple_lock(pm_lock + cur)
    else:
        lock.simple_lock(pm_lock + cur)
        lock.simple_lock(pm_lock + pm)
    return cur


_MAP_PTES_CODE = pmap_map_ptes.__code__     # lockstat's call site of pmap_extract's lock


def pmap_unmap_ptes(pm: int, other: int) -> None:
    if pm == KERNEL_PMAP:
        return
    if other >= 0:
        lock.simple_unlock(pm_lock + other)
    lock.simple_unlock(pm_lock + pm)


# --- PTPs -------------------------------------------------------------------------

def pmap_get_ptp(pm: int, idx: int) -> int:
    """The PTP for PDE slot ``idx``, allocating (or stealing) one if needed; -1 if none.

    => pmap locked; caller holds no pvh lock (stealing takes them).
    """
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pm_lock + pm)
    pde = shared.physmem[(shared.pm_pdir[pm] << 10) + idx]
    if pde & PG_V:
        ptp = pde >> 12
        if shared.pm_ptphint[pm] == ptp:
            return ptp
        if shared.pg_owner[ptp] != OWN_PTP or shared.pg_obj[ptp] != pm:
            subr_prf.panic(P_UNMANAGED)
        shared.pm_ptphint[pm] = ptp
        return ptp
    return pmap_alloc_ptp(pm, idx)


def pmap_alloc_ptp(pm: int, idx: int, just_try: bool = False) -> int:
    """Allocate a PTP for slot ``idx`` of ``pm`` (=> pmap locked)."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pm_lock + pm)
    if kern_fail.ON and kern_fail.fail("pmap_alloc_ptp"):
        ptp = -1
    else:
        ptp = _pagealloc_zeroed(OWN_PTP, pm, idx, UVM_PGA_USERESERVE)
    if ptp < 0:
        if just_try or not _steal_ptp:
            return -1
        t0 = _ci.core.now()
        ptp = pmap_steal_ptp(pm, idx)
        _cnt(counter.steal_ns, _ci.core.now() - t0)
        if ptp < 0:
            return -1
        pmap_zero_page(ptp)           # stolen pages arrive dirty
    shared.pg_flags[ptp] &= ~PG_BUSY       # PTPs are never busy
    shared.pg_wire[ptp] = 1
    memq_insert_tail(shared.pm_memq_head, shared.pm_memq_tail, pm, ptp)
    shared.pm_npages[pm] += 1
    shared.physmem[(shared.pm_pdir[pm] << 10) + idx] = (ptp << 12) | PG_u | PG_RW | PG_V
    _stat_add(pm, shared.pm_resident, 1)
    shared.pm_ptphint[pm] = ptp
    _cnt(counter.ptp_alloc)
    return ptp


def pmap_steal_ptp(caller: int, idx: int) -> int:
    """Steal a PTP from some pmap on the ``pmaps`` list (see the module docstring).

    => ``caller`` locked (it is a candidate too); returns the page, or -1.
    """
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pm_lock + caller)
    lock.simple_lock(pmaps_lock)
    g = shared.pmap_glob
    pm = g[G_HAND] if g[G_HAND] >= 0 else g[G_PMAPS]
    first = pm
    found = -1
    victim_va = 0
    victim = -1
    phys = shared.physmem
    while pm >= 0:
        caller_locked = pm == caller
        if caller_locked or (not kern_fail.trylock_fails("pmap_steal_ptp")
                             and lock.simple_lock_try(pm_lock + pm)):
            ptp = shared.pm_memq_head[pm]
            while ptp >= 0:
                pidx = shared.pg_off[ptp]
                pdir = shared.pm_pdir[pm] << 10
                if phys[pdir + pidx] >> 12 != ptp:
                    subr_prf.panic(P_MISMATCH)
                lock.simple_lock(pmap_tmpptp_lock)        # pmap_tmpmap_pa
                ptes = _physmem_np[ptp << 10:(ptp + 1) << 10]
                wired = bool(np.any((ptes & (PG_V | PG_W)) == (PG_V | PG_W)))
                if not wired:
                    mask = pmap_remove_ptes(pm, ptp, pidx << 22, (pidx + 1) << 22,
                                            stealing=True)
                lock.simple_unlock(pmap_tmpptp_lock)
                if not wired:
                    phys[pdir + pidx] = 0
                    _stat_add(pm, shared.pm_resident, -1)
                    if shared.pm_ptphint[pm] == ptp:
                        shared.pm_ptphint[pm] = shared.pm_memq_head[pm]
                    memq_remove(shared.pm_memq_head, shared.pm_memq_tail, pm, ptp)
                    shared.pm_npages[pm] -= 1
                    if pm == shared.cpu_pmap[_ci.cpu]:
                        tlbflush()                 # the 2000 code: local flush only
                    if _shootdown_on_steal:
                        mask |= _shootdown_range(pm, pidx << 22, (pidx + 1) << 22)
                        pmap_tlb_shootnow(mask)
                    uvm_pagerealloc(ptp, OWN_PTP, caller, idx)
                    found, victim, victim_va = ptp, pm, pidx << 22
                    break
                ptp = shared.pg_lnext[ptp]
            if not caller_locked:
                lock.simple_unlock(pm_lock + pm)
        pm = shared.pm_next[pm] if shared.pm_next[pm] >= 0 else g[G_PMAPS]
        g[G_HAND] = pm
        if found >= 0 or pm == first:
            break
    lock.simple_unlock(pmaps_lock)
    if found >= 0:
        _cnt(counter.ptp_steals)
        subr_prf.printf(MSG_STEAL, found << 12, victim_va, pmap_addr(victim),
                        pmap_addr(caller), idx << 22, _ci.cpu)
    else:
        _cnt(counter.ptp_steal_fail)
    return found


# --- pv entries ---------------------------------------------------------------------

def pmap_enter_pv(pg: int, pve: int, pm: int, va: int, ptp: int) -> None:
    """Link a pv entry at the head of ``pg``'s list (=> pvh lock held)."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pvh_lock + pg)
    shared.pv_pmap[pve] = pm
    shared.pv_va[pve] = va
    shared.pv_ptp[pve] = ptp
    shared.pv_next[pve] = shared.pvh_list[pg]
    shared.pvh_list[pg] = pve


def pmap_remove_pv(pg: int, pm: int, va: int) -> int:
    """Unlink (pm, va) from ``pg``'s pv list; returns the entry (=> pvh lock held)."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pvh_lock + pg)
    prev, pve = -1, shared.pvh_list[pg]
    while pve >= 0:
        if shared.pv_pmap[pve] == pm and shared.pv_va[pve] == va:
            _pv_unlink(pg, prev, pve)
            return pve
        prev, pve = pve, shared.pv_next[pve]
    subr_prf.panic(P_PVMISS, pmap_addr(pm), va)
    return -1


def _list_insert_head(nxt, prv, head: int, x: int) -> None:
    """LIST_INSERT_HEAD on index links, the head in pmap_glob[head]."""
    h = shared.pmap_glob[head]
    nxt[x] = h
    prv[x] = -1
    if h >= 0:
        prv[h] = x
    shared.pmap_glob[head] = x


def _list_remove(nxt, prv, head: int, x: int) -> None:
    """LIST_REMOVE on index links, the head in pmap_glob[head]."""
    n, p = nxt[x], prv[x]
    if p < 0:
        shared.pmap_glob[head] = n
    else:
        nxt[p] = n
    if n >= 0:
        prv[n] = p
    nxt[x] = prv[x] = -1


def _pv_unlink(pg: int, prev: int, pve: int) -> None:
    """Take ``pve`` (after ``prev``, -1 for the head) off ``pg``'s pv list."""
    nxt = shared.pv_next[pve]
    if prev < 0:
        shared.pvh_list[pg] = nxt
    else:
        shared.pv_next[prev] = nxt
    shared.pv_next[pve] = -1


# pv_freepages and pv_unusedpgs are TAILQs: (head, tail) slots of pmap_glob
_PVQ = {PVL_FREE: (G_PVFREE, G_PVFREE_TAIL), PVL_UNUSED: (G_PVUNUSED, G_PVUNUSED_TAIL)}


def _pvp_list_remove(p: int) -> None:
    """TAILQ_REMOVE of pv page ``p`` from the list it is on (=> pvalloc_lock)."""
    head, tail = _PVQ[shared.pvp_list[p]]
    g = shared.pmap_glob
    n, pr = shared.pvp_next[p], shared.pvp_prev[p]
    if pr < 0:
        g[head] = n
    else:
        shared.pvp_next[pr] = n
    if n < 0:
        g[tail] = pr
    else:
        shared.pvp_prev[n] = pr
    shared.pvp_next[p] = shared.pvp_prev[p] = -1
    shared.pvp_list[p] = PVL_NONE


def _pvp_list_insert(p: int, which: int, at_tail: bool = False) -> None:
    """TAILQ_INSERT_HEAD (or _TAIL) of pv page ``p`` on pv_freepages or pv_unusedpgs."""
    head, tail = _PVQ[which]
    g = shared.pmap_glob
    if at_tail:
        t = g[tail]
        shared.pvp_prev[p] = t
        shared.pvp_next[p] = -1
        if t < 0:
            g[head] = p
        else:
            shared.pvp_next[t] = p
        g[tail] = p
    else:
        h = g[head]
        shared.pvp_next[p] = h
        shared.pvp_prev[p] = -1
        if h < 0:
            g[tail] = p
        else:
            shared.pvp_prev[h] = p
        g[head] = p
    shared.pvp_list[p] = which


def _pv_take(p: int) -> int:
    """Take one free entry of pv page ``p`` (=> pvalloc_lock)."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pvalloc_lock)
    pve = shared.pvp_free[p]
    shared.pvp_free[p] = shared.pv_next[pve]
    shared.pv_next[pve] = -1
    shared.pvp_nfree[p] -= 1
    shared.pmap_glob[G_NFPVENTS] -= 1
    if shared.pvp_nfree[p] == 0:
        _pvp_list_remove(p)
    return pve


def pmap_alloc_pv(pm: int, mode: int) -> int:
    """A free pv entry, or -1 (pmap_alloc_pv: the first page of pv_freepages; below
    PVE_LOWAT free entries or with none, pmap_alloc_pvpage)."""
    if kern_fail.ON and kern_fail.fail("pmap_alloc_pv"):
        return -1
    lock.simple_lock(pvalloc_lock)
    p = shared.pmap_glob[G_PVFREE]
    pve = _pv_take(p) if p >= 0 else -1
    if shared.pmap_glob[G_NFPVENTS] < PVE_LOWAT or pve < 0:
        if pve < 0:
            pve = pmap_alloc_pvpage(pm, ALLOCPV_TRY if mode == ALLOCPV_TRY else ALLOCPV_NEED)
        else:
            pmap_alloc_pvpage(pm, ALLOCPV_NONEED)     # refill the cache in advance
    lock.simple_unlock(pvalloc_lock)
    return pve


def pmap_alloc_pvpage(pm: int, mode: int) -> int:
    """A new pv page (=> pvalloc_lock held); returns an entry if one is wanted.

    1. an entirely unused pv page (moved to pv_freepages);  2. a kmem_map VA -- the one
    kept in pv_cachedva from an earlier failure, else uvm_km_kmemalloc(kmem_map,
    kmem_object, NBPG, UVM_KMF_TRYLOCK|UVM_KMF_VALLOC) -- and a page from the kernel
    reserve with kmem_object only try-locked; a failure after the VA was had keeps it in
    pv_cachedva for the next call;  3. steal_one: pv stealing (ALLOCPV_NEED, steal pv).
    """
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pvalloc_lock)
    g = shared.pmap_glob
    if mode != ALLOCPV_NONEED and g[G_PVUNUSED] >= 0:
        p = g[G_PVUNUSED]
        _pvp_list_remove(p)
        _pvp_list_insert(p, PVL_FREE)
        return _pv_take(p)
    # The one call from the pmap back up into UVM (pmap_alloc_pvpage -> uvm_km_kmemalloc
    # in NetBSD): uvm_km maps its memory with pmap_enter, so it imports the pmap, and the
    # pmap can name uvm_km only once both are loaded.
    from smp.kern import uvm_km
    pg = -1
    p = -1
    if g[G_PVCACHEDVA] < 0 and not (kern_fail.ON and kern_fail.fail("pmap_alloc_pvpage")):
        va = uvm_km.uvm_km_valloc(uvm_km.KMEM_MAP, 1, trylock=True)
        if va >= 0:
            g[G_PVCACHEDVA] = uvm_km.kva_index(va)
    if g[G_PVCACHEDVA] >= 0 and not kern_fail.trylock_fails("pmap_alloc_pvpage") and \
            lock.simple_lock_try(uvm_km.kmem_object_lock):
        for i in range(len(shared.pvp_pg)):
            if shared.pvp_pg[i] < 0:
                p = i
                break
        if p >= 0:
            pg = uvm_pagealloc(OWN_PVPAGE, p, 0, -1, UVM_PGA_USERESERVE)
        lock.simple_unlock(uvm_km.kmem_object_lock)
    if pg < 0:
        _cnt(counter.pvpage_fail)
        if mode == ALLOCPV_NEED and _steal_pv:
            t0 = _ci.core.now()
            pv = _steal_one_pv(pm)
            _cnt(counter.steal_ns, _ci.core.now() - t0)
            return pv
        return -1
    va = uvm_km.kva(g[G_PVCACHEDVA])
    g[G_PVCACHEDVA] = -1
    shared.pg_flags[pg] &= ~PG_BUSY
    shared.pg_wire[pg] = 1
    pmap_kenter_pa(va, pg, VM_PROT_WRITE)
    _cnt(counter.pvpage_alloc)
    return pmap_add_pvpage(p, pg, va, mode != ALLOCPV_NONEED)


def pmap_add_pvpage(p: int, pg: int, va: int, need_entry: bool) -> int:
    """Carve pv page ``p`` (page ``pg`` at ``va``) into entries: all free and the page on the
    tail of pv_unusedpgs, or all but one (returned) and on the tail of pv_freepages
    (=> pvalloc_lock held, or boot)."""
    shared.pvp_pg[p] = pg
    shared.pvp_va[p] = va
    base = p * PVE_PER_PVPAGE
    nfree = PVE_PER_PVPAGE - 1 if need_entry else PVE_PER_PVPAGE
    for j in range(nfree - 1):
        shared.pv_next[base + j] = base + j + 1
        shared.pv_pmap[base + j] = -1
    shared.pv_next[base + nfree - 1] = -1
    shared.pv_pmap[base + nfree - 1] = -1
    shared.pvp_free[p] = base
    shared.pvp_nfree[p] = nfree
    shared.pmap_glob[G_NFPVENTS] += nfree
    _pvp_list_insert(p, PVL_FREE if need_entry else PVL_UNUSED, at_tail=True)
    if not need_entry:
        return -1
    pve = base + PVE_PER_PVPAGE - 1
    shared.pv_next[pve] = -1
    return pve


def pmap_init_boot(seg, va: int) -> None:
    """pmap_init: the bootstrap pv page, "pv_initpage", from kernel_map (parent, boot).

    Its entries let the kernel come up before kmem_map exists; mapped before
    pmap_initialized, so it carries no pv entry of its own.  It sits on pv_unusedpgs
    until the entries are wanted, and pmap_free_pvpage may give it back to kernel_map
    like any other (pv_initpage is then NULL)."""
    a = seg.arrays
    pg = _boot_page(seg, OWN_PVPAGE, 0, 0)
    kpdir = int(a["pm_pdir"][KERNEL_PMAP]) * 1024
    ptp = int(a["physmem"][kpdir + pdei(va)]) >> 12
    a["physmem"][ptp * 1024 + ptei(va)] = (pg << 12) | PG_V | PG_RW | PG_G
    a["pm_resident"][KERNEL_PMAP] += 1
    a["pg_wire"][pg] = 1
    g = a["pmap_glob"]
    base = 0
    a["pvp_pg"][0], a["pvp_va"][0] = pg, va
    a["pv_next"][base:base + PVE_PER_PVPAGE - 1] = np.arange(base + 1, base + PVE_PER_PVPAGE)
    a["pv_next"][base + PVE_PER_PVPAGE - 1] = -1
    a["pv_pmap"][base:base + PVE_PER_PVPAGE] = -1
    a["pvp_free"][0], a["pvp_nfree"][0] = base, PVE_PER_PVPAGE
    g[G_NFPVENTS] = PVE_PER_PVPAGE
    a["pvp_next"][0] = a["pvp_prev"][0] = -1
    a["pvp_list"][0] = PVL_UNUSED
    g[G_PVUNUSED] = g[G_PVUNUSED_TAIL] = 0
    g[G_PVINITPAGE] = 0


def _steal_one_pv(pm: int) -> int:
    """steal_one: walk every managed page, from the first, for a stealable pv entry
    (pmap_try_steal_pv), as 1.91 does on every call.

    => pvalloc_lock held; pvh locks and victim pmap locks are only try-locked.
    """
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pvalloc_lock)
    heads = shared.pvh_list
    for pg in range(len(heads)):
        if heads[pg] < 0 or not lock.simple_lock_try(pvh_lock + pg):
            continue
        prev, pve = -1, heads[pg]
        got = -1
        while pve >= 0:
            if _try_steal_pv(pg, pve, pm):
                _pv_unlink(pg, prev, pve)
                got = pve
                break
            prev, pve = pve, shared.pv_next[pve]
        lock.simple_unlock(pvh_lock + pg)
        if got >= 0:
            _cnt(counter.pv_steals)
            return got
    _cnt(counter.pv_steal_fail)
    return -1


def _try_steal_pv(pg: int, pve: int, thief: int) -> bool:
    """pmap_try_steal_pv: take one unwired user mapping's pv entry (=> pvh lock held).

    The stolen PTE's U/M bits are not merged into attrs (as in the 1.91 code, unless
    ``pv_steal_attrs``), and its PTP is not freed even if it drops to 1.  The 1.91 code
    invalidates the mapping only in this CPU's TLB (pmap_update_pg when the victim is
    the current pmap); ``shootdown_on_steal`` also shoots it down on the other CPUs, as
    for a stolen PTP.
    """
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pvh_lock + pg)
    vpm = shared.pv_pmap[pve]
    if vpm == KERNEL_PMAP or kern_fail.trylock_fails("pmap_try_steal_pv") or \
            not lock.simple_lock_try(pm_lock + vpm):
        return False
    va = shared.pv_va[pve]
    ptp = shared.pv_ptp[pve]
    idx = (ptp << 10) + ptei(va)
    lock.simple_lock(pmap_tmpptp_lock)                        # pmap_tmpmap_pvepte
    pte = shared.physmem[idx]
    if pte & PG_W:
        lock.simple_unlock(pmap_tmpptp_lock)
        lock.simple_unlock(pm_lock + vpm)
        return False
    opte = _core.xchg32(_phys_off + 4 * idx, 0)
    lock.simple_unlock(pmap_tmpptp_lock)
    if _cfg.pv_steal_attrs:
        shared.pvh_attrs[pg] |= opte & (PG_U | PG_M)
    shared.pm_resident[vpm] -= 1
    shared.pg_wire[ptp] -= 1
    if _shootdown_on_steal:
        mask = pmap_tlb_shootdown(vpm, va, opte)
    else:
        mask = 0
        if vpm == shared.cpu_pmap[_ci.cpu]:
            _pc.tlb.pop(va >> 12, None)          # pmap_update_pg: this CPU only
    lock.simple_unlock(pm_lock + vpm)
    pmap_tlb_shootnow(mask)
    subr_prf.printf(MSG_STEAL_PV, pmap_addr(vpm), va, pg << 12, pmap_addr(thief))
    return True


def _free_pv_doit(pve: int) -> None:
    """Return one entry to its pv page (pmap_free_pv_doit, => pvalloc_lock held): a full
    page that gets a free entry goes to the head of pv_freepages, a page whose entries
    are all free to the head of pv_unusedpgs."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pvalloc_lock)
    p = pve // PVE_PER_PVPAGE
    shared.pmap_glob[G_NFPVENTS] += 1
    shared.pvp_nfree[p] += 1
    if shared.pvp_nfree[p] == 1:
        _pvp_list_insert(p, PVL_FREE)
    shared.pv_pmap[pve] = -1
    shared.pv_next[pve] = shared.pvp_free[p]
    shared.pvp_free[p] = pve
    if shared.pvp_nfree[p] == PVE_PER_PVPAGE:
        _pvp_list_remove(p)
        _pvp_list_insert(p, PVL_UNUSED)


def pmap_free_pv(pm: int, pve: int) -> None:
    """Free one pv entry of ``pm``'s (pmap_free_pv)."""
    pmap_free_pvs(pm, [pve])


def pmap_free_pvs(pm: int, pves: list[int]) -> None:
    """Free pv entries of ``pm``'s mappings; above PVE_HIWAT free entries an unused pv page
    goes back to kmem_map (pmap_free_pvpage) -- unless ``pm`` is the kernel pmap, whose
    lock... is not held here, but 1.91 skips it all the same ("the pmap is already
    locked")."""
    if not pves:
        return
    lock.simple_lock(pvalloc_lock)
    for pve in pves:
        _free_pv_doit(pve)
    g = shared.pmap_glob
    if g[G_NFPVENTS] > PVE_HIWAT and g[G_PVUNUSED] >= 0 and pm != KERNEL_PMAP:
        pmap_free_pvpage()
    lock.simple_unlock(pvalloc_lock)


def pmap_free_pvpage() -> None:
    """Give the first unused pv page back (=> pvalloc_lock held, pv_unusedpgs not empty).

    Only if its map's lock can be had at once (vm_map_lock_try: kernel_map for
    pv_initpage, kmem_map for the others); else it stays for a later call.  The page is
    an interrupt-safe kmem_object page: uvm_unmap_remove takes it out with pmap_kremove
    and frees it (uvm_km_pgremove_intrsafe), protected by splvm, not by the object lock.
    """
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pvalloc_lock)
    # (pmap_free_pvpage -> uvm_unmap_remove, the same upcall as in pmap_alloc_pvpage)
    from smp.kern import uvm_km
    g = shared.pmap_glob
    p = g[G_PVUNUSED]
    m = uvm_km.KERNEL_MAP if p == g[G_PVINITPAGE] else uvm_km.KMEM_MAP
    if not lock.simple_lock_try(uvm_km.map_lock[m]):
        return
    _pvp_list_remove(p)
    va, pg = shared.pvp_va[p], shared.pvp_pg[p]
    pmap_kremove(va, 1)
    uvm_km.vfree_locked(m, va, 1)
    lock.simple_unlock(uvm_km.map_lock[m])
    base = p * PVE_PER_PVPAGE
    for j in range(base, base + PVE_PER_PVPAGE):
        shared.pv_next[j] = -1
    shared.pvp_free[p] = -1
    shared.pvp_nfree[p] = 0
    shared.pvp_pg[p] = -1
    g[G_NFPVENTS] -= PVE_PER_PVPAGE
    if p == g[G_PVINITPAGE]:
        g[G_PVINITPAGE] = -1
    uvm_pagefree(pg)
    _cnt(counter.pvpage_free)


# --- pmap_enter ------------------------------------------------------------------

def pmap_enter(pm: int, va: int, pg: int, prot: int, flags: int) -> int:
    """Map ``va`` in ``pm`` to page ``pg``; 0, or ENOMEM with PMAP_CANFAIL (else panic)."""
    _cnt(counter.pmap_enter)
    t0 = _ci.core.now()          # pmap_enter_ns: what share of it stealing takes
    if va >= VM_MAX_KERNEL_ADDRESS:
        subr_prf.panic(P_TOOBIG)
    if PTE_BASE <= va < KERNBASE or va >= APTE_BASE:
        subr_prf.panic(P_PDP)
    wired = flags & PMAP_WIRED
    lock.spinlockmgr_shared(pmap_main_lock)
    other = pmap_map_ptes(pm)
    error = 0
    leave_locked = False          # the 1.91-lineage CANFAIL exit (``pmap_canfail_leak``)
    try:
        pdir = shared.pm_pdir[pm] << 10
        idx = pdei(va)
        if pm == KERNEL_PMAP:
            pde = shared.physmem[pdir + idx]
            if not pde & PG_V:
                subr_prf.panic(P_NOKPTP)
            ptp = -1
            ptpage = pde >> 12
        else:
            ptp = pmap_get_ptp(pm, idx)
            if ptp < 0:
                if flags & PMAP_CANFAIL:
                    _cnt(counter.canfail_enomem)
                    leave_locked = _leak        # 1.91: returns with every lock still held
                    return ENOMEM
                _cnt(counter.noncanfail_panics)
                subr_prf.panic(P_GETPTP)
            ptpage = ptp
        pte_idx = (ptpage << 10) + ptei(va)
        opte = shared.physmem[pte_idx]
        pve = -1
        same = False
        bumped = False
        if opte & PG_V:
            if wired and not opte & PG_W:
                _stat_add(pm, shared.pm_wired, 1)
            elif not wired and opte & PG_W:
                _stat_add(pm, shared.pm_wired, -1)
            opg = opte >> 12
            if opg == pg:
                same = True
                if opte & PG_PVLIST:
                    lock.simple_lock(pvh_lock + pg)
                    shared.pvh_attrs[pg] |= opte & (PG_U | PG_M)
                    lock.simple_unlock(pvh_lock + pg)
            elif opte & PG_PVLIST:
                lock.simple_lock(pvh_lock + opg)
                pve = pmap_remove_pv(opg, pm, va)
                shared.pvh_attrs[opg] |= opte & (PG_U | PG_M)
                lock.simple_unlock(pvh_lock + opg)
        else:
            _stat_add(pm, shared.pm_resident, 1)
            if wired:
                _stat_add(pm, shared.pm_wired, 1)
            if ptp >= 0:
                shared.pg_wire[ptp] += 1
            bumped = True
        npte = (pg << 12) | PG_V
        if prot & VM_PROT_WRITE:
            npte |= PG_RW
        if wired:
            npte |= PG_W
        if va < VM_MAXUSER_ADDRESS:
            npte |= PG_u
        if pm == KERNEL_PMAP:
            npte |= PG_G
        if same:
            npte |= opte & (PG_PVLIST | PG_U | PG_M)
        else:
            if pve < 0:
                pve = pmap_alloc_pv(pm, ALLOCPV_NEED)
                if pve < 0:
                    if bumped:                 # see the module docstring: keep counts exact
                        _stat_add(pm, shared.pm_resident, -1)
                        if wired:
                            _stat_add(pm, shared.pm_wired, -1)
                        if ptp >= 0:
                            shared.pg_wire[ptp] -= 1
                    if flags & PMAP_CANFAIL:
                        _cnt(counter.canfail_enomem)
                        return ENOMEM
                    _cnt(counter.noncanfail_panics)
                    subr_prf.panic(P_NOPV)
            lock.simple_lock(pvh_lock + pg)
            pmap_enter_pv(pg, pve, pm, va, ptp)
            lock.simple_unlock(pvh_lock + pg)
            npte |= PG_PVLIST
        opte = _core.xchg32(_phys_off + 4 * pte_idx, npte)
        if opte & PG_V and (opte ^ npte) & ~(PG_U | PG_M):
            mask = pmap_tlb_shootdown(pm, va, opte)
            pmap_tlb_shootnow(mask)
        return error
    finally:
        if not leave_locked:
            pmap_unmap_ptes(pm, other)
            lock.spinlockmgr_release_shared(pmap_main_lock)
        _cnt(counter.pmap_enter_ns, _ci.core.now() - t0)


# --- removal ------------------------------------------------------------------------

def pmap_remove_ptes(pm: int, ptp: int, sva: int, eva: int, stealing: bool = False,
                     skipwired: bool = False) -> int:
    """Remove the valid mappings in [sva, eva) of one PTP; returns the shootdown mask.

    => pmap locked (PTEs mapped).  Stops early once the PTP is empty.  ``stealing``:
    called by pmap_steal_ptp, which shoots down only if ``shootdown_on_steal``.
    ``skipwired``: leave wired mappings (PG_W) alone (1.135's PMAP_REMOVE_SKIPWIRED).
    """
    if lock.DIAGNOSTIC and pm != KERNEL_PMAP:     # (the kernel pmap is never locked)
        lock.KASSERT_LOCKED(pm_lock + pm)
    ptpage = ptp if ptp >= 0 else shared.physmem[(shared.pm_pdir[pm] << 10) + pdei(sva)] >> 12
    base = ptpage << 10
    lo, hi = ptei(sva), ptei(eva - 1) + 1
    ptes = _physmem_np[base + lo: base + hi]
    if skipwired:       # (PG_W changes only under the pmap lock, which we hold)
        valid = np.nonzero((ptes & (PG_V | PG_W)) == PG_V)[0]
    else:
        valid = np.nonzero(ptes & PG_V)[0]
    mask = 0
    pves = []
    for i in valid:
        i = int(i)
        va = sva + ((i) << 12)
        opte = _core.xchg32(_phys_off + 4 * (base + lo + i), 0)
        if not opte & PG_V:
            continue
        if opte & PG_W:
            _stat_add(pm, shared.pm_wired, -1)
        _stat_add(pm, shared.pm_resident, -1)
        if ptp >= 0:
            shared.pg_wire[ptp] -= 1
        if stealing and not _shootdown_on_steal:
            if pm == shared.cpu_pmap[_ci.cpu]:
                _pc.tlb.pop(va >> 12, None)     # the 2000 steal code: this CPU only
        else:
            mask |= pmap_tlb_shootdown(pm, va, opte)
        pg = opte >> 12
        if opte & PG_PVLIST:
            lock.simple_lock(pvh_lock + pg)
            shared.pvh_attrs[pg] |= opte & (PG_U | PG_M)
            pves.append(pmap_remove_pv(pg, pm, va))
            lock.simple_unlock(pvh_lock + pg)
        elif pm != KERNEL_PMAP and shared.pg_owner[pg] not in (OWN_PVPAGE,):
            subr_prf.panic(P_NOPVLIST, va)
        if ptp >= 0 and shared.pg_wire[ptp] <= 1:
            break
    pmap_free_pvs(pm, pves)
    _cnt(counter.pmap_remove)
    return mask


def pmap_remove(pm: int, sva: int, eva: int, skipwired: bool = False) -> None:
    """Remove mappings in [sva, eva); PTPs that become empty are freed after shootdown.
    ``skipwired``: wired mappings stay (pmap_collect of 1.135)."""
    lock.spinlockmgr_shared(pmap_main_lock)
    other = pmap_map_ptes(pm)
    empty = []
    mask = 0
    try:
        pdir = shared.pm_pdir[pm] << 10
        va = sva
        while va < eva:
            blk_end = min(eva, (va & ~(NBPD - 1)) + NBPD)
            idx = pdei(va)
            pde = shared.physmem[pdir + idx]
            if idx != PDSLOT_PTE and pde & PG_V:
                ptp = -1 if pm == KERNEL_PMAP else pde >> 12
                mask |= pmap_remove_ptes(pm, ptp, va, blk_end, skipwired=skipwired)
                if ptp >= 0 and shared.pg_wire[ptp] <= 1:
                    empty.append(_unhook_ptp(pm, ptp, idx))
            va = blk_end
    finally:
        pmap_tlb_shootnow(mask)
        for ptp in empty:
            _free_ptp_page(ptp)
        pmap_unmap_ptes(pm, other)
        lock.spinlockmgr_release_shared(pmap_main_lock)


def pmap_collect(pm: int, skipwired: bool = False) -> None:
    """Free what a swapped-out process's pmap holds (uvm_swapout).

    pmap.c 1.91: ``pmap_remove(pmap, VM_MIN_ADDRESS, VM_MAX_ADDRESS)`` -- every user
    mapping goes, wired ones included, and with them every PTP, each freed once empty;
    the page directory stays.  ``skipwired``: 1.135's, which keeps the wired mappings
    (and the PTPs that hold them).
    """
    pmap_remove(pm, 0, VM_MAXUSER_ADDRESS, skipwired=skipwired)


def _unhook_ptp(pm: int, ptp: int, idx: int) -> int:
    """Detach an empty PTP from its pmap (=> pmap locked); the caller frees it later."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(pm_lock + pm)
    shared.physmem[(shared.pm_pdir[pm] << 10) + idx] = 0
    _stat_add(pm, shared.pm_resident, -1)
    memq_remove(shared.pm_memq_head, shared.pm_memq_tail, pm, ptp)
    shared.pm_npages[pm] -= 1
    if shared.pm_ptphint[pm] == ptp:
        shared.pm_ptphint[pm] = shared.pm_memq_head[pm]
    return ptp


def pmap_page_remove(pg: int) -> None:
    """Remove every mapping of ``pg`` (pmap_page_protect(pg, VM_PROT_NONE)).

    Head-to-map: pmap_main_lock exclusive, then the pvh lock, then each pmap.
    """
    if shared.pvh_list[pg] < 0:
        return
    lock.spinlockmgr_exclusive(pmap_main_lock)
    lock.simple_lock(pvh_lock + pg)
    mask = 0
    empty = []
    pves = []
    pve = shared.pvh_list[pg]
    while pve >= 0:
        pm, va, ptp = shared.pv_pmap[pve], shared.pv_va[pve], shared.pv_ptp[pve]
        other = pmap_map_ptes(pm)
        if ptp >= 0:
            idx = (ptp << 10) + ptei(va)
        else:
            idx = ((shared.physmem[(shared.pm_pdir[pm] << 10) + pdei(va)] >> 12) << 10) + ptei(va)
        opte = _core.xchg32(_phys_off + 4 * idx, 0)
        if opte & PG_W:
            _stat_add(pm, shared.pm_wired, -1)
        _stat_add(pm, shared.pm_resident, -1)
        shared.pvh_attrs[pg] |= opte & (PG_U | PG_M)
        mask |= pmap_tlb_shootdown(pm, va, opte)
        if ptp >= 0:
            shared.pg_wire[ptp] -= 1
            if shared.pg_wire[ptp] <= 1:
                empty.append(_unhook_ptp(pm, ptp, pdei(va)))
        pmap_unmap_ptes(pm, other)
        pves.append(pve)
        pve = shared.pv_next[pve]
    shared.pvh_list[pg] = -1
    lock.simple_unlock(pvh_lock + pg)
    pmap_tlb_shootnow(mask)
    for ptp in empty:
        _free_ptp_page(ptp)
    pmap_free_pvs(-1, pves)
    lock.spinlockmgr_release_exclusive(pmap_main_lock)


def pmap_change_attrs(pg: int, bit: int) -> bool:
    """pmap_change_attrs(pg, 0, ~bit) of 1.91: clear ``bit`` (PG_U or PG_M) in the page's
    attrs and in every mapping of it, shooting down the TLBs that may cache it; returns
    whether it was set anywhere."""
    was = bool(shared.pvh_attrs[pg] & bit)
    if shared.pvh_list[pg] < 0:
        shared.pvh_attrs[pg] &= ~bit
        return was
    lock.spinlockmgr_exclusive(pmap_main_lock)
    lock.simple_lock(pvh_lock + pg)
    shared.pvh_attrs[pg] &= ~bit
    mask = 0
    pve = shared.pvh_list[pg]
    while pve >= 0:
        pm, va, ptp = shared.pv_pmap[pve], shared.pv_va[pve], shared.pv_ptp[pve]
        other = pmap_map_ptes(pm)
        idx = _pte_index(pm, va, ptp)
        while True:
            opte = shared.physmem[idx]
            if not opte & bit or _core.cas32(_phys_off + 4 * idx, opte, opte & ~bit):
                break
        if opte & bit:
            was = True
            mask |= pmap_tlb_shootdown(pm, va, opte)
        pmap_unmap_ptes(pm, other)
        pve = shared.pv_next[pve]
    lock.simple_unlock(pvh_lock + pg)
    pmap_tlb_shootnow(mask)
    lock.spinlockmgr_release_exclusive(pmap_main_lock)
    return was


def pmap_clear_reference(pg: int) -> bool:
    """Clear PG_U in the attrs and every mapping of ``pg``; returns whether it was set."""
    return pmap_change_attrs(pg, PG_U)


def pmap_clear_modify(pg: int) -> bool:
    """Clear PG_M in the attrs and every mapping of ``pg``; returns whether it was set."""
    return pmap_change_attrs(pg, PG_M)


def pmap_is_modified(pg: int) -> bool:
    """PG_M in the attrs or any mapping (pmap_test_attrs(pg, PG_M))."""
    if shared.pvh_attrs[pg] & PG_M:
        return True
    lock.spinlockmgr_exclusive(pmap_main_lock)
    lock.simple_lock(pvh_lock + pg)
    mod = False
    pve = shared.pvh_list[pg]
    while pve >= 0 and not mod:
        pm, va, ptp = shared.pv_pmap[pve], shared.pv_va[pve], shared.pv_ptp[pve]
        other = pmap_map_ptes(pm)
        mod = bool(shared.physmem[_pte_index(pm, va, ptp)] & PG_M)
        pmap_unmap_ptes(pm, other)
        pve = shared.pv_next[pve]
    if mod:
        shared.pvh_attrs[pg] |= PG_M
    lock.simple_unlock(pvh_lock + pg)
    lock.spinlockmgr_release_exclusive(pmap_main_lock)
    return mod


def _pte_index(pm: int, va: int, ptp: int) -> int:
    if ptp >= 0:
        return (ptp << 10) + ptei(va)
    return ((shared.physmem[(shared.pm_pdir[pm] << 10) + pdei(va)] >> 12) << 10) + ptei(va)


def pmap_protect(pm: int, sva: int, eva: int, prot: int, skip_wired: bool = False) -> None:
    """Lower the protection of [sva, eva) (pmap_write_protect; no main lock).

    ``skip_wired``: leave wired mappings alone (fork does not share wired pages).
    """
    if not prot & 0x1:
        pmap_remove(pm, sva, eva)
        return
    other = pmap_map_ptes(pm)
    mask = 0
    pdir = shared.pm_pdir[pm] << 10
    physmem = shared.physmem
    # the writable mappings (fork's skip_wired: the unwired ones)
    bits = PG_V | PG_RW | (PG_W if skip_wired else 0)
    va = sva
    # 1.91's loop: a 4 MiB block at a time, skipping a block whose PDE is not valid
    while va < eva and not prot & VM_PROT_WRITE:
        blk_end = min(eva, (va & ~(NBPD - 1)) + NBPD)
        slot = pdei(va)
        pde = physmem[pdir + slot]
        if pde & PG_V and slot != PDSLOT_PTE:
            first = ((pde >> 12) << 10) + ptei(va)
            ptes = _physmem_np[first:first + ((blk_end - va) >> PGSHIFT)]
            # each PTE is read again for its CAS (the MMU sets PG_U/PG_M without the
            # pmap lock)
            for k in np.flatnonzero((ptes & bits) == PG_V | PG_RW).tolist():
                idx = first + k
                while True:
                    opte = physmem[idx]
                    if (opte & bits) != PG_V | PG_RW:
                        break
                    if _core.cas32(_phys_off + 4 * idx, opte, opte & ~PG_RW):
                        mask |= pmap_tlb_shootdown(pm, va + (k << PGSHIFT), opte)
                        break
        va = blk_end
    pmap_tlb_shootnow(mask)
    pmap_unmap_ptes(pm, other)


def pmap_unwire(pm: int, va: int) -> None:
    """Clear PG_W of a mapping."""
    other = pmap_map_ptes(pm)
    pde = shared.physmem[(shared.pm_pdir[pm] << 10) + pdei(va)]
    if not pde & PG_V:
        pmap_unmap_ptes(pm, other)
        subr_prf.panic(P_UNWIRE, va)
    idx = ((pde >> 12) << 10) + ptei(va)
    while True:
        opte = shared.physmem[idx]
        if not opte & PG_V:
            pmap_unmap_ptes(pm, other)
            subr_prf.panic(P_UNWIRE, va)
        if not opte & PG_W:
            subr_prf.printf(MSG_UNWIRE, pmap_addr(pm), va)
            break
        if _core.cas32(_phys_off + 4 * idx, opte, opte & ~PG_W):
            _stat_add(pm, shared.pm_wired, -1)
            break
    pmap_unmap_ptes(pm, other)


def pmap_is_wired(pm: int, va: int) -> bool:
    """Does the mapping at ``va`` have PG_W (a peek, for munlock)?"""
    pde = shared.physmem[(shared.pm_pdir[pm] << 10) + pdei(va)]
    return bool(pde & PG_V and shared.physmem[((pde >> 12) << 10) + ptei(va)] & PG_W)


def pmap_extract(pm: int, va: int) -> int:
    """The page mapped at ``va``, or -1 (PG_V checked, as in 1.135).

    As 1.91's, an empty PDE answers at once, unlocked; otherwise the PTEs are mapped
    (pmap_map_ptes' locks) and read.  The current pmap (the fault's lookahead asks about
    nothing else) is one call into the atomic core: the PDE check, pmap_map_ptes' lock
    of it, the PDE and PTE read, pmap_unmap_ptes' unlock -- the same lock operations,
    call site and scheduling points as below.
    """
    if pm == _cpu_pmap[_cpu] and pm != KERNEL_PMAP:
        pte = _ptread(pm_lock + pm, _MAP_PTES_CODE, _phys_off, _pm_pdir[pm], va)
        return pte >> 12 if pte & PG_V else -1
    if not shared.physmem[(shared.pm_pdir[pm] << 10) + pdei(va)]:
        return -1
    other = pmap_map_ptes(pm)
    pde = shared.physmem[(shared.pm_pdir[pm] << 10) + pdei(va)]
    pg = -1
    if pde & PG_V:
        pte = shared.physmem[((pde >> 12) << 10) + ptei(va)]
        if pte & PG_V:
            pg = pte >> 12
    pmap_unmap_ptes(pm, other)
    return pg


def pmap_scan_current(pm: int, va: int, n: int, skip: int, slots_off: int,
                      slot: int) -> int:
    """The fault lookahead's pmap_extract loop in one call into the atomic core, for the
    current pmap; -1 for any other (the caller loops over pmap_extract itself).

    Asks about the ``n`` pages from ``va`` in address order, but page ``skip``, each
    with a pmap_extract of its own (its own lock and unlock, as the loop makes them),
    up to the first that is not mapped and whose int32 at byte ``slots_off`` of the
    segment + 4 * (``slot`` + i) -- its amap slot -- holds an anon (``slots_off`` -1: up
    to the first that is not mapped); returns its index, or ``n``.
    """
    if pm != _cpu_pmap[_cpu] or pm == KERNEL_PMAP:
        return -1
    return _ptscan(pm_lock + pm, _MAP_PTES_CODE, _phys_off, _pm_pdir[pm], va, n, skip,
                   slots_off, slot)


def pmap_wired_vas(pm: int, sva: int, eva: int) -> list[int]:
    """The VAs in [sva, eva) whose mapping has PG_W (a peek, like pmap_is_wired, over a
    range: a 4 MiB block without a PTP is skipped at once)."""
    out: list[int] = []
    pdir = shared.pm_pdir[pm] << 10
    phys = _physmem_np
    va = sva
    while va < eva:
        blk_end = min(eva, (va & ~(NBPD - 1)) + NBPD)
        pde = shared.physmem[pdir + pdei(va)]
        if pde & PG_V and pdei(va) != PDSLOT_PTE:
            base = (pde >> 12) << 10
            lo, hi = ptei(va), ptei(blk_end - 1) + 1
            ptes = phys[base + lo: base + hi]
            for i in np.nonzero((ptes & (PG_V | PG_W)) == (PG_V | PG_W))[0]:
                out.append(va + (int(i) << 12))
        va = blk_end
    return out


def pmap_is_writable(pm: int, va: int) -> bool:
    """Does a valid mapping at ``va`` allow writes (PG_RW; a peek, like pmap_is_wired)?"""
    pde = shared.physmem[(shared.pm_pdir[pm] << 10) + pdei(va)]
    if not pde & PG_V:
        return False
    pte = shared.physmem[((pde >> 12) << 10) + ptei(va)]
    return bool(pte & PG_V and pte & PG_RW)


# --- the kernel pmap ------------------------------------------------------------------

def pmap_kenter_pa(va: int, pg: int, prot: int) -> None:
    """An unmanaged kernel mapping: no pv entry, no lock, cannot fail."""
    pde = shared.physmem[(shared.pm_pdir[KERNEL_PMAP] << 10) + pdei(va)]
    if not pde & PG_V:
        subr_prf.panic(P_NOKPTP)
    idx = ((pde >> 12) << 10) + ptei(va)
    npte = (pg << 12) | PG_V | PG_G | (PG_RW if prot & VM_PROT_WRITE else 0)
    opte = _core.xchg32(_phys_off + 4 * idx, npte)
    if not opte & PG_V:
        _stat_add(KERNEL_PMAP, shared.pm_resident, 1)
    else:
        pmap_tlb_shootnow(pmap_tlb_shootdown(KERNEL_PMAP, va, opte))


def pmap_kremove(va: int, npages: int) -> None:
    pdir = shared.pm_pdir[KERNEL_PMAP] << 10
    mask = 0
    for i in range(npages):
        v = va + i * NBPG
        pde = shared.physmem[pdir + pdei(v)]
        idx = ((pde >> 12) << 10) + ptei(v)
        opte = _core.xchg32(_phys_off + 4 * idx, 0)
        if opte & PG_V:
            _stat_add(KERNEL_PMAP, shared.pm_resident, -1)
            mask |= pmap_tlb_shootdown(KERNEL_PMAP, v, opte)
    pmap_tlb_shootnow(mask)


def pmap_growkernel(maxkvaddr: int) -> int:
    """Grow the kernel's PTPs to cover ``maxkvaddr``; push the PDEs into every pmap.

    Called by kernel_map allocations (uvm_map's PMAP_GROWKERNEL hook, kernel_map
    locked).  Each new kernel PTP is pmap_alloc_ptp(kernel pmap, slot, just_try =
    FALSE): a page from the reserve (USERESERVE), else -- with ``steal`` ptp -- a PTP
    stolen from some user pmap, else panic("pmap_growkernel: alloc ptp failed").

    As 1.91 it holds only the kernel pmap's lock, not pmap_main_lock: a steal's
    pmap_remove_ptes then locks pv heads in the map-to-head direction unguarded, while
    a head-to-map walk (pmap_change_attrs, pmap_page_remove) that holds a pv head may
    wait for the kernel pmap's lock -- a kernel thread's current pmap, which
    pmap_map_ptes locks too.  A deadlock of the stealing code (README; LOCKDEBUG's
    "unguarded" finding, smp.kern.lock).
    """
    need = min(-(-(maxkvaddr - KERNBASE) // NBPD), NKPTP_MAX)
    if need <= shared.pmap_glob[G_NKPDE]:
        return KERNBASE + shared.pmap_glob[G_NKPDE] * NBPD
    lock.simple_lock(pm_lock + KERNEL_PMAP)
    kpdir = shared.pm_pdir[KERNEL_PMAP] << 10
    while shared.pmap_glob[G_NKPDE] < need:
        slot = PDSLOT_KERN + shared.pmap_glob[G_NKPDE]
        if kern_fail.ON and kern_fail.fail("pmap_alloc_ptp"):
            ptp = -1
        else:
            ptp = _pagealloc_zeroed(OWN_KPTP, KERNEL_PMAP, slot, UVM_PGA_USERESERVE)
        if ptp < 0 and _steal_ptp:
            ptp = pmap_steal_ptp(KERNEL_PMAP, slot)
            if ptp >= 0:
                shared.pg_owner[ptp] = OWN_KPTP
                pmap_zero_page(ptp)
        if ptp < 0:
            lock.simple_unlock(pm_lock + KERNEL_PMAP)
            subr_prf.panic(P_GROW)
        _cnt(counter.growkernel_ptps)
        shared.pg_flags[ptp] &= ~PG_BUSY
        shared.pg_wire[ptp] = 1
        shared.physmem[kpdir + slot] = (ptp << 12) | PG_V | PG_RW
        _stat_add(KERNEL_PMAP, shared.pm_resident, 1)
        lock.simple_lock(pmaps_lock)
        pm = shared.pmap_glob[G_PMAPS]
        while pm >= 0:
            shared.physmem[(shared.pm_pdir[pm] << 10) + slot] = shared.physmem[kpdir + slot]
            pm = shared.pm_next[pm]
        shared.pmap_glob[G_NKPDE] += 1
        lock.simple_unlock(pmaps_lock)
    lock.simple_unlock(pm_lock + KERNEL_PMAP)
    return KERNBASE + shared.pmap_glob[G_NKPDE] * NBPD


# --- activation and the TLB ----------------------------------------------------------------

def pmap_activate(pm: int) -> None:
    """Load ``pm`` into this CPU's %cr3 (context switch): flush the TLB, note pm_cpus."""
    cpu = _ci.cpu
    cur = shared.cpu_pmap[cpu]
    if cur == pm:
        return
    bit = 1 << cpu
    if cur != KERNEL_PMAP:
        _core.and64(_pm_cpus_off + 8 * cur, ~bit & MASK64)
    if pm != KERNEL_PMAP:
        _core.or64(_pm_cpus_off + 8 * pm, bit)
    shared.cpu_pmap[cpu] = pm
    _pc.tlb.clear()


def tlbflush() -> None:
    """Flush this CPU's (non-global) TLB entries."""
    _pc.tlb.clear()
    _cnt(counter.tlb_fullflush)


def pmap_tlb_shootdown(pm: int, va: int, pte: int) -> int:
    """Queue an invalidation of ``va`` on every other CPU using ``pm``; returns their mask.

    This CPU's own entry is dropped at once.  A full queue escalates to a full flush.
    """
    me = _ci.cpu
    if pm == shared.cpu_pmap[me] or pm == KERNEL_PMAP:
        _pc.tlb.pop(va >> 12, None)
    active = shared.pm_cpus[pm] & ~(1 << me)
    if not active:
        return 0
    mask = 0
    c = 0
    while active:
        if active & 1:
            lock.simple_lock(tlbq_lock + c)
            if not shared.tlbq_flush[c]:
                n = shared.tlbq_count[c]
                if n < PMAP_TLB_MAXJOBS:
                    shared.tlbq_va[c * PMAP_TLB_MAXJOBS + n] = va
                    shared.tlbq_pmap[c * PMAP_TLB_MAXJOBS + n] = pm
                    shared.tlbq_count[c] = n + 1
                else:
                    shared.tlbq_flush[c] = 1
            lock.simple_unlock(tlbq_lock + c)
            mask |= 1 << c
        active >>= 1
        c += 1
    _cnt(counter.tlb_shootdowns)
    # (pm_cpus is unsigned: bit 63 is CPU 63, and the loop above ends)
    return mask


def _shootdown_range(pm: int, sva: int, eva: int) -> int:
    """A whole 4 MiB region: a full flush on every other CPU using ``pm``."""
    me = _ci.cpu
    active = shared.pm_cpus[pm] & ~(1 << me)
    mask = 0
    c = 0
    while active:
        if active & 1:
            lock.simple_lock(tlbq_lock + c)
            shared.tlbq_flush[c] = 1
            lock.simple_unlock(tlbq_lock + c)
            mask |= 1 << c
        active >>= 1
        c += 1
    return mask


def pmap_tlb_shootnow(mask: int) -> None:
    """Send the TLB IPI to ``mask`` and wait until every target has flushed.

    While waiting this CPU keeps answering its own IPIs, or two CPUs shooting at each
    other would deadlock.  The wait ends with a panic after a long time (DIAGNOSTIC's
    10,000,000 spins) and stops at once if the machine halts.

    A target that is spinning for a lock or idle takes the IPI at once on the real
    machine (it spins and halts with interrupts enabled) and answers within a
    microsecond.  Here its host process may be descheduled or parked on a futex, and
    waking it only to answer cost the shooter milliseconds on a host with fewer cores
    than CPUs; so the shooter acknowledges for it (``_ack_quiet_cpus``) without waking
    it.  The invalidations stay in the target's queue with its IPI bit set, and the
    target applies them at its next delivery point, which comes before it uses its TLB
    again: a waiter or an idle CPU returns to kernel code, which does not use the TLB,
    and a memory reference (trap.memref) answers pending IPIs first.
    """
    if not mask:
        return
    me = _ci.cpu
    off = _ipi_mask_off + 8 * me
    _core.or64(off, mask)
    c = 0
    m = mask
    while m:
        if m & 1:
            _ci.send_ipi(c, I386_IPI_TLB, False)
        m >>= 1
        c += 1
    _cnt(counter.tlb_ipis, bin(mask).count("1"))
    hook = _core.sched_hook                  # lockstep: waiting is a scheduling point
    area = _ci.area
    saved = int(area["state"])
    area["state"] = _atomic.CS_SPINNING       # waiting for others, as a spinning CPU does
    try:
        _shootnow_wait(off, mask, hook)
    finally:
        _ci.set_state(saved)                  # (sequentially consistent: _ack_quiet_cpus)


def _shootnow_wait(off: int, mask: int, hook) -> None:
    """Spin until every CPU of ``mask`` has acknowledged (pmap_tlb_shootnow's wait).

    Targets that wait for a lock or are idle are answered for (``_ack_quiet_cpus``),
    and so is a CPU that has left the machine at a normal end of the run (it stopped
    in its dispatch loop: CS_DONE): it will never run again, so neither will its TLB.
    Without this, a CPU still finishing a system call when the run ends would wait for
    a CPU that is gone and be halted inside the kernel, and the DIAGNOSTIC check after
    the run would have to skip what it held.
    """
    deadline = None
    spins = 0
    while True:
        left = _core.load64(off) & mask      # load64 is signed; & keeps just our bits
        if left:
            left = _ack_quiet_cpus(off, left)
        if not left:
            return
        if _ci.ipi_pending():
            # (intr: the IPI handler, the TLB's and the devices' -- as the spin loop calls it)
            from smp.kern import intr
            intr.i386_ipi_handler()
        if _ci.seg.hdr["halt"]:
            raise lock.Halted("machine halted during a TLB shootdown")
        if hook is not None:
            hook()
            continue
        spins += 1
        if spins % 16 == 0:
            os.sched_yield()
            if deadline is None:
                deadline = time.monotonic() + 10.0
            elif time.monotonic() > deadline:
                subr_prf.panic(P_RENDEZVOUS, _core.load64(off) & mask)


def _ack_quiet_cpus(off: int, left: int) -> int:
    """Acknowledge for the targets of ``left`` that wait for a lock, are idle or have
    left the machine (see pmap_tlb_shootnow); returns the targets still to answer.

    A target's state is read after its IPI bit was posted (send_ipi's locked OR), and a
    target leaves CS_SPINNING or CS_IDLE with a sequentially consistent store before it
    next reads its IPI word: if this CPU still saw the old state, the target will see
    the bit.
    """
    state = _cpu_state
    quiet = 0
    c = 0
    m = left
    while m:
        if m & 1 and state[c] in _QUIET:
            quiet |= 1 << c
        m >>= 1
        c += 1
    if quiet:
        _core.and64(off, ~quiet & MASK64)
        _cnt(counter.tlb_ipi_proxied, bin(quiet).count("1"))
    return left & ~quiet


def pmap_do_tlb_shootdown() -> None:
    """The TLB IPI handler: apply this CPU's queued invalidations and acknowledge.

    => the caller (intr.i386_ipi_handler) took the IPI bits: taking them again here
    would swallow a device interrupt posted meanwhile, and a disk completion lost so
    at the end of a run left its pages paging and the run waiting for its time limit.
    """
    me = _ci.cpu
    lock.simple_lock(tlbq_lock + me)
    if shared.tlbq_flush[me]:
        _pc.tlb.clear()
        _cnt(counter.tlb_fullflush)
    else:
        cur = shared.cpu_pmap[me]
        base = me * PMAP_TLB_MAXJOBS
        for i in range(shared.tlbq_count[me]):
            if shared.tlbq_pmap[base + i] in (cur, KERNEL_PMAP):
                _pc.tlb.pop(shared.tlbq_va[base + i] >> 12, None)
    shared.tlbq_count[me] = 0
    shared.tlbq_flush[me] = 0
    lock.simple_unlock(tlbq_lock + me)
    bit = ~(1 << me) & MASK64               # unsigned: CPU 63's bit is the sign bit
    for c in range(_ci.ncpu):
        if c != me and shared.tlb_ipi_mask[c] & (1 << me):
            _core.and64(_ipi_mask_off + 8 * c, bit)
