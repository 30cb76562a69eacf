"""Kernel locks: simple_lock, spinlockmgr and the big kernel lock (kern_lock.c).

The functions a kernel module calls are the atomic core's own methods, bound
to this CPU when it attaches (``attach``), so the uncontended path adds no
Python frame and the core sees the kernel function that called it as the
lock's call site -- exactly what lockstat's "Caller" column shows.  Call
them through the module (``lock.simple_lock(id)``), never ``from ... import``
them: the names are rebound in each worker.

    simple_lock(id)        spin until held               (simple_lock)
    simple_lock_try(id)    -> bool                       (simple_lock_try)
    simple_unlock(id)                                    (simple_unlock)
    spinlockmgr_shared(id) / spinlockmgr_exclusive(id)   (spinlockmgr LK_SHARED / LK_EXCLUSIVE)
    spinlockmgr_release_shared(id) / spinlockmgr_release_exclusive(id)
    kernel_lock() / kernel_unlock()                      (KERNEL_LOCK / KERNEL_UNLOCK; recursive)
    lock_held(id) -> bool                                (LOCKDEBUG: "=> caller holds")

Lock ids come from ``declare`` calls each subsystem makes before boot; the
class names are NetBSD's (``pmap_main_lock``, ``pmaps_lock``, ``pvalloc_lock``, ...).
"""

from __future__ import annotations

import functools

from smp.machine import _atomic
from smp.machine.layout import ArraySpec
from smp.machine.lockspace import LockSpace

Halted = _atomic.Halted
LockError = _atomic.LockError

def _unattached(*_args):  # pragma: no cover - a kernel bug, before cpu_attach
    raise RuntimeError("lock operation before cpu_attach()")


simple_lock = simple_lock_try = simple_unlock = _unattached
spinlockmgr_shared = spinlockmgr_exclusive = spinlockmgr_try_exclusive = _unattached
spinlockmgr_release_shared = spinlockmgr_release_exclusive = _unattached
lock_held = _unattached
KERNEL_LOCK_ID = -1


kernel_lock = kernel_unlock = _unattached   # KERNEL_LOCK / KERNEL_UNLOCK (recursive)


def declare(kernel, locks: LockSpace) -> list[ArraySpec]:
    """The big kernel lock's word (recursive spin lock, class kernel_lock)."""
    declare_kernel_lock(locks)
    return []


def declare_kernel_lock(space: LockSpace) -> int:
    """Reserve the big kernel lock's word (recursive spin lock, class kernel_lock)."""
    global KERNEL_LOCK_ID
    KERNEL_LOCK_ID = space.declare("kernel_lock", "spin-recursive")
    return KERNEL_LOCK_ID


def attach(ci, kernel) -> None:
    """Bind this worker's lock functions to its CPU's atomic core."""
    global simple_lock, simple_lock_try, simple_unlock, lock_held
    global spinlockmgr_shared, spinlockmgr_exclusive, spinlockmgr_try_exclusive
    global spinlockmgr_release_shared, spinlockmgr_release_exclusive
    global kernel_lock, kernel_unlock
    core = ci.core
    simple_lock = core.lock
    simple_lock_try = core.trylock
    simple_unlock = core.unlock
    spinlockmgr_shared = core.rlock
    spinlockmgr_exclusive = core.wlock
    spinlockmgr_try_exclusive = core.trywlock
    spinlockmgr_release_shared = core.runlock
    spinlockmgr_release_exclusive = core.wunlock
    lock_held = core.held
    if KERNEL_LOCK_ID >= 0:
        # partial objects are C callables: the caller of kernel_lock() stays the site
        kernel_lock = functools.partial(core.lock, KERNEL_LOCK_ID)
        kernel_unlock = functools.partial(core.unlock, KERNEL_LOCK_ID)
