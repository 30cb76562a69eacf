"""``smp trace RUN --format perfetto``: a run as Chrome trace-event JSON (Perfetto, chrome://tracing).

The Trace Event Format is a JSON object with a ``traceEvents`` list; ui.perfetto.dev and
chrome://tracing open it as it is.  A run becomes one process ("smp: LOAD on MACHINE")
with one thread track per simulated CPU (``cpu0`` ... named by ``thread_name``
metadata events), and:

* every trace record -- console printf, panic, UVMHIST -- is an instant event (``ph:
  "i"``, thread scope) on its CPU's track at its time stamp (microseconds, as the format
  wants), named by its function and carrying the rendered message and the raw arguments;
* every UVMHIST invocation whose closing record the run has (``fn#call`` opened by its
  first record, closed by a ``<- ...`` record of the same ``fn#call``, as UVMHIST
  functions end) is also a complete event (``ph: "X"``) spanning the two: each
  ``uvm_fault`` becomes a bar whose length is the fault's time (needs ``hist = on``).

So the number of instant events equals the number of records shown, which is what a
test (and a suspicious user) can check.  Lock waits and holds are kept only as totals
(lockstat.json), not per event, so they are not in the trace.
"""

from __future__ import annotations

import json
from typing import TextIO

import numpy as np

from smp.rundir import format as runfmt
from smp.rundir.reader import dig
from smp.tools.trace_input import RunLog

PID = 1          # the machine, as one "process" in the viewer


def chrome_trace(log: RunLog, idx: np.ndarray) -> dict:
    """The Trace Event Format document of records ``idx`` of ``log``."""
    recs = log.records[idx]
    cat = log.cat
    lines = log.lines(idx, "native")
    m = log.manifest or {}
    title = (f"smp: {dig(m, 'load_script', 'name', want=str) or '?'} on "
             f"{dig(m, 'machine', 'name', want=str) or '?'}, kernel "
             f"{dig(m, 'kernel', 'name', want=str) or '?'}, seed {dig(m, 'seed', want=int)}")
    ncpu = log.manifest and dig(m, "machine", "ncpu", want=int) or \
        (int(recs["cpu"].max()) + 1 if len(recs) else 1)
    ev: list[dict] = [{"ph": "M", "pid": PID, "tid": 0, "name": "process_name",
                       "args": {"name": title}}]
    for c in range(ncpu):
        ev.append({"ph": "M", "pid": PID, "tid": c, "name": "thread_name",
                   "args": {"name": f"cpu{c}"}})
        ev.append({"ph": "M", "pid": PID, "tid": c, "name": "thread_sort_index",
                   "args": {"sort_index": c}})
    kinds = cat.kind_codes()
    open_calls: dict[tuple[int, int], tuple[float, int]] = {}
    spans: list[dict] = []
    times = recs["time"].tolist()
    cpus = recs["cpu"].tolist()
    msgids = recs["msgid"].tolist()
    calls = recs["call"].tolist()
    args = recs["args"].tolist()
    for t, cpu, msgid, call, a, line in zip(times, cpus, msgids, calls, args, lines,
                                            strict=True):
        msg = cat.message(msgid)
        fn = (msg.fn if msg else "") or "printf"
        kind = ("hist" if kinds[msgid] == runfmt.KIND_HIST else
                "panic" if kinds[msgid] == runfmt.KIND_PANIC else "console")
        ts = t / 1000.0
        e = {"ph": "i", "s": "t", "pid": PID, "tid": cpu, "ts": ts, "name": fn, "cat": kind,
             "args": {"line": line, "args": a[: runfmt.count_args(msg.fmt)] if msg else a}}
        if kind == "hist":
            e["args"]["call"] = call
            if msg is not None and call:
                key = (msgid_fn_key(msg.fn), call)
                if msg.fmt.startswith("<-"):
                    start = open_calls.pop(key, None)
                    if start is not None:
                        spans.append({"ph": "X", "pid": PID, "tid": start[1],
                                      "ts": start[0], "dur": max(0.0, ts - start[0]),
                                      "name": f"{msg.fn}#{call}", "cat": "uvmhist",
                                      "args": {"end": line}})
                else:
                    open_calls.setdefault(key, (ts, cpu))
        ev.append(e)
    ev.extend(spans)
    return {"traceEvents": ev, "displayTimeUnit": "ns",
            "otherData": {"source": log.source, "records": len(recs),
                          "generator": "smp trace --format perfetto"}}


_FN_KEYS: dict[str, int] = {}


def msgid_fn_key(fn: str) -> int:
    """A small integer per UVMHIST function name (calls are numbered per function)."""
    return _FN_KEYS.setdefault(fn, len(_FN_KEYS))


def write_chrome_trace(log: RunLog, idx: np.ndarray, out: TextIO) -> None:
    json.dump(chrome_trace(log, idx), out, separators=(",", ":"))
    out.write("\n")
