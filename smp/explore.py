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

On the first failure it writes ``reproducer.json`` (seed, strategy, the
schedule's size, the run directory, the manifest) and prints the exact
``smp run --replay`` command that reproduces it; with ``--all`` it keeps
going.  Exit status: 0 no failure, 1 a failure was found, 2 bad input.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from smp.errors import BadInput

EXPLORE_SCHEMA = 1


@dataclass
class Outcome:
    seed: int
    verdict: str
    detail: str
    run_dir: str
    points: int = 0


def classify(run_dir: Path, returncode: int, stderr: str) -> tuple[str, str, int]:
    try:
        s = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return "error", (stderr.strip().splitlines() or ["no summary.json"])[-1], 0
    points = s.get("schedule", {}).get("points", 0)
    st = s["status"]
    c = s.get("kernel_counters", {}).get("counters", {})
    diag = s.get("diagnostic", {})
    if st == "panic":
        return "panic", _panic_line(run_dir) or s.get("message", ""), points
    if st in ("deadlock", "livelock"):
        return st, s.get("message", ""), points
    if st not in ("done", "timeout"):
        return "error", s.get("message", st), points
    if c.get("stale_tlb", 0):
        return "stale-tlb", _first(run_dir, "stale TLB entry") or f"{c['stale_tlb']} uses", \
            points
    if diag.get("violations"):
        return "invariant", diag["violations"][0], points
    return "ok", "", points


def _panic_line(run_dir: Path) -> str:
    return _first(run_dir, ": panic: ")


def _first(run_dir: Path, needle: str) -> str:
    try:
        for line in (run_dir / "console.log").read_text().splitlines():
            if needle in line:
                return line
    except OSError:
        pass
    return ""


def explore(script: str, seeds: list[int], out: Path, *, strategy: str, jobs: int,
            machine: str | None = None, kernel: str | None = None,
            overrides: list[str] = (), fail: list[str] = (), time_limit: str | None = None,
            stop_on_failure: bool = True, progress: bool = False) -> list[Outcome]:
    from smp.workload.script import load_script

    load_script(script)
    out.mkdir(parents=True, exist_ok=True)

    def one(seed: int) -> Outcome:
        d = out / f"seed{seed}"
        if d.exists():
            import shutil
            shutil.rmtree(d)
        cmd = [sys.executable, "-m", "smp", "run", script, "--lockstep", "--strategy",
               strategy, "--seed", str(seed), "--out", str(d), "--quiet",
               "-o", "diagnostic=on"]
        if machine:
            cmd += ["--machine", machine]
        if kernel:
            cmd += ["--kernel", kernel]
        for o in overrides:
            cmd += ["-o", o]
        for f in fail:
            cmd += ["--fail", f]
        if time_limit:
            cmd += ["--time-limit", time_limit]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode == 2:
            raise BadInput((p.stderr.strip().splitlines() or ["bad input"])[-1]
                           .removeprefix("smp: "))
        verdict, detail, points = classify(d, p.returncode, p.stderr)
        return Outcome(seed, verdict, detail, str(d), points)

    results: list[Outcome] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(seeds), desc=f"smp explore ({strategy})", unit="seed", leave=False)
    found = None
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        pending = {}
        it = iter(seeds)
        for s in it:
            pending[pool.submit(one, s)] = s
            if len(pending) >= jobs:
                break
        while pending:
            done = next(as_completed(pending))
            del pending[done]
            r = done.result()
            results.append(r)
            if bar is not None:
                bar.update(1)
            if r.verdict != "ok" and (found is None or r.seed < found.seed):
                found = r
            if found is not None and stop_on_failure:
                continue                          # let running seeds finish, start no more
            nxt = next(it, None)
            if nxt is not None:
                pending[pool.submit(one, nxt)] = nxt
    if bar is not None:
        bar.close()
    results.sort(key=lambda r: r.seed)
    if found is not None:
        write_reproducer(out, found, strategy)
    (out / "explore.json").write_text(json.dumps({
        "schema": EXPLORE_SCHEMA, "script": script, "strategy": strategy,
        "outcomes": [vars(r) for r in results]}, indent=1) + "\n")
    return results


def write_reproducer(out: Path, r: Outcome, strategy: str) -> None:
    manifest = {}
    try:
        manifest = json.loads((Path(r.run_dir) / "manifest.json").read_text())
    except (OSError, ValueError):
        pass
    rep = {"schema": EXPLORE_SCHEMA, "seed": r.seed, "strategy": strategy,
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
