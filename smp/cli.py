"""The ``smp`` command (also ``python -m smp``).

    smp run [SCRIPT] [-m MACHINE] [-k KERNEL] [-o KEY=VALUE ...] [--cpus N] [--seed N]
            [--out DIR] [--time-limit DURATION] [--quiet]
    smp list                      machine profiles, kernel configurations, load scripts
    smp clean                     remove shared-memory segments of runs that died
    smp init [DIR]                copy the shipped load scripts and profiles to edit them
    smp experiment | explore      sweeps of many runs (smp.tools)
    smp lockstat | trace | compare    tools reading run directories (smp.tools)

Exit status (smp.errors.Exit): 0 the run finished, 1 an internal error of the
simulator, 2 bad input (one line on stderr naming the file or key), 3 the simulated
kernel panicked, 4 a DIAGNOSTIC invariant was violated, 5 a deadlock or livelock,
6 a CPU worker died, 7 the run directory could not be written (disk full, I/O
error), 8 smp explore found a failing schedule, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import traceback

from smp.errors import BadInput, Exit, WriteFailed
from smp.machine.schedule import STRATEGIES

# Tools that read run directories, by subcommand.  Each module has
# ``register(subparsers)``, which adds its subcommand and sets ``func`` (taking the parsed
# arguments, returning an exit status).
TOOLS = {c: m for c, m in (("lockstat", "smp.tools.lockstat"), ("trace", "smp.tools.trace"),
                           ("compare", "smp.tools.compare"))
         if importlib.util.find_spec(m) is not None}
BUILTIN = ("run", "list", "init", "clean", "experiment", "explore")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(Exit.BADINPUT)


def _parser(cmd: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; for ``cmd`` (the command asked for, if known) it adds
    no tool it does not need -- their imports are a sixth of a short run's start-up."""
    p = _Parser(prog="smp", description="A multiprocess SMP simulator of the NetBSD i386 "
                "pmap (2001): run load scripts, profile lock contention, compare traces.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    r = sub.add_parser("run", help="boot a machine and run a load script",
                       description="Boot a simulated machine, run a load script, write a run "
                       "directory (manifest, console.log, events, lockstat.json, summary).")
    r.add_argument("script", nargs="?", default=None,
                   help="load script name (workloads/NAME.toml) or path; default: default")
    r.add_argument("-m", "--machine", help="machine profile (shared/machines/NAME.toml or path)")
    r.add_argument("-k", "--kernel", help="kernel configuration (shared/kernels/NAME.toml "
                   "or path)")
    r.add_argument("-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one machine or kernel key, e.g. -o steal=none -o ncpu=8")
    r.add_argument("--cpus", type=int, help="number of CPUs (same as -o ncpu=N)")
    r.add_argument("--seed", type=int, default=0, help="seed of the load's choices (default 0)")
    r.add_argument("--out", help="run directory (default runs/SCRIPT-KERNEL-SEED-TIME)")
    r.add_argument("--time-limit", help="stop the run after this long, e.g. 30s")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.add_argument("--lockstat", action="store_true",
                   help="print the top of the lock-contention report at the end")
    r.add_argument("--lockstep", action="store_true",
                   help="one CPU at a time, the schedule drawn from --seed: replayable, "
                   "byte-identical logs; the time limit is virtual time")
    r.add_argument("--strategy", choices=STRATEGIES, default="random",
                   help="lockstep schedule: random (default), pct (priorities, a few change "
                   "points) or pb (the running CPU keeps the turn until it blocks, plus a "
                   "few preemptions): see docs/lockstep.md")
    r.add_argument("--fail", action="append", default=[], metavar="SPEC",
                   help="fault injection, e.g. uvm_pagealloc:p=0.01, pmap_alloc_pv:nth=5, "
                   "trylock:pmap_steal_ptp:p=0.5, delay:pmaps_lock@pmap_steal_ptp=100us")
    r.add_argument("--replay", metavar="RUN",
                   help="rerun RUN's manifest (script text, configuration, seed, schedule) "
                   "and check that the result is identical")
    sub.add_parser("list", help="list machine profiles, kernel configurations, load scripts")
    i = sub.add_parser("init", help="copy the shipped load scripts and profiles to edit them",
                       description="Copy the shipped load scripts (workloads/) and machine "
                       "and kernel profiles (shared/machines, shared/kernels) into DIR, where "
                       "smp finds them first when run from DIR.  Existing files are kept.")
    i.add_argument("dir", nargs="?", default=".", help="target directory (default: here)")
    sub.add_parser("clean", help="remove shared-memory segments left by runs that died",
                   description="Remove the shared-memory segments (/dev/shm/smp-PID-*) whose "
                   "owner process no longer exists, and list them.  Every smp command that "
                   "boots a machine does this first; this does it on its own.")
    e = sub.add_parser("experiment", help="run load scripts x kernel configurations x seeds",
                       description="The January 2001 experiment: run a matrix of load "
                       "scripts, kernel configurations and seeds, and print one table.")
    e.add_argument("scripts", nargs="*", help="load scripts (default: heavy-mp ptp-hog "
                   "wired-ptp net-storm raw-dd kmem-storm)")
    e.add_argument("-c", "--config", action="append", default=[], metavar="KEY=V[,KEY=V]",
                   help="a kernel configuration cell, e.g. 'steal=none biglock=off' "
                   "(repeatable; default: steal {ptp,pv|none} x biglock {on|off})")
    e.add_argument("-k", "--kernel", help="base kernel configuration (default: the script's)")
    e.add_argument("-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="an override applied to every run")
    e.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    e.add_argument("--jobs", type=int, default=None, help="runs at a time (default: cores)")
    e.add_argument("--out", help="experiment directory (default experiments/TIME)")
    e.add_argument("--time-limit", help="time limit of each run, e.g. 30s")
    e.add_argument("--sweep", metavar="KEY=V1,V2,...",
                   help="run the matrix once per value of a machine or kernel key, e.g. "
                   "physmem=16M,32M,64M; writes sweep.csv and, with matplotlib, pictures")
    e.add_argument("--lockstep", action="store_true",
                   help="every run in lockstep mode (replayable: same seeds, same counters)")
    e.add_argument("--cluster", metavar="ADDRESS",
                   help="a Dask scheduler (tcp://HOST:PORT) or 'local': run the sweep's runs "
                   "there (default: $SMP_CLUSTER, else this host's process pool; "
                   "docs/cluster.md)")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    x = sub.add_parser("explore", help="explore lockstep schedules over many seeds",
                       description="Run a load script in lockstep mode once per seed, check "
                       "the DIAGNOSTIC invariants, detect panics, deadlocks, livelocks and "
                       "stale-TLB uses, and write a reproducer for the first failure.")
    x.add_argument("script", help="load script name or path")
    x.add_argument("--seeds", type=int, default=20, help="number of seeds (default 20)")
    x.add_argument("--first-seed", type=int, default=0, help="first seed (default 0)")
    x.add_argument("--strategy", choices=STRATEGIES, default="random",
                   help="lockstep schedule of every seed: random (default), pct or pb")
    x.add_argument("-m", "--machine")
    x.add_argument("-k", "--kernel")
    x.add_argument("-o", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    x.add_argument("--fail", action="append", default=[], metavar="SPEC")
    x.add_argument("--time-limit", help="virtual time limit of each run, e.g. 2s")
    x.add_argument("--jobs", type=int, default=None, help="runs at a time (default: cores)")
    x.add_argument("--out", help="directory (default explore/SCRIPT-STRATEGY-TIME)")
    x.add_argument("--all", action="store_true", help="keep going after the first failure")
    x.add_argument("--cluster", metavar="ADDRESS",
                   help="a Dask scheduler (tcp://HOST:PORT) or 'local': run the sweep's runs "
                   "there (default: $SMP_CLUSTER, else this host's process pool; "
                   "docs/cluster.md)")
    x.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    for c, name in TOOLS.items():
        if cmd in BUILTIN or cmd in TOOLS and cmd != c:
            continue
        module = importlib.import_module(name)
        module.register(sub)            # adds its subcommand, with set_defaults(func=...)
    return p


def _clean_orphans(quiet: bool = False) -> list[tuple[str, int]]:
    """Remove segments of dead runs; say so on stderr (unless ``quiet``)."""
    from smp.run import clean_orphans

    return clean_orphans(quiet)


def cmd_run(a: argparse.Namespace) -> int:
    from smp.config import parse_duration
    from smp.run import run, summary_head

    limit = None
    if a.time_limit is not None:
        limit = parse_duration(a.time_limit, "--time-limit") / 1e9
    if a.cpus is not None and not 1 <= a.cpus <= 64:
        raise BadInput(f"--cpus {a.cpus}: expected an integer from 1 to 64")
    progress = not a.quiet and sys.stdout.isatty()
    if a.strategy != "random" and not a.lockstep:
        raise BadInput(f"--strategy {a.strategy}: only with --lockstep")
    if a.replay and (a.script or a.lockstep or a.seed):
        raise BadInput("--replay RUN takes its script, seed and mode from RUN's manifest")
    if a.replay:
        from smp.replay import replay

        return replay(a.replay, out=a.out, progress=progress)
    res = run(a.script, machine=a.machine, kernel=a.kernel, overrides=a.overrides,
              cpus=a.cpus, seed=a.seed, out=a.out, progress=progress,
              time_limit_s=limit, lockstep=a.strategy if a.lockstep else None, fail=a.fail)
    s = res.summary
    print(res.run_dir)
    for line in summary_head(s):
        print("  " + line)
    if s["status"] not in ("done", "timeout"):
        for c in s["cpus"]:
            if c["text"] or c["held"]:
                spin = f" (spinning on {c['spinning_on']})" if c["spinning_on"] else ""
                print(f"  cpu{c['cpu']}: {c['state']}{spin}: {c['text']}")
                for h in c["held"]:
                    print(f"    holds {h['name']} ({h['class']}, {h['mode']}) taken in "
                          f"{h['site']}")
    tl = s.get("time_limit") or {}
    if tl.get("processes_alive"):
        print(f"smp: warning: {res.run_dir}: the time limit ended the load with "
              f"{tl['processes_alive']} processes still running: its figures are those of "
              "an unfinished run", file=sys.stderr)
    if s.get("incomplete"):
        print(f"smp: {res.run_dir}: run directory incomplete: "
              f"{(s.get('write_error') or {}).get('path', '?')}: "
              f"{(s.get('write_error') or {}).get('reason', 'write failed')}", file=sys.stderr)
    if a.lockstat and not s.get("incomplete"):
        from smp.tools.lockstat import print_top

        print_top(res.run_dir, sys.stdout)
    return res.exit_code


def cmd_experiment(a: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from smp.tools import experiment as X
    from smp.tools.sweep import cluster_address

    if a.seeds < 1:
        raise BadInput(f"--seeds {a.seeds}: expected at least 1")
    scripts = a.scripts or X.DEFAULT_SCRIPTS
    configs = [X.parse_config(c) for c in a.config] or X.DEFAULT_CONFIGS
    out = Path(a.out) if a.out else Path("experiments") / time.strftime("%Y%m%d-%H%M%S")
    jobs = a.jobs or X.default_jobs()
    sweep = X.parse_sweep(a.sweep) if a.sweep else None
    cluster = cluster_address(a.cluster)
    cells, stopped = X.run_experiment(scripts, configs, list(range(a.seeds)), out, jobs=jobs,
                                      kernel=a.kernel, extra=a.overrides,
                                      time_limit=a.time_limit,
                                      progress=not a.quiet and sys.stdout.isatty(),
                                      sweep=sweep, lockstep=a.lockstep, cluster=cluster)
    meta = {"scripts": scripts, "configs": [c for c, _ in configs], "seeds": a.seeds,
            "kernel": a.kernel, "overrides": a.overrides, "time_limit": a.time_limit,
            "sweep": {"key": sweep[0], "values": sweep[1]} if sweep else None,
            "interrupted": stopped or None}
    if a.lockstep:
        meta["lockstep"] = True
    if cluster:
        meta["cluster"] = cluster
    key = sweep[0] if sweep else None
    pictures = X.write_outputs(cells, out, meta, key)
    print(out)
    print(X.render_text(cells, key))
    for p in pictures:
        print(p)
    if stopped:
        print(f"smp: experiment stopped by {stopped}: the table holds the runs that "
              "finished", file=sys.stderr)
        return Exit.INTERRUPTED
    nbad, total, why = X.failed_runs(cells)
    if nbad:
        kinds = ", ".join(f"{n} {st}" for st, n in sorted(why.items()))
        print(f"smp: {out}: {nbad} of {total} runs failed ({kinds}): their run "
              "directories and experiment.json say why", file=sys.stderr)
        if nbad == total:
            return Exit.INTERNAL
    return Exit.OK


def cmd_explore(a: argparse.Namespace) -> int:
    import os
    import time
    from pathlib import Path

    from smp.tools import explore as E
    from smp.tools.sweep import cluster_address

    if a.seeds < 1:
        raise BadInput(f"--seeds {a.seeds}: expected at least 1")
    stem = Path(a.script).stem
    out = Path(a.out) if a.out else Path("explore") / \
        f"{stem}-{a.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    res, stopped = E.explore(a.script, seeds, out, strategy=a.strategy,
                             jobs=a.jobs or max(1, os.cpu_count() or 1), machine=a.machine,
                             kernel=a.kernel, overrides=a.overrides, fail=a.fail,
                             time_limit=a.time_limit, stop_on_failure=not a.all,
                             progress=not a.quiet and sys.stdout.isatty(),
                             cluster=cluster_address(a.cluster))
    print(out)
    print(E.render(res))
    bad = [r for r in res if r.verdict not in ("ok", "interrupted")]
    if bad:
        first = min(bad, key=lambda r: r.seed)
        print(f"first failure: seed {first.seed} ({first.verdict}): {first.detail}")
        print(f"reproduce:     smp run --replay {first.run_dir}")
    if stopped:
        print(f"smp: explore stopped by {stopped} after {len(res)} of {len(seeds)} seeds",
              file=sys.stderr)
        return Exit.INTERRUPTED
    return Exit.FOUND if bad else Exit.OK


def cmd_init(a: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from smp.config import SHARED, WORKLOADS

    dst = Path(a.dir)
    if dst.exists() and not dst.is_dir():
        raise BadInput(f"{dst}: exists and is not a directory")
    copied = kept = 0
    for src, rel in ((WORKLOADS, Path("workloads")), (SHARED / "machines",
                     Path("shared/machines")), (SHARED / "kernels", Path("shared/kernels"))):
        files = sorted(src.glob("*.toml")) + sorted(src.glob("README.md"))
        if not files:
            raise BadInput(f"{src}: no shipped files there (a broken installation?)")
        try:
            (dst / rel).mkdir(parents=True, exist_ok=True)
            for f in files:
                target = dst / rel / f.name
                if target.exists():
                    kept += 1
                    continue
                shutil.copy2(f, target)
                copied += 1
        except OSError as e:
            raise BadInput(f"{dst / rel}: cannot write: {e.strerror or e}") from None
    print(f"{dst}: {copied} files copied, {kept} already there and kept "
          "(workloads/, shared/machines/, shared/kernels/); smp run from there uses them")
    return Exit.OK


def cmd_clean(a: argparse.Namespace) -> int:
    removed = _clean_orphans(quiet=True)
    for name, size in removed:
        print(f"removed /dev/shm/{name} ({size / 2**20:.1f} MiB)")
    if not removed:
        print("nothing to remove: no segment of a dead run in /dev/shm")
    return Exit.OK


def cmd_list(a: argparse.Namespace) -> int:
    from smp.config import list_kernels, list_machines, list_named

    print("machines: " + ", ".join(list_machines()))
    print("kernels:  " + ", ".join(list_kernels()))
    print("loads:    " + ", ".join(list_named("workloads")))
    return Exit.OK


# options whose value may start with "-" (a negative duration is rejected by its own
# check, with the duration message, not by argparse as a missing argument)
_VALUE_OPTIONS = ("--time-limit", "--seed", "--first-seed", "--seeds", "--cpus", "--jobs")


def _join_values(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        x = argv[i]
        if x in _VALUE_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-") \
                and argv[i + 1] != "--":
            out.append(f"{x}={argv[i + 1]}")
            i += 2
            continue
        out.append(x)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    args = _join_values(list(sys.argv[1:] if argv is None else argv))
    p = _parser(next((x for x in args if not x.startswith("-")), None))
    a = p.parse_args(args)
    if a.cmd is None:
        p.print_help()
        return Exit.BADINPUT
    try:
        func = {"run": cmd_run, "list": cmd_list, "clean": cmd_clean, "init": cmd_init,
                "experiment": cmd_experiment, "explore": cmd_explore}.get(a.cmd) or a.func
        return int(func(a))
    except BadInput as e:
        print(f"smp: {e}", file=sys.stderr)
        return Exit.BADINPUT
    except WriteFailed as e:
        print(f"smp: {e}", file=sys.stderr)
        return Exit.WRITE_FAILED
    except KeyboardInterrupt:
        print("smp: interrupted", file=sys.stderr)
        return Exit.INTERRUPTED
    except BrokenPipeError:
        return Exit.OK                  # `smp trace RUN | head`: the reader has enough
    except Exception as e:  # noqa: BLE001 - a simulator bug: say so, with the traceback
        traceback.print_exc()
        print(f"smp: internal error: {e!r}", file=sys.stderr)
        return Exit.INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
