"""File I/O through UBC windows (uvm_bio.c [UBC16]).

read()/write() of a file copy through windows of kernel VA: UBC_NWINS
windows of UBC_WINSIZE bytes, carved out of kernel_map at boot (ubc_init),
each caching the mapping of one window-sized piece of one file:

    ubc_alloc(uobj, offset):   under the ubc lock, the window that already
        holds (uobj, offset) -- found through a hash, taken off the inactive
        queue -- or else the least recently released one, whose old mappings
        go (pmap_remove) before it is given the new piece; none free: sleep
        "ubc_alloc" (restart)
    the copy touches the window page: if it is not mapped (a new window, or the
        pagedaemon took the page away), ubc_fault finds or reads in the file's
        page and maps it with a plain pmap_enter on the kernel pmap -- no
        PMAP_CANFAIL: one of Cranor's callers
    ubc_release(va): the window goes to the tail of the inactive queue, its
        mappings kept, so the next I/O on the same piece of the file finds
        them in place

A write leaves the page dirty for the pagedaemon to write back.

=> caller holds no locks; may sleep (restart: the I/O resumes at the page in
   ``reg[0]``, holding no window).
"""

from __future__ import annotations

import numpy as np

from smp.kern import kern_synch, lock, pmap, subr_prf, uvm_km, uvm_page, uvm_pdaemon, uvm_vnode
from smp.kern import uvm as U
from smp.kern.param import (
    KERNEL_PMAP,
    NBPG,
    OWN_UOBJ,
    PG_BUSY,
    PG_CLEAN,
    PG_WANTED,
    UBC_NWINS,
    UBC_WINSIZE,
    VM_PROT_READ,
    VM_PROT_WRITE,
)
from smp.kern.uvm import counter, shared
from smp.kern.uvm_page import uvm_pageactivate, uvm_pagealloc
from smp.machine.layout import ArraySpec

W_UBC = subr_prf.String("ubc_fault")
W_UBC_ALLOC = subr_prf.String("ubc_alloc", late=True)
WINPAGES = UBC_WINSIZE // NBPG
NHASH = 256
# ubc_glob slots: the inactive queue's head and tail
U_INACT_HEAD, U_INACT_TAIL = range(2)
CHAN_UBC = 0xC0F2_0000             # sleepers waiting for a free window
UBC_FIELDS = ("ubc_obj", "ubc_off", "ubc_refs", "ubc_hnext", "ubc_qnext", "ubc_qprev")
_ci = None
ubc_lock = -1                      # ubc_object.uobj.vmobjlock (declare)


def declare(kernel, locks) -> list[ArraySpec]:
    """The windows (their file piece, users, hash and inactive-queue links) and the ubc
    lock."""
    global ubc_lock
    ubc_lock = locks.declare("ubc")
    i4 = np.dtype("<i4")
    return [*(ArraySpec(f, i4, (UBC_NWINS,)) for f in UBC_FIELDS),
            ArraySpec("ubc_hash", i4, (NHASH,)), ArraySpec("ubc_glob", i4, (4,))]


def format(seg, kernel) -> None:
    """ubc_init: every window unused, on the inactive queue in address order."""
    a = seg.arrays
    a["ubc_obj"][:] = -1
    a["ubc_off"][:] = -1
    a["ubc_refs"][:] = 0
    a["ubc_hnext"][:] = -1
    a["ubc_hash"][:] = -1
    a["ubc_qnext"][:] = np.arange(1, UBC_NWINS + 1)
    a["ubc_qnext"][UBC_NWINS - 1] = -1
    a["ubc_qprev"][:] = np.arange(-1, UBC_NWINS - 1)
    a["ubc_glob"][U_INACT_HEAD], a["ubc_glob"][U_INACT_TAIL] = 0, UBC_NWINS - 1


def attach(ci, kernel) -> None:
    global _ci
    _ci = ci


def _bucket(uobj: int, woff: int) -> int:
    return (uobj * 131 + woff // WINPAGES) % NHASH


def _q_remove(w: int) -> None:
    n, p = shared.ubc_qnext[w], shared.ubc_qprev[w]
    if p < 0:
        shared.ubc_glob[U_INACT_HEAD] = n
    else:
        shared.ubc_qnext[p] = n
    if n < 0:
        shared.ubc_glob[U_INACT_TAIL] = p
    else:
        shared.ubc_qprev[n] = p
    shared.ubc_qnext[w] = shared.ubc_qprev[w] = -1


def _q_insert_tail(w: int) -> None:
    t = shared.ubc_glob[U_INACT_TAIL]
    shared.ubc_qprev[w] = t
    shared.ubc_qnext[w] = -1
    if t < 0:
        shared.ubc_glob[U_INACT_HEAD] = w
    else:
        shared.ubc_qnext[t] = w
    shared.ubc_glob[U_INACT_TAIL] = w


def _unhash(w: int) -> None:
    b = _bucket(shared.ubc_obj[w], shared.ubc_off[w])
    prev, x = -1, shared.ubc_hash[b]
    while x >= 0:
        if x == w:
            if prev < 0:
                shared.ubc_hash[b] = shared.ubc_hnext[w]
            else:
                shared.ubc_hnext[prev] = shared.ubc_hnext[w]
            break
        prev, x = x, shared.ubc_hnext[x]
    shared.ubc_hnext[w] = -1


def window_va(w: int) -> int:
    return uvm_km.map_start(uvm_km.UBC_MAP) + w * UBC_WINSIZE


def ubc_alloc(uobj: int, page: int) -> int:
    """A window holding file ``uobj``'s page ``page``; returns the page's VA in it."""
    woff = page - page % WINPAGES
    lock.simple_lock(ubc_lock)
    b = _bucket(uobj, woff)
    w = shared.ubc_hash[b]
    while w >= 0 and not (shared.ubc_obj[w] == uobj and shared.ubc_off[w] == woff):
        w = shared.ubc_hnext[w]
    if w >= 0:
        if shared.ubc_refs[w] == 0:
            _q_remove(w)
    else:
        w = shared.ubc_glob[U_INACT_HEAD]
        if w < 0:
            kern_synch.ltsleep(CHAN_UBC, W_UBC_ALLOC, 0, ubc_lock)   # restart
        _q_remove(w)
        if shared.ubc_obj[w] >= 0:
            _unhash(w)
            va = window_va(w)
            pmap.pmap_remove(KERNEL_PMAP, va, va + UBC_WINSIZE)   # the old piece's pages
        shared.ubc_obj[w] = uobj
        shared.ubc_off[w] = woff
        shared.ubc_hnext[w] = shared.ubc_hash[b]
        shared.ubc_hash[b] = w
    shared.ubc_refs[w] += 1
    lock.simple_unlock(ubc_lock)
    return window_va(w) + (page - woff) * NBPG


def ubc_release(va: int) -> None:
    """Done with the window at ``va``: it keeps its mappings, last on the inactive queue."""
    w = (va - uvm_km.map_start(uvm_km.UBC_MAP)) // UBC_WINSIZE
    lock.simple_lock(ubc_lock)
    shared.ubc_refs[w] -= 1
    if shared.ubc_refs[w] == 0:
        _q_insert_tail(w)
    lock.simple_unlock(ubc_lock)
    kern_synch.wakeup(CHAN_UBC)



def ubc_rw(tid: int, uobj: int, off: int, npages: int, write: bool, reg) -> None:
    """Copy ``npages`` pages of file ``uobj`` from page ``off`` through UBC windows."""
    ci = _ci
    size = shared.file_size[uobj]
    i = int(reg[0])
    while i < npages:
        reg[0] = i
        page = (off + i) % max(1, size)
        va = ubc_alloc(uobj, page)
        lk = uvm_vnode.vnode_lock + uobj % uvm_vnode.NVNODE
        lock.simple_lock(lk)
        slot = shared.file_base[uobj] + page
        pg = shared.file_page[slot]
        if pg >= 0 and shared.pg_flags[pg] & PG_BUSY:
            # being written back: wait for the write (the window goes back meanwhile, so
            # the wakeup may come before we sleep: a tick bounds the wait)
            shared.pg_flags[pg] |= PG_WANTED
            lock.simple_unlock(lk)
            ubc_release(va)
            kern_synch.ltsleep(U.CHAN_PAGE + pg, W_UBC, _ci.tick_ns)
        mapped = pg >= 0 and pmap.pmap_extract(KERNEL_PMAP, va) == pg
        prot = VM_PROT_READ | (VM_PROT_WRITE if write else 0)
        if not mapped or (write and not pmap.pmap_is_writable(KERNEL_PMAP, va)):
            # ubc_fault: the copy faulted on the window
            if pg < 0:
                pg = uvm_pagealloc(OWN_UOBJ, uobj, page, -1, 0)
                if pg < 0:
                    lock.simple_unlock(lk)
                    ubc_release(va)
                    uvm_pdaemon.uvm_wait(W_UBC)
                shared.file_page[slot] = pg
                shared.pg_flags[pg] &= ~PG_BUSY
                shared.cnt[ci.cnt_base + counter.pageins] += 1
            shared.cnt[ci.cnt_base + counter.ubc_faults] += 1
            pmap.pmap_enter(KERNEL_PMAP, va, pg, prot, prot)      # ubc_fault: no CANFAIL
        if write:
            shared.pg_flags[pg] &= ~PG_CLEAN
        lock.simple_unlock(lk)
        lock.simple_lock(uvm_page.pageq_lock)
        uvm_pageactivate(pg)
        lock.simple_unlock(uvm_page.pageq_lock)
        ubc_release(va)
        i += 1
    reg[0] = 0
