"""Errors the simulator reports to its user rather than as tracebacks, and the exit statuses.

Every ``smp`` command ends with one of the statuses of :class:`Exit`; this table is the
only place they are defined (README and ``smp --help`` repeat it).  A CPU worker's own
exit status, seen only by the machine's supervisor, is a :class:`WorkerExit` -- distinct
numbers, so the two can never be confused.
"""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    """Exit statuses of the ``smp`` command."""

    OK = 0              # the run finished (also: at its time limit), or a tool succeeded
    INTERNAL = 1        # a bug in the simulator itself (a traceback is printed)
    BADINPUT = 2        # bad input: one line on stderr naming the file or key
    PANIC = 3           # the simulated kernel panicked
    INVARIANT = 4       # a DIAGNOSTIC invariant was violated after the run
    DEADLOCK = 5        # a deadlock or livelock (free mode or lockstep)
    CPU_DIED = 6        # a CPU worker process died (killed from outside, or crashed)
    WRITE_FAILED = 7    # the run directory could not be written (disk full, I/O error, ...)
    FOUND = 8           # smp explore: a schedule broke something (see reproducer.json)
    INTERRUPTED = 130   # Ctrl-C or SIGTERM


# How a run's status (summary.json "status") maps to the command's exit status.
STATUS_EXIT = {
    "done": Exit.OK, "timeout": Exit.OK, "panic": Exit.PANIC, "invariant": Exit.INVARIANT,
    "deadlock": Exit.DEADLOCK, "livelock": Exit.DEADLOCK, "cpu-died": Exit.CPU_DIED,
    "write-error": Exit.WRITE_FAILED, "interrupted": Exit.INTERRUPTED,
    "internal-error": Exit.INTERNAL,
}


def exit_for(status: str) -> Exit:
    return STATUS_EXIT.get(status, Exit.INTERNAL)


class WorkerExit(enum.IntEnum):
    """Exit statuses of a CPU worker process (machine-internal)."""

    DONE = 0            # left its dispatch loop at the end of the run
    INTERNAL = 70       # the simulator failed inside this worker (EX_SOFTWARE)
    PANIC = 71          # this CPU panicked
    HALTED = 72         # stopped by another CPU's panic or by the parent


class BadInput(Exception):
    """Bad user input.

    str(exc) is ONE line naming the file or key and the problem; the CLI prints
    `smp: <msg>` to stderr and exits 2.
    """


class WriteFailed(Exception):
    """A run directory could not be written (ENOSPC, EIO, EROFS, EDQUOT, ...).

    ``path`` is the file, ``errno``/``strerror`` the host's reason; str(exc) is one line.
    """

    def __init__(self, path: object, err: OSError):
        self.path = str(path)
        self.errno = err.errno
        self.strerror = err.strerror or str(err)
        super().__init__(f"{self.path}: cannot write: {self.strerror}")
