"""File I/O through UBC windows (uvm_bio.c [UBC16]).

read()/write() of a file copy through a window of kernel VA: ``ubc_alloc``
picks a window, a fault on it (``ubc_fault``) finds or reads in the file's
page and maps it with a plain ``pmap_enter`` on the kernel pmap -- no
PMAP_CANFAIL: one of Cranor's callers -- then the copy runs and
``ubc_release`` unmaps the window.  A write leaves the page dirty for the
pagedaemon to write back.  One page per window; the window's VA comes from
kmem_map.

=> caller holds no locks; may sleep (restart: the I/O resumes at the page in
   ``reg[0]``).
"""

from __future__ import annotations

from smp.kern import lock, pmap, subr_prf, uvm_km, uvm_page, uvm_pdaemon, uvm_vnode
from smp.kern.param import (
    KERNEL_PMAP,
    NBPG,
    OWN_UOBJ,
    PG_BUSY,
    PG_CLEAN,
    VM_PROT_READ,
    VM_PROT_WRITE,
)
from smp.kern.uvm import counter, shared
from smp.kern.uvm_page import uvm_pageactivate, uvm_pagealloc

W_UBC = subr_prf.String("ubc_fault")
_ci = None


def attach(ci, kernel) -> None:
    global _ci
    _ci = ci


def ubc_rw(tid: int, uobj: int, off: int, npages: int, write: bool, reg) -> None:
    """Copy ``npages`` pages of file ``uobj`` from page ``off`` through UBC windows."""
    ci = _ci
    size = shared.file_size[uobj]
    i = int(reg[0])
    while i < npages:
        reg[0] = i
        page = (off + i) % max(1, size)
        va = uvm_km.uvm_km_valloc(1)
        if va < 0:
            return
        lk = uvm_vnode.vnode_lock + uobj % uvm_vnode.NVNODE
        lock.simple_lock(lk)
        slot = shared.file_base[uobj] + page
        pg = shared.file_page[slot]
        if pg < 0:
            pg = uvm_pagealloc(OWN_UOBJ, uobj, page, -1, 0)
            if pg < 0:
                lock.simple_unlock(lk)
                uvm_km.uvm_km_vfree(va, 1)
                uvm_pdaemon.uvm_wait(W_UBC)
            shared.file_page[slot] = pg
            shared.pg_flags[pg] &= ~PG_BUSY
            shared.cnt[ci.cnt_base + counter.pageins] += 1
        shared.cnt[ci.cnt_base + counter.ubc_faults] += 1
        prot = VM_PROT_READ | (VM_PROT_WRITE if write else 0)
        pmap.pmap_enter(KERNEL_PMAP, va, pg, prot, prot)      # ubc_fault: no CANFAIL
        if write:
            shared.pg_flags[pg] &= ~PG_CLEAN
        lock.simple_unlock(lk)
        lock.simple_lock(uvm_page.pageq_lock)
        uvm_pageactivate(pg)
        lock.simple_unlock(uvm_page.pageq_lock)
        pmap.pmap_remove(KERNEL_PMAP, va, va + NBPG)           # ubc_release
        uvm_km.uvm_km_vfree(va, 1)
        i += 1
    reg[0] = 0
