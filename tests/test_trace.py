"""Trace records: the C-printf renderer, console/UVMHIST lines, events.bin, and the drainer
against real per-CPU rings written by forked CPU processes."""

import ctypes
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from smp.errors import BadInput
from smp.machine.trace import Drainer
from smp.rundir import format as runfmt
from smp.rundir.format import (
    REC_DTYPE,
    Catalogue,
    Message,
    console_line,
    console_lines,
    hist_line,
    hist_lines,
    merge_order,
    read_events,
    write_events,
)
from smp.rundir.writer import RunWriter

ROOT = Path(__file__).resolve().parents[1]


def rec(time_ns=0, cpu=0, msgid=0, call=0, args=(), seq=0):
    r = np.zeros((), REC_DTYPE)
    r["time"], r["seq"], r["cpu"], r["msgid"], r["call"] = time_ns, seq, cpu, msgid, call
    r["args"][: len(args)] = args
    return r[()]


def cat_of(*fmts, strings=()):
    c = Catalogue(strings=strings)
    for f in fmts:
        c.add("f", f)
    return c


def render(fmt, *args, strings=()):
    return cat_of(fmt, strings=strings).render_message(0, args)


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize("fmt,args,want", [
    ("%d|%i", (-42, 7), "-42|7"),
    ("%u", (-1,), "4294967295"),              # i386: int is 32 bits
    ("%llu", (-1,), "18446744073709551615"),
    ("%x|%X", (0xbeef, 0xbeef), "beef|BEEF"),
    ("%x", (-1,), "ffffffff"),
    ("%lx", (-2,), "fffffffe"),                # long is 32 bits on i386 too
    ("%llx", (-1,), "ffffffffffffffff"),
    ("%x", (0x123456789,), "123456789"),       # non-negative values are never truncated
    ("%o", (8,), "10"),
    ("%c%c", (ord("o"), ord("k")), "ok"),
    ("%p", (0xc0d1e000,), "0xc0d1e000"),
    ("%p", (0x1000,), "0x00001000"),
    ("%12p|%-12p|", (0x1000, 0x1000), "  0x00001000|0x00001000  |"),
    ("100%% %d", (5,), "100% 5"),
    ("%5d|%-5d|%05d|%+d|% d", (42, 42, 42, 42, 42), "   42|42   |00042|+42| 42"),
    ("%08x|%-8x|%#x|%#o|%#010x", (0x1a3c, 0x1a3c, 255, 8, 255),
     "00001a3c|1a3c    |0xff|010|0x000000ff"),
    ("%#x|%#o", (0, 0), "0|0"),
    ("%.3d|%8.3d|%-8.3d|%08.3d|%.0d|", (5, 5, 5, 5, 0), "005|     005|005     |     005||"),
    ("%ld %lld %hd %zd %lu", (1, 2, 3, 4, 5), "1 2 3 4 5"),  # length modifiers ignored
    ("no args", (), "no args"),
    ("odd %q %", (), "odd %q %"),              # not conversions: printed as they stand
    ("%d %d %d %d %d %d %d", (1, 2, 3, 4, 5, 6), "1 2 3 4 5 6 <noarg>"),
])
def test_render_conversions(fmt, args, want):
    c = Catalogue([Message(0, "f", fmt)])  # Message itself does not limit args
    assert c.render_message(0, args) == want


def test_render_strings():
    strings = ["pmap_enter", "ok"]
    assert render("%s: %s", 0, 1, strings=strings) == "pmap_enter: ok"
    assert render("[%10s|%-4s|%.3s]", 1, 1, 0, strings=strings) == "[        ok|ok  |pma]"
    assert render("%s %s", 2, -1, strings=strings) == "<str#2> <str#-1>"


def test_string_table_interning_and_late_strings():
    c = Catalogue()
    m = c.add("uvm_fault", "%s")
    assert c.intern("a") == 0 and c.intern("b") == 1 and c.intern("a") == 0
    assert c.render_message(m, [1]) == "b"
    c.intern("c")  # strings added after the format was compiled still resolve
    assert c.render_message(m, [2]) == "c"


def test_render_unknown_message():
    c = cat_of("x")
    assert c.render_message(42, [1, 2, 3]) == "<unknown message 42> 1 2 3"


def test_add_rejects_too_many_args():
    with pytest.raises(ValueError, match="more than 6"):
        cat_of("%d %d %d %d %d %d %d")


_libc = ctypes.CDLL(None)


def _snprintf(fmt: str, *vals) -> str:
    buf = ctypes.create_string_buffer(512)
    _libc.snprintf(buf, 512, fmt.encode(), *vals)
    return buf.value.decode()


def test_integer_conversions_match_libc():
    """Every flag/width/precision combination against the host C library."""
    flags = ["", "-", "0", "+", " ", "#", "-0", "+0", "#0", "-#", "0 ", "-+"]
    widths = ["", "1", "8", "13"]
    precs = ["", ".", ".0", ".3", ".10"]
    small = [0, 1, 7, 255, 123456789, -1, -42, 2**31 - 1, -2**31]
    big = [0, 5, 2**40 + 3, -(2**40), 2**63 - 1, -2**63]
    specs = [f"%{f}{w}{p}{{}}{cv}" for f in flags for w in widths for p in precs
             for cv in "diuoxX"]
    c = Catalogue()
    for spec in specs:
        c.add("f", "<" + spec.format("") + ">")
        c.add("f", "<" + spec.format("ll") + ">")
    bad = []
    for i, spec in enumerate(specs):
        for v in small:  # i386 int: a C int argument
            got, want = c.render_message(2 * i, [v]), _snprintf("<" + spec.format("") + ">",
                                                                ctypes.c_int(v))
            if got != want:
                bad.append((spec, v, got, want))
        for v in big:
            got, want = c.render_message(2 * i + 1, [v]), _snprintf(
                "<" + spec.format("ll") + ">", ctypes.c_longlong(v))
            if got != want:
                bad.append((spec, v, got, want))
    assert not bad, bad[:10]


def test_char_and_string_match_libc():
    c = Catalogue(strings=["hello"])
    for spec in ["%c", "%5c", "%-5c", "%s", "%8s", "%-8s", "%.2s", "%8.3s", "%-8.3s"]:
        m = c.add("f", f"[{spec}]")
        if spec.endswith("c"):
            assert c.render_message(m, [ord("Q")]) == _snprintf(f"[{spec}]", ctypes.c_int(81))
        else:
            assert c.render_message(m, [0]) == _snprintf(f"[{spec}]", ctypes.c_char_p(b"hello"))


# ---------------------------------------------------------------- lines


@pytest.fixture
def cat():
    c = Catalogue()
    c.add("pmap_steal_ptp", "stole PTP pa 0x%08x from pmap 0x%08x va 0x%08x")  # 0
    c.add("", "NetBSD 1.5 (GENERIC) #%d")                                       # 1
    c.add("pmap_alloc_ptp", "pmap_alloc_ptp: out of PTPs (%s)", "panic")       # 2
    c.add("uvm_fault", "called!", "hist", "maphist")                           # 3
    c.add("pmap_enter", "pmap=%p va=0x%x %s", "hist", "maphist")               # 4
    c.add("100%_fn", "%d%%", "printf")                                         # 5
    c.intern("no PTP")
    return c


def test_console_line_formats(cat):
    r = rec(2_518_370_999, 1, 0, 7, (0x1A3C000, 0xC0D1E000, 0x8400000))
    want = ("[    2.518370] cpu1: pmap_steal_ptp: stole PTP pa 0x01a3c000 "
            "from pmap 0xc0d1e000 va 0x08400000")
    assert console_line(r, cat) == want  # microseconds truncated, like the kernel
    assert want.startswith(f"[{2.518370:12.6f}] ")  # the width of [%12.6f]
    assert console_line(rec(1000, 0, 1, args=(3,)), cat) == \
        "[    0.000001] cpu0: NetBSD 1.5 (GENERIC) #3"
    assert console_line(rec(12 * 10**9, 3, 2, args=(0,)), cat) == \
        "[   12.000000] cpu3: panic: pmap_alloc_ptp: out of PTPs (no PTP)"
    assert console_line(rec(0, 2, 99, args=(1, 2)), cat) == \
        "[    0.000000] cpu2: <unknown message 99> 1 2 0 0 0 0"
    assert console_line(rec(123456_789_000_000, 0, 5, args=(50,)), cat) == \
        "[123456.789000] cpu0: 100%_fn: 50%"
    # a plain tuple works as well as a numpy record
    assert console_line((1000, 0, 0, 1, 0, [3, 0, 0, 0, 0, 0]), cat) == \
        "[    0.000001] cpu0: NetBSD 1.5 (GENERIC) #3"


def test_hist_line_format(cat):
    assert hist_line(rec(2_518_370_999, 1, 3, 7), cat) == "000002.518370 uvm_fault#7@1: called!"
    assert hist_line(rec(5_000_001_000, 0, 4, 12, (0xC0D1E000, 0x8400000, 0)), cat) == \
        "000005.000001 pmap_enter#12@0: pmap=0xc0d1e000 va=0x8400000 no PTP"
    assert hist_line(rec(0, 1, 77, 3, (9,)), cat) == \
        "000000.000000 ?#3@1: <unknown message 77> 9 0 0 0 0 0"


def test_batch_rendering_equals_single(cat):
    rng = np.random.default_rng(7)
    n = 5000
    r = np.zeros(n, REC_DTYPE)
    r["time"] = rng.integers(0, 10**12, n)
    r["cpu"] = rng.integers(0, 8, n)
    r["msgid"] = rng.choice([0, 1, 2, 3, 4, 5, 99], n)
    r["call"] = rng.integers(0, 1000, n)
    r["args"] = rng.integers(-(2**40), 2**40, (n, 6))
    r["args"][r["msgid"] == 2, 0] = 0
    r["args"][r["msgid"] == 4, 2] = rng.integers(-1, 3, int((r["msgid"] == 4).sum()))
    assert console_lines(r, cat) == [console_line(x, cat) for x in r]
    assert hist_lines(r, cat) == [hist_line(x, cat) for x in r]
    assert console_lines(r[:0], cat) == []


def test_merge_order():
    r = np.zeros(6, REC_DTYPE)
    r["time"] = [5, 1, 5, 5, 1, 0]
    r["cpu"] = [1, 0, 0, 1, 0, 2]
    r["seq"] = [9, 4, 3, 8, 2, 0]
    m = merge_order(r)
    assert list(zip(m["time"].tolist(), m["cpu"].tolist(), m["seq"].tolist(), strict=True)) == \
        [(0, 2, 0), (1, 0, 2), (1, 0, 4), (5, 0, 3), (5, 1, 8), (5, 1, 9)]


def test_rec_dtype_matches_machine_layout():
    from smp.machine.layout import REC_DTYPE as MACHINE_REC_DTYPE

    assert runfmt.REC_DTYPE == MACHINE_REC_DTYPE
    assert runfmt.REC_DTYPE.itemsize == 72


def test_the_rundir_package_imports_neither_machine_nor_kernel():
    code = ("import sys, smp.rundir.format, smp.rundir.reader, smp.rundir.writer; "
            "bad = [m for m in sys.modules "
            "if m.startswith(('smp.machine', 'smp.kern'))]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


# ---------------------------------------------------------------- catalogue JSON


def test_catalogue_json_round_trip(cat, tmp_path):
    d = json.loads(json.dumps(cat.to_json()))
    assert d["schema"] == 1
    back = Catalogue.from_json(d)
    assert back.messages == cat.messages and back.strings == cat.strings
    cat.save(tmp_path / "c.json")
    assert Catalogue.load(tmp_path / "c.json").messages == cat.messages


@pytest.mark.parametrize("d,match", [
    ([], "not a JSON object"),
    ({"schema": 2, "messages": []}, "schema 2"),
    ({"schema": 1, "messages": [{"id": 0, "fn": "f"}]}, "bad catalogue"),
    ({"schema": 1, "messages": [{"id": 0, "fn": "f", "fmt": "x", "kind": "log"}]}, "kind"),
    ({"schema": 1, "messages": [{"id": 0, "fn": "f", "fmt": "x"}] * 2}, "twice"),
    ({"schema": 1, "messages": [], "strings": [1]}, "strings"),
])
def test_catalogue_json_errors(d, match):
    with pytest.raises(BadInput, match=match) as e:
        Catalogue.from_json(d, "run/catalogue.json")
    assert "\n" not in str(e.value) and str(e.value).startswith("run/catalogue.json: ")


def test_catalogue_load_errors(tmp_path):
    with pytest.raises(BadInput, match="missing.json"):
        Catalogue.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BadInput, match="bad.json: catalogue is not valid JSON"):
        Catalogue.load(tmp_path / "bad.json")


# ---------------------------------------------------------------- events.bin


def _some_records(n=100):
    r = np.zeros(n, REC_DTYPE)
    r["time"] = np.arange(n) * 1000
    r["seq"] = np.arange(n)
    r["cpu"] = np.arange(n) % 3
    r["args"][:, 0] = -np.arange(n)
    return r


def test_events_round_trip(tmp_path):
    p = tmp_path / "events.bin"
    r = _some_records()
    write_events(p, r)
    assert p.stat().st_size == 64 + 100 * 72
    assert p.read_bytes()[:8] == b"SMPEVT01"
    back = read_events(p)
    assert back.dtype == REC_DTYPE and np.array_equal(back, r)
    write_events(p, r[:0])
    assert len(read_events(p)) == 0


def _corrupt(p: Path, offset: int, data: bytes) -> None:
    b = bytearray(p.read_bytes())
    b[offset:offset + len(data)] = data
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("damage,match", [
    (lambda p: p.write_bytes(p.read_bytes()[:40]), "truncated events file"),
    (lambda p: p.write_bytes(b""), "truncated events file"),
    (lambda p: p.write_bytes(p.read_bytes()[:-5]), "partial record"),
    (lambda p: _corrupt(p, 0, b"NOTSMP!!"), "bad magic"),
    (lambda p: _corrupt(p, 8, (7).to_bytes(4, "little")), "schema 7"),
    (lambda p: _corrupt(p, 12, (64).to_bytes(4, "little")), "record size 64"),
    (lambda p: p.unlink(), "cannot read"),
])
def test_events_bad_files(tmp_path, damage, match):
    p = tmp_path / "events.bin"
    write_events(p, _some_records())
    damage(p)
    with pytest.raises(BadInput, match=match) as e:
        read_events(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg


def test_events_partial_ok(tmp_path):
    p = tmp_path / "events.bin"
    write_events(p, _some_records())
    p.write_bytes(p.read_bytes()[:-5])
    assert len(read_events(p, partial_ok=True)) == 99


# ---------------------------------------------------------------- the drainer on real rings

MSG_ENTER, MSG_FAULT = 0, 1


def _sink(run_dir: Path):
    """The run directory writer's trace sink, free mode (rendered as drained)."""
    return RunWriter.create(run_dir).trace_sink(merged_at_end=False)


def _ring_catalogue() -> Catalogue:
    c = Catalogue()
    assert c.add("pmap_enter", "cpu %d n %d va 0x%08x") == MSG_ENTER
    assert c.add("uvm_fault", "n=%d", "hist", "maphist") == MSG_FAULT
    return c


def _writer(seg, cpu: int, n: int, backpressure: bool, die_at: int = -1) -> None:
    """A CPU process: ``n`` trace records; with back-pressure it waits for the drainer
    instead of letting its ring overflow (so the test's outcome does not depend on how
    the host schedules the processes)."""
    core = seg.core(cpu)
    rings, cap = seg.rings, seg.layout.ring_capacity
    for i in range(n):
        if i == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if backpressure and i % 256 == 0:
            deadline = time.monotonic() + 60
            while int(rings["head"][cpu]) - int(rings["tail"][cpu]) > cap - 256:
                if time.monotonic() > deadline:
                    os._exit(3)  # the drainer is stuck: fail, do not hang
                time.sleep(0.0002)
        if i % 4 == 3:
            core.trace(MSG_FAULT, i, i)
        else:
            core.trace(MSG_ENTER, i, cpu, i, 0x08400000 + 4096 * i)


def _machine(ncpu: int, ring_capacity: int):
    from smp.machine.layout import Layout
    from smp.machine.segment import Segment

    return Segment(Layout.plan(ncpu, 16, ring_capacity))


def _start_cpus(seg, n: int, backpressure: bool, die_at: int = -1) -> list:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(seg, cpu, n, backpressure, die_at))
             for cpu in range(seg.layout.ncpu)]
    for p in procs:
        p.start()
    return procs


CONSOLE_RE = re.compile(r"^\[ {0,5}\d+\.\d{6}\] cpu(\d): pmap_enter: cpu (\d) n (\d+) "
                        r"va 0x([0-9a-f]{8})$")
HIST_RE = re.compile(r"^\d{6}\.\d{6} uvm_fault#(\d+)@(\d): n=(\d+)$")


def test_concurrent_drain_of_three_cpus(tmp_path):
    ncpu, n = 3, 20_000
    cat = _ring_catalogue()
    seg = _machine(ncpu, 4096)
    try:
        procs = _start_cpus(seg, n, backpressure=True)
        d = Drainer(seg, sink := _sink(tmp_path), cat)
        d.start_thread(0.001)  # the drainer runs while the CPUs write
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        stats = d.close()
    finally:
        seg.destroy()
    assert stats["records"] == ncpu * n and stats["dropped"] == 0
    assert [c["records"] for c in stats["per_cpu"]] == [n] * ncpu
    assert all(c["dropped"] == 0 and c["seq_gaps"] == 0 for c in stats["per_cpu"])
    assert sink.hist_lines == ncpu * (n // 4)
    assert sink.console_lines == ncpu * n - sink.hist_lines
    assert "error" not in stats

    ev = read_events(tmp_path / "events.bin")
    assert len(ev) == ncpu * n
    for cpu in range(ncpu):
        mine = ev[ev["cpu"] == cpu]
        # every record, in order: the ring wrapped around ~5 times per CPU
        assert np.array_equal(mine["seq"], np.arange(n))
        assert np.array_equal(mine["call"], np.arange(n))
        assert np.all(np.diff(mine["time"].astype(np.int64)) >= 0)

    console = (tmp_path / "console.log").read_text().splitlines()
    assert len(console) == sink.console_lines
    seen = {c: [] for c in range(ncpu)}
    for line in console:
        m = CONSOLE_RE.match(line)
        assert m, line
        cpu, i = int(m[1]), int(m[3])
        assert int(m[2]) == cpu and int(m[4], 16) == 0x08400000 + 4096 * i
        seen[cpu].append(i)
    for cpu in range(ncpu):
        assert seen[cpu] == [i for i in range(n) if i % 4 != 3]
    hist = (tmp_path / "hist.log").read_text().splitlines()
    assert len(hist) == sink.hist_lines
    assert all(HIST_RE.match(h) for h in hist)
    assert sorted(int(HIST_RE.match(h)[3]) for h in hist if HIST_RE.match(h)[2] == "1") == \
        list(range(3, n, 4))


def test_tiny_ring_counts_drops_and_says_so(tmp_path):
    ncpu, n, cap = 2, 1000, 64
    seg = _machine(ncpu, cap)
    try:
        procs = _start_cpus(seg, n, backpressure=False)
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        d = Drainer(seg, sink := _sink(tmp_path), _ring_catalogue())  # nothing drained until now
        stats = d.close()
    finally:
        seg.destroy()
    for c in stats["per_cpu"]:
        assert c["records"] == cap and c["dropped"] == n - cap
    assert stats["dropped"] == ncpu * (n - cap)
    ev = read_events(tmp_path / "events.bin")
    for cpu in range(ncpu):  # a full ring keeps the oldest records
        assert np.array_equal(ev[ev["cpu"] == cpu]["seq"], np.arange(cap))
    last = (tmp_path / "console.log").read_text().splitlines()[-1]
    assert re.fullmatch(r"\[ +\d+\.\d{6}\] smp: 1872 trace records dropped \(ring full\): "
                        r"cpu0 936, cpu1 936", last), last
    assert sink.console_lines == 1 + sum(1 for i in range(cap) if i % 4 != 3) * ncpu


def test_seq_gap_and_wraparound_in_process(tmp_path):
    seg = _machine(1, 64)
    try:
        core = seg.core(0)
        d = Drainer(seg, _sink(tmp_path), _ring_catalogue())
        for i in range(50):
            core.trace(MSG_ENTER, i, 0, i, 0)
        assert d.drain() == 50
        for i in range(50, 110):  # wraps: slots 50..63 then 0..45
            core.trace(MSG_ENTER, i, 0, i, 0)
        assert d.drain() == 60
        for i in range(110, 200):  # 64 fit, 26 dropped
            core.trace(MSG_ENTER, i, 0, i, 0)
        assert d.drain() == 64
        core.trace(MSG_ENTER, 200, 0, 200, 0)  # seq 200 after 173: one gap
        assert d.drain() == 1
        assert d.drain() == 0
        stats = d.close()
        del core
    finally:
        seg.destroy()
    assert stats["per_cpu"][0] == {"cpu": 0, "records": 175, "dropped": 26, "seq_gaps": 1}
    ev = read_events(tmp_path / "events.bin")
    assert ev["call"].tolist() == list(range(174)) + [200]
    assert not (tmp_path / "hist.log").exists()  # no hist record, no hist.log
    assert "26 trace records dropped (ring full): cpu0 26" in \
        (tmp_path / "console.log").read_text()
    assert d.close() is stats  # idempotent
    # the run renders again from its own files
    again = Catalogue.load(tmp_path / "catalogue.json")
    assert console_lines(ev, again) == (tmp_path / "console.log").read_text().splitlines()[:-1]


def test_drain_after_worker_died(tmp_path):
    seg = _machine(2, 4096)
    try:
        procs = _start_cpus(seg, 1000, backpressure=False, die_at=500)
        for p in procs:
            p.join(60)
            assert p.exitcode == -signal.SIGKILL
        d = Drainer(seg, _sink(tmp_path), _ring_catalogue())
        stats = d.close()
    finally:
        seg.destroy()
    assert stats["records"] == 1000 and stats["dropped"] == 0


def test_drainer_on_closed_segment_and_no_records(tmp_path):
    seg = _machine(1, 64)
    d = Drainer(seg, sink := _sink(tmp_path), _ring_catalogue())
    seg.destroy()
    assert d.drain() == 0  # the run ended first: the drainer keeps what it has
    stats = d.close()
    assert stats["records"] == 0 and sink.console_lines == 0
    assert (tmp_path / "console.log").read_text() == ""
    assert len(read_events(tmp_path / "events.bin")) == 0

