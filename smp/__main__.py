"""``python -m smp``: the same as the ``smp`` command."""

import sys

from smp.cli import main

sys.exit(main())
