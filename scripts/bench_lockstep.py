"""Lockstep mode's cost: throughput against free mode, and seeds explored per minute.

    PYTHONPATH=. python scripts/bench_lockstep.py            # about 2 minutes on 2 cores
    PYTHONPATH=. python scripts/bench_lockstep.py --quick    # about 30 s

What is measured (every figure the median of ``--reps`` runs, one run at a time):

1. Throughput, lockstep / free, on the same load and machine:
   * ``faults`` -- a program load (below: 8 processes that each map 2 MiB (1 MiB with
     --quick), fault every page in by writing it, read it all again, unmap; no compute, no
     sleeps; 4096 faults), on 2 and on 4 CPUs.  Figure: page faults
     (summary.json ``kernel_counters.counters.faults``) per wall second of the machine's
     run (summary.json ``elapsed_s``: boot of the segment to the last CPU stopped; Python
     start-up and writing the run directory are not in it), and lock acquisitions per
     wall second.
   * ``synthetic`` -- the lock-only synthetic load with ``compute = 0`` (in free mode
     compute is real busy-waiting, in lockstep virtual time, so it is left out):
     iterations (one bucket-lock increment each) per wall second.
   Free mode's figures are the host's: on these 2-core machines 4 workers share 2 cores.
   ``pinned``: the same lockstep runs with the parent and every CPU worker on host core 0
   (``sched_setaffinity``) -- only one CPU runs at a time anyway, and a hand-over on one
   core avoids waking another.
   The header gives the host's process round trip (two wake-ups through pipes) across
   two cores and on one: every switch of the turn is a futex hand-over between two worker
   processes, so lockstep's rate follows it.  On the development VMs it is ~50-65 us
   across two idle cores (waking an idle virtual CPU is slow) and ~3 us on one core.
2. Exploration rate: ``smp explore default --seeds N --time-limit T --jobs J`` (the
   default load, random schedules, each seed a lockstep run cut at T of *virtual* time),
   timed from the command's start to its exit; seeds per minute = N / wall x 60.  Also
   the virtual seconds simulated per wall second of one such run.
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


def smp(*args: str, cwd: Path, pin: int | None = None) -> subprocess.CompletedProcess:
    """``python -m smp ARGS``; ``pin``: run it (parent and CPU workers) on that host core."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    pre = None if pin is None else (lambda: os.sched_setaffinity(0, {pin}))
    r = subprocess.run([sys.executable, "-m", "smp", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, preexec_fn=pre)
    if r.returncode not in (0, 1):
        raise SystemExit(f"smp {' '.join(args)}: exit {r.returncode}\n{r.stderr}")
    return r


def one_run(work: Path, script: Path, ncpu: int, lockstep: bool, seed: int,
            retry: bool = True, pin: int | None = None) -> dict:
    out = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    out.rmdir()
    args = ["run", str(script), "--cpus", str(ncpu), "--seed", str(seed), "--out", str(out),
            "-q"] + (["--lockstep"] if lockstep else [])
    smp(*args, cwd=work, pin=pin)
    s = json.loads((out / "summary.json").read_text())
    if s["status"] != "done":
        what = (f"{script.name} ({'lockstep' if lockstep else 'free'}, {ncpu} CPUs, seed "
                f"{seed}): {s['status']}: {s['message']}")
        if not retry:
            raise SystemExit(what)
        print(f"bench_lockstep: {what}; running it again", file=sys.stderr)
        return one_run(work, script, ncpu, lockstep, seed, retry=False, pin=pin)
    c = s["kernel_counters"].get("counters", {})
    load = s["kernel_counters"].get("load", {})
    return {"elapsed": s["elapsed_s"], "faults": c.get("faults", 0),
            "acq": s["locks"]["acquisitions"],
            "iterations": load.get("iterations_done", 0),
            "points": s.get("schedule", {}).get("points", 0)}


def median_rates(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] / r["elapsed"] for r in runs)


def throughput(work: Path, name: str, script: Path, ncpu: int, reps: int, unit: str) -> dict:
    row = {"load": name, "ncpu": ncpu, "unit": unit}
    for mode in ("free", "lockstep", "pinned"):
        runs = [one_run(work, script, ncpu, mode != "free", seed,
                        pin=0 if mode == "pinned" else None) for seed in range(reps)]
        row[mode] = median_rates(runs, unit)
        row[mode + "_acq"] = median_rates(runs, "acq")
        row[mode + "_s"] = statistics.median(r["elapsed"] for r in runs)
        if mode != "free":
            row[mode + "_points"] = median_rates(runs, "points")
    row["ratio"] = row["lockstep"] / row["free"]
    row["pinned_ratio"] = row["pinned"] / row["free"]
    return row


def explore_rate(work: Path, seeds: int, limit: str, jobs: int, reps: int) -> dict:
    walls = []
    for rep in range(reps):
        out = work / f"explore-{rep}"
        t0 = time.monotonic()
        r = smp("explore", "default", "--seeds", str(seeds), "--time-limit", limit,
                "--jobs", str(jobs), "--all", "--out", str(out), "-q", cwd=work)
        walls.append(time.monotonic() - t0)
        if "outcomes:" not in r.stdout:
            raise SystemExit(f"smp explore: unexpected output\n{r.stdout}{r.stderr}")
    wall = statistics.median(walls)
    one = json.loads((work / "explore-0" / "seed0" / "summary.json").read_text())
    return {"seeds": seeds, "limit": limit, "jobs": jobs, "wall": wall,
            "per_min": seeds / wall * 60,
            "virtual_per_wall": one["schedule"]["virtual_ns"] / 1e9 / one["elapsed_s"],
            "points": one["schedule"]["points"], "run_s": one["elapsed_s"]}


def handover_us(cores: tuple[int, int], n: int = 5000) -> float:
    """Host figure that bounds lockstep: one round trip between two processes (two
    wake-ups through pipes) on host cores ``cores``, in microseconds."""
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
    ap.add_argument("--quick", action="store_true", help="smaller loads, fewer reps")
    ap.add_argument("--reps", type=int, help="runs per figure (default 3, quick 1)")
    a = ap.parse_args()
    reps = a.reps or (1 if a.quick else 3)
    with tempfile.TemporaryDirectory(prefix="bench-lockstep-") as tmp:
        work = Path(tmp)
        faults = work / "faults.toml"
        faults.write_text(FAULTS_LOAD.format(procs=8, size="1M" if a.quick else "2M"))
        synth = work / "synthetic.toml"
        synth.write_text(SYNTH_LOAD.format(procs=8, iterations=300 if a.quick else 1000))
        rows = []
        for ncpu in (2, 4):
            rows.append(throughput(work, "faults", faults, ncpu, reps, "faults"))
        for ncpu in (2, 4):
            rows.append(throughput(work, "synthetic", synth, ncpu, reps, "iterations"))
        ex = explore_rate(work, seeds=4 if a.quick else 8, limit="100ms" if a.quick else "1s",
                          jobs=os.cpu_count() or 1, reps=1)
    other = 1 if (os.cpu_count() or 1) > 1 else 0
    print(f"lockstep vs free mode (median of {reps}; rates per wall second of the machine's "
          f"run; host: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
          f"process round trip {handover_us((0, other)):.1f} us across two cores, "
          f"{handover_us((0, 0)):.1f} us on one)")
    print("| load | CPUs | unit | free /s | lockstep /s | lockstep / free | "
          "pinned /s | pinned / free | lock acq/s free | lock acq/s lockstep | "
          "points/s lockstep | points/s pinned | run s free | run s lockstep | run s pinned |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['load']} | {r['ncpu']} | {r['unit']} | {r['free']:,.0f} | "
              f"{r['lockstep']:,.0f} | {r['ratio']:.2f} | {r['pinned']:,.0f} | "
              f"{r['pinned_ratio']:.2f} | {r['free_acq']:,.0f} | {r['lockstep_acq']:,.0f} | "
              f"{r['lockstep_points']:,.0f} | {r['pinned_points']:,.0f} | {r['free_s']:.2f} | "
              f"{r['lockstep_s']:.2f} | {r['pinned_s']:.2f} |")
    print("(pinned: the same lockstep runs with the whole process tree on host core 0)")
    print()
    print(f"smp explore default --seeds {ex['seeds']} --time-limit {ex['limit']} "
          f"--jobs {ex['jobs']} --all")
    print("| seeds | virtual limit | jobs | wall s | seeds / minute | one run: s | "
          "points | virtual s per wall s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {ex['seeds']} | {ex['limit']} | {ex['jobs']} | {ex['wall']:.1f} | "
          f"{ex['per_min']:.1f} | {ex['run_s']:.2f} | {ex['points']:,} | "
          f"{ex['virtual_per_wall']:.3f} |")


if __name__ == "__main__":
    main()
