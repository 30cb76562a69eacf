"""Global VM state: ``struct uvm``, ``struct uvmexp`` and the kernel's view of the segment.

Every piece of state the CPUs share lives in the segment.  Each subsystem
declares its own arrays and locks before boot (its ``declare``), formats them
in the parent (``format``) and binds what it needs on every CPU (``attach``);
``smp.kern.kernel`` calls them in the order of its subsystem tuple.  This
module owns what belongs to no single subsystem:

* ``uvmexp[]``, the global counters and targets (``uvmexp[FREE]`` is
  ``uvmexp.free``), guarded as in NetBSD by the locks that guard what they
  count (the free count by the free-page-queue lock, ...);
* per-CPU event counters ``cnt[cpu, counter.name]`` (uvmexp's statistics:
  faults, fltnoram, ...; plus what NetBSD lacked: pmfail waits, PTP and pv
  steals, stale TLB uses), added up by reports;
* ``uvm.pagedaemon_lock``, the pagedaemon's sleep interlock, and the sleep
  channels of ``struct uvm`` and ``uvmexp`` (addresses in the real kernel);
* ``shared``: after fork, each CPU's memoryviews of every named array of the
  segment (``shared.pg_wire[pg]``: one shared-array access per field read,
  ~30 ns), bound by ``attach`` before any other subsystem attaches.

``shared`` and ``counter`` are module objects, not ``SimpleNamespace``s: the
interpreter specialises an attribute read of a module (``LOAD_ATTR_MODULE``) to
about the cost of a global, and a fault reads ``shared.X`` some fifty times
(measured on the 2-core host: 52 ns a ``shared.pg[i] = v`` through a
SimpleNamespace, 32 ns through a module, 31 ns through a global).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from smp.machine.layout import ArraySpec

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
RESERVE_PD, RESERVE_KERN, FREEMIN, FREETARG, INACTARG, WIREDMAX = (UX[n] for n in (
    "reserve_pagedaemon", "reserve_kernel", "freemin", "freetarg", "inactarg", "wiredmax"))
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
    # issue 10: the reserve's other consumers
    "growkernel_ptps", "pvpage_free", "execs", "uarea_allocs", "intr_allocs",
    "intr_alloc_fail", "vmapbuf_maps", "pageout_clusters", "fork_fail",
    # issue 11: time (core clock: host ns free-running, virtual ns in lockstep) spent in
    # pmap_enter and, inside pmap_alloc_ptp / pmap_alloc_pvpage, in the steal functions
    "pmap_enter_ns", "steal_ns",
    # TLB IPIs whose shooter acknowledged for a target waiting for a lock, idle or gone (pmap)
    "tlb_ipi_proxied",
    # uvmexp.pdswout: pagedaemon passes that began below freetarg and tried a swapout
    "pdswout",
]
counter = ModuleType("smp.kern.uvm.counter", "cnt[cpu, counter.NAME]: the column of a counter")
for _i, _n in enumerate(COUNTERS):
    setattr(counter, _n, _i)
# A row of cnt[] is whole cache lines (8 counters each), so no CPU's counters share a line
# with another's: 71 counters in a row of 71 put one CPU's ``faults`` beside the previous
# CPU's ``pmap_enter_ns``, both written at every fault.  The spare columns stay zero.
CNT_STRIDE = -(-len(COUNTERS) // 8) * 8

# --- sleep channels (addresses in the real kernel) ---------------------------
CHAN_FREE = 0xC0F0_0000            # &uvmexp.free: uvm_wait sleepers
CHAN_PAGEDAEMON = 0xC0F0_0008      # &uvm.pagedaemon
CHAN_PAGING = 0xC0F0_0010          # pager I/O completion (aiodoned)
CHAN_PAGERMAP = 0xC0F0_0018        # pager_map space
CHAN_KMEM = 0xC0F0_0020            # kernel VA
CHAN_PAGE = 0xC100_0000            # + page: who waits for a busy page (PG_WANTED)

# this CPU's memoryviews of the segment's arrays, bound by attach()
shared = ModuleType("smp.kern.uvm.shared", "memoryviews of the segment's arrays")
pagedaemon_lock = -1               # uvm.pagedaemon_lock (uvm_wait, uvm_pageout), by declare()


def declare(kernel, locks) -> list[ArraySpec]:
    """uvmexp, the per-CPU counters and the pagedaemon's interlock (parent, before boot)."""
    global pagedaemon_lock
    pagedaemon_lock = locks.declare("pagedaemon_lock")
    i8 = np.dtype("<i8")
    return [ArraySpec("uvmexp", i8, (len(UVMEXP_FIELDS),)),
            ArraySpec("cnt", i8, (kernel.machine.ncpu, CNT_STRIDE))]


def attach(ci, kernel) -> None:
    """Bind ``shared`` to this process's view of the segment (after fork)."""
    seg = ci.seg
    for name in [n for n in vars(shared) if not n.startswith("__")]:
        delattr(shared, name)
    for name, arr in seg.arrays.items():
        if arr.dtype.kind in "iu" and arr.ndim >= 1:
            setattr(shared, name, memoryview(arr.reshape(-1)))
    shared.np = seg.arrays                 # numpy views, for vectorised reports and checks
    ci.cnt_base = ci.cpu * CNT_STRIDE      # this CPU's row of cnt[]
