"""Benchmark (a): the data path alone, pal-study's device-resident batches vs a DataLoader.

    .venv/bin/python benchmarks/data_path.py            # full: 50,000 images, about 1 minute
    .venv/bin/python benchmarks/data_path.py --quick    # smoke run, seconds

Both sides read the same CIFAR-10-format files (random uint8 pixels, written with
``pal_study.data.formats.write_cifar10``) and deliver normalised float batches of 128 with
random crop (zero padding 4) + horizontal flip:

- pal-study: ``build_dataset("cifar10", root=...)`` (tensors), then
  ``DeviceBatches(train_x, train_y, 128, augment="crop_flip")``.
- baseline: ``DataLoader(torchvision CIFAR10(transform=RandomCrop(32, padding=4),
  RandomHorizontalFlip, ToTensor, Normalize), batch_size=128, shuffle=True)`` with
  ``num_workers`` 0 and 2: per-sample uint8 HWC array -> PIL -> transforms -> collate, which is
  how the baselines' public code (APL, ALFs) loads CIFAR.

Each measurement: a fresh iterator (a new epoch), 10 warm-up batches, then ``--batches`` timed
batches; the loaders are interleaved within each repeat and the speed-up is the median of the
per-repeat ratios. Diagnostics (not part of the target): the device path without augmentation
(batch assembly alone), and with a flat-``gather`` variant of the same crop/flip in place of
``crop_flip`` (bit-identical output, checked), to show what the augmentation's indexing costs.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import _bench
import numpy as np
import torch
import torch.nn.functional as F

BATCH = 128
WARMUP = 10


def crop_flip_gather(batch: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Same draws and output as ``pal_study.data.crop_flip``, as one ``gather`` on (B, C, H'·W').

    Diagnostic only: shows how much of ``crop_flip``'s cost is its 4-tensor advanced indexing.
    """
    b, c, h, w = batch.shape
    p = padding
    oy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    flip = torch.randint(0, 2, (b,), generator=generator).bool()
    padded = F.pad(batch, (p, p, p, p))
    wp = w + 2 * p
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    rows = oy[:, None] + ar_h
    cols = ox[:, None] + torch.where(flip[:, None], (w - 1) - ar_w, ar_w)
    flat = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, flat).view(b, c, h, w)


def _augmented(batches: Any, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The device path with ``crop_flip_gather`` in place of ``crop_flip`` (same draws, same output)."""
    for xb, yb in batches:
        yield crop_flip_gather(xb, generator), yb


def _take(it: Any, n: int) -> None:
    for _ in range(n):
        next(it)


def _rate(make_iter: Any, batches: int) -> tuple[float, float]:
    """(batches per second over ``batches`` after the warm-up, seconds to the first batch)."""
    t0 = time.perf_counter()
    it = make_iter()
    next(it)
    t_first = time.perf_counter() - t0
    _take(it, WARMUP - 1)
    t = _bench.timed(functools.partial(_take, it, batches))
    del it  # shuts DataLoader workers down before the next measurement
    return batches / t, t_first


def run(n: int, batches: int, repeats: int, thread_counts: list[int]) -> dict[str, Any]:
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    from pal_study.data import DeviceBatches, build_dataset, crop_flip
    from pal_study.data.formats import write_cifar10

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    out: dict[str, Any] = {
        "n_images": n,
        "batch_size": BATCH,
        "timed_batches": batches,
        "warmup_batches": WARMUP,
        "repeats": repeats,
        "by_threads": {},
    }
    with _bench.temp_root("pal-bench-cifar-") as root:
        t = time.perf_counter()
        write_cifar10(root, images, labels, images[:100], labels[:100])
        bundle = build_dataset("cifar10", root=root, val_fraction=0.0)
        out["setup_s"] = time.perf_counter() - t
        assert bundle.train_x.shape == (n, 3, 32, 32) and bundle.augment == "crop_flip"
        x, y = bundle.train_x, bundle.train_y
        tf = T.Compose(
            [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(bundle.mean, bundle.std)]
        )
        ds = _bench.cifar10_class()(root, train=True, transform=tf)
        assert len(ds) == n and ds.data.dtype == np.uint8 and ds.data.shape[1:] == (32, 32, 3)

        g = torch.Generator().manual_seed(0)
        xb = x[:BATCH]
        g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
        out["gather_variant_bit_identical"] = bool(torch.equal(crop_flip(xb, g1), crop_flip_gather(xb, g2)))

        for threads in thread_counts:
            torch.set_num_threads(threads)
            rows: dict[str, list[float]] = {
                k: []
                for k in (
                    "device_batches",
                    "dataloader_w0",
                    "dataloader_w2",
                    "w2_first_batch_s",
                    "speedup_vs_w0",
                    "speedup_vs_w2",
                    "device_batches_full_epoch",
                    "assembly_only",
                    "gather_variant",
                    "gather_variant_vs_w0",
                    "gather_variant_vs_w2",
                )
            }
            for _ in range(repeats):
                db, _ = _rate(lambda: iter(DeviceBatches(x, y, BATCH, generator=g, augment="crop_flip")), batches)
                w0, _ = _rate(lambda: iter(DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0)), batches)
                w2, first = _rate(lambda: iter(DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=2)), batches)
                rows["device_batches"].append(db)
                rows["dataloader_w0"].append(w0)
                rows["dataloader_w2"].append(w2)
                rows["w2_first_batch_s"].append(first)
                rows["speedup_vs_w0"].append(db / w0)
                rows["speedup_vs_w2"].append(db / w2)
                # Whole epochs of the device path (cheap): includes the per-epoch randperm.
                epoch = DeviceBatches(x, y, BATCH, generator=g, augment="crop_flip")
                rows["device_batches_full_epoch"].append(
                    len(epoch) / _bench.timed(functools.partial(_take, iter(epoch), len(epoch)))
                )
                rows["assembly_only"].append(_rate(lambda: iter(DeviceBatches(x, y, BATCH, generator=g)), batches)[0])
                gv, _ = _rate(lambda: _augmented(DeviceBatches(x, y, BATCH, generator=g), g), batches)
                rows["gather_variant"].append(gv)
                rows["gather_variant_vs_w0"].append(gv / w0)
                rows["gather_variant_vs_w2"].append(gv / w2)
            out["by_threads"][str(threads)] = {"median": {k: _bench.median(v) for k, v in rows.items()}, "all": rows}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4,096 images, 10 timed batches, 1 repeat, 2 threads")
    ap.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=None,
        help="torch intra-op thread counts to measure (default: 2 1; quick: 2)",
    )
    ap.add_argument("--repeats", type=int, default=None, help="default 5 (quick: 1)")
    ap.add_argument("--batches", type=int, default=None, help="timed batches per measurement (default 100)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the md5 warning for our synthetic files is expected
    threads = args.threads or ([2] if args.quick else [2, 1])
    repeats = args.repeats or (1 if args.quick else 5)
    batches = args.batches or (10 if args.quick else 100)
    n = 4096 if args.quick else 50_000
    t0 = time.perf_counter()
    res = {
        "benchmark": "data_path",
        "quick": args.quick,
        "machine": _bench.machine(threads),
        "command": " ".join([".venv/bin/python", "benchmarks/data_path.py", *sys.argv[1:]]),
    }
    res.update(run(n, batches, repeats, threads))
    res["wall_s"] = time.perf_counter() - t0
    rows = []
    for th, r in res["by_threads"].items():
        m = r["median"]
        rows.append(
            [
                th,
                m["device_batches"],
                m["device_batches_full_epoch"],
                m["dataloader_w0"],
                m["dataloader_w2"],
                f"{m['speedup_vs_w0']:.1f}x",
                f"{m['speedup_vs_w2']:.1f}x",
                m["assembly_only"],
                m["gather_variant"],
                f"{m['gather_variant_vs_w0']:.1f}x",
                f"{m['gather_variant_vs_w2']:.1f}x",
            ]
        )
    print(f"data path: CIFAR-shaped {n}x3x32x32, batch {BATCH}, crop+flip; batches/s, median of {repeats}")
    print(
        _bench.table(
            [
                "threads",
                "DeviceBatches",
                "(full epoch)",
                "DL w0",
                "DL w2",
                "vs w0",
                "vs w2",
                "no augment",
                "gather variant",
                "vs w0",
                "vs w2",
            ],
            rows,
        )
    )
    print(
        f"gather variant bit-identical to crop_flip: {res['gather_variant_bit_identical']}; wall {res['wall_s']:.0f} s"
    )
    print(f"wrote {_bench.write_json('data_path', args.quick, res)}")


if __name__ == "__main__":
    main()
