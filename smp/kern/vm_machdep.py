"""vmapbuf and vunmapbuf (arch/i386/i386/vm_machdep.c): a user buffer mapped for raw I/O.

    vmapbuf(tid, uva, npages): VA in phys_map (uvm_km_valloc_wait: none free -> sleep
        "vallocwait"), then for each page of the (wired) user buffer its physical page
        entered with a plain pmap_enter(kernel pmap, kva, pa, READ|WRITE, PMAP_WIRED):
        no PMAP_CANFAIL -- a kernel pv entry per page, which a user program (dd from a
        raw disk) can make the kernel ask for: a user-reachable caller of Cranor's kind
    vunmapbuf(kva, npages): pmap_remove, and the VA back to phys_map (waking waiters)

That the January 2001 i386 vmapbuf used a plain pmap_enter is NETBSD-FACTS §13's reading
(§5.6 called it UNVERIFIED before).
"""

from __future__ import annotations

from smp.kern import pmap, subr_prf, uvm_km
from smp.kern.param import KERNEL_PMAP, NBPG, PMAP_WIRED, VM_PROT_READ, VM_PROT_WRITE
from smp.kern.uvm import counter, shared

W_VALLOCWAIT = subr_prf.String("vallocwait", late=True)
_ci = None


def attach(ci, kernel) -> None:
    global _ci
    _ci = ci


def vmapbuf(tid: int, uva: int, npages: int) -> int:
    """Map the user buffer at ``uva`` (its pages resident and wired) into phys_map; returns
    the kernel VA.  May sleep for VA (restart)."""
    kva = uvm_km.uvm_km_valloc(uvm_km.PHYS_MAP, npages, wait=W_VALLOCWAIT)
    pm = shared.vm_pmap[tid]
    rw = VM_PROT_READ | VM_PROT_WRITE
    for k in range(npages):
        pg = pmap.pmap_extract(pm, uva + k * NBPG)
        pmap.pmap_enter(KERNEL_PMAP, kva + k * NBPG, pg, rw, PMAP_WIRED | rw)   # no CANFAIL
    shared.cnt[_ci.cnt_base + counter.vmapbuf_maps] += 1
    return kva


def vunmapbuf(kva: int, npages: int) -> None:
    pmap.pmap_remove(KERNEL_PMAP, kva, kva + npages * NBPG)
    uvm_km.uvm_km_vfree(kva, npages)
