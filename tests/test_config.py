"""Machine profiles and kernel configurations: parsing, the shipped files, overrides, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from smp import config
from smp.config import (
    KernelConfig,
    MachineProfile,
    RunConfig,
    apply_overrides,
    list_kernels,
    list_machines,
    load_kernel,
    load_machine,
    load_run_config,
    parse_duration,
    parse_onoff,
    parse_size,
)
from smp.errors import BadInput

K, M, G = 1 << 10, 1 << 20, 1 << 30


def bad(fn, *args) -> str:
    """Call fn, expect BadInput, check its message is one line, and return it."""
    with pytest.raises(BadInput) as info:
        fn(*args)
    message = str(info.value)
    assert message and "\n" not in message and "\r" not in message
    return message


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """Work in an empty directory, so files are named as a user would type them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return path.name


# --- value parsers -------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("4K", 4 * K), ("16M", 16 * M), ("1G", G), ("4096", 4096), (4096, 4096), (0, 0),
    ("4KiB", 4 * K), ("16MiB", 16 * M), ("1GiB", G), ("4KB", 4 * K), ("4B", 4),
    ("4k", 4 * K), ("16m", 16 * M), ("1g", G), ("16mib", 16 * M), ("16mb", 16 * M),
    (" 16 M ", 16 * M), ("1.5M", 1536 * K), ("0.5G", 512 * M),
])
def test_parse_size_accepts_units(text, expected):
    assert parse_size(text, "x") == expected


@pytest.mark.parametrize("text", [
    "abc", "", "-4K", "4T", "4KK", "K", "4Ki", "1.3K", "4 096", -1, True, 4.0, None,
])
def test_parse_size_rejects(text):
    message = bad(parse_size, text, "m.toml: machine.swap")
    assert message == (f"m.toml: machine.swap: expected a size such as 4K, 16M or 1G, "
                       f"got {text!r}")


@pytest.mark.parametrize("text, expected", [
    ("200ms", 200_000_000), ("1.5s", 1_500_000_000), ("10us", 10_000), ("10µs", 10_000),
    ("50ns", 50), ("2", 2_000_000_000), (2, 2_000_000_000), (0.25, 250_000_000),
    ("0.1", 100_000_000), (0.1, 100_000_000), ("10 ms", 10_000_000), ("10MS", 10_000_000),
    ("0", 0),
])
def test_parse_duration_accepts_units(text, expected):
    assert parse_duration(text, "x") == expected


@pytest.mark.parametrize("text", [
    "abc", "", "-1s", "1h", "1m", "s", "1 s s", -1, float("inf"), float("nan"), True, None,
])
def test_parse_duration_rejects(text):
    message = bad(parse_duration, text, "w.toml: run.duration")
    assert message == (f"w.toml: run.duration: expected a duration such as 200ms, 1.5s or "
                       f"10us, got {text!r}")


@pytest.mark.parametrize("text, expected", [
    ("on", True), ("off", False), ("true", True), ("false", False), ("yes", True),
    ("no", False), ("1", True), ("0", False), ("ON", True), (" Off ", False),
    (True, True), (False, False), (1, True), (0, False),
])
def test_parse_onoff(text, expected):
    assert parse_onoff(text, "x") is expected


@pytest.mark.parametrize("text", ["maybe", "", "2", 2, None, "onn"])
def test_parse_onoff_rejects(text):
    assert bad(parse_onoff, text, "k.toml: kernel.hist") == (
        f"k.toml: kernel.hist: expected on or off, got {text!r}")


# --- the shipped files -----------------------------------------------------------------------

MACHINES = {
    # name: (ncpu, physmem, swap, maxproc)
    "i386mp-2": (2, 32 * M, 64 * M, 512),
    "i386mp-4": (4, 32 * M, 64 * M, 512),
    "i386mp-8": (8, 64 * M, 128 * M, 1024),
    "i386mp-16": (16, 256 * M, 256 * M, 2048),
    "tiny": (2, 4 * M, 4 * M, 512),
    "big-64": (64, G, G, 8192),
}

KERNELS = {
    # name: (steal, biglock, shootdown_on_steal)
    "netbsd-2001-i386mp": ({"ptp", "pv"}, True, True),
    "netbsd-2001-nosteal": (set(), True, True),
    "netbsd-2000-steal-localflush": ({"ptp", "pv"}, True, False),
    "netbsd-2002-finegrained": (set(), False, True),
    "default": ({"ptp", "pv"}, True, True),
}


def test_listings_name_every_shipped_file_in_natural_order():
    assert set(MACHINES) <= set(list_machines())
    assert set(KERNELS) <= set(list_kernels())
    names = list_machines()
    assert names.index("i386mp-2") < names.index("i386mp-4") < names.index("i386mp-16")


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_shipped_machine_loads(name):
    machine = load_machine(name)
    assert (machine.ncpu, machine.physmem, machine.swap, machine.maxproc) == MACHINES[name]
    assert machine.name == name
    assert machine.path == f"shared/machines/{name}.toml"
    assert machine.npages == machine.physmem // 4096
    assert machine.swpages == machine.swap // 4096
    assert machine.hz == 100
    assert machine.trace_ring & (machine.trace_ring - 1) == 0


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_shipped_kernel_loads(name):
    kernel = load_kernel(name)
    steal, biglock, shootdown = KERNELS[name]
    assert kernel.steal == frozenset(steal)
    assert (kernel.biglock, kernel.shootdown_on_steal) == (biglock, shootdown)
    assert (kernel.reserve_kernel, kernel.reserve_pagedaemon) == (5, 1)
    assert (kernel.freemin, kernel.freetarg) == (0, 0)
    assert kernel.lockstat and not kernel.hist and not kernel.diagnostic
    assert not kernel.pmap_canfail_leak and not kernel.pv_steal_attrs
    assert kernel.path == f"shared/kernels/{name}.toml"


@pytest.mark.parametrize("path", sorted((config.SHARED / "machines").glob("*.toml"))
                         + sorted((config.SHARED / "kernels").glob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_files_say_what_they_model(path):
    text = path.read_text()
    header = text[: text.index("\n[")].splitlines()
    assert header[0] == f"# shared/{path.parent.name}/{path.name}"
    assert len(header) >= 2 and all(line.startswith("# ") for line in header)


def test_default_kernel_is_the_2001_i386mp_kernel():
    default, i386mp = load_kernel("default").to_dict(), load_kernel("netbsd-2001-i386mp").to_dict()
    for d in (default, i386mp):
        del d["name"], d["path"]
    assert default == i386mp
    assert default["diagnostic"] is False


def test_builtin_defaults_match_the_default_files():
    assert MachineProfile().to_dict() | {"name": "i386mp-4"} == (
        load_machine("i386mp-4").to_dict() | {"path": "<builtin>"})
    assert KernelConfig().to_dict() | {"name": "default"} == (
        load_kernel("default").to_dict() | {"path": "<builtin>"})


def test_to_dict_is_json_and_round_trips():
    machine, kernel = load_machine("tiny"), load_kernel("netbsd-2001-nosteal")
    run = RunConfig(machine, kernel, ("steal=none",))
    decoded = json.loads(json.dumps(run.to_dict()))
    assert decoded["kernel"]["steal"] == "none"
    assert decoded["machine"]["physmem"] == 4 * M
    assert decoded["overrides"] == ["steal=none"]
    m_table = {k: v for k, v in decoded["machine"].items() if k not in ("name", "path")}
    k_table = {k: v for k, v in decoded["kernel"].items() if k not in ("name", "path")}
    assert config.machine_from_table(m_table, name="tiny", path=machine.path) == machine
    assert config.kernel_from_table(k_table, name=kernel.name, path=kernel.path) == kernel


def test_missing_keys_take_defaults(cwd):
    machine = load_machine(write(cwd / "m.toml", "[machine]\nncpu = 2\n"))
    assert (machine.name, machine.path, machine.ncpu) == ("m", "m.toml", 2)
    assert (machine.physmem, machine.swap, machine.trace_ring) == (32 * M, 64 * M, 65536)
    kernel = load_kernel(write(cwd / "k.toml", '[kernel]\nsteal = "pv"\n'))
    assert kernel.steal == {"pv"} and kernel.biglock and kernel.reserve_kernel == 5


def test_sizes_round_down_to_pages(cwd):
    machine = load_machine(write(cwd / "m.toml", '[machine]\nphysmem = 4194404\nswap = "4095"\n'))
    assert machine.physmem == 4 * M and machine.swap == 0


def test_toml_booleans_and_lists(cwd):
    kernel = load_kernel(write(cwd / "k.toml", '[kernel]\nbiglock = false\nsteal = ["pv"]\n'))
    assert kernel.biglock is False and kernel.steal == {"pv"}


def test_load_by_path_with_directory(tmp_path):
    (tmp_path / "boxes").mkdir()
    path = tmp_path / "boxes" / "mine.toml"
    path.write_text("[machine]\nncpu = 3\n")
    machine = load_machine(str(path))
    assert (machine.name, machine.path, machine.ncpu) == ("mine", str(path), 3)


# --- pagedaemon tuning -----------------------------------------------------------------------

@pytest.mark.parametrize("npages, expected", [
    (8192, (64, 85)),     # 32M: npages/20 = 409, clamped to 256 KB = 64 pages
    (1024, (51, 68)),     # 4M: npages/20 = 51
    (512, (25, 33)),      # 2M
    (100, (6, 8)),        # npages/20 = 5, forced up to reserve_kernel+1 = 6
    (40, (6, 8)),         # npages/20 = 2, clamped up to 16 KB = 4 pages, then forced to 6
])
def test_tuned_follows_uvmpd_tune(npages, expected):
    assert KernelConfig().tuned(npages) == expected


def test_tuned_forces_freemin_above_reserve_kernel():
    kernel = KernelConfig(reserve_kernel=100)
    assert kernel.tuned(8192) == (101, 134)


def test_tuned_keeps_configured_values():
    assert KernelConfig(freemin=10).tuned(8192) == (10, 13)
    assert KernelConfig(freemin=10, freetarg=20).tuned(8192) == (10, 20)
    assert KernelConfig(freetarg=100).tuned(8192) == (64, 100)
    assert KernelConfig(freemin=2).tuned(8192) == (2, 3)  # freemin*4/3 == freemin, so +1


def test_tuned_rejects_freetarg_not_above_freemin():
    message = bad(KernelConfig(path="k.toml", freetarg=30).tuned, 8192)
    assert message == ("k.toml: kernel.freetarg = 30: must be greater than kernel.freemin "
                       "(64 (auto for 8192 pages))")


def test_tuned_rejects_freetarg_beyond_memory():
    message = bad(KernelConfig(path="k.toml", freetarg=2000).tuned, 1024)
    assert message == "k.toml: kernel.freetarg = 2000: must be less than the machine's 1024 pages"


# --- overrides -------------------------------------------------------------------------------

def base():
    return load_machine("i386mp-4"), load_kernel("default")


def test_overrides_set_keys_of_both_sections():
    machine, kernel = base()
    m2, k2 = apply_overrides(machine, kernel, ["ncpu=8", "physmem=64M", "biglock=off",
                                               "hist=on", "freemin=100", "freetarg=150"])
    assert (m2.ncpu, m2.physmem, m2.swap) == (8, 64 * M, 64 * M)
    assert (k2.biglock, k2.hist, k2.freemin, k2.freetarg) == (False, True, 100, 150)
    assert (m2.name, m2.path, k2.name, k2.path) == (machine.name, machine.path,
                                                    kernel.name, kernel.path)
    assert (machine.ncpu, kernel.biglock) == (4, True)  # the originals are untouched


def test_overrides_accept_qualified_keys_and_later_wins():
    m2, k2 = apply_overrides(*base(), ["machine.ncpu=2", "kernel.steal=none", " ncpu = 16 ",
                                       "Kernel.Diagnostic=ON"])
    assert m2.ncpu == 16 and k2.steal == frozenset() and k2.diagnostic


def test_no_overrides_changes_nothing():
    machine, kernel = base()
    assert apply_overrides(machine, kernel, []) == (machine, kernel)


@pytest.mark.parametrize("text, expected, canonical", [
    ("ptp,pv", {"ptp", "pv"}, "ptp,pv"), ("ptp+pv", {"ptp", "pv"}, "ptp,pv"),
    ("all", {"ptp", "pv"}, "ptp,pv"), ("pv,ptp", {"ptp", "pv"}, "ptp,pv"),
    (" PTP , pv ", {"ptp", "pv"}, "ptp,pv"), ("ALL", {"ptp", "pv"}, "ptp,pv"),
    ("none", set(), "none"), ("ptp", {"ptp"}, "ptp"), ("pv", {"pv"}, "pv"),
])
def test_steal_syntax(text, expected, canonical):
    _, kernel = apply_overrides(load_machine("i386mp-4"), load_kernel("netbsd-2001-nosteal"),
                                [f"steal={text}"])
    assert kernel.steal == frozenset(expected)
    assert kernel.to_dict()["steal"] == canonical


def test_load_run_config_defaults_and_overrides():
    run = load_run_config()
    assert (run.machine.name, run.kernel.name, run.overrides) == ("i386mp-4", "default", ())
    run = load_run_config("tiny", "netbsd-2001-nosteal", ["ncpu=1", "diagnostic=on"])
    assert run.machine.ncpu == 1 and run.kernel.diagnostic and run.kernel.steal == frozenset()
    assert run.overrides == ("ncpu=1", "diagnostic=on")


# --- errors: overrides -----------------------------------------------------------------------

def test_override_without_equals():
    assert bad(apply_overrides, *base(), ["steal"]) == "-o steal: expected key=value"


def test_override_unknown_key_lists_both_sections():
    message = bad(apply_overrides, *base(), ["foo=1"])
    assert message == (
        f"-o foo=1: unknown key 'foo' (machine keys: {', '.join(config.MACHINE_KEYS)}; "
        f"kernel keys: {', '.join(config.KERNEL_KEYS)})")
    assert "machine keys: ncpu, physmem, swap, maxproc, trace_ring, hz" in message
    assert "kernel keys: steal, biglock, shootdown_on_steal, diagnostic" in message


@pytest.mark.parametrize("item, key", [
    ("machine.steal=none", "machine.steal"), ("kernel.ncpu=2", "kernel.ncpu"),
    ("cpu.ncpu=2", "cpu.ncpu"), ("=3", ""), ("NCPUS=2", "NCPUS"),
])
def test_override_key_in_the_wrong_section(item, key):
    assert bad(apply_overrides, *base(), [item]).startswith(f"-o {item}: unknown key {key!r} (")


@pytest.mark.parametrize("item, expected", [
    ("ncpu=abc", "-o ncpu=abc: machine.ncpu: expected an integer from 1 to 64, got 'abc'"),
    ("ncpu=", "-o ncpu=: machine.ncpu: expected an integer from 1 to 64, got ''"),
    ("ncpu=0", "-o ncpu=0: machine.ncpu = 0: must be an integer from 1 to 64"),
    ("machine.ncpu=65", "-o machine.ncpu=65: machine.ncpu = 65: must be an integer from 1 to 64"),
    ("maxproc=4", "-o maxproc=4: machine.maxproc = 4: must be an integer from 8 to 65536"),
    ("hz=5", "-o hz=5: machine.hz = 5: must be an integer from 10 to 10000"),
    ("trace_ring=1000",
     "-o trace_ring=1000: machine.trace_ring = 1000: must be a power of two from 64 to 4194304"),
    ("physmem=lots",
     "-o physmem=lots: machine.physmem: expected a size such as 4K, 16M or 1G, got 'lots'"),
    ("swap=32G", "-o swap=32G: machine.swap = 32G: too large: at most 16G of swap"),
    ("biglock=maybe", "-o biglock=maybe: kernel.biglock: expected on or off, got 'maybe'"),
    ("steal=ptp,foo", "-o steal=ptp,foo: kernel.steal = ptp,foo: unknown stealing path 'foo' "
                      "(known: ptp, pv; or none, all)"),
    ("steal=", "-o steal=: kernel.steal: expected a list of stealing paths such as ptp,pv, ptp, "
               "pv, none or all, got ''"),
    ("reserve_kernel=-1",
     "-o reserve_kernel=-1: kernel.reserve_kernel = -1: must be an integer from 0 to 1000"),
])
def test_override_bad_values(item, expected):
    assert bad(apply_overrides, *base(), [item]) == expected


def test_override_cross_check_blames_the_override(cwd):
    machine = load_machine(write(cwd / "m.toml", '[machine]\nncpu = 1\nphysmem = "2M"\n'))
    message = bad(apply_overrides, machine, KernelConfig(), ["ncpu=64"])
    assert message == ("-o ncpu=64: machine.physmem = 2M: too small for 64 CPUs: at least 576 "
                       "pages (2304K) are needed, 64 for the kernel and 8 per CPU")


def test_override_reserve_pagedaemon_above_reserve_kernel():
    message = bad(apply_overrides, *base(), ["reserve_pagedaemon=6"])
    assert message == ("-o reserve_pagedaemon=6: kernel.reserve_pagedaemon = 6: must be an "
                       "integer from 0 to kernel.reserve_kernel (5)")
    # Raising the other bound first makes it fine.
    _, kernel = apply_overrides(*base(), ["reserve_kernel=10", "reserve_pagedaemon=6"])
    assert (kernel.reserve_kernel, kernel.reserve_pagedaemon) == (10, 6)


def test_override_freetarg_checked_against_freemin_and_memory():
    message = bad(apply_overrides, *base(), ["freemin=100", "freetarg=50"])
    assert message == ("-o freetarg=50: kernel.freetarg = 50: must be greater than "
                       "kernel.freemin (100)")
    message = bad(load_run_config, "tiny", "default", ["freetarg=2000"])
    assert message == ("-o freetarg=2000: kernel.freetarg = 2000: must be less than the "
                       "machine's 1024 pages")


# --- errors: files ---------------------------------------------------------------------------

def test_unknown_machine_name_lists_the_known_ones():
    message = bad(load_machine, "nope")
    assert message.startswith("shared/machines/nope.toml: no such machine profile (known: ")
    assert "big-64, i386mp-2, i386mp-4, i386mp-8, i386mp-16, tiny" in message


def test_unknown_kernel_name_lists_the_known_ones():
    message = bad(load_kernel, "netbsd-1999")
    assert message.startswith("shared/kernels/netbsd-1999.toml: no such kernel configuration "
                              "(known: ")
    assert "netbsd-2001-nosteal" in message


def test_missing_file(cwd):
    assert bad(load_machine, "foo.toml") == "foo.toml: no such file"
    assert bad(load_kernel, "sub/k.toml") == "sub/k.toml: no such file"
    # A name with .toml is a path; say so when a shipped profile has that name.
    assert bad(load_machine, "tiny.toml") == (
        "tiny.toml: no such file (did you mean the machine profile 'tiny'?)")


def test_unreadable_path(cwd):
    (cwd / "dir.toml").mkdir()
    assert bad(load_machine, "dir.toml").startswith("dir.toml: cannot read: ")


def test_malformed_toml(cwd):
    message = bad(load_machine, write(cwd / "bad.toml", "[machine\nncpu = 4\n"))
    assert message.startswith("bad.toml: malformed TOML: ")
    assert "line 1" in message


def test_not_utf8(cwd):
    (cwd / "bin.toml").write_bytes(b"[machine]\n# \xff\xfe\n")
    assert bad(load_machine, "bin.toml") == "bin.toml: not UTF-8 text"


@pytest.mark.parametrize("text, expected", [
    ("[machine]\nncpu = 0\n", "m.toml: machine.ncpu = 0: must be an integer from 1 to 64"),
    ('[machine]\nncpu = "four"\n',
     "m.toml: machine.ncpu: expected an integer from 1 to 64, got 'four'"),
    ("[machine]\nncpu = 4.0\n", "m.toml: machine.ncpu: expected an integer from 1 to 64, got 4.0"),
    ('[machine]\nphysmem = "4K"\n',
     "m.toml: machine.physmem = 4K: too small: at least 2M (512 pages) is needed to boot"),
    ('[machine]\nphysmem = "8G"\n',
     "m.toml: machine.physmem = 8G: too large: an i386 without PAE addresses at most 4G"),
    ('[machine]\nncpu = 64\nphysmem = "2M"\n',
     "m.toml: machine.physmem = 2M: too small for 64 CPUs: at least 576 pages (2304K) are "
     "needed, 64 for the kernel and 8 per CPU"),
    ("[machine]\ntrace_ring = 32\n",
     "m.toml: machine.trace_ring = 32: must be a power of two from 64 to 4194304"),
    ("[machine]\nhz = true\n",
     "m.toml: machine.hz: expected an integer from 10 to 10000, got True"),
    ("[machine]\nfoo = 1\n", "m.toml: machine.foo: unknown key (known: ncpu, physmem, swap, "
                             "maxproc, trace_ring, hz, park_after, disk_latency)"),
    ("[machine]\nncpu = 4\n[kernel]\nsteal = \"none\"\n",
     "m.toml: unknown section [kernel] (expected [machine])"),
    ("ncpu = 4\n[machine]\n", "m.toml: ncpu: key outside the [machine] section"),
    ("", "m.toml: no [machine] section"),
    ("machine = 4\n", "m.toml: machine: expected a [machine] section, got 4"),
])
def test_bad_machine_files(cwd, text, expected):
    assert bad(load_machine, write(cwd / "m.toml", text)) == expected


@pytest.mark.parametrize("text, expected", [
    ('[kernel]\nsteal = "ptp,tlb"\n',
     "k.toml: kernel.steal = ptp,tlb: unknown stealing path 'tlb' (known: ptp, pv; or none, all)"),
    ('[kernel]\nbiglock = "maybe"\n', "k.toml: kernel.biglock: expected on or off, got 'maybe'"),
    ("[kernel]\nreserve_kernel = 2000\n",
     "k.toml: kernel.reserve_kernel = 2000: must be an integer from 0 to 1000"),
    ("[kernel]\nreserve_kernel = 2\nreserve_pagedaemon = 3\n",
     "k.toml: kernel.reserve_pagedaemon = 3: must be an integer from 0 to "
     "kernel.reserve_kernel (2)"),
    ("[kernel]\nfreemin = 50\nfreetarg = 50\n",
     "k.toml: kernel.freetarg = 50: must be greater than kernel.freemin (50)"),
    ("[kernel]\nbigLock = 1\n", "k.toml: kernel.bigLock: unknown key (known: steal, biglock, "
     "shootdown_on_steal, diagnostic, lockstat, hist, reserve_kernel, reserve_pagedaemon, "
     "freemin, freetarg, pmap_canfail_leak, pv_steal_attrs, nkpde, pageout_free, intr_biglock, "
     "swapout)"),
    ("[kernel.extra]\nx = 1\n", "k.toml: kernel.extra: unknown key (known: steal, biglock, "
     "shootdown_on_steal, diagnostic, lockstat, hist, reserve_kernel, reserve_pagedaemon, "
     "freemin, freetarg, pmap_canfail_leak, pv_steal_attrs, nkpde, pageout_free, intr_biglock, "
     "swapout)"),
    ("[machine]\nncpu = 4\n", "k.toml: unknown section [machine] (expected [kernel])"),
])
def test_bad_kernel_files(cwd, text, expected):
    assert bad(load_kernel, write(cwd / "k.toml", text)) == expected


def test_odd_values_stay_on_one_line():
    message = bad(apply_overrides, *base(), ["steal=ptp\nrm -rf"])
    assert message == ("-o steal=ptp rm -rf: kernel.steal = 'ptp\\nrm -rf': unknown stealing "
                       "path 'ptp\\nrm -rf' (known: ptp, pv; or none, all)")


# --- where the files live ----------------------------------------------------------------------

def test_shared_dir_is_looked_up_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "ROOT", tmp_path)
    monkeypatch.setattr(config, "SHARED", tmp_path / "shared")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shared" / "machines").mkdir(parents=True)
    assert list_machines() == []
    assert bad(load_machine, "i386mp-4") == (
        "shared/machines/i386mp-4.toml: no such machine profile (known: none)")
    (tmp_path / "shared" / "machines" / "lab.toml").write_text("[machine]\nncpu = 6\n")
    assert list_machines() == ["lab"]
    assert load_machine("lab").path == "shared/machines/lab.toml"


def test_from_another_directory_a_missing_profile_is_named_by_a_path_that_works_there(
        tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    msg = bad(load_machine, "nope")
    shown = msg.split(": no such machine profile")[0]
    assert Path(shown).is_absolute()
    assert Path(shown).parent == (config.SHARED / "machines").resolve()
    assert load_machine("i386mp-4").path == str((config.SHARED / "machines" /
                                                 "i386mp-4.toml").resolve())


def test_smp_home_moves_the_root(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, SMP_HOME=str(tmp_path), PYTHONPATH=str(repo))
    out = subprocess.run(
        [sys.executable, "-c",
         "from smp import config as c; print(c.ROOT); print(c.SHARED); print(c.WORKLOADS)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    root = tmp_path.resolve()
    assert out == [str(root), str(root / "shared"), str(root / "workloads")]


@pytest.mark.skipif("SMP_HOME" in os.environ, reason="SMP_HOME moves the root on purpose")
def test_default_root_is_the_repository():
    assert config.ROOT == Path(__file__).resolve().parent.parent
    assert (config.SHARED / "machines" / "i386mp-4.toml").is_file()
