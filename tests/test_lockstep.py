"""Lockstep mode, replay and schedule exploration (issue 7), end to end through `python -m smp`.

* same seed => byte-identical console.log, hist.log, events.bin and lockstat.json, by two
  runs and by `smp run --replay` (program and synthetic loads, 2 and 4 CPUs, random and pct);
* different seeds => different interleavings;
* `smp explore` finds the stale TLB entry that a PTP steal without a cross-CPU shootdown
  leaves behind (netbsd-2000-steal-localflush), and the reproducer replays to it; with the
  shootdown on, the same seeds are clean;
* a deliberate lock-order reversal is reported as a deadlock naming the CPUs and locks, by
  `smp run --lockstep` (exit 5) and by `smp explore` (verdict deadlock, exit 8);
* the bugs these tests found stay pinned by their tests: runs ending by a halt, both pct
  defects, and a load-compiler/uvm_map bug the lockstep benchmark ran into.

Loads live in tests/fixtures/lockstep/.  Every run is small (about a second); runs that do
not depend on each other go two at a time (the host has two cores, and a lockstep machine
keeps about one of them busy).
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import smp

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures" / "lockstep"
COMPARED = ("console.log", "hist.log", "events.bin", "lockstat.json")
STALE = "stale TLB entry"


def smp_all(*commands: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Several independent `smp` commands, two at a time; results in order."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda c: smp(*c, cwd=cwd), commands))


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def outputs(run: Path) -> dict[str, bytes]:
    return {n: (run / n).read_bytes() for n in COMPARED if (run / n).exists()}


def digest(run: Path) -> str:
    h = hashlib.sha256()
    for name, data in sorted(outputs(run).items()):
        h.update(name.encode() + b"\0" + data)
    return h.hexdigest()


def boot_lines(console: bytes) -> list[str]:
    """The boot console's lines (smp.kern.autoconf): the boot, up to where root is, and
    the shutdown at the end."""
    lines = console.decode().splitlines()
    end = next(i for i, x in enumerate(lines) if x.endswith("root on wd0a dumps on wd0b"))
    assert lines[-1].endswith("cpu0: rebooting..."), lines[-2:]
    return lines[:end + 1] + lines[-2:]


def first_line_with(run: Path, needle: str) -> str:
    return next((x for x in (run / "console.log").read_text().splitlines() if needle in x), "")


# -- same seed, same bytes ------------------------------------------------------------------

@pytest.mark.parametrize("load, ncpu", [("program", 2), ("program", 4),
                                        ("synthetic", 2), ("synthetic", 4)])
def test_same_seed_twice_gives_byte_identical_logs_and_replay_agrees(tmp_path, load, ncpu):
    # summary.json is not compared: it holds host figures (CPU time, RSS); the halt at the
    # end is covered by test_after_a_virtual_time_limit_no_cpu_runs_on_and_the_run_is_...
    fixture = str(FIX / f"{load}.toml")
    args = ["run", fixture, "--lockstep", "--seed", "6", "--cpus", str(ncpu),
            "-o", "hist=on", "-q"]
    a, b = tmp_path / "a", tmp_path / "b"
    ra, rb = smp_all(args + ["--out", str(a)], args + ["--out", str(b)], cwd=tmp_path)
    assert ra.returncode == 0 and rb.returncode == 0, ra.stderr + rb.stderr
    s = summary(a)
    assert s["status"] == "done" and s["ncpu"] == ncpu
    assert s["schedule"]["strategy"] == "random" and s["schedule"]["seed"] == 6
    assert s["schedule"]["switches"] > 0 and s["trace"]["dropped"] == 0
    oa, ob = outputs(a), outputs(b)
    assert sorted(oa) == sorted(COMPARED)
    assert oa["events.bin"] and oa["hist.log"] and oa["lockstat.json"]
    if load == "synthetic":
        assert oa["console.log"].count(b"synth: pid") == 2 * 4
    for name in COMPARED:
        assert oa[name] == ob[name], f"{name} differs between two runs of seed 6"
    c = tmp_path / "c"
    r = smp("run", "--replay", str(a), "--out", str(c), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"replay of {a}: identical" in r.stdout
    assert outputs(c) == oa
    # the boot console: on CPU 0 at virtual time 0, one cpuN line per CPU, the same in
    # every run and replay of the seed
    boot = boot_lines(oa["console.log"])
    assert boot[0] == "[    0.000000] cpu0: Copyright (c) 1996, 1997, 1998, 1999, 2000"
    assert sum("at mainbus0: apid" in x for x in boot) == ncpu
    assert boot == boot_lines(ob["console.log"]) == boot_lines(outputs(c)["console.log"])
    m = json.loads((c / "manifest.json").read_text())
    assert m["mode"] == "lockstep" and m["seed"] == 6 and m["machine"]["ncpu"] == ncpu


def test_different_seeds_give_different_interleavings(tmp_path):
    runs = [tmp_path / f"seed{s}" for s in range(3)]
    results = smp_all(*[["run", str(FIX / "program.toml"), "--lockstep", "--seed", str(s),
                         "-o", "hist=on", "-q", "--out", str(d)] for s, d in enumerate(runs)],
                      cwd=tmp_path)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    # the program load makes no random choices: whatever differs is the schedule
    hists = {(d / "hist.log").read_bytes() for d in runs}
    schedules = {(summary(d)["schedule"]["points"], summary(d)["schedule"]["switches"])
                 for d in runs}
    assert len(hists) >= 2, "three seeds, one interleaving"
    assert len(schedules) >= 2
    for d in runs:                                    # every interleaving does all the work
        c = summary(d)["kernel_counters"]["processes"]
        assert c["started"] == c["exited"] == 4


def test_pct_strategy_is_deterministic_per_seed(tmp_path):
    args = ["run", str(FIX / "synthetic.toml"), "--lockstep", "--strategy", "pct",
            "--seed", "4", "-o", "hist=on", "-q"]
    a, b = tmp_path / "a", tmp_path / "b"
    ra, rb = smp_all(args + ["--out", str(a)], args + ["--out", str(b)], cwd=tmp_path)
    assert ra.returncode == 0 and rb.returncode == 0, ra.stderr + rb.stderr
    assert outputs(a) == outputs(b)
    assert summary(a)["schedule"]["strategy"] == "pct"
    assert json.loads((a / "manifest.json").read_text())["strategy"] == "pct"
    r = smp("run", "--replay", str(a), "--out", str(tmp_path / "c"), "-q", cwd=tmp_path)
    assert r.returncode == 0 and "identical" in r.stdout, r.stdout + r.stderr


def test_a_panic_in_lockstep_mode_replays_identically(tmp_path):
    a = tmp_path / "a"
    r = smp("run", str(FIX / "panic.toml"), "--lockstep", "--seed", "2", "--out", str(a), "-q",
            cwd=tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert summary(a)["status"] == "panic"
    assert ": panic: injected panic in pid 100 at iteration 150" in \
        (a / "console.log").read_text()
    r = smp("run", "--replay", str(a), "--out", str(tmp_path / "b"), "-q", cwd=tmp_path)
    assert r.returncode == 0 and "identical" in r.stdout, r.stdout + r.stderr


def test_the_time_limit_of_a_lockstep_run_is_virtual_time(tmp_path):
    a = tmp_path / "a"
    r = smp("run", str(FIX / "busy.toml"), "--lockstep", "--seed", "3", "--cpus", "2",
            "--time-limit", "5ms", "--out", str(a), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = summary(a)
    assert s["status"] == "timeout" and "virtual time limit of 0.005 s" in s["message"]
    # past the limit the CPUs finish the fault they are in (no new operation, no new
    # thread) and the machine stops when every CPU is outside the kernel
    assert 5_000_000 <= s["schedule"]["virtual_ns"] < 6_000_000
    assert json.loads((a / "lockstat.json").read_text())["elapsed_ns"] == \
        s["schedule"]["virtual_ns"]
    # (replaying a time-limited run: test_after_a_virtual_time_limit_no_cpu_runs_on_...)


def test_free_mode_replay_reruns_but_does_not_compare(tmp_path):
    a = tmp_path / "a"
    r = smp("run", str(FIX / "synthetic.toml"), "--out", str(a), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((a / "manifest.json").read_text())["mode"] == "free"
    r = smp("run", "--replay", str(a), "--out", str(tmp_path / "b"), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "free-mode interleavings are the host's" in r.stdout
    assert summary(tmp_path / "b")["status"] == "done"


@pytest.mark.parametrize("args, message", [
    (["run", "--replay", "nowhere"], "no such run directory"),
    (["explore", str(FIX / "synthetic.toml"), "--seeds", "0"], "--seeds 0"),
    (["explore", str(FIX / "synthetic.toml"), "--seeds", "1", "--fail", "bogus"],
     "--fail 'bogus'"),
    (["explore", "no-such-load", "--seeds", "1"], "no-such-load"),
])
def test_bad_replay_and_explore_input_is_one_line_and_exit_2(tmp_path, args, message):
    r = smp(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


# -- exploration: the stale TLB entry of the 2000 steal code -----------------------------------

def test_explore_finds_the_stale_tlb_of_a_steal_without_shootdown_and_replays_it(tmp_path):
    r = smp("explore", str(FIX / "steal.toml"), "-k", "netbsd-2000-steal-localflush",
            "--seeds", "8", "--fail", "pmap_alloc_ptp:p=0.5", "--jobs", "2", "--out", "x", "-q",
            cwd=tmp_path)
    assert r.returncode == 8, r.stdout + r.stderr
    rep = json.loads((tmp_path / "x" / "reproducer.json").read_text())
    assert rep["verdict"] == "stale-tlb" and 0 <= rep["seed"] < 8
    assert rep["strategy"] == "random" and rep["scheduling_points"] > 0
    assert STALE in rep["detail"]
    assert rep["manifest"]["kernel"]["shootdown_on_steal"] is False
    assert rep["manifest"]["failpoints"] == ["pmap_alloc_ptp:p=0.5"]
    assert f"first failure: seed {rep['seed']} (stale-tlb)" in r.stdout
    assert f"reproduce:     smp run --replay {rep['run_dir']}" in r.stdout
    assert rep["replay"] == f"smp run --replay {rep['run_dir']}"
    found = tmp_path / rep["run_dir"]
    assert first_line_with(found, STALE) == rep["detail"]
    assert summary(found)["kernel_counters"]["counters"]["stale_tlb"] > 0
    r = smp("run", "--replay", rep["run_dir"], "--out", "again", "-q", cwd=tmp_path)
    assert r.returncode == 0 and "identical" in r.stdout, r.stdout + r.stderr
    assert first_line_with(tmp_path / "again", STALE) == rep["detail"]


@pytest.mark.parametrize("seeds", [3, pytest.param(8, marks=pytest.mark.slow)])
def test_with_shootdown_on_steal_the_same_seeds_are_clean(tmp_path, seeds):
    r = smp("explore", str(FIX / "steal.toml"), "-k", "netbsd-2001-i386mp",
            "--seeds", str(seeds), "--fail", "pmap_alloc_ptp:p=0.5", "--jobs", "2", "--out", "x",
            "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"outcomes: ok {seeds}" in r.stdout
    assert not (tmp_path / "x" / "reproducer.json").exists()
    ex = json.loads((tmp_path / "x" / "explore.json").read_text())
    assert [o["seed"] for o in ex["outcomes"]] == list(range(seeds))
    steals = 0
    for o in ex["outcomes"]:
        c = summary(tmp_path / o["run_dir"])["kernel_counters"]["counters"]
        assert c["stale_tlb"] == 0
        steals += c["ptp_steals"]
    assert steals > 0, "no PTP was stolen: the seeds tested nothing"


# -- the lock-order bug -------------------------------------------------------------------------

def _deadlock_cycle(s: dict) -> dict[int, tuple[str, list[str]]]:
    return {c["cpu"]: (c["spinning_on"], [h["name"] for h in c["held"]]) for c in s["cpus"]}


def test_a_lock_order_bug_is_reported_as_a_deadlock_naming_cpus_and_locks(tmp_path):
    a = tmp_path / "a"
    r = smp("run", str(FIX / "deadlock.toml"), "--lockstep", "--seed", "1", "-o", "biglock=off",
            "--out", str(a), "-q", cwd=tmp_path)
    assert r.returncode == 5, r.stdout + r.stderr
    s = summary(a)
    assert s["status"] == "deadlock" and s["exit_code"] == 5
    m = re.fullmatch(r"deadlock: cpu(\d) spins on (bucket\[\d\]), cpu(\d) spins on (bucket\[\d\])",
                     s["message"])
    assert m, s["message"]
    assert {m[1], m[3]} == {"0", "1"} and {m[2], m[4]} == {"bucket[0]", "bucket[1]"}
    assert f"status: deadlock ({s['message']})" in r.stdout
    # a cycle: each CPU spins on the lock the other one holds
    cyc = _deadlock_cycle(s)
    assert cyc[0][0] in cyc[1][1] and cyc[1][0] in cyc[0][1], cyc
    assert re.search(r"cpu0: halted \(spinning on bucket\[\d\]\)", r.stdout)
    assert re.search(r"holds bucket\[\d\] \(synth_bucket, excl\) taken in "
                     r"SyntheticLoad._both_buckets", r.stdout)
    r = smp("run", "--replay", str(a), "--out", str(tmp_path / "b"), "-q", cwd=tmp_path)
    assert r.returncode == 0 and "identical" in r.stdout, r.stdout + r.stderr


def test_explore_reports_the_lock_order_bug_as_deadlock_with_exit_8(tmp_path):
    r = smp("explore", str(FIX / "deadlock.toml"), "-o", "biglock=off", "--seeds", "2",
            "--jobs", "2", "--out", "x", "-q", cwd=tmp_path)
    assert r.returncode == 8, r.stdout + r.stderr
    rep = json.loads((tmp_path / "x" / "reproducer.json").read_text())
    assert rep["verdict"] == "deadlock" and rep["seed"] == 0
    assert re.fullmatch(r"deadlock: cpu\d spins on bucket\[\d\], cpu\d spins on bucket\[\d\]",
                        rep["detail"]), rep["detail"]
    assert "first failure: seed 0 (deadlock): deadlock: cpu" in r.stdout
    assert rep["manifest"]["kernel"]["biglock"] is False
    r = smp("run", "--replay", rep["run_dir"], "--out", "again", "-q", cwd=tmp_path)
    assert r.returncode == 0 and "identical" in r.stdout, r.stdout + r.stderr
    assert summary(tmp_path / "again")["message"] == rep["detail"]


def test_the_big_lock_hides_the_lock_order_bug(tmp_path):
    a = tmp_path / "a"
    r = smp("run", str(FIX / "deadlock.toml"), "--lockstep", "--seed", "1", "--out", str(a),
            "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    load = summary(a)["kernel_counters"]["load"]
    assert load["counters_consistent"] and load["iterations_done"] == 2 * 500


# -- known bugs ---------------------------------------------------------------------------------

def test_after_a_virtual_time_limit_no_cpu_runs_on_and_the_run_is_byte_identical(tmp_path):
    runs = {seed: [tmp_path / f"s{seed}-{i}" for i in range(2)] for seed in (0, 1, 5)}
    results = smp_all(*[["run", str(FIX / "busy.toml"), "--lockstep", "--seed", str(seed),
                         "--cpus", "4", "--time-limit", "10ms", "-o", "hist=on", "-q",
                         "--out", str(d)] for seed, ds in runs.items() for d in ds],
                      cwd=tmp_path)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    for seed, ds in runs.items():
        for d in ds:
            s = summary(d)
            assert s["status"] == "timeout"
            # a CPU that was spinning when the limit struck was waiting for the turn: it must
            # stop there (or be the one that reached the limit, maybe taking a spinner's
            # turn by proxy), not resume and spin again ("machine halted while spinning")
            for c in s["cpus"]:
                if c["spinning_on"]:
                    assert ("(machine halted while waiting for the turn)" in c["text"]
                            or "(time limit reached)" in c["text"]), \
                        f"seed {seed}: cpu{c['cpu']} ran on after the halt: {c['text']}"
        assert digest(ds[0]) == digest(ds[1]), f"seed {seed}: two runs, two outcomes"


def test_pct_lets_the_target_of_a_tlb_shootdown_run(tmp_path):
    a = tmp_path / "a"
    r = smp("run", str(FIX / "program.toml"), "--lockstep", "--strategy", "pct", "--seed", "0",
            "--time-limit", "200ms", "--out", str(a), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert summary(a)["status"] == "done", summary(a)["message"]


def test_pct_exploration_finds_the_lock_order_deadlock(tmp_path):
    r = smp("explore", str(FIX / "deadlock.toml"), "-o", "biglock=off", "--strategy", "pct",
            "--seeds", "4", "--jobs", "2", "--out", "x", "-q", cwd=tmp_path)
    assert r.returncode == 8, r.stdout + r.stderr
    rep = json.loads((tmp_path / "x" / "reproducer.json").read_text())
    assert rep["verdict"] == "deadlock" and rep["strategy"] == "pct"


def test_a_region_mapped_again_after_munmap_faults_again(tmp_path):
    p = tmp_path / "remap.toml"
    p.write_text('''[run]
machine = "i386mp-2"
[[process]]
name = "remap"
program = [
  { op = "repeat", count = 3, body = [
      { op = "mmap", region = "heap", size = "64K" },
      { op = "touch", region = "heap", write = true },
      { op = "munmap", region = "heap" },
  ] },
]
''')
    out = tmp_path / "run"
    r = smp("run", str(p), "--lockstep", "--out", str(out), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "mmap of 16 pages failed" not in (out / "console.log").read_text()
    assert summary(out)["kernel_counters"]["counters"]["faults"] == 3 * 16
