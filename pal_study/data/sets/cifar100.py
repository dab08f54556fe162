"""CIFAR-100, read by torchvision from the python files under ``data.root``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pal_study._compat import lenient_cifar
from pal_study.data.sets.base import DatasetSpec, Options, Recipe
from pal_study.data.sets.cifar10 import CIFAR_LT_RECIPE

if TYPE_CHECKING:
    from pal_study.data.raw import RawData


def _cifar100_class() -> type:
    from torchvision import datasets  # torchvision only where CIFAR is read

    return lenient_cifar(datasets.CIFAR100)


def _load(root: Any, download: bool, options: Options) -> RawData:
    from pal_study.data.sources import load_torchvision  # torch: where the data are read

    return load_torchvision(SPEC, root, download, dataset_class=_cifar100_class, channels_last_arrays=True)


SPEC: DatasetSpec = DatasetSpec(
    train_size=50000,
    name="cifar100",
    summary="CIFAR-100 32x32 colour (50k train / 10k test), torchvision files under data.root",
    load=_load,
    input_shape=(3, 32, 32),
    num_classes=100,
    # The paper trains ResNet-34 on CIFAR-100; ResNet-32 is what pal-study ships (see README).
    default_arch="resnet32",
    # docs/method.md §5.
    recipe=Recipe(
        lr=0.1, weight_decay=1e-5, epochs=200, batch_size=128, schedule="cosine", warmup_epochs=0, grad_clip=5.0
    ),
    long_tail_recipe=CIFAR_LT_RECIPE,
    loss_defaults="cifar100",
    augment="crop_flip",
    files=("cifar-100-python", ("train", "test", "meta")),
    # i -> the next class inside its block of 5 consecutive indices
    asymmetric_map={i: 5 * (i // 5) + (i + 1) % 5 for i in range(100)},
)
