"""Reading a run directory: the one place that opens run files.

``RunDir(path)`` checks that ``path`` is a run directory and reads each file on first
use, checking it once: JSON documents must parse, be objects and carry the schema this
smp reads; ``events.bin`` must have a sound header and records that make sense for the
run (a CPU the machine has, a message the catalogue knows, per-CPU sequence numbers that
only grow).  Every problem is a :class:`~smp.errors.BadInput` of one line naming the
file, so a tool prints it and exits 2 instead of rendering garbage.

    rd = RunDir("runs/default-default-0-20261201-101500")
    rd.summary["status"], rd.counters()["ptp_steals"], rd.panic_message()
    recs = rd.events()                  # validated, in file order
    cat = rd.catalogue()

Tools, replay, experiment and explore read runs only through this class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from smp.errors import BadInput
from smp.rundir import format as fmt

# A run directory has at least one of these (a run killed early may lack the rest).
_MARKERS = (fmt.MANIFEST_FILE, fmt.EVENTS_FILE, fmt.CONSOLE_FILE, fmt.SUMMARY_FILE,
            fmt.CATALOGUE_FILE, fmt.LOCKSTAT_FILE)
_SCHEMAS = {fmt.MANIFEST_FILE: fmt.MANIFEST_SCHEMA, fmt.SUMMARY_FILE: fmt.SUMMARY_SCHEMA,
            fmt.LOCKSTAT_FILE: fmt.LOCKSTAT_SCHEMA}
MAX_CPUS = 64          # what a run directory without manifest and summary may claim


class BadRecords:
    """What :meth:`RunDir.events` skipped with ``force``: count and the first offset."""

    def __init__(self) -> None:
        self.count = 0
        self.first = ""

    def __bool__(self) -> bool:
        return self.count > 0


class RunDir:
    """A run directory, read lazily and checked once per file (module docstring)."""

    def __init__(self, path: str | Path, *, need_manifest: bool = False):
        p = Path(path)
        if not p.exists():
            raise BadInput(f"{p}: no such run directory")
        if not p.is_dir():
            raise BadInput(f"{p}: not a directory (expected a run directory)")
        if not any((p / m).is_file() for m in _MARKERS):
            raise BadInput(f"{p}: not a run directory (no {', '.join(_MARKERS)})")
        self.path = p
        self._docs: dict[str, dict | None] = {}
        self._cat: fmt.Catalogue | None = None
        if need_manifest:
            self.require(fmt.MANIFEST_FILE)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ---------------------------------------------------------------- files
    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def text(self, name: str) -> str:
        """A text file of the run (console.log, hist.log, summary.txt)."""
        p = self.path / name
        try:
            return p.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            raise BadInput(f"{p}: missing") from None
        except OSError as e:
            raise BadInput(f"{p}: cannot read: {e.strerror or e}") from None

    def raw(self, name: str) -> bytes | None:
        """A file's bytes, or None if the run has no such file (replay's comparison)."""
        p = self.path / name
        try:
            return p.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise BadInput(f"{p}: cannot read: {e.strerror or e}") from None

    # ---------------------------------------------------------------- JSON documents
    def doc(self, name: str) -> dict | None:
        """A JSON document of the run, checked (object, schema), or None if absent."""
        if name not in self._docs:
            self._docs[name] = read_json(self.path / name, _SCHEMAS.get(name), optional=True)
        return self._docs[name]

    def require(self, name: str) -> dict:
        d = self.doc(name)
        if d is None:
            raise BadInput(f"{self.path / name}: missing (is {self.path} a run directory?)")
        return d

    @property
    def manifest(self) -> dict | None:
        return self.doc(fmt.MANIFEST_FILE)

    @property
    def summary(self) -> dict | None:
        return self.doc(fmt.SUMMARY_FILE)

    @property
    def lockstat(self) -> dict | None:
        return self.doc(fmt.LOCKSTAT_FILE)

    @property
    def incomplete(self) -> bool:
        """The run could not write its directory in full (disk full, I/O error)."""
        s = self.summary
        return self.has(fmt.INCOMPLETE_FILE) or (s is not None and s.get("incomplete", False))

    # ---------------------------------------------------------------- summary facts
    @property
    def status(self) -> str:
        """The run's outcome (done, timeout, panic, ...); "no-summary" if it never wrote one."""
        s = self.summary
        return str(s.get("status", "?")) if s is not None else "no-summary"

    def counters(self) -> dict[str, int]:
        """The kernel's event counters (uvmexp statistics and ours) from summary.json."""
        c = dig(self.summary, "kernel_counters", "counters", want=dict) or {}
        return {k: v for k, v in c.items() if isinstance(v, int) and not isinstance(v, bool)}

    def ncpu(self) -> int | None:
        n = dig(self.manifest, "machine", "ncpu", want=int)
        if n is None:
            n = dig(self.summary, "ncpu", want=int)
        return n if n is not None and 0 < n <= 4096 else None

    def first_line(self, needle: str, name: str = fmt.CONSOLE_FILE) -> str:
        """The first line of a log holding ``needle``, or ""."""
        if not self.has(name):
            return ""
        for line in self.text(name).splitlines():
            if needle in line:
                return line
        return ""

    def panic_message(self) -> str:
        """The panic's message as the console printed it (after ``panic: ``), or ""."""
        line = self.first_line(": panic: ")
        return line.split(": panic: ", 1)[1] if line else ""

    # ---------------------------------------------------------------- records
    def catalogue(self) -> fmt.Catalogue:
        if self._cat is None:
            p = self.path / fmt.CATALOGUE_FILE
            if not p.is_file():
                raise BadInput(f"{self.path}: run directory has no {fmt.CATALOGUE_FILE}")
            self._cat = fmt.Catalogue.load(p)
        return self._cat

    def events(self, *, partial_ok: bool = False, force: bool = False,
               skipped: BadRecords | None = None) -> np.ndarray:
        """events.bin, validated record by record (see :func:`check_records`)."""
        p = self.path / fmt.EVENTS_FILE
        if not p.is_file():
            raise BadInput(f"{p}: missing (the run's console is in {fmt.CONSOLE_FILE})")
        recs = fmt.read_events(p, partial_ok=partial_ok)
        return check_records(recs, p, self.ncpu() or MAX_CPUS, self.catalogue(), force=force,
                             skipped=skipped, **self.trace_bounds())

    def trace_bounds(self) -> dict:
        """What summary.json says the records must fit: per-CPU drop counts (bounding the
        gaps in sequence numbers) and the run's length (bounding time stamps)."""
        s = self.summary
        out: dict = {}
        per = dig(s, "trace", "per_cpu", want=list)
        if per is not None and all(isinstance(c, dict) for c in per):
            # a ring the drainer found corrupt lost an unknown number of records
            out["dropped"] = [dig(c, "dropped", want=int) or 0 if not c.get("seq_gaps") else
                              1 << 62 for c in per]
        v = dig(s, "schedule", "virtual_ns", want=int)
        e = dig(s, "elapsed_s", want=(int, float))
        if v is not None and v > 0:
            out["max_time"] = v + 10**9
        elif e is not None and e > 0:
            out["max_time"] = int(e * 2e9) + 60 * 10**9   # records count from boot
        return out


_KIND = {fmt.MANIFEST_FILE: "manifest", fmt.SUMMARY_FILE: "summary",
         fmt.LOCKSTAT_FILE: "lockstat"}
# what each document must hold to be read at all (its parts are checked where used)
_REQUIRED: dict[str, dict[str, type | tuple]] = {
    fmt.MANIFEST_FILE: {"load_script": dict},
    fmt.SUMMARY_FILE: {"status": str},
}


def dig(d: object, *keys: str, want: type | tuple = object) -> Any:
    """``d[k1][k2]...`` if every level is a dict holding the key and the value is a
    ``want``, else None: reading a damaged document never raises."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    if want is int and isinstance(d, bool):
        return None
    return d if isinstance(d, want) else None


def finished_run(path: str | Path) -> tuple[RunDir | None, dict | None]:
    """A run directory and its summary, or None for what is not there (a run stopped
    before it could write one, or no run directory at all): for the sweeps, which look
    at every run they started whatever became of it."""
    try:
        rd = RunDir(path)
        return rd, rd.summary
    except BadInput:
        return None, None


def read_json(p: Path, schema: int | None, optional: bool = False,
              whole: bool = True) -> dict | None:
    """One JSON document: an object carrying ``schema`` (when given) and, if ``whole``,
    the keys its kind must have; BadInput otherwise."""
    kind = _KIND.get(p.name, "")
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        if optional:
            return None
        raise BadInput(f"{p}: missing") from None
    except IsADirectoryError:
        raise BadInput(f"{p}: is a directory, not a JSON file") from None
    except OSError as e:
        raise BadInput(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        d = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadInput(f"{p}: not UTF-8 text (corrupt file?)") from None
    except ValueError as e:
        raise BadInput(f"{p}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise BadInput(f"{p}: not a {kind + ' ' if kind else ''}document (expected a JSON "
                       "object)")
    if schema is not None and d.get("schema") != schema:
        raise BadInput(f"{p}: {kind + ' ' if kind else ''}schema {d.get('schema')!r}, this "
                       f"smp reads {schema}")
    for key, typ in (_REQUIRED.get(p.name, {}) if whole else {}).items():
        if key not in d:
            raise BadInput(f"{p}: not a {kind} document: no {key!r}")
        if not isinstance(d[key], typ) or isinstance(d[key], bool) and typ is not bool:
            raise BadInput(f"{p}: {key} = {_short(d[key])}: expected "
                           f"{getattr(typ, '__name__', 'a table')}")
    return d


def _short(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def check_records(recs: np.ndarray, source: Path | str, ncpu: int, cat: fmt.Catalogue, *,
                  force: bool = False, skipped: BadRecords | None = None,
                  dropped: list[int] | None = None, max_time: int | None = None) -> np.ndarray:
    """The records of an events file if every one makes sense for its run.

    A record must name a CPU the machine has (< ``ncpu``) and a message the catalogue
    knows, and each CPU's sequence numbers must be unique and follow its time stamps (a
    gap is a dropped record and fine; a record older than its predecessor is not).  The
    first bad record raises BadInput with its index and byte offset; with ``force`` bad
    records are left out and counted in ``skipped``.

    When the run's summary is known: no time stamp lies past ``max_time``, and each
    CPU's gaps in sequence numbers add up to no more than the records it ``dropped``.
    """
    n = len(recs)
    if n == 0:
        return recs
    known = np.zeros(fmt.MAX_MSGID + 1, bool)
    known[[m.id for m in cat.messages]] = True
    cpu = recs["cpu"].astype(np.int64)
    bad = (cpu >= ncpu) | ~known[recs["msgid"]]
    if max_time is not None:
        bad |= recs["time"] > np.uint64(max_time)
    ok_cpu = np.where(bad, 0, cpu)
    # per CPU, sequence numbers are unique and follow time: ordered by (cpu, seq), a
    # record may not be older than the one before it (events.bin need not be in order)
    seq, t = recs["seq"], recs["time"]
    order = np.lexsort((seq, ok_cpu))
    cand = order[~bad[order]]
    if len(cand) > 1:
        same = ok_cpu[cand[1:]] == ok_cpu[cand[:-1]]
        back = same & ((seq[cand[1:]] == seq[cand[:-1]]) | (t[cand[1:]] < t[cand[:-1]]))
        bad[cand[1:][back]] = True
        if dropped is not None:
            _check_gaps(seq, ok_cpu, cand, dropped, bad)
    if not bad.any():
        return recs
    first = int(np.flatnonzero(bad)[0])
    why = ""
    r = recs[first]
    off = fmt.EVENTS_HDR_SIZE + first * fmt.REC_DTYPE.itemsize
    if int(r["cpu"]) >= ncpu:
        why = f"cpu {int(r['cpu'])}, but the run has {ncpu} CPUs"
    elif max_time is not None and int(r["time"]) > max_time:
        why = f"time {int(r['time'])} ns is past the end of the run"
    elif not known[int(r["msgid"])]:
        why = f"message id {int(r['msgid'])} is not in the catalogue"
    else:
        why = (f"cpu{int(r['cpu'])} sequence number {int(r['seq'])} is repeated, out of "
               "time order, or past what the run dropped")
    where = f"{source}: bad record {first} at byte offset {off}: {why}"
    if not force:
        raise BadInput(where + " (corrupt file; --force skips bad records)")
    if skipped is not None:
        skipped.count = int(bad.sum())
        skipped.first = where
    return recs[~bad]


def _check_gaps(seq: np.ndarray, cpu: np.ndarray, order: np.ndarray, dropped: list[int],
                bad: np.ndarray) -> None:
    """Mark the record after each CPU's largest sequence gap when the gaps exceed what
    that CPU dropped (``order``: good records sorted by cpu, then seq)."""
    c = cpu[order]
    for k in np.unique(c):
        idx = order[c == k]
        q = seq[idx].astype(np.int64)
        gaps = np.diff(q, prepend=-1) - 1            # records missing before each one
        allowed = dropped[k] if k < len(dropped) else 0
        if gaps.sum() > allowed:
            bad[idx[int(np.argmax(gaps))]] = True


def load_json_any(p: Path) -> Any:
    """A JSON file of any shape (experiment and explore documents), BadInput on failure."""
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{p}: missing") from None
    except OSError as e:
        raise BadInput(f"{p}: cannot read: {e.strerror or e}") from None
    except ValueError as e:
        raise BadInput(f"{p}: not valid JSON ({e})") from None
