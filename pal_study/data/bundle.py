"""``build_dataset``: a clean source, made long-tailed and noisy (docs/method.md §4), split, in one
bundle.

Pipeline, in this order: load the clean source -> long-tail subsample of the training pool ->
label noise on the pool -> stratified validation split of the (now noisy) pool. The test set is
never touched: clean and as balanced as the source. Each random step draws from its own seed
derived from ``seed``, so e.g. the subsample does not change when only the noise rate changes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pal_study.data.corruption import (
    IMBALANCE_PROFILES,
    NOISE_KINDS,
    apply_noise,
    long_tail_counts,
    long_tail_subsample,
    stratified_split,
)
from pal_study.data.sets import DATASET_REGISTRY, dataset_names
from pal_study.data.sources import RawData

log = logging.getLogger(__name__)

DATASETS = dataset_names()  # the registered data sets (data/sets/), in their listing order

_STAGES = {"subsample": 1, "noise": 2, "val_split": 3}


def stage_seed(seed: int, stage: str) -> int:
    """An independent 63-bit seed for one random step of the pipeline."""
    ss = np.random.SeedSequence(entropy=int(seed) & (2**128 - 1), spawn_key=(_STAGES[stage],))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


@dataclass
class DataBundle:
    """Tensors of one corrupted data set. ``*_y`` are observed labels, ``*_y_clean`` the truth.

    ``class_counts``: per-class sizes of the training pool (train + val) after long-tail
    subsampling, by clean label — what many/medium/few groups are defined on.
    ``noise_rate_measured``: fraction of train + val labels that differ from the clean label.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    train_y_clean: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    val_y_clean: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_counts: list[int]
    noise_rate_measured: float
    augment: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)  # the build arguments

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DataBundle:
        """A new bundle with every tensor on ``device`` (the same bundle's tensors if already there)."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return dataclasses.replace(self, **moved)

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description: sizes, counts, measured noise, build arguments."""
        k = self.num_classes
        return {
            "name": self.name,
            "num_classes": k,
            "input_shape": list(self.input_shape),
            "n_train": int(self.train_y.shape[0]),
            "n_val": int(self.val_y.shape[0]),
            "n_test": int(self.test_y.shape[0]),
            "class_counts": [int(c) for c in self.class_counts],
            "train_counts_observed": torch.bincount(self.train_y.cpu(), minlength=k).tolist(),
            "test_counts": torch.bincount(self.test_y.cpu(), minlength=k).tolist(),
            "noise_rate_measured": float(self.noise_rate_measured),
            "augment": self.augment,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            **{k_: v for k_, v in self.meta.items()},
        }


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _check_args(
    name: str,
    noise_kind: str,
    noise_rate: float,
    imbalance_ratio: float,
    imbalance_profile: str,
    val_fraction: float,
    seed: int,
) -> None:
    if name not in DATASET_REGISTRY:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASET_REGISTRY.names())}")
    if noise_kind not in NOISE_KINDS:
        raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {noise_kind!r}")
    if not _is_number(noise_rate) or not (0.0 <= noise_rate < 1.0):
        raise ValueError(f"noise rate must be in [0, 1), got {noise_rate!r}")
    if not _is_number(imbalance_ratio) or imbalance_ratio < 1.0:
        raise ValueError(f"imbalance ratio must be a finite number >= 1, got {imbalance_ratio!r}")
    if imbalance_profile not in IMBALANCE_PROFILES:
        raise ValueError(f"imbalance profile must be one of {IMBALANCE_PROFILES}, got {imbalance_profile!r}")
    if not _is_number(val_fraction) or not (0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int, got {seed!r}")


def _load(name: str, root: str | os.PathLike[str] | None, download: bool, options: Mapping[str, Any] | None) -> RawData:
    return DATASET_REGISTRY.get(name).load(root, download, options)


def build_dataset(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    noise_kind: str = "symmetric",
    noise_rate: float = 0.0,
    imbalance_ratio: float = 1.0,
    imbalance_profile: str = "exp",
    val_fraction: float = 0.1,
    seed: int = 0,
    synthetic: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> DataBundle:
    """Load ``name`` and corrupt its training pool; everything on the CPU (use ``.to(device)``).

    - ``imbalance_ratio`` ρ > 1: subsample the pool to ``long_tail_counts(n_max, k, ρ, profile)``
      with n_max = the smallest class of the pool (so no class is asked for more than it has).
      ρ = 1 keeps the pool as it is (no subsampling).
    - ``noise_kind``/``noise_rate``: label noise on the subsampled pool (see corruption.py).
    - ``val_fraction``: stratified by observed label, round(f·n_c) per observed class, taken from
      the noisy pool — what a practitioner would hold out. 0 gives empty val tensors.
    - ``options``: the data set's own options (its ``data.<options_key>`` config section, e.g.
      ``{"num_samples": 20000}`` for mnist1d); ignored for data sets without ``options_key``.
      ``synthetic`` is the older name for ``name="synthetic"``'s options.
    """
    _check_args(name, noise_kind, noise_rate, imbalance_ratio, imbalance_profile, val_fraction, seed)
    key = DATASET_REGISTRY.get(name).options_key
    if options is None and key == "synthetic":
        options = synthetic
    raw = _load(name, root, download, options if key else None)
    k = raw.num_classes
    x, y_clean = raw.train_x, raw.train_y

    if imbalance_ratio > 1.0:
        sizes = torch.bincount(y_clean, minlength=k)
        counts = long_tail_counts(int(sizes.min()), k, imbalance_ratio, imbalance_profile)
        keep = long_tail_subsample(y_clean, counts, stage_seed(seed, "subsample"))
        x, y_clean = x.index_select(0, keep), y_clean.index_select(0, keep)
    class_counts = torch.bincount(y_clean, minlength=k).tolist()

    if noise_rate > 0.0:
        y_obs = apply_noise(y_clean, noise_kind, noise_rate, name, k, stage_seed(seed, "noise"))
    else:
        y_obs = y_clean.clone()
    measured = float((y_obs != y_clean).double().mean()) if y_obs.numel() else 0.0

    tr, va = stratified_split(y_obs, val_fraction, stage_seed(seed, "val_split"))
    bundle = DataBundle(
        name=name,
        num_classes=k,
        input_shape=tuple(raw.input_shape),
        train_x=x.index_select(0, tr),
        train_y=y_obs[tr],
        train_y_clean=y_clean[tr],
        val_x=x.index_select(0, va),
        val_y=y_obs[va],
        val_y_clean=y_clean[va],
        test_x=raw.test_x,
        test_y=raw.test_y,
        class_counts=class_counts,
        noise_rate_measured=measured,
        augment=raw.augment,
        mean=tuple(raw.mean),
        std=tuple(raw.std),
        meta=dict(
            noise_kind=noise_kind,
            noise_rate=float(noise_rate),
            imbalance_ratio=float(imbalance_ratio),
            imbalance_profile=imbalance_profile,
            val_fraction=float(val_fraction),
            seed=int(seed),
        ),
    )
    log.info(
        "%s: %d train / %d val / %d test, %s noise %.3f (measured %.4f), imbalance %s x%.3g, class counts %s",
        name,
        tr.numel(),
        va.numel(),
        raw.test_y.numel(),
        noise_kind,
        noise_rate,
        measured,
        imbalance_profile,
        imbalance_ratio,
        class_counts,
    )
    return bundle
