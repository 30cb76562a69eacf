"""Raw disk reads (kern_physio.c): physio, as dd if=/dev/rwd0d bs=64k count=N does it.

    PHOLD(p): the process is not swapped out while it does raw I/O
    for each transfer:
        uvm_vslock: the user buffer is faulted in and wired (uvm_fault_wire: PMAP_CANFAIL,
            PG_W; no wiredmax test -- that is sys_mlock's); a fault that fails unwires
            what it wired and ends the read with its error
        vmapbuf: the buffer mapped into phys_map with plain pmap_enters (vm_machdep)
        the transfer: the process sleeps "physio" while the disk reads (the machine's
            disk_latency)
        vunmapbuf, uvm_vsunlock: unmapped, unwired
    PRELE(p)

A transfer in flight keeps its phys_map VA in the process's proc row (``physva``); the
process's registers count the transfers done, so the read, run again after a sleep,
goes on where it was.  The hold is ``p_holdcnt`` in the row, 1 from the first (or
restarted) entry until the read returns.
"""

from __future__ import annotations

from smp.kern import kern_synch, subr_prf, uvm_map, vm_machdep
from smp.kern.param import NBPG, VM_PROT_READ, VM_PROT_WRITE
from smp.kern.uvm import shared
from smp.kern.uvm_fault import uvm_fault

W_PHYSIO = subr_prf.String("physio", late=True)
MSG_PHYSIO = subr_prf.Message("", "pid %d: physio of %d pages failed: error %d", late=True)
CHAN_PHYSIO = 0xC0F3_0000            # + thread: the transfer's buf
_ci = None
_latency = 0


def attach(ci, kernel) -> None:
    global _ci, _latency
    _ci = ci
    _latency = kernel.machine.disk_latency


def physio_read(tid: int, uva: int, npages: int, count: int, reg) -> None:
    """``count`` raw reads of ``npages`` pages into the buffer at ``uva``; may sleep
    (restart: ``reg[1]`` counts the transfers done)."""
    p = shared.np["proc"][tid]
    vas = [uva + k * NBPG for k in range(npages)]
    p["holdcnt"] = 1                                       # PHOLD
    i = int(reg[1])
    while i < count:
        reg[1] = i
        if not p["physva"]:
            for k, v in enumerate(vas):                    # uvm_vslock
                r = uvm_fault(tid, v, VM_PROT_READ | VM_PROT_WRITE, wire=True)
                if r:
                    uvm_map.uvm_vsunlock(tid, vas[:k])     # uvm_fault_wire's unwind
                    subr_prf.printf(MSG_PHYSIO, int(p["pid"]), npages, r)
                    reg[1] = 0
                    p["holdcnt"] = 0
                    return
            p["physva"] = vm_machdep.vmapbuf(tid, uva, npages)
            kern_synch.ltsleep(CHAN_PHYSIO + tid, W_PHYSIO, _latency)   # the disk reads
        vm_machdep.vunmapbuf(int(p["physva"]), npages)
        p["physva"] = 0
        uvm_map.uvm_vsunlock(tid, vas)
        i += 1
    reg[1] = 0
    p["holdcnt"] = 0                                       # PRELE
