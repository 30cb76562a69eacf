"""The run directory: its formats, the one writer and the one reader.

* :mod:`smp.rundir.format` -- what the files hold: trace records, the message
  catalogue, console and UVMHIST line formats, events.bin, file names, schemas;
* :mod:`smp.rundir.writer` -- ``RunWriter``: creates the directory and every file
  (the trace sink the machine's drainer feeds included), and marks a directory
  incomplete when the host cannot write it;
* :mod:`smp.rundir.reader` -- ``RunDir``: opens a run directory and checks each file
  once (schemas, record sanity).  Tools, replay, experiment and explore read runs
  only through it.

None of them imports the machine or the kernel.
"""

from smp.rundir.reader import RunDir
from smp.rundir.writer import RunWriter

__all__ = ["RunDir", "RunWriter"]
