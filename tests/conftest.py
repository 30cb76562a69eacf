"""Shared test helpers: running the ``smp`` command as a user would; the suite's own
rules (no leaked segments, tests that must run alone when the suite runs in parallel)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from smp.machine.segment import SEGMENT_PREFIX, leaked_segments

REPO = Path(__file__).resolve().parent.parent


def smp(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m smp ARGS`` in ``cwd``, with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "smp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def smp_background(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    """``python -m smp ARGS`` in the background, for tests that interrupt it: Ctrl-C
    reaches it whatever this test process inherited.

    A shell without job control (a CI script's ``pytest ... &``) starts a background job
    with SIGINT ignored, the job's children inherit that through exec, and ``smp run``
    keeps an ignored SIGINT ignored, as a background job should (``Machine.run``) -- so
    a Ctrl-C test run by such a job saw its run ignore the signal.  A handler of our own
    while the child is made is reset to the default by its exec."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "-m", "smp", *args], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                **kw)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


# The suite runs on every core (pytest-xdist, ``-n`` in pyproject.toml).  A test marked
# ``exclusive`` leaves a dead run's segment behind on purpose, or plants one for the next
# command to remove: beside it, another test's no_leaks check would see the orphan, or
# another test's smp command would remove the planted one first.  Such a test holds the
# suite's lock file exclusively, every other test holds it shared; a turnstile keeps a
# waiting exclusive test from being overtaken by shared ones.

@pytest.fixture(scope="session")
def _suite_lock(tmp_path_factory):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield None
        return
    shared = tmp_path_factory.getbasetemp().parent          # one directory for all workers
    with open(shared / "smp-suite.lock", "a") as main, \
            open(shared / "smp-suite.turnstile", "a") as turn:
        yield main, turn


@contextlib.contextmanager
def _holding(files, exclusive: bool):
    if files is None:
        yield
        return
    main, turn = files
    fcntl.flock(turn, fcntl.LOCK_EX)
    fcntl.flock(main, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    fcntl.flock(turn, fcntl.LOCK_UN)
    try:
        yield
    finally:
        fcntl.flock(main, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def no_leaks(request, _suite_lock):
    """No test leaves a shared-memory segment behind: none of a dead run (an orphan whose
    owner is gone) appears during the test, and none this test process owns survives it.
    Segments of runs still going on elsewhere (other test sessions) are not ours to judge."""
    exclusive = request.node.get_closest_marker("exclusive") is not None
    with _holding(_suite_lock, exclusive):
        mine = f"{SEGMENT_PREFIX}{os.getpid()}-"
        before = set(leaked_segments(orphans_only=True))
        yield
        orphans = set(leaked_segments(orphans_only=True)) - before
        own = [s for s in leaked_segments() if s.startswith(mine)]
        assert not orphans and not own, f"segments left in /dev/shm: {sorted(orphans) + own}"


def cpu_workers(pid: int) -> list[psutil.Process]:
    """The CPU workers of the ``smp run`` process ``pid`` (its children but
    multiprocessing's resource tracker), read without tripping over one that just
    exited."""
    out = []
    try:
        kids = psutil.Process(pid).children()
    except psutil.Error:
        return []
    for c in kids:
        try:
            if "resource_tracker" not in " ".join(c.cmdline()):
                out.append(c)
        except psutil.Error:
            continue
    return out


def wait_for(cond, timeout: float = 60.0, what: str = "") -> None:
    """Until ``cond()`` holds: readiness is an event, never a guess at the host's speed."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def gone(p: psutil.Process) -> bool:
    """Has process ``p`` ended (a zombie counts: it runs no more)?"""
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def segments_of(pid: int) -> list[str]:
    """The shared-memory segments process ``pid`` created and still owns."""
    return [s for s in leaked_segments() if s.startswith(f"{SEGMENT_PREFIX}{pid}-")]
