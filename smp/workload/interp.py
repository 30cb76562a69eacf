"""The program interpreter: what a simulated process does on a CPU, one slice at a time.

``ProgramLoad`` is a load for the kernel (smp.kern.kernel.Load): it declares
the program table and the per-process state arrays, creates the initial
processes at boot, and runs a process for a slice when its CPU schedules it:
operations are turned into system calls (mmap, munmap, mlock, fork, exit,
kernel allocations, file I/O) and memory references (``trap.memref``).  A
slice ends after ``QUANTUM`` memory references or operations, at a sleep, or
at exit.  See smp.workload.program for the operations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from smp.kern import (
    intr,
    kern_exec,
    kern_physio,
    kern_synch,
    lock,
    subr_prf,
    trap,
    uvm_km,
    uvm_map,
)
from smp.kern.kernel import LoadHooks
from smp.kern.param import NBPG, VM_PROT_READ, VM_PROT_WRITE
from smp.machine.cpu import CPU, EXITED, RUNNABLE
from smp.machine.layout import ArraySpec
from smp.workload.program import NSLOTS, NSTACK, OPW, Op, mix

QUANTUM = 256
KMEM_PER_PROC = 512       # kernel allocations one process may hold at once
CHAN_BARRIER = 0xB000_0000
CHAN_SLEEP = 0xB100_0000
W_BARRIER = subr_prf.intern("barrier")
W_NANOSLEEP = subr_prf.intern("nanoslp")
MSG_ENOMEM = subr_prf.message("", "pid %d (%s): mmap of %d pages failed: error %d")
MSG_FORKFAIL = subr_prf.message("", "pid %d (%s): fork failed: error %d")
KM_KINDS = ("alloc1", "malloc", "malloc_pageable")


@dataclass(frozen=True)
class Interrupt:
    """A network interface of the load: packets of ``size`` bytes every ``period_ns`` on
    ``cpu`` (-1: one such source on every CPU), each freed ``hold_ns`` after it came."""

    cpu: int
    period_ns: int
    size: int
    hold_ns: int


@dataclass
class ProcessKind:
    """``count`` processes named ``name`` start running the program at ``pc``."""

    name: str
    count: int
    pc: int
    uid: int = 0
    cpu: int = -1             # -1: spread over the CPUs


@dataclass
class ProgramLoad(LoadHooks):
    """A compiled load script: program table, process kinds, sizes."""

    name: str
    table: np.ndarray
    kinds: list[ProcessKind]
    maxproc: int                  # user processes alive at once, forks included
    files: list[int] = field(default_factory=list)     # file sizes in pages
    amap_per_proc: int = 1024     # anonymous pages one process may map
    seed: int = 0
    interrupts: list[Interrupt] = field(default_factory=list)   # [[interrupt]] sources

    @property
    def nprocs(self) -> int:
        return self.maxproc

    # -- parent ------------------------------------------------------------------

    def declare(self, locks: Any, machine: Any) -> list[ArraySpec]:
        i8, i4 = np.dtype("<i8"), np.dtype("<i4")
        self.names = [subr_prf.intern(k.name) for k in self.kinds]
        n = self.base + self.maxproc      # indexed by thread id
        return [
            ArraySpec("prog", i8, self.table.shape),
            ArraySpec("pslot", i8, (n, NSLOTS, 2)),
            ArraySpec("pstack", i8, (n, NSTACK)),
            ArraySpec("pkmem", i8, (n, KMEM_PER_PROC, 3)),
            ArraySpec("barrier", i4, (64,)),
            ArraySpec("load_glob", i8, (8,)),
        ]

    def format(self, seg: Any, kernel: Any) -> None:
        seg.arrays["prog"][:] = self.table
        ncpu = seg.layout.ncpu
        t = 0
        for k, kind in enumerate(self.kinds):
            for _ in range(kind.count):
                cpu = kind.cpu if kind.cpu >= 0 else t % ncpu
                kernel.newproc(seg, t, pid=100 + t, name=self.names[k], kind=k, cpu=cpu,
                               pc=kind.pc, uid=kind.uid)
                t += 1

    @property
    def initial(self) -> int:
        return sum(k.count for k in self.kinds)

    # -- CPU ---------------------------------------------------------------------

    def attach(self, ci: CPU) -> None:
        a = ci.seg.arrays
        self.prog = memoryview(a["prog"].reshape(-1))
        self.pslot = memoryview(a["pslot"].reshape(-1))
        self.pstack = memoryview(a["pstack"].reshape(-1))
        self.kmem = memoryview(a["pkmem"].reshape(-1))
        self.proc = a["proc"]
        self.bar = memoryview(a["barrier"])
        self.glob = memoryview(a["load_glob"])
        self.kernel = ci.md.kernel

    def step(self, ci: CPU, tid: int) -> int:
        """Run process ``tid`` for one slice (=> its pmap is active on this CPU)."""
        p = self.proc[tid]
        reg = p["reg"]
        prog = self.prog
        budget = QUANTUM
        pc = int(p["pc"])
        while budget > 0:
            if ci.ipi_pending() or intr.due():
                intr.at_point()                  # interrupts between operations
            b = pc * OPW
            op = prog[b]
            if op == Op.TOUCH:
                budget = self._touch(ci, tid, p, reg, b, budget)
                if budget < 0:
                    return RUNNABLE
                pc += 1
            elif op == Op.COMPUTE:
                if ci.lockstep is not None:
                    ci.lockstep.point(prog[b + 1])     # user time passes, virtually
                else:
                    t = time.perf_counter_ns() + prog[b + 1]
                    while time.perf_counter_ns() < t:
                        if ci.ipi_pending() or intr.due():
                            intr.at_point()      # user time is interruptible
                budget -= QUANTUM // 4
                pc += 1
            elif op == Op.REPEAT or op == Op.DURATION:
                d = tid * NSTACK + int(reg[3])
                if op == Op.REPEAT:
                    self.pstack[d] = prog[b + 1]
                else:
                    self.pstack[d] = ci.core.now() + prog[b + 1]
                reg[3] += 1
                pc += 1
            elif op == Op.END:
                begin = prog[b + 1]
                d = tid * NSTACK + int(reg[3]) - 1
                if prog[begin * OPW] == Op.REPEAT:
                    self.pstack[d] -= 1
                    again = self.pstack[d] > 0
                else:
                    again = ci.core.now() < self.pstack[d]
                if again:
                    pc = begin + 1
                else:
                    reg[3] -= 1
                    pc += 1
                budget -= 1
            elif op == Op.EXIT:
                p["pc"] = pc
                return EXITED
            else:
                p["pc"] = pc
                self._syscall(ci, tid, p, reg, op, b)
                pc += 1
                budget -= 8
            p["pc"] = pc
            reg[0] = 0
            if ci.lockstep is not None:
                if ci.lockstep.progress():
                    break                       # past the time limit: back to dispatch
                ci.lockstep.point()             # an operation boundary
        p["pc"] = pc
        return RUNNABLE

    # -- memory references ---------------------------------------------------------

    def _touch(self, ci, tid, p, reg, b, budget) -> int:
        prog = self.prog
        slot, first, npages, stride = prog[b + 1], prog[b + 2], prog[b + 3], prog[b + 4]
        write, pattern, count = prog[b + 5], prog[b + 6], prog[b + 7]
        base = (tid * NSLOTS + slot) * 2
        va0, size = self.pslot[base], self.pslot[base + 1]
        if va0 == 0:
            return budget                        # not mapped: nothing to touch
        if npages <= 0 or first + npages > size:
            npages = max(0, size - first)
        stride = max(1, stride)
        total = count if count > 0 else -(-npages // stride)
        i = int(reg[0])
        pid = int(p["pid"])
        memref = trap.memref
        seed = self.seed
        ls = ci.lockstep
        while i < total:
            if pattern == 1:
                page = first + mix(seed, pid, b, i) % max(1, npages)
            else:
                page = first + (i * stride) % max(1, npages)
            reg[0] = i                           # a sleep restarts at this reference
            memref(tid, va0 + page * NBPG, bool(write))
            i += 1
            if ls is not None and ls.progress():
                budget = 0                       # past the time limit: end the slice
            budget -= 1
            if budget <= 0 and i < total:
                reg[0] = i
                return -1
        reg[0] = 0
        return budget

    # -- system calls -------------------------------------------------------------------

    def _syscall(self, ci, tid, p, reg, op, b) -> None:
        prog = self.prog
        big = ci.md.biglock
        if big:
            lock.kernel_lock()                   # KERNEL_PROC_LOCK: syscall()
        try:
            if op == Op.MMAP:
                self._mmap(tid, p, b)
            elif op == Op.MUNMAP:
                base = (tid * NSLOTS + prog[b + 1]) * 2
                if self.pslot[base]:
                    uvm_map.uvm_unmap(tid, self.pslot[base])
                    self.pslot[base] = self.pslot[base + 1] = 0
            elif op == Op.MLOCK or op == Op.MUNLOCK:
                self._mlock(ci, tid, reg, prog[b + 1], op == Op.MLOCK, prog[b + 2],
                            prog[b + 3], prog[b + 4])
            elif op == Op.FORK:
                for _ in range(max(1, prog[b + 2]) - int(reg[1])):
                    child = self.kernel.fork1(ci, tid, prog[b + 1])
                    if child < 0:                # EAGAIN or ENOMEM: no child this time
                        subr_prf.printf(MSG_FORKFAIL, int(p["pid"]), int(p["name"]), -child)
                    reg[1] += 1                  # a sleep in the next fork keeps these
                reg[1] = 0
            elif op == Op.KMALLOC:
                self._kmalloc(tid, prog[b + 1], prog[b + 2], prog[b + 3])
            elif op == Op.KFREE:
                self._kfree(tid, prog[b + 1])
            elif op == Op.READ or op == Op.WRITE:
                from smp.kern import uvm_bio
                uvm_bio.ubc_rw(tid, prog[b + 1], prog[b + 2], prog[b + 3], op == Op.WRITE, reg)
            elif op == Op.SLEEP:
                if not reg[2]:
                    reg[2] = 1
                    kern_synch.ltsleep(CHAN_SLEEP + tid, W_NANOSLEEP, prog[b + 1])
                reg[2] = 0
            elif op == Op.BARRIER:
                self._barrier(tid, reg, prog[b + 1], prog[b + 2])
            elif op == Op.EXEC:
                self._exec(tid, b)
            elif op == Op.RAWREAD:
                base = (tid * NSLOTS + prog[b + 1]) * 2
                if self.pslot[base]:
                    kern_physio.physio_read(tid, self.pslot[base], prog[b + 2], prog[b + 3],
                                            reg)
        finally:
            if big and lock.lock_held(lock.KERNEL_LOCK_ID):
                lock.kernel_unlock()

    def _mmap(self, tid, p, b) -> None:
        prog = self.prog
        slot, npages, prot, flags = prog[b + 1], prog[b + 2], prog[b + 3], prog[b + 4]
        base = (tid * NSLOTS + slot) * 2
        if self.pslot[base]:
            return
        va = uvm_map.uvm_mmap(tid, npages, prot, flags, prog[b + 5], prog[b + 6], prog[b + 7])
        if va < 0:
            subr_prf.printf(MSG_ENOMEM, int(p["pid"]), int(p["name"]), npages, -va)
            return
        self.pslot[base] = va
        self.pslot[base + 1] = npages

    def _exec(self, tid, b) -> None:
        """execve: the kernel replaces the address space; the program's regions become the
        new text and data (every other mmap region is gone)."""
        prog = self.prog
        fid, text, data, args, tslot, dslot = (prog[b + k] for k in range(1, 7))
        tva, dva = kern_exec.execve(tid, fid, text, data, args)
        n = NSLOTS * 2
        for i in range(tid * n, (tid + 1) * n):
            self.pslot[i] = 0
        base = (tid * NSLOTS + tslot) * 2
        self.pslot[base], self.pslot[base + 1] = tva, text
        if dslot >= 0:
            base = (tid * NSLOTS + dslot) * 2
            self.pslot[base], self.pslot[base + 1] = dva, data

    def _mlock(self, ci, tid, reg, slot, wire, first, count, stride) -> None:
        """mlock/munlock of a whole region, or of every ``stride``-th page of a range.

        A whole region is 1.5's sys_mlock: refused up front with EAGAIN when its pages
        would take ``uvmexp.wired`` past ``wiredmax``, else every page faulted in with a
        wiring fault (uvm_map_pageable -> uvm_fault_wire), then the entry marked wired.
        A range is the same, one page at a time, the way a program calling
        mlock(addr, 4096) page by page would (the map lists those pages, see uvm_map);
        the first page refused ends it.  A fault that fails unwires what the call wired
        (uvm_fault_wire's unwind) and kills the process.
        """
        from smp.kern.uvm_fault import uvm_fault

        base = (tid * NSLOTS + slot) * 2
        va, npages = self.pslot[base], self.pslot[base + 1]
        if not va:
            return
        whole = count <= 0
        if whole:
            first, count, stride = 0, npages, 1
        stride = max(1, stride)
        pages = range(first, min(npages, first + count * stride), stride)
        if not wire:
            if whole:
                uvm_map.set_wired(tid, va, False)
            else:
                uvm_map.unwire_pages(tid, [va + p * NBPG for p in pages])
            return
        if whole and uvm_map.is_wired(tid, va):
            return                               # wired already: nothing to fault
        i = int(reg[0])
        if whole and i == 0 and uvm_map.mlock_check(len(pages)):
            return                               # EAGAIN: over wiredmax
        # uvm_map_pageable (1.5) calls uvm_fault_wire with the entry's protection: a
        # read-only mapping wires with read faults (no copy-on-write, no new page)
        access = uvm_map.entry_protection(tid, va) & (VM_PROT_READ | VM_PROT_WRITE)
        while i < len(pages):                    # uvm_fault_wire: fault every page in
            reg[0] = i
            v = va + pages[i] * NBPG
            if not whole:
                if uvm_map.wired_index(tid, v) >= 0:
                    i += 1
                    continue                     # wired already by an earlier mlock
                if uvm_map.mlock_check(1):
                    break                        # this page's mlock: EAGAIN
            r = uvm_fault(tid, v, access, wire=True)
            if not r and not whole and uvm_map.mlock_page_done(tid, v):
                uvm_map.uvm_vsunlock(tid, [v])   # the map's list is full: ENOMEM
                break
            if r:
                if whole:
                    uvm_map.set_wired(tid, va, False, unwind=True)
                reg[0] = 0
                trap.trap_fatal(tid, v, r)
            i += 1
        reg[0] = 0
        if whole:
            uvm_map.set_wired(tid, va, True)

    def _kmalloc(self, tid, slot, npages, kind) -> None:
        """Allocate kernel memory and keep it under the region's name.

        A region can hold several allocations (a program opening socket after
        socket); kfree frees them all, and exit frees whatever is left.
        """
        free = [i for i in range(KMEM_PER_PROC) if not self.kmem[self._k(tid, i)]]
        if not free:
            return
        if kind == 0:
            va = uvm_km.uvm_km_alloc1(uvm_km.KERNEL_MAP, npages)
        else:
            va = uvm_km.uvm_km_kmemalloc(uvm_km.KMEM_MAP, uvm_km.KOBJ_KMEM, npages) if kind == 1 \
                else uvm_km.uvm_km_kmemalloc(uvm_km.KERNEL_MAP, uvm_km.KOBJ_KERNEL, npages)
        if va > 0:
            k = self._k(tid, free[0])
            self.kmem[k], self.kmem[k + 1], self.kmem[k + 2] = va, npages, slot

    @staticmethod
    def _k(tid: int, i: int) -> int:
        return (tid * KMEM_PER_PROC + i) * 3

    def _kfree(self, tid, slot) -> None:
        """Free the process's kernel allocations of ``slot`` (-1: all of them)."""
        for i in range(KMEM_PER_PROC):
            k = self._k(tid, i)
            if self.kmem[k] and (slot < 0 or self.kmem[k + 2] == slot):
                uvm_km.uvm_km_free(self.kmem[k], self.kmem[k + 1])
                self.kmem[k] = self.kmem[k + 1] = 0

    def _barrier(self, tid, reg, bid, n) -> None:
        if not reg[2]:
            reg[2] = 1
            lock.simple_lock(self.kernel.sched_lock)
            self.bar[bid] += 1
            lock.simple_unlock(self.kernel.sched_lock)
        if self.bar[bid] + self.glob[0] >= n:    # arrived + killed: nobody waits forever
            reg[2] = 0
            kern_synch.wakeup(CHAN_BARRIER + bid)
            return
        kern_synch.ltsleep(CHAN_BARRIER + bid, W_BARRIER, 50_000_000)

    def forked(self, parent: int, child: int) -> None:
        """The child inherits the parent's regions (its map is a copy)."""
        n = NSLOTS * 2
        self.pslot[child * n:(child + 1) * n] = self.pslot[parent * n:(parent + 1) * n]
        d = child * NSTACK
        self.pstack[d:d + NSTACK] = self.pstack[parent * NSTACK:(parent + 1) * NSTACK]

    def exited(self, ci, tid) -> None:
        self._kfree(tid, -1)                     # close(): the kernel frees its buffers
        n = NSLOTS * 2
        for i in range(tid * n, (tid + 1) * n):
            self.pslot[i] = 0

    def killed(self, ci, tid) -> None:
        """A process of this load died of a signal (barriers stop counting on it)."""
        self.glob[0] += 1

    # -- reports ---------------------------------------------------------------------

    def progress(self, seg: Any) -> tuple[float, float]:
        from smp.kern.kernel import KG_EXITED, KG_STARTED
        g = seg.arrays["kglob"]
        return float(g[KG_EXITED]), float(max(1, g[KG_STARTED]))

    def summary(self, seg: Any) -> dict:
        return {"kind": "program", "name": self.name, "process_kinds": len(self.kinds),
                "initial_processes": self.initial}


