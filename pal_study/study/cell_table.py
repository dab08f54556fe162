"""A cell run's numbers: the aggregates over its finals and the study's comparison table, computed
as the report computes them (``pal_study.analysis``), so the runs and ``pal-study report`` agree."""

from __future__ import annotations

from typing import Any

from pal_study.analysis.report import comparisons
from pal_study.metrics import mean_std

COMPARISON_KEYS = (
    "baseline",
    "metric",
    "n_pairs",
    "delta",
    "ci_low",
    "ci_high",
    "p",
    "q",
    "p_t",
    "test",
    "p_wilcoxon",
    "seeds",
)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def cell_aggregates(finals: list[dict[str, Any]]) -> dict[str, float]:
    """A cell run's metrics over its completed finals' records (mean and sample std, as the report)."""
    out: dict[str, float] = {"n_finals": float(len(finals))}
    for key, names in (
        ("test_acc", ("final_test_acc_mean", "final_test_acc_std")),
        ("val_acc", ("final_val_acc_mean", "final_val_acc_std")),
        ("ece", ("ece_mean",)),
    ):
        ms = mean_std([_num(r.get(key)) for r in finals])
        if ms:
            out.update(zip(names, ms, strict=False))
    return out


def comparison_table(rows: list[Any]) -> dict[str, list]:
    """One row per cell: its test accuracy (mean, std over its finals) and the comparison with
    its baseline in the columns of ``report.comparisons`` (empty for cells without one)."""
    comps = {c["cell"]: c for c in comparisons(rows)}
    table: dict[str, list] = {k: [] for k in ("cell", "method", "n", "test_acc_mean", "test_acc_std", *COMPARISON_KEYS)}
    for r in rows:
        mean, std = r.stats.get("test_acc", (None, None))
        comp = comps.get(r.cell, {})
        for k, v in (
            ("cell", r.cell),
            ("method", r.method),
            ("n", r.n),
            ("test_acc_mean", mean),
            ("test_acc_std", std),
        ):
            table[k].append(v)
        for k in COMPARISON_KEYS:
            v = comp.get(k)
            table[k].append(" ".join(map(str, v)) if k == "seeds" and v is not None else v)
    return table
