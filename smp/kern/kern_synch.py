"""Sleep and wakeup (kern_synch.c): ltsleep(), wakeup(), the sleep queues.

A thread that must wait calls ``ltsleep(chan, wmesg, timo, interlock)``,
which does not return: it raises :class:`Sleep`, unwinding the thread's
kernel stack back to its slice in the kernel's dispatcher.  There the thread
is put on the sleep queue of ``chan`` under ``sched_lock`` and only *then* is
the interlock released -- the atomic unlock-and-sleep that keeps a wakeup
from slipping in between (ltsleep with PNORELOCK).  When it is woken, the
operation it was doing starts again from its beginning, as NetBSD's
``uvm_fault`` does after ``uvm_wait`` ("goto ReFault"); so

    => caller has released every lock except ``interlock``, and has left its
       state so that running the operation again is correct.

``wakeup(chan)`` makes every thread asleep on ``chan`` runnable again on the
CPU it last ran on (``setrunqueue``), kicking that CPU if it is idle.
Sleep queues are NetBSD's: ``SLPQUE_TABLESIZE`` buckets hashed by channel,
threads linked through ``p_slpnext``.  Timed sleeps are ended by the primary
CPU's clock tick (``endtsleep``).
"""

from __future__ import annotations

import numpy as np

from smp.kern import lock
from smp.kern.kern_proc import SRUN, SSLEEP
from smp.machine.cpu import CPU
from smp.machine.layout import ArraySpec

SLPQUE_TABLESIZE = 128


class Sleep(Exception):  # noqa: N818 - it is a control transfer, not an error
    """Unwinds a thread that called ltsleep() to its dispatcher."""

    def __init__(self, chan: int, wmesg: int, timo_ns: int, interlock: int):
        super().__init__(chan, wmesg)
        self.chan = chan
        self.wmesg = wmesg
        self.timo_ns = timo_ns
        self.interlock = interlock


def declare(kernel, locks) -> list[ArraySpec]:
    """The sleep queues' heads (the threads' links are in proc[])."""
    return [ArraySpec("slpque", np.dtype("<i4"), (SLPQUE_TABLESIZE,))]


def format(seg, kernel) -> None:
    seg.arrays["slpque"][:] = -1


def ltsleep(chan: int, wmesg: int, timo_ns: int = 0, interlock: int = -1) -> None:
    """Sleep on ``chan`` (restart semantics, see the module docstring); never returns."""
    raise Sleep(chan, wmesg, timo_ns, interlock)


def sleepq_enter(ci: CPU, tid: int, s: Sleep) -> None:
    """Queue thread ``tid`` on ``s.chan``, then drop the interlock (in the dispatcher)."""
    proc = ci.md.proc
    slpque = ci.md.slpque
    lock.simple_lock(ci.sched_lock)
    p = proc[tid]
    p["stat"] = SSLEEP
    p["wchan"] = s.chan
    p["wmesg"] = s.wmesg
    now = ci.core.now()
    p["deadline"] = now + s.timo_ns if s.timo_ns else 0
    p["slptime0"] = now                      # p_slptime counts from here (uvm_glue)
    p["nsleep"] += 1
    b = s.chan % SLPQUE_TABLESIZE
    p["slpnext"] = slpque[b]
    slpque[b] = tid
    lock.simple_unlock(ci.sched_lock)
    if s.interlock >= 0:
        lock.simple_unlock(s.interlock)


def _unsleep(ci: CPU, tid: int) -> None:
    """Remove ``tid`` from its sleep queue (=> sched_lock held)."""
    if lock.DIAGNOSTIC:
        lock.KASSERT_LOCKED(ci.sched_lock)
    proc = ci.md.proc
    slpque = ci.md.slpque
    b = int(proc[tid]["wchan"]) % SLPQUE_TABLESIZE
    prev, t = -1, int(slpque[b])
    while t >= 0:
        nxt = int(proc[t]["slpnext"])
        if t == tid:
            if prev < 0:
                slpque[b] = nxt
            else:
                proc[prev]["slpnext"] = nxt
            break
        prev, t = t, nxt
    p = proc[tid]
    p["slpnext"] = -1
    p["wchan"] = 0
    p["deadline"] = 0
    p["stat"] = SRUN


def wakeup(chan: int) -> int:
    """Make every thread asleep on ``chan`` runnable; returns how many woke."""
    ci = _ci
    proc = ci.md.proc
    slpque = ci.md.slpque
    woken = []
    lock.simple_lock(ci.sched_lock)
    try:
        b = chan % SLPQUE_TABLESIZE
        prev, t = -1, int(slpque[b])
        while t >= 0:
            p = proc[t]
            nxt = int(p["slpnext"])
            if int(p["wchan"]) == chan:
                if prev < 0:
                    slpque[b] = nxt
                else:
                    proc[prev]["slpnext"] = nxt
                p["slpnext"] = -1
                p["wchan"] = 0
                p["deadline"] = 0
                p["stat"] = SRUN
                ci.setrunqueue(t, int(p["cpu"]), locked=True)
                woken.append(int(p["cpu"]))
            else:
                prev = t
            t = nxt
    finally:
        lock.simple_unlock(ci.sched_lock)
    return len(woken)


def endtsleep(ci: CPU) -> int:
    """End timed sleeps whose deadline passed (the primary CPU's clock tick)."""
    proc = ci.md.proc
    now = ci.core.now()
    due = np.nonzero((proc["stat"] == SSLEEP) & (proc["deadline"] > 0)
                     & (proc["deadline"] <= now))[0]
    n = 0
    if len(due):
        lock.simple_lock(ci.sched_lock)
        try:
            for tid in due:
                tid = int(tid)
                p = proc[tid]
                if int(p["stat"]) == SSLEEP and 0 < int(p["deadline"]) <= now:
                    _unsleep(ci, tid)
                    ci.setrunqueue(tid, int(p["cpu"]), locked=True)
                    n += 1
        finally:
            lock.simple_unlock(ci.sched_lock)
    return n


_ci: CPU | None = None


def attach(ci: CPU, kernel) -> None:
    global _ci
    _ci = ci
