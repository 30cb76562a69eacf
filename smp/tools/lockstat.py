"""``smp lockstat``: lock-contention profiles of a run -- NetBSD lockstat(8) + Linux lock_stat.

This tool stands for two kernels' profilers at once, fed from exact data.  NetBSD's
lockstat(8) (usr.sbin/lockstat/main.c) turns on tracing through /dev/lockstat, runs a
command and prints, per lock type and event, a table of locks and their callers sorted by
time spent waiting.  Linux's /proc/lock_stat (kernel/locking/lockdep_proc.c) keeps, per
lock class, wait and hold time statistics with cross-CPU "bounces", and names the call
sites that contended and the holders they waited for, four of each.  Both sample or lose
nothing only as far as their buffers allow; here the simulated machine counts every
acquisition of every lock in its atomic core (smp/machine/_atomic.c), and ``smp run``
writes the counts to ``lockstat.json`` (smp/machine/lockstat.py).  This module only reads
that file, so every report can be made again later, from any run directory:

* the default report is lockstat(8)'s table -- same sections, columns, ``<all>`` roll-ups,
  sort orders, ``-c -l -f -p -s -L -F -T -E -M -o`` letters -- with two more events the
  kernel tool cannot see: ``hold`` (hold time) and ``acquire`` (every acquisition);
* ``--lock-stat`` is Linux's table, every contention point listed (no cap of 4);
* ``-H`` adds what illumos lockstat -h draws: power-of-two time distributions, here for
  wait and hold side by side; ``--matrix`` is the full waiter-site x holder-site table
  that lock_stat truncates and lockstat(8) lacks;
* ``--perf-lock`` is Linux ``perf lock contention``'s table (by caller, or by lock with
  ``-l``; ``-k`` sort keys); ``--format folded`` gives flame-graph stacks
  ``class;waiter;holder N``;
* ``--vs RUN_B`` compares two runs per class and call site; ``--format json|csv`` gives
  any report to a program; ``--plot`` draws distributions (matplotlib, optional).

The data side is smp/tools/lockstat_data.py, the reports smp/tools/lockstat_report.py,
the plot smp/tools/lockstat_plot.py.  Bad input (no run directory, a missing or corrupt
lockstat.json, another schema) is one ``smp: <file>: <problem>`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from smp.errors import BadInput
from smp.tools.lockstat_data import (
    EVENT_HELP,
    EVENTS,
    LOCKSTAT_SCHEMA,
    TYPE_HELP,
    TYPE_NAMES,
    Lockstat,
    Selection,
    load,
)
from smp.tools.lockstat_report import (
    PERF_KEYS,
    REPORT_SCHEMA,
    Report,
    folded,
    histograms,
    lock_stat,
    matrix,
    perf_lock,
    table,
    versus,
)

DESCRIPTION = """\
Lock-contention reports of a run directory's lockstat.json: NetBSD lockstat(8)'s table by
default, Linux /proc/lock_stat with --lock-stat, histograms (-H), the waiter x holder
matrix (--matrix), a comparison of two runs (--vs), JSON/CSV (--format), a plot (--plot).
Every count is exact: the simulated machine counts every acquisition of every lock."""

EPILOG = """\
The lockstat(8) table (default):
  one section per lock type and event: "Simple lock spin" (simple_lock), "RW lock spin
  (writer)" / "(reader)" (spinlockmgr exclusive / shared), "Kernel lock spin" (the big
  lock); no simulated lock sleeps, so there are no sleep sections.
  Total%   the row's share of the section's Time (with -c: of its Count); the lock
           rows (a lock's <all> row, or its only caller row) add up to 100
  Count    events: -E spin (default) contended acquisitions, i.e. ones that spun at least
           once; -E hold holds (an outermost acquire..release: a recursive re-entry of
           kernel_lock and a lock still held at the end have none); -E acquire every
           acquisition, uncontended and recursive ones included
  Time/ms  -E spin and -E acquire: time spent spinning before the acquisition; -E hold:
           time from acquisition to release (charged to the outermost hold)
  Lock     instance (bucket[3], pmap[17]); with -M its class (synth_bucket, pmap)
  Caller   the function that called the lock operation; <all>: the lock's total
  -p and -s divide Count and Time by the number of CPUs and by the elapsed seconds
  (counts truncated to integers, as lockstat(8) does).

--lock-stat (Linux /proc/lock_stat as lockdep_proc.c prints it; per class, a reader/writer
  class used both ways as -W and -R rows; times in us, 2 decimals, rounded to 10 ns):
  con-bounces   contended acquisitions whose previous acquirer was another CPU
  contentions   contended acquisitions
  waittime-*    min (shortest non-zero) / max / total / avg (total/contentions) wait
  acq-bounces   acquisitions whose previous acquirer was another CPU
  acquisitions  every acquisition (recursive ones included)
  holdtime-*    min / max / total / avg (total/holds, outermost holds only)
  then every contention point (call sites that waited) and every contended point (the
  holders' call sites they waited behind), one block per class: count [<address>] site;
  the address is synthetic (stable per call site); --points-wait adds each point's
  waittime-total (us) before it.

--perf-lock (perf lock contention): contended, total wait, max wait, avg wait, type and
  caller per call site (-l: address and symbol per lock, -M: per class); -k contended,
  wait_total (default), wait_max, wait_min, avg_wait; -n N rows.
--format folded: flame-graph stacks "class;waiter_site;holder_site N", N = wait ns (-c:
  contended acquisitions); -E hold: "class;site N", N = hold ns (-c: holds).

-H: for each lock and caller, wait and hold time in power-of-two buckets [from, to) ns.
--matrix: per lock class, contended acquisitions by waiter site (rows) and the site that
  last took the lock when the wait began (columns); cells are wait ms (-c: counts).
--vs RUN_B: A = RUN, B = RUN_B, classes merged; Count, Time, d = B - A, ratio B/A.
--format json|csv: the report's rows, exact integers, times in ns, with a schema version.

Exit status: 0, or 2 on bad input (one line on stderr)."""

# which options each report uses; anything else given is a usage error, not silently ignored
_USES = {
    "table": set("clfpsLFTEMno"),
    "vs": set("clfpsLFTEMno"),
    "lock-stat": set("LFTMno") | {"points-wait"},
    "hist": set("clfLFTEMno"),
    "matrix": set("cLFTMno"),
    "plot": set("cLFTM"),
    "perf-lock": set("lLFTMno") | {"k"},
    "folded": set("cLFTEo"),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``smp lockstat`` to the smp command."""
    p = subparsers.add_parser("lockstat", help="lock-contention reports of a run "
                              "(lockstat(8), lock_stat, histograms, waiter x holder)",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", metavar="RUN",
                   help="run directory (or its lockstat.json)")
    g = p.add_argument_group("lockstat(8) options")
    g.add_argument("-c", dest="count", action="store_true",
                   help="sort and Total%% by count, not time")
    g.add_argument("-l", dest="locks_only", action="store_true",
                   help="by lock only: no breakdown by caller")
    g.add_argument("-f", dest="callers_only", action="store_true",
                   help="by caller only: no breakdown by lock")
    g.add_argument("-p", dest="per_cpu", action="store_true",
                   help="average per CPU (divide by the number of CPUs)")
    g.add_argument("-s", dest="per_second", action="store_true",
                   help="average per second of the run")
    g.add_argument("-L", dest="locks", action="append", default=[], metavar="LOCK",
                   help="only this lock instance or class (shell glob, repeatable)")
    g.add_argument("-F", dest="funcs", action="append", default=[], metavar="FUNC",
                   help="only lock operations called from this function (qualified name "
                   "or its last part; shell glob; repeatable)")
    g.add_argument("-T", dest="types", metavar="TYPE[,TYPE]",
                   help="only these lock types (-t lists them)")
    g.add_argument("-t", dest="list_types", action="store_true", help="list lock types")
    g.add_argument("-E", dest="events", metavar="EVENT[,EVENT]",
                   help="events: spin (default; wait time), hold (hold time), acquire "
                   "(every acquisition); -e lists them")
    g.add_argument("-e", dest="list_events", action="store_true", help="list events")
    g.add_argument("-M", dest="merge", action="store_true",
                   help="merge lock instances into their class (every pmap[N] -> pmap)")
    g.add_argument("-n", dest="top", type=int, metavar="N",
                   help="only the top N locks of each section (classes, matrix rows)")
    g.add_argument("-o", dest="output", metavar="FILE", help="write to FILE, not stdout")
    m = p.add_argument_group("other reports (one at a time)")
    x = m.add_mutually_exclusive_group()
    x.add_argument("--lock-stat", dest="lock_stat", action="store_true",
                   help="Linux /proc/lock_stat as lockdep_proc.c prints it, every "
                   "contention point")
    x.add_argument("-H", dest="hist", action="store_true",
                   help="power-of-two histograms of wait and hold time per lock and caller")
    x.add_argument("--matrix", action="store_true",
                   help="waiter call site x holder call site, per lock class")
    x.add_argument("--perf-lock", dest="perf_lock", action="store_true",
                   help="perf lock contention's table: contended, total/max/avg wait, type, "
                   "caller (-l: by lock; -k KEY sorts, -n N the top N)")
    x.add_argument("--vs", metavar="RUN_B", help="compare with another run (B/A)")
    x.add_argument("--plot", metavar="FILE.png",
                   help="draw wait-time distributions per class and contention per CPU "
                   "(needs matplotlib: pip install 'smp[plot]')")
    m.add_argument("-k", dest="key", metavar="KEY",
                   help="with --perf-lock: sort key, as perf lock contention -k: "
                   + ", ".join(PERF_KEYS) + " (default wait_total)")
    m.add_argument("--points-wait", dest="points_wait", action="store_true",
                   help="with --lock-stat: each point's waittime-total (us) before its "
                   "address (Linux prints only the count)")
    p.add_argument("--format", choices=("text", "json", "csv", "folded"), default="text",
                   help="text (default), or the report's rows as JSON or CSV; folded: "
                   "flame-graph stacks class;waiter;holder N (N = wait ns, -c: count; "
                   "-E hold: class;site hold ns)")
    p.set_defaults(func=cmd_lockstat)


def _mode(a: argparse.Namespace) -> str:
    if a.format == "folded":
        other = [o for o, v in (("--lock-stat", a.lock_stat), ("-H", a.hist),
                                ("--matrix", a.matrix), ("--vs", a.vs), ("--plot", a.plot),
                                ("--perf-lock", a.perf_lock)) if v]
        if other:
            raise BadInput(f"lockstat: --format folded is a report of its own; it does not "
                           f"combine with {other[0]}")
        return "folded"
    if a.perf_lock:
        return "perf-lock"
    if a.lock_stat:
        return "lock-stat"
    if a.hist:
        return "hist"
    if a.matrix:
        return "matrix"
    if a.vs:
        return "vs"
    if a.plot:
        return "plot"
    return "table"


def _given(a: argparse.Namespace) -> set[str]:
    flags = {"c": a.count, "l": a.locks_only, "f": a.callers_only, "p": a.per_cpu,
             "s": a.per_second, "L": a.locks, "F": a.funcs, "T": a.types, "E": a.events,
             "M": a.merge, "n": a.top is not None, "o": a.output,
             "points-wait": a.points_wait, "k": a.key}
    return {k for k, v in flags.items() if v}


def _split(spec: str, names: dict[str, str] | tuple, what: str, opt: str) -> list[str]:
    out = []
    for word in spec.split(","):
        w = word.strip().lower()
        if w not in names:
            raise BadInput(f"{opt} {word}: unknown {what} (known: "
                           f"{', '.join(sorted(set(names)))})")
        v = names[w] if isinstance(names, dict) else w
        if v not in out:
            out.append(v)
    return out


def selection(a: argparse.Namespace) -> Selection:
    """-L, -F, -T and -E as a Selection."""
    kinds = _split(a.types, TYPE_NAMES, "lock type", "-T") if a.types else []
    events = _split(a.events, EVENTS, "event", "-E") if a.events else ["spin"]
    events.sort(key=EVENTS.index)
    return Selection(locks=list(a.locks), funcs=list(a.funcs), kinds=kinds, events=events)


def build(a: argparse.Namespace) -> tuple[Report, Lockstat]:
    """The report the arguments ask for, and the run it was made from."""
    mode = _mode(a)
    extra = sorted(_given(a) - _USES[mode])
    if extra:
        opts = " ".join(("-" if len(o) == 1 else "--") + o for o in extra)
        what = {"table": "the lockstat(8) table", "folded": "--format folded"}.get(
            mode, "--" + mode)
        raise BadInput(f"lockstat: {opts} does not apply to {what}")
    if a.top is not None and a.top < 1:
        raise BadInput(f"-n {a.top}: expected a positive number")
    if a.locks_only and a.funcs:
        raise BadInput("lockstat: -F needs the caller breakdown that -l turns off")
    ls = load(a.run)
    sel = selection(a)
    sel.check(ls)
    common = {"top": a.top}
    if mode == "folded":
        if len(sel.events) != 1 or sel.events[0] not in ("spin", "hold"):
            raise BadInput("lockstat: --format folded takes one event: -E spin (wait "
                           "time, the default) or -E hold")
        rep = folded(ls, sel, by_count=a.count)
    elif mode == "perf-lock":
        rep = perf_lock(ls, sel, key=a.key or "wait_total", by_lock=a.locks_only,
                        merge_class=a.merge, **common)
    elif mode == "lock-stat":
        rep = lock_stat(ls, sel, points_wait=a.points_wait, **common)
    elif mode == "hist":
        rep = histograms(ls, sel, by_count=a.count, locks_only=a.locks_only,
                         callers_only=a.callers_only, merge_class=a.merge, **common)
    elif mode == "matrix":
        rep = matrix(ls, sel, by_count=a.count, **common)
    elif mode == "plot":
        rep = Report("plot", [])     # drawn by lockstat_plot, from the same selection
    elif mode == "vs":
        lb = load(a.vs)
        rep = versus(ls, lb, sel, by_count=a.count, locks_only=a.locks_only,
                     callers_only=a.callers_only, per_cpu=a.per_cpu,
                     per_second=a.per_second, **common)
    else:
        rep = table(ls, sel, by_count=a.count, locks_only=a.locks_only,
                    callers_only=a.callers_only, merge_class=a.merge, per_cpu=a.per_cpu,
                    per_second=a.per_second, **common)
    rep.meta["selection"] = {"locks": sel.locks, "funcs": sel.funcs,
                             "types": sel.kinds or "all", "events": sel.events,
                             "merge_class": bool(a.merge or mode in ("vs", "lock-stat",
                                                                      "matrix", "folded")),
                             "sort": "count" if a.count else "time"}
    return rep, ls


def render(rep: Report, ls: Lockstat, fmt: str) -> str:
    """The report as text, JSON or CSV."""
    if fmt == "folded":
        return "".join(line + "\n" for line in rep.lines)
    if fmt == "text":
        return "\n".join(rep.lines) + "\n"
    if fmt == "json":
        doc = {"schema": REPORT_SCHEMA, "tool": "smp lockstat", "report": rep.kind,
               "run": str(ls.run), "lockstat_schema": LOCKSTAT_SCHEMA,
               "elapsed_ns": ls.elapsed_ns, "ncpu": ls.ncpu,
               "units": {"time": "ns", "pct": "percent"}, **rep.meta,
               "empty": rep.empty, "message": rep.lines[0] if rep.empty else None,
               "warnings": rep.warnings,
               "fields": rep.fields, "rows": rep.rows}
        return json.dumps(doc, indent=1) + "\n"
    buf = io.StringIO()
    # a comment line carries the schema, as a CSV header cannot (read with comment='#')
    buf.write(f"# smp lockstat report schema {REPORT_SCHEMA}: {rep.kind}; run {ls.run}; "
              f"times in ns\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(rep.fields)
    for r in rep.rows:
        w.writerow(["" if r.get(f) is None else r.get(f) for f in rep.fields])
    return buf.getvalue()


def _write(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as e:
        raise BadInput(f"{output}: cannot write: {e.strerror or e}") from None


def cmd_lockstat(a: argparse.Namespace) -> int:
    """``smp lockstat``: returns the exit status; bad input raises BadInput."""
    if a.list_events:
        for e in EVENTS:
            print(f"{e:<8} Count = {EVENT_HELP[e][0]}; Time = {EVENT_HELP[e][1]}")
        return 0
    if a.list_types:
        for name, kind, what in TYPE_HELP:
            print(f"{name:<12} {kind:<15} {what}")
        return 0
    if a.run is None:
        raise BadInput("lockstat: missing RUN (a run directory; see smp lockstat --help)")
    try:
        if a.plot:
            return _plot(a)
        rep, ls = build(a)
        _write(render(rep, ls, a.format), a.output)
        for w in rep.warnings:
            print(w, file=sys.stderr)
    except BrokenPipeError:
        # the reader (head, less) went away: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _plot(a: argparse.Namespace) -> int:
    from smp.tools.lockstat_plot import plot

    if a.format != "text":
        raise BadInput("lockstat: --format does not apply to --plot")
    _rep, ls = build(a)      # checks options and the run as every report does
    sel = selection(a)
    if not plot(ls, sel, Path(a.plot), by_count=a.count):
        # an empty figure would look like a result: refuse, as for any bad input
        why = ("lock statistics were off in this run (kernel option lockstat = off)"
               if ls.stats_off else
               f"no contended acquisition in the selection ({sel.describe()})")
        raise BadInput(f"{ls.path}: --plot: nothing to draw: {why}")
    print(f"smp lockstat: wrote {a.plot}")
    return 0


def print_top(run_dir: Path, out: TextIO, n: int = 10) -> None:
    """The top of the default table, for ``smp run --lockstat``.

    Never raises for bad input: the run's own exit status matters more, so a problem
    with lockstat.json is one ``smp:`` line on stderr.
    """
    try:
        rep = table(load(run_dir), Selection(), top=n)
    except BadInput as e:
        print(f"smp: {e}", file=sys.stderr)
        return
    if not rep.empty:
        out.write(f"lockstat: top {n} locks per section by spin time "
                  f"(full report: smp lockstat {run_dir})\n")
    out.write("\n".join(rep.lines) + "\n")
