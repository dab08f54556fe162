"""Real training on the embedded digits data (scikit-learn's load_digits)."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from pal_study.config import TrainConfig, resolve
from pal_study.train import build_classifier, lr_factor, train


def _cfg(method: str, **kw) -> TrainConfig:
    return TrainConfig(method=method, **kw)


@pytest.fixture(scope="module")
def clean_ce():
    return train(_cfg("ce"))


@pytest.fixture(scope="module")
def clean_fnpal():
    return train(_cfg("ce+fnpal"))


def test_ce_reaches_95_on_clean_digits(clean_ce):
    assert clean_ce.status == "completed"
    assert clean_ce.final["test_acc"] >= 0.95
    assert clean_ce.epochs_completed == 30 and len(clean_ce.history) == 30
    assert clean_ce.noise_rate_measured == 0.0


def test_ce_fnpal_reaches_95_and_keeps_etf(clean_fnpal):
    r = clean_fnpal
    assert r.status == "completed" and r.final["test_acc"] >= 0.95
    geo = r.prototype_geometry
    # Anchored prototypes are untouched by training and weight decay: still a simplex ETF.
    assert geo["max_dev_from_etf"] < 1e-5
    assert abs(geo["norm_min"] - 1) < 1e-5 and abs(geo["norm_max"] - 1) < 1e-5
    assert geo["sum_norm"] < 1e-4
    # Features of a well-trained anchored model sit near their prototype: positive margins.
    assert r.final["gamma_min"] > -2 and r.final["margin_mean"] > 0.5


def test_result_has_everything_the_json_promises(clean_fnpal, tmp_path):
    p = tmp_path / "r.json"
    clean_fnpal.save(p)
    d = json.loads(p.read_text())
    for key in ("val_acc", "val_acc_clean", "test_acc", "train_loss", "ece", "gamma_min", "lr"):
        assert key in d["final"] and all(key in h for h in d["history"])
    assert len(d["per_class_acc"]) == 10
    assert sum(d["class_counts"]) > 1000 and len(d["class_counts"]) == 10
    assert {"cos_min", "cos_max", "max_dev_from_etf", "sum_norm", "norm_min"} <= set(d["prototype_geometry"])
    assert len(d["feature_norm"]["per_class_mean"]) == 10
    assert d["wall_time_s"] > 0 and d["config"]["head"]["kind"] == "fnpal"
    assert d["group_acc"] is None  # balanced data: no many/medium/few


def test_symmetric_noise_hurts_ce_and_is_measured(clean_ce):
    noisy = train(_cfg("ce", data={"noise": {"rate": 0.4}}))
    assert noisy.status == "completed"
    assert abs(noisy.noise_rate_measured - 0.4) < 0.02
    assert noisy.final["test_acc"] < clean_ce.final["test_acc"] - 0.03
    # Validation labels are noisy too: val accuracy on observed labels is far below clean.
    assert noisy.final["val_acc"] < noisy.final["val_acc_clean"]


def test_fixed_seed_repeats_exactly():
    cfg = _cfg("nce+rce+fnpal", optim={"epochs": 3}, data={"noise": {"rate": 0.2}}, seed=7)
    a, b = train(cfg), train(cfg)
    strip = lambda h: [{k: v for k, v in e.items() if not k.endswith("time_s")} for e in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    assert a.per_class_acc == b.per_class_acc
    c = train(cfg.model_copy(update={"seed": 8}))
    assert strip(c.history) != strip(a.history)


def test_imbalanced_reports_groups():
    r = train(_cfg("ce+pal", optim={"epochs": 5}, data={"imbalance": {"ratio": 20}}))
    counts = r.class_counts
    assert counts[0] > counts[-1] and max(counts) / min(counts) == pytest.approx(20, rel=0.25)
    g = r.group_acc
    assert g is not None and set(g) >= {"many", "medium", "few"}


def test_nan_loss_fails_cleanly():
    # A huge learning rate without clipping drives the logits to inf: the trial must end as
    # failed with a reason, not raise.
    r = train(_cfg("ce", optim={"lr": 1e30, "grad_clip": 0.0, "epochs": 5, "warmup_epochs": 0}))
    assert r.status == "failed"
    assert "non-finite" in r.reason
    assert r.epochs_completed < 5


def test_a_diverged_result_saves_as_json_with_nulls(tmp_path):
    """Its weights are NaN, so is its (learnt) prototype geometry: JSON has no NaN, the file has null."""
    r = train(_cfg("ce", optim={"lr": 1e30, "grad_clip": 0.0, "epochs": 2, "warmup_epochs": 0}))
    assert r.status == "failed" and any(v != v for v in r.prototype_geometry.values())
    r.save(tmp_path / "r.json")
    back = json.loads((tmp_path / "r.json").read_text())
    assert back["status"] == "failed" and None in back["prototype_geometry"].values()


def test_on_epoch_can_stop_the_trial():
    seen = []

    def on_epoch(m):
        seen.append(m.epoch)
        return m.epoch == 2

    r = train(_cfg("ce", optim={"epochs": 10}), on_epoch)
    assert seen == [1, 2] and r.status == "stopped" and r.epochs_completed == 2


def test_anchored_prototypes_are_buffers_not_parameters():
    cfg = resolve(_cfg("ce+fnpal"))
    model = build_classifier(cfg, (1, 8, 8), 10)
    names = [n for n, _ in model.named_parameters()]
    assert not any("prototypes" in n for n in names)
    assert any("prototypes" in n for n in model.state_dict())


def test_lr_schedule_shapes():
    cfg = resolve(_cfg("ce", optim={"epochs": 10, "warmup_epochs": 2}))
    f = [lr_factor(s, 10, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.05) and f[19] == pytest.approx(1.0)
    assert f[-1] < 0.01 and all(a >= b for a, b in itertools.pairwise(f[20:]))
    step = resolve(
        _cfg(
            "ce", optim={"epochs": 10, "warmup_epochs": 0, "schedule": "step", "milestones": [5, 8], "step_gamma": 0.1}
        )
    )
    assert lr_factor(49, 10, step) == 1.0 and lr_factor(50, 10, step) == pytest.approx(0.1)
    assert lr_factor(80, 10, step) == pytest.approx(0.01)


def test_threads_follow_allotment(monkeypatch):
    monkeypatch.setenv("PAL_STUDY_CPUS", "2")
    r = train(_cfg("ce", optim={"epochs": 1}))
    assert r.env["threads"] == 2 and torch.get_num_threads() == 2
    r = train(_cfg("ce", optim={"epochs": 1}, threads=1))
    assert r.env["threads"] == 1 and torch.get_num_threads() == 1


def test_gpu_only_switches_leave_the_cpu_path_identical():
    """amp and compile act on CUDA only, and channels_last on the CPU only for the conv nets in
    train.CPU_CHANNELS_LAST (tests/test_cpu_layout.py): for digits' MLP the run is bit-identical."""
    base = {"data": {"name": "digits"}, "optim": {"epochs": 2}, "device": "cpu"}
    off = train(TrainConfig.model_validate({**base, "amp": False, "channels_last": False, "compile": False}))
    on = train(TrainConfig.model_validate({**base, "amp": True, "channels_last": True, "compile": True}))
    assert on.history[-1]["train_loss"] == off.history[-1]["train_loss"]
    assert on.final["test_acc"] == off.final["test_acc"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_path_with_bf16_channels_last_and_compile():
    cfg = TrainConfig.model_validate(
        {"data": {"name": "digits"}, "optim": {"epochs": 2}, "device": "cuda", "amp": True, "compile": True}
    )
    result = train(cfg)
    assert result.status == "completed" and result.env["device"].startswith("cuda")
