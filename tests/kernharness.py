"""Shared fixtures for the kernel tests: a machine booted inside the test process.

``Booted`` does what ``Machine.run`` does up to the moment the CPUs would be
forked -- declare, plan the layout, create and format the segment -- and then
attaches the kernel to an in-process ``CPU`` for cpu0, so a test can call
``pmap_enter``, ``uvm_pagealloc``, ``uvm_fault`` ... directly and look at one
decision point at a time.  There is no dispatcher: a ``Sleep`` or ``Panic``
reaches the test, which catches it with ``sleeps``/``panics``.  No other CPU
exists, so no TLB shootdown ever has to wait for an acknowledgement (unless a
test fakes another CPU's bit in ``pm_cpus``); multi-CPU behaviour is tested
with real ``Machine`` runs (``CheckedMachine``).

``free_to(n)`` really takes pages off the free list with ``uvm_pagealloc`` (as
kernel memory, OWN_KMEM) so every counter stays true and the DIAGNOSTIC
invariants keep holding; ``give_back`` returns them.

Every machine runs DIAGNOSTIC, so cpu0's atomic core checks the lock order of
every acquisition the test makes the kernel do (LOCKDEBUG, smp.kern.lock):
``booted`` fails a test whose kernel took locks out of order, apart from the
inversion the 1.91 pv-stealing code is kept with and the unguarded pv-head lock of
pmap_growkernel's PTP steal (``kept``).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from smp.config import apply_overrides, load_kernel, load_machine
from smp.kern import kern_synch, lock, pmap, subr_prf, uvm_km, uvm_map
from smp.kern import uvm as U
from smp.kern.diagnostic import check_after_run, check_invariants
from smp.kern.kernel import FIRST_USER_TID, Kernel
from smp.kern.param import NBPG, VM_PROT_READ, VM_PROT_WRITE
from smp.kern.uvm_map import EF_COPY
from smp.kern.uvm_page import OWN_KMEM, OWN_PTP, PG_BUSY, uvm_pagealloc, uvm_pagefree
from smp.machine.boot import Machine
from smp.machine.cpu import Panic
from smp.machine.schedule import FREE, Lockstep
from smp.machine.trace import NullSink
from smp.rundir.format import Catalogue
from smp.rundir.reader import RunDir
from smp.rundir.writer import RunWriter
from smp.workload.interp import Interrupt, ProcessKind, ProgramLoad
from smp.workload.program import Assembler, Op

RW = VM_PROT_READ | VM_PROT_WRITE
PAGEDAEMON_TID = 0
KEPT_INVERSION = ("pvalloc_lock", "pmap_tmpptp_lock")   # pv stealing, as in 1.91 (pmap.py)
# pmap_growkernel's steal takes pv heads under pmap locks without pmap_main_lock (1.91)
KEPT_UNGUARDED = ("pmap", "pvh", "pmap_steal_ptp")


def kept(f: dict) -> bool:
    """A lock-order finding the 1.91 code is kept with (smp.kern.lock's docstring)."""
    return (f["held"], f["wanted"]) == KEPT_INVERSION or \
        (f["held"], f["wanted"], f["held_at"]) == KEPT_UNGUARDED


def idle_load(nprocs: int, amap_per_proc: int = 4096, files: Sequence[int] = (),
              interrupts: Sequence[Interrupt] = ()) -> ProgramLoad:
    """A load whose processes exist (pmap, map, proc slot) but never run on their own;
    ``files``: the sizes in pages of the files it declares; ``interrupts``: its sources."""
    a = Assembler()
    pc = a.pc
    a.emit(Op.EXIT)
    return ProgramLoad(name="harness", table=a.table(), kinds=[ProcessKind("proc", nprocs, pc)],
                       maxproc=nprocs, amap_per_proc=amap_per_proc, files=list(files),
                       interrupts=list(interrupts))


def configs(overrides: Sequence[str] = (), machine: str = "tiny", kernel: str = "default"):
    """Machine profile and kernel configuration with ``-o`` style overrides (DIAGNOSTIC on)."""
    return apply_overrides(load_machine(machine), load_kernel(kernel),
                           ["diagnostic=on", *overrides])


class Booted:
    """One booted, unforked machine with the kernel attached to cpu0 in this process."""

    def __init__(self, overrides: Sequence[str] = (), nprocs: int = 3,
                 amap_per_proc: int = 4096, machine: str = "tiny", kernel: str = "default",
                 files: Sequence[int] = (), interrupts: Sequence[Interrupt] = ()):
        m, k = configs(["ncpu=1", *overrides], machine, kernel)
        self.profile, self.config = m, k
        self.load = idle_load(nprocs, amap_per_proc, files, interrupts)
        self.kernel = Kernel(k, self.load)
        self.machine = Machine(m, self.kernel, NullSink())
        self.seg = None
        try:
            self.seg = self.machine.boot()       # (destroys the segment itself on failure)
            self.ci = self.machine.attach_local_cpu(self.seg)
        except BaseException:
            self.destroy()
            raise
        self.a = self.seg.arrays
        if interrupts:               # arrivals only when a test makes them (``interrupt``)
            self.a["isrc"][:, 4] = 1 << 60
            self.a["intr_glob"][0] = 1 << 60
        self.taken: list[int] = []
        self.nprocs = nprocs
        self._ring_seen = 0

    # -- life --------------------------------------------------------------------------

    def destroy(self) -> None:
        seg = getattr(self, "seg", None)
        if seg is not None:
            self.seg = None
            seg.destroy()

    @property
    def ux(self) -> np.ndarray:
        return self.a["uvmexp"]

    def free(self) -> int:
        return int(self.ux[U.FREE])

    # -- processes ------------------------------------------------------------------------

    def tid(self, i: int) -> int:
        """Thread id of the load's i-th process (0-based)."""
        return FIRST_USER_TID + i

    def pm(self, i: int) -> int:
        return int(self.a["vm_pmap"][self.tid(i)])

    def switch_to(self, i: int) -> int:
        """Run process i on cpu0: its pmap in %cr3, curproc set (kernel.run's prologue)."""
        tid = self.tid(i)
        self.ci.area["curproc"] = tid
        pmap.pmap_activate(self.pm(i))
        return tid

    def as_pagedaemon(self) -> contextlib.AbstractContextManager:
        """cpu0 runs the pagedaemon thread meanwhile (it may take the last page)."""
        @contextlib.contextmanager
        def cm():
            old = int(self.ci.area["curproc"])
            self.ci.area["curproc"] = PAGEDAEMON_TID
            try:
                yield
            finally:
                self.ci.area["curproc"] = old
        return cm()

    def mmap(self, i: int, npages: int, prot: int = RW, flags: int = uvm_map.EF_COPY,
             align: int = NBPG) -> int:
        va = uvm_map.uvm_mmap(self.tid(i), npages, prot, flags, align=align)
        assert va > 0, f"mmap failed: {va}"
        return va

    def fault(self, i: int, va: int, write: bool = True, wire: bool = False) -> int:
        from smp.kern.uvm_fault import uvm_fault

        tid = self.switch_to(i)
        return uvm_fault(tid, va, VM_PROT_WRITE if write else VM_PROT_READ, wire=wire)

    def touch(self, i: int, va: int, write: bool = True) -> None:
        """A memory reference through the MMU (trap.memref): TLB, page walk, trap."""
        from smp.kern import trap

        tid = self.switch_to(i)
        trap.memref(tid, va, write)

    def anon_page(self, i: int, va: int) -> int:
        """The resident page of process i's anon at ``va`` (-1 if none)."""
        tid = self.tid(i)
        lock.simple_lock(uvm_map.vm_map_lock + tid)         # => map locked
        ent = uvm_map.uvm_map_lookup(tid, va)
        lock.simple_unlock(uvm_map.vm_map_lock + tid)
        start, _end, _p, _f, base, *_ = uvm_map.entry(tid, ent)
        an = int(self.a["amap_slot"][base + (va - start) // NBPG])
        return int(self.a["an_page"][an]) if an >= 0 else -1

    def extract(self, i: int, va: int) -> int:
        return pmap.pmap_extract(self.pm(i), va)

    def unmap_keep_pages(self, i: int, va: int, npages: int = 1) -> None:
        """pmap_remove only: the pages stay resident in the amap (as after a steal)."""
        self.switch_to(i)
        pmap.pmap_remove(self.pm(i), va, va + npages * NBPG)

    def interrupt(self, n: int = 1, src: int = 0) -> None:
        """Make ``n`` arrivals of interrupt source ``src`` due now (its next one far off),
        as the interrupt controller would post them; the next delivery point serves
        them."""
        from smp.kern import intr

        isrc = self.a["isrc"]
        isrc[src, intr.S_NEXT] = 1 << 60
        self.a["isrc_pend"][src] += n
        self.ci.send_ipi(int(isrc[src, intr.S_CPU]), intr.I386_IPI_DEVINTR)
        self.a["intr_glob"][intr.IG_NEXT_DUE] = 0     # the controller looks at once

    def complete_pageouts(self) -> int:
        """Let every pageout in flight complete now: the disk interrupt (biodone) and the
        aiodone daemon's work, on cpu0; returns how many writes completed."""
        from smp.kern import uvm_pager

        n = int(np.count_nonzero(self.a["aio_state"] == uvm_pager.A_INFLIGHT))
        uvm_pager.poll_aio(1 << 61)
        self.ci.take_ipis()
        uvm_pager.uvm_aio_biodone(0)
        with pytest.raises(kern_synch.Sleep) as ei:         # aiodoned, till it sleeps
            uvm_pager.uvm_aiodone_daemon_step(1)
        lock.simple_unlock(ei.value.interlock)
        return n

    # -- free memory -------------------------------------------------------------------------

    def take_page(self) -> int:
        # the harness stands for another CPU's allocation, which tests make happen while
        # cpu0 is in the middle of the kernel holding locks: a try-lock (which always
        # succeeds here), so LOCKDEBUG does not see it ordered after cpu0's locks
        assert lock.simple_lock_try(uvm_km.kernel_object_lock)
        pg = uvm_pagealloc(OWN_KMEM, 0, 0, -1, 0)
        lock.simple_unlock(uvm_km.kernel_object_lock)
        if pg >= 0:
            self.a["pg_flags"][pg] &= ~PG_BUSY
            self.taken.append(pg)
        return pg

    def free_to(self, n: int) -> None:
        """Allocate pages away (or give them back) until uvmexp.free == n."""
        while self.free() < n and self.taken:
            self.give_back(1)
        with self.as_pagedaemon():           # only the pagedaemon may take the last page
            while self.free() > n:
                assert self.take_page() >= 0, "uvm_pagealloc refused while pages are free"
        assert self.free() == n, f"free {self.free()}, wanted {n}"

    def give_back(self, n: int | None = None) -> None:
        n = len(self.taken) if n is None else n
        for _ in range(n):
            pg = self.taken.pop()
            assert lock.simple_lock_try(uvm_km.kernel_object_lock)     # (see take_page)
            uvm_pagefree(pg)
            lock.simple_unlock(uvm_km.kernel_object_lock)

    # -- pv entries ----------------------------------------------------------------------------

    def hold_pv_entries(self) -> list[int]:
        """Take every free pv entry (and every unused pv page's) through pmap_alloc_pv,
        so the next pmap_enter must make a new pv page or steal.

        => free <= 1, so pmap_alloc_pvpage cannot make new pv pages meanwhile.
        """
        assert self.free() <= 1, "free memory would make new pv pages"
        held = []
        while (pve := pmap.pmap_alloc_pv(pmap.KERNEL_PMAP, pmap.ALLOCPV_TRY)) >= 0:
            held.append(pve)
        return held

    def release_pv_entries(self, held: list[int]) -> None:
        pmap.pmap_free_pvs(pmap.KERNEL_PMAP, held)

    # -- observing ----------------------------------------------------------------------------

    def cnt(self, name: str) -> int:
        """A per-CPU event counter, summed over CPUs (``A.cnt`` rows)."""
        return int(self.a["cnt"][:, getattr(U.counter, name)].sum())

    def counters(self) -> dict[str, int]:
        c = self.a["cnt"].sum(axis=0)
        return {n: int(c[i]) for i, n in enumerate(U.COUNTERS)}

    def delta(self, before: dict[str, int], times: bool = False) -> dict[str, int]:
        """The counters that changed; the ``*_ns`` ones (times, not events) with ``times``."""
        now = self.counters()
        return {k: now[k] - before[k] for k in now
                if now[k] != before[k] and (times or not k.endswith("_ns"))}

    def console(self) -> list[str]:
        """New console lines of cpu0 since the last call, without the time stamp."""
        ring = self.seg.rings[0]
        recs = self.seg.records[0]
        cap = int(ring["capacity"])
        head, tail = int(ring["head"]), int(ring["tail"])
        cat: Catalogue = subr_prf.CATALOGUE
        out = []
        for k in range(tail, head):
            r = recs[k & (cap - 1)]
            msgid = int(r["msgid"])
            m = cat.message(msgid)
            if m is None or m.kind == "hist":
                continue
            text = cat.render_message(msgid, [int(x) for x in r["args"]])
            who = "panic" if m.kind == "panic" else m.fn      # as the console renders it
            out.append(f"{who}: {text}" if who else text)
        ring["tail"] = head
        return out

    def check(self) -> list[str]:
        """The DIAGNOSTIC invariants, with the harness's own pages accounted as kmem."""
        return check_invariants(self.seg, self.machine.locks)

    def check_after(self):
        return check_after_run(self.seg, self.machine.locks)

    def sleep_queue(self, tid: int, s: kern_synch.Sleep) -> None:
        """Put ``tid`` on its sleep queue as the dispatcher would (``sleeps`` has already
        dropped the interlock)."""
        kern_synch.sleepq_enter(self.ci, tid, kern_synch.Sleep(s.chan, s.wmesg, s.timo_ns, -1))

    def held(self) -> int:
        return self.ci.core.nheld()

    def lock_order(self) -> list[dict]:
        """The lock-order findings so far (LOCKDEBUG; see smp.kern.lock.findings)."""
        return lock.findings(self.seg, self.machine.locks)[0]

    def forget_lock_order(self) -> None:
        """Drop cpu0's findings: for a test that replays "another CPU's" kernel code on
        cpu0 while cpu0 holds locks, which makes its held stack the two CPUs' together."""
        self.a["lock_findings_n"][0] = 0


def sleeps(fn: Callable[..., Any], *args: Any, **kw: Any) -> kern_synch.Sleep:
    """Call ``fn``; it must ltsleep.  Releases the interlock as the dispatcher would and
    checks the sleeper held no other lock (restart semantics)."""
    with pytest.raises(kern_synch.Sleep) as ei:
        fn(*args, **kw)
    s = ei.value
    if s.interlock >= 0:
        lock.simple_unlock(s.interlock)
    assert lock.lock_held(U.pagedaemon_lock) is False
    return s


def wmesg(s: kern_synch.Sleep) -> str:
    return subr_prf.CATALOGUE.strings[s.wmesg]


def panics(fn: Callable[..., Any], *args: Any, **kw: Any) -> str:
    """Call ``fn``; it must panic.  Returns the panic message."""
    with pytest.raises(Panic) as ei:
        fn(*args, **kw)
    return str(ei.value)


@contextlib.contextmanager
def booted(overrides: Sequence[str] = (), **kw: Any) -> Iterator[Booted]:
    """A booted machine for the ``with`` block; on a normal exit, no lock was taken out of
    order but for the kept 1.91 findings (``kept``)."""
    b = Booted(overrides, **kw)
    try:
        yield b
        if b.config.diagnostic:
            wrong = [f for f in b.lock_order() if not kept(f)]
            assert not wrong, f"locks taken out of order: {wrong}"
    finally:
        b.destroy()


# --- real machines --------------------------------------------------------------------------

class CheckedMachine(Machine):
    """A Machine that runs the DIAGNOSTIC checks on its segment after the CPUs stopped."""

    def _collect(self, seg, *args, **kw):
        self.violations = check_after_run(seg, self.locks)
        self.lock_order = lock.findings(seg, self.locks)[0]
        a = seg.arrays
        from smp.kern.diagnostic import summary_counts

        self.owners = summary_counts(seg)
        self.final_uvmexp = {n: int(a["uvmexp"][i]) for i, n in enumerate(U.UVMEXP_FIELDS)}
        self.final_pmaps_inuse = int(np.count_nonzero(a["pm_inuse"]))
        return super()._collect(seg, *args, **kw)


def run_program(program: Callable[[Assembler], int], nprocs: int, overrides: Sequence[str],
                machine: str = "tiny", kernel: str = "default", amap_per_proc: int = 4096,
                time_limit_s: float = 60.0, run_dir: Path | None = None, seed: int = 0,
                maxproc: int = 0, fail: Sequence[str] = (), lockstep: str | None = None,
                interrupts: Sequence[Interrupt] = ()):
    """Boot a real machine (forked CPUs) on a program of ``nprocs`` processes (``maxproc``
    alive at once, forks included) with failpoints ``fail`` (smp.kern.kern_fail specs)
    and ``interrupts`` sources, free-running or in ``lockstep`` ("random"/"pct",
    reproducible by ``seed``); returns (machine, outcome)."""
    m, k = configs(overrides, machine, kernel)
    a = Assembler()
    pc = program(a)
    load = ProgramLoad(name="kerntest", table=a.table(), kinds=[ProcessKind("hog", nprocs, pc)],
                       maxproc=max(nprocs, maxproc), amap_per_proc=amap_per_proc, seed=seed,
                       interrupts=list(interrupts))
    kern = Kernel(k, load, list(fail), seed=seed)
    with contextlib.ExitStack() as stack:
        if run_dir is None:
            run_dir = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="smp-kerntest-"))) / "run"
        writer = RunWriter.create(run_dir)
        schedule = Lockstep(lockstep, seed) if lockstep else FREE
        mach = CheckedMachine(m, kern, writer.trace_sink(merged_at_end=schedule.lockstep),
                              schedule, time_limit_s=time_limit_s)
        outcome = mach.run()
        mach.console = RunDir(run_dir).text("console.log")
    return mach, outcome


# --- scenarios several kernel test files share ----------------------------------------------

def stealable_setup(b, thief: int = 1, victims=(0,), wire=()):
    """Victims map one page each (a PTP apiece); the thief has a resident anon page
    whose 4 MiB region has no PTP any more -- its refault (case 1A) needs no data page,
    only a PTP, so it reaches pmap_alloc_ptp directly (§5.3)."""
    vas = {}
    for v in victims:
        va = b.mmap(v, 4)
        assert b.fault(v, va, wire=v in wire) == 0
        vas[v] = va
    tva = b.mmap(thief, 4)
    assert b.fault(thief, tva) == 0
    b.unmap_keep_pages(thief, tva)
    assert b.a["pm_npages"][b.pm(thief)] == 0
    return vas, tva


def drain_before_ptp(b, monkeypatch, to: int = 1) -> None:
    """Another CPU (or an interrupt) takes pages between uvm_fault's data-page
    allocation and pmap_enter's PTP allocation (NETBSD-FACTS §11 B)."""
    real = pmap.uvm_pagealloc

    def alloc(owner, *args):
        if owner == OWN_PTP and b.free() > to:
            b.free_to(to)
        return real(owner, *args)

    monkeypatch.setattr(pmap, "uvm_pagealloc", alloc)


def two_pages_one_ptp(b, i: int = 0):
    """Process i maps page 0 and keeps page 1 resident but unmapped, in one PTP:
    re-entering page 1 needs a pv entry and no PTP."""
    va = b.mmap(i, 4)
    assert b.fault(i, va) == 0 and b.fault(i, va + NBPG) == 0
    b.unmap_keep_pages(i, va + NBPG)
    assert b.extract(i, va) >= 0
    return va + NBPG, b.anon_page(i, va + NBPG)


def ptp_hog(nblocks: int, nprocs: int, rounds: int, stride: int = 1024):
    """One page per 4 MiB (``stride`` pages) over ``nblocks`` blocks: a PTP per data
    page, so page tables, which the pagedaemon cannot reclaim, fill memory."""
    def program(a: Assembler) -> int:
        pc = a.pc
        a.emit(Op.MMAP, 0, nblocks * 1024, 3, EF_COPY, -1, 0, 0)
        a.emit(Op.TOUCH, 0, 0, 0, stride, 1, 0, 0)
        a.emit(Op.BARRIER, 0, nprocs)
        a.begin(Op.REPEAT, rounds)
        a.emit(Op.TOUCH, 0, 0, 0, stride, 1, 0, 0)
        a.end()
        a.emit(Op.MUNMAP, 0)
        a.emit(Op.EXIT)
        return pc
    return program
