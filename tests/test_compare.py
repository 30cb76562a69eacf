"""`smp compare`: templates (exact and mined), alias-preserving normalization, group
statistics with known answers, the first divergence of two lockstep logs, --fail-on, and
clear errors for malformed input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smp import cli
from smp.rundir import format as runfmt
from smp.rundir.format import REC_DTYPE, Catalogue
from smp.tools import compare, compare_seq, trace_input, trace_mask
from smp.tools.compare_stats import bh_fdr, binom_test, mannwhitney_u, utest_min_p

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "tests" / "fixtures" / "logs"


# ---------------------------------------------------------------- helpers

PMAP_MSGS = [
    ("pmap_enter", "pmap %p va 0x%08x pa 0x%08x prot %d flags 0x%x", "printf"),
    ("pmap_steal_ptp", "stole PTP pa 0x%08x from pmap %p va 0x%08x", "printf"),
    ("pmap_enter", "get ptp failed", "printf"),
    ("uvm_fault", "pid %d (%s) va 0x%08x ftype %d", "printf"),
    ("pmap_enter", "pmap_enter: get ptp failed", "panic"),
]


def catalogue(msgs=PMAP_MSGS, strings=("cc1", "make")) -> Catalogue:
    c = Catalogue(strings=strings)
    for fn, fmt, kind in msgs:
        c.add(fn, fmt, kind)
    return c


def write_run(d: Path, cat: Catalogue, rows, *, seed=1, kernel="steal", mode="lockstep",
              dropped=0, status="done", duration=1.0, ncpu=2) -> Path:
    """A run directory from (time_us, cpu, msgid, args) rows, as `smp run` writes one."""
    recs = np.zeros(len(rows), REC_DTYPE)
    seq = Counter()
    for i, (t_us, cpu, msgid, args) in enumerate(rows):
        recs[i]["time"], recs[i]["cpu"], recs[i]["msgid"] = t_us * 1000, cpu, msgid
        recs[i]["seq"] = seq[cpu]
        seq[cpu] += 1
        recs[i]["args"][: len(args)] = args
    d.mkdir(parents=True)
    runfmt.write_events(d / runfmt.EVENTS_FILE, recs)
    cat.save(d / runfmt.CATALOGUE_FILE)
    lines = runfmt.console_lines(runfmt.merge_order(recs), cat)
    (d / runfmt.CONSOLE_FILE).write_text("".join(s + "\n" for s in lines))
    (d / "manifest.json").write_text(json.dumps({
        "schema": 1, "mode": mode, "seed": seed, "version": "test",
        "load_script": {"name": "pmapload", "sha256": "ab" * 32},
        "machine": {"name": "i386mp-2", "ncpu": ncpu},
        "kernel": {"name": kernel, "steal": "ptp,pv" if kernel == "steal" else "none"}}))
    (d / "summary.json").write_text(json.dumps({
        "schema": 1, "status": status, "elapsed_s": duration,
        "trace": {"records": len(rows), "dropped": dropped}}))
    return d


def counted_run(d: Path, counts: dict[int, int], **kw) -> Path:
    """A run with ``counts[msgid]`` records of each message (arguments all zero)."""
    rows = []
    t = 0
    for msgid, n in counts.items():
        for _ in range(n):
            t += 10
            rows.append((t, t % 2, msgid, []))
    return write_run(d, catalogue(), rows, **kw)


def smp_main(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["compare", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def mined_counts(log: trace_input.Log) -> Counter:
    c = Counter()
    for t in log.tid.tolist():
        c[log.templates[t].text] += 1
    return c


# ---------------------------------------------------------------- templates


def test_templates_of_a_2001_netbsd_console_are_mined_by_masking():
    log = trace_input.load(LOGS / "netbsd-2001-steal.log")
    assert log.format == "plain" and not log.exact and log.duration is None
    c = mined_counts(log)
    assert c["UVM: pid <PID> (<*>), uid <NUM> killed: out of swap"] == 3  # cc1, cc1, make
    assert c["pmap_steal_ptp: stole PTP pa <HEX> from pmap <HEX> va <HEX>"] == 2
    assert c["cpu<NUM>: Intel Pentium III (<NUM>-class), <NUM> MHz"] == 2  # cpu0 and cpu1
    assert c["NetBSD <NUM>Q (MP) #<NUM>: <DAY> <MONTH> <NUM> <TIME> EST <NUM>"] == 1
    assert c["ioapic<NUM>: pa <HEX>, version <NUM>, <NUM> pins"] == 1
    assert sum(c.values()) == 35 == log.n


def test_templates_of_our_own_console_text_keep_cpu_and_time_apart():
    log = trace_input.load(LOGS / "smp-lockstep-a.log")
    assert log.format == "smp console"
    assert log.cpu.tolist() == [0, 1, 0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0]
    assert log.time_ns[[0, -1]].tolist() == [1_200_000, 650_000_000]
    assert mined_counts(log) == Counter({
        "pmap_enter: pmap <HEX> va <HEX> pa <HEX> prot <NUM> flags <HEX>": 5,
        "uvm_fault: pid <PID> (<*>) va <HEX> ftype <NUM>": 3,
        "synth_start: pid <PID> (<*>) started on cpu<NUM>": 2,
        "exit<NUM>: pid <PID> (<*>) exited on cpu<NUM>": 2,
        "pmap_alloc_ptp: pmap <HEX> pde <NUM> ptp pa <HEX>": 1,
        "pmap_steal_ptp: stole PTP pa <HEX> from pmap <HEX> va <HEX>": 1})


def test_mask_rules():
    m = trace_mask.mask_line
    assert m("pmap_enter: get ptp failed") == "pmap_enter: get ptp failed"
    assert m("UVM: pid 123 (cc1), uid 0 killed: out of swap") == \
        "UVM: pid <PID> (<*>), uid <NUM> killed: out of swap"
    assert m("stole pv c0d1e000 at 12:34:56.5, 733.38 MHz") == \
        "stole pv <HEX> at <TIME>, <NUM> MHz"
    assert m("flags 0x21 pid=7") == "flags <HEX> pid=<PID>"


@pytest.mark.parametrize("line,template", [
    # MAC addresses and other colon/dash hex byte strings (a BGL chip id, an MD5 fingerprint)
    ("wm0: Ethernet address 00:0c:29:4f:8e:35", "wm<NUM>: Ethernet address <MAC>"),
    ("Ido chip status changed: FF:F2:9F:16:E2:23:00:0D:60:E9:1D:DC ip=10.0.0.151 v=9",
     "Ido chip status changed: <MAC> ip=<HOST> v=<NUM>"),
    ("key fingerprint MD5:3f:2a:9c:01:bb:7e:aa:10:42:e9:5d:c3:88:0f:61:2c.",
     "key fingerprint MD<NUM>:<MAC>."),
    # 16 digits or more without letters; 8 without letters when the line prints hex
    ("R15: 0000000000000000 R14: ffff88003a4b1c00", "R<NUM>: <HEX> R<NUM>: <HEX>"),
    ("iar 00106570 dear 0245a2c8", "iar <HEX> dear <HEX>"),
    ("47332148 double-hummer alignment exceptions",
     "<NUM> double-hummer alignment exceptions"),
    # base64: an SSH key fingerprint
    ("ssh: RSA key fingerprint is SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s.",
     "ssh: RSA key fingerprint is SHA<NUM>:<KEY>."),
    # day and month names in dates, padding folded
    ("connection from 24.54.76.216 () at Sat Jul  9 22:53:22 2005",
     "connection from <HOST> (<HOST>) at <DAY> <MONTH> <NUM> <TIME> <NUM>"),
    ("connection from 84.139.180.144 (p548BB490.dip0.t-ipconnect.de) at Sun Jul 10 03:55:15 2005",
     "connection from <HOST> (<HOST>) at <DAY> <MONTH> <NUM> <TIME> <NUM>"),
    ("built 10-Jul-2005, May be retried", "built <NUM>-<MONTH>-<NUM>, May be retried"),
    # host names: a generic TLD after two labels, a country code after three; file names stay
    ("authentication failure; rhost=220-135-151-1.hinet-ip.hinet.net  user=root",
     "authentication failure; rhost=<HOST>  user=root"),
    ("rhost=zummit.com", "rhost=<HOST>"),
    ("rhost=c9063558.virtua.com.br", "rhost=<HOST>"),
    ("*** info [mice.c(123)]: loaded vsftpd.conf", "*** info [mice.c(<NUM>)]: loaded vsftpd.conf"),
    # absolute paths of two or more components
    ("ciod: Error loading /home/yates//torus-latency.rts: invalid or missing program image",
     "ciod: Error loading <PATH>: invalid or missing program image"),
    ("removing device node '/udev/vcsa1'", "removing device node '<PATH>'"),
    ("boot file /netbsd", "boot file /netbsd"),
    # process names: process N (comm), Comm: x, PID: N
    ("Out of memory: Killed process 1234 (java) total-vm:1024kB",
     "Out of memory: Killed process <PID> (<*>) total-vm:<NUM>kB"),
    ("CPU: 1 PID: 4321 Comm: kworker/1:2 Not tainted 5.10.0-8-amd64 #1",
     "CPU: <NUM> PID: <PID> Comm: <*> Not tainted <NUM>-<NUM>-amd<NUM> #<NUM>"),
    ("Pid: 3512, comm: modprobe Not tainted 2.6.32", "Pid: <PID>, comm: <*> Not tainted <NUM>"),
])
def test_masks_for_foreign_logs(line, template):
    assert trace_mask.mask_line(line) == template


def test_masks_never_merge_ptp_and_pv_failures():
    # the reason Drain3's similarity merge is left out: a comparison must not hide a message
    m = trace_mask.mask_line
    assert m("pmap_enter: get ptp failed") != m("pmap_enter: get pv failed")
    log = trace_input.load(LOGS / "mp-console-unstamped.log")
    c = mined_counts(log)
    assert c["pmap_enter: get ptp failed"] == 2 and c["pmap_enter: get pv failed"] == 1


def test_an_unstamped_mp_console_has_a_cpu_column():
    log = trace_input.load(LOGS / "mp-console-unstamped.log")
    assert log.format == "mp console"
    # boot lines without a prefix have no CPU; "cpu1: Intel ..." is cpu1's own line
    assert log.cpu.tolist()[:9] == [-1] * 6 + [0, -1, 1]
    assert log.cpu.tolist()[9:] == [0, 1, 0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0, 0, 1]
    c = mined_counts(log)
    assert c["pmap_enter: pmap <HEX> va <HEX> pa <HEX> prot <NUM> flags <HEX>"] == 5
    # a 2001 NetBSD console is not one: a couple of devices named cpu0, cpu1 attach
    assert (trace_input.load(LOGS / "netbsd-2001-steal.log").cpu == -1).all()


def test_lines_of_one_shape_share_a_template_whatever_their_digits():
    bodies = ["x 0x1 pid 5 (sh)", "x 0xfff pid 77 (sh)", "x 0xabcd pid 8 (cc1)", "y 3"]
    ids, info = trace_mask.mine(bodies, templates := {})
    assert ids.tolist() == [0, 0, 0, 1]
    assert list(templates) == ["x <HEX> pid <PID> (<*>)", "y <NUM>"]
    assert info.shapes == 4 and not info.bare and not info.time


def test_dmesg_stamps_with_seven_digit_fractions_and_device_names():
    log = trace_input.load(LOGS / "dmesg-netbsd9.log")
    assert log.format == "dmesg"
    assert log.time_ns[:4].tolist() == [1_000_000_000] * 3 + [1_000_003_000]
    assert (log.cpu == -1).all()  # "cpu0: Intel(R) ..." is a device, not a CPU's console
    assert "cpu<NUM>: Intel(R) Core(TM) i<NUM> CPU, id <HEX>" in mined_counts(log)
    assert log.duration == pytest.approx(14.000001)


def test_exact_templates_match_by_text_across_catalogues(tmp_path):
    # B's code declares the same messages in another order, plus one new message
    msgs_b = [PMAP_MSGS[3], PMAP_MSGS[0], ("pmap_steal_pv", "stole pv %p", "printf"),
              PMAP_MSGS[1]]
    a = write_run(tmp_path / "a", catalogue(), [(1, 0, 0, [0xC0D1E000, 0x8400000, 0x1000,
                                                          3, 0]), (2, 1, 1, [0x1000, 1, 2])])
    b = write_run(tmp_path / "b", catalogue(msgs_b),
                  [(1, 0, 1, [0xC0D1E000, 0x8400000, 0x1000, 3, 0]), (2, 0, 2, [0xC1000000]),
                   (3, 1, 3, [0x1000, 1, 2]), (4, 1, 3, [0x2000, 1, 2])])
    res = compare.compare([trace_input.load(a)], [trace_input.load(b)], seq=False)
    assert res.mode == "exact"
    rows = {r.template: (r.a, r.b, r.only) for r in res.rows}
    assert rows == {
        "pmap_steal_pv: stole pv %p": (0, 1, "b"),
        "pmap_enter: pmap %p va 0x%08x pa 0x%08x prot %d flags 0x%x": (1, 1, None),
        "pmap_steal_ptp: stole PTP pa 0x%08x from pmap %p va 0x%08x": (1, 2, None),
    }
    assert res.rows[0].only == "b"  # only-in rows come first


def test_a_run_against_a_text_log_mines_both_sides(tmp_path):
    a = write_run(tmp_path / "a", catalogue(), [(1, 0, 3, [100, 0, 0x8400000, 1])])
    res = compare.compare([trace_input.load(a)], [trace_input.load(a / "console.log")])
    assert res.mode == "mined"
    assert [(r.template, r.a, r.b) for r in res.rows] == [
        ("uvm_fault: pid <PID> (<*>) va <HEX> ftype <NUM>", 1, 1)]
    assert res.seq.identical


def test_a_run_against_its_own_rendering_by_smp_trace(tmp_path, capsys):
    msgs = PMAP_MSGS + [("uvm_fault", "(map=%p, vaddr=0x%x, ft=%d, at=%d)", "hist")]
    cat = Catalogue(strings=("cc1",))
    for fn, fmt, kind in msgs:
        cat.add(fn, fmt, kind, "maphist" if kind == "hist" else "")
    rows = [(10, 0, 5, [1, 0x8000000, 0, 2]), (20, 0, 0, [0xC0D1E000, 0x8000000, 0x1000, 3]),
            (30, 1, 5, [2, 0x8400000, 1, 2]), (40, 1, 2, [])]
    run = write_run(tmp_path / "run", cat, rows)
    assert cli.main(["trace", str(run), "--all"]) == 0
    (tmp_path / "all.log").write_text(capsys.readouterr().out)
    log = trace_input.load(tmp_path / "all.log")
    assert log.format == "smp console+hist" and log.cpu.tolist() == [0, 0, 1, 1]
    res = compare.compare([trace_input.load(run)], [log])
    assert res.mode == "mined" and res.seq.identical and not any(r.only for r in res.rows)
    kinds = {r.template: r.kind for r in res.rows}
    assert kinds["uvm_fault: (map=<HEX>, vaddr=<HEX>, ft=<NUM>, at=<NUM>)"] == "hist"


# ---------------------------------------------------------------- aliases


def test_addresses_and_pids_are_renamed_in_first_seen_order():
    n = trace_mask.AliasNormalizer()
    out = [trace_mask.display(s) for s in n.normalize([
        "pmap 0xc0d1e000 va 0x08400000 flags 0x21",
        "pid 100 (cc1): pmap 0xc0d2f000 steals from pmap 0xc0d1e000",
        "pid 101 pid 100 pa 01a3c000",
    ])]
    assert out == ["pmap P1 va P2 flags 0x21",          # 0x21 < a page: a flag, kept
                   "pid I1 (cc1): pmap P3 steals from pmap P1",  # the same pmap stays P1
                   "pid I2 pid I1 pa P4"]
    assert n.aliases()["addresses"]["0xc0d1e000"] == "P1"
    # skip() numbers exactly as normalize() does
    m = trace_mask.AliasNormalizer()
    m.skip(["pmap 0xc0d1e000 va 0x08400000 flags 0x21",
            "pid 100 (cc1): pmap 0xc0d2f000 steals from pmap 0xc0d1e000",
            "pid 101 pid 100 pa 01a3c000"])
    assert (m.addr, m.pid, m.substitutions) == (n.addr, n.pid, n.substitutions)


def _rename(text: str, mapping: dict[str, str]) -> str:
    for old, new in mapping.items():
        text = text.replace(old, new)
    return text


def test_same_work_at_other_addresses_is_identical_after_aliasing(tmp_path):
    a = (LOGS / "smp-lockstep-a.log").read_text()
    # every address and pid moved, one to one: the runs did the same thing
    b = _rename(a, {"0xc0d1e000": "0xc0e00000", "0xc0d2f000": "0xc0f00000",
                    "0x01a3c000": "0x02000000", "pid 100": "pid 300", "pid 101": "pid 301"})
    (tmp_path / "b.log").write_text(b)
    res = compare.compare([trace_input.load(LOGS / "smp-lockstep-a.log")],
                          [trace_input.load(tmp_path / "b.log")])
    assert res.seq.identical and res.seq.divergences == []


def test_a_reused_ptp_page_differs_from_a_fresh_one(tmp_path):
    # A maps the stolen PTP's page again (same pa twice); B gets a fresh page: the lines
    # have the same template and values apart from addresses, but not the same aliasing
    a = (LOGS / "smp-lockstep-a.log").read_text()
    b = a.replace("pa 0x01a3c000 prot 3 flags 0x21\n[    0.640100]",
                  "pa 0x01b00000 prot 3 flags 0x21\n[    0.640100]")
    assert a != b
    (tmp_path / "b.log").write_text(b)
    res = compare.compare([trace_input.load(LOGS / "smp-lockstep-a.log")],
                          [trace_input.load(tmp_path / "b.log")])
    d = res.seq.divergences[0]
    assert (d.a, d.b, d.why) == (11, 11, "aliases differ")
    assert "pa P3 prot 3" in d.a_lines[0][1] and "pa P11 prot 3" in d.b_lines[0][1]
    assert d.resync == (11, 11)


# ---------------------------------------------------------------- sequence view


def test_first_divergence_of_lockstep_logs_that_differ_in_one_line(capsys):
    rc, out, _ = smp_main(capsys, LOGS / "smp-lockstep-a.log", LOGS / "smp-lockstep-b.log")
    assert rc == 0
    assert "A and B agree on 8 line(s); first divergence at A:9 B:9 (lines differ)" in out
    assert "resync at A:10 B:10 (A skipped 1, B skipped 1" in out
    minus = [s for s in out.splitlines() if s.startswith("    - ")]
    plus = [s for s in out.splitlines() if s.startswith("    + ")]
    assert len(minus) == len(plus) == 1
    assert minus[0].endswith("cpu1: pmap_steal_ptp: stole PTP pa P3 from pmap P1 va P2")
    assert plus[0].endswith("cpu1: pmap_enter: get ptp failed")


def test_divergences_after_a_resync(tmp_path):
    b = (LOGS / "smp-lockstep-b.log").read_text().replace(
        "cpu1: exit1: pid 101 (cc1) exited on cpu1", "cpu1: exit1: pid 101 (cc1) exited on cpu0")
    (tmp_path / "b.log").write_text(b)
    res = compare.compare([trace_input.load(LOGS / "smp-lockstep-a.log")],
                          [trace_input.load(tmp_path / "b.log")], divergences=3)
    assert [(d.a, d.b, d.why, d.resync) for d in res.seq.divergences] == [
        (8, 8, "lines differ", (9, 9)), (12, 12, "lines differ", (13, 13))]
    assert res.seq.divergences[1].b_lines[0][1].endswith("exited on cpu0")


def test_one_log_ending_early_is_a_divergence(tmp_path):
    lines = (LOGS / "smp-lockstep-a.log").read_text().splitlines(keepends=True)
    (tmp_path / "short.log").write_text("".join(lines[:10]))
    res = compare.compare([trace_input.load(LOGS / "smp-lockstep-a.log")],
                          [trace_input.load(tmp_path / "short.log")])
    d = res.seq.divergences[0]
    assert (d.a, d.b, d.why, d.a_skipped) == (10, 10, "B ended", 4)
    assert len(d.a_lines) == 4


def test_exact_sequence_view_of_two_lockstep_runs(tmp_path):
    rows = [(10 * i, i % 2, 0, [0xC0D00000 + 0x1000 * (i % 5), 0x8400000 + 0x1000 * i,
                                0x1A3C000 + 0x1000 * (i % 7), 3, 0]) for i in range(200)]
    a = write_run(tmp_path / "a", catalogue(), rows)
    rows_b = list(rows)
    rows_b[120] = (1200, 0, 2, [])             # "get ptp failed" instead of a pmap_enter
    b = write_run(tmp_path / "b", catalogue(), rows_b)
    res = compare.compare([trace_input.load(a)], [trace_input.load(b)])
    d = res.seq.divergences[0]
    assert (res.seq.matched, d.a, d.b, d.why, d.resync) == (120, 120, 120, "lines differ",
                                                            (121, 121))
    # before record 120: 5 pmaps, 7 PTP pages and 120 vas were seen -> its va is P133; its
    # pmap (120 % 5 = 0) is the first address of all, its pa (120 % 7 = 1) the sixth
    assert d.a_lines[0][1].endswith("cpu0: pmap_enter: pmap P1 va P133 pa P6 prot 3 flags 0x0")
    assert d.b_lines[0][1].endswith("cpu0: pmap_enter: get ptp failed")
    # the same run against itself
    same = compare.compare([trace_input.load(a)], [trace_input.load(a)])
    assert same.seq.identical


def test_resync_prefers_the_nearest_point():
    ba = np.array([9, 1, 2, 3, 4, 5])
    bb = np.array([8, 8, 1, 2, 3, 4, 5])
    assert compare_seq.resync_point(ba, bb, 3, True, True) == (1, 2)
    assert compare_seq.resync_point(ba, np.array([7, 7, 7]), 3, True, True) is None


# ---------------------------------------------------------------- statistics


def test_binomial_test_known_answers():
    # 9 of 10 at p = 1/2: outcomes as unlikely as 9 are 0, 1, 9, 10 -> (1+10+10+1)/1024
    assert binom_test(9, 10, 0.5) == pytest.approx(22 / 1024)
    # 0 of 37 at p = 1/2 (a message gone from B): 2 / 2**37
    assert binom_test(0, 37, 0.5) == pytest.approx(2 / 2**37)
    # 10 of 20 at p = 1/4: P(X=10) = C(20,10) .25^10 .75^10; as unlikely: k >= 10 and none
    # below the mode (P(X=0) = .75^20 = 3.2e-3 > P(X=10) = 9.9e-3? no: 3.2e-3 < 9.9e-3,
    # so k = 0 counts too); sum the pmf over {k : P(k) <= P(10)}
    pmf = [math.comb(20, k) * 0.25**k * 0.75 ** (20 - k) for k in range(21)]
    want = sum(p for p in pmf if p <= pmf[10] * (1 + 1e-7))
    assert binom_test(10, 20, 0.25) == pytest.approx(want, rel=1e-9)
    assert binom_test(5, 10, 0.5) == pytest.approx(1.0)
    assert binom_test(0, 0, 0.5) == 1.0


def test_mann_whitney_known_answers():
    # no ties, exact: the most extreme of C(6,3) = 20 orderings, two-sided: 2/20
    assert mannwhitney_u([1, 2, 3], [4, 5, 6]) == (0.0, pytest.approx(0.1))
    assert mannwhitney_u([1, 2, 3, 4], [5, 6, 7, 8])[1] == pytest.approx(2 / 70)
    # U = 1 (5 beats 4, one pair out of order): 2 * P(U <= 1) = 2 * (1 + 1)/70
    assert mannwhitney_u([1, 2, 3, 5], [4, 6, 7, 8]) == (1.0, pytest.approx(4 / 70))
    # ties in a small group: U from mid-ranks against the exact distribution (SciPy's
    # method="exact"): x = [1,1,2], y = [2,3,3]; ranks 1.5 1.5 3.5 | 3.5 5.5 5.5; U_x = 0.5,
    # U_y = 8.5, taken as 8: 2 * P(U >= 8) = 2 * 2/20
    assert mannwhitney_u([1, 1, 2], [2, 3, 3]) == (0.5, pytest.approx(0.2))
    # large groups with ties: the normal approximation with tie and continuity corrections
    x, y = [0] * 15 + [1] * 15, [1] * 15 + [2] * 15
    # ranks: 0 -> 8, 1 -> 30.5, 2 -> 53; U_x = 15*8 + 15*30.5 - 465 = 112.5, U = 787.5;
    # ties sum(t^3 - t) = 3360 + 26970 + 3360; var = 900/12 * (61 - 33690 / (60 * 59));
    # z = (787.5 - 450 - 0.5) / sqrt(var)
    z = 337 / math.sqrt(75 * (61 - 33690 / 3540))
    assert mannwhitney_u(x, y) == (112.5, pytest.approx(math.erfc(z / 2**0.5), rel=1e-9))
    assert mannwhitney_u([16, 16], [16, 16])[1] == 1.0
    assert utest_min_p(3, 3) == pytest.approx(0.1) and utest_min_p(4, 4) < 0.05


def test_tied_counts_never_beat_the_smallest_possible_p():
    # the note "with 3 and 3 runs the smallest possible p is 0.100" must hold for the
    # p-values shown: counts 0,0,0 against 5,5,5 (ties) used to get p = 0.047 from the
    # normal approximation
    assert mannwhitney_u([0, 0, 0], [5, 5, 5])[1] == pytest.approx(utest_min_p(3, 3))
    rng = np.random.default_rng(7)
    for n1 in range(2, 7):
        for n2 in range(2, 7):
            floor = utest_min_p(n1, n2)
            assert floor == pytest.approx(2 / math.comb(n1 + n2, n1))
            for _ in range(20):
                x, y = rng.integers(0, 3, n1), rng.integers(0, 3, n2)
                assert mannwhitney_u(x, y)[1] >= floor * (1 - 1e-12)


def test_benjamini_hochberg_known_answer():
    # sorted p: .005 .01 .03 .04; p*m/rank: .02 .02 .04 .04; already monotone
    assert bh_fdr([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert bh_fdr([0.5, 0.01]) == pytest.approx([0.5, 0.02])
    assert bh_fdr([]) == []


def test_groups_of_seeds_get_a_u_test_with_fdr(tmp_path, capsys):
    # pmap_steal_ptp (msgid 1): 10..13 per run with steal, 20..23 without -> exact p 2/70;
    # pmap_enter (msgid 0): 5 in every run -> p 1; uvm_fault only in B
    ga = [counted_run(tmp_path / f"a{s}", {0: 5, 1: 10 + s}, seed=s) for s in range(4)]
    gb = [counted_run(tmp_path / f"b{s}", {0: 5, 1: 20 + s, 3: 1}, seed=s, kernel="nosteal")
          for s in range(4)]
    rc, out, err = smp_main(capsys, "--a", *ga, "--b", *gb, "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["schema"] == 1 and d["test"]["name"] == "utest"
    rows = {r["template"]: r for r in d["rows"]}
    steal = rows["pmap_steal_ptp: stole PTP pa 0x%08x from pmap %p va 0x%08x"]
    assert steal["a_runs"] == [10, 11, 12, 13] and steal["b"] == 21.5
    assert steal["p"] == pytest.approx(2 / 70)
    # uvm_fault: 0,0,0,0 against 1,1,1,1 (ties) is as extreme as 4 runs a side can be:
    # U = 16 against the exact distribution, 2 * 1/70 -- never below the smallest possible p
    fault = rows["uvm_fault: pid %d (%s) va 0x%08x ftype %d"]
    assert fault["only"] == "b" and fault["p"] == pytest.approx(2 / 70)
    assert d["rows"][0]["only"] == "b"
    # BH over the three rows: p = 2/70, 2/70, 1 -> q = 2/70 * 3/2 for both, 1
    assert steal["q"] == pytest.approx(2 / 70 * 3 / 2)
    assert fault["q"] == pytest.approx(2 / 70 * 3 / 2)
    assert rows["pmap_enter: pmap %p va 0x%08x pa 0x%08x prot %d flags 0x%x"]["p"] == 1.0
    assert d["sequence"] is None  # groups have no sequence view
    assert d["a"]["runs"][0]["kernel"]["name"] == "steal"


def test_too_few_runs_for_the_u_test_is_said(tmp_path):
    ga = [counted_run(tmp_path / f"a{s}", {1: 10 + s}) for s in range(2)]
    gb = [counted_run(tmp_path / f"b{s}", {1: 30 + s}) for s in range(2)]
    res = compare.compare([trace_input.load(p) for p in ga], [trace_input.load(p) for p in gb])
    assert res.test == "utest" and not res.rows[0].significant
    assert any("smallest possible p is 0.333" in n for n in res.notes)


def test_rate_basis_uses_simulated_seconds(tmp_path):
    # 10 steals in 1 s against 10 in 3 s: under equal rates a ~ Binomial(20, 1/4)
    a = counted_run(tmp_path / "a", {1: 10}, duration=1.0)
    b = counted_run(tmp_path / "b", {1: 10}, duration=3.0)
    res = compare.compare([trace_input.load(a)], [trace_input.load(b)], rate=True, seq=False)
    r = res.rows[0]
    assert (r.a_rate, r.b_rate) == (10.0, pytest.approx(10 / 3))
    assert r.delta == pytest.approx(10 / 3 - 10) and r.ratio == pytest.approx(1 / 3)
    assert r.p == pytest.approx(binom_test(10, 20, 0.25))
    per_run = compare.compare([trace_input.load(a)], [trace_input.load(b)], seq=False)
    assert per_run.rows[0].delta == 0 and per_run.rows[0].p == pytest.approx(1.0)


# ---------------------------------------------------------------- CLI, header, --fail-on


def test_header_shows_both_manifests_and_the_kernel_keys_that_differ(tmp_path, capsys):
    a = counted_run(tmp_path / "a", {0: 3}, seed=7, dropped=2)
    b = counted_run(tmp_path / "b", {0: 3, 1: 1}, seed=8, kernel="nosteal")
    rc, out, _ = smp_main(capsys, a, b, "--per-cpu")
    assert rc == 0
    lines = out.splitlines()
    head = {s.split()[0]: s.split()[1:] for s in lines[1:14] if s.strip()}
    assert head["kernel"] == ["steal", "nosteal"]
    assert head["kernel.steal"] == ["ptp,pv", "none"]
    assert head["seed"] == ["7", "8"] and head["mode"] == ["lockstep", "lockstep"]
    assert head["dropped"] == ["2", "0"]
    assert any(s.split()[:2] == ["0", "1"] and "only B" in s for s in lines)
    assert "per CPU" in out


def test_fail_on_gates_a_regression_check(tmp_path, capsys):
    rc, out, err = smp_main(capsys, LOGS / "netbsd-2001-steal.log",
                            LOGS / "netbsd-2001-nosteal.log", "--json",
                            "--fail-on", "only-in-b,panic", "--fail-on", "dropped")
    assert rc == 1
    d = json.loads(out)
    assert [f["condition"] for f in d["fail_on"]] == ["only-in-b", "panic"]
    assert err.splitlines() == [
        "smp compare: --fail-on only-in-b: 3 template(s) only in B: "
        "'pmap_enter: get ptp failed' and 2 more",
        "smp compare: --fail-on panic: B panicked (1 panic record(s))"]
    onlies = [r["only"] for r in d["rows"]]
    # the version line (MP vs MP-NOSTEAL) and A's clean shutdown are boot lines: not
    # templates only in one log, but the boot section's differences
    assert onlies[:4] == ["b"] * 3 + ["a"]
    assert set(onlies[4:]) == {None}
    assert not any("NetBSD" in r["template"] or "rebooting" in r["template"]
                   for r in d["rows"])
    assert d["boot"]["diff"] == [
        {"side": "a", "text": "NetBSD 1.5Q (MP) #3: Tue Jan  2 21:14:07 EST 2001"},
        {"side": "a", "text": "    sommerfeld@orchard:/usr/src/sys/arch/i386/compile/MP"},
        {"side": "b", "text": "NetBSD 1.5Q (MP-NOSTEAL) #4: Wed Jan  3 09:02:51 EST 2001"},
        {"side": "b",
         "text": "    sommerfeld@orchard:/usr/src/sys/arch/i386/compile/MP-NOSTEAL"},
        {"side": "a", "text": "syncing disks... done"},
        {"side": "a", "text": "rebooting..."}]
    # the other direction: nothing new in B, no panic in B
    rc, _, err = smp_main(capsys, LOGS / "netbsd-2001-nosteal.log",
                          LOGS / "netbsd-2001-nosteal.log", "--fail-on",
                          "only-in-b,panic,changed,diverged")
    assert rc == 1 and "panic" in err  # B panicked: it is the same log
    rc, _, err = smp_main(capsys, LOGS / "netbsd-2001-steal.log",
                          LOGS / "netbsd-2001-steal.log", "--fail-on",
                          "only,panic,changed,diverged,significant,dropped")
    assert (rc, err) == (0, "")


def test_fail_on_dropped_and_diverged(tmp_path, capsys):
    a = counted_run(tmp_path / "a", {0: 3})
    b = counted_run(tmp_path / "b", {0: 3, 2: 1}, dropped=5)
    rc, _, err = smp_main(capsys, a, b, "--fail-on", "dropped,diverged,changed")
    assert rc == 1
    assert [s.split(":")[1].strip() for s in err.splitlines()] == [
        "--fail-on dropped", "--fail-on diverged", "--fail-on changed"]


BAD_INPUTS = {
    "binary": lambda d: _write(d / "x.log", b"\x7fELF\x01\x01\x00\x00junk"),
    "truncated events": lambda d: _truncate_events(d),
    "events without catalogue": lambda d: _no_catalogue(d),
    "bad catalogue": lambda d: _run_with(d, "catalogue.json", b"{not json"),
    "catalogue schema": lambda d: _run_with(d, "catalogue.json", b'{"schema": 9}'),
    "bad manifest": lambda d: _run_with(d, "manifest.json", b"[1, 2"),
    "not a run dir": lambda d: _mkdir(d / "empty"),
    "missing": lambda d: d / "nowhere",
    "a json file": lambda d: _run_with(d, "summary.json", b'{"schema": 1}') / "summary.json",
}


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


def _truncate_events(d: Path) -> Path:
    r = counted_run(d / "run", {0: 3})
    ev = r / runfmt.EVENTS_FILE
    ev.write_bytes(ev.read_bytes()[:-10])
    return r


def _no_catalogue(d: Path) -> Path:
    r = counted_run(d / "run", {0: 3})
    (r / runfmt.CATALOGUE_FILE).unlink()
    return r


def _run_with(d: Path, name: str, data: bytes) -> Path:
    r = counted_run(d / "run", {0: 3})
    (r / name).write_bytes(data)
    return r


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_malformed_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    bad = BAD_INPUTS[case](tmp_path)
    rc, out, err = smp_main(capsys, LOGS / "smp-lockstep-a.log", bad)
    assert rc == 2, (case, out, err)
    assert len(err.splitlines()) == 1 and err.startswith("smp: "), err
    assert "Traceback" not in err and str(bad.name) in err


@pytest.mark.parametrize("argv", [
    ["only-one"], ["a", "b", "c"], ["--a", "x"], ["x", "y", "--a", "z", "--b", "w"],
    ["x", "y", "--fail-on", "bogus"], ["x", "y", "--alpha", "2"],
])
def test_usage_errors_exit_2(capsys, argv):
    rc, _, err = smp_main(capsys, *argv)
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("smp: ")


def test_truncated_events_accepted_with_partial(tmp_path, capsys):
    r = _truncate_events(tmp_path)
    rc, out, _ = smp_main(capsys, r, r, "--partial", "--json")
    assert rc == 0 and json.loads(out)["a"]["records"] == 2


def test_compare_as_a_command_end_to_end(tmp_path):
    a = counted_run(tmp_path / "a", {0: 3})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "smp", "compare", str(a), str(a / "console.log"),
                        "--fail-on", "only"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "templates: mined" in r.stdout and "identical: 3 lines agree" in r.stdout


# ---------------------------------------------------------------- properties

_TOKENS = ["pid", " ", "0x", "0X", "1f", "c0d1e000", "00401000", "12", ":", "34", "(cc1)",
           "(make)", "a", "deadbeef", "9", ".", "=", "x", "0", "cpu", "_", "e5", "-", "#",
           "Jul", "Sun ", "/", ".com", "process ", "Comm: ", "PID: ", "xY9", "0a:", "ff-",
           "00000000", "12345678", "aB3dE5fG7hJ9kL1mN3pQ5"]
_lines = st.lists(st.lists(st.sampled_from(_TOKENS), max_size=12).map("".join),
                  min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(_lines)
def test_grouping_lines_by_shape_never_changes_a_template(bodies):
    # mine() masks one line per shape; every line must get the template it would get alone
    ids, _info = trace_mask.mine(bodies, templates := {})
    text = {v: k for k, v in templates.items()}
    assert [text[i] for i in ids.tolist()] == [trace_mask.mask_line(b) for b in bodies]


@settings(max_examples=200, deadline=None)
@given(_lines)
def test_skipping_numbers_aliases_exactly_as_normalizing(bodies):
    for time, bare in ((True, True), (False, False)):
        if not time and not bare:
            # the fast regex is only used when mining found no times or bare hex words
            info = trace_mask.mine(bodies, {})[1]
            if info.time or info.bare:
                continue
        a, b = trace_mask.AliasNormalizer(time, bare), trace_mask.AliasNormalizer(time, bare)
        a.normalize(bodies)
        b.skip(bodies)
        assert (a.addr, a.pid, a.substitutions) == (b.addr, b.pid, b.substitutions)


def test_the_tools_import_neither_the_machine_nor_the_kernel():
    code = ("import sys, smp.tools.compare, smp.tools.trace; "
            "bad = [m for m in sys.modules if m.startswith(('smp.machine', 'smp.kern'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
