"""The reports of ``smp lockstat``: each builds rows (for JSON/CSV) and text lines together.

* :func:`table` -- NetBSD lockstat(8)'s table (``display()`` in usr.sbin/lockstat/main.c):
  one section per (lock type, mode, event), a ``<all>`` row per lock when ``-l`` is given or
  the lock has more than one caller, locks and then callers sorted by time (``-c``: count),
  ``Total%`` relative to the whole section, counts and times scaled by ``-p``/``-s``;
* :func:`lock_stat` -- Linux ``/proc/lock_stat`` as lockdep_proc.c prints it: per class the
  twelve columns (a reader/writer class used both ways: a ``-W`` and a ``-R`` row), then
  one block of contention points (waiting call sites) and contended points (the holders'
  call sites), ``count [<address>] site``, with no cap of 4;
* :func:`histograms` -- power-of-two wait and hold distributions as ASCII, side by side;
* :func:`matrix` -- waiter site x holder site per lock class;
* :func:`versus` -- two runs, per class and call site: A, B, delta and ratio B/A.

A :class:`Report` keeps the rows a machine reads (exact integers, times in ns) and the lines
a person reads; the caller chooses which to print.
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from dataclasses import dataclass, field

from smp.errors import BadInput
from smp.tools.lockstat_data import (
    EVENT_HELP,
    Lockstat,
    Selection,
    Stat,
    bucket_bounds,
    merge,
    name_match,
    section_key,
    section_title,
)

NONE_RECORDED = "None of the selected events were recorded."
ALL = "<all>"
REPORT_SCHEMA = 2   # of the JSON and CSV that --format writes (2: lock-stat points
                    # per class, with an address)


@dataclass
class Report:
    """One report: rows with fixed ``fields`` (JSON/CSV) and the text lines."""

    kind: str
    fields: list[str]
    rows: list[dict] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    empty: bool = False
    warnings: list[str] = field(default_factory=list)   # for stderr, not the report


def fmt_ns(ns: float) -> str:
    """A duration with its unit: 950ns, 12.3us, 4.56ms, 1.20s."""
    if ns < 1e3:
        return f"{ns:.0f}ns"
    if ns < 1e6:
        return f"{ns / 1e3:.3g}us" if ns < 1e5 else f"{ns / 1e3:.0f}us"
    if ns < 1e9:
        return f"{ns / 1e6:.3g}ms" if ns < 1e8 else f"{ns / 1e6:.0f}ms"
    return f"{ns / 1e9:.2f}s"


def none_line(ls: Lockstat, sel: Selection) -> str:
    """The one line of an empty report, with what was selected."""
    if ls.stats_off:
        return (f"{NONE_RECORDED} (lock statistics were off in this run: "
                f"kernel option lockstat = off)")
    return f"{NONE_RECORDED} (selected: {sel.describe()})"


def _elapsed_line(ls: Lockstat, per_cpu: bool, per_second: bool) -> str:
    # NetBSD main.c, word for word
    s = f"Elapsed time: {ls.elapsed_s:.2f} seconds."
    if per_cpu or per_second:
        s += " Displaying " + ("per-CPU " if per_cpu else "") + (
            "per-second " if per_second else "") + "averages."
    return s


def _legend(events: list[str], by_count: bool) -> list[str]:
    out = [f"{e}: Count = {EVENT_HELP[e][0]}; Time = {EVENT_HELP[e][1]} in ms."
           for e in events]
    out.append(f"Sorted by {'count' if by_count else 'time'}; Total% is the share of the "
               f"section's {'Count' if by_count else 'Time'}.")
    return out


def _warnings(ls: Lockstat) -> list[str]:
    out = []
    if ls.slot_overflow:
        out.append(f"warning: {ls.slot_overflow} acquisitions were charged to <overflow> "
                   f"(the per-CPU statistics table was full)")
    if ls.pair_overflow:
        out.append(f"warning: {ls.pair_overflow} contended acquisitions have no waiter x "
                   f"holder pair (the pair table was full)")
    return out


def scale_of(ls: Lockstat, per_cpu: bool, per_second: bool) -> float:
    """NetBSD's cscale: counts and times are divided by CPUs (-p) and by seconds (-s)."""
    c = 1.0 / ls.ncpu if per_cpu else 1.0
    if per_second:
        if ls.elapsed_ns <= 0:
            raise BadInput(f"{ls.path}: elapsed_ns = 0: no per-second averages")
        c /= ls.elapsed_s
    return c


# ---------------------------------------------------------------- grouping


@dataclass
class Group:
    """One lock (instance, class or <all>) of a section, with its callers."""

    lock: str
    stat: Stat
    callers: dict[str, Stat]


@dataclass
class Section:
    kind: str
    mode: str
    event: str
    groups: list[Group]
    total_count: int
    total_time: int

    @property
    def title(self) -> str:
        return section_title(self.kind, self.mode, self.event)


def _sort_key(s: Stat, event: str, by_count: bool, name: str) -> tuple:
    c, t = s.metric(event)
    return (-c, -t, name) if by_count else (-t, -c, name)


def sections(ls: Lockstat, sel: Selection, *, by_count: bool = False, locks_only: bool = False,
             callers_only: bool = False, merge_class: bool = False) -> list[Section]:
    """The table's sections in lockstat(8) order, locks and callers sorted."""
    by_sec: dict[tuple[str, str], list] = defaultdict(list)
    for r in ls.recs:
        if sel.rec_ok(r):
            by_sec[(r.kind, r.mode)].append(r)
    out = []
    order = sorted(by_sec, key=lambda k: section_key(*k))
    for kind, mode in order:
        for event in sel.events:
            locks: dict[str, dict[str, Stat]] = {}
            for r in by_sec[(kind, mode)]:
                if r.stat.metric(event)[0] == 0:
                    continue
                lk = ALL if callers_only else (r.klass if merge_class else r.lock)
                cl = ALL if locks_only else r.site
                callers = locks.setdefault(lk, {})
                callers.setdefault(cl, Stat()).add(r.stat)
            if not locks:
                continue
            groups = []
            for lk, callers in locks.items():
                tot = Stat()
                for s in callers.values():
                    tot.add(s)
                srt = dict(sorted(callers.items(),
                                  key=lambda kv: _sort_key(kv[1], event, by_count, kv[0])))
                groups.append(Group(lk, tot, srt))
            groups.sort(key=lambda g: _sort_key(g.stat, event, by_count, g.lock))
            tc = sum(g.stat.metric(event)[0] for g in groups)
            tt = sum(g.stat.metric(event)[1] for g in groups)
            out.append(Section(kind, mode, event, groups, tc, tt))
    return out


def _n(n: int, noun: str) -> str:
    """``1 more lock``, ``2 more locks``, ``3 more classes``."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def _pct(metric: float, total: float) -> float:
    # main.c: pcscale = 100 / total, or 100 when the total is 0
    return metric * (100.0 / total if total else 100.0)


# ---------------------------------------------------------------- lockstat(8) table

TABLE_HEAD = ("Total%  Count   Time/ms          Lock                       Caller",
              "------ ------- --------- ---------------------- ------------------------------")
TABLE_FIELDS = ["section", "event", "kind", "mode", "lock", "caller", "total_pct", "count",
                "time_ns", "acq", "contended", "spins", "bounces", "con_bounces", "holds",
                "wait_total_ns", "wait_min_ns", "wait_max_ns", "hold_total_ns", "hold_min_ns",
                "hold_max_ns"]


def table(ls: Lockstat, sel: Selection, *, by_count: bool = False, locks_only: bool = False,
          callers_only: bool = False, merge_class: bool = False, per_cpu: bool = False,
          per_second: bool = False, top: int | None = None) -> Report:
    """NetBSD lockstat(8)'s report."""
    cscale = scale_of(ls, per_cpu, per_second)
    rep = Report("table", TABLE_FIELDS, meta={"scale": cscale, "per_cpu": per_cpu,
                                              "per_second": per_second})
    secs = sections(ls, sel, by_count=by_count, locks_only=locks_only,
                    callers_only=callers_only, merge_class=merge_class)
    if not secs:
        rep.empty = True
        rep.lines = [none_line(ls, sel)]
        return rep
    rep.lines = [_elapsed_line(ls, per_cpu, per_second), *_legend(sel.events, by_count),
                 *_warnings(ls)]
    omitted = 0
    for sec in secs:
        total = sec.total_count if by_count else sec.total_time
        rep.lines += ["", f"-- {sec.title}", "", *TABLE_HEAD]
        shown = sec.groups if top is None else sec.groups[:top]
        for g in shown:
            rows = []
            if locks_only or len(g.callers) > 1:
                rows.append((ALL, g.stat))
            if not locks_only:
                rows += list(g.callers.items())
            for caller, s in rows:
                c, t = s.metric(sec.event)
                pct = _pct(c if by_count else t, total)
                # main.c: (int)(count * cscale), time * tscale in ms
                rep.lines.append(f"{pct:6.2f} {int(c * cscale):7d} {t * cscale / 1e6:9.2f} "
                                 f"{g.lock:<22s} {caller}")
                rep.rows.append({"section": sec.title, "event": sec.event, "kind": sec.kind,
                                 "mode": sec.mode, "lock": g.lock, "caller": caller,
                                 "total_pct": round(pct, 6), "count": c, "time_ns": t,
                                 **s.summary()})
        if len(shown) < len(sec.groups):
            rest = sec.groups[len(shown):]
            m = sum(g.stat.metric(sec.event)[0 if by_count else 1] for g in rest)
            rep.lines.append(f"({_n(len(rest), 'more lock')} not shown: {_pct(m, total):.2f}% of "
                             f"the section's {'Count' if by_count else 'Time'})")
            omitted += len(rest)
    rep.meta["omitted_locks"] = omitted
    return rep


# ---------------------------------------------------------------- Linux lock_stat

LS_WIDTH = 40 + 1 + 12 * (14 + 1)
LS_COLS = ("con-bounces", "contentions", "waittime-min", "waittime-max", "waittime-total",
           "waittime-avg", "acq-bounces", "acquisitions", "holdtime-min", "holdtime-max",
           "holdtime-total", "holdtime-avg")
LOCK_STAT_FIELDS = ["type", "name", "class", "mode", "site", "address", "con_bounces",
                    "contentions", "waittime_min_ns", "waittime_max_ns", "waittime_total_ns",
                    "waittime_avg_ns", "acq_bounces", "acquisitions", "holds",
                    "holdtime_min_ns", "holdtime_max_ns", "holdtime_total_ns",
                    "holdtime_avg_ns", "count", "wait_total_ns"]
LS_NAME = 37          # lockdep_proc.c copies a class name into char[38] with snprintf
KERNEL_TEXT = 0xc0100000     # where an i386 NetBSD kernel's text starts
KERNEL_TEXT_SIZE = 0x300000  # about the size of a 1.5 GENERIC kernel's text


def _us(ns: float) -> str:
    """lockdep_proc.c snprint_time(): microseconds with two decimals, rounded to 10 ns
    (it adds 5 ns, then truncates)."""
    ns = int(ns) + 5
    return f"{ns // 1000}.{(ns % 1000) // 10:02d}"


def site_address(site: str) -> int:
    """A stable synthetic kernel-text address for a call site: what lock_stat prints as
    ``[<%p>]``.  The same name gives the same address in every run (a CRC, not Python's
    salted hash); the simulated kernel has no instruction addresses of its own."""
    return KERNEL_TEXT + zlib.crc32(site.encode()) % KERNEL_TEXT_SIZE


def lock_stat(ls: Lockstat, sel: Selection, *, top: int | None = None,
              points_wait: bool = False) -> Report:
    """Linux /proc/lock_stat as lockdep_proc.c prints it (``seq_header``, ``seq_stats``).

    One block per lock class, sorted by contentions: a reader/writer class used both ways
    has a ``-W`` and a ``-R`` row and one points block for both; then the contention
    points (the call sites that waited) and the contended points (the call sites of the
    holders they waited behind), each ``count [<address>] site``.  Linux keeps four of
    each; every one is listed here, the most frequent first.  ``points_wait`` adds each
    point's waittime-total (us) before its address, which Linux does not keep.
    """
    rep = Report("lock-stat", LOCK_STAT_FIELDS)
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in ls.recs:
        if sel.rec_ok(r):
            groups[r.klass][r.mode].append(r)
    if not groups:
        rep.empty = True
        rep.lines = [none_line(ls, sel)]
        return rep
    stats = {k: {m: merge((None, r.stat) for r in rs)[None] for m, rs in modes.items()}
             for k, modes in groups.items()}

    def contentions(k: str) -> int:
        return sum(s.contended for s in stats[k].values())

    # lock_stat_cmp(): by contentions (read + write), most first
    order = sorted(stats, key=lambda k: (-contentions(k),
                                         -sum(s.acq for s in stats[k].values()), k))
    shown = order if top is None else order[:top]
    rep.warnings = _warnings(ls)
    if _instance_only(ls, sel):
        rep.warnings.append("note: contended points are recorded per lock class: -L of an "
                            "instance shows the holders of the whole class")
    rep.lines = [
        "lock_stat version 0.4",
        "-" * LS_WIDTH,
        f"{'class name':>40} " + " ".join(f"{c:>14}" for c in LS_COLS),
        "-" * LS_WIDTH,
        "",
    ]
    for klass in shown:
        modes = stats[klass]
        name = klass[:LS_NAME]
        both = "excl" in modes and "shared" in modes
        for mode in ("excl", "shared"):
            s = modes.get(mode)
            if s is None or not s.acq:
                continue
            label = (f"{name:>38}-R" if mode == "shared" else
                     f"{name:>38}-W" if both else f"{name:>40}")
            nums = [s.con_bounces, s.contended, s.wait_min, s.wait_max, s.wait_total,
                    s.wait_avg, s.bounces, s.acq, s.hold_min, s.hold_max, s.hold_total,
                    s.hold_avg]
            cells = [f"{v:14d}" if i in (0, 1, 6, 7) else f"{_us(v):>14}"
                     for i, v in enumerate(nums)]
            # seq_stats(): "%40s:" (or "%38s-W:"), then "%14lu " and " %14s" fields
            rep.lines.append(f"{label}:" + " ".join(cells))
            rep.rows.append({"type": "class", "name": label.strip(), "class": klass,
                             "mode": mode, "con_bounces": s.con_bounces,
                             "contentions": s.contended, "waittime_min_ns": s.wait_min,
                             "waittime_max_ns": s.wait_max, "waittime_total_ns": s.wait_total,
                             "waittime_avg_ns": s.wait_avg, "acq_bounces": s.bounces,
                             "acquisitions": s.acq, "holds": s.holds,
                             "holdtime_min_ns": s.hold_min, "holdtime_max_ns": s.hold_max,
                             "holdtime_total_ns": s.hold_total, "holdtime_avg_ns": s.hold_avg})
        if not contentions(klass):
            continue
        recs = [r for rs in groups[klass].values() for r in rs]
        waiters = merge((r.site, r.stat) for r in recs if r.stat.contended)
        wpts = sorted(((site, st.contended, st.wait_total) for site, st in waiters.items()),
                      key=lambda x: (-x[1], -x[2], x[0]))
        hold: dict[str, list[int]] = {}
        for p in ls.pairs:
            if p.klass == klass and sel.func_ok(p.waiter):
                h = hold.setdefault(p.holder, [0, 0])
                h[0] += p.count
                h[1] += p.wait_total
        hpts = sorted(((site, c, w) for site, (c, w) in hold.items()),
                      key=lambda x: (-x[1], -x[2], x[0]))
        # the dashes underline the name as printed, "-R"/"-W" included
        width = len(name) + (2 if "shared" in modes else 0)
        for kind_, pts in (("contention_point", wpts), ("contended_point", hpts)):
            if pts:
                rep.lines.append(" " * (40 - width) + "-" * width)
            for site, c, w in pts:
                addr = site_address(site)
                ip = f"[<{addr:08x}>]"
                wt = f" {_us(w):>14}" if points_wait else ""
                rep.lines.append(f"{name:>40} {c:14d}{wt} {ip:>29} {site}")
                rep.rows.append({"type": kind_, "name": name, "class": klass, "mode": None,
                                 "site": site, "address": f"{addr:08x}", "count": c,
                                 "wait_total_ns": w})
        if hpts:
            rep.lines += ["", "." * LS_WIDTH, ""]
    if len(shown) < len(order):
        rep.warnings.append(f"smp lockstat: -n {top}: "
                            f"{_n(len(order) - len(shown), 'more class')} not shown")
    return rep


def _instance_only(ls: Lockstat, sel: Selection) -> bool:
    """True if -L picks lock instances rather than whole classes (pairs are per class)."""
    return bool(sel.locks) and not all(any(name_match(c, p) for c in ls.classes)
                                       for p in sel.locks)


# ---------------------------------------------------------------- histograms

HIST_FIELDS = ["section", "event", "lock", "caller", "bucket", "from_ns", "to_ns", "wait",
               "hold"]
BAR = 24


def _bar(v: int, top: int) -> str:
    n = 0 if not top else round(BAR * v / top)
    if v and not n:
        n = 1       # a non-empty bucket always shows
    return "|" + "@" * n + " " * (BAR - n) + "|"


def histograms(ls: Lockstat, sel: Selection, *, by_count: bool = False,
               locks_only: bool = False, callers_only: bool = False, merge_class: bool = False,
               top: int | None = None) -> Report:
    """Power-of-two wait and hold time distributions per lock and call site."""
    rep = Report("hist", HIST_FIELDS)
    secs = sections(ls, sel, by_count=by_count, locks_only=locks_only,
                    callers_only=callers_only, merge_class=merge_class)
    if not secs:
        rep.empty = True
        rep.lines = [none_line(ls, sel)]
        return rep
    rep.lines = ["Power-of-two histograms: a bucket counts events of [from, to) ns; bucket 0 "
                 "is exactly 0 ns; wait = contended acquisitions, hold = outermost holds."]
    for sec in secs:
        for g in sec.groups if top is None else sec.groups[:top]:
            for caller, s in g.callers.items():
                wh, hh = s.wait_hist, s.hold_hist
                nz = [b for b in range(max(len(wh), len(hh)))
                      if (b < len(wh) and wh[b]) or (b < len(hh) and hh[b])]
                rep.lines += ["", f"-- {sec.title}: {g.lock}  {caller}",
                              f"wait: {s.contended} contended, avg {fmt_ns(s.wait_avg)}, "
                              f"max {fmt_ns(s.wait_max)}; hold: {s.holds} holds, avg "
                              f"{fmt_ns(s.hold_avg)}, max {fmt_ns(s.hold_max)}"]
                if not nz:
                    continue
                rep.lines.append(f"{'from/ns':>11} {'to/ns':>11} {'wait':>8} "
                                 f"{'distribution':<{BAR + 2}} {'hold':>8} distribution")
                wtop, htop = max(wh, default=0), max(hh, default=0)
                for b in range(nz[0], nz[-1] + 1):
                    w = wh[b] if b < len(wh) else 0
                    h = hh[b] if b < len(hh) else 0
                    lo, hi = bucket_bounds(b)
                    his = "inf" if math.isinf(hi) else str(int(hi))
                    rep.lines.append(f"{lo:>11} {his:>11} {w:>8} {_bar(w, wtop)} {h:>8} "
                                     f"{_bar(h, htop)}")
                    rep.rows.append({"section": sec.title, "event": sec.event,
                                     "lock": g.lock, "caller": caller, "bucket": b,
                                     "from_ns": lo, "to_ns": None if math.isinf(hi) else int(hi),
                                     "wait": w, "hold": h})
    return rep


# ---------------------------------------------------------------- waiter x holder

MATRIX_FIELDS = ["class", "kind", "mode", "waiter", "holder", "count", "wait_total_ns"]


def _pair_lock_ok(ls: Lockstat, sel: Selection, klass: str) -> bool:
    if not sel.locks:
        return True
    insts = ls.class_instances().get(klass, ())
    return any(name_match(klass, p) or any(name_match(i, p) for i in insts)
               for p in sel.locks)


def _rank(d: dict[str, list[int]], first: int) -> list[str]:
    """Names by their [count, wait_ns] totals, the sort metric first."""
    return sorted(d, key=lambda name: (-d[name][first], -d[name][1 - first], name))


def _cell(c: list[int] | None, by_count: bool) -> str:
    if c is None:
        return f"{'-':>10}"
    return f"{c[0]:>10d}" if by_count else f"{c[1] / 1e6:>10.2f}"


def matrix(ls: Lockstat, sel: Selection, *, by_count: bool = False,
           top: int | None = None) -> Report:
    """Waiter call site x holder call site, per lock class and mode."""
    rep = Report("matrix", MATRIX_FIELDS)
    cells: dict[tuple[str, str, str], dict[tuple[str, str], list[int]]] = defaultdict(dict)
    for p in ls.pairs:
        if not (sel.kind_ok(p.kind) and _pair_lock_ok(ls, sel, p.klass)
                and (sel.func_ok(p.waiter) or sel.func_ok(p.holder))):
            continue
        c = cells[(p.kind, p.mode, p.klass)].setdefault((p.waiter, p.holder), [0, 0])
        c[0] += p.count
        c[1] += p.wait_total
    if not cells:
        rep.empty = True
        rep.lines = [none_line(ls, Selection(sel.locks, sel.funcs, sel.kinds, ["spin"]))]
        return rep
    unit = "contended acquisitions (count)" if by_count else "spin (wait) time in ms"
    rep.lines = [f"Waiter call site x holder call site (the site that last took the lock "
                 f"when the waiter began to spin); cells: {unit}; - never."]
    if _instance_only(ls, sel):
        rep.lines.append("(pairs are recorded per lock class: -L shows whole classes)")
    rep.lines += _warnings(ls)
    first = 0 if by_count else 1      # index of the sort metric in [count, wait_ns]
    for kind, mode, klass in sorted(cells, key=lambda k: (section_key(k[0], k[1]), k[2])):
        cs = cells[(kind, mode, klass)]
        wtot: dict[str, list[int]] = {}
        htot: dict[str, list[int]] = {}
        for (w, h), c in cs.items():
            for d, k in ((wtot, w), (htot, h)):
                t = d.setdefault(k, [0, 0])
                t[0] += c[0]
                t[1] += c[1]

        waiters, holders = _rank(wtot, first), _rank(htot, first)
        if top is not None:
            waiters, holders = waiters[:top], holders[:top]
        wid = max(15, *(len(w) for w in waiters))
        title = section_title(kind, mode, "spin")
        rep.lines += ["", f"-- {title}: {klass}", ""]
        corner = "waiter \\ holder"
        rep.lines.append(f"{corner:<{wid}} " + " ".join(
            f"{f'[{i + 1}]':>10}" for i in range(len(holders))) + f" {'total':>10}")

        def cell(c: list[int] | None) -> str:
            return _cell(c, by_count)

        for w in waiters:
            rep.lines.append(f"{w:<{wid}} " + " ".join(cell(cs.get((w, h))) for h in holders)
                             + f" {cell(wtot[w])}")
        all_tot = [sum(c[0] for c in cs.values()), sum(c[1] for c in cs.values())]
        rep.lines.append(f"{'total':<{wid}} " + " ".join(cell(htot[h]) for h in holders)
                         + f" {cell(all_tot)}")
        rep.lines.append("holders: " + "  ".join(f"[{i + 1}] {h}" for i, h in
                                                 enumerate(holders)))
        hidden = len(wtot) - len(waiters), len(htot) - len(holders)
        if any(hidden):
            rep.lines.append(f"({_n(hidden[0], 'more waiter')}, {_n(hidden[1], 'more holder')} "
                             f"not shown; totals include them)")
        for w in waiters:
            for h in holders:
                c = cs.get((w, h))
                if c is not None:
                    rep.rows.append({"class": klass, "kind": kind, "mode": mode, "waiter": w,
                                     "holder": h, "count": c[0], "wait_total_ns": c[1]})
    return rep


# ---------------------------------------------------------------- two runs

VS_FIELDS = ["section", "event", "lock", "caller", "count_a", "count_b", "count_delta",
             "count_ratio", "time_ns_a", "time_ns_b", "time_delta_ns", "time_ratio"]


def _ratio(a: float, b: float) -> float | None:
    return b / a if a else None


def _ratio_s(a: float, b: float) -> str:
    if not a:
        return f"{'new':>7}" if b else f"{'-':>7}"
    r = b / a
    return f"{r:7.2f}" if r < 1000 else f"{r:7.0f}" if r < 1e6 else f"{r:7.1e}"


def _vs_vals(caller: str, xa: Stat, xb: Stat, event: str, sa: float, sb: float) -> tuple:
    """(caller, raw count A, B, raw time A, B, scaled (count, time) A, scaled B)."""
    ca, ta = xa.metric(event)
    cb, tb = xb.metric(event)
    return caller, ca, cb, ta, tb, (_sc(ca, sa), _sc(ta, sa)), (_sc(cb, sb), _sc(tb, sb))


def _sc(x: int, scale: float) -> float:
    # unscaled figures stay exact integers
    return x if scale == 1 else x * scale


def _delta(v: tuple, by_count: bool) -> float:
    i = 0 if by_count else 1
    return v[6][i] - v[5][i]


def versus(la: Lockstat, lb: Lockstat, sel: Selection, *, by_count: bool = False,
           locks_only: bool = False, callers_only: bool = False, per_cpu: bool = False,
           per_second: bool = False, top: int | None = None) -> Report:
    """Run A against run B, lock classes merged: per class and call site."""
    sa, sb = scale_of(la, per_cpu, per_second), scale_of(lb, per_cpu, per_second)
    rep = Report("vs", VS_FIELDS, meta={"scale_a": sa, "scale_b": sb, "per_cpu": per_cpu,
                                        "per_second": per_second,
                                        "run_b": str(lb.run)})
    kw = {"by_count": by_count, "locks_only": locks_only, "callers_only": callers_only,
          "merge_class": True}
    secs = {}
    for which, ls in (("a", la), ("b", lb)):
        for sec in sections(ls, sel, **kw):
            d = secs.setdefault((sec.kind, sec.mode, sec.event), {"a": {}, "b": {}})
            for g in sec.groups:
                d[which][g.lock] = g
    if not secs:
        rep.empty = True
        rep.lines = [none_line(la, sel) + " (in either run)"]
        return rep
    rep.lines = [f"Elapsed time: A {la.elapsed_s:.2f} s, B {lb.elapsed_s:.2f} s."
                 + (" Displaying " + ("per-CPU " if per_cpu else "")
                    + ("per-second " if per_second else "") + "averages."
                    if per_cpu or per_second else ""),
                 f"A = {la.run}", f"B = {lb.run}",
                 "Lock classes merged (-M); d = B - A; B/A: ratio ('new': only in B).",
                 *_legend(sel.events, by_count)[:-1],
                 f"Sorted by |d{'Count' if by_count else 'Time'}|.",
                 *_warnings(la), *_warnings(lb)]
    head = (f"{'Count/A':>8} {'Count/B':>8} {'dCount':>8} {'B/A':>7} {'Time/ms/A':>10} "
            f"{'Time/ms/B':>10} {'dTime/ms':>10} {'B/A':>7} {'Lock':<22} Caller")
    for key in sorted(secs, key=lambda k: (section_key(k[0], k[1]), sel.events.index(k[2]))):
        kind, mode, event = key
        d = secs[key]
        items = []
        for lock in set(d["a"]) | set(d["b"]):
            ga, gb = d["a"].get(lock), d["b"].get(lock)
            callers = sorted(set(ga.callers if ga else ()) | set(gb.callers if gb else ()))
            tot = _vs_vals(ALL, ga.stat if ga else Stat(), gb.stat if gb else Stat(),
                           event, sa, sb)
            crow = [_vs_vals(c, ga.callers.get(c, Stat()) if ga else Stat(),
                             gb.callers.get(c, Stat()) if gb else Stat(), event, sa, sb)
                    for c in callers]
            crow.sort(key=lambda v: (-abs(_delta(v, by_count)), v[0]))
            if locks_only:
                vals = [tot]
            elif len(callers) > 1:
                vals = [tot, *crow]
            else:
                vals = crow
            items.append((abs(_delta(tot, by_count)), lock, vals))
        items.sort(key=lambda x: (-x[0], x[1]))
        rep.lines += ["", f"-- {section_title(kind, mode, event)}", "", head,
                      " ".join("-" * w for w in (8, 8, 8, 7, 10, 10, 10, 7, 22, 30))]
        for _dm, lock, vals in items if top is None else items[:top]:
            for caller, ca, cb, ta, tb, va, vb in vals:
                rep.lines.append(
                    f"{int(va[0]):8d} {int(vb[0]):8d} {int(vb[0]) - int(va[0]):+8d} "
                    f"{_ratio_s(va[0], vb[0])} {va[1] / 1e6:10.2f} {vb[1] / 1e6:10.2f} "
                    f"{(vb[1] - va[1]) / 1e6:+10.2f} {_ratio_s(va[1], vb[1])} "
                    f"{lock:<22s} {caller}")
                rep.rows.append({"section": section_title(kind, mode, event), "event": event,
                                 "lock": lock, "caller": caller, "count_a": ca, "count_b": cb,
                                 "count_delta": vb[0] - va[0],
                                 "count_ratio": _ratio(va[0], vb[0]), "time_ns_a": ta,
                                 "time_ns_b": tb, "time_delta_ns": vb[1] - va[1],
                                 "time_ratio": _ratio(va[1], vb[1])})
        if top is not None and len(items) > top:
            rep.lines.append(f"({_n(len(items) - top, 'more lock')} not shown)")
    return rep


# ---------------------------------------------------------------- folded stacks

FOLDED_FIELDS = ["stack", "value"]
NO_PAIR = "<no pair>"     # contended acquisitions the pair table could not attribute


def _frame(name: str) -> str:
    """A frame of a folded stack: no ';' (the separator) and no blanks (before the count)."""
    return "_".join(name.replace(";", ":").split()) or "?"


def _class_frame(ls: Lockstat, klass: str, mode: str) -> str:
    if ls.classes.get(klass) == "rw":
        return _frame(klass) + ("-W" if mode == "excl" else "-R")
    return _frame(klass)


def folded(ls: Lockstat, sel: Selection, *, by_count: bool = False) -> Report:
    """Brendan Gregg's folded stacks, for flamegraph.pl, speedscope, inferno.

    ``-E spin`` (default): ``class;waiter_site;holder_site N`` from the waiter x holder
    pairs -- the flame graph's base is the lock class, above it the call site that waited,
    on top the call site of the holder it waited behind -- with N the wait time in ns (or
    the number of contended acquisitions with ``by_count``).  Contended acquisitions the
    pair table could not record end in a ``<no pair>`` frame.  ``-E hold``:
    ``class;site N``, N the hold time in ns (or holds).  Reader/writer classes are
    ``CLASS-W`` and ``CLASS-R``.  Lines are sorted, as stackcollapse scripts write them.
    """
    rep = Report("folded", FOLDED_FIELDS, meta={"value": "count" if by_count else "ns"})
    stacks: dict[str, int] = defaultdict(int)
    event = sel.events[0]
    if event == "spin":
        # per (class, mode, waiter): what the slots counted, less what the pairs explain
        rest: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        for r in ls.recs:
            if (r.stat.contended and sel.kind_ok(r.kind) and _pair_lock_ok(ls, sel, r.klass)
                    and sel.func_ok(r.site)):
                c = rest[(r.klass, r.mode, r.site)]
                c[0] += r.stat.contended
                c[1] += r.stat.wait_total
        for p in ls.pairs:
            if sel.kind_ok(p.kind) and _pair_lock_ok(ls, sel, p.klass) and sel.func_ok(p.waiter):
                key = f"{_class_frame(ls, p.klass, p.mode)};{_frame(p.waiter)};{_frame(p.holder)}"
                stacks[key] += p.count if by_count else p.wait_total
                c = rest[(p.klass, p.mode, p.waiter)]
                c[0] -= p.count
                c[1] -= p.wait_total
        for (klass, mode, site), (c, w) in rest.items():
            if c > 0:
                key = f"{_class_frame(ls, klass, mode)};{_frame(site)};{NO_PAIR}"
                stacks[key] += c if by_count else max(w, 0)
    else:
        for r in ls.recs:
            if sel.rec_ok(r) and r.stat.holds:
                key = f"{_class_frame(ls, r.klass, r.mode)};{_frame(r.site)}"
                stacks[key] += r.stat.holds if by_count else r.stat.hold_total
    for key in sorted(stacks):
        if stacks[key] > 0:
            rep.lines.append(f"{key} {stacks[key]}")
            rep.rows.append({"stack": key, "value": stacks[key]})
    if not rep.lines:
        rep.empty = True
        rep.warnings = [none_line(ls, sel)]
    elif _instance_only(ls, sel):
        rep.warnings = ["note: waiter x holder pairs are recorded per lock class: -L of an "
                        "instance shows its whole class"]
    return rep


# ---------------------------------------------------------------- perf lock contention

PERF_KEYS = ("contended", "wait_total", "wait_max", "wait_min", "avg_wait")
PERF_HEADERS = {"contended": ("contended", 10), "wait_total": ("total wait", 12),
                "wait_max": ("max wait", 12), "wait_min": ("min wait", 12),
                "avg_wait": ("avg wait", 12)}
PERF_FIELDS_SHOWN = ("contended", "wait_total", "wait_max", "avg_wait")  # perf's -F default
PERF_TYPE = {("spin", "excl"): "spinlock", ("rw", "excl"): "rwlock:W",
             ("rw", "shared"): "rwlock:R", ("spin-recursive", "excl"): "kernel_lock"}
PERF_TYPE_NAME = {"spin": "spinlock", "rw": "rwlock", "spin-recursive": "kernel_lock"}
PERF_FIELDS = ["caller", "lock", "address", "type", "contended", "wait_total_ns",
               "wait_max_ns", "wait_min_ns", "avg_wait_ns"]
KERNEL_DATA = 0xc0400000       # after the kernel text (site_address)
KERNEL_DATA_SIZE = 0x400000


def lock_address(name: str) -> int:
    """A stable synthetic kernel-data address for a lock (instance or class), aligned as a
    lock word is: what perf lock contention -l prints in its address column."""
    return KERNEL_DATA + (zlib.crc32(name.encode()) % KERNEL_DATA_SIZE) // 4 * 4


def perf_time(ns: int, width: int = 12) -> str:
    """perf's lock_stat_key_print_time(): two decimals and the largest unit that fits
    (h, m, s, ms, us), else whole nanoseconds."""
    for base, unit in ((3600e9, "h "), (60e9, "m "), (1e9, "s "), (1e6, "ms"), (1e3, "us")):
        if ns >= base:
            return f"{ns / base:{width - 3}.2f} {unit}"
    return f"{int(ns):{width - 3}d} ns"


def _perf_value(s: Stat, key: str) -> int:
    return {"contended": s.contended, "wait_total": s.wait_total, "wait_max": s.wait_max,
            "wait_min": s.wait_min, "avg_wait": s.wait_total // s.contended
            if s.contended else 0}[key]


def perf_lock(ls: Lockstat, sel: Selection, *, key: str = "wait_total", by_lock: bool = False,
              merge_class: bool = False, top: int | None = None) -> Report:
    """``perf lock contention``'s table (tools/perf/builtin-lock.c).

    By caller (default): one row per call site and lock type, every lock that site waited
    for merged, as perf aggregates by call stack; ``by_lock`` (perf ``-l``): one row per
    lock instance (or class with ``merge_class``, perf ``-c``), with a synthetic address.
    Columns contended, total wait, max wait, avg wait; rows sorted by ``key`` (perf ``-k``:
    contended, wait_total (default), wait_max, wait_min, avg_wait), the first ``top``
    (perf ``-E``); a row that never waited is left out, as perf leaves it out.
    """
    if key not in PERF_KEYS:
        raise BadInput(f"-k {key}: unknown sort key (known: {', '.join(PERF_KEYS)})")
    rep = Report("perf-lock", PERF_FIELDS, meta={"key": key,
                                                 "by": "lock" if by_lock else "caller"})
    groups: dict[tuple, Stat] = {}
    for r in ls.recs:
        if not (sel.rec_ok(r) and r.stat.contended):
            continue
        if by_lock:
            name = r.klass if merge_class else r.lock
            k = (name, PERF_TYPE_NAME.get(r.kind, r.kind))
        else:
            k = (r.site, PERF_TYPE.get((r.kind, r.mode), f"{r.kind}:{r.mode}"))
        groups.setdefault(k, Stat()).add(r.stat)
    items = [(k, s) for k, s in groups.items() if s.wait_total > 0]
    if not items:
        rep.empty = True
        rep.lines = [none_line(ls, sel)]
        return rep
    items.sort(key=lambda ks: (-_perf_value(ks[1], key), -ks[1].wait_total, ks[0]))
    shown = items if top is None else items[:top]
    cols = [k for k in PERF_FIELDS_SHOWN] + ([key] if key not in PERF_FIELDS_SHOWN else [])
    head = " ".join(f"{PERF_HEADERS[c][0]:>{PERF_HEADERS[c][1]}}" for c in cols) + " "
    head += f"  {'address':>16}   symbol" if by_lock else f"  {'type':>10}   caller"
    rep.lines = [head, ""]
    for (name, typ), s in shown:
        cells = []
        for c in cols:
            v = _perf_value(s, c)
            cells.append(f"{v:10d}" if c == "contended" else perf_time(v))
        if by_lock:
            addr = lock_address(name)
            tail = f"  {addr:016x}   {name} ({typ})"
        else:
            tail = f"  {typ:>10}   {name}"
        rep.lines.append(" ".join(cells) + " " + tail)
        rep.rows.append({"caller": None if by_lock else name, "lock": name if by_lock else None,
                         "address": f"{lock_address(name):016x}" if by_lock else None,
                         "type": typ, "contended": s.contended, "wait_total_ns": s.wait_total,
                         "wait_max_ns": s.wait_max, "wait_min_ns": s.wait_min,
                         "avg_wait_ns": _perf_value(s, "avg_wait")})
    if len(shown) < len(items):
        rep.warnings.append(f"smp lockstat: -n {top}: {len(items) - len(shown)} more "
                            f"{'lock' if by_lock else 'caller'} row(s) not shown")
    return rep
