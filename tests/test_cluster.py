"""``smp experiment`` and ``smp explore`` on Dask distributed (``--cluster``, issue 13).

A real ``LocalCluster`` on loopback -- two worker processes, one thread each, each
offering ``cpus=2`` -- stands in for a cluster; the sweeps run as ``smp`` commands in
their own processes and connect to its scheduler like a user's would.  The runs are short
lockstep runs of the synthetic fixture (2 CPUs), deterministic per seed, so a cluster
sweep and a local one can be compared file by file.  Faults: a worker killed under a
run, Ctrl-C to the client, a scheduler that is not there.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import REPO, gone, segments_of, smp, wait_for

from smp.errors import Exit

distributed = pytest.importorskip("distributed", reason="pip install -e '.[test]'")

FIX = REPO / "tests" / "fixtures" / "lockstep"
SYNTH = FIX / "synthetic.toml"
ENV = dict(os.environ, PYTHONPATH=str(REPO))
TIMING = ("faults_per_s", "wall_s")          # host timings: the only columns that differ

# a free-mode load that keeps two CPUs busy until its time limit
BUSY = """
[run]
machine = "i386mp-2"
kernel = "default"
time_limit = "{limit}"

[[process]]
name = "toucher"
count = 2
program = [
  {{ op = "repeat", count = 100000, body = [
      {{ op = "mmap", region = "heap", size = "256K" }},
      {{ op = "touch", region = "heap", write = true }},
      {{ op = "munmap", region = "heap" }},
  ] }},
]
"""


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes with one thread and cpus=2 each: one 2-CPU run at a time."""
    c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 resources={"cpus": 2}, dashboard_address=":0",
                                 host="127.0.0.1", silence_logs=logging.ERROR)
    client = distributed.Client(c)
    try:
        yield c, client
    finally:
        client.close()
        c.close()


def _workers(client, n: int = 2) -> dict[str, int]:
    """Worker address -> pid, once ``n`` workers are up (a killed one is restarted)."""
    client.wait_for_workers(n, timeout=60)
    return client.run(os.getpid)


def _runs_under(pids) -> list[psutil.Process]:
    """``smp run`` processes started by the tasks of these workers."""
    out = []
    for pid in pids:
        try:
            kids = psutil.Process(pid).children()
        except psutil.NoSuchProcess:
            continue
        out += [k for k in kids if _is_task_run(k)]
    return out


def _is_task_run(p: psutil.Process) -> bool:
    try:
        cmd = " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    return "-m smp run" in cmd and "smp-task-" in cmd








def _sweep(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "smp", *args], cwd=cwd,
                            env=dict(ENV, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _one_line(r, status: int) -> str:
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


# --- without --cluster nothing changes -----------------------------------------------------

def test_without_cluster_the_sweeps_never_import_dask(tmp_path):
    code = ("import sys; from smp.cli import main\n"
            f"a = main(['experiment', {str(SYNTH)!r}, '-c', 'steal=none', '--seeds', '1', "
            "'--lockstep', '--out', 'e', '-q'])\n"
            f"b = main(['explore', {str(SYNTH)!r}, '--seeds', '1', '--out', 'x', '-q'])\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('dask', 'distributed', 'smp.tools.cluster'))\n"
            "print(a, b, bad)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(ENV, SMP_CLUSTER=""),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "0 0 []", r.stdout + r.stderr
    assert "cluster" not in json.loads((tmp_path / "e" / "experiment.json").read_text())


# --- a scheduler that is not there -------------------------------------------------------

@pytest.mark.parametrize("cmd, address, message", [
    ("experiment", "tcp://127.0.0.1:1", "cannot reach the Dask scheduler: Connection refused"),
    ("explore", "tcp://127.0.0.1:1", "cannot reach the Dask scheduler: Connection refused"),
    ("explore", "127.0.0.1:8786", "expected tcp://HOST:PORT (a Dask scheduler) or local"),
])
def test_an_unreachable_scheduler_is_one_line_and_exit_2(tmp_path, cmd, address, message):
    args = [cmd, str(SYNTH), "--seeds", "1", "--out", "out", "-q", "--cluster", address]
    line = _one_line(smp(*args, cwd=tmp_path), Exit.BADINPUT)
    assert line == f"smp: --cluster {address}: {message}"
    assert not (tmp_path / "out").exists()          # nothing was started or written


def test_smp_cluster_in_the_environment_is_the_default(tmp_path):
    r = subprocess.run([sys.executable, "-m", "smp", "explore", str(SYNTH), "--seeds", "1",
                        "--out", "out", "-q"], cwd=tmp_path,
                       env=dict(ENV, SMP_CLUSTER="tcp://127.0.0.1:1"), capture_output=True,
                       text=True, timeout=60)
    assert _one_line(r, Exit.BADINPUT).startswith("smp: --cluster tcp://127.0.0.1:1: cannot")


# --- the same experiment, locally and on the cluster ---------------------------------------

def _strip_timing_csv(path: Path) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in rows]


def _strip_timing_table(text: str) -> list[str]:
    lines = text.splitlines()
    cut = lines[0].index("faults/s")            # the timing columns are the last two
    return [line[:cut] for line in lines]


def _runs(out: Path) -> list[dict]:
    doc = json.loads((out / "experiment.json").read_text())
    runs = []
    for c in doc["cells"]:
        for r in c["runs"]:
            r = {k: v for k, v in r.items() if k not in TIMING}
            r["run_dir"] = str(Path(r["run_dir"]).relative_to(out.name))   # --out NAME
            runs.append(dict(r, cell=c["config"]))
    return runs


def test_a_cluster_experiment_gives_the_local_table_and_the_same_runs(cluster, tmp_path):
    _c, client = cluster
    _workers(client)
    matrix = [str(SYNTH), "-c", "steal=ptp,pv", "-c", "steal=none", "--seeds", "2",
              "--lockstep", "-o", "hist=on", "-q"]
    here = smp("experiment", *matrix, "--jobs", "2", "--out", "local", cwd=tmp_path)
    assert here.returncode == 0, here.stderr
    # every file comes back through Dask (as from workers that do not see --out)
    there = _sweep("experiment", *matrix, "--out", "cluster", "--cluster",
                   _c.scheduler_address, cwd=tmp_path, env={"SMP_CLUSTER_SHARED": "no"})
    stdout, stderr = there.communicate(timeout=120)
    assert there.returncode == 0, stderr
    assert stderr == ""
    a, b = tmp_path / "local", tmp_path / "cluster"
    assert _strip_timing_table(stdout.split("\n", 1)[1]) == \
        _strip_timing_table(here.stdout.split("\n", 1)[1])
    assert (a / "results.txt").read_text().count("\n") == 4
    assert _strip_timing_table((b / "results.txt").read_text()) == \
        _strip_timing_table((a / "results.txt").read_text())
    assert _strip_timing_csv(b / "results.csv") == _strip_timing_csv(a / "results.csv")
    assert _runs(b) == _runs(a)
    assert json.loads((b / "experiment.json").read_text())["cluster"] == _c.scheduler_address
    dirs = sorted(p.relative_to(a) for p in (a / "runs").glob("*/*/*"))
    assert len(dirs) == 4
    assert sorted(p.relative_to(b) for p in (b / "runs").glob("*/*/*")) == dirs
    for d in dirs:
        names = sorted(p.name for p in (a / d).iterdir())
        assert sorted(p.name for p in (b / d).iterdir()) == names
        assert {"console.log", "hist.log", "events.bin", "lockstat.json"} <= set(names)
        for name in ("console.log", "hist.log", "events.bin", "lockstat.json",
                     "catalogue.json"):
            assert (b / d / name).read_bytes() == (a / d / name).read_bytes(), (d, name)
        assert (a / d / "console.log").read_text().count("synth: pid") == 8
        sa, sb = (json.loads((x / d / "summary.json").read_text()) for x in (a, b))
        assert sb["kernel_counters"] == sa["kernel_counters"]
        assert (sb["status"], sb["seed"]) == (sa["status"], sa["seed"])
        ma, mb = (json.loads((x / d / "manifest.json").read_text()) for x in (a, b))
        for key in ("mode", "seed", "kernel", "machine", "overrides"):
            assert mb[key] == ma[key], key
        assert mb["load_script"]["text"] == ma["load_script"]["text"]


def test_a_run_returns_small_files_plain_and_big_ones_compressed_or_in_place(tmp_path):
    import zlib

    from smp.tools.cluster import run_task

    d = tmp_path / "out" / "run"
    spec = {"args": ["run", "INPUT", "--lockstep", "--seed", "3", "-o", "hist=on", "--out",
                     "", "--quiet"],
            "inputs": {"0/synthetic.toml": SYNTH.read_bytes()},
            "arg_inputs": {1: "0/synthetic.toml"},
            "out_index": 8, "run_dir": str(d), "probe": None}
    res = run_task(spec)
    assert res["returncode"] == 0, res["stderr"]
    assert sorted(res["packed"]) == ["events.bin", "hist.log"] and res["stayed"] == []
    assert {"console.log", "summary.json", "manifest.json", "lockstat.json",
            "catalogue.json"} <= set(res["files"])
    hist = zlib.decompress(res["packed"]["hist.log"])
    assert hist.count(b"\n") > 0
    # where the worker sees the client's directory, the big files stay there
    probe = tmp_path / "out" / ".probe"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("token")
    res2 = run_task(dict(spec, probe=[str(probe), "token"]))
    assert res2["packed"] == {} and sorted(res2["stayed"]) == ["events.bin", "hist.log"]
    assert (d / "hist.log").read_bytes() == hist
    assert res2["files"]["console.log"] == res["files"]["console.log"]
    assert sorted(p.name for p in d.iterdir()) == ["events.bin", "hist.log"]


# --- faults -------------------------------------------------------------------------------

def test_a_worker_killed_under_a_run_gets_the_run_retried_elsewhere(cluster, tmp_path):
    _c, client = cluster
    workers = _workers(client)
    script = tmp_path / "busy.toml"
    script.write_text(BUSY.format(limit="2s"))
    p = _sweep("experiment", str(script), "-c", "steal=none", "--seeds", "2", "--out", "exp",
               "-q", cwd=tmp_path, env={"SMP_CLUSTER": _c.scheduler_address})
    try:
        wait_for(lambda: len(_runs_under(workers.values())) == 2, what="a run per worker")
        victim_run = _runs_under(workers.values())[0]
        wait_for(lambda: segments_of(victim_run.pid), what="the run to boot")
        victim = victim_run.parent()
        victim.kill()                                  # SIGKILL: the worker dies mid-run
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == Exit.OK, stderr
    wait_for(lambda: gone(victim_run), timeout=30, what="the orphaned run to stop")
    assert not segments_of(victim_run.pid)
    doc = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    runs = doc["cells"][0]["runs"]
    assert [r["status"] for r in runs] == ["timeout", "timeout"], runs
    retried = [r for r in runs if r.get("retries")]
    assert len(retried) == 1, runs
    dead = [a for a, pid in workers.items() if pid == victim.pid]
    assert retried[0]["retries"] == 1 and retried[0]["workers"][0] == dead[0]
    assert len(retried[0]["workers"]) == 2
    assert "attempt 2 on" in stderr and "was lost with its worker" in stderr, stderr
    assert "Traceback" not in stderr
    _workers(client)                                   # the nanny brought it back


def test_ctrl_c_to_the_client_stops_every_run_on_every_worker(cluster, tmp_path):
    _c, client = cluster
    workers = _workers(client)
    script = tmp_path / "busy.toml"
    script.write_text(BUSY.format(limit="60s"))
    p = _sweep("experiment", str(script), "-c", "steal=none", "--seeds", "4", "--out", "exp",
               "-q", "--cluster", _c.scheduler_address, cwd=tmp_path)
    try:
        wait_for(lambda: len(_runs_under(workers.values())) == 2, what="a run per worker")
        runs = _runs_under(workers.values())
        wait_for(lambda: all(segments_of(r.pid) for r in runs), what="booted runs")
        cpus = [c for r in runs for c in r.children(recursive=True)]
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == Exit.INTERRUPTED, stderr
    assert "stopped by SIGINT" in stderr and "Traceback" not in stderr
    # by the time the client has exited, no run and no CPU of one is left, nor a segment
    assert not [r for r in runs + cpus if not gone(r)]
    assert not _runs_under(workers.values())
    assert not [s for r in runs for s in segments_of(r.pid)]
    doc = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert doc["interrupted"] == "SIGINT"
    assert [r["status"] for r in doc["cells"][0]["runs"]] == ["interrupted", "interrupted"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(addr: str) -> bool:
    host, port = addr.removeprefix("tcp://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_scheduler_lost_mid_sweep_stops_the_sweep_with_what_finished(tmp_path):
    """A scheduler of its own (``dask scheduler``), killed under a running sweep."""
    addr = f"tcp://127.0.0.1:{_free_port()}"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, env=ENV)
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                              "127.0.0.1", "--port", addr.rsplit(":", 1)[1],
                              "--dashboard-address", ":0"], **quiet)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", addr,
                               "--nthreads", "1", "--resources", "cpus=2", "--no-nanny",
                               "--dashboard-address", ":0"], **quiet)
    script = tmp_path / "busy.toml"
    script.write_text(BUSY.format(limit="60s"))
    p = None
    try:
        # the sweep's 2 s connect timeout starts now: the scheduler must be listening first
        wait_for(lambda: _listening(addr), what="the scheduler to listen")
        p = _sweep("experiment", str(script), "-c", "steal=none", "--seeds", "2", "--out",
                   "exp", "-q", "--cluster", addr, cwd=tmp_path,
                   env={"SMP_CLUSTER_TIMEOUT": "2"})
        wait_for(lambda: _runs_under([worker.pid]), what="a run on the worker")
        run = _runs_under([worker.pid])[0]
        wait_for(lambda: segments_of(run.pid), what="the run to boot")
        sched.kill()
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == Exit.INTERRUPTED, stderr
        lines = [x for x in stderr.strip().splitlines()     # the worker may come later
                 if x != f"smp: cluster: waiting for a Dask worker at {addr}"]
        assert lines == [f"smp: experiment stopped by the loss of the Dask scheduler at "
                         f"{addr}: the table holds the runs that finished"], stderr
        doc = json.loads((tmp_path / "exp" / "experiment.json").read_text())
        assert doc["interrupted"] == f"the loss of the Dask scheduler at {addr}"
        assert [r["status"] for r in doc["cells"][0]["runs"]] == ["interrupted"]
    finally:
        for q in (p, sched, worker):
            if q is not None and q.poll() is None:
                q.kill()
                q.wait(30)
    # the worker is gone: its run went with it
    wait_for(lambda: gone(run), timeout=30, what="the run to stop")
    assert not segments_of(run.pid)


def test_explore_on_the_cluster_stops_at_the_first_failure_and_writes_the_reproducer(
        cluster, tmp_path):
    _c, client = cluster
    _workers(client)
    r = smp("explore", str(FIX / "steal.toml"), "-k", "netbsd-2000-steal-localflush",
            "--seeds", "8", "--fail", "pmap_alloc_ptp:p=0.5", "--out", "x", "-q",
            "--cluster", _c.scheduler_address, cwd=tmp_path)
    assert r.returncode == Exit.FOUND, r.stdout + r.stderr
    ex = json.loads((tmp_path / "x" / "explore.json").read_text())
    assert ex["cluster"] == _c.scheduler_address
    # the seeds before the first failing one may all pass; after it come back only the
    # other worker's run and at most one more each that a freed worker took before the
    # cancel reached the scheduler -- never the whole list
    out = ex["outcomes"]
    first = next(i for i, o in enumerate(out) if o["verdict"] != "ok")
    assert len(out) - first - 1 <= 3 and len(out) < 8, out
    rep = json.loads((tmp_path / "x" / "reproducer.json").read_text())
    assert rep["verdict"] == "stale-tlb"
    assert f"reproduce:     smp run --replay {rep['run_dir']}" in r.stdout
    again = smp("run", "--replay", rep["run_dir"], "--out", "again", "-q", cwd=tmp_path)
    assert again.returncode == 0 and "identical" in again.stdout, again.stdout + again.stderr


@pytest.mark.slow
def test_explore_all_seeds_on_the_cluster_agrees_with_the_local_pool(cluster, tmp_path):
    _c, client = cluster
    _workers(client)
    args = [str(FIX / "steal.toml"), "-k", "netbsd-2000-steal-localflush", "--seeds", "12",
            "--fail", "pmap_alloc_ptp:p=0.5", "--all", "-q"]
    here = smp("explore", *args, "--jobs", "2", "--out", "local", cwd=tmp_path, timeout=600)
    there = smp("explore", *args, "--out", "cluster", "--cluster", _c.scheduler_address,
                cwd=tmp_path, timeout=600)
    assert here.returncode == there.returncode == Exit.FOUND, there.stderr
    a, b = (json.loads((tmp_path / d / "explore.json").read_text())["outcomes"]
            for d in ("local", "cluster"))
    assert [(o["seed"], o["verdict"], o["points"], o["detail"]) for o in b] == \
        [(o["seed"], o["verdict"], o["points"], o["detail"]) for o in a]
