"""Data: clean sources, corruption (label noise, long tail), device-resident batching.

from pal_study.data import build_dataset, DeviceBatches
bundle = build_dataset("digits", noise_rate=0.4, imbalance_ratio=10, seed=1).to("cuda")
for xb, yb in DeviceBatches(bundle.train_x, bundle.train_y, 128,
                            generator=torch.Generator().manual_seed(1), augment=bundle.augment):
    ...

The data sets' specs (``data/sets/``) need no torch and are imported with the package; the names
of the modules that compute (batching, bundle, corruption, sources: torch) are imported on first
use, so the trial config and ``pal-study validate`` read the specs without paying for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pal_study.data.sets import (
    DATASET_REGISTRY,
    DatasetSpec,
    Recipe,
    dataset_names,
    dataset_needs_files,
    expected_files,
    get_dataset,
)

if TYPE_CHECKING:
    from pal_study.data.batching import AUGMENTS, DeviceBatches, crop_flip
    from pal_study.data.bundle import DATASETS, DataBundle, build_dataset, stage_seed
    from pal_study.data.corruption import (
        ASYMMETRIC_MAPS,
        IMBALANCE_PROFILES,
        NOISE_KINDS,
        apply_noise,
        asymmetric_map,
        asymmetric_noise,
        long_tail_counts,
        long_tail_subsample,
        stratified_split,
        symmetric_noise,
    )
    from pal_study.data.sources import DataError

# name -> the module defining it, imported on first use (PEP 562).
_LAZY: dict[str, str] = {
    **dict.fromkeys(("AUGMENTS", "DeviceBatches", "crop_flip"), "pal_study.data.batching"),
    **dict.fromkeys(("DATASETS", "DataBundle", "build_dataset", "stage_seed"), "pal_study.data.bundle"),
    **dict.fromkeys(
        (
            "ASYMMETRIC_MAPS",
            "IMBALANCE_PROFILES",
            "NOISE_KINDS",
            "apply_noise",
            "asymmetric_map",
            "asymmetric_noise",
            "long_tail_counts",
            "long_tail_subsample",
            "stratified_split",
            "symmetric_noise",
        ),
        "pal_study.data.corruption",
    ),
    "DataError": "pal_study.data.sources",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later reads are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "ASYMMETRIC_MAPS",
    "AUGMENTS",
    "DATASETS",
    "DATASET_REGISTRY",
    "IMBALANCE_PROFILES",
    "NOISE_KINDS",
    "DataBundle",
    "DataError",
    "DatasetSpec",
    "DeviceBatches",
    "Recipe",
    "apply_noise",
    "asymmetric_map",
    "asymmetric_noise",
    "build_dataset",
    "crop_flip",
    "dataset_names",
    "dataset_needs_files",
    "expected_files",
    "get_dataset",
    "long_tail_counts",
    "long_tail_subsample",
    "stage_seed",
    "stratified_split",
    "symmetric_noise",
]
