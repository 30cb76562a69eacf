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
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from smp.errors import BadInput

EXPERIMENT_SCHEMA = 1
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


def _run_one(script: str, overrides: list[str], seed: int, out: Path, kernel: str | None,
             extra: list[str], time_limit: str | None) -> dict:
    cmd = [sys.executable, "-m", "smp", "run", script, "--out", str(out), "--quiet",
           "--seed", str(seed)]
    if kernel:
        cmd += ["--kernel", kernel]
    for o in overrides + extra:
        cmd += ["-o", o]
    if time_limit:
        cmd += ["--time-limit", time_limit]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode == 2:
        line = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"{script}: bad input"
        raise BadInput(line.removeprefix("smp: "))
    try:
        s = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return {"status": "no-summary", "exit_code": p.returncode, "wall_s": wall,
                "error": p.stderr.strip()[-400:]}
    c = s.get("kernel_counters", {}).get("counters", {})
    elapsed = max(1e-9, s.get("elapsed_s", wall))
    return {
        "status": s["status"], "exit_code": p.returncode, "run_dir": str(out),
        "ptp_steals": c.get("ptp_steals", 0), "pv_steals": c.get("pv_steals", 0),
        "pmfail": c.get("pmfail_waits", 0), "panics": int(s["status"] == "panic"),
        "deadlocks": int(s["status"] in ("deadlock", "livelock")),
        "noncanfail_panics": c.get("noncanfail_panics", 0),
        "oom_kills": c.get("oom_kills", 0), "stale_tlb": c.get("stale_tlb", 0),
        "faults_per_s": c.get("faults", 0) / elapsed, "wall_s": wall,
        "panic_message": _panic_line(out) if s["status"] == "panic" else "",
    }


def _panic_line(out: Path) -> str:
    try:
        for line in (out / "console.log").read_text().splitlines():
            if ": panic: " in line:
                return line.split(": panic: ", 1)[1]
    except OSError:
        pass
    return ""


def run_experiment(scripts: list[str], configs: list[tuple[str, list[str]]], seeds: list[int],
                   out: Path, *, jobs: int, kernel: str | None = None,
                   extra: list[str] = (), time_limit: str | None = None,
                   progress: bool = False) -> list[Cell]:
    """Run the matrix; returns the cells with their per-seed results."""
    from smp.workload.script import load_script

    for s in scripts:
        load_script(s)                  # bad scripts fail before anything runs
    out.mkdir(parents=True, exist_ok=True)
    cells = [Cell(s, name, ov, list(seeds)) for s in scripts for name, ov in configs]
    tasks = []
    for ci, cell in enumerate(cells):
        for seed in seeds:
            d = out / "runs" / f"{Path(cell.script).stem}" / _slug(cell.config) / f"seed{seed}"
            if d.exists():
                import shutil
                shutil.rmtree(d)
            tasks.append((ci, cell, seed, d))
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), desc="smp experiment", unit="run", leave=False)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futs = {pool.submit(_run_one, cell.script, cell.overrides, seed, d, kernel,
                            list(extra), time_limit): (cell, seed)
                for _ci, cell, seed, d in tasks}
        for f in as_completed(futs):
            cell, seed = futs[f]
            r = f.result()
            r["seed"] = seed
            cell.results.append(r)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    for cell in cells:
        cell.results.sort(key=lambda r: r["seed"])
    return cells


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


def default_jobs() -> int:
    return max(1, os.cpu_count() or 1)
