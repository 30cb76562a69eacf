#!/usr/bin/env python3
"""Crash loop: N runs of a load, each killed at a random moment, and what they leave behind.

For every run, one of three things happens at a random time after boot:

* ``worker``: SIGKILL to one CPU worker -- the run must end by itself with a report
  (exit 6, "cpu-died"), its segment unlinked;
* ``parent``: SIGKILL to the ``smp run`` process alone -- its CPUs die with it
  (PR_SET_PDEATHSIG), the segment is left behind and must be removed by the next command;
* ``group``: SIGKILL to the whole process group -- the same.

After each run it checks: no process of the run is left (within 10 s), ``smp clean``
leaves nothing of it in /dev/shm, and every tool reads the run directory (``smp trace
--partial``, ``smp trace --partial --stats``, ``smp lockstat``) with exit 0 or 2 and
never a traceback.  A run that does not end within ``--hang-s`` after a worker kill is a
hang.

    python scripts/crash_loop.py 100 [--load heavy-mp] [--seed 1] [--json]

Prints the counts (runs per kind, leaks, hangs, tool failures) and exits 1 if any check
failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from smp.machine.segment import SEGMENT_PREFIX, leaked_segments  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=str(REPO))


def smp(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smp", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def workers(p: psutil.Process) -> list[psutil.Process]:
    try:
        return [c for c in p.children()
                if "resource_tracker" not in " ".join(c.cmdline())]
    except psutil.Error:
        return []


def one(i: int, kind: str, load: str, rng: random.Random, work: Path, hang_s: float) -> dict:
    out = work / f"run{i}"
    p = subprocess.Popen([sys.executable, "-m", "smp", "run", load, "--out", str(out), "-q",
                          "--seed", str(i)], cwd=work, env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    me = psutil.Process(p.pid)
    r = {"run": i, "kind": kind, "hang": False, "leak": [], "left": [], "tools": []}
    deadline = time.monotonic() + 60
    while len(workers(me)) == 0 and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.05, 3.0))
    family = [me] + workers(me)
    if p.poll() is not None:
        r["kind"] = kind = "finished-first"
    elif kind == "worker":
        ws = workers(me)
        if ws:
            rng.choice(ws).kill()
        try:
            p.wait(hang_s)
        except subprocess.TimeoutExpired:
            r["hang"] = True
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        r["exit"] = p.returncode
    elif kind == "parent":
        p.kill()
        p.wait()
    else:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    if p.stderr is not None:
        err = p.stderr.read()
        p.stderr.close()
        if "Traceback" in err:
            r["tools"].append(f"smp run printed a traceback: {err[-300:]}")
    # every process of the run must go away by itself
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [q.pid for q in family if _alive(q)]
        if not alive:
            break
        time.sleep(0.05)
    r["left"] = [q.pid for q in family if _alive(q)]
    for q in family:
        if _alive(q):
            q.kill()
    smp("clean", cwd=work)
    r["leak"] = [s for s in leaked_segments() if s.startswith(f"{SEGMENT_PREFIX}{p.pid}-")]
    for args in (["trace", str(out), "--partial"], ["trace", str(out), "--partial", "--stats"],
                 ["lockstat", str(out)]):
        t = smp(*args, cwd=work)
        if t.returncode not in (0, 2) or "Traceback" in t.stderr:
            r["tools"].append(f"{' '.join(args[:1] + args[2:])}: exit {t.returncode}: "
                              f"{t.stderr.strip()[-200:]}")
    shutil.rmtree(out, ignore_errors=True)
    return r


def _alive(q: psutil.Process) -> bool:
    try:
        return q.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int, help="number of runs")
    ap.add_argument("--load", default="heavy-mp")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hang-s", type=float, default=30.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    results = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smp-crash-") as d:
        for i in range(a.n):
            kind = rng.choice(("worker", "parent", "group"))
            results.append(one(i, kind, a.load, rng, Path(d), a.hang_s))
            r = results[-1]
            if r["hang"] or r["leak"] or r["left"] or r["tools"]:
                print(f"run {i} ({r['kind']}): {json.dumps(r)}", file=sys.stderr)
    kinds: dict[str, int] = {}
    for r in results:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    summary = {
        "runs": len(results), "kinds": kinds,
        "worker_exit_codes": sorted({r.get("exit") for r in results if r["kind"] == "worker"},
                                    key=str),
        "hangs": sum(r["hang"] for r in results),
        "leaks": sum(bool(r["leak"]) for r in results),
        "processes_left": sum(bool(r["left"]) for r in results),
        "tool_failures": sum(bool(r["tools"]) for r in results),
        "wall_s": round(time.monotonic() - t0, 1),
    }
    if a.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k:18} {v}")
    bad = summary["hangs"] + summary["leaks"] + summary["processes_left"] + \
        summary["tool_failures"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
