"""Load scripts (``workloads/*.toml``): the language, its validation, its compilation.

A load script names the machine profile and kernel configuration it was
written for (the command line may override both), the files its processes
use, and the processes: how many of each kind and the program each runs.
See ``workloads/README.md`` for the language with an example per operation.

    [run]
    machine = "i386mp-4"
    kernel = "default"
    time_limit = "120s"            # optional: stop the run after this long

    [[file]]
    name = "src"
    size = "4M"

    [[interrupt]]                  # optional: a network interface on every CPU
    kind = "net"
    rate = 2000                    # packets a second
    size = "1500"                  # bytes each (an mbuf, a cluster)

    [[process]]
    name = "cc1"
    count = 8
    program = [
      { op = "mmap", region = "heap", size = "8M" },
      { op = "repeat", count = 4, body = [
          { op = "touch", region = "heap", write = true },
          { op = "compute", time = "2ms" },
      ] },
      { op = "munmap", region = "heap" },
    ]

Every field is checked before boot.  An error names the file, the key path
(``process[2].program[3].stride``) and what was expected; exit status 2.
Sizes take units (``4K``, ``16M``), durations too (``200ms``).  Programs
compile to the operation table of smp.workload.program; every program ends
with an implicit ``exit``.  A ``[synthetic]`` section instead of processes
selects the machine's lock-only synthetic load (smp.workload.synthetic).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smp.config import (
    WORKLOADS,
    find_named,
    list_named,
    parse_duration,
    parse_size,
    search_dirs,
)
from smp.errors import BadInput
from smp.workload.program import NSLOTS, NSTACK, Assembler, Op

DEFAULT_SCRIPT = "default"
PAGE = 4096
PROTS = {"r": 1, "rw": 3, "rx": 5, "rwx": 7, "none": 0}
ADVICE = {"normal": 0, "random": 1, "sequential": 2}
PATTERNS = {"sequential": 0, "random": 1, "sparse": 0}
KM_KINDS = {"alloc1": 0, "malloc": 1, "malloc_pageable": 2}
MAX_NEST = NSTACK          # open repeat/duration blocks (one loop-stack slot each)
USER_BASE, VM_MAXUSER = 0x0800_0000, 0xBFC0_0000
USER_SPACE = VM_MAXUSER - USER_BASE      # what mmap can hand out on i386
MAX_PAGES = USER_SPACE // PAGE
MAX_NS = 86_400 * 10**9


@dataclass
class LoadScript:
    name: str
    path: str
    text: str
    sha256: str
    machine: str
    kernel: str
    time_limit_s: float | None
    load: Any
    fail: list = None


def resolve(spec: str | None) -> Path:
    """A load script by name (``workloads/NAME.toml``) or by path."""
    spec = spec or DEFAULT_SCRIPT
    if "/" in spec or spec.endswith(".toml"):
        p = Path(spec)
        if not p.is_file():
            raise BadInput(f"{spec}: no such load script")
        return p
    p = find_named("workloads", spec)
    if p is None:
        where = " or ".join(str(d) for d in search_dirs("workloads")) or str(WORKLOADS)
        known = ", ".join(list_named("workloads")) or "none"
        raise BadInput(f"{spec}: no such load script in {where} (known: {known})")
    return p


class _Checker:
    """Field access with error messages that name the file and the key path."""

    def __init__(self, shown: str):
        self.shown = shown

    def bad(self, where: str, msg: str) -> BadInput:
        return BadInput(f"{self.shown}: {where}: {msg}")

    def table(self, v: Any, where: str) -> dict:
        if not isinstance(v, dict):
            raise self.bad(where, f"expected a table, got {type(v).__name__}")
        return v

    def keys(self, t: dict, where: str, allowed: set[str], required: set[str] = frozenset()):
        for k in t:
            if k not in allowed:
                shown = k if k.isidentifier() else repr(k)     # one line, whatever the key
                raise self.bad(f"{where}.{shown}", "unknown key (expected one of "
                               f"{', '.join(sorted(allowed))})")
        for k in sorted(required):
            if k not in t:
                raise self.bad(f"{where}.{k}", "missing (required)")

    def int(self, t: dict, key: str, where: str, lo: int, hi: int, default=None) -> int:
        if key not in t:
            if default is None:
                raise self.bad(f"{where}.{key}", "missing (required)")
            return default
        v = t[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.bad(f"{where}.{key}", f"expected an integer from {lo} to {hi}, "
                           f"got {v!r}")
        return v

    def str(self, t: dict, key: str, where: str, choices=None, default=None) -> str:
        if key not in t:
            if default is None:
                raise self.bad(f"{where}.{key}", "missing (required)")
            return default
        v = t[key]
        if not isinstance(v, str) or not v:
            raise self.bad(f"{where}.{key}", f"expected a string, got {v!r}")
        if choices is not None and v not in choices:
            raise self.bad(f"{where}.{key}", f"expected one of {', '.join(choices)}, got {v!r}")
        return v

    def bool(self, t: dict, key: str, where: str, default: bool) -> bool:
        v = t.get(key, default)
        if not isinstance(v, bool):
            raise self.bad(f"{where}.{key}", f"expected true or false, got {v!r}")
        return v

    def size(self, t: dict, key: str, where: str, default=None, lo: int = 0) -> int:
        if key not in t:
            if default is None:
                raise self.bad(f"{where}.{key}", "missing (required)")
            return default
        n = parse_size(t[key], f"{self.shown}: {where}.{key}")
        if n < lo:
            raise self.bad(f"{where}.{key}", f"must be at least {lo} bytes")
        return n

    def pages(self, t: dict, key: str, where: str, default=None, lo: int = 0) -> int:
        """A size given in bytes with units, or a plain integer of pages."""
        if key not in t:
            if default is None:
                raise self.bad(f"{where}.{key}", "missing (required)")
            return default
        v = t[key]
        if isinstance(v, int) and not isinstance(v, bool):
            n = v
        else:
            n = parse_size(v, f"{self.shown}: {where}.{key}") // PAGE
        if n < lo:
            raise self.bad(f"{where}.{key}", f"must be at least {lo} page(s), got {v!r}")
        if n > MAX_PAGES:
            raise self.bad(f"{where}.{key}", f"{v!r} is more than the i386 user address "
                           f"space ({USER_SPACE >> 20} MiB)")
        return n

    def duration(self, t: dict, key: str, where: str, default=None) -> int:
        if key not in t:
            if default is None:
                raise self.bad(f"{where}.{key}", "missing (required)")
            return default
        ns = parse_duration(t[key], f"{self.shown}: {where}.{key}")
        if ns > MAX_NS:
            raise self.bad(f"{where}.{key}", f"{t[key]!r} is longer than a day")
        return ns


OP_KEYS: dict[str, tuple[set[str], set[str]]] = {
    # op: (allowed keys besides "op", required keys)
    "mmap": ({"region", "size", "prot", "share", "file", "offset", "advice"},
             {"region", "size"}),
    "munmap": ({"region"}, {"region"}),
    "touch": ({"region", "first", "pages", "stride", "pattern", "write", "count", "time"},
              {"region"}),
    "mlock": ({"region", "first", "pages", "stride"}, {"region"}),
    "munlock": ({"region", "first", "pages", "stride"}, {"region"}),
    "fork": ({"program", "copies"}, {"program"}),
    "exit": (set(), set()),
    "kmalloc": ({"region", "size", "kind"}, {"region", "size"}),
    "kfree": ({"region"}, {"region"}),
    "read": ({"file", "offset", "size"}, {"file", "size"}),
    "write": ({"file", "offset", "size"}, {"file", "size"}),
    "compute": ({"time"}, {"time"}),
    "sleep": ({"time"}, {"time"}),
    "repeat": ({"count", "body"}, {"count", "body"}),
    "duration": ({"time", "body"}, {"time", "body"}),
    "barrier": ({"name", "count"}, {"name"}),
    "exec": ({"file", "text", "data", "args"}, {"file"}),
    "rawread": ({"size", "count", "region"}, {"size"}),
}
EXEC_REGIONS = ("text", "data")         # the regions exec maps (named so in the program)
RAWBUF = "rawread buffer"               # the buffer dd mallocs (a region no script can name)
MAX_RAWREAD = 256 * 1024                # MAXPHYS: physio moves at most this at once
NCARGS = 256 * 1024
MAX_PACKET = 8192                       # an mbuf and up to 4 clusters
INTERRUPT_KINDS = ("net",)


class _Compiler:
    def __init__(self, ck: _Checker, files: dict[str, tuple[int, int]]):
        self.ck = ck
        self.files = files
        self.asm = Assembler()
        self.barriers: dict[str, int] = {}
        self.barrier_count: dict[str, int | None] = {}
        self.barrier_users: dict[str, int] = {}
        self.max_private = 0
        self.forks = 0
        self.unbounded_forks = False
        self.pending: list[tuple[list, str, dict[str, int], int, int]] = []

    def program(self, ops: Any, where: str, regions: dict[str, int], inherited: int,
                mult: int) -> int:
        """Compile a program (and, after it, its fork children); returns its pc."""
        if not isinstance(ops, list):
            raise self.ck.bad(where, "expected a list of operations")
        pc = self.asm.pc
        private = [inherited]
        self._block(ops, where, regions, private, mult, 0, set())
        self.asm.emit(Op.EXIT)
        self.max_private = max(self.max_private, private[0])
        return pc

    def _region(self, regions: dict, name: str, where: str, kind: str,
                create: int = 0) -> int:
        """The slot of region ``name`` of ``kind`` ("mmap" or "kmalloc").

        ``create`` > 0 maps it (that many pages); a region's name can be mapped
        again once it has been unmapped.  regions: name -> [slot, kind, pages, mapped].
        """
        r = regions.get(name)
        if create:
            if r is not None and r[3]:
                raise self.ck.bad(f"{where}.region", f"region {name!r} is already mapped")
            if r is None:
                used = {v[0] for v in regions.values()}
                if len(used) >= NSLOTS:
                    gone = next((k for k, v in regions.items() if not v[3]), None)
                    if gone is None:
                        raise self.ck.bad(where, f"more than {NSLOTS} regions mapped at "
                                          "once in one process")
                    slot = regions.pop(gone)[0]        # reuse an unmapped region's slot
                else:
                    slot = min(set(range(NSLOTS)) - used)
                r = regions[name] = [slot, kind, create, True]
            r[1], r[2], r[3] = kind, create, True
            return r[0]
        if r is None or not r[3]:
            raise self.ck.bad(f"{where}.region", f"region {name!r} is not mapped by an "
                              "earlier mmap or kmalloc of this program")
        if r[1] != kind:
            other = "kmalloc/kfree" if r[1] == "kmalloc" else "mmap"
            raise self.ck.bad(f"{where}.region", f"region {name!r} was made by {r[1]}: "
                              f"use it with {other} operations")
        return r[0]

    def _block(self, ops, where, regions, private, mult, depth, seen_barriers) -> None:
        ck = self.ck
        if depth > MAX_NEST:
            raise ck.bad(where, f"blocks nested deeper than {MAX_NEST} (a timed touch is a "
                         "block too)")
        for i, raw in enumerate(ops):
            w = f"{where}[{i}]"
            t = ck.table(raw, w)
            if "op" not in t:
                raise ck.bad(f"{w}.op", "missing (expected one of "
                             f"{', '.join(sorted(OP_KEYS))})")
            op = t["op"]
            if not isinstance(op, str) or op not in OP_KEYS:
                raise ck.bad(f"{w}.op", f"unknown operation {op!r} (expected one of "
                             f"{', '.join(sorted(OP_KEYS))})")
            allowed, required = OP_KEYS[op]
            ck.keys(t, w, allowed | {"op"}, required)
            getattr(self, "_op_" + op)(t, w, regions, private, mult, depth, seen_barriers)

    # -- operations ---------------------------------------------------------------

    def _op_mmap(self, t, w, regions, private, mult, depth, seen):
        from smp.kern.uvm_map import EF_COPY, EF_FILE, EF_SHARED
        ck = self.ck
        name = ck.str(t, "region", w)
        npages = ck.pages(t, "size", w, lo=1)
        slot = self._region(regions, name, w, "mmap", create=npages)
        prot = PROTS[ck.str(t, "prot", w, PROTS, "rw")]
        share = ck.str(t, "share", w, ("private", "shared"), "private")
        flags = EF_COPY if share == "private" else EF_SHARED
        fid, foff = -1, 0
        if "file" in t:
            fname = ck.str(t, "file", w)
            if fname not in self.files:
                raise ck.bad(f"{w}.file", f"no [[file]] named {fname!r}")
            fid, fsize = self.files[fname]
            foff = ck.pages(t, "offset", w, 0)
            if foff + npages > fsize:
                raise ck.bad(w, f"maps pages {foff}..{foff + npages} of file {fname!r}, "
                             f"which has {fsize}")
            flags |= EF_FILE
        elif "offset" in t:
            raise ck.bad(f"{w}.offset", "an offset needs a file")
        elif share == "shared":
            raise ck.bad(f"{w}.share", "shared anonymous memory is not modelled; "
                         "use private (or a file)")
        advice = ADVICE[ck.str(t, "advice", w, ADVICE, "normal")]
        if fid < 0 or flags & EF_COPY:
            private[0] += npages
        mapped = sum(r[2] for r in regions.values() if r[3] and r[1] == "mmap")
        if mapped > MAX_PAGES:
            raise ck.bad(f"{w}.size", f"the process's regions add up to {mapped * 4} KiB, "
                         f"more than the i386 user address space ({USER_SPACE >> 20} MiB)")
        self.asm.emit(Op.MMAP, slot, npages, prot, flags, fid, foff, advice)

    def _op_munmap(self, t, w, regions, *_):
        name = self.ck.str(t, "region", w)
        self.asm.emit(Op.MUNMAP, self._region(regions, name, w, "mmap"))
        regions[name][3] = False

    def _op_touch(self, t, w, regions, private, mult, depth, seen):
        ck = self.ck
        slot = self._region(regions, ck.str(t, "region", w), w, "mmap")
        first = ck.pages(t, "first", w, 0)
        npages = ck.pages(t, "pages", w, 0)
        stride = ck.pages(t, "stride", w, 1, lo=1)
        pattern_name = ck.str(t, "pattern", w, PATTERNS, "sequential")
        if pattern_name == "sparse" and "stride" not in t:
            raise ck.bad(f"{w}.stride", "a sparse touch needs a stride (e.g. \"4M\")")
        pattern = PATTERNS[pattern_name]
        write = ck.bool(t, "write", w, False)
        count = ck.int(t, "count", w, 0, 10**9, 0)
        if pattern == 1 and count == 0 and "time" not in t:
            raise ck.bad(f"{w}.count", "a random touch needs a count (or a time)")
        if "time" in t:
            if depth + 1 > MAX_NEST:
                raise ck.bad(w, f"blocks nested deeper than {MAX_NEST} (a timed touch is a "
                             "block too)")
            self.asm.begin(Op.DURATION, ck.duration(t, "time", w), 0)
            self.asm.emit(Op.TOUCH, slot, first, npages, stride, int(write), pattern,
                          count if count else 256)
            self.asm.end()
        else:
            self.asm.emit(Op.TOUCH, slot, first, npages, stride, int(write), pattern, count)

    def _wire(self, t, w, regions, op):
        ck = self.ck
        name = ck.str(t, "region", w)
        slot = self._region(regions, name, w, "mmap")
        stride = ck.pages(t, "stride", w, 1, lo=1)
        first = ck.pages(t, "first", w, 0)
        span = ck.pages(t, "pages", w, 0)      # 0: the whole region, as its map entry
        if not span and ("stride" in t or "first" in t):
            span = max(0, regions[name][2] - first)     # from first to the region's end
        count = -(-span // stride) if span else 0
        self.asm.emit(op, slot, first, count, stride)

    def _op_mlock(self, t, w, regions, *_):
        self._wire(t, w, regions, Op.MLOCK)

    def _op_munlock(self, t, w, regions, *_):
        self._wire(t, w, regions, Op.MUNLOCK)

    def _op_fork(self, t, w, regions, private, mult, depth, seen):
        copies = self.ck.int(t, "copies", w, 1, 4096, 1)
        row = self.asm.emit(Op.FORK, 0, copies)
        self.forks += copies * mult
        inherited = {k: list(v) for k, v in regions.items()}
        self.pending.append((t["program"], f"{w}.program", inherited, private[0], row,
                             copies * mult))

    def _op_exit(self, t, w, *_):
        self.asm.emit(Op.EXIT)

    def _op_kmalloc(self, t, w, regions, *_):
        ck = self.ck
        name = ck.str(t, "region", w)
        npages = ck.pages(t, "size", w, lo=1)
        r = regions.get(name)
        if r is not None and r[3] and r[1] == "kmalloc":
            slot = r[0]                     # more allocations under the same name
        else:
            slot = self._region(regions, name, w, "kmalloc", create=npages)
        kind = KM_KINDS[ck.str(t, "kind", w, KM_KINDS, "alloc1")]
        self.asm.emit(Op.KMALLOC, slot, npages, kind)

    def _op_kfree(self, t, w, regions, *_):
        name = self.ck.str(t, "region", w)
        self.asm.emit(Op.KFREE, self._region(regions, name, w, "kmalloc"))
        regions[name][3] = False

    def _io(self, t, w, op):
        ck = self.ck
        fname = ck.str(t, "file", w)
        if fname not in self.files:
            raise ck.bad(f"{w}.file", f"no [[file]] named {fname!r}")
        fid, fsize = self.files[fname]
        off, n = ck.pages(t, "offset", w, 0), ck.pages(t, "size", w, lo=1)
        if off + n > fsize:
            raise ck.bad(w, f"reads or writes pages {off}..{off + n} of file {fname!r}, "
                         f"which has {fsize}")
        self.asm.emit(op, fid, off, n)

    def _op_read(self, t, w, *_):
        self._io(t, w, Op.READ)

    def _op_write(self, t, w, *_):
        self._io(t, w, Op.WRITE)

    def _op_compute(self, t, w, *_):
        self.asm.emit(Op.COMPUTE, self.ck.duration(t, "time", w))

    def _op_sleep(self, t, w, *_):
        self.asm.emit(Op.SLEEP, self.ck.duration(t, "time", w))

    def _op_repeat(self, t, w, regions, private, mult, depth, seen):
        count = self.ck.int(t, "count", w, 1, 10**9)
        if not isinstance(t["body"], list) or not t["body"]:
            raise self.ck.bad(f"{w}.body", "expected a non-empty list of operations")
        self.asm.begin(Op.REPEAT, count, 0)
        self._block(t["body"], f"{w}.body", regions, private, mult * count, depth + 1, seen)
        self.asm.end()

    def _op_duration(self, t, w, regions, private, mult, depth, seen):
        d = self.ck.duration(t, "time", w)
        if not isinstance(t["body"], list) or not t["body"]:
            raise self.ck.bad(f"{w}.body", "expected a non-empty list of operations")
        self.asm.begin(Op.DURATION, d, 0)
        before = self.forks
        self._block(t["body"], f"{w}.body", regions, private, mult, depth + 1, seen)
        if self.forks != before:
            self.unbounded_forks = True
        self.asm.end()

    def _op_exec(self, t, w, regions, private, mult, depth, seen):
        """execve: the program's mmap regions are gone; text and data map the file."""
        ck = self.ck
        fname = ck.str(t, "file", w)
        if fname not in self.files:
            raise ck.bad(f"{w}.file", f"no [[file]] named {fname!r}")
        fid, fsize = self.files[fname]
        text = ck.pages(t, "text", w, fsize, lo=1)
        data = ck.pages(t, "data", w, 0)
        if text + data > fsize:
            raise ck.bad(w, f"text and data are pages 0..{text + data} of file {fname!r}, "
                         f"which has {fsize}")
        args = ck.pages(t, "args", w, 1, lo=1)
        if args * PAGE > NCARGS:
            raise ck.bad(f"{w}.args", f"{t['args']!r} is more than NCARGS (256 KiB)")
        for r in regions.values():
            if r[1] == "mmap":
                r[3] = False                     # the old address space is released
        tslot = self._region(regions, EXEC_REGIONS[0], w, "mmap", create=text)
        dslot = self._region(regions, EXEC_REGIONS[1], w, "mmap", create=data) if data else -1
        private[0] += data
        self.asm.emit(Op.EXEC, fid, text, data, args, tslot, dslot)

    def _op_rawread(self, t, w, regions, private, mult, depth, seen):
        """physio from a raw disk into the buffer (dd if=/dev/rwd0d bs=SIZE count=N)."""
        ck = self.ck
        npages = ck.pages(t, "size", w, lo=1)
        if npages * PAGE > MAX_RAWREAD:
            raise ck.bad(f"{w}.size", f"{t['size']!r} is more than MAXPHYS (64 pages)")
        count = ck.int(t, "count", w, 1, 10**9, 1)
        if "region" in t:
            name = ck.str(t, "region", w)
            slot = self._region(regions, name, w, "mmap")
            if regions[name][2] < npages:
                raise ck.bad(f"{w}.size", f"{t['size']!r} is more than region {name!r}")
        else:
            r = regions.get(RAWBUF)
            if r is None or not r[3] or r[2] < npages:
                if r is not None and r[3]:
                    self.asm.emit(Op.MUNMAP, r[0])
                    r[3] = False
                slot = self._region(regions, RAWBUF, w, "mmap", create=npages)
                private[0] += npages
                self.asm.emit(Op.MMAP, slot, npages, PROTS["rw"], _ef_copy(), -1, 0, 0)
            else:
                slot = r[0]
        self.asm.emit(Op.RAWREAD, slot, npages, count)

    def _op_barrier(self, t, w, regions, private, mult, depth, seen):
        name = self.ck.str(t, "name", w)
        if name not in self.barriers:
            if len(self.barriers) >= 64:
                raise self.ck.bad(w, "more than 64 barriers")
            self.barriers[name] = len(self.barriers)
            self.barrier_count[name] = None
        if "count" in t:
            self.barrier_count[name] = self.ck.int(t, "count", w, 1, 65536)

        self.barrier_users[name] = self.barrier_users.get(name, 0) + self._kind_count
        self.asm.emit(Op.BARRIER, self.barriers[name], 0)
        self.barrier_rows = getattr(self, "barrier_rows", [])
        self.barrier_rows.append((len(self.asm.rows) - 1, name))


def load_script(spec: str | None) -> LoadScript:
    """Read, parse, validate and compile a load script; BadInput on any problem."""
    path = resolve(spec)
    shown = str(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{shown}: cannot read: {e}") from None
    return _parse(path.stem, shown, text, raw)


def load_script_text(name: str, text: str) -> LoadScript:
    """A load script given as text (a run directory's manifest keeps it for replay)."""
    return _parse(Path(name).stem, f"{name} (from a manifest)", text, text.encode())


def _parse(stem: str, shown: str, text: str, raw: bytes) -> LoadScript:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{shown}: malformed TOML: {e}") from None
    except RecursionError:
        raise BadInput(f"{shown}: malformed TOML: nested too deeply") from None
    ck = _Checker(shown)
    for key in doc:
        if key not in ("run", "synthetic", "process", "file", "interrupt"):
            raise BadInput(f"{shown}: unknown section or key {key!r} (expected [run], "
                           "[[file]], [[interrupt]], [[process]] or [synthetic])")
    run = ck.table(doc.get("run", {}), "run")
    ck.keys(run, "run", {"machine", "kernel", "time_limit", "description", "fail"})
    fail = run.get("fail", [])
    if not isinstance(fail, list) or not all(isinstance(f, str) for f in fail):
        raise ck.bad("run.fail", "expected a list of failpoint strings, e.g. "
                     "[\"uvm_pagealloc:p=0.01\"]")
    from smp.kern import kern_fail
    kern_fail.parse(fail, f"{shown}: run.fail")
    machine = ck.str(run, "machine", "run", default="i386mp-4")
    kernel = ck.str(run, "kernel", "run", default="default")
    limit = None
    if "time_limit" in run:
        limit = ck.duration(run, "time_limit", "run") / 1e9
        if limit <= 0:
            raise ck.bad("run.time_limit", "must be positive")
    if "synthetic" in doc:
        if "process" in doc:
            raise BadInput(f"{shown}: [synthetic] and [[process]] cannot be combined")
        if "interrupt" in doc:
            raise BadInput(f"{shown}: [synthetic] and [[interrupt]] cannot be combined")
        load = _synthetic(ck, doc["synthetic"], stem)
    elif "process" in doc:
        load = _programs(ck, doc, stem)
    else:
        raise BadInput(f"{shown}: no load: expected [[process]] tables (or [synthetic])")
    return LoadScript(name=stem, path=shown, text=text,
                      sha256=hashlib.sha256(raw).hexdigest(), machine=machine, kernel=kernel,
                      time_limit_s=limit, load=load, fail=list(fail))


def _ef_copy() -> int:
    from smp.kern.uvm_map import EF_COPY
    return EF_COPY


def _interrupts(ck: _Checker, doc: dict) -> list:
    """The ``[[interrupt]]`` tables: network interfaces (kind "net")."""
    from smp.workload.interp import Interrupt

    tables = doc.get("interrupt", [])
    if not isinstance(tables, list):
        raise ck.bad("interrupt", "expected [[interrupt]] tables")
    out = []
    for i, t in enumerate(tables):
        w = f"interrupt[{i}]"
        t = ck.table(t, w)
        ck.keys(t, w, {"kind", "rate", "size", "cpu", "hold"}, {"kind", "rate", "size"})
        ck.str(t, "kind", w, INTERRUPT_KINDS)
        rate = t["rate"]
        if isinstance(rate, bool) or not isinstance(rate, int | float) or \
                not 1 <= rate <= 1_000_000:
            raise ck.bad(f"{w}.rate", f"expected interrupts per second from 1 to 1000000, "
                         f"got {rate!r}")
        size = ck.size(t, "size", w, lo=1)
        if size > MAX_PACKET:
            raise ck.bad(f"{w}.size", f"{t['size']!r} is more than a packet's {MAX_PACKET} "
                         "bytes (an mbuf and 4 clusters)")
        cpu = ck.int(t, "cpu", w, 0, 63, -1)
        hold = ck.duration(t, "hold", w, 10_000_000)
        out.append(Interrupt(cpu=cpu, period_ns=max(1, round(1e9 / rate)), size=size,
                             hold_ns=hold))
    return out


def _synthetic(ck: _Checker, syn: Any, name: str):
    from smp.workload.synthetic import SyntheticLoad

    syn = ck.table(syn, "synthetic")
    where = "synthetic"
    ck.keys(syn, where, {"processes", "iterations", "buckets", "handoff_every", "compute",
                         "panic_at", "lock_order_bug"})
    return SyntheticLoad(
        name=name,
        nprocs=ck.int(syn, "processes", where, 1, 65536, 16),
        iterations=ck.int(syn, "iterations", where, 1, 10**9, 2000),
        buckets=ck.int(syn, "buckets", where, 1, 1_000_000, 8),
        handoff_every=ck.int(syn, "handoff_every", where, 0, 10**9, 50),
        compute_ns=ck.duration(syn, "compute", where, 20_000),
        panic_at=ck.int(syn, "panic_at", where, 0, 10**9, 0),
        lock_order_bug=ck.bool(syn, "lock_order_bug", where, False),
    )


def _programs(ck: _Checker, doc: dict, name: str):
    from smp.workload.interp import ProcessKind, ProgramLoad

    files: dict[str, tuple[int, int]] = {}
    fl = doc.get("file", [])
    if not isinstance(fl, list):
        raise ck.bad("file", "expected [[file]] tables")
    sizes = []
    for i, f in enumerate(fl):
        w = f"file[{i}]"
        f = ck.table(f, w)
        ck.keys(f, w, {"name", "size"}, {"name", "size"})
        fname = ck.str(f, "name", w)
        if fname in files:
            raise ck.bad(f"{w}.name", f"file {fname!r} declared twice")
        npages = ck.pages(f, "size", w, lo=1)
        files[fname] = (len(sizes), npages)
        sizes.append(npages)
    if len(sizes) > 64:
        raise ck.bad("file", "more than 64 files")
    procs = doc["process"]
    if not isinstance(procs, list) or not procs:
        raise ck.bad("process", "expected [[process]] tables")
    comp = _Compiler(ck, files)
    kinds = []
    for i, pt in enumerate(procs):
        w = f"process[{i}]"
        pt = ck.table(pt, w)
        ck.keys(pt, w, {"name", "count", "uid", "cpu", "program"}, {"program"})
        pname = ck.str(pt, "name", w, default=f"proc{i}")
        count = ck.int(pt, "count", w, 1, 65536, 1)
        comp._kind_count = count
        pc = comp.program(pt["program"], f"{w}.program", {}, 0, count)
        kinds.append(ProcessKind(pname, count, pc, uid=ck.int(pt, "uid", w, 0, 65535, 0),
                                 cpu=ck.int(pt, "cpu", w, -1, 63, -1)))
    # fork children (compiled after every top-level program)
    while comp.pending:
        ops, w, regions, inherited, row, nchildren = comp.pending.pop(0)
        comp._kind_count = nchildren      # a barrier in the child waits for all of them
        pc = comp.program(ops, w, regions, inherited, nchildren)
        comp.asm.rows[row][1] = pc
    for row, bname in getattr(comp, "barrier_rows", []):
        n = comp.barrier_count[bname] or comp.barrier_users[bname]
        comp.asm.rows[row][2] = max(1, n)
    initial = sum(k.count for k in kinds)
    maxproc = initial + (10**9 if comp.unbounded_forks else comp.forks)
    return ProgramLoad(name=name, table=comp.asm.table(), kinds=kinds, maxproc=maxproc,
                       files=sizes, amap_per_proc=max(16, comp.max_private),
                       interrupts=_interrupts(ck, doc))
