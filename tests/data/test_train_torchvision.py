"""End to end through the torchvision loaders: files in the real on-disk formats, written here,
read by ``pal-study train`` via ``data.root``."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from pal_study.cli import main
from pal_study.data.formats import write_cifar10, write_mnist


def _digits_as_mnist(n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    """Real handwritten digits, upsampled 8×8 → 28×28 uint8 (MNIST's geometry and dtype)."""
    d = load_digits()
    x = torch.from_numpy(d.images).float()[:, None] / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    img = (x[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    y = d.target.astype(np.uint8)
    return img[:n_train], y[:n_train], img[n_train : n_train + n_test], y[n_train : n_train + n_test]


def test_mnist_files_train_with_asymmetric_noise(tmp_path, capsys):
    write_mnist(tmp_path / "data", *_digits_as_mnist(1200, 400))
    out = tmp_path / "r.json"
    rc = main(
        [
            "train",
            "-q",
            "--set",
            "data.name=mnist",
            "--set",
            f"data.root={tmp_path / 'data'}",
            "--set",
            "method=ce+fnpal",
            "--set",
            "data.noise.kind=asymmetric",
            "--set",
            "data.noise.rate=0.4",
            "--set",
            "optim.epochs=3",
            "--set",
            "optim.lr=0.05",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out.read_text())
    assert r["config"]["model"]["arch"] == "mnist_cnn" and r["data"]["num_classes"] == 10
    # Only 5 of 10 digit classes have an asymmetric target (7→1, 2→7, 5↔6, 3→8).
    assert abs(r["noise_rate_measured"] - 0.2) < 0.03
    assert r["final"]["test_acc"] > 0.6


def test_cifar10_files_train_with_crop_flip(tmp_path, capsys):
    g = np.random.default_rng(0)
    n_train, n_test = 300, 100
    labels = g.integers(0, 10, n_train + n_test)
    # Class-dependent colour so that there is something to learn.
    base = (labels[:, None, None, None] * 25).astype(np.int64)
    images = np.clip(base + g.integers(0, 40, (n_train + n_test, 3, 32, 32)), 0, 255).astype(np.uint8)
    write_cifar10(
        tmp_path / "c", images[:n_train], labels[:n_train].tolist(), images[n_train:], labels[n_train:].tolist()
    )
    out = tmp_path / "r.json"
    rc = main(
        [
            "train",
            "-q",
            "--set",
            "data.name=cifar10",
            "--set",
            f"data.root={tmp_path / 'c'}",
            "--set",
            "method=nce+rce+fnpal",
            "--set",
            "optim.epochs=1",
            "--set",
            "optim.batch_size=64",
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    r = json.loads(out.read_text())
    assert r["status"] == "completed" and r["config"]["model"]["arch"] == "cifar_cnn8"
    assert r["data"]["augment"] == "crop_flip" and r["data"]["n_train"] + r["data"]["n_val"] == 300
    assert np.isfinite(r["final"]["train_loss"])
