"""Paired comparisons of final runs and their multiplicity adjustment (numpy, scipy, statsmodels).

Two cells of one study that run the same final seeds see the same data: a seed fixes the split
and the noisy labels (``build_dataset`` draws both from the trial seed), so their finals are
paired by seed and compared on the per-seed differences ``d``.

The test is the exact sign-flip (paired permutation) test on the sum of ``d``: under "no
difference" each difference is as likely to have come out with the other sign, so the observed
sum is compared with the sums of all ``2^n`` sign assignments (a seeded Monte Carlo sample of
:data:`MC_DRAWS` assignments past :data:`EXACT_MAX_N` pairs). It is exact at any ``n``, and it
says plainly what few seeds can show: its smallest two-sided p is ``2 / 2^n`` (:func:`min_p`),
0.25 with 3 seeds, so nothing with fewer than :func:`min_seeds` seeds (6 at 0.05) can be
significant. The interval is the one the test inverts to (Hartigan's subset means): it excludes
0 exactly when ``p <= 1 - confidence``; with too few seeds for the level it is unbounded (None).

The paired t-test and its interval stay as reference columns (``p_t``, ``t_ci_low``,
``t_ci_high``), undefined when every difference is the same; Wilcoxon's signed-rank test is
reported from 6 pairs on. q-values adjust the p-values of all comparisons of one report
(Benjamini-Hochberg by default, Holm on request).

Ties: accuracies are multiples of ``1/n_test``, so per-seed differences that differ by float
noise only are equal. Before any test, differences within :data:`TIE_TOL` of 0 become 0 and
differences within :data:`TIE_TOL` of each other (in absolute value) become one value
(:func:`snap`); subset sums within :data:`TIE_TOL` of 0 count as 0. Zero spread is not
certainty: equal differences give the smallest p the seeds allow, not p = 0.

Convention: a p- or q-value is significant at ``alpha`` when it is ``<= alpha``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Adjustment = Literal["bh", "holm"]
ADJUSTMENTS: tuple[Adjustment, ...] = ("bh", "holm")
WILCOXON_FROM = 6
TIE_TOL = 1e-9
"""Differences (and subset sums) closer than this are equal: far below one test example
(1/n_test), far above float noise (about 1e-16)."""
EXACT_MAX_N = 16
"""Up to this many pairs the sign-flip test enumerates all 2^n assignments (65 536 at 16)."""
MC_DRAWS = 100_000
MC_SEED = 20_240_607
POWER = 0.8
MAX_SEEDS = 10_000


@dataclass
class Paired:
    """One comparison: cell minus baseline on ``metric``, over the seeds both have."""

    cell: str
    baseline: str
    metric: str
    n_pairs: int
    delta: float | None  # mean of the per-seed differences (after snapping ties)
    ci_low: float | None  # sign-flip (subset-means) interval; None: unbounded at this n and level
    ci_high: float | None
    p: float | None  # sign-flip test, two-sided (the verdicts use it)
    q: float | None  # adjusted over the report's comparisons (set by ``adjust_all``)
    test: str  # which test gave p, or why there is none
    p_wilcoxon: float | None = None
    seeds: tuple[int, ...] = ()
    p_se: float | None = None  # Monte Carlo standard error of p (0.0 when exact)
    ci_level: float | None = None  # the interval's achieved coverage (None: unbounded or no test)
    min_p: float | None = None  # smallest two-sided p the exact test can give with n_pairs
    p_t: float | None = None  # paired t-test, two-sided (reference; None without spread)
    t_ci_low: float | None = None  # t interval at the same confidence
    t_ci_high: float | None = None
    sd: float | None = None  # sample std of the differences
    mdd: float | None = None  # |Δ| detectable with 80 % power at this n, alpha and sd
    seeds_needed: int | None = None  # seeds the observed |Δ| needs for 80 % power
    failed_cell: tuple[int, ...] = ()  # filled by callers
    failed_baseline: tuple[int, ...] = ()
    note: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SignFlip:
    """The sign-flip test of one set of differences and the interval it inverts to."""

    n: int
    p: float
    p_se: float
    ci_low: float | None
    ci_high: float | None
    ci_level: float | None  # exact coverage (Monte Carlo: approximate); None when unbounded
    exact: bool
    assignments: int  # 2^n, or the number of Monte Carlo draws


def snap(d: Sequence[float], tol: float = TIE_TOL) -> list[float]:
    """``d`` with float noise removed: values within ``tol`` of 0 become 0, and values whose
    absolute values form a cluster (sorted, consecutive gaps <= ``tol``) share one magnitude
    (its middle member's), each keeping its sign. Equal values become identical, and values equal
    up to sign get identical magnitudes (ties for Wilcoxon's ranks)."""
    vals = [float(x) for x in d]
    mags = [0.0 if abs(x) <= tol else abs(x) for x in vals]
    order = sorted(range(len(vals)), key=lambda i: mags[i])
    out = [0.0] * len(vals)
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and mags[order[end]] - mags[order[end - 1]] <= tol:
            end += 1
        members = order[start:end]
        rep = 0.0 if mags[members[0]] == 0.0 else mags[members[len(members) // 2]]
        for i in members:
            out[i] = rep if vals[i] > 0 else (-rep if rep else 0.0)
        start = end
    return out


def min_p(n: int) -> float:
    """The smallest two-sided p of the exact sign-flip test with ``n`` pairs: 2 / 2^n."""
    return 1.0 if n < 1 else min(1.0, 2.0 / 2.0**n)


def min_seeds(alpha: float) -> int:
    """The fewest pairs with which the exact test can reach ``alpha`` (2 / 2^n <= alpha): 6 at 0.05."""
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha!r}")
    n = 1
    while min_p(n) > alpha:
        n += 1
    return n


@functools.lru_cache(maxsize=EXACT_MAX_N + 1)
def _masks(n: int) -> np.ndarray:
    """All 2^n subsets of range(n) as rows of 0/1 (row 0 is the empty set); cached, read-only."""
    out = ((np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n, dtype=np.int64)) & 1).astype(np.float64)
    out.flags.writeable = False
    return out


def _mc_masks(n: int, draws: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((draws, n)) < 0.5).astype(np.float64)


def sign_flip(d: Sequence[float], confidence: float = 0.95, *, draws: int = MC_DRAWS, seed: int = MC_SEED) -> SignFlip:
    """Two-sided sign-flip test of mean(d) = 0 and its subset-means interval.

    Flipping the signs of a set A of differences changes the sum from T to T - 2 S_A
    (S_A = sum of d over A), so the one-sided p's are #{A: S_A <= 0} / N and #{A: S_A >= 0} / N
    over the N reference sets (all 2^n subsets; past ``EXACT_MAX_N`` pairs the empty set plus
    ``draws`` random ones), and p = min(1, 2 min(p_up, p_down)), which for the complete
    enumeration is the fraction of assignments with |T_s| >= |T|. Inverting the one-sided tests
    at (1 - confidence) / 2 gives Hartigan's interval: with the subset means sorted and
    k = floor((1 - confidence) / 2 * N), [k-th smallest, k-th largest], coverage 1 - 2k / N;
    unbounded when k = 0. ``d`` is used as given (call :func:`snap` first)."""
    x = np.asarray(d, dtype=np.float64)
    n = int(x.size)
    if n < 1:
        raise ValueError("sign_flip needs at least one difference")
    exact = n <= EXACT_MAX_N
    masks = _masks(n) if exact else _mc_masks(n, draws, seed)
    sums = masks @ x
    sizes = masks.sum(axis=1)
    sums[np.abs(sums) <= TIE_TOL] = 0.0
    if exact:
        total = masks.shape[0]  # 2^n, the empty set (the observed signs) included once
        up, down = int(np.count_nonzero(sums <= 0.0)), int(np.count_nonzero(sums >= 0.0))
        empties = 1
    else:
        total = draws + 1  # the observed assignment counts as one of the reference set
        up, down = 1 + int(np.count_nonzero(sums <= 0.0)), 1 + int(np.count_nonzero(sums >= 0.0))
        empties = 1 + int(np.count_nonzero(sizes == 0))
    p = min(1.0, 2.0 * min(up, down) / total)
    p_se = 0.0 if exact else math.sqrt(p * (2.0 - p) / draws)
    alpha = 1.0 - confidence
    k = math.floor(alpha / 2.0 * total + 1e-9)
    j = k - empties + 1  # rank among the non-empty subsets' means
    if j < 1:
        return SignFlip(n, p, p_se, None, None, None, exact, total if exact else draws)
    means = np.sort(sums[sizes > 0] / sizes[sizes > 0])
    lo, hi = float(means[j - 1]), float(means[means.size - j])
    return SignFlip(n, p, p_se, lo, hi, 1.0 - 2.0 * k / total, exact, total if exact else draws)


def _mdd(n: int, sd: float | None, alpha: float, power: float = POWER) -> float | None:
    """|Δ| a two-sided paired t-test detects with ``power`` at ``n`` pairs, ``alpha`` and spread
    ``sd``; None when the exact test cannot reach ``alpha`` with ``n`` pairs or sd is 0."""
    if sd is None or not sd > 0 or n < max(2, min_seeds(alpha)):
        return None
    from statsmodels.stats.power import TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        es = float(
            np.asarray(
                TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative="two-sided")
            ).item()
        )
    return es * sd if math.isfinite(es) else None


def _seeds_needed(delta: float | None, sd: float | None, alpha: float, power: float = POWER) -> int | None:
    """Pairs the paired t-test needs to detect ``delta`` with ``power`` (the solution of
    TTestPower rounded up, at least :func:`min_seeds`); None when delta or sd is 0 (or missing),
    or when it would take more than ``MAX_SEEDS``."""
    if delta is None or sd is None or delta == 0 or not sd > 0:
        return None
    from statsmodels.stats.power import TTestPower

    es = abs(delta) / sd

    def enough(n: int) -> bool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = float(
                np.asarray(TTestPower().power(effect_size=es, nobs=n, alpha=alpha, alternative="two-sided")).item()
            )
        # The noncentral t gives nan at a very large noncentrality es * sqrt(n), where power is 1.
        return math.isnan(got) or got >= power

    # Power grows with n: bisect on whole seeds (the ceil of TTestPower's solution, without the
    # root finder's convergence failures at large effects).
    lo = min_seeds(alpha)
    if enough(lo):
        return lo
    if not enough(MAX_SEEDS):
        return None
    hi = MAX_SEEDS  # enough(hi), not enough(lo)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def paired(
    cell: str,
    baseline: str,
    metric: str,
    a: Mapping[int, float | None],
    b: Mapping[int, float | None],
    confidence: float = 0.95,
) -> Paired:
    """Compare ``a`` (seed -> value of the cell) with ``b`` (the baseline's) on their common seeds."""
    from scipy import stats

    diffs: dict[int, float] = {}  # seed -> a - b, on the common seeds where both are finite
    for s in sorted(set(a) & set(b)):
        x, y = a[s], b[s]
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
            diffs[s] = x - y
    seeds = tuple(diffs)
    n = len(seeds)
    if n < 2:
        delta = None if n == 0 else snap([diffs[seeds[0]]])[0]
        return Paired(
            cell,
            baseline,
            metric,
            n,
            delta,
            None,
            None,
            None,
            None,
            f"n={n}: no test with fewer than 2 paired seeds",
            seeds=seeds,
            min_p=None if n == 0 else 1.0,
        )
    alpha = round(1.0 - confidence, 12)
    d = snap([diffs[s] for s in seeds])
    mean = math.fsum(d) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    if sd <= TIE_TOL:
        sd = 0.0  # the same difference on every seed
    sf = sign_flip(d, confidence)
    test = f"sign-flip exact, 2^{n} assignments" if sf.exact else f"sign-flip Monte Carlo, {sf.assignments} draws"
    out = Paired(
        cell,
        baseline,
        metric,
        n,
        mean,
        sf.ci_low,
        sf.ci_high,
        sf.p,
        None,
        test,
        seeds=seeds,
        p_se=sf.p_se,
        ci_level=sf.ci_level,
        min_p=min_p(n),
        sd=sd,
    )
    if sd == 0.0:
        out.test += "; t undefined: no spread"
    else:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
        out.p_t = float(stats.ttest_1samp(d, 0.0).pvalue)
        out.t_ci_low, out.t_ci_high = mean - half, mean + half
    out.mdd = _mdd(n, sd, alpha)
    out.seeds_needed = _seeds_needed(mean, sd, alpha)
    if n >= WILCOXON_FROM and any(x != 0 for x in d):
        out.p_wilcoxon = float(stats.wilcoxon(d).pvalue)
    return out


def _pts(x: float) -> str:
    return f"{100 * x:.2g}" if abs(100 * x) < 1 else f"{100 * x:.1f}"


def power_line(c: Paired, alpha: float = 0.05) -> str:
    """One line to read beside a verdict: what this many seeds can detect, and what the observed
    difference would need (80 % power, two-sided ``alpha``; points = 100 x the metric)."""
    n = c.n_pairs
    need = min_seeds(alpha)
    if n < need:
        return (
            f"with {n} seed{'s' if n != 1 else ''} no difference can reach α={alpha:g} "
            f"(smallest exact p {min_p(n):.3g}): at least {need} seeds"
        )
    if c.delta is None or c.sd is None:
        return f"with {n} seeds: no test"
    if c.sd == 0.0:
        return (
            f"with {n} seeds: the same difference on every seed (no spread), so the exact p is the "
            f"smallest {n} seeds allow ({min_p(n):.3g}); the detectable |Δ| is undefined"
        )
    mdd = _mdd(n, c.sd, alpha)
    if mdd is None:  # not reached: n can reach α and the spread is > 0
        return f"with {n} seeds: no test"
    line = (
        f"with {n} seeds: detectable |Δ| ≥ {_pts(mdd)} points at {round(100 * POWER)} % power "
        f"(sd of differences {_pts(c.sd)} points)"
    )
    if c.delta == 0:
        return line + "; Δ is 0"
    k = _seeds_needed(c.delta, c.sd, alpha)
    if k is None:
        return line + f"; Δ {100 * c.delta:+.2f} would need more than {MAX_SEEDS} seeds"
    return line + f"; Δ {100 * c.delta:+.2f} would need {k} seeds" + (" (has them)" if k <= n else "")


def underpowered(n_seeds: int, comparisons_per_claim: list[int], alpha: float = 0.05) -> list[str]:
    """Warnings for ``pal-study validate``: final seeds too few for any comparison to reach
    ``alpha``, and claims whose Holm adjustment (needed to contradict them) asks for more."""
    out = []
    need = min_seeds(alpha)
    if n_seeds < need:
        out.append(
            f"with {n_seeds} final seeds no comparison can reach α={alpha:g}: the exact test's smallest "
            f"two-sided p is {min_p(n_seeds):.3g}; give finals.seeds at least {need}"
        )
    for i, m in enumerate(comparisons_per_claim):
        if m > 1 and min_p(n_seeds) > alpha / m:
            out.append(
                f"claims[{i}] ({m} comparisons): to contradict it, Holm needs p ≤ α/m = {alpha / m:.3g}, "
                f"which needs at least {min_seeds(alpha / m)} seeds"
            )
    return out


def adjustment(method: str) -> Adjustment:
    """``method`` as one of :data:`ADJUSTMENTS`; a ValueError names them where it is none."""
    for known in ADJUSTMENTS:
        if method == known:
            return known
    raise ValueError(f"unknown adjustment {method!r}; allowed: {', '.join(ADJUSTMENTS)}")


def adjust(pvalues: Sequence[float | None], method: Adjustment = "bh") -> list[float | None]:
    """q-values for ``pvalues`` (None stays None and does not count as a comparison)."""
    method = adjustment(method)
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    ps = [float(p) for p in pvalues if p is not None]
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
    for i, q in zip(idx, qs, strict=False):
        out[i] = q
    return out


def adjust_all(comparisons: list[Paired], method: Adjustment = "bh") -> list[Paired]:
    """Set each comparison's ``q`` (in place; returned for chaining)."""
    for c, q in zip(comparisons, adjust([c.p for c in comparisons], method), strict=False):
        c.q = q
    return comparisons


def verdict(c: Paired, alpha: float = 0.05, direction: Literal["higher", "lower"] = "higher") -> str:
    """For the report's table: supported (q <= alpha, difference in the claimed direction),
    contradicted (q <= alpha the other way) or inconclusive. Claims use their own rule
    (:func:`pal_study.analysis.claims.evaluate`)."""
    if c.q is None or c.delta is None or c.q > alpha or c.delta == 0:
        return "inconclusive"
    good = c.delta > 0 if direction == "higher" else c.delta < 0
    return "supported" if good else "contradicted"


__all__ = [
    "ADJUSTMENTS",
    "EXACT_MAX_N",
    "MC_DRAWS",
    "MC_SEED",
    "TIE_TOL",
    "Adjustment",
    "Paired",
    "SignFlip",
    "adjust",
    "adjust_all",
    "adjustment",
    "min_p",
    "min_seeds",
    "paired",
    "power_line",
    "sign_flip",
    "snap",
    "underpowered",
    "verdict",
]
