"""Pictures of an ``smp experiment --sweep``: where stealing starts, per kernel configuration.

One figure per load script, five panels -- PTP steals, pmfail waits, out-of-swap kills,
swapouts (medians over the runs that finished) and the share of runs that panicked --
against the swept value, one line per kernel configuration. The swept values are drawn in
the order given, evenly spaced and labelled as typed (``16M``, ``32M``), since sizes and
counts rarely sit on a useful linear scale. A value whose runs all failed to finish has no
point on the median panels (the gap is the finding), but counts on the panic panel.

Written as PNG and SVG beside sweep.csv; needs matplotlib (``pip install 'smp[plot]'``),
without it only the CSV is written and stderr says so.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

PANELS = [("ptp_steals", "PTP steals (median)"), ("pmfail", "pmfail waits (median)"),
          ("oom_kills", "out-of-swap kills (median)"), ("swapouts", "swapouts (median)"),
          ("panics", "runs that panicked")]


def plot_sweep(cells: list, key: str, out: Path) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("smp experiment: matplotlib is not installed (pip install 'smp[plot]'): "
              "wrote sweep.csv, no pictures", file=sys.stderr)
        return []
    values = list(dict.fromkeys(c.value for c in cells))
    x = {v: i for i, v in enumerate(values)}
    written: list[Path] = []
    for script in dict.fromkeys(Path(c.script).stem for c in cells):
        fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6),
                                 constrained_layout=True)
        for ax, (metric, title) in zip(axes, PANELS, strict=True):
            for config in dict.fromkeys(c.config for c in cells):
                xs, ys = [], []
                for c in cells:
                    if Path(c.script).stem != script or c.config != config:
                        continue
                    if metric == "panics":
                        if c.results:
                            xs.append(x[c.value])
                            ys.append(sum(r.get("panics", 0) for r in c.results) /
                                      len(c.results))
                        continue
                    vals = [r[metric] for r in c.finished() if metric in r]
                    if vals:
                        xs.append(x[c.value])
                        ys.append(statistics.median(vals))
                ax.plot(xs, ys, marker="o", label=config)
            ax.set_title(title, fontsize=10)
            ax.set_xticks(range(len(values)), values)
            ax.set_xlabel(key)
            if metric == "panics":
                ax.set_ylim(-0.05, 1.05)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7, loc="best")
        fig.suptitle(f"smp experiment --sweep {key}: {script}", fontsize=11)
        for ext in ("png", "svg"):
            p = out / f"sweep-{script}.{ext}"
            fig.savefig(p, dpi=110)
            written.append(p)
        plt.close(fig)
    return written
