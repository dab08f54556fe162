from __future__ import annotations

import json
import logging
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pal_study.data import DATASETS, DataBundle, DataError, DeviceBatches, build_dataset, long_tail_counts
from pal_study.data.formats import write_cifar10, write_cifar100, write_mnist
from pal_study.data.sources import load_digits

# --------------------------------------------------------------------------------------------
# digits


def test_digits_split_sizes_and_clean_balanced_test() -> None:
    b = build_dataset("digits", noise_rate=0.0, val_fraction=0.1, seed=0)
    assert b.num_classes == 10 and b.input_shape == (1, 8, 8) and b.augment == "none"
    assert b.test_y.numel() == 360  # 20 % of 1797, stratified
    assert b.train_y.numel() + b.val_y.numel() == 1797 - 360
    assert b.val_y.numel() == round(0.1 * 1437)
    test_counts = torch.bincount(b.test_y, minlength=10)
    assert test_counts.min() >= 35 and test_counts.max() <= 37
    assert b.train_x.dtype == torch.float32 and b.train_y.dtype == torch.int64
    assert b.train_x.shape[1:] == (1, 8, 8)
    # normalised with the training pool's statistics
    pool = torch.cat([b.train_x, b.val_x])
    assert abs(pool.mean().item()) < 1e-4 and abs(pool.std().item() - 1) < 1e-2
    assert b.noise_rate_measured == 0.0
    assert torch.equal(b.train_y, b.train_y_clean) and torch.equal(b.val_y, b.val_y_clean)
    # the test split is the same whatever the trial seed (as for MNIST/CIFAR)
    assert torch.equal(build_dataset("digits", seed=5).test_x, b.test_x)


def test_digits_noise_rate_and_val_from_noisy_pool() -> None:
    b = build_dataset("digits", noise_rate=0.4, seed=1)
    assert abs(b.noise_rate_measured - 0.4) < 0.01
    all_obs = torch.cat([b.train_y, b.val_y])
    all_clean = torch.cat([b.train_y_clean, b.val_y_clean])
    assert b.noise_rate_measured == pytest.approx((all_obs != all_clean).double().mean().item())
    assert (b.val_y != b.val_y_clean).any(), "validation labels carry the noise"
    assert 0.25 < (b.val_y != b.val_y_clean).double().mean().item() < 0.55
    # validation is stratified by the observed label
    val_counts = torch.bincount(b.val_y, minlength=10).double()
    obs_counts = torch.bincount(all_obs, minlength=10).double()
    assert torch.all((val_counts - 0.1 * obs_counts).abs() < 1)
    # test stays clean: same as the noise-free bundle's
    clean = build_dataset("digits", noise_rate=0.0, seed=1)
    assert torch.equal(b.test_y, clean.test_y) and torch.equal(b.test_x, clean.test_x)


def test_digits_asymmetric_noise_only_on_mapped_classes() -> None:
    b = build_dataset("digits", noise_kind="asymmetric", noise_rate=0.4, seed=0)
    obs = torch.cat([b.train_y, b.val_y])
    clean = torch.cat([b.train_y_clean, b.val_y_clean])
    changed = obs != clean
    mapping = {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}
    for i in torch.nonzero(changed).flatten().tolist():
        assert int(obs[i]) == mapping[int(clean[i])]
    assert set(clean[changed].tolist()) == set(mapping)
    assert 0.15 < b.noise_rate_measured < 0.25  # 5 of 10 classes at 0.4


@pytest.mark.parametrize("profile", ["exp", "step"])
def test_digits_long_tail_class_counts(profile: str) -> None:
    pool_sizes = torch.bincount(load_digits().train_y, minlength=10)
    b = build_dataset("digits", imbalance_ratio=10, imbalance_profile=profile, noise_rate=0.2, seed=2)
    expected = long_tail_counts(int(pool_sizes.min()), 10, 10, profile)
    assert b.class_counts == expected
    clean = torch.cat([b.train_y_clean, b.val_y_clean])
    assert torch.bincount(clean, minlength=10).tolist() == expected
    assert torch.bincount(b.test_y, minlength=10).min() >= 35, "test stays balanced"
    balanced = build_dataset("digits", imbalance_ratio=1.0, seed=2)
    assert balanced.class_counts == pool_sizes.tolist(), "ratio 1 keeps the pool as it is"


def test_digits_deterministic_per_seed() -> None:
    a = build_dataset("digits", noise_rate=0.3, imbalance_ratio=5, seed=3)
    b = build_dataset("digits", noise_rate=0.3, imbalance_ratio=5, seed=3)
    c = build_dataset("digits", noise_rate=0.3, imbalance_ratio=5, seed=4)
    for f in ("train_x", "train_y", "train_y_clean", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert not torch.equal(a.train_y, c.train_y)


def test_val_fraction_zero_gives_empty_val() -> None:
    b = build_dataset("digits", val_fraction=0.0)
    assert b.val_x.shape == (0, 1, 8, 8) and b.val_y.shape == (0,) and b.val_y.dtype == torch.int64
    assert b.train_y.numel() == 1437


def test_bundle_to_and_summary() -> None:
    b = build_dataset("digits", noise_rate=0.2, imbalance_ratio=4, seed=0)
    moved = b.to("cpu")
    assert isinstance(moved, DataBundle) and moved is not b
    assert torch.equal(moved.train_x, b.train_x)
    s = json.loads(json.dumps(b.summary()))
    assert s["n_train"] == b.train_y.numel() and s["n_val"] == b.val_y.numel() and s["n_test"] == 360
    assert s["class_counts"] == b.class_counts and s["noise_rate_measured"] == b.noise_rate_measured
    assert s["noise_rate"] == 0.2 and s["imbalance_ratio"] == 4.0 and s["input_shape"] == [1, 8, 8]


def test_batches_over_a_bundle() -> None:
    b = build_dataset("digits", val_fraction=0.0)
    seen = torch.cat(
        [yb for _, yb in DeviceBatches(b.train_x, b.train_y, 128, generator=torch.Generator().manual_seed(0))]
    )
    assert torch.equal(seen.sort().values, b.train_y.sort().values)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(name="imagenet"), "imagenet.*digits, mnist, cifar10, cifar100, synthetic"),
        (dict(name="digits", noise_kind="pairflip"), "pairflip"),
        (dict(name="digits", noise_rate=1.0), "noise rate"),
        (dict(name="digits", imbalance_ratio=0.5), "imbalance ratio.*0.5"),
        (dict(name="digits", imbalance_profile="linear"), "linear"),
        (dict(name="digits", val_fraction=1.0), "val_fraction"),
        (dict(name="synthetic", synthetic=dict(classes=3)), "classes.*allowed"),
        (dict(name="synthetic", synthetic=dict(num_classes=1)), "num_classes"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, match: str) -> None:
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        build_dataset(name, **kwargs)


def test_datasets_constant() -> None:
    assert DATASETS == ("digits", "mnist", "cifar10", "cifar100", "synthetic", "mnist1d")


# --------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_determinism_shape_and_overrides() -> None:
    opts = dict(num_classes=4, dim=6, train_per_class=50, test_per_class=20, separation=4.0, input_shape=None)
    a = build_dataset("synthetic", synthetic=opts, noise_rate=0.2, seed=0)
    b = build_dataset("synthetic", synthetic=opts, noise_rate=0.2, seed=0)
    assert a.input_shape == (6,) and a.num_classes == 4 and a.augment == "none"
    assert a.train_y.numel() + a.val_y.numel() == 200 and a.test_y.numel() == 80
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert abs(a.noise_rate_measured - 0.2) < 0.01
    # classes are separated: nearest class mean classifies the clean test set well
    means = torch.stack([a.train_x[a.train_y_clean == c].mean(0) for c in range(4)])
    pred = torch.cdist(a.test_x, means).argmin(1)
    assert (pred == a.test_y).double().mean() > 0.9
    img = build_dataset(
        "synthetic",
        synthetic=dict(num_classes=3, train_per_class=8, test_per_class=2, input_shape=(3, 32, 32)),
        val_fraction=0.0,
    )
    assert img.input_shape == (3, 32, 32) and img.train_x.shape == (24, 3, 32, 32)
    assert img.test_x.shape == (6, 3, 32, 32)
    other = build_dataset("synthetic", synthetic=dict(opts, data_seed=1), noise_rate=0.2, seed=0)
    assert not torch.equal(other.test_x, a.test_x)


def test_synthetic_options_ignored_for_other_sets() -> None:
    b = build_dataset("digits", synthetic=dict(num_classes=3, dim=4))
    assert b.num_classes == 10


# --------------------------------------------------------------------------------------------
# torchvision sources from files written here in the real on-disk formats


def _images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def test_mnist_from_idx_files(tmp_path: Path) -> None:
    tr_x, te_x = _images(300, (28, 28), 0), _images(50, (28, 28), 1)
    tr_y = np.arange(300) % 10
    te_y = np.arange(50) % 10
    raw = write_mnist(tmp_path, tr_x, tr_y, te_x, te_y)
    head = (raw / "train-images-idx3-ubyte").read_bytes()[:16]
    assert struct.unpack(">IIII", head) == (0x00000803, 300, 28, 28)
    assert struct.unpack(">II", (raw / "t10k-labels-idx1-ubyte").read_bytes()[:8]) == (0x00000801, 50)

    b = build_dataset("mnist", root=tmp_path, noise_rate=0.2, val_fraction=0.1, seed=0)
    assert b.input_shape == (1, 28, 28) and b.num_classes == 10 and b.augment == "none"
    assert b.train_y.numel() == 270 and b.val_y.numel() == 30
    assert torch.equal(b.test_y, torch.as_tensor(te_y))
    restored = b.test_x[:, 0] * b.std[0] + b.mean[0]
    assert torch.allclose(restored, torch.as_tensor(te_x / 255.0, dtype=torch.float32), atol=1e-5)
    assert abs(b.mean[0] - tr_x.mean() / 255) < 1e-6 and abs(b.std[0] - tr_x.std() / 255) < 1e-6
    assert abs(b.noise_rate_measured - 0.2) < 0.01


def test_cifar10_from_pickle_batches(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tr_x, te_x = _images(100, (3, 32, 32), 2), _images(30, (3, 32, 32), 3)
    tr_y = (np.arange(100) * 7) % 10
    te_y = np.arange(30) % 10
    folder = write_cifar10(tmp_path, tr_x, tr_y, te_x, te_y)
    # the real format: py2 pickles whose keys read as bytes with encoding="bytes"
    with open(folder / "data_batch_1", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    assert {b"data", b"labels"} <= set(entry) and entry[b"data"].dtype == np.uint8
    assert entry[b"data"].shape == (20, 3072)

    with caplog.at_level(logging.WARNING):
        b = build_dataset("cifar10", root=tmp_path, imbalance_ratio=1.0, val_fraction=0.0, seed=0)
    assert "md5" in caplog.text
    assert b.input_shape == (3, 32, 32) and b.num_classes == 10 and b.augment == "crop_flip"
    assert torch.equal(b.train_y, torch.as_tensor(tr_y))
    assert torch.equal(b.test_y, torch.as_tensor(te_y))
    mean = torch.tensor(b.mean).view(1, 3, 1, 1)
    std = torch.tensor(b.std).view(1, 3, 1, 1)
    assert torch.allclose(b.train_x * std + mean, torch.as_tensor(tr_x / 255.0, dtype=torch.float32), atol=1e-5)
    assert np.allclose(b.mean, tr_x.transpose(1, 0, 2, 3).reshape(3, -1).mean(1) / 255)
    xb, _ = next(iter(DeviceBatches(b.train_x, b.train_y, 8, augment=b.augment)))
    assert xb.shape == (8, 3, 32, 32)


def test_cifar100_from_pickle_files(tmp_path: Path) -> None:
    tr_x, te_x = _images(400, (3, 32, 32), 4), _images(100, (3, 32, 32), 5)
    tr_y = np.arange(400) % 100
    te_y = np.arange(100)
    write_cifar100(tmp_path, tr_x, tr_y, te_x, te_y)
    b = build_dataset("cifar100", root=str(tmp_path), noise_kind="asymmetric", noise_rate=0.5, val_fraction=0.0, seed=0)
    assert b.num_classes == 100 and b.input_shape == (3, 32, 32)
    assert torch.equal(b.train_y_clean, torch.as_tensor(tr_y))
    assert torch.equal(b.test_y, torch.as_tensor(te_y))
    changed = b.train_y != b.train_y_clean
    assert int(changed.sum()) == 200  # round(0.5 * 4) = 2 of each class
    c = b.train_y_clean[changed]
    assert torch.equal(b.train_y[changed], 5 * (c // 5) + (c + 1) % 5)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("mnist", ["MNIST/raw/train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
        ("cifar10", ["cifar-10-batches-py", "data_batch_1", "data_batch_5", "test_batch"]),
        ("cifar100", ["cifar-100-python", "train", "test", "meta"]),
    ],
)
def test_missing_root_names_files_and_download(tmp_path: Path, name: str, expected: list[str]) -> None:
    with pytest.raises(DataError) as info:
        build_dataset(name, root=tmp_path / "nowhere")
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "--download" in msg and "data.download" in msg
    for part in expected:
        assert part in msg
    with pytest.raises(DataError, match="--download"):
        build_dataset(name, root=None)


def test_partial_or_broken_files_raise_data_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path, _images(10, (3, 32, 32), 0), np.arange(10), _images(10, (3, 32, 32), 1), np.arange(10))
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        build_dataset("cifar10", root=tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="could not read"):
        build_dataset("cifar10", root=tmp_path)
