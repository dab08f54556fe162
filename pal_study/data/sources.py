"""Clean data sources: sklearn digits, torchvision image sets (MNIST / CIFAR-10 / CIFAR-100); the
synthetic Gaussians and MNIST-1D are made in their data set's module. Which set reads what (files,
classes, layout) is declared in ``data/sets/``.

Each loader returns a :class:`RawData`: a clean training pool and a clean test set as float32
tensors, normalised per channel with the mean/std of the source's training split, plus int64
labels. Corruption (long tail, noise) and the validation split happen later, in ``bundle.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pal_study.data.raw import RawData

if TYPE_CHECKING:
    from pal_study.data.sets.base import DatasetSpec

log = logging.getLogger(__name__)

# The digits test split is fixed (not the trial seed) so that, as for MNIST and CIFAR, every seed
# and every cell of a study is scored on the same test images.
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2

DEFAULT_ROOT_ENV = "PAL_STUDY_DATA"


class DataError(ValueError):
    """A data set cannot be loaded: files missing or unreadable, download failed."""


# --------------------------------------------------------------------------------------------
# Normalisation


def _uint8_channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Exact per-channel mean/std of a uint8 (N, C, ...) tensor via 256-bin histograms.

    Avoids a float copy of the whole set just for statistics (CIFAR-10 in float32 is 600 MB).
    """
    means, stds = [], []
    values = torch.arange(256, dtype=torch.float64)
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = counts.sum()
        m = (counts * values).sum() / n
        var = (counts * (values - m) ** 2).sum() / n
        means.append(float(m))
        stds.append(float(var.sqrt()))
    return means, stds


def _normalise_uint8(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 ((x/255) - mean/255) / (std/255), computed in place."""
    out = x.to(torch.float32)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m = torch.tensor(mean, dtype=torch.float32).view(shape)
    s = torch.tensor([max(v, 1e-8) for v in std], dtype=torch.float32).view(shape)
    return out.sub_(m).div_(s)


def _scale_of(raw_mean: list[float], raw_std: list[float], scale: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return tuple(m / scale for m in raw_mean), tuple(s / scale for s in raw_std)


# --------------------------------------------------------------------------------------------
# digits


def load_digits() -> RawData:
    """sklearn's 8×8 digits: fixed stratified 80/20 split, pixels /16 then standardised."""
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    ds = _sk_load_digits()
    images = ds.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = ds.target.astype(np.int64)
    tr, te = train_test_split(
        np.arange(labels.shape[0]), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    tr, te = np.sort(tr), np.sort(te)
    train = torch.from_numpy(images[tr]).unsqueeze(1)
    test = torch.from_numpy(images[te]).unsqueeze(1)
    mean = float(train.mean(dtype=torch.float64))
    std = float(train.double().std(unbiased=False))
    return RawData(
        train_x=(train - mean) / std,
        train_y=torch.from_numpy(labels[tr]),
        test_x=(test - mean) / std,
        test_y=torch.from_numpy(labels[te]),
        num_classes=10,
        input_shape=(1, 8, 8),
        augment="none",
        mean=(mean,),
        std=(std,),
    )


# --------------------------------------------------------------------------------------------
# torchvision sources (which files, which class: the data set modules in data/sets/)


def default_root() -> Path:
    """Where downloads go when no root is given: ``$PAL_STUDY_DATA`` or ``~/.cache/pal-study/data``."""
    env = os.environ.get(DEFAULT_ROOT_ENV)
    return Path(env) if env else Path.home() / ".cache" / "pal-study" / "data"


def _missing_message(name: str, files: tuple[str, tuple[str, ...]], root: Path, missing: list[Path]) -> str:
    sub, names = files
    listed = ", ".join(names)
    return (
        f"{name}: data files not found under root {str(root)!r}: expected {root / sub}/ with {listed} "
        f"(missing: {', '.join(str(p) for p in missing)}). Put the torchvision files there, or pass "
        f"--download (config: data.download: true) on a machine with network access."
    )


def load_torchvision(
    spec: DatasetSpec,
    root: str | os.PathLike[str] | None,
    download: bool,
    *,
    dataset_class: Callable[[], type],
    channels_last_arrays: bool,
) -> RawData:
    """A torchvision image set's train and test splits, read straight from the dataset arrays.

    ``dataset_class()`` gives the torchvision class (imported only now); its ``data`` is N×H×W
    (one channel) or, with ``channels_last_arrays``, N×H×W×C (CIFAR's numpy layout).
    """
    name = spec.name
    files = spec.files
    if files is None:
        raise ValueError(f"not a torchvision source: {name!r} declares no files")
    if root is None:
        if not download:
            raise DataError(
                f"{name}: no data root given. Pass root=<dir> holding "
                f"{files[0]}/ ({', '.join(files[1])}), or pass --download "
                f"(config: data.download: true) on a machine with network access."
            )
        root = default_root()
    root = Path(root).expanduser()
    missing = [p for p in spec.expected_files(root) if not p.is_file()]
    if missing and not download:
        raise DataError(_missing_message(name, files, root, missing))
    cls = dataset_class()
    try:
        if download:
            root.mkdir(parents=True, exist_ok=True)
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=False)
    except DataError:
        raise
    except Exception as e:  # torchvision raises RuntimeError, URLError, AssertionError, pickle errors...
        missing = [p for p in spec.expected_files(root) if not p.is_file()]
        if missing:
            if download:
                raise DataError(
                    f"{name}: download to {root} failed ({type(e).__name__}: {e}); "
                    + _missing_message(name, files, root, missing)
                ) from e
            raise DataError(f"{_missing_message(name, files, root, missing)} ({type(e).__name__}: {e})") from e
        what = "could not download or read" if download else "could not read"
        raise DataError(f"{name}: {what} the files under {root}: {type(e).__name__}: {e}") from e

    if channels_last_arrays:
        # torchvision keeps CIFAR as (N, 32, 32, 3) HWC numpy arrays
        tr_x = torch.from_numpy(np.ascontiguousarray(train.data)).permute(0, 3, 1, 2).contiguous()
        te_x = torch.from_numpy(np.ascontiguousarray(test.data)).permute(0, 3, 1, 2).contiguous()
    else:
        tr_x = torch.as_tensor(train.data).unsqueeze(1)  # (N, 1, 28, 28) uint8
        te_x = torch.as_tensor(test.data).unsqueeze(1)
    k, augment = spec.classes_for(), spec.augment
    tr_y = torch.as_tensor(np.asarray(train.targets), dtype=torch.int64)
    te_y = torch.as_tensor(np.asarray(test.targets), dtype=torch.int64)
    for split, x, y in (("train", tr_x, tr_y), ("test", te_x, te_y)):
        if x.dtype != torch.uint8 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise DataError(
                f"{name} {split}: expected N uint8 images and N labels, got images "
                f"{tuple(x.shape)} {x.dtype} and {y.shape[0]} labels"
            )
        if int(y.min()) < 0 or int(y.max()) >= k:
            raise DataError(f"{name} {split}: labels must lie in [0, {k - 1}], got [{int(y.min())}, {int(y.max())}]")
    mean, std = _uint8_channel_stats(tr_x)
    log.info("%s: %d train / %d test images from %s", name, tr_x.shape[0], te_x.shape[0], root)
    m, s = _scale_of(mean, std, 255.0)
    return RawData(
        train_x=_normalise_uint8(tr_x, mean, std),
        train_y=tr_y,
        test_x=_normalise_uint8(te_x, mean, std),
        test_y=te_y,
        num_classes=k,
        input_shape=tuple(tr_x.shape[1:]),
        augment=augment,
        mean=m,
        std=s,
    )
