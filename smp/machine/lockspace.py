"""Lock classes and lock ids: the names behind the lock table's words.

Every lock word in the segment belongs to a class (``pmap_main_lock``,
``pmap``, ``pvh``, ``fpageq``, ``kernel_lock``, ...) and has an instance
label for reports (``pmap[17]``).  Locks are declared before the segment is
made -- by the machine for its own (``sched_lock``) and by the kernel for the
rest -- as contiguous ranges of ids; the ranges are inherited by every worker
(they fork after boot) and written into the run directory, so tools can name
any lock id without importing the kernel.

Kinds: ``spin`` (simple_lock), ``rw`` (spinlockmgr, shared/exclusive) and
``spin-recursive`` (the big kernel lock, which its holder may take again).

Lock order (LOCKDEBUG): whoever declares the classes may also rank them
(``set_order``: outermost first).  A CPU whose core is handed the ranks
(``order_tables``, ``_atomic.Core.set_lock_order``) records every blocking
acquisition made out of order -- a class taken while one of an equal or
higher rank is held, or a second instance of a class with a lower id than
the one held -- as a *finding* in its ``ORDER_FINDING_DTYPE`` records; it
neither refuses the lock nor adds a scheduling point.  Try-locks are exempt
(they cannot deadlock).  A class may name a *serializer*: a class whose
exclusive holder is alone, so that the class may be taken out of order under
it (pmap locks after a pv-head lock under an exclusive ``pmap_main_lock``).
Unranked classes (a load's own locks) are not checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from smp.machine import _atomic

KINDS = {"spin": 0, "rw": _atomic.LF_RW, "spin-recursive": _atomic.LF_RECURSE}


@dataclass(frozen=True)
class LockClass:
    id: int
    name: str
    kind: str


ORDER_FINDING_DTYPE = np.dtype(
    [("held_class", "<u4"), ("wanted_class", "<u4"), ("held_site", "<u4"), ("site", "<u4"),
     ("held_lock", "<u4"), ("wanted_lock", "<u4"), ("count", "<u8")]
)       # struct order_finding of _atomic.c
if ORDER_FINDING_DTYPE.itemsize != _atomic.FINDING_SIZE:  # pragma: no cover - build mismatch
    raise ImportError("lockspace: ORDER_FINDING_DTYPE does not match struct order_finding")

AGGREGATE_OVER = 1024    # ranges larger than this keep statistics per class (LF_CLASS)


@dataclass(frozen=True)
class LockRange:
    first: int
    count: int
    klass: int
    label: str      # instance label; "{i}" is replaced by the index within the range
    aggregate: bool = False   # statistics per class and site, not per instance


@dataclass
class LockSpace:
    """The declared classes and id ranges of one machine's lock table."""

    classes: list[LockClass] = field(default_factory=list)
    ranges: list[LockRange] = field(default_factory=list)
    nlocks: int = 0
    ranks: dict[int, int] = field(default_factory=dict)         # class id -> rank (>= 1)
    serializers: dict[int, int] = field(default_factory=dict)   # class id -> class id
    guards: dict[int, tuple[int, int]] = field(default_factory=dict)   # -> (held, guard)

    def lock_class(self, name: str, kind: str = "spin") -> LockClass:
        """Find or declare a class."""
        if kind not in KINDS:
            raise ValueError(f"lock class {name}: unknown kind {kind!r}")
        for c in self.classes:
            if c.name == name:
                if c.kind != kind:
                    raise ValueError(f"lock class {name} declared as {c.kind} and {kind}")
                return c
        c = LockClass(len(self.classes), name, kind)
        self.classes.append(c)
        return c

    def declare(self, class_name: str, kind: str = "spin", count: int = 1,
                label: str | None = None, aggregate: bool | None = None) -> int:
        """Reserve ``count`` consecutive lock ids of a class; returns the first.

        ``aggregate``: count statistics per class and call site rather than per lock
        (default: for ranges of more than AGGREGATE_OVER locks, such as one pvh lock
        per physical page, which would overflow the per-CPU statistics table).
        """
        if count < 1:
            raise ValueError("count must be >= 1")
        c = self.lock_class(class_name, kind)
        if label is None:
            label = class_name if count == 1 else class_name + "[{i}]"
        first = self.nlocks
        if aggregate is None:
            aggregate = count > AGGREGATE_OVER
        self.ranges.append(LockRange(first, count, c.id, label, aggregate))
        self.nlocks += count
        return first

    def name_of(self, lock: int) -> str:
        """Instance label of a lock id (``pmap[3]``, ``pmaps_lock``)."""
        for r in self.ranges:
            if r.first <= lock < r.first + r.count:
                return r.label.replace("{i}", str(lock - r.first))
        return f"lock#{lock}"

    def class_of(self, lock: int) -> LockClass:
        for r in self.ranges:
            if r.first <= lock < r.first + r.count:
                return self.classes[r.klass]
        raise KeyError(lock)

    def format_words(self, locks) -> None:
        """Write class ids and flags into the segment's lock words."""
        for r in self.ranges:
            c = self.classes[r.klass]
            locks["klass"][r.first:r.first + r.count] = c.id
            locks["flags"][r.first:r.first + r.count] = KINDS[c.kind] | (
                _atomic.LF_CLASS if r.aggregate else 0)

    def set_order(self, order: list[tuple[str, ...]],
                  serialized_by: Mapping[str, str] = {},  # noqa: B006 - read only
                  guarded_by: Mapping[str, tuple[str, str]] = {}) -> None:  # noqa: B006
        """Rank the declared classes: ``order`` lists them outermost first, classes in
        one tuple sharing a rank (siblings never held together); ``serialized_by`` maps
        a class to the class whose exclusive hold lets it be taken out of order;
        ``guarded_by`` maps a class to (held, guard): taken while a lock of class held
        is held, it needs a lock of class guard held too (in order or not)."""
        by_name = {c.name: c.id for c in self.classes}
        ranks: dict[int, int] = {}
        for rank, group in enumerate(order, 1):
            for name in group:
                if name not in by_name:
                    raise ValueError(f"lock order: no lock class {name!r}")
                if by_name[name] in ranks:
                    raise ValueError(f"lock order: class {name!r} ranked twice")
                ranks[by_name[name]] = rank
        sers = {}
        for name, ser in serialized_by.items():
            for n in (name, ser):
                if n not in by_name:
                    raise ValueError(f"lock order: no lock class {n!r}")
            sers[by_name[name]] = by_name[ser]
        guards = {}
        for name, (held, guard) in guarded_by.items():
            for n in (name, held, guard):
                if n not in by_name:
                    raise ValueError(f"lock order: no lock class {n!r}")
            guards[by_name[name]] = (by_name[held], by_name[guard])
        self.ranks, self.serializers, self.guards = ranks, sers, guards

    def order_tables(self) -> tuple[bytes, bytes]:
        """The ranks and serializers per class id, as ``Core.set_lock_order`` takes them."""
        n = len(self.classes)
        rank = np.zeros(n, np.uint16)
        ser = np.zeros(n, np.uint16)
        for k, r in self.ranks.items():
            rank[k] = r
        for k, s in self.serializers.items():
            ser[k] = s + 1
        return rank.tobytes(), ser.tobytes()

    def guard_table(self) -> bytes:
        """The guards per class id (held class + 1, guard class + 1; 0, 0 none), as the
        ``guards`` argument of ``Core.set_lock_order``."""
        g = np.zeros((len(self.classes), 2), np.uint16)
        for k, (held, guard) in self.guards.items():
            g[k] = held + 1, guard + 1
        return g.tobytes()

    def to_dict(self) -> dict:
        return {
            "classes": [{"id": c.id, "name": c.name, "kind": c.kind} for c in self.classes],
            "ranges": [{"first": r.first, "count": r.count, "class": r.klass, "label": r.label,
                        "aggregate": r.aggregate} for r in self.ranges],
            "nlocks": self.nlocks,
        }
