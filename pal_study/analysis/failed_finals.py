"""What a failed final counts as in a paired comparison: one rule, used by the run's verdicts, the
report from the tracking store and the report from the study's own record.

Dropping a seed whose run diverged (non-finite loss, a crash) would compare an unstable method on
its lucky seeds only. So a failed final stays in the pairing:

- on an accuracy metric it counts as **chance accuracy, 1/k** (k classes): what a network whose
  outputs are NaN scores on a balanced test set (argmax then picks one fixed class);
- on any other metric (ECE, ...) there is no such value, and a comparison with a failed final on
  either side is **not decided** (inconclusive), whatever the remaining seeds say.

Reports show "k of n failed" per cell beside its mean, which is over the completed finals.
"""

from __future__ import annotations

from typing import Any

from pal_study.data.sets import DATASET_REGISTRY

ACCURACY_METRICS = ("test_acc", "val_acc", "val_acc_clean", "test_acc_many", "test_acc_medium", "test_acc_few")
RULE = (
    "a failed final counts as chance accuracy (1/k) on accuracy metrics; on other metrics a comparison with "
    "a failed final is not decided"
)
FAILED = "failed"  # key in a seed's metrics marking a failed final


def num_classes(dataset: str, config: dict[str, Any] | None = None) -> int | None:
    """Classes of ``dataset`` (its options from ``config`` where the count depends on them)."""
    if dataset not in DATASET_REGISTRY:
        return None
    spec = DATASET_REGISTRY.get(dataset)
    options = ((config or {}).get("data") or {}).get(spec.options_key or "", {}) if spec.options_key else {}
    return spec.classes_for(options or {})


def failed_metrics(k: int | None) -> dict[str, Any]:
    """The metrics a failed final contributes to comparisons."""
    out: dict[str, Any] = {FAILED: True}
    if k:
        out.update({m: 1.0 / k for m in ACCURACY_METRICS})
    return out


def is_failed(metrics: dict[str, Any] | None) -> bool:
    return bool(metrics and metrics.get(FAILED))


def apply_rule(
    comparison: dict[str, Any], cell: dict[int, dict[str, Any]], baseline: dict[int, dict[str, Any]], metric: str
) -> None:
    """Record on a comparison row (``Paired.as_dict()`` + verdict) which seeds failed on each side,
    and, for a metric with no chance value, make it undecided."""
    seeds = set(cell) & set(baseline)
    fc = sorted(s for s in seeds if is_failed(cell.get(s)))
    fb = sorted(s for s in seeds if is_failed(baseline.get(s)))
    comparison["failed_cell"], comparison["failed_baseline"] = fc, fb
    if not (fc or fb):
        return
    if metric in ACCURACY_METRICS:
        comparison["note"] = (
            f"{len(fc)} failed final(s) of the cell and {len(fb)} of the baseline count as chance accuracy"
        )
    else:
        comparison["note"] = f"not decided: {len(fc) + len(fb)} failed final(s) and no chance value for {metric}"
        comparison["verdict"] = "inconclusive"


__all__ = ["ACCURACY_METRICS", "FAILED", "RULE", "apply_rule", "failed_metrics", "is_failed", "num_classes"]
