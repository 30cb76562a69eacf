"""``smp run --replay RUN``: run a run directory's manifest again and compare.

The manifest keeps everything a run needs: the load script's text, the machine
profile and kernel configuration as they were resolved, the seed and the mode.
A lockstep run replays exactly: the new run directory's console.log, hist.log,
events.bin and lockstat.json must be byte-identical to the old ones, and the
first difference is reported if not.  A free-mode run can be rerun the same way,
but its interleaving is the host's, so only a lockstep replay is checked.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from smp.errors import BadInput

COMPARED = ("console.log", "hist.log", "events.bin", "lockstat.json")


def _manifest(run: Path) -> dict:
    p = run / "manifest.json"
    try:
        m = json.loads(p.read_text())
    except FileNotFoundError:
        raise BadInput(f"{p}: no such file (is {run} a run directory?)") from None
    except ValueError as e:
        raise BadInput(f"{p}: not valid JSON: {e}") from None
    if m.get("schema") != 1 or "load_script" not in m:
        raise BadInput(f"{p}: not an smp run manifest of schema 1")
    return m


def replay_overrides(m: dict) -> list[str]:
    """-o overrides that reproduce the manifest's machine and kernel exactly."""
    ov = []
    for section in ("machine", "kernel"):
        for k, v in m[section].items():
            if k in ("name", "path"):
                continue
            if isinstance(v, bool):
                v = "on" if v else "off"
            ov.append(f"{section}.{k}={v}")
    return ov


def replay(run_dir: str, out: str | None = None, progress: bool = False) -> int:
    """Rerun ``run_dir``; returns 0 identical, 1 different (free mode: 0 after the run)."""
    from smp.run import run

    src = Path(run_dir)
    m = _manifest(src)
    ls = m["load_script"]
    dst = Path(out) if out else Path(tempfile.mkdtemp(prefix="smp-replay-"))
    lockstep = m.get("strategy") if m.get("mode") == "lockstep" else None
    run_dir2, o = run(ls["name"], machine=m["machine"]["name"], kernel=m["kernel"]["name"],
                      overrides=replay_overrides(m), seed=m["seed"], out=str(dst),
                      progress=progress, time_limit_s=m.get("time_limit_s"),
                      lockstep=lockstep, script_text=ls["text"],
                      fail=[f for f in m.get("failpoints", []) if f not in _script_fail(ls)])
    print(run_dir2)
    if not lockstep:
        print(f"replayed a free-mode run (status {o.status}); free-mode interleavings are "
              "the host's, so the outputs are not compared")
        return o.exit_code
    diffs = []
    for name in COMPARED:
        a, b = src / name, run_dir2 / name
        if not a.exists() and not b.exists():
            continue
        da = a.read_bytes() if a.exists() else None
        db = b.read_bytes() if b.exists() else None
        if da != db:
            diffs.append(f"{name}: {_first_difference(da, db)}")
    if diffs:
        print(f"replay of {src} differs:")
        for d in diffs:
            print("  " + d)
        return 1
    print(f"replay of {src}: identical ({', '.join(n for n in COMPARED if (src / n).exists())})")
    return 0


def _script_fail(ls: dict) -> list[str]:
    """Failpoints the script text itself declares (the replay gets them from the text)."""
    import tomllib

    try:
        return list(tomllib.loads(ls["text"]).get("run", {}).get("fail", []))
    except (tomllib.TOMLDecodeError, AttributeError):
        return []


def _first_difference(a: bytes | None, b: bytes | None) -> str:
    if a is None or b is None:
        return "present in only one run"
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            line = a[:i].count(b"\n") + 1
            return f"first difference at byte {i} (line {line})"
    return f"one is a prefix of the other ({len(a)} vs {len(b)} bytes)"
