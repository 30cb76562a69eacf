"""``smp run --replay RUN``: run a run directory's manifest again and compare.

The manifest keeps everything a run needs: the load script's text, the machine
profile and kernel configuration as they were resolved, the seed and the mode.
A lockstep run replays exactly: the new run directory's console.log, hist.log,
events.bin and lockstat.json must be byte-identical to the old ones, and the
first difference is reported if not.  A free-mode run can be rerun the same way,
but its interleaving is the host's, so only a lockstep replay is checked.

Without ``--out`` the replay goes to a temporary directory, removed again when
the replay is identical (kept, and named, when it differs).
"""

from __future__ import annotations

import shutil
import tempfile
import tomllib
from pathlib import Path

from smp.config import RunConfig
from smp.errors import BadInput
from smp.machine.schedule import STRATEGIES
from smp.rundir import format as fmt
from smp.rundir.reader import RunDir

COMPARED = (fmt.CONSOLE_FILE, fmt.HIST_FILE, fmt.EVENTS_FILE, fmt.LOCKSTAT_FILE)


def replay(run_dir: str, out: str | None = None, progress: bool = False) -> int:
    """Rerun ``run_dir``; returns 0 identical, 1 different (free mode: the run's status)."""
    from smp.run import run

    src = RunDir(run_dir)
    m = src.require(fmt.MANIFEST_FILE)
    shown = str(src.file(fmt.MANIFEST_FILE))
    ls = m.get("load_script")
    if not isinstance(ls, dict) or not isinstance(ls.get("text"), str) \
            or not isinstance(ls.get("name"), str):
        raise BadInput(f"{shown}: load_script: missing or without its text")
    seed = m.get("seed")
    if not isinstance(seed, int) or seed < 0:
        raise BadInput(f"{shown}: seed: expected a non-negative integer, got {seed!r}")
    cfg = RunConfig.from_manifest(m, shown)
    lockstep = m.get("strategy") if m.get("mode") == "lockstep" else None
    if lockstep is not None and lockstep not in STRATEGIES:
        raise BadInput(f"{shown}: strategy: {lockstep!r} is not a lockstep strategy")
    failpoints = m.get("failpoints", [])
    if not isinstance(failpoints, list) or not all(isinstance(f, str) for f in failpoints):
        raise BadInput(f"{shown}: failpoints: expected a list of strings")
    limit = m.get("time_limit_s")
    if limit is not None and (not isinstance(limit, int | float) or limit <= 0):
        raise BadInput(f"{shown}: time_limit_s: expected a positive number, got {limit!r}")
    temp = out is None
    dst = Path(out) if out else Path(tempfile.mkdtemp(prefix="smp-replay-"))
    try:
        res = run(ls["name"], config=cfg, seed=seed, out=str(dst), progress=progress,
                  time_limit_s=limit, lockstep=lockstep, script_text=ls["text"],
                  fail=[f for f in failpoints if f not in _script_fail(ls["text"])])
    except BaseException:
        if temp:
            shutil.rmtree(dst, ignore_errors=True)
        raise
    new = RunDir(res.run_dir)
    if not lockstep:
        print(new.path)
        print(f"replayed a free-mode run (status {res.outcome.status}); free-mode "
              "interleavings are the host's, so the outputs are not compared")
        return res.exit_code
    diffs = []
    for name in COMPARED:
        a, b = src.raw(name), new.raw(name)
        if a is None and b is None:
            continue
        if a != b:
            diffs.append(f"{name}: {_first_difference(a, b)}")
    if diffs:
        print(new.path)
        print(f"replay of {src.path} differs:")
        for d in diffs:
            print("  " + d)
        return 1
    if temp:
        shutil.rmtree(dst, ignore_errors=True)
    else:
        print(new.path)
    same = ", ".join(n for n in COMPARED if src.has(n))
    print(f"replay of {src.path}: identical ({same})")
    return 0


def _script_fail(text: str) -> list[str]:
    """Failpoints the script text itself declares (the replay gets them from the text)."""
    try:
        return list(tomllib.loads(text).get("run", {}).get("fail", []))
    except (tomllib.TOMLDecodeError, AttributeError, TypeError):
        return []


def _first_difference(a: bytes | None, b: bytes | None) -> str:
    if a is None or b is None:
        return "present in only one run"
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            line = a[:i].count(b"\n") + 1
            return f"first difference at byte {i} (line {line})"
    return f"one is a prefix of the other ({len(a)} vs {len(b)} bytes)"
