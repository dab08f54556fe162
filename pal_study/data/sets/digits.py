"""scikit-learn's 8×8 handwritten digits: 1797 images, fixed stratified 80/20 split, in memory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pal_study.data.sets.base import DatasetSpec, Options, Recipe
from pal_study.data.sets.mnist import ASYMMETRIC_MAP as MNIST_ASYMMETRIC_MAP

if TYPE_CHECKING:
    from pal_study.data.raw import RawData


def _load(root: Any, download: bool, options: Options) -> RawData:
    from pal_study.data.sources import load_digits  # torch and scikit-learn: where the data are read

    return load_digits()


SPEC = DatasetSpec(
    train_size=1437,
    name="digits",
    summary="sklearn 8x8 digits (1437 train / 360 test), in memory: small, fast, CPU-friendly",
    load=_load,
    input_shape=(1, 8, 8),
    num_classes=10,
    default_arch="digits_mlp",
    # Ours (not from a paper): small, fast, CPU-friendly.
    recipe=Recipe(
        lr=0.05, weight_decay=5e-4, epochs=30, batch_size=64, schedule="cosine", warmup_epochs=1, grad_clip=5.0
    ),
    loss_defaults="mnist",  # MNIST's values: same kind of data, a smaller net
    asymmetric_map=MNIST_ASYMMETRIC_MAP,  # same digit semantics as MNIST
)
