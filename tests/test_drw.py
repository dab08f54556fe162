"""Deferred re-weighting (DRW, Cao et al. 2019): the class-balanced weights against their formula
(Cui et al. 2019), class weights as a facility of the losses that declare them (ce, ldam), the
``loss.drw_epoch`` / ``loss.drw_beta`` config keys and the CIFAR-LT recipe's default, and the
trainer applying the weights from that epoch on (not before), also after a checkpoint resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pal_study.train as train_mod
from pal_study.checkpoint import CheckpointPolicy
from pal_study.config import ConfigError, TrainConfig, resolve, validate_train_config
from pal_study.data.sets.cifar10 import CIFAR_LT_RECIPE
from pal_study.fingerprints_v1 import old_config
from pal_study.losses import DRW_BETA, LOSS_REGISTRY, build_loss, class_balanced_weights
from pal_study.train import build_dataset_for, drw_applies, train

# --------------------------------------------------------------------------------------------
# The weights


def _cb_reference(counts, beta):
    """(1 − β) / (1 − β^n_c), normalised to sum to k: LDAM-DRW's train.py, written out in numpy."""
    n = np.asarray(counts, dtype=np.float64)
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return w / w.sum() * len(n)


@pytest.mark.parametrize("beta", [0.9999, 0.999, 0.99, 0.5])
@pytest.mark.parametrize("counts", [[5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], [3, 1], [7] * 4])
def test_class_balanced_weights_match_the_formula(counts, beta):
    w = class_balanced_weights(counts, beta)
    assert w.dtype == torch.float64 and w.shape == (len(counts),)
    np.testing.assert_allclose(w.numpy(), _cb_reference(counts, beta), rtol=1e-12)
    assert float(w.sum()) == pytest.approx(len(counts), rel=1e-12)
    # Rarer classes weigh more (every list here is sorted largest first); equal classes weigh 1.
    assert all(a <= b for a, b in zip(w.tolist(), w.tolist()[1:], strict=False))
    if len(set(counts)) == 1:
        np.testing.assert_allclose(w.numpy(), 1.0, rtol=1e-12)


def test_class_balanced_weights_defaults_and_edges():
    counts = [100, 10, 1]
    assert DRW_BETA == 0.9999
    np.testing.assert_allclose(class_balanced_weights(counts).numpy(), _cb_reference(counts, 0.9999), rtol=1e-12)
    # β = 0: LDAM-DRW's "before" betas[0], every weight 1.
    np.testing.assert_allclose(class_balanced_weights(counts, 0.0).numpy(), 1.0)
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="beta"):
            class_balanced_weights(counts, bad)
    with pytest.raises(ValueError, match="class_counts"):
        class_balanced_weights([3, 0, 1])


# --------------------------------------------------------------------------------------------
# Class weights in the losses


def test_losses_that_take_weights_are_declared():
    assert {s.name for s in LOSS_REGISTRY.entries() if s.supports_weights} == {"ce", "ldam"}
    assert {s.name for s in LOSS_REGISTRY.entries() if s.recipe_drw} == {"ldam"}


@pytest.mark.parametrize("name", ["ce", "ldam"])
def test_weighted_loss_is_the_weighted_mean(name):
    k = 5
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, k, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, k, (64,), generator=g)
    extra = {"class_counts": [50, 30, 20, 10, 5], "scale": 10.0} if name == "ldam" else {}
    w = class_balanced_weights([50, 30, 20, 10, 5], 0.99)
    loss = build_loss(name, k, **extra)
    per = loss.per_sample(z, y)
    plain = loss(z, y)
    assert torch.equal(plain, per.mean())
    loss.set_weight(w)
    got = loss(z, y)
    expected = (w[y] * per).sum() / w[y].sum()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    # The same reduction as F.cross_entropy(weight=) on the margin-shifted logits.
    torch.testing.assert_close(got, F.cross_entropy(loss.shifted_logits(z, y), y, weight=w), rtol=1e-12, atol=0)
    loss.set_weight(None)
    assert torch.equal(loss(z, y), plain)
    # The keyword does the same as set_weight.
    torch.testing.assert_close(build_loss(name, k, weight=w, **extra)(z, y), got, rtol=0, atol=0)


def test_losses_without_weights_reject_them():
    loss = build_loss("nce", 3)
    loss.set_weight(None)  # idempotent "off" is fine
    with pytest.raises(ValueError, match=r"takes no class weights.*ce, ldam"):
        loss.set_weight([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unknown keyword 'weight'"):
        build_loss("nce", 3, weight=[1.0, 2.0, 3.0])


# --------------------------------------------------------------------------------------------
# Config


def _cfg(**kw) -> TrainConfig:
    return validate_train_config(kw, "test")


def test_drw_keys_rejected_for_losses_without_weights():
    for key, value in (("drw_epoch", 3), ("drw_beta", 0.99), ("drw_epoch", False)):
        with pytest.raises(ConfigError) as e:
            _cfg(method="nce+rce", loss={key: value})
        msg = str(e.value)
        assert f"loss.{key}" in msg and "ce, ldam" in msg and "'nce+rce'" in msg


@pytest.mark.parametrize("bad", [-1, True, 2.5, "160"])
def test_drw_epoch_values(bad):
    with pytest.raises(ConfigError, match=r"loss.drw_epoch"):
        _cfg(method="ce", loss={"drw_epoch": bad})
    with pytest.raises(ConfigError, match=r"loss.drw_beta"):
        _cfg(method="ce", loss={"drw_epoch": 3, "drw_beta": 1.0})


def test_cifar_lt_recipe_turns_drw_on_for_ldam_only():
    assert CIFAR_LT_RECIPE.drw_epoch == 160 and CIFAR_LT_RECIPE.epochs == 200
    assert 160 in CIFAR_LT_RECIPE.milestones  # DRW starts with the first lr step, as in LDAM-DRW
    for data in ("cifar10", "cifar100"):
        lt = {"name": data, "root": "x", "imbalance": {"ratio": 100}}
        r = resolve(_cfg(method="ldam", data=lt))
        assert (r.loss.drw_epoch, r.loss.drw_beta) == (160, DRW_BETA) and resolve(r) == r
        assert r.loss.drw_active and not drw_applies(r, 160) and drw_applies(r, 161)
        # ce: CE-DRW only where asked for.
        r = resolve(_cfg(method="ce", data=lt))
        assert r.loss.drw_epoch is None and not r.loss.drw_active and resolve(r) == r
        r = resolve(_cfg(method="ce+pal", data=lt, loss={"drw_epoch": 160}))
        assert (r.loss.drw_epoch, r.loss.drw_beta) == (160, DRW_BETA)
        # false turns LDAM's recipe DRW off; an explicit β is kept.
        r = resolve(_cfg(method="ldam", data=lt, loss={"drw_epoch": False}))
        assert r.loss.drw_epoch is False and not r.loss.drw_active and resolve(r) == r
        r = resolve(_cfg(method="ldam", data=lt, loss={"drw_beta": 0.999}))
        assert (r.loss.drw_epoch, r.loss.drw_beta) == (160, 0.999)
        # Balanced data: no long-tail recipe, no DRW.
        r = resolve(_cfg(method="ldam", data={"name": data, "root": "x"}))
        assert r.loss.drw_epoch is None and not r.loss.drw_active


def test_configs_without_drw_dump_every_key():
    # Dumps are complete (unset DRW keys as None); version-1 hashes were of dumps without them.
    d = resolve(TrainConfig(method="ce")).model_dump(mode="json")
    assert d["loss"]["drw_epoch"] is None and d["loss"]["drw_beta"] is None
    assert "drw_epoch" not in old_config(d)["loss"] and "drw_beta" not in old_config(d)["loss"]
    d = resolve(_cfg(method="ce", loss={"drw_epoch": 2})).model_dump(mode="json")["loss"]
    assert d["drw_epoch"] == 2 and d["drw_beta"] == DRW_BETA


# --------------------------------------------------------------------------------------------
# Training

EPOCHS, DRW_EPOCH = 4, 2
LT = {"imbalance": {"ratio": 10}}
CFG = TrainConfig(method="ce", data=LT, loss={"drw_epoch": DRW_EPOCH}, optim={"epochs": EPOCHS}, threads=1)


def _train_counts(cfg: TrainConfig) -> list[int]:
    data = build_dataset_for(resolve(cfg))
    return torch.bincount(data.train_y.cpu(), minlength=data.num_classes).tolist()


@pytest.fixture
def weights_seen(monkeypatch):
    """The criterion's class weights at each train_epoch call."""
    seen: list[torch.Tensor | None] = []
    real = train_mod.train_epoch

    def spy(model, net, batches, criterion, *args, **kwargs):
        seen.append(None if criterion.weight is None else criterion.weight.detach().cpu().clone())
        return real(model, net, batches, criterion, *args, **kwargs)

    monkeypatch.setattr(train_mod, "train_epoch", spy)
    return seen


def strip(history):
    return [{k: v for k, v in e.items() if not k.endswith("time_s")} for e in history]


@pytest.fixture(scope="module")
def uninterrupted():
    return train(CFG)


def test_training_applies_the_weights_from_drw_epoch_on(weights_seen, uninterrupted):
    r = train(CFG)
    assert r.status == "completed" and len(weights_seen) == EPOCHS
    assert weights_seen[:DRW_EPOCH] == [None] * DRW_EPOCH  # not before
    counts = _train_counts(CFG)
    assert min(counts) < max(counts)  # long-tailed: the weights are not all 1
    expected = torch.as_tensor(_cb_reference(counts, DRW_BETA))
    for w in weights_seen[DRW_EPOCH:]:
        torch.testing.assert_close(w, expected, rtol=1e-12, atol=0)
    assert strip(r.history) == strip(uninterrupted.history)  # deterministic
    # The first DRW_EPOCH epochs are plain CE's; the weighted ones differ.
    plain = train(CFG.model_copy(update={"loss": CFG.loss.model_copy(update={"drw_epoch": False})}))
    assert weights_seen[EPOCHS:] == [None] * EPOCHS
    assert strip(plain.history)[:DRW_EPOCH] == strip(r.history)[:DRW_EPOCH]
    assert plain.history[DRW_EPOCH]["train_loss"] != r.history[DRW_EPOCH]["train_loss"]


def test_ldam_drw_in_training(weights_seen):
    cfg = TrainConfig(method="ldam", data=LT, loss={"drw_epoch": 1}, optim={"epochs": 2}, threads=1)
    r = train(cfg)
    assert r.status == "completed"
    assert weights_seen[0] is None and weights_seen[1] is not None
    torch.testing.assert_close(weights_seen[1], torch.as_tensor(_cb_reference(_train_counts(cfg), DRW_BETA)))


@pytest.mark.parametrize("stop_after", [1, 3])  # before and after the switch
def test_resumed_trial_applies_the_weights(tmp_path, uninterrupted, weights_seen, stop_after):
    path = tmp_path / "trial.pt"
    first = train(CFG, lambda m: m.epoch == stop_after + 1, checkpoint=CheckpointPolicy(path, every_epochs=1))
    assert first.status == "stopped"
    del weights_seen[:]
    r = train(CFG, checkpoint=CheckpointPolicy(path, every_epochs=1))
    assert r.resumed_from_epoch == stop_after
    # The resumed run trains epochs stop_after+1 .. EPOCHS, each with the weights it should have.
    assert [w is not None for w in weights_seen] == [e > DRW_EPOCH for e in range(stop_after + 1, EPOCHS + 1)]
    assert strip(r.history) == strip(uninterrupted.history)
    fa, fb = ({k: v for k, v in d.items() if not k.endswith("time_s")} for d in (r.final, uninterrupted.final))
    assert fa == fb and r.per_class_acc == uninterrupted.per_class_acc
