"""Lockstep mode's cost: throughput against free mode, and seeds explored per minute.

    PYTHONPATH=. python scripts/bench_lockstep.py [--quick] [--reps N] [--json]

About 4 minutes; ``--quick`` about 1.5 minutes on the shared 2-core hosts.  Anchors and
the JSON document: scripts/benchlib.py.  What is measured (every figure the median of
``--reps`` runs, one run at a time):

1. Throughput, lockstep / free, on the same load and machine, in the same run:
   * ``faults`` -- a program load (8 processes that each map 2 MiB (1 MiB with --quick),
     fault every page in by writing it, read it all again, unmap; no compute, no sleeps),
     on 2 and on 4 CPUs.  Figure: page faults (summary.json
     ``kernel_counters.counters.faults``) per wall second of the machine's run
     (summary.json ``elapsed_s``: boot of the segment to the last CPU stopped; Python
     start-up and writing the run directory are not in it).
   * ``synthetic`` -- the lock-only synthetic load with ``compute = 0`` (in free mode
     compute is real busy-waiting, in lockstep virtual time, so it is left out):
     iterations (one bucket-lock increment each) per wall second.
   Free mode's figures are the host's: on these 2-core machines 4 workers share 2 cores.
   Lockstep runs: ``random`` (the default strategy; the run pins its workers to one host
   core by itself), the same unpinned (``SMP_LOCKSTEP_PIN=off``), and ``pb`` (the
   preemption-bounded strategy); without --quick also ``pct``.  ``host switches / point``:
   the CPU workers' voluntary context switches (summary.json, psutil) per scheduling
   point -- what is left of the host hand-overs once proxy turns and ``pb`` are done.
   Target: lockstep random / free >= 0.3 (issue 12).
2. The host's process round trip (two wake-ups through pipes) across two cores and on one:
   every host hand-over of the turn is one such wake-up.
3. Exploration rate: ``smp explore default --seeds N --time-limit T --jobs J --all``
   (the default load, random schedules, each seed cut at T of *virtual* time), timed
   from the command's start to its exit: wall seconds per seed and seeds per minute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Bench, Row, add_args

REPO = Path(__file__).resolve().parent.parent

FAULTS_LOAD = """\
[run]
machine = "i386mp-4"
kernel = "netbsd-2001-i386mp"
time_limit = "600s"

[[process]]
name = "toucher"
count = {procs}
program = [
  {{ op = "mmap", region = "heap", size = "{size}" }},
  {{ op = "touch", region = "heap", write = true }},
  {{ op = "touch", region = "heap" }},
  {{ op = "munmap", region = "heap" }},
]
"""

SYNTH_LOAD = """\
[run]
machine = "i386mp-4"
time_limit = "600s"

[synthetic]
processes = {procs}
iterations = {iterations}
buckets = 4
handoff_every = 50
compute = "0us"
"""

# mode -> (lockstep strategy or None, extra environment)
MODES = {
    "free": (None, {}),
    "random": ("random", {}),
    "random unpinned": ("random", {"SMP_LOCKSTEP_PIN": "off"}),
    "pb": ("pb", {}),
    "pct": ("pct", {}),
}


def smp(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m smp ARGS`` with this checkout first on the path."""
    e = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    r = subprocess.run([sys.executable, "-m", "smp", *args], cwd=cwd, env=e,
                       capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise SystemExit(f"smp {' '.join(args)}: exit {r.returncode}\n{r.stderr}")
    return r


def one_run(work: Path, script: Path, ncpu: int, mode: str, seed: int,
            retry: bool = True) -> dict:
    strategy, env = MODES[mode]
    out = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    out.rmdir()
    args = ["run", str(script), "--cpus", str(ncpu), "--seed", str(seed), "--out", str(out),
            "-q"]
    if strategy:
        args += ["--lockstep", "--strategy", strategy]
    smp(*args, cwd=work, env=env)
    s = json.loads((out / "summary.json").read_text())
    if s["status"] != "done":
        what = f"{script.name} ({mode}, {ncpu} CPUs, seed {seed}): {s['status']}: {s['message']}"
        if not retry:
            raise SystemExit(what)
        print(f"bench_lockstep: {what}; running it again", file=sys.stderr)
        return one_run(work, script, ncpu, mode, seed, retry=False)
    c = s["kernel_counters"].get("counters", {})
    load = s["kernel_counters"].get("load", {})
    vcsw = sum(cpu.get("host", {}).get("vcsw", 0) for cpu in s.get("cpus", []))
    return {"elapsed": s["elapsed_s"], "faults": c.get("faults", 0),
            "iterations": load.get("iterations_done", 0),
            "points": s.get("schedule", {}).get("points", 0), "vcsw": vcsw}


def throughput(b: Bench, work: Path, name: str, script: Path, ncpu: int, reps: int,
               unit: str, modes: list[str]) -> None:
    """Rows for one load on ``ncpu`` CPUs: each mode's rate, and lockstep / free."""
    rates: dict[str, list[float]] = {m: [] for m in modes}
    switches: list[float] = []
    for rep in range(reps):                 # modes interleaved: a drift hits all alike
        for m in modes:
            r = one_run(work, script, ncpu, m, seed=rep)
            rates[m].append(r[unit] / r["elapsed"])
            if m == "random" and r["points"]:
                switches.append(r["vcsw"] / r["points"])
    label = f"{name}, {ncpu} CPUs"
    per = {"faults": "faults/s", "iterations": "iterations/s"}[unit]
    for m in modes:
        b.add(Row(f"{label}: {m if m == 'free' else 'lockstep ' + m}", per, rates[m]))
    for m in modes:
        if m == "free":
            continue
        ratio = [x / f for x, f in zip(rates[m], rates["free"], strict=True)]
        b.add(Row(f"{label}: lockstep {m} / free", "x", ratio, anchor=None,
                  target=0.3 if m == "random" else None, goal=">="))
    if switches:
        b.add(Row(f"{label}: host switches / point (random)", "x", switches, anchor=None))
    b.phase()


def explore_rate(b: Bench, work: Path, seeds: int, limit: str, jobs: int, reps: int) -> None:
    walls = []
    for rep in range(reps):
        out = work / f"explore-{rep}"
        t0 = time.monotonic()
        r = smp("explore", "default", "--seeds", str(seeds), "--time-limit", limit,
                "--jobs", str(jobs), "--all", "--out", str(out), "-q", cwd=work)
        walls.append(time.monotonic() - t0)
        if "outcomes:" not in r.stdout:
            raise SystemExit(f"smp explore: unexpected output\n{r.stdout}{r.stderr}")
    what = f"explore default --seeds {seeds} --time-limit {limit} --jobs {jobs}"
    b.add(Row(f"{what}: wall per seed", "s", [w / seeds for w in walls], anchor="py_loop"))
    b.add(Row(f"{what}: seeds per minute", "seeds/min", [seeds / w * 60 for w in walls],
              anchor="py_loop"))
    one = json.loads((work / "explore-0" / "seed0" / "summary.json").read_text())
    b.add(Row("  one seed: machine run", "s", [one["elapsed_s"]], anchor="py_loop",
              note=f"{one['schedule']['points']:,} scheduling points, "
                   f"{one['schedule']['virtual_ns'] / 1e9 / one['elapsed_s']:.3f} virtual "
                   "s per wall s"))
    b.phase()


def handover_us(cores: tuple[int, int], n: int = 5000) -> float:
    """One round trip between two processes (two wake-ups through pipes) on host cores
    ``cores``, in microseconds."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    mask = os.sched_getaffinity(0)
    pid = os.fork()
    if pid == 0:                                    # pragma: no cover - the child
        os.sched_setaffinity(0, {cores[1]})
        for _ in range(n):
            os.read(r1, 1)
            os.write(w2, b"x")
        os._exit(0)
    os.sched_setaffinity(0, {cores[0]})
    time.sleep(0.05)
    t0 = time.perf_counter()
    for _ in range(n):
        os.write(w1, b"x")
        os.read(r2, 1)
    dt = time.perf_counter() - t0
    os.waitpid(pid, 0)
    os.sched_setaffinity(0, mask)
    for fd in (r1, w1, r2, w2):
        os.close(fd)
    return dt / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_args(ap)
    ap.add_argument("--reps", type=int, help="runs per figure (default 3, quick 2)")
    ap.add_argument("--modes", help="comma-separated subset of: " + ", ".join(MODES) +
                    " (free is always run; e.g. free,random to measure an older checkout)")
    ap.add_argument("--no-explore", action="store_true", help="skip the exploration rate")
    a = ap.parse_args()
    reps = a.reps or (2 if a.quick else 3)
    b = Bench("bench_lockstep", a.quick)
    cores = sorted(os.sched_getaffinity(0))
    other = cores[1] if len(cores) > 1 else cores[0]
    b.add(Row("process round trip, two cores", "us",
              [handover_us((cores[0], other)) for _ in range(3)]))
    b.add(Row("process round trip, one core", "us",
              [handover_us((cores[0], cores[0])) for _ in range(3)]))
    modes = ["free", "random", "random unpinned", "pb"] + ([] if a.quick else ["pct"])
    if a.modes:
        modes = ["free"] + [m.strip() for m in a.modes.split(",") if m.strip() != "free"]
        bad = [m for m in modes if m not in MODES]
        if bad:
            ap.error(f"--modes: unknown {', '.join(bad)}")
    with tempfile.TemporaryDirectory(prefix="bench-lockstep-") as tmp:
        work = Path(tmp)
        faults = work / "faults.toml"
        faults.write_text(FAULTS_LOAD.format(procs=8, size="1M" if a.quick else "2M"))
        synth = work / "synthetic.toml"
        synth.write_text(SYNTH_LOAD.format(procs=8, iterations=300 if a.quick else 1000))
        for ncpu in (2, 4):
            throughput(b, work, "faults", faults, ncpu, reps, "faults", modes)
        for ncpu in (2, 4):
            throughput(b, work, "synthetic", synth, ncpu, reps, "iterations", modes)
        if not a.no_explore:
            explore_rate(b, work, seeds=4 if a.quick else 8,
                         limit="100ms" if a.quick else "1s", jobs=os.cpu_count() or 1, reps=1)
    b.finish()
    b.report(a.json)
    ratios = [r for r in b.rows if r.name.endswith("lockstep random / free")]
    if ratios:
        print(f"lockstep random / free, median over the loads: "
              f"{statistics.median(r.median for r in ratios):.2f}", file=sys.stderr
              if a.json else sys.stdout)


if __name__ == "__main__":
    main()
