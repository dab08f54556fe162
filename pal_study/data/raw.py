"""What every data set's loader returns: :class:`RawData`, a clean training pool and test set.

Its own module so that the data set declarations (``data/sets/``) and the loaders
(``data/sources.py``, which read what the declarations name) both use it without importing each
other in a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the annotations only: the data set declarations import this without torch
    import torch


@dataclass
class RawData:
    train_x: torch.Tensor  # (N, *input_shape) float32, normalised
    train_y: torch.Tensor  # (N,) int64, clean
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    augment: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
