"""Reading ``lockstat.json`` and aggregating its slots: the data side of ``smp lockstat``.

The machine writes one record per (CPU, lock, call site, mode) slot and one pair per (CPU,
lock class, waiter site, holder site, mode); see ``smp/machine/lockstat.py`` for the schema.
This module checks that document (every problem is one ``BadInput`` line naming the file),
turns records into :class:`Rec` values and merges them into :class:`Stat` sums under any key
the reports need: instance or class, call site or ``<all>``, per CPU or not.

What the counters mean (from ``smp/machine/_atomic.c``):

* ``acq`` every acquisition, recursive re-entries of ``kernel_lock`` included;
* ``contended`` acquisitions that had to spin at least once; ``wait_*`` and the wait
  histogram describe only those (an uncontended acquisition waits 0 ns and is not in them);
* ``bounces`` acquisitions whose previous acquirer was another CPU; ``con_bounces`` the
  contended ones among them;
* hold time runs from acquisition to release and is charged to the *outermost* hold only
  (recursive re-entries add no hold); a lock still held when the run stopped has no hold
  either.  So the number of holds is the histogram's sum, not ``acq``.

It imports neither the machine nor the kernel: tools read run directories only.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from smp.errors import BadInput
from smp.rundir.format import (  # noqa: F401 - LOCKSTAT_FILE re-exported
    LOCKSTAT_FILE,
    LOCKSTAT_SCHEMA,
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
)
from smp.rundir.reader import dig, read_json

NHIST = 32                     # log2 buckets in the machine; the last one is open-ended

# lock kinds of lockstat.json, in report order, with the section title and -T names
KINDS = ("spin", "rw", "spin-recursive")
KIND_TITLE = {"spin": "Simple lock", "rw": "RW lock", "spin-recursive": "Kernel lock"}
TYPE_NAMES = {  # -T names (NetBSD's, where one fits) -> kind
    "simple_lock": "spin", "spin": "spin",
    "rwlock": "rw", "rw": "rw", "spinlockmgr": "rw",
    "kernel_lock": "spin-recursive", "spin-recursive": "spin-recursive",
}
TYPE_HELP = (("simple_lock", "spin", "simple_lock(): spin lock"),
             ("rwlock", "rw", "spinlockmgr(): spinning reader/writer lock"),
             ("kernel_lock", "spin-recursive", "the big kernel lock (recursive)"))

# -E events: NetBSD records only "spin" (and sleep, which no simulated lock does); the
# simulator also sees every acquisition and every hold, so it offers them as events too.
EVENTS = ("spin", "hold", "acquire")
EVENT_HELP = {
    "spin": ("contended acquisitions", "spin (wait) time"),
    "hold": ("holds (outermost acquire..release)", "hold time"),
    "acquire": ("all acquisitions (recursive ones included)", "spin (wait) time"),
}

_INT_FIELDS = ("acq", "contended", "spins", "bounces", "con_bounces", "wait_total", "wait_max",
               "wait_min", "hold_total", "hold_max", "hold_min")
_STR_FIELDS = ("name", "class", "kind", "mode", "site")
_PAIR_INT = ("count", "wait_total")
_PAIR_STR = ("class", "waiter", "holder", "mode")


@dataclass
class Stat:
    """Sums over any number of slots.  Minima are over slots that had such events."""

    acq: int = 0
    contended: int = 0
    spins: int = 0
    bounces: int = 0
    con_bounces: int = 0
    holds: int = 0
    wait_total: int = 0
    wait_min: int = 0
    wait_max: int = 0
    hold_total: int = 0
    hold_min: int = 0
    hold_max: int = 0
    wait_hist: list[int] = field(default_factory=list)
    hold_hist: list[int] = field(default_factory=list)

    def add(self, o: Stat) -> None:
        # a minimum of 0 means "no such event" in a slot, so it must not win the min
        if o.contended:
            self.wait_min = min(self.wait_min, o.wait_min) if self.contended else o.wait_min
        if o.holds:
            self.hold_min = min(self.hold_min, o.hold_min) if self.holds else o.hold_min
        self.acq += o.acq
        self.contended += o.contended
        self.spins += o.spins
        self.bounces += o.bounces
        self.con_bounces += o.con_bounces
        self.holds += o.holds
        self.wait_total += o.wait_total
        self.wait_max = max(self.wait_max, o.wait_max)
        self.hold_total += o.hold_total
        self.hold_max = max(self.hold_max, o.hold_max)
        self.wait_hist = _hist_add(self.wait_hist, o.wait_hist)
        self.hold_hist = _hist_add(self.hold_hist, o.hold_hist)

    @property
    def wait_avg(self) -> float:
        return self.wait_total / self.contended if self.contended else 0.0

    @property
    def hold_avg(self) -> float:
        return self.hold_total / self.holds if self.holds else 0.0

    def metric(self, event: str) -> tuple[int, int]:
        """(Count, Time in ns) of the lockstat(8) table for one -E event."""
        if event == "spin":
            return self.contended, self.wait_total
        if event == "hold":
            return self.holds, self.hold_total
        return self.acq, self.wait_total

    def summary(self) -> dict[str, int]:
        """Every scalar, for JSON and CSV rows (times in ns)."""
        return {"acq": self.acq, "contended": self.contended, "spins": self.spins,
                "bounces": self.bounces, "con_bounces": self.con_bounces, "holds": self.holds,
                "wait_total_ns": self.wait_total, "wait_min_ns": self.wait_min,
                "wait_max_ns": self.wait_max, "hold_total_ns": self.hold_total,
                "hold_min_ns": self.hold_min, "hold_max_ns": self.hold_max}


def _hist_add(a: list[int], b: list[int]) -> list[int]:
    if len(a) < len(b):
        a, b = b, a
    out = list(a)
    for i, v in enumerate(b):
        out[i] += v
    return out


def bucket_bounds(b: int) -> tuple[int, float]:
    """[from, to) in ns of log2 bucket b: bucket 0 is exactly 0 ns, the last is open."""
    lo = 0 if b == 0 else 1 << (b - 1)
    return lo, (math.inf if b >= NHIST - 1 else (1 if b == 0 else 1 << b))


@dataclass(frozen=True)
class Rec:
    """One slot of lockstat.json: one CPU's counts for (lock, call site, mode)."""

    cpu: int
    lock: str           # instance label, e.g. bucket[3]
    klass: str          # class name, e.g. synth_bucket
    kind: str           # spin | rw | spin-recursive
    mode: str           # excl | shared
    site: str           # the function that called lock()
    stat: Stat


@dataclass(frozen=True)
class Pair:
    """Contended acquisitions by ``waiter`` while ``holder`` held a lock of ``klass``."""

    cpu: int
    klass: str
    kind: str
    mode: str
    waiter: str
    holder: str
    count: int
    wait_total: int


@dataclass
class Lockstat:
    """A run's lockstat.json, checked."""

    path: Path
    run: Path
    elapsed_ns: int
    ncpu: int
    recs: list[Rec]
    pairs: list[Pair]
    classes: dict[str, str]           # class name -> kind
    ranges: list[tuple[str, int, str]]  # declared lock ranges: (label, count, class name)
    sites: list[str]
    slot_overflow: int
    pair_overflow: int
    stats_off: bool                   # manifest.json says kernel option lockstat = off
    _instances: dict[str, set[str]] | None = None

    @property
    def elapsed_s(self) -> float:
        return self.elapsed_ns / 1e9

    def class_instances(self) -> dict[str, set[str]]:
        """Every instance label the run knows, by class: recorded and declared locks."""
        if self._instances is None:
            d: dict[str, set[str]] = {}
            for r in self.recs:
                d.setdefault(r.klass, set()).add(r.lock)
            for label, count, klass in self.ranges:
                names = d.setdefault(klass, set())
                if "{i}" not in label:
                    names.add(label)
                else:   # a range may be large (every pmap): cap what a name check expands
                    names.update(label.replace("{i}", str(k)) for k in range(min(count, 1 << 16)))
            self._instances = d
        return self._instances

    def instances(self) -> Iterable[str]:
        for names in self.class_instances().values():
            yield from names


def _fail(path: Path, msg: str) -> BadInput:
    return BadInput(f"{path}: {msg}")


def _need(path: Path, where: str, d: object, ints: tuple, strs: tuple) -> dict:
    if not isinstance(d, dict):
        raise _fail(path, f"{where}: expected an object")
    for k in ints:
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _fail(path, f"{where}.{k} = {v!r}: expected a non-negative integer")
    for k in strs:
        if not isinstance(d.get(k), str):
            raise _fail(path, f"{where}.{k} = {d.get(k)!r}: expected a string")
    return d


def _hist(path: Path, where: str, v: object) -> list[int]:
    if not isinstance(v, list) or len(v) > NHIST or not all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
        raise _fail(path, f"{where}: expected a list of at most {NHIST} non-negative integers")
    return v


def resolve(spec: str | Path) -> tuple[Path, Path]:
    """(run directory, lockstat.json) of a run directory or of a lockstat.json path."""
    p = Path(spec)
    if p.is_dir():
        f = p / LOCKSTAT_FILE
        if not f.is_file():
            raise _fail(f, "no such file (no lock statistics in this run directory)")
        return p, f
    if p.is_file():
        return p.parent, p
    raise _fail(p, "no such run directory")


def load(spec: str | Path) -> Lockstat:
    """Read and check a run's lockstat.json; any problem is one BadInput line."""
    run, path = resolve(spec)
    doc = read_json(path, LOCKSTAT_SCHEMA)
    _need(path, "lockstat", doc, ("elapsed_ns", "ncpu"), ())
    if doc["ncpu"] < 1:
        raise _fail(path, "ncpu = 0: expected at least one CPU")
    for k in ("records", "pairs"):
        if not isinstance(doc.get(k), list):
            raise _fail(path, f"{k}: expected a list")

    recs: list[Rec] = []
    classes: dict[str, str] = {}
    for i, r in enumerate(doc["records"]):
        where = f"records[{i}]"
        _need(path, where, r, ("cpu",) + _INT_FIELDS, _STR_FIELDS)
        # a kind this reader does not know still reports, under its own name
        if not r["kind"]:
            raise _fail(path, f"{where}.kind: empty")
        if r["mode"] not in ("excl", "shared"):
            raise _fail(path, f"{where}.mode = {r['mode']!r}: expected excl or shared")
        wh = _hist(path, f"{where}.wait_hist", r.get("wait_hist", []))
        hh = _hist(path, f"{where}.hold_hist", r.get("hold_hist", []))
        s = Stat(acq=r["acq"], contended=r["contended"], spins=r["spins"],
                 bounces=r["bounces"], con_bounces=r["con_bounces"], holds=sum(hh),
                 wait_total=r["wait_total"], wait_min=r["wait_min"], wait_max=r["wait_max"],
                 hold_total=r["hold_total"], hold_min=r["hold_min"], hold_max=r["hold_max"],
                 wait_hist=list(wh), hold_hist=list(hh))
        recs.append(Rec(r["cpu"], r["name"], r["class"], r["kind"], r["mode"], r["site"], s))
        classes.setdefault(r["class"], r["kind"])

    locks = doc.get("locks") if isinstance(doc.get("locks"), dict) else {}
    ranges = locks.get("ranges") if isinstance(locks.get("ranges"), list) else []
    for c in locks.get("classes", []) if isinstance(locks.get("classes"), list) else []:
        if isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(
                c.get("kind"), str):
            classes.setdefault(c["name"], c["kind"])
    class_by_id = {c.get("id"): c.get("name") for c in locks.get("classes", [])
                   if isinstance(c, dict)} if isinstance(locks.get("classes"), list) else {}

    pairs: list[Pair] = []
    for i, p in enumerate(doc["pairs"]):
        where = f"pairs[{i}]"
        _need(path, where, p, ("cpu",) + _PAIR_INT, _PAIR_STR)
        if p["mode"] not in ("excl", "shared"):
            raise _fail(path, f"{where}.mode = {p['mode']!r}: expected excl or shared")
        kind = classes.get(p["class"], "spin")
        pairs.append(Pair(p["cpu"], p["class"], kind, p["mode"], p["waiter"], p["holder"],
                          p["count"], p["wait_total"]))

    so = po = 0
    for o in doc.get("overflow", []) if isinstance(doc.get("overflow"), list) else []:
        if isinstance(o, dict):
            so += int(o.get("slot_overflow", 0) or 0)
            po += int(o.get("pair_overflow", 0) or 0)

    decl = []
    for r in ranges:
        if (isinstance(r, dict) and isinstance(r.get("label"), str)
                and isinstance(r.get("count"), int) and r.get("class") in class_by_id):
            decl.append((r["label"], r["count"], str(class_by_id[r["class"]])))

    sites = [s for s in doc.get("sites", []) if isinstance(s, str)] if isinstance(
        doc.get("sites"), list) else []
    return Lockstat(path=path, run=run, elapsed_ns=doc["elapsed_ns"], ncpu=doc["ncpu"],
                    recs=recs, pairs=pairs, classes=classes, ranges=decl,
                    sites=sorted(set(sites) | {r.site for r in recs}
                                 | {p.waiter for p in pairs} | {p.holder for p in pairs}),
                    slot_overflow=so, pair_overflow=po, stats_off=_stats_off(run))


def _stats_off(run: Path) -> bool:
    """True when the run's manifest says lock statistics were not collected."""
    try:
        m = read_json(run / MANIFEST_FILE, MANIFEST_SCHEMA, optional=True, whole=False)
    except BadInput:
        return False
    return dig(m, "kernel", "lockstat", want=bool) is False


# ---------------------------------------------------------------- selection


@dataclass
class Selection:
    """What -L, -F, -T and -E select.  Patterns are shell globs (fnmatch)."""

    locks: list[str] = field(default_factory=list)     # instance or class names
    funcs: list[str] = field(default_factory=list)     # call sites (qualified or last part)
    kinds: list[str] = field(default_factory=list)     # empty: all
    events: list[str] = field(default_factory=lambda: ["spin"])

    def lock_ok(self, instance: str, klass: str) -> bool:
        return not self.locks or any(name_match(instance, p) or name_match(klass, p)
                                     for p in self.locks)

    def func_ok(self, site: str) -> bool:
        return not self.funcs or any(_site_match(site, p) for p in self.funcs)

    def kind_ok(self, kind: str) -> bool:
        return not self.kinds or kind in self.kinds

    def rec_ok(self, r: Rec) -> bool:
        return self.kind_ok(r.kind) and self.lock_ok(r.lock, r.klass) and self.func_ok(r.site)

    def describe(self) -> str:
        parts = [f"event {','.join(self.events)}"]
        parts.append("types " + (",".join(self.kinds) if self.kinds else "all"))
        parts += [f"-L {p}" for p in self.locks] + [f"-F {p}" for p in self.funcs]
        return "; ".join(parts)

    def check(self, ls: Lockstat) -> None:
        """-L/-F naming nothing the run knows is a typo, not an empty result: say so."""
        for p in self.locks:
            if not any(name_match(n, p) for n in (*ls.classes, *ls.instances())):
                known = ", ".join(sorted(ls.classes)) or "none"
                raise _fail(ls.path, f"-L {p}: no lock or lock class of that name "
                            f"(classes: {known})")
        for p in self.funcs:
            if not any(_site_match(s, p) for s in ls.sites):
                raise _fail(ls.path, f"-F {p}: no call site of that name in this run")


def name_match(name: str, pat: str) -> bool:
    """Exact name first -- ``pmap[3]`` is a name, though as a glob it means ``pmap3`` --
    then a shell glob."""
    return name == pat or fnmatch.fnmatchcase(name, pat)


def _site_match(site: str, pat: str) -> bool:
    return name_match(site, pat) or name_match(site.rsplit(".", 1)[-1], pat)


def section_key(kind: str, mode: str) -> tuple[int, int]:
    """Report order of (kind, mode): as lockstat(8), writers before readers."""
    return (KINDS.index(kind) if kind in KINDS else len(KINDS), 0 if mode == "excl" else 1)


def section_title(kind: str, mode: str, event: str) -> str:
    """``Simple lock spin``, ``RW lock spin (reader)``, ``Kernel lock hold`` ..."""
    title = f"{KIND_TITLE.get(kind, kind)} {event}"
    if kind == "rw":
        title += " (writer)" if mode == "excl" else " (reader)"
    return title


def merge(items: Iterable[tuple[object, Stat]]) -> dict:
    """Sum Stats by key, keeping first-seen key order."""
    out: dict = {}
    for k, s in items:
        t = out.get(k)
        if t is None:
            t = out[k] = Stat()
        t.add(s)
    return out
