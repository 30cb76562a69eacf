"""i386 constants and address-space layout (machine/param.h, machine/pmap.h, uvm_pmap.h).

NetBSD KERNBASE 0xc0000000, no PAE: one PDE maps 4 MiB (NBPD), a PTP or the
PDP is one 4 KiB page of 1024 four-byte entries.  PDE slots 0..766 are user
space; slot 767 (PDSLOT_PTE) points the PDP at itself (the recursive map that
makes the current pmap's PTEs appear at PTE_BASE); slots 768.. are the kernel's,
the same in every pmap; slot 1023 (PDSLOT_APTE) is the alternate recursive slot.

Physical address ``pa`` of page index ``i`` is ``i * NBPG``; PTE and PDE
values are the i386 bit layout (frame | flags), stored in the simulated
physical memory of the page-table pages themselves.

Also here: the constants several subsystems share (uvm_extern.h, uvm_page.h,
pmap.h) -- the kernel pmap's index, where kernel memory starts, who owns a
page, the page flags and uvm_pagealloc's flags -- so that no subsystem has to
import another one for a number.
"""

from __future__ import annotations

NBPG = PAGE_SIZE = 4096
PGSHIFT = 12
NBPD = 1 << 22                      # bytes mapped by one PDE
PDSHIFT = 22
PTES_PER_PTP = 1024

KERNBASE = 0xC000_0000
PDSLOT_PTE = (KERNBASE // NBPD) - 1          # 767: recursive slot
PDSLOT_KERN = KERNBASE // NBPD               # 768: first kernel slot
PDSLOT_APTE = 1023                           # alternate recursive slot
PTE_BASE = PDSLOT_PTE * NBPD                 # 0xbfc00000
APTE_BASE = PDSLOT_APTE * NBPD               # 0xffc00000
VM_MAXUSER_ADDRESS = PTE_BASE                # 0xbfc00000
VM_MIN_KERNEL_ADDRESS = KERNBASE
VM_MAX_KERNEL_ADDRESS = APTE_BASE
NKPTP = 4                                    # kernel PTPs at boot (16 MB)
NKPTP_MAX = 1024 - PDSLOT_KERN - 1
NKVA = (VM_MAX_KERNEL_ADDRESS - KERNBASE) // NBPG   # pages of kernel VA (kernel_map)
KERNEL_PMAP = 0                              # pmap_kernel(): pmap 0 (never on the pmaps list)

# kernel_map at boot (uvm_km.py): the kernel image, then the submaps carved from it
KIMAGE = 4 * 1024 * 1024          # text, data, bss and the boot-time tables (assumed)
NKMEMPAGES_MIN = (8 * 1024 * 1024) // NBPG     # kmem_map: physmem / 4, clamped (kmeminit)
NKMEMPAGES_MAX = (128 * 1024 * 1024) // NBPG
PAGER_MAP_SIZE = 4 * 1024 * 1024  # uvm_pager.c
MAXBSIZE = 64 * 1024              # the largest I/O: a pageout cluster, the emergency window
NCARGS = 256 * 1024               # exec_map holds 16 argument areas of NCARGS
USRIOSIZE = 300                   # phys_map's pages (VM_PHYS_SIZE)
NMBCLUSTERS = 1024                # mb_map: clusters of MCLBYTES
MCLBYTES = 2048
MSIZE = 256                       # an mbuf
UBC_NWINS = 1024                  # UBC windows of UBC_WINSIZE bytes (uvm_bio.c)
UBC_WINSIZE = 8192
UPAGES = 2                        # a process's u-area (PCB and kernel stack)

# PTE bits (i386 pte.h)
PG_V = 0x001
PG_RW = 0x002
PG_u = 0x004
PG_U = 0x020          # used (referenced), set by the MMU
PG_M = 0x040          # modified, set by the MMU
PG_G = 0x100          # global (kernel, with CPUID_PGE)
PG_W = 0x200          # PG_AVAIL1: wired mapping
PG_PVLIST = 0x400     # PG_AVAIL2: mapping has a pv entry
PG_FRAME = 0xFFFF_F000

# uvm_pmap.h / uvm_extern.h
VM_PROT_NONE, VM_PROT_READ, VM_PROT_WRITE, VM_PROT_EXECUTE = 0, 1, 2, 4
VM_PROT_ALL = 7
VM_PROT_MASK = 7
PMAP_WIRED = 0x10
PMAP_CANFAIL = 0x20

# vm_page: who owns a page (pg_owner), as the subsystems name their objects
OWN_FREE, OWN_ANON, OWN_UOBJ, OWN_PTP, OWN_PVPAGE, OWN_KMEM, OWN_PDP, OWN_KPTP = range(8)
OWNER_NAMES = ["free", "anon", "uobj", "ptp", "pvpage", "kmem", "pdp", "kptp"]
# vm_page flags (pg_flags, uvm_page.h)
PG_BUSY, PG_WANTED, PG_TABLED, PG_CLEAN, PG_PAGEOUT, PG_RELEASED, PG_FAKE = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40)
# uvm_pagealloc flags (uvm_extern.h)
UVM_PGA_USERESERVE = 0x1
UVM_PGA_ZERO = 0x2

# errno values the 2001 kernel returned (KERN_RESOURCE_SHORTAGE became ENOMEM)
ENOMEM = 12
EFAULT = 14
EACCES = 13
EAGAIN = 35


def pdei(va: int) -> int:
    """Index of the PDE that maps ``va``."""
    return (va >> PDSHIFT) & 0x3FF


def ptei(va: int) -> int:
    """Index of ``va``'s PTE within its PTP."""
    return (va >> PGSHIFT) & 0x3FF


def ptp_i2v(i: int) -> int:
    """First VA mapped by PDE slot ``i``."""
    return i << PDSHIFT


def trunc_page(va: int) -> int:
    return va & ~(NBPG - 1)


def atop(pa: int) -> int:
    return pa >> PGSHIFT


def ptoa(i: int) -> int:
    return i << PGSHIFT
