"""The shipped load scripts (workloads/*.toml) run to completion, shortened for CI.

Each script is run the way a user would, ``python -m smp run NAME`` in a subprocess, on two
CPUs in lockstep mode for 100 ms of virtual time, so the slice is the same however loaded
the host is; the whole file takes about half a minute on a 2-core host.
A run must end normally (exit status 0, status ``done`` or ``timeout``) -- none of the
scripts is meant to panic in its own kernel configuration (``default``: both stealing
paths) -- with DIAGNOSTIC on finding nothing and skipping nothing, and its summary.json
must be sane: the counters are there and add up, no stale TLB
entry was used, the trace lost nothing.  ``-m slow`` runs each script at full length instead.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import smp

from smp.rundir import format as fmt

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.stem for p in (REPO / "workloads").glob("*.toml"))
COUNTERS = ("faults", "pmap_enter", "memrefs", "exits", "ptp_steals", "pv_steals",
            "pmfail_waits", "oom_kills", "stale_tlb")


def check_run(name: str, out: Path, r: subprocess.CompletedProcess, ncpu: int,
              limit_s: float | None, sliced: bool = False) -> dict:
    """The checks every shipped run must pass; returns its summary."""
    assert r.returncode == 0, f"{name}: exit {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout.splitlines()[0] == str(out)
    s = json.loads((out / "summary.json").read_text())
    assert s["schema"] == fmt.SUMMARY_SCHEMA and s["exit_code"] == 0
    assert s["status"] in ("done", "timeout"), (s["status"], s["message"])
    assert s["ncpu"] == ncpu and s["load_script"] == name and s["kernel"] == "default"
    if limit_s is not None:
        assert s["elapsed_s"] < limit_s + 5
    kc = s["kernel_counters"]
    c = kc["counters"]
    for key in COUNTERS:
        assert key in c, key
        assert isinstance(c[key], int) and c[key] >= 0, (key, c[key])
    assert c["pmap_enter"] > 0                        # every script maps something
    if not sliced:
        assert c["faults"] > 0 and c["memrefs"] > 0   # (kmem-storm faults later on)
    assert c["stale_tlb"] == 0
    procs = kc["processes"]
    assert procs["started"] >= kc["load"]["initial_processes"] > 0
    assert procs["started"] == procs["exited"] + procs["alive"]
    if s["status"] == "done":
        assert procs["alive"] == 0
    assert s["trace"]["dropped"] == 0
    assert all(cpu["dropped"] == 0 and cpu["seq_gaps"] == 0 for cpu in s["trace"]["per_cpu"])
    assert len(s["cpus"]) == ncpu
    m = json.loads((out / "manifest.json").read_text())
    script = REPO / "workloads" / f"{name}.toml"
    assert m["schema"] == fmt.MANIFEST_SCHEMA and m["load_script"]["name"] == name
    assert m["load_script"]["sha256"] == hashlib.sha256(script.read_bytes()).hexdigest()
    assert m["machine"]["ncpu"] == ncpu
    assert json.loads((out / "lockstat.json").read_text())["schema"] == fmt.LOCKSTAT_SCHEMA
    assert (out / "console.log").is_file()
    return s


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_script_runs_100ms_of_virtual_time_on_two_cpus_in_lockstep(tmp_path, name):
    """The CI slice: 100 ms of virtual time in lockstep, so what the run gets done does
    not depend on how loaded the host is (a fixed host duration did)."""
    out = tmp_path / "run"
    r = smp("run", name, "--out", str(out), "--quiet", "--lockstep", "--seed", "1",
            "--time-limit", "100ms", "-o", "ncpu=2", "-o", "diagnostic=on", cwd=tmp_path,
            timeout=180)
    s = check_run(name, out, r, ncpu=2, limit_s=None, sliced=True)
    m = json.loads((out / "manifest.json").read_text())
    assert m["time_limit_s"] == 0.1 and m["overrides"] == ["ncpu=2", "diagnostic=on"]
    assert m["mode"] == "lockstep"
    d = s["diagnostic"]                 # a normal end leaves every CPU outside the kernel
    assert d["violations"] == [] and d["skipped"] == [], d
    if s["status"] == "timeout":
        assert s["schedule"]["virtual_ns"] >= 100_000_000


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_script_runs_at_full_length_on_its_own_machine(request, tmp_path, name):
    if "slow" not in (request.config.option.markexpr or ""):
        pytest.skip("full length (about a minute for all five): select with -m slow")
    out = tmp_path / "run"
    r = smp("run", name, "--out", str(out), "--quiet", cwd=tmp_path, timeout=600)
    check_run(name, out, r, ncpu=4, limit_s=None)     # every shipped script names i386mp-4


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_script_opens_with_a_header_saying_what_it_models(name):
    text = (REPO / "workloads" / f"{name}.toml").read_text()
    header = re.match(r"((?:#.*\n)+)", text)
    assert header and header.group(1).startswith(f"# {name}.toml -- ")
    assert len(header.group(1).splitlines()) >= 5
    assert "What to look for" in header.group(1) or "what to look for" in header.group(1)


def test_readme_describes_every_shipped_script():
    readme = (REPO / "workloads" / "README.md").read_text()
    section = readme.split("## The shipped scripts", 1)[1].split("\n## ", 1)[0]
    assert sorted(re.findall(r"^\* \*\*`([\w-]+)`\*\*", section, flags=re.M)) == SHIPPED
