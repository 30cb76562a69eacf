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
    swapouts        processes the pagedaemon swapped out (uvm_swapout: pmap_collect
                    frees their PTPs)
    stale_tlb       uses of stale TLB entries (diagnostic = on)
    steal_contended contended acquisitions of the locks the steal paths take
                    (pmaps_lock, pmap_tmpptp_lock, pvalloc_lock, pmap_main_lock, and the
                    victims' pmap locks where a steal function takes them)
    steal_wait_ms   the time spent waiting for those locks
    steal_share     the share of pmap_enter's time spent stealing (when the run counted it)
    faults/s        faults per second of the run
    wall_s          wall time of the run

Only runs that finished (status ``done``) go into the medians.  A run that ended at
its time limit, panicked, deadlocked, was interrupted or failed is counted in the
``runs`` column ("2 of 3 done, 1 timeout") and in the panics/deadlocks columns, and
its own numbers stay in experiment.json -- never mixed silently into a median.

The default matrix is steal in {ptp,pv, none} x biglock in {on, off} on the
``default`` kernel configuration.  ``--sweep KEY=V1,V2,...`` runs the whole matrix
once per value of a machine or kernel key (``physmem=16M,32M,64M``) and adds
``sweep.csv`` and, with matplotlib, one picture per load script of steals, pmfail
waits, out-of-swap kills, swapouts and panics against the swept value, a line per kernel
configuration.  The table is written as text, CSV (one row per cell) and Markdown
into the experiment directory, with ``runs/`` below it.  Nothing in the table is
written by hand: it is what the runs' summary.json and lockstat.json say.

Ctrl-C or SIGTERM stop the experiment: running runs end cleanly, and the outputs
hold what finished (``"interrupted"`` in experiment.json).
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
from smp.rundir.reader import dig, finished_run
from smp.tools.sweep import Finished, Task, default_jobs, make_pool  # noqa: F401 - cli

# Sommerfeld's load, then the adversaries (each names the path it drives), then Cranor's
# kernel callers
DEFAULT_SCRIPTS = ["heavy-mp", "ptp-hog", "wired-ptp", "net-storm", "raw-dd", "kmem-storm"]
DEFAULT_CONFIGS = [
    ("steal=ptp,pv biglock=on", ["steal=ptp,pv", "biglock=on"]),
    ("steal=ptp,pv biglock=off", ["steal=ptp,pv", "biglock=off"]),
    ("steal=none biglock=on", ["steal=none", "biglock=on"]),
    ("steal=none biglock=off", ["steal=none", "biglock=off"]),
]
# medians over the runs that finished
METRICS = ["ptp_steals", "pv_steals", "pmfail", "oom_kills", "swapouts", "stale_tlb",
           "steal_contended", "steal_wait_ms", "steal_share", "faults_per_s", "wall_s"]
# counted over every run of a cell
COUNTS = ["panics", "deadlocks"]
COLUMNS = ["ptp_steals", "pv_steals", "pmfail", "panics", "deadlocks", "oom_kills",
           "swapouts", "stale_tlb", "steal_contended", "steal_wait_ms", "steal_share",
           "faults_per_s", "wall_s"]
HEADERS = {"ptp_steals": "PTP steals", "pv_steals": "pv steals", "pmfail": "pmfail waits",
           "panics": "panics", "deadlocks": "deadlocks", "oom_kills": "out-of-swap kills",
           "swapouts": "swapouts",
           "stale_tlb": "stale TLB", "steal_contended": "steal-lock contended",
           "steal_wait_ms": "steal-lock wait ms", "steal_share": "steal % of pmap_enter",
           "faults_per_s": "faults/s", "wall_s": "wall s"}
# the locks the steal paths take (pmap.c 1.91: pmap_steal_ptp, pmap_alloc_pvpage's
# steal_one / pmap_try_steal_pv); victim pmap locks count where a steal function took them
STEAL_CLASSES = {"pmaps_lock", "pmap_tmpptp_lock", "pvalloc_lock", "pmap_main_lock"}
VICTIM_CLASS = "pmap"
DONE = "done"


@dataclass
class Cell:
    script: str
    config: str
    overrides: list[str]
    seeds: list[int]
    results: list[dict] = field(default_factory=list)
    value: str | None = None              # the swept value, with --sweep

    def finished(self) -> list[dict]:
        return [r for r in self.results if r.get("status") == DONE]

    def status_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.get("status", "?")] = out.get(r.get("status", "?"), 0) + 1
        return out


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


def parse_sweep(spec: str) -> tuple[str, list[str]]:
    """``"physmem=16M,32M,64M"`` -> ("physmem", ["16M", "32M", "64M"])."""
    key, eq, vals = spec.partition("=")
    values = [v.strip() for v in vals.split(",") if v.strip()]
    if not eq or not key.strip() or not values:
        raise BadInput(f"--sweep {spec!r}: expected KEY=V1,V2,... (e.g. physmem=16M,32M)")
    if len(set(values)) != len(values):
        raise BadInput(f"--sweep {spec!r}: a value is given twice")
    from smp.config import KERNEL_KEYS, MACHINE_KEYS
    bare = key.strip().lower().rpartition(".")[2]
    if bare not in MACHINE_KEYS and bare not in KERNEL_KEYS:
        raise BadInput(f"--sweep {spec!r}: unknown key {key.strip()!r} (machine keys: "
                       f"{', '.join(MACHINE_KEYS)}; kernel keys: {', '.join(KERNEL_KEYS)})")
    if bare == "steal":
        raise BadInput(f"--sweep {spec!r}: steal is what the kernel configurations compare; "
                       "sweep another key")
    return key.strip(), values


def steal_contention(lockstat: dict | None) -> tuple[int, float]:
    """(contended acquisitions, wait ms) of the steal paths' locks in a lockstat.json."""
    recs = dig(lockstat, "records", want=list) or []
    contended, wait = 0, 0
    for r in recs:
        if not isinstance(r, dict):
            continue
        klass, site = r.get("class"), str(r.get("site", ""))
        if klass in STEAL_CLASSES or (klass == VICTIM_CLASS and "steal" in site):
            contended += int(r.get("contended", 0) or 0)
            wait += int(r.get("wait_total", 0) or 0)
    return contended, wait / 1e6


def _result(d: Path, fin: Finished) -> dict:
    """One run's row of the experiment, from its run directory."""
    rd, s = finished_run(d)
    if s is None:
        # stopped before its CPUs ran (no summary to write), or it failed to start
        return {"status": "interrupted" if fin.stopped else "no-summary",
                "exit_code": fin.returncode, "wall_s": fin.wall_s, "run_dir": str(d),
                "error": fin.stderr.strip()[-400:]}
    c = rd.counters()
    elapsed = max(1e-9, dig(s, "elapsed_s", want=(int, float)) or fin.wall_s)
    status = s["status"]
    try:
        contended, wait_ms = steal_contention(rd.lockstat)
    except BadInput:
        contended, wait_ms = 0, 0.0
    r = {
        "status": status, "exit_code": fin.returncode, "run_dir": str(d),
        "message": dig(s, "message", want=str) or "",
        "ptp_steals": c.get("ptp_steals", 0), "pv_steals": c.get("pv_steals", 0),
        "pmfail": c.get("pmfail_waits", 0), "panics": int(status == "panic"),
        "deadlocks": int(status in ("deadlock", "livelock")),
        "noncanfail_panics": c.get("noncanfail_panics", 0),
        "oom_kills": c.get("oom_kills", 0), "swapouts": c.get("swapouts", 0),
        "stale_tlb": c.get("stale_tlb", 0),
        "steal_contended": contended, "steal_wait_ms": round(wait_ms, 3),
        "faults_per_s": c.get("faults", 0) / elapsed, "wall_s": fin.wall_s,
        "panic_message": rd.panic_message() if status == "panic" else "",
        "processes_alive": dig(s, "time_limit", "processes_alive", want=int) or 0,
    }
    if c.get("pmap_enter_ns"):
        r["steal_share"] = round(100.0 * c.get("steal_ns", 0) / c["pmap_enter_ns"], 3)
    return r


def run_experiment(scripts: list[str], configs: list[tuple[str, list[str]]], seeds: list[int],
                   out: Path, *, jobs: int, kernel: str | None = None,
                   extra: list[str] = (), time_limit: str | None = None,
                   progress: bool = False,
                   sweep: tuple[str, list[str]] | None = None, lockstep: bool = False,
                   cluster: str | None = None) -> tuple[list[Cell], str]:
    """Run the matrix (once per swept value); returns the cells with their per-seed
    results, and "" or the signal that stopped the experiment early (the cells then hold
    what finished).  ``lockstep``: every run in lockstep mode (replayable); ``cluster``: a
    Dask scheduler address or "local" instead of the local pool (smp.tools.cluster)."""
    from smp.workload.script import load_script

    for s in scripts:
        load_script(s)                  # bad scripts fail before anything runs
    pool = make_pool(jobs, None, cluster)   # so does an unreachable cluster
    out.mkdir(parents=True, exist_ok=True)
    values: list[str | None] = list(sweep[1]) if sweep else [None]
    cells = [Cell(s, name, ov, list(seeds), value=v) for v in values for s in scripts
             for name, ov in configs]
    tasks = []
    for cell in cells:
        for seed in seeds:
            d = out / "runs"
            if cell.value is not None:
                d = d / _slug(f"{sweep[0]}={cell.value}")
            d = d / f"{Path(cell.script).stem}" / _slug(cell.config) / f"seed{seed}"
            if d.exists():
                shutil.rmtree(d)
            args = ["run", cell.script, "--out", str(d), "--quiet", "--seed", str(seed)]
            if kernel:
                args += ["--kernel", kernel]
            ov = cell.overrides + list(extra)
            if cell.value is not None:
                ov.append(f"{sweep[0]}={cell.value}")
            for o in ov:
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


def failed_runs(cells: list[Cell]) -> tuple[int, int, dict[str, int]]:
    """(runs that failed, runs, the failed ones' statuses).  A run that finished, reached
    its time limit, panicked, deadlocked, was interrupted or broke a DIAGNOSTIC
    invariant is a result of the kernel; one whose CPU died, whose simulator failed,
    whose directory could not be written or that left no summary is not."""
    total, bad = 0, {}
    for cell in cells:
        for r in cell.results:
            total += 1
            st = r.get("status", "?")
            if st not in CSV_STATUSES and st != "invariant":
                bad[st] = bad.get(st, 0) + 1
    return sum(bad.values()), total, bad


def _slug(s: str) -> str:
    return s.replace(" ", "_").replace("=", "-").replace(",", "+").replace("/", "_")


def _med(vals: list[float]) -> tuple[float, float, float]:
    return statistics.median(vals), min(vals), max(vals)


def _fmt(metric: str, vals: list[float]) -> str:
    if not vals:
        return "-"
    med, lo, hi = _med(vals)
    if metric in ("faults_per_s",):
        s = f"{med:,.0f}"
        return s if lo == hi else f"{s} ({lo:,.0f}-{hi:,.0f})"
    if metric in ("wall_s", "steal_wait_ms"):
        s = f"{med:.1f}"
        return s if lo == hi else f"{s} ({lo:.1f}-{hi:.1f})"
    if metric == "steal_share":
        s = f"{med:.2f}"
        return s if lo == hi else f"{s} ({lo:.2f}-{hi:.2f})"
    s = f"{med:g}"
    return s if lo == hi else f"{s} ({lo:g}-{hi:g})"


def runs_cell(c: Cell) -> str:
    """"3" when every run finished; else "1 of 3 done: 2 timeout" -- what the medians
    rest on, in every output."""
    n, counts = len(c.results), c.status_counts()
    done = counts.get(DONE, 0)
    if done == n:
        return str(n)
    other = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()) if k != DONE)
    return f"{done} of {n} done: {other}"


def cell_values(c: Cell, metric: str) -> str:
    if metric in COUNTS:
        return f"{sum(r.get(metric, 0) for r in c.results)}/{len(c.results)}"
    return _fmt(metric, [r[metric] for r in c.finished() if metric in r])


def _key_head(cells: list[Cell], sweep_key: str | None) -> list[str]:
    return [sweep_key] if sweep_key else []


def table_rows(cells: list[Cell], sweep_key: str | None = None) -> list[list[str]]:
    rows = []
    for c in cells:
        rows.append(([c.value or ""] if sweep_key else []) +
                    [Path(c.script).stem, c.config, runs_cell(c)] +
                    [cell_values(c, m) for m in COLUMNS])
    return rows


def _head(cells: list[Cell], sweep_key: str | None) -> list[str]:
    return _key_head(cells, sweep_key) + ["load", "kernel config", "runs"] + \
        [HEADERS[m] for m in COLUMNS]


def render_text(cells: list[Cell], sweep_key: str | None = None) -> str:
    head = _head(cells, sweep_key)
    rows = table_rows(cells, sweep_key)
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    note = _note(cells)
    return "\n".join(lines + ([note] if note else []))


def _note(cells: list[Cell]) -> str:
    if all(runs_cell(c) == str(len(c.results)) for c in cells):
        return ""
    return ("medians are over the runs that finished (status done); the others are counted "
            "in 'runs' and kept in experiment.json")


def render_markdown(cells: list[Cell], sweep_key: str | None = None) -> str:
    head = _head(cells, sweep_key)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(cells, sweep_key)]
    note = _note(cells)
    return "\n".join(lines + (["", note] if note else []))


CSV_STATUSES = ["done", "timeout", "panic", "deadlock", "livelock", "interrupted"]


def csv_row_head(sweep_key: str | None) -> list[str]:
    return ([sweep_key] if sweep_key else []) + \
        ["load", "config", "seeds"] + [f"runs_{s}" for s in CSV_STATUSES] + ["runs_other"] + \
        [f"{m}_{s}" for m in METRICS for s in ("median", "min", "max")] + COUNTS


def csv_row(c: Cell, sweep_key: str | None) -> list:
    counts = c.status_counts()
    row: list = ([c.value] if sweep_key else []) + [Path(c.script).stem, c.config,
                                                    len(c.results)]
    row += [counts.get(s, 0) for s in CSV_STATUSES]
    row.append(sum(v for k, v in counts.items() if k not in CSV_STATUSES))
    fin = c.finished()
    for m in METRICS:
        vals = [r[m] for r in fin if m in r]
        row += list(_med(vals)) if vals else ["", "", ""]
    row += [sum(r.get(m, 0) for r in c.results) for m in COUNTS]
    return row


def write_outputs(cells: list[Cell], out: Path, meta: dict, sweep_key: str | None = None
                  ) -> list[Path]:
    """results.csv/.md/.txt and experiment.json; with a sweep also sweep.csv and the
    pictures (returned)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(csv_row_head(sweep_key))
    for c in cells:
        w.writerow(csv_row(c, sweep_key))
    (out / "results.csv").write_text(buf.getvalue())
    (out / "results.md").write_text(render_markdown(cells, sweep_key) + "\n")
    (out / "results.txt").write_text(render_text(cells, sweep_key) + "\n")
    doc = dict(meta, schema=EXPERIMENT_SCHEMA,
               cells=[{"load": Path(c.script).stem, "config": c.config,
                       "overrides": c.overrides, **({"value": c.value} if sweep_key else {}),
                       "runs_by_status": c.status_counts(), "runs": c.results}
                      for c in cells])
    (out / "experiment.json").write_text(json.dumps(doc, indent=1) + "\n")
    pictures: list[Path] = []
    if sweep_key:
        (out / "sweep.csv").write_text(buf.getvalue())
        from smp.tools.experiment_plot import plot_sweep
        pictures = plot_sweep(cells, sweep_key, out)
    return pictures
