"""smp: a multiprocess SMP simulator of the NetBSD i386 pmap and UVM fault path (2001).

Worker processes stand in for CPUs; they share page-table state in one shared-memory
segment under the kernel's real locking protocol.  See README.md for a tour.
"""

__version__ = "0.1.0"
