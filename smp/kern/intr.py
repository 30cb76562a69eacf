"""Interrupts (arch/i386/i386/intr.c and the vectors of locore): the devices a load declares,
the disk's I/O completions, and the network stack's mbufs (uipc_mbuf.c, subr_pool.c).

Sources.  A load script's ``[[interrupt]]`` tables declare network interfaces: packets of
``size`` bytes arriving ``rate`` times a second, each held by its consumer for ``hold``
before it is freed, on CPU ``cpu`` -- or, without ``cpu``, one such source per CPU.  The
disk is a source too: a pageout cluster's I/O completes ``disk_latency`` (the machine
profile's) after uvm_pager started it, on the CPU after the one that started it.

Arrival.  Each source has a next-due time (virtual nanoseconds in lockstep, host
nanoseconds since boot free-running), and ``intr_glob[NEXT_DUE]`` is the earliest of
them.  Every CPU that passes a delivery point compares it with its clock, and if it has
passed, posts what is due to the CPUs it is for: a pending count and the
I386_IPI_DEVINTR bit in the CPU's IPI word, which also kicks an idle CPU.  The
interrupt controller is clocked by whichever CPU runs, so lockstep stays a function of
the seed.  Delivery points: every memory reference (trap.memref), every operation of a
load's program, the dispatch loop (idle or not), and the atomic core's spin loop, which
calls the IPI handler whenever the CPU's IPI word is not zero.

Delivery.  ``i386_ipi_handler`` takes the CPU's IPI bits: the TLB shootdown, then the
device interrupts -- if the CPU's priority allows.  A CPU that holds a lock (other than
the big lock) stands for one at raised spl: NetBSD raises the spl before it takes a
lock an interrupt handler might take (splvm for kmem_map, splimp for mbufs, splbio),
so an interrupt waits; so does one that arrives while the CPU is already serving one.
What waits keeps its pending count and is served at a later delivery point where the
priority allows (the CPU's ``_ipending``, as i386's ipending is served at spllower).

The network handler (ether input: MGETHDR, then MCLGET for a packet larger than an
mbuf's MHLEN) takes an mbuf from the mbuf pool and clusters from the cluster pool.  An
empty pool gets a page: the mbuf pool from kmem_map and kmem_object, the cluster pool
from mb_map and mb_object (mclpool_alloc), both with uvm_km_kmemalloc(...,
UVM_KMF_NOWAIT): interrupt-safe objects, so pmap_kenter_pa (no pv entry, cannot fail),
and kernel objects, so the page may come from the reserve down to free = 1 -- the
drain of the reserve the issue is about.  No VA or no page: the packet is dropped and
counted (``intr_alloc_fail``); an interrupt never sleeps.  A packet's items go back to
their pools when its hold time has passed (served on its CPU at its next interrupt or
idle turn); pool pages stay in the pool until the pagedaemon's ``pool_drain`` takes
the idle ones back.  With ``intr_biglock`` (and ``biglock``) the handler runs under the
big lock, as the merged MP code's interrupt stubs take it (x86_intlock); whether the
January 2001 branch's did is UNVERIFIED (NETBSD-FACTS §12 item 6).

The disk handler is biodone for a pageout: uvm_aio_biodone moves the buffer to the
aiodoned thread's queue and wakes it (uvm_pager).
"""

from __future__ import annotations

import numpy as np

from smp.kern import lock, subr_prf
from smp.kern.param import MCLBYTES, MSIZE, NBPG
from smp.kern.uvm import counter, shared
from smp.machine.layout import ArraySpec

I386_IPI_TLB = 0x8
I386_IPI_DEVINTR = 0x100        # (the simulation's: a device interrupt is pending)
NEVER = (1 << 62)
MHLEN = MSIZE - 56              # an mbuf's data with a packet header
MAXCLUSTERS = 4                 # clusters one packet may need (size <= 8 KiB)
NPKT = 1024                     # packets one CPU's consumers hold at once (a ring)
MAXPOOLPAGES = 512
MBPOOL, MCLPOOL = 0, 1
ITEMS_PER_PAGE = (NBPG // MSIZE, NBPG // MCLBYTES)
# isrc columns
S_CPU, S_PERIOD, S_SIZE, S_HOLD, S_NEXT = range(5)
# intr_glob slots
IG_NEXT_DUE, IG_DRAIN = range(2)

MSG_POOLFULL = subr_prf.Message("", "pool %s: no room for another page", late=True)

_ci = None
_on = False                      # any source declared (a one-attribute test at each point)
_now = None                      # ci.core.now and shared.intr_glob, for due() (attach)
_intr_glob = None
_biglock = False
# i386's ipending: device interrupts this CPU's priority held back, served where it may
# take them (at_point), not by re-posting the IPI -- a CPU spinning for a lock the handler
# takes cannot take them until its spin ends, and a re-posted IPI made every spin turn
# call the handler again (three quarters of a net-storm run's host time, biglock on)
_ipending = False
S_MBPL = subr_prf.String("mbpl", late=True)            # the pools' names, for messages
S_MCLPL = subr_prf.String("mclpl", late=True)
pool_lock = -1                   # pool_lock + pool: the pool's pr_slock (declare)
nsrc = 0


def declare(kernel, locks) -> list[ArraySpec]:
    """The sources (the load's interfaces, one per CPU unless pinned), the pools, the
    packets the consumers hold, and the pools' locks."""
    global pool_lock, nsrc
    pool_lock = locks.declare("pool", count=2, label="pool[{i}]")
    ncpu = kernel.machine.ncpu
    nsrc = sum(ncpu if s.cpu < 0 else 1 for s in kernel.load.interrupts)
    i4, i8 = np.dtype("<i4"), np.dtype("<i8")
    return [
        ArraySpec("isrc", i8, (max(1, nsrc), 5)),
        ArraySpec("isrc_pend", i4, (max(1, nsrc),)),
        ArraySpec("intr_glob", i8, (4,)),
        ArraySpec("intr_depth", i4, (ncpu,)),
        ArraySpec("pkt_due", i8, (ncpu, NPKT)),
        ArraySpec("pkt_item", i4, (ncpu, NPKT, 1 + MAXCLUSTERS)),
        ArraySpec("pkt_ht", i8, (ncpu, 2)),
        ArraySpec("pool_va", i8, (2, MAXPOOLPAGES)),
        ArraySpec("pool_nfree", i4, (2, MAXPOOLPAGES)),
    ]


def format(seg, kernel) -> None:
    """Boot: each source's first arrival one period after boot; empty pools and rings."""
    a = seg.arrays
    ncpu = seg.layout.ncpu
    isrc = a["isrc"]
    isrc[:] = 0
    isrc[:, S_NEXT] = NEVER
    k = 0
    for s in kernel.load.interrupts:
        for cpu in (range(ncpu) if s.cpu < 0 else [s.cpu % ncpu]):
            isrc[k] = (cpu, s.period_ns, s.size, s.hold_ns, s.period_ns)
            k += 1
    a["isrc_pend"][:] = 0
    a["intr_glob"][:] = 0
    a["intr_glob"][IG_NEXT_DUE] = int(isrc[:k, S_NEXT].min()) if k else NEVER
    a["pkt_item"][:] = -1
    a["pkt_ht"][:] = 0
    a["pool_va"][:] = 0
    a["pool_nfree"][:] = -1


# the lock classes an interrupt handler takes: NetBSD takes them at raised spl, so a CPU
# holding one takes no interrupt (the big lock excepted: it is recursive)
INTR_CLASSES = ("kmem_map", "mb_map", "kmem_object", "mb_object", "fpageq", "pool",
                "sched_lock", "aiodoned_lock", "pmap_tlb_shootdown_q",
                "pmap_tlb_shootdown_job_lock")
_masks = None                    # by lock id: held, it masks interrupts


def attach(ci, kernel) -> None:
    global _ci, _on, _biglock, _masks, _isrc_off, _pend_off, _glob_off, _ipending
    global _now, _intr_glob
    _ci = ci
    _ipending = False
    _now, _intr_glob = ci.core.now, shared.intr_glob
    _on = nsrc > 0
    _biglock = kernel.config.biglock and kernel.config.intr_biglock
    space = kernel.lockspace
    _masks = np.zeros(space.nlocks, bool)
    for r in space.ranges:
        if space.classes[r.klass].name in INTR_CLASSES:
            _masks[r.first:r.first + r.count] = True
    lay = ci.seg.layout.arrays
    _isrc_off = lay["isrc"][0]
    _pend_off = lay["isrc_pend"][0]
    _glob_off = lay["intr_glob"][0]
    ci.core.ipi_handler = i386_ipi_handler      # served while spinning, as IPIs are


def _cnt(idx: int, n: int = 1) -> None:
    shared.cnt[_ci.cnt_base + idx] += n


# --- arrival: the interrupt controller ---------------------------------------------------

def due() -> bool:
    """Is something due, or held back?  One shared read and the clock (=> a delivery
    point)."""
    return _ipending or _now() >= _intr_glob[IG_NEXT_DUE]


def poll() -> None:
    """Post every interrupt that is due to its CPU (any CPU may do it for any other)."""
    now = _ci.core.now()
    off = _glob_off + 8 * IG_NEXT_DUE
    # take the due time down to NEVER before the scan: a due time another CPU sets from
    # now on (set_due: a pageout started after our scan) is then below it, and kept
    while True:
        cur = _ci.core.load64(off)
        if _ci.core.cas64(off, cur, NEVER):
            break
    isrc = shared.np["isrc"]
    nxt = NEVER
    for s in range(nsrc):
        t = int(isrc[s, S_NEXT])
        if t <= now:
            period = int(isrc[s, S_PERIOD])
            n = min(8, (now - t) // period + 1)      # a busy machine coalesces arrivals
            new = t + n * period if now - t < 8 * period else now + period
            if _ci.core.cas64(_isrc_off + 8 * (s * 5 + S_NEXT), t, new):
                _ci.core.fadd32(_pend_off + 4 * s, n)
                _ci.send_ipi(int(isrc[s, S_CPU]), I386_IPI_DEVINTR)
                t = new
            else:
                t = int(isrc[s, S_NEXT])
        nxt = min(nxt, t)
    # (uvm_pager) the pageout I/Os in flight: each completes on its own CPU
    from smp.kern import uvm_pager  # uvm_pager imports this module for its clock
    nxt = min(nxt, uvm_pager.poll_aio(now))
    # publish it without losing what another CPU set meanwhile: a plain store here once
    # left a pageout's completion never due, and the processes waiting for its pages
    # asleep until the run's time limit
    while True:
        cur = _ci.core.load64(off)
        if _ci.core.cas64(off, cur, min(cur, nxt)):
            return


def set_due(t: int) -> None:
    """Something new is due at ``t`` (a pageout I/O): make the earliest due time at most t."""
    off = _glob_off + 8 * IG_NEXT_DUE
    while True:
        cur = _ci.core.load64(off)
        if t >= cur or _ci.core.cas64(off, cur, t):
            return


_isrc_off = _pend_off = _glob_off = 0


# --- delivery -------------------------------------------------------------------------------

def i386_ipi_handler() -> None:
    """This CPU's IPI and interrupt word: the TLB shootdown, then the device interrupts its
    priority allows (see the module docstring); what must wait is held in ``_ipending``."""
    bits = _ci.take_ipis()
    # (pmap's handler acknowledges this CPU's queued invalidations whatever the bits)
    from smp.kern import pmap  # pmap imports this module for the handler it installs
    pmap.pmap_do_tlb_shootdown()
    if bits & I386_IPI_DEVINTR or _ipending:
        _spllower()


def _spllower() -> None:
    """Serve the pending device interrupts if the priority allows, else hold them.

    The flag is cleared before the service, not set from its result: an interrupt that
    arrives while the service waits for a lock is taken by the spin loop's handler and
    held (nested, the priority does not allow it), and must stay held -- a disk
    completion lost so left its cluster paging and the run waiting for its time limit.
    """
    global _ipending
    _ipending = False
    if not intr_service():
        _ipending = True


def spl_allows() -> bool:
    """No interrupt while serving one, or while holding a lock an interrupt handler takes
    (INTR_CLASSES: NetBSD holds those at splvm, splimp, splbio or splhigh).  A CPU in
    the middle of a fault, holding its map, amap, anon and pmap locks, takes interrupts:
    those locks are taken at spl0 -- unless the handler takes the big lock and the CPU
    does not hold it already (it would wait for the outermost lock holding others).  A
    CPU spinning for a lock the handler takes serves it once it has the lock (a nested
    spin for the same lock would only wait beside the first)."""
    me = _ci.cpu
    if shared.intr_depth[me]:
        return False
    spin = int(_ci.area["spinning_on"]) - 1
    if spin >= 0 and (_masks[spin] or (_biglock and spin == lock.KERNEL_LOCK_ID)):
        return False            # spinning for a lock the handler takes: it waits its turn
    n = _ci.core.nheld()
    if n == 0:
        return True
    held = _ci.area["held"]["lock"][:n]
    if _masks[held].any():
        return False
    # a handler that takes the big lock must not wait for it holding another lock (the
    # big lock is the outermost): only a CPU that holds it already, or nothing, takes one
    return not _biglock or bool((held == lock.KERNEL_LOCK_ID).any())


def intr_service() -> bool:
    """Serve this CPU's pending device interrupts; False if its priority does not allow."""
    if not spl_allows():
        return False
    me = _ci.cpu
    shared.intr_depth[me] += 1
    base = _ci.core.intr_enter()     # LOCKDEBUG: the interrupted context's locks are not ours
    big = _biglock
    try:
        if big:
            lock.kernel_lock()
        isrc = shared.np["isrc"]
        for s in range(nsrc):
            if int(isrc[s, S_CPU]) != me or not shared.isrc_pend[s]:
                continue
            n = _ci.core.fadd32(_pend_off + 4 * s, 0)
            _ci.core.fadd32(_pend_off + 4 * s, -n)
            for _ in range(n):
                _net_intr(me, s)
        # (uvm_pager) biodone for the pageouts that completed on this CPU
        from smp.kern import uvm_pager  # uvm_pager imports this module for its clock
        uvm_pager.uvm_aio_biodone(me)
        _consume(me)
    finally:
        if big and lock.lock_held(lock.KERNEL_LOCK_ID):
            lock.kernel_unlock()
        _ci.core.intr_exit(base)
        shared.intr_depth[me] -= 1
    return True


def at_point() -> None:
    """A delivery point of the CPU itself (memref, an operation, the dispatch loop)."""
    if _now() >= _intr_glob[IG_NEXT_DUE]:
        poll()
    if _ci.ipi_pending():
        # until none is left: a TLB IPI posted while the handler waited for a lock may
        # have been answered for by its shooter (pmap_tlb_shootnow), and this CPU's next
        # memory reference (trap.memref) must find it applied
        while _ci.ipi_pending():
            i386_ipi_handler()
    elif _ipending:
        _spllower()                         # what was held back, if it may be served now


# --- the network stack: packets, mbufs, clusters -----------------------------------------------

def _net_intr(cpu: int, s: int) -> None:
    """One packet: an mbuf, and clusters if it does not fit in one; dropped if the pools
    cannot be refilled without waiting."""
    size = int(shared.np["isrc"][s, S_SIZE])
    ncl = 0 if size <= MHLEN else min(MAXCLUSTERS, -(-size // MCLBYTES))
    items = [pool_get(MBPOOL)]
    for _ in range(ncl):
        if items[-1] < 0:
            break
        items.append(pool_get(MCLPOOL))
    if items[-1] < 0:
        for k, it in enumerate(items[:-1]):
            pool_put(MBPOOL if k == 0 else MCLPOOL, it)
        _cnt(counter.intr_alloc_fail)
        return
    _cnt(counter.intr_allocs)
    ht = shared.np["pkt_ht"][cpu]
    head, tail = int(ht[0]), int(ht[1])
    if tail - head >= NPKT:                       # the consumer is behind: it takes one now
        _free_packet(cpu, head % NPKT)
        head += 1
        ht[0] = head
    slot = tail % NPKT
    row = shared.np["pkt_item"][cpu, slot]
    row[:] = -1
    row[:len(items)] = items
    shared.np["pkt_due"][cpu, slot] = _ci.core.now() + int(shared.np["isrc"][s, S_HOLD])
    ht[1] = tail + 1


def _free_packet(cpu: int, slot: int) -> None:
    row = shared.np["pkt_item"][cpu, slot]
    for k, it in enumerate(row.tolist()):
        if it >= 0:
            pool_put(MBPOOL if k == 0 else MCLPOOL, it)
    row[:] = -1


def _consume(cpu: int) -> None:
    """The consumers free the packets whose hold time has passed (m_freem)."""
    ht = shared.np["pkt_ht"][cpu]
    now = _ci.core.now()
    due_ = shared.np["pkt_due"][cpu]
    head, tail = int(ht[0]), int(ht[1])
    while head < tail and int(due_[head % NPKT]) <= now:
        _free_packet(cpu, head % NPKT)
        head += 1
    ht[0] = head


def pool_get(pp: int) -> int:
    """An item of pool ``pp`` (PR_NOWAIT): the number of the pool page it is on, or -1.

    An empty pool gets a page first (the pool's page allocator, with the pool unlocked):
    the mbuf pool from kmem_map, the cluster pool from mb_map."""
    lk = pool_lock + pp
    lock.simple_lock(lk)
    nfree = shared.np["pool_nfree"][pp]
    k = int(np.argmax(nfree))
    if nfree[k] > 0:
        nfree[k] -= 1
        lock.simple_unlock(lk)
        return k
    lock.simple_unlock(lk)
    # (the pool's back end: uvm_km_alloc_poolpage1 / mclpool_alloc -> uvm_km_kmemalloc)
    from smp.kern import uvm_km  # uvm_km imports the pmap, which imports this module
    if pp == MBPOOL:
        va = uvm_km.uvm_km_kmemalloc(uvm_km.KMEM_MAP, uvm_km.KOBJ_KMEM, 1, nowait=True)
    else:
        va = uvm_km.uvm_km_kmemalloc(uvm_km.MB_MAP, uvm_km.KOBJ_MB, 1, nowait=True)
    if va < 0:
        return -1
    lock.simple_lock(lk)
    vas = shared.np["pool_va"][pp]
    empty = np.flatnonzero(vas == 0)
    if not len(empty):
        lock.simple_unlock(lk)
        subr_prf.printf(MSG_POOLFULL, S_MBPL if pp == MBPOOL else S_MCLPL)
        uvm_km.uvm_km_free(va, 1)
        return -1
    k = int(empty[0])
    vas[k] = va
    nfree[k] = ITEMS_PER_PAGE[pp] - 1
    lock.simple_unlock(lk)
    return k


def pool_put(pp: int, k: int) -> None:
    lk = pool_lock + pp
    lock.simple_lock(lk)
    shared.np["pool_nfree"][pp][k] += 1
    lock.simple_unlock(lk)


def pool_drain() -> None:
    """The pagedaemon's pool_drain: one pool (in turn) gives its idle pages back
    (pool_reclaim: pages none of whose items is in use)."""
    if not _on:
        return
    # (pool_reclaim -> the pool's page release, uvm_km_free_poolpage1)
    from smp.kern import uvm_km  # uvm_km imports the pmap, which imports this module
    pp = int(shared.intr_glob[IG_DRAIN]) % 2
    shared.intr_glob[IG_DRAIN] += 1
    lk = pool_lock + pp
    lock.simple_lock(lk)
    vas, nfree = shared.np["pool_va"][pp], shared.np["pool_nfree"][pp]
    idle = np.flatnonzero((vas != 0) & (nfree == ITEMS_PER_PAGE[pp]))
    gone = [int(vas[k]) for k in idle]
    vas[idle] = 0
    nfree[idle] = -1
    lock.simple_unlock(lk)
    for va in gone:
        uvm_km.uvm_km_free(va, 1)
