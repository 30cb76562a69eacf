"""Files as UVM objects (uvm_vnode.c): the vnode pager's pages.

A file of the load is a UVM object of ``file_size[f]`` pages; its resident
pages are ``file_page[file_base[f] + off]`` (-1 when not resident), filled
by the fault handler's ``pgo_get`` (``uvn_get``), by read()/write() through
UBC windows (uvm_bio), and emptied by the pagedaemon.  Each object is
guarded by its vnode's lock, one of ``NVNODE`` locks picked by the object's
number (``vnode_lock + f % NVNODE``).  Reads are synchronous and cost no
simulated time; the pagedaemon's writes are clustered and asynchronous
(uvm_pager), the pages busy until the disk is done.
"""

from __future__ import annotations

import numpy as np

from smp.machine.layout import ArraySpec

NVNODE = 8                 # vnode locks (objects share them by number)
MAXFILES = 64
vnode_lock = -1            # lock id of the first vnode lock (declare)


def declare(kernel, locks) -> list[ArraySpec]:
    """The file objects' page tables and the vnode locks (parent, before boot)."""
    global vnode_lock
    vnode_lock = locks.declare("vnode", count=NVNODE, label="vnode[{i}]")
    i4 = np.dtype("<i4")
    return [ArraySpec("file_page", i4, (max(1, sum(kernel.files)),)),
            ArraySpec("file_base", i4, (MAXFILES,)),
            ArraySpec("file_size", i4, (MAXFILES,))]


def format(seg, kernel) -> None:
    """The load's files, one after another in ``file_page``; nothing resident."""
    a = seg.arrays
    base = 0
    for i, size in enumerate(kernel.files):
        a["file_base"][i] = base
        a["file_size"][i] = size
        base += size
    a["file_page"][:] = -1
