"""Benchmark: what per-trial checkpoints cost per epoch at the default interval ("auto").

    .venv/bin/python benchmarks/checkpoint_cost.py            # full: about 5 minutes on 2 cores
    .venv/bin/python benchmarks/checkpoint_cost.py --quick    # smoke run, under a minute

For each network the trainer itself (``pal_study.train.train``) runs the same trial with and
without ``checkpoint=CheckpointPolicy(path)`` (every_epochs "auto", the default), interleaved
(off/on, then on/off, ...) so both see the same background load; figures are medians over the
repeats.

- digits_mlp on the real digits data (small enough to be its own full size);
- mnist_cnn on synthetic (1, 28, 28) images, cifar_cnn8 and resnet32 on synthetic (3, 32, 32)
  images with crop+flip augmentation, like CIFAR; a reduced training set so resnet32 runs in a
  couple of minutes on a CPU.

Measured per run:

- ``save_ms``: wall time of each checkpoint, from the end of the ``on_epoch`` call to the start
  of the next epoch's training, minus the same gap in the run without checkpoints (state
  assembly + ``torch.save`` + fsync + rename); ``write_ms``: ``save_checkpoint`` alone;
- ``epoch_s``: the trainer's own ``train_time_s + eval_time_s``, epoch 1 (warm-up) dropped;
- ``share``: checkpoint time / epoch time of the whole run (with the forced save after epoch 1),
  and ``ratio``: wall of the run with checkpoints / without (noisier: it includes epoch jitter).

A save's cost does not depend on the data set size, an epoch's does: the epoch time is
extrapolated to the full data set (MNIST 60k, CIFAR 50k training images, 10k test; the split
keeps ``val_fraction`` 0.1 of the training pool for validation) from the measured per-sample
training and evaluation times, and the "auto" interval, the steady share and the share over the
recipe's epochs follow from it. "Work lost on a kill": a kill at a uniformly random instant of
a trial of E epochs loses the work since the last checkpoint; without checkpoints that is all
epochs so far (mean E/2, max E), with checkpoints at the chosen interval at most one interval.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from pathlib import Path
from typing import Any

import _bench
import torch

import pal_study.checkpoint as ckpt
from pal_study.checkpoint import AUTO_BUDGET, CheckpointPolicy, SaveSchedule, auto_interval
from pal_study.config import RECIPES, TrainConfig, resolve
from pal_study.device import configure_threads
from pal_study.train import build_dataset_for, train

# arch, data, recipe the epochs come from, full (train pool, test) sizes, synthetic per-class sizes
CASES: dict[str, dict[str, Any]] = {
    "digits_mlp": dict(data={"name": "digits"}, recipe="digits", full=None, shape=None),
    "mnist_cnn": dict(
        recipe="mnist",
        full=(60_000, 10_000),
        shape=[1, 28, 28],
        augment="none",
        per_class=(300, 100),
        quick_per_class=(60, 20),
    ),
    "cifar_cnn8": dict(
        recipe="cifar10",
        full=(50_000, 10_000),
        shape=[3, 32, 32],
        augment="crop_flip",
        per_class=(100, 40),
        quick_per_class=(20, 10),
    ),
    "resnet32": dict(
        recipe="cifar100",
        full=(50_000, 10_000),
        shape=[3, 32, 32],
        augment="crop_flip",
        per_class=(100, 40),
        quick_per_class=(20, 10),
    ),
}


def config_for(arch: str, epochs: int, quick: bool, threads: int) -> TrainConfig:
    case = CASES[arch]
    if case["shape"] is None:
        data = case["data"]
    else:
        train_pc, test_pc = case["quick_per_class" if quick else "per_class"]
        data = {
            "name": "synthetic",
            "synthetic": {
                "input_shape": case["shape"],
                "train_per_class": train_pc,
                "test_per_class": test_pc,
                "augment": case["augment"],
            },
        }
    return resolve(
        TrainConfig.model_validate(
            {
                "method": "ce+fnpal",
                "data": data,
                "model": {"arch": arch},
                "optim": {"epochs": epochs},
                "threads": threads,
            }
        )
    )


class Probe:
    """on_epoch callback + save_checkpoint wrapper: when each epoch was reported and each save."""

    def __init__(self) -> None:
        self.returned: list[float] = []  # perf_counter when on_epoch returned, per epoch
        self.writes: list[tuple[int, float]] = []  # (epoch, seconds in save_checkpoint)

    def on_epoch(self, m: Any) -> bool:
        self.returned.append(time.perf_counter())
        return False

    def wrap(self, real: Any) -> Any:
        def save(path: Any, state: dict[str, Any]) -> None:
            t = time.perf_counter()
            real(path, state)
            self.writes.append((int(state["epoch"]), time.perf_counter() - t))

        return save


def run_once(cfg: TrainConfig, data: Any, path: Path | None) -> dict[str, Any]:
    probe = Probe()
    real = ckpt.save_checkpoint
    ckpt.save_checkpoint = probe.wrap(real)
    try:
        if path is not None and path.exists():
            path.unlink()
        t = time.perf_counter()
        r = train(cfg, probe.on_epoch, data=data, checkpoint=CheckpointPolicy(path) if path is not None else None)
        wall = time.perf_counter() - t
    finally:
        ckpt.save_checkpoint = real
    assert r.status == "completed" and r.resumed_from_epoch is None, r.reason
    h = r.history
    # Gap after epoch i: from on_epoch's return to the start of epoch i+1's training. The start
    # is not visible from outside; "next report - next train+eval" is it, up to eval bookkeeping.
    gaps = [
        probe.returned[i + 1] - probe.returned[i] - (h[i + 1]["train_time_s"] + h[i + 1]["eval_time_s"])
        for i in range(len(h) - 1)
    ]
    return {
        "epoch_s": [e["train_time_s"] + e["eval_time_s"] for e in h],
        "train_s": [e["train_time_s"] for e in h],
        "eval_s": [e["eval_time_s"] for e in h],
        "gap_s": gaps,
        "saves": [e for e, _ in probe.writes],
        "write_s": [s for _, s in probe.writes],
        "wall_s": wall,
        "file_bytes": path.stat().st_size if path is not None and path.exists() else None,
    }


def lost_work(save_epochs: list[int], epochs: int) -> tuple[float, float]:
    """(mean, max) epochs of work lost by a kill at a uniform instant of an ``epochs``-epoch trial
    with checkpoints after ``save_epochs``."""
    marks = [0] + [e for e in save_epochs if e < epochs] + [epochs]
    segs = [b - a for a, b in itertools.pairwise(marks)]
    return sum(s * s / 2 for s in segs) / epochs, float(max(segs))


def plan_saves(epochs: int, save_s: float, epoch_s: float) -> list[int]:
    """The "auto" schedule's saves in a trial of constant epoch and save times."""
    s, saves = SaveSchedule("auto"), []
    for e in range(1, epochs):  # the final epoch is not a periodic save
        if s.due(e):
            saves.append(e)
            s.saved(e, save_s, [epoch_s] * e)
    return saves


def run_case(arch: str, epochs: int, repeats: int, quick: bool, threads: int, root: Path) -> dict[str, Any]:
    case = CASES[arch]
    cfg = config_for(arch, epochs, quick, threads)
    data = build_dataset_for(cfg)
    n_train, n_val, n_test = data.train_y.shape[0], data.val_y.shape[0], data.test_y.shape[0]
    path = root / arch / "trial.pt"
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    t0 = time.perf_counter()
    run_once(cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": 2})}), data, None)  # warm-up
    for rep in range(repeats):
        for side in ("off", "on") if rep % 2 == 0 else ("on", "off"):
            runs[side].append(run_once(cfg, data, path if side == "on" else None))
    med = _bench.median
    # Epoch time: epochs 2.. of both sides (a save never falls inside train/eval time).
    epoch_s = med([x for r in runs["off"] + runs["on"] for x in r["epoch_s"][1:]])
    train_s = med([x for r in runs["off"] + runs["on"] for x in r["train_s"][1:]])
    eval_s = med([x for r in runs["off"] + runs["on"] for x in r["eval_s"][1:]])
    gap_off = med([g for r in runs["off"] for g in r["gap_s"]])
    save_s = med([r["gap_s"][e - 1] - gap_off for r in runs["on"] for e in r["saves"] if e - 1 < len(r["gap_s"])])
    write_s = med([w for r in runs["on"] for w in r["write_s"]])
    shares = [
        sum(r["gap_s"][e - 1] - gap_off for e in r["saves"] if e - 1 < len(r["gap_s"])) / sum(r["epoch_s"])
        for r in runs["on"]
    ]
    ratios = [on["wall_s"] / off["wall_s"] for on, off in zip(runs["on"], runs["off"], strict=False)]
    intervals = [b - a for r in runs["on"] for a, b in zip(r["saves"], r["saves"][1:], strict=False)]

    recipe_epochs = RECIPES[case["recipe"]]["epochs"]
    if case["full"] is None:  # digits: measured at its full size
        full_epoch_s, full_sizes = epoch_s, (n_train, n_val, n_test)
    else:
        pool, test = case["full"]
        full_val = round(pool * cfg.data.val_fraction)
        full_sizes = (pool - full_val, full_val, test)
        full_epoch_s = train_s / n_train * full_sizes[0] + eval_s / (n_val + n_test) * (full_sizes[1] + test)
    out: dict[str, Any] = {
        "arch": arch,
        "threads": threads,
        "epochs": epochs,
        "repeats": repeats,
        "sizes": {"train": n_train, "val": n_val, "test": n_test},
        "file_mb": runs["on"][0]["file_bytes"] / 1e6,
        "save_ms": 1000 * save_s,
        "write_ms": 1000 * write_s,
        "gap_off_ms": 1000 * gap_off,
        "epoch_s": epoch_s,
        "train_s": train_s,
        "eval_s": eval_s,
        "share_measured": med(shares),
        "wall_ratio_on_off": med(ratios),
        "saves_per_run": [r["saves"] for r in runs["on"]],
        "interval_measured": med(intervals) if intervals else None,
        "interval_auto_measured": auto_interval(save_s, epoch_s),
        "share_steady_measured": save_s / (auto_interval(save_s, epoch_s) * epoch_s),
        "wall_s": time.perf_counter() - t0,
        "runs": runs,
    }
    interval_full = auto_interval(save_s, full_epoch_s)
    saves_full = plan_saves(recipe_epochs, save_s, full_epoch_s)
    lost_mean, lost_max = lost_work(saves_full, recipe_epochs)
    out["full"] = {
        "sizes": dict(zip(("train", "val", "test"), full_sizes, strict=False)),
        "epoch_s": full_epoch_s,
        "interval": interval_full,
        "share_steady": save_s / (interval_full * full_epoch_s),
        "recipe_epochs": recipe_epochs,
        "saves": len(saves_full),
        "share_over_recipe": len(saves_full) * save_s / (recipe_epochs * full_epoch_s),
        "lost_epochs_mean": lost_mean,
        "lost_epochs_max": lost_max,
        "lost_epochs_mean_without": recipe_epochs / 2,
        "lost_epochs_max_without": float(recipe_epochs),
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny data sets, 3 epochs, 1 repeat")
    ap.add_argument("--repeats", type=int, default=None, help="runs per side (default 3; quick 1)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default 6; quick 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs allotted)")
    ap.add_argument("--archs", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the checkpoints go (default: a temporary directory); save time depends on the filesystem",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    repeats = args.repeats or (1 if args.quick else 3)
    epochs = args.epochs or (3 if args.quick else 6)
    threads = configure_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with _bench.temp_root("pal-ckpt-bench-") as tmp:
        root = args.dir or Path(tmp)
        res: dict[str, Any] = {
            "benchmark": "checkpoint_cost",
            "quick": args.quick,
            "repeats": repeats,
            "epochs": epochs,
            "budget": AUTO_BUDGET,
            "machine": _bench.machine([threads]),
            "checkpoint_fs": _filesystem(root),
            "command": " ".join([".venv/bin/python", "benchmarks/checkpoint_cost.py", *sys.argv[1:]]),
            "cases": [],
        }
        for arch in args.archs:
            r = run_case(arch, epochs, repeats, args.quick, threads, root)
            res["cases"].append(r)
            print(
                f"  {arch}: save {r['save_ms']:.1f} ms, epoch {r['epoch_s']:.3f} s, "
                f"share {100 * r['share_measured']:.2f} % ({r['wall_s']:.0f} s)",
                flush=True,
            )
    res["wall_s"] = time.perf_counter() - t0
    print(
        f"\ncheckpoint cost at the default interval (auto, budget {100 * AUTO_BUDGET:.0f} %), "
        f"{threads} threads, medians of {repeats} interleaved runs of {epochs} epochs"
    )
    print(
        _bench.table(
            ["arch", "n_train", "file MB", "save ms", "write ms", "epoch s", "saved after", "share", "wall on/off"],
            [
                [
                    r["arch"],
                    r["sizes"]["train"],
                    r["file_mb"],
                    r["save_ms"],
                    r["write_ms"],
                    r["epoch_s"],
                    ",".join(map(str, r["saves_per_run"][0])),
                    f"{100 * r['share_measured']:.2f}%",
                    f"{r['wall_ratio_on_off']:.3f}x",
                ]
                for r in res["cases"]
            ],
        )
    )
    print("\nextrapolated to the full data set (save time fixed, epoch time per sample); kill at a random instant")
    print(
        _bench.table(
            [
                "arch",
                "full train",
                "epoch s",
                "interval",
                "steady share",
                "recipe E",
                "saves",
                "share over E",
                "lost mean (none)",
                "lost max (none)",
            ],
            [
                [
                    r["arch"],
                    f["sizes"]["train"],
                    f["epoch_s"],
                    f["interval"],
                    f"{100 * f['share_steady']:.3f}%",
                    f["recipe_epochs"],
                    f["saves"],
                    f"{100 * f['share_over_recipe']:.3f}%",
                    f"{f['lost_epochs_mean']:.1f} ({f['lost_epochs_mean_without']:.0f})",
                    f"{f['lost_epochs_max']:.0f} ({f['lost_epochs_max_without']:.0f})",
                ]
                for r in res["cases"]
                for f in [r["full"]]
            ],
        )
    )
    print(f"\nwall {res['wall_s']:.0f} s; wrote {_bench.write_json('checkpoint_cost', args.quick, res)}")


def _filesystem(path: Path) -> str | None:
    """The mount type under ``path`` (ext4, tmpfs, overlay, nfs...), from /proc/mounts."""
    try:
        target = Path(path).resolve()
        best = ("", None)
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if (
                len(parts) >= 3
                and (target == Path(parts[1]) or Path(parts[1]) in target.parents)
                and len(parts[1]) > len(best[0])
            ):
                best = (parts[1], parts[2])
        return best[1]
    except OSError:
        return None


if __name__ == "__main__":
    main()
