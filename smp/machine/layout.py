"""The shared segment's layout: where every area and named array lives.

One machine is one segment.  Its first part belongs to the hardware and is
laid out by this module from the machine profile: the header (boot time, halt
flag), the lock table, one control block per CPU (IPI mailbox, idle futex,
held-lock stack), per-CPU lock statistics, the call-site registry and one
trace ring per CPU.  The rest holds the named arrays the kernel declares
(vm_page[], pmaps, PTEs, ...): the machine places them without knowing what
they are, so no import runs from the machine up to the kernel.

The record types below mirror the C structs of ``_atomic.c`` field for field;
the sizes exported by the extension are checked at import, so the two cannot
drift apart silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from smp.machine import _atomic as A

PAGE = 4096
MAGIC = 0x534D505F5345474D  # "SMP_SEGM"

HDR_DTYPE = np.dtype(
    [("magic", "<u8"), ("boot_ns", "<u8"), ("halt", "<u4"), ("panic_cpu", "<u4"),
     ("vclock", "<u8"), ("stop", "<u4"), ("pad", "<u4"), ("tsc_boot", "<u8"),
     ("tsc_mult", "<u8")]
)
LOCK_DTYPE = np.dtype(     # a cache line per lock (see struct lock_word: false sharing)
    [("state", "<u4"), ("klass", "<u4"), ("flags", "<u4"), ("last_cpu", "<u4"),
     ("holder_site", "<u4"), ("recurse", "<u4"), ("sleepers", "<u4"), ("wakeseq", "<u4"),
     ("pad", "<u4", (8,))]
)
HELD_DTYPE = np.dtype(
    [("lock", "<u4"), ("site", "<u4"), ("mode", "<u4"), ("slot", "<u4"), ("t_acq", "<u8")]
)
CPU_DTYPE = np.dtype(
    [("ipi_pending", "<u8"), ("kick", "<u4"), ("state", "<u4"), ("nheld", "<u4"),
     ("spinning_on", "<u4"), ("curproc", "<i4"), ("cursite", "<u4"), ("heartbeat", "<u8"),
     ("nslots", "<u8"), ("slot_overflow", "<u8"), ("npairs", "<u8"), ("pair_overflow", "<u8"),
     ("spins_total", "<u8"), ("held", HELD_DTYPE, (A.MAXHELD,))]
)
SLOT_DTYPE = np.dtype(
    [("lock", "<u4"), ("site", "<u4"), ("klass", "<u4"), ("mode", "<u4"),
     ("acq", "<u8"), ("contended", "<u8"), ("spins", "<u8"), ("bounces", "<u8"),
     ("con_bounces", "<u8"), ("wait_total", "<u8"), ("wait_max", "<u8"), ("wait_min", "<u8"),
     ("hold_total", "<u8"), ("hold_max", "<u8"), ("hold_min", "<u8"),
     ("wait_hist", "<u4", (A.NHIST,)), ("hold_hist", "<u4", (A.NHIST,))]
)
PAIR_DTYPE = np.dtype(
    [("klass", "<u4"), ("waiter", "<u4"), ("holder", "<u4"), ("mode", "<u4"),
     ("count", "<u8"), ("wait_total", "<u8")]
)
SITE_DTYPE = np.dtype([("key", "<u8"), ("name", f"S{A.SITE_NAME}"), ("id", "<u4"), ("pad", "<u4")])
SITE_HDR_DTYPE = np.dtype(
    [("lock", "<u4"), ("count", "<u4"), ("capacity", "<u4"), ("pad", "<u4"), ("pad2", "<u8", (7,))]
)
RING_HDR_DTYPE = np.dtype(
    [("head", "<u8"), ("tail", "<u8"), ("dropped", "<u8"), ("seq", "<u8"), ("capacity", "<u8"),
     ("pad", "<u8", (3,))]
)
REC_DTYPE = np.dtype(
    [("time", "<u8"), ("seq", "<u8"), ("cpu", "<u2"), ("msgid", "<u2"), ("call", "<u4"),
     ("args", "<i8", (A.NARGS,))]
)

for _dt, _size in [(HDR_DTYPE, None), (LOCK_DTYPE, A.LOCK_SIZE), (HELD_DTYPE, A.HELD_SIZE),
                   (CPU_DTYPE, A.CPU_SIZE), (SLOT_DTYPE, A.SLOT_SIZE), (PAIR_DTYPE, A.PAIR_SIZE),
                   (SITE_DTYPE, A.SITE_SIZE), (SITE_HDR_DTYPE, A.SITE_HDR_SIZE),
                   (RING_HDR_DTYPE, A.RING_HDR_SIZE), (REC_DTYPE, A.REC_SIZE)]:
    if _size is not None and _dt.itemsize != _size:  # pragma: no cover - build mismatch
        raise ImportError(f"layout: dtype {_dt} is {_dt.itemsize} bytes, C says {_size}")
if HDR_DTYPE.itemsize > A.HDR_SIZE:  # pragma: no cover
    raise ImportError("layout: header dtype larger than the C header")

CPU_STRIDE = -(-A.CPU_SIZE // 64) * 64   # cache-line aligned control blocks
SLOT_BUDGET = 48 << 20                   # bytes of statistics slots for the whole machine
MAX_SLOTS_PER_CPU = 16384
PAIRS_PER_CPU = 2048
SITE_CAPACITY = 4096


def _align(n: int, a: int = PAGE) -> int:
    return -(-n // a) * a


@dataclass(frozen=True)
class ArraySpec:
    """A named array the kernel wants in the segment (dtype and shape)."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass
class Layout:
    """Byte offsets of every area, computed before the segment exists.

    ``arrays`` maps a kernel array's name to (offset, ArraySpec).
    """

    ncpu: int
    nlocks: int
    ring_capacity: int
    nslots: int = 0
    npairs: int = PAIRS_PER_CPU
    site_capacity: int = SITE_CAPACITY
    lock_off: int = 0
    cpu_off: int = 0
    stats_off: int = 0
    stats_stride: int = 0
    sites_off: int = 0
    rings_off: int = 0
    ring_stride: int = 0
    arrays: dict[str, tuple[int, ArraySpec]] = field(default_factory=dict)
    size: int = 0

    @classmethod
    def plan(cls, ncpu: int, nlocks: int, ring_capacity: int,
             arrays: list[ArraySpec] = ()) -> Layout:
        if not 1 <= ncpu <= 64:
            raise ValueError(f"ncpu {ncpu} out of range 1..64")
        if ring_capacity & (ring_capacity - 1):
            raise ValueError("ring capacity must be a power of two")
        nslots = max(64, min(MAX_SLOTS_PER_CPU, SLOT_BUDGET // (ncpu * A.SLOT_SIZE)))
        lay = cls(ncpu=ncpu, nlocks=nlocks, ring_capacity=ring_capacity, nslots=nslots)
        off = _align(A.HDR_SIZE)
        lay.lock_off = off
        off = _align(off + nlocks * A.LOCK_SIZE)
        lay.cpu_off = off
        off = _align(off + ncpu * CPU_STRIDE)
        lay.stats_off = off
        lay.stats_stride = _align(nslots * A.SLOT_SIZE + lay.npairs * A.PAIR_SIZE)
        off += ncpu * lay.stats_stride
        lay.sites_off = off
        off = _align(off + A.SITE_HDR_SIZE + lay.site_capacity * A.SITE_SIZE)
        lay.rings_off = off
        lay.ring_stride = _align(A.RING_HDR_SIZE + ring_capacity * A.REC_SIZE)
        off += ncpu * lay.ring_stride
        for spec in arrays:
            if spec.name in lay.arrays:
                raise ValueError(f"array {spec.name!r} declared twice")
            off = _align(off, 64)
            lay.arrays[spec.name] = (off, spec)
            off += spec.nbytes
        lay.size = _align(off)
        return lay

    def core_args(self, cpu: int) -> tuple[int, ...]:
        """The integer arguments of ``_atomic.Core(buf, *core_args)``."""
        return (cpu, self.ncpu, self.nlocks, self.lock_off, self.cpu_off, CPU_STRIDE,
                self.stats_off, self.stats_stride, self.nslots, self.npairs, self.sites_off,
                self.site_capacity, self.rings_off, self.ring_stride, self.ring_capacity)

    def to_dict(self) -> dict:
        return {
            "size": self.size, "ncpu": self.ncpu, "nlocks": self.nlocks,
            "ring_capacity": self.ring_capacity, "stat_slots_per_cpu": self.nslots,
            "pairs_per_cpu": self.npairs,
            "arrays": {n: {"offset": o, "dtype": str(s.dtype), "shape": list(s.shape),
                           "bytes": s.nbytes} for n, (o, s) in self.arrays.items()},
        }
