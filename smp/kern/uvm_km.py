"""Kernel memory (uvm_km.c, the kernel parts of uvm_map.c): kernel_map, its submaps, the allocators.

Kernel virtual memory is kernel_map: [KERNBASE, VM_MAX_KERNEL_ADDRESS), one
page-granular allocation bit per page (``kva_used``).  At boot (``format``)
the kernel image takes its first KIMAGE bytes, then the boot code carves
fixed ranges out of it, each a map of its own with its own lock, as
uvm_km_suballoc does (kmeminit, uvm_pager_init, cpu_startup, ubc_init):

    map        size (NetBSD 1.5 i386)               used by
    kmem_map   physmem/4 in [8, 128] MiB            malloc, pool pages (mbufs),
                                                    pv pages -- interrupt-safe
    pager_map  PAGER_MAP_SIZE 4 MiB, then emergva   pageout/pagein mappings
    exec_map   16 * NCARGS                          exec's argument pages
    phys_map   USRIOSIZE pages                      physio's vmapbuf
    mb_map     NMBCLUSTERS * MCLBYTES               mbuf clusters -- interrupt-safe
    ubc        UBC_NWINS * UBC_WINSIZE              the UBC windows (uvm_bio)

Each of them grows the kernel's PTPs at boot (uvm_map's PMAP_GROWKERNEL
hook, from the ``nkpde`` PTPs locore set up).  The rest of kernel_map is
allocated while the machine runs: page directories (pmap_pinit), u-areas
(fork1), uvm_km_alloc memory.  Every map finds space first-fit from its
lowest free page (``kmap[m, KM_HINT]``), as uvm_map_findspace does from
vm_map_min; kernel_map calls ``pmap_growkernel`` when an allocation ends
above the kernel PTPs grown so far, with the map locked.

The allocators:

* ``uvm_km_valloc(map, n)`` -- VA only (uvm_km_valloc); ``trylock`` is
  UVM_KMF_TRYLOCK (the pv allocator's kmem_map request never waits for the
  lock); ``wait`` is uvm_km_valloc_wait: no space -> sleep "vallocwait"
  until ``uvm_km_free_wakeup`` gives some back.
* ``uvm_km_alloc1(map, n)`` -- kernel_object pages, mapped with
  ``pmap_enter(kernel, va, pa, VM_PROT_ALL, PMAP_WIRED|VM_PROT_READ|VM_PROT_WRITE)``:
  no PMAP_CANFAIL.  No page -> ``uvm_wait("km_alloc1w")`` and retry.
  (uvm_km_alloc and uvm_km_zalloc are this.)
* ``uvm_km_kmemalloc(map, obj, n)`` -- malloc's backend.  Interrupt-safe
  objects (kmem_object, mb_object) map with ``pmap_kenter_pa`` (unmanaged,
  cannot fail); kernel_object with a plain ``pmap_enter`` (PMAP_WIRED, no
  PMAP_CANFAIL).  No page -> NOWAIT ? fail : ``uvm_wait("km_getwait2")``.
* ``uvm_km_free(va, n)`` -- unmap, free the pages, give the VA back
  (uvm_km_free / uvm_km_free_wakeup: waiters for VA are woken).

Locks: kernel_map's lock ranks with the process maps (MAPS): fork holds the
parent's map lock while pmap_pinit allocates from kernel_map, and
pmap_growkernel runs under it.  The submaps' locks are leaves (the pv
allocator try-locks kmem_map under pvalloc_lock; interrupt handlers take
kmem_map and mb_map, which is why those two are spin locks raised to splvm
in NetBSD and why no interrupt is delivered to a CPU holding them).

Restart semantics: a call that must wait first gives back what it allocated
so far, so running it again after the wakeup is correct (NetBSD keeps the
pages and retries the one page; the memory pressure is the same).
"""

from __future__ import annotations

import numpy as np

from smp.kern import kern_fail, kern_synch, lock, pmap, subr_prf
from smp.kern.param import (
    KERNBASE,
    KERNEL_PMAP,
    KIMAGE,
    MAXBSIZE,
    MCLBYTES,
    NBPG,
    NCARGS,
    NKMEMPAGES_MAX,
    NKMEMPAGES_MIN,
    NKVA,
    NMBCLUSTERS,
    OWN_KMEM,
    PAGER_MAP_SIZE,
    PG_BUSY,
    PMAP_WIRED,
    UBC_NWINS,
    UBC_WINSIZE,
    USRIOSIZE,
    VM_PROT_ALL,
    VM_PROT_READ,
    VM_PROT_WRITE,
)
from smp.kern.subr_extent import first_fit
from smp.kern.uvm import counter, shared
from smp.kern.uvm_page import uvm_pagealloc, uvm_pagefree
from smp.machine.layout import ArraySpec

# kernel objects (pg_obj of a kernel page): uvm.kernel_object, uvmexp.kmem_object, mb_object
KOBJ_KERNEL, KOBJ_KMEM, KOBJ_MB = 0, 1, 2
# maps (rows of kmap[]), in the order boot carves them out of kernel_map
KERNEL_MAP, KMEM_MAP, PAGER_MAP, EXEC_MAP, PHYS_MAP, MB_MAP, UBC_MAP = range(7)
NMAPS = 7
MAP_NAMES = ("kernel_map", "kmem_map", "pager_map", "exec_map", "phys_map", "mb_map", "ubc")
INTRSAFE_MAPS = (KMEM_MAP, MB_MAP)
# kmap columns: first page index, end, first-fit hint, pages in use
KM_START, KM_END, KM_HINT, KM_INUSE = range(4)
# kva_glob slots
KV_MAXKADDR, KV_EMERGVA, KV_BOOTEND = range(3)

_ci = None
W_KM_ALLOC1 = subr_prf.String("km_alloc1w")
W_KM_GETWAIT2 = subr_prf.String("km_getwait2")
CHAN_KVA = 0xC0F1_0000             # + map: sleepers waiting for VA in that map

# lock ids (declare): the kernel objects' locks and the kernel maps' locks
kmem_object_lock = kernel_object_lock = kmem_map_lock = pager_map_lock = -1
kernel_map_lock = exec_map_lock = phys_map_lock = mb_map_lock = mb_object_lock = -1
map_lock: list[int] = []           # by map; ubc's is uvm_bio's (-1 here)
obj_lock: list[int] = []           # by kernel object
_start: list[int] = []             # kmap columns, read once per CPU (fixed after boot)
_end: list[int] = []


def declare(kernel, locks) -> list[ArraySpec]:
    """Kernel VA (a bit per page of kernel_map) and the locks of the kernel objects and of
    kmem_map and pager_map (the locks earlier versions had, in their order)."""
    global kmem_object_lock, kernel_object_lock, kmem_map_lock, pager_map_lock
    kmem_object_lock = locks.declare("kmem_object")
    kernel_object_lock = locks.declare("kernel_object")
    kmem_map_lock = locks.declare("kmem_map")
    pager_map_lock = locks.declare("pager_map")
    return [ArraySpec("kva_used", np.dtype("u1"), (NKVA,)),
            ArraySpec("kva_glob", np.dtype("<i8"), (4,))]


def declare_maps(kernel, locks) -> list[ArraySpec]:
    """The maps' table and the locks kernel_map and the other submaps got in issue 10
    (declared at the end of the kernel's tuple, so earlier lock ids do not move)."""
    global kernel_map_lock, exec_map_lock, phys_map_lock, mb_map_lock, mb_object_lock
    kernel_map_lock = locks.declare("kernel_map")
    exec_map_lock = locks.declare("exec_map")
    phys_map_lock = locks.declare("phys_map")
    mb_map_lock = locks.declare("mb_map")
    mb_object_lock = locks.declare("mb_object")
    _bind_locks()
    return [ArraySpec("kmap", np.dtype("<i8"), (NMAPS, 4))]


def _bind_locks() -> None:
    map_lock[:] = [kernel_map_lock, kmem_map_lock, pager_map_lock, exec_map_lock,
                   phys_map_lock, mb_map_lock, -1]
    obj_lock[:] = [kernel_object_lock, kmem_object_lock, mb_object_lock]


def boot_layout(physmem_pages: int) -> list[tuple[int, int]]:
    """(first page, pages) of each map, in kernel_map page indices, as boot carves them."""
    nkmem = min(max(physmem_pages // 4, NKMEMPAGES_MIN), NKMEMPAGES_MAX)
    sizes = {KMEM_MAP: nkmem, PAGER_MAP: PAGER_MAP_SIZE // NBPG,
             EXEC_MAP: 16 * NCARGS // NBPG, PHYS_MAP: USRIOSIZE,
             MB_MAP: NMBCLUSTERS * MCLBYTES // NBPG, UBC_MAP: UBC_NWINS * UBC_WINSIZE // NBPG}
    out = [(0, 0)] * NMAPS
    nxt = KIMAGE // NBPG
    for m in (KMEM_MAP, PAGER_MAP, EXEC_MAP, PHYS_MAP, MB_MAP, UBC_MAP):
        out[m] = (nxt, sizes[m])
        nxt += sizes[m]
        if m == PAGER_MAP:
            nxt += MAXBSIZE // NBPG          # emergva: uvm_km_valloc(kernel_map, MAXBSIZE)
    out[KERNEL_MAP] = (nxt, NKVA - nxt)      # what is left is allocated at run time
    return out


def format_maps(seg, kernel) -> None:
    """Boot (parent): the kernel image, the submaps, emergva; the kernel PTPs to map them."""
    a = seg.arrays
    used = a["kva_used"]
    used[:] = 0
    kmap = a["kmap"]
    layout = boot_layout(kernel.machine.npages)
    for m, (first, n) in enumerate(layout):
        kmap[m] = (first, first + n, first, 0)
    used[:KIMAGE // NBPG] = 1                                       # the kernel image
    ubc0, nubc = layout[UBC_MAP]
    used[ubc0:ubc0 + nubc] = 1                  # one kernel_map entry; uvm_bio has windows
    kmap[UBC_MAP, KM_INUSE] = nubc
    emerg = layout[PAGER_MAP][0] + layout[PAGER_MAP][1]
    used[emerg:emerg + MAXBSIZE // NBPG] = 1
    g = a["kva_glob"]
    g[KV_EMERGVA] = emerg
    first = layout[KERNEL_MAP][0]
    g[KV_BOOTEND] = first
    # uvm_km_suballoc -> uvm_map -> pmap_growkernel: the kernel PTPs cover the boot maps,
    # and pmap_init's pv_initpage, the first page of kernel_map's free space
    g[KV_MAXKADDR] = kva_index(pmap.pmap_growkernel_boot(seg, kva(first + 1)))
    used[first] = 1
    kmap[KERNEL_MAP, KM_HINT] = first + 1
    kmap[KERNEL_MAP, KM_INUSE] = 1
    pmap.pmap_init_boot(seg, kva(first))


def attach(ci, kernel) -> None:
    global _ci
    _ci = ci
    _bind_locks()
    kmap = ci.seg.arrays["kmap"]
    _start[:] = [int(x) for x in kmap[:, KM_START]]
    _end[:] = [int(x) for x in kmap[:, KM_END]]


def kva(i: int) -> int:
    """The kernel VA of kernel_map page ``i``."""
    return KERNBASE + i * NBPG


def kva_index(va: int) -> int:
    return (va - KERNBASE) // NBPG


def map_start(m: int) -> int:
    """The first VA of map ``m`` (the UBC window area, pager_map, ...)."""
    return kva(_start[m])


def map_of(va: int) -> int:
    """The map that allocated ``va`` (kernel_map if no submap holds it)."""
    i = kva_index(va)
    for m in range(1, NMAPS):
        if _start[m] <= i < _end[m]:
            return m
    return KERNEL_MAP


def emergva() -> int:
    """The pager's emergency window ("emergva", MAXBSIZE of kernel_map after pager_map)."""
    return kva(int(shared.kva_glob[KV_EMERGVA]))


# --- finding and freeing space (uvm_map_findspace, uvm_unmap) ---------------------------

def _findspace(m: int, npages: int) -> int:
    """First fit of ``npages`` in map ``m`` from its hint; the first page index, or -1.

    => the map's lock held.
    """
    if lock.DIAGNOSTIC and map_lock[m] >= 0:
        lock.KASSERT_LOCKED(map_lock[m])
    used = shared.kva_used
    km = shared.kmap
    base = m * 4
    i, end = km[base + KM_HINT], km[base + KM_END]
    while i < end and used[i]:                 # the hint is usually free already
        i += 1
    km[base + KM_HINT] = i                     # every page below the hint is in use
    if i + npages <= end and all(not used[j] for j in range(i + 1, i + npages)):
        return i
    return first_fit(shared.np["kva_used"], i, end, npages)


def _take(m: int, first: int, npages: int) -> None:
    """Mark pages allocated in map ``m`` (=> map locked)."""
    used = shared.kva_used
    for j in range(first, first + npages):
        used[j] = 1
    km = shared.kmap
    base = m * 4
    if km[base + KM_HINT] == first:
        km[base + KM_HINT] = first + npages
    km[base + KM_INUSE] += npages


def uvm_km_valloc(m: int, npages: int, trylock: bool = False, wait: int = -1) -> int:
    """Kernel VA only, in map ``m``; -1 if there is none (or the lock is busy with
    ``trylock``).  ``wait`` (a wait message, "vallocwait"): sleep until some is given back
    instead (uvm_km_valloc_wait; restart).  kernel_map grows the kernel PTPs to cover what
    it hands out.
    """
    lk = map_lock[m]
    if trylock:
        if kern_fail.trylock_fails("uvm_km_valloc_try") or not lock.simple_lock_try(lk):
            return -1
    else:
        lock.simple_lock(lk)
    first = _findspace(m, npages)
    if first < 0:
        if wait >= 0:
            kern_synch.ltsleep(CHAN_KVA + m, wait, 0, lk)
        lock.simple_unlock(lk)
        return -1
    _take(m, first, npages)
    if m == KERNEL_MAP and first + npages > shared.kva_glob[KV_MAXKADDR]:
        # uvm_map's PMAP_GROWKERNEL hook (uvm_maxkaddr), with kernel_map locked
        shared.kva_glob[KV_MAXKADDR] = kva_index(pmap.pmap_growkernel(kva(first + npages)))
    lock.simple_unlock(lk)
    return kva(first)


def uvm_km_vfree(va: int, npages: int) -> None:
    """Give kernel VA back to its map and wake whoever waits for some (uvm_km_free_wakeup)."""
    m = map_of(va)
    lk = map_lock[m]
    lock.simple_lock(lk)
    vfree_locked(m, va, npages)
    lock.simple_unlock(lk)
    if m in (EXEC_MAP, PHYS_MAP, PAGER_MAP):
        kern_synch.wakeup(CHAN_KVA + m)


def vfree_locked(m: int, va: int, npages: int) -> None:
    """uvm_unmap_remove's part on the map: the pages of VA are free again (=> map locked)."""
    if lock.DIAGNOSTIC and map_lock[m] >= 0:
        lock.KASSERT_LOCKED(map_lock[m])
    i = kva_index(va)
    used = shared.kva_used
    for j in range(i, i + npages):
        used[j] = 0
    km = shared.kmap
    base = m * 4
    if i < km[base + KM_HINT]:
        km[base + KM_HINT] = i
    km[base + KM_INUSE] -= npages



# --- memory: VA and pages ------------------------------------------------------------------

def uvm_km_alloc1(m: int, npages: int, owner: int = OWN_KMEM, obj: int = KOBJ_KERNEL,
                  off: int = -1) -> int:
    """Wired, managed kernel memory from kernel_object in map ``m`` (uvm_km_alloc1); its VA.

    May sleep ("km_alloc1w"), may panic ("pmap_enter: no pv entries available").
    ``owner``/``obj``/``off`` name the pages for the simulation's bookkeeping (a page
    directory is OWN_PDP of its pmap); NetBSD's are kernel_object pages all the same.
    """
    va = uvm_km_valloc(m, npages)
    if va < 0:
        return -1
    _cnt(counter.km_allocs)
    for i in range(npages):
        lock.simple_lock(kernel_object_lock)
        pg = uvm_pagealloc(owner, obj, kva_index(va) + i if off < 0 else off, -1, 0)
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


def uvm_km_kmemalloc(m: int, obj: int, npages: int, nowait: bool = False) -> int:
    """malloc's backend: pages of ``obj`` in map ``m``; interrupt-safe objects (kmem_object,
    mb_object) are mapped with pmap_kenter_pa (no pv entries), kernel_object with a plain
    pmap_enter.  ``nowait`` (UVM_KMF_NOWAIT, what interrupt handlers ask): -1 instead of
    waiting for VA or a page.  => interrupt level: only with ``nowait`` and an
    interrupt-safe map and object."""
    va = uvm_km_valloc(m, npages)
    if va < 0:
        return -1
    _cnt(counter.km_allocs)
    intrsafe = obj != KOBJ_KERNEL
    olk = obj_lock[obj]
    for i in range(npages):
        lock.simple_lock(olk)
        pg = uvm_pagealloc(OWN_KMEM, obj, kva_index(va) + i, -1, 0)
        lock.simple_unlock(olk)
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
    """Unmap and free kernel memory from either allocator, then its VA."""
    _unwind(va, npages, npages)


def uvm_km_free_wakeup(va: int, npages: int, nva: int) -> None:
    """uvm_km_free_wakeup: the first ``npages`` pages at ``va`` unmapped and freed, then
    ``nva`` pages of VA given back, waking whoever waits for VA in that map."""
    _unwind(va, npages, nva)


def _uvm_wait(wmesg: int) -> None:
    """uvm_wait: sleep until the pagedaemon frees memory (never returns: restart)."""
    # uvm_pdaemon's pager maps its pages into pager_map with this module's VA allocator,
    # so uvm_pdaemon imports uvm_km; this call back up into it waits for the call.
    from smp.kern import uvm_pdaemon
    uvm_pdaemon.uvm_wait(wmesg)


def _unwind(va: int, npages: int, nva: int) -> None:
    """Unmap and free the first ``npages`` pages at ``va``, then ``nva`` pages of VA.

    Managed mappings (pmap_enter) go with pmap_remove, unmanaged ones (pmap_kenter_pa of
    the interrupt-safe objects) with pmap_kremove, as uvm_unmap_remove does
    (uvm_km_pgremove_intrsafe)."""
    pages = []
    for i in range(npages):
        pg = pmap.pmap_extract(KERNEL_PMAP, va + i * NBPG)
        if pg >= 0:
            pages.append(pg)
    if not pages:
        pass                                  # nothing mapped yet (the first page failed)
    elif shared.pg_obj[pages[0]] in (KOBJ_KMEM, KOBJ_MB) and \
            shared.pg_owner[pages[0]] == OWN_KMEM:
        pmap.pmap_kremove(va, npages)         # (no pmap lock: also at interrupt level)
    else:
        pmap.pmap_remove(KERNEL_PMAP, va, va + npages * NBPG)
    for pg in pages:
        o = shared.pg_obj[pg]
        olk = obj_lock[o] if shared.pg_owner[pg] == OWN_KMEM and 0 <= o < 3 else \
            kernel_object_lock
        lock.simple_lock(olk)
        uvm_pagefree(pg)
        lock.simple_unlock(olk)
    if nva:
        uvm_km_vfree(va, nva)


def _cnt(idx: int) -> None:
    shared.cnt[_ci.cnt_base + idx] += 1
