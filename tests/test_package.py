"""smp as a user installs it (a wheel, not the source checkout), ``smp init``, the run
directory's name, and the Perfetto export (issue 14, items 1, 3 and 9)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, smp

from smp.rundir import format as fmt

FIX = REPO / "tests" / "fixtures" / "lockstep"


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv with smp installed from a wheel built from this checkout (its
    dependencies are taken from the running interpreter, so no download is needed for
    them)."""
    d = tmp_path_factory.mktemp("wheel")
    # with setuptools and wheel at hand (the test extra has them) no isolated build
    # environment has to be downloaded
    no_iso = ["--no-build-isolation"] if importlib.util.find_spec("wheel") else []
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *no_iso,
                        "-w", str(d / "dist"), str(REPO)], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip()[-300:]}")
    wheel = next((d / "dist").glob("smp-*.whl"))
    venv = d / "venv"
    # without a pip of its own (ensurepip takes ~7 s): this pip installs into it
    # (--python, pip >= 22.3); an older pip gets the venv's own
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True, timeout=120)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                        "install", "--no-deps", "-q", str(wheel)], capture_output=True,
                       text=True, timeout=300)
    if r.returncode != 0:
        subprocess.run([str(venv / "bin" / "python"), "-m", "ensurepip", "-q"], check=True,
                       timeout=300)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps",
                        "-q", str(wheel)], check=True, timeout=300)
    return venv


def in_venv(venv: Path, *args: str, cwd: Path, timeout: float = 180):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SMP_HOME")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_wheel_installed_in_a_fresh_venv_lists_and_runs_from_an_unrelated_directory(
        wheel_venv, tmp_path):
    where = in_venv(wheel_venv, "python", "-c", "import smp; print(smp.__file__)",
                    cwd=tmp_path)
    assert str(wheel_venv) in where.stdout, "the venv imported the source checkout"
    r = in_venv(wheel_venv, "smp", "list", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "i386mp-4" in r.stdout and "netbsd-2001-i386mp" in r.stdout
    assert "heavy-mp" in r.stdout and "ptp-hog" in r.stdout
    r = in_venv(wheel_venv, "smp", "run", "--time-limit", "1s", "--out", "run", "-q",
                cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((tmp_path / "run" / fmt.SUMMARY_FILE).read_text())
    assert s["load_script"] == "default" and s["status"] in ("done", "timeout")
    assert "/smp/data/workloads/default.toml" in \
        json.loads((tmp_path / "run" / fmt.MANIFEST_FILE).read_text())["load_script"]["path"]


def test_smp_init_copies_the_shipped_files_and_they_are_found_first(wheel_venv, tmp_path):
    r = in_venv(wheel_venv, "smp", "init", "lab", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lab = tmp_path / "lab"
    assert (lab / "workloads" / "default.toml").is_file()
    assert (lab / "shared" / "machines" / "i386mp-4.toml").is_file()
    assert (lab / "shared" / "kernels" / "default.toml").is_file()
    # a user's own script and machine, next to the copies, are found from there
    (lab / "workloads" / "mine.toml").write_text(
        '[run]\nmachine = "box"\n[synthetic]\nprocesses = 2\niterations = 100\n')
    (lab / "shared" / "machines" / "box.toml").write_text("[machine]\nncpu = 2\n")
    r = in_venv(wheel_venv, "smp", "list", cwd=lab)
    assert "box" in r.stdout and "mine" in r.stdout
    r = in_venv(wheel_venv, "smp", "run", "mine", "--out", "r", "-q", cwd=lab)
    assert r.returncode == 0, r.stderr
    assert json.loads((lab / "r" / fmt.SUMMARY_FILE).read_text())["machine"] == "box"
    again = in_venv(wheel_venv, "smp", "init", "lab", cwd=tmp_path)
    assert "0 files copied" in again.stdout


def test_run_directory_names_carry_the_overrides(tmp_path):
    for ov in ([], ["-o", "steal=none", "-o", "biglock=off"]):
        r = smp("run", str(FIX / "synthetic.toml"), "--lockstep", *ov, "-q", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(names) == 2
    plain, over = sorted(names, key=len)
    assert plain.startswith("synthetic-") and "+" not in plain
    assert over.startswith("synthetic-") and "+steal=none,biglock=off-0-" in over


def test_perfetto_export_has_a_track_per_cpu_and_one_event_per_record(tmp_path):
    run = tmp_path / "run"
    r = smp("run", str(FIX / "program.toml"), "--lockstep", "--seed", "3", "-o", "hist=on",
            "--time-limit", "100ms", "--out", str(run), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "run.json"
    r = smp("trace", str(run), "--format", "perfetto", "-o", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    ev = doc["traceEvents"]
    ncpu = json.loads((run / fmt.MANIFEST_FILE).read_text())["machine"]["ncpu"]
    tracks = {e["args"]["name"]: e["tid"] for e in ev
              if e["ph"] == "M" and e["name"] == "thread_name"}
    assert tracks == {f"cpu{c}": c for c in range(ncpu)}
    records = fmt.read_events(run / fmt.EVENTS_FILE)
    instants = [e for e in ev if e["ph"] == "i"]
    assert len(instants) == len(records) > 0
    assert sorted(e["tid"] for e in instants) == sorted(records["cpu"].tolist())
    # every uvm_fault that returned is a span from its first record to its "<- done"
    spans = [e for e in ev if e["ph"] == "X"]
    done = sum(1 for e in instants if e["name"] == "uvm_fault" and
               "<- done" in e["args"]["line"])
    assert done > 0 and sum(1 for s in spans if s["name"].startswith("uvm_fault#")) == done
    assert all(s["dur"] >= 0 for s in spans)


def test_perfetto_export_of_a_text_log_is_refused_with_one_line(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("[     0.000001] cpu0: hello\n")
    r = smp("trace", str(log), "--format", "perfetto", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "needs a run's binary records" in r.stderr
