"""``smp run``: boot a machine on a load script and write the run directory.

A run directory is self-describing, so every tool works on it without the
code that produced it:

    manifest.json   what ran: load script (name, hash, full text), machine profile,
                    kernel configuration, overrides, seed, mode, code version, host
    console.log     the kernel console, one line per printf/panic
    hist.log        UVMHIST records (kernel option hist = on)
    events.bin      every trace record, binary (smp.runfmt), with catalogue.json
    lockstat.json   exact lock statistics (smp.machine.lockstat)
    summary.json    outcome, counters, per-CPU host figures (psutil), trace totals
    summary.txt     the same for people

Every JSON file carries ``"schema"``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from smp import __version__
from smp.config import RunConfig, apply_overrides, load_kernel, load_machine
from smp.errors import BadInput
from smp.kern.kernel import Kernel
from smp.machine.boot import Machine, RunOutcome, host_info
from smp.runfmt import CATALOGUE_FILE
from smp.workload import interp, synthetic  # noqa: F401 - their messages, before boot
from smp.workload.script import LoadScript, load_script, load_script_text

MANIFEST_SCHEMA = 1
SUMMARY_SCHEMA = 1


def configure(script: LoadScript, machine: str | None, kernel: str | None,
              overrides: list[str], cpus: int | None) -> RunConfig:
    """Machine and kernel for a run: the script's, unless the command line says otherwise."""
    m = load_machine(machine or script.machine)
    k = load_kernel(kernel or script.kernel)
    ov = list(overrides)
    if cpus is not None:
        ov.append(f"ncpu={cpus}")
    m, k = apply_overrides(m, k, ov)
    return RunConfig(machine=m, kernel=k, overrides=tuple(ov))


def default_run_dir(script: LoadScript, cfg: RunConfig, seed: int) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{script.name}-{cfg.kernel.name}-{seed}-{stamp}"
    p, n = base, 1
    while p.exists():
        n += 1
        p = base.with_name(f"{base.name}.{n}")
    return p


def code_version() -> str:
    here = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{__version__}+{rev}" if rev else __version__


def run(script_spec: str | None = None, *, machine: str | None = None,
        kernel: str | None = None, overrides: list[str] = (), cpus: int | None = None,
        seed: int = 0, out: str | None = None, progress: bool = False,
        time_limit_s: float | None = None, lockstep: str | None = None,
        script_text: str | None = None, fail: list[str] = ()) -> tuple[Path, RunOutcome]:
    """Run a load script; returns the run directory and the outcome.

    ``lockstep``: None (free mode), "random" or "pct" (one CPU at a time, the schedule
    drawn from ``seed``; the time limit is then virtual time).  ``script_text``: run
    this text under the script's name (replay of a run directory's manifest).
    """
    script = load_script(script_spec) if script_text is None else \
        load_script_text(script_spec, script_text)
    cfg = configure(script, machine, kernel, list(overrides), cpus)
    if seed < 0:
        raise BadInput(f"--seed {seed}: expected a non-negative integer")
    script.load.seed = seed
    load = script.load
    initial = getattr(load, "initial", getattr(load, "nprocs", 0))
    if initial > cfg.machine.maxproc:
        kinds = getattr(load, "kinds", [])
        key = "process[0].count" if len(kinds) == 1 else "process[*].count"
        raise BadInput(f"{script.path}: {key}: {initial} processes at start, but "
                       f"machine {cfg.machine.name} has maxproc {cfg.machine.maxproc}")
    if hasattr(load, "maxproc"):
        load.maxproc = min(load.maxproc, cfg.machine.maxproc)
    limit = time_limit_s if time_limit_s is not None else script.time_limit_s
    from smp.kern import kern_fail
    failspecs = list(script.fail or []) + list(fail)
    kern_fail.parse(list(fail), "--fail")
    run_dir = Path(out) if out else default_run_dir(script, cfg, seed)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise BadInput(f"{run_dir}: run directory exists and is not empty")
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "tool": "smp", "version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": "lockstep" if lockstep else "free", "seed": seed,
        "strategy": lockstep,
        "load_script": {"name": script.name, "path": script.path, "sha256": script.sha256,
                        "text": script.text},
        "machine": cfg.machine.to_dict(), "kernel": cfg.kernel.to_dict(),
        "overrides": list(cfg.overrides), "time_limit_s": limit,
        "failpoints": failspecs,
        "host": host_info(), "argv": list(sys.argv),
    }
    _write_json(run_dir / "manifest.json", manifest)
    kern = Kernel(cfg.kernel, script.load, failspecs=failspecs, seed=seed)
    mach = Machine(cfg.machine.ncpu, cfg.machine.trace_ring, kern, cfg.machine, run_dir,
                   time_limit_s=limit, progress=progress, stats_on=cfg.kernel.lockstat,
                   lockstep=lockstep, seed=seed)
    try:
        outcome = mach.run()
    except BadInput:
        # refused at boot (e.g. a delay naming no lock class): leave no half-made run
        for f in run_dir.iterdir():
            f.unlink()
        run_dir.rmdir()
        raise
    if lockstep:
        rerender_logs(run_dir)
    from smp.kern import subr_prf

    subr_prf.CATALOGUE.save(run_dir / CATALOGUE_FILE)
    _write_json(run_dir / "lockstat.json", outcome.lockstat)
    summary = make_summary(outcome, cfg, script, seed)
    _write_json(run_dir / "summary.json", summary)
    (run_dir / "summary.txt").write_text(summary_text(summary))
    return run_dir, outcome


def boot_for_bench(ncpu: int, physmem: int):
    """Boot a machine of ``ncpu`` CPUs and ``physmem`` bytes with the default kernel and
    an empty load, up to every CPU in its dispatch loop (scripts/bench_machine.py)."""
    import tempfile

    from smp.workload.synthetic import SyntheticLoad

    m, k = apply_overrides(load_machine("i386mp-4"), load_kernel("default"),
                           [f"ncpu={ncpu}", f"physmem={physmem}"])
    load = SyntheticLoad(name="boot", nprocs=1, iterations=1, handoff_every=0, compute_ns=0)
    kern = Kernel(k, load)
    mach = Machine(m.ncpu, m.trace_ring, kern, m, Path(tempfile.gettempdir()))
    return mach.boot_and_wait()


def rerender_logs(run_dir: Path) -> None:
    """Lockstep: write events.bin, console.log and hist.log again from the records in merged
    (virtual time, cpu, sequence) order, so they do not depend on when the parent
    happened to drain the rings."""
    from smp.runfmt import (
        KIND_HIST,
        Catalogue,
        console_lines,
        hist_lines,
        merge_order,
        read_events,
        write_events,
    )

    ev = run_dir / "events.bin"
    if not ev.exists():
        return
    cat = Catalogue.load(run_dir / CATALOGUE_FILE)
    recs = merge_order(read_events(ev, partial_ok=True))
    write_events(ev, recs)                       # in merged order, not drain order
    hist = cat.kind_codes()[recs["msgid"]] == KIND_HIST
    (run_dir / "console.log").write_text("".join(x + "\n" for x in
                                                 console_lines(recs[~hist], cat)))
    if hist.any():
        (run_dir / "hist.log").write_text("".join(x + "\n" for x in
                                                  hist_lines(recs[hist], cat)))


def make_summary(o: RunOutcome, cfg: RunConfig, script: LoadScript, seed: int) -> dict:
    acq = sum(r["acq"] for r in o.lockstat["records"])
    contended = sum(r["contended"] for r in o.lockstat["records"])
    return {
        "schema": SUMMARY_SCHEMA,
        "status": o.status, "exit_code": o.exit_code, "message": o.message,
        "elapsed_s": round(o.elapsed_s, 6),
        "load_script": script.name, "machine": cfg.machine.name, "kernel": cfg.kernel.name,
        "ncpu": cfg.machine.ncpu, "seed": seed,
        "kernel_counters": o.kernel,
        "locks": {"acquisitions": acq, "contended": contended},
        "trace": o.trace,
        "cpus": [asdict(c) for c in o.cpus],
        "segment_bytes": o.layout["size"],
        "schedule": o.schedule,
        "diagnostic": o.diagnostic,
    }


def summary_text(s: dict) -> str:
    lines = [
        f"smp run: {s['load_script']} on {s['machine']} ({s['ncpu']} CPUs), "
        f"kernel {s['kernel']}, seed {s['seed']}",
        f"status: {s['status']} ({s['message']}) after {s['elapsed_s']:.2f} s, "
        f"exit {s['exit_code']}",
    ]
    kc = s["kernel_counters"]
    if "counters" in kc:
        nz = [f"{k} {v}" for k, v in kc["counters"].items() if v]
        lines.append("counters: " + (", ".join(nz) if nz else "all zero"))
    if "processes" in kc:
        lines.append("processes: " + ", ".join(f"{k} {v}" for k, v in kc["processes"].items()))
    load = kc.get("load", {})
    if load:
        lines.append("load: " + ", ".join(f"{k} {v}" for k, v in load.items()))
    lk = s["locks"]
    pct = 100.0 * lk["contended"] / lk["acquisitions"] if lk["acquisitions"] else 0.0
    lines.append(f"locks: {lk['acquisitions']} acquisitions, {lk['contended']} contended "
                 f"({pct:.2f}%)")
    t = s["trace"]
    if t:
        lines.append(f"trace: {t.get('records', 0)} records, {t.get('dropped', 0)} dropped, "
                     f"{t.get('console_lines', 0)} console lines")
    lines.append("cpu  state     exit  user_s  sys_s   rss_MiB  vcsw    ivcsw")
    for c in s["cpus"]:
        h = c["host"]
        lines.append(f"{c['cpu']:>3}  {c['state']:<8} {str(c['exitcode']):>5}  "
                     f"{h.get('user_s', 0):6.2f}  {h.get('system_s', 0):5.2f}  "
                     f"{h.get('rss_bytes', 0) / 2**20:7.1f}  {int(h.get('vcsw', 0)):<6}  "
                     f"{int(h.get('ivcsw', 0))}")
    for c in s["cpus"]:
        if c["text"]:
            lines.append(f"cpu{c['cpu']}: {c['text']}")
        if c["held"]:
            held = ", ".join(f"{h['name']} ({h['mode']}, taken in {h['site']})"
                             for h in c["held"])
            lines.append(f"cpu{c['cpu']} held: {held}")
    return "\n".join(lines) + "\n"


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
