"""What `smp trace` and `smp compare` read: run directories and text logs, as one kind of log.

A *run directory* is read from its binary records (``events.bin``, sorted into one
timeline with :func:`smp.rundir.format.merge_order`) and ``catalogue.json``, so every record
knows its exact template -- the (kind, function, format) of the kernel call site -- and
can be re-rendered in any style.  ``manifest.json`` and ``summary.json`` supply the
header (load script, machine, kernel, seed, mode, duration, dropped records).  A run
directory without ``events.bin`` falls back to its ``console.log``.

A *text log* is anything else: our own ``console.log``/``hist.log``, a ``dmesg`` with
``[    12.345678]`` stamps, or a 2001 NetBSD console with no stamps at all.  Each line is
split into an optional timestamp, an optional ``cpuN:`` (our console, or an unstamped MP
console whose lines mostly start with it) or ``fn#call@cpu:`` (UVMHIST) prefix, and the
message; templates are mined from the message
(:mod:`smp.tools.trace_mask`).

Both give a :class:`Log`: per line a time (ns, -1 when unknown), a CPU (-1 when unknown)
and a template id; a list of :class:`Template`; the header facts; and a
:class:`SeqSource` for the sequence view (keys with aliases, alias-blind keys, display
text).

*Boot lines* -- the kernel's boot and shutdown messages (copyright, version, memory,
autoconfiguration, ``boot device``, ``syncing disks``, ``rebooting``) -- describe the
machine and the kernel configuration, not what the run did.  A run directory's
catalogue tags them (``"tag": "boot"``, :mod:`smp.kern.autoconf`); in a text log they
are recognised by their NetBSD wording (:data:`BOOT_TEXT`).  ``Template.boot`` says
which templates they are, and :meth:`Log.boot_mask` / :meth:`Log.boot_lines` give the
lines.  Malformed input -- an unreadable or binary file, a truncated ``events.bin``, a bad
``catalogue.json`` or ``manifest.json`` -- raises :class:`~smp.errors.BadInput` naming
the file.
"""

from __future__ import annotations

import gc
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smp.errors import BadInput
from smp.rundir import format as runfmt
from smp.rundir.format import Catalogue
from smp.rundir.reader import MAX_CPUS, BadRecords, RunDir, check_records, dig
from smp.tools import trace_mask


@dataclass(frozen=True)
class Template:
    """One message template.

    ``key`` identifies it across inputs: ``("exact", kind, hist, fn, fmt)`` for our own
    records -- by text, never by catalogue id, since ids may change between code versions
    -- or ``("mined", kind, text)``.  ``text`` is what tables print.
    """

    key: tuple
    text: str
    kind: str = "printf"  # printf | panic | hist | unknown
    fn: str = ""
    boot: bool = False    # a boot or shutdown message (module docstring)


@dataclass
class Log:
    """One input, whatever its format (see the module docstring)."""

    source: str
    exact: bool
    format: str
    time_ns: np.ndarray
    cpu: np.ndarray
    tid: np.ndarray
    templates: list[Template]
    manifest: dict | None = None
    summary: dict | None = None
    dropped: int | None = None
    duration: float | None = None
    duration_from: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.tid)

    def panics(self) -> int:
        """How many panic records/lines."""
        kinds = np.array([t.kind == "panic" for t in self.templates] + [False], bool)
        return int(np.count_nonzero(kinds[self.tid])) if self.n else 0

    def boot_mask(self) -> np.ndarray:
        """Per line: is it a boot line (a template with ``boot`` set)?"""
        if not self.n:
            return np.zeros(0, bool)
        return np.array([t.boot for t in self.templates] + [False], bool)[self.tid]

    def boot_lines(self) -> list[str]:  # pragma: no cover - abstract
        """The boot lines' message texts, in order (no timestamp, no ``cpuN:`` column)."""
        raise NotImplementedError

    def seq(self, gid: np.ndarray) -> SeqSource:  # pragma: no cover - abstract
        raise NotImplementedError

    def lines(self, idx: np.ndarray, style: str) -> list[str]:  # pragma: no cover
        raise NotImplementedError


class SeqSource:
    """Line keys for the sequence view (``smp.tools.compare_seq``).

    ``raw()`` is one int64 per line for the line without its timestamp: equal raw keys
    mean equal lines.  ``start(origin)`` restarts alias numbering at line ``origin``;
    ``keys(lo, hi)`` gives (full, blind) int64 keys of lines ``lo..hi-1`` with aliases
    numbered from the origin (full) or with aliases reduced to their kind (blind);
    ``text(i)`` the normalized line for display, prefixed with its original stamp.
    """

    n: int

    def raw(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self, origin: int) -> None:  # pragma: no cover
        raise NotImplementedError

    def keys(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def full_keys(self, lo: int, hi: int) -> np.ndarray:  # pragma: no cover
        """The first of :meth:`keys` (the blind keys may cost extra)."""
        raise NotImplementedError

    def text(self, i: int) -> str:  # pragma: no cover
        raise NotImplementedError

    def alias_counts(self) -> dict:  # pragma: no cover
        """Aliases numbered since the last start(): counts, substitutions, and the first
        ALIAS_TABLE entries of each table (value -> alias)."""
        raise NotImplementedError


@contextmanager
def no_gc() -> Iterator[None]:
    # building millions of small tuples and strings wakes the cyclic collector over and
    # over for nothing (none of them is cyclic): 2-3x slower loading with it on
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# ---------------------------------------------------------------- opening inputs


def load(path: str | Path, *, partial_ok: bool = False, force: bool = False) -> Log:
    """Open a run directory or a text log (module docstring).

    ``force``: skip records of events.bin that make no sense for the run (a corrupt
    file) instead of refusing it; the log's notes say how many were skipped.
    """
    p = Path(path)
    if not p.exists():
        raise BadInput(f"{p}: no such file or directory")
    with no_gc():
        if p.is_dir():
            rd = RunDir(p)
            if rd.has(runfmt.EVENTS_FILE):
                return load_run(rd, partial_ok=partial_ok, force=force)
            if rd.has(runfmt.CONSOLE_FILE):
                log = load_text(rd.file(runfmt.CONSOLE_FILE))
                log.source = str(p)
                log.manifest, log.summary = rd.manifest, rd.summary
                _run_facts(log)
                log.notes.append(f"no {runfmt.EVENTS_FILE}: read {runfmt.CONSOLE_FILE}, "
                                 "templates mined")
                return log
            raise BadInput(f"{p}: not a run directory (no {runfmt.EVENTS_FILE} or "
                           f"{runfmt.CONSOLE_FILE})")
        if p.name == runfmt.EVENTS_FILE or _starts_with(p, runfmt.EVENTS_MAGIC):
            return load_run(RunDir(p.parent), partial_ok=partial_ok, force=force,
                            events=p)
        if p.suffix == ".json":
            raise BadInput(f"{p}: a JSON file, not a log; give the run directory "
                           f"{p.parent} instead")
        return load_text(p)


def warn_suspect(log: Log, tool: str) -> None:
    """Say on stderr what makes an input suspect: records skipped with --force, an
    incomplete run directory."""
    for n in log.notes:
        if n.startswith("--force") or "incomplete" in n:
            print(f"{tool}: warning: {log.source}: {n}", file=sys.stderr)


def _starts_with(p: Path, magic: bytes) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError as e:
        raise BadInput(f"{p}: cannot read: {e.strerror or e}") from None


def _run_facts(log: Log) -> None:
    """Duration and dropped records from summary.json (when the run got that far)."""
    s = log.summary or {}
    dropped = dig(s, "trace", "dropped", want=int)
    if dropped is not None:
        log.dropped = dropped
    # a simulated clock, if the run has one, else the run's own elapsed time (free mode
    # stamps records with host time since boot, so the two agree)
    for key in ("sim_time_s", "virtual_time_s", "duration_s", "elapsed_s"):
        v = s.get(key)
        if isinstance(v, int | float) and v > 0:
            log.duration, log.duration_from = float(v), f"summary {key}"
            return
    if log.summary is None:
        log.notes.append("no summary.json (the run did not finish?)")


# ---------------------------------------------------------------- run directories


def load_run(rd: RunDir, *, partial_ok: bool = False, force: bool = False,
             events: Path | None = None) -> RunLog:
    cat = rd.catalogue()
    skipped = BadRecords()
    if events is None:
        recs = rd.events(partial_ok=partial_ok, force=force, skipped=skipped)
    else:                          # an events file given by name (maybe not events.bin)
        recs = check_records(runfmt.read_events(events, partial_ok=partial_ok), events,
                             rd.ncpu() or MAX_CPUS, cat, force=force, skipped=skipped)
    recs = _merged(recs)
    log = RunLog(str(rd.path), cat, recs)
    log.manifest, log.summary = rd.manifest, rd.summary
    if log.manifest is None:
        log.notes.append("no manifest.json")
    if skipped:
        log.notes.append(f"--force: skipped {skipped.count} bad records (first: "
                         f"{skipped.first})")
    if rd.incomplete:
        log.notes.append("the run directory is incomplete (its run could not write it all)")
    _run_facts(log)
    if log.duration is None and log.n:
        log.duration, log.duration_from = float(recs["time"][-1]) / 1e9, "last record"
    return log


def _merged(recs: np.ndarray) -> np.ndarray:
    """:func:`runfmt.merge_order`, skipping the sort when the file is already in that order
    (a drainer writes each batch merged; one batch is the common case)."""
    if len(recs) < 2:
        return recs
    t, c, q = recs["time"], recs["cpu"], recs["seq"]
    dt = t[1:].astype(np.int64) - t[:-1].astype(np.int64)
    tie = dt == 0
    dc = c[1:].astype(np.int64) - c[:-1].astype(np.int64)
    ok = (dt > 0) | (tie & (dc > 0)) | (tie & (dc == 0) & (q[1:] > q[:-1]))
    return recs if ok.all() else runfmt.merge_order(recs)


# conversion classes of a format's argument slots (for keys and aliases)
SLOT_NONE, SLOT_NUM, SLOT_HEX, SLOT_PID, SLOT_STR = 0, 1, 2, 3, 4
_PID_BEFORE = re.compile(r"\bpid[ =:#]?$")


def slot_classes(fmt: str) -> list[int]:
    """Class of every argument slot of a C format: SLOT_HEX for %p/%x/%X (an address when
    its value is at least a page), SLOT_PID for a %d/%i/%u right after "pid", SLOT_STR
    for %s (an index into the string table), SLOT_NUM otherwise."""
    out: list[int] = []
    # runfmt's own conversion grammar, so the slots line up with the renderer's
    for m in runfmt._SPEC.finditer(fmt):
        conv = m["conv"]
        if conv == "%":
            continue
        if len(out) == runfmt.NARGS:
            break
        if conv in "pxX":
            out.append(SLOT_HEX)
        elif conv == "s":
            out.append(SLOT_STR)
        elif conv in "diu" and _PID_BEFORE.search(fmt, 0, m.start()):
            out.append(SLOT_PID)
        else:
            out.append(SLOT_NUM)
    return out + [SLOT_NONE] * (runfmt.NARGS - len(out))


_HEAD_FN = re.compile(r"([A-Za-z_][\w.]*): ")


def head_fn(text: str) -> str:
    """The function a kernel message names at its start ("pmap_enter: get ptp failed"),
    for messages declared without one (the kernel's own printf text), else ""."""
    m = _HEAD_FN.match(text)
    return m.group(1) if m else ""


def _template_text(m: runfmt.Message) -> str:
    if m.kind == "panic":
        return f"panic: {m.fmt}"
    if m.kind == "hist":
        return f"[{m.hist}] {m.fn}: {m.fmt}"
    return f"{m.fn}: {m.fmt}" if m.fn else m.fmt


class RunLog(Log):
    """A run directory read from events.bin + catalogue.json (exact templates)."""

    def __init__(self, source: str, cat: Catalogue, records: np.ndarray):
        self.cat = cat
        self.records = records
        templates: list[Template] = []
        lut = np.full(runfmt.MAX_MSGID + 1, -1, np.int32)
        slots: list[list[int]] = []
        for m in cat.messages:
            lut[m.id] = len(templates)
            templates.append(Template(("exact", m.kind, m.hist, m.fn, m.fmt),
                                      _template_text(m), m.kind, m.fn or head_fn(m.fmt),
                                      m.tag == runfmt.TAG_BOOT))
            slots.append(slot_classes(m.fmt))
        msgid = records["msgid"]
        unknown = np.unique(msgid[lut[msgid] < 0]) if len(records) else []
        for u in unknown:
            # a record the catalogue does not know (a catalogue from other code): keep it
            lut[u] = len(templates)
            templates.append(Template(("exact", "unknown", "", "", f"<message {u}>"),
                                      f"<unknown message {u}>", "unknown", ""))
            slots.append([SLOT_NUM] * runfmt.NARGS)
        super().__init__(source=source, exact=True, format="smp events", templates=templates,
                         time_ns=records["time"].astype(np.int64),
                         cpu=records["cpu"].astype(np.int16),
                         tid=lut[msgid] if len(records) else np.zeros(0, np.int32))
        self.slots = np.array(slots, np.uint8).reshape(len(templates), runfmt.NARGS)
        if len(unknown):
            self.notes.append(f"{len(unknown)} message ids not in catalogue.json")

    def lines(self, idx: np.ndarray | None = None, style: str = "console") -> list[str]:
        """Rendered lines of records ``idx`` (all when None), in that order.

        ``style`` "console" or "hist" renders every record that way; "native" renders
        UVMHIST records in UVMHIST style and the rest as console lines.
        """
        return render_records(self.records if idx is None else self.records[idx], self.cat,
                              style)

    def boot_lines(self) -> list[str]:
        cat = self.cat
        return [cat.render_message(int(r["msgid"]), r["args"].tolist())
                for r in self.records[self.boot_mask()]]

    def as_text(self) -> TextLog:
        """The same run as a text log (console lines, UVMHIST lines for hist records), for
        comparing against a log that has no records: both sides then get mined templates."""
        log = parse_text(self.source, "\n".join(self.lines(style="native")), mixed=True)
        log.manifest, log.summary = self.manifest, self.summary
        log.dropped, log.duration, log.duration_from = (self.dropped, self.duration,
                                                        self.duration_from)
        log.notes = list(self.notes)
        return log

    def seq(self, gid: np.ndarray) -> SeqSource:
        return _RunSeq(self, gid)


def render_records(recs: np.ndarray, cat: Catalogue, style: str) -> list[str]:
    """Lines of records in array order (see :meth:`RunLog.lines` for ``style``)."""
    if style == "console":
        return runfmt.console_lines(recs, cat)
    if style == "hist":
        return runfmt.hist_lines(recs, cat)
    is_hist = cat.kind_codes()[recs["msgid"]] == runfmt.KIND_HIST
    if not is_hist.any():
        return runfmt.console_lines(recs, cat)
    out = np.empty(len(recs), object)
    out[is_hist] = runfmt.hist_lines(recs[is_hist], cat)
    out[~is_hist] = runfmt.console_lines(recs[~is_hist], cat)
    return out.tolist()


# FNV-1a style mixing of int64 columns into one key per row (wrapping uint64 arithmetic)
_FNV_PRIME = np.uint64(0x100000001B3)
_FNV_BASIS = np.uint64(0xCBF29CE484222325)


def _mix(cols: list[np.ndarray]) -> np.ndarray:
    h = np.full(len(cols[0]), _FNV_BASIS, np.uint64)
    with np.errstate(over="ignore"):
        for c in cols:
            h ^= c.astype(np.uint64)
            h *= _FNV_PRIME
            h ^= h >> np.uint64(29)
    return h.view(np.int64)


ALIAS_TABLE = 50  # entries of each alias table in compare's JSON report
_SENTINEL_ADDR = 0x5EA10000  # stand-ins rendered in place of aliased arguments (display)
_SENTINEL_PID = 1597000000


class _RunSeq(SeqSource):
    def __init__(self, log: RunLog, gid: np.ndarray):
        self.log = log
        r = log.records
        self.n = len(r)
        tid = log.tid
        self.kinds = log.slots[tid] if self.n else np.zeros((0, runfmt.NARGS), np.uint8)
        args = r["args"].astype(np.int64)
        args[self.kinds == SLOT_NONE] = 0  # slots the format does not use may hold garbage
        strs = self.kinds == SLOT_STR
        if strs.any():
            # %s arguments index this run's string table; compare the strings themselves
            table = np.array([hash(s) for s in log.cat.strings] + [0], np.int64)
            v = args[strs]
            ok = (v >= 0) & (v < len(log.cat.strings))
            args[strs] = np.where(ok, table[np.clip(v, 0, len(table) - 1)], v ^ 0x5A5A)
        self.args = args
        u = np.where(args < 0, args & 0xFFFFFFFF, args)  # %x of a negative int is 32-bit
        self.is_addr = (self.kinds == SLOT_HEX) & (u >= trace_mask.ADDR_MIN)
        self.is_pid = self.kinds == SLOT_PID
        is_hist = np.array([t.kind == "hist" for t in log.templates] + [False])[tid]
        self.head = [gid[tid].astype(np.int64), r["cpu"].astype(np.int64),
                     np.where(is_hist, r["call"], 0).astype(np.int64)]
        self._full: np.ndarray | None = None
        self._blind: np.ndarray | None = None
        self._alias: np.ndarray | None = None
        self._counts = {"addresses": 0, "pids": 0, "substitutions": 0,
                        "table": {"addresses": {}, "pids": {}}}
        self.start(0)

    def raw(self) -> np.ndarray:
        if self.n == 0:
            return np.zeros(0, np.int64)
        return _mix(self.head + [self.args[:, k] for k in range(runfmt.NARGS)])

    def start(self, origin: int) -> None:
        self.origin = origin
        self._hi = origin            # keys computed for lines origin.._hi-1
        self._full = self._blind = self._alias = None

    def _compute(self, hi: int) -> None:
        """Keys of lines origin..hi-1.  First-seen numbering of a longer range agrees with
        that of its beginning, so the range can grow (doubling) without changing keys
        already handed out; a divergence near the start costs little."""
        o = self.origin
        args = self.args[o:hi]
        is_addr, is_pid = self.is_addr[o:hi], self.is_pid[o:hi]
        alias = np.zeros(args.shape, np.int64)
        counts: dict = {}
        tables: dict[str, dict[str, str]] = {}
        for name, mask in (("addresses", is_addr), ("pids", is_pid)):
            vals = args[mask]  # row-major: record order, then slot order within a record
            table: dict[str, str] = {}
            if len(vals):
                uniq, first, inv = np.unique(vals, return_index=True, return_inverse=True)
                order = np.argsort(first, kind="stable")
                rank = np.empty(len(first), np.int64)
                rank[order] = np.arange(1, len(first) + 1)
                alias[mask] = rank[inv.reshape(-1)]
                counts[name] = len(first)
                for n, v in enumerate(uniq[order[:ALIAS_TABLE]].tolist(), 1):
                    if name == "addresses":
                        table[f"0x{v & 0xFFFFFFFF if v < 0 else v:08x}"] = f"P{n}"
                    else:
                        table[str(v)] = f"I{n}"
            else:
                counts[name] = 0
            tables[name] = table
        amask = is_addr | is_pid
        counts["substitutions"] = int(np.count_nonzero(amask))
        counts["table"] = tables
        self._counts = counts
        # full: aliased slots carry their alias number, tagged; blind: only the tag
        tag = np.where(is_addr, 1, np.where(is_pid, 2, 0)).astype(np.int64)
        full_args = np.where(amask, alias * 4 + tag + (1 << 62), args)
        blind_args = np.where(amask, tag + (1 << 62), args)
        head = [h[o:hi] for h in self.head]
        self._full = _mix(head + [full_args[:, k] for k in range(runfmt.NARGS)])
        self._blind = _mix(head + [blind_args[:, k] for k in range(runfmt.NARGS)])
        self._alias = alias
        self._hi = hi

    def full_keys(self, lo: int, hi: int) -> np.ndarray:
        return self.keys(lo, hi)[0]

    def keys(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        if hi > self._hi or self._full is None:
            o = self.origin
            self._compute(min(self.n, max(hi, o + 2 * (self._hi - o), o + 4096)))
        o = self.origin
        return self._full[lo - o:hi - o], self._blind[lo - o:hi - o]

    def text(self, i: int) -> str:
        log = self.log
        rec = log.records[i:i + 1].copy()
        subs: list[tuple[str, str]] = []
        if i >= self.origin and (self._alias is None or i >= self._hi):
            self.keys(i, i + 1)
        if self._alias is not None and i >= self.origin:
            al = self._alias[i - self.origin]
            for k in range(runfmt.NARGS):
                if self.is_addr[i, k]:
                    v = _SENTINEL_ADDR + k
                    rec["args"][0, k] = v
                    name = f"P{al[k]}"
                    subs += [(f"0x{v:08x}", name), (f"{v:08x}", name), (f"{v:X}", name)]
                elif self.is_pid[i, k]:
                    v = _SENTINEL_PID + k
                    rec["args"][0, k] = v
                    subs.append((str(v), f"I{al[k]}"))
        line = _render_one(log, rec)
        for old, new in subs:
            line = line.replace(old, new)
        return line

    def alias_counts(self) -> dict:
        return dict(self._counts)


def _render_one(log: RunLog, rec: np.ndarray) -> str:
    if log.cat.kind_codes()[int(rec["msgid"][0])] == runfmt.KIND_HIST:
        return runfmt.hist_line(rec[0], log.cat)
    return runfmt.console_line(rec[0], log.cat)


# ---------------------------------------------------------------- text logs

# groups: seconds, fraction, the line after the stamp, cpu (only after a stamp: an
# unstamped "cpu0: Intel Pentium III" is a device attaching, not a CPU's console line), body
_CONSOLE = re.compile(r"^(?:\[ *(\d+)\.(\d+)\] ?)?((?(1)(?:cpu(\d+): )?)(.*))$", re.M)
# a dmesg stamp is followed by the message itself ("cpu1: Intel ..." is a device name)
_DMESG = re.compile(r"^(?:\[ *(\d+)\.(\d+)\] ?)?(()(.*))$", re.M)
# our console and UVMHIST prefixes, either one per line (a run rendered as text has both):
# 1 sec, 2 frac, 3 cpu of a console line; 4 sec, 5 frac, 6 fn, 7 call, 8 cpu of a UVMHIST
# line ("@1d:" is how one vmstat version printed it); 9 the message
_SMP = re.compile(r"^(?:\[ *(\d+)\.(\d+)\] ?(?:cpu(\d+): )?"
                  r"|(\d+)\.(\d+) ([^\s#]+)#(\d+)@(\d+)d?: )?(.*)$", re.M)
HIST_MARK = "\x01"  # starts the body of a UVMHIST line while mining: kind hist
_HIST_LINE = re.compile(r"\d+\.\d{6} [^\s#]+#\d+@\d+d?: ")
_STAMPED_LINE = re.compile(r"\[ *\d+\.\d+\] ")
_SMP_CONSOLE_LINE = re.compile(r"\[ *\d+\.\d{6}\] (?:cpu\d+|smp): ")
_DROP_LINE = re.compile(r"smp: (\d+) trace records dropped")


def load_text(p: Path) -> TextLog:
    try:
        data = p.read_bytes()
    except IsADirectoryError:
        raise BadInput(f"{p}: is a directory") from None
    except OSError as e:
        raise BadInput(f"{p}: cannot read: {e.strerror or e}") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise BadInput(f"{p}: binary data (NUL byte at offset {nul}), not a text log")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # old consoles are not UTF-8; every byte means something in latin-1
        text = data.decode("latin-1")
    return parse_text(str(p), text)


def parse_text(source: str, text: str, mixed: bool = False) -> TextLog:
    """A text log from its contents (see the module docstring); ``mixed``: expect both
    console and UVMHIST lines (a run rendered as text)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if text.endswith("\n"):
        text = text[:-1]
    lines = text.split("\n") if text else []
    sample = [s for s in lines[:2000] if s]
    nhist = sum(1 for s in sample if _HIST_LINE.match(s))
    nstamped = sum(1 for s in sample if _STAMPED_LINE.match(s))
    nsmp = sum(1 for s in sample if _SMP_CONSOLE_LINE.match(s))
    with no_gc():
        if mixed or nhist:
            fmt = "smp hist" if nhist == len(sample) else "smp console+hist"
            return TextLog(source, lines, _parse_smp(text, len(lines)), fmt)
        if nstamped and nsmp >= 0.9 * nstamped:  # our console: every line says its CPU
            return TextLog(source, lines, _parse_console(_CONSOLE, text, len(lines)),
                           "smp console")
        if not nstamped and trace_mask.mp_console(sample):  # "cpuN: " is the CPU column
            return TextLog(source, lines, _parse_console(trace_mask.MP_CONSOLE, text,
                                                         len(lines)), "mp console")
        return TextLog(source, lines, _parse_console(_DMESG, text, len(lines)),
                       "dmesg" if nstamped else "plain")


def _stamps(secs: list[str], fracs: list[str]) -> np.ndarray:
    """ns since boot from "sec" and "frac" strings ("" = no stamp -> -1)."""
    n = len(secs)
    if n == 0 or not any(secs):
        return np.full(n, -1, np.int64)
    s = np.array([x or "-1" for x in secs], np.int64)
    lens = set(map(len, fracs)) - {0}
    if lens == {6}:
        f = np.array([x or "0" for x in fracs], np.int64) * 1000
    else:
        f = np.array([int((x + "000000000")[:9]) if x else 0 for x in fracs], np.int64)
    return np.where(s >= 0, s * 1_000_000_000 + f, -1)


def _findall(rx: re.Pattern, text: str, n: int) -> list[tuple]:
    rows = rx.findall(text) if n else []
    if len(rows) != n:  # cannot happen: the pattern matches every line, once
        raise AssertionError(f"line split mismatch ({len(rows)} != {n})")
    return rows


def _parse_console(rx: re.Pattern, text: str, n: int) -> tuple:
    rows = _findall(rx, text, n)
    t = _stamps([r[0] for r in rows], [r[1] for r in rows])
    cpus = [r[3] for r in rows]
    cpu = (np.array([c or "-1" for c in cpus], np.int16) if any(cpus)
           else np.full(n, -1, np.int16))
    return t, cpu, [r[4] for r in rows], [r[2] for r in rows]


def _parse_smp(text: str, n: int) -> tuple:
    rows = _findall(_SMP, text, n)
    t = _stamps([r[0] or r[3] for r in rows], [r[1] or r[4] for r in rows])
    cpu = np.array([r[2] or r[7] or "-1" for r in rows], np.int16)
    # a UVMHIST line's template comes from "fn: msg" (marked as UVMHIST); its raw line
    # keeps the call number and CPU
    bodies = [f"{HIST_MARK}{r[5]}: {r[8]}" if r[5] else r[8] for r in rows]
    rests = [f"{r[5]}#{r[6]}@{r[7]}: {r[8]}" if r[5] else
             f"cpu{r[2]}: {r[8]}" if r[2] else r[8] for r in rows]
    return t, cpu, bodies, rests


# The boot and shutdown messages of a NetBSD console, as mined templates read (numbers are
# <NUM>, paths <PATH>): what smp.kern.autoconf prints, and what a real i386 dmesg of the
# time shows besides (autoconfiguration's "dev0 at parent0", the CPU identification).
_BOOT_STARTS = (
    r"Copyright \(c\) ", r"\s+The NetBSD Foundation, ", r"\s+The Regents of the University",
    r"NetBSD <NUM>\S* \(", r"\s+\S+@\S+:<PATH>$",
    r"(?:total|avail|real) mem(?:ory)? = ", r"using <NUM> buffers containing ",
    r"mainbus<NUM> \(root\)", r"[a-z]+<NUM>[a-z]? at [a-z]+<NUM>",
    r"cpu<NUM>: .*\(<NUM>-class\)", r"cpu<NUM>: .*, id <HEX>$", r"cpu<NUM>: apic clock ",
    r"cpu<NUM>: (?:starting|CPU <NUM> running)$", r"ioapic<NUM>: ", r"BIOS<NUM> rev\. ",
    r"[a-z]+<NUM>: .* bytes/sect ",
    r"swap: ", r"boot device: ", r"root on ", r"root file system type: ",
    r"syncing disks", r"rebooting", r"dumping to ",
)
BOOT_TEXT = re.compile("^(?:" + "|".join(_BOOT_STARTS) + ")")


def boot_text(template: str) -> bool:
    """Is a mined template (a text log's) a boot or shutdown message?"""
    return BOOT_TEXT.match(template) is not None


class TextLog(Log):
    """A text log with mined templates."""

    def __init__(self, source: str, lines: list[str], cols: tuple, fmt: str):
        t, cpu, bodies, rests = cols
        self.text_lines = lines
        self.rests = rests
        self.bodies = bodies
        mined: dict[str, int] = {}
        tid, self.mined = trace_mask.mine(bodies, mined)
        texts = sorted(mined, key=mined.get)
        templates = []
        for text in texts:
            kind = "panic" if text.startswith("panic: ") else "printf"
            if text.startswith(HIST_MARK):
                kind, text = "hist", text[len(HIST_MARK):]
            templates.append(Template(("mined", kind, text), text or "(empty line)", kind,
                                      head_fn(text), kind == "printf" and boot_text(text)))
        super().__init__(source=source, exact=False, format=fmt, time_ns=t, cpu=cpu,
                         tid=tid.astype(np.int32), templates=templates)
        stamped = t[t >= 0]
        if len(stamped):
            self.duration, self.duration_from = float(stamped.max()) / 1e9, "last timestamp"
        for b in bodies[-5:]:
            m = _DROP_LINE.search(b)
            if m:
                self.dropped = int(m.group(1))

    def lines(self, idx: np.ndarray | None = None, style: str = "console") -> list[str]:
        if idx is None:
            return list(self.text_lines)
        tl = self.text_lines
        return [tl[i] for i in idx.tolist()]

    def boot_lines(self) -> list[str]:
        b = self.bodies
        return [b[i] for i in np.flatnonzero(self.boot_mask()).tolist()]

    def seq(self, gid: np.ndarray) -> SeqSource:
        return _TextSeq(self)


def _hashes(strings: list[str]) -> np.ndarray:
    return np.fromiter(map(hash, strings), np.int64, len(strings))


class _TextSeq(SeqSource):
    """Sequence keys of a text log: hashes of alias-normalized lines, computed lazily and
    forward only (normalizing a million lines costs seconds; most comparisons need only
    the stretch after the first raw difference)."""

    def __init__(self, log: TextLog):
        self.log = log
        self.n = log.n
        self.start(0)

    def raw(self) -> np.ndarray:
        return _hashes(self.log.rests)

    def start(self, origin: int) -> None:
        self.origin = origin
        self.norm = trace_mask.AliasNormalizer(self.log.mined.time, self.log.mined.bare)
        self.pos = origin              # next line the normalizer has not seen
        self.lo = origin               # first line of the cache
        self.marked: list[str] = []    # normalized text of lines lo..pos-1
        self.full = np.zeros(0, np.int64)   # and their keys

    def _advance(self, lo: int, hi: int) -> None:
        if lo < self.lo:
            self.start(self.origin)
        if lo > self.pos:
            self.norm.skip(self.log.rests[self.pos:lo])
            self.pos = self.lo = lo
            self.marked, self.full = [], self.full[:0]
        if hi > self.pos:
            marked = self.norm.normalize(self.log.rests[self.pos:hi])
            self.marked.extend(marked)
            self.full = np.concatenate((self.full, _hashes(marked)))
            self.pos = hi
        if lo > self.lo:  # drop what nobody will ask for again
            k = lo - self.lo
            del self.marked[:k]
            self.full = self.full[k:]
            self.lo = lo

    def keys(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        self._advance(lo, hi)
        return self.full[lo - self.lo:hi - self.lo], self._blind_keys(lo, hi)

    def full_keys(self, lo: int, hi: int) -> np.ndarray:
        self._advance(lo, hi)
        return self.full[lo - self.lo:hi - self.lo]

    def _blind_keys(self, lo: int, hi: int) -> np.ndarray:
        # only re-synchronization needs these, on a window: derived when asked
        return _hashes(trace_mask.blind(self.marked[lo - self.lo:hi - self.lo]))

    def text(self, i: int) -> str:
        if not self.lo <= i < self.pos:
            if i < self.lo:
                self.start(self.origin)
            self._advance(i, i + 1)
        marked = self.marked[i - self.lo]
        line, rest = self.log.text_lines[i], self.log.rests[i]
        return line[:len(line) - len(rest)] + trace_mask.display(marked)

    def alias_counts(self) -> dict:
        return {"addresses": len(self.norm.addr), "pids": len(self.norm.pid),
                "substitutions": self.norm.substitutions,
                "table": self.norm.aliases(ALIAS_TABLE)}
