"""Machine profiles and kernel configurations: the box, and the kernel built to run on it.

A run names two files, the way a 2001 NetBSD developer would describe a test:

* a **machine profile** (``shared/machines/*.toml``, section ``[machine]``) is the hardware and
  what the kernel sizes from it: how many CPUs the MP table lists (``ncpu``), how much RAM the
  boot loader reports (``physmem``), the swap partition (``swap``), ``maxproc`` and ``hz``, plus
  knobs only the simulator has: the per-CPU trace ring size (``trace_ring``) and how long a
  CPU spins on a lock before its host process sleeps on a futex (``park_after``, spin turns;
  0 spins only: on a host with fewer cores than simulated CPUs the holder may not be
  running, and a spinner would burn the core it needs);
* a **kernel configuration** (``shared/kernels/*.toml``, section ``[kernel]``) is the
  ``sys/arch/i386/conf`` file plus the code variant under test: which stealing paths exist
  (``steal``), whether user faults run under the big kernel lock (``biglock``), whether a steal
  shoots down other CPUs' TLBs (``shootdown_on_steal``), ``options DIAGNOSTIC``, lock statistics,
  UVMHIST, the UVM page reserves and the pagedaemon targets (``freemin``/``freetarg``, 0 meaning
  "as uvmpd_tune computes them").

The kernel configuration is the experiment: comparing runs that differ in one kernel key is how
the January 2001 question "PT page stealing -- should we bother?" gets settled.

Example (``shared/kernels/netbsd-2001-i386mp.toml``)::

    [kernel]
    steal = "ptp,pv"
    biglock = "on"

Missing keys take the defaults below; unknown sections and keys are errors. The command line
overrides single keys (``-o steal=none``, ``-o machine.ncpu=8``). Every problem is reported as a
one-line :class:`~smp.errors.BadInput` that starts with the file (or the ``-o`` argument) and
names the key, e.g. ``m.toml: machine.ncpu = 0: must be an integer from 1 to 64``.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

from smp.errors import BadInput

__all__ = [
    "ROOT", "SHARED", "WORKLOADS", "PAGE_SIZE", "DEFAULT_MACHINE", "DEFAULT_KERNEL",
    "STEAL_PATHS", "MACHINE_KEYS", "KERNEL_KEYS",
    "parse_size", "parse_duration", "parse_onoff",
    "MachineProfile", "KernelConfig", "RunConfig", "Seeds",
    "list_machines", "list_kernels", "load_machine", "load_kernel", "search_dirs",
    "find_named", "list_named",
    "machine_from_table", "kernel_from_table", "apply_overrides", "load_run_config",
]


def _root() -> Path:
    """Where the shipped load scripts and profiles live: ``$SMP_HOME``, else the source
    checkout this package runs from, else the copies installed with the package (a
    wheel has them in ``smp/data``)."""
    home = os.environ.get("SMP_HOME")
    if home:
        return Path(home).expanduser().resolve()
    here = Path(__file__).resolve().parent
    if (here.parent / "workloads").is_dir() and (here.parent / "shared").is_dir():
        return here.parent
    return here / "data"


ROOT: Path = _root()
SHARED: Path = ROOT / "shared"
WORKLOADS: Path = ROOT / "workloads"


def search_dirs(kind: str) -> list[Path]:
    """Folders searched, in order, for ``kind`` ("workloads", "machines" or "kernels"):
    the current directory's ``./workloads`` or ``./shared/KIND`` first (a user's own
    copies, see ``smp init``), then the shipped ones."""
    rel = Path("workloads") if kind == "workloads" else Path("shared") / kind
    shipped = WORKLOADS if kind == "workloads" else SHARED / kind
    out: list[Path] = []
    for d in (Path.cwd() / rel, shipped):
        try:
            if d.is_dir() and all(d.resolve() != o.resolve() for o in out):
                out.append(d)
        except OSError:
            continue
    return out


def find_named(kind: str, name: str) -> Path | None:
    """The first ``NAME.toml`` of ``kind`` along :func:`search_dirs`, or None."""
    for d in search_dirs(kind):
        p = d / f"{name}.toml"
        if p.is_file():
            return p
    return None


def list_named(kind: str) -> list[str]:
    """Names of every ``*.toml`` of ``kind`` along :func:`search_dirs` (no duplicates)."""
    names = {p.stem for d in search_dirs(kind) for p in d.glob("*.toml")}
    return sorted(names, key=_natural)

PAGE_SIZE = 4096  # NBPG on i386
_K, _M, _G = 1 << 10, 1 << 20, 1 << 30

DEFAULT_MACHINE = "i386mp-4"
DEFAULT_KERNEL = "default"

STEAL_PATHS = ("ptp", "pv")  # pmap_steal_ptp, and pmap_alloc_pvpage's steal_one

# Smallest machine that boots: the kernel image, its page tables and the per-CPU structures.
_MIN_PHYSMEM = 2 * _M          # 512 pages
_MAX_PHYSMEM = 4 * _G          # an i386 without PAE addresses no more
_MAX_SWAP = 16 * _G
_KERNEL_PAGES = 64             # boot-time floor of npages >= 64 + 8 * ncpu
_PAGES_PER_CPU = 8
_MAX_PAGES = _MAX_PHYSMEM // PAGE_SIZE


# ---------------------------------------------------------------------------------------------
# Value parsers. `where` is the prefix of any error: "file: section.key" or "-o k=v: section.key".

def _bad(message: str) -> BadInput:
    # One line, always: the CLI prints it after "smp: ".
    return BadInput(" ".join(message.splitlines()))


def _show(raw: object) -> str:
    """Render a value the way the user wrote it (for "key = value" in messages)."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str) and raw and re.fullmatch(r"[\w.,+:/-]+", raw):
        return raw
    if isinstance(raw, int | float):
        return str(raw)
    return repr(raw)


def _fmt_size(nbytes: int) -> str:
    for unit, mult in (("G", _G), ("M", _M), ("K", _K)):
        if nbytes >= mult and nbytes % mult == 0:
            return f"{nbytes // mult}{unit}"
    return str(nbytes)


_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg](?:ib|b)?|b)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": _K, "m": _M, "g": _G}


def parse_size(text: str | int, where: str) -> int:
    """Bytes from ``4096``, ``"4K"``, ``"16M"``, ``"1G"``.

    Units are powers of two, any case, with an optional ``iB``/``B``: ``16MiB``, ``16mb``, ``16m``.
    """
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    if isinstance(text, str):
        match = _SIZE_RE.fullmatch(text.strip())
        if match:
            unit = (match.group(2) or "").lower()[:1]
            value = Decimal(match.group(1)) * _SIZE_UNITS[unit]
            if value == value.to_integral_value():
                return int(value)
    raise _bad(f"{where}: expected a size such as 4K, 16M or 1G, got {text!r}")


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ns|us|µs|ms|s)?", re.IGNORECASE)
_NS_PER = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
           "": 1_000_000_000}


def parse_duration(text: str | int | float, where: str) -> int:
    """Nanoseconds from ``"200ms"``, ``"1.5s"``, ``"10us"``, ``"50ns"``; bare numbers: seconds."""
    value: Decimal | None = None
    if isinstance(text, int | float) and not isinstance(text, bool):
        if math.isfinite(text) and text >= 0:
            # repr() keeps 0.1 as 0.1 rather than the binary fraction nearest to it.
            value = Decimal(repr(text)) * _NS_PER["s"]
    elif isinstance(text, str):
        match = _DURATION_RE.fullmatch(text.strip())
        if match:
            value = Decimal(match.group(1)) * _NS_PER[(match.group(2) or "").lower()]
    if value is None:
        raise _bad(f"{where}: expected a duration such as 200ms, 1.5s or 10us, got {text!r}")
    return int(value.to_integral_value())


_ON = {"on", "true", "yes", "1"}
_OFF = {"off", "false", "no", "0"}


def parse_onoff(text: str | bool, where: str) -> bool:
    """``on/off``, ``true/false``, ``yes/no``, ``1/0`` (any case), or a TOML boolean."""
    if isinstance(text, bool):
        return text
    if isinstance(text, int) and text in (0, 1):
        return bool(text)
    if isinstance(text, str):
        word = text.strip().lower()
        if word in _ON:
            return True
        if word in _OFF:
            return False
    raise _bad(f"{where}: expected on or off, got {text!r}")


def _as_int(raw: object) -> int | None:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
        return int(raw)
    return None


_Convert = Callable[[object, str], Any]


def _int_in(lo: int, hi: int) -> _Convert:
    def convert(raw: object, where: str) -> int:
        value = _as_int(raw)
        if value is None:
            raise _bad(f"{where}: expected an integer from {lo} to {hi}, got {raw!r}")
        if not lo <= value <= hi:
            raise _bad(f"{where} = {_show(raw)}: must be an integer from {lo} to {hi}")
        return value
    return convert


def _power_of_two_in(lo: int, hi: int) -> _Convert:
    def convert(raw: object, where: str) -> int:
        value = _as_int(raw)
        if value is None:
            raise _bad(f"{where}: expected a power of two from {lo} to {hi}, got {raw!r}")
        if not lo <= value <= hi or value & (value - 1):
            raise _bad(f"{where} = {_show(raw)}: must be a power of two from {lo} to {hi}")
        return value
    return convert


def _choice(*words: str) -> _Convert:
    def convert(raw: object, where: str) -> str:
        if isinstance(raw, str) and raw.strip().lower() in words:
            return raw.strip().lower()
        raise _bad(f"{where}: expected one of {', '.join(words)}, got {raw!r}")
    return convert


def _duration_ns(lo: int, hi: int) -> _Convert:
    """A duration such as ``"5ms"``; a bare integer is nanoseconds (how manifests keep it)."""
    def convert(raw: object, where: str) -> int:
        value = _as_int(raw) if not isinstance(raw, str) else None
        if value is None:
            value = parse_duration(raw, where)    # type: ignore[arg-type]
        if not lo <= value <= hi:
            raise _bad(f"{where} = {_show(raw)}: must be from {lo // 1000} us to "
                       f"{hi // 1_000_000} ms")
        return value
    return convert


def _physmem(raw: object, where: str) -> int:
    value = parse_size(raw, where) // PAGE_SIZE * PAGE_SIZE  # type: ignore[arg-type]
    if value < _MIN_PHYSMEM:
        raise _bad(f"{where} = {_show(raw)}: too small: at least {_fmt_size(_MIN_PHYSMEM)} "
                   f"({_MIN_PHYSMEM // PAGE_SIZE} pages) is needed to boot")
    if value > _MAX_PHYSMEM:
        raise _bad(f"{where} = {_show(raw)}: too large: an i386 without PAE addresses at most "
                   f"{_fmt_size(_MAX_PHYSMEM)}")
    return value


def _swap(raw: object, where: str) -> int:
    value = parse_size(raw, where) // PAGE_SIZE * PAGE_SIZE  # type: ignore[arg-type]
    if value > _MAX_SWAP:
        raise _bad(f"{where} = {_show(raw)}: too large: at most {_fmt_size(_MAX_SWAP)} of swap")
    return value


def _steal(raw: object, where: str) -> frozenset[str]:
    """``"ptp,pv"``, ``"ptp+pv"``, ``"ptp"``, ``"pv"``, ``"none"``, ``"all"`` or a TOML list."""
    items: list[object]
    if isinstance(raw, frozenset | set | list | tuple):
        items = list(raw)
    elif isinstance(raw, str) and raw.strip():
        word = raw.strip().lower()
        if word == "none":
            return frozenset()
        if word == "all":
            return frozenset(STEAL_PATHS)
        items = [part.strip() for part in re.split(r"[,+]", word)]
    else:
        raise _bad(f"{where}: expected a list of stealing paths such as ptp,pv, ptp, pv, "
                   f"none or all, got {raw!r}")
    for item in items:
        if item not in STEAL_PATHS:
            raise _bad(f"{where} = {_show(raw)}: unknown stealing path {item!r} "
                       f"(known: {', '.join(STEAL_PATHS)}; or none, all)")
    return frozenset(items)  # type: ignore[arg-type]


def _format_steal(steal: frozenset[str]) -> str:
    return ",".join(p for p in STEAL_PATHS if p in steal) or "none"


# ---------------------------------------------------------------------------------------------
# The two records.

@dataclass(frozen=True)
class MachineProfile:
    """The simulated box (defaults = ``i386mp-4``). Build it with :func:`load_machine`.

    >>> m = load_machine("i386mp-4")
    >>> (m.ncpu, m.npages, m.swpages)
    (4, 8192, 16384)
    """

    name: str = "builtin"
    path: str = "<builtin>"
    ncpu: int = 4
    physmem: int = 32 * _M      # bytes, page multiple
    swap: int = 64 * _M         # bytes, page multiple
    maxproc: int = 512
    trace_ring: int = 65536     # records per CPU ring
    hz: int = 100
    park_after: int = 256       # spin turns before a lock waiter sleeps on a futex (0: spin)
    disk_latency: int = 10_000_000   # ns a disk transfer (a pageout cluster) takes

    @property
    def npages(self) -> int:
        """Physical pages (uvmexp.npages before the kernel takes its share)."""
        return self.physmem // PAGE_SIZE

    @property
    def swpages(self) -> int:
        """Swap pages (uvmexp.swpages)."""
        return self.swap // PAGE_SIZE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``name``, ``path`` and the ``[machine]`` keys (sizes in bytes)."""
        return {"name": self.name, "path": self.path,
                **{key: getattr(self, key) for key in MACHINE_KEYS}}


@dataclass(frozen=True)
class KernelConfig:
    """The kernel under test (defaults = ``default.toml``). Build it with :func:`load_kernel`.

    ``pmap_canfail_leak`` is UNVERIFIED (NETBSD-FACTS §4.1 step 3, §12 item 4): whether a
    PMAP_CANFAIL PTP failure returns early without unlocking, as OpenBSD's 1.63 copy does.
    ``pv_steal_attrs``: whether pv stealing merges the stolen PTE's U/M bits into the page's
    attributes; the 1.91 lineage does not (§2.4 step 4), so a dirty bit can be lost.
    ``nkpde``: the kernel PTPs locore.s sets up before UVM runs (NKPTP, 4 on i386: 16 MB);
    the boot-time submaps and every later kernel_map allocation grow it (pmap_growkernel).
    ``pageout_free``: ``aiodone`` -- a page whose asynchronous pageout completed is freed
    by the I/O-done processing (NetBSD from late 2001, PG_PAGEOUT); ``rescan`` -- it is
    only marked clean there and freed by the pagedaemon's next scan (the copy of
    uvm_pager.c 1.36 of November 2000 that OpenBSD kept).  Which one the January 2001
    branch had is UNVERIFIED.  ``intr_biglock``: interrupt handlers take the big lock when
    ``biglock`` is on, as the merged MP code's x86_intlock does; the January 2001
    branch's choice is UNVERIFIED (NETBSD-FACTS §12 item 6).  ``swapout``: whether the
    pagedaemon swaps processes out below its free target (1.5's uvm_swapout_threads, on
    i386, which does not define __SWAP_BROKEN), and what the swapout's ``pmap_collect``
    takes: ``on`` every mapping, wired ones too (pmap.c 1.91 lineage), ``skipwired`` all
    but the wired ones (1.135's PMAP_REMOVE_SKIPWIRED); ``off`` never swaps out.
    """

    name: str = "builtin"
    path: str = "<builtin>"
    steal: frozenset[str] = frozenset(STEAL_PATHS)
    biglock: bool = True
    shootdown_on_steal: bool = True
    diagnostic: bool = False
    lockstat: bool = True
    hist: bool = False
    reserve_kernel: int = 5       # uvmexp.reserve_kernel [PG23]
    reserve_pagedaemon: int = 1   # uvmexp.reserve_pagedaemon [PG23]
    freemin: int = 0              # pages; 0 = auto (uvmpd_tune)
    freetarg: int = 0             # pages; 0 = auto (uvmpd_tune)
    pmap_canfail_leak: bool = False
    pv_steal_attrs: bool = False
    nkpde: int = 4                # kernel PTPs locore sets up (i386 NKPTP: 16 MB)
    pageout_free: str = "aiodone"  # who frees a page once its pageout I/O is done
    intr_biglock: bool = True     # interrupt handlers take the big lock (with biglock on)
    swapout: str = "on"           # uvm_swapout_threads; "skipwired": 1.135's pmap_collect

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``name``, ``path`` and the ``[kernel]`` keys (``steal`` as ``"ptp,pv"``)."""
        out: dict[str, Any] = {"name": self.name, "path": self.path}
        for key in KERNEL_KEYS:
            out[key] = _format_steal(self.steal) if key == "steal" else getattr(self, key)
        return out

    def tuned(self, npages: int) -> tuple[int, int]:
        """(freemin, freetarg) in pages for a machine of `npages`, as uvmpd_tune() sets them.

        Configured (non-zero) values are taken as they are; the result must satisfy
        freemin < freetarg < npages, else BadInput.
        """
        return _tune(self, npages, self.path)


@dataclass(frozen=True)
class RunConfig:
    """What one run boots: the machine, the kernel, and the ``-o`` overrides applied to them."""

    machine: MachineProfile
    kernel: KernelConfig
    overrides: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the run manifest."""
        return {"machine": self.machine.to_dict(), "kernel": self.kernel.to_dict(),
                "overrides": list(self.overrides)}

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], source: str) -> RunConfig:
        """The machine and kernel exactly as a run's manifest.json recorded them (replay).

        Every value is validated again; a problem is one BadInput line naming ``source``.
        """
        recs = {}
        for section, keys, make in (("machine", MACHINE_KEYS, _make_machine),
                                    ("kernel", KERNEL_KEYS, _make_kernel)):
            table = manifest.get(section)
            if not isinstance(table, dict):
                raise _bad(f"{source}: {section}: missing or not a table")
            unknown = set(table) - set(keys) - {"name", "path"}
            if unknown:
                raise _bad(f"{source}: {section}.{sorted(unknown)[0]}: unknown key (a manifest "
                           "of a newer smp?)")
            vals = {k: v for k, v in table.items() if k in keys}
            if section == "kernel":
                # a manifest from before the key existed: that kernel never swapped out
                vals.setdefault("swapout", "off")
            recs[section] = make(vals, str(table.get("name", "manifest")),
                                 f"{source}: {section}", {})
        ov = manifest.get("overrides", [])
        cfg = cls(recs["machine"], recs["kernel"],
                  tuple(str(o) for o in ov) if isinstance(ov, list) else ())
        _tune(cfg.kernel, cfg.machine.npages, source)
        return cfg


@dataclass(frozen=True)
class Seeds:
    """The random streams of one run, every one derived here from the run's ``--seed``.

    ``load``: the load script's choices (random touches, strides); ``failpoints``: the
    failpoints' draws (each CPU mixes in its number); ``schedule``: the lockstep
    scheduler's generator.  A run is a function of these three (and, free-running, of
    the host's timing).
    """

    run: int
    load: int
    failpoints: int
    schedule: int

    @classmethod
    def derive(cls, seed: int) -> Seeds:
        if seed < 0:
            raise _bad(f"--seed {seed}: expected a non-negative integer")
        # each consumer already mixes the seed with its own constants, so one value serves
        return cls(run=seed, load=seed, failpoints=seed, schedule=seed)


MACHINE_KEYS: dict[str, _Convert] = {
    "ncpu": _int_in(1, 64),
    "physmem": _physmem,
    "swap": _swap,
    "maxproc": _int_in(8, 65536),
    "trace_ring": _power_of_two_in(64, 4194304),
    "hz": _int_in(10, 10000),
    "park_after": _int_in(0, 1 << 30),
    "disk_latency": _duration_ns(1_000, 1_000_000_000),
}

KERNEL_KEYS: dict[str, _Convert] = {
    "steal": _steal,
    "biglock": parse_onoff,
    "shootdown_on_steal": parse_onoff,
    "diagnostic": parse_onoff,
    "lockstat": parse_onoff,
    "hist": parse_onoff,
    "reserve_kernel": _int_in(0, 1000),
    # The upper bound is reserve_kernel, checked once both are known.
    "reserve_pagedaemon": _int_in(0, 1000),
    "freemin": _int_in(0, _MAX_PAGES),
    "freetarg": _int_in(0, _MAX_PAGES),
    "pmap_canfail_leak": parse_onoff,
    "pv_steal_attrs": parse_onoff,
    "nkpde": _int_in(4, 255),                 # NKPTP_MIN .. NKPTP_MAX (1024 - 768 - 1)
    "pageout_free": _choice("aiodone", "rescan"),
    "intr_biglock": parse_onoff,
    "swapout": _choice("on", "off", "skipwired"),
}

# -o accepts unqualified keys, so the two sections must not share one.
assert not MACHINE_KEYS.keys() & KERNEL_KEYS.keys()
assert [f.name for f in fields(MachineProfile)][2:] == list(MACHINE_KEYS)
assert [f.name for f in fields(KernelConfig)][2:] == list(KERNEL_KEYS)


# ---------------------------------------------------------------------------------------------
# Building and cross-checking. `sources` maps "section.key" to the -o argument that last set it,
# in the order applied, so a cross-key error blames what the user just typed.

def _blame(sources: Mapping[str, str], default: str, *keys: str) -> str:
    latest = [src for key, src in sources.items() if key in keys]
    return latest[-1] if latest else default


def _values(record: MachineProfile | KernelConfig, keys: Mapping[str, _Convert]) -> dict:
    return {key: getattr(record, key) for key in keys}


def _make_machine(values: Mapping[str, object], name: str, path: str,
                  sources: Mapping[str, str]) -> MachineProfile:
    typed: dict[str, Any] = {}
    for key, convert in MACHINE_KEYS.items():
        raw = values.get(key, getattr(MachineProfile, key))
        where = sources.get(f"machine.{key}", path)
        typed[key] = convert(raw, f"{where}: machine.{key}")
    machine = MachineProfile(name=name, path=path, **typed)
    need = _KERNEL_PAGES + _PAGES_PER_CPU * machine.ncpu
    if machine.npages < need:
        where = _blame(sources, path, "machine.physmem", "machine.ncpu")
        raise _bad(f"{where}: machine.physmem = {_fmt_size(machine.physmem)}: too small for "
                   f"{machine.ncpu} CPUs: at least {need} pages ({_fmt_size(need * PAGE_SIZE)}) "
                   f"are needed, {_KERNEL_PAGES} for the kernel and {_PAGES_PER_CPU} per CPU")
    return machine


def _make_kernel(values: Mapping[str, object], name: str, path: str,
                 sources: Mapping[str, str]) -> KernelConfig:
    typed: dict[str, Any] = {}
    for key, convert in KERNEL_KEYS.items():
        raw = values.get(key, getattr(KernelConfig, key))
        where = sources.get(f"kernel.{key}", path)
        typed[key] = convert(raw, f"{where}: kernel.{key}")
    kernel = KernelConfig(name=name, path=path, **typed)
    if kernel.reserve_pagedaemon > kernel.reserve_kernel:
        where = _blame(sources, path, "kernel.reserve_pagedaemon", "kernel.reserve_kernel")
        raise _bad(f"{where}: kernel.reserve_pagedaemon = {kernel.reserve_pagedaemon}: must be "
                   f"an integer from 0 to kernel.reserve_kernel ({kernel.reserve_kernel})")
    if kernel.freemin and kernel.freetarg and kernel.freetarg <= kernel.freemin:
        where = _blame(sources, path, "kernel.freemin", "kernel.freetarg")
        raise _bad(f"{where}: kernel.freetarg = {kernel.freetarg}: must be greater than "
                   f"kernel.freemin ({kernel.freemin})")
    return kernel


def _tune(kernel: KernelConfig, npages: int, where: str) -> tuple[int, int]:
    """uvmpd_tune() [PD39], for the keys left at 0."""
    if npages <= 0:
        raise ValueError(f"npages must be positive, got {npages}")
    if kernel.freemin:
        freemin = kernel.freemin
    else:
        freemin = npages // 20
        freemin = max(freemin, (16 * 1024) // PAGE_SIZE)
        freemin = min(freemin, (256 * 1024) // PAGE_SIZE)
        freemin = max(freemin, kernel.reserve_kernel + 1)
    if kernel.freetarg:
        freetarg = kernel.freetarg
    else:
        freetarg = max(freemin * 4 // 3, freemin + 1)
    auto_min = "" if kernel.freemin else f" (auto for {npages} pages)"
    auto_targ = "" if kernel.freetarg else f" (auto for {npages} pages)"
    if freetarg <= freemin:
        raise _bad(f"{where}: kernel.freetarg = {freetarg}: must be greater than "
                   f"kernel.freemin ({freemin}{auto_min})")
    if freetarg >= npages:
        raise _bad(f"{where}: kernel.freetarg = {freetarg}{auto_targ}: must be less than the "
                   f"machine's {npages} pages")
    return freemin, freetarg


def _check_table(table: Mapping[str, object], section: str, keys: Mapping[str, _Convert],
                 path: str) -> None:
    for key in table:
        if key not in keys:
            raise _bad(f"{path}: {section}.{key}: unknown key (known: {', '.join(keys)})")


def machine_from_table(table: Mapping[str, object], *, name: str, path: str) -> MachineProfile:
    """Validate a ``[machine]`` table (as parsed from TOML, e.g. inside a load script)."""
    _check_table(table, "machine", MACHINE_KEYS, path)
    return _make_machine(table, name, path, {})


def kernel_from_table(table: Mapping[str, object], *, name: str, path: str) -> KernelConfig:
    """Validate a ``[kernel]`` table (as parsed from TOML, e.g. inside a load script)."""
    _check_table(table, "kernel", KERNEL_KEYS, path)
    return _make_kernel(table, name, path, {})


# ---------------------------------------------------------------------------------------------
# Files.

def _natural(name: str) -> list[object]:
    # i386mp-2 before i386mp-16.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _listing(kind: str) -> list[str]:
    return list_named(f"{kind}s")


def list_machines() -> list[str]:
    """Names of the shipped machine profiles (``shared/machines/*.toml``)."""
    return _listing("machine")


def list_kernels() -> list[str]:
    """Names of the shipped kernel configurations (``shared/kernels/*.toml``)."""
    return _listing("kernel")


def _display(path: Path) -> str:
    """A path as the user can use it from where they are: relative to the current
    directory when inside it, else absolute."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except (ValueError, OSError):
        return str(path.resolve())


def _is_path(spec: str) -> bool:
    return "/" in spec or os.sep in spec or spec.endswith(".toml")


def _read_section(spec: str, section: str, label: str) -> tuple[str, str, dict[str, Any]]:
    """Find and parse the file `spec` names; return (name, display path, its [section] table)."""
    if _is_path(spec):
        path, shown = Path(spec), spec
        if not path.exists():
            hint = ""
            if Path(spec).stem in _listing(section) and "/" not in spec:
                hint = f" (did you mean the {label} '{Path(spec).stem}'?)"
            raise _bad(f"{shown}: no such file{hint}")
    else:
        found = find_named(f"{section}s", spec) if spec else None
        path = found or SHARED / f"{section}s" / f"{spec}.toml"
        shown = _display(path)
        if found is None:
            known = ", ".join(_listing(section)) or "none"
            raise _bad(f"{shown}: no such {label} (known: {known})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _bad(f"{shown}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad(f"{shown}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise _bad(f"{shown}: malformed TOML: {exc}") from None
    for key, value in doc.items():
        if key == section:
            continue
        if isinstance(value, dict):
            raise _bad(f"{shown}: unknown section [{key}] (expected [{section}])")
        raise _bad(f"{shown}: {key}: key outside the [{section}] section")
    table = doc.get(section)
    if table is None:
        raise _bad(f"{shown}: no [{section}] section")
    if not isinstance(table, dict):
        raise _bad(f"{shown}: {section}: expected a [{section}] section, got {table!r}")
    return path.stem, shown, table


def load_machine(spec: str) -> MachineProfile:
    """A machine profile by name (``"i386mp-4"``) or by path (``"my/box.toml"``)."""
    name, shown, table = _read_section(spec, "machine", "machine profile")
    return machine_from_table(table, name=name, path=shown)


def load_kernel(spec: str) -> KernelConfig:
    """A kernel configuration by name (``"netbsd-2001-nosteal"``) or by path."""
    name, shown, table = _read_section(spec, "kernel", "kernel configuration")
    return kernel_from_table(table, name=name, path=shown)


def _resolve_key(key: str, where: str) -> tuple[str, str]:
    section, dot, bare = key.lower().rpartition(".")
    if not dot:
        if bare in MACHINE_KEYS:
            return "machine", bare
        if bare in KERNEL_KEYS:
            return "kernel", bare
    elif section == "machine" and bare in MACHINE_KEYS:
        return "machine", bare
    elif section == "kernel" and bare in KERNEL_KEYS:
        return "kernel", bare
    raise _bad(f"{where}: unknown key {key!r} (machine keys: {', '.join(MACHINE_KEYS)}; "
               f"kernel keys: {', '.join(KERNEL_KEYS)})")


def apply_overrides(machine: MachineProfile, kernel: KernelConfig,
                    overrides: Sequence[str]) -> tuple[MachineProfile, KernelConfig]:
    """Apply ``key=value`` overrides in order (later wins); keys may be ``machine.``/``kernel.``
    qualified. Both records are re-validated, and the kernel's pagedaemon targets are checked
    against the machine's memory."""
    values = {"machine": _values(machine, MACHINE_KEYS), "kernel": _values(kernel, KERNEL_KEYS)}
    specs = {"machine": MACHINE_KEYS, "kernel": KERNEL_KEYS}
    sources: dict[str, str] = {}
    for item in overrides:
        where = f"-o {item}"
        key, eq, raw = item.partition("=")
        if not eq:
            raise _bad(f"{where}: expected key=value")
        section, bare = _resolve_key(key.strip(), where)
        # Convert now, so a bad value is reported against this -o, not the rebuilt record.
        values[section][bare] = specs[section][bare](raw.strip(), f"{where}: {section}.{bare}")
        sources.pop(f"{section}.{bare}", None)
        sources[f"{section}.{bare}"] = where
    new_machine = _make_machine(values["machine"], machine.name, machine.path, sources)
    new_kernel = _make_kernel(values["kernel"], kernel.name, kernel.path, sources)
    _tune(new_kernel, new_machine.npages,
          _blame(sources, kernel.path, "machine.physmem", "kernel.reserve_kernel",
                 "kernel.freemin", "kernel.freetarg"))
    return new_machine, new_kernel


def load_run_config(machine: str = DEFAULT_MACHINE, kernel: str = DEFAULT_KERNEL,
                    overrides: Sequence[str] = ()) -> RunConfig:
    """Load both files, apply the overrides, and check that the kernel fits the machine."""
    new_machine, new_kernel = apply_overrides(load_machine(machine), load_kernel(kernel),
                                              overrides)
    return RunConfig(new_machine, new_kernel, tuple(overrides))
