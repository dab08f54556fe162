"""Mini-batches of tensors that already live on their device, with batched augmentation.

The whole (small) data set sits on the device; an epoch is one permutation and a slice per batch,
so there are no DataLoader workers, no per-sample Python and no host-to-device copies per step.
All randomness comes from one CPU ``torch.Generator``: the same seed gives the same batches on any
device (CUDA generators would not match CPU ones).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

AUGMENTS = ("none", "crop_flip")


def _check_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(
            f"generator must be on the CPU (for device-independent determinism), got one on {generator.device}"
        )


def crop_flip(batch: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``padding`` plus random horizontal flip, per sample.

    ``batch`` is (B, C, H, W) on any device. Output image b is the zero-padded input window
    ``[oy_b : oy_b+H, ox_b : ox_b+W]`` with offsets uniform in [0, 2·padding], mirrored
    left-right with probability 1/2. One gather over the padded batch, no per-sample loop.
    """
    if batch.dim() != 4:
        raise ValueError(f"crop_flip needs a (B, C, H, W) batch, got shape {tuple(batch.shape)}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    _check_generator(generator)
    b, c, h, w = batch.shape
    p = padding
    oy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    flip = torch.randint(0, 2, (b,), generator=generator).bool()
    dev = batch.device
    oy, ox, flip = oy.to(dev, non_blocking=True), ox.to(dev, non_blocking=True), flip.to(dev, non_blocking=True)
    padded = F.pad(batch, (p, p, p, p)) if p else batch
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = oy[:, None] + ar_h  # (B, H)
    # Flipping the crop reads its columns right to left.
    cols = ox[:, None] + torch.where(flip[:, None], (w - 1) - ar_w, ar_w)  # (B, W)
    # One flat gather over (B, C, H'·W') instead of 4-tensor advanced indexing: same output,
    # ~2.6x faster on CPU (benchmarks/data_path.py measured the indexing at ~94 % of the path).
    wp = w + 2 * p
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, flat).view(b, c, h, w)


class DeviceBatches:
    """Iterate ``(x_batch, y_batch)`` over tensors already on their device.

    One ``torch.randperm`` per epoch (drawn on the CPU generator, then moved to ``x.device``);
    each batch is an ``index_select``. ``augment="crop_flip"`` applies :func:`crop_flip` to each
    batch with the same generator. ``generator=None`` uses a private generator seeded with 0, so
    runs stay repeatable; pass your own seeded one to vary the order. Iterating again starts a
    new epoch with a new permutation; ``len()`` is the number of batches per epoch.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        augment: str = "none",
        drop_last: bool = False,
        padding: int = 4,
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y differ in length: {x.shape[0]} vs {y.shape[0]}")
        if x.device != y.device:
            raise ValueError(f"x and y are on different devices: {x.device} vs {y.device}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        if augment == "crop_flip" and x.dim() != 4:
            raise ValueError(f"augment='crop_flip' needs image inputs (N, C, H, W), got shape {tuple(x.shape)}")
        if generator is None:
            generator = torch.Generator(device="cpu").manual_seed(0)
        _check_generator(generator)
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.augment = augment
        self.drop_last = drop_last
        self.padding = padding

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.x.shape[0]
        dev = self.x.device
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(dev, non_blocking=True)
        else:
            order = torch.arange(n, device=dev)
        bs = self.batch_size
        for i in range(len(self)):
            idx = order[i * bs : (i + 1) * bs]
            xb = self.x.index_select(0, idx)
            yb = self.y.index_select(0, idx)
            if self.augment == "crop_flip":
                xb = crop_flip(xb, self.generator, self.padding)
            yield xb, yb
