"""A synthetic load: processes that contend for locks and hand a token across CPUs.

This is the load the machine runs until the kernel's page-fault path exists.
It exercises every part of the machine for real:

* each of ``processes`` processes runs ``iterations`` iterations; one iteration
  is ``compute`` of CPU time outside the kernel, then one increment of one of
  ``buckets`` shared counters under that bucket's spin lock (lock contention,
  bounces, hold and wait times -- and an exact total to check at the end);
* every ``handoff_every`` iterations, processes pair up (pid 2k and 2k+1) and
  pass a token: the one whose turn it is not sleeps on its own channel with
  the pair's lock as interlock, and its partner wakes it -- usually from
  another CPU (sleep queues, wakeup, run queues, idle kicks);
* every process prints a console line when it starts and when it exits;
* ``panic_at`` (tests) makes the first process panic at that iteration while it
  holds a bucket lock, to exercise the machine's panic path;
* ``lock_order_bug`` (tests) makes even and odd processes take buckets 0 and 1 in
  opposite orders -- the deadlock that lockstep exploration must find.

A process keeps its place in ``p_reg[0]`` (iterations done), so it resumes
correctly on whichever CPU wakes it up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from smp.kern import kern_synch, lock, subr_prf
from smp.kern.kernel import LoadHooks
from smp.machine.cpu import CPU, EXITED, RUNNABLE
from smp.machine.layout import ArraySpec
from smp.machine.lockspace import LockSpace

QUANTUM = 32            # iterations per slice before the process goes back on the run queue
CHAN_BASE = 0x7000_0000  # sleep channels: one per process

MSG_PANIC = subr_prf.message("synth_step", "injected panic in pid %d at iteration %d", "panic")
MSG_START = subr_prf.message("", "synth: pid %d (%s) started on cpu%d")
MSG_DONE = subr_prf.message("", "synth: pid %d (%s): %d iterations, %d handoff sleeps")
WMESG = subr_prf.intern("handoff")


@dataclass
class SyntheticLoad(LoadHooks):
    """Parameters of the synthetic load (the ``[synthetic]`` table of a load script)."""

    name: str = "synthetic"
    nprocs: int = 16
    iterations: int = 2000
    buckets: int = 8
    handoff_every: int = 50
    compute_ns: int = 20_000
    seed: int = 0
    base: int = 0            # thread id of the first process (the kernel's threads come first)
    needs_vm = False         # no address spaces: the processes only take locks
    amap_per_proc = 16
    panic_at: int = 0        # fault injection: the first process panics at this iteration
    lock_order_bug: bool = False  # tests: even pids take buckets 0 then 1, odd 1 then 0

    # -- parent ----------------------------------------------------------------

    def declare(self, locks: LockSpace, machine: Any) -> list[ArraySpec]:
        self.bucket_lock = locks.declare("synth_bucket", "spin", self.buckets, "bucket[{i}]")
        npairs = max(1, self.nprocs // 2)
        self.pair_lock = locks.declare("synth_pair", "spin", npairs, "pair[{i}]")
        self.name_id = subr_prf.intern(self.name)
        return [
            ArraySpec("synth_count", np.dtype("<i8"), (self.buckets,)),
            ArraySpec("synth_turn", np.dtype("<i4"), (npairs,)),
            ArraySpec("synth_done", np.dtype("<i8"), (self.nprocs,)),
        ]

    def format(self, seg: Any, kernel: Any) -> None:
        ncpu = seg.layout.ncpu
        for i in range(self.nprocs):
            kernel.newproc(seg, i, pid=100 + i, name=self.name_id, kind=0, cpu=i % ncpu)

    # -- CPU -------------------------------------------------------------------

    def attach(self, ci: CPU) -> None:
        arr = ci.seg.arrays
        self.count = arr["synth_count"]
        self.turn = arr["synth_turn"]
        self.done = arr["synth_done"]
        self.proc = arr["proc"]

    def step(self, ci: CPU, gtid: int) -> int:
        """Run up to QUANTUM iterations of process ``gtid`` (a thread id)."""
        p = self.proc[gtid]
        tid = gtid - self.base
        reg = p["reg"]
        pid = int(p["pid"])
        i = int(reg[0])
        if i == 0 and not reg[1]:
            reg[1] = 1
            subr_prf.printf(MSG_START, pid, int(p["name"]), ci.cpu)
        end = min(self.iterations, i + QUANTUM)
        count = self.count
        big = ci.md.biglock
        while i < end:
            if self.handoff_every and i and i % self.handoff_every == 0 and reg[2] != i:
                self.handoff(ci, tid, i)       # may sleep: resumes at this iteration
                reg[2] = i
            if self.compute_ns:
                if ci.lockstep is not None:
                    ci.lockstep.point(self.compute_ns)
                    if ci.lockstep.progress():
                        break                          # past the time limit
                else:
                    t = time.perf_counter_ns() + self.compute_ns
                    while time.perf_counter_ns() < t:
                        pass
            b = (pid * 7 + i + self.seed) % self.buckets
            if big:
                lock.kernel_lock()                     # trap(): KERNEL_PROC_LOCK
            if self.lock_order_bug and self.buckets > 1:
                self._both_buckets(tid)          # a deliberate lock-order reversal
            lock.simple_lock(self.bucket_lock + b)
            if self.panic_at and tid == 0 and i == self.panic_at:
                subr_prf.panic(MSG_PANIC, pid, i)       # with the bucket lock held
            count[b] += 1
            lock.simple_unlock(self.bucket_lock + b)
            if big:
                lock.kernel_unlock()
            i += 1
            reg[0] = i
            self.done[tid] = i
        if i < self.iterations:
            return RUNNABLE
        self.exit_handoff(tid)
        subr_prf.printf(MSG_DONE, pid, int(p["name"]), i, int(p["nsleep"]))
        return EXITED

    def _both_buckets(self, tid: int) -> None:
        """Take buckets 0 and 1 in an order that depends on the pid: an AB-BA deadlock."""
        first, second = (0, 1) if tid % 2 == 0 else (1, 0)
        lock.simple_lock(self.bucket_lock + first)
        lock.simple_lock(self.bucket_lock + second)
        lock.simple_unlock(self.bucket_lock + second)
        lock.simple_unlock(self.bucket_lock + first)

    def handoff(self, ci: CPU, tid: int, i: int) -> None:
        """Pass the pair's token to the partner, or sleep until it is ours."""
        partner = tid ^ 1
        if partner >= self.nprocs:
            return
        pair = tid // 2
        lk = self.pair_lock + pair
        if ci.md.biglock:
            lock.kernel_lock()          # a system call: the sleep gives the big lock up
        lock.simple_lock(lk)
        if int(self.turn[pair]) in (tid % 2, 2):     # 2: the partner has exited
            if self.turn[pair] != 2:
                self.turn[pair] = partner % 2
            lock.simple_unlock(lk)
            kern_synch.wakeup(CHAN_BASE + partner)
            if ci.md.biglock:
                lock.kernel_unlock()
            return
        # not our turn: sleep; the interlock is released once we are queued
        kern_synch.ltsleep(CHAN_BASE + tid, WMESG, 0, lk)

    def exit_handoff(self, tid: int) -> None:
        """An exiting process leaves the token with its partner for good."""
        partner = tid ^ 1
        if partner >= self.nprocs:
            return
        pair = tid // 2
        lock.simple_lock(self.pair_lock + pair)
        self.turn[pair] = 2
        lock.simple_unlock(self.pair_lock + pair)
        kern_synch.wakeup(CHAN_BASE + partner)

    # -- reports ---------------------------------------------------------------

    def progress(self, seg: Any) -> tuple[float, float]:
        return float(seg.arrays["synth_done"].sum()), float(self.nprocs * self.iterations)

    def summary(self, seg: Any) -> dict:
        total = int(seg.arrays["synth_count"].sum())
        done = int(seg.arrays["synth_done"].sum())
        return {"kind": "synthetic", "processes": self.nprocs, "iterations": self.iterations,
                "increments": total, "iterations_done": done,
                "counters_consistent": total == done}
