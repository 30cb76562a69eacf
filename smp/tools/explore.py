"""``smp explore``: schedule exploration over many lockstep seeds (shuttle, CHESS, PCT).

Runs a load script in lockstep mode once per seed (``random`` or ``pct``
schedules), several runs at a time, with the kernel's DIAGNOSTIC checks on,
and classifies every run:

    ok         the load finished (or reached its virtual time limit) cleanly
    panic      the simulated kernel panicked (its message is shown)
    deadlock   every CPU in a cycle spins on a lock the next one holds
    livelock   no progress within the bound of scheduling points
    stale-tlb  a CPU used a translation the page tables no longer had
    invariant  the DIAGNOSTIC invariant check failed after the run
    error      the simulator itself failed
    interrupted  the seed was stopped by Ctrl-C or SIGTERM (not a finding)

On the first failure it writes ``reproducer.json`` (seed, strategy, the
schedule's size, the run directory, the manifest) and prints the exact
``smp run --replay`` command that reproduces it; with ``--all`` it keeps
going.  Ctrl-C or SIGTERM stop it cleanly: running seeds end (their run
directories are complete), nothing new starts, and ``explore.json`` holds what
finished.  Exit status: 0 no failure, 8 a failure was found, 2 bad input,
130 interrupted.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from smp.errors import BadInput, Exit
from smp.rundir import format as fmt
from smp.rundir.reader import RunDir, dig, finished_run
from smp.tools.sweep import Finished, Task, make_pool


@dataclass
class Outcome:
    seed: int
    verdict: str
    detail: str
    run_dir: str
    points: int = 0


def classify(run_dir: Path, fin: Finished) -> tuple[str, str, int]:
    rd, s = finished_run(run_dir)
    if s is None:
        return "error", fin.last_error_line() or "no summary.json", 0
    points = dig(s, "schedule", "points", want=int) or 0
    st = s["status"]
    c = rd.counters()
    violations = dig(s, "diagnostic", "violations", want=list)
    if st == "panic":
        return "panic", rd.first_line(": panic: ") or s.get("message", ""), points
    if st in ("deadlock", "livelock"):
        return st, s.get("message", ""), points
    if st == "interrupted":
        return "interrupted", s.get("message", ""), points
    if st not in ("done", "timeout"):
        return "error", s.get("message", st), points
    if c.get("stale_tlb", 0):
        return "stale-tlb", rd.first_line("stale TLB entry") or f"{c['stale_tlb']} uses", \
            points
    if violations:
        return "invariant", str(violations[0]), points
    return "ok", "", points


def explore(script: str, seeds: list[int], out: Path, *, strategy: str, jobs: int,
            machine: str | None = None, kernel: str | None = None,
            overrides: list[str] = (), fail: list[str] = (), time_limit: str | None = None,
            stop_on_failure: bool = True, progress: bool = False,
            cluster: str | None = None) -> tuple[list[Outcome], str]:
    """Explore ``seeds``; returns the outcomes in seed order and "" or the signal that
    stopped the exploration early.  ``cluster``: a Dask scheduler address or "local"
    instead of the local pool (smp.tools.cluster)."""
    from smp.workload.script import load_script

    load_script(script)
    pool = make_pool(jobs, None, cluster)   # an unreachable cluster fails before anything
    out.mkdir(parents=True, exist_ok=True)

    def task(seed: int) -> Task:
        d = out / f"seed{seed}"
        if d.exists():
            shutil.rmtree(d)
        args = ["run", script, "--lockstep", "--strategy", strategy, "--seed", str(seed),
                "--out", str(d), "--quiet", "-o", "diagnostic=on"]
        if machine:
            args += ["--machine", machine]
        if kernel:
            args += ["--kernel", kernel]
        for o in overrides:
            args += ["-o", o]
        for f in fail:
            args += ["--fail", f]
        if time_limit:
            args += ["--time-limit", time_limit]
        return Task(seed, args, d)

    results: list[Outcome] = []
    bad: list[str] = []
    found: list[Outcome] = []
    retried: dict[int, dict] = {}           # seed -> how a cluster ran it again

    def done(t: Task, fin: Finished) -> bool:
        if fin.returncode == Exit.BADINPUT:
            bad.append(fin.last_error_line() or "bad input")
            return False
        verdict, detail, points = classify(t.run_dir, fin)
        if fin.stopped and verdict == "error":
            verdict = "interrupted"             # stopped before it could write a summary
        r = Outcome(t.key, verdict, detail, str(t.run_dir), points)
        results.append(r)
        if fin.retries:
            retried[t.key] = {"retries": fin.retries, "workers": fin.workers}
        if verdict not in ("ok", "interrupted"):
            found.append(r)
            if stop_on_failure:
                return False                    # let running seeds finish, start no more
        return True

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(seeds), desc=f"smp explore ({strategy})", unit="seed", leave=False)
    pool.progress = bar
    try:
        pool.run((task(s) for s in seeds), done)
    finally:
        pool.close()
        if bar is not None:
            bar.close()
    if bad:
        raise BadInput(bad[0])
    results.sort(key=lambda r: r.seed)
    first = min(found, key=lambda r: r.seed) if found else None
    if first is not None:
        write_reproducer(out, first, strategy)
    doc = {"schema": fmt.EXPLORE_SCHEMA, "script": script, "strategy": strategy,
           "seeds_asked": len(seeds), "interrupted": pool.interrupted or None,
           "outcomes": [dict(vars(r), **retried.get(r.seed, {})) for r in results]}
    if cluster:
        doc["cluster"] = cluster
    (out / "explore.json").write_text(json.dumps(doc, indent=1) + "\n")
    return results, pool.interrupted


def write_reproducer(out: Path, r: Outcome, strategy: str) -> None:
    try:
        manifest = RunDir(r.run_dir).manifest or {}
    except BadInput:
        manifest = {}
    rep = {"schema": fmt.EXPLORE_SCHEMA, "seed": r.seed, "strategy": strategy,
           "verdict": r.verdict, "detail": r.detail, "scheduling_points": r.points,
           "run_dir": r.run_dir, "replay": f"smp run --replay {r.run_dir}",
           "manifest": manifest}
    (out / "reproducer.json").write_text(json.dumps(rep, indent=1) + "\n")


def render(results: list[Outcome]) -> str:
    lines = ["seed  verdict     points     detail"]
    for r in results:
        lines.append(f"{r.seed:>4}  {r.verdict:<10}  {r.points:>9}  {r.detail[:100]}")
    counts: dict[str, int] = {}
    for r in results:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "\n".join(lines)
