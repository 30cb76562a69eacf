"""`smp lockstat`: report arithmetic on a hand-made lockstat.json, then a real run whose one
hot lock must come out on top with its call site.

The fixture (tests/fixtures/lockstat/lockstat.json) is a 2-CPU, 4.00 s run of an imagined
pmap workload.  Its ten slots, with the individual events they sum up (times in ms unless
marked; a wait/hold of x ns falls in log2 bucket x.bit_length(), capped at 31):

  R1 cpu0 pmaps_lock      pmap_enter     acq 10  waits 1.0 1.5 2.5 3.0         (4, 8.0)
                                         holds 0.1 0.3x3 0.4x3 0.5 1.1 1.2      (10, 5.0)
                                         bounces 6, con_bounces 3
  R2 cpu1 pmaps_lock      pmap_enter     acq 6   waits 0.6 4.4 (2, 5.0)  holds 0.2x5 1.0 (6, 2.0)
                                         bounces 4, con_bounces 2
  R3 cpu1 pmaps_lock      pmap_steal_ptp acq 2   wait 2.0        holds 30 50 (2, 80)
                                         bounces 2, con_bounces 1
  R4 cpu0 pmap[0]         pmap_enter     acq 20  no waits        holds 0.2x20 (20, 4.0)
  R5 cpu1 pmap[1]         pmap_enter     acq 5   wait 0.6        holds 0.3x5 (5, 1.5)
                                         bounces 1, con_bounces 1
  R6 cpu0 pmap[1]         pmap_remove    acq 3   waits 0.1 0.3 (2, 0.4)  holds 0.3x3 (3, 0.9)
                                         bounces 2, con_bounces 2
  R7 cpu0 kernel_lock     trap           acq 12 (2 recursive)  waits 10 20 30 (3, 60)
                                         holds 10x10 (10, 100); bounces 5, con_bounces 3
  R8 cpu1 kernel_lock     uvm_fault      acq 4   wait 40         holds 5x4 (4, 20)
                                         bounces 1, con_bounces 1
  R9 cpu0 pmap_main_lock  uvm_fault  shared  acq 30  waits 0.3 0.5 (2, 0.8)  holds 0.1x30 (30, 3.0)
                                         bounces 10, con_bounces 1
  R10 cpu1 pmap_main_lock pmap_steal_ptp excl acq 1  wait 90     hold 1500 (1.5 s: bucket 31)
                                         bounces 1, con_bounces 1

Pairs (waiter <- holder: count, wait): pmaps_lock pmap_enter <- pmap_steal_ptp 3, 7.0 (cpu0)
and 1, 4.4 (cpu1); pmap_enter <- pmap_enter 1, 1.0 (cpu0) and 1, 0.6 (cpu1); pmap_steal_ptp
<- pmap_enter 1, 2.0.  pmap: pmap_enter <- pmap_remove 1, 0.6; pmap_remove <- pmap_enter
2, 0.4.  kernel_lock: trap <- uvm_fault 3, 60; uvm_fault <- trap 1, 40.  pmap_main_lock:
uvm_fault <- pmap_steal_ptp (shared) 2, 0.8; pmap_steal_ptp <- uvm_fault (excl) 1, 90.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smp.cli import main
from smp.tools.lockstat_report import lock_address, perf_time, site_address

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "lockstat" / "lockstat.json"
NONE = "None of the selected events were recorded."


def lockstat(capsys, *args: str) -> tuple[int, str, str]:
    """Run `smp lockstat ARGS` in this process; (status, stdout, stderr)."""
    rc = main(["lockstat", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def rows_of(out: str, section: str) -> list[str]:
    """The table rows of one section of a lockstat(8) report."""
    lines = out.splitlines()
    i = lines.index(f"-- {section}") + 4   # title, blank, header, dashes
    rows = []
    while i < len(lines) and lines[i]:
        rows.append(lines[i])
        i += 1
    return rows


# ---------------------------------------------------------------- the lockstat(8) table


def test_default_table_is_netbsd_lockstat_sorted_by_spin_time(capsys):
    rc, out, _ = lockstat(capsys, FIXTURE)
    assert rc == 0
    assert out.startswith("Elapsed time: 4.00 seconds.\n")
    # section order as lockstat(8): simple locks, RW writer, RW reader, kernel lock
    titles = [ln[3:] for ln in out.splitlines() if ln.startswith("-- ")]
    assert titles == ["Simple lock spin", "RW lock spin (writer)", "RW lock spin (reader)",
                      "Kernel lock spin"]
    assert "Total%  Count   Time/ms          Lock                       Caller" in out
    # Simple lock spin: pmaps_lock waits R1+R2+R3 = 8.0+5.0+2.0 = 15.0 ms in 4+2+1 = 7;
    # pmap[1] R5+R6 = 0.6+0.4 = 1.0 ms in 3; pmap[0] never waited (not listed).
    # Section total 16.0 ms: 15/16 = 93.75%, 13/16 = 81.25%, 2/16 = 12.50%, 1/16 = 6.25%,
    # 0.6/16 = 3.75%, 0.4/16 = 2.50%.
    assert rows_of(out, "Simple lock spin") == [
        " 93.75       7     15.00 pmaps_lock             <all>",
        " 81.25       6     13.00 pmaps_lock             pmap_enter",
        " 12.50       1      2.00 pmaps_lock             pmap_steal_ptp",
        "  6.25       3      1.00 pmap[1]                <all>",
        "  3.75       1      0.60 pmap[1]                pmap_enter",
        "  2.50       2      0.40 pmap[1]                pmap_remove",
    ]
    # one caller: no <all> row (lockstat(8) prints it only for several callers)
    assert rows_of(out, "RW lock spin (writer)") == [
        "100.00       1     90.00 pmap_main_lock         pmap_steal_ptp"]
    assert rows_of(out, "RW lock spin (reader)") == [
        "100.00       2      0.80 pmap_main_lock         uvm_fault"]
    # kernel_lock: 60 + 40 = 100 ms in 3 + 1
    assert rows_of(out, "Kernel lock spin") == [
        "100.00       4    100.00 kernel_lock            <all>",
        " 60.00       3     60.00 kernel_lock            trap",
        " 40.00       1     40.00 kernel_lock            uvm_fault",
    ]


def test_count_sort_and_percentages(capsys):
    # -c: Total% of the section's 10 contended acquisitions; pmap[1]'s callers swap order
    _, out, _ = lockstat(capsys, FIXTURE, "-c", "-T", "simple_lock")
    assert rows_of(out, "Simple lock spin") == [
        " 70.00       7     15.00 pmaps_lock             <all>",
        " 60.00       6     13.00 pmaps_lock             pmap_enter",
        " 10.00       1      2.00 pmaps_lock             pmap_steal_ptp",
        " 30.00       3      1.00 pmap[1]                <all>",
        " 20.00       2      0.40 pmap[1]                pmap_remove",
        " 10.00       1      0.60 pmap[1]                pmap_enter",
    ]
    assert "-- Kernel lock spin" not in out            # -T picked simple locks only


def test_locks_only_callers_only_and_class_merge(capsys):
    _, out, _ = lockstat(capsys, FIXTURE, "-l", "-L", "pmap*")
    assert rows_of(out, "Simple lock spin") == [
        " 93.75       7     15.00 pmaps_lock             <all>",
        "  6.25       3      1.00 pmap[1]                <all>",
    ]
    # -f: callers over all simple locks: pmap_enter 13.0 + 0.6 = 13.6 ms in 7 (85.00%),
    # pmap_steal_ptp 2.0 (12.50%), pmap_remove 0.4 (2.50%)
    _, out, _ = lockstat(capsys, FIXTURE, "-f", "-T", "spin")
    assert rows_of(out, "Simple lock spin") == [
        "100.00      10     16.00 <all>                  <all>",
        " 85.00       7     13.60 <all>                  pmap_enter",
        " 12.50       1      2.00 <all>                  pmap_steal_ptp",
        "  2.50       2      0.40 <all>                  pmap_remove",
    ]
    # -M: every pmap[N] is class pmap
    _, out, _ = lockstat(capsys, FIXTURE, "-M", "-L", "pmap")
    assert rows_of(out, "Simple lock spin") == [
        "100.00       3      1.00 pmap                   <all>",
        " 60.00       1      0.60 pmap                   pmap_enter",
        " 40.00       2      0.40 pmap                   pmap_remove",
    ]


def test_per_cpu_and_per_second_averages(capsys):
    # kernel_lock 4 contended, 100 ms; 2 CPUs, 4.00 s; counts truncated as (int) in main.c
    cases = {"-p": (2, "50.00", "per-CPU "), "-s": (1, "25.00", "per-second "),
             "-ps": (0, "12.50", "per-CPU per-second ")}
    for opt, (count, ms, words) in cases.items():
        _, out, _ = lockstat(capsys, FIXTURE, opt, "-L", "kernel_lock", "-l")
        assert out.startswith(f"Elapsed time: 4.00 seconds. Displaying {words}averages.\n")
        assert rows_of(out, "Kernel lock spin") == [
            f"100.00 {count:7d} {ms:>9} kernel_lock            <all>"]


def test_hold_and_acquire_events(capsys):
    # -E hold: outermost holds only -- trap took kernel_lock 12 times, 2 of them recursively,
    # so 10 holds of 100 ms; uvm_fault 4 holds, 20 ms.  120 ms: 83.33% / 16.67%.
    _, out, _ = lockstat(capsys, FIXTURE, "-E", "hold", "-L", "kernel_lock")
    assert "hold: Count = holds (outermost acquire..release); Time = hold time in ms." in out
    assert rows_of(out, "Kernel lock hold") == [
        "100.00      14    120.00 kernel_lock            <all>",
        " 83.33      10    100.00 kernel_lock            trap",
        " 16.67       4     20.00 kernel_lock            uvm_fault",
    ]
    # -E acquire counts every acquisition: 12 + 4; Time stays the wait (100 ms)
    _, out, _ = lockstat(capsys, FIXTURE, "-E", "acquire", "-c", "-L", "kernel_lock")
    assert rows_of(out, "Kernel lock acquire")[:2] == [
        "100.00      16    100.00 kernel_lock            <all>",
        " 75.00      12     60.00 kernel_lock            trap",
    ]
    # several events: sections in lock-type order, events in -e order within a type
    _, out, _ = lockstat(capsys, FIXTURE, "-E", "hold,spin", "-L", "kernel_lock")
    assert [ln for ln in out.splitlines() if ln.startswith("-- ")] == [
        "-- Kernel lock spin", "-- Kernel lock hold"]


def test_filters_and_empty_selection(capsys):
    # -F: only acquisitions made in pmap_enter: 13.0 + 0.6 = 13.6 ms; 13/13.6 = 95.59%
    _, out, _ = lockstat(capsys, FIXTURE, "-F", "pmap_enter")
    assert rows_of(out, "Simple lock spin") == [
        " 95.59       6     13.00 pmaps_lock             pmap_enter",
        "  4.41       1      0.60 pmap[1]                pmap_enter",
    ]
    assert "-- Kernel lock spin" not in out
    # a lock that exists but never waited: NetBSD's sentence plus the selection, one line
    rc, out, _ = lockstat(capsys, FIXTURE, "-L", "pmap[0]")
    assert rc == 0
    assert out == f"{NONE} (selected: event spin; types all; -L pmap[0])\n"
    # declared but never taken (pmap[3]) is a lock too; a name nobody declared is an error
    rc, out, _ = lockstat(capsys, FIXTURE, "-L", "pmap[3]", "-E", "hold")
    assert out.startswith(NONE)
    rc, out, err = lockstat(capsys, FIXTURE, "-L", "pvh_lock")
    assert rc == 2 and out == ""
    assert err == (f"smp: {FIXTURE}: -L pvh_lock: no lock or lock class of that name "
                   f"(classes: kernel_lock, pmap, pmap_main_lock, pmaps_lock)\n")
    rc, _, err = lockstat(capsys, FIXTURE, "-F", "pmap_kenter")
    assert rc == 2 and "-F pmap_kenter: no call site" in err
    rc, _, err = lockstat(capsys, FIXTURE, "-T", "mutex")
    assert rc == 2 and err.startswith("smp: -T mutex: unknown lock type")


def test_top_n_says_what_it_left_out(capsys):
    _, out, _ = lockstat(capsys, FIXTURE, "-n", "1", "-T", "spin")
    assert rows_of(out, "Simple lock spin") == [
        " 93.75       7     15.00 pmaps_lock             <all>",
        " 81.25       6     13.00 pmaps_lock             pmap_enter",
        " 12.50       1      2.00 pmaps_lock             pmap_steal_ptp",
        "(1 more lock not shown: 6.25% of the section's Time)",
    ]


# ---------------------------------------------------------------- other reports


def test_lock_stat_is_linux_columns_with_every_point(capsys):
    rc, out, err = lockstat(capsys, FIXTURE, "--lock-stat")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    # seq_header(): the version line, dashes, the column heads, dashes, a blank line --
    # nothing else before the first class
    assert lines[0] == "lock_stat version 0.4"
    assert lines[1] == lines[3] == "-" * (40 + 1 + 12 * (14 + 1))
    assert lines[2] == f"{'class name':>40} " + " ".join(f"{c:>14}" for c in (
        "con-bounces", "contentions", "waittime-min", "waittime-max", "waittime-total",
        "waittime-avg", "acq-bounces", "acquisitions", "holdtime-min", "holdtime-max",
        "holdtime-total", "holdtime-avg"))
    assert lines[4] == ""
    stats = {ln.split(":")[0].strip(): ln.split(":")[1].split() for ln in lines
             if ":" in ln and not ln.startswith("lock_stat")}
    # pmaps_lock (R1-R3): con-bounces 3+2+1, contentions 7, wait min 0.6 ms (R2), max 4.4,
    # total 15 ms, avg 15000000 // 7 = 2142857 ns -> 2142.86 us (snprint_time() adds 5 ns,
    # then truncates to 10 ns); acq-bounces 6+4+2, acquisitions 18, holds 18: min 0.1 ms,
    # max 50 ms, total 87 ms, avg 87000/18 = 4833.33 us
    assert stats["pmaps_lock"] == ["6", "7", "600.00", "4400.00", "15000.00", "2142.86", "12",
                                   "18", "100.00", "50000.00", "87000.00", "4833.33"]
    # kernel_lock: acquisitions 16 but holds 14: holdtime-avg = 120 ms / 14 = 8571428 ns
    assert stats["kernel_lock"][7:] == ["16", "5000.00", "10000.00", "120000.00", "8571.43"]
    # a reader/writer class used both ways: -W and -R rows, writer first
    assert stats["pmap_main_lock-R"][:2] == ["1", "2"]
    assert stats["pmap_main_lock-W"][-1] == "1500000.00"
    # order: by contentions (7, 4, then 3 and 3: acquisitions 31 before 28)
    assert list(stats) == ["pmaps_lock", "kernel_lock", "pmap_main_lock-W",
                           "pmap_main_lock-R", "pmap"]
    # points of pmaps_lock: "%40s %14lu %29s %pS": the name, the count, [<address>], the
    # site; first the waiting sites, then the holders they waited behind: pmap_steal_ptp
    # held it for 3+1 waits, pmap_enter for 1+1+1
    enter, steal = (f"[<{site_address(s):08x}>]" for s in ("pmap_enter", "pmap_steal_ptp"))
    i = lines.index(next(ln for ln in lines if ln.strip().startswith("pmaps_lock:")))
    assert lines[i + 1:i + 10] == [
        " " * 30 + "-" * 10,
        f"{'pmaps_lock':>40} {6:14d} {enter:>29} pmap_enter",
        f"{'pmaps_lock':>40} {1:14d} {steal:>29} pmap_steal_ptp",
        " " * 30 + "-" * 10,
        f"{'pmaps_lock':>40} {4:14d} {steal:>29} pmap_steal_ptp",
        f"{'pmaps_lock':>40} {3:14d} {enter:>29} pmap_enter",
        "",
        "." * (40 + 1 + 12 * (14 + 1)),
        "",
    ]
    # one class block for the rw lock: W and R rows together, one points block whose dashes
    # underline "pmap_main_lock-W" and whose rows carry the bare class name
    j = lines.index(next(ln for ln in lines if ln.strip().startswith("pmap_main_lock-W:")))
    assert lines[j + 1].lstrip().startswith("pmap_main_lock-R:")
    assert lines[j + 2] == " " * 24 + "-" * 16
    assert [ln.split()[:2] for ln in lines[j + 3:j + 5]] == [["pmap_main_lock", "2"],
                                                            ["pmap_main_lock", "1"]]
    assert lines[j + 5] == lines[j + 2]
    # every class that waited has exactly one points block
    assert lines.count("." * (40 + 1 + 12 * (14 + 1))) == 4


def test_lock_stat_addresses_are_stable_and_the_wait_total_is_behind_a_flag(capsys):
    # the same call site gets the same address in every run: a CRC of its name inside an
    # i386 kernel's text
    assert site_address("pmap_enter") == site_address("pmap_enter")
    assert 0xc0100000 <= site_address("SyntheticLoad.step") < 0xc0400000
    assert len({site_address(s) for s in ("trap", "uvm_fault", "pmap_enter",
                                          "pmap_remove", "pmap_steal_ptp")}) == 5
    _, out, _ = lockstat(capsys, FIXTURE, "--lock-stat", "-L", "kernel_lock",
                         "--points-wait")
    trap = f"[<{site_address('trap'):08x}>]"
    # trap waited 3 times, 60 ms in all
    assert f"{'kernel_lock':>40} {3:14d} {'60000.00':>14} {trap:>29} trap" in out.splitlines()
    rc, _, err = lockstat(capsys, FIXTURE, "--points-wait")
    assert rc == 2 and "--points-wait does not apply to the lockstat(8) table" in err


def test_lock_stat_of_a_reader_only_or_writer_only_class_has_no_suffix(capsys, tmp_path):
    # lockdep_proc.c: "-W" only when the class also has read holds; a class taken only
    # for reading is "-R"
    d = json.loads(FIXTURE.read_text())
    d["records"] = [r for r in d["records"] if not (r["class"] == "pmap_main_lock"
                                                     and r["mode"] == "shared")]
    (tmp_path / "lockstat.json").write_text(json.dumps(d))
    _, out, _ = lockstat(capsys, tmp_path, "--lock-stat", "-L", "pmap_main_lock")
    assert f"{'pmap_main_lock':>40}:" in out and "-W:" not in out and "-R:" not in out
    d = json.loads(FIXTURE.read_text())
    d["records"] = [r for r in d["records"] if not (r["class"] == "pmap_main_lock"
                                                     and r["mode"] == "excl")]
    (tmp_path / "lockstat.json").write_text(json.dumps(d))
    _, out, _ = lockstat(capsys, tmp_path, "--lock-stat", "-L", "pmap_main_lock")
    assert f"{'pmap_main_lock':>38}-R:" in out and "-W:" not in out
    # the dashes cover the "-R" too
    assert " " * 24 + "-" * 16 in out.splitlines()


def test_matrix_shows_who_waited_behind_whom(capsys):
    _, out, _ = lockstat(capsys, FIXTURE, "--matrix", "-L", "pmaps_lock")
    lines = out.splitlines()
    i = lines.index("-- Simple lock spin: pmaps_lock")
    # pmap_enter waited 7.0 + 4.4 = 11.40 ms behind pmap_steal_ptp, 1.0 + 0.6 behind itself
    assert [ln.split() for ln in lines[i + 2:i + 7]] == [
        ["waiter", "\\", "holder", "[1]", "[2]", "total"],
        ["pmap_enter", "11.40", "1.60", "13.00"],
        ["pmap_steal_ptp", "-", "2.00", "2.00"],
        ["total", "11.40", "3.60", "15.00"],
        ["holders:", "[1]", "pmap_steal_ptp", "[2]", "pmap_enter"],
    ]
    _, out, _ = lockstat(capsys, FIXTURE, "--matrix", "-c", "-L", "pmaps_lock")
    assert ["pmap_enter", "4", "2", "6"] in [ln.split() for ln in out.splitlines()]
    # -L of an instance shows its whole class: pairs are recorded per class
    _, out, _ = lockstat(capsys, FIXTURE, "--matrix", "-L", "pmap[1]")
    assert "-- Simple lock spin: pmap" in out and "whole classes" in out


FOLDED_LINE = re.compile(r"^[^ ;]+(;[^ ;]+)* [1-9][0-9]*$")


def test_folded_stacks_are_class_waiter_holder_with_wait_ns(capsys):
    rc, out, err = lockstat(capsys, FIXTURE, "--format", "folded")
    assert rc == 0 and err == ""
    lines = out.splitlines()
    # what flamegraph.pl reads: frames joined by ";", a space, a positive integer; sorted
    assert all(FOLDED_LINE.match(ln) for ln in lines) and lines == sorted(lines)
    # the pairs of the fixture (module docstring): pmap_enter waited behind pmap_steal_ptp
    # 3 times (7.0 ms) on cpu0 and once (4.4 ms) on cpu1: one stack, 11.4 ms
    assert lines == [
        "kernel_lock;trap;uvm_fault 60000000",
        "kernel_lock;uvm_fault;trap 40000000",
        "pmap;pmap_enter;pmap_remove 600000",
        "pmap;pmap_remove;pmap_enter 400000",
        "pmap_main_lock-R;uvm_fault;pmap_steal_ptp 800000",
        "pmap_main_lock-W;pmap_steal_ptp;uvm_fault 90000000",
        "pmaps_lock;pmap_enter;pmap_enter 1600000",
        "pmaps_lock;pmap_enter;pmap_steal_ptp 11400000",
        "pmaps_lock;pmap_steal_ptp;pmap_enter 2000000",
    ]
    # a class's stacks add up to its wait time (pmaps_lock: 15 ms, as in the table)
    assert sum(int(ln.split()[1]) for ln in lines if ln.startswith("pmaps_lock;")) == 15_000_000
    # -c: counts; -L and -F select (a waiter site)
    _, out, _ = lockstat(capsys, FIXTURE, "--format", "folded", "-c", "-L", "pmaps_lock",
                         "-F", "pmap_enter")
    assert out == "pmaps_lock;pmap_enter;pmap_enter 2\npmaps_lock;pmap_enter;pmap_steal_ptp 4\n"
    # -E hold: class;site and the hold time (trap: 10 holds of 10 ms)
    _, out, _ = lockstat(capsys, FIXTURE, "--format", "folded", "-E", "hold", "-T",
                         "kernel_lock")
    assert out == "kernel_lock;trap 100000000\nkernel_lock;uvm_fault 20000000\n"
    # nothing selected: an empty profile on stdout, NetBSD's sentence on stderr
    rc, out, err = lockstat(capsys, FIXTURE, "--format", "folded", "-T", "rw", "-F", "trap")
    assert (rc, out) == (0, "") and err.startswith(NONE) and err.count("\n") == 1
    # -L of an instance: pairs are per class, and stderr says so
    rc, out, err = lockstat(capsys, FIXTURE, "--format", "folded", "-L", "pmap[0]")
    assert out.splitlines() == ["pmap;pmap_enter;pmap_remove 600000",
                                "pmap;pmap_remove;pmap_enter 400000"]
    assert "pairs are recorded per lock class" in err


def test_folded_stacks_keep_waits_the_pair_table_lost(capsys, tmp_path):
    # drop the pair of cpu1's pmap_enter <- pmap_steal_ptp wait (1, 4.4 ms): the slot still
    # counted it, so it is charged to a "<no pair>" holder rather than vanishing
    d = json.loads(FIXTURE.read_text())
    lost = [p for p in d["pairs"] if p["class"] == "pmaps_lock" and p["cpu"] == 1
            and p["holder"] == "pmap_steal_ptp"]
    assert [(p["count"], p["wait_total"]) for p in lost] == [(1, 4_400_000)]
    d["pairs"].remove(lost[0])
    (tmp_path / "lockstat.json").write_text(json.dumps(d))
    _, out, _ = lockstat(capsys, tmp_path, "--format", "folded", "-L", "pmaps_lock")
    assert out.splitlines() == ["pmaps_lock;pmap_enter;<no pair> 4400000",
                                "pmaps_lock;pmap_enter;pmap_enter 1600000",
                                "pmaps_lock;pmap_enter;pmap_steal_ptp 7000000",
                                "pmaps_lock;pmap_steal_ptp;pmap_enter 2000000"]


def test_perf_lock_is_perf_lock_contention_by_caller(capsys):
    rc, out, _ = lockstat(capsys, FIXTURE, "--perf-lock")
    assert rc == 0
    # perf's header ("%10s " / "%12s " per field, "  %10s   %s" type and caller), a blank
    # line, rows sorted by total wait; every lock a caller waited for merged, per type:
    # pmap_enter waited 4 + 2 times on pmaps_lock (8.0 + 5.0 ms) and once on pmap[1]
    # (0.6 ms): 7, 13.6 ms, max 4.4 ms, avg 13.6 / 7 = 1.94 ms
    assert out.splitlines() == [
        " contended   total wait     max wait     avg wait         type   caller",
        "",
        "         1     90.00 ms     90.00 ms     90.00 ms     rwlock:W   pmap_steal_ptp",
        "         3     60.00 ms     30.00 ms     20.00 ms   kernel_lock   trap",
        "         1     40.00 ms     40.00 ms     40.00 ms   kernel_lock   uvm_fault",
        "         7     13.60 ms      4.40 ms      1.94 ms     spinlock   pmap_enter",
        "         1      2.00 ms      2.00 ms      2.00 ms     spinlock   pmap_steal_ptp",
        "         2    800.00 us    500.00 us    400.00 us     rwlock:R   uvm_fault",
        "         2    400.00 us    300.00 us    200.00 us     spinlock   pmap_remove",
    ]
    # -k contended, top 2 (perf -E): the rest is said on stderr
    rc, out, err = lockstat(capsys, FIXTURE, "--perf-lock", "-k", "contended", "-n", "2")
    assert [ln.split()[-1] for ln in out.splitlines()[2:]] == ["pmap_enter", "trap"]
    assert err == "smp lockstat: -n 2: 5 more caller row(s) not shown\n"
    # a sort key that is not shown by default is added as the last column, as perf does
    _, out, _ = lockstat(capsys, FIXTURE, "--perf-lock", "-k", "wait_min", "-T", "spin")
    assert out.splitlines()[0].split()[-4:] == ["min", "wait", "type", "caller"]
    # by shortest wait: pmap_steal_ptp's one 2 ms wait, then pmap_enter's 0.6 ms (R2, R5)
    assert [ln.split()[-4:] for ln in out.splitlines()[2:4]] == [
        ["2.00", "ms", "spinlock", "pmap_steal_ptp"], ["600.00", "us", "spinlock", "pmap_enter"]]


def test_perf_lock_by_lock_has_an_address_and_the_lock_type(capsys):
    _, out, _ = lockstat(capsys, FIXTURE, "--perf-lock", "-l")
    lines = out.splitlines()
    # "  %16s   %s" after the fields
    assert lines[0] == (" contended   total wait     max wait     avg wait "
                        f"  {'address':>16}   symbol")
    pmaps = f"{lock_address('pmaps_lock'):016x}"
    # pmap_main_lock: writer and reader waits together (90 + 0.8 ms in 3)
    assert lines[2:] == [
        f"         4    100.00 ms     40.00 ms     25.00 ms   "
        f"{lock_address('kernel_lock'):016x}   kernel_lock (kernel_lock)",
        f"         3     90.80 ms     90.00 ms     30.27 ms   "
        f"{lock_address('pmap_main_lock'):016x}   pmap_main_lock (rwlock)",
        f"         7     15.00 ms      4.40 ms      2.14 ms   {pmaps}   pmaps_lock (spinlock)",
        f"         3      1.00 ms    600.00 us    333.33 us   "
        f"{lock_address('pmap[1]'):016x}   pmap[1] (spinlock)",
    ]
    assert lock_address("pmaps_lock") % 4 == 0
    # -M merges instances into classes (perf -c)
    _, out, _ = lockstat(capsys, FIXTURE, "--perf-lock", "-l", "-M", "-T", "spin")
    assert [ln.split()[-2] for ln in out.splitlines()[2:]] == ["pmaps_lock", "pmap"]
    # JSON rows carry exact nanoseconds
    _, js, _ = lockstat(capsys, FIXTURE, "--perf-lock", "--format", "json", "-L", "pmaps_lock")
    doc = json.loads(js)
    assert doc["report"] == "perf-lock"
    assert [(r["caller"], r["type"], r["contended"], r["wait_total_ns"], r["avg_wait_ns"])
            for r in doc["rows"]] == [("pmap_enter", "spinlock", 6, 13_000_000, 2_166_666),
                                      ("pmap_steal_ptp", "spinlock", 1, 2_000_000, 2_000_000)]


def test_perf_time_units_as_perf_prints_them():
    assert perf_time(950) == "      950 ns"
    assert perf_time(152_860) == "   152.86 us"
    assert perf_time(1_500_000_000) == "     1.50 s "
    assert perf_time(90 * 60 * 10**9) == "     1.50 h "


def test_folded_and_perf_lock_usage_errors(capsys):
    def bad(*args: str) -> str:
        rc, out, err = lockstat(capsys, FIXTURE, *args)
        assert rc == 2 and out == "" and err.count("\n") == 1, err
        return err

    assert "does not combine with --lock-stat" in bad("--format", "folded", "--lock-stat")
    assert "takes one event" in bad("--format", "folded", "-E", "spin,hold")
    assert "takes one event" in bad("--format", "folded", "-E", "acquire")
    assert "-k bogus: unknown sort key" in bad("--perf-lock", "-k", "bogus")
    assert "-k does not apply to the lockstat(8) table" in bad("-k", "contended")
    assert "-M does not apply to --format folded" in bad("--format", "folded", "-M")


def test_histograms_have_power_of_two_buckets_with_units(capsys):
    _, out, _ = lockstat(capsys, FIXTURE, "-H", "-L", "kernel_lock", "-F", "trap")
    lines = out.splitlines()
    i = lines.index("-- Kernel lock spin: kernel_lock  trap")
    assert lines[i + 1] == ("wait: 3 contended, avg 20ms, max 30ms; "
                            "hold: 10 holds, avg 10ms, max 10ms")
    assert lines[i + 2].split() == ["from/ns", "to/ns", "wait", "distribution", "hold",
                                    "distribution"]
    # waits 10 ms -> bucket 24 [2^23, 2^24) ns; 20 and 30 ms -> bucket 25; holds 10 x 10 ms
    b24, b25 = lines[i + 3].split("|"), lines[i + 4].split("|")
    assert b24[0].split() == ["8388608", "16777216", "1"] and b24[2].split() == ["10"]
    assert b25[0].split() == ["16777216", "33554432", "2"] and b25[2].split() == ["0"]
    assert b25[1] == "@" * 24 and b24[1].strip() == "@" * 12
    # the last bucket is open-ended: R10's 1.5 s hold
    _, out, _ = lockstat(capsys, FIXTURE, "-H", "-T", "rw", "-F", "pmap_steal_ptp")
    assert any(ln.split()[:2] == ["1073741824", "inf"] for ln in out.splitlines())


def _b_run(tmp_path: Path) -> Path:
    """Run B: trap's three kernel_lock waits doubled (6 waits, 120 ms), pmap_steal_ptp no
    longer takes pmaps_lock (R3 and its pair gone)."""
    d = json.loads(FIXTURE.read_text())
    b = copy.deepcopy(d)
    r7 = b["records"][6]
    assert r7["site"] == "trap"
    r7.update(contended=6, wait_total=120_000_000, wait_hist=r7["wait_hist"][:24] + [2, 4])
    del b["records"][2]
    out = tmp_path / "b"
    out.mkdir()
    (out / "lockstat.json").write_text(json.dumps(b))
    return out


def test_vs_gives_deltas_and_ratios(capsys, tmp_path):
    rc, out, _ = lockstat(capsys, FIXTURE, "--vs", _b_run(tmp_path), "-T", "spin,kernel_lock")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "Elapsed time: A 4.00 s, B 4.00 s."
    # kernel_lock: A 4 / 100 ms, B 7 / 160 ms: +3 (1.75), +60 ms (1.60); trap 3 -> 6 (2.00)
    k = rows_of(out, "Kernel lock spin")
    assert [r.split() for r in k] == [
        ["4", "7", "+3", "1.75", "100.00", "160.00", "+60.00", "1.60", "kernel_lock", "<all>"],
        ["3", "6", "+3", "2.00", "60.00", "120.00", "+60.00", "2.00", "kernel_lock", "trap"],
        ["1", "1", "+0", "1.00", "40.00", "40.00", "+0.00", "1.00", "kernel_lock", "uvm_fault"],
    ]
    # pmaps_lock: 7 -> 6 (6/7 = 0.86), 15 -> 13 ms (0.87); pmap_steal_ptp gone (0.00)
    s = [r.split() for r in rows_of(out, "Simple lock spin")]
    assert s[0] == ["7", "6", "-1", "0.86", "15.00", "13.00", "-2.00", "0.87", "pmaps_lock",
                    "<all>"]
    assert s[1][-1] == "pmap_steal_ptp" and s[1][:4] == ["1", "0", "-1", "0.00"]
    # classes merged: pmap[1] appears as pmap
    assert any(r[-2:] == ["pmap", "<all>"] for r in s)


def _csv_rows(text: str) -> tuple[str, list[dict]]:
    first, body = text.split("\n", 1)
    rows = list(csv.DictReader(io.StringIO(body)))
    return first, rows


def _same(json_row: dict, csv_row: dict) -> bool:
    for k, v in json_row.items():
        c = csv_row[k]
        if v is None:
            if c != "":
                return False
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            if float(c) != pytest.approx(float(v), rel=1e-12, abs=1e-9):
                return False
        elif str(v) != c:
            return False
    return True


@pytest.mark.parametrize("mode", [[], ["--lock-stat"], ["--matrix"], ["-H"], ["--vs", "B"],
                                  ["-E", "spin,hold", "-M"]])
def test_json_and_csv_carry_the_same_rows(capsys, tmp_path, mode):
    mode = [str(_b_run(tmp_path)) if m == "B" else m for m in mode]
    rc, js, _ = lockstat(capsys, FIXTURE, *mode, "--format", "json")
    assert rc == 0
    doc = json.loads(js)
    assert doc["schema"] == 2 and doc["lockstat_schema"] == 1 and doc["rows"]
    assert doc["units"]["time"] == "ns"
    _, cs, _ = lockstat(capsys, FIXTURE, *mode, "--format", "csv")
    first, rows = _csv_rows(cs)
    assert first.startswith(f"# smp lockstat report schema 2: {doc['report']};")
    assert list(rows[0]) == doc["fields"]
    assert len(rows) == len(doc["rows"])
    assert all(_same(j, c) for j, c in zip(doc["rows"], rows, strict=True))


def test_json_rows_are_exact(capsys):
    _, js, _ = lockstat(capsys, FIXTURE, "--format", "json", "-L", "pmaps_lock")
    rows = {(r["lock"], r["caller"]): r for r in json.loads(js)["rows"]}
    r = rows[("pmaps_lock", "<all>")]
    assert (r["count"], r["time_ns"], r["total_pct"]) == (7, 15_000_000, 100.0)
    assert (r["acq"], r["holds"], r["spins"], r["bounces"], r["con_bounces"]) == (18, 18, 55,
                                                                                   12, 6)
    assert (r["wait_min_ns"], r["wait_max_ns"], r["hold_max_ns"]) == (600_000, 4_400_000,
                                                                      50_000_000)
    _, js, _ = lockstat(capsys, FIXTURE, "--format", "json", "--matrix", "-L", "kernel_lock")
    assert [(r["waiter"], r["holder"], r["count"], r["wait_total_ns"])
            for r in json.loads(js)["rows"]] == [("trap", "uvm_fault", 3, 60_000_000),
                                                 ("uvm_fault", "trap", 1, 40_000_000)]


def test_output_file(capsys, tmp_path):
    out = tmp_path / "report.txt"
    rc, stdout, _ = lockstat(capsys, FIXTURE, "-o", out)
    assert rc == 0 and stdout == ""
    assert out.read_text().startswith("Elapsed time: 4.00 seconds.")


# ---------------------------------------------------------------- bad input


def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path):
    def bad(path: Path, *args: str) -> str:
        rc, out, err = lockstat(capsys, path, *args)
        assert rc == 2 and out == "" and err.count("\n") == 1, err
        assert err.startswith("smp: ")
        return err.strip()

    assert bad(tmp_path / "nope") == f"smp: {tmp_path / 'nope'}: no such run directory"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert bad(empty).startswith(f"smp: {empty / 'lockstat.json'}: no such file")
    f = empty / "lockstat.json"
    f.write_text('{"schema": 1, "records": [')
    assert bad(empty).startswith(f"smp: {f}: not valid JSON")
    f.write_text('{"schema": 7, "records": []}')
    assert bad(empty) == f"smp: {f}: lockstat schema 7, this smp reads 1"
    d = json.loads(FIXTURE.read_text())
    del d["records"][3]["hold_total"]
    f.write_text(json.dumps(d))
    assert bad(empty) == (f"smp: {f}: records[3].hold_total = None: expected a "
                          f"non-negative integer")
    f.write_bytes(b"\xff\xfe garbage")
    assert "not UTF-8" in bad(empty)
    assert "does not apply to --lock-stat" in bad(FIXTURE, "--lock-stat", "-c")
    assert "needs the caller breakdown" in bad(FIXTURE, "-l", "-F", "trap")


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "smp", "lockstat", str(tmp_path / "x")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"smp: {tmp_path / 'x'}: no such run directory\n"


def test_a_run_without_statistics_says_so(capsys, tmp_path):
    d = json.loads(FIXTURE.read_text())
    d.update(records=[], pairs=[])
    (tmp_path / "lockstat.json").write_text(json.dumps(d))
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 1,
                                                        "kernel": {"lockstat": False}}))
    rc, out, _ = lockstat(capsys, tmp_path)
    assert rc == 0
    assert out == (f"{NONE} (lock statistics were off in this run: kernel option "
                   f"lockstat = off)\n")


def test_plot(capsys, tmp_path, monkeypatch):
    png = tmp_path / "contention.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        rc, out, _ = lockstat(capsys, FIXTURE, "--plot", png)
        assert rc == 0 and out == f"smp lockstat: wrote {png}\n"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing to draw (a lock that never waited): one line naming the file, exit 2, and
    # no file left behind that would look like a result
    rc, out, err = lockstat(capsys, FIXTURE, "--plot", tmp_path / "empty.png", "-L", "pmap[0]")
    assert (rc, out) == (2, "") and not (tmp_path / "empty.png").exists()
    assert err == (f"smp: {FIXTURE}: --plot: nothing to draw: no contended acquisition in "
                   f"the selection (event spin; types all; -L pmap[0])\n")
    # without the optional extra: one line, exit 2
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc, out, err = lockstat(capsys, FIXTURE, "--plot", tmp_path / "x.png")
    assert rc == 2 and err.startswith("smp: --plot: matplotlib is not installed")
    assert err.count("\n") == 1


def test_plot_axes_are_logarithmic_so_small_classes_show():
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from smp.tools.lockstat_data import Selection, load
    from smp.tools.lockstat_plot import figure

    fig = figure(load(FIXTURE), Selection())
    try:
        dist, per_cpu = fig.axes[:2]
        # pmap_main_lock-W (90 ms) and pmap (1 ms) differ 90-fold: log axes
        assert dist.get_yscale() == "symlog" and per_cpu.get_yscale() == "log"
        labels = [t.get_text() for t in dist.get_legend().get_texts()]
        assert len(labels) == 5 and labels[0].startswith("kernel_lock (4 contended")
        # every class's bars are drawn above the axis' floor
        low = per_cpu.get_ylim()[0]
        heights = [b.get_height() for b in per_cpu.patches if b.get_height() > 0]
        assert min(heights) == pytest.approx(0.4) and low < min(heights)
    finally:
        plt.close(fig)


def test_the_tool_reads_run_directories_only():
    # tools must work without the machine and the kernel (no segment, no C core)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code = ("import sys, smp.tools.lockstat, smp.tools.lockstat_plot; "
            "print(sorted(m for m in sys.modules if m.startswith(('smp.machine', 'smp.kern'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_print_top_never_raises(capsys, tmp_path):
    from smp.tools.lockstat import print_top

    buf = io.StringIO()
    print_top(FIXTURE.parent, buf, n=1)
    text = buf.getvalue()
    assert text.startswith("lockstat: top 1 locks per section by spin time")
    assert "(1 more lock not shown" in text
    print_top(tmp_path / "missing", buf)
    assert capsys.readouterr().err == f"smp: {tmp_path / 'missing'}: no such run directory\n"


# ---------------------------------------------------------------- a real run

HOT_LOAD = """\
# one bucket lock that every iteration takes: the hot lock of the run
[run]
machine = "i386mp-2"
[synthetic]
processes = 4
iterations = 40000
buckets = 1
handoff_every = 0
compute = "0us"
"""


@pytest.fixture(scope="module")
def hot_run(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("hot")
    (tmp / "hot.toml").write_text(HOT_LOAD)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "smp", "run", "hot.toml", "--out", "run", "-q",
                        "-o", "biglock=off", "--lockstat"], cwd=tmp, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return tmp / "run", r.stdout


def test_real_run_puts_the_hot_lock_on_top(hot_run, capsys):
    run, stdout = hot_run
    # smp run --lockstat printed the top of the table at the end of the run
    assert "lockstat: top 10 locks per section by spin time" in stdout
    top = rows_of(stdout[stdout.index("lockstat: top"):], "Simple lock spin")
    assert ["bucket[0]", "SyntheticLoad.step"] in [r.split()[3:] for r in top]
    # by count the hot lock leads by far (wait *time* can be inflated by one host preemption
    # of a spinning CPU, so the order by time is not asserted)
    _, out, _ = lockstat(capsys, run, "-c")
    assert rows_of(out, "Simple lock spin")[0].split()[3:] == ["bucket[0]",
                                                               "SyntheticLoad.step"]
    # the same from the run directory, and it adds up to what summary.json counted
    rc, out, _ = lockstat(capsys, run, "--format", "json", "-E", "acquire", "-l")
    rows = json.loads(out)["rows"]
    summary = json.loads((run / "summary.json").read_text())
    assert sum(r["acq"] for r in rows) == summary["locks"]["acquisitions"]
    assert sum(r["contended"] for r in rows) == summary["locks"]["contended"]
    assert summary["locks"]["contended"] > 0
    hot = next(r for r in rows if r["lock"] == "bucket[0]")
    # every iteration took the hot lock once: 4 processes x 40000
    assert hot["acq"] == 4 * 40000 and hot["holds"] == 4 * 40000


def test_real_run_matrix_and_lock_stat_agree(hot_run, capsys):
    run, _ = hot_run
    _, out, _ = lockstat(capsys, run, "--format", "json", "--matrix", "-L", "synth_bucket")
    pairs = json.loads(out)["rows"]
    assert {(p["waiter"], p["holder"]) for p in pairs} == {("SyntheticLoad.step",
                                                            "SyntheticLoad.step")}
    _, out, _ = lockstat(capsys, run, "--format", "json", "--lock-stat", "-L", "synth_bucket")
    rows = json.loads(out)["rows"]
    cls = next(r for r in rows if r["type"] == "class")
    # every contended acquisition has its waiter x holder pair (no pair table overflow)
    assert sum(p["count"] for p in pairs) == cls["contentions"]
    assert sum(p["wait_total_ns"] for p in pairs) == cls["waittime_total_ns"]
    assert cls["waittime_min_ns"] <= cls["waittime_avg_ns"] <= cls["waittime_max_ns"]
    # the flame graph of the hot lock holds the same waits
    _, out, _ = lockstat(capsys, run, "--format", "folded", "-L", "synth_bucket")
    stacks = dict(ln.rsplit(" ", 1) for ln in out.splitlines())
    assert list(stacks) == ["synth_bucket;SyntheticLoad.step;SyntheticLoad.step"]
    assert sum(map(int, stacks.values())) == cls["waittime_total_ns"]
    _, out, _ = lockstat(capsys, run, "--perf-lock", "--format", "json", "-L", "synth_bucket")
    perf = json.loads(out)["rows"]
    assert [(r["caller"], r["contended"]) for r in perf] == [("SyntheticLoad.step",
                                                             cls["contentions"])]
    # a run against itself: nothing changes
    _, out, _ = lockstat(capsys, run, "--vs", run, "--format", "json")
    assert all(r["count_delta"] == 0 and r["count_ratio"] == 1.0
               for r in json.loads(out)["rows"])
