"""Writing a run directory: the one place that creates run files.

``RunWriter.create(path)`` makes the directory (refusing a file, an unwritable place or
a directory that already holds a run, with one line naming the path), then a run writes,
in this order:

    manifest.json          before boot: what is about to run
    catalogue.json         at boot, once the kernel has declared every message
    events.bin             trace records, appended as the parent drains the rings
    console.log, hist.log  their renderings (free mode: as drained; lockstep: once, at
                           the end, in merged order, so they depend only on the seed)
    lockstat.json          after the run
    summary.json, .txt     last: a run directory with a summary is complete

A write that fails for a reason of the host (ENOSPC, EIO, EROFS, EDQUOT, EFBIG) raises
:class:`~smp.errors.WriteFailed`; the run then ends, and :meth:`RunWriter.mark_incomplete`
leaves a ``.incomplete`` marker saying what could not be written (if even that fits),
so every reader knows the directory is partial.  Everything written before stays intact:
JSON documents are written to a temporary file and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from smp.errors import BadInput, WriteFailed
from smp.rundir import format as fmt


class RunWriter:
    """The files of one run directory (module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self.failed: WriteFailed | None = None

    @classmethod
    def create(cls, path: str | Path) -> RunWriter:
        """Make ``path`` a new, empty run directory; BadInput (one line) if it cannot be."""
        p = Path(path)
        if p.exists() and not p.is_dir():
            raise BadInput(f"{p}: exists and is not a directory (--out wants a directory)")
        try:
            if p.is_dir() and any(p.iterdir()):
                raise BadInput(f"{p}: run directory exists and is not empty")
            p.mkdir(parents=True, exist_ok=True)
            probe = p / ".smp-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except BadInput:
            raise
        except NotADirectoryError:
            raise BadInput(f"{p}: a parent of this path is not a directory") from None
        except OSError as e:
            raise BadInput(f"{p}: cannot create the run directory: "
                           f"{e.strerror or e}") from None
        return cls(p)

    def discard(self) -> None:
        """Remove the directory again (a run refused before it started)."""
        for f in self.path.iterdir():
            f.unlink()
        self.path.rmdir()

    # ---------------------------------------------------------------- documents
    def write_json(self, name: str, doc: dict) -> None:
        """A JSON document, atomically (temporary file, then rename)."""
        self.write_text(name, json.dumps(doc, indent=1, sort_keys=False) + "\n")

    def write_text(self, name: str, text: str) -> None:
        p = self.path / name
        tmp = p.with_name(p.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
            tmp.replace(p)
        except OSError as e:
            _remove(tmp)
            raise self._failed(p, e) from None

    def write_catalogue(self, cat: fmt.Catalogue) -> None:
        self.write_json(fmt.CATALOGUE_FILE, cat.to_json())

    def mark_incomplete(self, reason: str) -> bool:
        """Leave the ``.incomplete`` marker (True if it could be written)."""
        try:
            (self.path / fmt.INCOMPLETE_FILE).write_text(reason + "\n", encoding="utf-8")
            return True
        except OSError:
            try:                              # an empty file needs no data blocks
                (self.path / fmt.INCOMPLETE_FILE).touch()
                return True
            except OSError:
                return False

    def _failed(self, p: Path, e: OSError) -> WriteFailed:
        err = WriteFailed(p, e)
        if self.failed is None:
            self.failed = err
        return err

    # ---------------------------------------------------------------- trace records
    def trace_sink(self, *, merged_at_end: bool) -> TraceSink:
        """Where the machine's drainer puts trace records (see :class:`TraceSink`)."""
        return TraceSink(self, merged_at_end)


class TraceSink:
    """events.bin, console.log and hist.log of a run, fed batch by batch.

    Free mode (``merged_at_end`` False): each batch is appended to events.bin and
    rendered at once, so the console is readable while the run goes on.  Lockstep
    (True): batches are appended to events.bin as they come (nothing is lost if the
    parent dies) and kept; ``end()`` sorts them once into (time, cpu, seq) order and
    writes all three files from that order, so they are a function of the seed.
    """

    def __init__(self, writer: RunWriter, merged_at_end: bool):
        self.writer = writer
        self.merged_at_end = merged_at_end
        self.cat: fmt.Catalogue | None = None
        self.console_lines = 0
        self.hist_lines = 0
        self._kept: list[np.ndarray] = []
        self._events = self._console = self._hist = None

    def _open(self, name: str, mode: str):
        p = self.writer.path / name
        try:
            if "b" in mode:
                return open(p, mode)
            return open(p, mode, encoding="utf-8", newline="\n")
        except OSError as e:
            raise self.writer._failed(p, e) from None

    def begin(self, cat: fmt.Catalogue) -> None:
        """Boot is over: every message is declared.  Write the catalogue, open the logs."""
        self.cat = cat
        self.writer.write_catalogue(cat)
        self._cat_size = (len(cat), len(cat.strings))
        self._events = self._open(fmt.EVENTS_FILE, "wb")
        self._console = self._open(fmt.CONSOLE_FILE, "w")
        self._io(self._events, fmt.EVENTS_FILE, fmt.events_header())

    def _io(self, f, name: str, data) -> None:
        try:
            f.write(data)
            f.flush()
        except OSError as e:
            raise self.writer._failed(self.writer.path / name, e) from None

    def write(self, batch: np.ndarray) -> None:
        """One drained batch, already in merged order within itself."""
        self._io(self._events, fmt.EVENTS_FILE, batch.tobytes())
        if self.merged_at_end:
            self._kept.append(batch)
        else:
            self._render(batch)

    def _render(self, recs: np.ndarray) -> None:
        is_hist = self.cat.kind_codes()[recs["msgid"]] == fmt.KIND_HIST
        if is_hist.any():
            lines = fmt.hist_lines(recs[is_hist], self.cat)
            if self._hist is None:
                self._hist = self._open(fmt.HIST_FILE, "w")
            self._io(self._hist, fmt.HIST_FILE, "\n".join(lines) + "\n")
            self.hist_lines += len(lines)
            recs = recs[~is_hist]
        if len(recs):
            lines = fmt.console_lines(recs, self.cat)
            self._io(self._console, fmt.CONSOLE_FILE, "\n".join(lines) + "\n")
            self.console_lines += len(lines)

    def end(self, dropped: list[int], last_time_ns: int) -> None:
        """The run is over: (lockstep) write everything in merged order; report drops."""
        try:
            if self.cat is not None and (len(self.cat), len(self.cat.strings)) != self._cat_size:
                self.writer.write_catalogue(self.cat)     # strings interned after boot
            if self.merged_at_end and self._events is not None:
                recs = (fmt.merge_order(np.concatenate(self._kept)) if self._kept
                        else np.zeros(0, fmt.REC_DTYPE))
                self._kept = []
                self._events.seek(0)
                self._events.truncate()
                self._io(self._events, fmt.EVENTS_FILE,
                         fmt.events_header() + np.ascontiguousarray(recs).tobytes())
                self._render(recs)
            if sum(dropped) and self._console is not None:
                # stamped with the last record's time, not the host clock, so lockstep
                # logs stay a function of the seed
                us = last_time_ns // 1000
                per = ", ".join(f"cpu{c} {d}" for c, d in enumerate(dropped))
                self._io(self._console, fmt.CONSOLE_FILE,
                         f"[{us // 1000000:5d}.{us % 1000000:06d}] smp: {sum(dropped)} "
                         f"trace records dropped (ring full): {per}\n")
                self.console_lines += 1
        finally:
            self.close()

    def close(self) -> None:
        for f in (self._events, self._console, self._hist):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass                      # the failed write was reported already
        self._events = self._console = self._hist = None


def _remove(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass
