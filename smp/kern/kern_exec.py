"""execve (kern_exec.c, uvm_mmap.c's uvmspace_exec, exec_elf32.c's mapping of a program).

    execve(tid, file, text, data, args):
        the arguments: NCARGS of VA in exec_map (uvm_km_valloc_wait: none free ->
            sleep "vallocwait"), their ``args`` pages copied in -- faults on exec_map,
            kernel_object pages from the reserve, pmap_enter(..., PMAP_CANFAIL): a
            kernel pv entry each (uvm_fault_kernel; may sleep)
        uvmspace_exec: the old address space is released (every map entry unmapped:
            its mappings, its anons); the pmap stays
        the new image: ``text`` pages of the file mapped read-only and shared (a fault
            on a resident page of it is case 2, no page allocated), ``data`` pages
            after them mapped private (copy-on-write)
        the arguments go to the new stack (not modelled) and their pages and VA back to
            exec_map (uvm_km_free_wakeup)

A sleep while the arguments are copied keeps their VA in the process's proc row
(``execargs``), and the execve, run again after the wakeup, goes on with it.
"""

from __future__ import annotations

from smp.kern import pmap, subr_prf, uvm_fault, uvm_km, uvm_map
from smp.kern.param import NBPG, NCARGS, VM_PROT_EXECUTE, VM_PROT_READ, VM_PROT_WRITE
from smp.kern.uvm import counter, shared

W_VALLOCWAIT = subr_prf.String("vallocwait", late=True)
NARGPAGES = NCARGS // NBPG
_ci = None


def attach(ci, kernel) -> None:
    global _ci
    _ci = ci


def execve(tid: int, uobj: int, text: int, data: int, args: int) -> tuple[int, int]:
    """Run file ``uobj``'s program in process ``tid``; returns the new (text VA, data VA,
    0 when there is no data), or negative errno values if the image could not be mapped.
    May sleep (restart)."""
    p = shared.np["proc"][tid]
    va = int(p["execargs"])
    if not va:
        va = uvm_km.uvm_km_valloc(uvm_km.EXEC_MAP, NARGPAGES, wait=W_VALLOCWAIT)
        p["execargs"] = va
    uvm_fault.uvm_fault_kernel(uvm_km.EXEC_MAP, va, args, False)   # copyin: may sleep
    uvmspace_exec(tid)
    tva = uvm_map.uvm_mmap(tid, text, VM_PROT_READ | VM_PROT_EXECUTE,
                           uvm_map.EF_FILE | uvm_map.EF_SHARED, uobj, 0)
    dva = 0
    if data and tva > 0:
        dva = uvm_map.uvm_mmap(tid, data, VM_PROT_READ | VM_PROT_WRITE,
                               uvm_map.EF_FILE | uvm_map.EF_COPY, uobj, text)
    uvm_km.uvm_km_free_wakeup(va, args, NARGPAGES)              # copyout, then free
    p["execargs"] = 0
    shared.cnt[_ci.cnt_base + counter.execs] += 1
    return tva, dva


def uvmspace_exec(tid: int) -> None:
    """The process's old address space goes: every map entry unmapped (uvm_unmap of the
    whole user range); the vmspace and its pmap are kept for the new image."""
    while shared.vm_nentries[tid]:
        uvm_map.uvm_unmap(tid, shared.vm_entry[uvm_map.entry_index(tid, 0) + uvm_map.E_START])
    shared.vm_aused[tid] = 0                     # the amap window is all free again


def exit_args(tid: int) -> None:
    """A process that exits in the middle of an execve gives its argument VA back."""
    p = shared.np["proc"][tid]
    va = int(p["execargs"])
    if va:
        n = sum(1 for k in range(NARGPAGES)
                if pmap.pmap_extract(pmap.KERNEL_PMAP, va + k * NBPG) >= 0)
        uvm_km.uvm_km_free_wakeup(va, n, NARGPAGES)
        p["execargs"] = 0
