"""Synthetic Gaussian classes (``data.synthetic`` options; defaults: ``sources.SYNTHETIC_DEFAULTS``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pal_study.data.sets.base import DatasetSpec, Recipe
from pal_study.data.sources import SYNTHETIC_DEFAULTS, make_synthetic
from pal_study.errors import KeyedError
from pal_study.schema import StrictModel

_SYN = SYNTHETIC_DEFAULTS  # the one definition of the synthetic defaults (data/sources.py)


class SyntheticOptions(StrictModel):
    """``data.synthetic``: the classes, dimension or image shape of the Gaussian data."""

    num_classes: int = Field(_SYN["num_classes"], ge=2, le=10_000)
    dim: int = Field(_SYN["dim"], ge=1, le=100_000)
    train_per_class: int = Field(_SYN["train_per_class"], ge=1, le=1_000_000)
    test_per_class: int = Field(_SYN["test_per_class"], ge=1, le=1_000_000)
    separation: float = Field(_SYN["separation"], gt=0.0)
    input_shape: list[int] | None = Field(_SYN["input_shape"], description="e.g. [3, 32, 32] for image-shaped data")
    data_seed: int = Field(
        _SYN["data_seed"], ge=0, description="draws the data; the trial seed varies noise and splits"
    )
    augment: Literal["none", "crop_flip"] = _SYN["augment"]

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(d < 1 for d in v)):
            raise ValueError("must be a non-empty list of positive ints, e.g. [3, 32, 32]")
        return v

    @model_validator(mode="after")
    def _augment_needs_images(self) -> SyntheticOptions:
        if self.augment == "crop_flip" and (self.input_shape is None or len(self.input_shape) != 3):
            raise KeyedError("augment", "crop_flip needs an image input_shape [C, H, W]")
        return self


def _shape(options: Mapping[str, Any]) -> tuple[int, ...]:
    shape = options.get("input_shape") or SYNTHETIC_DEFAULTS["input_shape"]
    return tuple(shape) if shape else (int(options.get("dim") or SYNTHETIC_DEFAULTS["dim"]),)


def _classes(options: Mapping[str, Any]) -> int:
    return int(options.get("num_classes") or SYNTHETIC_DEFAULTS["num_classes"])


def _arch(shape: tuple[int, ...]) -> str:
    """1-D (or any non-image) input -> digits_mlp; images with min(H, W) >= 32 (e.g. (3, 32, 32))
    -> cifar_cnn8; >= 16 (e.g. (1, 28, 28)) -> mnist_cnn; smaller -> digits_mlp."""
    if len(shape) != 3:
        return "digits_mlp"
    side = min(shape[1], shape[2])
    if side >= 32:
        return "cifar_cnn8"
    if side >= 16:
        return "mnist_cnn"
    return "digits_mlp"


def _next_class(num_classes: int) -> dict[int, int]:
    return {i: (i + 1) % num_classes for i in range(num_classes)}


SPEC = DatasetSpec(
    train_size=lambda options: (
        int(options.get("train_per_class") or SYNTHETIC_DEFAULTS["train_per_class"]) * _classes(options)
    ),
    name="synthetic",
    summary="Gaussian classes drawn in memory; classes, dimension or image shape set by data.synthetic",
    load=lambda root, download, options: make_synthetic(options),
    input_shape=_shape,
    num_classes=_classes,
    default_arch=_arch,
    # Ours (not from a paper): small, fast, CPU-friendly.
    recipe=Recipe(
        lr=0.05, weight_decay=5e-4, epochs=20, batch_size=128, schedule="cosine", warmup_epochs=1, grad_clip=5.0
    ),
    loss_defaults="cifar10",  # CIFAR-10's values, which are also the generic (alpha, beta) = (1, 1)
    augment="none",  # data.synthetic.augment may set crop_flip for image shapes
    asymmetric_map=_next_class,  # i -> i+1 mod k, for any k
    options_key="synthetic",
    options=SyntheticOptions,
)
