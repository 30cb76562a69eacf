"""Templates and aliases for printf-style lines nobody gave us a format for.

Our own records carry their format (``catalogue.json``), so their template is exact.  A
foreign log -- a real NetBSD console, a ``console.log`` without its ``events.bin`` -- only
has text, and its templates have to be mined.  Drain3 [TOOLING-ANCHORS R31] does this
with a masking step (regexes that turn ``0x...`` into ``<HEX>``, numbers into ``<NUM>``)
followed by a similarity tree.  Kernel messages are short and their variable parts are
almost always numbers, addresses and names of things, so the masking step alone does most
of the work; we keep only it, with these rules, in this order:

    <HEX>    0x followed by hex digits (first, over the whole text)
    <MAC>    six or more hex bytes joined by ":" or "-": MAC addresses, EUI-64s, hardware
             ids, MD5 key fingerprints
    <TIME>   12:34:56, 12:34:56.789
    <DAY>    a day name in a date: before a month name or a number (Sun Jul 10, Tue, 4 Jan)
    <MONTH>  a month name in a date: before a day number, its padding folded (Jul  9 and
             Jul 10 have one template), or after a number (10-Jul-2005)
    <PATH>   an absolute path of two or more components (/udev/vcs1); /netbsd stays
    <HOST>   an IPv4 address, or a DNS name ending in a generic top-level domain (two labels
             or more) or a country code (three or more), so file names (mice.c, a.out,
             vsftpd.conf) stay; "ADDRESS ()" (no reverse name) reads "<HOST> (<HOST>)"
    <KEY>    base64 runs of 20 characters or more with upper, lower case and a digit
             (SSH fingerprints SHA256:..., keys)
    <HEX>    a bare word of 8 or of 16+ hex digits with a letter and a digit; 16+ digits
             without letters; 8 digits without letters on a line that has a lettered one
             (iar 00106570 dear 0245a2c8 -- a lone 47332148 is a decimal count)
    <PID>    the number after "pid", "Pid", "PID" ("pid 123", "pid=123", "PID: 123");
             "pid 123 (cc1)" and "process 123 (java)" also mask the name: (<*>)
    <*>      the command after "Comm:"/"comm:" (Linux oops lines)
    <NUM>    every other run of decimal digits (with its fraction: 733.38, 1.5.1)

so ``UVM: pid 123 (cc1), uid 0 killed: out of swap`` becomes ``UVM: pid <PID> (<*>), uid
<NUM> killed: out of swap``.  Digits inside words are variables too (``cpu1`` and ``cpu2``
both give ``cpu<NUM>``, ``exit1:`` gives ``exit<NUM>:``): a rule with no exceptions is one
a reader can predict.  Words that are not numbers stay, so a user name (``session opened
for user cyrus``) still splits a template.  The similarity merge of Drain3 is left out on
purpose: it merges ``get ptp failed`` with ``get pv failed``, and a comparison tool must not
hide a message.  On loghub's Linux_2k and BGL_2k samples these masks group 88% and 97% of
the lines as loghub's reference templates do (tests/test_loghub.py).

An unstamped console whose lines mostly start with ``cpuN: `` for several N is an MP
kernel's: :func:`mp_console` tells ``smp.tools.trace_input`` to read that prefix as the
CPU column (a 2001 NetBSD console, where only a device named cpu0 attaches, is not one).

Speed: mining a million lines with a regex pass per mask costs seconds, so lines are first
grouped by *shape* -- the line with ``0x...`` masked and every digit turned into ``0``
(one C-level ``re.sub`` and one ``str.translate`` over the whole text).  All masks above
depend only on where digits are, never on their values, so every line of one shape has the
same template and the masks run once per shape.  (No rule may look at a digit's value:
"an 8-digit word with a leading zero" would be such a rule, and the property test of
tests/test_compare.py would catch it.)

Aliases (the sequence view): collapsing every pointer to ``<HEX>`` (as diff-logs, Mozilla's
normalize.sh and Valgrind's filters do) loses aliasing -- "the same PTP page reused" and
"two different pages" look alike.  :class:`AliasNormalizer` instead renames addresses to
``P1, P2, ...`` and pids to ``I1, I2, ...`` in first-seen order, per run, so two runs that
do the same thing with different addresses give the same text and a reused page keeps its
name.  Only hex values of at least 0x1000 (a page) are addresses; smaller ones are flags
and stay as they are.  Times are masked; every other number stays, because in a same-seed
comparison a different count is a divergence.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice

import numpy as np

# one full-text pass: literal "0x" first lets the regex engine skip ahead with a fast search
HEX0X = re.compile(r"0[xX](?<!\w0[xX])[0-9a-fA-F]+")
_DIGITS_TO_ZERO = str.maketrans("123456789", "000000000")

_TIME = re.compile(r"(?<![\d:])\d{1,2}:\d\d:\d\d(?:\.\d+)?")
# colon- or dash-separated hex bytes, six or more: MAC addresses, EUI-64s, hardware ids,
# MD5 key fingerprints (before <TIME>: "16:32:00:0d:60:e9" is not a time)
_MAC = re.compile(r"(?<![\w.-])[0-9A-Fa-f]{2}(?:([:-])[0-9A-Fa-f]{2})(?:\1[0-9A-Fa-f]{2}){4,}"
                  r"(?![\w-]|\.\w)")
_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
          r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_DAY = (r"(?:Mon(?:day)?|Tue(?:s(?:day)?)?|Wed(?:nesday)?|Thu(?:rs?(?:day)?)?|Fri(?:day)?"
        r"|Sat(?:urday)?|Sun(?:day)?)")
# day and month names where they are part of a date: a day before a month or a number, a
# month before a day number (its padding blanks folded: "Jul  9" and "Jul 10" are one
# shape) or after one ("10-Jul-2005", "4 Jan")
_DAY_NAME = re.compile(rf"\b{_DAY}\b,?(?= +(?:{_MONTH}\b|\d))")
_MONTH_NAME = re.compile(rf"\b{_MONTH}\b\.?(?: +(?=\d)|(?=-\d))|(?<=\d[ -]){_MONTH}\b")
# an absolute path of two or more components ("/udev/vcs1", "/bgl/apps/x/a.out"); a single
# "/netbsd" stays, so does anything glued to a word ("a/b")
_PATH = re.compile(r"(?<![\w.~/-])/[\w.+~@%-]*(?:/+[\w.+~@%-]+)+/?")
_TLD = (r"(?:com|net|org|edu|gov|mil|int|info|biz|arpa|name|pro|aero|coop|museum|local"
        r"|localdomain|lan)")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# a host: an IPv4 address, or a DNS name that ends in a generic top-level domain (two labels
# or more: zummit.com) or in a country code (three labels or more: virtua.com.br), so that
# file names (mice.c, a.out, vsftpd.conf, libc.so) stay
_HOST = re.compile(rf"(?<![\w.@-])(?:\d{{1,3}}(?:\.\d{{1,3}}){{3}}"
                   rf"|(?:{_LABEL}\.)+{_TLD}|(?:{_LABEL}\.){{2,}}[A-Za-z]{{2}})"
                   rf"(?![\w-]|\.\w)", re.I)
# "ADDRESS (NAME)", NAME empty when the address has no reverse name (ftpd, sshd, tcpd)
_HOST_NAME = re.compile(r"<HOST> \(\)")
# base64 runs (SSH key fingerprints "SHA256:...", keys, tokens): twenty characters or more
# with an upper-case letter, a lower-case letter and a digit
_B64 = re.compile(r"(?<![\w+/=])(?!/)(?=[A-Za-z0-9+/]*[A-Z])(?=[A-Za-z0-9+/]*[a-z])"
                  r"(?=[A-Za-z0-9+/]*\d)[A-Za-z0-9+/]{20,}={0,2}(?![\w+/=])")
# bare hex words: 8 or 16 digits or more with a letter and a digit; 16 digits or more
# without letters (a 64-bit register, a serial number); and an 8-digit word without letters
# on a line that has a lettered one (iar 00106570 dear 0245a2c8: a register dump prints its
# neighbours in hex too; a lone 47332148 is a decimal count)
_BAREHEX = re.compile(r"\b(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)"
                      r"(?:[0-9a-fA-F]{16,}|[0-9a-fA-F]{8})\b")
_BAREDEC16 = re.compile(r"\b\d{16,}\b")
_BAREDEC8 = re.compile(r"(?<![\w.])\d{8}(?![\w.])")
_PROC_NAME = re.compile(r"\b(process )\d+ \([^()]{1,32}\)")
_PID_NAME = re.compile(r"\b([Pp](?:id|ID)(?:: |[ =:#])?)\d+ \([^()\s]{1,32}\)")
_PID = re.compile(r"\b([Pp](?:id|ID)(?:: |[ =:#])?)\d+")
_COMM = re.compile(r"\b([Cc]omm: )\S+")
_NUM = re.compile(r"\d+(?:\.\d+)*")

# reported in compare's normalization section, in the order they apply
MASKS = ("hex", "mac", "time", "date", "path", "host", "key", "pid", "comm", "num")


def mask_line(line: str) -> str:
    """The mined template of one line (see the module docstring for the rules)."""
    s = HEX0X.sub("<HEX>", line)
    return _mask_shape(s)


def _mask_shape(s: str) -> str:
    """Masks after HEX0X; ``s`` may be a real line or any line of the same shape: every
    rule looks at letters and at where digits are, never at a digit's value."""
    s = _MAC.sub("<MAC>", s)
    s = _TIME.sub("<TIME>", s)
    s = _DAY_NAME.sub("<DAY>", s)
    s = _MONTH_NAME.sub(lambda m: "<MONTH> " if m.group().endswith(" ") else "<MONTH>", s)
    s = _PATH.sub("<PATH>", s)
    s = _HOST.sub("<HOST>", s)
    s = _HOST_NAME.sub("<HOST> (<HOST>)", s)
    s = _B64.sub("<KEY>", s)
    lettered = _BAREHEX.search(s) is not None
    s = _BAREHEX.sub("<HEX>", s)
    s = _BAREDEC16.sub("<HEX>", s)
    if lettered:
        s = _BAREDEC8.sub("<HEX>", s)
    s = _PROC_NAME.sub(r"\1<PID> (<*>)", s)
    s = _PID_NAME.sub(r"\1<PID> (<*>)", s)
    s = _PID.sub(r"\1<PID>", s)
    s = _COMM.sub(r"\1<*>", s)
    return _NUM.sub("<NUM>", s)


# ---------------------------------------------------------------- the CPU column

# "cpuN: " at the start of a line of an unstamped console: groups as trace_input's console
# patterns have them (seconds, fraction, the line after the stamp, cpu, body)
MP_CONSOLE = re.compile(r"^()()((?:cpu(\d+): )?(.*))$", re.M)
_MP_PREFIX = re.compile(r"cpu(\d+): ")


def mp_console(sample: Sequence[str]) -> bool:
    """Is this unstamped console an MP kernel's, whose lines say which CPU printed them?

    A uniprocessor console (or a 2001 NetBSD one) starts a few lines with ``cpu0:`` or
    ``cpu1:`` because a device of that name is attaching; an MP console whose printf
    prefixes the CPU does it on most lines, for more than one CPU.  So: at least half of
    the non-empty lines start with ``cpuN: ``, with two CPU numbers or more.
    """
    lines = [s for s in sample if s]
    cpus = [m.group(1) for m in map(_MP_PREFIX.match, lines) if m]
    return bool(lines) and 2 * len(cpus) >= len(lines) and len(set(cpus)) >= 2


@dataclass
class Mined:
    """What :func:`mine` learnt besides the template ids: how many shapes, and whether any
    line has a time or a bare hex word (both depend on the shape only), so that alias
    normalization can leave out the regex alternatives that cannot match."""

    shapes: int = 0
    time: bool = False
    bare: bool = False


def mine(bodies: Sequence[str], templates: dict[str, int]) -> tuple[np.ndarray, Mined]:
    """Template ids of ``bodies``, adding new templates to ``templates`` (text -> id).

    Lines are grouped by shape first (module docstring); the masks run once per shape,
    on the shape's first line, so the template shows real text where nothing was masked.
    """
    info = Mined()
    if not bodies:
        return np.zeros(0, np.int32), info
    # bodies never contain "\n" (they were split on it), so the split gives them back
    shapes = HEX0X.sub("<HEX>", "\n".join(bodies)).translate(_DIGITS_TO_ZERO).split("\n")
    assert len(shapes) == len(bodies)
    # dense ids in order of first appearance; dict.fromkeys and map run in C
    shape_ids = {s: k for k, s in enumerate(dict.fromkeys(shapes))}
    sid_arr = np.fromiter(map(shape_ids.__getitem__, shapes), np.int64, len(shapes))
    del shapes
    # the first line of every shape, in shape-id order (ids are dense from 0)
    first = np.unique(sid_arr, return_index=True)[1]
    shape_tid = np.empty(len(shape_ids), np.int32)
    for k, i in enumerate(first.tolist()):
        s = HEX0X.sub("<HEX>", bodies[i])
        info.time = info.time or bool(_TIME.search(s))
        info.bare = info.bare or bool(_BAREHEX.search(s))
        t = _mask_shape(s)
        shape_tid[k] = templates.setdefault(t, len(templates))
    info.shapes = len(shape_ids)
    return shape_tid[sid_arr], info


# ---------------------------------------------------------------- aliases

# One alternation, so the order of first appearance is the order in the text.  Markers
# \x02...\x03 delimit an alias inside normalized text (so that "P1" written by the kernel
# never equals an alias): the alias-blind form drops the number, the display form the
# markers.
# Alternatives that start with a literal ("0x", "pid") let the regex engine skip ahead;
# the time and bare-hex ones cannot, so they are left out for logs that have none.
_PARTS = {
    "time": r"(?P<time>(?<![\d:])\d{1,2}:\d\d:\d\d(?:\.\d+)?)",
    "hex": r"(?P<hex>0[xX](?<!\w0[xX])[0-9a-fA-F]+)",
    "bare": (r"(?P<bare>\b(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)"
             r"(?:[0-9a-fA-F]{16}|[0-9a-fA-F]{8})\b)"),
    "pid": r"(?P<pidp>pid(?<!\wpid)[ =:#]?)(?P<pid>\d+)",  # pid(?<!\wpid) == \bpid, faster
}


@lru_cache(maxsize=4)
def _alias_rx(time: bool, bare: bool) -> re.Pattern:
    """The alternation without capturing groups: findall gives whole matches, and which
    alternative matched is plain from the text (a time has ":", a pid starts with "pid",
    an address with "0x" or not)."""
    parts = (["time"] if time else []) + ["hex"] + (["bare"] if bare else []) + ["pid"]
    return re.compile("|".join(re.sub(r"\(\?P<\w+>", "(?:", _PARTS[p]) for p in parts))


ADDR_MIN = 0x1000  # hex values below a page are flags, not addresses


class AliasNormalizer:
    """Renames addresses (``P<n>``) and pids (``I<n>``) in first-seen order, for one run.

    Feed lines in order with :meth:`normalize` (or :meth:`skip` for lines whose text is
    not needed but whose addresses must still be numbered).  ``addr``/``pid`` map value ->
    alias number; ``substitutions`` counts renamed occurrences.
    """

    def __init__(self, time: bool = True, bare: bool = True) -> None:
        self.addr: dict[int, int] = {}
        self.pid: dict[int, int] = {}
        self.substitutions = 0
        self.rx = _alias_rx(time, bare)
        self.rx_split = re.compile(f"({self.rx.pattern})")
        self._full: dict[str, str] = {}

    def _alias(self, tok: str) -> str:
        """The replacement of one matched token, numbering it if it is new."""
        if tok.startswith("pid"):
            head = tok.rstrip("0123456789")
            n = self.pid.setdefault(int(tok[len(head):]), len(self.pid) + 1)
            return f"{head}\x02I{n}\x03"
        if ":" in tok:
            return "<TIME>"
        v = int(tok, 16)
        if v < ADDR_MIN:
            return tok
        return f"\x02P{self.addr.setdefault(v, len(self.addr) + 1)}\x03"

    def _number(self, toks: list[str]) -> None:
        full = self._full  # a token's replacement never changes once numbered
        for tok, n in Counter(toks).items():
            r = full.get(tok)
            if r is None:
                r = full[tok] = self._alias(tok)
            if "\x02" in r:
                self.substitutions += n

    def normalize(self, lines: Sequence[str]) -> list[str]:
        """Normalized (marked) text of consecutive lines.

        Everything per occurrence runs in C: one split with the alternation as a group
        gives the text between tokens and the tokens, a slice assignment puts the aliases
        in, a join makes the text; Python numbers each distinct token once, in order of
        first appearance.
        """
        if not lines:
            return []
        pieces = self.rx_split.split("\n".join(lines))
        toks = pieces[1::2]
        self._number(toks)
        pieces[1::2] = map(self._full.__getitem__, toks)
        return "".join(pieces).split("\n")

    def skip(self, lines: Iterable[str]) -> None:
        """Number the aliases of consecutive lines without producing text (fast path):
        :meth:`normalize` without the substitution."""
        self._number(self.rx.findall("\n".join(lines)))

    def aliases(self, limit: int | None = None) -> dict[str, dict[str, str]]:
        """The alias tables, value text -> alias name, the first ``limit`` of each (for
        the normalization report)."""
        return {"addresses": {f"0x{v:08x}": f"P{n}" for v, n in
                              islice(self.addr.items(), limit)},
                "pids": {str(v): f"I{n}" for v, n in islice(self.pid.items(), limit)}}


_BLIND = re.compile("\\d+\x03")  # inside markers, only an alias number precedes \x03


def blind(marked: Sequence[str]) -> list[str]:
    """Alias-blind form of normalized lines: ``P3`` and ``P4`` both become ``P``."""
    if not marked:
        return []
    return _BLIND.sub("\x03", "\n".join(marked)).split("\n")


def display(marked: str) -> str:
    """Normalized text for people: the markers removed."""
    return marked.replace("\x02", "").replace("\x03", "")
