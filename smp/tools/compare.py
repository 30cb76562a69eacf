"""``smp compare``: compare the trace logs of two runs, or of two groups of runs.

Stands for ``perf diff`` (a baseline and a new profile, Δ columns, "only in one" entries),
``benchstat`` (several runs per side, a Mann-Whitney U test, ``~`` for "no significant
change") and virtjs ``cpu-diff`` (first divergence of two execution logs, then
re-synchronization), applied to kernel console and UVMHIST logs.

    smp compare RUN_A RUN_B                    two runs (or two text logs)
    smp compare --a R1 R2 R3 --b R4 R5 R6      two groups, e.g. seeds of two kernels

Inputs are run directories (read from ``events.bin`` + ``catalogue.json``: every record
carries its template exactly, and templates are matched by their text, never by
catalogue id, since ids change between code versions) or plain text logs, including logs
this project did not write, such as a real NetBSD console; their templates are mined by
masking numbers, addresses, pids, times, dates, hosts, paths and keys
(:mod:`smp.tools.trace_mask`).  When any input
is a text log, every input is mined the same way, so the two sides stay comparable.

Output, in order:

1. the header: both manifests side by side (load script, machine, kernel configuration and
   the keys in which the two differ, seed, mode, version), duration, records, dropped;
2. the template table: one row per template with its count in A and B (the mean per run
   for groups), rate per simulated second, Δ = B − A, ratio B/A, a significance test with
   Benjamini-Hochberg control over all rows; templates seen on one side only come first,
   always (they are usually the news); then the rest by q, then by |Δ| (perf diff
   ``delta-abs``);
3. ``--per-cpu``: the same table per CPU;
4. the sequence view (one run per side): the first divergence with context on both sides,
   and where the logs re-synchronize (:mod:`smp.tools.compare_seq`);
5. the boot lines: identical on both sides, or what differs (``-`` A, ``+`` B).

Boot lines -- the kernel's boot and shutdown messages (copyright, version line, ``total
memory``, ``avail memory``, ``cpuN at mainbus0``, ``boot device``, ``syncing disks``,
``rebooting``; tagged ``boot`` in a run's catalogue, recognised by their wording in a text
log) -- say which machine and kernel booted, not what the run did.  They are kept out of
the template table, the per-CPU table and the sequence view (whose line numbers still
count them, so they match console.log), and shown in their own section instead: two
runs on machines of different ``physmem`` differ in ``total memory`` there, as a
difference of the configuration, never as a changed template or a divergence.  Two runs
of one configuration have identical boot lines; a run that panicked, deadlocked or lost
a CPU has no shutdown lines, which the section shows too.

Tests (``--test``): ``utest`` (Mann-Whitney U over the per-run values; the default when both
sides have at least two runs), ``binom`` (conditional binomial test of the pooled counts,
the default for one run per side: it assumes Poisson counts, so treat it as a hint and use
seeds), ``none``.  Δ, ratio and tests are per run by default (the same load script does the
same work whatever the kernel), per simulated second with ``--rate``.

``--json`` prints one JSON object (``"schema": 1``).  ``--fail-on`` turns findings into exit
status 1 for CI: ``only-in-a``, ``only-in-b``, ``only`` (either), ``panic`` (a panic in B),
``dropped`` (B lost records), ``significant`` (a row with q < alpha), ``changed`` (any count
differs), ``diverged`` (the sequence view found a divergence), ``boot`` (the boot lines
differ: the two sides booted different machines or kernels, or one did not shut down).
None of the others looks at boot lines.  Exit status: 0 fine, 1 a
``--fail-on`` condition held (named on stderr), 2 bad input.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from smp.errors import BadInput
from smp.rundir.reader import dig
from smp.tools import compare_seq, compare_stats, trace_input, trace_mask
from smp.tools.trace import emit
from smp.tools.trace_input import Log, SeqSource

SCHEMA = 1
FAIL_ON = ("only-in-a", "only-in-b", "only", "panic", "dropped", "significant", "changed",
           "diverged", "boot")
TESTS = ("auto", "utest", "binom", "none")


# ---------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="compare the trace logs of two runs or two groups of runs",
        description="Compare trace logs: run headers side by side, per-template counts with "
        "Δ, ratio and a significance test, per-CPU tables, the first divergence of two "
        "runs. Inputs are run directories or text logs (also foreign, e.g. a NetBSD "
        "console).", epilog="Exit status: 0 OK, 1 a --fail-on condition held, 2 bad input.")
    p.add_argument("runs", nargs="*", metavar="A B", help="two run directories or logs")
    p.add_argument("--a", nargs="+", metavar="RUN", help="group A (e.g. seeds of one kernel)")
    p.add_argument("--b", nargs="+", metavar="RUN", help="group B")
    p.add_argument("--per-cpu", action="store_true", help="also the table per CPU")
    p.add_argument("--rate", action="store_true",
                   help="Δ, ratio and tests per simulated second instead of per run")
    p.add_argument("--test", choices=TESTS, default="auto",
                   help="significance test (auto: utest with ≥2 runs per side, else binom)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="q-value below which a row is flagged significant (default 0.05)")
    p.add_argument("--templates", choices=("auto", "exact", "mined"), default="auto",
                   help="exact (from catalogue.json) or mined templates (auto: exact when "
                   "every input is a run directory with events.bin)")
    p.add_argument("-n", "--top", type=int, metavar="N",
                   help="at most N rows per table besides the only-in rows (always shown)")
    p.add_argument("--no-seq", action="store_true", help="no sequence view")
    p.add_argument("--context", type=int, default=3, metavar="N",
                   help="lines of context around a divergence (default 3)")
    p.add_argument("--divergences", type=int, default=1, metavar="N",
                   help="how many divergences to show (default 1)")
    p.add_argument("--window", type=int, default=2000, metavar="N",
                   help="lines searched for re-synchronization (default 2000)")
    p.add_argument("--json", action="store_true", help="JSON output (schema 1)")
    p.add_argument("--fail-on", action="append", default=[], metavar="COND[,COND]",
                   help="exit 1 when a condition holds: " + ", ".join(FAIL_ON))
    p.add_argument("--force", action="store_true",
                   help="skip records of a corrupt events.bin (counted in the notes) "
                   "instead of refusing it")
    p.add_argument("--partial", action="store_true",
                   help="accept a truncated events.bin (drop the partial record)")
    p.set_defaults(func=main)


def main(a: argparse.Namespace) -> int:
    side_a, side_b = _sides(a)
    fail_on = _fail_on(a.fail_on)
    for name, v, lo in (("--context", a.context, 0), ("--divergences", a.divergences, 1),
                        ("--window", a.window, 1)):
        if v < lo:
            raise BadInput(f"{name} {v}: expected an integer >= {lo}")
    if a.top is not None and a.top < 0:
        raise BadInput(f"--top {a.top}: expected a non-negative integer")
    if not 0 < a.alpha < 1:
        raise BadInput(f"--alpha {a.alpha}: expected a number between 0 and 1")
    single = len(side_a) == 1 and len(side_b) == 1
    if "diverged" in fail_on and (not single or a.no_seq):
        raise BadInput("--fail-on diverged: needs one run per side and the sequence view")
    # a batch program building millions of strings and no cycles: the collector would only
    # walk the heap again and again
    with trace_input.no_gc():
        logs_a = [trace_input.load(p, partial_ok=a.partial, force=a.force) for p in side_a]
        logs_b = [trace_input.load(p, partial_ok=a.partial, force=a.force) for p in side_b]
        for log in logs_a + logs_b:
            trace_input.warn_suspect(log, "smp compare")
        result = compare(logs_a, logs_b, test=a.test, alpha=a.alpha, rate=a.rate,
                         templates=a.templates, per_cpu=a.per_cpu,
                         seq=single and not a.no_seq, context=a.context,
                         divergences=a.divergences, window=a.window)
    result.fail = evaluate_fail_on(result, fail_on)
    emit(json.dumps(result.to_json(), indent=1) + "\n" if a.json
         else render_text(result, top=a.top))
    for cond, why in result.fail:
        print(f"smp compare: --fail-on {cond}: {why}", file=sys.stderr)
    return 1 if result.fail else 0


def _sides(a: argparse.Namespace) -> tuple[list[str], list[str]]:
    if a.a or a.b:
        if a.runs:
            raise BadInput("give either two inputs A B or groups --a ... --b ..., not both")
        if not (a.a and a.b):
            raise BadInput("--a and --b go together: both groups are needed")
        return list(a.a), list(a.b)
    if len(a.runs) != 2:
        raise BadInput(f"expected two inputs A B (or --a ... --b ...), got {len(a.runs)}")
    return [a.runs[0]], [a.runs[1]]


def _fail_on(items: Sequence[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        for cond in filter(None, (c.strip() for c in item.split(","))):
            if cond not in FAIL_ON:
                raise BadInput(f"--fail-on {cond}: expected one of {', '.join(FAIL_ON)}")
            if cond not in out:
                out.append(cond)
    return out


# ---------------------------------------------------------------- the comparison


@dataclass
class Row:
    template: str
    kind: str
    cpu: int | None
    a: float                     # count (mean per run for groups)
    b: float
    a_total: int
    b_total: int
    a_rate: float | None         # per simulated second, pooled over the group
    b_rate: float | None
    delta: float                 # B - A, per run or per second (--rate)
    ratio: float | None
    only: str | None             # "a" | "b" | None
    a_runs: list[int] = field(default_factory=list)
    b_runs: list[int] = field(default_factory=list)
    p: float | None = None
    q: float | None = None
    significant: bool | None = None

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        for k in ("a_rate", "b_rate", "ratio", "p", "q", "delta", "a", "b"):
            v = d[k]
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        if self.cpu is None:
            del d["cpu"]
        return d


@dataclass
class Result:
    logs_a: list[Log]
    logs_b: list[Log]
    mode: str                    # "exact" | "mined"
    test: str                    # "utest" | "binom" | "none"
    basis: str                   # "run" | "s"
    alpha: float
    rows: list[Row]
    per_cpu: list[Row] | None
    seq: compare_seq.SeqResult | None
    notes: list[str]
    n_templates: tuple[int, int]
    boot: BootView | None = None
    fail: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA, "tool": "smp compare",
            "a": _side_json(self.logs_a), "b": _side_json(self.logs_b),
            "templates": {"mode": self.mode, "a": self.n_templates[0],
                          "b": self.n_templates[1],
                          "masks": list(trace_mask.MASKS) if self.mode == "mined" else []},
            "test": {"name": self.test, "basis": self.basis, "alpha": self.alpha,
                     "correction": "benjamini-hochberg"},
            "rows": [r.to_json() for r in self.rows],
            "per_cpu": None if self.per_cpu is None else [r.to_json() for r in self.per_cpu],
            "sequence": None if self.seq is None else self.seq.to_json(),
            "boot": None if self.boot is None else self.boot.to_json(),
            "notes": self.notes,
            "fail_on": [{"condition": c, "why": w} for c, w in self.fail],
        }


def compare(logs_a: list[Log], logs_b: list[Log], *, test: str = "auto", alpha: float = 0.05,
            rate: bool = False, templates: str = "auto", per_cpu: bool = False,
            seq: bool = True, context: int = 3, divergences: int = 1,
            window: int = 2000) -> Result:
    """Compare two groups of logs (see the module docstring); no printing."""
    notes: list[str] = []
    every = logs_a + logs_b
    exact = all(lg.exact for lg in every)
    if templates == "exact" and not exact:
        text = next(lg for lg in every if not lg.exact)
        raise BadInput(f"{text.source}: --templates exact needs run directories with "
                       f"events.bin; this is a text log")
    if not exact or templates == "mined":
        if exact or any(lg.exact for lg in every):
            notes.append("templates mined on both sides (not every input has events.bin)"
                         if not exact else "templates mined (--templates mined)")
        logs_a = [lg.as_text() if lg.exact else lg for lg in logs_a]
        logs_b = [lg.as_text() if lg.exact else lg for lg in logs_b]
        exact = False
    na, nb = len(logs_a), len(logs_b)
    if test == "auto":
        test = "utest" if na >= 2 and nb >= 2 else "binom"
    if test == "utest" and (na < 2 or nb < 2):
        raise BadInput(f"--test utest: needs at least two runs per side (A has {na}, B {nb})")
    if test == "utest" and compare_stats.utest_min_p(na, nb) > alpha:
        notes.append(f"utest: with {na} and {nb} runs the smallest possible p is "
                     f"{compare_stats.utest_min_p(na, nb):.3f} > alpha {alpha:g}: "
                     f"no row can be significant; add runs")
    # one id per template over all inputs, matched by key (text), not by catalogue id
    gids: dict[tuple, int] = {}
    gtext: list[tuple[str, str]] = []
    local: list[np.ndarray] = []
    for lg in logs_a + logs_b:
        ids = []
        for t in lg.templates:
            g = gids.get(t.key)
            if g is None:
                g = gids[t.key] = len(gtext)
                gtext.append((t.text, t.kind))
            ids.append(g)
        local.append(np.array(ids + [0], np.int64))  # + a spare slot for empty logs
    G = len(gtext)
    # boot lines are the configuration's, not the experiment's: counted nowhere
    keep = [~lg.boot_mask() for lg in logs_a + logs_b]
    gid_of = [loc[lg.tid][k] if lg.n else np.zeros(0, np.int64)
              for loc, lg, k in zip(local, logs_a + logs_b, keep, strict=True)]
    cpu_of = [lg.cpu[k] for lg, k in zip(logs_a + logs_b, keep, strict=True)]
    counts = _counts(gid_of, G)
    ca, cb = counts[:na], counts[na:]
    dur_a = [lg.duration for lg in logs_a]
    dur_b = [lg.duration for lg in logs_b]
    if rate:
        for lg in logs_a + logs_b:
            if lg.duration is None:
                raise BadInput(f"{lg.source}: --rate needs a duration (no summary.json and "
                               f"no timestamps)")
    basis = "s" if rate else "run"
    rows = _rows(ca, cb, dur_a, dur_b, gtext, None, test, alpha, basis)
    n_templates = (int(np.count_nonzero(ca.sum(0))), int(np.count_nonzero(cb.sum(0))))
    cpu_rows = None
    if per_cpu:
        cpus = sorted({int(c) for co in cpu_of for c in np.unique(co)})
        cpu_rows = []
        for c in cpus:
            m = _counts([g[co == c] for g, co in zip(gid_of, cpu_of, strict=True)], G)
            cpu_rows.extend(_rows(m[:na], m[na:], dur_a, dur_b, gtext, c, test, alpha, basis,
                                  fdr=False))
        _fdr(cpu_rows, alpha)
        cpu_rows.sort(key=lambda r: (r.cpu, _order(r)))
    seq_result = None
    if seq and na == 1 and nb == 1:
        A, B = logs_a[0], logs_b[0]
        ka, kb = np.flatnonzero(keep[0]), np.flatnonzero(keep[1])
        seq_result = compare_seq.sequence(_lines(A.seq(local[0]), ka),
                                          _lines(B.seq(local[1]), kb),
                                          divergences=divergences, context=context,
                                          window=window)
        _renumber(seq_result, ka, kb, A.n, B.n)
        modes = {dig(lg.manifest, "mode", want=str) for lg in (A, B)}
        seeds = {dig(lg.manifest, "seed", want=int) for lg in (A, B)}
        if "free" in modes:
            notes.append("free mode is not replayable: the two runs are expected to diverge "
                         "early; the sequence view is exact for lockstep runs of one seed")
        elif modes == {"lockstep"} and len(seeds) > 1:
            notes.append("lockstep runs of different seeds: they are expected to diverge")
    hist_a = any(t.kind == "hist" for lg in logs_a for t in lg.templates)
    hist_b = any(t.kind == "hist" for lg in logs_b for t in lg.templates)
    if hist_a != hist_b:
        notes.append(f"only {'A' if hist_a else 'B'} has UVMHIST records: is the other side a "
                     f"console.log alone? (compare like with like: run directories, or "
                     f"smp trace --all output)")
    for lg in logs_a + logs_b:
        notes.extend(f"{lg.source}: {n}" for n in lg.notes)
    boot = boot_view(logs_a, logs_b)
    if boot.a.lines and not boot.b.lines or boot.b.lines and not boot.a.lines:
        notes.append(f"only {'A' if boot.a.lines else 'B'} has boot lines (a run made before "
                     f"the boot console, or a log without its boot?)")
    return Result(logs_a, logs_b, "exact" if exact else "mined", test, basis, alpha, rows,
                  cpu_rows, seq_result, notes, n_templates, boot)


# ---------------------------------------------------------------- boot lines


@dataclass
class BootSide:
    lines: list[str]             # the first run's boot lines (message text)
    agree: bool                  # every run of the side has the same boot lines
    runs: int

    def to_json(self) -> dict:
        return {"lines": self.lines, "runs_agree": self.agree, "runs": self.runs}


@dataclass
class BootView:
    """The boot lines of both sides (module docstring) and how they differ."""

    a: BootSide
    b: BootSide
    diff: list[tuple[str, str]]  # ("-", A's line) / ("+", B's line), in diff order

    @property
    def identical(self) -> bool:
        return not self.diff

    def to_json(self) -> dict:
        return {"a": self.a.to_json(), "b": self.b.to_json(), "identical": self.identical,
                "diff": [{"side": "a" if op == "-" else "b", "text": t}
                         for op, t in self.diff]}


def boot_view(logs_a: list[Log], logs_b: list[Log]) -> BootView:
    """Boot lines per side (the first run's; ``agree`` whether the other runs of the side
    have the same) and a line diff of A's against B's."""
    def side(logs: list[Log]) -> BootSide:
        each = [lg.boot_lines() for lg in logs]
        return BootSide(each[0] if each else [], all(x == each[0] for x in each), len(each))

    a, b = side(logs_a), side(logs_b)
    diff: list[tuple[str, str]] = []
    sm = difflib.SequenceMatcher(None, a.lines, b.lines, autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op != "equal":
            diff += [("-", t) for t in a.lines[i1:i2]] + [("+", t) for t in b.lines[j1:j2]]
    return BootView(a, b, diff)


class _Lines(SeqSource):
    """The lines ``idx`` of a sequence source, as a sequence of their own (the sequence
    view without the boot lines)."""

    def __init__(self, src: SeqSource, idx: np.ndarray):
        self.src, self.idx, self.n = src, idx, len(idx)

    def raw(self) -> np.ndarray:
        return self.src.raw()[self.idx]

    def start(self, origin: int) -> None:
        self.src.start(int(self.idx[origin]) if origin < self.n else self.src.n)

    def _span(self, lo: int, hi: int) -> tuple[int, int, np.ndarray]:
        ulo, uhi = int(self.idx[lo]), int(self.idx[hi - 1]) + 1
        return ulo, uhi, self.idx[lo:hi] - ulo

    def keys(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        if hi <= lo:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        ulo, uhi, sel = self._span(lo, hi)
        full, blind = self.src.keys(ulo, uhi)
        return full[sel], blind[sel]

    def full_keys(self, lo: int, hi: int) -> np.ndarray:
        if hi <= lo:
            return np.zeros(0, np.int64)
        ulo, uhi, sel = self._span(lo, hi)
        return self.src.full_keys(ulo, uhi)[sel]

    def text(self, i: int) -> str:
        return self.src.text(int(self.idx[i]))

    def alias_counts(self) -> dict:
        return self.src.alias_counts()


def _lines(src: SeqSource, idx: np.ndarray) -> SeqSource:
    return src if len(idx) == src.n else _Lines(src, idx)


def _renumber(res: compare_seq.SeqResult, ka: np.ndarray, kb: np.ndarray, na: int,
              nb: int) -> None:
    """Line numbers of the sequence without boot lines -> line numbers of the logs."""
    if len(ka) == na and len(kb) == nb:
        return

    def fa(i: int) -> int:
        return int(ka[i]) if i < len(ka) else na

    def fb(j: int) -> int:
        return int(kb[j]) if j < len(kb) else nb

    for d in res.divergences:
        d.a, d.b = fa(d.a), fb(d.b)
        d.before = [(fa(i), fb(j), t) for i, j, t in d.before]
        d.after = [(fa(i), fb(j), t) for i, j, t in d.after]
        d.a_lines = [(fa(i), t) for i, t in d.a_lines]
        d.b_lines = [(fb(j), t) for j, t in d.b_lines]
        if d.resync is not None:
            d.resync = (fa(d.resync[0]), fb(d.resync[1]))


def _counts(gids: list[np.ndarray], G: int) -> np.ndarray:
    """(runs, templates) matrix of how often each template occurs in each run."""
    out = np.zeros((len(gids), G), np.int64)
    for i, g in enumerate(gids):
        if len(g):
            out[i] = np.bincount(g, minlength=G)
    return out


def _rows(ca: np.ndarray, cb: np.ndarray, dur_a: list, dur_b: list,
          gtext: list[tuple[str, str]], cpu: int | None, test: str, alpha: float,
          basis: str, fdr: bool = True) -> list[Row]:
    na, nb = len(ca), len(cb)
    sa, sb = ca.sum(0), cb.sum(0)
    known = None not in dur_a and None not in dur_b
    ta = float(sum(dur_a)) if known else 0.0
    tb = float(sum(dur_b)) if known else 0.0
    rows: list[Row] = []
    for g in np.flatnonzero((sa > 0) | (sb > 0)).tolist():
        a_tot, b_tot = int(sa[g]), int(sb[g])
        ra = a_tot / ta if known and ta > 0 else None
        rb = b_tot / tb if known and tb > 0 else None
        ma, mb = a_tot / na, b_tot / nb
        if basis == "s":
            delta = (rb or 0.0) - (ra or 0.0)
            ratio = rb / ra if ra else None
        else:
            delta = mb - ma
            ratio = mb / ma if ma else None
        only = "a" if b_tot == 0 else "b" if a_tot == 0 else None
        row = Row(gtext[g][0], gtext[g][1], cpu, ma, mb, a_tot, b_tot, ra, rb, delta, ratio,
                  only, ca[:, g].tolist(), cb[:, g].tolist())
        if test == "utest":
            if basis == "s":
                xa = [c / d for c, d in zip(ca[:, g].tolist(), dur_a, strict=True)]
                xb = [c / d for c, d in zip(cb[:, g].tolist(), dur_b, strict=True)]
            else:
                xa, xb = ca[:, g].tolist(), cb[:, g].tolist()
            row.p = compare_stats.mannwhitney_u(xa, xb)[1]
        elif test == "binom":
            ea, eb = (ta, tb) if basis == "s" else (na, nb)
            row.p = compare_stats.binom_test(a_tot, a_tot + b_tot, ea / (ea + eb))
        rows.append(row)
    if fdr:
        _fdr(rows, alpha)
        rows.sort(key=_order)
    return rows


def _fdr(rows: list[Row], alpha: float) -> None:
    tested = [r for r in rows if r.p is not None]
    for r, q in zip(tested, compare_stats.bh_fdr([r.p for r in tested]), strict=True):
        r.q = q
        r.significant = q < alpha


def _order(r: Row) -> tuple:
    # only-in-B (new messages) first, then only-in-A, then by q, then by |Δ| (delta-abs)
    only = 0 if r.only == "b" else 1 if r.only == "a" else 2
    q = r.q if r.q is not None else 1.0
    return (only, q, -abs(r.delta), -(r.a_total + r.b_total), r.template)


# ---------------------------------------------------------------- --fail-on


def evaluate_fail_on(res: Result, conds: Sequence[str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def first(rows: list[Row]) -> str:
        more = f" and {len(rows) - 1} more" if len(rows) > 1 else ""
        return f"'{rows[0].template}'{more}"

    only_a = [r for r in res.rows if r.only == "a"]
    only_b = [r for r in res.rows if r.only == "b"]
    for c in conds:
        if c in ("only-in-b", "only") and only_b:
            out.append((c, f"{len(only_b)} template(s) only in B: {first(only_b)}"))
        if c in ("only-in-a", "only") and only_a:
            out.append((c, f"{len(only_a)} template(s) only in A: {first(only_a)}"))
        if c == "panic":
            n = sum(lg.panics() for lg in res.logs_b)
            status = [lg.source for lg in res.logs_b
                      if dig(lg.summary, "status", want=str) == "panic"]
            if n or status:
                out.append((c, f"B panicked ({n} panic record(s)"
                               f"{', status panic: ' + status[0] if status else ''})"))
        if c == "dropped":
            d = [(lg.source, lg.dropped) for lg in res.logs_b if lg.dropped]
            if d:
                out.append((c, f"B dropped {sum(x for _, x in d)} trace record(s) "
                               f"({d[0][0]}: {d[0][1]})"))
        if c == "significant":
            sig = [r for r in res.rows if r.significant]
            if sig:
                out.append((c, f"{len(sig)} template(s) with q < {res.alpha:g}: {first(sig)}"))
        if c == "changed":
            ch = [r for r in res.rows if r.a != r.b]
            if ch:
                out.append((c, f"{len(ch)} template count(s) differ: {first(ch)}"))
        if c == "boot" and res.boot is not None and not res.boot.identical:
            op, text = res.boot.diff[0]
            out.append((c, f"the boot lines differ ({len(res.boot.diff)} line(s); first: "
                           f"{'A' if op == '-' else 'B'} '{text.strip()}')"))
        if c == "diverged" and res.seq is not None and res.seq.divergences:
            d0 = res.seq.divergences[0]
            out.append((c, f"the logs diverge at A line {d0.a + 1}, B line {d0.b + 1} "
                           f"({d0.why})"))
    return out


# ---------------------------------------------------------------- header


def _show(v: object) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return "on" if v else "off"  # as kernel configurations spell it
    return str(v)


def _collapse(values: list) -> str:
    vals = [_show(v) for v in values]
    uniq = list(dict.fromkeys(vals))
    if len(uniq) == 1:
        return uniq[0]
    if len(uniq) <= 6:
        return ",".join(uniq)
    return f"{len(uniq)} values"


def _m(lg: Log, *path: str) -> object:
    d: object = lg.manifest or {}
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d


def _facts(logs: list[Log]) -> dict[str, str]:
    def load_script(lg: Log) -> str | None:
        name, sha = _m(lg, "load_script", "name"), _m(lg, "load_script", "sha256")
        return f"{name} ({str(sha)[:8]})" if name else None

    def machine(lg: Log) -> str | None:
        name, ncpu = _m(lg, "machine", "name"), _m(lg, "machine", "ncpu")
        return f"{name} ({ncpu} CPUs)" if name else None

    n = len(logs)
    durs = [lg.duration for lg in logs]
    recs = sum(lg.n for lg in logs)
    drops = [lg.dropped for lg in logs]
    if None in durs:
        dur = "-" if all(d is None for d in durs) else "unknown for some runs"
    elif n == 1:
        dur = f"{durs[0]:.3f} s ({logs[0].duration_from})"
    else:
        dur = f"{sum(durs):.3f} s ({sum(durs) / n:.3f} s/run)"
    return {
        "load script": _collapse([load_script(lg) for lg in logs]),
        "machine": _collapse([machine(lg) for lg in logs]),
        "kernel": _collapse([_m(lg, "kernel", "name") for lg in logs]),
        "seed": _collapse([_m(lg, "seed") for lg in logs]),
        "mode": _collapse([_m(lg, "mode") for lg in logs]),
        "version": _collapse([_m(lg, "version") for lg in logs]),
        "format": _collapse([lg.format for lg in logs]),
        "duration": dur,
        "records": f"{recs}" if n == 1 else f"{recs} ({recs / n:.1f}/run)",
        "dropped": "-" if all(d is None for d in drops) else str(sum(d or 0 for d in drops)),
    }


def _config_diffs(logs_a: list[Log], logs_b: list[Log]) -> list[tuple[str, str, str]]:
    """Kernel and machine keys whose values differ between (or within) the sides."""
    out = []
    for section in ("kernel", "machine"):
        if not (any(isinstance(_m(lg, section), dict) for lg in logs_a)
                and any(isinstance(_m(lg, section), dict) for lg in logs_b)):
            continue  # a text log has no manifest: listing every key as "-" says nothing
        keys: dict[str, None] = {}
        for lg in logs_a + logs_b:
            d = _m(lg, section)
            if isinstance(d, dict):
                keys.update(dict.fromkeys(k for k in d if k not in ("name", "path")))
        for k in keys:
            va = _collapse([_m(lg, section, k) for lg in logs_a])
            vb = _collapse([_m(lg, section, k) for lg in logs_b])
            if va != vb or "," in va or "," in vb:
                out.append((f"  {section}.{k}", va, vb))
    return out


def _side_json(logs: list[Log]) -> dict:
    runs = []
    for lg in logs:
        m = lg.manifest or {}
        runs.append({
            "source": lg.source, "format": lg.format, "records": lg.n,
            "dropped": lg.dropped, "duration_s": lg.duration,
            "duration_from": lg.duration_from or None,
            "load_script": (m.get("load_script") or {}).get("name"),
            "load_script_sha256": (m.get("load_script") or {}).get("sha256"),
            "machine": m.get("machine"), "kernel": m.get("kernel"),
            "seed": m.get("seed"), "mode": m.get("mode"), "version": m.get("version"),
            "status": dig(lg.summary, "status", want=str), "panics": lg.panics(),
        })
    durs = [lg.duration for lg in logs]
    return {"runs": runs, "records": sum(lg.n for lg in logs),
            "duration_s": None if None in durs else sum(durs),
            "dropped": sum(lg.dropped or 0 for lg in logs)}


# ---------------------------------------------------------------- text output


def _num(x: float | None, rate: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if abs(x) >= 1e7:
        return f"{x:.3g}"
    if not rate and float(x).is_integer():
        return f"{int(x)}"
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.2f}"


def _pfmt(p: float | None) -> str:
    if p is None:
        return "-"
    if p >= 0.001:
        return f"{p:.3f}"
    return f"{p:.0e}" if p > 0 else "<1e-300"


def _table(rows: list[Row], res: Result, top: int | None, cpu: bool) -> list[str]:
    tested = res.test != "none"
    if top is not None:
        shown = [r for r in rows if r.only]
        rest = [r for r in rows if not r.only]
        cut = len(rest) - top if len(rest) > top else 0
        rows = shown + rest[:top]
    else:
        cut = 0
    head = (["cpu"] if cpu else []) + ["A", "B", "A/s", "B/s", "Δ", "ratio"]
    head += ["p", "q", "flag"] if tested else ["flag"]
    cells = []
    for r in rows:
        flag = "only B" if r.only == "b" else "only A" if r.only == "a" else ""
        if not flag and r.significant is not None:
            flag = "*" if r.significant else "~"
        c = (["-" if r.cpu is None or r.cpu < 0 else str(r.cpu)] if cpu else [])
        c += [_num(r.a), _num(r.b), _num(r.a_rate, True), _num(r.b_rate, True),
              ("+" if r.delta > 0 else "") + _num(r.delta, res.basis == "s"),
              _num(r.ratio, True)]
        c += [_pfmt(r.p), _pfmt(r.q), flag] if tested else [flag]
        cells.append(c)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(head)]
    # numbers right-aligned, the flag left-aligned, the template last and unpadded
    def line(c: list[str], template: str) -> str:
        parts = [v.rjust(w) for v, w in zip(c[:-1], widths[:-1], strict=True)]
        parts.append(c[-1].ljust(widths[-1]))
        return "  ".join(parts) + "  " + template
    out = [line(head, "template")]
    out += [line(c, r.template) for c, r in zip(cells, rows, strict=True)]
    if cut:
        out.append(f"... {cut} more row(s) (--top)")
    return out


def render_text(res: Result, top: int | None = None) -> str:
    fa, fb = _facts(res.logs_a), _facts(res.logs_b)
    label_a = "A" if len(res.logs_a) == 1 else f"A ({len(res.logs_a)} runs)"
    label_b = "B" if len(res.logs_b) == 1 else f"B ({len(res.logs_b)} runs)"
    rows = [("", label_a, label_b)] + [(k, fa[k], fb[k]) for k in fa]
    diffs = _config_diffs(res.logs_a, res.logs_b)
    ki = [r[0] for r in rows].index("kernel") + 1
    rows[ki:ki] = diffs
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    out = [f"smp compare: A = {_srcs(res.logs_a)}   B = {_srcs(res.logs_b)}"]
    out += [f"{k:<{w0}}  {va:<{w1}}  {vb}".rstrip() for k, va, vb in rows]
    ta, tb = res.n_templates
    if res.mode == "exact":
        how = "exact: (kind, fn, fmt) from catalogue.json, matched by text"
    else:
        how = f"mined: masks {', '.join(trace_mask.MASKS)}"
    out.append(f"templates: {how}; {ta} in A, {tb} in B")
    unit = "per simulated second" if res.basis == "s" else "per run"
    counts = "counts" if len(res.logs_a) == len(res.logs_b) == 1 else "mean counts per run"
    legend = [f"{counts}; A/s, B/s per simulated second; Δ = B − A and ratio = B/A {unit}"]
    test = {"utest": "Mann-Whitney U over the runs' values",
            "binom": "exact binomial test of the pooled counts"}.get(res.test)
    if test:
        legend.append(f"p: {test}; q: Benjamini-Hochberg over the rows; "
                      f"* q < {res.alpha:g}, ~ not significant")
    out += [""] + legend
    if res.rows:
        out += _table(res.rows, res, top, cpu=False)
    else:
        out.append("(no records on either side)" if not res.boot or not (
            res.boot.a.lines or res.boot.b.lines) else
            "(no records on either side besides the boot lines)")
    if res.per_cpu is not None:
        out += ["", "per CPU (cpu - = no CPU in the line):"]
        out += _table(res.per_cpu, res, top, cpu=True)
    if res.seq is not None:
        out += [""] + _seq_text(res.seq)
        al = res.seq.aliases
        if any(al[side]["substitutions"] for side in ("a", "b")):
            out.append("  aliases in the stretch compared: " + "; ".join(
                f"{side.upper()} {al[side]['addresses']} addresses, {al[side]['pids']} pids, "
                f"{al[side]['substitutions']} substitutions" for side in ("a", "b")))
    if res.boot is not None and (res.boot.a.lines or res.boot.b.lines):
        out += [""] + _boot_text(res.boot)
    if res.notes:
        out += [""] + [f"note: {n}" for n in res.notes]
    return "\n".join(out) + "\n"


def _boot_text(bv: BootView) -> list[str]:
    a, b = bv.a, bv.b
    head = (f"boot lines (the machine and kernel that booted; not in the tables or the "
            f"sequence): {len(a.lines)} in A, {len(b.lines)} in B")
    out = [head]
    if bv.identical:
        out.append("  identical")
    else:
        out += [f"  {op} {'A' if op == '-' else 'B'}  {t}" for op, t in bv.diff]
    for side, label in ((a, "A"), (b, "B")):
        if not side.agree:
            out.append(f"  the {side.runs} runs of {label} do not all have the same boot lines "
                       f"(shown: the first run's)")
    return out


def _srcs(logs: list[Log]) -> str:
    if len(logs) <= 3:
        return " ".join(lg.source for lg in logs)
    return f"{logs[0].source} ... {logs[-1].source} ({len(logs)} runs)"


def _seq_text(s: compare_seq.SeqResult) -> list[str]:
    head = ("sequence (times ignored; addresses -> P<n>, pids -> I<n> in first-seen order "
            "per run):")
    out = [head]
    if s.identical:
        out.append(f"  identical: {s.n_a} lines agree (timestamps and boot lines aside)")
        return out
    # line numbers count the boot lines the sequence skipped: size the column by them
    shown = [i + 1 for d in s.divergences for i in (
        *(i for i, _, _ in d.before + d.after), *(j for _, j, _ in d.before + d.after),
        *(i for i, _ in d.a_lines + d.b_lines))]
    wa = len(str(max(s.n_a, s.n_b, 1, *shown))) + 2
    def tag(i: int | None, side: str) -> str:
        return (f"{side}:{i + 1}" if i is not None else "").ljust(wa + 1)
    for k, d in enumerate(s.divergences):
        if k == 0:
            out.append(f"  A and B agree on {s.matched} line(s); first divergence at "
                       f"A:{d.a + 1} B:{d.b + 1} ({d.why})")
        else:
            out.append(f"  next divergence at A:{d.a + 1} B:{d.b + 1} ({d.why})")
        for i, j, t in d.before:
            out.append(f"      {tag(i, 'A')}{tag(j, 'B')} {t}")
        for i, t in d.a_lines:
            out.append(f"    - {tag(i, 'A')}{tag(None, '')} {t}")
        if d.a_skipped > len(d.a_lines):
            out.append(f"    - ... {d.a_skipped - len(d.a_lines)} more line(s) of A")
        for j, t in d.b_lines:
            out.append(f"    + {tag(None, '')}{tag(j, 'B')} {t}")
        if d.b_skipped > len(d.b_lines):
            out.append(f"    + ... {d.b_skipped - len(d.b_lines)} more line(s) of B")
        if d.why in ("A ended", "B ended"):
            out.append(f"  {d.why}: {'B' if d.why == 'A ended' else 'A'} has "
                       f"{max(d.a_skipped, d.b_skipped)} more line(s)")
        elif d.resync is None:
            out.append(f"  no re-synchronization within the window ({d.a_skipped} lines of A, "
                       f"{d.b_skipped} of B searched)")
        else:
            ra, rb = d.resync
            out.append(f"  resync at A:{ra + 1} B:{rb + 1} (A skipped {d.a_skipped}, "
                       f"B skipped {d.b_skipped}; aliases renumbered from here)")
            for i, j, t in d.after:
                out.append(f"      {tag(i, 'A')}{tag(j, 'B')} {t}")
    return out
