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
* amap slots are a fixed window per process (``S.amap_per_proc`` pages of
  anonymous memory at most), handed out like a stack: munmap of the newest
  region gives its slots back (the mmap/munmap loops of load scripts), an
  older one's slots stay used until exit -- no general amap allocator;
* a page the parent has wired is not shared with the child at fork: NetBSD
  copies wired pages at once (amap_cow_now) so the parent's wired mapping never
  turns copy-on-write; page contents are not modelled, so the child simply gets
  its own page at its first touch.
"""

from __future__ import annotations

from smp.kern import lock
from smp.kern.param import EFAULT, ENOMEM, NBPG, VM_MAXUSER_ADDRESS, VM_PROT_READ
from smp.kern.uvm import A, L, S

E_START, E_END, E_PROT, E_FLAGS, E_AMAP, E_UOBJ, E_UOFF, E_ADVICE = range(8)
NF = 8
EF_WIRED, EF_COPY, EF_FILE, EF_SHARED = 0x1, 0x2, 0x4, 0x8
USER_BASE = 0x0800_0000          # where mmap starts looking for space

ADVICE = {"normal": 0, "random": 1, "sequential": 2}
UVMADVICE = [(3, 4), (0, 0), (8, 7)]     # nback, nforw (uvm_fault.c uvmadvice[])


def _e(tid: int, i: int) -> int:
    return (tid * S.maxentries + i) * NF


def vmspace_init(tid: int, pm: int) -> None:
    A.vm_pmap[tid] = pm
    A.vm_nentries[tid] = 0
    A.vm_aused[tid] = 0


def uvm_map_lookup(tid: int, va: int) -> int:
    """Index of the entry holding ``va``, or -1 (=> map locked)."""
    ent = A.vm_entry
    for i in range(A.vm_nentries[tid]):
        b = _e(tid, i)
        if ent[b + E_START] <= va < ent[b + E_END]:
            return i
    return -1


def entry(tid: int, i: int) -> tuple[int, ...]:
    b = _e(tid, i)
    return tuple(A.vm_entry[b:b + NF])


def uvm_mmap(tid: int, npages: int, prot: int, flags: int, uobj: int = -1, uoff: int = 0,
             advice: int = 0, align: int = NBPG) -> int:
    """Map ``npages`` of anonymous (or file) memory; returns the VA, or -errno."""
    lock.simple_lock(L.vm_map + tid)
    try:
        n = A.vm_nentries[tid]
        if n >= S.maxentries:
            return -ENOMEM
        end = USER_BASE
        for i in range(n):
            end = max(end, A.vm_entry[_e(tid, i) + E_END])
        va = -(-end // align) * align
        if va + npages * NBPG > VM_MAXUSER_ADDRESS:
            return -ENOMEM                 # no room below the recursive page-table map
        base = -1
        if not flags & EF_FILE or flags & EF_COPY:
            if A.vm_aused[tid] + npages > S.amap_per_proc:
                return -ENOMEM
            base = tid * S.amap_per_proc + A.vm_aused[tid]
            A.vm_aused[tid] += npages
            A.amap_slot[base:base + npages] = _neg(npages)
        b = _e(tid, n)
        _put(b, va, va + npages * NBPG, prot, flags, base, uobj, uoff, advice)
        A.vm_nentries[tid] = n + 1
        return va
    finally:
        lock.simple_unlock(L.vm_map + tid)


def _put(b: int, *v: int) -> None:
    ent = A.vm_entry
    for j, x in enumerate(v):
        ent[b + j] = x


def _neg(n: int):
    import array
    return array.array("i", [-1]) * n


def uvm_unmap(tid: int, va: int) -> int:
    """Remove the entry starting at ``va``: mappings, anon references, the entry."""
    from smp.kern import pmap
    from smp.kern.uvm_anon import uvm_anfree

    lock.simple_lock(L.vm_map + tid)
    i = uvm_map_lookup(tid, va)
    if i < 0:
        lock.simple_unlock(L.vm_map + tid)
        return EFAULT
    start, end, _prot, flags, base, _uobj, _uoff, _adv = entry(tid, i)
    pm = A.vm_pmap[tid]
    wired = _wired_pages(pm, start, end)         # what *this* process wired (PG_W)
    pmap.pmap_remove(pm, start, end)
    _unwire(wired)
    drop = []
    if base >= 0:
        lock.simple_lock(L.amap + tid)
        for s in range(base, base + (end - start) // NBPG):
            an = A.amap_slot[s]
            if an >= 0:
                A.amap_slot[s] = -1
                lock.simple_lock(L.anon + an)
                A.an_ref[an] -= 1
                if A.an_ref[an] == 0:
                    drop.append(an)
                lock.simple_unlock(L.anon + an)
        lock.simple_unlock(L.amap + tid)
    if base >= 0:
        npg = (end - start) // NBPG
        if base + npg == tid * S.amap_per_proc + A.vm_aused[tid]:
            A.vm_aused[tid] -= npg      # the newest window: give its slots back
    n = A.vm_nentries[tid]
    last = _e(tid, n - 1)
    if i != n - 1:
        _put(_e(tid, i), *A.vm_entry[last:last + NF])
    A.vm_nentries[tid] = n - 1
    lock.simple_unlock(L.vm_map + tid)
    for an in drop:
        uvm_anfree(an)
    return 0


def _wired_pages(pm: int, start: int, end: int) -> list[int]:
    """Pages this pmap maps wired in [start, end) -- a shared (COW) anon page another
    process wired is not ours to unwire."""
    from smp.kern import pmap

    pages = []
    for v in range(start, end, NBPG):
        if pmap.pmap_is_wired(pm, v):
            pages.append(pmap.pmap_extract(pm, v))
    return [pg for pg in pages if pg >= 0]


def _unwire(pages: list[int]) -> None:
    from smp.kern.uvm_page import uvm_pageunwire

    if not pages:
        return
    lock.simple_lock(L.pageq)
    for pg in pages:
        if A.pg_wire[pg]:
            uvm_pageunwire(pg)
    lock.simple_unlock(L.pageq)


def unwire_pages(tid: int, vas: list[int]) -> None:
    """munlock of single pages: clear PG_W and unwire each page that is wired."""
    from smp.kern import pmap
    from smp.kern.uvm_page import uvm_pageunwire

    pm = A.vm_pmap[tid]
    for v in vas:
        pg = pmap.pmap_extract(pm, v)
        if pg < 0 or not pmap.pmap_is_wired(pm, v):
            continue                      # never wired (mlock stopped at wiredmax)
        pmap.pmap_unwire(pm, v)
        lock.simple_lock(L.pageq)
        if A.pg_wire[pg]:
            uvm_pageunwire(pg)
        lock.simple_unlock(L.pageq)


def set_wired(tid: int, va: int, wired: bool) -> int:
    """Mark the entry at ``va`` wired or not (mlock/munlock; faulting is the caller's)."""
    from smp.kern import pmap

    lock.simple_lock(L.vm_map + tid)
    i = uvm_map_lookup(tid, va)
    if i < 0:
        lock.simple_unlock(L.vm_map + tid)
        return EFAULT
    b = _e(tid, i)
    flags = A.vm_entry[b + E_FLAGS]
    start, end = A.vm_entry[b + E_START], A.vm_entry[b + E_END]
    if wired:
        A.vm_entry[b + E_FLAGS] = flags | EF_WIRED
        lock.simple_unlock(L.vm_map + tid)
        return 0
    A.vm_entry[b + E_FLAGS] = flags & ~EF_WIRED
    lock.simple_unlock(L.vm_map + tid)
    if flags & EF_WIRED:
        pm = A.vm_pmap[tid]
        pages = _wired_pages(pm, start, end)
        for v in range(start, end, NBPG):
            if pmap.pmap_is_wired(pm, v):
                pmap.pmap_unwire(pm, v)
        _unwire(pages)
    return 0


def uvmspace_fork(parent: int, child: int, child_pm: int) -> None:
    """Copy the parent's map into the child (COW for private anonymous memory)."""
    from smp.kern import pmap

    vmspace_init(child, child_pm)
    lock.simple_lock(L.vm_map + parent)
    lock.simple_lock(L.amap + parent)
    ppm = A.vm_pmap[parent]
    for i in range(A.vm_nentries[parent]):
        start, end, prot, flags, base, uobj, uoff, adv = entry(parent, i)
        npg = (end - start) // NBPG
        cbase = -1
        if base >= 0:
            cbase = child * S.amap_per_proc + A.vm_aused[child]
            A.vm_aused[child] += npg
            for k in range(npg):
                an = A.amap_slot[base + k]
                if an >= 0 and pmap.pmap_is_wired(ppm, start + k * NBPG):
                    an = -1      # a wired page is the parent's alone (see the docstring)
                A.amap_slot[cbase + k] = an
                if an >= 0:
                    lock.simple_lock(L.anon + an)
                    A.an_ref[an] += 1
                    lock.simple_unlock(L.anon + an)
            if flags & EF_COPY:
                pmap.pmap_protect(ppm, start, end, prot & ~2 | VM_PROT_READ, skip_wired=True)
        b = _e(child, i)
        _put(b, start, end, prot, flags & ~EF_WIRED, cbase, uobj, uoff, adv)
    A.vm_nentries[child] = A.vm_nentries[parent]
    lock.simple_unlock(L.amap + parent)
    lock.simple_unlock(L.vm_map + parent)


def uvmspace_free(tid: int) -> None:
    """Tear down a process's address space (exit)."""
    from smp.kern import pmap

    while A.vm_nentries[tid]:
        uvm_unmap(tid, A.vm_entry[_e(tid, 0) + E_START])
    pm = A.vm_pmap[tid]
    if pm > 0:
        pmap.pmap_activate(pmap.KERNEL_PMAP)
        pmap.pmap_destroy(pm)
    A.vm_pmap[tid] = -1
