"""Process address spaces (uvm_map.c, uvm_mmap.c, uvm_amap.c, parts of kern_fork/kern_exit).

A process's vmspace is its pmap, up to ``MAXENTRIES`` map entries and its
amap slots.  An entry is ``[start, end)`` with a protection, flags
(wired, private/copy-on-write, file-backed) and, for anonymous memory, a run
of amap slots in the process's amap window (one anon id per page, -1 empty).
File-backed entries name a file object and a page offset.

Simplifications, each documented where it is made:
* the map lock is a spin lock per process (``vm_map[i]``) taken shared or
  exclusive alike; the amap lock is one per process (``amap[i]``);
* fork copies the parent's amap slots into the child at once and takes a
  reference on every anon, write-protecting the parent's mappings, instead of
  marking entries needs_copy and copying on the first fault (amap_copy) --
  the faults that follow (case 1B, COW) are the same;
* amap slots are a fixed window per process (``amap_per_proc`` pages of
  anonymous memory at most), handed out like a stack: munmap of the newest
  region gives its slots back (the mmap/munmap loops of load scripts), an
  older one's slots stay used until exit -- no general amap allocator;
* a page the parent has wired is not shared with the child at fork: NetBSD
  copies wired pages at once (amap_cow_now) so the parent's wired mapping never
  turns copy-on-write; page contents are not modelled, so the child simply gets
  its own page at its first touch;
* mlock of single pages (``mlock(addr, 4096)`` page by page) does not clip the map
  entry into one-page wired entries as uvm_map_pageable does: the map keeps a list of
  the pages it wired that way (``vm_wired``, up to ``MAXWIRED`` a process), which is
  what 1.5 reads from the clipped entries' ``wired_count``.  A whole region wired is
  its entry's ``EF_WIRED``.

What the map wires (an ``EF_WIRED`` entry, a listed page) stays wired when the mappings
go: a swapout's pmap_collect (uvm_glue) removes wired mappings too, as pmap.c 1.91 does,
and a later fault in such a page enters it wired again.  Unwiring asks the pmap for the
page, as 1.5's ``uvm_fault_unwire_locked`` does, and panics "unwiring non-wired memory"
when the mapping is gone -- munlock or exit of a process that was swapped out and has not
touched its wired pages since.
"""

from __future__ import annotations

import array

import numpy as np

from smp.kern import lock, pmap, subr_prf, uvm_anon, uvm_page
from smp.kern import uvm as U
from smp.kern.param import (
    EAGAIN,
    EFAULT,
    ENOMEM,
    KERNEL_PMAP,
    NBPG,
    PGSHIFT,
    VM_MAXUSER_ADDRESS,
    VM_PROT_READ,
)
from smp.kern.uvm import shared
from smp.kern.uvm_anon import uvm_anfree
from smp.kern.uvm_page import uvm_pageunwire
from smp.machine.layout import ArraySpec

E_START, E_END, E_PROT, E_FLAGS, E_AMAP, E_UOBJ, E_UOFF, E_ADVICE = range(8)
NF = 8
EF_WIRED, EF_COPY, EF_FILE, EF_SHARED = 0x1, 0x2, 0x4, 0x8
USER_BASE = 0x0800_0000          # where mmap starts looking for space
MAXENTRIES = 16                  # vm_map entries per process
MAXWIRED = 1024                  # pages a process may wire one by one (see the docstring)

ADVICE = {"normal": 0, "random": 1, "sequential": 2}
MADV_SEQUENTIAL = ADVICE["sequential"]
UVMADVICE = [(3, 4), (0, 0), (8, 7)]     # nback, nforw (uvm_fault.c uvmadvice[])

# lock ids (declare): amap_lock + tid is process tid's amap lock, vm_map_lock + tid its
# map's lock
amap_lock = vm_map_lock = -1
amap_per_proc = 16                 # amap slots (pages of anonymous memory) per process


def declare(kernel, locks) -> list[ArraySpec]:
    """Every process's vmspace: map entries, amap window, pmap; the amap and map locks."""
    global amap_lock, vm_map_lock, amap_per_proc
    nthreads = kernel.nthreads
    amap_per_proc = max(16, kernel.amap_per_proc)
    amap_lock = locks.declare("amap", count=nthreads, label="amap[{i}]")
    vm_map_lock = locks.declare("vm_map", count=nthreads, label="vm_map[{i}]")
    i4 = np.dtype("<i4")
    return [ArraySpec("amap_slot", i4, (amap_per_proc * nthreads,)),
            ArraySpec("vm_entry", np.dtype("<i8"), (nthreads * MAXENTRIES * NF,)),
            ArraySpec("vm_nentries", i4, (nthreads,)),
            ArraySpec("vm_pmap", i4, (nthreads,)),
            ArraySpec("vm_aused", i4, (nthreads,)),
            ArraySpec("vm_wired", i4, (nthreads * MAXWIRED,)),   # page numbers (va >> 12)
            ArraySpec("vm_nwired", i4, (nthreads,))]


def format(seg, kernel) -> None:
    seg.arrays["vm_pmap"][:] = -1


def entry_index(tid: int, i: int) -> int:
    """Where map entry ``i`` of thread ``tid`` starts in ``vm_entry`` (NF words)."""
    return (tid * MAXENTRIES + i) * NF


def vmspace_init_boot(seg, tid: int, pm: int) -> None:
    """vmspace_init at boot, in the parent (the segment's numpy arrays)."""
    a = seg.arrays
    a["vm_pmap"][tid] = pm
    a["vm_nentries"][tid] = 0
    a["vm_aused"][tid] = 0
    a["vm_nwired"][tid] = 0


def vmspace_init(tid: int, pm: int) -> None:
    shared.vm_pmap[tid] = pm
    shared.vm_nentries[tid] = 0
    shared.vm_aused[tid] = 0
    shared.vm_nwired[tid] = 0


# --- pages wired one by one (the clipped wired entries of 1.5) ------------------------

def wired_index(tid: int, va: int) -> int:
    """Where page ``va`` is in ``tid``'s list of pages wired one by one, or -1."""
    n = shared.vm_nwired[tid]
    if not n:
        return -1
    b = tid * MAXWIRED
    vpn = va >> PGSHIFT
    w = shared.vm_wired
    for i in range(b, b + n):
        if w[i] == vpn:
            return i - b
    return -1


def _wired_del(tid: int, i: int) -> None:
    b = tid * MAXWIRED
    n = shared.vm_nwired[tid] - 1
    shared.vm_wired[b + i] = shared.vm_wired[b + n]
    shared.vm_nwired[tid] = n


def map_wires(tid: int, va: int, flags: int) -> bool:
    """Does the map wire page ``va`` (its entry, of ``flags``, is wired, or the page was
    wired on its own)?  A fault there enters the page wired."""
    return bool(flags & EF_WIRED) or wired_index(tid, va) >= 0


def mlock_check(npages: int) -> int:
    """sys_mlock's up-front test (1.5): EAGAIN when ``npages`` more wired pages would pass
    ``uvmexp.wiredmax``, else 0.  (uvm_vslock, physio's wiring, makes no such test.)"""
    ux = shared.uvmexp
    return EAGAIN if npages + ux[U.WIRED] > ux[U.WIREDMAX] else 0


def mlock_page_done(tid: int, va: int) -> int:
    """Record page ``va``, just wired by a wiring fault, as wired by the map; ENOMEM when
    the list is full (the model's limit, MAXWIRED), else 0."""
    lock.simple_lock(vm_map_lock + tid)
    try:
        if wired_index(tid, va) >= 0:
            return 0
        n = shared.vm_nwired[tid]
        if n >= MAXWIRED:
            return ENOMEM
        shared.vm_wired[tid * MAXWIRED + n] = va >> PGSHIFT
        shared.vm_nwired[tid] = n + 1
        return 0
    finally:
        lock.simple_unlock(vm_map_lock + tid)


def _unwire_locked(pm: int, vas: list[int], clear_pg_w: bool) -> None:
    """uvm_fault_unwire_locked over ``vas``: each page must still be mapped -- else the
    panic -- and is unwired (=> the map's wiring of them is being dropped)."""
    pages = []
    for v in vas:
        pg = pmap.pmap_extract(pm, v)
        if pg < 0:
            # uvm_glue declares the message (numbered last) and imports this module
            from smp.kern import uvm_glue
            subr_prf.panic(uvm_glue.P_UNWIRE_NONWIRED)
        if clear_pg_w and pmap.pmap_is_wired(pm, v):
            pmap.pmap_unwire(pm, v)
        pages.append(pg)
    _unwire(pages)


def uvm_map_lookup(tid: int, va: int) -> int:
    """Index of the entry holding ``va``, or -1 (=> map locked)."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(vm_map_lock + tid)
    ent = shared.vm_entry
    b = tid * MAXENTRIES * NF
    for i in range(shared.vm_nentries[tid]):
        if ent[b + E_START] <= va < ent[b + E_END]:
            return i
        b += NF
    return -1


def entry(tid: int, i: int) -> tuple[int, ...]:
    b = entry_index(tid, i)
    return tuple(shared.vm_entry[b:b + NF])


def uvm_mmap(tid: int, npages: int, prot: int, flags: int, uobj: int = -1, uoff: int = 0,
             advice: int = 0, align: int = NBPG) -> int:
    """Map ``npages`` of anonymous (or file) memory; returns the VA, or -errno."""
    lock.simple_lock(vm_map_lock + tid)
    try:
        n = shared.vm_nentries[tid]
        if n >= MAXENTRIES:
            return -ENOMEM
        end = USER_BASE
        for i in range(n):
            end = max(end, shared.vm_entry[entry_index(tid, i) + E_END])
        va = -(-end // align) * align
        if va + npages * NBPG > VM_MAXUSER_ADDRESS:
            return -ENOMEM                 # no room below the recursive page-table map
        base = -1
        if not flags & EF_FILE or flags & EF_COPY:
            if shared.vm_aused[tid] + npages > amap_per_proc:
                return -ENOMEM
            base = tid * amap_per_proc + shared.vm_aused[tid]
            shared.vm_aused[tid] += npages
            shared.amap_slot[base:base + npages] = _neg(npages)
        b = entry_index(tid, n)
        _put(b, va, va + npages * NBPG, prot, flags, base, uobj, uoff, advice)
        shared.vm_nentries[tid] = n + 1
        return va
    finally:
        lock.simple_unlock(vm_map_lock + tid)


def _put(b: int, *v: int) -> None:
    ent = shared.vm_entry
    for j, x in enumerate(v):
        ent[b + j] = x


def _neg(n: int):
    return array.array("i", [-1]) * n


def uvm_unmap(tid: int, va: int) -> int:
    """Remove the entry starting at ``va``: mappings, anon references, the entry."""
    lock.simple_lock(vm_map_lock + tid)
    i = uvm_map_lookup(tid, va)
    if i < 0:
        lock.simple_unlock(vm_map_lock + tid)
        return EFAULT
    start, end, _prot, flags, base, _uobj, _uoff, _adv = entry(tid, i)
    pm = shared.vm_pmap[tid]
    owed = _owed_wirings(tid, start, end, flags)   # uvm_map_entry_unwire's pages
    wired = [pmap.pmap_extract(pm, v) for v in pmap.pmap_wired_vas(pm, start, end)
             if v not in owed]                     # vslock'd (physio cut short by a kill)
    _unwire_locked(pm, sorted(owed), clear_pg_w=False)
    pmap.pmap_remove(pm, start, end)
    _unwire([pg for pg in wired if pg >= 0])
    drop = []
    if base >= 0:
        lock.simple_lock(amap_lock + tid)
        npg = (end - start) // NBPG
        for k in np.nonzero(shared.np["amap_slot"][base:base + npg] >= 0)[0].tolist():
            s = base + k
            an = shared.amap_slot[s]
            if an >= 0:
                shared.amap_slot[s] = -1
                lock.simple_lock(uvm_anon.an_lock + an)
                shared.an_ref[an] -= 1
                if shared.an_ref[an] == 0:
                    drop.append(an)
                lock.simple_unlock(uvm_anon.an_lock + an)
        lock.simple_unlock(amap_lock + tid)
    if base >= 0:
        npg = (end - start) // NBPG
        if base + npg == tid * amap_per_proc + shared.vm_aused[tid]:
            shared.vm_aused[tid] -= npg      # the newest window: give its slots back
    n = shared.vm_nentries[tid]
    last = entry_index(tid, n - 1)
    if i != n - 1:
        _put(entry_index(tid, i), *shared.vm_entry[last:last + NF])
    shared.vm_nentries[tid] = n - 1
    lock.simple_unlock(vm_map_lock + tid)
    for an in drop:
        uvm_anfree(an)
    return 0


def _owed_wirings(tid: int, start: int, end: int, flags: int) -> set[int]:
    """The pages of [start, end) the map wired -- every page of a wired entry, the pages
    wired one by one -- taken off the one-by-one list (=> map locked)."""
    owed = set(range(start, end, NBPG)) if flags & EF_WIRED else set()
    b = tid * MAXWIRED
    i = 0
    while i < shared.vm_nwired[tid]:
        v = shared.vm_wired[b + i] << PGSHIFT
        if start <= v < end:
            owed.add(v)
            _wired_del(tid, i)
        else:
            i += 1
    return owed


def _unwire(pages: list[int]) -> None:
    if not pages:
        return
    lock.simple_lock(uvm_page.pageq_lock)
    for pg in pages:
        if shared.pg_wire[pg]:
            uvm_pageunwire(pg)
    lock.simple_unlock(uvm_page.pageq_lock)


def unwire_pages(tid: int, vas: list[int]) -> None:
    """munlock of single pages: each page the map wired on its own is unwired (PG_W
    cleared, the page unwired); a page it did not wire is left alone (1.5: EINVAL)."""
    pm = shared.vm_pmap[tid]
    mine = []
    lock.simple_lock(vm_map_lock + tid)
    for v in vas:
        i = wired_index(tid, v)
        if i >= 0:
            _wired_del(tid, i)
            mine.append(v)
    lock.simple_unlock(vm_map_lock + tid)
    _unwire_locked(pm, mine, clear_pg_w=True)


def uvm_vsunlock(tid: int, vas: list[int]) -> None:
    """uvm_vsunlock (physio): unwire the pages uvm_vslock wired.  A page the map wires
    (mlock) the vslock did not wire again (its fault found it wired), so it stays as it
    is; every other page must still be mapped, as uvm_fault_unwire_locked asks."""
    lock.simple_lock(vm_map_lock + tid)
    flags = [_entry_flags(tid, v) for v in vas]
    vas = [v for v, f in zip(vas, flags, strict=True) if not map_wires(tid, v, f)]
    lock.simple_unlock(vm_map_lock + tid)
    _unwire_locked(shared.vm_pmap[tid], vas, clear_pg_w=True)


def _entry_flags(tid: int, va: int) -> int:
    """The flags of the entry holding ``va``, 0 if none (=> map locked)."""
    i = uvm_map_lookup(tid, va)
    return shared.vm_entry[entry_index(tid, i) + E_FLAGS] if i >= 0 else 0


def entry_protection(tid: int, va: int) -> int:
    """The protection of the entry holding ``va`` (0: none), the access type
    uvm_map_pageable hands uvm_fault_wire in 1.5 (``entry->protection``)."""
    lock.simple_lock(vm_map_lock + tid)
    i = uvm_map_lookup(tid, va)
    prot = shared.vm_entry[entry_index(tid, i) + E_PROT] if i >= 0 else 0
    lock.simple_unlock(vm_map_lock + tid)
    return prot


def is_wired(tid: int, va: int) -> bool:
    """Is the entry at ``va`` wired (a whole-region mlock done)?"""
    lock.simple_lock(vm_map_lock + tid)
    flags = _entry_flags(tid, va)
    lock.simple_unlock(vm_map_lock + tid)
    return bool(flags & EF_WIRED)


def set_wired(tid: int, va: int, wired: bool, unwind: bool = False) -> int:
    """Mark the entry at ``va`` wired or not (mlock/munlock of a whole region).

    Wiring marks the entry once the caller has faulted every page in with wiring faults
    (uvm_map_pageable's uvm_fault_wire).  Unwiring unwires every page of the entry,
    each of which must still be mapped (uvm_fault_unwire_locked); ``unwind``: a
    wiring that failed part way gives back only the pages it wired (the wired
    mappings), as uvm_fault_wire unwires its prefix.
    """
    lock.simple_lock(vm_map_lock + tid)
    i = uvm_map_lookup(tid, va)
    if i < 0:
        lock.simple_unlock(vm_map_lock + tid)
        return EFAULT
    b = entry_index(tid, i)
    flags = shared.vm_entry[b + E_FLAGS]
    start, end = shared.vm_entry[b + E_START], shared.vm_entry[b + E_END]
    if wired:
        shared.vm_entry[b + E_FLAGS] = flags | EF_WIRED
        lock.simple_unlock(vm_map_lock + tid)
        return 0
    shared.vm_entry[b + E_FLAGS] = flags & ~EF_WIRED
    lock.simple_unlock(vm_map_lock + tid)
    pm = shared.vm_pmap[tid]
    if unwind:
        _unwire_locked(pm, pmap.pmap_wired_vas(pm, start, end), clear_pg_w=True)
    elif flags & EF_WIRED:
        _unwire_locked(pm, list(range(start, end, NBPG)), clear_pg_w=True)
    return 0


def uvmspace_fork(parent: int, child: int, child_pm: int) -> None:
    """Copy the parent's map into the child (COW for private anonymous memory)."""
    vmspace_init(child, child_pm)
    lock.simple_lock(vm_map_lock + parent)
    lock.simple_lock(amap_lock + parent)
    ppm = shared.vm_pmap[parent]
    for i in range(shared.vm_nentries[parent]):
        start, end, prot, flags, base, uobj, uoff, adv = entry(parent, i)
        npg = (end - start) // NBPG
        cbase = -1
        if base >= 0:
            cbase = child * amap_per_proc + shared.vm_aused[child]
            shared.vm_aused[child] += npg
            slots = shared.np["amap_slot"]
            slots[cbase:cbase + npg] = -1
            for k in np.nonzero(slots[base:base + npg] >= 0)[0].tolist():
                an = shared.amap_slot[base + k]
                v = start + k * NBPG
                if flags & EF_WIRED or pmap.pmap_is_wired(ppm, v) or \
                        wired_index(parent, v) >= 0:
                    continue     # a wired page is the parent's alone (see the docstring)
                shared.amap_slot[cbase + k] = an
                lock.simple_lock(uvm_anon.an_lock + an)
                shared.an_ref[an] += 1
                lock.simple_unlock(uvm_anon.an_lock + an)
            if flags & EF_COPY:
                pmap.pmap_protect(ppm, start, end, prot & ~2 | VM_PROT_READ, skip_wired=True)
        b = entry_index(child, i)
        _put(b, start, end, prot, flags & ~EF_WIRED, cbase, uobj, uoff, adv)
    shared.vm_nentries[child] = shared.vm_nentries[parent]
    lock.simple_unlock(amap_lock + parent)
    lock.simple_unlock(vm_map_lock + parent)


def uvmspace_free(tid: int) -> None:
    """Tear down a process's address space (exit)."""
    while shared.vm_nentries[tid]:
        uvm_unmap(tid, shared.vm_entry[entry_index(tid, 0) + E_START])
    pm = shared.vm_pmap[tid]
    if pm > 0:
        pmap.pmap_activate(KERNEL_PMAP)
        pmap.pmap_destroy(pm)
    shared.vm_pmap[tid] = -1
