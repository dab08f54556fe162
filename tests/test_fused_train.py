"""train_fused: a pack of configs of one cell (one seed, one data set) trained as one stacked model
against each config trained alone by train(), on real digits and MNIST-1D data."""

from __future__ import annotations

import math

import pytest

from pal_study.config import TrainConfig, resolve
from pal_study.fused_train import fuse_blocker, searched_blocker, train_fused
from pal_study.train import build_dataset_for, train


def _cfg(**kw) -> TrainConfig:
    base = {
        "method": "ce+fnpal",
        "data": {"name": "digits"},
        "optim": {"epochs": 3, "lr": 0.05},
        "seed": 1000,
        "device": "cpu",
        "threads": 1,
    }
    for key, value in kw.items():
        head, _, tail = key.partition("__")
        if tail:
            base.setdefault(head, {})[tail] = value
        else:
            base[key] = value
    return resolve(TrainConfig.model_validate(base))


# Members of one cell: same data, seed, model and loss; their own lr, momentum, weight decay,
# Nesterov, schedule, scale and gradient clipping.
DIGITS = [
    _cfg(),
    _cfg(optim__lr=0.1, optim__weight_decay=1e-3, head__scale=5.0),
    _cfg(optim__momentum=0.5, optim__nesterov=True, optim__schedule="step", optim__milestones=[2], head__scale=20.0),
    _cfg(optim__grad_clip=0.5, optim__warmup_epochs=0, optim__weight_decay=0.0),
]


def _close(a: float | None, b: float | None, rel: float) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= rel * (1 + abs(b))


def _same_run(fused, alone, *, acc_examples: int, n_test: int, later_rel: float = 1e-2) -> None:
    """The first epoch within float rounding; later ones as close as the chaotic growth of the
    last bits allows (measured on mnist1d_cnn at lr 0.05: train loss 8e-7 apart after epoch 1,
    2e-3 after epoch 4, test accuracy within 3 of 1000 examples; at lr 0.02: 1e-6 after 4)."""
    assert fused.status == alone.status and fused.epochs_completed == alone.epochs_completed
    for f, a in zip(fused.history, alone.history, strict=True):
        assert f["epoch"] == a["epoch"] and f["lr"] == a["lr"]
        rel = 1e-5 if f["epoch"] == 1 else later_rel
        assert _close(f["train_loss"], a["train_loss"], rel), (f, a)
        assert abs(f["test_acc"] - a["test_acc"]) * n_test <= acc_examples + 1e-9, (f, a)
        assert _close(f["ece"], a["ece"], 100 * rel)


def test_a_fused_digits_pack_trains_each_member_as_it_trains_alone():
    data = build_dataset_for(DIGITS[0])
    fused = train_fused(DIGITS, data=data)
    n_test = data.test_y.shape[0]
    for cfg, f in zip(DIGITS, fused, strict=True):
        alone = train(cfg, data=data)
        assert f.config == alone.config and f.method == alone.method
        # One epoch of 21 steps: within float rounding; three epochs: the same accuracies to an
        # example or so.
        _same_run(f, alone, acc_examples=2, n_test=n_test)
        assert f.history[0]["test_acc"] == alone.history[0]["test_acc"]
        assert f.prototype_geometry.keys() == alone.prototype_geometry.keys()
    assert len({round(f.final["train_loss"], 6) for f in fused}) == len(DIGITS), "members must differ"


def test_a_fused_mnist1d_cnn_pack_with_batch_norm_matches_its_members_alone():
    cfgs = [
        _cfg(data__name="mnist1d", model__arch="mnist1d_cnn", optim__epochs=2, method="ce"),
        _cfg(data__name="mnist1d", model__arch="mnist1d_cnn", optim__epochs=2, method="ce", optim__lr=0.02),
    ]
    data = build_dataset_for(cfgs[0])
    for cfg, f in zip(cfgs, train_fused(cfgs, data=data), strict=True):
        alone = train(cfg, data=data)
        _same_run(f, alone, acc_examples=4, n_test=data.test_y.shape[0])


def test_a_stopped_or_diverging_member_leaves_and_the_others_train_on():
    cfgs = [DIGITS[0], _cfg(optim__lr=1e9), DIGITS[1]]  # member 1 diverges at once
    seen: list[list[int]] = [[], [], []]

    def hook(m: int):
        def on_epoch(metrics) -> bool:
            seen[m].append(metrics.epoch)
            return m == 2 and metrics.epoch == 2  # member 2 is pruned after its 2nd epoch

        return on_epoch

    data = build_dataset_for(cfgs[0])
    out = train_fused(cfgs, [hook(0), hook(1), hook(2)], data=data)
    assert out[1].status == "failed" and "non-finite training loss" in (out[1].reason or "")
    assert out[2].status == "stopped" and out[2].epochs_completed == 2 and seen[2] == [1, 2]
    assert out[0].status == "completed" and seen[0] == [1, 2, 3]
    alone = train(cfgs[0], data=data)
    _same_run(out[0], alone, acc_examples=2, n_test=data.test_y.shape[0])
    assert math.isfinite(out[0].final["train_loss"])


def test_fuse_blocker_says_what_keeps_configs_apart():
    assert fuse_blocker(DIGITS) is None
    why = fuse_blocker([DIGITS[0], _cfg(seed=7)])
    assert why is not None and why.startswith("member 1 differs from member 0 in seed:")
    assert "model" in (fuse_blocker([DIGITS[0], _cfg(model__arch="digits_cnn")]) or "")
    assert "loss.name" in (fuse_blocker([DIGITS[0], _cfg(method="gce+fnpal")]) or "")
    assert "deferred re-weighting" in (fuse_blocker([_cfg(loss__drw_epoch=1), _cfg(loss__drw_epoch=1)]) or "")
    # What a study's search may vary: per-member knobs, not shared keys (DRW's among them).
    assert searched_blocker(["optim.weight_decay", "head.scale", "loss.margin", "optim.lr"]) is None
    assert "deferred re-weighting" in (searched_blocker(["optim.lr", "loss.drw_epoch"]) or "")
    assert "optim.batch_size, data.noise.rate" in (searched_blocker(["optim.batch_size", "data.noise.rate"]) or "")
    with pytest.raises(ValueError, match="do not train fused: member 1 differs"):
        train_fused([DIGITS[0], _cfg(seed=7)])


def test_a_member_of_a_killed_fused_pack_goes_on_alone_from_its_checkpoint(tmp_path):
    """Members save in train()'s format; the pack dies in epoch 3 (after saving epoch 2); each
    member then resumes alone with train(): its first two epochs are the pack's, bit for bit, and
    it ends where the member trained alone from the start ends, to float drift."""
    from pal_study.checkpoint import CheckpointPolicy

    cfgs = [_cfg(optim__epochs=4), _cfg(optim__epochs=4, optim__lr=0.1, head__scale=5.0, optim__momentum=0.0)]
    policies = [CheckpointPolicy(path=tmp_path / f"m{n}.pt", every_epochs=1) for n in range(2)]

    seen: list[list[dict]] = [[], []]

    def hook(n: int):
        def on_epoch(metrics) -> bool:
            if metrics.epoch == 3:
                raise KeyboardInterrupt  # the process is gone before epoch 3 is saved
            seen[n].append(metrics.as_dict())
            return False

        return on_epoch

    data = build_dataset_for(cfgs[0])
    with pytest.raises(KeyboardInterrupt):
        train_fused(cfgs, [hook(0), hook(1)], data=data, checkpoints=policies)
    for n, (cfg, policy) in enumerate(zip(cfgs, policies, strict=True)):
        assert policy.path.is_file()
        resumed = train(cfg, data=data, checkpoint=policy)
        assert resumed.resumed_from_epoch == 2 and resumed.status == "completed"
        assert resumed.history[:2] == seen[n]
        alone = train(cfg, data=data)
        _same_run(resumed, alone, acc_examples=2, n_test=data.test_y.shape[0])
        assert [h["lr"] for h in resumed.history] == [h["lr"] for h in alone.history]


def test_whether_fusion_pays_is_read_from_the_config_not_this_machines_device(monkeypatch):
    """A GPU study's driver may have no GPU: asking must not select (and fail on) CUDA here."""
    from pal_study.fused_train import FUSION_PAYS, fusion_pays

    monkeypatch.setitem(FUSION_PAYS, "cuda", {"digits_mlp": 4})
    gpu = _cfg(device="cuda")  # no CUDA on the test machine: resolving the device would raise
    assert fusion_pays(gpu, 4) and not fusion_pays(gpu, 2) and not fusion_pays(_cfg(device="cpu"), 4)
