"""What a user gets when things go wrong around a run: bad paths, a full disk, a whole
process group killed, a sweep stopped halfway, a run cut off by its time limit, a corrupt
events.bin.  Every case ends with one line and a documented exit status, never a
traceback, and nothing left behind in /dev/shm or the process table."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import REPO, cpu_workers, gone, segments_of, smp, smp_background, wait_for

from smp.errors import Exit
from smp.machine.segment import leaked_segments
from smp.rundir import format as fmt

FIX = REPO / "tests" / "fixtures" / "lockstep"
ENV = dict(os.environ, PYTHONPATH=str(REPO))


def one_line(r: subprocess.CompletedProcess, status: int) -> str:
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


# --- 1. bad paths ------------------------------------------------------------------------

def test_out_naming_a_regular_file_is_refused_with_one_line(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    line = one_line(smp("run", "--out", str(f), "-q", cwd=tmp_path), Exit.BADINPUT)
    assert line == f"smp: {f}: exists and is not a directory (--out wants a directory)"


@pytest.mark.parametrize("out, why", [
    ("/proc/smp-no-such/x", "cannot create the run directory"),
    ("{tmp}/afile/sub", "a parent of this path is not a directory"),
])
def test_out_that_cannot_be_created_is_refused_with_one_line(tmp_path, out, why):
    (tmp_path / "afile").write_text("x")
    out = out.format(tmp=tmp_path)
    line = one_line(smp("run", "--out", out, "-q", cwd=tmp_path), Exit.BADINPUT)
    assert line.startswith(f"smp: {out}: {why}")


@pytest.mark.parametrize("target, why", [
    ("/dev/null", "not a directory (expected a run directory)"),
    ("{tmp}", "not a run directory"),
    ("{tmp}/nowhere", "no such run directory"),
])
def test_replay_of_something_that_is_no_run_is_refused_with_one_line(tmp_path, target, why):
    target = target.format(tmp=tmp_path)
    line = one_line(smp("run", "--replay", target, cwd=tmp_path), Exit.BADINPUT)
    assert line.startswith(f"smp: {target}: {why}")


def test_replay_of_a_manifest_with_a_broken_configuration_names_the_key(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({
        "schema": 1, "load_script": {"name": "x", "text": "[synthetic]\n"}, "seed": 0,
        "machine": {"name": "m", "ncpu": 0}, "kernel": {"name": "k"}}))
    line = one_line(smp("run", "--replay", str(run), cwd=tmp_path), Exit.BADINPUT)
    assert "manifest.json" in line and "machine.ncpu" in line


def test_negative_time_limit_gets_the_duration_message(tmp_path):
    line = one_line(smp("run", "--time-limit", "-5s", cwd=tmp_path), Exit.BADINPUT)
    assert line == ("smp: --time-limit: expected a duration such as 200ms, 1.5s or 10us, "
                    "got '-5s'")


def test_replay_to_a_temporary_directory_leaves_nothing_behind(tmp_path):
    run = tmp_path / "r"
    r = smp("run", str(FIX / "synthetic.toml"), "--lockstep", "--seed", "1", "--out", str(run),
            "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(ENV, TMPDIR=str(tmp))
    r = subprocess.run([sys.executable, "-m", "smp", "run", "--replay", str(run)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "identical" in r.stdout
    assert list(tmp.iterdir()) == []


# --- 2. a full disk ----------------------------------------------------------------------

def _tiny_fs_run(tmp_path: Path, size: str, *args: str) -> subprocess.CompletedProcess | None:
    """``smp run`` with --out on a tmpfs of ``size`` in a private mount namespace, or None
    when this host cannot mount one (no unshare, no privilege)."""
    if shutil.which("unshare") is None:
        return None
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    inner = (f"mount -t tmpfs -o size={size} tmpfs {mnt} || exit 99; "
             f"{sys.executable} -m smp run {' '.join(args)} --out {mnt}/run -q; rc=$?; "
             f"cp -a {mnt}/run {tmp_path}/copy 2>/dev/null; exit $rc")
    for cmd in (["unshare", "--mount", "sh", "-c", inner],
                ["unshare", "--mount", "--map-root-user", "sh", "-c", inner]):
        r = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True,
                           timeout=240)
        if r.returncode != 99 and "unshare:" not in r.stderr:
            return r
    return None


def test_a_full_disk_ends_the_run_cleanly_with_its_own_status(tmp_path):
    r = _tiny_fs_run(tmp_path, "96k", "--time-limit", "20s", "-o", "hist=on")
    if r is None:
        pytest.skip("cannot mount a small tmpfs here")
    line = one_line(r, Exit.WRITE_FAILED)
    assert "run directory incomplete" in line and "No space left on device" in line
    copy = tmp_path / "copy"
    assert (copy / ".incomplete").exists() or \
        json.loads((copy / "summary.json").read_text())["incomplete"] is True
    # what was written before the disk filled is intact: the manifest and the catalogue
    assert json.loads((copy / "manifest.json").read_text())["schema"] == fmt.MANIFEST_SCHEMA
    assert json.loads((copy / "catalogue.json").read_text())["schema"] == fmt.CATALOGUE_SCHEMA
    # and every tool says the directory is incomplete instead of failing on it
    t = smp("trace", str(copy), "--partial", "--force", "--stats", cwd=tmp_path)
    assert t.returncode in (0, 2) and "Traceback" not in t.stderr


def test_a_read_only_place_is_refused_before_boot(tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to make a read-only mount")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["unshare", "--mount", "sh", "-c",
                        f"mount -t tmpfs -o ro,size=64k tmpfs {mnt} || exit 99; "
                        f"{sys.executable} -m smp run --out {mnt}/run -q"],
                       cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    if r.returncode == 99:
        pytest.skip("cannot mount here")
    line = one_line(r, Exit.BADINPUT)
    assert line == f"smp: {mnt}/run: cannot create the run directory: Read-only file system"


# --- 3. a SIGKILL of the whole process group ---------------------------------------------

@pytest.mark.exclusive
def test_a_killed_process_group_leaks_a_segment_that_the_next_command_removes(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "smp", "run", "heavy-mp", "--out",
                          str(tmp_path / "run"), "-q"], cwd=tmp_path, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        wait_for(lambda: segments_of(p.pid), what="the run's segment")
        seg = segments_of(p.pid)[0]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(30)
        wait_for(lambda: not psutil.pid_exists(p.pid) or
                  psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE, what="the group")
        assert seg in leaked_segments(orphans_only=True)       # the leak really happens
        r = smp("clean", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert f"removed /dev/shm/{seg}" in r.stdout
        assert seg not in leaked_segments()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


@pytest.mark.exclusive
def test_every_command_that_boots_a_machine_first_removes_dead_runs_segments(tmp_path):
    # a segment whose owner is gone: made by a child that exits without unlinking it
    code = ("from multiprocessing import shared_memory as s, resource_tracker as r; "
            "import os; m = s.SharedMemory(name=f'smp-{os.getpid()}-deadbeef', create=True, "
            "size=4096); r.unregister(m._name, 'shared_memory'); print(m.name)")
    name = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip().lstrip("/")
    assert name in leaked_segments(orphans_only=True)
    r = smp("run", str(FIX / "synthetic.toml"), "--lockstep", "--out", str(tmp_path / "r"),
            "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "shared-memory segment(s) left by runs that died" in r.stderr
    assert name in r.stderr and name not in leaked_segments()


# --- 4. stopping explore and experiment --------------------------------------------------

SLOW = """
[run]
machine = "i386mp-2"
kernel = "default"
time_limit = "60s"

[[process]]
name = "toucher"
count = 2
program = [
  { op = "repeat", count = 100000, body = [
      { op = "mmap", region = "heap", size = "256K" },
      { op = "touch", region = "heap", write = true },
      { op = "munmap", region = "heap" },
  ] },
]
"""


def _start_sweep(tmp_path: Path, kind: str) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "slow.toml"
    script.write_text(SLOW)
    out = tmp_path / "sweep"
    if kind == "explore":
        args = ["explore", str(script), "--seeds", "6", "--jobs", "2", "--time-limit", "60s"]
    else:
        args = ["experiment", str(script), "--seeds", "3", "--jobs", "2", "-c", "steal=none"]
    p = subprocess.Popen([sys.executable, "-m", "smp", *args, "--out", str(out), "-q"],
                         cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    return p, out


def _children_running(p: subprocess.Popen) -> list[psutil.Process]:
    out = []
    try:
        kids = psutil.Process(p.pid).children()
    except psutil.Error:
        return []
    for c in kids:
        try:
            if "run" in c.cmdline() and "smp" in " ".join(c.cmdline()):
                out.append(c)
        except psutil.Error:
            continue
    return out


@pytest.mark.parametrize("kind, sig", [("explore", signal.SIGTERM),
                                       ("experiment", signal.SIGINT)])
def test_a_stopped_sweep_stops_its_runs_and_writes_what_finished(tmp_path, kind, sig):
    p, out = _start_sweep(tmp_path, kind)
    try:
        wait_for(lambda: len(_children_running(p)) == 2, what="two runs")
        kids = _children_running(p)
        wait_for(lambda: all(segments_of(k.pid) for k in kids), what="booted runs")
        p.send_signal(sig)                       # to the sweep process alone
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == Exit.INTERRUPTED, stderr
    assert "Traceback" not in stderr
    assert f"stopped by {signal.Signals(sig).name}" in stderr
    for k in kids:
        assert gone(k)
        assert not segments_of(k.pid)
    doc = json.loads((out / f"{kind}.json").read_text())
    assert doc["interrupted"] == signal.Signals(sig).name
    # the runs that were stopped ended cleanly: their summaries say so
    if kind == "explore":
        verdicts = [o["verdict"] for o in doc["outcomes"]]
        assert verdicts == ["interrupted", "interrupted"], verdicts
    else:
        runs = [r for c in doc["cells"] for r in c["runs"]]
        assert [r["status"] for r in runs] == ["interrupted", "interrupted"]


def test_runs_die_with_a_sweep_killed_by_sigkill(tmp_path):
    p, _out = _start_sweep(tmp_path, "explore")
    try:
        wait_for(lambda: len(_children_running(p)) == 2, what="two runs")
        kids = _children_running(p)
        wait_for(lambda: all(segments_of(k.pid) for k in kids), what="booted runs")
        p.kill()
        p.communicate(timeout=30)
        wait_for(lambda: all(gone(k) for k in kids), timeout=30,
                  what="the orphaned runs to end")
    finally:
        if p.poll() is None:
            p.kill()
        for k in locals().get("kids", []):
            try:
                k.kill()
            except psutil.Error:
                pass
    for k in kids:
        assert not segments_of(k.pid), "a run killed by its parent's death leaked its segment"


# --- 5. a load cut off by its time limit -------------------------------------------------

def test_a_load_cut_off_by_its_time_limit_is_flagged(tmp_path):
    script = tmp_path / "slow.toml"
    script.write_text(SLOW)
    r = smp("run", str(script), "--time-limit", "1s", "--out", str(tmp_path / "r"), "-q",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = one_line(r, Exit.OK)
    assert "the time limit ended the load with 2 processes still running" in line
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "timeout"
    assert s["time_limit"] == {"reached": True, "processes_alive": 2}
    assert "status: timeout (time limit of 1 s reached)" in r.stdout


# --- 6. a corrupt events.bin -------------------------------------------------------------

@pytest.fixture(scope="module")
def lockstep_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("events") / "run"
    r = smp("run", str(FIX / "program.toml"), "--lockstep", "--seed", "2", "--out", str(d),
            "-o", "hist=on", "-q", cwd=d.parent)
    assert r.returncode == 0, r.stderr
    return d


def test_random_bytes_in_events_bin_are_found_with_their_offset(lockstep_run, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(lockstep_run, d)
    ev = d / fmt.EVENTS_FILE
    data = bytearray(ev.read_bytes())
    n = (len(data) - fmt.EVENTS_HDR_SIZE) // fmt.REC_DTYPE.itemsize
    assert n > 100
    mid = fmt.EVENTS_HDR_SIZE + (n // 2) * fmt.REC_DTYPE.itemsize + 20
    data[mid:mid + 64] = np.random.default_rng(5).integers(0, 256, 64, np.uint8).tobytes()
    ev.write_bytes(bytes(data))
    line = one_line(smp("trace", str(d), cwd=tmp_path), Exit.BADINPUT)
    assert "bad record" in line and "byte offset" in line and str(ev) in line
    r = smp("trace", str(d), "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "skipped" in r.stdout + r.stderr
    c = smp("compare", str(lockstep_run), str(d), cwd=tmp_path)
    assert c.returncode == 2 and "bad record" in c.stderr


# --- 7. exit statuses ----------------------------------------------------------------------

def test_a_dead_cpu_has_its_own_exit_status_and_the_message_says_it_once(tmp_path):
    script = tmp_path / "s.toml"
    script.write_text('[run]\nmachine = "i386mp-2"\n[synthetic]\nprocesses = 4\n'
                      'iterations = 1000000\n')
    p = subprocess.Popen([sys.executable, "-m", "smp", "run", str(script), "--out",
                          str(tmp_path / "r"), "-q"], cwd=tmp_path, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(cpu_workers(p.pid)) == 2, what="the CPUs")
        time.sleep(0.3)
        cpu = sorted(cpu_workers(p.pid), key=lambda c: c.pid)[0]
        cpu.kill()
        stdout, stderr = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == Exit.CPU_DIED, stderr
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["status"] == "cpu-died" and s["exit_code"] == Exit.CPU_DIED


def test_interrupted_status_says_why_once(tmp_path):
    script = tmp_path / "s.toml"
    script.write_text(SLOW)
    p = smp_background("run", str(script), "--out", str(tmp_path / "r"), "-q",
                       cwd=tmp_path)                     # (Ctrl-C reaches it: conftest)
    try:
        wait_for(lambda: (tmp_path / "r" / "console.log").exists(), what="boot")
        p.send_signal(signal.SIGINT)
        stdout, _ = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == Exit.INTERRUPTED
    assert "status: interrupted (Ctrl-C)" in stdout
    assert "interrupted (interrupted" not in stdout
