"""The sequence view of `smp compare`: first divergence of two logs, then re-synchronization.

Anchors: virtjs ``cpu-diff`` (compare two execution logs line by line, re-synchronize
after a divergence by matching a key column) and gem5's advice to drop the timing
columns (``Exec,-ExecTicks``) before comparing two runs that execute the same thing at
different speeds.  A line's identity here is its text without the timestamp -- CPU,
function, message, UVMHIST call number -- with addresses and pids renamed per run in
first-seen order (``P1``, ``I1``; :mod:`smp.tools.trace_mask`), so two runs that do the
same thing at different addresses agree, and a reused page keeps its name.

Two runs of one seed in lockstep mode must agree line for line; the first line where
they do not is where to start reading.  Free-mode runs are not replayable and diverge
early, but the view works on any two logs.

Algorithm, for each divergence asked for:

1. raw fast path: compare the logs' raw line keys (no aliasing) with numpy; up to the
   first raw difference both runs have seen the same addresses in the same order, so
   their alias numbering is identical too and nothing needs normalizing;
2. from there, compare alias-normalized keys chunk by chunk until they differ: that is
   the divergence;
3. re-synchronize: within a window after the divergence find the nearest pair of lines
   (smallest a + b skipped) from which ``sync`` consecutive lines agree on their
   *alias-blind* keys (aliases reduced to ``P``/``I``: one extra allocation on one side
   renumbers every later alias, and must not prevent re-synchronizing);
4. restart alias numbering at the re-synchronization point on both sides and go on.

A divergence where the lines are the same but for their aliases (re-synchronized at once)
is reported as such: "the same PTP page" on one side, "a different one" on the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from smp.tools.trace_input import SeqSource


@dataclass
class Divergence:
    """One divergence (line numbers are 0-based indices; text output adds 1)."""

    a: int
    b: int
    why: str                       # "lines differ" | "aliases differ" | "A ended" | "B ended"
    before: list[tuple[int, int, str]] = field(default_factory=list)
    a_lines: list[tuple[int, str]] = field(default_factory=list)
    b_lines: list[tuple[int, str]] = field(default_factory=list)
    a_skipped: int = 0             # lines of A between the divergence and the resync
    b_skipped: int = 0
    resync: tuple[int, int] | None = None
    after: list[tuple[int, int, str]] = field(default_factory=list)


@dataclass
class SeqResult:
    n_a: int
    n_b: int
    identical: bool
    matched: int                   # lines that agree before the first divergence
    divergences: list[Divergence]
    aliases: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        for dv in d["divergences"]:
            dv["before"] = [{"a": i, "b": j, "text": t} for i, j, t in dv["before"]]
            dv["after"] = [{"a": i, "b": j, "text": t} for i, j, t in dv["after"]]
            dv["a_lines"] = [{"line": i, "text": t} for i, t in dv["a_lines"]]
            dv["b_lines"] = [{"line": i, "text": t} for i, t in dv["b_lines"]]
            dv["resync"] = (None if dv["resync"] is None
                            else {"a": dv["resync"][0], "b": dv["resync"][1]})
        return d


def first_mismatch(x: np.ndarray, y: np.ndarray) -> int:
    """Index of the first position where x and y differ (the shorter length if none)."""
    m = min(len(x), len(y))
    ne = np.flatnonzero(x[:m] != y[:m])
    return int(ne[0]) if len(ne) else m


def resync_point(ba: np.ndarray, bb: np.ndarray, sync: int, a_ends: bool,
                 b_ends: bool, skip_origin: bool = False) -> tuple[int, int] | None:
    """Nearest (i, j) with ba[i:i+sync] == bb[j:j+sync]: smallest i + j, then the most
    balanced (lines replaced rather than inserted on one side and deleted on the other).

    Near the ends of both logs fewer than ``sync`` lines may agree, if they are the last
    lines of both.  ``skip_origin`` excludes (0, 0).  None when there is no such point in
    the windows.
    """
    la, lb = len(ba), len(bb)
    where: dict[int, list[int]] = {}
    for j, key in enumerate(bb.tolist()):
        where.setdefault(key, []).append(j)
    best: tuple[int, int, int, int] | None = None  # (i + j, |i - j|, i, j)
    for i, key in enumerate(ba.tolist()):
        if best is not None and i > best[0]:
            break
        # 64 candidates per line bound the work on long runs of one repeated line
        for j in where.get(key, ())[:64]:
            rank = (i + j, abs(i - j))
            if best is not None and rank >= best[:2]:
                if rank[0] > best[0]:
                    break
                continue
            if skip_origin and i == 0 and j == 0:
                continue
            k = min(sync, la - i, lb - j)
            if k < sync and not (a_ends and b_ends and la - i == lb - j):
                continue
            if np.array_equal(ba[i:i + k], bb[j:j + k]):
                best = (*rank, i, j)
    return None if best is None else (best[2], best[3])


def sequence(A: SeqSource, B: SeqSource, *, divergences: int = 1, context: int = 3,
             window: int = 2000, sync: int = 3, show: int = 8) -> SeqResult:
    """Find up to ``divergences`` divergences of A and B (module docstring)."""
    raw_a, raw_b = A.raw(), B.raw()
    ia = ib = 0
    A.start(0)
    B.start(0)
    out: list[Divergence] = []
    matched: int | None = None
    identical = False
    while len(out) < divergences:
        m = min(A.n - ia, B.n - ib)
        p = first_mismatch(raw_a[ia:ia + m], raw_b[ib:ib + m])
        chunk = 1024
        found = False
        while p < m:
            lo = max(0, p - context)
            hi = min(m, p + chunk)
            fa = A.full_keys(ia + lo, ia + hi)
            fb = B.full_keys(ib + lo, ib + hi)
            q = first_mismatch(fa[p - lo:], fb[p - lo:])
            if q < hi - p:
                p += q
                found = True
                break
            p = hi
            chunk = min(chunk * 2, 1 << 16)
        da, db = ia + p, ib + p
        if matched is None:
            matched = p
        if not found:
            if A.n - da == B.n - db:
                identical = not out
                break
            # one log goes on after the other ended
            dv = Divergence(da, db, "A ended" if da == A.n else "B ended")
            dv.before = _before(A, B, ia, ib, da, db, context)
            longer, start, dest = (B, db, dv.b_lines) if da == A.n else (A, da, dv.a_lines)
            end = min(longer.n, start + show)
            longer.full_keys(start, end)
            dest.extend((i, longer.text(i)) for i in range(start, end))
            dv.a_skipped, dv.b_skipped = A.n - da, B.n - db
            out.append(dv)
            break
        wa_end, wb_end = min(A.n, da + window), min(B.n, db + window)
        _, ba = A.keys(max(ia, da - context), wa_end)
        _, bb = B.keys(max(ib, db - context), wb_end)
        ba, bb = ba[da - max(ia, da - context):], bb[db - max(ib, db - context):]
        dv = Divergence(da, db, "lines differ")
        dv.before = _before(A, B, ia, ib, da, db, context)
        # a divergence right at a restart point cannot be an alias difference again (two
        # aliases of one value on one side, two values on the other): skip that line
        r = resync_point(ba, bb, sync, wa_end == A.n, wb_end == B.n,
                         skip_origin=(da, db) == (ia, ib) and bool(out))
        if r is None:
            dv.a_skipped, dv.b_skipped = wa_end - da, wb_end - db
        else:
            dv.a_skipped, dv.b_skipped = r
            dv.resync = (da + r[0], db + r[1])
            if r == (0, 0):
                dv.why = "aliases differ"
        na = dv.a_skipped if r is not None else min(show, wa_end - da)
        nb = dv.b_skipped if r is not None else min(show, wb_end - db)
        # an alias-only divergence shows the two lines whose aliases differ
        na, nb = (max(na, 1), max(nb, 1)) if dv.why == "aliases differ" else (na, nb)
        dv.a_lines = [(i, A.text(i)) for i in range(da, min(A.n, da + min(na, show)))]
        dv.b_lines = [(j, B.text(j)) for j in range(db, min(B.n, db + min(nb, show)))]
        out.append(dv)
        if dv.resync is None:
            break
        ia, ib = dv.resync
        A.start(ia)
        B.start(ib)
        # the lines after the resync, numbered afresh as the next search will see them
        k = min(context, A.n - ia, B.n - ib)
        if k > 0:
            A.full_keys(ia, ia + k)
            B.full_keys(ib, ib + k)
            dv.after = [(ia + t, ib + t, A.text(ia + t)) for t in range(k)]
    aliases = {"a": A.alias_counts(), "b": B.alias_counts()}
    return SeqResult(A.n, B.n, identical, matched or 0, out, aliases)


def _before(A: SeqSource, B: SeqSource, ia: int, ib: int, da: int, db: int,
            context: int) -> list[tuple[int, int, str]]:
    k = min(context, da - ia, db - ib)
    if k <= 0:
        return []
    A.full_keys(da - k, da)
    return [(da - k + t, db - k + t, A.text(da - k + t)) for t in range(k)]
