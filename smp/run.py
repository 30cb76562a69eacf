"""``smp run``: boot a machine on a load script and write the run directory.

A run directory is self-describing, so every tool works on it without the
code that produced it (the files and their order are in :mod:`smp.rundir.writer`):

    manifest.json   what ran: load script (name, hash, full text), machine profile,
                    kernel configuration, overrides, seed, mode, code version, host
    console.log     the kernel console, one line per printf/panic
    hist.log        UVMHIST records (kernel option hist = on)
    events.bin      every trace record, binary, with catalogue.json
    lockstat.json   exact lock statistics (smp.machine.lockstat)
    summary.json    outcome, counters, per-CPU host figures (psutil), trace totals
    summary.txt     the same for people

Every JSON file carries ``"schema"`` (versions in :mod:`smp.rundir.format`).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from smp import __version__
from smp.config import RunConfig, Seeds, apply_overrides, load_kernel, load_machine
from smp.errors import BadInput, WriteFailed, exit_for
from smp.kern import kern_fail
from smp.kern.kernel import Kernel
from smp.machine.boot import Machine, RunOutcome, host_info
from smp.machine.schedule import FREE, Lockstep
from smp.machine.segment import remove_orphans
from smp.machine.trace import NullSink
from smp.rundir import format as fmt
from smp.rundir.reader import dig
from smp.rundir.writer import RunWriter
from smp.workload import interp, synthetic  # noqa: F401 - their messages, before boot
from smp.workload.script import LoadScript, load_script, load_script_text


@dataclass
class RunResult:
    """What ``run()`` returns: where the run directory is, how it ended, its summary."""

    run_dir: Path
    outcome: RunOutcome
    summary: dict

    @property
    def exit_code(self) -> int:
        return int(self.summary["exit_code"])


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
    """``runs/LOAD-KERNEL[+OVERRIDES]-SEED-TIME``: two runs of one script under different
    ``-o`` overrides are told apart by name (a long list becomes a short hash; the
    manifest has them all)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{script.name}-{cfg.kernel.name}{overrides_tag(cfg.overrides)}" \
        f"-{seed}-{stamp}"
    p, n = base, 1
    while p.exists():
        n += 1
        p = base.with_name(f"{base.name}.{n}")
    return p


def overrides_tag(overrides: tuple[str, ...] | list[str]) -> str:
    """``+steal=none,biglock=off`` for a run directory's name ("" without overrides)."""
    if not overrides:
        return ""
    tag = ",".join(o.replace("/", "_").replace(" ", "") for o in overrides)
    if len(tag) > 48:
        tag = "h" + hashlib.sha1(tag.encode()).hexdigest()[:10]
    return "+" + tag


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
        script_text: str | None = None, fail: list[str] = (),
        config: RunConfig | None = None) -> RunResult:
    """Run a load script and write its run directory.

    ``lockstep``: None (free mode), "random" or "pct" (one CPU at a time, the schedule
    drawn from ``seed``; the time limit is then virtual time).  ``script_text``: run
    this text under the script's name, and ``config``: exactly this machine and kernel
    (replay of a run directory's manifest).
    """
    script = load_script(script_spec) if script_text is None else \
        load_script_text(script_spec, script_text)
    cfg = config or configure(script, machine, kernel, list(overrides), cpus)
    seeds = Seeds.derive(seed)
    script.load.seed = seeds.load
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
    failspecs = list(script.fail or []) + list(fail)
    kern_fail.parse(list(fail), "--fail")
    schedule = Lockstep(lockstep, seeds.schedule) if lockstep else FREE
    writer = RunWriter.create(Path(out) if out else default_run_dir(script, cfg, seed))
    manifest = {
        "schema": fmt.MANIFEST_SCHEMA,
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
    try:
        writer.write_json(fmt.MANIFEST_FILE, manifest)
    except WriteFailed as e:
        writer.mark_incomplete(str(e))
        raise
    clean_orphans()             # every command that boots a machine: input is valid by now
    kern = Kernel(cfg.kernel, script.load, failspecs=failspecs, seed=seeds.failpoints)
    sink = writer.trace_sink(merged_at_end=schedule.lockstep)
    mach = Machine(cfg.machine, kern, sink, schedule, time_limit_s=limit, progress=progress)
    try:
        outcome = mach.run()
    except BadInput:
        writer.discard()     # refused at boot (e.g. a delay naming no lock class)
        raise
    except KeyboardInterrupt:
        writer.mark_incomplete("interrupted while booting: no CPU ever ran")
        raise
    outcome.trace.update(console_lines=sink.console_lines, hist_lines=sink.hist_lines)
    summary = make_summary(outcome, cfg, script, seed)
    _finish(writer, outcome, summary)
    return RunResult(writer.path, outcome, summary)


def clean_orphans(quiet: bool = False) -> list[tuple[str, int]]:
    """Remove the shared-memory segments of runs that died (killed with SIGKILL, a whole
    process group killed); say so on stderr unless ``quiet``."""
    removed = remove_orphans()
    if removed and not quiet:
        total = sum(n for _, n in removed) / 2**20
        print(f"smp: removed {len(removed)} shared-memory segment(s) left by runs that died "
              f"({total:.1f} MiB): {', '.join(n for n, _ in removed)}", file=sys.stderr)
    return removed


def _finish(writer: RunWriter, o: RunOutcome, summary: dict) -> None:
    """lockstat.json, then the summary; a failed write makes the run 'write-error' and
    the directory incomplete, and whatever fits of the summary still says so."""
    try:
        writer.write_json(fmt.LOCKSTAT_FILE, o.lockstat)
    except WriteFailed:
        pass                                  # recorded in writer.failed
    if writer.failed is not None:
        _mark_write_error(summary, writer.failed)
    for _attempt in range(2):
        try:
            writer.write_json(fmt.SUMMARY_FILE, summary)
            writer.write_text(fmt.SUMMARY_TEXT_FILE, summary_text(summary))
            break
        except WriteFailed as e:
            _mark_write_error(summary, e)
    if summary.get("incomplete"):
        writer.mark_incomplete(summary["message"])


def _mark_write_error(summary: dict, err: WriteFailed) -> None:
    if summary.get("incomplete"):
        return
    summary["incomplete"] = True
    summary["write_error"] = {"path": err.path, "errno": err.errno, "reason": err.strerror}
    if summary["status"] == "write-error":
        return                                # the machine stopped for this very reason
    if summary["status"] in ("done", "timeout"):
        summary["status"] = "write-error"
        summary["exit_code"] = int(exit_for("write-error"))
    summary["message"] = f"{summary['message']}; run directory incomplete: {err}"


def boot_for_bench(ncpu: int, physmem: int):
    """Boot a machine of ``ncpu`` CPUs and ``physmem`` bytes with the default kernel and
    an empty load, up to every CPU in its dispatch loop (scripts/bench_machine.py)."""
    from smp.workload.synthetic import SyntheticLoad

    m, k = apply_overrides(load_machine("i386mp-4"), load_kernel("default"),
                           [f"ncpu={ncpu}", f"physmem={physmem}"])
    load = SyntheticLoad(name="boot", nprocs=1, iterations=1, handoff_every=0, compute_ns=0)
    return Machine(m, Kernel(k, load), NullSink()).boot_and_wait()


def make_summary(o: RunOutcome, cfg: RunConfig, script: LoadScript, seed: int) -> dict:
    acq = sum(r["acq"] for r in o.lockstat["records"])
    contended = sum(r["contended"] for r in o.lockstat["records"])
    s = {
        "schema": fmt.SUMMARY_SCHEMA,
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
    faults = dig(o.kernel, "counters", "faults", want=int) or 0
    host_cpu = sum((c.host.get("user_s") or 0) + (c.host.get("system_s") or 0) for c in o.cpus)
    # host CPU-seconds the simulated CPUs burnt per simulated fault: what spinning on a
    # lock whose holder is not running costs on an oversubscribed host
    s["host_cpu_s"] = round(host_cpu, 3)
    s["host_cpu_per_fault_us"] = round(1e6 * host_cpu / faults, 2) if faults else None
    alive = dig(o.kernel, "processes", "alive", want=int) or 0
    if o.status == "timeout":
        # the load did not finish: its figures are those of a cut-off run
        s["time_limit"] = {"reached": True, "processes_alive": int(alive)}
    return s


def summary_text(s: dict) -> str:
    lines = [
        f"smp run: {s['load_script']} on {s['machine']} ({s['ncpu']} CPUs), "
        f"kernel {s['kernel']}, seed {s['seed']}",
        f"status: {s['status']} ({s['message']}) after {s['elapsed_s']:.2f} s, "
        f"exit {s['exit_code']}",
    ]
    tl = s.get("time_limit")
    if tl and tl.get("processes_alive"):
        lines.append(f"warning: the load did not finish: {tl['processes_alive']} processes "
                     "were still running at the time limit")
    kc = s["kernel_counters"]
    if "counters" in kc:
        nz = [f"{k} {v}" for k, v in kc["counters"].items() if v]
        lines.append("counters: " + (", ".join(nz) if nz else "all zero"))
    if "processes" in kc:
        lines.append("processes: " + ", ".join(f"{k} {v}" for k, v in kc["processes"].items()))
    load = kc.get("load", {})
    if load:
        lines.append("load: " + ", ".join(f"{k} {v}" for k, v in load.items()))
    if s.get("host_cpu_per_fault_us") is not None:
        lines.append(f"host: {s['host_cpu_s']:.2f} CPU-s for the simulated CPUs, "
                     f"{s['host_cpu_per_fault_us']:.1f} us per fault")
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


def summary_head(s: dict) -> list[str]:
    """The lines ``smp run`` prints after the run directory (summary.txt's head)."""
    text = summary_text(s).splitlines()
    out = []
    for line in text[1:]:
        if line.startswith("cpu  state"):
            break
        out.append(line)
    return out
