"""The boot console (smp.kern.autoconf): a run's console.log reads like a NetBSD 1.5 dmesg.

* a run's console starts with the boot messages in the order NetBSD printed them -- the
  copyright, the version line naming the kernel configuration, total and avail memory,
  mainbus0, one ``cpuN at mainbus0`` (and its identification) per CPU, swap, the boot
  device -- and, when the run ends normally or at its time limit, ends with
  ``syncing disks... done`` and ``rebooting...``; a panic leaves no shutdown lines;
* in lockstep mode they are stamped with virtual time, so replays agree byte for byte;
* the catalogue tags them ``boot``, and ``smp compare`` shows them apart: a machine with
  less memory is a boot-line difference, not a changed template or a divergence, in run
  directories and in console.log text alike.

Loads are tests/fixtures/lockstep/*.toml; every run is a fraction of a second.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import smp

from smp.kern import autoconf
from smp.rundir.format import Catalogue

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures" / "lockstep"
STAMP = re.compile(r"^\[ *\d+\.\d{6}\] cpu0: ")
KERNEL = "NETBSD-2001-I386MP"          # touch.toml's kernel, as the version line names it


def boot_block(ncpu: int, machine: str = "i386mp-2", total_kb: int = 32768) -> list[str]:
    """The boot lines a run prints, without their stamps (avail memory: any value)."""
    cpus = []
    for c in range(ncpu):
        cpus += [f"cpu{c} at mainbus0: apid {c} "
                 f"({'boot' if c == 0 else 'application'} processor)",
                 f"cpu{c}: Intel Pentium Pro (686-class), a simulated CPU"]
    return ["Copyright (c) 1996, 1997, 1998, 1999, 2000",
            "    The NetBSD Foundation, Inc.  All rights reserved.",
            "Copyright (c) 1982, 1986, 1989, 1991, 1993",
            "    The Regents of the University of California.  All rights reserved.",
            f"NetBSD 1.5 ({KERNEL}) #0: simulated by smp",
            f"    smp@{machine}:/usr/src/sys/arch/i386/compile/{KERNEL}",
            f"total memory = {total_kb} KB",
            "avail memory = *",
            "mainbus0 (root)",
            *cpus,
            "swap: wd0b: 65536 KB (16384 pages)",
            "boot device: wd0",
            "root on wd0a dumps on wd0b"]


SHUTDOWN = ["syncing disks... done", "rebooting..."]


def console(run: Path) -> list[str]:
    return (run / "console.log").read_text().splitlines()


def text(line: str) -> str:
    """A console line without its stamp; every boot line is CPU 0's."""
    assert STAMP.match(line), line
    return STAMP.sub("", line)


def avail_any(lines: list[str]) -> list[str]:
    return ["avail memory = *" if x.startswith("avail memory = ") else x for x in lines]


def test_format_bytes_prints_memory_as_netbsd_1_5_did():
    assert autoconf.format_bytes(32 << 20) == (32768, "KB")
    assert autoconf.format_bytes(4 << 20) == (4096, "KB")
    assert autoconf.format_bytes(64 << 20) == (65536, "KB")
    assert autoconf.format_bytes(256 << 20) == (256, "MB")
    assert autoconf.format_bytes(1 << 30) == (1024, "MB")
    assert autoconf.format_bytes(99999) == (99999, "bytes")


def test_a_lockstep_run_boots_with_one_cpu_line_per_cpu_and_shuts_down(tmp_path):
    a = tmp_path / "a"
    r = smp("run", str(FIX / "touch.toml"), "--lockstep", "--seed", "1", "--cpus", "3",
            "-o", "hist=on", "--out", str(a), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = console(a)
    boot = boot_block(3)
    assert avail_any([text(x) for x in lines[:len(boot)]]) == boot
    assert [text(x) for x in lines[-2:]] == SHUTDOWN
    # virtual time: the boot at 0, the shutdown after every other record
    assert all(x.startswith("[    0.000000] cpu0: ") for x in lines[:len(boot)])
    assert sum("at mainbus0: apid" in x for x in lines) == 3
    avail = int(re.search(r"avail memory = (\d+) KB", lines[7])[1])
    assert 0 < avail < 32768
    # the catalogue says which messages are boot lines; the others carry no tag
    cat = json.loads((a / "catalogue.json").read_text())
    tagged = {m["fmt"] for m in cat["messages"] if m.get("tag") == "boot"}
    assert "total memory = %d %s" in tagged and "rebooting..." in tagged
    assert not any("tag" in m for m in cat["messages"] if "pmap" in m["fmt"])
    # a replay prints the same boot, byte for byte
    b = tmp_path / "b"
    r = smp("run", "--replay", str(a), "--out", str(b), "-q", cwd=tmp_path)
    assert r.returncode == 0 and "identical" in r.stdout, r.stdout + r.stderr
    assert console(b)[:len(boot)] == lines[:len(boot)]
    assert console(b)[-2:] == lines[-2:]


def test_a_free_run_cut_by_its_time_limit_shuts_down_and_a_panic_does_not(tmp_path):
    a, p = tmp_path / "a", tmp_path / "p"
    r = smp("run", str(FIX / "busy.toml"), "--cpus", "2", "--time-limit", "1s",
            "--out", str(a), "-q", cwd=tmp_path)
    assert json.loads((a / "summary.json").read_text())["status"] == "timeout", r.stderr
    lines = console(a)
    boot = boot_block(2, machine="i386mp-4")
    assert avail_any([text(x) for x in lines[:len(boot)]]) == boot
    assert [text(x) for x in lines[-2:]] == SHUTDOWN
    r = smp("run", str(FIX / "panic.toml"), "--lockstep", "--seed", "2", "--out", str(p),
            "-q", cwd=tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    out = (p / "console.log").read_text()
    assert "mainbus0 (root)" in out and "injected panic" in out
    assert "syncing disks" not in out and "rebooting" not in out


@pytest.fixture(scope="module")
def two_memories(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Lockstep runs of one seed on 32 MB and 16 MB, and a replay of the first."""
    d = tmp_path_factory.mktemp("boot")
    base = ["run", str(FIX / "touch.toml"), "--lockstep", "--seed", "3", "-o", "hist=on",
            "-q"]
    a, b, c = d / "a", d / "b", d / "c"
    for run, extra in ((a, []), (b, ["-o", "machine.physmem=16M"])):
        r = smp(*base, *extra, "--out", str(run), cwd=d)
        assert r.returncode == 0, r.stdout + r.stderr
    r = smp("run", "--replay", str(a), "--out", str(c), "-q", cwd=d)
    assert r.returncode == 0, r.stdout + r.stderr
    return a, b, c


def compare_json(*args: str, cwd: Path) -> tuple[int, dict, str]:
    r = smp("compare", *args, "--json", cwd=cwd)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout), r.stderr


def test_compare_shows_boot_lines_apart_from_the_experiment(two_memories, tmp_path):
    a, b, c = two_memories
    rc, d, err = compare_json(str(a), str(b), "--fail-on", "boot", cwd=tmp_path)
    assert rc == 1 and "--fail-on boot: the boot lines differ" in err
    assert d["boot"]["diff"][:2] == [{"side": "a", "text": "total memory = 32768 KB"},
                                     {"side": "a", "text": d["boot"]["diff"][1]["text"]}]
    assert {"side": "b", "text": "total memory = 16384 KB"} in d["boot"]["diff"]
    assert d["boot"]["a"]["lines"][-2:] == SHUTDOWN
    # no boot line is a row of the table, so none is "changed" or "only in" one run
    boot_fmts = {"total memory", "avail memory", "mainbus0", "Copyright", "rebooting",
                 "syncing disks", "at mainbus0", "boot device"}
    assert d["rows"] and not any(f in r["template"] for r in d["rows"] for f in boot_fmts)
    # the sequence view skips them: its line numbers still count them (console.log's)
    seq = d["sequence"]
    if seq["divergences"]:
        first = seq["divergences"][0]
        assert first["a"] >= len(boot_block(2)) and first["b"] >= len(boot_block(2))
    # a replay: the same boot, the same experiment
    rc, d, err = compare_json(str(a), str(c), "--fail-on", "boot,changed,diverged",
                              cwd=tmp_path)
    assert rc == 0, err
    assert d["boot"]["identical"] and d["sequence"]["identical"]
    assert len(d["boot"]["a"]["lines"]) == len(boot_block(2)) + 2


def test_compare_recognises_boot_lines_in_console_text(two_memories, tmp_path):
    a, b, _ = two_memories
    r = smp("compare", str(a / "console.log"), str(b / "console.log"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "templates: mined" in out
    table = out[:out.index("boot lines (")]
    assert "total memory" not in table and "rebooting" not in table
    boot = out[out.index("boot lines ("):]
    assert "- A  total memory = 32768 KB" in boot and "+ B  total memory = 16384 KB" in boot


def test_catalogue_json_keeps_the_boot_tag_and_omits_an_empty_one():
    cat = Catalogue()
    plain = cat.add("pmap_enter", "pmap_enter: get ptp failed", "panic")
    boot = cat.add("", "mainbus0 (root)", tag="boot")
    d = cat.to_json()
    assert "tag" not in d["messages"][plain] and d["messages"][boot]["tag"] == "boot"
    back = Catalogue.from_json(json.loads(json.dumps(d)))
    assert back.message(boot).tag == "boot" and back.message(plain).tag == ""
    assert back.tagged("boot")[boot] and not back.tagged("boot")[plain]


def test_the_sequence_view_skips_boot_lines_but_numbers_lines_as_console_log(tmp_path):
    def log(total_kb: int, ncpu: int, run: list[str]) -> list[str]:
        boot = [x.replace("avail memory = *", f"avail memory = {total_kb - 64} KB")
                for x in boot_block(ncpu, total_kb=total_kb)]
        return [f"[    0.000000] cpu0: {x}" for x in boot] + run + \
            [f"[    0.400000] cpu0: {x}" for x in SHUTDOWN]

    steal = ("[    0.100000] cpu1: pmap_steal_ptp: stole PTP pa 0x01a3c000 from pmap "
             "0xc0d1e000 va 0x08400000")
    kill = "[    0.200000] cpu0: UVM: pid 100 (cc1), uid 0 killed: out of swap"
    kill2 = "[    0.300000] cpu1: UVM: pid 101 (cc1), uid 0 killed: out of swap"
    fail = "[    0.300000] cpu1: pmap_enter: get ptp failed"
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_text("\n".join(log(32768, 2, [steal, kill, fail])) + "\n")
    b.write_text("\n".join(log(16384, 3, [steal, kill, kill2, fail])) + "\n")
    r = smp("compare", str(a), str(b), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # 16 boot lines in A, 18 in B: the runs agree on their first two lines after them
    assert "A and B agree on 2 line(s); first divergence at A:19 B:21 (lines differ)" \
        in r.stdout
    assert "      A:17 B:19  [    0.100000] cpu1: pmap_steal_ptp" in r.stdout
    assert "resync at A:19 B:22" in r.stdout
    assert a.read_text().splitlines()[18] == fail and b.read_text().splitlines()[20] == kill2
