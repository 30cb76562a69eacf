"""Fuzzing the command line and damaged run directories: every case ends with exit 0 or 2
and never a traceback (issue 15's standing check).

The run directories are one real lockstep run, damaged by hypothesis: a file truncated,
random bytes written at a random offset, a JSON document with a wrong schema or a
missing key, two files swapped, a file removed.  Each damaged copy goes through
``smp trace`` (plain, --stats, --hist, --force), ``smp compare``, ``smp lockstat``
(plain, --lock-stat, --format folded) and ``smp run --replay`` (only when the
manifest is what was damaged, since an intact manifest replays a whole run).  The
tools run in this process through ``smp.cli.main``, so a traceback would be an
exception escaping it, which the test reports with its input.

The short version runs in CI; ``-m slow`` runs many more examples.
"""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from conftest import REPO, smp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smp import cli
from smp.rundir import format as fmt

FIX = REPO / "tests" / "fixtures" / "lockstep"
FILES = [fmt.MANIFEST_FILE, fmt.SUMMARY_FILE, fmt.LOCKSTAT_FILE, fmt.CATALOGUE_FILE,
         fmt.EVENTS_FILE, fmt.CONSOLE_FILE, fmt.HIST_FILE]
SHORT = settings(max_examples=25, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])
LONG = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzz") / "run"
    r = smp("run", str(FIX / "program.toml"), "--lockstep", "--seed", "4", "-o", "hist=on",
            "--time-limit", "100ms", "--out", str(d), "-q", cwd=d.parent)
    assert r.returncode == 0, r.stderr
    assert all((d / f).exists() for f in FILES), sorted(p.name for p in d.iterdir())
    return d


def main(*argv: str) -> tuple[int, str]:
    """``smp ARGV`` in this process: (exit status, stderr); an escaping exception fails."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = cli.main(list(argv))
        except SystemExit as e:            # argparse's own exits
            rc = e.code if isinstance(e.code, int) else 2
    return int(rc), err.getvalue()


def damage(d: Path, how: str, name: str, data) -> str:
    p = d / name
    if how == "truncate":
        raw = p.read_bytes()
        p.write_bytes(raw[: int(len(raw) * data)])
    elif how == "bytes":
        raw = bytearray(p.read_bytes())
        off, chunk = data
        at = int(len(raw) * off)
        raw[at:at + len(chunk)] = chunk
        p.write_bytes(bytes(raw))
    elif how == "schema" and name.endswith(".json"):
        doc = json.loads(p.read_text())
        key, value = data
        if key == "schema":
            doc["schema"] = value
        elif doc:
            k = sorted(doc)[int(abs(hash(key)) % len(doc))]
            doc[k] = value
        p.write_text(json.dumps(doc))
    elif how == "swap":
        other = d / data
        tmp = d / "swap.tmp"
        p.rename(tmp)
        other.rename(p)
        tmp.rename(other)
    elif how == "remove":
        p.unlink()
    return f"{how} {name} {data!r}"


DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.sampled_from(FILES), st.floats(0, 0.999)),
    st.tuples(st.just("bytes"), st.sampled_from(FILES),
              st.tuples(st.floats(0, 0.999), st.binary(min_size=1, max_size=96))),
    st.tuples(st.just("schema"), st.sampled_from([f for f in FILES if f.endswith(".json")]),
              st.tuples(st.sampled_from(["schema", "a", "b", "c"]),
                        st.one_of(st.none(), st.integers(-3, 9), st.text(max_size=5),
                                  st.lists(st.integers(), max_size=3)))),
    st.tuples(st.just("swap"), st.sampled_from(FILES), st.sampled_from(FILES)),
    st.tuples(st.just("remove"), st.sampled_from(FILES), st.none()),
)

TOOLS = [("trace",), ("trace", "--stats"), ("trace", "--hist"), ("trace", "--force"),
         ("trace", "--partial", "--force", "--all"), ("lockstat",), ("lockstat", "--lock-stat"),
         ("lockstat", "--format", "folded"), ("compare", "{ref}")]


def _check_damaged(run_dir: Path, tmp_path: Path, dmg) -> None:
    how, name, data = dmg
    if how == "swap" and name == data:
        return
    d = tmp_path / "damaged"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(run_dir, d)
    what = damage(d, how, name, data)
    for tool in TOOLS:
        args = [a.format(ref=run_dir) for a in tool]
        rc, err = main(args[0], str(d), *args[1:])
        assert rc in (0, 2), f"{what}: smp {' '.join(args)} exited {rc}: {err[-400:]}"
        if rc == 2:
            assert err.count("\n") >= 1 and err.startswith("smp"), f"{what}: {err!r}"
    if name == fmt.MANIFEST_FILE and how != "swap":
        rc, err = main("run", "--replay", str(d), "--out", str(tmp_path / "replay"))
        shutil.rmtree(tmp_path / "replay", ignore_errors=True)
        assert rc in (0, 1, 2), f"{what}: replay exited {rc}: {err[-400:]}"


@SHORT
@given(dmg=DAMAGE)
def test_tools_on_a_damaged_run_directory_exit_0_or_2(run_dir, tmp_path, dmg):
    _check_damaged(run_dir, tmp_path, dmg)


@pytest.mark.slow
@LONG
@given(dmg=DAMAGE)
def test_tools_on_a_damaged_run_directory_exit_0_or_2_long(run_dir, tmp_path, dmg):
    _check_damaged(run_dir, tmp_path, dmg)


# --- the command line -------------------------------------------------------------------

WORDS = ["-q", "--seed", "--cpus", "--time-limit", "-o", "-m", "-k", "--out", "--fail",
         "--strategy", "--lockstep", "--replay", "--lockstat", "-5s", "0", "-1", "65", "x",
         "steal=none", "ncpu=0", "physmem=1K", "nokey=1", "uvm_pagealloc:p=2", "bogus:spec",
         "pct", "random", "nope.toml", "/dev/null", "", "--", "=", "--jobs", "--seeds"]


@SHORT
@given(sub=st.sampled_from(["run", "experiment", "explore", "trace", "compare", "lockstat"]),
       words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=6),
       bad=st.sampled_from([["-o", "ncpu=0"], ["--time-limit", "-5s"], ["--seed", "-1"],
                            ["-o", "nokey=1"], ["--cpus", "65"], ["--fail", "bogus:spec"],
                            ["-m", "nope.toml"], ["--seeds", "0"], ["/dev/null"]]))
def test_random_command_lines_with_a_bad_value_end_without_a_traceback(tmp_path, sub,
                                                                        words, bad):
    argv = [sub, *words, *bad]
    if sub == "run" and "--replay" in argv:
        argv.remove("--replay")          # --replay RUN of a random word replays nothing real
    rc, err = main(*argv)
    # every bad value is refused by `smp run` before anything boots; a tool may also
    # accept /dev/null as an (empty) log
    assert rc == 2 if sub == "run" else rc in (0, 2), \
        f"smp {' '.join(argv)} exited {rc}: {err[-400:]}"
    assert "Traceback" not in err and (rc == 0 or err.startswith("smp")), err
