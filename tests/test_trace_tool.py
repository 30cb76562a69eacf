"""`smp trace`: re-rendering a run's binary records in console and UVMHIST style, merged
across CPUs, with filters, relative and delta stamps, per-template counts, text logs, and
clear errors for malformed input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from smp import cli
from smp.rundir import format as runfmt
from smp.rundir.format import REC_DTYPE, Catalogue

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "tests" / "fixtures" / "logs"

SMALL_LOAD = """\
[run]
machine = "i386mp-2"
kernel = "default"
time_limit = "60s"

[[process]]
name = "cc1"
count = 3
program = [
  { op = "mmap", region = "heap", size = "64K" },
  { op = "touch", region = "heap", write = true },
]
"""


def trace(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(["trace", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def make_run(d: Path, rows, *, shuffle: bool = True, dropped: int = 0) -> Path:
    """A run directory from (time_us, cpu, seq, msgid, call, args) rows; events.bin is
    written in the given (not necessarily merged) order, as several drains would."""
    cat = Catalogue(strings=["cc1", "pagedaemon"])
    cat.add("pmap_enter", "pmap %p va 0x%08x pa 0x%08x")                       # 0
    cat.add("pmap_steal_ptp", "stole PTP pa 0x%08x from pmap %p va 0x%08x")    # 1
    cat.add("", "pid %d (%s): mmap of %d pages failed: error %d")              # 2
    cat.add("uvm_fault", "(map=%p, vaddr=0x%x, ft=%d, at=%d)", "hist", "maphist")  # 3
    cat.add("uvm_pageout", "  <<SLEEPING>>", "hist", "pdhist")                # 4
    cat.add("uvm_pagefree", "freeing free page %p", "panic")                   # 5
    recs = np.zeros(len(rows), REC_DTYPE)
    for i, (t_us, cpu, seq, msgid, call, args) in enumerate(rows):
        recs[i]["time"], recs[i]["cpu"], recs[i]["seq"] = t_us * 1000, cpu, seq
        recs[i]["msgid"], recs[i]["call"] = msgid, call
        recs[i]["args"][: len(args)] = args
    d.mkdir(parents=True)
    runfmt.write_events(d / runfmt.EVENTS_FILE, recs[::-1] if shuffle else recs)
    cat.save(d / runfmt.CATALOGUE_FILE)
    (d / "summary.json").write_text(json.dumps({
        "schema": 1, "status": "done", "elapsed_s": 2.0,
        "trace": {"records": len(rows), "dropped": dropped}}))
    return d


ROWS = [  # time_us, cpu, seq, msgid, call, args
    (1000, 0, 0, 4, 1, []),
    (1500, 1, 0, 3, 1, [1, 0x8000000, 0, 2]),
    (1500, 0, 1, 0, 0, [0xC0D1E000, 0x8000000, 0x1A3C000]),   # same time: cpu0 first
    (1500, 0, 2, 2, 0, [104, 0, 512, 12]),                      # then by seq
    (2250, 1, 1, 1, 0, [0x1A3C000, 0xC0D1E000, 0x8400000]),
    (900000, 1, 2, 3, 2, [2, 0x8001000, 1, 2]),
    (1250000, 0, 3, 5, 0, [0x1000]),
]
CONSOLE = [
    "[    0.001500] cpu0: pmap_enter: pmap 0xc0d1e000 va 0x08000000 pa 0x01a3c000",
    "[    0.001500] cpu0: pid 104 (cc1): mmap of 512 pages failed: error 12",
    "[    0.002250] cpu1: pmap_steal_ptp: stole PTP pa 0x01a3c000 from pmap 0xc0d1e000 "
    "va 0x08400000",
    "[    1.250000] cpu0: panic: freeing free page 0x00001000",
]
HIST = [
    "000000.001000 uvm_pageout#1@0:   <<SLEEPING>>",
    "000000.001500 uvm_fault#1@1: (map=0x00000001, vaddr=0x8000000, ft=0, at=2)",
    "000000.900000 uvm_fault#2@1: (map=0x00000002, vaddr=0x8001000, ft=1, at=2)",
]


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path / "run", ROWS)


# ---------------------------------------------------------------- rendering


def test_console_records_merged_across_cpus_in_time_then_cpu_then_seq_order(run, capsys):
    rc, out, err = trace(capsys, run)
    assert (rc, err) == (0, "")
    assert out.splitlines() == CONSOLE


def test_hist_style_renders_uvmhist_records_as_vmstat_does(run, capsys):
    rc, out, _ = trace(capsys, run, "--hist")
    assert rc == 0 and out.splitlines() == HIST
    rc, out, _ = trace(capsys, run, "--hist", "-H", "pdhist")
    assert out.splitlines() == HIST[:1]
    # --all: every record, here in UVMHIST style (printf records have call number 0); at
    # 1.5 ms cpu0's two records come before cpu1's
    rc, out, _ = trace(capsys, run, "--hist", "--all")
    lines = out.splitlines()
    assert len(lines) == 7 and lines[1:4] == [
        "000000.001500 pmap_enter#0@0: pmap 0xc0d1e000 va 0x08000000 pa 0x01a3c000",
        "000000.001500 #0@0: pid 104 (cc1): mmap of 512 pages failed: error 12",
        HIST[1]]


def test_all_merges_both_logs_each_line_in_its_own_style(run, capsys):
    rc, out, _ = trace(capsys, run, "--all")
    assert out.splitlines() == [HIST[0], CONSOLE[0], CONSOLE[1], HIST[1], CONSOLE[2], HIST[2],
                                CONSOLE[3]]


def test_filters_cpu_function_message_regex_and_time_window(run, capsys):
    assert trace(capsys, run, "--cpu", "1")[1].splitlines() == CONSOLE[2:3]
    assert trace(capsys, run, "--cpu", "0-1", "-F", "pmap_*")[1].splitlines() == \
        [CONSOLE[0], CONSOLE[2]]
    assert trace(capsys, run, "-M", "mmap of")[1].splitlines() == CONSOLE[1:2]
    assert trace(capsys, run, "-e", r"0xc0d1e000 va 0x0800")[1].splitlines() == CONSOLE[:1]
    assert trace(capsys, run, "-e", "pmap", "-v")[1].splitlines() == [CONSOLE[1], CONSOLE[3]]
    assert trace(capsys, run, "--from", "1.5ms", "--to", "1s")[1].splitlines() == CONSOLE[:3]
    assert trace(capsys, run, "--from", "2")[1] == ""
    assert trace(capsys, run, "--hist", "--from", "0.5")[1].splitlines() == HIST[2:]


def test_relative_and_delta_timestamps(run, capsys):
    rc, out, _ = trace(capsys, run, "-r", "--delta")
    assert out.splitlines() == [
        "[    0.000000] (+0.000000) cpu0: pmap_enter: pmap 0xc0d1e000 va 0x08000000 "
        "pa 0x01a3c000",
        "[    0.000000] (+0.000000) cpu0: pid 104 (cc1): mmap of 512 pages failed: error 12",
        "[    0.000750] (+0.000750) cpu1: pmap_steal_ptp: stole PTP pa 0x01a3c000 from pmap "
        "0xc0d1e000 va 0x08400000",
        "[    1.248500] (+1.247750) cpu0: panic: freeing free page 0x00001000",
    ]
    rc, out, _ = trace(capsys, run, "--hist", "--delta")
    assert out.splitlines()[2] == ("000000.900000 (+0.898500) uvm_fault#2@1: (map=0x00000002, "
                                   "vaddr=0x8001000, ft=1, at=2)")


def test_stats_counts_per_template(run, capsys):
    rc, out, _ = trace(capsys, run, "--stats", "--all", "--json")
    d = json.loads(out)
    assert d["schema"] == 1 and d["records"] == 7 and d["duration_s"] == 2.0
    counts = {r["template"]: (r["count"], r["first_s"], r["last_s"]) for r in d["rows"]}
    assert counts["[maphist] uvm_fault: (map=%p, vaddr=0x%x, ft=%d, at=%d)"] == (2, 0.0015, 0.9)
    assert counts["panic: freeing free page %p"] == (1, 1.25, 1.25)
    assert d["rows"][0]["count"] == 2 and d["rows"][0]["rate_per_s"] == 1.0
    rc, out, _ = trace(capsys, run, "--stats", "--per-cpu")
    head, *rows = out.splitlines()[1:]
    assert head.split() == ["count", "%", "/s", "first_s", "last_s", "cpu0", "cpu1",
                            "template"]
    assert len(rows) == 4 and all(r.split()[0] == "1" for r in rows)


def test_dropped_records_are_reported_on_stderr(tmp_path, capsys):
    r = make_run(tmp_path / "run", ROWS, dropped=3)
    rc, out, err = trace(capsys, r)
    assert rc == 0 and err == f"smp trace: {r}: 3 trace records dropped (ring full)\n"


def test_hints_when_the_chosen_style_has_no_records(tmp_path, capsys):
    only_console = make_run(tmp_path / "c", [r for r in ROWS if r[3] not in (3, 4)])
    rc, out, err = trace(capsys, only_console, "--hist")
    assert (rc, out) == (0, "") and "no UVMHIST records" in err and "hist=on" in err
    only_hist = make_run(tmp_path / "h", [r for r in ROWS if r[3] in (3, 4)])
    rc, out, err = trace(capsys, only_hist)
    assert (rc, out) == (0, "") and "3 UVMHIST records (--hist)" in err


def test_old_run_renders_from_events_and_catalogue_alone(run, capsys):
    # no console.log, no manifest: the records and their catalogue are enough
    assert not (run / "console.log").exists() and not (run / "manifest.json").exists()
    assert trace(capsys, run / "events.bin")[1].splitlines() == CONSOLE


# ---------------------------------------------------------------- selections and suspect input


def test_a_cpu_or_function_that_cannot_match_is_said_on_stderr(run, capsys):
    rc, out, err = trace(capsys, run, "--cpu", "2-3")
    assert (rc, out) == (0, "")
    assert err == (f"smp trace: --cpu 2-3: {run} has lines from CPUs 0-1 only: nothing can "
                   f"match\n")
    # one CPU of the list exists: its lines are shown, the other is named
    rc, out, err = trace(capsys, run, "--cpu", "1,7")
    assert out.splitlines() == [CONSOLE[2]]
    assert err.endswith("has lines from CPUs 0-1 only: no line from CPU 7\n")
    rc, out, err = trace(capsys, run, "-F", "pmap_stael_ptp,pmap_enter")
    assert out.splitlines() == [CONSOLE[0]]
    assert err == (f"smp trace: -F pmap_stael_ptp: no message of {run} comes from a function "
                   f"of that name (functions: pmap_enter, pmap_steal_ptp, uvm_fault, "
                   f"uvm_pagefree, uvm_pageout)\n")
    rc, out, err = trace(capsys, run, "--hist", "-H", "pdhsit")
    assert "-H pdhsit: no UVMHIST history of that name" in err and "maphist, pdhist" in err
    # a text log without CPU prefixes cannot match any --cpu
    rc, out, err = trace(capsys, LOGS / "dmesg-netbsd9.log", "--cpu", "0")
    assert (rc, out) == (0, "") and "has no CPU column" in err
    # filters that match say nothing
    rc, out, err = trace(capsys, run, "--cpu", "0", "-F", "pmap_*")
    assert err == "" and len(out.splitlines()) == 1
    # each filter can match, but not together: the empty result is said, with the filters
    rc, out, err = trace(capsys, run, "--cpu", "0", "-F", "pmap_steal_ptp")
    assert (rc, out) == (0, "")
    assert err == (f"smp trace: {run}: no line matches the selection (--cpu 0 "
                   f"-F pmap_steal_ptp)\n")


def test_a_run_without_events_says_so_and_points_at_console_log(run, capsys):
    (run / "console.log").write_text("\n".join(CONSOLE) + "\n")
    (run / "events.bin").unlink()
    rc, out, err = trace(capsys, run)
    assert rc == 0 and out.splitlines() == CONSOLE
    assert err == (f"smp trace: {run / 'events.bin'}: missing (the run did not finish writing "
                   f"its records?): showing {run / 'console.log'} as a text log, templates "
                   f"mined\n")
    rc, out, err = trace(capsys, run, "--hist")
    assert (rc, out) == (2, "") and len(err.splitlines()) == 1
    assert err.startswith(f"smp: {run / 'events.bin'}: missing: --hist") and \
        f"smp trace {run / 'console.log'}" in err


# ---------------------------------------------------------------- text logs


def test_text_log_stats_and_relative_stamps(capsys):
    rc, out, _ = trace(capsys, LOGS / "netbsd-2001-nosteal.log", "--stats")
    assert rc == 0
    rows = {line.split("  ")[-1]: int(line.split()[0]) for line in out.splitlines()[2:]}
    assert rows["UVM: pid <PID> (<*>), uid <NUM> killed: out of swap"] == 5
    assert rows["pmap_enter: get ptp failed"] == 2
    rc, out, _ = trace(capsys, LOGS / "dmesg-netbsd9.log", "-r", "-e", "UVM")
    assert out.splitlines() == [
        "[    0.000000] UVM: pid 612 (firefox), uid 1000 killed: out of swap",
        "[    1.654323] UVM: pid 640 (cc1plus), uid 1000 killed: out of swap"]
    rc, out, _ = trace(capsys, LOGS / "smp-lockstep-a.log", "--cpu", "1", "-F", "pmap_*")
    assert [s.split("cpu1: ")[1].split(":")[0] for s in out.splitlines()] == \
        ["pmap_enter", "pmap_alloc_ptp", "pmap_steal_ptp", "pmap_enter"]


def test_hist_style_needs_records(capsys):
    rc, out, err = trace(capsys, LOGS / "netbsd-2001-steal.log", "--hist")
    assert rc == 2 and err.startswith("smp: ") and "text log" in err


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("make,needle", [
    (lambda r: (r / "events.bin").write_bytes((r / "events.bin").read_bytes()[:-5]),
     "truncated events file"),
    (lambda r: (r / "events.bin").write_bytes(b"NOTSMP01" + bytes(56)), "bad magic"),
    (lambda r: (r / "catalogue.json").write_text("{"), "not valid JSON"),
    (lambda r: (r / "catalogue.json").unlink(), "no catalogue.json"),
    (lambda r: (r / "summary.json").write_text('{"schema": 2}'), "schema 2"),
])
def test_malformed_run_directory_is_one_line_and_exit_2(run, capsys, make, needle):
    make(run)
    rc, out, err = trace(capsys, run)
    assert (rc, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith("smp: ") and needle in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv,needle", [
    (["--json"], "--stats"), (["--cpu", "1-0"], "--cpu"), (["-e", "("], "regular expression"),
    (["--from", "soon"], "--from"), (["-v"], "-e"),
])
def test_bad_options_exit_2(run, capsys, argv, needle):
    rc, _, err = trace(capsys, run, *argv)
    assert rc == 2 and needle in err and len(err.splitlines()) == 1


def test_truncated_events_with_partial(run, capsys):
    ev = run / "events.bin"
    ev.write_bytes(ev.read_bytes()[:-5])
    rc, out, _ = trace(capsys, run, "--partial", "--all", "--stats", "--json")
    assert rc == 0 and json.loads(out)["records"] == 6


# ---------------------------------------------------------------- a real run


def test_a_real_run_re_renders_exactly_as_its_logs(tmp_path):
    load = tmp_path / "small.toml"
    load.write_text(SMALL_LOAD)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "run"

    def smp(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "smp", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    r = smp("run", str(load), "--out", str(out), "-q", "-o", "hist=on")
    assert r.returncode == 0, r.stderr
    for style, log in (([], "console.log"), (["--hist"], "hist.log")):
        r = smp("trace", str(out), *style)
        assert r.returncode == 0, r.stderr
        want = (out / log).read_text() if (out / log).exists() else ""
        assert r.stdout == want
    r = smp("trace", str(out), "--all", "--stats", "--json")
    d = json.loads(r.stdout)
    summary = json.loads((out / "summary.json").read_text())
    assert d["records"] == summary["trace"]["records"] > 0
    assert Counter(x["kind"] for x in d["rows"])["hist"] >= 2
