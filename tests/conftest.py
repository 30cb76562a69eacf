"""Shared test helpers: running the ``smp`` command as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from smp.machine.segment import SEGMENT_PREFIX, leaked_segments

REPO = Path(__file__).resolve().parent.parent


def smp(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m smp ARGS`` in ``cwd``, with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "smp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def no_leaks():
    """No test leaves a shared-memory segment behind: none of a dead run (an orphan whose
    owner is gone) appears during the test, and none this test process owns survives it.
    Segments of runs still going on elsewhere (other test sessions) are not ours to judge."""
    mine = f"{SEGMENT_PREFIX}{os.getpid()}-"
    before = set(leaked_segments(orphans_only=True))
    yield
    orphans = set(leaked_segments(orphans_only=True)) - before
    own = [s for s in leaked_segments() if s.startswith(mine)]
    assert not orphans and not own, f"segments left in /dev/shm: {sorted(orphans) + own}"
