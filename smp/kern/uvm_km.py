"""Kernel memory (uvm_km.c): kmem_map VA, and the allocators that map without PMAP_CANFAIL.

Kernel virtual memory is a page-granular map (``kva_used``) above the kernel
image, covered by kernel PTPs grown at boot, so ``pmap_enter`` on the kernel
pmap never needs a PTP: its only way to fail is running out of pv entries.

* ``uvm_km_valloc_try`` -- VA only, ``UVM_KMF_TRYLOCK|UVM_KMF_VALLOC`` (the pv
  allocator's request: it never waits for the map lock).
* ``uvm_km_alloc1`` -- kernel_object pages, mapped with
  ``pmap_enter(kernel, va, pa, VM_PROT_ALL, PMAP_WIRED|VM_PROT_READ|VM_PROT_WRITE)``:
  no PMAP_CANFAIL.  No page -> ``uvm_wait("km_alloc1w")`` and retry.
* ``uvm_km_kmemalloc`` -- malloc's backend.  Interrupt-safe objects (kmem_object)
  map with ``pmap_kenter_pa`` (unmanaged, cannot fail); other objects with a
  plain ``pmap_enter`` (PMAP_WIRED, no PMAP_CANFAIL).  No page -> NOWAIT ?
  fail : ``uvm_wait("km_getwait2")``.

Restart semantics: a call that must wait first gives back what it allocated
so far, so running it again after the wakeup is correct (NetBSD keeps the
pages and retries the one page; the memory pressure is the same).
"""

from __future__ import annotations

import numpy as np

from smp.kern import kern_fail, lock, pmap, subr_prf
from smp.kern.param import (
    KERNEL_PMAP,
    KVA_BASE,
    NBPG,
    NKVA,
    OWN_KMEM,
    PG_BUSY,
    PMAP_WIRED,
    VM_PROT_ALL,
    VM_PROT_READ,
    VM_PROT_WRITE,
)
from smp.kern.uvm import counter, shared
from smp.kern.uvm_page import uvm_pagealloc, uvm_pagefree
from smp.machine.layout import ArraySpec

KOBJ_KERNEL, KOBJ_KMEM = 0, 1
_ci = None
W_KM_ALLOC1 = subr_prf.String("km_alloc1w")
W_KM_GETWAIT2 = subr_prf.String("km_getwait2")

# lock ids (declare): the kernel objects' locks and the kernel submaps' locks
kmem_object_lock = kernel_object_lock = kmem_map_lock = pager_map_lock = -1


def declare(kernel, locks) -> list[ArraySpec]:
    """kmem_map's VA (a page-granular allocation map) and the kernel objects' and maps' locks."""
    global kmem_object_lock, kernel_object_lock, kmem_map_lock, pager_map_lock
    kmem_object_lock = locks.declare("kmem_object")
    kernel_object_lock = locks.declare("kernel_object")
    kmem_map_lock = locks.declare("kmem_map")
    pager_map_lock = locks.declare("pager_map")
    i4 = np.dtype("<i4")
    return [ArraySpec("kva_used", i4, (NKVA,)), ArraySpec("kva_glob", i4, (4,))]


def attach(ci, kernel) -> None:
    global _ci
    _ci = ci


def kva(i: int) -> int:
    return KVA_BASE + i * NBPG


def emergva() -> int:
    """The pager's emergency window: one page of kernel VA past kmem_map ("emergva")."""
    return kva(NKVA)


def _vindex(va: int) -> int:
    return (va - KVA_BASE) // NBPG


def _valloc_locked(npages: int) -> int:
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(kmem_map_lock)
    used = shared.kva_used
    n = len(used)
    start = shared.kva_glob[0] % n
    run = 0
    i = start
    for _ in range(n + npages):
        if i + npages > n:
            i, run = 0, 0
            continue
        if used[i]:
            run = 0
        else:
            run += 1
            if run == npages:
                first = i - npages + 1
                for j in range(first, i + 1):
                    used[j] = 1
                shared.kva_glob[0] = i + 1
                return kva(first)
        i += 1
    return -1


def uvm_km_valloc_try(npages: int) -> int:
    """Kernel VA without waiting for the kmem_map lock; -1 if busy or full."""
    if kern_fail.trylock_fails("uvm_km_valloc_try") or not lock.simple_lock_try(kmem_map_lock):
        return -1
    va = _valloc_locked(npages)
    lock.simple_unlock(kmem_map_lock)
    return va


def uvm_km_valloc(npages: int) -> int:
    lock.simple_lock(kmem_map_lock)
    va = _valloc_locked(npages)
    lock.simple_unlock(kmem_map_lock)
    return va


def uvm_km_vfree(va: int, npages: int) -> None:
    lock.simple_lock(kmem_map_lock)
    i = _vindex(va)
    for j in range(i, i + npages):
        shared.kva_used[j] = 0
    lock.simple_unlock(kmem_map_lock)


def uvm_km_alloc1(npages: int) -> int:
    """Wired, managed kernel memory from kernel_object; returns its VA (may sleep, may panic)."""
    va = uvm_km_valloc(npages)
    if va < 0:
        return -1
    _cnt(counter.km_allocs)
    for i in range(npages):
        lock.simple_lock(kernel_object_lock)
        pg = uvm_pagealloc(OWN_KMEM, KOBJ_KERNEL, _vindex(va) + i, -1, 0)
        lock.simple_unlock(kernel_object_lock)
        if pg < 0:
            _unwind(va, i, npages)
            _cnt(counter.km_waits)
            _uvm_wait(W_KM_ALLOC1)
        shared.pg_flags[pg] &= ~PG_BUSY
        shared.pg_wire[pg] = 1
        # no PMAP_CANFAIL: the 2001 kernel assumed this could not fail
        pmap.pmap_enter(KERNEL_PMAP, va + i * NBPG, pg, VM_PROT_ALL,
                        PMAP_WIRED | VM_PROT_READ | VM_PROT_WRITE)
    return va


def uvm_km_kmemalloc(npages: int, intrsafe: bool, nowait: bool = False) -> int:
    """malloc's backend; interrupt-safe objects use pmap_kenter_pa (no pv entries)."""
    va = uvm_km_valloc(npages)
    if va < 0:
        return -1
    _cnt(counter.km_allocs)
    obj_lock = kmem_object_lock if intrsafe else kernel_object_lock
    for i in range(npages):
        lock.simple_lock(obj_lock)
        pg = uvm_pagealloc(OWN_KMEM, KOBJ_KMEM if intrsafe else KOBJ_KERNEL,
                           _vindex(va) + i, -1, 0)
        lock.simple_unlock(obj_lock)
        if pg < 0:
            _unwind(va, i, npages)
            if nowait:
                return -1
            _cnt(counter.km_waits)
            _uvm_wait(W_KM_GETWAIT2)
        shared.pg_flags[pg] &= ~PG_BUSY
        shared.pg_wire[pg] = 1
        if intrsafe:
            pmap.pmap_kenter_pa(va + i * NBPG, pg, VM_PROT_READ | VM_PROT_WRITE)
        else:
            pmap.pmap_enter(KERNEL_PMAP, va + i * NBPG, pg, VM_PROT_READ | VM_PROT_WRITE,
                            PMAP_WIRED | VM_PROT_READ | VM_PROT_WRITE)
    return va


def uvm_km_free(va: int, npages: int) -> None:
    """Unmap and free kernel memory from either allocator."""
    _unwind(va, npages, npages)


def _uvm_wait(wmesg: int) -> None:
    """uvm_wait: sleep until the pagedaemon frees memory (never returns: restart)."""
    # uvm_pdaemon's pager maps its pages into pager_map with this module's VA allocator,
    # so uvm_pdaemon imports uvm_km; this call back up into it waits for the call.
    from smp.kern import uvm_pdaemon
    uvm_pdaemon.uvm_wait(wmesg)


def _unwind(va: int, npages: int, nva: int) -> None:
    """Unmap and free the first ``npages`` pages at ``va``, then ``nva`` pages of Vshared."""
    pages = []
    for i in range(npages):
        pg = pmap.pmap_extract(KERNEL_PMAP, va + i * NBPG)
        if pg >= 0:
            pages.append(pg)
    pmap.pmap_remove(KERNEL_PMAP, va, va + npages * NBPG)
    for pg in pages:
        obj_lock = kmem_object_lock if shared.pg_obj[pg] == KOBJ_KMEM else kernel_object_lock
        lock.simple_lock(obj_lock)
        uvm_pagefree(pg)
        lock.simple_unlock(obj_lock)
    if nva:
        uvm_km_vfree(va, nva)


def _cnt(idx: int) -> None:
    shared.cnt[_ci.cnt_base + idx] += 1
