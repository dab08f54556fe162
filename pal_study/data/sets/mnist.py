"""MNIST, read by torchvision from the idx files under ``data.root``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pal_study.data.sets.base import DatasetSpec, Options, Recipe

if TYPE_CHECKING:
    from pal_study.data.raw import RawData

# APL's asymmetric noise: 7->1, 2->7, 5<->6, 3->8.
ASYMMETRIC_MAP = {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}


def _mnist_class() -> type:
    from torchvision import datasets

    return datasets.MNIST  # its _check_exists only tests that the raw files exist


def _load(root: Any, download: bool, options: Options) -> RawData:
    from pal_study.data.sources import load_torchvision  # torch: where the data are read

    return load_torchvision(SPEC, root, download, dataset_class=_mnist_class, channels_last_arrays=False)


SPEC: DatasetSpec = DatasetSpec(
    train_size=60000,
    name="mnist",
    summary="MNIST 28x28 digits (60k train / 10k test), torchvision files under data.root",
    load=_load,
    input_shape=(1, 28, 28),
    num_classes=10,
    default_arch="mnist_cnn",
    # docs/method.md §5 (ALFs' MNIST recipe).
    recipe=Recipe(
        lr=0.01, weight_decay=1e-3, epochs=50, batch_size=128, schedule="cosine", warmup_epochs=0, grad_clip=5.0
    ),
    loss_defaults="mnist",
    files=(
        "MNIST/raw",
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ),
    asymmetric_map=ASYMMETRIC_MAP,
)
