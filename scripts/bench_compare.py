"""Benchmark ``smp compare`` (and ``smp trace``) on two 1,000,000-line logs.

The logs are synthetic run directories written with runfmt's own writers (events.bin,
catalogue.json, console.log, manifest.json, summary.json): a realistic mix of ~30 pmap/UVM
message templates with Zipf-like frequencies, addresses drawn from page pools (so pages get
reused, as PTPs do), pids from a process table, 4 CPUs.  Run A is a steal-enabled kernel,
run B a steal-removed one (no pmap_steal_ptp/pv lines, more "get ptp failed" and
out-of-swap kills), with different seeds.

Scenarios, each timed a few times in-process (``smp.cli.main``, output to /dev/null):

    exact        smp compare A B                         events.bin + catalogue.json
    exact-json   smp compare A B --json --per-cpu
    mined        smp compare A/console.log B/console.log  text, templates mined
    lockstep     A against a copy with one line changed at 500,000 (exact, then mined):
                 raw fast path to the divergence, normalized keys only after it
    moved        A against a copy whose pmaps all live elsewhere (exact, then mined): the
                 sequence view's worst case, every line alias-normalized on both sides
    trace        smp trace A (render 1M lines), smp trace A --stats

    python scripts/bench_compare.py [--quick] [--lines N] [--reps R] [--keep DIR] [--json]

Prints a table of medians, wall and CPU seconds, with lines/s (lines of both inputs per
wall second).  Target: a million-line compare in at most 10 s on the 2-core development
machines, here 5 us per line of both inputs as a ratio to the empty-loop anchor
(scripts/benchlib.py).  ``--quick``: 200,000 records, one repetition.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import Bench, Row, add_args, anchored  # noqa: E402

from smp import cli
from smp.rundir import format as runfmt  # noqa: E402
from smp.rundir.format import REC_DTYPE, Catalogue  # noqa: E402

# (fn, fmt, kind, hist, weight, args); arg kinds: pmap, va, pa, pg, pid, num, flag, cpu,
# str (a command name from the string table)
TEMPLATES = [
    ("pmap_enter", "pmap %p va 0x%08x pa 0x%08x prot %d flags 0x%x", "printf", "", 300,
     ["pmap", "va", "pa", "num", "flag"]),
    ("uvm_fault", "pid %d (%s) va 0x%08x ftype %d", "printf", "", 260, ["pid", "str", "va", "num"]),
    ("pmap_remove", "pmap %p sva 0x%08x eva 0x%08x", "printf", "", 120, ["pmap", "va", "va"]),
    ("pmap_page_remove", "pg %p pvs %d", "printf", "", 80, ["pg", "num"]),
    ("uvm_pagealloc", "obj %p off 0x%x pg %p free %d", "printf", "", 90,
     ["pmap", "flag", "pg", "num"]),
    ("uvm_pagefree", "pg %p", "printf", "", 85, ["pg"]),
    ("pmap_tlb_shootdown", "cpu%d va 0x%08x pte 0x%08x", "printf", "", 70, ["cpu", "va", "pa"]),
    ("pmap_do_tlb_shootdown", "cpu%d: %d pending", "printf", "", 60, ["cpu", "num"]),
    ("pmap_alloc_ptp", "pmap %p pde %d ptp pa 0x%08x", "printf", "", 40, ["pmap", "num", "pa"]),
    ("pmap_get_ptp", "pmap %p pde %d", "printf", "", 35, ["pmap", "num"]),
    ("pmap_alloc_pv", "pv %p", "printf", "", 45, ["pg"]),
    ("pmap_free_pv", "pv %p", "printf", "", 44, ["pg"]),
    ("pmap_activate", "pid %d pmap %p on cpu%d", "printf", "", 30, ["pid", "pmap", "cpu"]),
    ("pmap_create", "pmap %p pdir pa 0x%08x", "printf", "", 8, ["pmap", "pa"]),
    ("pmap_destroy", "pmap %p refs %d", "printf", "", 8, ["pmap", "num"]),
    ("fork1", "pid %d (%s) forked pid %d", "printf", "", 8, ["pid", "str", "pid"]),
    ("exit1", "pid %d (%s) exited on cpu%d", "printf", "", 8, ["pid", "str", "cpu"]),
    ("uvmpd_scan", "free %d target %d inactive %d", "printf", "", 12, ["num", "num", "num"]),
    ("uvm_pageout", "woke, free %d freemin %d", "printf", "", 6, ["num", "num"]),
    ("sleep", "pid %d on %s", "printf", "", 25, ["pid", "str"]),
    ("wakeup", "chan %p woke %d", "printf", "", 25, ["pg", "num"]),
    ("uvm_km_alloc1", "size %d failed", "printf", "", 2, ["num"]),
    ("pmap_growkernel", "growing to 0x%08x", "printf", "", 1, ["va"]),
    ("pmap_enter", "get ptp failed", "printf", "", 3, []),
    ("", "UVM: pid %d (%s), uid %d killed: out of swap", "printf", "", 1, ["pid", "str", "num"]),
    ("pmap_steal_ptp", "stole PTP pa 0x%08x from pmap %p va 0x%08x", "printf", "", 4,
     ["pa", "pmap", "va"]),
    ("pmap_steal_pv", "stole pv %p from pmap %p", "printf", "", 3, ["pg", "pmap"]),
    ("pmap_enter", "called! pmap=%p va=0x%x pa=0x%x", "hist", "maphist", 50,
     ["pmap", "va", "pa"]),
    ("pmap_remove", "called! pmap=%p sva=0x%x eva=0x%x", "hist", "maphist", 20,
     ["pmap", "va", "va"]),
    ("uvm_fault", "<- done (pg=%p)", "hist", "maphist", 30, ["pg"]),
]
NAMES = ["cc1", "make", "sh", "as", "ld", "cpp", "xterm", "init", "cron", "sendmail"]


def make_run(d: Path, n: int, seed: int, kernel: str, mode: str = "lockstep",
             ncpu: int = 4) -> None:
    """A synthetic run directory of ``n`` records (module docstring)."""
    rng = np.random.default_rng(seed)
    cat = Catalogue()
    w = []
    for fn, fmt, kind, hist, weight, _args in TEMPLATES:
        cat.add(fn, fmt, kind, hist)
        if kernel == "nosteal" and fn.startswith("pmap_steal"):
            weight = 0
        if kernel == "nosteal" and (fmt == "get ptp failed" or "out of swap" in fmt):
            weight *= 4
        w.append(weight)
    for s in NAMES + ["flt_pmfail1", "biowait"]:
        cat.intern(s)
    p = np.array(w, float) / sum(w)
    recs = np.zeros(n, REC_DTYPE)
    msgid = rng.choice(len(TEMPLATES), size=n, p=p)
    recs["msgid"] = msgid
    recs["cpu"] = rng.integers(0, ncpu, n)
    recs["time"] = np.cumsum(rng.exponential(20_000, n).astype(np.uint64) + 1)
    is_hist_t = np.array([t[2] == "hist" for t in TEMPLATES])
    recs["call"] = np.where(is_hist_t[msgid], np.arange(n) % 9973, 0)  # UVMHIST call numbers
    # per-CPU sequence numbers, as the rings write them
    order = np.lexsort((np.arange(n), recs["cpu"]))
    seq = np.empty(n, np.uint64)
    cpus = recs["cpu"][order]
    starts = np.flatnonzero(np.r_[True, cpus[1:] != cpus[:-1]])
    run_id = np.repeat(starts, np.diff(np.r_[starts, n]))
    seq[order] = np.arange(n) - run_id
    recs["seq"] = seq
    pools = {
        "pmap": 0xC0D00000 + 0x1000 * rng.integers(0, 64, n),
        "va": 0x08048000 + 0x1000 * rng.integers(0, 4096, n),
        "pa": 0x00400000 + 0x1000 * rng.integers(0, 8192, n),
        "pg": 0xC1000000 + 0x40 * rng.integers(0, 8192, n),
        "pid": rng.integers(100, 400, n),
        "num": rng.integers(0, 64, n),
        "flag": rng.integers(0, 16, n),
        "cpu": recs["cpu"].astype(np.int64),
        "str": rng.integers(0, len(NAMES), n),
    }
    args = np.zeros((n, runfmt.NARGS), np.int64)
    for k, (_fn, _fmt, _kind, _hist, _w, spec) in enumerate(TEMPLATES):
        sel = msgid == k
        for j, a in enumerate(spec):
            args[sel, j] = pools[a][sel]
    recs["args"] = args
    d.mkdir(parents=True, exist_ok=True)
    runfmt.write_events(d / runfmt.EVENTS_FILE, recs)
    cat.save(d / runfmt.CATALOGUE_FILE)
    is_hist = cat.kind_codes()[recs["msgid"]] == runfmt.KIND_HIST
    (d / runfmt.CONSOLE_FILE).write_text(
        "\n".join(runfmt.console_lines(recs[~is_hist], cat)) + "\n")
    (d / runfmt.HIST_FILE).write_text("\n".join(runfmt.hist_lines(recs[is_hist], cat)) + "\n")
    dur = float(recs["time"][-1]) / 1e9
    (d / "manifest.json").write_text(json.dumps({
        "schema": 1, "tool": "smp", "version": "bench", "mode": mode, "seed": seed,
        "load_script": {"name": "bench", "sha256": f"{seed:064x}"},
        "machine": {"name": f"i386mp-{ncpu}", "ncpu": ncpu},
        "kernel": {"name": kernel, "steal": "none" if kernel == "nosteal" else "ptp,pv"}}))
    (d / "summary.json").write_text(json.dumps({
        "schema": 1, "status": "done", "elapsed_s": dur,
        "trace": {"records": n, "dropped": 0}}))


def change_one_line(src: Path, dst: Path, at: int) -> None:
    """A copy of run ``src`` whose record ``at`` has a different first argument."""
    shutil.copytree(src, dst)
    recs = runfmt.read_events(dst / runfmt.EVENTS_FILE)
    recs = runfmt.merge_order(recs)
    recs["args"][at, 0] += 1
    runfmt.write_events(dst / runfmt.EVENTS_FILE, recs)
    cat = Catalogue.load(dst / runfmt.CATALOGUE_FILE)
    is_hist = cat.kind_codes()[recs["msgid"]] == runfmt.KIND_HIST
    lines = runfmt.console_lines(recs[~is_hist], cat)
    (dst / runfmt.CONSOLE_FILE).write_text("\n".join(lines) + "\n")


def move_pmaps(src: Path, dst: Path) -> None:
    """A copy of run ``src`` in which every pmap lives at another address (a one-to-one
    move): raw lines differ everywhere, alias-normalized ones nowhere, so the sequence
    view has to normalize both runs completely -- its worst case."""
    shutil.copytree(src, dst)
    recs = runfmt.read_events(dst / runfmt.EVENTS_FILE)
    a = recs["args"]
    a[(a >= 0xC0D00000) & (a < 0xC0E00000)] += 0x01000000
    recs["args"] = a
    runfmt.write_events(dst / runfmt.EVENTS_FILE, recs)
    cat = Catalogue.load(dst / runfmt.CATALOGUE_FILE)
    is_hist = cat.kind_codes()[recs["msgid"]] == runfmt.KIND_HIST
    lines = runfmt.console_lines(recs[~is_hist], cat)
    (dst / runfmt.CONSOLE_FILE).write_text("\n".join(lines) + "\n")


def timed(argv: list[str], reps: int) -> tuple[list[float], list[float], int]:
    """Wall and CPU seconds of ``reps`` runs (CPU time, because the development
    machines are shared: wall time there measures the neighbours too)."""
    wall, cpu = [], []
    rc = 0
    for _ in range(reps):
        sink = io.StringIO()
        t, c = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(sink):
            rc = cli.main(argv)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu, rc


def count_lines(p: Path) -> int:
    if p.is_dir():
        return (p / runfmt.EVENTS_FILE).stat().st_size // REC_DTYPE.itemsize
    with open(p, "rb") as f:
        return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 20), b""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap)
    ap.add_argument("--lines", type=int, help="records per run (default 1,000,000; "
                    "quick 200,000)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    ap.add_argument("--keep", help="write the runs here and keep them")
    a = ap.parse_args()
    lines = a.lines or (200_000 if a.quick else 1_000_000)
    reps = a.reps or (1 if a.quick else 3)
    out = sys.stderr if a.json else sys.stdout
    b = Bench("bench_compare", a.quick)
    base = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_compare."))
    try:
        A, B, L, M = base / "A", base / "B", base / "A-lockstep", base / "A-moved"
        t = time.perf_counter()
        if not A.exists():
            make_run(A, lines, 1, "steal")
            make_run(B, lines, 2, "nosteal")
        if not L.exists():
            change_one_line(A, L, lines // 2)
        if not M.exists():
            move_pmaps(A, M)
        print(f"generated 4 runs of {lines} records in {time.perf_counter() - t:.1f} s "
              f"({base})", file=out)
        cases = [
            ("exact", ["compare", str(A), str(B)], [A, B]),
            ("exact-json", ["compare", str(A), str(B), "--json", "--per-cpu"], [A, B]),
            ("mined", ["compare", str(A / "console.log"), str(B / "console.log")],
             [A / "console.log", B / "console.log"]),
            ("lockstep-exact", ["compare", str(A), str(L)], [A, L]),
            ("lockstep-mined", ["compare", str(A / "console.log"), str(L / "console.log")],
             [A / "console.log", L / "console.log"]),
            ("moved-exact", ["compare", str(A), str(M)], [A, M]),
            ("moved-mined", ["compare", str(A / "console.log"), str(M / "console.log")],
             [A / "console.log", M / "console.log"]),
            ("trace", ["trace", str(A), "--all"], [A]),
            ("trace-stats", ["trace", str(A), "--stats"], [A]),
        ]
        # the target: a million-line compare in 10 s, i.e. 5 us per line of both inputs
        per_line = anchored(10e9 / 2e6, "py_loop")
        for name, argv, inputs in cases:
            n = sum(count_lines(p) for p in inputs)
            wall, cpu, rc = timed(argv, reps)
            b.add(Row(f"{name}: wall", "s", wall, anchor="py_loop", note=f"{n:,} lines, rc {rc}"))
            b.add(Row(f"{name}: CPU", "s", cpu, anchor="py_loop"))
            b.add(Row(f"{name}: lines per wall second", "lines/s", [n / w for w in wall],
                      anchor="py_loop",
                      target=per_line if name.startswith("exact") else None))
        b.finish()
        b.report(a.json)
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0

if __name__ == "__main__":
    sys.exit(main())
