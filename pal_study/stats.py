"""Paired comparisons of final runs and their multiplicity adjustment (scipy underneath).

Two cells of one study that run the same final seeds see the same data: a seed fixes the split
and the noisy labels (``build_dataset`` draws both from the trial seed), so their finals are
paired by seed and compared on the per-seed differences. The interval is t-based (few seeds:
a bootstrap over 3-5 values is unreliable); the test is the paired t-test, and also Wilcoxon's
signed-rank test from 6 pairs on; q-values adjust the p-values of all comparisons of one report
(Benjamini-Hochberg by default, Holm on request).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

ADJUSTMENTS = ("bh", "holm")
WILCOXON_FROM = 6


@dataclass
class Paired:
    """One comparison: cell minus baseline on ``metric``, over the seeds both have."""

    cell: str
    baseline: str
    metric: str
    n_pairs: int
    delta: float | None  # mean of the per-seed differences
    ci_low: float | None  # 95 % t interval of that mean
    ci_high: float | None
    p: float | None  # paired t-test, two-sided
    q: float | None  # adjusted over the report's comparisons (set by ``adjust_all``)
    test: str  # which test gave p, or why there is none
    p_wilcoxon: float | None = None
    seeds: tuple[int, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


def paired(cell: str, baseline: str, metric: str, a: dict[int, float], b: dict[int, float],
           confidence: float = 0.95) -> Paired:
    """Compare ``a`` (seed -> value of the cell) with ``b`` (the baseline's) on their common seeds."""
    from scipy import stats

    seeds = tuple(sorted(s for s in set(a) & set(b)
                         if a[s] is not None and b[s] is not None and math.isfinite(a[s]) and math.isfinite(b[s])))
    n = len(seeds)
    if n < 2:
        return Paired(cell, baseline, metric, n, None if n == 0 else a[seeds[0]] - b[seeds[0]], None, None, None,
                      None, f"n={n}: no test with fewer than 2 paired seeds", seeds=seeds)
    d = [a[s] - b[s] for s in seeds]
    mean = math.fsum(d) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    if sd == 0.0:
        # Identical differences on every seed: no spread to test against.
        p = 1.0 if mean == 0.0 else 0.0
        out = Paired(cell, baseline, metric, n, mean, mean, mean, p, None,
                     "paired t (all differences equal)", seeds=seeds)
    else:
        half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
        p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
        out = Paired(cell, baseline, metric, n, mean, mean - half, mean + half, p, None, "paired t", seeds=seeds)
    if n >= WILCOXON_FROM and any(x != 0 for x in d):
        out.p_wilcoxon = float(stats.wilcoxon(d).pvalue)
    return out


def adjust(pvalues: Sequence[float | None], method: Literal["bh", "holm"] = "bh") -> list[float | None]:
    """q-values for ``pvalues`` (None stays None and does not count as a comparison)."""
    if method not in ADJUSTMENTS:
        raise ValueError(f"unknown adjustment {method!r}; allowed: {', '.join(ADJUSTMENTS)}")
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    ps = [float(pvalues[i]) for i in idx]
    out: list[float | None] = [None] * len(pvalues)
    if not ps:
        return out
    if method == "bh":
        from scipy.stats import false_discovery_control

        qs = [float(q) for q in false_discovery_control(ps, method="bh")]
    else:
        # Holm's step-down: q_(i) = max over j <= i of min(1, (m - j + 1) p_(j)) in ascending order.
        m = len(ps)
        order = sorted(range(m), key=lambda i: ps[i])
        qs = [0.0] * m
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * ps[i]))
            qs[i] = running
    for i, q in zip(idx, qs):
        out[i] = q
    return out


def adjust_all(comparisons: list[Paired], method: Literal["bh", "holm"] = "bh") -> list[Paired]:
    """Set each comparison's ``q`` (in place; returned for chaining)."""
    for c, q in zip(comparisons, adjust([c.p for c in comparisons], method)):
        c.q = q
    return comparisons


def verdict(c: Paired, alpha: float = 0.05, direction: Literal["higher", "lower"] = "higher") -> str:
    """supported (q < alpha, difference in the claimed direction), contradicted (q < alpha the
    other way) or inconclusive."""
    if c.q is None or c.delta is None or c.q >= alpha or c.delta == 0:
        return "inconclusive"
    good = c.delta > 0 if direction == "higher" else c.delta < 0
    return "supported" if good else "contradicted"


__all__ = ["ADJUSTMENTS", "Paired", "adjust", "adjust_all", "paired", "verdict"]
