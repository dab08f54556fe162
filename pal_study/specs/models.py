"""The backbones' table (``pal_study.models`` builds them), without torch: each backbone's name,
feature dimension, smallest input side and summary, in listing order, and its build, a function
of ``pal_study.models`` imported when a backbone is first built."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pal_study.data.sets import DATASET_REGISTRY
from pal_study.registry import Registry

Build = Callable[[tuple[int, ...], bool], Any]  # (input shape, last_relu) -> a pal_study.models.Backbone


@dataclass(frozen=True)
class ModelSpec:
    """A backbone: ``build(input_shape, last_relu)`` -> module with ``feature_dim`` outputs."""

    name: str
    build: Build
    feature_dim: int
    # Image nets take (C, H, W) with H, W >= min_side (every 2×2 max-pool / stride-2 stage must
    # leave >= 1 pixel); None: any shape, flattened.
    min_side: int | None
    summary: str


def _impl(name: str) -> Build:
    """The build ``pal_study.models.<name>``, imported (with torch) when first called."""

    def build(shape: tuple[int, ...], last_relu: bool) -> Any:
        return getattr(importlib.import_module("pal_study.models"), name)(shape, last_relu)

    build.__qualname__ = build.__name__ = name
    return build


MODEL_REGISTRY: Registry[ModelSpec] = Registry("model")
MODELS = MODEL_REGISTRY  # names: iterate, ``in``, ``MODELS.get(name)``

# The built-in backbones, in listing order (``pal_study.models.register_model`` adds others).
for _spec in (
    ModelSpec(
        "digits_mlp",
        _impl("_digits_mlp"),
        feature_dim=128,
        min_side=None,
        summary="MLP 256-128 with BN, any input shape (flattened); digits' default",
    ),
    ModelSpec(
        "digits_cnn",
        _impl("_digits_cnn"),
        feature_dim=128,
        min_side=2,
        summary="2 convs + max-pool + FC128, for small images",
    ),
    ModelSpec(
        "mnist_cnn",
        _impl("_mnist_cnn"),
        feature_dim=128,
        min_side=4,
        summary="APL's 4-layer MNIST CNN; MNIST's default",
    ),
    ModelSpec(
        "cifar_cnn8",
        _impl("_cifar_cnn8"),
        feature_dim=256,
        min_side=8,
        summary="APL's 8-layer CIFAR CNN; CIFAR-10's default",
    ),
    ModelSpec(
        "resnet32",
        _impl("_resnet32"),
        feature_dim=64,
        min_side=4,
        summary="LDAM-DRW's CIFAR ResNet-32; CIFAR-100's default",
    ),
    ModelSpec(
        "mnist1d_mlp",
        _impl("_mnist1d_mlp"),
        feature_dim=100,
        min_side=None,
        summary="MNIST-1D paper's MLP 100-100 (no BN), any input shape (flattened)",
    ),
    ModelSpec(
        "mnist1d_cnn",
        _impl("_mnist1d_cnn"),
        feature_dim=128,
        min_side=None,
        summary="3 conv1d + 2 max-pools + FC128, for sequences (C, L >= 4); MNIST-1D's default",
    ),
):
    MODEL_REGISTRY.add(_spec.name, _spec)


def list_models() -> list[str]:
    return list(MODEL_REGISTRY.names())


def default_arch(dataset: str, input_shape: tuple[int, ...]) -> str:
    """The data set's network (its ``DatasetSpec.default_arch``, docs/method.md §5); synthetic data
    picks by input shape (see ``data/sets/synthetic.py``)."""
    if dataset not in DATASET_REGISTRY:
        raise ValueError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASET_REGISTRY.names())}")
    return DATASET_REGISTRY.get(dataset).arch_for(tuple(int(d) for d in input_shape))
