"""Shared test helpers: running the ``smp`` command as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def smp(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m smp ARGS`` in ``cwd``, with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "smp", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
