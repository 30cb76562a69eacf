"""``smp lockstat --plot FILE.png``: wait-time distributions per class and contention per CPU.

matplotlib is an optional extra (``pip install 'smp[plot]'``); it is imported here, lazily,
so every other report works without it.

What is drawn is what lockstat.json holds: totals over the whole run.  There is no time
axis, because the machine keeps no per-interval snapshots of its counters; a series of
contention over time needs the machine to dump the statistics at intervals (it could: the
counters are monotonic, so differences of snapshots would give exact per-interval figures).
Until then the second panel shows how contention was spread over the CPUs.
"""

from __future__ import annotations

from pathlib import Path

from smp.errors import BadInput
from smp.tools.lockstat_data import Lockstat, Selection, Stat, bucket_bounds, merge
from smp.tools.lockstat_report import fmt_ns

MAX_CLASSES = 8    # lines and bar groups beyond this many classes are unreadable


def _name(ls: Lockstat, klass: str, mode: str) -> str:
    if ls.classes.get(klass) == "rw":
        return klass + ("-W" if mode == "excl" else "-R")
    return klass


def figure(ls: Lockstat, sel: Selection, *, by_count: bool = False):
    """The two panels as a matplotlib Figure, or None when nothing in the selection was
    contended.  Both y axes are logarithmic: the classes of a run differ by orders of
    magnitude, and on a linear axis every class but the largest lies flat on zero."""
    try:
        import matplotlib
    except ImportError:
        raise BadInput("--plot: matplotlib is not installed "
                       "(pip install 'smp[plot]' or pip install matplotlib)") from None
    matplotlib.use("Agg")          # files only: no display needed
    import matplotlib.pyplot as plt

    recs = [r for r in ls.recs if sel.rec_ok(r) and r.stat.contended]
    per_class: dict[tuple[str, str], Stat] = merge(((r.klass, r.mode), r.stat) for r in recs)
    if not per_class:
        return None
    order = sorted(per_class, key=lambda k: (-per_class[k].wait_total, k))[:MAX_CLASSES]

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 8.5))
    nb = max(len(per_class[k].wait_hist) for k in order)
    # start one bucket before the first non-empty one: short waits are never 0..64 ns
    lo = max(0, min(next((b for b, v in enumerate(per_class[k].wait_hist) if v), 1)
                    for k in order) - 1)
    for k in order:
        h = per_class[k].wait_hist + [0] * (nb + 1 - len(per_class[k].wait_hist))
        ax1.step(range(lo, nb + 1), h[lo:], where="mid", label=f"{_name(ls, *k)} "
                 f"({per_class[k].contended} contended, avg {fmt_ns(per_class[k].wait_avg)})")
    ticks = list(range(lo, nb + 1, max(1, -(-(nb + 1 - lo) // 10))))
    ax1.set_xticks(ticks, [fmt_ns(bucket_bounds(b)[0]) for b in ticks])
    ax1.set_xlabel("wait time (log2 buckets, labelled by their lower bound)")
    # counts are integers: linear from 0 to 1 (an empty bucket stays drawable), log above
    ax1.set_yscale("symlog", linthresh=1)
    top = max(max(per_class[k].wait_hist) for k in order)
    yt = [0] + [m * 10**e for e in range(len(str(top)) + 1) for m in (1, 2, 5)
                if m * 10**e <= top * 2]
    ax1.set_yticks(yt, [str(v) for v in yt])
    ax1.set_ylim(0, top * 1.5)
    ax1.set_ylabel("contended acquisitions (log scale)")
    ax1.set_title("Wait-time distribution per lock class")
    ax1.legend(fontsize=8)

    width = 0.8 / len(order)
    for i, k in enumerate(order):
        by_cpu = [0.0] * ls.ncpu
        for r in recs:
            if (r.klass, r.mode) == k and r.cpu < ls.ncpu:
                by_cpu[r.cpu] += r.stat.contended if by_count else r.stat.wait_total / 1e6
        ax2.bar([c + i * width for c in range(ls.ncpu)], by_cpu, width,
                label=_name(ls, *k))
    ax2.set_yscale("log")      # a CPU that never waited has no bar
    ax2.set_xticks([c + 0.4 - width / 2 for c in range(ls.ncpu)],
                   [f"cpu{c}" for c in range(ls.ncpu)])
    ax2.set_ylabel(("contended acquisitions" if by_count else "wait time (ms)")
                   + " (log scale)")
    ax2.set_title("Contention per CPU: totals over the run (lockstat.json keeps no "
                  "per-interval snapshots, so no time axis)")
    ax2.legend(fontsize=8)
    fig.suptitle(f"smp lockstat {ls.run}  ({ls.elapsed_s:.2f} s, {ls.ncpu} CPUs)")
    fig.tight_layout()
    return fig


def plot(ls: Lockstat, sel: Selection, out: Path, *, by_count: bool = False) -> bool:
    """Draw the two panels into ``out``; False (nothing drawn) when nothing was contended."""
    fig = figure(ls, sel, by_count=by_count)
    if fig is None:
        return False
    import matplotlib.pyplot as plt

    try:
        fig.savefig(out, dpi=100)
    except (OSError, ValueError) as e:
        raise BadInput(f"{out}: cannot write the plot: {e}") from None
    finally:
        plt.close(fig)
    return True
