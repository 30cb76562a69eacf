"""Process programs: the operations a load script's processes run, and their interpreter.

A program is a list of operations compiled into rows of ``OPW`` integers in
the segment (``prog``), so a process can run on any CPU: its program counter
and progress live in its proc row (``pc``, ``reg``), its loop counters in
``pstack`` and its mapped regions in ``pslot``.  Every operation can be cut
short by a sleep (``ltsleep`` unwinds the thread) and is then run again from
where its progress registers say -- a touch of page 417 of 1000 that had to
wait for memory resumes at page 417.

Operations (``Op`` codes, arguments in brackets):

    MMAP      [slot, npages, prot, flags, file, file_off, advice]
    MUNMAP    [slot]
    TOUCH     [slot, first, npages, stride, write, pattern, count]   one memory
              reference per step; pattern 0 sequential, 1 random (a hash of
              pid, op and step: reproducible), count 0 = each page once
    MLOCK / MUNLOCK [slot]            wire / unwire (faults every page in)
    FORK      [child program, copies]
    EXIT
    KMALLOC   [slot, npages, kind]    kind 0 uvm_km_alloc1, 1 malloc from
              kmem_object (interrupt-safe), 2 malloc from a pageable object
    KFREE     [slot]
    READ / WRITE [file, file_off, npages]   file I/O through UBC windows
    COMPUTE   [ns]                    user-mode CPU time
    SLEEP     [ns]                    tsleep for that long
    REPEAT    [count, end_pc]  ... END [begin_pc]
    BARRIER   [id, n]                 wait until n processes have arrived
    DURATION  [ns, end_pc] ... END    repeat the block until ns have passed
    EXEC      [file, text pages, data pages, arg pages, text slot, data slot]
              execve: the old address space goes; text (read-only, shared) and
              data (private) map the file's first pages
    RAWREAD   [slot, npages, count]   physio: count reads of npages from a raw
              disk into the buffer region (vslock, vmapbuf into phys_map)
"""

from __future__ import annotations

import enum

import numpy as np

OPW = 8
NSLOTS = 16
NSTACK = 8


class Op(enum.IntEnum):
    NOP = 0
    MMAP = 1
    MUNMAP = 2
    TOUCH = 3
    MLOCK = 4
    MUNLOCK = 5
    FORK = 6
    EXIT = 7
    KMALLOC = 8
    KFREE = 9
    READ = 10
    WRITE = 11
    COMPUTE = 12
    SLEEP = 13
    REPEAT = 14
    END = 15
    BARRIER = 16
    DURATION = 17
    EXEC = 18
    RAWREAD = 19


def mix(*vals: int) -> int:
    """A small reproducible hash (splitmix64 steps) for random touch patterns."""
    x = 0x9E3779B97F4A7C15
    for v in vals:
        x = (x ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x


class Assembler:
    """Builds the program table: ``emit`` operations, ``begin``/``end`` blocks."""

    def __init__(self) -> None:
        self.rows: list[list[int]] = []
        self._open: list[int] = []

    @property
    def pc(self) -> int:
        return len(self.rows)

    def emit(self, op: Op, *args: int) -> int:
        row = [int(op)] + [int(a) for a in args]
        row += [0] * (OPW - len(row))
        self.rows.append(row)
        return len(self.rows) - 1

    def begin(self, op: Op, *args: int) -> int:
        pc = self.emit(op, *args)
        self._open.append(pc)
        return pc

    def end(self) -> None:
        begin = self._open.pop()
        end = self.emit(Op.END, begin)
        self.rows[begin][-1] = end             # the block's end pc, in its last field

    def table(self) -> np.ndarray:
        if self._open:
            raise ValueError("unterminated block")
        return np.array(self.rows or [[0] * OPW], dtype=np.int64)
