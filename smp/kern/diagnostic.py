"""DIAGNOSTIC: the VM system's invariants, checked on a stopped machine.

A kernel built with ``options DIAGNOSTIC`` checks its data structures as it
goes (the KASSERTs and "panic: pmap_remove_pv: ..." lines of pmap.c and
uvm_page.c).  The simulator can do better than spot checks: when every CPU
has stopped, the whole shared segment can be read at once and every
relation between the VM system's structures verified.  ``check_invariants``
does that, in the parent, after a run and before the segment goes away; it
returns one line per violation (an empty list means consistent).

The invariants, in the order they are checked:

**Page queues** (uvm_page.c).  The free list, walked from its head through
``pg_next``, has consistent back links, ends at its tail and holds exactly
``uvmexp.free`` pages, each owned by nobody (OWN_FREE) and marked PQ_FREE,
with no pv entry and no wire count.  No page off the free list is owned by
nobody or marked PQ_FREE -- a page is never both free and in use.  The
active and inactive queues likewise hold exactly ``uvmexp.active`` and
``uvmexp.inactive`` pages, each marked with its queue, owned by an anon or
a file object (only pageable pages are queued) and unwired.

**Page ownership counters.**  ``uvmexp.anonpages``, ``filepages``,
``ptppages`` (user and kernel PTPs), ``pvpages``, ``kmempages`` and
``pdppages`` equal the number of pages with that owner; ``uvmexp.wired``
equals the number of wired anon and file pages.

**Page directories** (pmap.c, §2.1-2.2 of NETBSD-FACTS).  Every pmap in use
owns its PDP (OWN_PDP, ``pg_obj`` = the pmap); the PDP's recursive slot
(PDSLOT_PTE) points back at itself; a user PDP's kernel slots are the
kernel pmap's.  Every valid user PDE points at a PTP owned by the same pmap
at the offset of that slot (OWN_PTP, ``pg_obj`` = pmap, ``pg_off`` = PDE
index); the pmap's ``memq`` lists exactly those PTPs, with consistent
links, and ``pm_npages`` counts them; no PTP is orphaned (owned by a pmap
whose PDE does not point at it).  Every valid kernel PDE points at a kernel
PTP (OWN_KPTP) of that slot, ``nkpde`` of them.

**PTP wire counts.**  A user PTP's ``wire_count`` is 1 + its valid PTEs.
(pv stealing decrements the count and deliberately leaves the PTP in place
even at 1, which keeps this invariant.)  Kernel PTPs are never freed and
keep 1, so they are not counted this way.

**pmap statistics.**  A user pmap's ``resident_count`` is its valid user
PTEs (the recursive slot excluded) + its PTPs + 1 for the PDP; the kernel
pmap's is its valid kernel PTEs + its kernel PTPs + 1.  ``wired_count`` is
the number of valid PTEs with PG_W.

**Mappings and pv lists** (pmap.c, §2.3).  Every valid user PTE maps an
anon or file page and carries PG_PVLIST and PG_u; a wired one (PG_W) maps a
wired page (``wire_count`` > 0: mlock'd memory is not pageable), and every
wired anon or file page has a wired mapping (no wiring outlives its mlock);
every valid kernel PTE
lies in allocated kernel VA (``kva_used``) and, if unmanaged
(``pmap_kenter_pa``), maps a pv page or interrupt-safe kernel memory.  No
PTE maps a free page.  Every managed PTE (PG_PVLIST) has exactly one pv
entry (pmap, va) on its page's pv list, and every pv entry points at a
valid PG_PVLIST PTE of that pmap, at that va, mapping that page; a user
entry's ``pv_ptp`` is the PTP that maps its va, a kernel entry's is -1.  No
pv entry is on two lists.

**The pv-entry allocator** (§2.4).  Every entry of every pv page is either
on a pv list or on its page's free chain -- none leaked; each page's free
chain has ``pvp_nfree`` entries; the pages on ``pv_freepages`` have free
entries, those on ``pv_unusedpgs`` are entirely free, the others none; the
free counts add up to ``pv_nfpvents``; each pv page is an OWN_PVPAGE page
mapped (unmanaged) at its kernel VA; ``uvmexp.pvpages`` counts them.

**Anons and swap** (uvm_anon.c, uvm_swap.c).  An anon's reference count is
the number of amap slots that name it (slots of every process's amap
window); anons with no reference are on the anon free list, which holds
``uvmexp.nfreeanon`` anons with no page and no swap slot.  An anon in use
has its data somewhere: a resident page, a swap slot, or both.  A resident
anon's page is an OWN_ANON page whose ``pg_anon`` points back, and every
OWN_ANON page belongs to the anon that names it.  Swap slots are not
shared; ``swpginuse`` equals the slots marked used, which are exactly the
slots anons hold (none leaked); ``swpgonly`` is the number of anons with a
swap slot and no resident page.  File pages are where their object's page
table says.

**Pageouts and pools.**  ``uvmexp.paging`` counts the pages of the writes in
flight, each a busy anon or file page; an anon freed while its page was being
written keeps it (PG_RELEASED) until the write completes.  Every page of the
mbuf and cluster pools is a kernel page mapped at its VA, and its items in use
are the ones the packets hold.

**Quiescence.**  After a clean stop no lock word is held and no CPU is
waiting for a TLB-shootdown acknowledgement.  A stop is clean when every CPU
is outside the kernel: between threads in its dispatch loop (done, idle, or
halted there by lockstep's end), holding no lock.

A run that ended in a panic (or a CPU stopped while spinning inside the
kernel) stops mid-operation, and many of these relations are legitimately
broken at that moment: ``check_after_run`` then checks only what every
kernel path keeps true at each lock release -- the structures whose locks
no stopped CPU holds, leaving out the pmaps the stopped CPUs were running
(a halt unwinds a CPU through Python ``finally`` clauses that release the
pmap locks of an unfinished pmap_enter) -- and says which checks it skipped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from smp.kern import intr, pmap, uvm_anon, uvm_page, uvm_pager
from smp.kern import uvm as U
from smp.kern import uvm_map as M
from smp.kern.param import (
    KERNBASE,
    KERNEL_PMAP,
    NBPG,
    OWN_ANON,
    OWN_FREE,
    OWN_KMEM,
    OWN_KPTP,
    OWN_PDP,
    OWN_PTP,
    OWN_PVPAGE,
    OWN_UOBJ,
    OWNER_NAMES,
    PDSLOT_KERN,
    PDSLOT_PTE,
    PG_BUSY,
    PG_FRAME,
    PG_PVLIST,
    PG_RELEASED,
    PG_RW,
    PG_V,
    PG_W,
    PG_u,
)
from smp.kern.pmap import (
    G_NFPVENTS,
    G_NKPDE,
    G_PMAPS,
    G_PVCACHEDVA,
    G_PVFREE,
    G_PVFREE_TAIL,
    G_PVUNUSED,
    G_PVUNUSED_TAIL,
    PVE_PER_PVPAGE,
    PVL_FREE,
    PVL_NONE,
    PVL_UNUSED,
)
from smp.kern.uvm_page import (
    PQ_ACTIVE,
    PQ_FREE,
    PQ_INACTIVE,
    Q_ACTIVE,
    Q_FREE,
    Q_INACTIVE,
)
from smp.machine import _atomic
from smp.machine.lockspace import LockSpace

MAX_PER_CHECK = 20          # lines per check before "... and N more"

# What a mid-operation stop breaks (see check_after_run).
SKIPPED_AFTER_PANIC = [
    "uvmexp page-owner counters and uvmexp.wired against pg_owner (uvm_pagealloc sets "
    "pg_owner after dropping fpageq, uvm_pagefree before taking it)",
    "pages owned by nobody off the free list (the same window)",
    "kernel pmap (its PTEs and statistics are changed without a pmap lock)",
    "pv-entry leaks (an entry is in flight between pmap_alloc_pv and pmap_enter_pv)",
    "anon reference counts, anon<->page links, swap-slot ownership, swpgonly, file pages",
    "quiescence (locks still held, TLB rendezvous pending)",
]


class Report(list):
    """The violations (the list itself) plus what was not checked and why."""

    def __init__(self, violations=(), skipped=(), reason: str = ""):
        list.__init__(self, violations)
        self.skipped = list(skipped)
        self.reason = reason


class _Ctx:
    """One check pass: the segment's arrays, what is excluded, and the findings."""

    def __init__(self, seg: Any, full: bool, held: set[int], locks: LockSpace | None = None):
        a = seg.arrays
        self.a = a
        self.seg = seg
        self.full = full
        self.held = held
        self.out: list[str] = []
        self._per: Counter = Counter()
        self.npages = len(a["pg_owner"])
        self.phys = a["physmem"].reshape(self.npages, 1024)
        self.ux = a["uvmexp"]
        self.busy_pmaps: set[int] = set()
        self.locks = locks

    def bad(self, check: str, msg: str) -> None:
        self._per[check] += 1
        if self._per[check] <= MAX_PER_CHECK:
            self.out.append(f"{check}: {msg}")

    def finish(self) -> list[str]:
        for check, n in self._per.items():
            if n > MAX_PER_CHECK:
                self.out.append(f"{check}: ... and {n - MAX_PER_CHECK} more")
        return self.out

    def locked(self, lock_id: int) -> bool:
        return lock_id in self.held


def check_invariants(seg: Any, locks: LockSpace | None = None) -> list[str]:
    """Every invariant of the module docstring, on a quiescent segment; [] if consistent.

    => every CPU has stopped at a clean point (after a normal end of run); the
       segment is read, never written.
    """
    return Report(_run(_Ctx(seg, True, set(), locks)))


def check_after_run(seg: Any, locks: LockSpace | None = None) -> Report:
    """``check_invariants`` made safe for any end of run, panics included.

    If every CPU stopped cleanly in its dispatch loop holding no lock, this is
    ``check_invariants``.  Otherwise (a panic, a CPU halted while spinning in the
    kernel, a worker killed) the structures some stopped CPU was changing are
    left out: every check whose lock a stopped CPU holds, and the checks listed
    in ``SKIPPED_AFTER_PANIC``, which no lock protects from a mid-operation stop.
    The returned list's ``skipped`` names what was not checked, ``reason`` why.
    ``locks`` (the machine's lock space) names the locks in the report.
    """
    cpus = seg.cpus
    a = seg.arrays
    held: set[int] = set()
    busy: set[int] = set()
    dirty: list[str] = []
    for i in range(len(cpus)):
        c = cpus[i]
        n = int(c["nheld"])
        held.update(int(h) for h in c["held"]["lock"][:n])
        state = int(c["state"])
        # inside the kernel: holding a lock, running a thread, or spinning (a lockstep
        # halt stops the CPUs waiting for the turn wherever they are, and one that was
        # between threads in its dispatch loop has left nothing half done)
        if n or int(c["curproc"]) >= 0 or state in (_atomic.CS_SPINNING, _atomic.CS_PANIC):
            dirty.append(f"cpu{i} ({_state_name(state)}, {n} locks held)")
            # Python's finally clauses (pmap_enter, pmap_remove) drop the pmap locks while
            # a halt unwinds the CPU, so the pmap it was changing may look unlocked: leave
            # out the pmap in its %cr3 and its thread's
            busy.add(int(a["cpu_pmap"][i]))
            tid = int(c["curproc"])
            if 0 <= tid < len(a["vm_pmap"]):
                busy.add(int(a["vm_pmap"][tid]))
    busy.discard(-1)
    panic_cpu = int(seg.hdr["panic_cpu"])
    if not dirty and not panic_cpu:
        return Report(_run(_Ctx(seg, True, set(), locks)))
    ctx = _Ctx(seg, False, held, locks)
    ctx.busy_pmaps = busy
    violations = _run(ctx)
    skipped = list(SKIPPED_AFTER_PANIC)
    if held:
        skipped.append("structures under the locks still held: "
                       + ", ".join(lock_name(x, locks) for x in sorted(held)))
    if busy - {KERNEL_PMAP}:
        skipped.append("the pmaps the stopped CPUs were running: "
                       + ", ".join(f"pmap {pm}" for pm in sorted(busy - {KERNEL_PMAP})))
    why = "; ".join(([f"cpu{panic_cpu - 1} panicked"] if panic_cpu else [])
                    + (["stopped inside the kernel: " + ", ".join(dirty)] if dirty else []))
    return Report(violations, skipped, why)


def _state_name(state: int) -> str:
    names = {_atomic.CS_OFFLINE: "offline", _atomic.CS_IDLE: "idle",
             _atomic.CS_RUNNING: "running", _atomic.CS_SPINNING: "spinning",
             _atomic.CS_HALTED: "halted", _atomic.CS_PANIC: "panic", _atomic.CS_DONE: "done"}
    return names.get(state, str(state))


def lock_name(lock_id: int, locks: LockSpace | None = None) -> str:
    """Instance name of a lock id (``pmap[3]``, ``pvalloc_lock``), as the lock space the
    machine declared names it (``lock#N`` without one)."""
    return locks.name_of(lock_id) if locks is not None else f"lock#{lock_id}"


def _run(ctx: _Ctx) -> list[str]:
    _check_queues(ctx)
    if ctx.full:
        _check_owner_counters(ctx)
    maps = _check_pmaps(ctx)
    _check_mappings(ctx, maps)
    _check_pv_allocator(ctx, maps)
    _check_anons(ctx)
    _check_pageouts(ctx)
    _check_pools(ctx, maps)
    if ctx.full:
        _check_quiescent(ctx)
    return ctx.finish()


def _check_pageouts(ctx: _Ctx) -> None:
    """The pageouts in flight (uvm_pager): uvmexp.paging counts their pages, each busy."""
    a = ctx.a
    if ctx.locked(uvm_pager.aiodoned_lock):
        return
    st, n = a["aio_state"], a["aio_n"]
    live = st != uvm_pager.A_FREE
    if int(ctx.ux[U.PAGING]) != int(n[live].sum()):
        ctx.bad("pageout", f"uvmexp.paging {int(ctx.ux[U.PAGING])}, pages in writes "
                f"{int(n[live].sum())}")
    if not ctx.full:
        return
    for w in np.nonzero(live)[0]:
        for pg in a["aio_pages"][w][:int(n[w])]:
            if not a["pg_flags"][pg] & PG_BUSY or a["pg_owner"][pg] not in (OWN_ANON, OWN_UOBJ):
                ctx.bad("pageout", f"write {int(w)}: page {_pa(int(pg))} not a busy anon or "
                        "file page")


def _check_pools(ctx: _Ctx, maps: _Maps) -> None:
    """The mbuf pools (intr): every pool page is a kernel page mapped at its VA, and its
    items in use are the packets' that name it."""
    a = ctx.a
    if not ctx.full:
        return
    for pp in (intr.MBPOOL, intr.MCLPOOL):
        vas, nfree = a["pool_va"][pp], a["pool_nfree"][pp]
        items = a["pkt_item"][:, :, 0] if pp == intr.MBPOOL else a["pkt_item"][:, :, 1:]
        held = np.bincount(items[items >= 0].ravel(), minlength=len(vas))[:len(vas)]
        for k in np.nonzero(vas != 0)[0]:
            used = intr.ITEMS_PER_PAGE[pp] - int(nfree[k])
            if used != int(held[k]):
                ctx.bad("pools", f"pool {pp} page {int(k)}: {used} items in use, packets "
                        f"hold {int(held[k])}")
            if KERNEL_PMAP in maps.checked:
                va = int(vas[k])
                hit = np.nonzero((maps.pmap == KERNEL_PMAP) & (maps.va == va))[0]
                if not len(hit) or a["pg_owner"][int(maps.pte[hit[0]]) >> 12] != OWN_KMEM:
                    ctx.bad("pools", f"pool {pp} page {int(k)} at 0x{va:08x} is not a "
                            "mapped kernel page")
        for k in np.nonzero((vas == 0) & (held > 0))[0]:
            ctx.bad("pools", f"pool {pp}: packets hold items of page {int(k)}, not in the pool")


# --- page queues -------------------------------------------------------------------------

def _walk(ctx: _Ctx, check: str, head: int, nxt: np.ndarray, prv: np.ndarray | None,
          limit: int) -> list[int]:
    """Follow a -1 terminated list, checking back links and stopping on a cycle."""
    out: list[int] = []
    seen: set[int] = set()
    p, last = head, -1
    while p >= 0:
        if p >= limit:
            ctx.bad(check, f"link to {p} out of range after {last}")
            break
        if p in seen:
            ctx.bad(check, f"cycle at {p}")
            break
        seen.add(p)
        if prv is not None and int(prv[p]) != last:
            ctx.bad(check, f"{p}: back link {int(prv[p])}, expected {last}")
        out.append(p)
        last, p = p, int(nxt[p])
    return out


def _check_queues(ctx: _Ctx) -> None:
    a, ux = ctx.a, ctx.ux
    q = a["uvmq"]
    owner, pq, wire = a["pg_owner"], a["pg_pq"], a["pg_wire"]
    if not ctx.locked(uvm_page.fpageq_lock):
        free = _walk(ctx, "free list", int(q[Q_FREE]), a["pg_next"], a["pg_prev"], ctx.npages)
        if free and int(q[Q_FREE + 1]) != free[-1]:
            ctx.bad("free list", f"tail {int(q[Q_FREE + 1])}, last page {free[-1]}")
        if len(free) != int(ux[U.FREE]):
            ctx.bad("free list", f"{len(free)} pages on the list, uvmexp.free {int(ux[U.FREE])}")
        fa = np.array(free, dtype=np.int64)
        for pg in fa[owner[fa] != OWN_FREE]:
            ctx.bad("free list", f"page {_pa(pg)} on the free list owned by "
                    f"{OWNER_NAMES[owner[pg]]} (obj {int(a['pg_obj'][pg])})")
        for pg in fa[pq[fa] != PQ_FREE]:
            ctx.bad("free list", f"page {_pa(pg)} on the free list marked pq {int(pq[pg])}")
        for pg in fa[(a["pvh_list"][fa] >= 0) | (wire[fa] != 0)]:
            ctx.bad("free list", f"free page {_pa(pg)} has pv entries or wire_count "
                    f"{int(wire[pg])}")
        onlist = np.zeros(ctx.npages, bool)
        onlist[fa] = True
        stray = np.nonzero(~onlist & (pq == PQ_FREE))[0]
        for pg in stray:
            ctx.bad("free list", f"page {_pa(pg)} marked PQ_FREE but not on the free list "
                    f"(owner {OWNER_NAMES[owner[pg]]})")
        if ctx.full:
            for pg in np.nonzero(~onlist & (owner == OWN_FREE))[0]:
                ctx.bad("free list", f"page {_pa(pg)} owned by nobody but not on the free "
                        "list (lost page)")
    if not ctx.locked(uvm_page.pageq_lock):
        for name, qi, mark, field_ in (("active queue", Q_ACTIVE, PQ_ACTIVE, U.ACTIVE),
                                       ("inactive queue", Q_INACTIVE, PQ_INACTIVE,
                                        U.INACTIVE)):
            pages = _walk(ctx, name, int(q[qi]), a["pg_next"], a["pg_prev"], ctx.npages)
            if pages and int(q[qi + 1]) != pages[-1]:
                ctx.bad(name, f"tail {int(q[qi + 1])}, last page {pages[-1]}")
            if len(pages) != int(ux[field_]):
                ctx.bad(name, f"{len(pages)} pages queued, uvmexp says {int(ux[field_])}")
            n_marked = int(np.count_nonzero(pq == mark))
            if n_marked != len(pages):
                ctx.bad(name, f"{n_marked} pages marked, {len(pages)} queued")
            for pg in pages:
                if pq[pg] != mark or owner[pg] not in (OWN_ANON, OWN_UOBJ) or wire[pg]:
                    ctx.bad(name, f"page {_pa(pg)} queued with pq {int(pq[pg])}, owner "
                            f"{OWNER_NAMES[owner[pg]]}, wire_count {int(wire[pg])}")


def _check_owner_counters(ctx: _Ctx) -> None:
    a, ux = ctx.a, ctx.ux
    owner = a["pg_owner"]
    if np.any((owner < 0) | (owner >= len(OWNER_NAMES))):
        ctx.bad("owners", f"{int(np.count_nonzero((owner < 0) | (owner >= 8)))} pages with "
                "an unknown owner")
    n = np.bincount(np.clip(owner, 0, len(OWNER_NAMES) - 1), minlength=len(OWNER_NAMES))
    if int(n[OWN_FREE]) != int(ux[U.FREE]):
        ctx.bad("uvmexp", f"free {int(ux[U.FREE])}, pages owned by nobody {int(n[OWN_FREE])}")
    for field_, count, what in (
            (U.ANONPAGES, n[OWN_ANON], "anon"), (U.FILEPAGES, n[OWN_UOBJ], "uobj"),
            (U.PTPPAGES, n[OWN_PTP] + n[OWN_KPTP], "ptp+kptp"),
            (U.PVPAGES, n[OWN_PVPAGE], "pvpage"), (U.KMEMPAGES, n[OWN_KMEM], "kmem"),
            (U.PDPPAGES, n[OWN_PDP], "pdp")):
        if int(ux[field_]) != int(count):
            ctx.bad("uvmexp", f"{U.UVMEXP_FIELDS[field_]} {int(ux[field_])}, pages owned by "
                    f"{what} {int(count)}")
    wired = int(np.count_nonzero(((owner == OWN_ANON) | (owner == OWN_UOBJ))
                                 & (a["pg_wire"] > 0)))
    if wired != int(ux[U.WIRED]):
        ctx.bad("uvmexp", f"wired {int(ux[U.WIRED])}, wired anon/file pages {wired}")


# --- pmaps ---------------------------------------------------------------------------------

@dataclass
class _Maps:
    """The valid PTEs found by walking the page tables, as parallel arrays."""

    pmap: np.ndarray            # pmap of each PTE
    va: np.ndarray
    pte: np.ndarray
    ptp: np.ndarray             # PTP page (user) or -1 (kernel)
    checked: set[int]           # pmaps whose mappings may be cross-checked
    ptp_of: dict[tuple[int, int], int]     # (pmap, pde index) -> PTP


def _pmaps_on_list(ctx: _Ctx) -> list[int]:
    a = ctx.a
    return _walk(ctx, "pmaps list", int(a["pmap_glob"][G_PMAPS]), a["pm_next"], a["pm_prev"],
                 len(a["pm_inuse"]))


def _check_pmaps(ctx: _Ctx) -> _Maps:
    a, phys = ctx.a, ctx.phys
    owner, obj, off, wire = a["pg_owner"], a["pg_obj"], a["pg_off"], a["pg_wire"]
    inuse = np.nonzero(a["pm_inuse"])[0]
    listed = _pmaps_on_list(ctx) if not ctx.locked(pmap.pmaps_lock) else None
    kpdir = int(a["pm_pdir"][KERNEL_PMAP])
    nk = int(a["pmap_glob"][G_NKPDE])
    maps_pm, maps_va, maps_pte, maps_ptp = [], [], [], []
    checked: set[int] = set()
    ptp_of: dict[tuple[int, int], int] = {}
    claimed: set[int] = set()
    for pm in (int(x) for x in inuse):
        user = pm != KERNEL_PMAP
        if ctx.full:
            ok = True
        else:       # after a panic: user pmaps fully made, on the list, not locked
            ok = (user and listed is not None and pm in listed
                  and not ctx.locked(pmap.pm_lock + pm) and pm not in ctx.busy_pmaps)
        if not ok:
            continue
        if user and listed is not None and pm not in listed:
            ctx.bad("pmaps list", f"pmap {pm} in use but not on the pmaps list")
        checked.add(pm)
        pdp = int(a["pm_pdir"][pm])
        where = f"pmap {pm}"
        if not 0 <= pdp < ctx.npages or owner[pdp] != OWN_PDP or obj[pdp] != pm:
            ctx.bad("pdp", f"{where}: PDP page {pdp} is not its OWN_PDP page")
            continue
        pdir = phys[pdp]
        if int(pdir[PDSLOT_PTE]) != ((pdp << 12) | PG_V | PG_RW):
            ctx.bad("pdp", f"{where}: recursive PDE 0x{int(pdir[PDSLOT_PTE]):08x}")
        if user and not np.array_equal(pdir[PDSLOT_KERN:PDSLOT_KERN + nk],
                                       phys[kpdir][PDSLOT_KERN:PDSLOT_KERN + nk]):
            ctx.bad("pdp", f"{where}: kernel PDEs differ from the kernel pmap's")
        slots = (np.arange(0, PDSLOT_PTE) if user
                 else np.arange(PDSLOT_KERN, 1023))
        pdes = pdir[slots]
        vslots = slots[(pdes & PG_V) != 0]
        ptps = (pdir[vslots] >> 12).astype(np.int64)
        want_owner = OWN_PTP if user else OWN_KPTP
        for s, t in zip(vslots, ptps, strict=True):
            s, t = int(s), int(t)
            if not 0 <= t < ctx.npages or owner[t] != want_owner or obj[t] != pm \
                    or off[t] != s:
                ctx.bad("pde", f"{where} slot {s}: PDE -> {_pa(t)} owned by "
                        f"{OWNER_NAMES[owner[t]] if 0 <= t < ctx.npages else '?'} "
                        f"obj {int(obj[t]) if 0 <= t < ctx.npages else -1} "
                        f"off {int(off[t]) if 0 <= t < ctx.npages else -1}")
                continue
            if t in claimed:
                ctx.bad("pde", f"{where} slot {s}: PTP {_pa(t)} also used elsewhere")
                continue
            claimed.add(t)
            ptp_of[(pm, s)] = t
        sel = [(int(s), int(t)) for s, t in zip(vslots, ptps, strict=True)
               if ptp_of.get((pm, int(s))) == int(t)]
        tbl = np.array([t for _, t in sel], dtype=np.int64)
        ptes = phys[tbl] if len(tbl) else np.zeros((0, 1024), np.uint32)
        valid = (ptes & PG_V) != 0
        nvalid = valid.sum(axis=1)
        if user:
            # wire_count = 1 + valid PTEs; memq = exactly the PTPs
            for (s, t), nv in zip(sel, nvalid, strict=True):
                if int(wire[t]) != 1 + int(nv):
                    ctx.bad("ptp wire_count", f"{where} PTP {_pa(t)} (slot {s}): wire_count "
                            f"{int(wire[t])} != 1 + {int(nv)} valid PTEs")
            memq = _walk(ctx, f"memq of pmap {pm}", int(a["pm_memq_head"][pm]),
                         a["pg_lnext"], a["pg_lprev"], ctx.npages)
            if memq and int(a["pm_memq_tail"][pm]) != memq[-1]:
                ctx.bad("memq", f"{where}: tail {int(a['pm_memq_tail'][pm])}, last {memq[-1]}")
            if set(memq) != set(tbl.tolist()):
                extra = sorted(set(memq) - set(tbl.tolist()))
                missing = sorted(set(tbl.tolist()) - set(memq))
                ctx.bad("memq", f"{where}: memq has {len(memq)} pages, PDEs {len(tbl)}; "
                        f"not in the page directory {[_pa(x) for x in extra][:4]}, "
                        f"not on memq {[_pa(x) for x in missing][:4]}")
            if int(a["pm_npages"][pm]) != len(memq):
                ctx.bad("memq", f"{where}: pm_npages {int(a['pm_npages'][pm])}, memq "
                        f"{len(memq)}")
            # (pm_ptphint is not checked: a stale hint is harmless by design, every
            # user compares it with the PDE's frame before trusting it)
        resident = int(nvalid.sum()) + len(tbl) + 1
        if int(a["pm_resident"][pm]) != resident:
            ctx.bad("pmap stats", f"{where}: resident_count {int(a['pm_resident'][pm])}, "
                    f"counted {resident} ({int(nvalid.sum())} PTEs + {len(tbl)} PTPs + PDP)")
        nwired = int(np.count_nonzero(valid & ((ptes & PG_W) != 0)))
        if int(a["pm_wired"][pm]) != nwired:
            ctx.bad("pmap stats", f"{where}: wired_count {int(a['pm_wired'][pm])}, "
                    f"PG_W PTEs {nwired}")
        if not user and len(tbl) != nk:
            ctx.bad("pde", f"kernel pmap: {len(tbl)} kernel PTPs, nkpde {nk}")
        for (s, t), row in zip(sel, valid, strict=True):
            idx = np.nonzero(row)[0]
            if not len(idx):
                continue
            maps_pm.append(np.full(len(idx), pm, np.int64))
            maps_va.append((s << 22) | (idx.astype(np.int64) << 12))
            maps_pte.append(phys[t][idx].astype(np.int64))
            maps_ptp.append(np.full(len(idx), t if user else -1, np.int64))
    # orphan PTPs: owned by a checked pmap but not in its page directory
    if ctx.full:
        for t in np.nonzero(owner == OWN_PTP)[0]:
            t = int(t)
            pm = int(obj[t])
            if t not in claimed:
                ctx.bad("pde", f"PTP {_pa(t)} owned by pmap {pm} (slot {int(off[t])}) but no "
                        "PDE points at it" + ("" if a["pm_inuse"][pm] else
                                              " (pmap not in use)"))
        for t in np.nonzero(owner == OWN_PDP)[0]:
            pm = int(obj[t])
            if not (0 <= pm < len(a["pm_inuse"]) and a["pm_inuse"][pm]
                    and int(a["pm_pdir"][pm]) == int(t)):
                ctx.bad("pdp", f"PDP page {_pa(t)} of pmap {pm}, which does not use it")

    def cat(xs: list) -> np.ndarray:
        return np.concatenate(xs) if xs else np.zeros(0, np.int64)

    return _Maps(cat(maps_pm), cat(maps_va), cat(maps_pte), cat(maps_ptp), checked, ptp_of)


# --- mappings and pv lists -------------------------------------------------------------------

def _pv_lists(ctx: _Ctx) -> list[tuple[int, int, int, int, int]]:
    """Every pv entry on every pv list: (page, entry, pmap, va, ptp)."""
    a = ctx.a
    heads = a["pvh_list"]
    pv_next, pv_pmap, pv_va, pv_ptp = a["pv_next"], a["pv_pmap"], a["pv_va"], a["pv_ptp"]
    npve = len(pv_next)
    out = []
    where: dict[int, int] = {}
    for pg in np.nonzero(heads >= 0)[0]:
        pg = int(pg)
        if ctx.locked(pmap.pvh_lock + pg):
            continue
        for pve in _walk(ctx, f"pv list of {_pa(pg)}", int(heads[pg]), pv_next, None, npve):
            if pve in where:
                ctx.bad("pv", f"entry {pve} on the pv lists of {_pa(where[pve])} and {_pa(pg)}")
                continue
            where[pve] = pg
            out.append((pg, pve, int(pv_pmap[pve]), int(pv_va[pve]), int(pv_ptp[pve])))
    return out


def _map_wired_unmapped(a: dict, maps: _Maps) -> list[int]:
    """The resident pages that a live process's map wires (a wired entry, a page wired on
    its own: uvm_map) at a VA its pmap no longer maps -- a swapout's pmap_collect took the
    mapping and the process has not touched the page since."""
    mapped = set(zip(maps.pmap.tolist(), maps.va.tolist(), strict=True))
    ent, nent, pms = a["vm_entry"], a["vm_nentries"], a["vm_pmap"]
    wl, nwl = a["vm_wired"], a["vm_nwired"]
    out = []
    for tid in np.nonzero(pms > 0)[0].tolist():
        pm = int(pms[tid])
        listed = {int(v) << 12 for v in wl[tid * M.MAXWIRED: tid * M.MAXWIRED + nwl[tid]]}
        for i in range(int(nent[tid])):
            b = M.entry_index(tid, i)
            start, end, flags = int(ent[b + M.E_START]), int(ent[b + M.E_END]), \
                int(ent[b + M.E_FLAGS])
            vas = range(start, end, NBPG) if flags & M.EF_WIRED else \
                sorted(v for v in listed if start <= v < end)
            for v in vas:
                if (pm, v) in mapped:
                    continue
                k = (v - start) // NBPG
                pg = -1
                base = int(ent[b + M.E_AMAP])
                if base >= 0 and a["amap_slot"][base + k] >= 0:
                    pg = int(a["an_page"][int(a["amap_slot"][base + k])])
                elif flags & M.EF_FILE:
                    obj = int(ent[b + M.E_UOBJ])
                    pg = int(a["file_page"][int(a["file_base"][obj]) + int(ent[b + M.E_UOFF])
                                            + k])
                if pg >= 0:
                    out.append(pg)
    return out


def _check_mappings(ctx: _Ctx, maps: _Maps) -> None:
    a = ctx.a
    owner = a["pg_owner"]
    frame = (maps.pte & PG_FRAME) >> 12
    user = maps.pmap != KERNEL_PMAP
    inrange = frame < ctx.npages
    for i in np.nonzero(~inrange)[0]:
        ctx.bad("pte", f"pmap {int(maps.pmap[i])} va 0x{int(maps.va[i]):08x}: frame "
                f"0x{int(frame[i]) << 12:08x} beyond physical memory")
    fr = np.where(inrange, frame, 0)
    fo = owner[fr]
    managed = (maps.pte & PG_PVLIST) != 0
    for i in np.nonzero(inrange & (fo == OWN_FREE))[0]:
        ctx.bad("pte", f"pmap {int(maps.pmap[i])} va 0x{int(maps.va[i]):08x} maps FREE page "
                f"{_pa(fr[i])}")
    bad_user = user & inrange & ((fo != OWN_ANON) & (fo != OWN_UOBJ) & (fo != OWN_FREE)
                                 | ~managed | ((maps.pte & PG_u) == 0))
    for i in np.nonzero(bad_user)[0]:
        ctx.bad("pte", f"pmap {int(maps.pmap[i])} va 0x{int(maps.va[i]):08x}: user PTE "
                f"0x{int(maps.pte[i]):08x} maps a {OWNER_NAMES[fo[i]]} page or lacks "
                "PG_PVLIST/PG_u")
    # a wired user mapping (PG_W) maps a wired page: mlock'd memory is never paged out
    wire = a["pg_wire"]
    for i in np.nonzero(user & inrange & ((maps.pte & PG_W) != 0) & (wire[fr] <= 0)
                        & ((fo == OWN_ANON) | (fo == OWN_UOBJ)))[0]:
        ctx.bad("wiring", f"pmap {int(maps.pmap[i])} va 0x{int(maps.va[i]):08x}: wired PTE "
                f"but page {_pa(fr[i])} has wire_count 0 (pageable)")
    # ... and a wired anon or file page is wired by some mapping (not leaked wired), or
    # by a map whose mapping of it a swapout's pmap_collect took (uvm_glue)
    if ctx.full:
        wmapped = np.zeros(ctx.npages, bool)
        wmapped[fr[user & inrange & ((maps.pte & PG_W) != 0)]] = True
        for pg in _map_wired_unmapped(a, maps):
            wmapped[pg] = True
        for pg in np.nonzero((wire > 0) & ((owner == OWN_ANON) | (owner == OWN_UOBJ))
                             & ~wmapped)[0]:
            ctx.bad("wiring", f"page {_pa(int(pg))} ({OWNER_NAMES[owner[pg]]}) has "
                    f"wire_count {int(wire[pg])} but no wired mapping (wiring leaked)")
    kern = ~user & inrange
    unmanaged_ok = (fo == OWN_PVPAGE) | (fo == OWN_KMEM)
    for i in np.nonzero(kern & ~managed & ~unmanaged_ok & (fo != OWN_FREE))[0]:
        ctx.bad("pte", f"kernel va 0x{int(maps.va[i]):08x}: unmanaged mapping of a "
                f"{OWNER_NAMES[fo[i]]} page {_pa(fr[i])}")
    if KERNEL_PMAP in maps.checked:
        kva = a["kva_used"]
        kv = maps.va[~user]
        vi = (kv - KERNBASE) // NBPG
        outside = (vi < 0) | (vi >= len(kva))
        for v in kv[outside]:
            ctx.bad("kva", f"kernel mapping at 0x{int(v):08x} outside kernel_map")
        vi = vi[~outside]
        for v in vi[kva[vi] == 0]:
            ctx.bad("kva", f"kernel mapping at 0x{int(KERNBASE + int(v) * NBPG):08x} in "
                    "unallocated kernel VA")
    # managed PTEs <-> pv entries
    pvs = _pv_lists(ctx)
    mkey = Counter()
    for pm, va, f in zip(maps.pmap[managed].tolist(), maps.va[managed].tolist(),
                         fr[managed].tolist(), strict=True):
        mkey[(pm, va)] = f
    pte_of = {(pm, va): (pte, ptp) for pm, va, pte, ptp in
              zip(maps.pmap.tolist(), maps.va.tolist(), maps.pte.tolist(), maps.ptp.tolist(),
                  strict=True)}
    seen: Counter = Counter()
    for pg, pve, pm, va, ptp in pvs:
        if pm not in maps.checked:
            if not (0 <= pm < len(a["pm_inuse"])) or (ctx.full and not a["pm_inuse"][pm]):
                ctx.bad("pv", f"entry {pve} on {_pa(pg)} names pmap {pm}, not in use")
            continue
        seen[(pm, va)] += 1
        got = pte_of.get((pm, va))
        if got is None:
            ctx.bad("pv", f"entry {pve} on {_pa(pg)}: pmap {pm} va 0x{va:08x} not mapped")
            continue
        pte, tptp = got
        if not pte & PG_PVLIST or (pte >> 12) != pg:
            ctx.bad("pv", f"entry {pve} on {_pa(pg)}: pmap {pm} va 0x{va:08x} PTE "
                    f"0x{pte:08x} (not a PG_PVLIST mapping of this page)")
        if ptp != tptp:
            ctx.bad("pv", f"entry {pve} on {_pa(pg)}: pmap {pm} va 0x{va:08x} pv_ptp "
                    f"{ptp}, PTP is {tptp}")
    for key, n in seen.items():
        if n > 1:
            ctx.bad("pv", f"pmap {key[0]} va 0x{key[1]:08x} has {n} pv entries")
    for (pm, va), f in mkey.items():
        if (pm, va) not in seen and not ctx.locked(pmap.pvh_lock + f):
            ctx.bad("pv", f"pmap {pm} va 0x{va:08x} -> {_pa(f)} is PG_PVLIST but has no pv "
                    "entry")
    ctx.pv_in_use = pvs                # for the allocator's leak check


def _check_pv_allocator(ctx: _Ctx, maps: _Maps) -> None:
    a = ctx.a
    if ctx.locked(pmap.pvalloc_lock):
        return
    g = a["pmap_glob"]
    pvp_pg, nfree, pfree = a["pvp_pg"], a["pvp_nfree"], a["pvp_free"]
    pvl = a["pvp_list"]
    pv_next, pv_pmap = a["pv_next"], a["pv_pmap"]
    npvp = len(pvp_pg)
    total = 0
    free_entries: set[int] = set()
    for p in range(npvp):
        pg = int(pvp_pg[p])
        if pg < 0:
            if int(nfree[p]) or int(pvl[p]) != PVL_NONE:
                ctx.bad("pv pages", f"unused pv page slot {p} has nfree {int(nfree[p])}, "
                        f"list {int(pvl[p])}")
            continue
        if int(a["pg_owner"][pg]) != OWN_PVPAGE or int(a["pg_obj"][pg]) != p:
            ctx.bad("pv pages", f"pv page {p}: page {_pa(pg)} owned by "
                    f"{OWNER_NAMES[a['pg_owner'][pg]]} obj {int(a['pg_obj'][pg])}")
        chain = _walk(ctx, f"pv page {p} free chain", int(pfree[p]), pv_next, None,
                      len(pv_next))
        lo, hi = p * PVE_PER_PVPAGE, (p + 1) * PVE_PER_PVPAGE
        for e in chain:
            if not lo <= e < hi:
                ctx.bad("pv pages", f"pv page {p}: free entry {e} belongs to another page")
            elif int(pv_pmap[e]) != -1:
                ctx.bad("pv pages", f"pv page {p}: free entry {e} names pmap {int(pv_pmap[e])}")
        free_entries.update(chain)
        if len(chain) != int(nfree[p]):
            ctx.bad("pv pages", f"pv page {p}: {len(chain)} free entries, pvp_nfree "
                    f"{int(nfree[p])}")
        total += int(nfree[p])
        want = (PVL_NONE if int(nfree[p]) == 0 else
                (PVL_UNUSED, PVL_FREE) if int(nfree[p]) == PVE_PER_PVPAGE else PVL_FREE)
        if int(pvl[p]) not in (want if isinstance(want, tuple) else (want,)):
            ctx.bad("pv pages", f"pv page {p}: nfree {int(nfree[p])} but on list "
                    f"{int(pvl[p])}")
        if int(pvl[p]) == PVL_UNUSED and int(nfree[p]) != PVE_PER_PVPAGE:
            ctx.bad("pv pages", f"pv page {p} on pv_unusedpgs with {int(nfree[p])} free")
        if KERNEL_PMAP in maps.checked:
            va = int(a["pvp_va"][p])
            kpdir = int(a["pm_pdir"][KERNEL_PMAP])
            pde = int(ctx.phys[kpdir][va >> 22])
            pte = int(ctx.phys[pde >> 12][(va >> 12) & 0x3FF]) if pde & PG_V else 0
            if not pte & PG_V or (pte >> 12) != pg or pte & PG_PVLIST:
                ctx.bad("pv pages", f"pv page {p} at va 0x{va:08x}: kernel PTE 0x{pte:08x}, "
                        f"expected an unmanaged mapping of {_pa(pg)}")
    if total != int(g[G_NFPVENTS]):
        ctx.bad("pv pages", f"pv_nfpvents {int(g[G_NFPVENTS])}, free entries {total}")
    for head, tail, tag, name in ((G_PVFREE, G_PVFREE_TAIL, PVL_FREE, "pv_freepages"),
                                  (G_PVUNUSED, G_PVUNUSED_TAIL, PVL_UNUSED, "pv_unusedpgs")):
        lst = _walk(ctx, name, int(g[head]), a["pvp_next"], a["pvp_prev"], npvp)
        if int(g[tail]) != (lst[-1] if lst else -1):
            ctx.bad("pv pages", f"{name}: tail {int(g[tail])}, last page "
                    f"{lst[-1] if lst else -1}")
        for p in lst:
            if int(pvl[p]) != tag:
                ctx.bad("pv pages", f"pv page {p} on {name} tagged {int(pvl[p])}")
        if len(lst) != int(np.count_nonzero(pvl == tag)):
            ctx.bad("pv pages", f"{name}: {len(lst)} pages listed, "
                    f"{int(np.count_nonzero(pvl == tag))} tagged")
    cva = int(g[G_PVCACHEDVA])
    if cva >= 0 and (cva >= len(a["kva_used"]) or not a["kva_used"][cva]):
        ctx.bad("pv pages", f"pv_cachedva 0x{KERNBASE + cva * NBPG:08x} is not allocated "
                "kernel VA")
    if cva >= 0 and KERNEL_PMAP in maps.checked and \
            np.any(maps.va[maps.pmap == KERNEL_PMAP] == KERNBASE + cva * NBPG):
        ctx.bad("pv pages", f"pv_cachedva 0x{KERNBASE + cva * NBPG:08x} is mapped")
    npv = int(np.count_nonzero(pvp_pg >= 0))
    if ctx.full and npv != int(ctx.ux[U.PVPAGES]):
        ctx.bad("pv pages", f"{npv} pv pages, uvmexp.pvpages {int(ctx.ux[U.PVPAGES])}")
    if ctx.full:
        used = {pve for _, pve, *_ in ctx.pv_in_use}
        both = used & free_entries
        for e in sorted(both)[:MAX_PER_CHECK]:
            ctx.bad("pv pages", f"entry {e} is both free and on a pv list")
        for p in np.nonzero(pvp_pg >= 0)[0]:
            p = int(p)
            lo = p * PVE_PER_PVPAGE
            n_used = sum(1 for e in range(lo, lo + PVE_PER_PVPAGE) if e in used)
            if n_used + int(nfree[p]) != PVE_PER_PVPAGE:
                ctx.bad("pv leak", f"pv page {p}: {n_used} entries on pv lists + "
                        f"{int(nfree[p])} free != {PVE_PER_PVPAGE} (entries leaked)")


# --- anons, swap and file pages ---------------------------------------------------------------

def _check_anons(ctx: _Ctx) -> None:
    a, ux = ctx.a, ctx.ux
    an_ref, an_page, an_sw, an_next = a["an_ref"], a["an_page"], a["an_swslot"], a["an_next"]
    nanon = len(an_ref)
    # anons freed while their page was being paged out: the I/O's completion frees them
    flags = a["pg_flags"]
    released = (an_ref <= 0) & (an_page >= 0) & \
        ((flags[np.where(an_page >= 0, an_page, 0)] & (PG_BUSY | PG_RELEASED))
         == (PG_BUSY | PG_RELEASED))
    if not ctx.locked(uvm_anon.uvm_anon_lock):
        free = _walk(ctx, "anon free list", int(a["amap_glob"][0]), an_next, None, nanon)
        if len(free) != int(ux[U.NFREEANON]):
            ctx.bad("anons", f"{len(free)} anons on the free list, nfreeanon "
                    f"{int(ux[U.NFREEANON])}")
        fa = np.array(free, dtype=np.int64)
        for an in fa[(an_ref[fa] != 0) | (an_page[fa] >= 0) | (an_sw[fa] != 0)]:
            ctx.bad("anons", f"free anon {int(an)}: ref {int(an_ref[an])}, page "
                    f"{int(an_page[an])}, swslot {int(an_sw[an])}")
        if ctx.full:
            onfree = np.zeros(nanon, bool)
            onfree[fa] = True
            for an in np.nonzero(~onfree & (an_ref <= 0) & ~released)[0]:
                ctx.bad("anons", f"anon {int(an)} has no reference and is not free (leaked)")
    if not ctx.locked(uvm_anon.swap_data_lock):
        used = int(np.count_nonzero(a["swap_used"][:max(1, int(ux[U.SWPAGES]))]))
        if int(ux[U.SWPAGES]) == 0:
            used = 0
        if used != int(ux[U.SWPGINUSE]):
            ctx.bad("swap", f"swpginuse {int(ux[U.SWPGINUSE])}, slots marked used {used}")
    if not ctx.full:
        return
    # amap slots: each process's window [tid * amap_per_proc, + vm_aused), and within
    # it only the runs its map entries cover (munmap leaves -1 behind)
    slots = a["amap_slot"]
    aused = a["vm_aused"]
    per = len(slots) // max(1, len(aused))
    win = np.zeros(len(slots), bool)
    covered = np.zeros(len(slots), bool)
    ent = a["vm_entry"].reshape(len(aused), -1, 8)
    for tid in range(len(aused)):
        n = int(aused[tid])
        if n > 0:
            win[tid * per: tid * per + min(n, per)] = True
        for i in range(int(a["vm_nentries"][tid])):
            start, end, base = int(ent[tid, i, 0]), int(ent[tid, i, 1]), int(ent[tid, i, 4])
            if base >= 0:
                covered[base: base + (end - start) // NBPG] = True
    for s in np.nonzero(win & ~covered & (slots >= 0))[0][:MAX_PER_CHECK]:
        ctx.bad("anon refs", f"amap slot {int(s)} outside any map entry names anon "
                f"{int(slots[s])}")
    named = slots[covered & (slots >= 0)]
    ref = np.bincount(named, minlength=nanon)[:nanon]
    for an in np.nonzero(ref != an_ref)[0][:MAX_PER_CHECK * 2]:
        ctx.bad("anon refs", f"anon {int(an)}: an_ref {int(an_ref[an])}, named by "
                f"{int(ref[an])} amap slots")
    live = an_ref > 0
    owner, pg_anon = a["pg_owner"], a["pg_anon"]
    for an in np.nonzero(live & (an_page < 0) & (an_sw == 0))[0]:
        ctx.bad("anons", f"anon {int(an)} (ref {int(an_ref[an])}) has neither a page nor a "
                "swap slot: its data is lost")
    res = np.nonzero(live & (an_page >= 0))[0]
    pgs = an_page[res]
    for an, pg in zip(res[(owner[pgs] != OWN_ANON) | (pg_anon[pgs] != res)].tolist(),
                      pgs[(owner[pgs] != OWN_ANON) | (pg_anon[pgs] != res)].tolist(),
                      strict=True):
        ctx.bad("anons", f"anon {an}: page {_pa(pg)} owned by {OWNER_NAMES[owner[pg]]}, "
                f"pg_anon {int(pg_anon[pg])}")
    for an in np.nonzero(~live & (an_page >= 0) & ~released)[0]:
        ctx.bad("anons", f"unreferenced anon {int(an)} keeps page {_pa(int(an_page[an]))}")
    ap = np.nonzero(owner == OWN_ANON)[0]
    back = pg_anon[ap]
    badp = (back < 0) | (back >= nanon)
    okb = np.where(badp, 0, back)
    badp |= an_page[okb] != ap
    for pg in ap[badp]:
        ctx.bad("anons", f"anon page {_pa(int(pg))}: pg_anon {int(pg_anon[pg])} does not name it")
    # swap slots
    holders = np.nonzero((live | released) & (an_sw > 0))[0]
    sl = an_sw[holders].astype(np.int64) - 1
    dup = [int(s) for s, n in Counter(sl.tolist()).items() if n > 1]
    for s in dup:
        ctx.bad("swap", f"swap slot {s} held by more than one anon")
    swpages = int(ux[U.SWPAGES])
    if swpages:
        marked = a["swap_used"][:swpages] != 0
        held = np.zeros(swpages, bool)
        inr = (sl >= 0) & (sl < swpages)
        held[sl[inr]] = True
        for s in np.nonzero(marked & ~held)[0]:
            ctx.bad("swap", f"swap slot {int(s)} marked used but no anon holds it (leaked)")
        for s in np.nonzero(held & ~marked)[0]:
            ctx.bad("swap", f"swap slot {int(s)} held by an anon but marked free")
    elif len(holders):
        ctx.bad("swap", f"{len(holders)} anons hold swap slots but there is no swap")
    if len(holders) != int(ux[U.SWPGINUSE]):
        ctx.bad("swap", f"swpginuse {int(ux[U.SWPGINUSE])}, anons with a swap slot "
                f"{len(holders)}")
    only = int(np.count_nonzero(live & (an_sw > 0) & (an_page < 0)))
    if only != int(ux[U.SWPGONLY]):
        ctx.bad("swap", f"swpgonly {int(ux[U.SWPGONLY])}, anons only in swap {only}")
    # file pages
    fp, fbase, fsize = a["file_page"], a["file_base"], a["file_size"]
    obj, off = a["pg_obj"], a["pg_off"]
    for f in np.nonzero(fsize > 0)[0]:
        f = int(f)
        for i in range(int(fsize[f])):
            pg = int(fp[int(fbase[f]) + i])
            if pg >= 0 and (owner[pg] != OWN_UOBJ or obj[pg] != f or off[pg] != i):
                ctx.bad("file pages", f"file {f} page {i}: {_pa(pg)} owned by "
                        f"{OWNER_NAMES[owner[pg]]} obj {int(obj[pg])} off {int(off[pg])}")
    for pg in np.nonzero(owner == OWN_UOBJ)[0]:
        f, i = int(obj[pg]), int(off[pg])
        if not (0 <= f < len(fsize) and 0 <= i < int(fsize[f])
                and int(fp[int(fbase[f]) + i]) == int(pg)):
            ctx.bad("file pages", f"file page {_pa(int(pg))} (obj {f} off {i}) not in its "
                    "object")


def _check_quiescent(ctx: _Ctx) -> None:
    seg = ctx.seg
    state = seg.locks["state"]
    for lk in np.nonzero(state)[0]:
        ctx.bad("locks", f"{lock_name(int(lk), ctx.locks)} (lock {int(lk)}) still held "
                f"(state 0x{int(state[lk]):x})")
    mask = ctx.a["tlb_ipi_mask"]
    for c in np.nonzero(mask)[0]:
        ctx.bad("tlb", f"cpu{int(c)} still waits for TLB shootdown acks (mask "
                f"0x{int(mask[c]):x})")


def _pa(pg: int) -> str:
    return f"pa 0x{int(pg) << 12:08x}"


def summary_counts(seg: Any) -> dict[str, int]:
    """Pages by owner (for tests asserting that every page came back)."""
    owner = seg.arrays["pg_owner"]
    n = np.bincount(owner, minlength=len(OWNER_NAMES))
    return {name: int(n[i]) for i, name in enumerate(OWNER_NAMES)}


__all__ = ["check_invariants", "check_after_run", "Report", "SKIPPED_AFTER_PANIC",
           "lock_name", "summary_counts"]
