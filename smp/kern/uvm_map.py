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
  its own page at its first touch.
"""

from __future__ import annotations

import array

import numpy as np

from smp.kern import lock, pmap, uvm_anon, uvm_page
from smp.kern.param import EFAULT, ENOMEM, KERNEL_PMAP, NBPG, VM_MAXUSER_ADDRESS, VM_PROT_READ
from smp.kern.uvm import shared
from smp.kern.uvm_anon import uvm_anfree
from smp.kern.uvm_page import uvm_pageunwire
from smp.machine.layout import ArraySpec

E_START, E_END, E_PROT, E_FLAGS, E_AMAP, E_UOBJ, E_UOFF, E_ADVICE = range(8)
NF = 8
EF_WIRED, EF_COPY, EF_FILE, EF_SHARED = 0x1, 0x2, 0x4, 0x8
USER_BASE = 0x0800_0000          # where mmap starts looking for space
MAXENTRIES = 16                  # vm_map entries per process

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
            ArraySpec("vm_aused", i4, (nthreads,))]


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


def vmspace_init(tid: int, pm: int) -> None:
    shared.vm_pmap[tid] = pm
    shared.vm_nentries[tid] = 0
    shared.vm_aused[tid] = 0


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
    wired = _wired_pages(pm, start, end)         # what *this* process wired (PG_W)
    pmap.pmap_remove(pm, start, end)
    _unwire(wired)
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


def _wired_pages(pm: int, start: int, end: int) -> list[int]:
    """Pages this pmap maps wired in [start, end) -- a shared (COW) anon page another
    process wired is not ours to unwire."""
    pages = [pmap.pmap_extract(pm, v) for v in pmap.pmap_wired_vas(pm, start, end)]
    return [pg for pg in pages if pg >= 0]


def _unwire(pages: list[int]) -> None:
    if not pages:
        return
    lock.simple_lock(uvm_page.pageq_lock)
    for pg in pages:
        if shared.pg_wire[pg]:
            uvm_pageunwire(pg)
    lock.simple_unlock(uvm_page.pageq_lock)


def unwire_pages(tid: int, vas: list[int]) -> None:
    """munlock of single pages: clear PG_W and unwire each page that is wired."""
    pm = shared.vm_pmap[tid]
    for v in vas:
        pg = pmap.pmap_extract(pm, v)
        if pg < 0 or not pmap.pmap_is_wired(pm, v):
            continue                      # never wired (mlock stopped at wiredmax)
        pmap.pmap_unwire(pm, v)
        lock.simple_lock(uvm_page.pageq_lock)
        if shared.pg_wire[pg]:
            uvm_pageunwire(pg)
        lock.simple_unlock(uvm_page.pageq_lock)


def entry_protection(tid: int, va: int) -> int:
    """The protection of the entry holding ``va`` (0: none), the access type
    uvm_map_pageable hands uvm_fault_wire in 1.5 (``entry->protection``)."""
    lock.simple_lock(vm_map_lock + tid)
    i = uvm_map_lookup(tid, va)
    prot = shared.vm_entry[entry_index(tid, i) + E_PROT] if i >= 0 else 0
    lock.simple_unlock(vm_map_lock + tid)
    return prot


def set_wired(tid: int, va: int, wired: bool) -> int:
    """Mark the entry at ``va`` wired or not (mlock/munlock; faulting is the caller's)."""
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
    if flags & EF_WIRED:
        pm = shared.vm_pmap[tid]
        pages = _wired_pages(pm, start, end)
        for v in pmap.pmap_wired_vas(pm, start, end):
            pmap.pmap_unwire(pm, v)
        _unwire(pages)
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
                if pmap.pmap_is_wired(ppm, start + k * NBPG):
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
