"""Load scripts (``workloads/*.toml``): reading and validating them.

A load script names the machine profile and kernel configuration it was
written for (the command line may override both) and describes the load:

    [run]
    machine = "i386mp-4"          # shared/machines/i386mp-4.toml
    kernel = "default"            # shared/kernels/default.toml
    time_limit = "120s"           # optional: stop the run after this long

    [synthetic]                   # the machine's synthetic load (smp.workload.synthetic)
    processes = 16
    iterations = 2000
    buckets = 8
    handoff_every = 50
    compute = "20us"
    panic_at = 0                  # tests: the first process panics at this iteration

Every field is checked before boot; an error names the file and the key path
and says what was expected (exit status 2).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smp.config import WORKLOADS, parse_duration
from smp.errors import BadInput
from smp.workload.synthetic import SyntheticLoad

DEFAULT_SCRIPT = "default"


@dataclass
class LoadScript:
    name: str
    path: str
    text: str
    sha256: str
    machine: str
    kernel: str
    time_limit_s: float | None
    load: Any


def resolve(spec: str | None) -> Path:
    """A load script by name (``workloads/NAME.toml``) or by path."""
    spec = spec or DEFAULT_SCRIPT
    if "/" in spec or spec.endswith(".toml"):
        p = Path(spec)
        if not p.is_file():
            raise BadInput(f"{spec}: no such load script")
        return p
    p = WORKLOADS / f"{spec}.toml"
    if not p.is_file():
        known = ", ".join(sorted(x.stem for x in WORKLOADS.glob("*.toml")))
        raise BadInput(f"{spec}: no such load script in {WORKLOADS} (known: {known})")
    return p


def _int(t: dict, key: str, where: str, lo: int, hi: int, default: int) -> int:
    v = t.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BadInput(f"{where}.{key} = {v!r}: expected an integer from {lo} to {hi}")
    return v


def load_script(spec: str | None) -> LoadScript:
    """Read, parse and validate a load script; BadInput on any problem."""
    path = resolve(spec)
    shown = str(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{shown}: cannot read: {e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{shown}: malformed TOML: {e}") from None
    for key in doc:
        if key not in ("run", "synthetic"):
            raise BadInput(f"{shown}: unknown section or key {key!r} (expected [run], [synthetic])")
    run = doc.get("run", {})
    if not isinstance(run, dict):
        raise BadInput(f"{shown}: run: expected a table")
    for key in run:
        if key not in ("machine", "kernel", "time_limit", "description"):
            raise BadInput(f"{shown}: run.{key}: unknown key (machine, kernel, time_limit)")
    machine = run.get("machine", "i386mp-4")
    kernel = run.get("kernel", "default")
    for key, v in (("machine", machine), ("kernel", kernel)):
        if not isinstance(v, str) or not v:
            raise BadInput(f"{shown}: run.{key} = {v!r}: expected a profile name")
    limit = None
    if "time_limit" in run:
        limit = parse_duration(run["time_limit"], f"{shown}: run.time_limit") / 1e9
        if limit <= 0:
            raise BadInput(f"{shown}: run.time_limit: must be positive")
    syn = doc.get("synthetic")
    if syn is None:
        raise BadInput(f"{shown}: no load: expected a [synthetic] section")
    if not isinstance(syn, dict):
        raise BadInput(f"{shown}: synthetic: expected a table")
    where = f"{shown}: synthetic"
    known = {"processes", "iterations", "buckets", "handoff_every", "compute", "panic_at"}
    for key in syn:
        if key not in known:
            expected = ", ".join(sorted(known))
            raise BadInput(f"{where}.{key}: unknown key (expected one of {expected})")
    load = SyntheticLoad(
        name=path.stem,
        nprocs=_int(syn, "processes", where, 1, 65536, 16),
        iterations=_int(syn, "iterations", where, 1, 10**9, 2000),
        buckets=_int(syn, "buckets", where, 1, 1_000_000, 8),
        handoff_every=_int(syn, "handoff_every", where, 0, 10**9, 50),
        compute_ns=parse_duration(syn.get("compute", "20us"), f"{where}.compute"),
        panic_at=_int(syn, "panic_at", where, 0, 10**9, 0),
    )
    return LoadScript(name=path.stem, path=shown, text=text,
                      sha256=hashlib.sha256(raw).hexdigest(), machine=machine, kernel=kernel,
                      time_limit_s=limit, load=load)
