"""The metrics helpers on plain numbers (no torch, so the data sets' specs and the analysis import
them cheaply): the many/medium/few groups and their thresholds, mean ± std. ``pal_study.metrics``
re-exports them beside the metrics on tensors."""

from __future__ import annotations

import math
import statistics
from typing import Any

GROUP_THRESHOLDS = (100, 20)  # many > 100 ≥ medium ≥ 20 > few training images (docs/method.md §6)


def scaled_thresholds(
    class_counts: list[int], reference_max: int = 500, thresholds: tuple[float, float] = GROUP_THRESHOLDS
) -> tuple[float, float]:
    """Many/medium/few thresholds (default 100, 20 training images), scaled down for small data sets.

    The thresholds were defined on CIFAR-100-LT / ImageNet-LT, whose largest class has ~500-1280
    images. On digits (largest class ~130) they would put every class in "medium" or "few", so
    they shrink by max(counts) / reference_max, and never grow. A data set declares its own
    ``thresholds`` and ``reference_max`` (``DatasetSpec.group_thresholds``).
    """
    factor = min(1.0, max(class_counts) / reference_max) if len(class_counts) else 1.0
    hi, lo = thresholds
    return hi * factor, lo * factor


def mean_std(values: list[float | None]) -> tuple[float, float] | None:
    """(mean, sample std) of the finite values (std 0.0 for one value); None when there are none."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    if not kept:
        return None
    return statistics.fmean(kept), (statistics.stdev(kept) if len(kept) > 1 else 0.0)


def group_accuracy(
    per_class_acc: list[float | None], class_counts: list[int], thresholds: tuple[float, float] = GROUP_THRESHOLDS
) -> dict[str, Any]:
    """Mean per-class accuracy of classes with > hi (many), in [lo, hi] (medium), < lo (few)
    training images; ``None`` for an empty group. Classes without test samples are left out.

    Also returns ``<group>_classes`` (how many classes each mean covers) and ``thresholds`` [hi, lo].
    """
    if len(per_class_acc) != len(class_counts):
        raise ValueError(f"per_class_acc has {len(per_class_acc)} classes, class_counts {len(class_counts)}")
    hi, lo = thresholds
    if lo > hi:
        raise ValueError(f"thresholds must be (hi, lo) with lo <= hi, got {tuple(thresholds)}")
    groups: dict[str, list[float]] = {"many": [], "medium": [], "few": []}
    for acc, n in zip(per_class_acc, class_counts, strict=False):
        if acc is not None:
            groups["many" if n > hi else "few" if n < lo else "medium"].append(acc)
    out: dict[str, Any] = {g: (sum(v) / len(v) if v else None) for g, v in groups.items()}
    out.update({f"{g}_classes": len(v) for g, v in groups.items()})
    out["thresholds"] = [float(hi), float(lo)]
    return out
