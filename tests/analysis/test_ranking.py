"""Ranks across conditions (Friedman, Nemenyi/Conover, CD) and the probability of improvement."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scikit_posthocs as sp
from scipy import stats

from pal_study.analysis.ranking import (
    Improvement,
    Ranking,
    cd_diagram_png,
    nemenyi_cd,
    nemenyi_friedman,
    probability_of_improvement,
    rank_methods,
)

# Higher is better. Ranks by hand (1 = best):
#   c1: A 1, B 2, C 3    c2: A 1.5, B 1.5, C 3 (tie)    c3: A 2, B 1, C 3    c4: A 1, B 3, C 2
TIED = {
    "c1": {"A": 0.90, "B": 0.80, "C": 0.70},
    "c2": {"A": 0.85, "B": 0.85, "C": 0.60},
    "c3": {"A": 0.70, "B": 0.75, "C": 0.65},
    "c4": {"A": 0.60, "B": 0.50, "C": 0.55},
}
# No ties: rank sums A 5, B 8, C 11.
UNTIED = {
    "c1": {"A": 0.9, "B": 0.8, "C": 0.7},
    "c2": {"A": 0.9, "B": 0.6, "C": 0.7},
    "c3": {"A": 0.8, "B": 0.9, "C": 0.7},
    "c4": {"A": 0.9, "B": 0.8, "C": 0.7},
}


def _columns(scores, methods):
    return [[scores[c][m] for c in scores] for m in methods]


def test_average_ranks_by_hand_with_a_tie():
    r = rank_methods(TIED)
    assert isinstance(r, Ranking)
    assert r.methods == ["A", "B", "C"]
    assert r.conditions == ["c1", "c2", "c3", "c4"]
    assert r.average_ranks == pytest.approx({"A": 5.5 / 4, "B": 7.5 / 4, "C": 11 / 4})
    assert list(r.average_ranks) == r.methods  # best first
    assert r.dropped == {} and r.note is None


def test_friedman_matches_scipy_and_the_textbook_formula():
    r = rank_methods(TIED)
    direct = stats.friedmanchisquare(*_columns(TIED, "ABC"))
    assert r.friedman_stat == pytest.approx(direct.statistic)
    assert r.friedman_p == pytest.approx(direct.pvalue)

    u = rank_methods(UNTIED)
    n, k = 4, 3
    mean_r = np.array([5, 8, 11]) / n
    by_hand = 12 * n / (k * (k + 1)) * np.sum(mean_r**2) - 3 * n * (k + 1)
    assert by_hand == pytest.approx(4.5)
    assert u.friedman_stat == pytest.approx(by_hand)
    assert u.friedman_p == pytest.approx(math.exp(-4.5 / 2))  # chi2 sf with 2 df
    assert u.friedman_stat == pytest.approx(stats.friedmanchisquare(*_columns(UNTIED, "ABC")).statistic)


def test_nemenyi_pairwise_matches_scikit_posthocs():
    r = rank_methods(TIED)
    assert r.posthoc == "nemenyi"
    ref = sp.posthoc_nemenyi_friedman(np.array(_columns(TIED, "ABC")).T)  # rows blocks, cols groups
    for i, a in enumerate("ABC"):
        assert set(r.pairwise_p[a]) == set("ABC") - {a}
        for j, b in enumerate("ABC"):
            if a != b:
                assert r.pairwise_p[a][b] == pytest.approx(ref.iloc[i, j])
    assert r.pairwise_p["A"]["C"] == pytest.approx(r.pairwise_p["C"]["A"])
    assert r.pairwise_p["A"]["C"] < r.pairwise_p["A"]["B"]  # larger rank gap, smaller p


def test_nemenyi_is_scikit_posthocs_arithmetic_to_the_bit():
    # rank_methods computes Nemenyi's p-values itself (scikit-posthocs' import costs the md report
    # half a second); the same numbers as the library's, not approximately: reports stay identical.
    import pandas as pd

    rng = np.random.default_rng(0)
    for n, k in ((2, 3), (4, 3), (5, 7), (12, 4), (30, 10)):
        for values in (rng.normal(size=(n, k)), rng.integers(0, 3, size=(n, k)).astype(float)):  # ties too
            ref = sp.posthoc_nemenyi_friedman(pd.DataFrame(-values, columns=[f"m{j}" for j in range(k)]))
            assert np.array_equal(nemenyi_friedman(-values), ref.to_numpy()), (n, k)


def test_conover_holm_alternative_matches_scikit_posthocs():
    r = rank_methods(TIED, posthoc="conover-holm")
    ref = sp.posthoc_conover_friedman(np.array(_columns(TIED, "ABC")).T, p_adjust="holm")
    for i, a in enumerate("ABC"):
        for j, b in enumerate("ABC"):
            if a != b:
                assert r.pairwise_p[a][b] == pytest.approx(ref.iloc[i, j])
    assert r.critical_difference is None  # the CD is Nemenyi's
    with pytest.raises(ValueError):
        rank_methods(TIED, posthoc="tukey")


def test_critical_difference_against_tabled_q():
    r = rank_methods(TIED)
    assert r.critical_difference == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 4)), rel=1e-3)
    assert nemenyi_cd(4, 5) == pytest.approx(2.569 * math.sqrt(4 * 5 / (6 * 5)), rel=1e-3)
    rng = np.random.default_rng(1)
    four = {f"c{i}": {m: float(v) for m, v in zip("ABCD", rng.random(4), strict=False)} for i in range(5)}
    assert rank_methods(four).critical_difference == pytest.approx(nemenyi_cd(4, 5))
    # CD shrinks with more conditions, grows with alpha going down.
    assert nemenyi_cd(3, 10) < nemenyi_cd(3, 4)
    assert nemenyi_cd(3, 4, alpha=0.01) > nemenyi_cd(3, 4)


def test_method_missing_in_one_condition_drops_the_condition():
    scores = {f"c{i}": {"A": 0.9 - 0.01 * i, "B": 0.8, "C": 0.7, "D": 0.6} for i in range(5)}
    del scores["c2"]["D"]
    r = rank_methods(scores)
    # dropping c2 keeps 4 x 4 = 16 values, dropping D only 5 x 3 = 15
    assert r.conditions == ["c0", "c1", "c3", "c4"]
    assert sorted(r.methods) == ["A", "B", "C", "D"]
    assert "c2" in r.dropped and "D" in r.dropped["c2"] and "missing" in r.dropped["c2"]
    assert r.friedman_stat is not None


def test_method_missing_in_many_conditions_drops_the_method():
    scores = {f"c{i}": {"A": 0.9, "B": 0.8 + 0.02 * i, "C": 0.7, "D": 0.6} for i in range(5)}
    for c in ("c0", "c1"):
        del scores[c]["D"]
    scores["c3"]["D"] = float("nan")
    r = rank_methods(scores)
    # dropping D keeps 5 x 3 = 15 values, dropping c0, c1, c3 only 2 x 4 = 8
    assert r.conditions == [f"c{i}" for i in range(5)]
    assert sorted(r.methods) == ["A", "B", "C"]
    assert set(r.dropped) == {"D"}
    assert "missing in c0" in r.dropped["D"] and "NaN/None in c3" in r.dropped["D"]


def test_none_value_and_empty_condition_are_dropped():
    scores = {**TIED, "c5": {"A": None, "B": float("nan"), "C": None}}
    r = rank_methods(scores)
    assert r.conditions == list(TIED)
    assert "c5" in r.dropped
    assert r.average_ranks == pytest.approx(rank_methods(TIED).average_ranks)


def test_too_few_methods_or_conditions_give_a_note_not_a_test():
    two = rank_methods({c: {"A": v["A"], "B": v["B"]} for c, v in TIED.items()})
    assert two.friedman_stat is None and two.pairwise_p == {} and two.critical_difference is None
    assert "2 method" in two.note
    assert two.average_ranks == pytest.approx({"A": 1.375, "B": 1.625})

    one = rank_methods({"c1": TIED["c1"]})
    assert one.friedman_p is None and "1 condition" in one.note
    assert one.methods == ["A", "B", "C"]

    nothing = rank_methods({})
    assert nothing.methods == [] and nothing.note
    assert cd_diagram_png(nothing, "empty") is None


def test_all_tied_gives_a_note():
    r = rank_methods({f"c{i}": {"A": 0.5, "B": 0.5, "C": 0.5} for i in range(4)})
    assert r.friedman_stat is None and r.friedman_p is None
    assert "tied" in r.note
    assert r.average_ranks == {"A": 2.0, "B": 2.0, "C": 2.0}


def test_as_dict_is_json():
    d = rank_methods(TIED).as_dict()
    assert json.loads(json.dumps(d))["average_ranks"]["A"] == pytest.approx(1.375)
    assert set(d) >= {
        "methods",
        "conditions",
        "average_ranks",
        "friedman_stat",
        "friedman_p",
        "posthoc",
        "pairwise_p",
        "critical_difference",
        "dropped",
        "note",
    }


def test_cd_diagram_png():
    rng = np.random.default_rng(0)
    strength = {"PAL": 0.8, "FNPAL": 0.75, "CE": 0.6, "GCE": 0.62, "SCE": 0.55}
    scores = {f"cond{i}": {m: s + 0.05 * float(rng.standard_normal()) for m, s in strength.items()} for i in range(8)}
    r = rank_methods(scores)
    assert len(r.methods) == 5
    png = cd_diagram_png(r, "accuracy over 8 conditions")
    assert isinstance(png, bytes) and png.startswith(b"\x89PNG") and len(png) > 2000
    two = rank_methods({c: {"A": v["A"], "B": v["B"]} for c, v in TIED.items()})
    assert cd_diagram_png(two, "two methods") is None


# --------------------------------------------------------------------------- improvement


def _pairs(x, y):
    return np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a in x for b in y])


def test_poi_always_better_is_one():
    imp = probability_of_improvement(
        {"a": [3, 4, 5], "b": [7, 8]}, {"a": [0, 1, 2], "b": [1, 2, 3]}, method="FNPAL-CE", base="CE"
    )
    assert isinstance(imp, Improvement)
    assert imp.probability == 1.0 and imp.n_conditions == 2
    assert imp.ci_low == 1.0 and imp.ci_high == 1.0


def test_poi_interleaved_ties_and_average_over_conditions():
    inter = probability_of_improvement({"a": [1, 3]}, {"a": [2, 4]}, method="m", base="b")
    assert inter.probability == pytest.approx(0.25)  # only 3 > 2 of the 4 pairs
    ties = probability_of_improvement({"a": [1, 2]}, {"a": [2, 3]}, method="m", base="b")
    assert ties.probability == pytest.approx(0.125)  # one tie (2 = 2) counts 1/2 of 4 pairs
    x = {"a": [3, 4, 5], "b": [1, 3], "c": [0.5, 0.7, 0.9, 0.7], "only_x": [9.0]}
    y = {"a": [0, 1, 2], "b": [2, 4], "c": [0.7, 0.8], "only_y": [0.0]}
    imp = probability_of_improvement(x, y, method="m", base="b")
    expected = np.mean([_pairs(x[c], y[c]) for c in ("a", "b", "c")])
    assert expected == pytest.approx((1.0 + 0.25 + 3 / 8) / 3)  # c: 2 ties + 2 wins of 8
    assert imp.probability == pytest.approx(expected)
    assert imp.n_conditions == 3 and imp.conditions == ["a", "b", "c"]


def test_poi_ci_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(3)
    x = {f"c{i}": list(0.6 + 0.05 * rng.standard_normal(5)) for i in range(6)}
    y = {f"c{i}": list(0.58 + 0.05 * rng.standard_normal(5)) for i in range(6)}
    a = probability_of_improvement(x, y, method="PAL", base="CE", seed=7)
    b = probability_of_improvement(x, y, method="PAL", base="CE", seed=7)
    assert 0.0 <= a.ci_low <= a.probability <= a.ci_high <= 1.0
    assert a.ci_low < a.ci_high
    assert (a.ci_low, a.ci_high) == (b.ci_low, b.ci_high)
    assert a.note is None
    assert json.loads(json.dumps(a.as_dict()))["probability"] == pytest.approx(a.probability)


def test_poi_bootstrap_is_stratified_by_condition():
    # Per condition P is 1 and 0 whatever the resample: a stratified bootstrap always gives 0.5,
    # a pooled one would not.
    x = {"a": [5, 6, 7], "b": [0, 1, 2]}
    y = {"a": [0, 1, 2], "b": [5, 6, 7]}
    imp = probability_of_improvement(x, y, method="m", base="b")
    assert imp.probability == 0.5 and imp.ci_low == 0.5 and imp.ci_high == 0.5


def test_poi_single_seed_and_nan():
    one = probability_of_improvement({"a": [0.7], "b": [0.5]}, {"a": [0.6], "b": [0.5]}, method="m", base="b")
    assert one.probability == pytest.approx(0.75)  # 1 and a tie
    assert one.ci_low is None and one.ci_high is None and "one seed" in one.note

    # one condition with one seed is held fixed, the other resampled
    mixed = probability_of_improvement(
        {"a": [0.7], "b": [1, 3, float("nan")]}, {"a": [0.6], "b": [2, 4, None]}, method="m", base="b"
    )
    assert mixed.probability == pytest.approx((1.0 + 0.25) / 2)
    assert mixed.ci_low <= mixed.probability <= mixed.ci_high
    assert mixed.ci_low >= 0.5  # condition a always contributes 1/2

    none = probability_of_improvement({"a": [float("nan")]}, {"a": [1.0], "z": [1.0]}, method="m", base="b")
    assert none.probability is None and none.n_conditions == 0 and none.note
