from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pal_study.data.batching import DeviceBatches, crop_flip


def make(n: int = 103, shape: tuple[int, ...] = (5,)) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n, dtype=torch.float32).view(n, *([1] * len(shape))).expand(n, *shape).contiguous()
    return x, torch.arange(n)


def epoch_ids(batches: DeviceBatches) -> list[int]:
    return [int(v) for _, yb in batches for v in yb]


@pytest.mark.parametrize("bs", [1, 10, 103, 500])
def test_every_sample_once_per_epoch(bs: int) -> None:
    x, y = make()
    batches = DeviceBatches(x, y, bs, generator=torch.Generator().manual_seed(0))
    assert len(batches) == math.ceil(103 / bs)
    for _ in range(2):
        seen = []
        n_batches = 0
        for xb, yb in batches:
            assert xb.shape[1:] == (5,) and xb.shape[0] == yb.shape[0] <= bs
            assert torch.equal(xb[:, 0], yb.float()), "x and y rows stay paired"
            seen += yb.tolist()
            n_batches += 1
        assert n_batches == len(batches)
        assert sorted(seen) == list(range(103))


def test_order_differs_across_epochs_and_repeats_per_seed() -> None:
    x, y = make()
    a = DeviceBatches(x, y, 16, generator=torch.Generator().manual_seed(3))
    b = DeviceBatches(x, y, 16, generator=torch.Generator().manual_seed(3))
    a1, a2 = epoch_ids(a), epoch_ids(a)
    assert a1 != a2
    assert (a1, a2) == (epoch_ids(b), epoch_ids(b))
    c = DeviceBatches(x, y, 16, generator=torch.Generator().manual_seed(4))
    assert epoch_ids(c) != a1


def test_no_shuffle_and_default_generator() -> None:
    x, y = make(10)
    assert epoch_ids(DeviceBatches(x, y, 3, shuffle=False)) == list(range(10))
    # generator=None: a private generator seeded 0, so two fresh iterators agree
    assert epoch_ids(DeviceBatches(x, y, 3)) == epoch_ids(DeviceBatches(x, y, 3))


def test_drop_last() -> None:
    x, y = make(103)
    batches = DeviceBatches(x, y, 10, drop_last=True, generator=torch.Generator().manual_seed(0))
    assert len(batches) == 10
    sizes = [yb.numel() for _, yb in batches]
    assert sizes == [10] * 10
    assert len(DeviceBatches(x, y, 10, drop_last=False)) == 11
    assert len(DeviceBatches(x[:5], y[:5], 10, drop_last=True)) == 0


def _match(out: torch.Tensor, padded: torch.Tensor, h: int, w: int, span: int) -> list[tuple[int, int, bool]]:
    found = []
    for oy in range(span):
        for ox in range(span):
            window = padded[:, oy : oy + h, ox : ox + w]
            for flip in (False, True):
                cand = window.flip(-1) if flip else window
                if torch.equal(out, cand):
                    found.append((oy, ox, flip))
    return found


def test_crop_flip_is_a_shifted_padded_window_maybe_flipped() -> None:
    p = 4
    g = torch.Generator().manual_seed(0)
    batch = torch.rand(64, 3, 8, 10, generator=g) + 0.5  # no zeros, no symmetry: matches are unique
    out = crop_flip(batch, torch.Generator().manual_seed(1), padding=p)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    padded = F.pad(batch, (p, p, p, p))
    offsets, flips = set(), set()
    for i in range(batch.shape[0]):
        found = _match(out[i], padded[i], 8, 10, 2 * p + 1)
        assert len(found) == 1, f"sample {i}: {found}"
        offsets.add(found[0][:2])
        flips.add(found[0][2])
    assert flips == {False, True}
    assert len(offsets) > 20, "offsets vary per sample"
    assert any(oy in (0, 2 * p) for oy, _ in offsets), "extreme offsets reachable"


def test_crop_flip_deterministic_and_padding_zero() -> None:
    batch = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    a = crop_flip(batch, torch.Generator().manual_seed(5))
    assert torch.equal(a, crop_flip(batch, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, crop_flip(batch, torch.Generator().manual_seed(6)))
    b = crop_flip(batch, torch.Generator().manual_seed(5), padding=0)
    for i in range(16):
        assert torch.equal(b[i], batch[i]) or torch.equal(b[i], batch[i].flip(-1))


def test_device_batches_augment_keeps_pairs() -> None:
    n = 40
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 8, 8) + 1.0
    y = torch.arange(n)
    batches = DeviceBatches(x.contiguous(), y, 16, augment="crop_flip", generator=torch.Generator().manual_seed(0))
    changed = False
    for xb, yb in batches:
        for img, label in zip(xb, yb, strict=False):
            vals = set(img.unique().tolist())
            assert vals <= {0.0, float(label) + 1.0}, "an image only holds its own pixels and zero padding"
            changed |= 0.0 in vals
    assert changed


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=4, augment="mixup"), "mixup"),
        (dict(batch_size=4, augment="crop_flip"), "image"),
        (dict(batch_size=4, generator=7), "generator"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    x, y = make(10)
    with pytest.raises(ValueError, match=match):
        DeviceBatches(x, y, **kwargs)


def test_length_mismatch_raises() -> None:
    x, y = make(10)
    with pytest.raises(ValueError, match="length"):
        DeviceBatches(x, y[:5], 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu() -> None:
    x = torch.rand(50, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(50)
    cpu = list(DeviceBatches(x, y, 16, augment="crop_flip", generator=torch.Generator().manual_seed(1)))
    gpu = list(DeviceBatches(x.cuda(), y.cuda(), 16, augment="crop_flip", generator=torch.Generator().manual_seed(1)))
    assert len(cpu) == len(gpu)
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=False):
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(yc, yg.cpu()) and torch.equal(xc, xg.cpu())
