"""Paired comparisons and q-values against scipy and hand-computed cases, on fixed numbers."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from pal_study.stats import adjust, adjust_all, paired, verdict

A = {0: 0.91, 1: 0.93, 2: 0.90, 3: 0.95, 4: 0.92, 5: 0.94}
B = {0: 0.89, 1: 0.90, 2: 0.90, 3: 0.91, 4: 0.88, 5: 0.93}


def test_paired_t_interval_and_wilcoxon_match_scipy():
    c = paired("ce+fnpal", "ce", "test_acc", A, B)
    d = [A[s] - B[s] for s in sorted(A)]
    assert c.n_pairs == 6 and c.seeds == (0, 1, 2, 3, 4, 5) and c.test == "paired t"
    assert c.delta == pytest.approx(sum(d) / 6)
    assert c.p == pytest.approx(stats.ttest_rel(list(A.values()), list(B.values())).pvalue)
    lo, hi = stats.t.interval(0.95, 5, loc=sum(d) / 6, scale=stats.sem(d))
    assert (c.ci_low, c.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert c.p_wilcoxon == pytest.approx(stats.wilcoxon(d).pvalue)


def test_only_common_seeds_are_paired_and_few_pairs_give_no_test():
    c = paired("x", "y", "test_acc", {0: 0.5, 1: 0.6, 2: 0.7}, {1: 0.4, 2: 0.65, 9: 0.1})
    assert c.seeds == (1, 2) and c.n_pairs == 2 and c.p is not None and c.p_wilcoxon is None
    one = paired("x", "y", "test_acc", {0: 0.5}, {0: 0.4, 1: 0.3})
    assert one.n_pairs == 1 and one.p is None and one.ci_low is None and "fewer than 2" in one.test
    none = paired("x", "y", "test_acc", {0: float("nan")}, {0: 0.4})
    assert none.n_pairs == 0 and none.delta is None


def test_equal_differences_on_every_seed():
    c = paired("x", "y", "test_acc", {0: 0.6, 1: 0.7}, {0: 0.5, 1: 0.6})
    assert c.delta == pytest.approx(0.1) and c.p == 0.0 and c.ci_low == c.ci_high == c.delta


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
    up = paired("x", "y", "test_acc", A, B)
    down = paired("y", "x", "test_acc", B, A)
    flat = paired("x", "y", "test_acc", {0: 0.5, 1: 0.6, 2: 0.4}, {0: 0.52, 1: 0.57, 2: 0.41})
    adjust_all([up, down, flat])
    assert verdict(up) == "supported" and verdict(down) == "contradicted" and verdict(flat) == "inconclusive"
    assert verdict(down, direction="lower") == "supported"
    assert math.isclose(up.q, down.q)
