"""The lockstep scheduler's speed without changing a schedule (issue 12, item 3).

* proxy turns: a spinner picked while its lock is still held has its turn taken by the CPU
  that holds the turn; the same seed gives the same bytes with proxies on and off, for
  random and pct, and only the host hand-overs differ;
* ``--strategy pb`` (preemption-bounded): replays byte-identically, hands the turn over
  rarely, and still finds the lock-order deadlock and the stale TLB entry of a steal
  without a shootdown;
* a lockstep run pins its CPU workers to one host core (least loaded; runs started
  together spread out; ``SMP_LOCKSTEP_PIN=off`` or a core number).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, cpu_workers, smp

from smp.machine import lockstep

FIX = REPO / "tests" / "fixtures" / "lockstep"
COMPARED = ("console.log", "hist.log", "events.bin", "lockstat.json")


def outputs(run: Path) -> dict[str, bytes]:
    return {n: (run / n).read_bytes() for n in COMPARED if (run / n).exists()}


def schedule(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())["schedule"]


def vcsw(run: Path) -> float:
    """Voluntary context switches of the CPU workers: the host hand-overs of the turn."""
    cpus = json.loads((run / "summary.json").read_text())["cpus"]
    return sum(c["host"].get("vcsw", 0) for c in cpus)


# -- proxy turns ------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_proxy_turns_change_no_byte_of_a_contended_run(tmp_path, monkeypatch, strategy):
    """Four CPUs fault under the big lock, so most points are spin turns on kernel_lock."""
    runs = {}
    for proxy in ("on", "off"):
        monkeypatch.setenv("SMP_LOCKSTEP_PROXY", proxy)
        runs[proxy] = tmp_path / proxy
        r = smp("run", str(FIX / "program.toml"), "--lockstep", "--strategy", strategy,
                "--seed", "0", "--cpus", "4", "-o", "hist=on", "--out", str(runs[proxy]), "-q",
                cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    on, off = outputs(runs["on"]), outputs(runs["off"])
    assert set(on) == set(COMPARED)
    for name in COMPARED:
        assert on[name] == off[name], f"{name}: proxy turns changed the run"
    assert schedule(runs["on"]) == schedule(runs["off"])
    if strategy == "random":
        # a third of random's turn changes went to a spinner whose lock was still held
        assert vcsw(runs["on"]) < 0.9 * vcsw(runs["off"])


# -- the pb strategy --------------------------------------------------------------------------

def test_pb_replays_identically_and_rarely_hands_over(tmp_path):
    a = tmp_path / "a"
    r = smp("run", str(FIX / "program.toml"), "--lockstep", "--strategy", "pb", "--seed", "5",
            "--cpus", "4", "-o", "hist=on", "--out", str(a), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = schedule(a)
    assert s["strategy"] == "pb" and s["seed"] == 5
    assert json.loads((a / "manifest.json").read_text())["strategy"] == "pb"
    assert 0 < s["switches"] < s["points"] / 10, s
    r = smp("run", "--replay", str(a), "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert r.returncode == 0 and "identical" in r.stdout, r.stdout + r.stderr


def test_pb_finds_the_lock_order_deadlock_and_the_stale_tlb(tmp_path):
    r = smp("explore", str(FIX / "deadlock.toml"), "-o", "biglock=off", "--strategy", "pb",
            "--seeds", "4", "--jobs", "2", "--out", "dl", "-q", cwd=tmp_path)
    assert r.returncode == 8, r.stdout + r.stderr
    rep = json.loads((tmp_path / "dl" / "reproducer.json").read_text())
    assert rep["verdict"] == "deadlock" and rep["strategy"] == "pb"
    r = smp("explore", str(FIX / "steal.toml"), "-k", "netbsd-2000-steal-localflush",
            "--strategy", "pb", "--seeds", "8", "--fail", "pmap_alloc_ptp:p=0.5", "--jobs", "2",
            "--out", "st", "-q", cwd=tmp_path)
    assert r.returncode == 8, r.stdout + r.stderr
    rep = json.loads((tmp_path / "st" / "reproducer.json").read_text())
    assert rep["verdict"] == "stale-tlb" and rep["strategy"] == "pb"
    r = smp("run", "--replay", rep["run_dir"], "--out", "again", cwd=tmp_path)
    assert r.returncode == 0 and "identical" in r.stdout, r.stdout + r.stderr


def test_pb_lets_every_cpu_take_virtual_time(tmp_path):
    """Two CPUs each run a process that loops for 20 ms of virtual time: with pb's
    time slices the loops overlap, so the run takes about 20 ms, not 40."""
    script = tmp_path / "loops.toml"
    script.write_text("""\
[run]
machine = "i386mp-2"
kernel = "netbsd-2001-i386mp"

[[process]]
name = "looper"
count = 2
program = [
  { op = "duration", time = "20ms", body = [ { op = "compute", time = "100us" } ] },
]
""")
    r = smp("run", str(script), "--lockstep", "--strategy", "pb", "--seed", "1",
            "--out", "a", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert schedule(tmp_path / "a")["virtual_ns"] < 30_000_000


# -- pinning ----------------------------------------------------------------------------------

def test_pick_host_core_obeys_the_environment(monkeypatch):
    allowed = sorted(os.sched_getaffinity(0))
    monkeypatch.setenv("SMP_LOCKSTEP_PIN", "off")
    assert lockstep.pick_host_core() is None
    monkeypatch.setenv("SMP_LOCKSTEP_PIN", str(allowed[-1]))
    assert lockstep.pick_host_core() == allowed[-1]
    monkeypatch.setenv("SMP_LOCKSTEP_PIN", "4096")            # not a core we may use
    assert lockstep.pick_host_core() is None
    monkeypatch.delenv("SMP_LOCKSTEP_PIN")
    assert lockstep.pick_host_core() in allowed


def test_runs_started_together_get_different_cores(tmp_path, monkeypatch):
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("one host core: nothing to spread over")
    monkeypatch.setattr(lockstep, "_registry_path", lambda: str(tmp_path / "pins"))
    monkeypatch.delenv("SMP_LOCKSTEP_PIN", raising=False)
    names = [f"lockstep-pin-test-{os.getpid()}-{i}" for i in range(2)]
    try:
        for n in names:                       # a claim lives while its segment exists
            Path("/dev/shm", n).touch()
        first = lockstep.pick_host_core(names[0])
        second = lockstep.pick_host_core(names[1])
        assert first != second
        Path("/dev/shm", names[0]).unlink()   # the first run ended: its core is free again
        assert lockstep.pick_host_core("") == first
    finally:
        for n in names:
            Path("/dev/shm", n).unlink(missing_ok=True)


@pytest.mark.parametrize("pin", ["auto", "off"])
def test_a_lockstep_run_pins_its_cpus_to_one_host_core(tmp_path, pin):
    allowed = sorted(os.sched_getaffinity(0))
    env = dict(os.environ, PYTHONPATH=str(REPO), SMP_LOCKSTEP_PIN=pin)
    p = subprocess.Popen([sys.executable, "-m", "smp", "run", str(FIX / "busy.toml"),
                          "--lockstep", "--seed", "0", "--cpus", "2", "--out", "a", "-q"],
                         cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        masks = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and p.poll() is None:
            workers = cpu_workers(p.pid)
            if len(workers) == 2:
                try:
                    masks = [tuple(w.cpu_affinity()) for w in workers]
                except Exception:  # noqa: BLE001 - a worker still starting or just gone
                    masks = None
                if masks and all(len(m) == 1 for m in masks) == (pin == "auto"):
                    break
            time.sleep(0.05)
        assert masks is not None, "no CPU workers seen"
        if pin == "auto":
            assert len(set(masks)) == 1 and len(masks[0]) == 1, masks
            assert masks[0][0] in allowed
        else:
            assert all(sorted(m) == allowed for m in masks), masks
    finally:
        p.terminate()
        p.wait(60)
