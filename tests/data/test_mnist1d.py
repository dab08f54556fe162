"""MNIST-1D (``data.name: mnist1d``): generated in memory by the ``mnist1d`` package."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from pal_study.config import TrainConfig, resolve
from pal_study.data import build_dataset
from pal_study.data.sets import get_dataset
from pal_study.data.sets.mnist1d import _generate, load_mnist1d, mnist1d_params
from pal_study.fingerprints_v1 import old_config
from pal_study.models import build_model


def test_shapes_classes_and_dtypes():
    raw = load_mnist1d()
    assert raw.train_x.shape == (4000, 1, 40) and raw.test_x.shape == (1000, 1, 40)
    assert raw.train_x.dtype == raw.test_x.dtype == torch.float32
    assert raw.train_y.dtype == raw.test_y.dtype == torch.int64
    assert raw.input_shape == (1, 40) == get_dataset("mnist1d").shape_for() and raw.num_classes == 10
    assert sorted(raw.train_y.unique().tolist()) == sorted(raw.test_y.unique().tolist()) == list(range(10))
    assert torch.bincount(raw.train_y, minlength=10).sum() == 4000
    # standardised with the training split's statistics
    assert abs(float(raw.train_x.mean())) < 1e-4 and abs(float(raw.train_x.std(unbiased=False)) - 1) < 1e-4
    assert torch.isfinite(raw.test_x).all() and abs(float(raw.test_x.mean())) < 0.2

    b = build_dataset("mnist1d", seed=0)
    assert b.input_shape == (1, 40) and b.num_classes == 10 and b.augment == "none"
    assert (b.train_x.shape[0], b.val_x.shape[0], b.test_x.shape[0]) == (3600, 400, 1000)
    assert b.train_x.shape[1:] == b.val_x.shape[1:] == b.test_x.shape[1:] == (1, 40)


def test_matches_the_package_standard_dataset():
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()
    d = make_dataset(get_dataset_args())
    np.random.set_state(state)
    raw = load_mnist1d()
    assert torch.equal(raw.train_y, torch.from_numpy(d["y"]).long())
    assert torch.equal(raw.test_y, torch.from_numpy(d["y_test"]).long())
    x = torch.from_numpy(d["x"]).float()
    assert torch.allclose(raw.train_x[:, 0], (x - x.mean()) / x.std(unbiased=False), atol=1e-4)


def test_deterministic_fixed_across_trial_seeds_and_rng_neutral():
    a, b = load_mnist1d(), load_mnist1d()
    assert a.train_x is not b.train_x  # fresh tensors from the per-process cache
    for f in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    a.train_x.add_(1.0)  # a caller's in-place change does not reach the cache
    assert torch.equal(load_mnist1d().train_x, b.train_x)

    _generate.cache_clear()
    random.seed(7), np.random.seed(7)
    load_mnist1d()  # the package seeds the global RNGs; the loader puts them back
    assert random.random() == random.Random(7).random()
    assert np.random.random() == np.random.RandomState(7).random_sample()
    c = load_mnist1d()
    assert torch.equal(c.train_x, b.train_x) and torch.equal(c.test_y, b.test_y)

    s0, s1 = build_dataset("mnist1d", seed=0), build_dataset("mnist1d", seed=1)
    s0b = build_dataset("mnist1d", seed=0)
    assert torch.equal(s0.train_x, s0b.train_x) and torch.equal(s0.val_y, s0b.val_y)
    assert torch.equal(s0.test_x, s1.test_x) and torch.equal(s0.test_y, s1.test_y)  # the data set is fixed
    assert not torch.equal(s0.val_y, s1.val_y)  # the split follows the trial seed


def test_larger_variant_and_options():
    raw = load_mnist1d({"num_samples": 10_000})
    assert raw.train_x.shape == (8000, 1, 40) and raw.test_x.shape == (2000, 1, 40)
    assert mnist1d_params(None) == {"num_samples": 5000}
    for bad in (5, 5001, True, 2.0e4, 10**7):
        with pytest.raises(ValueError, match="num_samples"):
            mnist1d_params({"num_samples": bad})
    with pytest.raises(ValueError, match="unknown mnist1d option"):
        mnist1d_params({"seq_len": 80})


def test_larger_variant_from_the_trial_config():
    from pal_study.config import ConfigError, load_train_config
    from pal_study.train import build_dataset_for

    cfg = resolve(TrainConfig.model_validate({"data": {"name": "mnist1d", "mnist1d": {"num_samples": 10_000}}}))
    b = build_dataset_for(cfg)
    assert b.train_x.shape[0] + b.val_x.shape[0] == 8000 and b.test_x.shape[0] == 2000
    assert cfg.model_dump()["data"]["mnist1d"] == {"num_samples": 10_000}
    # dumps are complete: the section at its default too (version-1 hashes left it out)
    default = resolve(TrainConfig.model_validate({"data": {"name": "mnist1d"}}))
    assert default.model_dump()["data"]["mnist1d"] == {"num_samples": 5000}
    assert "mnist1d" not in old_config(default.model_dump(mode="json"))["data"]
    assert build_dataset_for(default).test_x.shape[0] == 1000
    with pytest.raises(ConfigError) as e:
        load_train_config(None, ["data.name=mnist1d", "data.mnist1d.num_samples=10005"])
    assert "data.mnist1d.num_samples" in str(e.value) and "multiple of 10" in str(e.value)


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
def test_noise_at_the_requested_rate_on_the_training_pool_only(kind):
    clean = build_dataset("mnist1d", seed=3)
    noisy = build_dataset("mnist1d", noise_kind=kind, noise_rate=0.4, seed=3)
    y_obs = torch.cat([noisy.train_y, noisy.val_y])
    y_true = torch.cat([noisy.train_y_clean, noisy.val_y_clean])
    flipped = float((y_obs != y_true).double().mean())
    if kind == "symmetric":  # exactly round(0.4 n_c) per class
        assert flipped == pytest.approx(0.4, abs=1e-3) and noisy.noise_rate_measured == pytest.approx(flipped)
    else:  # only the mapped classes (7, 2, 5, 6, 3) flip: half of the ten
        assert flipped == pytest.approx(0.2, abs=5e-3)
    # the pool is the same samples, only relabelled; the test set is untouched
    assert torch.equal(
        torch.bincount(y_true, minlength=10), torch.bincount(torch.cat([clean.train_y, clean.val_y]), minlength=10)
    )
    assert torch.equal(noisy.test_x, clean.test_x) and torch.equal(noisy.test_y, clean.test_y)
    assert clean.noise_rate_measured == 0.0


def test_config_defaults_and_models():
    cfg = resolve(TrainConfig(data={"name": "mnist1d"}))
    assert cfg.model.arch == "mnist1d_cnn"
    for arch, d in (("mnist1d_cnn", 128), ("mnist1d_mlp", 100)):
        for last_relu in (True, False):
            m = build_model(arch, (1, 40), last_relu=last_relu, seed=0).eval()
            z = m(torch.randn(4, 1, 40, generator=torch.Generator().manual_seed(0)))
            assert z.shape == (4, d) == (4, m.feature_dim)
            assert bool(z.min() >= 0) == last_relu  # no final ReLU: features of either sign
        assert build_model(arch, (40,), seed=0)(torch.randn(2, 40)).shape == (2, d)
    with pytest.raises(ValueError, match="length >= 4"):
        build_model("mnist1d_cnn", (1, 3))


@pytest.mark.slow
def test_default_recipe_reaches_88_percent_over_three_seeds():
    from pal_study.train import train

    accs = []
    for seed in (0, 1, 2):
        r = train(TrainConfig(data={"name": "mnist1d"}, seed=seed))
        assert r.status == "completed" and r.config["model"]["arch"] == "mnist1d_cnn"
        accs.append(r.final["test_acc"])
    assert sum(accs) / 3 >= 0.88, accs
