"""The run directory's formats: what a kernel console and a UVMHIST dump look like on disk.

A run directory is self-describing.  Trace data is kept as fixed-size binary records (the
same 72-byte records the simulated CPUs write into their rings) in ``events.bin``; the
message catalogue that gives every record its printf template travels with the run, so
any run renders with today's tools and old runs stay readable after the catalogue
changes.  This module is that contract: the record type, the catalogue and its JSON
form, the C-printf renderer, the console and UVMHIST line formats, and the event file.

It imports neither the machine nor the kernel, so tools can read runs without them.
``REC_DTYPE`` here is the canonical definition; ``smp.machine.layout`` keeps a copy tied
to the C struct, and a unit test asserts the two are equal.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from smp.errors import BadInput

NARGS = 6
REC_DTYPE = np.dtype(
    [("time", "<u8"), ("seq", "<u8"), ("cpu", "<u2"), ("msgid", "<u2"), ("call", "<u4"),
     ("args", "<i8", (NARGS,))]
)
EVENTS_SCHEMA = 1
CATALOGUE_SCHEMA = 1

EVENTS_FILE = "events.bin"
CONSOLE_FILE = "console.log"
HIST_FILE = "hist.log"
CATALOGUE_FILE = "catalogue.json"
MANIFEST_FILE = "manifest.json"
SUMMARY_FILE = "summary.json"
SUMMARY_TEXT_FILE = "summary.txt"
LOCKSTAT_FILE = "lockstat.json"
INCOMPLETE_FILE = ".incomplete"       # a run whose directory could not be written in full

# Schema versions of every JSON document smp writes (one place, so readers and writers agree).
MANIFEST_SCHEMA = 1
SUMMARY_SCHEMA = 1
LOCKSTAT_SCHEMA = 1
EXPERIMENT_SCHEMA = 1
EXPLORE_SCHEMA = 1

EVENTS_MAGIC = b"SMPEVT01"
EVENTS_HDR_SIZE = 64
EVENTS_HDR_DTYPE = np.dtype(
    [("magic", "S8"), ("schema", "<u4"), ("recsize", "<u4"), ("reserved", "V48")]
)
assert EVENTS_HDR_DTYPE.itemsize == EVENTS_HDR_SIZE

KINDS = ("printf", "panic", "hist")
TAGS = ("", "boot")            # Message.tag: "boot" = a boot or shutdown console line
TAG_BOOT = "boot"
# numeric kind codes, so a batch of records can be split by kind with one numpy gather
KIND_PRINTF, KIND_PANIC, KIND_HIST = 0, 1, 2
_KIND_CODE = {"printf": KIND_PRINTF, "panic": KIND_PANIC, "hist": KIND_HIST}
MAX_MSGID = 0xFFFF  # the record's msgid is a u2

_M32 = 1 << 32
_M64 = 1 << 64


@dataclass(frozen=True)
class Message:
    """One catalogue entry: a kernel printf/panic/UVMHIST_LOG call site's template.

    ``kind`` is "printf" (console), "panic" or "hist" (a UVMHIST record, hist.log only);
    ``hist`` names the history ("maphist", "pdhist", ...) for kind "hist", else "".
    ``tag`` classes a console line for the tools: "boot" for the boot and shutdown
    messages (copyright, version, memory, autoconfiguration, ``syncing disks``), which
    describe the machine and kernel configuration rather than what the run did;
    "" for the rest.  (Written to catalogue.json only when set, so catalogues without
    boot messages read as before, and readers that predate it ignore it.)
    """

    id: int
    fn: str
    fmt: str
    kind: str = "printf"
    hist: str = ""
    tag: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.id, int) or not 0 <= self.id <= MAX_MSGID:
            raise ValueError(f"message id {self.id!r} out of range 0..{MAX_MSGID}")
        if not isinstance(self.fn, str) or not isinstance(self.fmt, str):
            raise ValueError(f"message {self.id}: fn and fmt must be strings")
        if self.kind not in KINDS:
            raise ValueError(f"message {self.id}: kind {self.kind!r} is not one of {KINDS}")
        if (self.kind == "hist") != bool(self.hist):
            raise ValueError(f"message {self.id}: a history name goes with kind 'hist' only")
        if self.tag not in TAGS:
            raise ValueError(f"message {self.id}: tag {self.tag!r} is not one of {TAGS}")


# ---------------------------------------------------------------- C printf

# flags, width, precision, length modifier (ignored), conversion
_SPEC = re.compile(
    r"%(?P<flags>[-+ #0]*)(?P<width>\d+)?(?:\.(?P<prec>\d*))?"
    r"(?P<len>hh|h|ll|l|j|z|t|q|L)?(?P<conv>[diouxXcsp%])"
)


def _unsigned(v: int, wide: bool) -> int:
    """The unsigned value C would print for ``v``.

    The kernel is i386: int and long are 32 bits, so a negative argument of a plain or
    ``l`` conversion wraps at 2**32 (``%x`` of -1 is ffffffff); ``ll``/``j``/``q`` wrap
    at 2**64.  Non-negative values are printed unchanged even past 32 bits, because the
    simulator's counters may exceed them and truncating would only hide information.
    """
    if v >= 0:
        return v
    return v % _M32 if (not wide and v >= -(1 << 31)) else v % _M64


def c_format_int(v: int, flags: str, width: int, prec: int | None, conv: str,
                 wide: bool = False) -> str:
    """Reference C formatting of one integer conversion (d i u o x X).

    The compiled renderer uses it only where Python's %-operator differs from C
    (precision, the ``#`` flag); the tests check both against libc's snprintf.
    """
    neg = False
    if conv in "di":
        neg, mag = v < 0, abs(v)
    else:
        mag = _unsigned(v, wide)
    if conv in "di" or conv == "u":
        digits = str(mag)
    elif conv == "o":
        digits = f"{mag:o}"
    elif conv == "x":
        digits = f"{mag:x}"
    else:
        digits = f"{mag:X}"
    if prec is not None:
        digits = "" if (prec == 0 and mag == 0) else digits.rjust(prec, "0")
    prefix = ""
    if conv in "di":
        prefix = "-" if neg else "+" if "+" in flags else " " if " " in flags else ""
    elif "#" in flags:
        if conv == "o" and not digits.startswith("0"):
            digits = "0" + digits
        elif conv in "xX" and mag != 0:
            prefix = "0" + conv
    body = prefix + digits
    if len(body) >= width:
        return body
    if "-" in flags:
        return body.ljust(width)
    if "0" in flags and prec is None:
        return prefix + digits.rjust(width - len(prefix), "0")
    return body.rjust(width)


def _np_unsigned(col: np.ndarray, wide: bool) -> np.ndarray:
    """:func:`_unsigned` over a column of int64 args (as uint64)."""
    out = col.astype(np.uint64)  # two's complement: negatives wrap at 2**64
    if not wide:
        m = (col < 0) & (col >= -(1 << 31))
        out[m] &= np.uint64(0xFFFFFFFF)
    return out


# How each argument of a compiled format is prepared and inserted.  Integer conversions
# Python's %-operator does like C go straight into the Python format ("d" signed, "u"
# unsigned after wrapping negatives, "p" a pointer as 0x%08x); the rest become a %s slot
# filled by an expression ("P" pointer with a width, "s" string table, "c" char, "slow"
# the reference C formatter for precision and '#').
_PREP_UNSIGNED = {"u", "p", "P"}


class _Compiled:
    """One C format compiled to a Python %-format and per-argument expressions.

    ``render(a)`` formats one record's args (a list of ints).  ``batch(prefix, ncols)``
    generates a function formatting whole columns at once with a line prefix baked into
    the format: rendering a million lines costs one ``%`` operation per line.
    """

    def __init__(self, fmt: str, strings: list[str]):
        self.strings = strings
        out: list[str] = []
        self.args: list[tuple[str, bool, int]] = []  # (kind, wide, index into specs)
        self.specs: list[tuple] = []  # parameters of slow-path conversions
        pos = n = 0
        while True:
            i = fmt.find("%", pos)
            if i < 0:
                out.append(fmt[pos:].replace("%", "%%"))
                break
            out.append(fmt[pos:i])
            m = _SPEC.match(fmt, i)
            if m is None:
                # not a conversion C knows: print the text as it stands
                out.append("%%")
                pos = i + 1
                continue
            pos = m.end()
            conv = m["conv"]
            if conv == "%":
                out.append("%%")
                continue
            if n >= NARGS:
                out.append("<noarg>")  # a record carries six arguments, no more
                continue
            n += 1
            flags, width = m["flags"], m["width"] or ""
            prec = None if m["prec"] is None else int(m["prec"] or 0)
            wide = m["len"] in ("ll", "j", "q", "L")
            left = "-" if "-" in flags else ""
            if conv in "diuoxX":
                if prec is not None or "#" in flags:
                    self.specs.append((flags, int(width or 0), prec, conv, wide))
                    self.args.append(("slow", wide, len(self.specs) - 1))
                    out.append("%s")
                    continue
                keep = "-0+ " if conv in "di" else "-0"  # C ignores + and space if unsigned
                pflags = "".join(sorted(set(flags) & set(keep), key=keep.index))
                out.append(f"%{pflags}{width}{'d' if conv in 'diu' else conv}")
                self.args.append(("d" if conv in "di" else "u", wide, -1))
            elif conv == "c":
                out.append(f"%{left}{width}s")
                self.args.append(("c", False, -1))
            elif conv == "s":
                out.append(f"%{left}{width}{'' if prec is None else f'.{prec}'}s")
                self.args.append(("s", False, -1))
            elif width:  # p, padded as a whole
                out.append(f"%{left}{width}s")
                self.args.append(("P", False, -1))
            else:
                out.append("0x%08x")
                self.args.append(("p", False, -1))
        self.pyfmt = "".join(out)
        self.nargs = n
        self.render = self._generate("", 0, batch=False)

    def _expr(self, k: int, batch: bool) -> str:
        kind, wide, spec = self.args[k]
        v = f"x{k}" if batch else f"a[{k}]"
        if kind == "d":
            return v
        if kind in ("u", "p"):
            # batch columns arrive already wrapped (numpy, once per column)
            return v if batch else f"({v} if {v} >= 0 else _uns({v}, {wide}))"
        if kind == "P":
            return f"'0x%08x' % {v}" if batch else f"'0x%08x' % _uns({v}, False)"
        if kind == "s":
            return f"(_S[{v}] if 0 <= {v} < len(_S) else '<str#%d>' % {v})"
        if kind == "c":
            return f"chr({v} & 255)"
        return f"_cint({v}, *_SP[{spec}])"

    def _generate(self, prefix: str, ncols: int, batch: bool) -> Callable:
        ns = {"_F": prefix + self.pyfmt, "_S": self.strings, "_SP": self.specs,
              "_cint": c_format_int, "_uns": _unsigned}
        cols = [f"p{j}" for j in range(ncols)]
        exprs = cols + [self._expr(k, batch) for k in range(self.nargs)]
        tup = f"({', '.join(exprs)},)" if exprs else "()"
        if batch:
            names = cols + [f"x{k}" for k in range(self.nargs)]
            upper = [n.upper() for n in names]
            src = (f"def _gen({', '.join(upper)}):\n"
                   f"    return [_F % {tup} for {', '.join(names)} in "
                   f"zip({', '.join(upper)})]\n")
        else:
            src = f"def _gen(a):\n    return _F % {tup}\n"
        # the generated source is built from fixed fragments only; format text stays data
        exec(compile(src, "<smp.rundir.format format>", "exec"), ns)  # noqa: S102
        return ns["_gen"]

    def batch(self, prefix: str, ncols: int) -> Callable[..., list[str]]:
        """A function of (ncols prefix columns, then one column per arg) -> lines.

        ``prefix`` is a %-format whose conversions take the prefix columns.
        """
        return self._generate(prefix, ncols, batch=True)

    def columns(self, args: np.ndarray) -> list[list[int]]:
        """The prepared argument columns of an (n, NARGS) int64 array, as lists."""
        cols = []
        for k, (kind, wide, _spec) in enumerate(self.args):
            col = args[:, k]
            if kind in _PREP_UNSIGNED:
                col = _np_unsigned(col, wide and kind == "u")
            cols.append(col.tolist())
        return cols


def count_args(fmt: str) -> int:
    """How many arguments a C format consumes (``%%`` consumes none)."""
    return sum(1 for m in _SPEC.finditer(fmt) if m["conv"] != "%")


# ---------------------------------------------------------------- catalogue


class Catalogue:
    """Messages by id plus the string table ``%s`` arguments index into.

    Ids are assigned by :meth:`add` (dense, from 0) or given in JSON.  Formats are
    compiled on first use and cached; the catalogue is append-only, so caches stay valid.
    """

    def __init__(self, messages: Iterable[Message] = (), strings: Iterable[str] = ()):
        self._by_id: dict[int, Message] = {}
        self.strings: list[str] = []
        self._string_ids: dict[str, int] = {}
        self._compiled: dict[int, _Compiled] = {}
        self._batches: dict[tuple[int, str], Callable[..., list[str]]] = {}
        self._kinds: np.ndarray | None = None
        for m in messages:
            self._insert(m)
        for s in strings:
            self.strings.append(str(s))
            self._string_ids.setdefault(str(s), len(self.strings) - 1)

    def _insert(self, m: Message) -> None:
        if m.id in self._by_id:
            raise ValueError(f"message id {m.id} defined twice")
        self._by_id[m.id] = m
        self._kinds = None

    # -- building (the kernel's side)
    def add(self, fn: str, fmt: str, kind: str = "printf", hist: str = "",
            tag: str = "") -> int:
        """Register a message and return its id (the next free one)."""
        if count_args(fmt) > NARGS:
            raise ValueError(f"{fn}: format {fmt!r} takes more than {NARGS} arguments")
        msgid = max(self._by_id, default=-1) + 1
        self._insert(Message(msgid, fn, fmt, kind, hist, tag))
        return msgid

    def intern(self, s: str) -> int:
        """The string table index for ``s`` (added on first use): a ``%s`` argument."""
        idx = self._string_ids.get(s)
        if idx is None:
            idx = self._string_ids[s] = len(self.strings)
            self.strings.append(s)
        return idx

    # -- lookup
    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, msgid: object) -> bool:
        return msgid in self._by_id

    def message(self, msgid: int) -> Message | None:
        return self._by_id.get(msgid)

    @property
    def messages(self) -> list[Message]:
        return [self._by_id[k] for k in sorted(self._by_id)]

    def kind_codes(self) -> np.ndarray:
        """KIND_* code for every possible msgid (unknown ids count as printf)."""
        if self._kinds is None:
            k = np.zeros(MAX_MSGID + 1, np.uint8)
            for m in self._by_id.values():
                k[m.id] = _KIND_CODE[m.kind]
            self._kinds = k
        return self._kinds

    def tagged(self, tag: str = TAG_BOOT) -> np.ndarray:
        """For every possible msgid: does its message carry ``tag``? (unknown ids: no)"""
        t = np.zeros(MAX_MSGID + 1, bool)
        for m in self._by_id.values():
            if m.tag == tag:
                t[m.id] = True
        return t

    # -- rendering
    def _renderer(self, msgid: int) -> _Compiled | None:
        c = self._compiled.get(msgid)
        if c is None:
            m = self._by_id.get(msgid)
            if m is None:
                return None
            c = self._compiled[msgid] = _Compiled(m.fmt, self.strings)
        return c

    def _batch_fn(self, msgid: int, style: str) -> Callable[..., list[str]]:
        """The generated column renderer of one message in one line style."""
        key = (msgid, style)
        f = self._batches.get(key)
        if f is None:
            m, c = self._by_id[msgid], self._renderer(msgid)
            if style == "hist":
                f = c.batch(f"%06d.%06d {_esc(m.fn)}#%d@%d: ", 4)
            else:
                head = "panic" if m.kind == "panic" else m.fn
                f = c.batch(f"[%5d.%06d] cpu%d: {_esc(head) + ': ' if head else ''}", 3)
            self._batches[key] = f
        return f

    def render_message(self, msgid: int, args: Sequence[int]) -> str:
        """The message text of one record: its format applied to its integer args."""
        a = [int(x) for x in args]
        c = self._renderer(msgid)
        if c is None:
            return f"<unknown message {msgid}> " + " ".join(map(str, a))
        if len(a) < c.nargs:
            a += [0] * (c.nargs - len(a))
        return c.render(a)

    # -- JSON
    def to_json(self) -> dict:
        return {
            "schema": CATALOGUE_SCHEMA,
            "messages": [_message_json(m) for m in self.messages],
            "strings": list(self.strings),
        }

    @classmethod
    def from_json(cls, d: object, source: str = "catalogue") -> Catalogue:
        """Parse :meth:`to_json` output; malformed input raises BadInput naming ``source``."""
        if not isinstance(d, dict):
            raise BadInput(f"{source}: catalogue is not a JSON object")
        if d.get("schema") != CATALOGUE_SCHEMA:
            raise BadInput(f"{source}: catalogue schema {d.get('schema')!r}, "
                           f"this smp reads {CATALOGUE_SCHEMA}")
        try:
            msgs = [Message(int(m["id"]), m["fn"], m["fmt"], m.get("kind", "printf"),
                            m.get("hist", ""), m.get("tag", ""))
                    for m in d.get("messages", [])]
            strings = d.get("strings", [])
            if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
                raise ValueError("strings must be a list of strings")
            return cls(msgs, strings)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BadInput(f"{source}: bad catalogue: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Catalogue:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise BadInput(f"{path}: cannot read catalogue: {e.strerror or e}") from None
        except ValueError as e:
            raise BadInput(f"{path}: catalogue is not valid JSON: {e}") from None
        return cls.from_json(d, str(path))


def _message_json(m: Message) -> dict:
    d = asdict(m)
    if not m.tag:
        del d["tag"]           # as catalogues were before tags existed
    return d


# ---------------------------------------------------------------- lines


def _fields(rec: object) -> tuple[int, int, int, int, list[int]]:
    """(time, cpu, msgid, call, args) of a numpy record or a (time, seq, cpu, msgid,
    call, args) tuple."""
    if isinstance(rec, np.void):
        t, _seq, cpu, msgid, call, args = rec.item()
        return t, cpu, msgid, call, args.tolist()  # item() already gave Python ints
    t, _seq, cpu, msgid, call, args = rec
    return int(t), int(cpu), int(msgid), int(call), [int(x) for x in args]


def _console(t: int, cpu: int, msgid: int, call: int, args: list[int], cat: Catalogue) -> str:
    # seconds.microseconds by integer division, as the kernel prints them: same width as
    # %12.6f but truncated, so console.log and hist.log agree on a record's time and no
    # float rounding enters the (byte-compared) lockstep logs
    us = t // 1000
    stamp = f"[{us // 1000000:5d}.{us % 1000000:06d}] cpu{cpu}: "
    c = cat._renderer(msgid)
    if c is None:
        return f"{stamp}<unknown message {msgid}> {' '.join(map(str, args))}"
    m = cat._by_id[msgid]
    head = "panic" if m.kind == "panic" else m.fn
    return f"{stamp}{head}: {c.render(args)}" if head else stamp + c.render(args)


def _hist(t: int, cpu: int, msgid: int, call: int, args: list[int], cat: Catalogue) -> str:
    us = t // 1000
    c = cat._renderer(msgid)
    if c is None:
        return (f"{us // 1000000:06d}.{us % 1000000:06d} ?#{call}@{cpu}: "
                f"<unknown message {msgid}> {' '.join(map(str, args))}")
    return (f"{us // 1000000:06d}.{us % 1000000:06d} {cat._by_id[msgid].fn}#{call}@{cpu}: "
            f"{c.render(args)}")


def console_line(rec: object, cat: Catalogue) -> str:
    """Kernel-console rendering of one record:
    ``[     2.518370] cpu1: pmap_steal_ptp: stole PTP pa 0x01a3c000 ...``.

    Panic records read ``cpuN: panic: <message>``; a message without a function name
    drops the ``fn: `` part.
    """
    return _console(*_fields(rec), cat)


def hist_line(rec: object, cat: Catalogue) -> str:
    """UVMHIST rendering of one record: ``%06d.%06d fn#call@cpu: message``."""
    return _hist(*_fields(rec), cat)


def _esc(text: str) -> str:
    return text.replace("%", "%%")


def _render_batch(records: np.ndarray, cat: Catalogue, style: str) -> list[str]:
    """Lines for an array of records in array order, one message at a time.

    Records are grouped by message id so that each group is formatted by one generated
    function over plain column lists (numpy prepares seconds, microseconds and unsigned
    arguments per column); the lines then go back to their records' positions.
    """
    n = len(records)
    if n == 0:
        return []
    us = records["time"] // 1000
    sec, usec = (us // 1000000), (us % 1000000)
    msgids = records["msgid"]
    order = np.argsort(msgids, kind="stable")
    sorted_ids = msgids[order]
    bounds = np.flatnonzero(np.diff(sorted_ids)) + 1
    out = np.empty(n, dtype=object)
    for idx in np.split(order, bounds):
        msgid = int(msgids[idx[0]])
        sub = records[idx]
        c = cat._renderer(msgid)
        if c is None:
            one = _console if style == "console" else _hist
            lines = [one(t, cpu, msgid, call, args, cat) for t, cpu, call, args in zip(
                sub["time"].tolist(), sub["cpu"].tolist(), sub["call"].tolist(),
                sub["args"].tolist(), strict=True)]
        else:
            fn = cat._batch_fn(msgid, style)
            if style == "console":
                pre = [sec[idx].tolist(), usec[idx].tolist(), sub["cpu"].tolist()]
            else:
                pre = [sec[idx].tolist(), usec[idx].tolist(), sub["call"].tolist(),
                       sub["cpu"].tolist()]
            lines = fn(*pre, *c.columns(sub["args"]))
        out[idx] = lines
    return out.tolist()


def console_lines(records: np.ndarray, cat: Catalogue) -> list[str]:
    """:func:`console_line` for every record of an array, in array order (fast path)."""
    return _render_batch(records, cat, "console")


def hist_lines(records: np.ndarray, cat: Catalogue) -> list[str]:
    """:func:`hist_line` for every record of an array, in array order (fast path)."""
    return _render_batch(records, cat, "hist")


def merge_order(records: np.ndarray) -> np.ndarray:
    """Records sorted by (time, cpu, seq): one timeline out of per-CPU rings.

    Like ``kernhist_dump_histories()``, which merges histories by timestamp; ties break
    by CPU, then by that CPU's sequence, so the order is total and reproducible.
    """
    return records[np.lexsort((records["seq"], records["cpu"], records["time"]))]


# ---------------------------------------------------------------- events.bin


def events_header() -> bytes:
    """The 64-byte header of an events file."""
    h = np.zeros((), EVENTS_HDR_DTYPE)
    h["magic"] = EVENTS_MAGIC
    h["schema"] = EVENTS_SCHEMA
    h["recsize"] = REC_DTYPE.itemsize
    return h.tobytes()


def write_events(path: str | os.PathLike, records: np.ndarray) -> None:
    """Write a complete events file: header, then the records as they are."""
    if records.dtype != REC_DTYPE:
        raise ValueError(f"records have dtype {records.dtype}, not REC_DTYPE")
    with open(path, "wb") as f:
        f.write(events_header())
        f.write(np.ascontiguousarray(records).tobytes())


def read_events(path: str | os.PathLike, partial_ok: bool = False) -> np.ndarray:
    """Read an events file into a REC_DTYPE array (in file order).

    A missing, truncated or corrupt file raises BadInput naming it.  ``partial_ok``
    accepts a trailing partial record (a run whose parent died mid-write) and drops it.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw = f.read(EVENTS_HDR_SIZE)
            if len(raw) < EVENTS_HDR_SIZE:
                raise BadInput(f"{path}: truncated events file ({len(raw)}-byte header, "
                               f"expected {EVENTS_HDR_SIZE})")
            h = np.frombuffer(raw, EVENTS_HDR_DTYPE)[0]
            if bytes(h["magic"]) != EVENTS_MAGIC:
                raise BadInput(f"{path}: not an smp events file (bad magic)")
            if int(h["schema"]) != EVENTS_SCHEMA:
                raise BadInput(f"{path}: events schema {int(h['schema'])}, "
                               f"this smp reads {EVENTS_SCHEMA}")
            if int(h["recsize"]) != REC_DTYPE.itemsize:
                raise BadInput(f"{path}: corrupt events file (record size {int(h['recsize'])},"
                               f" expected {REC_DTYPE.itemsize})")
            n, extra = divmod(size - EVENTS_HDR_SIZE, REC_DTYPE.itemsize)
            if extra and not partial_ok:
                raise BadInput(f"{path}: truncated events file ({extra} bytes of a partial "
                               f"record after {n} records)")
            records = np.fromfile(f, REC_DTYPE, n)
    except OSError as e:
        raise BadInput(f"{path}: cannot read events file: {e.strerror or e}") from None
    if len(records) != n:  # the file shrank while we read it
        raise BadInput(f"{path}: truncated events file (read {len(records)} of {n} records)")
    return records
