"""The trace drainer: what a kernel console plus a dmesg-buffer drain does in the simulator.

Every simulated CPU appends fixed-size binary records (kernel ``printf``/``panic`` and
UVMHIST entries) to its own ring in the shared segment and never waits for anybody; when
its ring is full the new record is dropped and counted.  The parent runs a
:class:`Drainer`, which copies the unread part of every ring out, frees it (advances the
ring's ``tail``) and hands the records, merged into (time, cpu, seq) order within the
batch, to a :class:`RecordSink` -- the run directory's writer, which the machine does not
know more about.  Lost records are never silent: per-CPU drop counts come back in the
stats, and the sink is told them at the end.

The drainer only reads the segment (apart from the ``tail`` words it owns), so it keeps
working when a worker has died, and the sink holds everything drained so far whatever
ends the run.  A sink that cannot write (a full disk) stops the drainer; the supervisor
sees ``error`` and ends the run instead of letting it carry on blind.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

import numpy as np

from smp.rundir.format import merge_order

log = logging.getLogger(__name__)


class RecordSink(Protocol):
    """Where drained trace records go (``smp.rundir.writer.TraceSink``)."""

    def begin(self, catalogue: Any) -> None: ...
    def write(self, batch: np.ndarray) -> None: ...
    def end(self, dropped: list[int], last_time_ns: int) -> None: ...


class NullSink:
    """Keeps nothing (boot benchmarks)."""

    def begin(self, catalogue: Any) -> None:
        pass

    def write(self, batch: np.ndarray) -> None:
        pass

    def end(self, dropped: list[int], last_time_ns: int) -> None:
        pass


class Drainer:
    """Drains a machine's per-CPU trace rings into a :class:`RecordSink`.

    ``drain()`` may be called from any thread (a lock serialises it); ``start_thread()``
    runs it periodically in a daemon thread of the parent while the run goes on.
    The sink's ``begin`` is called with ``catalogue`` here, before any CPU runs.
    """

    def __init__(self, seg, sink: RecordSink, catalogue: Any):
        self.seg = seg
        self.sink = sink
        self.ncpu = int(seg.layout.ncpu)
        self.capacity = int(seg.layout.ring_capacity)
        self.mask = self.capacity - 1
        self.records = [0] * self.ncpu
        self.dropped = [0] * self.ncpu
        self.seq_gaps = [0] * self.ncpu
        self.last_time = 0
        self.error: BaseException | None = None
        # the next seq expected per CPU; unknown if someone drained this ring before us
        self._next_seq: list[int | None] = [
            0 if int(seg.rings["tail"][c]) == 0 else None for c in range(self.ncpu)]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats: dict | None = None
        self._open = True
        sink.begin(catalogue)

    # ------------------------------------------------------------ draining
    def _take(self, cpu: int) -> np.ndarray | None:
        """Copy CPU ``cpu``'s unread records out of its ring and free their slots."""
        rings = self.seg.rings
        # x86-64 (TSO): loads are not reordered with other loads, so once we have seen
        # the writer's release-store of head, the records below it are complete
        head = int(rings["head"][cpu])
        tail = int(rings["tail"][cpu])
        self.dropped[cpu] = int(rings["dropped"][cpu])
        n = head - tail
        if n <= 0:
            return None
        if n > self.capacity:  # cannot happen with a sane writer; never read garbage
            log.error("cpu%d trace ring corrupt (head %d, tail %d); skipping", cpu, head, tail)
            self.seq_gaps[cpu] += 1
            self._next_seq[cpu] = None
            rings["tail"][cpu] = head
            return None
        start = tail & self.mask
        recs = self.seg.records[cpu]
        if start + n <= self.capacity:
            chunk = recs[start:start + n].copy()
        else:  # wraps around the end of the ring
            chunk = np.concatenate((recs[start:], recs[:start + n - self.capacity]))
        # only now free the slots: the copy is complete (stores are not reordered
        # before earlier loads on x86-64, so the writer cannot overwrite what we read)
        rings["tail"][cpu] = head
        self.records[cpu] += n
        seqs = chunk["seq"].astype(np.int64)
        exp = self._next_seq[cpu]
        d = np.diff(seqs) if exp is None else np.diff(seqs, prepend=exp - 1)
        self.seq_gaps[cpu] += int(np.count_nonzero(d != 1))
        self._next_seq[cpu] = int(seqs[-1]) + 1
        return chunk

    def drain(self) -> int:
        """Drain every CPU's ring once; returns the number of records drained."""
        with self._lock:
            if not self._open or self.error is not None \
                    or getattr(self.seg, "rings", None) is None:
                return 0  # closed, failed, or the segment is already gone
            chunks = [c for c in (self._take(cpu) for cpu in range(self.ncpu)) if c is not None]
            if not chunks:
                return 0
            batch = merge_order(np.concatenate(chunks) if len(chunks) > 1 else chunks[0])
            self.last_time = max(self.last_time, int(batch["time"][-1]))
            self.sink.write(batch)
            return len(batch)

    # ------------------------------------------------------------ background thread
    def start_thread(self, interval_s: float = 0.05) -> None:
        """Drain every ``interval_s`` seconds in a daemon thread until stop_thread()."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.drain()
                except Exception as e:  # noqa: BLE001 - e.g. a full disk: the run must end
                    self.error = e
                    return

        self._thread = threading.Thread(target=loop, name="smp-trace-drainer", daemon=True)
        self._thread.start()

    def stop_thread(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None

    # ------------------------------------------------------------ end of run
    def stats(self) -> dict:
        """What was drained and lost so far."""
        return {
            "records": sum(self.records),
            "dropped": sum(self.dropped),
            "per_cpu": [{"cpu": c, "records": self.records[c], "dropped": self.dropped[c],
                         "seq_gaps": self.seq_gaps[c]} for c in range(self.ncpu)],
        }

    def close(self) -> dict:
        """Final drain, then the sink's end; returns :meth:`stats` (idempotent).

        A failing sink does not stop the close: the error is kept in ``error`` (and in
        the stats), for the caller to report.
        """
        if self._stats is not None:
            return self._stats
        self.stop_thread()
        try:
            self.drain()
        except Exception as e:  # noqa: BLE001 - reported through error
            self.error = self.error or e
        with self._lock:
            self._open = False
            try:
                self.sink.end(list(self.dropped), self.last_time)
            except Exception as e:  # noqa: BLE001
                self.error = self.error or e
        self._stats = self.stats()
        if self.error is not None:
            self._stats["error"] = str(self.error)
        return self._stats
