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

from smp.kern import kern_fail, lock, subr_prf
from smp.kern import uvm as U
from smp.kern.param import NBPG, PMAP_WIRED, VM_PROT_ALL, VM_PROT_READ, VM_PROT_WRITE
from smp.kern.uvm import A, C, L
from smp.kern.uvm_page import OWN_KMEM, PG_BUSY, uvm_pagealloc, uvm_pagefree

KOBJ_KERNEL, KOBJ_KMEM = 0, 1
_ci = None
W_KM_ALLOC1 = subr_prf.intern("km_alloc1w")
W_KM_GETWAIT2 = subr_prf.intern("km_getwait2")


def attach(ci) -> None:
    global _ci
    _ci = ci


def kva(i: int) -> int:
    from smp.kern.pmap import KVA_BASE
    return KVA_BASE + i * NBPG


def emergva() -> int:
    """The pager's emergency window: one page of kernel VA past kmem_map ("emergva")."""
    from smp.kern.uvm import S
    return kva(S.nkva)


def _vindex(va: int) -> int:
    from smp.kern.pmap import KVA_BASE
    return (va - KVA_BASE) // NBPG


def _valloc_locked(npages: int) -> int:
    used = A.kva_used
    n = len(used)
    start = A.kva_glob[0] % n
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
                A.kva_glob[0] = i + 1
                return kva(first)
        i += 1
    return -1


def uvm_km_valloc_try(npages: int) -> int:
    """Kernel VA without waiting for the kmem_map lock; -1 if busy or full."""
    if kern_fail.trylock_fails("uvm_km_valloc_try") or not lock.simple_lock_try(L.kmem_map):
        return -1
    va = _valloc_locked(npages)
    lock.simple_unlock(L.kmem_map)
    return va


def uvm_km_valloc(npages: int) -> int:
    lock.simple_lock(L.kmem_map)
    va = _valloc_locked(npages)
    lock.simple_unlock(L.kmem_map)
    return va


def uvm_km_vfree(va: int, npages: int) -> None:
    lock.simple_lock(L.kmem_map)
    i = _vindex(va)
    for j in range(i, i + npages):
        A.kva_used[j] = 0
    lock.simple_unlock(L.kmem_map)


def uvm_km_alloc1(npages: int) -> int:
    """Wired, managed kernel memory from kernel_object; returns its VA (may sleep, may panic)."""
    from smp.kern import pmap, uvm_pdaemon

    va = uvm_km_valloc(npages)
    if va < 0:
        return -1
    _cnt(C.km_allocs)
    for i in range(npages):
        lock.simple_lock(L.kernel_object)
        pg = uvm_pagealloc(OWN_KMEM, KOBJ_KERNEL, _vindex(va) + i, -1, 0)
        lock.simple_unlock(L.kernel_object)
        if pg < 0:
            _unwind(va, i, npages)
            _cnt(C.km_waits)
            uvm_pdaemon.uvm_wait(W_KM_ALLOC1)
        A.pg_flags[pg] &= ~PG_BUSY
        A.pg_wire[pg] = 1
        # no PMAP_CANFAIL: the 2001 kernel assumed this could not fail
        pmap.pmap_enter(pmap.KERNEL_PMAP, va + i * NBPG, pg, VM_PROT_ALL,
                        PMAP_WIRED | VM_PROT_READ | VM_PROT_WRITE)
    return va


def uvm_km_kmemalloc(npages: int, intrsafe: bool, nowait: bool = False) -> int:
    """malloc's backend; interrupt-safe objects use pmap_kenter_pa (no pv entries)."""
    from smp.kern import pmap, uvm_pdaemon

    va = uvm_km_valloc(npages)
    if va < 0:
        return -1
    _cnt(C.km_allocs)
    obj_lock = L.kmem_object if intrsafe else L.kernel_object
    for i in range(npages):
        lock.simple_lock(obj_lock)
        pg = uvm_pagealloc(OWN_KMEM, KOBJ_KMEM if intrsafe else KOBJ_KERNEL,
                           _vindex(va) + i, -1, 0)
        lock.simple_unlock(obj_lock)
        if pg < 0:
            _unwind(va, i, npages)
            if nowait:
                return -1
            _cnt(C.km_waits)
            uvm_pdaemon.uvm_wait(W_KM_GETWAIT2)
        A.pg_flags[pg] &= ~PG_BUSY
        A.pg_wire[pg] = 1
        if intrsafe:
            pmap.pmap_kenter_pa(va + i * NBPG, pg, VM_PROT_READ | VM_PROT_WRITE)
        else:
            pmap.pmap_enter(pmap.KERNEL_PMAP, va + i * NBPG, pg, VM_PROT_READ | VM_PROT_WRITE,
                            PMAP_WIRED | VM_PROT_READ | VM_PROT_WRITE)
    return va


def uvm_km_free(va: int, npages: int) -> None:
    """Unmap and free kernel memory from either allocator."""
    _unwind(va, npages, npages)


def _unwind(va: int, npages: int, nva: int) -> None:
    """Unmap and free the first ``npages`` pages at ``va``, then ``nva`` pages of VA."""
    from smp.kern import pmap

    pages = []
    for i in range(npages):
        pg = pmap.pmap_extract(pmap.KERNEL_PMAP, va + i * NBPG)
        if pg >= 0:
            pages.append(pg)
    pmap.pmap_remove(pmap.KERNEL_PMAP, va, va + npages * NBPG)
    for pg in pages:
        obj_lock = L.kmem_object if A.pg_obj[pg] == KOBJ_KMEM else L.kernel_object
        lock.simple_lock(obj_lock)
        uvm_pagefree(pg)
        lock.simple_unlock(obj_lock)
    if nva:
        uvm_km_vfree(va, nva)


def _cnt(idx: int) -> None:
    A.cnt[_ci.cnt_base + idx] += 1


del U
