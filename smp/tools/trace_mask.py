"""Templates and aliases for printf-style lines nobody gave us a format for.

Our own records carry their format (``catalogue.json``), so their template is exact.  A
foreign log -- a real NetBSD console, a ``console.log`` without its ``events.bin`` -- only
has text, and its templates have to be mined.  Drain3 [TOOLING-ANCHORS R31] does this
with a masking step (regexes that turn ``0x...`` into ``<HEX>``, numbers into ``<NUM>``)
followed by a similarity tree.  Kernel messages are short and their variable parts are
almost always numbers, so the masking step alone does most of the work; we keep only it,
with these rules, in this order:

    <TIME>   12:34:56, 12:34:56.789
    <HEX>    0x followed by hex digits; a bare 8- or 16-digit hex word with a letter and a digit
    <PID>    the number after "pid" ("pid 123", "pid=123"); "pid 123 (cc1)" also masks the
             command name in parentheses as (<*>)
    <NUM>    every other run of decimal digits (with its fraction: 733.38, 1.5.1)

so ``UVM: pid 123 (cc1), uid 0 killed: out of swap`` becomes ``UVM: pid <PID> (<*>), uid
<NUM> killed: out of swap``.  Digits inside words are variables too (``cpu1`` and ``cpu2``
both give ``cpu<NUM>``, ``exit1:`` gives ``exit<NUM>:``): a rule with no exceptions is one
a reader can predict.  The similarity merge of Drain3 is left out on purpose: it merges
``get ptp failed`` with ``get pv failed``, and a comparison tool must not hide a message.

Speed: mining a million lines with a regex pass per mask costs seconds, so lines are first
grouped by *shape* -- the line with ``0x...`` masked and every digit turned into ``0``
(one C-level ``re.sub`` and one ``str.translate`` over the whole text).  All masks above
depend only on where digits are, never on their values, so every line of one shape has the
same template and the masks run once per shape.

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
_BAREHEX = re.compile(r"\b(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)"
                      r"(?:[0-9a-fA-F]{16}|[0-9a-fA-F]{8})\b")
_PID_NAME = re.compile(r"\b(pid[ =:#]?)\d+ \([^()\s]{1,32}\)")
_PID = re.compile(r"\b(pid[ =:#]?)\d+")
_NUM = re.compile(r"\d+(?:\.\d+)*")

MASKS = ("time", "hex", "pid", "num")  # reported in compare's normalization section


def mask_line(line: str) -> str:
    """The mined template of one line (see the module docstring for the rules)."""
    s = HEX0X.sub("<HEX>", line)
    return _mask_shape(s)


def _mask_shape(s: str) -> str:
    """Masks after HEX0X; ``s`` may be a real line or any line of the same shape."""
    s = _TIME.sub("<TIME>", s)
    s = _BAREHEX.sub("<HEX>", s)
    s = _PID_NAME.sub(r"\1<PID> (<*>)", s)
    s = _PID.sub(r"\1<PID>", s)
    return _NUM.sub("<NUM>", s)


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
