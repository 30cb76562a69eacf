"""``smp experiment``: the January 2001 question, settled by a matrix of runs.

Runs every load script under every kernel configuration with every seed, as
separate ``smp run`` processes (a few at a time, bounded by the host's cores),
keeps every run directory, and reduces the matrix to one table: per cell the
median (and min-max over seeds) of what the thread argued about --

    ptp_steals      PTP steals (Sommerfeld's printf)
    pv_steals       pv-entry steals
    pmfail          flt_pmfail1/2 waits: uvm_fault recovering from pmap_enter failure
    panics          runs that ended in a simulated panic (the non-CANFAIL callers)
    deadlocks       runs whose CPUs deadlocked (a waits-for cycle of spin locks)
    oom_kills       processes killed "out of swap"
    stale_tlb       uses of stale TLB entries (diagnostic = on)
    faults/s        faults per second of the run
    wall_s          wall time of the run

The default matrix is steal in {ptp,pv, none} x biglock in {on, off} on the
``default`` kernel configuration.  The table is written as text, CSV (one row
per cell) and Markdown into the experiment directory, with ``runs/`` below it.
Nothing in the table is written by hand: it is what the runs' summary.json say.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from smp.errors import BadInput, Exit
from smp.rundir.format import EXPERIMENT_SCHEMA
from smp.rundir.reader import RunDir, dig
from smp.tools.sweep import Finished, Task, default_jobs, make_pool  # noqa: F401 - cli

DEFAULT_SCRIPTS = ["heavy-mp", "ptp-hog", "kmem-storm", "fork-churn"]
DEFAULT_CONFIGS = [
    ("steal=ptp,pv biglock=on", ["steal=ptp,pv", "biglock=on"]),
    ("steal=ptp,pv biglock=off", ["steal=ptp,pv", "biglock=off"]),
    ("steal=none biglock=on", ["steal=none", "biglock=on"]),
    ("steal=none biglock=off", ["steal=none", "biglock=off"]),
]
METRICS = ["ptp_steals", "pv_steals", "pmfail", "panics", "deadlocks", "oom_kills",
           "stale_tlb", "faults_per_s", "wall_s"]


@dataclass
class Cell:
    script: str
    config: str
    overrides: list[str]
    seeds: list[int]
    results: list[dict] = field(default_factory=list)


def parse_config(spec: str) -> tuple[str, list[str]]:
    """``"steal=none,biglock=off"`` or ``"steal=none biglock=off"`` -> name, overrides."""
    parts = [p for p in spec.replace(";", " ").replace(",", " ").split() if p]
    # "steal=ptp,pv" keeps its comma: a part without "=" continues the previous value
    merged: list[str] = []
    for p in parts:
        if "=" not in p and merged:
            merged[-1] += "," + p
        else:
            merged.append(p)
    parts = merged
    ov = []
    for p in parts:
        if "=" not in p:
            raise BadInput(f"--config {spec!r}: expected key=value pairs")
        ov.append(p)
    return " ".join(ov), ov


def _result(d: Path, fin: Finished) -> dict:
    """One run's row of the experiment, from its run directory."""
    try:
        rd = RunDir(d)
        s = rd.summary
    except BadInput:
        s = None
    if s is None:
        # stopped before its CPUs ran (no summary to write), or it failed to start
        return {"status": "interrupted" if fin.stopped else "no-summary",
                "exit_code": fin.returncode, "wall_s": fin.wall_s, "run_dir": str(d),
                "error": fin.stderr.strip()[-400:]}
    c = rd.counters()
    elapsed = max(1e-9, dig(s, "elapsed_s", want=(int, float)) or fin.wall_s)
    status = s["status"]
    return {
        "status": status, "exit_code": fin.returncode, "run_dir": str(d),
        "ptp_steals": c.get("ptp_steals", 0), "pv_steals": c.get("pv_steals", 0),
        "pmfail": c.get("pmfail_waits", 0), "panics": int(status == "panic"),
        "deadlocks": int(status in ("deadlock", "livelock")),
        "noncanfail_panics": c.get("noncanfail_panics", 0),
        "oom_kills": c.get("oom_kills", 0), "stale_tlb": c.get("stale_tlb", 0),
        "faults_per_s": c.get("faults", 0) / elapsed, "wall_s": fin.wall_s,
        "panic_message": rd.panic_message() if status == "panic" else "",
    }


def run_experiment(scripts: list[str], configs: list[tuple[str, list[str]]], seeds: list[int],
                   out: Path, *, jobs: int, kernel: str | None = None,
                   extra: list[str] = (), time_limit: str | None = None,
                   progress: bool = False, lockstep: bool = False,
                   cluster: str | None = None) -> tuple[list[Cell], str]:
    """Run the matrix; returns the cells with their per-seed results, and "" or the
    signal that stopped the experiment early (the cells then hold what finished).
    ``lockstep``: every run in lockstep mode (replayable); ``cluster``: a Dask
    scheduler address or "local" instead of the local pool (smp.tools.cluster)."""
    from smp.workload.script import load_script

    for s in scripts:
        load_script(s)                  # bad scripts fail before anything runs
    pool = make_pool(jobs, None, cluster)   # so does an unreachable cluster
    out.mkdir(parents=True, exist_ok=True)
    cells = [Cell(s, name, ov, list(seeds)) for s in scripts for name, ov in configs]
    tasks = []
    for cell in cells:
        for seed in seeds:
            d = out / "runs" / f"{Path(cell.script).stem}" / _slug(cell.config) / f"seed{seed}"
            if d.exists():
                shutil.rmtree(d)
            args = ["run", cell.script, "--out", str(d), "--quiet", "--seed", str(seed)]
            if kernel:
                args += ["--kernel", kernel]
            for o in cell.overrides + list(extra):
                args += ["-o", o]
            if time_limit:
                args += ["--time-limit", time_limit]
            if lockstep:
                args += ["--lockstep"]
            tasks.append(Task((cell, seed), args, d))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), desc="smp experiment", unit="run", leave=False)
    pool.progress = bar
    bad: list[str] = []

    def done(t: Task, fin: Finished) -> bool:
        if fin.returncode == Exit.BADINPUT:
            bad.append(fin.last_error_line() or f"{t.args[1]}: bad input")
            return False
        cell, seed = t.key
        r = _result(t.run_dir, fin)
        r["seed"] = seed
        if fin.retries:                 # a cluster ran it again: say where
            r["retries"], r["workers"] = fin.retries, fin.workers
        cell.results.append(r)
        return True

    try:
        pool.run(tasks, done)
    finally:
        pool.close()
        if bar is not None:
            bar.close()
    if bad:
        raise BadInput(bad[0])
    for cell in cells:
        cell.results.sort(key=lambda r: r["seed"])
    return cells, pool.interrupted


def _slug(s: str) -> str:
    return s.replace(" ", "_").replace("=", "-").replace(",", "+")


def _med(vals: list[float]) -> tuple[float, float, float]:
    return statistics.median(vals), min(vals), max(vals)


def _fmt(metric: str, vals: list[float]) -> str:
    if not vals:
        return "-"
    med, lo, hi = _med(vals)
    if metric in ("faults_per_s",):
        s = f"{med:,.0f}"
        return s if lo == hi else f"{s} ({lo:,.0f}-{hi:,.0f})"
    if metric == "wall_s":
        return f"{med:.1f} ({lo:.1f}-{hi:.1f})"
    if metric in ("panics", "deadlocks"):
        return f"{int(sum(vals))}/{len(vals)}"
    s = f"{med:g}"
    return s if lo == hi else f"{s} ({lo:g}-{hi:g})"


HEADERS = {"ptp_steals": "PTP steals", "pv_steals": "pv steals", "pmfail": "pmfail waits",
           "panics": "panics", "deadlocks": "deadlocks", "oom_kills": "out-of-swap kills",
           "stale_tlb": "stale TLB",
           "faults_per_s": "faults/s", "wall_s": "wall s"}


def table_rows(cells: list[Cell]) -> list[list[str]]:
    rows = []
    for c in cells:
        rows.append([Path(c.script).stem, c.config] +
                    [_fmt(m, [r[m] for r in c.results if m in r]) for m in METRICS])
    return rows


def render_text(cells: list[Cell]) -> str:
    head = ["load", "kernel config"] + [HEADERS[m] for m in METRICS]
    rows = table_rows(cells)
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def render_markdown(cells: list[Cell]) -> str:
    head = ["load", "kernel config"] + [HEADERS[m] for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(cells)]
    return "\n".join(lines)


def write_outputs(cells: list[Cell], out: Path, meta: dict) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["load", "config", "seeds"] + [f"{m}_{s}" for m in METRICS
                                             for s in ("median", "min", "max")])
    for c in cells:
        row = [Path(c.script).stem, c.config, len(c.results)]
        for m in METRICS:
            vals = [r[m] for r in c.results if m in r]
            row += list(_med(vals)) if vals else ["", "", ""]
        w.writerow(row)
    (out / "results.csv").write_text(buf.getvalue())
    (out / "results.md").write_text(render_markdown(cells) + "\n")
    (out / "results.txt").write_text(render_text(cells) + "\n")
    doc = dict(meta, schema=EXPERIMENT_SCHEMA,
               cells=[{"load": Path(c.script).stem, "config": c.config,
                       "overrides": c.overrides, "runs": c.results} for c in cells])
    (out / "experiment.json").write_text(json.dumps(doc, indent=1) + "\n")

