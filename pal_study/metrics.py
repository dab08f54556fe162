"""Metrics every trial logs (docs/method.md §6): accuracy, per-class accuracy and many/medium/few,
ECE with reliability bins, sample margins and γ_min on cosine logits, feature norms per class.

Inputs are torch tensors, outputs plain Python values (JSON-serialisable, never NaN: an empty
class or bin gives ``None``). The one-shot functions are the reference; :class:`EvalAccumulator`
computes the same numbers in one pass over batches with O(k + bins) running sums kept on the
tensors' device, using only fixed-size ops (no boolean masks, no ``bincount``, no ``.item()``)
so that a CUDA evaluation loop never waits on the host until ``compute()``.
"""

from __future__ import annotations

from typing import Any

import torch

# The helpers on plain numbers live where the analysis and the data sets read them without torch.
from pal_study.plain_metrics import GROUP_THRESHOLDS, group_accuracy, mean_std, scaled_thresholds

__all__ = [
    "GROUP_THRESHOLDS",
    "N_BINS",
    "EvalAccumulator",
    "accuracy",
    "expected_calibration_error",
    "feature_norm_stats",
    "group_accuracy",
    "mean_std",
    "per_class_accuracy",
    "sample_margins",
    "scaled_thresholds",
]

N_BINS = 15


def _pred(logits_or_pred: torch.Tensor) -> torch.Tensor:
    return logits_or_pred.argmax(1) if logits_or_pred.dim() == 2 else logits_or_pred


def _check_nonempty(labels: torch.Tensor, what: str) -> None:
    if labels.numel() == 0:
        raise ValueError(f"{what} of an empty set of samples is undefined")


def _check_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (a margin needs a rival class), got {num_classes}")


def accuracy(logits_or_pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy from logits (batch × k) or predicted labels (batch)."""
    _check_nonempty(labels, "accuracy")
    return (_pred(logits_or_pred) == labels).double().mean().item()


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy on each class's samples; ``None`` for a class without samples. ``pred`` may be logits."""
    pred = _pred(pred)
    out: list[float | None] = []
    for c in range(num_classes):
        mine = labels == c
        n = int(mine.sum())
        out.append(None if n == 0 else int((pred[mine] == c).sum()) / n)
    return out


def _confidence(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max softmax probability, argmax); softmax in float32 even for half-precision logits."""
    return torch.softmax(logits.float(), 1).max(1)


def _bin_index(conf: torch.Tensor, n_bins: int) -> torch.Tensor:
    # Bin i holds (i/n, (i+1)/n]; a softmax maximum is ≥ 1/k > 0, the clamp only guards rounding.
    return (torch.ceil(conf.double() * n_bins) - 1).clamp(0, n_bins - 1).long()


def _reliability(
    counts: list[int], conf_sums: list[float], correct_sums: list[float], n_bins: int
) -> tuple[float, list[dict[str, Any]]]:
    total = sum(counts)
    ece, bins = 0.0, []
    for i, (c, conf, corr) in enumerate(zip(counts, conf_sums, correct_sums, strict=False)):
        bin_acc = corr / c if c else None
        bin_conf = conf / c if c else None
        if c:
            ece += c / total * abs(bin_acc - bin_conf)  # type: ignore[operator]
        bins.append(
            {
                "lower": i / n_bins,
                "upper": (i + 1) / n_bins,
                "count": int(c),
                "accuracy": bin_acc,
                "confidence": bin_conf,
            }
        )
    return ece, bins


def expected_calibration_error(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int = N_BINS
) -> tuple[float, list[dict[str, Any]]]:
    """ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)| over ``n_bins`` equal-width bins of the max
    softmax probability, and the reliability bins (lower, upper, count, accuracy, confidence;
    accuracy and confidence are ``None`` for an empty bin)."""
    _check_nonempty(labels, "ECE")
    conf, pred = _confidence(logits)
    idx = _bin_index(conf, n_bins)
    correct = (pred == labels).double()
    counts, confs, corrects = [], [], []
    for b in range(n_bins):
        mine = idx == b
        counts.append(int(mine.sum()))
        confs.append(conf.double()[mine].sum().item())
        corrects.append(correct[mine].sum().item())
    return _reliability(counts, confs, corrects, n_bins)


def _margins(cos_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """γ(x, y) = f_y − max_{j≠y} f_j per sample."""
    cos_logits = cos_logits.double()
    target = cos_logits.gather(1, labels[:, None]).squeeze(1)
    rivals = cos_logits.scatter(1, labels[:, None], float("-inf"))
    return target - rivals.max(1).values


def sample_margins(cos_logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Sample margins on normalised logits (cosines), docs/method.md §6: their mean, γ_min, and each
    class's minimum (``None`` for a class without samples)."""
    _check_nonempty(labels, "sample margins")
    _check_classes(num_classes)
    m = _margins(cos_logits, labels)
    per_class = [m[labels == c].min().item() if bool((labels == c).any()) else None for c in range(num_classes)]
    return {"mean": m.mean().item(), "gamma_min": m.min().item(), "per_class_min": per_class}


def feature_norm_stats(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Mean and (population) standard deviation of ‖z‖₂, per class (``None`` where a class has no
    samples) and overall."""
    _check_nonempty(labels, "feature norms")
    norms = features.double().norm(dim=1)
    mean: list[float | None] = []
    std: list[float | None] = []
    for c in range(num_classes):
        mine = norms[labels == c]
        mean.append(mine.mean().item() if mine.numel() else None)
        std.append(mine.std(unbiased=False).item() if mine.numel() else None)
    return {
        "per_class_mean": mean,
        "per_class_std": std,
        "overall_mean": norms.mean().item(),
        "overall_std": norms.std(unbiased=False).item(),
    }


class EvalAccumulator:
    """One pass over an evaluation set: ``update`` per batch, ``compute`` once.

    Keeps only running sums on the device of the first batch: per class the count, correct
    predictions, smallest margin, and sum and sum of squares of feature norms; per ECE bin the
    count, confidence sum and correct sum; the margin sum. Counts are int64, the rest float64.
    """

    def __init__(self, num_classes: int, n_bins: int = N_BINS):
        _check_classes(num_classes)
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.k = num_classes
        self.n_bins = n_bins
        self._s: dict[str, torch.Tensor] | None = None

    def _state(self, device: torch.device) -> dict[str, torch.Tensor]:
        if self._s is None:
            k, b = self.k, self.n_bins

            def zeros(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
                return torch.zeros(n, dtype=dtype, device=device)

            self._s = {
                "count": zeros(k, torch.long),
                "correct": zeros(k, torch.long),
                "bin_count": zeros(b, torch.long),
                "bin_conf": zeros(b),
                "bin_correct": zeros(b),
                "margin_sum": zeros(1),
                "margin_min": torch.full((k,), float("inf"), dtype=torch.float64, device=device),
                "norm_sum": zeros(k),
                "norm_sq": zeros(k),
            }
        return self._s

    @torch.no_grad()
    def update(
        self, features: torch.Tensor, logits: torch.Tensor, cos_logits: torch.Tensor, labels: torch.Tensor
    ) -> None:
        """Add a batch: backbone features (b × d), the head's logits and cosine logits (b × k),
        and the labels to score against (b)."""
        s = self._state(labels.device)
        labels = labels.long()
        conf, pred = _confidence(logits)
        hit = (pred == labels).long()
        ones = torch.ones_like(labels)
        s["count"].index_add_(0, labels, ones)
        s["correct"].index_add_(0, labels, hit)

        idx = _bin_index(conf, self.n_bins)
        s["bin_count"].index_add_(0, idx, ones)
        s["bin_conf"].index_add_(0, idx, conf.double())
        s["bin_correct"].index_add_(0, idx, hit.double())

        m = _margins(cos_logits, labels)
        s["margin_sum"] += m.sum()
        s["margin_min"] = s["margin_min"].scatter_reduce(0, labels, m, reduce="amin")

        norms = features.double().norm(dim=1)
        s["norm_sum"].index_add_(0, labels, norms)
        s["norm_sq"].index_add_(0, labels, norms * norms)

    def compute(self) -> dict[str, Any]:
        """acc, per_class_acc, ece, reliability, margin_mean, gamma_min, per_class_gamma_min,
        feature_norm (as :func:`feature_norm_stats`)."""
        if self._s is None:
            raise ValueError("EvalAccumulator.compute() before any update()")
        s = {name: t.tolist() for name, t in self._s.items()}  # host transfers happen here only
        count, total = s["count"], sum(s["count"])
        if total == 0:
            raise ValueError("EvalAccumulator.compute(): the batches held no samples")
        ece, bins = _reliability(s["bin_count"], s["bin_conf"], s["bin_correct"], self.n_bins)
        per_class_min = [m if n else None for m, n in zip(s["margin_min"], count, strict=False)]
        return {
            "acc": sum(s["correct"]) / total,
            "per_class_acc": [c / n if n else None for c, n in zip(s["correct"], count, strict=False)],
            "ece": ece,
            "reliability": bins,
            "margin_mean": s["margin_sum"][0] / total,
            "gamma_min": min(m for m in per_class_min if m is not None),
            "per_class_gamma_min": per_class_min,
            "feature_norm": _norm_stats(s["norm_sum"], s["norm_sq"], count),
        }


def _norm_stats(sums: list[float], squares: list[float], counts: list[int]) -> dict[str, Any]:
    def mean_std(s: float, sq: float, n: int) -> tuple[float, float]:
        mean = s / n
        return mean, max(sq / n - mean * mean, 0.0) ** 0.5

    per_class = [mean_std(s, sq, n) if n else (None, None) for s, sq, n in zip(sums, squares, counts, strict=False)]
    overall = mean_std(sum(sums), sum(squares), sum(counts))
    return {
        "per_class_mean": [m for m, _ in per_class],
        "per_class_std": [sd for _, sd in per_class],
        "overall_mean": overall[0],
        "overall_std": overall[1],
    }
