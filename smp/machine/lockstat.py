"""Export the lock counters of a run as ``lockstat.json`` (the lockstat driver).

The atomic core counts every acquisition exactly, per CPU and per
(lock, call site, mode) slot, and on contention also who held the lock
(waiter site x holder site).  This module turns those slots into a
self-describing JSON document: lock classes and instance labels, call-site
names, one record per CPU slot, the waiter/holder pairs and any overflow.
Reports (``smp lockstat``) read only this file, never the segment.

Lock ranges with very many instances (one pvh lock per page, one per anon) are
counted per class and site; their records are named ``class[*]`` with ``lock``
null.  Times are nanoseconds; histograms are log2 buckets: bucket b counts events of
[2^(b-1), 2^b) ns, bucket 0 counts zero.
"""

from __future__ import annotations

import numpy as np

from smp.machine.lockspace import LockSpace
from smp.machine.segment import Segment
from smp.rundir.format import LOCKSTAT_SCHEMA

OVERFLOW = 0xFFFFFFFF
CLASS_KEY = 0x80000000     # slot of a whole class (LF_CLASS): "pvh[*]"


def _trim(h: np.ndarray) -> list[int]:
    nz = np.nonzero(h)[0]
    return [int(x) for x in h[: nz[-1] + 1]] if len(nz) else []


def collect_lockstat(seg: Segment, locks: LockSpace, elapsed_ns: int) -> dict:
    """Everything the CPUs counted, as a JSON-ready dict."""
    sites = seg.site_names()
    classes = locks.classes

    def site(i: int) -> str:
        return sites[i] if i < len(sites) else f"site#{i}"

    records, pairs, overflow = [], [], []
    for cpu in range(seg.layout.ncpu):
        area = seg.cpus[cpu]
        n = int(area["nslots"])
        slots = seg.slots[cpu]
        rows = list(range(n))
        if int(slots[-1]["acq"]):
            rows.append(seg.layout.nslots - 1)
        for i in rows:
            s = slots[i]
            if not int(s["acq"]):
                continue
            lock = int(s["lock"])
            if lock != OVERFLOW and lock & CLASS_KEY:
                name = classes[int(s["klass"])].name + "[*]"    # an aggregated class
                lock_id = None
            elif lock == OVERFLOW:
                name, lock_id = "<overflow>", None
            else:
                name, lock_id = locks.name_of(lock), lock
            rec = {
                "cpu": cpu,
                "lock": lock_id,
                "name": name,
                "class": classes[int(s["klass"])].name if lock != OVERFLOW else "<overflow>",
                "kind": classes[int(s["klass"])].kind if lock != OVERFLOW else "spin",
                "mode": "shared" if int(s["mode"]) else "excl",
                "site": site(int(s["site"])),
            }
            for f in ("acq", "contended", "spins", "bounces", "con_bounces", "wait_total",
                      "wait_max", "hold_total", "hold_max"):
                rec[f] = int(s[f])
            rec["wait_min"] = int(s["wait_min"]) if int(s["contended"]) else 0
            rec["hold_min"] = int(s["hold_min"]) if int(s["hold_min"]) != 2**64 - 1 else 0
            rec["wait_hist"] = _trim(s["wait_hist"])
            rec["hold_hist"] = _trim(s["hold_hist"])
            records.append(rec)
        for p in seg.pairs[cpu][: int(area["npairs"])]:
            pairs.append({
                "cpu": cpu, "class": classes[int(p["klass"])].name,
                "waiter": site(int(p["waiter"])), "holder": site(int(p["holder"])),
                "mode": "shared" if int(p["mode"]) else "excl",
                "count": int(p["count"]), "wait_total": int(p["wait_total"]),
            })
        overflow.append({"cpu": cpu, "slot_overflow": int(area["slot_overflow"]),
                         "pair_overflow": int(area["pair_overflow"])})
    return {
        "schema": LOCKSTAT_SCHEMA,
        "units": {"time": "ns", "hist": "log2 ns buckets: b counts [2^(b-1), 2^b)"},
        "elapsed_ns": int(elapsed_ns),
        "ncpu": seg.layout.ncpu,
        "locks": locks.to_dict(),
        "sites": sites,
        "records": records,
        "pairs": pairs,
        "overflow": overflow,
    }
