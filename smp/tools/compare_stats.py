"""Significance tests for per-template counts: exact binomial, Mann-Whitney U, BH FDR.

Thin wrappers around ``scipy.stats`` (a maintained implementation, tested far beyond what
a project of this size could), chosen for comparing how often a kernel message appears in
two sets of runs:

* :func:`binom_test` -- the conditional test for two Poisson counts: given a + b events,
  ``a ~ Binomial(a + b, E_A / (E_A + E_B))`` when both sides have the same rate per unit
  of exposure E (runs, or simulated seconds): ``scipy.stats.binomtest``, two-sided (the
  total probability of outcomes no more likely than the observed one).  It treats events
  as independent, which one run of a kernel rarely satisfies: prefer several seeds per
  side and the U test.
* :func:`mannwhitney_u` -- benchstat's default ``-delta-test utest``: compares the
  per-run values of two groups without assuming a distribution
  (``scipy.stats.mannwhitneyu``).  Up to :data:`EXACT_MAX_CELLS` (20 runs against 20)
  the p-value comes from U's exact null distribution (``method="exact"``); with tied
  values U is computed from mid-ranks and compared with that same distribution, which
  SciPy documents as "no correction is made for ties".  The normal approximation that
  SciPy's ``"auto"`` would pick for ties is *not* used for small groups: with 3 runs a
  side it gives p = 0.047 for counts 0,0,0 against 1,1,1, smaller than any ordering of six
  runs can justify (2 / C(6,3) = 0.1).  Larger groups use the normal approximation with
  tie and continuity corrections (``method="asymptotic"``).
* :func:`utest_min_p` -- the smallest p :func:`mannwhitney_u` can return for groups of
  n1 and n2 runs, computed by the same function on the most extreme data (every run of A
  below every run of B, each side all tied), so the note it feeds never contradicts a
  p-value in the table.
* :func:`bh_fdr` -- Benjamini-Hochberg q-values (``scipy.stats.false_discovery_control``):
  a table of 30 templates tested at p < 0.05 would flag one and a half by chance; q
  controls the expected share of false discoveries among the flagged rows instead.

SciPy is imported when a test runs, not when ``smp`` starts (it takes a second or two).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

EXACT_MAX_CELLS = 400  # exact U distribution up to n1 * n2 = 400 (e.g. 20 vs 20 runs)


def binom_test(a: int, n: int, p: float) -> float:
    """Two-sided exact p-value of ``a`` successes in ``n`` trials of probability ``p``.

    >>> round(binom_test(9, 10, 0.5), 6)   # 2 * (10 + 1) / 1024
    0.021484
    """
    if n <= 0:
        return 1.0
    if not 0 <= a <= n:
        raise ValueError(f"binom_test: a={a} outside 0..{n}")
    from scipy.stats import binomtest

    return float(min(1.0, binomtest(int(a), int(n), float(p)).pvalue))


def _method(n1: int, n2: int) -> str:
    return "exact" if n1 * n2 <= EXACT_MAX_CELLS else "asymptotic"


def mannwhitney_u(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(U of x, two-sided p) of the Mann-Whitney U test (module docstring for the method).

    >>> mannwhitney_u([1, 2, 3], [4, 5, 6])   # the most extreme of C(6,3) = 20 orderings
    (0.0, 0.1)
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("mannwhitney_u: both samples need at least one value")
    from scipy.stats import mannwhitneyu

    xs, ys = [float(v) for v in x], [float(v) for v in y]
    if len(set(xs) | set(ys)) == 1:
        # every value equal: nothing to tell apart (the asymptotic variance would be 0)
        return n1 * n2 / 2, 1.0
    r = mannwhitneyu(xs, ys, alternative="two-sided", method=_method(n1, n2))
    return float(r.statistic), float(min(1.0, r.pvalue))


@lru_cache(maxsize=256)
def utest_min_p(n1: int, n2: int) -> float:
    """The smallest two-sided p :func:`mannwhitney_u` gives for groups of n1 and n2 runs:
    2 / C(n1 + n2, n1) where the exact distribution is used."""
    return mannwhitney_u([0.0] * n1, [1.0] * n2)[1]


def bh_fdr(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg q-values, in the order of ``pvalues``.

    q(i) = min over j >= i (in ascending p order) of p(j) * m / j, capped at 1.

    >>> bh_fdr([0.01, 0.04, 0.03, 0.005])
    [0.02, 0.04, 0.04, 0.02]
    """
    if len(pvalues) == 0:
        return []
    from scipy.stats import false_discovery_control

    q = false_discovery_control([float(p) for p in pvalues], method="bh")
    return [round(float(v), 15) for v in q]
