"""printf(), panic() and UVMHIST: the simulated kernel's console (subr_prf.c, uvm_stat.h).

Messages are declared once, at import, with their kernel function and C
format (``MSG = Message("pmap_steal_ptp", "stole PTP pa 0x%08x ...")``); the
id a message gets is what a CPU writes into its trace ring together with up
to six integer arguments, so every console line's template is exact and the
run directory can re-render it later.  A ``%s`` argument is an index into the
catalogue's string table: strings (process names, wait channels) are interned
before boot, since workers fork with a copy of the table.

A kernel subsystem declares its entries with ``Message`` and ``String``,
which only describe them; ``number`` gives them their ids when the kernel
numbers its subsystems, one module after another in the order of the
kernel's subsystem tuple (``smp.kern.kernel``), replacing each declaration
in the module by its id.  So the ids a run's records carry depend on that
tuple alone, never on the order Python happened to import the modules in,
and a run directory made by an earlier version replays byte-identically as
long as the tuple numbers the same entries in the same order.  A load, which
is not a kernel subsystem, declares with ``message`` and ``intern``, which
number at once (after the kernel's entries: the kernel numbers its own when
``smp.kern.kernel`` is imported).

``panic()`` is what it is in the kernel: the first CPU to panic records
itself in the segment header, halts every CPU, writes its message (waiting
briefly for ring space rather than dropping it) and unwinds its own stack
with :class:`~smp.machine.cpu.Panic`.

UVMHIST: ``UVMHIST_FUNC(fn)`` gives a function a call counter in the segment
(shared by all CPUs, so ``fn#call`` names one invocation machine-wide) and
``UVMHIST_LOG(msg, call, a, b, c, d)`` writes a hist record; both cost one
``if`` when the kernel is configured with ``hist = off``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

import numpy as np

from smp.machine.cpu import CPU, Panic
from smp.machine.layout import HDR_DTYPE, ArraySpec
from smp.rundir.format import Catalogue

CATALOGUE = Catalogue()
HIST_ON = False
_ci: CPU | None = None
_trace = None
_hist_funcs: list[str] = []
_hist_calls = None
_hist_calls_off = 0


class Message:
    """A console message or UVMHIST record of a kernel subsystem, until ``number``.

    ``late``: declared after the ids of the January 2001 kernel were pinned; numbered
    after every earlier entry (see ``number``), so those ids stay what they were.
    ``tag``: a class of console line the tools treat apart ("boot": the boot and
    shutdown messages of :mod:`smp.kern.autoconf`); recorded in the catalogue.
    """

    __slots__ = ("fn", "fmt", "kind", "hist", "late", "tag")

    def __init__(self, fn: str, fmt: str, kind: str = "printf", hist: str = "",
                 late: bool = False, tag: str = ""):
        self.fn, self.fmt, self.kind, self.hist = fn, fmt, kind, hist
        self.late = late
        self.tag = tag

    def __repr__(self) -> str:
        return f"Message({self.fn!r}, {self.fmt!r}) (not numbered: see subr_prf.number)"


class String:
    """A string-table entry (a wait channel's name) of a kernel subsystem, until ``number``;
    ``late`` as for Message."""

    __slots__ = ("s", "late")

    def __init__(self, s: str, late: bool = False):
        self.s = s
        self.late = late

    def __repr__(self) -> str:
        return f"String({self.s!r}) (not numbered: see subr_prf.number)"


def number(module: ModuleType, late: bool = False) -> None:
    """Give the ``Message``/``String`` declarations of ``module`` their ids, in the order
    the module defines them, replacing each (a module attribute, or a value of a
    module-level dict) by its id.  Entries numbered before are left alone, and so are the
    ``late`` ones unless ``late`` is given: the kernel numbers every module once for its
    original entries, then once more for the late ones, so an entry added to a module
    in the middle of the tuple does not move the ids of the modules after it."""
    def entry_id(v: object) -> object:
        if isinstance(v, (Message, String)) and v.late != late:
            return v
        if isinstance(v, Message):
            return message(v.fn, v.fmt, v.kind, v.hist, v.tag)
        if isinstance(v, String):
            return intern(v.s)
        return v

    for name, v in list(vars(module).items()):
        if isinstance(v, dict):
            for k, x in v.items():
                v[k] = entry_id(x)
        elif isinstance(v, (Message, String)):
            setattr(module, name, entry_id(v))


def message(fn: str, fmt: str, kind: str = "printf", hist: str = "", tag: str = "") -> int:
    """Declare a console message (or a UVMHIST record, ``kind="hist"``); returns its id."""
    _check_open(fmt)
    return CATALOGUE.add(fn, fmt, kind, hist, tag)


def intern(s: str) -> int:
    """Id of a string in the catalogue's table, for ``%s`` arguments (before boot)."""
    if s not in CATALOGUE.strings:
        _check_open(s)
    return CATALOGUE.intern(s)


_BOOT_PID = os.getpid()     # the parent: it imports the kernel before the CPUs fork


def _check_open(what: str) -> None:
    """A CPU (a forked worker) has its own copy of the catalogue: an entry added there
    would get an id the run directory's catalogue does not have."""
    if os.getpid() != _BOOT_PID:
        raise RuntimeError(f"catalogue entry {what!r} declared after boot: declare it at "
                           "import, in the parent (a kernel subsystem: in kernel.SUBSYSTEMS)")


def UVMHIST_FUNC(fn: str) -> int:  # noqa: N802 - NetBSD's name
    """Declare a function's UVMHIST call counter (at import); returns its index."""
    _hist_funcs.append(fn)
    return len(_hist_funcs) - 1


def declare(kernel, locks) -> list[ArraySpec]:
    """The segment arrays this module needs: UVMHIST call counters (one per UVMHIST_FUNC,
    all declared at import)."""
    return [ArraySpec("uvmhist_calls", np.dtype("<u4"), (max(1, len(_hist_funcs)),))]


def attach(ci: CPU, kernel) -> None:
    """Bind printf/panic to this CPU's trace ring (in the worker)."""
    global _ci, _trace, HIST_ON, _hist_calls, _hist_calls_off
    _ci = ci
    _trace = ci.core.trace
    HIST_ON = bool(kernel.config.hist)
    _hist_calls_off = ci.seg.layout.arrays["uvmhist_calls"][0]


@contextmanager
def console(trace: Callable[..., bool]) -> Iterator[None]:
    """Bind printf to ``trace`` (a ring writer with ``Core.trace``'s signature) while no
    CPU runs: the boot CPU's console in the parent, before the APs start (``main()``) and
    after every CPU has stopped (``cpu_reboot()``).  The binding before is restored."""
    global _trace
    old = _trace
    _trace = trace
    try:
        yield
    finally:
        _trace = old


def printf(msgid: int, *args: int) -> None:
    """Kernel printf: one console line (never blocks; a full ring counts a drop)."""
    _trace(msgid, 0, *args)


def UVMHIST_CALLED(fnidx: int) -> int:  # noqa: N802
    """Next call number of a UVMHIST function (0 when hist is off)."""
    if not HIST_ON:
        return 0
    return _ci.core.fadd32(_hist_calls_off + 4 * fnidx, 1) + 1


def UVMHIST_LOG(msgid: int, call: int, *args: int) -> None:  # noqa: N802
    if HIST_ON:
        _trace(msgid, call, *args)


def panic(msgid: int, *args: int) -> None:
    """Stop the machine: halt every CPU, print the message, unwind this CPU.

    => never returns.  The caller's held locks stay held (they are reported).
    """
    ci = _ci
    seg = ci.seg
    first = ci.core.cas32(_PANIC_CPU_OFF, 0, ci.cpu + 1)
    seg.halt()
    deadline = time.monotonic() + 1.0
    while not _trace(msgid, 0, *args) and time.monotonic() < deadline:
        time.sleep(0.001)          # the parent is draining; a panic line must not be lost
    text = CATALOGUE.render_message(msgid, list(args))
    raise Panic(text if first else f"{text} (while cpu{int(seg.hdr['panic_cpu']) - 1} "
                                   "was already panicking)")


_PANIC_CPU_OFF = HDR_DTYPE.fields["panic_cpu"][1]      # where panic() claims the machine
