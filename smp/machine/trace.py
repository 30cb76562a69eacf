"""The trace drainer: what a kernel console plus a dmesg-buffer drain does in the simulator.

Every simulated CPU appends fixed-size binary records (kernel ``printf``/``panic`` and
UVMHIST entries) to its own ring in the shared segment and never waits for anybody; when
its ring is full the new record is dropped and counted.  The parent runs a
:class:`Drainer`, which copies the unread part of every ring out, frees it (advances the
ring's ``tail``), appends the raw records to ``events.bin`` and renders them to
``console.log`` (printf and panic) and ``hist.log`` (UVMHIST, created on the first hist
record).  Lost records are never silent: per-CPU drop counts come back in the stats and
a final console line reports them.

Ordering: within one drain the lines are written in merged time order (time, cpu, seq);
across drains they follow the drain batches, so a record a slow CPU published late can
appear after a later-stamped line of an earlier batch.  ``events.bin`` keeps every
record; tools wanting one exact timeline sort it with :func:`smp.runfmt.merge_order`.

The drainer only reads the segment (apart from the ``tail`` words it owns), so it keeps
working when a worker has died, and its files hold everything drained so far whatever
ends the run.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from smp import runfmt
from smp.runfmt import Catalogue

log = logging.getLogger(__name__)


class Drainer:
    """Drains a machine's per-CPU trace rings into a run directory.

    ``drain()`` may be called from any thread (a lock serialises it); ``start_thread()``
    runs it periodically in a daemon thread of the parent while the run goes on.
    ``catalogue`` must hold every message before the CPUs are forked (messages a worker
    registered afterwards would exist only in that worker); records with an unknown id
    still render, as ``<unknown message N> args``.  ``close()`` saves the catalogue as
    ``catalogue.json`` beside the logs, so the run renders again without this code.
    """

    def __init__(self, seg, run_dir: Path, catalogue: Catalogue):
        self.seg = seg
        self.run_dir = Path(run_dir)
        self.cat = catalogue
        self.ncpu = int(seg.layout.ncpu)
        self.capacity = int(seg.layout.ring_capacity)
        self.mask = self.capacity - 1
        self.records = [0] * self.ncpu
        self.dropped = [0] * self.ncpu
        self.seq_gaps = [0] * self.ncpu
        self.console_count = 0
        self.hist_count = 0
        self.last_time = 0
        self.error: BaseException | None = None
        # the next seq expected per CPU; unknown if someone drained this ring before us
        self._next_seq: list[int | None] = [
            0 if int(seg.rings["tail"][c]) == 0 else None for c in range(self.ncpu)]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats: dict | None = None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._events = open(self.run_dir / runfmt.EVENTS_FILE, "wb")
        self._events.write(runfmt.events_header())
        self._console = open(self.run_dir / runfmt.CONSOLE_FILE, "w", encoding="utf-8",
                             newline="\n")
        self._hist = None
        self._events.flush()
        self._console.flush()

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
            if self._events is None or getattr(self.seg, "rings", None) is None:
                return 0  # closed, or the segment is already gone
            chunks = [c for c in (self._take(cpu) for cpu in range(self.ncpu)) if c is not None]
            if not chunks:
                return 0
            batch = runfmt.merge_order(np.concatenate(chunks) if len(chunks) > 1 else chunks[0])
            self.last_time = max(self.last_time, int(batch["time"][-1]))
            self._events.write(batch.tobytes())
            is_hist = self.cat.kind_codes()[batch["msgid"]] == runfmt.KIND_HIST
            if is_hist.any():
                self._write_hist(runfmt.hist_lines(batch[is_hist], self.cat))
                batch = batch[~is_hist]
            self._write_console(runfmt.console_lines(batch, self.cat))
            self._events.flush()
            return sum(len(c) for c in chunks)

    def _write_console(self, lines: list[str]) -> None:
        if lines:
            self._console.write("\n".join(lines) + "\n")
            self.console_count += len(lines)
        self._console.flush()

    def _write_hist(self, lines: list[str]) -> None:
        if self._hist is None:
            self._hist = open(self.run_dir / runfmt.HIST_FILE, "w", encoding="utf-8",
                              newline="\n")
        self._hist.write("\n".join(lines) + "\n")
        self._hist.flush()
        self.hist_count += len(lines)

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
                except Exception as e:  # e.g. disk full: say so once, close() retries
                    self.error = e
                    log.exception("trace drainer stopped")
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
            "console_lines": self.console_count,
            "hist_lines": self.hist_count,
        }

    def close(self) -> dict:
        """Final drain, the drop report, close the files; returns :meth:`stats` (idempotent)."""
        if self._stats is not None:
            return self._stats
        self.stop_thread()
        try:
            self.drain()
        finally:
            with self._lock:
                if sum(self.dropped):
                    self._drop_line()
                for f in (self._events, self._console, self._hist):
                    if f is not None:
                        f.close()
                self._events = self._console = self._hist = None
        self.cat.save(self.run_dir / runfmt.CATALOGUE_FILE)
        self._stats = self.stats()
        if self.error is not None:
            self._stats["error"] = f"{type(self.error).__name__}: {self.error}"
        return self._stats

    def _drop_line(self) -> None:
        # stamped with the last record's time, not the host clock, so that lockstep
        # logs stay a function of the seed
        us = self.last_time // 1000
        per = ", ".join(f"cpu{c} {d}" for c, d in enumerate(self.dropped))
        self._write_console([f"[{us // 1000000:5d}.{us % 1000000:06d}] smp: {sum(self.dropped)} "
                             f"trace records dropped (ring full): {per}"])

    def __enter__(self) -> Drainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
