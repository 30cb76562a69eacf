"""Significance tests for per-template counts: exact binomial, Mann-Whitney U, BH FDR.

Small, dependency-free versions (numpy and math only) of what benchstat and SciPy offer,
chosen for comparing how often a kernel message appears in two sets of runs:

* :func:`binom_test` -- the conditional test for two Poisson counts: given a + b events,
  ``a ~ Binomial(a + b, E_A / (E_A + E_B))`` when both sides have the same rate per unit
  of exposure E (runs, or simulated seconds).  Two-sided p as in
  ``scipy.stats.binomtest``: the total probability of outcomes no more likely than the
  observed one.  It treats events as independent, which one run of a kernel rarely
  satisfies: prefer several seeds per side and the U test.
* :func:`mannwhitney_u` -- benchstat's default ``-delta-test utest``: compares the
  per-run values of two groups without assuming a distribution.  Exact p (enumerating U's
  null distribution) when there are no ties and the groups are small, otherwise the normal
  approximation with tie and continuity corrections, as SciPy's ``method="auto"`` does.
* :func:`bh_fdr` -- Benjamini-Hochberg q-values: a table of 30 templates tested at
  p < 0.05 would flag one and a half by chance; q controls the expected share of false
  discoveries among the flagged rows instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

_RERR = 1 + 1e-7  # SciPy's relative tolerance for "as likely as the observed outcome"


def _log_factorials(n: int) -> np.ndarray:
    """log(k!) for k = 0..n."""
    return np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))))


def binom_pmf_all(n: int, p: float) -> np.ndarray:
    """P(X = k) for k = 0..n, X ~ Binomial(n, p)."""
    k = np.arange(n + 1)
    if p <= 0.0 or p >= 1.0:
        out = np.zeros(n + 1)
        out[0 if p <= 0.0 else n] = 1.0
        return out
    lf = _log_factorials(n)
    logpmf = lf[n] - lf[k] - lf[n - k] + k * math.log(p) + (n - k) * math.log1p(-p)
    return np.exp(logpmf)


def binom_test(a: int, n: int, p: float) -> float:
    """Two-sided exact p-value of ``a`` successes in ``n`` trials of probability ``p``.

    >>> round(binom_test(9, 10, 0.5), 6)   # 2 * (10 + 1) / 1024
    0.021484
    """
    if n <= 0:
        return 1.0
    if not 0 <= a <= n:
        raise ValueError(f"binom_test: a={a} outside 0..{n}")
    pmf = binom_pmf_all(n, p)
    d = pmf[a]
    return float(min(1.0, pmf[pmf <= d * _RERR].sum()))


@lru_cache(maxsize=256)
def _u_counts(n1: int, n2: int) -> tuple[int, ...]:
    """How many of the C(n1+n2, n1) orderings give each U = 0..n1*n2 (no ties).

    U counts pairs (x, y) with x > y.  The largest of all values is either an x -- it beats
    all n2 y's -- or a y, which beats nobody: f(n1, n2)[u] = f(n1-1, n2)[u-n2] + f(n1, n2-1)[u].
    """
    if n1 == 0 or n2 == 0:
        return (1,)
    a = _u_counts(n1 - 1, n2)
    b = _u_counts(n1, n2 - 1)
    out = [0] * (n1 * n2 + 1)
    for u, c in enumerate(a):
        out[u + n2] += c
    for u, c in enumerate(b):
        out[u] += c
    return tuple(out)


EXACT_MAX_CELLS = 400  # exact U distribution up to n1 * n2 = 400 (e.g. 20 vs 20 runs)


def _ranks(v: np.ndarray) -> tuple[np.ndarray, bool, float]:
    """Average ranks (1-based), whether there are ties, and sum(t^3 - t) over tie groups."""
    order = np.argsort(v, kind="mergesort")
    sv = v[order]
    ranks = np.empty(len(v))
    ties = False
    tsum = 0.0
    i = 0
    while i < len(sv):
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        t = j - i + 1
        if t > 1:
            ties = True
            tsum += t ** 3 - t
        i = j + 1
    return ranks, ties, tsum


def mannwhitney_u(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(U of x, two-sided p) of the Mann-Whitney U test.

    >>> mannwhitney_u([1, 2, 3], [4, 5, 6])   # the most extreme of C(6,3) = 20 orderings
    (0.0, 0.1)
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("mannwhitney_u: both samples need at least one value")
    ranks, ties, tsum = _ranks(np.concatenate((x, y)))
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    u2 = n1 * n2 - u1
    big = max(u1, u2)
    if not ties and n1 * n2 <= EXACT_MAX_CELLS:
        counts = _u_counts(n1, n2)
        total = math.comb(n1 + n2, n1)
        tail = sum(counts[int(round(big)):])  # P(U >= big), by symmetry = P(U <= small)
        return u1, float(min(1.0, 2 * tail / total))
    n = n1 + n2
    mu = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - tsum / (n * (n - 1)))
    if var <= 0:  # every value equal: nothing to tell apart
        return u1, 1.0
    z = (big - mu - 0.5) / math.sqrt(var)
    return u1, float(min(1.0, math.erfc(z / math.sqrt(2))))


def utest_min_p(n1: int, n2: int) -> float:
    """The smallest two-sided p the exact U test can give for groups of n1 and n2 runs."""
    return min(1.0, 2 / math.comb(n1 + n2, n1))


def bh_fdr(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg q-values, in the order of ``pvalues``.

    q(i) = min over j >= i (in ascending p order) of p(j) * m / j, capped at 1.

    >>> bh_fdr([0.01, 0.04, 0.03, 0.005])
    [0.02, 0.04, 0.04, 0.02]
    """
    p = np.asarray(pvalues, float)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="mergesort")
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return [round(float(v), 15) for v in out]
