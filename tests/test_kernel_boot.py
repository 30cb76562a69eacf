"""The kernel's boot: its subsystem tuple numbers the catalogue and the lock ids.

A run directory records message ids, string ids and lock ids; ``smp run --replay`` of a
run directory made by an earlier version compares them byte for byte.  So the ids the
kernel gives its console messages, wait channels and locks must not move when its code
is reorganised: they come from the order of ``smp.kern.kernel.SUBSYSTEMS`` (not from the
order Python imports modules in), and these tests pin the numbering of the January 2001
kernel.  A new message or lock is fine at the end of the last subsystem that has one;
anywhere else it renumbers every later one and old runs no longer replay.  An entry a
later change adds to a subsystem in the middle of the tuple is declared ``late``
(``subr_prf.Message(..., late=True)``): the kernel numbers the late entries after all
the others, so the earlier ids stay.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from kernharness import idle_load

from smp.config import load_kernel, load_machine
from smp.kern.kernel import Kernel
from smp.machine.lockspace import LockSpace

REPO = Path(__file__).resolve().parent.parent

MESSAGES = [  # (function, format) by id, as `smp run` numbers them
    ("uvm_pagefree", "freeing free page %p"),
    ("", "pmap_steal_ptp: stole PTP pa 0x%08x (va 0x%08x) from pmap %p for pmap %p va "
         "0x%08x on cpu%d"),
    ("", "pmap_try_steal_pv: stole pv entry: pmap %p va 0x%08x (pa 0x%08x) for pmap %p"),
    ("pmap_enter", "pmap_enter: get ptp failed"),
    ("pmap_enter", "pmap_enter: no pv entries available"),
    ("pmap_enter", "pmap_enter: too big"),
    ("pmap_enter", "pmap_enter: trying to map over PDP/APDP!"),
    ("pmap_enter", "pmap_enter: missing kernel PTP!"),
    ("pmap_steal_ptp", "pmap_steal_ptp: PTP mismatch!"),
    ("pmap_get_ptp", "pmap_get_ptp: unmanaged user PTP"),
    ("pmap_growkernel", "pmap_growkernel: alloc ptp failed"),
    ("pmap_release", "pmap_release: busy page table page"),
    ("pmap_remove_ptes", "pmap_remove_ptes: managed page without PG_PVLIST for 0x%lx"),
    ("pmap_remove_pv", "pmap_remove_pv: no pv entry for pmap %p va 0x%lx"),
    ("pmap_tlb_shootnow", "TLB IPI rendezvous failed (mask %x)"),
    ("pmap_unwire", "pmap_unwire: invalid (unmapped) va 0x%lx"),
    ("", "pmap_unwire: wiring for pmap %p va 0x%lx didn't change!"),
    ("", "pmap: stale TLB entry: pid %d va 0x%08x -> pa 0x%08x via PTP pa 0x%08x (pmap %p)"),
    ("", "UVM: pid %d (%s), uid %d killed: out of swap"),
    ("", "pid %d (%s): SIGSEGV at va 0x%08x (error %d)"),
    ("", "pagedaemon: deadlock detected!"),
    ("uvm_pageout", "  <<SLEEPING>>"),
    ("uvm_pageout", "  <<WOKE UP>>"),
    ("uvm_pageout", "  free/ftarg=%d/%d, inact/itarg=%d/%d"),
    ("uvm_fault", "(map=%p, vaddr=0x%x, ft=%d, at=%d)"),
    ("uvm_fault", "  case 1 fault: anon=0x%x"),
    ("uvm_fault", "  case 2 fault: promote=%d, zfill=%d"),
    ("uvm_fault", "  noram -- UVM_WAIT"),
    ("uvm_fault", "  pmap_enter failed, waiting (%s)"),
    ("uvm_fault", "<- failed.  out of VM"),
    ("uvm_fault", "<- done (SUCCESS!)"),
    ("exit1", "pid %d (%s) exited on cpu%d"),
    ("", "proc: table is full"),
    ("", "simple_lock: locking against myself (lock %d)"),
    ("", "lockmgr: lock protocol violation (lock %d)"),
    # issue 10's, declared late (after every earlier entry of every subsystem)
    ("pmap_pinit", "pmap_pinit: kernel_map out of virtual space!"),
    ("", "pool %s: no room for another page"),
    ("uvm_aio_aiodone", "  aio %d: %d pages at kva 0x%x, swap %d"),
    ("", "pid %d: physio of %d pages failed: error %d"),
    # issue 14's boot console (smp.kern.autoconf), declared late
    ("", "Copyright (c) 1996, 1997, 1998, 1999, 2000"),
    ("", "    The NetBSD Foundation, Inc.  All rights reserved."),
    ("", "Copyright (c) 1982, 1986, 1989, 1991, 1993"),
    ("", "    The Regents of the University of California.  All rights reserved."),
    ("", "NetBSD 1.5 (%s) #0: simulated by smp"),
    ("", "    smp@%s:/usr/src/sys/arch/i386/compile/%s"),
    ("", "total memory = %d %s"),
    ("", "avail memory = %d %s"),
    ("", "mainbus0 (root)"),
    ("", "cpu%d at mainbus0: apid %d (boot processor)"),
    ("", "cpu%d at mainbus0: apid %d (application processor)"),
    ("", "cpu%d: Intel Pentium Pro (686-class), a simulated CPU"),
    ("", "swap: wd0b: %d %s (%d pages)"),
    ("", "swap: no swap device"),
    ("", "boot device: wd0"),
    ("", "root on wd0a dumps on wd0b"),
    ("", "syncing disks... done"),
    ("", "rebooting..."),
    # the swapout's (smp.kern.uvm_glue, the last subsystem), declared late
    ("uvm_swapout", "swapout: pid %d stat %d pri %d free %d"),
    ("", "uvm_fault_unwire_locked: unwiring non-wired memory"),
    ("uvm_swapin", "swapin: pid %d free %d"),
    # the loads' own (smp/workload), numbered after the kernel's
    ("", "pid %d (%s): mmap of %d pages failed: error %d"),
    ("", "pid %d (%s): fork failed: error %d"),
    ("synth_step", "injected panic in pid %d at iteration %d"),
    ("", "synth: pid %d (%s) started on cpu%d"),
    ("", "synth: pid %d (%s): %d iterations, %d handoff sleeps"),
]
STRINGS = ["km_alloc1w", "km_getwait2", "pgdaemon", "uvm_wait", "ubc_fault", "flt_noram1",
           "flt_noram3", "flt_noram5", "flt_pmfail1", "flt_pmfail2", "uvn_get",
           # issue 10's, declared late (after every earlier entry of every subsystem)
           "ubc_alloc", "uao_getpage", "anonget2", "mbpl", "mclpl", "aiodoned",
           "vallocwait", "physio",
           # issue 14's boot console: format_bytes units, declared late
           "bytes", "KB", "MB", "GB", "TB",
           # the swapout's (uvm_glue), declared late
           "schedpwait",
           # the loads'
           "barrier", "nanoslp", "handoff"]
LOCK_CLASSES = [
    "sched_lock", "kernel_lock", "fpageq", "pageq", "pagedaemon_lock", "pmap_main_lock",
    "pmaps_lock", "pvalloc_lock", "pmap_tmpptp_lock", "pmap_zero_page_lock",
    "pmap_copy_page_lock", "pmap", "pvh", "kmem_object", "kernel_object", "kmem_map",
    "pager_map", "anon", "amap", "vm_map", "swap_data_lock", "uvm_anon_lock",
    "pmap_tlb_shootdown_q", "pmap_tlb_shootdown_job_lock", "vnode",
    # issue 10's, after every earlier one
    "ubc", "kernel_map", "exec_map", "phys_map", "mb_map", "mb_object", "pool",
    "aiodoned_lock",
]


def test_the_catalogue_keeps_the_ids_old_run_directories_were_written_with():
    code = ("import json; from smp import run; from smp.kern import subr_prf; "
            "print(json.dumps(subr_prf.CATALOGUE.to_json()))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 0, r.stderr
    cat = json.loads(r.stdout)           # what `smp run` has when the load is compiled
    assert [(m["id"], m["fn"], m["fmt"]) for m in cat["messages"]] == \
        [(i, fn, fmt) for i, (fn, fmt) in enumerate(MESSAGES)]
    assert cat["strings"] == STRINGS
    # the boot console's lines say so in the catalogue (smp compare shows them apart)
    boot = [m["id"] for m in cat["messages"] if m.get("tag") == "boot"]
    first = MESSAGES.index(("", "Copyright (c) 1996, 1997, 1998, 1999, 2000"))
    assert boot == list(range(first, first + 18)) and first + 18 <= len(MESSAGES)


def test_lock_classes_and_ids_come_in_the_order_of_earlier_versions():
    machine = load_machine("i386mp-4")
    locks = LockSpace()
    locks.declare("sched_lock")           # the machine's, first (smp.machine.boot)
    Kernel(load_kernel("default"), idle_load(6)).declare(machine, locks)
    assert [c.name for c in locks.classes] == LOCK_CLASSES
    firsts = [r.first for r in locks.ranges]
    assert firsts == sorted(firsts) and firsts[:11] == list(range(11))
    counts = {locks.classes[r.klass].name: r.count for r in locks.ranges}
    assert counts["pmap"] == 6 + 3 and counts["pvh"] == machine.npages
    assert counts["pmap_tlb_shootdown_q"] == machine.ncpu and counts["vnode"] == 8


def test_every_lock_class_of_the_kernel_has_a_rank_in_the_lock_order():
    locks = LockSpace()
    locks.declare("sched_lock")
    Kernel(load_kernel("default"), idle_load(2)).declare(load_machine("tiny"), locks)
    assert {locks.classes[k].name for k in locks.ranks} == set(LOCK_CLASSES)


def test_imports_inside_kernel_functions_say_why():
    """An import inside a function of smp/kern is an upcall the module graph cannot
    have at the top of the file; the comment above it says which."""
    for path in sorted((REPO / "smp" / "kern").glob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        above = lines[inner.lineno - 2].strip()
                        assert above.startswith("#"), \
                            f"{path.name}:{inner.lineno}: import inside {node.name}() " \
                            "without a comment saying why"
