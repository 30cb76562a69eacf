"""Many ``smp run`` processes, a few at a time: what ``smp experiment`` and ``smp explore`` share.

Each run is a child process (``python -m smp run ... --out DIR``), so a crash, a panic
or a hang of one run never touches the others, and its run directory is the result.
:class:`RunPool` starts at most ``jobs`` children at once from the calling thread and
reaps them as they end.  It owns them:

* every child is asked to die with its parent (``PR_SET_PDEATHSIG`` = SIGTERM, which
  ends an ``smp run`` cleanly: machine halted, segment unlinked, summary written), so
  killing the parent, even with SIGKILL, leaves no run behind;
* SIGINT or SIGTERM to the parent stop the pool: nothing new starts, the running
  children get SIGTERM and are waited for (SIGKILL after ``GRACE_S``), and ``run``
  returns with ``interrupted`` set, so the caller can still write what finished.

    pool = RunPool(jobs=2)
    pool.run(tasks, on_done)      # on_done(task, Finished) -> False stops launching

:func:`make_pool` chooses the executor: this pool, or with ``--cluster`` (or
``SMP_CLUSTER``) the same interface on Dask distributed (:mod:`smp.tools.cluster`, which
alone imports dask).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POLL_S = 0.05
GRACE_S = 20.0          # a child asked to stop writes its run directory first


@dataclass
class Task:
    """One run: its key (the caller's), the ``smp run`` arguments and the run directory."""

    key: Any
    args: list[str]
    run_dir: Path


@dataclass
class Finished:
    """How a child ended."""

    returncode: int
    stderr: str
    wall_s: float
    stopped: bool = False         # the pool stopped it (Ctrl-C or SIGTERM to the sweep)
    retries: int = 0              # a cluster ran it again (its worker died, or it failed)
    workers: list[str] = field(default_factory=list)    # on a cluster: each attempt's worker

    def last_error_line(self) -> str:
        lines = [x for x in self.stderr.strip().splitlines() if x.strip()]
        return lines[-1].removeprefix("smp: ") if lines else ""


@dataclass
class _Child:
    task: Task
    proc: subprocess.Popen
    err: Any
    t0: float = field(default_factory=time.monotonic)


def smp_command(args: list[str]) -> list[str]:
    """The command line of an ``smp`` subcommand in a child process, this interpreter."""
    return [sys.executable, "-m", "smp", *args]


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)          # PR_SET_PDEATHSIG
        # the parent may have died before prctl took effect: then we are an orphan
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


class RunPool:
    """Runs tasks as child processes, ``jobs`` at a time (module docstring)."""

    def __init__(self, jobs: int, progress: Any = None):
        self.jobs = max(1, jobs)
        self.progress = progress              # a tqdm bar or None
        self.interrupted = ""                 # "SIGINT"/"SIGTERM" once the pool was stopped
        self._children: list[_Child] = []

    def run(self, tasks: Iterable[Task],
            on_done: Callable[[Task, Finished], bool | None]) -> None:
        """Run every task (``on_done`` returning False stops starting new ones)."""
        it = iter(tasks)
        more = True
        old = {s: signal.signal(s, self._stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:
                while more and not self.interrupted and len(self._children) < self.jobs:
                    t = next(it, None)
                    if t is None:
                        more = False
                        break
                    self._start(t)
                if not self._children:
                    break
                if self.interrupted:
                    for child, fin in self._stop_children():
                        on_done(child.task, fin)      # stopped runs say so themselves
                    break
                done = self._reap()
                for child, fin in done:
                    if self.progress is not None:
                        self.progress.update(1)
                    if on_done(child.task, fin) is False:
                        more = False
                if not done:
                    time.sleep(POLL_S)
        finally:
            if self._children:            # an exception in on_done: no child outlives us
                self._stop_children()
            for s, h in old.items():
                signal.signal(s, h)

    def _stop(self, signum, frame) -> None:
        self.interrupted = signal.Signals(signum).name

    def close(self) -> None:
        """Nothing to release (a cluster pool disconnects here)."""

    def _start(self, t: Task) -> None:
        err = tempfile.TemporaryFile()
        p = subprocess.Popen(smp_command(t.args), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=err,
                             preexec_fn=_die_with_parent)
        self._children.append(_Child(t, p, err))

    def _reap(self) -> list[tuple[_Child, Finished]]:
        done = []
        for c in list(self._children):
            if c.proc.poll() is None:
                continue
            self._children.remove(c)
            done.append((c, self._finished(c)))
        return done

    @staticmethod
    def _finished(c: _Child) -> Finished:
        c.err.seek(0)
        text = c.err.read().decode("utf-8", "replace")
        c.err.close()
        return Finished(c.proc.returncode, text, time.monotonic() - c.t0)

    def _stop_children(self) -> list[tuple[_Child, Finished]]:
        """SIGTERM every running child, wait for it, SIGKILL what is left."""
        for c in self._children:
            if c.proc.poll() is None:
                try:
                    c.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + GRACE_S
        out = []
        for c in self._children:
            try:
                c.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()
            fin = self._finished(c)
            fin.stopped = True
            out.append((c, fin))
        self._children.clear()
        return out


def default_jobs() -> int:
    return max(1, os.cpu_count() or 1)


CLUSTER_ENV = "SMP_CLUSTER"


def cluster_address(option: str | None) -> str | None:
    """``--cluster`` if given, else ``SMP_CLUSTER``, else None (the local pool)."""
    addr = option if option is not None else os.environ.get(CLUSTER_ENV, "")
    return addr.strip() or None


def make_pool(jobs: int, progress: Any = None, cluster: str | None = None):
    """A :class:`RunPool`, or with ``cluster`` a Dask pool with the same ``run`` contract
    (connected here: an unreachable scheduler is a BadInput).  Dask is imported only then."""
    if cluster is None:
        return RunPool(jobs, progress)
    from smp.tools.cluster import DaskPool

    return DaskPool(cluster, progress)
