"""``smp experiment``: a matrix of load scripts x kernel configurations x seeds, one table.

The matrix here is tiny -- one small fixture script (tests/fixtures/workloads/tiny.toml)
under two kernel configurations, one seed, two runs at a time -- so the whole file takes a
few seconds.  The experiment directory must hold results.csv (one row per cell), results.md
and results.txt (the printed table), experiment.json (schema 1) and every run directory, and
bad input must stop the experiment with exit status 2 and one line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import smp

from smp.rundir import format as fmt
from smp.tools.experiment import METRICS, parse_config

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "fixtures" / "workloads" / "tiny.toml"
CELLS = {"steal=ptp,pv": "ptp,pv", "steal=none": "none"}     # cell -> kernel.steal of its runs


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """Run the tiny matrix once; the tests below look at what it left."""
    cwd = tmp_path_factory.mktemp("experiment")
    out = cwd / "exp"
    r = smp("experiment", str(TINY), "-c", "steal=ptp,pv", "-c", "steal=none", "--seeds", "1",
            "--time-limit", "5s", "-o", "ncpu=2", "--jobs", "2", "--out", str(out), "-q",
            cwd=cwd)
    return r, out


def test_tiny_matrix_exits_0_and_prints_the_experiment_directory(experiment):
    r, out = experiment
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == str(out)
    assert "Traceback" not in r.stderr


def test_printed_table_has_a_header_with_units_and_a_row_per_cell(experiment):
    r, out = experiment
    table = r.stdout.splitlines()[1:]
    assert table[0].split()[:5] == ["load", "kernel", "config", "runs", "PTP"]
    assert "faults/s" in table[0] and "wall s" in table[0]
    assert set(table[1]) <= {"-", " "}
    rows = table[2:]
    assert len(rows) == len(CELLS)
    for row, cell in zip(rows, CELLS, strict=True):
        assert row.split()[:3] == ["tiny", cell, "1"]       # one run, and it finished
        assert "0/1" in row.split()                      # panics: none of one run
    assert (out / "results.txt").read_text().splitlines() == table


def test_results_csv_has_one_row_per_cell_with_median_min_max(experiment):
    _r, out = experiment
    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(row["load"], row["config"], row["seeds"]) for row in rows] == [
        ("tiny", cell, "1") for cell in CELLS]
    for row in rows:
        for m in METRICS:
            if m == "steal_share" and row[f"{m}_median"] == "":
                continue                                 # not counted by this kernel
            med, lo, hi = (float(row[f"{m}_{s}"]) for s in ("median", "min", "max"))
            assert lo <= med <= hi
            assert lo == hi                              # one seed
        assert int(row["panics"]) == 0 and float(row["stale_tlb_median"]) == 0
        assert int(row["runs_done"]) == 1 and int(row["runs_timeout"]) == 0
        assert float(row["faults_per_s_median"]) > 0 and float(row["wall_s_median"]) > 0


def test_results_md_is_a_markdown_table_with_a_row_per_cell(experiment):
    _r, out = experiment
    lines = (out / "results.md").read_text().splitlines()
    assert lines[0].startswith("| load | kernel config | runs | PTP steals |")
    assert lines[1].startswith("|---|")
    assert [line.split(" | ")[:2] for line in lines[2:]] == [["| tiny", c] for c in CELLS]


def test_experiment_json_has_schema_1_and_names_every_run_directory(experiment):
    _r, out = experiment
    doc = json.loads((out / "experiment.json").read_text())
    assert doc["schema"] == fmt.EXPERIMENT_SCHEMA
    assert doc["scripts"] == [str(TINY)] and doc["configs"] == list(CELLS)
    assert doc["seeds"] == 1 and doc["overrides"] == ["ncpu=2"] and doc["time_limit"] == "5s"
    assert [(c["load"], c["config"], c["overrides"]) for c in doc["cells"]] == [
        ("tiny", cell, [cell]) for cell in CELLS]
    for cell in doc["cells"]:
        [run] = cell["runs"]
        assert run["seed"] == 0 and run["status"] == "done" and run["exit_code"] == 0
        assert run["panics"] == 0 and run["stale_tlb"] == 0 and run["panic_message"] == ""
        run_dir = Path(run["run_dir"])
        assert run_dir.is_dir() and run_dir.is_relative_to(out / "runs" / "tiny")
        for name in ("manifest.json", "summary.json", "lockstat.json", "console.log"):
            assert (run_dir / name).is_file(), (run_dir, name)
        m = json.loads((run_dir / "manifest.json").read_text())
        assert m["kernel"]["steal"] == CELLS[cell["config"]]
        assert m["machine"]["ncpu"] == 2 and m["time_limit_s"] == 5
        assert m["overrides"] == [cell["config"], "ncpu=2"]
        s = json.loads((run_dir / "summary.json").read_text())
        assert s["status"] == run["status"] and s["seed"] == 0


def test_every_run_directory_is_under_runs_by_script_config_and_seed(experiment):
    _r, out = experiment
    dirs = sorted(p.relative_to(out).as_posix() for p in (out / "runs").glob("*/*/*"))
    assert dirs == ["runs/tiny/steal-none/seed0", "runs/tiny/steal-ptp+pv/seed0"]


def test_an_unknown_script_name_exits_2_with_one_line_before_anything_runs(tmp_path):
    out = tmp_path / "exp"
    r = smp("experiment", "no-such-load", "-c", "steal=none", "--seeds", "1", "--out",
            str(out), "-q", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("smp: no-such-load: no such load script")
    assert "Traceback" not in r.stderr and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["-c", "steal"], "--config 'steal': expected key=value pairs"),
    (["--seeds", "0"], "--seeds 0: expected at least 1"),
])
def test_bad_experiment_arguments_exit_2_with_one_line(tmp_path, args, message):
    r = smp("experiment", str(TINY), *args, "--out", str(tmp_path / "exp"), "-q", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr


def test_a_bad_override_exits_2_with_the_runs_message(tmp_path):
    r = smp("experiment", str(TINY), "-c", "steal=sometimes", "--seeds", "1",
            "--out", str(tmp_path / "exp"), "-q", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "unknown stealing path 'sometimes'" in lines[0]


@pytest.mark.parametrize("spec, overrides", [
    ("steal=ptp,pv", ["steal=ptp,pv"]),
    ("steal=none biglock=off", ["steal=none", "biglock=off"]),
    ("steal=none;biglock=off", ["steal=none", "biglock=off"]),
])
def test_a_config_cell_is_key_value_pairs(spec, overrides):
    assert parse_config(spec) == (" ".join(overrides), overrides)


# -- bugs found by these tests, fixed and kept as regressions ------------------------------------

def test_a_config_cell_may_separate_pairs_with_commas():
    assert parse_config("steal=none,biglock=off")[1] == ["steal=none", "biglock=off"]


def test_an_invalid_script_exits_2_with_one_clean_line_before_anything_runs(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[process]]\nprogram = [ { op = "fly" } ]\n')
    out = tmp_path / "exp"
    r = smp("experiment", str(bad), "-c", "steal=none", "--seeds", "1", "--out", str(out),
            "-q", cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert lines == [f"smp: {bad}: process[0].program[0].op: unknown operation 'fly' "
                     "(expected one of barrier, compute, duration, exec, exit, fork, kfree, "
                     "kmalloc, mlock, mmap, munlock, munmap, rawread, read, repeat, sleep, "
                     "touch, write)"]
    assert not out.exists()


def test_a_run_cut_off_by_its_time_limit_is_marked_and_kept_out_of_the_medians(tmp_path):
    """Runs that did not finish are results of a different kind: every output says how
    many there were, and no median rests on them."""
    slow = tmp_path / "slow.toml"
    slow.write_text('[run]\nmachine = "i386mp-2"\n\n[[process]]\nname = "t"\ncount = 2\n'
                    'program = [ { op = "mmap", region = "r", size = "64K" },\n'
                    '  { op = "repeat", count = 1000000, body = [\n'
                    '    { op = "touch", region = "r", write = true } ] } ]\n')
    out = tmp_path / "exp"
    r = smp("experiment", str(slow), str(TINY), "-c", "steal=none", "--seeds", "1",
            "--time-limit", "1s", "--jobs", "2", "--out", str(out), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    table = r.stdout.splitlines()
    [slow_row] = [x for x in table if x.startswith("slow ")]
    assert "0 of 1 done: 1 timeout" in slow_row
    assert slow_row.split("1 timeout")[1].split()[:3] == ["-", "-", "-"]  # no medians
    assert "medians are over the runs that finished" in table[-1]
    with (out / "results.csv").open(newline="") as f:
        rows = {row["load"]: row for row in csv.DictReader(f)}
    assert rows["slow"]["runs_timeout"] == "1" and rows["slow"]["runs_done"] == "0"
    assert rows["slow"]["ptp_steals_median"] == "" and rows["slow"]["faults_per_s_median"] == ""
    assert rows["tiny"]["runs_done"] == "1" and rows["tiny"]["faults_per_s_median"] != ""
    md = (out / "results.md").read_text()
    assert "| slow | steal=none | 0 of 1 done: 1 timeout |" in md
    doc = json.loads((out / "experiment.json").read_text())
    cell = next(c for c in doc["cells"] if c["load"] == "slow")
    assert cell["runs_by_status"] == {"timeout": 1}
    assert cell["runs"][0]["processes_alive"] == 2 and cell["runs"][0]["faults_per_s"] > 0


def test_a_sweep_writes_a_csv_whose_numbers_are_the_runs_own_and_a_picture(tmp_path):
    out = tmp_path / "exp"
    r = smp("experiment", str(TINY), "-c", "steal=ptp,pv", "-c", "steal=none", "--seeds", "1",
            "--time-limit", "8s", "-o", "ncpu=2", "--sweep", "physmem=8M,16M", "--jobs", "2",
            "--out", str(out), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    with (out / "sweep.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(x["physmem"], x["config"]) for x in rows] == [
        (v, c) for v in ("8M", "16M") for c in CELLS]
    for row in rows:
        [d] = (out / "runs" / f"physmem-{row['physmem']}" / "tiny").glob(
            f"{row['config'].replace('=', '-').replace(',', '+')}/seed0")
        s = json.loads((d / "summary.json").read_text())
        m = json.loads((d / "manifest.json").read_text())
        assert m["machine"]["physmem"] == {"8M": 8 << 20, "16M": 16 << 20}[row["physmem"]]
        c = s["kernel_counters"]["counters"]
        assert row["runs_done"] == ("1" if s["status"] == "done" else "0")
        if s["status"] == "done":
            assert float(row["ptp_steals_median"]) == c["ptp_steals"]
            assert float(row["pmfail_median"]) == c["pmfail_waits"]
            assert float(row["oom_kills_median"]) == c["oom_kills"]
            assert float(row["swapouts_median"]) == c["swapouts"]
        assert int(row["panics"]) == int(s["status"] == "panic")
    pictures = sorted(p.name for p in out.glob("sweep-*"))
    pytest.importorskip("matplotlib")
    assert pictures == ["sweep-tiny.png", "sweep-tiny.svg"]
    assert (out / "sweep-tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("spec, message", [
    ("physmem", "expected KEY=V1,V2"), ("nokey=1,2", "unknown key 'nokey'"),
    ("steal=none,ptp", "steal is what the kernel configurations compare"),
    ("physmem=8M,8M", "a value is given twice")])
def test_a_bad_sweep_is_one_line_and_exit_2(tmp_path, spec, message):
    r = smp("experiment", str(TINY), "--sweep", spec, "--out", str(tmp_path / "x"), "-q",
            cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


@pytest.mark.parametrize("statuses, code, line", [
    (["cpu-died", "no-summary"], 1, "2 of 2 runs failed (1 cpu-died, 1 no-summary)"),
    (["done", "cpu-died"], 0, "1 of 2 runs failed (1 cpu-died)"),
    (["panic", "invariant"], 0, None),
])
def test_runs_that_failed_are_counted_on_stderr_and_all_failed_exits_1(
        tmp_path, monkeypatch, capsys, statuses, code, line):
    """A run whose CPU died or that left no summary gives no answer: the experiment says
    how many on stderr, and when no run gave one its status is 1, not 0.  A panic or a
    DIAGNOSTIC violation is the kernel's answer, not a failure."""
    from smp import cli
    from smp.tools import experiment as X

    def fake_run(scripts, configs, seeds, out, **kw):
        out.mkdir(parents=True)
        cell = X.Cell(scripts[0], configs[0][0], configs[0][1], list(seeds))
        cell.results = [{"status": st, "seed": i, "run_dir": str(out / f"r{i}")}
                        for i, st in enumerate(statuses)]
        return [cell], ""

    monkeypatch.setattr(X, "run_experiment", fake_run)
    rc = cli.main(["experiment", str(TINY), "-c", "steal=none", "--seeds", "2", "-q",
                   "--out", str(tmp_path / "exp")])
    err = capsys.readouterr().err
    assert rc == code
    if line is None:
        assert "failed" not in err
    else:
        assert line in err and str(tmp_path / "exp") in err
