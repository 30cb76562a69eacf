"""``smp trace``: render a run's trace records, filtered, in kernel console or UVMHIST style.

Stands for FreeBSD ``ktrdump`` (dump the kernel trace buffer; ``-r`` relative timestamps),
NetBSD ``vmstat -U`` / ddb ``show kernhist`` (UVMHIST lines ``sec.usec fn#call@cpu: msg``)
and ``trace-cmd report`` (merge per-CPU buffers into one timeline; ``--cpu``, ``--ts-diff``,
``--stat``), for the simulator's run directories.

It reads the binary records (``events.bin`` + ``catalogue.json``), not the rendered logs,
so the same run re-renders with other options without rerunning: console style
(``console.log``, the default) or UVMHIST style (``--hist``), merged across CPUs in time
order with CPU and then sequence number breaking ties (:func:`smp.rundir.format.merge_order`).

    smp trace RUN                       console records, as console.log has them
    smp trace RUN --hist                UVMHIST records (hist.log)
    smp trace RUN --all                 both logs in one timeline, each line in its style
    smp trace RUN --cpu 0,2 -F 'pmap_*' --from 1.5s --to 2s -e 'stole PTP'
    smp trace RUN -r --delta            time since the first line, and since the previous one
    smp trace RUN --stats               counts per message template (vmstat -U has no such
                                        view: one row per format, with rate and first/last)

A text log (anything that is not a run directory) is read as lines with mined templates:
filters, ``-r``/``--delta`` (when lines carry stamps) and ``--stats`` work; ``--hist``
needs records.  Dropped records (a trace ring was full) are reported on stderr, like
babeltrace's "discarded events" warning.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smp.config import parse_duration
from smp.errors import BadInput
from smp.rundir import format as runfmt
from smp.tools import trace_input
from smp.tools.trace_input import Log, RunLog

SCHEMA = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "trace", help="render a run's trace records (console or UVMHIST style), filtered",
        description="Render a run's trace records from events.bin, merged across CPUs in time "
        "order: kernel console style (default) or UVMHIST style (--hist). Filters select CPUs, "
        "functions, messages, a time window and a regex; --stats counts per template.")
    p.add_argument("run", help="run directory (or a text log)")
    p.add_argument("--hist", action="store_true",
                   help="UVMHIST style (sec.usec fn#call@cpu: msg), UVMHIST records")
    p.add_argument("--all", action="store_true",
                   help="every record, console and UVMHIST, in one timeline (each in its own "
                   "style; with --hist all in UVMHIST style)")
    p.add_argument("-H", "--history", metavar="NAME[,NAME]",
                   help="UVMHIST records of these histories only (maphist, pdhist, ...)")
    p.add_argument("--cpu", metavar="LIST", help="CPUs, e.g. 0,2-3")
    p.add_argument("-F", "--fn", metavar="FUNC[,FUNC]",
                   help="functions (names or globs, e.g. 'pmap_*')")
    p.add_argument("-M", "--msg", metavar="TEXT",
                   help="records whose message template contains TEXT")
    p.add_argument("-e", "--grep", metavar="REGEX", help="lines matching REGEX")
    p.add_argument("-v", "--invert", action="store_true", help="lines NOT matching -e")
    p.add_argument("--from", dest="t_from", metavar="TIME",
                   help="from this time since boot (1.5s, 250ms; bare numbers are seconds)")
    p.add_argument("--to", dest="t_to", metavar="TIME", help="up to (not including) this time")
    p.add_argument("-r", "--relative", action="store_true",
                   help="timestamps relative to the first line shown")
    p.add_argument("--delta", action="store_true",
                   help="time since the previous line shown, as (+sec.usec)")
    p.add_argument("--stats", action="store_true",
                   help="counts per message template instead of the lines")
    p.add_argument("--per-cpu", action="store_true", help="with --stats: a column per CPU")
    p.add_argument("--json", action="store_true", help="with --stats: JSON (schema 1)")
    p.add_argument("--force", action="store_true",
                   help="skip records of a corrupt events.bin (counted in the notes) "
                   "instead of refusing it")
    p.add_argument("--partial", action="store_true",
                   help="accept a truncated events.bin (drop the partial record)")
    p.add_argument("--format", choices=("text", "perfetto"), default="text",
                   help="perfetto: Chrome trace-event JSON (ui.perfetto.dev, chrome://tracing)"
                   ": a track per CPU, every record an instant event, UVMHIST calls as spans")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=main)


def main(a: argparse.Namespace) -> int:
    with trace_input.no_gc():  # see compare.main
        return _main(a)


def _main(a: argparse.Namespace) -> int:
    if (a.json or a.per_cpu) and not a.stats:
        raise BadInput("--json and --per-cpu go with --stats")
    if a.invert and not a.grep:
        raise BadInput("-v/--invert inverts -e/--grep: give -e REGEX")
    log = trace_input.load(a.run, partial_ok=a.partial, force=a.force)
    trace_input.warn_suspect(log, "smp trace")
    run_dir = Path(a.run)
    no_events = run_dir.is_dir() and not isinstance(log, RunLog)
    if (a.hist or a.all or a.history) and not isinstance(log, RunLog):
        if no_events:
            raise BadInput(f"{run_dir / runfmt.EVENTS_FILE}: missing: --hist, --all and "
                           f"--history re-render the binary records; only "
                           f"{run_dir / runfmt.CONSOLE_FILE} is there (smp trace "
                           f"{run_dir / runfmt.CONSOLE_FILE})")
        raise BadInput(f"{a.run}: --hist, --all and --history re-render binary records; "
                       f"this is a text log")
    if no_events:
        print(f"smp trace: {run_dir / runfmt.EVENTS_FILE}: missing (the run did not finish "
              f"writing its records?): showing {run_dir / runfmt.CONSOLE_FILE} as a text "
              f"log, templates mined", file=sys.stderr)
    if a.format == "perfetto":
        if not isinstance(log, RunLog):
            raise BadInput(f"{a.run}: --format perfetto needs a run's binary records "
                           f"({runfmt.EVENTS_FILE}); this is a text log")
        if a.stats or a.grep or a.relative or a.delta:
            raise BadInput("--format perfetto exports records: not with --stats, -e, -r or "
                           "--delta")
        a.all = a.all or not a.hist        # every record, console and UVMHIST
    warned = selection_warnings(log, a)
    for w in warned:
        print(f"smp trace: {w}", file=sys.stderr)
    idx = select(log, a)
    # --all alone: console.log and hist.log in one timeline, each line in its own style
    style = "hist" if a.hist else "native" if a.all else "console"
    lines: list[str] | None = None
    if a.grep:
        try:
            rx = re.compile(a.grep)
        except re.error as e:
            raise BadInput(f"-e {a.grep!r}: bad regular expression: {e}") from None
        lines = log.lines(idx, style)
        keep = np.array([bool(rx.search(s)) != a.invert for s in lines], bool)
        idx = idx[keep] if len(idx) else idx
        lines = [s for s, k in zip(lines, keep.tolist(), strict=True) if k]
    if a.format == "perfetto":
        _export(log, idx, a.output)
    elif a.stats:
        st = stats(log, idx, per_cpu=a.per_cpu)
        emit(json.dumps(st, indent=1) + "\n" if a.json else stats_text(st, per_cpu=a.per_cpu))
    else:
        if a.relative or a.delta:
            lines = restamp(log, idx, style, relative=a.relative, delta=a.delta)
        elif lines is None:
            lines = log.lines(idx, style)
        if lines:
            emit("\n".join(lines) + "\n")
    _warn(log, a, len(idx), said=bool(warned))
    return 0


def _export(log: RunLog, idx: np.ndarray, output: str | None) -> None:
    from smp.tools.trace_export import write_chrome_trace

    if output is None:
        write_chrome_trace(log, idx, sys.stdout)
        return
    try:
        with open(output, "w", encoding="utf-8") as f:
            write_chrome_trace(log, idx, f)
    except OSError as e:
        raise BadInput(f"{output}: cannot write: {e.strerror or e}") from None


def emit(text: str) -> None:
    """Write to stdout; a reader that went away (head, less) is not an error of ours."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


FILTERS = (("cpu", "--cpu"), ("fn", "-F"), ("msg", "-M"), ("history", "-H"),
           ("t_from", "--from"), ("t_to", "--to"), ("grep", "-e"))


def _warn(log: Log, a: argparse.Namespace, shown: int, said: bool = False) -> None:
    if log.dropped:
        print(f"smp trace: {log.source}: {log.dropped} trace records dropped (ring full)",
              file=sys.stderr)
    if shown:
        return
    nh = int(np.count_nonzero(_kinds(log) == "hist")) if isinstance(log, RunLog) else 0
    if isinstance(log, RunLog) and not a.all and a.hist and nh == 0:
        print(f"smp trace: {log.source}: no UVMHIST records (kernel option hist = off? "
              f"run with -o hist=on)", file=sys.stderr)
    elif isinstance(log, RunLog) and not a.all and not a.hist and nh and nh == log.n:
        print(f"smp trace: {log.source}: no console records; {nh} UVMHIST records "
              f"(--hist)", file=sys.stderr)
    elif not said and log.n:
        given = [f"{opt} {getattr(a, k)}" for k, opt in FILTERS if getattr(a, k)]
        if a.invert:
            given.append("-v")
        if given:
            print(f"smp trace: {log.source}: no line matches the selection "
                  f"({' '.join(given)})", file=sys.stderr)


# ---------------------------------------------------------------- selection


def parse_cpus(text: str) -> list[int]:
    """``0,2-3`` -> [0, 2, 3] (trace-cmd's --cpu syntax)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m or (m[2] is not None and int(m[2]) < int(m[1])):
            raise BadInput(f"--cpu {text}: expected CPU numbers and ranges such as 0,2-3")
        lo = int(m[1])
        out.extend(range(lo, int(m[2] or lo) + 1))
    return out


def cpu_ranges(cpus: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (the --cpu syntax)."""
    out: list[str] = []
    for c in sorted(set(cpus)):
        if out and c == int(out[-1].split("-")[-1]) + 1:
            out[-1] = f"{out[-1].split('-')[0]}-{c}"
        else:
            out.append(str(c))
    return ",".join(out)


def selection_warnings(log: Log, a: argparse.Namespace) -> list[str]:
    """Filters that can match nothing in this log: a typo more often than a finding, so
    say so (on stderr) instead of printing an empty result without a word."""
    out = []
    if a.cpu:
        want = parse_cpus(a.cpu)
        have = sorted({int(c) for c in np.unique(log.cpu)} - {-1}) if log.n else []
        if not have:
            out.append(f"--cpu {a.cpu}: {log.source} has no CPU column (no line says "
                       f"which CPU printed it): nothing can match")
        else:
            missing = sorted(set(want) - set(have))
            if missing:
                gone = "nothing can match" if len(missing) == len(set(want)) else \
                    f"no line from CPU {cpu_ranges(missing)}"
                out.append(f"--cpu {a.cpu}: {log.source} has lines from CPUs "
                           f"{cpu_ranges(have)} only: {gone}")
    if a.fn:
        fns = sorted({t.fn for t in log.templates if t.fn})
        for pat in (f.strip() for f in a.fn.split(",") if f.strip()):
            if not any(fnmatch.fnmatchcase(f, pat) for f in fns):
                known = ", ".join(fns[:8]) + (f" and {len(fns) - 8} more" if len(fns) > 8
                                              else "") if fns else "none"
                out.append(f"-F {pat}: no message of {log.source} comes from a function of "
                           f"that name (functions: {known})")
    if a.history and isinstance(log, RunLog):
        hists = sorted({t.key[2] for t in log.templates if t.kind == "hist"})
        for h in (h.strip() for h in a.history.split(",") if h.strip()):
            if h not in hists:
                out.append(f"-H {h}: no UVMHIST history of that name in {log.source} "
                           f"(histories: {', '.join(hists) or 'none'})")
    return out


def _kinds(log: Log) -> np.ndarray:
    kinds = np.array([t.kind for t in log.templates] + ["printf"], object)
    return kinds[log.tid] if log.n else np.zeros(0, object)


def select(log: Log, a: argparse.Namespace) -> np.ndarray:
    """Indices of the records that pass the vectorizable filters, in time order."""
    keep = np.ones(log.n, bool)
    if isinstance(log, RunLog) and not a.all:
        is_hist = _kinds(log) == "hist"
        keep &= is_hist if a.hist else ~is_hist
    if a.history:
        names = {h.strip() for h in a.history.split(",")}
        hist_of = np.array([t.key[2] in names if t.kind == "hist" else False
                            for t in log.templates] + [False], bool)
        keep &= hist_of[log.tid]
    if a.cpu:
        keep &= np.isin(log.cpu, parse_cpus(a.cpu))
    if a.fn or a.msg:
        ok = np.ones(len(log.templates) + 1, bool)
        ok[-1] = False
        if a.fn:
            pats = [f.strip() for f in a.fn.split(",") if f.strip()]
            ok[:-1] &= [any(fnmatch.fnmatchcase(t.fn, p) for p in pats)
                        for t in log.templates]
        if a.msg:
            ok[:-1] &= [a.msg in t.text for t in log.templates]
        keep &= ok[log.tid]
    for opt, text, lower in (("--from", a.t_from, True), ("--to", a.t_to, False)):
        if text is None:
            continue
        ns = parse_duration(text, opt)
        known = log.time_ns >= 0
        if not known.any() and log.n:
            raise BadInput(f"{opt}: {log.source} has no timestamps")
        keep &= known & ((log.time_ns >= ns) if lower else (log.time_ns < ns))
    return np.flatnonzero(keep)


# ---------------------------------------------------------------- -r / --delta


def _stamp(ns: int, style: str) -> str:
    us = ns // 1000
    if style == "hist":
        return f"{us // 1000000:06d}.{us % 1000000:06d}"
    return f"[{us // 1000000:5d}.{us % 1000000:06d}]"


def restamp(log: Log, idx: np.ndarray, style: str, *, relative: bool,
            delta: bool) -> list[str]:
    """Lines of ``idx`` with relative stamps and/or a ``(+delta)`` after the stamp."""
    if len(idx) == 0:
        return []
    t = log.time_ns[idx]
    known = t >= 0
    t0 = int(t[known][0]) if known.any() else 0
    prev = np.concatenate(([t0], t[:-1]))
    # a line without a stamp leaves the previous one in force for the next delta
    if not known.all():
        last = np.maximum.accumulate(np.where(known, np.arange(len(t)), -1))
        tk = np.where(last >= 0, t[np.maximum(last, 0)], t0)
        prev = np.concatenate(([t0], tk[:-1]))
    if isinstance(log, RunLog):
        recs = log.records[idx].copy()
        if relative:
            recs["time"] = recs["time"] - np.uint64(t0)
        lines = trace_input.render_records(recs, log.cat, style)
        stamped = np.ones(len(idx), bool)
        heads = [_head_len(s, style) for s in lines]
    else:
        lines = log.lines(idx)
        rests = [log.rests[i] for i in idx.tolist()]
        stamped = known
        heads = [len(s) - len(r) for s, r in zip(lines, rests, strict=True)]
        if relative:
            st = "hist" if log.format == "smp hist" else "console"
            lines = [(_stamp(int(tt) - t0, st) + " " + r) if k else s
                     for s, r, tt, k in zip(lines, rests, t.tolist(), known.tolist(),
                                            strict=True)]
            heads = [len(_stamp(0, st)) + 1 if k else h
                     for h, k in zip(heads, known.tolist(), strict=True)]
    if not delta:
        return lines
    out = []
    for s, h, tt, pp, k in zip(lines, heads, t.tolist(), prev.tolist(), stamped.tolist(),
                               strict=True):
        if not k or h == 0:
            out.append(s)
            continue
        d = max(0, int(tt) - int(pp)) // 1000
        cut = h - 1 if s[h - 1:h] == " " else h
        out.append(f"{s[:cut]} (+{d // 1000000}.{d % 1000000:06d}){s[cut:]}")
    return out


def _head_len(line: str, style: str) -> int:
    """Length of a rendered line's stamp plus the space after it."""
    if style == "hist" or (style == "native" and not line.startswith("[")):
        return line.find(" ") + 1
    return line.find("] ") + 2


# ---------------------------------------------------------------- --stats


def stats(log: Log, idx: np.ndarray, per_cpu: bool = False) -> dict:
    """Counts per template of the records ``idx``: count, share, rate, first/last time."""
    tid = log.tid[idx]
    t = log.time_ns[idx]
    nt = len(log.templates)
    counts = np.bincount(tid, minlength=nt)
    first = np.full(nt, -1, np.int64)
    last = np.full(nt, -1, np.int64)
    known = t >= 0
    if known.any():
        kt, kk = tid[known], t[known]
        # records are in time order: the last write per template wins for "last"
        last[kt] = kk
        first[kt[::-1]] = kk[::-1]
    cpus = sorted(int(c) for c in np.unique(log.cpu[idx])) if per_cpu else []
    rows = []
    total = int(len(idx))
    for g in np.argsort(-counts, kind="stable").tolist():
        c = int(counts[g])
        if c == 0:
            break
        tp = log.templates[g]
        row = {"template": tp.text, "kind": tp.kind, "fn": tp.fn, "count": c,
               "share": c / total,
               "rate_per_s": c / log.duration if log.duration else None,
               # microseconds, truncated, as the console prints them
               "first_s": (first[g] // 1000) / 1e6 if first[g] >= 0 else None,
               "last_s": (last[g] // 1000) / 1e6 if last[g] >= 0 else None}
        if per_cpu:
            sel = tid == g
            row["per_cpu"] = {str(cpu): int(np.count_nonzero(sel & (log.cpu[idx] == cpu)))
                              for cpu in cpus}
        rows.append(row)
    return {"schema": SCHEMA, "tool": "smp trace --stats", "source": log.source,
            "format": log.format, "records": total, "templates": len(rows),
            "duration_s": log.duration, "duration_from": log.duration_from or None,
            "dropped": log.dropped, "cpus": cpus, "rows": rows}


def stats_text(st: dict, per_cpu: bool = False) -> str:
    dur = f"{st['duration_s']:.3f} s" if st["duration_s"] else "duration unknown"
    drop = f", {st['dropped']} dropped" if st["dropped"] else ""
    out = [f"{st['source']}: {st['records']} records{drop}, {st['templates']} templates, "
           f"{dur}"]
    head = ["count", "%", "/s", "first_s", "last_s"]
    cpus = st["cpus"] if per_cpu else []
    head += ["cpu?" if c < 0 else f"cpu{c}" for c in cpus]
    cells = []
    for r in st["rows"]:
        c = [str(r["count"]), f"{100 * r['share']:.2f}",
             "-" if r["rate_per_s"] is None else f"{r['rate_per_s']:.2f}",
             "-" if r["first_s"] is None else f"{r['first_s']:.6f}",
             "-" if r["last_s"] is None else f"{r['last_s']:.6f}"]
        c += [str(r["per_cpu"][str(cpu)]) for cpu in cpus]
        cells.append(c)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(head)]

    def line(c: Sequence[str], template: str) -> str:
        return "  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)) + "  " + template

    out.append(line(head, "template"))
    out += [line(c, r["template"]) for c, r in zip(cells, st["rows"], strict=True)]
    return "\n".join(out) + "\n"
