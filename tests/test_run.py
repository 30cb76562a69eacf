"""`smp run` end to end: run directories, exit statuses, dead CPUs, Ctrl-C, panics, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cpu_workers, smp, smp_background

from smp.errors import Exit
from smp.rundir import format as fmt

SCHEMAS = {fmt.MANIFEST_FILE: fmt.MANIFEST_SCHEMA, fmt.LOCKSTAT_FILE: fmt.LOCKSTAT_SCHEMA,
           fmt.SUMMARY_FILE: fmt.SUMMARY_SCHEMA}
REPO = Path(__file__).resolve().parent.parent


def script(tmp_path: Path, body: str, machine: str = "i386mp-2") -> Path:
    p = tmp_path / "load.toml"
    p.write_text(f'[run]\nmachine = "{machine}"\n{body}')
    return p


def test_a_slice_of_the_default_run_writes_a_complete_run_directory(tmp_path):
    """Two seconds of the default load (the whole run is CI's first command): every file
    of the run directory is there and agrees with the others."""
    out = tmp_path / "run"
    r = smp("run", "--out", str(out), "--quiet", "-o", "ncpu=2", "--time-limit", "2s",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == str(out)
    for name in ("manifest.json", "console.log", "events.bin", "catalogue.json",
                 "lockstat.json", "summary.json", "summary.txt"):
        assert (out / name).is_file(), name
    for name in ("manifest.json", "lockstat.json", "summary.json"):
        assert json.loads((out / name).read_text())["schema"] == SCHEMAS[name]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] in ("done", "timeout") and s["ncpu"] == 2
    kc = s["kernel_counters"]
    procs = kc["processes"]
    assert procs["started"] == procs["exited"] + procs["alive"] > 0
    if s["status"] == "timeout":
        assert s["time_limit"] == {"reached": True, "processes_alive": procs["alive"]}
        assert procs["alive"] == 0 or "the time limit ended the load" in r.stderr
    c = kc["counters"]
    assert c["faults"] > 0 and c["pmap_enter"] > 0 and c["flt_przero"] > 0
    assert c["stale_tlb"] == 0 and c["exits"] == procs["exited"]
    assert s["trace"]["dropped"] == 0
    assert s["host_cpu_s"] > 0 and s["host_cpu_per_fault_us"] > 0
    assert all(c["host"]["user_s"] > 0 for c in s["cpus"])
    m = json.loads((out / "manifest.json").read_text())
    assert m["load_script"]["name"] == "default" and "[[process]]" in m["load_script"]["text"]
    assert m["machine"]["ncpu"] == 2 and m["overrides"] == ["ncpu=2"]
    assert m["time_limit_s"] == 2
    lines = (out / "summary.txt").read_text().splitlines()
    assert lines[1].startswith(f"status: {s['status']} (")


def test_synthetic_load_counts_add_up(tmp_path):
    p = script(tmp_path, "[synthetic]\nprocesses = 8\niterations = 500\n")
    out = tmp_path / "run"
    r = smp("run", str(p), "--out", str(out), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((out / "summary.json").read_text())
    load = s["kernel_counters"]["load"]
    assert load["counters_consistent"] and load["increments"] == 8 * 500
    assert (out / "console.log").read_text().count("synth: pid") == 2 * 8


def test_lockstat_counts_every_acquisition(tmp_path):
    p = script(tmp_path, "[synthetic]\nprocesses = 6\niterations = 300\ncompute = '0us'\n")
    out = tmp_path / "run"
    assert smp("run", str(p), "--out", str(out), "-q", cwd=tmp_path).returncode == 0
    ls = json.loads((out / "lockstat.json").read_text())
    bucket = [r for r in ls["records"] if r["class"] == "synth_bucket"]
    assert sum(r["acq"] for r in bucket) == 6 * 300
    assert {r["site"] for r in bucket} == {"SyntheticLoad.step"}
    assert all(r["contended"] <= r["acq"] for r in ls["records"])
    # hold time is charged to the outermost hold of the (recursive) big lock only
    assert all(sum(r["hold_hist"]) == r["acq"] for r in ls["records"]
               if r["class"] != "kernel_lock")


def start_run(script_path: Path, out: Path, cwd: Path) -> subprocess.Popen:
    """`smp run` in the background, for tests that interrupt it (Ctrl-C reaches it)."""
    return smp_background("run", str(script_path), "--out", str(out), "-q", cwd=cwd)


def wait_console(out: Path, needle: str, n: int, timeout: float = 60) -> None:
    """Until the run's console shows ``needle`` ``n`` times: readiness is a console line,
    not a guess at how long the host takes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (out / "console.log").read_text().count(needle) >= n:
                return
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, f"no {n} x {needle!r} in the console"
        time.sleep(0.02)


def test_a_killed_worker_ends_the_run_with_a_report(tmp_path):
    p = script(tmp_path, "[synthetic]\nprocesses = 8\niterations = 1000000\n", "i386mp-4")
    out = tmp_path / "run"
    proc = start_run(p, out, tmp_path)
    try:
        deadline = time.monotonic() + 30
        workers = []
        while time.monotonic() < deadline and len(workers) < 4:
            workers = cpu_workers(proc.pid)
            time.sleep(0.05)
        assert len(workers) == 4
        wait_console(out, "synth: pid", 1)                    # the load is running
        victim = sorted(workers, key=lambda w: w.pid)[1]     # cpu1
        t0 = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=20)
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == Exit.CPU_DIED, (proc.returncode, stderr)
    assert "cpu1" in stdout and "died" in stdout and "SIGKILL" in stdout, stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "cpu-died"
    assert (out / "console.log").read_text().count("synth: pid") >= 1


def ctrl_c_a_run(tmp_path: Path) -> tuple[Path, int, str]:
    """Start a long synthetic run, Ctrl-C it once every process runs: (run dir, exit
    status, stderr)."""
    p = script(tmp_path, "[synthetic]\nprocesses = 4\niterations = 1000000\n")
    out = tmp_path / "run"
    proc = start_run(p, out, tmp_path)
    try:
        wait_console(out, "started on cpu", 4)                # every process is running
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out, proc.returncode, stderr


def test_ctrl_c_ends_the_run_cleanly(tmp_path):
    out, status, stderr = ctrl_c_a_run(tmp_path)
    assert status == 130, stderr
    assert "Traceback" not in stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert (out / "console.log").read_text().count("started on cpu") == 4


@pytest.fixture
def sigint_ignored():
    """This test process ignores SIGINT, as a background job of a shell without job
    control does (how the Ctrl-C tests once failed in a CI rehearsal)."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, old)


def test_ctrl_c_reaches_a_run_started_by_a_background_job(tmp_path, sigint_ignored):
    """The Ctrl-C tests do not depend on how the test session was started."""
    out, status, stderr = ctrl_c_a_run(tmp_path)
    assert status == 130, stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"


def test_a_run_that_inherits_an_ignored_sigint_keeps_ignoring_it(tmp_path, sigint_ignored):
    """What those tests ran into, on purpose: a background job's run is deaf to the
    terminal's Ctrl-C (Machine.run keeps SIG_IGN) and stops on SIGTERM."""
    p = script(tmp_path, "[synthetic]\nprocesses = 4\niterations = 1000000\n")
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "smp", "run", str(p), "--out", str(out),
                             "-q"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_console(out, "started on cpu", 4)
        proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.5)                               # ignored
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    s = json.loads((out / "summary.json").read_text())
    assert (s["status"], s["message"]) == ("interrupted", "SIGTERM")


def test_a_simulated_panic_stops_every_cpu_and_names_the_held_locks(tmp_path):
    p = script(tmp_path, "[synthetic]\nprocesses = 4\niterations = 1000\npanic_at = 300\n")
    out = tmp_path / "run"
    r = smp("run", str(p), "--out", str(out), "-q", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    console = (out / "console.log").read_text()
    assert "cpu0: panic: injected panic in pid 100 at iteration 300" in console or \
        "panic: injected panic in pid 100 at iteration 300" in console
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "panic"
    panicked = [c for c in s["cpus"] if c["state"] == "panic"]
    assert len(panicked) == 1
    assert "bucket[" in " ".join(h["name"] for h in panicked[0]["held"])
    assert all(c["state"] in ("panic", "halted", "done") for c in s["cpus"])
    assert "holds bucket[" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["-m", "nope"], "nope"),
    (["-o", "bogus=1"], "unknown key 'bogus'"),
    (["-o", "ncpu=0"], "ncpu"),
    (["--cpus", "0"], "--cpus 0"),
    (["-o", "physmem=4K"], "physmem"),
    (["no-such-load"], "no-such-load: no such load script"),
    (["--time-limit", "soon"], "--time-limit"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    r = smp("run", *args, "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("body, message", [
    ("[synthetic\n", "malformed TOML"),
    ("[synthetic]\nprocesses = 0\n", "synthetic.processes: expected an integer"),
    ("[synthetic]\ncompute = 'fast'\n", "synthetic.compute"),
    ("[synthetic]\nsurprise = 1\n", "synthetic.surprise"),
    ("[other]\n", "'other'"),
    ("", "no load"),
    ("[[process]]\nprogram = [{ op = 'touch' }]\n", "process[0].program[0].region"),
    ("[[process]]\nprogram = [{ op = 'fly' }]\n", "unknown operation 'fly'"),
])
def test_bad_load_script_names_file_and_key(tmp_path, body, message):
    p = script(tmp_path, body)
    r = smp("run", str(p), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(p) in lines[0] and message in lines[0], r.stderr


def test_malformed_machine_profile(tmp_path):
    m = tmp_path / "m.toml"
    m.write_text("[machine]\nncpu = \n")
    r = smp("run", "-m", str(m), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2 and "m.toml" in r.stderr and "malformed TOML" in r.stderr


def test_python_dash_m_and_list(tmp_path):
    r = smp("list", cwd=tmp_path)
    assert r.returncode == 0 and "i386mp-4" in r.stdout and "default" in r.stdout
