"""Synthetic Gaussian classes (``data.synthetic`` options; defaults: ``SYNTHETIC_DEFAULTS``), drawn in memory
(torch is imported where they are drawn, not with the data set's spec)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from pal_study.data.sets.base import DatasetSpec, Recipe
from pal_study.errors import KeyedError
from pal_study.schema import StrictModel

if TYPE_CHECKING:
    from pal_study.data.raw import RawData

# The one definition of the synthetic data set's defaults; the trial config's ``data.synthetic``
# section (SyntheticOptions) takes its defaults from here.
SYNTHETIC_DEFAULTS: dict[str, Any] = dict(
    num_classes=10,
    dim=32,
    train_per_class=200,
    test_per_class=100,
    separation=3.0,
    input_shape=None,
    data_seed=0,
    augment="none",
)
_SYN = SYNTHETIC_DEFAULTS


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


# --------------------------------------------------------------------------------------------
# The data


def synthetic_params(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with ``overrides`` (None values mean "default"), validated."""
    import numpy as np

    from pal_study.data.batching import AUGMENTS

    p = dict(SYNTHETIC_DEFAULTS)
    for key, value in dict(overrides or {}).items():
        if key not in SYNTHETIC_DEFAULTS:
            raise ValueError(f"unknown synthetic option {key!r}; allowed: {tuple(SYNTHETIC_DEFAULTS)}")
        if value is not None:
            p[key] = value
    for key in ("num_classes", "dim", "train_per_class", "test_per_class", "data_seed"):
        v = p[key]
        low = 2 if key == "num_classes" else (0 if key == "data_seed" else 1)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"synthetic {key} must be an int >= {low}, got {v!r}")
    sep = p["separation"]
    if isinstance(sep, bool) or not isinstance(sep, (int, float)) or not math.isfinite(sep) or sep < 0:
        raise ValueError(f"synthetic separation must be a finite number >= 0, got {sep!r}")
    shape = p["input_shape"]
    if shape is not None:
        shape = tuple(shape)
        if not shape or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in shape):
            raise ValueError(
                f"synthetic input_shape must be a non-empty sequence of ints >= 1, got {p['input_shape']!r}"
            )
        p["input_shape"] = tuple(int(d) for d in shape)
    if p["augment"] not in AUGMENTS:
        raise ValueError(f"synthetic augment must be one of {AUGMENTS}, got {p['augment']!r}")
    if p["augment"] == "crop_flip" and (shape is None or len(shape) != 3):
        raise ValueError("synthetic augment='crop_flip' needs an image input_shape (C, H, W)")
    return p


def make_synthetic(overrides: Mapping[str, Any] | None = None) -> RawData:
    """Gaussian classes: class c has mean ``separation · u_c`` (u_c a random unit vector) and
    identity covariance, in d = ``dim`` dimensions, or d = prod(input_shape) reshaped to
    ``input_shape`` when that is given (image-shaped data for benchmarks).

    The data are drawn from ``data_seed`` (default 0), not the trial seed: like a real data set
    they stay fixed while the trial seed varies corruption, splits and training. They are used
    as drawn (roughly zero mean, per-coordinate variance 1 + separation²/d), not re-normalised.
    """
    import torch

    from pal_study.data.raw import RawData

    p = synthetic_params(overrides)
    k, shape = p["num_classes"], p["input_shape"] or (p["dim"],)
    d = math.prod(shape)
    gen = torch.Generator(device="cpu").manual_seed(p["data_seed"])
    dirs = torch.randn(k, d, generator=gen)
    means = float(p["separation"]) * dirs / dirs.norm(dim=1, keepdim=True)

    def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(k).repeat_interleave(per_class)
        x = torch.randn(k * per_class, d, generator=gen).add_(means[y])
        return x.view(-1, *shape), y

    tr_x, tr_y = draw(p["train_per_class"])
    te_x, te_y = draw(p["test_per_class"])
    return RawData(
        train_x=tr_x,
        train_y=tr_y,
        test_x=te_x,
        test_y=te_y,
        num_classes=k,
        input_shape=tuple(shape),
        augment=p["augment"],
        mean=(0.0,),
        std=(1.0,),
    )


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
