"""Former home of the run-directory formats; they live in :mod:`smp.rundir.format` now.

Kept only while branches that still import ``smp.runfmt`` are merged; new code imports
``smp.rundir.format``.
"""

from smp.rundir.format import *  # noqa: F403
from smp.rundir.format import _SPEC  # noqa: F401 - trace_input's slot grammar
