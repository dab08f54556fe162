"""MNIST-1D (Greydanus 2020, "Scaling down deep learning"): 1-D digit sequences of length 40,
generated in memory by the ``mnist1d`` package (Apache-2.0; procedural, no download).

``make_dataset`` with the package's standard arguments (``get_dataset_args()``: 5,000 sequences,
80/20 split, generation seed 42) gives the paper's 4,000 train / 1,000 test set (a study's trial
then trains on 3,600: a tenth of the training set, ``data.val_fraction``, is its validation split). The generation
seed stays the standard one whatever the trial seed (like digits' fixed split): every seed and
every cell of a study sees the same sequences; the trial seed varies corruption, split and
training. ``data.mnist1d.num_samples`` (default 5,000, a multiple of 10 up to 1,000,000) gives
a larger variant with the same generator and the same 80/20 split.

Inputs are (1, 40) float32 (one channel, 40 steps), standardised with the training split's
mean and std; labels 0-9. NumPy, torch and the generator are imported where the data are made, not
with the data set's spec.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from pal_study.data.sets.base import DatasetSpec, Recipe, parse_options
from pal_study.data.sets.mnist import ASYMMETRIC_MAP as MNIST_ASYMMETRIC_MAP
from pal_study.schema import StrictModel

if TYPE_CHECKING:
    import numpy as np
    import torch

    from pal_study.data.raw import RawData

NUM_CLASSES = 10
SEQ_LEN = 40  # the package's final_seq_length
MAX_SAMPLES = 1_000_000


class Mnist1dOptions(StrictModel):
    """``data.mnist1d``: the larger variant."""

    num_samples: int = Field(
        5000,
        ge=100,
        le=MAX_SAMPLES,
        description="sequences generated (80/20 train/test); 5000 is the standard set",
    )

    @field_validator("num_samples")
    @classmethod
    def _tens(cls, v: int) -> int:
        if v % NUM_CLASSES:
            raise ValueError(f"must be a multiple of {NUM_CLASSES} (one tenth per digit), got {v}")
        return v


DEFAULTS: dict[str, Any] = Mnist1dOptions().model_dump()  # the package's standard size


def mnist1d_params(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with ``options`` (None values mean "default"), validated by :class:`Mnist1dOptions`."""
    return parse_options(Mnist1dOptions, "mnist1d", options)


@functools.lru_cache(maxsize=4)
def _generate(num_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The package's ``make_dataset`` at its standard arguments but ``num_samples``, cached per
    process (generation takes ~0.7 s at 5,000). It seeds Python's and NumPy's global RNGs; their
    states are put back so that generating leaves the caller's random streams alone."""
    import numpy as np

    from pal_study.data.sources import DataError

    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:  # a declared dependency; only a broken install lacks it
        raise DataError(
            f"mnist1d: the 'mnist1d' package is needed to generate the data set ({e}); pip install 'mnist1d>=0.0.2,<1'"
        ) from e
    args = get_dataset_args()
    args.num_samples = num_samples
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    out = (
        np.asarray(d["x"], dtype=np.float32),
        np.asarray(d["y"], dtype=np.int64),
        np.asarray(d["x_test"], dtype=np.float32),
        np.asarray(d["y_test"], dtype=np.int64),
    )
    for a in out:
        a.setflags(write=False)
    return out


def load_mnist1d(options: Mapping[str, Any] | None = None) -> RawData:
    """Clean MNIST-1D: (N, 1, 40) float32 standardised with the training split's mean/std."""
    import numpy as np
    import torch

    from pal_study.data.raw import RawData

    p = mnist1d_params(options)
    x, y, x_test, y_test = _generate(p["num_samples"])
    mean, std = float(x.mean(dtype=np.float64)), float(x.std(dtype=np.float64))
    std = max(std, 1e-8)

    def prep(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((a - mean) / std).to(torch.float32).unsqueeze(1)  # a fresh copy

    return RawData(
        train_x=prep(x),
        train_y=torch.from_numpy(y.copy()),
        test_x=prep(x_test),
        test_y=torch.from_numpy(y_test.copy()),
        num_classes=NUM_CLASSES,
        input_shape=(1, SEQ_LEN),
        augment="none",
        mean=(mean,),
        std=(std,),
    )


SPEC = DatasetSpec(
    train_size=lambda options: int(options.get("num_samples") or 5000) * 4 // 5,
    name="mnist1d",
    summary="MNIST-1D sequences of length 40 (4000 train: 3600 + 400 validation / 1000 test), generated in memory",
    load=lambda root, download, options: load_mnist1d(options),
    input_shape=(1, SEQ_LEN),
    num_classes=NUM_CLASSES,
    default_arch="mnist1d_cnn",
    # Ours (not from a paper), measured in README.md: SGD with momentum on mnist1d_cnn.
    recipe=Recipe(
        lr=0.05, weight_decay=5e-4, epochs=60, batch_size=128, schedule="cosine", warmup_epochs=1, grad_clip=5.0
    ),
    loss_defaults="mnist",  # MNIST's values: digits again, a small net
    asymmetric_map=MNIST_ASYMMETRIC_MAP,  # the same ten digits (7->1, 2->7, 5<->6, 3->8)
    options_key="mnist1d",  # data.mnist1d.num_samples: the larger variant
    options=Mnist1dOptions,
)
