"""The boot console: what a NetBSD 1.5 i386 kernel prints from power-on to reboot
(init_main.c ``main()``, i386 machdep.c ``cpu_startup()`` and ``cpu_reboot()``,
subr_autoconf.c/autoconf.c ``configure()``, mainbus.c, i386 cpu.c ``cpu_attach()``).

A real kernel's console starts with its boot messages and ends with its shutdown, and
a dmesg is read with both in mind: which kernel, how much memory, how many CPUs.  The
simulated kernel prints the same, through the same ``printf`` as every other console
line, into CPU 0's trace ring:

    main(), in the parent before the APs start (``startup``):
        cpu_startup(): the copyright, the version line naming the kernel
            configuration (``NetBSD 1.5 (DEFAULT) #0``; no build date, so a lockstep
            run's console stays a function of its seed), ``total memory`` (physmem)
            and ``avail memory`` (the pages free once the kernel and the load's first
            processes are set up), in ``format_bytes`` units as 1.5 printed them
        configure(): ``mainbus0 (root)``; per CPU of the MP table
            ``cpuN at mainbus0: apid N (boot processor|application processor)`` and its
            identification ``cpuN: ...``; the swap partition; ``boot device: wd0`` and
            where root and dumps are
    cpu_reboot(RB_AUTOBOOT), in the parent once every CPU has stopped (``shutdown``):
        ``syncing disks... done`` and ``rebooting...`` -- at a normal end of the run and
        at its time limit; a panic, a deadlock or a dead CPU leave the console as the
        machine left it.

The boot CPU prints while no other CPU runs, so the machine hands the kernel a console
for CPU 0's ring (:func:`smp.kern.subr_prf.console`): the timestamps are those of the
machine's clock then, host time since boot in free mode and virtual time in lockstep
(0 at boot, the final virtual time plus one nanosecond at shutdown, so the shutdown
lines sort after everything the CPUs printed).

Every message here is declared ``tag="boot"``: the run directory's catalogue says so,
and ``smp compare`` shows boot lines apart from the experiment's lines (a different
``total memory`` is a difference of the machine, not of what the kernel did).  They are
declared ``late``, so the ids of the kernel's other messages stay what they were.
"""

from __future__ import annotations

from typing import Any

from smp.kern import subr_prf
from smp.kern.param import PAGE_SIZE
from smp.kern.uvm import FREE, SWPAGES


def _boot(fmt: str) -> subr_prf.Message:
    return subr_prf.Message("", fmt, late=True, tag="boot")


# cpu_startup()
MSG_COPYRIGHT_NF = _boot("Copyright (c) 1996, 1997, 1998, 1999, 2000")
MSG_COPYRIGHT_NF2 = _boot("    The NetBSD Foundation, Inc.  All rights reserved.")
MSG_COPYRIGHT_UC = _boot("Copyright (c) 1982, 1986, 1989, 1991, 1993")
MSG_COPYRIGHT_UC2 = _boot("    The Regents of the University of California.  "
                          "All rights reserved.")
MSG_VERSION = _boot("NetBSD 1.5 (%s) #0: simulated by smp")
MSG_BUILT = _boot("    smp@%s:/usr/src/sys/arch/i386/compile/%s")
MSG_TOTALMEM = _boot("total memory = %d %s")
MSG_AVAILMEM = _boot("avail memory = %d %s")
# configure()
MSG_MAINBUS = _boot("mainbus0 (root)")
MSG_CPU_BP = _boot("cpu%d at mainbus0: apid %d (boot processor)")
MSG_CPU_AP = _boot("cpu%d at mainbus0: apid %d (application processor)")
MSG_CPU_ID = _boot("cpu%d: Intel Pentium Pro (686-class), a simulated CPU")
MSG_SWAP = _boot("swap: wd0b: %d %s (%d pages)")
MSG_NOSWAP = _boot("swap: no swap device")
MSG_BOOTDEV = _boot("boot device: wd0")
MSG_ROOT = _boot("root on wd0a dumps on wd0b")
# cpu_reboot()
MSG_SYNC = _boot("syncing disks... done")
MSG_REBOOT = _boot("rebooting...")

S_UNITS = {u: subr_prf.String(u, late=True) for u in ("bytes", "KB", "MB", "GB", "TB")}


def format_bytes(n: int) -> tuple[int, str]:
    """NetBSD's format_bytes(): divide by 1024 (rounding) while the number has six digits
    or more; 32 MB is "32768 KB", 256 MB "256 MB", 1 GB "1024 MB"."""
    units = list(S_UNITS)
    i = 0
    while n >= 100000 and i < len(units) - 1:
        n = (n + 512) // 1024
        i += 1
    return n, units[i]


def _size(n: int) -> tuple[int, int]:
    """(value, string id of its unit) for a ``%d %s`` pair."""
    v, unit = format_bytes(n)
    return v, S_UNITS[unit]


def format(seg: Any, kernel: Any) -> None:
    """Intern the names the version line prints (before boot: CPUs fork with the table)."""
    kernel.ident = subr_prf.intern(kernel.config.name.upper())
    kernel.hostname = subr_prf.intern(kernel.machine.name)


def startup(seg: Any, kernel: Any) -> None:
    """main(): cpu_startup() and configure() on the boot processor (parent, APs not started).

    => printf is bound to CPU 0's ring (subr_prf.console); the segment is formatted.
    """
    printf = subr_prf.printf
    ux = seg.arrays["uvmexp"]
    for m in (MSG_COPYRIGHT_NF, MSG_COPYRIGHT_NF2, MSG_COPYRIGHT_UC, MSG_COPYRIGHT_UC2):
        printf(m)
    printf(MSG_VERSION, kernel.ident)
    printf(MSG_BUILT, kernel.hostname, kernel.ident)
    printf(MSG_TOTALMEM, *_size(int(kernel.machine.physmem)))
    printf(MSG_AVAILMEM, *_size(int(ux[FREE]) * PAGE_SIZE))
    printf(MSG_MAINBUS)
    for cpu in range(kernel.machine.ncpu):
        printf(MSG_CPU_BP if cpu == 0 else MSG_CPU_AP, cpu, cpu)
        printf(MSG_CPU_ID, cpu)
    swpages = int(ux[SWPAGES])
    if swpages:
        printf(MSG_SWAP, *_size(swpages * PAGE_SIZE), swpages)
    else:
        printf(MSG_NOSWAP)
    printf(MSG_BOOTDEV)
    printf(MSG_ROOT)


def cpu_reboot(seg: Any, kernel: Any) -> None:
    """cpu_reboot(RB_AUTOBOOT): sync the disks and reboot (parent, every CPU stopped).

    => printf is bound to CPU 0's ring.
    """
    subr_prf.printf(MSG_SYNC)
    subr_prf.printf(MSG_REBOOT)
