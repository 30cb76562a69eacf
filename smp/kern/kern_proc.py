"""The process table (kern_proc.c, sys/proc.h): simulated processes and kernel threads.

Every thread the CPUs schedule -- user processes from the load script and
kernel threads such as the pagedaemon -- is one row of ``proc[]`` in the
segment, so any CPU can run it, put it to sleep or wake it.  The row index is
the thread id the machine's run queues carry.  ``p_stat`` takes NetBSD's
values; a row whose ``pid`` is 0 is free.

The load interpreter keeps a process's position in its program in the row as
well (``pc`` and four registers), which is what lets a process that slept on
one CPU continue on another.

NetBSD counts ``p_slptime`` and ``p_swtime`` in whole seconds, bumped once a second by
schedcpu(); the row keeps the moment each count started instead (``slptime0``,
``swtime0``), and the seconds are taken from them when they are needed (:func:`slptime`;
uvm_glue does it for the whole table at once), the same numbers at any instant without a
once-a-second pass over the table.
"""

from __future__ import annotations

import numpy as np

SIDL, SRUN, SSLEEP, SSTOP, SZOMB, SDEAD, SONPROC = 1, 2, 3, 4, 5, 6, 7
STAT_NAMES = {0: "free", SIDL: "SIDL", SRUN: "SRUN", SSLEEP: "SSLEEP", SSTOP: "SSTOP",
              SZOMB: "SZOMB", SDEAD: "SDEAD", SONPROC: "SONPROC"}

P_INMEM = 0x4           # loaded: its u-area is wired (NetBSD P_INMEM; uvm_swapout clears it)
P_SYSTEM = 0x200        # kernel thread (NetBSD P_SYSTEM)
P_WEXIT = 0x2000        # exiting

PROC_DTYPE = np.dtype([
    ("pid", "<i4"),
    ("stat", "<i4"),
    ("flag", "<u4"),
    ("cpu", "<i4"),           # last CPU it ran on (wakeup puts it back there)
    ("wchan", "<i8"),         # sleep channel, 0 when not asleep
    ("wmesg", "<i4"),         # string id of the wait message
    ("slpnext", "<i4"),       # next thread on the same sleep queue, -1 ends
    ("deadline", "<u8"),      # ns since boot when a timed sleep ends, 0 none
    ("name", "<i4"),          # string id of the command name (p_comm)
    ("uid", "<i4"),
    ("kind", "<i4"),          # which program (index into the load's process kinds)
    ("pc", "<i4"),            # the load interpreter's position
    ("reg", "<i8", (4,)),     # the load interpreter's registers
    ("nsleep", "<u8"),
    ("nrun", "<u8"),
    ("rtime_ns", "<u8"),      # time spent running on a CPU
    ("uarea", "<i8"),         # kernel VA of the u-area (p_addr), 0 none
    ("forkchild", "<i4"),     # a child this process is still forking: its thread id + 1
    ("execargs", "<i8"),      # exec_map VA of the arguments an execve is copying, 0 none
    ("physva", "<i8"),        # phys_map VA of a physio transfer in flight, 0 none
    ("holdcnt", "<i4"),       # p_holdcnt: PHOLD (physio) keeps it from being swapped out
    ("slptime0", "<i8"),      # ns since boot when its sleep began (p_slptime counts from it)
    ("swtime0", "<i8"),       # ns since boot when it was last swapped in or out (p_swtime)
])


def slptime(p, now: int) -> int:
    """p_slptime: whole seconds thread row ``p`` has been asleep (0 if it is not)."""
    return (now - int(p["slptime0"])) // 1_000_000_000 if int(p["stat"]) == SSLEEP else 0
