"""Global VM state: ``struct uvm``, ``struct uvmexp`` and the kernel's shared arrays.

Every piece of VM state the CPUs share lives in the segment, declared here
before boot from the machine profile (npages, maxproc, swap):

* ``vm_page[]`` as one array per field (struct-of-arrays: one shared-array
  access per field read, ~20 ns through a memoryview);
* ``physmem``: the simulated physical memory of page-table pages -- each page
  is 1024 32-bit words, so PDEs and PTEs really live in the PDP and PTP pages
  (only page-table pages are ever touched; the host maps the rest lazily);
* the pmap table, pv heads and pv pages, anons, amaps, processes' maps, swap
  slots, TLB-shootdown queues;
* ``uvmexp[]``, the global counters and targets (``uvmexp[FREE]`` is
  ``uvmexp.free``), guarded as in NetBSD by the locks that guard what they
  count (the free count by the free-page-queue lock, ...);
* per-CPU event counters ``cnt[cpu, name]`` (uvmexp's statistics: faults,
  fltnoram, ...; plus what NetBSD lacked: pmfail waits, PTP and pv steals,
  stale TLB uses), added up by reports.

After fork each CPU calls ``attach`` and reaches the arrays through ``A``,
a namespace of memoryviews (``A.pg_wire[pg]``).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from smp.machine.layout import ArraySpec
from smp.machine.lockspace import LockSpace

# --- uvmexp fields (global, in the segment) ---------------------------------
UVMEXP_FIELDS = [
    "npages", "free", "active", "inactive", "paging", "wired", "anonpages", "filepages",
    "ptppages", "pvpages", "kmempages", "pdppages",
    "reserve_pagedaemon", "reserve_kernel", "freemin", "freetarg", "inactarg", "wiredmax",
    "swpages", "swpginuse", "swpgonly", "nanon", "nfreeanon",
]
UX = {n: i for i, n in enumerate(UVMEXP_FIELDS)}
NPAGES, FREE, ACTIVE, INACTIVE, PAGING, WIRED = (UX[n] for n in (
    "npages", "free", "active", "inactive", "paging", "wired"))
ANONPAGES, FILEPAGES, PTPPAGES, PVPAGES, KMEMPAGES, PDPPAGES = (UX[n] for n in (
    "anonpages", "filepages", "ptppages", "pvpages", "kmempages", "pdppages"))
RESERVE_PD, RESERVE_KERN, FREEMIN, FREETARG, INACTARG = (UX[n] for n in (
    "reserve_pagedaemon", "reserve_kernel", "freemin", "freetarg", "inactarg"))
SWPAGES, SWPGINUSE, SWPGONLY, NANON, NFREEANON = (UX[n] for n in (
    "swpages", "swpginuse", "swpgonly", "nanon", "nfreeanon"))

# --- per-CPU event counters (uvmexp statistics + ours) ----------------------
COUNTERS = [
    # uvmexp (NetBSD names)
    "faults", "fltnoram", "fltnoanon", "fltpgwait", "fltamcopy", "fltnamap", "fltnomap",
    "fltlget", "fltget", "flt_anon", "flt_acow", "flt_obj", "flt_prcopy", "flt_przero",
    "pga_zerohit", "pga_zeromiss", "pageins", "pgswapin", "pgswapout", "swapins", "swapouts",
    "pdwoke", "pdrevs", "pdscans", "pdfreed", "pdreact", "pdpageouts", "pddeact", "pdbusy",
    "forks", "exits",
    # what the 2001 kernel did not count
    "pmfail_waits", "flt_pmfail1", "flt_pmfail2", "ptp_steals", "ptp_steal_fail",
    "pv_steals", "pv_steal_fail", "pvpage_alloc", "pvpage_fail", "canfail_enomem",
    "noncanfail_panics", "oom_kills", "stale_tlb", "tlb_hits", "tlb_misses", "tlb_shootdowns",
    "tlb_ipis", "tlb_fullflush", "memrefs", "uvm_wait", "km_allocs", "km_waits",
    "pagermapin", "ubc_faults", "pmap_enter", "pmap_remove", "ptp_alloc", "ptp_free",
]
C = SimpleNamespace(**{n: i for i, n in enumerate(COUNTERS)})

# --- sleep channels (addresses in the real kernel) ---------------------------
CHAN_FREE = 0xC0F0_0000            # &uvmexp.free: uvm_wait sleepers
CHAN_PAGEDAEMON = 0xC0F0_0008      # &uvm.pagedaemon
CHAN_PAGING = 0xC0F0_0010          # pager I/O completion (aiodoned)
CHAN_PAGERMAP = 0xC0F0_0018        # pager_map space
CHAN_KMEM = 0xC0F0_0020            # kernel VA

A = SimpleNamespace()              # memoryviews, bound by attach()
L = SimpleNamespace()              # lock ids, set by declare() (inherited through fork)
S = SimpleNamespace()              # sizes, set by declare()


def _mv(arr: np.ndarray) -> memoryview:
    return memoryview(arr.reshape(-1))


def declare(machine, kernel_config, locks: LockSpace, nthreads: int,
            amap_per_proc: int = 0, nfiles_pages: int = 0) -> list[ArraySpec]:
    """Sizes, locks and arrays of the VM system (in the parent, before boot)."""
    npages = machine.npages
    S.npages = npages
    S.swpages = machine.swpages
    S.ncpu = machine.ncpu
    S.maxpmap = nthreads + 1                  # pmap 0 is the kernel's
    S.nanon = npages + machine.swpages + 64
    S.npvpages = npages // 2 + 64             # kmem_map VA for pv pages
    S.nkva = 8192                             # kernel VA pages (32 MiB of kmem_map)
    S.nfilepages = max(1, nfiles_pages)
    S.nthreads = nthreads
    S.amap_per_proc = max(16, amap_per_proc)
    S.amap_slots = S.amap_per_proc * nthreads
    S.maxentries = 16                         # vm_map entries per process
    i4, i8, u4 = np.dtype("<i4"), np.dtype("<i8"), np.dtype("<u4")
    arrays = []

    def arr(name, dtype, *shape):
        arrays.append(ArraySpec(name, dtype, tuple(shape)))

    arr("uvmexp", i8, len(UVMEXP_FIELDS))
    arr("cnt", i8, machine.ncpu, len(COUNTERS))
    arr("uvmq", i4, 8)                        # free / active / inactive queue heads+tails
    for f in ("pg_flags", "pg_pq", "pg_owner", "pg_obj", "pg_off", "pg_anon", "pg_wire",
              "pg_next", "pg_prev", "pg_lnext", "pg_lprev", "pg_version"):
        arr(f, i4, npages)
    arr("physmem", u4, npages * 1024)         # page-table pages' contents
    arr("pvh_list", i4, npages)
    arr("pvh_attrs", i4, npages)
    # pmaps (struct pmap, struct-of-arrays)
    for f in ("pm_inuse", "pm_refs", "pm_pdir", "pm_ptphint", "pm_resident", "pm_wired",
              "pm_memq_head", "pm_memq_tail", "pm_npages", "pm_next", "pm_prev", "pm_owner"):
        arr(f, i4, S.maxpmap)
    arr("pm_cpus", np.dtype("<u8"), S.maxpmap)      # CPU bitmask: 64 CPUs need bit 63
    arr("pmap_glob", i4, 16)
    # pv entries, in pv pages of PVE_PER_PVPAGE
    from smp.kern.pmap import PVE_PER_PVPAGE
    npve = S.npvpages * PVE_PER_PVPAGE
    for f in ("pv_next", "pv_pmap", "pv_ptp"):
        arr(f, i4, npve)
    arr("pv_va", i8, npve)
    for f in ("pvp_pg", "pvp_nfree", "pvp_free", "pvp_next", "pvp_prev", "pvp_list"):
        arr(f, i4, S.npvpages)
    arr("pvp_va", i8, S.npvpages)
    # kernel virtual memory (kmem_map): a page-granular allocation map
    arr("kva_used", i4, S.nkva)
    arr("kva_glob", i4, 4)
    # anons and amaps
    for f in ("an_ref", "an_page", "an_swslot", "an_next"):
        arr(f, i4, S.nanon)
    arr("amap_slot", i4, S.amap_slots)
    arr("amap_glob", i8, 4)
    # swap
    arr("swap_used", i4, max(1, machine.swpages))
    arr("swap_glob", i4, 4)
    # per-CPU TLB shootdown queues (pmap_tlb_shootdown_q) and rendezvous masks
    from smp.kern.pmap import PMAP_TLB_MAXJOBS
    arr("tlbq_count", i4, machine.ncpu)
    arr("tlbq_flush", i4, machine.ncpu)
    arr("tlbq_va", i8, machine.ncpu * PMAP_TLB_MAXJOBS)
    arr("tlbq_pmap", i4, machine.ncpu * PMAP_TLB_MAXJOBS)
    arr("tlb_ipi_mask", np.dtype("<u8"), machine.ncpu)
    arr("cpu_pmap", i4, machine.ncpu)         # pmap loaded in each CPU's %cr3
    # file pages (vnode objects) and per-process maps
    arr("file_page", i4, S.nfilepages)
    arr("file_base", i4, 64)
    arr("file_size", i4, 64)
    arr("vm_entry", i8, nthreads * S.maxentries * 8)
    arr("vm_nentries", i4, nthreads)
    arr("vm_pmap", i4, nthreads)
    arr("vm_aused", i4, nthreads)

    # locks (NetBSD class names)
    L.fpageq = locks.declare("fpageq")                       # uvm_lock_fpageq
    L.pageq = locks.declare("pageq")                         # uvm_lock_pageq
    L.pagedaemon = locks.declare("pagedaemon_lock")
    L.pmap_main = locks.declare("pmap_main_lock", "rw")      # spinlockmgr
    L.pmaps = locks.declare("pmaps_lock")
    L.pvalloc = locks.declare("pvalloc_lock")
    L.tmpptp = locks.declare("pmap_tmpptp_lock")
    L.zero_page = locks.declare("pmap_zero_page_lock")
    L.copy_page = locks.declare("pmap_copy_page_lock")
    L.pmap = locks.declare("pmap", count=S.maxpmap, label="pmap[{i}]")
    L.pvh = locks.declare("pvh", count=npages, label="pvh[{i}]")
    L.kmem_object = locks.declare("kmem_object")
    L.kernel_object = locks.declare("kernel_object")
    L.kmem_map = locks.declare("kmem_map")
    L.pager_map = locks.declare("pager_map")
    L.anon = locks.declare("anon", count=S.nanon, label="anon[{i}]")
    L.amap = locks.declare("amap", count=nthreads, label="amap[{i}]")
    L.vm_map = locks.declare("vm_map", count=nthreads, label="vm_map[{i}]")
    L.swap = locks.declare("swap_data_lock")
    L.anon_free = locks.declare("uvm_anon_lock")
    L.tlbq = locks.declare("pmap_tlb_shootdown_q", count=machine.ncpu, label="tlb_q[{i}]")
    L.tlb_job = locks.declare("pmap_tlb_shootdown_job_lock")
    L.vnode = locks.declare("vnode", count=8, label="vnode[{i}]")
    return arrays


def attach(seg) -> None:
    """Bind ``A`` to this process's view of the segment (after fork)."""
    for name in list(vars(A)):
        delattr(A, name)
    for name, arr in seg.arrays.items():
        if arr.dtype.kind in "iu" and arr.ndim >= 1:
            setattr(A, name, _mv(arr))
    A.np = seg.arrays                      # numpy views, for vectorised reports and checks
    A.cnt = memoryview(seg.arrays["cnt"].reshape(-1))
