"""Fault injection: failpoints at named kernel sites (after FreeBSD's kern_fail.c, fail(9)).

A failpoint makes a named decision point fail on purpose, to ask "what if this
allocation failed here" without waiting for the load to get there:

    uvm_pagealloc:p=0.01          uvm_pagealloc refuses 1% of requests
    pmap_alloc_pv:nth=5           the 5th pv-entry allocation (machine-wide) fails
    pmap_alloc_ptp:every=100      every 100th PTP allocation fails
    trylock:pmap_steal_ptp:p=0.5  half of pmap_steal_ptp's try-locks of victims fail

and a delay makes a lock slower where it is taken, to ask "what if this lock
were slower" (perf lock contention -J):

    delay:pmaps_lock@pmap_steal_ptp=100us   hold pmaps_lock 100 us longer there
    delay:pvalloc_lock=20us                 ... wherever it is taken

Sites: ``uvm_pagealloc``, ``pmap_alloc_ptp``, ``pmap_alloc_pv``, ``pmap_alloc_pvpage``
and ``trylock:<function>`` for the try-locks of pmap_steal_ptp, pmap_try_steal_pv,
pmap_alloc_pvpage, uvm_km_valloc_try and the pagedaemon (uvmpd_scan).  Probabilities
draw from a per-CPU generator seeded with the run's seed, so a lockstep run with
failpoints is as reproducible as one without; ``nth``/``every`` count machine-wide.
Specs come from ``smp run --fail SPEC`` (repeatable) or a load script's
``[run] fail = [...]``, and are recorded in the manifest.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np

from smp.config import parse_duration
from smp.errors import BadInput
from smp.machine.layout import ArraySpec

SITES = ("uvm_pagealloc", "pmap_alloc_ptp", "pmap_alloc_pv", "pmap_alloc_pvpage")
TRYLOCK_SITES = ("pmap_steal_ptp", "pmap_try_steal_pv", "pmap_alloc_pvpage",
                 "uvm_km_valloc_try", "uvmpd_scan")

ON = False                 # any failpoint armed (a one-attribute test on the hot paths)
_armed: dict[str, FailPoint] = {}
_rng: random.Random | None = None
_counts = None             # shared per-site call counters
_core = None
_index: dict[str, int] = {}


@dataclass(frozen=True)
class FailPoint:
    site: str
    p: float = 0.0
    nth: int = 0
    every: int = 0


@dataclass(frozen=True)
class Delay:
    lock_class: str
    site: str              # "" = wherever the lock is taken
    ns: int


_SPEC = re.compile(r"^(?P<site>[a-z_]+(:[a-z_]+)?):(?P<key>p|nth|every)=(?P<val>[0-9.e-]+)$")
_DELAY = re.compile(r"^delay:(?P<cls>[a-z_]+)(@(?P<site>[A-Za-z_.]+))?=(?P<val>\S+)$")


def parse(specs: list[str], where: str = "--fail") -> tuple[list[FailPoint], list[Delay]]:
    """Parse failpoint and delay specs; BadInput naming the bad one."""
    fps, delays = [], []
    seen: dict[str, str] = {}
    for spec in specs:
        key = spec.split("=")[0] if spec.startswith("delay:") else spec.rsplit(":", 1)[0]
        if key in seen:
            raise BadInput(f"{where} {spec!r}: {key} is already set by {seen[key]!r}")
        seen[key] = spec
        m = _DELAY.match(spec)
        if m:
            ns = parse_duration(m["val"], f"{where} {spec}")
            delays.append(Delay(m["cls"], m["site"] or "", ns))
            continue
        m = _SPEC.match(spec)
        if not m:
            raise BadInput(f"{where} {spec!r}: expected SITE:p=P, SITE:nth=N, SITE:every=N "
                           "or delay:LOCKCLASS[@FUNCTION]=DURATION")
        site = m["site"]
        if site.startswith("trylock:"):
            if site[8:] not in TRYLOCK_SITES:
                raise BadInput(f"{where} {spec!r}: unknown try-lock site {site[8:]!r} "
                               f"(known: {', '.join(TRYLOCK_SITES)})")
        elif site not in SITES:
            raise BadInput(f"{where} {spec!r}: unknown site {site!r} (known: "
                           f"{', '.join(SITES)}, trylock:FUNCTION)")
        key, val = m["key"], m["val"]
        try:
            if key == "p":
                p = float(val)
                if not 0 <= p <= 1:
                    raise ValueError
                fps.append(FailPoint(site, p=p))
            else:
                n = int(val)
                if n < 1:
                    raise ValueError
                fps.append(FailPoint(site, **{key: n}))
        except ValueError:
            raise BadInput(f"{where} {spec!r}: {key} must be "
                           f"{'a probability from 0 to 1' if key == 'p' else 'a positive integer'}"
                           ) from None
    return fps, delays


def all_sites() -> list[str]:
    return list(SITES) + [f"trylock:{s}" for s in TRYLOCK_SITES]


def declare(kernel, locks) -> list[ArraySpec]:
    """The machine-wide call counters of the sites (``nth``, ``every``); every delay must
    name a declared lock class (checked once all are declared: see ``check_delays``)."""
    return [ArraySpec("fail_counts", np.dtype("<i8"), (len(all_sites()),))]


def check_delays(delays: list[Delay], locks) -> None:
    """BadInput for a delay naming no declared lock class."""
    known = {c.name for c in locks.classes}
    for d in delays:
        if d.lock_class not in known:
            raise BadInput(f"delay:{d.lock_class}: no lock class of that name (known: "
                           f"{', '.join(sorted(known))})")


def attach(ci, kernel) -> None:
    """Arm this CPU's failpoints (the kernel's ``failpoints``, drawing from its ``seed``);
    program the atomic core's lock ``delays``."""
    _attach(ci, kernel.failpoints, kernel.delays, kernel.seed,
            ci.seg.layout.arrays["fail_counts"][0], kernel.lockspace)


def _attach(ci, fps: list[FailPoint], delays: list[Delay], seed: int, counts_off: int,
            lockspace) -> None:
    global ON, _rng, _core, _counts_off
    _armed.clear()
    _index.clear()
    for i, s in enumerate(all_sites()):
        _index[s] = i
    for fp in fps:
        _armed[fp.site] = fp
    ON = bool(_armed)
    _rng = random.Random(seed * 1_000_003 + ci.cpu)
    _core = ci.core
    _counts_off = counts_off
    for d in delays:
        cls = next((c for c in lockspace.classes if c.name == d.lock_class), None)
        if cls is None:
            raise BadInput(f"delay:{d.lock_class}: no lock class of that name")
        ci.core.set_delay(cls.id, d.site, d.ns)


_counts_off = 0


def fail(site: str) -> bool:
    """Should this decision point fail now?  (=> only called when ON)"""
    fp = _armed.get(site)
    if fp is None:
        return False
    n = _core.fadd64(_counts_off + 8 * _index[site], 1) + 1
    if fp.nth:
        return n == fp.nth
    if fp.every:
        return n % fp.every == 0
    return _rng.random() < fp.p


def trylock_fails(function: str) -> bool:
    return ON and fail("trylock:" + function)
