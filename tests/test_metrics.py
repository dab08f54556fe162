from __future__ import annotations

import json
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
    logits = torch.nn.functional.one_hot(pred, 4).float()
    assert accuracy(logits, labels) == pytest.approx(3 / 5)
    assert per_class_accuracy(pred, labels, 4) == [0.5, 1.0, 0.0, None]
    assert per_class_accuracy(logits, labels, 4) == [0.5, 1.0, 0.0, None]
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.tensor([]), torch.tensor([], dtype=torch.long))


def test_groups_and_scaled_thresholds():
    counts = [500, 150, 100, 60, 20, 10]
    g = group_accuracy([1.0, 0.8, 0.6, 0.5, 0.4, 0.2], counts)
    # 100 and 20 themselves are medium ([lo, hi] is closed).
    assert g["many"] == pytest.approx(0.9)
    assert g["medium"] == pytest.approx(0.5)
    assert g["few"] == pytest.approx(0.2)
    assert (g["many_classes"], g["medium_classes"], g["few_classes"]) == (2, 3, 1)
    assert g["thresholds"] == [100.0, 20.0]
    assert scaled_thresholds(counts) == (100.0, 20.0)
    assert scaled_thresholds([1280, 5]) == (100.0, 20.0)  # never scaled up
    hi, lo = scaled_thresholds([125, 40, 5])  # digits-sized: factor 125/500
    assert (hi, lo) == (25.0, 5.0)
    g = group_accuracy([0.9, 0.5, 0.1, None], [125, 10, 2, 1], thresholds=(hi, lo))
    assert (g["many"], g["medium"], g["few"]) == (0.9, 0.5, 0.1)  # the class without test samples is left out
    assert g["few_classes"] == 1
    assert group_accuracy([1.0], [500])["few"] is None
    with pytest.raises(ValueError, match="3 classes, class_counts 2"):
        group_accuracy([1.0, 1.0, 1.0], [5, 5])


def test_ece_overconfident_by_hand():
    # Two samples at confidence 0.9 (bin 13 = (13/15, 14/15]), one right, one wrong: |0.5 − 0.9|.
    logits = torch.tensor([[0.9, 0.1], [0.9, 0.1]]).log()
    ece, bins = expected_calibration_error(logits, torch.tensor([0, 1]))
    assert ece == pytest.approx(0.4, abs=1e-6)
    assert len(bins) == 15 and bins[13]["count"] == 2 and bins[13]["accuracy"] == 0.5
    assert bins[13]["confidence"] == pytest.approx(0.9)
    assert bins[13]["lower"] == pytest.approx(13 / 15) and bins[13]["upper"] == pytest.approx(14 / 15)
    assert bins[0] == {"lower": 0.0, "upper": 1 / 15, "count": 0, "accuracy": None, "confidence": None}
    # Adding two perfectly calibrated samples at 1.0 halves the ECE (weights by bin size).
    logits = torch.tensor([[0.9, 0.1], [0.9, 0.1], [40.0, 0.0], [40.0, 0.0]])
    logits[:2] = logits[:2].log()
    ece, bins = expected_calibration_error(logits, torch.tensor([0, 1, 0, 0]))
    assert ece == pytest.approx(0.2, abs=1e-6) and bins[14]["count"] == 2


def test_ece_perfectly_calibrated_by_hand():
    # Confidence 0.6 with 3 of 5 right, 0.8 with 4 of 5 right: every bin's accuracy = confidence.
    logits = torch.tensor([[0.6, 0.4]] * 5 + [[0.2, 0.8]] * 5).log()
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 0])
    ece, bins = expected_calibration_error(logits, labels)
    assert ece == pytest.approx(0.0, abs=1e-6)
    used = [b for b in bins if b["count"]]
    assert [b["count"] for b in used] == [5, 5]
    assert [b["accuracy"] for b in used] == pytest.approx([0.6, 0.8])


def test_margins_by_hand():
    cos = torch.tensor([[0.9, 0.1, -0.2], [0.2, 0.5, 0.4], [0.3, 0.6, 0.1], [0.7, 0.0, 0.2]])
    labels = torch.tensor([0, 1, 0, 0])
    # γ: 0.9 − 0.1 = 0.8; 0.5 − 0.4 = 0.1; 0.3 − 0.6 = −0.3 (misclassified); 0.7 − 0.2 = 0.5.
    m = sample_margins(cos, labels, 3)
    assert m["per_class_min"][0] == pytest.approx(-0.3)
    assert m["per_class_min"][1] == pytest.approx(0.1)
    assert m["per_class_min"][2] is None
    assert m["gamma_min"] == pytest.approx(-0.3)
    assert m["mean"] == pytest.approx((0.8 + 0.1 - 0.3 + 0.5) / 4)
    # The simplex ETF optimum of Lemma 1 for k = 3: features on their prototypes give γ = k/(k−1).
    etf = torch.full((3, 3), -0.5).fill_diagonal_(1.0)
    assert sample_margins(etf, torch.arange(3), 3)["gamma_min"] == pytest.approx(1.5)


def test_feature_norms_by_hand():
    z = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 3.0]])
    s = feature_norm_stats(z, torch.tensor([0, 1, 1]), 3)
    assert s["per_class_mean"] == [pytest.approx(5.0), pytest.approx(2.0), None]
    assert s["per_class_std"] == [pytest.approx(0.0), pytest.approx(1.0), None]
    assert s["overall_mean"] == pytest.approx(3.0)
    assert s["overall_std"] == pytest.approx(math.sqrt(((5 - 3) ** 2 + (1 - 3) ** 2 + 0) / 3))


def _random_eval_set(n: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 16, generator=g) * (1 + torch.rand(n, 1, generator=g))
    logits = torch.randn(n, k, generator=g) * 3
    cos = torch.rand(n, k, generator=g) * 2 - 1
    y = torch.randint(0, k - 1, (n,), generator=g)  # the last class gets no samples
    return z, logits, cos, y


def test_accumulator_equals_one_shot_functions():
    n, k = 257, 7
    z, logits, cos, y = _random_eval_set(n, k)
    acc = EvalAccumulator(k)
    for lo, hi in [(0, 1), (1, 50), (50, 51), (51, 51), (51, 200), (200, n)]:
        acc.update(z[lo:hi], logits[lo:hi], cos[lo:hi], y[lo:hi])
    out = acc.compute()
    json.dumps(out, allow_nan=False)  # plain, NaN-free values
    assert set(out) == {
        "acc",
        "per_class_acc",
        "ece",
        "reliability",
        "margin_mean",
        "gamma_min",
        "per_class_gamma_min",
        "feature_norm",
    }
    assert out["acc"] == pytest.approx(accuracy(logits, y))
    assert out["per_class_acc"][:-1] == pytest.approx(per_class_accuracy(logits, y, k)[:-1])
    assert out["per_class_acc"][-1] is None
    ece, bins = expected_calibration_error(logits, y)
    assert out["ece"] == pytest.approx(ece)
    for mine, ref in zip(out["reliability"], bins, strict=False):
        assert mine["count"] == ref["count"]
        assert (mine["accuracy"], mine["confidence"]) == pytest.approx((ref["accuracy"], ref["confidence"]))
    assert sum(b["count"] for b in out["reliability"]) == n
    m = sample_margins(cos, y, k)
    assert out["gamma_min"] == pytest.approx(m["gamma_min"])
    assert out["margin_mean"] == pytest.approx(m["mean"])
    assert out["per_class_gamma_min"][:-1] == pytest.approx(m["per_class_min"][:-1])
    assert out["per_class_gamma_min"][-1] is None and m["per_class_min"][-1] is None
    fn = feature_norm_stats(z, y, k)
    for key in ("per_class_mean", "per_class_std"):
        assert out["feature_norm"][key][:-1] == pytest.approx(fn[key][:-1])
        assert out["feature_norm"][key][-1] is None and fn[key][-1] is None
    assert out["feature_norm"]["overall_mean"] == pytest.approx(fn["overall_mean"])
    assert out["feature_norm"]["overall_std"] == pytest.approx(z.norm(dim=1).std(unbiased=False).item())


def test_accumulator_takes_half_precision_and_is_order_free():
    z, logits, cos, y = _random_eval_set(64, 5, seed=3)
    a, b = EvalAccumulator(5), EvalAccumulator(5)
    a.update(z.bfloat16(), logits.bfloat16(), cos.bfloat16(), y)
    b.update(z[32:].bfloat16(), logits[32:].bfloat16(), cos[32:].bfloat16(), y[32:])
    b.update(z[:32].bfloat16(), logits[:32].bfloat16(), cos[:32].bfloat16(), y[:32])
    ra, rb = a.compute(), b.compute()
    assert ra["acc"] == rb["acc"] and ra["per_class_gamma_min"] == rb["per_class_gamma_min"]
    assert ra["ece"] == pytest.approx(rb["ece"])


def test_accumulator_needs_no_host_sync():
    # Meta tensors carry no data: every op that would read values back to the host (boolean
    # masks, bincount, .item()) fails on them, so a passing update is sync-free on CUDA too.
    k = 5
    acc = EvalAccumulator(k)
    meta = dict(device="meta")
    acc.update(
        torch.empty(8, 16, **meta),
        torch.empty(8, k, **meta),
        torch.empty(8, k, **meta),
        torch.empty(8, dtype=torch.long, **meta),
    )
    assert all(t.device.type == "meta" for t in acc._s.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_accumulator_update_does_not_sync_cuda():
    z, logits, cos, y = (t.cuda() for t in _random_eval_set(128, 6))
    acc = EvalAccumulator(6)
    torch.cuda.set_sync_debug_mode("error")
    try:
        acc.update(z, logits, cos, y)
        acc.update(z, logits, cos, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert acc.compute()["acc"] == pytest.approx(accuracy(logits, y))


def test_accumulator_errors():
    with pytest.raises(ValueError, match="before any update"):
        EvalAccumulator(3).compute()
    with pytest.raises(ValueError, match=r"num_classes must be >= 2.*got 1"):
        EvalAccumulator(1)
    acc = EvalAccumulator(3)
    acc.update(torch.empty(0, 4), torch.empty(0, 3), torch.empty(0, 3), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="no samples"):
        acc.compute()
