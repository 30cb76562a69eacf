"""Errors the simulator reports to its user rather than as tracebacks."""


class BadInput(Exception):
    """Bad user input.

    str(exc) is ONE line naming the file or key and the problem; the CLI prints
    `smp: <msg>` to stderr and exits 2.
    """
