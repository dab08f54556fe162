"""The failed-finals rule on constructed cases: a failed final counts as chance accuracy on
accuracy metrics and leaves any other comparison undecided; never dropped silently."""

from __future__ import annotations

import pytest

from pal_study.analysis.claims import CellInfo, ClaimSpec, evaluate
from pal_study.analysis.failed_finals import failed_metrics, num_classes
from pal_study.analysis.report import FinalRun, aggregate

CELLS = [CellInfo("method=ce", "ce", {"method": "ce"}), CellInfo("method=ce+fnpal", "ce+fnpal", {"method": "ce+fnpal"})]


def _values(fnpal_failed: set[int], metric: str = "test_acc") -> dict:
    base = {s: {metric: 0.70 + 0.001 * s} for s in range(6)}
    cell = {s: failed_metrics(10) if s in fnpal_failed else {metric: 0.80 + 0.001 * s} for s in range(6)}
    return {"method=ce": base, "method=ce+fnpal": cell}


def test_num_classes_from_the_registry_and_the_config():
    assert num_classes("mnist1d") == 10 and num_classes("cifar100") == 100
    assert num_classes("synthetic", {"data": {"synthetic": {"num_classes": 4}}}) == 4
    assert num_classes("nope") is None


def test_without_failures_six_winning_seeds_support_the_claim():
    [r] = evaluate([ClaimSpec(better="ce+fnpal", than="ce")], CELLS, _values(set()))
    assert r["verdict"] == "supported"
    c = r["comparisons"][0]
    assert c["failed_cell"] == [] and c["p"] == pytest.approx(2 / 64)


def test_a_diverged_seed_counts_as_chance_and_spoils_the_support():
    [r] = evaluate([ClaimSpec(better="ce+fnpal", than="ce")], CELLS, _values({3}))
    c = r["comparisons"][0]
    # Seed 3 stays paired, at 1/10: a -0.603 difference against five of +0.10.
    assert c["n_pairs"] == 6 and c["failed_cell"] == [3] and c["failed_baseline"] == []
    assert c["delta"] == pytest.approx((5 * 0.10 + (0.1 - 0.703)) / 6)
    assert c["p"] > 0.05 and r["verdict"] == "inconclusive"
    assert "count as chance accuracy" in c["note"]


def test_dropping_the_failed_seed_would_have_supported_it():
    # The same data with seed 3 simply missing: what the rule exists to prevent.
    values = _values(set())
    del values["method=ce+fnpal"][3]
    [r] = evaluate([ClaimSpec(better="ce+fnpal", than="ce")], CELLS, values)
    assert r["comparisons"][0]["n_pairs"] == 5 and r["comparisons"][0]["p"] == pytest.approx(2 / 32)


def test_a_failure_leaves_a_non_accuracy_comparison_undecided():
    # ECE, lower is better: every seed favours fnpal strongly, but one of its finals failed.
    values = {
        "method=ce": {s: {"ece": 0.30} for s in range(8)},
        "method=ce+fnpal": {s: failed_metrics(10) if s == 0 else {"ece": 0.05 + 0.001 * s} for s in range(8)},
    }
    [r] = evaluate([ClaimSpec(better="ce+fnpal", than="ce", metric="ece")], CELLS, values)
    c = r["comparisons"][0]
    assert c["p"] < 0.05 and c["verdict"] == "inconclusive" and r["verdict"] == "inconclusive"
    assert c["note"].startswith("not decided: 1 failed final(s)")


def _run(cell: str, method: str, seed: int, acc: float | None) -> FinalRun:
    return FinalRun(
        run_id=f"{cell}-{seed}",
        cell=cell,
        group="",
        method=method,
        dataset="digits",
        noise_rate=0.0,
        imbalance_ratio=1.0,
        seed=seed,
        weight_decay=None,
        metrics={} if acc is None else {"test_acc": acc},
        failed=acc is None,
        num_classes=10,
    )


def test_the_report_shows_k_of_n_failed_and_pairs_the_failed_seed_at_chance():
    from pal_study.analysis.formats import table_rows

    runs = [_run("method=ce", "ce", s, 0.7) for s in range(3)]
    runs += [_run("method=ce+fnpal", "ce+fnpal", s, None if s == 1 else 0.8) for s in range(3)]
    rows = aggregate(runs)
    fnpal = next(r for r in rows if r.method == "ce+fnpal")
    assert fnpal.n == 2 and fnpal.failed_seeds == [1] and fnpal.stats["test_acc"][0] == pytest.approx(0.8)
    assert fnpal.comparison.n_pairs == 3 and fnpal.comparison.failed_cell == (1,)
    assert fnpal.comparison.delta == pytest.approx((0.1 + 0.1 + (0.1 - 0.7)) / 3)
    assert table_rows([fnpal])[0][2] == "2 (1 of 3 failed)"
