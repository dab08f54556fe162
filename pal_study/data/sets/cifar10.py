"""CIFAR-10, read by torchvision from the python batches under ``data.root``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pal_study._compat import lenient_cifar
from pal_study.data.sets.base import DatasetSpec, Options, Recipe

if TYPE_CHECKING:
    from pal_study.data.raw import RawData

# LDAM-DRW's CIFAR-LT recipe (used by CIFAR-10 and CIFAR-100 when data.imbalance.ratio > 1):
# warm-up 5, lr x0.01 at 160 and again at 180; deferred re-weighting (ldam) after 160 epochs, as
# LDAM-DRW's train.py does (idx = epoch // 160 with 0-based epochs: the weights apply from the
# 161st epoch, the one the first lr step starts).
CIFAR_LT_RECIPE = Recipe(
    lr=0.1,
    weight_decay=2e-4,
    epochs=200,
    batch_size=128,
    schedule="step",
    warmup_epochs=5,
    milestones=(160, 180),
    step_gamma=0.01,
    grad_clip=0.0,
    drw_epoch=160,
)


def _cifar10_class() -> type:
    from torchvision import datasets  # torchvision only where CIFAR is read

    return lenient_cifar(datasets.CIFAR10)


def _load(root: Any, download: bool, options: Options) -> RawData:
    from pal_study.data.sources import load_torchvision  # torch: where the data are read

    return load_torchvision(SPEC, root, download, dataset_class=_cifar10_class, channels_last_arrays=True)


SPEC: DatasetSpec = DatasetSpec(
    train_size=50000,
    name="cifar10",
    summary="CIFAR-10 32x32 colour (50k train / 10k test), torchvision files under data.root",
    load=_load,
    input_shape=(3, 32, 32),
    num_classes=10,
    default_arch="cifar_cnn8",
    # docs/method.md §5.
    recipe=Recipe(
        lr=0.01, weight_decay=1e-4, epochs=120, batch_size=128, schedule="cosine", warmup_epochs=0, grad_clip=5.0
    ),
    long_tail_recipe=CIFAR_LT_RECIPE,
    loss_defaults="cifar10",
    augment="crop_flip",
    files=("cifar-10-batches-py", (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")),
    # truck->automobile, bird->airplane, cat<->dog, deer->horse
    asymmetric_map={9: 1, 2: 0, 3: 5, 5: 3, 4: 7},
)
