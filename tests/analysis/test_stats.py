"""Paired comparisons against brute force, scipy, statsmodels and hand-computed cases, on fixed numbers."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.power import TTestPower

from pal_study.analysis.stats import (
    EXACT_MAX_N,
    MC_DRAWS,
    TIE_TOL,
    adjust,
    adjust_all,
    min_p,
    min_seeds,
    paired,
    power_line,
    sign_flip,
    snap,
    underpowered,
    verdict,
)

A = {0: 0.91, 1: 0.93, 2: 0.90, 3: 0.95, 4: 0.92, 5: 0.94}
B = {0: 0.89, 1: 0.90, 2: 0.90, 3: 0.91, 4: 0.88, 5: 0.93}


def _pair(d: list[float], base: float = 0.5) -> tuple[dict[int, float], dict[int, float]]:
    """Seed -> value dicts whose per-seed differences are ``d``."""
    b = {s: base + 0.01 * s for s in range(len(d))}
    return {s: b[s] + x for s, x in enumerate(d)}, b


def _brute_p(d: list[float]) -> float:
    """Two-sided sign-flip p by enumeration: share of sign vectors with |sum| >= |observed sum|."""
    t = abs(math.fsum(d))
    hits = sum(
        abs(math.fsum(s * x for s, x in zip(signs, d, strict=False))) >= t - 1e-12
        for signs in itertools.product((1, -1), repeat=len(d))
    )
    return hits / 2 ** len(d)


def _brute_ci(d: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Hartigan's interval by enumeration: k-th smallest and k-th largest subset mean."""
    n = len(d)
    means = sorted(math.fsum(sub) / r for r in range(1, n + 1) for sub in itertools.combinations(d, r))
    k = math.floor((1 - confidence) / 2 * 2**n + 1e-9)
    return None if k == 0 else (means[k - 1], means[-k])


def _cases(seed: int, count: int, sizes: range, shift: tuple[float, float] = (-0.02, 0.03)) -> list[list[float]]:
    rng = random.Random(seed)
    return [
        [rng.gauss(mu, 0.02) for _ in range(rng.choice(sizes))] for mu in (rng.uniform(*shift) for _ in range(count))
    ]


# -- the sign-flip test ---------------------------------------------------------------------------


def test_sign_flip_p_equals_brute_force_enumeration():
    cases = _cases(1, 20, range(2, 11))
    assert {len(d) for d in cases} >= {2, 5, 10}
    for d in cases:
        a, b = _pair(d)
        c = paired("x", "y", "test_acc", a, b)
        raw = [a[s] - b[s] for s in sorted(a)]
        assert c.p == pytest.approx(_brute_p(raw), abs=1e-12), d
        assert c.p_se == 0.0 and c.test == f"sign-flip exact, 2^{len(d)} assignments"
        assert c.min_p == 2 / 2 ** len(d)
        # 2 min(one-sided p) is the |T| version: the one-sided counts by enumeration, too
        t = math.fsum(raw)
        sums = [
            math.fsum(s * x for s, x in zip(signs, raw, strict=False))
            for signs in itertools.product((1, -1), repeat=len(raw))
        ]
        up = sum(v >= t - 1e-12 for v in sums) / len(sums)
        down = sum(v <= t + 1e-12 for v in sums) / len(sums)
        assert c.p == pytest.approx(min(1.0, 2 * min(up, down)), abs=1e-12)


def test_smallest_p_by_number_of_seeds():
    c3 = paired("x", "y", "test_acc", *_pair([0.03, 0.01, 0.02]))
    assert c3.p == 0.25 and c3.min_p == 0.25
    assert paired("x", "y", "test_acc", *_pair([0.03, 0.01, 0.02, 0.05, 0.04, 0.06])).p == 0.03125
    for d in _cases(2, 30, range(3, 4), shift=(-0.2, 0.2)):  # n = 3: never below 0.25, whatever the effect
        assert paired("x", "y", "test_acc", *_pair(d)).p >= 0.25
    assert [min_p(n) for n in (3, 4, 5, 6, 8, 10)] == [0.25, 0.125, 0.0625, 0.03125, 0.0078125, 0.001953125]
    assert min_seeds(0.05) == 6 and min_seeds(0.01) == 8 and min_seeds(0.25) == 3 and min_seeds(0.05 / 12) == 9
    with pytest.raises(ValueError):
        min_seeds(0.0)


def test_equal_differences_are_not_certainty():
    c = paired("x", "y", "test_acc", *_pair([0.05] * 3))
    assert c.delta == pytest.approx(0.05) and c.p == 0.25 and c.sd == 0.0
    assert c.p_t is None and c.t_ci_low is None and "t undefined: no spread" in c.test
    assert c.ci_low is None and c.ci_high is None and c.ci_level is None
    # Differences equal up to float noise are equal: 0.1 + 0.2 + 0.05 - 0.3 != 0.35 - 0.3 in floats.
    a, b = {0: 0.1 + 0.2 + 0.05, 1: 0.35, 2: 0.4 - 0.05}, {0: 0.3, 1: 0.3, 2: 0.3}
    assert len({a[s] - b[s] for s in a}) == 2
    noisy = paired("x", "y", "test_acc", a, b)
    assert noisy.sd == 0.0 and noisy.p_t is None and noisy.p == 0.25
    # ... and float noise around 0 is 0: no difference at all, not a tiny one.
    a = {0: 0.1 + 0.2, 1: 0.3, 2: 0.3, 3: 0.1 + 0.2, 4: 0.3, 5: 0.6 - 0.3}
    zero = paired("x", "y", "test_acc", a, dict.fromkeys(a, 0.3))
    assert max(abs(a[s] - 0.3) for s in a) > 0
    assert zero.delta == 0.0 and zero.p == 1.0 and zero.p_wilcoxon is None and zero.seeds_needed is None


def test_snap_removes_float_noise_only():
    out = snap([1e-17, -3e-10, 0.05 + 1e-15, 0.05, -0.05 - 1e-16, 0.03])
    assert out[:2] == [0.0, 0.0] and out[5] == 0.03
    assert out[2] == out[3] == -out[4] == pytest.approx(0.05, abs=1e-14)  # one value, signs kept
    assert snap([0.01, 0.01 + 2 * TIE_TOL]) == [0.01, 0.01 + 2 * TIE_TOL]  # real (if tiny) differences stay


# -- its interval -------------------------------------------------------------------------------


def test_interval_is_the_subset_means_order_statistics():
    for d in _cases(3, 12, range(6, 11)):
        a, b = _pair(d)
        c = paired("x", "y", "test_acc", a, b)
        lo, hi = _brute_ci([a[s] - b[s] for s in sorted(a)])
        assert (c.ci_low, c.ci_high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
        k = math.floor(0.025 * 2 ** len(d))
        assert c.ci_level == 1 - 2 * k / 2 ** len(d)
    assert [paired("x", "y", "m", *_pair([0.01] * n + [0.02])).ci_level for n in (5, 6, 9)] == [
        0.96875,
        0.953125,
        0.951171875,
    ]


def test_interval_excludes_zero_exactly_when_p_is_at_most_alpha():
    seen = set()
    for conf in (0.95, 0.9):
        for d in _cases(4, 150, range(6, 11), shift=(-0.03, 0.03)):
            c = paired("x", "y", "test_acc", *_pair(d), confidence=conf)
            excludes = c.ci_low > 0 or c.ci_high < 0
            assert excludes == (c.p <= 1 - conf), (d, c)
            seen.add(excludes)
    assert seen == {True, False}


def test_interval_is_unbounded_with_five_seeds_or_fewer_at_95():
    for n in range(2, 6):
        c = paired("x", "y", "test_acc", *_pair([0.01 * (i + 1) for i in range(n)]))
        assert c.ci_low is None and c.ci_high is None and c.ci_level is None and c.p == min_p(n)
    # at 50 % confidence, 3 seeds bound it: k = 2, the 2nd smallest and 2nd largest subset means
    c = paired("x", "y", "test_acc", *_pair([0.01, 0.02, 0.04]), confidence=0.5)
    assert (c.ci_low, c.ci_high) == (pytest.approx(0.015), pytest.approx(0.03)) and c.ci_level == 0.5


def test_monte_carlo_past_the_exact_limit_is_close_to_exact_and_seeded():
    n = EXACT_MAX_N + 2
    rng = np.random.default_rng(7)
    d = list(rng.normal(0.006, 0.02, n))
    masks = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.float64)
    t = abs(sum(d))
    exact = float(np.mean(np.abs((1 - 2 * masks) @ np.array(d)) >= t - 1e-12))
    a, b = _pair(d)
    c = paired("x", "y", "test_acc", a, b)
    assert c.test == f"sign-flip Monte Carlo, {MC_DRAWS} draws"
    assert 0.01 < exact < 0.5 and c.p_se > 0
    assert abs(c.p - exact) <= 4 * c.p_se
    again = paired("x", "y", "test_acc", a, b)
    assert (again.p, again.ci_low, again.ci_high) == (c.p, c.ci_low, c.ci_high)
    assert c.ci_low < c.delta < c.ci_high and c.ci_level == pytest.approx(0.95, abs=1e-4)
    assert sign_flip(d, seed=1).p != sign_flip(d, seed=2).p  # the draws are what the seed fixes


# -- reference columns ----------------------------------------------------------------------------


def test_paired_t_and_wilcoxon_stay_as_reference_columns():
    c = paired("ce+fnpal", "ce", "test_acc", A, B)
    d = [A[s] - B[s] for s in sorted(A)]  # 0.02, 0.03, 0, 0.04, 0.04, 0.01: the zero can flip too
    assert c.n_pairs == 6 and c.seeds == (0, 1, 2, 3, 4, 5) and c.test == "sign-flip exact, 2^6 assignments"
    assert c.delta == pytest.approx(sum(d) / 6)
    assert c.p == 0.0625 and (c.ci_low, c.ci_high) == (pytest.approx(0.0), pytest.approx(0.04))
    assert c.p_t == pytest.approx(stats.ttest_rel(list(A.values()), list(B.values())).pvalue)
    lo, hi = stats.t.interval(0.95, 5, loc=sum(d) / 6, scale=stats.sem(d))
    assert (c.t_ci_low, c.t_ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert c.sd == pytest.approx(np.std(d, ddof=1))
    assert c.p_wilcoxon == pytest.approx(stats.wilcoxon(d).pvalue)


def test_wilcoxon_sees_differences_equal_up_to_float_noise_as_ties():
    d = [0.02, 0.02 + 1e-15, -0.02, 0.03, 0.01, 0.01 - 1e-15, 0.04]
    a, b = _pair(d)
    raw = [a[s] - b[s] for s in sorted(a)]
    c = paired("x", "y", "test_acc", a, b)
    tied = stats.wilcoxon(np.round(raw, 12)).pvalue
    assert c.p_wilcoxon == pytest.approx(tied)
    assert not math.isclose(stats.wilcoxon(raw).pvalue, tied)  # scipy alone sees no ties


def test_only_common_seeds_are_paired_and_few_pairs_give_no_test():
    c = paired("x", "y", "test_acc", {0: 0.5, 1: 0.6, 2: 0.7}, {1: 0.4, 2: 0.65, 9: 0.1})
    assert c.seeds == (1, 2) and c.n_pairs == 2 and c.p == 0.5 and c.p_wilcoxon is None and c.ci_low is None
    one = paired("x", "y", "test_acc", {0: 0.5}, {0: 0.4, 1: 0.3})
    assert one.n_pairs == 1 and one.p is None and one.ci_low is None and "fewer than 2" in one.test
    none = paired("x", "y", "test_acc", {0: float("nan")}, {0: 0.4})
    assert none.n_pairs == 0 and none.delta is None
    assert set(c.as_dict()) >= {
        "p_se",
        "ci_level",
        "min_p",
        "p_t",
        "t_ci_low",
        "t_ci_high",
        "sd",
        "mdd",
        "seeds_needed",
        "failed_cell",
        "failed_baseline",
        "note",
    }


# -- power ----------------------------------------------------------------------------------------


def test_minimum_detectable_difference_and_seeds_needed():
    assert paired("x", "y", "test_acc", *_pair([0.01, 0.03, 0.02])).mdd is None  # 3 seeds cannot reach 0.05
    d = [0.012, -0.004, 0.02, 0.006, 0.015, -0.01, 0.03, 0.001]
    c = paired("x", "y", "test_acc", *_pair(d))
    sd = float(np.std(d, ddof=1))
    es8 = TTestPower().solve_power(effect_size=None, nobs=8, alpha=0.05, power=0.8, alternative="two-sided")
    assert c.sd == pytest.approx(sd) and c.mdd == pytest.approx(es8 * sd, rel=1e-6)
    need = TTestPower().solve_power(effect_size=abs(np.mean(d)) / sd, nobs=None, alpha=0.05, power=0.8)
    assert c.seeds_needed == math.ceil(need) == 20
    big = paired("x", "y", "test_acc", *_pair([0.05, 0.051, 0.049, 0.05, 0.052, 0.048]))
    assert big.seeds_needed == 6  # at least the exact test's minimum, even for a huge effect
    tiny = paired("x", "y", "test_acc", *_pair([0.0002, -0.02, 0.02, 0.0001, -0.01, 0.0102]))
    assert tiny.delta != 0 and tiny.seeds_needed is None  # past 10 000 seeds


def test_power_line_reads_beside_a_verdict():
    three = paired("x", "y", "test_acc", *_pair([0.01, 0.03, 0.02]))
    assert power_line(three) == (
        "with 3 seeds no difference can reach α=0.05 (smallest exact p 0.25): at least 6 seeds"
    )
    d = [0.012, -0.004, 0.02, 0.006, 0.015, -0.01, 0.03, 0.001]
    c = paired("x", "y", "test_acc", *_pair(d))
    assert power_line(c) == (
        "with 8 seeds: detectable |Δ| ≥ 1.5 points at 80 % power (sd of differences "
        "1.3 points); Δ +0.88 would need 20 seeds"
    )
    assert c.mdd == pytest.approx(0.0151958, abs=1e-6) and c.sd == pytest.approx(0.0131448, abs=1e-6)
    flat = paired("x", "y", "test_acc", *_pair([0.02] * 6))
    assert power_line(flat).startswith("with 6 seeds: the same difference on every seed (no spread)")


def test_underpowered_warnings():
    assert underpowered(3, [1], 0.05) == [
        "with 3 final seeds no comparison can reach α=0.05: the exact test's smallest two-sided p is 0.25; "
        "give finals.seeds at least 6"
    ]
    assert underpowered(6, [1, 12], 0.05) == [
        "claims[1] (12 comparisons): to contradict it, Holm needs p ≤ α/m = 0.00417, which needs at least 9 seeds"
    ]
    assert underpowered(6, [1, 1], 0.05) == [] and underpowered(9, [12], 0.05) == []
    assert len(underpowered(6, [2], 0.05)) == 1 and underpowered(7, [2], 0.05) == []


# -- multiplicity ---------------------------------------------------------------------------------


def test_benjamini_hochberg_against_a_hand_computed_case():
    # p sorted: 0.01, 0.02, 0.03, 0.04, 0.20 (m = 5): p_(i) m / i = 0.05, 0.05, 0.05, 0.05, 0.20,
    # then the running minimum from the top: 0.05, 0.05, 0.05, 0.05, 0.20.
    ps = [0.04, 0.01, None, 0.20, 0.03, 0.02]
    q = adjust(ps, "bh")
    assert q[2] is None
    assert [round(x, 10) for x in (q[1], q[5], q[4], q[0], q[3])] == [0.05, 0.05, 0.05, 0.05, 0.2]


def test_holm_against_a_hand_computed_case():
    # sorted 0.01, 0.02, 0.03, 0.04, 0.20 times (5, 4, 3, 2, 1): 0.05, 0.08, 0.09, 0.08, 0.20,
    # made monotone: 0.05, 0.08, 0.09, 0.09, 0.20.
    q = adjust([0.04, 0.01, 0.20, 0.03, 0.02], "holm")
    assert [round(x, 10) for x in q] == [0.09, 0.05, 0.2, 0.09, 0.08]
    with pytest.raises(ValueError, match="allowed: bh, holm"):
        adjust([0.1], "bonferroni")


def test_verdicts_follow_q_and_direction():
    up6 = [0.03, 0.01, 0.02, 0.05, 0.04, 0.06]
    up = paired("x", "y", "test_acc", *_pair(up6))
    down = paired("y", "x", "test_acc", *_pair([-x for x in up6]))
    flat = paired("x", "y", "test_acc", {0: 0.5, 1: 0.6, 2: 0.4}, {0: 0.52, 1: 0.57, 2: 0.41})
    adjust_all([up, down, flat])
    assert up.p == down.p == 0.03125 and up.q == pytest.approx(0.046875)  # BH: 0.03125 * 3 / 2
    assert verdict(up) == "supported" and verdict(down) == "contradicted" and verdict(flat) == "inconclusive"
    assert verdict(down, direction="lower") == "supported"
    up.q = 0.05  # significant means <= alpha
    assert verdict(up, 0.05) == "supported" and verdict(up, 0.049) == "inconclusive"
