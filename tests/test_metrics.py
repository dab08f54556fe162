from __future__ import annotations

import math

import pytest
import torch

from pal_study.metrics import (
    EvalAccumulator,
    accuracy,
    expected_calibration_error,
    feature_norm_stats,
    group_accuracy,
    per_class_accuracy,
    sample_margins,
    scaled_thresholds,
)


def test_accuracy_and_per_class():
    labels = torch.tensor([0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0])
    assert accuracy(pred, labels) == pytest.approx(3 / 5)
    assert per_class_accuracy(pred, labels, 4) == [0.5, 1.0, 0.0, None]


def test_groups_and_scaled_thresholds():
    counts = [500, 150, 60, 30, 10]
    g = group_accuracy([1.0, 0.8, 0.6, 0.4, 0.2], counts)
    assert g["many"] == pytest.approx(0.9) and g["medium"] == pytest.approx(0.5) and g["few"] == pytest.approx(0.2)
    assert scaled_thresholds(counts) == (100.0, 20.0)
    hi, lo = scaled_thresholds([125, 40, 5])
    assert (hi, lo) == (25.0, 5.0)
    g = group_accuracy([0.9, 0.5, 0.1], [125, 10, 2], thresholds=(hi, lo))
    assert (g["many"], g["medium"], g["few"]) == (0.9, 0.5, 0.1)
    assert group_accuracy([1.0], [500])["few"] is None


def test_ece_hand_examples():
    # Two samples at confidence 0.9 (bin 14), one right, one wrong: |0.5 - 0.9| = 0.4.
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1]])
    logits = p.log()
    ece, bins = expected_calibration_error(logits, torch.tensor([0, 1]))
    assert ece == pytest.approx(0.4, abs=1e-6)
    assert bins[13]["count"] == 2 and bins[13]["accuracy"] == 0.5
    assert bins[13]["confidence"] == pytest.approx(0.9)
    # Confidence 0.6 with 60 % right, 0.8 with 80 % right: perfectly calibrated.
    logits = torch.tensor([[0.6, 0.4]] * 5 + [[0.8, 0.2]] * 5).log()
    labels = torch.tensor([0, 0, 0, 1, 1, 0, 0, 0, 0, 1])
    ece, _ = expected_calibration_error(logits, labels)
    assert ece == pytest.approx(0.0, abs=1e-6)


def test_margins_hand_example():
    cos = torch.tensor([[0.9, 0.1, -0.2], [0.2, 0.5, 0.4], [0.3, 0.6, 0.1]])
    labels = torch.tensor([0, 1, 0])
    m = sample_margins(cos, labels, 3)
    assert m["per_class_min"][2] is None
    assert m["per_class_min"][0] == pytest.approx(-0.3) and m["per_class_min"][1] == pytest.approx(0.1)
    assert m["gamma_min"] == pytest.approx(-0.3)
    assert m["mean"] == pytest.approx((0.8 + 0.1 - 0.3) / 3)


def test_feature_norms():
    z = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 3.0]])
    s = feature_norm_stats(z, torch.tensor([0, 1, 1]), 3)
    assert s["per_class_mean"][:2] == pytest.approx([5.0, 2.0]) and s["per_class_mean"][2] is None
    assert s["per_class_std"][1] == pytest.approx(1.0)
    assert s["overall_mean"] == pytest.approx(3.0)


def test_accumulator_equals_one_shot_functions():
    g = torch.Generator().manual_seed(0)
    n, k = 257, 7
    z = torch.randn(n, 16, generator=g)
    logits = torch.randn(n, k, generator=g) * 3
    cos = torch.rand(n, k, generator=g) * 2 - 1
    y = torch.randint(0, k, (n,), generator=g)
    acc = EvalAccumulator(k)
    for lo, hi in [(0, 1), (1, 50), (50, 51), (51, 200), (200, n)]:
        acc.update(z[lo:hi], logits[lo:hi], cos[lo:hi], y[lo:hi])
    out = acc.compute()
    assert out["acc"] == pytest.approx(accuracy(logits, y))
    assert out["per_class_acc"] == pytest.approx(per_class_accuracy(logits.argmax(1), y, k))
    ece, bins = expected_calibration_error(logits, y)
    assert out["ece"] == pytest.approx(ece) and out["reliability"] == bins
    m = sample_margins(cos, y, k)
    assert out["gamma_min"] == pytest.approx(m["gamma_min"]) and out["margin_mean"] == pytest.approx(m["mean"])
    assert out["per_class_gamma_min"] == pytest.approx(m["per_class_min"])
    fn = feature_norm_stats(z, y, k)
    assert out["feature_norm"]["per_class_mean"] == pytest.approx(fn["per_class_mean"])
    assert out["feature_norm"]["overall_std"] == pytest.approx(z.norm(dim=1).std(unbiased=False).item())
    assert not any(math.isnan(v) for v in out["per_class_acc"])
