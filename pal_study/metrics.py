"""Metrics every trial logs (PAL_SPEC §6): accuracy, per-class and many/medium/few, ECE with
reliability bins, sample margins and γ_min on cosine logits, feature norms per class.

:class:`EvalAccumulator` computes all of them in one pass over batches with O(k + bins) running
sums on the tensors' device (no host sync per batch); the one-shot functions are its reference.
"""

from __future__ import annotations

from typing import Any

import torch

N_BINS = 15


def accuracy(logits_or_pred: torch.Tensor, labels: torch.Tensor) -> float:
    pred = logits_or_pred.argmax(1) if logits_or_pred.dim() == 2 else logits_or_pred
    return (pred == labels).float().mean().item() if labels.numel() else float("nan")


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    total = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(labels[pred == labels], minlength=num_classes)
    return _ratio_list(correct, total)


def _ratio_list(num: torch.Tensor, den: torch.Tensor) -> list[float | None]:
    return [None if d == 0 else n / d for n, d in zip(num.tolist(), den.tolist())]


def scaled_thresholds(class_counts: list[int], reference_max: int = 500) -> tuple[float, float]:
    """Many/medium/few thresholds (100, 20 training images), scaled down for small data sets.

    The thresholds were defined on CIFAR-100-LT / ImageNet-LT, whose largest class has ~500-1280
    images; on digits (largest class ~130) they would put every class in "medium" or "few", so
    they shrink by max(counts)/reference_max, and never grow.
    """
    factor = min(1.0, max(class_counts) / reference_max) if class_counts else 1.0
    return 100.0 * factor, 20.0 * factor


def group_accuracy(per_class_acc: list[float | None], class_counts: list[int],
                   thresholds: tuple[float, float] = (100, 20)) -> dict[str, Any]:
    """Mean per-class accuracy of classes with > hi (many), [lo, hi] (medium), < lo (few) images."""
    hi, lo = thresholds
    groups: dict[str, list[float]] = {"many": [], "medium": [], "few": []}
    for acc, n in zip(per_class_acc, class_counts):
        if acc is None:
            continue
        groups["many" if n > hi else "few" if n < lo else "medium"].append(acc)
    out: dict[str, Any] = {g: (sum(v) / len(v) if v else None) for g, v in groups.items()}
    out.update({f"{g}_classes": len(v) for g, v in groups.items()})
    out["thresholds"] = [hi, lo]
    return out


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor,
                               n_bins: int = N_BINS) -> tuple[float, list[dict[str, float]]]:
    """ECE over equal-width bins of the max softmax probability, and the reliability bins."""
    acc = EvalAccumulator(logits.shape[1], n_bins=n_bins)
    acc._update_calibration(logits.float(), labels)
    return acc._calibration()


def sample_margins(cos_logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """γ(x, y) = f_y − max_{j≠y} f_j on cosine logits: mean, γ_min, per-class minimum."""
    m = _margins(cos_logits.float(), labels)
    per_class = [None if not (labels == c).any() else m[labels == c].min().item() for c in range(num_classes)]
    return {"mean": m.mean().item(), "gamma_min": m.min().item(), "per_class_min": per_class}


def _margins(cos_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    target = cos_logits.gather(1, labels[:, None]).squeeze(1)
    others = cos_logits.scatter(1, labels[:, None], float("-inf"))
    return target - others.max(1).values


def feature_norm_stats(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    acc = EvalAccumulator(num_classes)
    acc._update_norms(features.float(), labels)
    return acc._norms()


class EvalAccumulator:
    """One pass over an evaluation set: ``update`` per batch, ``compute`` once."""

    def __init__(self, num_classes: int, n_bins: int = N_BINS):
        self.k = num_classes
        self.n_bins = n_bins
        self._state: dict[str, torch.Tensor] | None = None

    def _init(self, device: torch.device) -> dict[str, torch.Tensor]:
        if self._state is None:
            z = lambda n, dt=torch.float64: torch.zeros(n, dtype=dt, device=device)  # noqa: E731
            self._state = {
                "count": z(self.k, torch.long), "correct": z(self.k, torch.long),
                "bin_count": z(self.n_bins, torch.long), "bin_conf": z(self.n_bins), "bin_correct": z(self.n_bins),
                "margin_sum": z(1), "margin_min": torch.full((self.k,), float("inf"), dtype=torch.float64, device=device),
                "norm_count": z(self.k, torch.long), "norm_sum": z(self.k), "norm_sq": z(self.k),
            }
        return self._state

    def update(self, features: torch.Tensor, logits: torch.Tensor, cos_logits: torch.Tensor,
               labels: torch.Tensor) -> None:
        s = self._init(labels.device)
        logits = logits.float()
        pred = logits.argmax(1)
        s["count"] += torch.bincount(labels, minlength=self.k)
        s["correct"] += torch.bincount(labels[pred == labels], minlength=self.k)
        self._update_calibration(logits, labels)
        m = _margins(cos_logits.float(), labels).double()
        s["margin_sum"] += m.sum()
        s["margin_min"] = s["margin_min"].scatter_reduce(0, labels, m, reduce="amin")
        self._update_norms(features.float(), labels)

    def _update_calibration(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        s = self._init(labels.device)
        conf, pred = torch.softmax(logits, 1).max(1)
        # Bin i holds confidences in (i/n, (i+1)/n]; confidence is never 0 for a softmax.
        idx = (torch.ceil(conf.double() * self.n_bins) - 1).clamp(0, self.n_bins - 1).long()
        s["bin_count"] += torch.bincount(idx, minlength=self.n_bins)
        s["bin_conf"] += torch.zeros(self.n_bins, dtype=torch.float64, device=idx.device).index_add_(0, idx, conf.double())
        s["bin_correct"] += torch.bincount(idx, weights=(pred == labels).double(), minlength=self.n_bins)

    def _update_norms(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        s = self._init(labels.device)
        norms = features.norm(dim=1).double()
        s["norm_sum"] += torch.zeros(self.k, dtype=torch.float64, device=norms.device).index_add_(0, labels, norms)
        s["norm_sq"] += torch.zeros(self.k, dtype=torch.float64, device=norms.device).index_add_(0, labels, norms**2)
        s["norm_count"] += torch.bincount(labels, minlength=self.k)

    def _calibration(self) -> tuple[float, list[dict[str, float]]]:
        s = self._state
        assert s is not None
        n = s["bin_count"].sum().item()
        counts, conf, correct = s["bin_count"].tolist(), s["bin_conf"].tolist(), s["bin_correct"].tolist()
        ece, bins = 0.0, []
        for i in range(self.n_bins):
            c = counts[i]
            bin_acc = correct[i] / c if c else 0.0
            bin_conf = conf[i] / c if c else 0.0
            ece += c / n * abs(bin_acc - bin_conf) if n else 0.0
            bins.append({"lower": i / self.n_bins, "upper": (i + 1) / self.n_bins, "count": c,
                         "accuracy": bin_acc, "confidence": bin_conf})
        return ece, bins

    def _norms(self) -> dict[str, Any]:
        s = self._state
        assert s is not None
        count = s["norm_count"].double()
        mean = s["norm_sum"] / count.clamp_min(1)
        var = (s["norm_sq"] / count.clamp_min(1) - mean**2).clamp_min(0)
        total = count.sum().clamp_min(1)
        overall_mean = s["norm_sum"].sum() / total
        overall_var = (s["norm_sq"].sum() / total - overall_mean**2).clamp_min(0)
        present = (count > 0).tolist()
        return {
            "per_class_mean": [v if p else None for v, p in zip(mean.tolist(), present)],
            "per_class_std": [v if p else None for v, p in zip(var.sqrt().tolist(), present)],
            "overall_mean": overall_mean.item(),
            "overall_std": overall_var.sqrt().item(),
        }

    def compute(self) -> dict[str, Any]:
        s = self._state
        if s is None:
            raise ValueError("EvalAccumulator.compute() before any update()")
        total = s["count"].sum().item()
        ece, bins = self._calibration()
        per_class_min = [None if c == 0 else m for m, c in zip(s["margin_min"].tolist(), s["count"].tolist())]
        present = [m for m in per_class_min if m is not None]
        return {
            "acc": s["correct"].sum().item() / total,
            "per_class_acc": _ratio_list(s["correct"], s["count"]),
            "ece": ece,
            "reliability": bins,
            "margin_mean": s["margin_sum"].item() / total,
            "gamma_min": min(present),
            "per_class_gamma_min": per_class_min,
            "feature_norm": self._norms(),
        }
