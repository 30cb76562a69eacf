"""Failpoints and lock delays (`--fail SPEC`, `[run] fail = [...]`), end to end through
`python -m smp run`.

* a bad spec is one line on stderr and exit status 2, before any run directory exists;
* each site does what it says: `pmap_alloc_ptp` (PMAP_CANFAIL waits when nothing can be
  stolen), `pmap_alloc_pv:nth=N` (exactly one failure), `every=N`, `pmap_alloc_pvpage`,
  `uvm_pagealloc` (fltnoram), and `trylock:pmap_steal_ptp` (every steal attempt fails);
* `delay:CLASS[@FUNCTION]=DURATION` raises that class's hold time per acquisition in
  lockstat.json -- exactly by the delay in lockstep mode, at least by it in free mode --
  and only at the named site;
* the specs are recorded in manifest.json, work from a load script, and a lockstep run
  with failpoints replays byte-identical.

The load is tests/fixtures/lockstep/touch.toml: two processes fault in 64 pages each and
nothing else, so every pmap_enter is a user fault with PMAP_CANFAIL (a failure is a wait,
never a panic).  Runs are lockstep unless the test is about free mode, so counts are exact.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import smp

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures" / "lockstep"
TOUCH = str(FIX / "touch.toml")
PAGES = 2 * 64                      # pages touch.toml faults in


def smp_all(*commands: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Several independent `smp` commands, two at a time; results in order."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda c: smp(*c, cwd=cwd), commands))


def touch(out: Path, *extra: str, lockstep: bool = True) -> list[str]:
    """Arguments of one run of touch.toml (seed 0) into ``out``."""
    return ["run", TOUCH, "--seed", "0", "--out", str(out), "-q", *extra] + \
        (["--lockstep"] if lockstep else [])


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def counters(run: Path) -> dict:
    return summary(run)["kernel_counters"]["counters"]


def hold_per_acq(run: Path, cls: str, site: str | None = None) -> float:
    """Mean hold time (ns) of lock class ``cls`` (at ``site``) over all CPUs."""
    recs = [r for r in json.loads((run / "lockstat.json").read_text())["records"]
            if r["class"] == cls and (site is None or r["site"] == site)]
    acq = sum(r["acq"] for r in recs)
    assert acq > 0, f"no acquisition of {cls} at {site or 'any site'}"
    return sum(r["hold_total"] for r in recs) / acq


# -- bad specs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("bogus", "expected SITE:p=P, SITE:nth=N, SITE:every=N or delay:LOCKCLASS"),
    ("uvm_pagealloc:p=0.5:p=1", "expected SITE:p=P"),
    ("nosite:p=0.5", "unknown site 'nosite' (known: uvm_pagealloc, pmap_alloc_ptp"),
    ("trylock:pmap_enter:p=1", "unknown try-lock site 'pmap_enter' (known: pmap_steal_ptp"),
    ("pmap_alloc_ptp:p=2", "p must be a probability from 0 to 1"),
    ("pmap_alloc_pv:nth=0", "nth must be a positive integer"),
    ("pmap_alloc_pv:nth=2.5", "nth must be a positive integer"),
    ("pmap_alloc_ptp:every=-1", "every must be a positive integer"),
    ("delay:pvalloc_lock=abc", "expected a duration such as"),
    ("delay:pvalloc_lock@pmap_alloc_pv=-5us", "expected a duration such as"),
])
def test_a_bad_spec_is_one_line_exit_2_and_no_run_directory(tmp_path, spec, message):
    out = tmp_path / "run"
    r = smp("run", TOUCH, "--fail", spec, "--out", str(out), "-q", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert spec in lines[0]
    assert not out.exists()


def test_a_delay_on_an_unknown_lock_class_names_the_known_classes(tmp_path):
    r = smp("run", TOUCH, "--fail", "delay:nosuch_lock=1us", "--out", str(tmp_path / "run"),
            "-q", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "delay:nosuch_lock: no lock class of that name (known: " in lines[0]
    assert "pvalloc_lock" in lines[0] and "pmaps_lock" in lines[0]


def test_a_delay_on_an_unknown_lock_class_leaves_no_run_directory(tmp_path):
    out = tmp_path / "run"
    r = smp("run", TOUCH, "--fail", "delay:nosuch_lock=1us", "--out", str(out), "-q",
            cwd=tmp_path)
    assert r.returncode == 2
    assert not out.exists(), f"left behind: {sorted(p.name for p in out.iterdir())}"


def test_a_bad_spec_in_a_load_script_names_the_file_and_key(tmp_path):
    p = tmp_path / "load.toml"
    p.write_text((FIX / "touch.toml").read_text().replace(
        'time_limit = "2s"', 'time_limit = "2s"\nfail = ["pmap_alloc_pv:every=0"]'))
    r = smp("run", str(p), "--out", str(tmp_path / "run"), "-q", cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "load.toml" in lines[0] and "run.fail" in lines[0], r.stderr
    assert "every must be a positive integer" in lines[0]


# -- failpoint sites ------------------------------------------------------------------------------

def test_failed_ptp_allocations_without_stealing_make_faults_wait(tmp_path):
    out = tmp_path / "run"
    r = smp(*touch(out, "-o", "steal=none", "--fail", "pmap_alloc_ptp:p=1",
                   "--time-limit", "20ms"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert summary(out)["status"] == "timeout"        # no fault can ever complete
    c = counters(out)
    assert c["canfail_enomem"] > 0 and c["pmfail_waits"] > 0
    # the (virtual) time limit halts the CPUs where they are: one may be inside a fault
    # whose pmap_enter it has counted but not failed yet, or not waited for yet
    assert c["pmap_enter"] - c["pmfail_waits"] in (0, 1)
    assert c["canfail_enomem"] - c["pmfail_waits"] in (0, 1)
    assert c["ptp_alloc"] == 0 and c["ptp_steals"] == 0 and c["ptp_steal_fail"] == 0


@pytest.mark.parametrize("lockstep", [True, False], ids=["lockstep", "free"])
def test_the_nth_pv_allocation_fails_exactly_once(tmp_path, lockstep):
    base, failed = tmp_path / "base", tmp_path / "failed"
    rb, rf = smp_all(touch(base, lockstep=lockstep),
                     touch(failed, "--fail", "pmap_alloc_pv:nth=10", lockstep=lockstep),
                     cwd=tmp_path)
    assert rb.returncode == 0 and rf.returncode == 0, rb.stderr + rf.stderr
    b, c = counters(base), counters(failed)
    assert b["canfail_enomem"] == 0 and b["pmap_enter"] == PAGES
    assert c["canfail_enomem"] == 1 and c["pmfail_waits"] == 1
    assert c["pmap_enter"] == PAGES + 1               # the failed one, retried once
    assert summary(failed)["status"] == "done"


def test_every_nth_pv_allocation_fails(tmp_path):
    out = tmp_path / "run"
    r = smp(*touch(out, "--fail", "pmap_alloc_pv:every=20"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    c = counters(out)
    assert summary(out)["status"] == "done"
    assert c["canfail_enomem"] == c["pmap_enter"] // 20 > 1
    assert c["pmap_enter"] == PAGES + c["canfail_enomem"]


def test_a_failed_pv_page_allocation_is_counted(tmp_path):
    out = tmp_path / "run"
    big = tmp_path / "touch300.toml"           # more mappings than pv_initpage has entries
    big.write_text(Path(TOUCH).read_text().replace('"256K"', '"1200K"'))
    args = touch(out, "--fail", "pmap_alloc_pvpage:nth=1")
    r = smp(*[str(big) if a == TOUCH else a for a in args], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    c = counters(out)
    assert summary(out)["status"] == "done"
    assert c["pvpage_fail"] == 1 and c["pvpage_alloc"] >= 1
    # the first new pv page is a refill below PVE_LOWAT (pmap_init's pv_initpage gave the
    # first entries): its failure costs no mapping, the next refill succeeds
    assert c["canfail_enomem"] == 0


def test_uvm_pagealloc_failures_raise_fltnoram(tmp_path):
    base, failed = tmp_path / "base", tmp_path / "failed"
    rb, rf = smp_all(touch(base), touch(failed, "--fail", "uvm_pagealloc:p=0.2"), cwd=tmp_path)
    assert rb.returncode == 0 and rf.returncode == 0, rb.stderr + rf.stderr
    assert counters(base)["fltnoram"] == 0
    c = counters(failed)
    assert c["fltnoram"] > 0 and c["uvm_wait"] >= c["fltnoram"]
    assert summary(failed)["status"] == "done"       # the faults wait and retry
    assert c["flt_przero"] == PAGES


def test_a_failed_steal_trylock_makes_every_ptp_steal_attempt_fail(tmp_path):
    steal, nosteal, starved = tmp_path / "steal", tmp_path / "nosteal", tmp_path / "starved"
    results = smp_all(
        # every 2nd PTP allocation fails: the second process steals the first one's PTP
        touch(steal, "--fail", "pmap_alloc_ptp:every=2", "--time-limit", "50ms"),
        touch(nosteal, "--fail", "pmap_alloc_ptp:every=2", "--fail",
              "trylock:pmap_steal_ptp:p=1", "--time-limit", "50ms"),
        # the form of the issue: PTP allocation and the steal's try-lock both always fail
        touch(starved, "--fail", "pmap_alloc_ptp:p=1", "--fail", "trylock:pmap_steal_ptp:p=1",
              "--time-limit", "20ms"),
        cwd=tmp_path)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert counters(steal)["ptp_steals"] >= 1
    c = counters(nosteal)
    assert c["ptp_steals"] == 0 and c["ptp_steal_fail"] >= 1
    assert c["ptp_steal_fail"] == c["canfail_enomem"]
    c = counters(starved)
    assert c["ptp_steals"] == 0 and c["ptp_alloc"] == 0
    assert c["ptp_steal_fail"] == c["canfail_enomem"] == c["pmfail_waits"] > 0


# -- lock delays ----------------------------------------------------------------------------------

def test_a_lock_delay_raises_the_hold_time_of_its_class_by_exactly_the_delay_in_lockstep(
        tmp_path):
    base, slow = tmp_path / "base", tmp_path / "slow"
    rb, rs = smp_all(touch(base), touch(slow, "--fail", "delay:pvalloc_lock=200us"),
                     cwd=tmp_path)
    assert rb.returncode == 0 and rs.returncode == 0, rb.stderr + rs.stderr
    before, after = hold_per_acq(base, "pvalloc_lock"), hold_per_acq(slow, "pvalloc_lock")
    assert before < 10_000
    assert 200_000 <= after - before < 210_000, (before, after)
    # a class that is never held around pvalloc_lock is not slowed down
    assert hold_per_acq(slow, "fpageq") == hold_per_acq(base, "fpageq")
    # the delay is virtual time: the run's virtual length grows by about acq x 200 us
    grow = summary(slow)["schedule"]["virtual_ns"] - summary(base)["schedule"]["virtual_ns"]
    assert grow >= 100 * 200_000


def test_a_lock_delay_in_free_mode_holds_the_lock_at_least_that_long(tmp_path):
    base, slow = tmp_path / "base", tmp_path / "slow"
    rb, rs = smp_all(touch(base, lockstep=False),
                     touch(slow, "--fail", "delay:pvalloc_lock=200us", lockstep=False),
                     cwd=tmp_path)
    assert rb.returncode == 0 and rs.returncode == 0, rb.stderr + rs.stderr
    before, after = hold_per_acq(base, "pvalloc_lock"), hold_per_acq(slow, "pvalloc_lock")
    assert after >= 200_000 and after > 2 * before, (before, after)


def test_a_delay_at_a_named_site_slows_only_that_site(tmp_path):
    base, slow = tmp_path / "base", tmp_path / "slow"
    rb, rs = smp_all(touch(base),
                     touch(slow, "--fail", "delay:pvalloc_lock@pmap_free_pvs=200us"),
                     cwd=tmp_path)
    assert rb.returncode == 0 and rs.returncode == 0, rb.stderr + rs.stderr
    assert hold_per_acq(slow, "pvalloc_lock", "pmap_free_pvs") - \
        hold_per_acq(base, "pvalloc_lock", "pmap_free_pvs") == 200_000
    assert hold_per_acq(slow, "pvalloc_lock", "pmap_alloc_pv") == \
        hold_per_acq(base, "pvalloc_lock", "pmap_alloc_pv")


# -- manifest, load scripts, replay -------------------------------------------------------------

def test_failpoints_are_recorded_in_the_manifest_in_script_then_command_line_order(tmp_path):
    out = tmp_path / "run"
    specs = ["uvm_pagealloc:p=0.01", "trylock:uvmpd_scan:every=3",
             "delay:pmaps_lock@pmap_steal_ptp=100us"]
    r = smp("run", str(FIX / "touch-fail.toml"), "--lockstep", "--out", str(out), "-q",
            *[x for s in specs for x in ("--fail", s)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["failpoints"] == ["pmap_alloc_pv:nth=10", "delay:pvalloc_lock=20us"] + specs


def test_failpoints_in_a_load_script_work_and_replay_byte_identical(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    r = smp("run", str(FIX / "touch-fail.toml"), "--lockstep", "--seed", "3", "-o", "hist=on",
            "--out", str(a), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    c = counters(a)
    assert c["canfail_enomem"] == 1 and c["pmap_enter"] == PAGES + 1      # nth=10
    assert hold_per_acq(a, "pvalloc_lock") >= 20_000                      # the delay
    r = smp("run", "--replay", str(a), "--out", str(b), "-q", cwd=tmp_path)
    assert r.returncode == 0 and "identical" in r.stdout, r.stdout + r.stderr
    # the replay takes the script's failpoints from the script text, not twice
    assert json.loads((b / "manifest.json").read_text())["failpoints"] == \
        ["pmap_alloc_pv:nth=10", "delay:pvalloc_lock=20us"]
    assert counters(b)["canfail_enomem"] == 1


def test_a_lockstep_run_with_probabilistic_failpoints_replays_byte_identical(tmp_path):
    a = tmp_path / "a"
    r = smp("run", str(FIX / "steal.toml"), "-k", "netbsd-2001-i386mp", "--lockstep",
            "--seed", "2", "-o", "hist=on", "--fail", "pmap_alloc_ptp:p=0.5",
            "--fail", "trylock:pmap_steal_ptp:p=0.3", "--fail", "uvm_pagealloc:p=0.2",
            "--fail", "delay:pvalloc_lock=50us", "--out", str(a), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    c = counters(a)
    assert c["ptp_steals"] > 0 and c["fltnoram"] > 0          # the failpoints did fire
    r = smp("run", "--replay", str(a), "--out", str(tmp_path / "b"), "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "identical (console.log, hist.log, events.bin, lockstat.json)" in r.stdout


def test_probabilistic_failpoints_draw_from_the_seed(tmp_path):
    runs = [tmp_path / f"seed{s}" for s in range(2)]       # two at a time: one round
    results = smp_all(*[["run", TOUCH, "--lockstep", "--seed", str(s), "--fail",
                         "uvm_pagealloc:p=0.2", "--out", str(d), "-q"]
                        for s, d in enumerate(runs)], cwd=tmp_path)
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert len({counters(d)["fltnoram"] for d in runs}) == 2
