"""What every ``scripts/bench_*.py`` shares: anchors, rows, the table and ``--json``.

The development hosts are two shared cores whose speed moves 2-3x with the other jobs on
them, so a figure in nanoseconds says little on its own.  Every benchmark therefore
measures, in the same run, *anchors* that move with the host, and states its targets as
ratios to one of them:

* ``mp_lock_pair`` -- one ``multiprocessing.Lock`` acquire + release (bound methods, in a
  ``for`` loop), ns;
* ``py_loop`` -- one iteration of an empty Python ``for`` loop, ns.

Each anchor is sampled in windows of about 0.1 s of wall time (so a host that takes the
core away half of the time shows it), at the start, between phases (:meth:`Bench.phase`)
and at the end of the benchmark; the median of all samples is the anchor's figure.

A :class:`Row` is one measurement: its samples (one per repetition), its unit, and the
anchor its ratio is taken to.  ``ratio`` is the row's cost per unit in anchor units: for a
time (``ns``, ``us``, ``ms``, ``s``) the median divided by the anchor; for a rate
(``.../s``, ``.../min``) the time per item divided by the anchor; for a row without an
anchor (a ratio of two figures of the same run, unit ``x``, or a count) the median itself.
``target`` bounds ``ratio`` (``goal`` ``<=`` or ``>=``).

``--json`` prints one document on stdout (the table goes to stderr then)::

    {"schema": 1, "bench": "bench_lockstep", "quick": true, "argv": [...],
     "host": {"cores": 2, "python": "3.11.7", "loadavg_start": [..3], "loadavg_end": [..3]},
     "anchors": {"mp_lock_pair": {"unit": "ns", "median": 109.9, "min": .., "max": ..,
                                  "n": 10}, "py_loop": {...}},
     "rows": [{"name": "...", "median": .., "min": .., "max": .., "unit": "faults/s",
               "n": 3, "anchor": "mp_lock_pair", "ratio": .., "target": 2.0, "goal": "<=",
               "met": true, "note": "..."}, ...]}

``met`` is null for a row without a target.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

SCHEMA = 1
# Conversion rates for targets first stated in absolute time on these hosts: a gross
# multiprocessing.Lock pair of 50 ns (PRIMITIVES.md: 34 ns net, plus the loop) and an
# empty-loop iteration of 30 ns (measured on the 2-core hosts, December 2026).
REFERENCE_NS = {"mp_lock_pair": 50.0, "py_loop": 30.0}
TIME_UNITS = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}
WINDOW_NS = 100_000_000           # one anchor sample lasts about this long
ANCHORS = ("mp_lock_pair", "py_loop")


def _lock_pair(n: int) -> float:
    lk = mp.Lock()
    acquire, release = lk.acquire, lk.release
    t0 = time.perf_counter_ns()
    for _ in range(n):
        acquire()
        release()
    return (time.perf_counter_ns() - t0) / n


def _empty_loop(n: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(n):
        pass
    return (time.perf_counter_ns() - t0) / n


_PROBES = {"mp_lock_pair": _lock_pair, "py_loop": _empty_loop}


@dataclass
class Stat:
    """Samples of one figure, with the summary the table and the JSON show."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    def summary(self) -> dict:
        if not self.samples:
            return {"median": None, "min": None, "max": None, "n": 0}
        return {"median": self.median, "min": min(self.samples), "max": max(self.samples),
                "n": len(self.samples)}


@dataclass
class Row:
    """One measurement.  ``anchor`` None: a same-run ratio (unit ``x``) or a count, whose
    ratio is its median."""

    name: str
    unit: str
    samples: list[float] = field(default_factory=list)
    anchor: str | None = "mp_lock_pair"
    target: float | None = None
    goal: str = "<="
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else math.nan

    def cost_ns(self, v: float) -> float:
        """Nanoseconds per unit of a time or rate figure."""
        if self.unit in TIME_UNITS:
            return v * TIME_UNITS[self.unit]
        if self.unit.endswith("/s"):
            scale = 1e6 if self.unit.startswith("M ") else 1.0
            return 1e9 / (v * scale) if v else math.inf
        if self.unit.endswith("/min"):
            return 60e9 / v if v else math.inf
        raise ValueError(f"row {self.name!r}: unit {self.unit!r} has no time to compare")

    def ratio(self, anchors: dict[str, Stat]) -> float | None:
        if not self.samples:
            return None
        if self.anchor is None:
            return self.median
        a = anchors[self.anchor].median
        return self.cost_ns(self.median) / a if a else None

    def met(self, anchors: dict[str, Stat]) -> bool | None:
        q = self.ratio(anchors)
        if self.target is None or q is None:
            return None
        return q <= self.target if self.goal == "<=" else q >= self.target

    def to_json(self, anchors: dict[str, Stat]) -> dict:
        s = Stat(self.samples).summary()
        return {"name": self.name, **{k: s[k] for k in ("median", "min", "max")},
                "unit": self.unit, "n": s["n"], "anchor": self.anchor,
                "ratio": self.ratio(anchors), "target": self.target, "goal": self.goal,
                "met": self.met(anchors), "note": self.note}


class Bench:
    """One benchmark run: anchors sampled along the way, rows, and the output."""

    def __init__(self, name: str, quick: bool = False, argv: list[str] | None = None):
        self.name = name
        self.quick = quick
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.rows: list[Row] = []
        self.anchors = {a: Stat() for a in ANCHORS}
        self.load_start = os.getloadavg()
        self.load_end = self.load_start
        self._iters: dict[str, int] = {}
        self.phase(3)

    def phase(self, samples: int = 2) -> None:
        """Sample every anchor ``samples`` times (about 0.1 s each)."""
        for name, probe in _PROBES.items():
            n = self._iters.get(name)
            if n is None:                      # calibrate: a window of about WINDOW_NS
                per = probe(10_000)
                n = self._iters[name] = max(1_000, int(WINDOW_NS / max(per, 1.0)))
            for _ in range(samples):
                self.anchors[name].samples.append(probe(n))

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def finish(self) -> None:
        self.phase(3)
        self.load_end = os.getloadavg()

    # -- output -----------------------------------------------------------------------

    def document(self) -> dict:
        return {
            "schema": SCHEMA, "bench": self.name, "quick": self.quick, "argv": self.argv,
            "host": {"cores": os.cpu_count(), "python": platform.python_version(),
                     "loadavg_start": [round(x, 2) for x in self.load_start],
                     "loadavg_end": [round(x, 2) for x in self.load_end]},
            "anchors": {k: {"unit": "ns", **v.summary()} for k, v in self.anchors.items()},
            "rows": [r.to_json(self.anchors) for r in self.rows],
        }

    def header(self) -> str:
        a = self.anchors
        lo = ", ".join(f"{x:.2f}" for x in self.load_start)
        le = ", ".join(f"{x:.2f}" for x in self.load_end)
        return (f"{self.name}{' --quick' if self.quick else ''}: host {os.cpu_count()} cores, "
                f"Python {platform.python_version()}; load average {lo} at the start, {le} "
                f"at the end; anchors (median of {len(a['py_loop'].samples)} samples): "
                f"multiprocessing.Lock pair {a['mp_lock_pair'].median:.1f} ns, empty loop "
                f"{a['py_loop'].median:.1f} ns/iteration")

    def table(self, file=None) -> None:
        """The rows as an aligned table (median, min-max, unit, ratio to the anchor, target)."""
        file = file or sys.stdout
        head = ("measurement", "median", "min-max", "unit", "ratio", "to", "target", "met")
        cells = []
        for r in self.rows:
            q, ok = r.ratio(self.anchors), r.met(self.anchors)
            spread = (f"{fmt(min(r.samples))}-{fmt(max(r.samples))}"
                      if len(r.samples) > 1 else "")
            cells.append((r.name, fmt(r.median) if r.samples else "-", spread, r.unit,
                          fmt(q) if q is not None else "-",
                          ANCHOR_SHORT.get(r.anchor, "-"),
                          f"{r.goal} {fmt(r.target)}" if r.target is not None else "",
                          {True: "yes", False: "NO", None: ""}[ok]))
        widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
        print(self.header(), file=file)
        right = {1, 2, 4, 6}
        for c in [head, tuple("-" * w for w in widths), *cells]:
            print("  ".join(x.rjust(w) if i in right else x.ljust(w)
                            for i, (x, w) in enumerate(zip(c, widths, strict=True))).rstrip(),
                  file=file)
        for r in self.rows:
            if r.note:
                print(f"  note: {r.name}: {r.note}", file=file)
        print("  ratio: cost per unit in anchor units (lock = multiprocessing.Lock pair, "
              "loop = empty-loop iteration); rows in x are ratios of two figures of this "
              "run.  Targets bound the ratio.", file=file)

    def report(self, as_json: bool) -> None:
        """The table on stdout; with ``as_json`` the table on stderr and JSON on stdout."""
        if as_json:
            self.table(file=sys.stderr)
            json.dump(self.document(), sys.stdout, indent=1)
            print()
        else:
            self.table()


ANCHOR_SHORT = {"mp_lock_pair": "lock", "py_loop": "loop", None: "-"}


def anchored(ns: float, anchor: str = "mp_lock_pair") -> float:
    """A target stated in nanoseconds, as a ratio to ``anchor`` (REFERENCE_NS)."""
    return ns / REFERENCE_NS[anchor]


def fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    av = abs(v)
    if av >= 1e7:
        return f"{v:.3g}"
    if av >= 100:
        return f"{v:,.0f}"
    if av >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}" if av >= 0.01 or v == 0 else f"{v:.1e}"


def add_args(ap) -> None:
    """The options every bench takes."""
    ap.add_argument("--quick", action="store_true", help="a shorter run (under ~3 minutes)")
    ap.add_argument("--json", action="store_true",
                    help="print a JSON document on stdout (the table goes to stderr)")
