"""Data: clean sources, corruption (label noise, long tail), device-resident batching.

from pal_study.data import build_dataset, DeviceBatches
bundle = build_dataset("digits", noise_rate=0.4, imbalance_ratio=10, seed=1).to("cuda")
for xb, yb in DeviceBatches(bundle.train_x, bundle.train_y, 128,
                            generator=torch.Generator().manual_seed(1), augment=bundle.augment):
    ...
"""

from __future__ import annotations

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
from pal_study.data.sets import (
    DATASET_REGISTRY,
    DatasetSpec,
    Recipe,
    dataset_names,
    dataset_needs_files,
    expected_files,
    get_dataset,
)
from pal_study.data.sources import DataError

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
