"""The page-fault handler (uvm_fault.c, errno era: NETBSD-FACTS §5.2).

uvm_fault(tid, va, access_type [, wire]):
    uvmexp.faults++
  ReFault (every retry starts over: see kern_synch's restart semantics)
    lock the map; no entry -> EFAULT; access outside its protection -> EACCES
    first try only, unless wiring: map resident neighbours not mapped yet (nback 3 /
        nforw 4 for MADV_NORMAL), reactivating them, with PMAP_CANFAIL, ignoring
        failures: an anon's page (fltnamap), and -- a file mapping whose faulting page
        has no anon -- the object's resident pages its locked pgo_get hands over
        (fltlget, fltnomap); MADV_SEQUENTIAL deactivates and unmaps the 8 pages
        behind instead, and maps only the 7 ahead
    case 1, the page has an anon:
        not resident (swapped out): a new page (not from the reserve) or
            fltnoram + uvm_wait("flt_noram1"); swap it in
        write to a shared anon (an_ref > 1): copy-on-write (flt_acow): a new
            anon and page or -- no anon, or swap full -> fltnoanon, ENOMEM;
            else fltnoram + uvm_wait("flt_noram3")
        pmap_enter(... | PMAP_CANFAIL) fails -> unlock everything; swap full ->
            ENOMEM; else uvm_wait("flt_pmfail1") and ReFault
    case 2, no anon:
        file-backed: find or read the object's page; writing a private file
            mapping promotes (copies) it into a new anon
        anonymous zero-fill: promote into a new anon + zeroed page -- no anon or
            swap full -> fltnoanon, ENOMEM ("promote: out of VM"); no page ->
            fltnoram + uvm_wait("flt_noram5")
        pmap_enter fails -> swap full ? ENOMEM : uvm_wait("flt_pmfail2"), ReFault
    wire (mlock) or activate the page; unlock; 0

The data page is allocated *before* pmap_enter, the PTP inside it, so a
user fault normally blocks in flt_noram at free <= 5 long before its PTP
allocation (free <= 1) can fail.  NetBSD kept no counter for the pmfail
waits; ours are ``flt_pmfail1``/``flt_pmfail2``/``pmfail_waits``.
ENOMEM makes trap() kill the process ("out of swap").

Locking: MAPS => AMAP => UOBJ => ANON => PAGE QUEUES (the lock order of
``smp.kern.lock``).  A fault's state travels in one ``FaultInfo`` (NetBSD's
struct uvm_faultinfo plus what the fault decided: access, wiring, the
protection to enter), which also lists the locks the fault holds so that
``unlockall`` (uvmfault_unlockall) drops them all before a wait or a return.
"""

from __future__ import annotations

from smp.kern import (
    kern_synch,
    lock,
    pmap,
    subr_prf,
    uvm_anon,
    uvm_km,
    uvm_map,
    uvm_page,
    uvm_pdaemon,
    uvm_vnode,
)
from smp.kern import uvm as U
from smp.kern.param import (
    EACCES,
    EAGAIN,
    EFAULT,
    ENOMEM,
    KERNEL_PMAP,
    NBPG,
    OWN_ANON,
    OWN_KMEM,
    OWN_UOBJ,
    PG_BUSY,
    PG_CLEAN,
    PG_WANTED,
    PGSHIFT,
    PMAP_CANFAIL,
    PMAP_WIRED,
    UVM_PGA_ZERO,
    VM_PROT_READ,
    VM_PROT_WRITE,
)
from smp.kern.uvm import counter, shared
from smp.kern.uvm_anon import swap_full, swpgonly_add, uvm_analloc, uvm_anfree
from smp.kern.uvm_map import (
    E_ADVICE,
    E_AMAP,
    E_END,
    E_FLAGS,
    E_PROT,
    E_START,
    E_UOBJ,
    E_UOFF,
    EF_COPY,
    EF_FILE,
    EF_WIRED,
    MADV_SEQUENTIAL,
    UVMADVICE,
    entry_index,
    uvm_map_lookup,
)
from smp.kern.uvm_page import uvm_pageactivate, uvm_pagealloc, uvm_pagewire

WMESG = {name: subr_prf.String(name) for name in (         # wait channel -> string id
    "flt_noram1", "flt_noram3", "flt_noram5", "flt_pmfail1", "flt_pmfail2", "uvn_get")}
W_UAO_GETPAGE = subr_prf.String("uao_getpage", late=True)
W_ANONGET2 = subr_prf.String("anonget2", late=True)
HIST_FAULT = subr_prf.UVMHIST_FUNC("uvm_fault")
H_CALL = subr_prf.Message("uvm_fault", "(map=%p, vaddr=0x%x, ft=%d, at=%d)", "hist", "maphist")
H_CASE1 = subr_prf.Message("uvm_fault", "  case 1 fault: anon=0x%x", "hist", "maphist")
H_CASE2 = subr_prf.Message("uvm_fault", "  case 2 fault: promote=%d, zfill=%d", "hist",
                           "maphist")
H_NORAM = subr_prf.Message("uvm_fault", "  noram -- UVM_WAIT", "hist", "maphist")
H_PMFAIL = subr_prf.Message("uvm_fault", "  pmap_enter failed, waiting (%s)", "hist",
                            "maphist")
H_OOVM = subr_prf.Message("uvm_fault", "<- failed.  out of VM", "hist", "maphist")
H_DONE = subr_prf.Message("uvm_fault", "<- done (SUCCESS!)", "hist", "maphist")

_ci = None
_cnt_arr = None                 # shared.cnt and this CPU's row in it (attach)
_cb = 0
_refault_narrow: dict[int, int] = {}      # ci.md.refault_narrow (attach)
_amap_off = 0                   # byte offset of amap_slot in the segment (attach)
PAGE_MASK = ~(NBPG - 1)
C_FAULTS, C_FLTNAMAP, C_FLTNOMAP, C_FLT_PRZERO = (counter.faults, counter.fltnamap,
                                                  counter.fltnomap, counter.flt_przero)


def attach(ci, kernel) -> None:
    global _ci, _cnt_arr, _cb, _refault_narrow, _amap_off
    _ci = ci
    _amap_off = ci.seg.layout.arrays["amap_slot"][0]
    _cnt_arr = shared.cnt
    _cb = ci.cnt_base
    _refault_narrow = ci.md.refault_narrow


def _cnt(idx: int) -> None:
    _cnt_arr[_cb + idx] += 1


class FaultInfo:
    """One fault's state: struct uvm_faultinfo (the map, the address, the map entry's
    fields) and what the fault decided (access, wiring, the protection to enter), plus
    the locks it holds.

    The fault code takes each lock itself (so lockstat names the function that took
    it) and records it in ``held``; ``unlockall`` is uvmfault_unlockall.
    """

    __slots__ = ("tid", "va", "access", "pm", "start", "end", "prot", "flags", "amap",
                 "uobj", "uoff", "advice", "wired", "wire", "wflag", "enter_prot", "held",
                 "mapwired")

    def __init__(self, tid: int, va: int, access: int):
        self.tid = tid                   # the faulting thread: its map (ufi.orig_map)
        self.va = va                     # ufi.orig_rvaddr
        self.access = access
        self.held: list[int] = []

    def unlock(self, lk: int) -> None:
        self.held.remove(lk)
        lock.simple_unlock(lk)

    def unlockall(self) -> None:
        held = self.held
        while held:
            lock.simple_unlock(held.pop())


def uvm_fault(tid: int, va: int, access: int, wire: bool = False) -> int:
    """Resolve a fault at ``va`` for thread ``tid``; 0 or an errno.  May sleep (restart)."""
    _cnt_arr[_cb + C_FAULTS] += 1
    call = subr_prf.UVMHIST_CALLED(HIST_FAULT) if subr_prf.HIST_ON else 0
    if call:
        subr_prf.UVMHIST_LOG(H_CALL, call, shared.vm_pmap[tid], va, 0, access)
    va &= PAGE_MASK
    ufi = FaultInfo(tid, va, access)
    held = ufi.held
    lk = uvm_map.vm_map_lock + tid
    lock.simple_lock(lk)                        # (held: unlocked by ufi.unlockall)
    held.append(lk)
    i = uvm_map_lookup(tid, va)
    if i < 0:
        ufi.unlockall()
        return EFAULT
    b = entry_index(tid, i)
    ent = shared.vm_entry                       # (a slice of a memoryview costs more)
    ufi.start, ufi.end = ent[b + E_START], ent[b + E_END]
    ufi.prot = ufi.enter_prot = prot = ent[b + E_PROT]
    ufi.flags = ent[b + E_FLAGS]
    ufi.amap = base = ent[b + E_AMAP]
    ufi.uobj, ufi.uoff, ufi.advice = ent[b + E_UOBJ], ent[b + E_UOFF], ent[b + E_ADVICE]
    if access & ~prot:
        ufi.unlockall()
        return EACCES
    # the map wires the page: its entry is wired, or (mlock of single pages) the page is
    # on the process's list -- also after a swapout's pmap_collect took the mapping
    listwired = shared.vm_nwired[tid] > 0 and uvm_map.wired_index(tid, va) >= 0
    mapwired = bool(ufi.flags & EF_WIRED) or listwired
    wired = mapwired or wire
    if wire:
        ufi.access = prot
    ufi.mapwired = mapwired
    ufi.pm = shared.vm_pmap[tid]
    ufi.wired = wired                            # the mapping goes in wired (PMAP_WIRED)
    ufi.wire = wire                              # VM_FAULT_WIRE: the page is wired too
    ufi.wflag = PMAP_WIRED if wired else 0
    pidx = (va - ufi.start) >> PGSHIFT
    if base >= 0:
        lk = uvm_map.amap_lock + tid
        lock.simple_lock(lk)                    # (held: unlocked by ufi.unlockall)
        held.append(lk)
    objnbrs = None
    # (a page wired on its own is a one-page entry in 1.5: no neighbours to look at)
    if not wire and not listwired and _refault_narrow.get(tid) != va and \
            (base >= 0 or ufi.flags & EF_FILE):
        objnbrs = _neighbours(ufi)
    _refault_narrow[tid] = va                    # any ReFault of this fault is narrow
    an = shared.amap_slot[base + pidx] if base >= 0 else -1
    if an >= 0:
        r = _case1(ufi, base + pidx, an)
    else:
        r = _case2(ufi, pidx, objnbrs)
    _refault_narrow.pop(tid, None)
    if call and r == 0:
        subr_prf.UVMHIST_LOG(H_DONE, call)
    return r


def _range(ufi: FaultInfo) -> tuple[int, int, int]:
    """The lookahead's pages: (first VA, how many, the centre's index), nback/nforw of
    the entry's advice clipped to the entry; MADV_SEQUENTIAL flushes the pages behind
    the fault first and keeps only the ones ahead."""
    nback, nforw = UVMADVICE[ufi.advice]
    va, start, end = ufi.va, ufi.start, ufi.end
    nva = va - nback * NBPG
    if nva < start:
        nva = start
    hi = va + (nforw + 1) * NBPG
    if hi > end:
        hi = end
    if ufi.advice == MADV_SEQUENTIAL and nva < va:
        _flush_back(ufi, nva, va)
        nva = va                                # "now forget about the backpages"
    return nva, (hi - nva) >> PGSHIFT, (va - nva) >> PGSHIFT


def _neighbours(ufi: FaultInfo) -> tuple[int, list[int]]:
    """The lookahead's anon layer: map resident neighbour pages with PMAP_CANFAIL;
    failures do not matter.

    As 1.5's loop: a neighbour already mapped (``pmap_extract``) is left alone; an
    unmapped one with an anon is looked at under the anon's lock, and if its page is
    resident and not busy it is reactivated (page queues locked), counted in fltnamap
    and entered, before the next neighbour is asked about.  Returns (first VA, indices)
    of the unmapped neighbours without an anon: in a file mapping (amap or not) the
    object layer looks at those (``_map_object_neighbours``); in an anonymous one there
    is nothing to look at, and the scan passes them over without stopping.
    => map (and amap, if any) locked.
    """
    nva, n, centre = _range(ufi)
    pm, base = ufi.pm, ufi.amap
    slot = base + ((nva - ufi.start) >> PGSHIFT) if base >= 0 else -1
    anon_only = not ufi.flags & EF_FILE
    left: list[int] = []
    i = 0
    while i < n:
        i = _next_unmapped_anon(pm, nva, n, centre, slot, i, anon_only)
        if i >= n:
            break
        an = shared.amap_slot[slot + i] if slot >= 0 else -1
        if an >= 0:
            _map_neighbour(ufi, nva + (i << PGSHIFT), an)
        else:
            left.append(i)
        i += 1
    return nva, left


def _flush_back(ufi: FaultInfo, sva: int, eva: int) -> None:
    """MADV_SEQUENTIAL: deactivate the pages behind the fault instead of mapping them.

    1.5's uvm_fault: uvmfault_anonflush of the back pages' anons (each under its lock:
    a resident page that is neither busy nor wired is unmapped everywhere and
    deactivated, page queues locked), then the object's back pages the same way under
    the object's lock (pgo_flush(..., PGO_DEACTIVATE), as uvn_flush does it for a page
    it need not clean).  => map (and amap, if any) locked.
    """
    slots, an_page, pg_flags = shared.amap_slot, shared.an_page, shared.pg_flags
    base = ufi.amap + ((sva - ufi.start) >> PGSHIFT)
    nanons = (eva - sva) >> PGSHIFT if ufi.amap >= 0 else 0    # no amap: no anons
    for slot in range(base, base + nanons):
        an = slots[slot]
        if an < 0:
            continue
        lk = uvm_anon.an_lock + an
        lock.simple_lock(lk)
        pg = an_page[an]
        if pg >= 0 and not pg_flags[pg] & PG_BUSY:
            _deactivate_unmapped(pg)
        lock.simple_unlock(lk)
    if ufi.flags & EF_FILE:
        uobj = ufi.uobj
        lk = uvm_vnode.vnode_lock + uobj % uvm_vnode.NVNODE
        lock.simple_lock(lk)
        first = shared.file_base[uobj] + ufi.uoff + ((sva - ufi.start) >> PGSHIFT)
        for slot in range(first, first + ((eva - sva) >> PGSHIFT)):
            pg = shared.file_page[slot]
            if pg >= 0 and not pg_flags[pg] & PG_BUSY and \
                    shared.pg_pq[pg] != uvm_page.PQ_INACTIVE:
                _deactivate_unmapped(pg)
        lock.simple_unlock(lk)


def _deactivate_unmapped(pg: int) -> None:
    """pmap_page_protect(pg, VM_PROT_NONE) and uvm_pagedeactivate, unless wired."""
    lock.simple_lock(uvm_page.pageq_lock)
    if not shared.pg_wire[pg]:
        pmap.pmap_page_remove(pg)
        uvm_page.uvm_pagedeactivate(pg)
    lock.simple_unlock(uvm_page.pageq_lock)


def _next_unmapped_anon(pm: int, va: int, n: int, skip: int, slot: int, i: int,
                        anon_only: bool = True) -> int:
    """The first of the ``n`` pages from ``va``, from page ``i`` on but ``skip``, that
    pmap_extract finds unmapped and whose amap slot (from ``slot``) holds an anon -- or,
    ``anon_only`` False, that it finds unmapped; ``n`` if none.  For the current pmap
    one call into the atomic core, else a loop."""
    if anon_only:
        k = pmap.pmap_scan_current(pm, va + (i << PGSHIFT), n - i, skip - i, _amap_off,
                                   slot + i)
    else:
        k = pmap.pmap_scan_current(pm, va + (i << PGSHIFT), n - i, skip - i, -1, 0)
    return i + k if k >= 0 else _extract_loop(pm, va, n, skip, slot if anon_only else -1, i)


def _extract_loop(pm: int, va: int, n: int, skip: int, slot: int, i: int) -> int:
    """_next_unmapped_anon for a pmap that is not the current one: pmap_extract each
    (``slot`` -1: the first unmapped page, anon or not)."""
    slots = shared.amap_slot
    while i < n:
        if i != skip and pmap.pmap_extract(pm, va + (i << PGSHIFT)) < 0 and \
                (slot < 0 or slots[slot + i] >= 0):
            return i
        i += 1
    return n


def _map_neighbour(ufi: FaultInfo, va: int, an: int) -> None:
    """One unmapped lookahead neighbour whose amap slot holds anon ``an``."""
    lk = uvm_anon.an_lock + an
    lock.simple_lock(lk)            # keeps the page from being paged out and freed under us
    pg = shared.an_page[an]
    if pg >= 0 and not shared.pg_flags[pg] & PG_BUSY:
        lock.simple_lock(uvm_page.pageq_lock)
        uvm_pageactivate(pg)
        lock.simple_unlock(uvm_page.pageq_lock)
        _cnt_arr[_cb + C_FLTNAMAP] += 1
        prot = ufi.prot
        p = prot & ~VM_PROT_WRITE if shared.an_ref[an] > 1 else prot
        pmap.pmap_enter(ufi.pm, va, pg, p, p | PMAP_CANFAIL | ufi.wflag)
    lock.simple_unlock(lk)


def _wait_busy(ufi: FaultInfo, pg: int, owner_lock: int, wmesg: int) -> None:
    """A busy page (its pageout is in flight): PG_WANTED, unlock everything but its
    owner's lock, which is the sleep's interlock (the I/O's completion takes it before
    it wakes us, so the wakeup cannot be missed); ReFault after (restart)."""
    _cnt(counter.fltpgwait)
    shared.pg_flags[pg] |= PG_WANTED
    ufi.held.remove(owner_lock)
    ufi.unlockall()
    kern_synch.ltsleep(U.CHAN_PAGE + pg, wmesg, 0, owner_lock)


def _wait(ufi: FaultInfo, wmesg: str) -> None:
    """Unlock everything and wait for the pagedaemon in ``wmesg`` (restart: ReFault)."""
    ufi.unlockall()
    _cnt(counter.uvm_wait)
    uvm_pdaemon.uvm_wait(WMESG[wmesg])


def _case1(ufi: FaultInfo, slot: int, an: int) -> int:
    """The page has an anon (NetBSD case 1); ``slot`` is its amap slot."""
    an_lock = uvm_anon.an_lock
    lock.simple_lock(an_lock + an)        # (held: unlocked by ufi.unlockall)
    ufi.held.append(an_lock + an)
    pg = shared.an_page[an]
    if pg >= 0 and shared.pg_flags[pg] & PG_BUSY:
        _wait_busy(ufi, pg, an_lock + an, W_ANONGET2)    # being paged out (uvmfault_anonget)
    if pg < 0:                                   # paged out: swap it in
        pg = uvm_pagealloc(OWN_ANON, -1, 0, an, 0)
        if pg < 0:
            _cnt(counter.fltnoram)
            _wait(ufi, "flt_noram1")
        shared.an_page[an] = pg
        shared.pg_flags[pg] &= ~PG_BUSY
        swpgonly_add(-1)
        _cnt(counter.pgswapin)
        _cnt(counter.pageins)
    if ufi.access & VM_PROT_WRITE and shared.an_ref[an] > 1:   # case 1B: copy-on-write
        _cnt(counter.flt_acow)
        got = _anon_and_page(ufi, 0, "flt_noram3")
        if got is None:
            return ENOMEM
        nan, npg = got
        shared.an_page[nan] = npg
        shared.pg_flags[npg] &= ~(PG_BUSY | PG_CLEAN)
        shared.an_ref[an] -= 1
        shared.amap_slot[slot] = nan
        ufi.unlock(an_lock + an)
        an, pg = nan, npg
        lock.simple_lock(an_lock + an)        # (held: unlocked by ufi.unlockall)
        ufi.held.append(an_lock + an)
    else:
        _cnt(counter.flt_anon)
        if shared.an_ref[an] > 1:
            ufi.enter_prot &= ~VM_PROT_WRITE
    return _enter(ufi, pg, "flt_pmfail1")


def _case2(ufi: FaultInfo, pidx: int, objnbrs: tuple[int, list[int]] | None = None) -> int:
    """No anon: an object page, or zero-fill (NetBSD case 2); ``pidx`` is the page's index
    in the map entry, ``objnbrs`` the lookahead's neighbours for the object layer (first
    VA, indices; None on a narrow fault)."""
    flags = ufi.flags
    uobjpage = -1
    if flags & EF_FILE:
        uobjpage = _uobj_get(ufi, ufi.uobj, ufi.uoff + pidx, objnbrs)
        promote = bool(ufi.access & VM_PROT_WRITE) and bool(flags & EF_COPY)
        if not promote:
            _cnt(counter.flt_obj)
            if flags & EF_COPY:
                ufi.enter_prot &= ~VM_PROT_WRITE
            return _enter(ufi, uobjpage, "flt_pmfail2")
    base = ufi.amap
    if base < 0:
        ufi.unlockall()
        return EFAULT
    got = _anon_and_page(ufi, 0 if uobjpage >= 0 else UVM_PGA_ZERO, "flt_noram5")
    if got is None:
        return ENOMEM
    an, pg = got
    _cnt_arr[_cb + (counter.flt_prcopy if uobjpage >= 0 else C_FLT_PRZERO)] += 1
    shared.an_page[an] = pg
    shared.pg_flags[pg] &= ~(PG_BUSY | PG_CLEAN)
    shared.amap_slot[base + pidx] = an          # amap_add: stays even if pmap_enter fails
    lk = uvm_anon.an_lock + an
    lock.simple_lock(lk)                  # (held: unlocked by ufi.unlockall)
    ufi.held.append(lk)
    return _enter(ufi, pg, "flt_pmfail2")


def _anon_and_page(ufi: FaultInfo, pgflags: int, wmesg: str) -> tuple[int, int] | None:
    """uvm_analloc + uvm_pagealloc for a new anon (COW copy or promotion).

    No anon, or swap full: fltnoanon, everything unlocked, None (the caller returns
    ENOMEM).  No page: fltnoram and uvm_wait(wmesg) -- the fault starts over.
    """
    an = uvm_analloc()
    if an >= 0:
        pg = uvm_pagealloc(OWN_ANON, -1, 0, an, pgflags)
        if pg >= 0:
            return an, pg
        uvm_anfree(an)
    if an < 0 or swap_full():
        _cnt(counter.fltnoanon)
        ufi.unlockall()
        return None
    _cnt(counter.fltnoram)
    _wait(ufi, wmesg)
    return None                                  # (not reached: uvm_wait sleeps)


def _enter(ufi: FaultInfo, pg: int, wmesg: str) -> int:
    """The fault's pmap_enter, with PMAP_CANFAIL, and its recovery.

    Failure: unlock everything; swap full -> ENOMEM (the process will be killed);
    otherwise wait for the pagedaemon in ``wmesg`` and ReFault (restart).
    """
    pm, va, wire = ufi.pm, ufi.va, ufi.wire
    # a page the map wired already (mlock) is not wired again by a wiring fault (physio's
    # vslock), whose uvm_vsunlock leaves it alone too
    was = wire and (ufi.mapwired or pmap.pmap_is_wired(pm, va))
    if pmap.pmap_enter(pm, va, pg, ufi.enter_prot, ufi.access | PMAP_CANFAIL | ufi.wflag):
        if swap_full():
            ufi.unlockall()
            return ENOMEM
        _cnt(counter.pmfail_waits)
        _cnt(counter.flt_pmfail1 if wmesg == "flt_pmfail1" else counter.flt_pmfail2)
        _wait(ufi, wmesg)
    _finish(pg, wire, was)
    ufi.unlockall()
    return 0


def _uobj_get(ufi: FaultInfo, uobj: int, off: int,
              nbrs: tuple[int, list[int]] | None = None) -> int:
    """The object's page at ``off`` (pgo_get), the object locked from here on.

    First the locked get (PGO_LOCKED, uvmexp.fltlget), which hands the fault the
    object's resident pages that are not busy: those among the lookahead's ``nbrs`` are
    mapped (``_map_object_neighbours``), and a resident, unbusy centre page is the
    fault's.  A busy centre page (its pageout in flight) is waited for; one not
    resident is read in (fltget: the synchronous get; the read costs no time here).
    """
    lk = uvm_vnode.vnode_lock + uobj % uvm_vnode.NVNODE
    lock.simple_lock(lk)                  # (held: unlocked by ufi.unlockall)
    ufi.held.append(lk)
    _cnt(counter.fltlget)
    if nbrs is not None and nbrs[1]:
        _map_object_neighbours(ufi, uobj, nbrs[0], nbrs[1])
    slot = shared.file_base[uobj] + off
    pg = shared.file_page[slot]
    if pg >= 0 and shared.pg_flags[pg] & PG_BUSY:
        _wait_busy(ufi, pg, lk, WMESG["uvn_get"])        # being written back
    if pg < 0:
        _cnt(counter.fltget)
        pg = uvm_pagealloc(OWN_UOBJ, uobj, off, -1, 0)
        if pg < 0:
            _cnt(counter.fltnoram)
            _wait(ufi, "uvn_get")
        shared.file_page[slot] = pg
        shared.pg_flags[pg] &= ~PG_BUSY
        _cnt(counter.pageins)
    return pg


def _map_object_neighbours(ufi: FaultInfo, uobj: int, nva: int, idx: list[int]) -> None:
    """The object layer of the lookahead (1.5's uvm_fault after its locked pgo_get): each
    neighbour in ``idx`` (page indices from ``nva``, unmapped and without an anon) whose
    object page is resident and not busy is reactivated (page queues locked), counted
    in fltnomap and entered with PMAP_CANFAIL, failures ignored -- read-only in a
    copy-on-write mapping (``enter_prot & MASK(entry)``).  => object locked.
    """
    o0 = ufi.uoff + ((nva - ufi.start) >> PGSHIFT)
    first, size = shared.file_base[uobj] + o0, shared.file_size[uobj]
    file_page, pg_flags = shared.file_page, shared.pg_flags
    prot = ufi.enter_prot & ~VM_PROT_WRITE if ufi.flags & EF_COPY else ufi.enter_prot
    flags = PMAP_CANFAIL | ufi.wflag
    for i in idx:
        if o0 + i >= size:
            break                               # past the end of the file
        pg = file_page[first + i]
        if pg < 0 or pg_flags[pg] & PG_BUSY:
            continue
        lock.simple_lock(uvm_page.pageq_lock)
        uvm_pageactivate(pg)
        lock.simple_unlock(uvm_page.pageq_lock)
        _cnt_arr[_cb + C_FLTNOMAP] += 1
        pmap.pmap_enter(ufi.pm, nva + (i << PGSHIFT), pg, prot, flags)


def _finish(pg: int, wire: bool, was_wired: bool = False) -> None:
    """Update the page queues, as 1.5 does after its pmap_enter: a wiring fault
    (VM_FAULT_WIRE: mlock's uvm_fault_wire, physio's vslock) wires the page, any other
    fault activates it -- also in a wired entry, where the page an earlier wiring fault
    wired stays wired and off the queues (uvm_pageactivate leaves a wired page alone)."""
    lk = uvm_page.pageq_lock
    lock.simple_lock(lk)
    if not wire:
        uvm_pageactivate(pg)
    elif not was_wired:                         # mlock twice wires the page once
        uvm_pagewire(pg)
    # else: the page is wired for this mapping already
    lock.simple_unlock(lk)


def uvm_fault_wire_kernel(va: int, npages: int) -> None:
    """uvm_fault_wire(kernel_map, va, va + npages * NBPG): a u-area (uvm_fork); see
    uvm_fault_kernel."""
    uvm_fault_kernel(uvm_km.KERNEL_MAP, va, npages, True)


def uvm_fault_kernel(m: int, va: int, npages: int, wired: bool) -> None:
    """Fault kernel_object pages in at ``va`` in kernel map ``m`` (uvm_fault_wire of a
    u-area on kernel_map; execve's copyin of its arguments into exec_map).  May sleep;
    the caller runs it again after the wakeup and it goes on with the first page not
    mapped yet.

    Each page is a fault on the map (its lock held for the fault, as uvm_fault holds
    it), case 2 on kernel_object: uao_get finds no page and allocates one -- a kernel
    object, so from the reserve -- or waits "uao_getpage"; then
    pmap_enter(kernel pmap, ..., PMAP_CANFAIL [| PMAP_WIRED]): a failure (no pv entry)
    waits "flt_pmfail2" and refaults.  (The real fault keeps the new page in the object
    while it waits; here it is freed and allocated again, the same pressure.)  The pages
    stay off the paging queues: a u-area is wired, exec's arguments live only as long
    as the execve.
    """
    mlk = uvm_km.map_lock[m]
    rw = VM_PROT_READ | VM_PROT_WRITE
    flags = rw | PMAP_CANFAIL | (PMAP_WIRED if wired else 0)
    for i in range(npages):
        v = va + i * NBPG
        if pmap.pmap_extract(KERNEL_PMAP, v) >= 0:
            continue                            # in already (before a sleep)
        _cnt(counter.faults)
        lock.simple_lock(mlk)
        lock.simple_lock(uvm_km.kernel_object_lock)
        pg = uvm_pagealloc(OWN_KMEM, uvm_km.KOBJ_KERNEL, uvm_km.kva_index(v), -1, 0)
        lock.simple_unlock(uvm_km.kernel_object_lock)
        if pg < 0:
            lock.simple_unlock(mlk)
            _cnt(counter.fltnoram)
            _cnt(counter.uvm_wait)
            uvm_pdaemon.uvm_wait(W_UAO_GETPAGE)
        shared.pg_flags[pg] &= ~(PG_BUSY | PG_CLEAN)
        shared.pg_wire[pg] = 1
        if pmap.pmap_enter(KERNEL_PMAP, v, pg, rw, flags):
            lock.simple_lock(uvm_km.kernel_object_lock)
            uvm_page.uvm_pagefree(pg)
            lock.simple_unlock(uvm_km.kernel_object_lock)
            lock.simple_unlock(mlk)
            _cnt(counter.pmfail_waits)
            _cnt(counter.flt_pmfail2)
            _cnt(counter.uvm_wait)
            uvm_pdaemon.uvm_wait(WMESG["flt_pmfail2"])
        lock.simple_unlock(mlk)


__all__ = ["uvm_fault", "uvm_fault_wire_kernel", "uvm_fault_kernel", "FaultInfo", "ENOMEM",
           "EFAULT", "EACCES", "EAGAIN"]
