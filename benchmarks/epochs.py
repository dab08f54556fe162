"""Benchmark (b): whole training epochs, pal-study's trainer vs the baselines' loop.

    .venv/bin/python benchmarks/epochs.py            # full: about 3 minutes on 2 cores
    .venv/bin/python benchmarks/epochs.py --quick    # smoke run, seconds

Same network, batch size, optimiser settings and training set on both sides.

- pal-study: ``pal_study.train.train(cfg, on_epoch=...)`` itself (method ``ce+fnpal``, i.e.
  device-resident ``DeviceBatches`` + backbone + anchored head + loss + SGD with the recipe's
  clip and per-step LR schedule, loss summed on the device). Epoch times are the trainer's own
  ``history[i]["train_time_s"]`` and ``["eval_time_s"]`` (validation + test with all metrics).
- baseline: the loop of Active-Passive Losses' public ``train.py``: a ``DataLoader`` over a
  torchvision-style per-sample dataset with transforms (MNIST/CIFAR: torchvision's own classes
  reading files written in the real formats; digits: an array dataset with ToTensor +
  Normalize), backbone + ``nn.Linear`` head, cross-entropy, ``clip_grad_norm_(5)``, SGD, and
  per step top-1/top-5 accuracy with three ``.item()`` host syncs; cosine LR stepped per epoch;
  evaluation on the test set through a DataLoader with batch 256.

The two run interleaved: the baseline's epoch runs inside the trainer's ``on_epoch`` callback,
so pal-study epoch i and baseline epoch i see the same background load. Epoch 1 of each is a
warm-up and is dropped; the speed-up is the median of the per-epoch ratios.

Where pal-study's epoch time goes: the trainer's own epoch function, ``train_epoch``, built from
the trainer's pieces (``build_classifier``, ``build_loss(loss_params)``, ``make_optimizer``,
``lr_factor``, ``DeviceBatches``) and given a ``phases`` dict, which it fills with the time of
each phase (on the CPU every op is synchronous, so the boundaries are exact): data (batch
assembly + augmentation), forward (backbone + head + loss), backward (zero_grad + backward),
optimiser (clip + step + LR schedule), metrics (the on-device loss sum and the epoch's one host
sync). Its epoch total is compared with the trainer's ``train_time_s``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import _bench
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

EVAL_BATCH_BASELINE = 256  # APL's eval_batch_size
QUANT = 32.0  # synthetic floats -> uint8 files: u8 = 128 + 32·x (the baseline reads uint8 like real data)


# --------------------------------------------------------------------------------------------
# Baseline: APL-style data sets and loop


class ArrayImages(Dataset):
    """torchvision-style per-sample data set over an (N, H, W) array, like ``datasets.MNIST``."""

    def __init__(self, images: np.ndarray, targets: list[int], transform: Any):
        self.data, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.data[index]), self.targets[index]


def topk_accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[torch.Tensor]:
    """Fraction of the batch whose target is among the top-k logits (the usual ImageNet helper)."""
    maxk = max(topk)
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.view(1, -1).expand(maxk, -1))
    return [correct[:k].reshape(-1).float().sum(0).mul_(1.0 / target.size(0)) for k in topk]


class Meter:
    def __init__(self) -> None:
        self.sum, self.count = 0.0, 0

    def update(self, value: float, n: int) -> None:
        self.sum += value * n
        self.count += n


@dataclass
class Baseline:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: DataLoader
    test_loader: DataLoader
    grad_bound: float
    train_s: list[float] = field(default_factory=list)
    data_s: list[float] = field(default_factory=list)
    eval_s: list[float] = field(default_factory=list)

    def epoch(self) -> None:
        """One epoch as APL's ``train_fixed`` runs it, then its ``model_eval`` on the test set."""
        model, opt = self.model, self.optimizer
        t0 = time.perf_counter()
        model.train()
        meters = [Meter(), Meter(), Meter()]
        t_data = 0.0
        it = iter(self.train_loader)
        while True:
            td = time.perf_counter()
            try:
                images, labels = next(it)
            except StopIteration:
                break
            t_data += time.perf_counter() - td
            model.zero_grad()
            opt.zero_grad()
            pred = model(images)
            loss = F.cross_entropy(pred, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_bound)
            opt.step()
            acc, acc5 = topk_accuracy(pred, labels, (1, 5))
            n = labels.shape[0]
            for m, v in zip(meters, (loss, acc, acc5), strict=False):
                m.update(v.item(), n)
        self.scheduler.step()
        t1 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            for images, labels in self.test_loader:
                pred = model(images)
                loss = F.cross_entropy(pred, labels)
                acc, acc5 = topk_accuracy(pred, labels, (1, 5))
                _ = (loss.item(), acc.item(), acc5.item())
        t2 = time.perf_counter()
        self.train_s.append(t1 - t0)
        self.data_s.append(t_data)
        self.eval_s.append(t2 - t1)


def _quantize(x: torch.Tensor) -> np.ndarray:
    return (x * QUANT + 128.0).round_().clamp_(0, 255).to(torch.uint8).numpy()


@dataclass
class BaselineData:
    train: Dataset
    test: Dataset
    source: str


def baseline_data(case: str, bundle: Any, root: str) -> BaselineData:
    """The per-sample data sets the baseline reads, holding the same training samples as ``bundle``."""
    import torchvision.transforms as T

    y_tr = [int(v) for v in bundle.train_y]
    y_te = [int(v) for v in bundle.test_y]
    if case.startswith("digits"):
        # sklearn's digits as images in [0, 1] (pixels / 16), what pal-study normalises.
        mean, std = bundle.mean[0], bundle.std[0]
        tf = T.Compose([T.ToTensor(), T.Normalize((mean,), (std,))])
        raw_tr = (bundle.train_x[:, 0] * std + mean).numpy()
        raw_te = (bundle.test_x[:, 0] * std + mean).numpy()
        return BaselineData(
            ArrayImages(raw_tr, y_tr, tf),
            ArrayImages(raw_te, y_te, tf),
            "ArrayImages(float32 HxW) + ToTensor + Normalize",
        )
    mean, std = 128.0 / 255.0, QUANT / 255.0  # ToTensor's /255 then this Normalize undo _quantize
    if case == "mnist":
        from torchvision.datasets import MNIST

        from pal_study.data.formats import write_mnist

        write_mnist(root, _quantize(bundle.train_x[:, 0]), y_tr, _quantize(bundle.test_x[:, 0]), y_te)
        tf = T.Compose([T.ToTensor(), T.Normalize((mean,), (std,))])
        return BaselineData(
            MNIST(root, train=True, transform=tf),
            MNIST(root, train=False, transform=tf),
            "torchvision.datasets.MNIST (idx files) + ToTensor + Normalize",
        )
    from pal_study.data.formats import write_cifar10

    write_cifar10(root, _quantize(bundle.train_x), y_tr, _quantize(bundle.test_x), y_te)
    cls = _bench.cifar10_class()
    norm = T.Normalize((mean,) * 3, (std,) * 3)
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    test_tf = T.Compose([T.ToTensor(), norm])
    return BaselineData(
        cls(root, train=True, transform=train_tf),
        cls(root, train=False, transform=test_tf),
        "torchvision.datasets.CIFAR10 (python batches) + RandomCrop(32, 4) + "
        "RandomHorizontalFlip + ToTensor + Normalize",
    )


def build_baseline(cfg: Any, bundle: Any, data: BaselineData, workers: int) -> Baseline:
    from pal_study.models import build_model

    backbone = build_model(cfg.model.arch, tuple(bundle.input_shape), last_relu=True, seed=cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = nn.Sequential(backbone, nn.Linear(backbone.feature_dim, bundle.num_classes))
    o = cfg.optim
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(o.epochs))
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(data.train, batch_size=o.batch_size, shuffle=True, num_workers=workers, generator=gen)
    test_loader = DataLoader(data.test, batch_size=EVAL_BATCH_BASELINE, shuffle=False, num_workers=workers)
    return Baseline(model, opt, sched, train_loader, test_loader, float(o.grad_clip or 5.0))


# --------------------------------------------------------------------------------------------
# pal-study: the trainer's epoch loop, instrumented phase by phase


def _phases(cfg: Any, bundle: Any, epochs: int) -> dict[str, list[float]]:
    """Run ``epochs`` epochs with the trainer's own ``train_epoch``, timing each phase of every
    step through its ``phases`` argument."""
    from pal_study.data import DeviceBatches
    from pal_study.losses import build_loss
    from pal_study.train import PHASES, build_classifier, loss_params, lr_factor, make_optimizer, train_epoch

    k = bundle.num_classes
    counts = torch.bincount(bundle.train_y, minlength=k).tolist()
    model = build_classifier(cfg, tuple(bundle.input_shape), k)
    criterion = build_loss(cfg.loss.name, k, **loss_params(cfg, model.head, counts))
    optimizer = make_optimizer(model, cfg)
    batches = DeviceBatches(
        bundle.train_x,
        bundle.train_y,
        cfg.optim.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(cfg.seed),
        augment=bundle.augment,
    )
    steps = len(batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, cfg))
    out: dict[str, list[float]] = {k_: [] for k_ in (*PHASES, "epoch")}
    for _ in range(epochs):
        acc = dict.fromkeys(PHASES, 0.0)
        t_start = time.perf_counter()
        train_loss = train_epoch(
            model, model, batches, criterion, optimizer, scheduler, clip=cfg.optim.grad_clip or 0.0, phases=acc
        )
        out["epoch"].append(time.perf_counter() - t_start)
        if not math.isfinite(train_loss):
            raise RuntimeError(f"non-finite training loss {train_loss} in the instrumented epoch")
        for key, v in acc.items():
            out[key].append(v)
    return out


# --------------------------------------------------------------------------------------------
# Cases


def case_config(case: str, threads: int, epochs: int, quick: bool) -> Any:
    from pal_study.config import TrainConfig, resolve

    base: dict[str, Any] = {
        "method": "ce" if case == "digits_linear" else "ce+fnpal",
        "device": "cpu",
        "threads": threads,
        "optim": {"epochs": epochs},
    }
    if case == "mnist":
        base["data"] = {
            "name": "synthetic",
            "synthetic": {
                "input_shape": [1, 28, 28],
                "train_per_class": 60 if quick else 1000,
                "test_per_class": 20 if quick else 100,
            },
        }
        base["optim"]["batch_size"] = 128
    elif case == "cifar":
        base["data"] = {
            "name": "synthetic",
            "synthetic": {
                "input_shape": [3, 32, 32],
                "train_per_class": 30 if quick else 250,
                "test_per_class": 10 if quick else 50,
                "augment": "crop_flip",
            },
        }
        base["optim"]["batch_size"] = 128
    return resolve(TrainConfig(**base))


LABELS = {
    "digits": "digits (real) / digits_mlp",
    "digits_linear": "digits, pal-study with method=ce (linear head)",
    "mnist": "MNIST-shaped synthetic / mnist_cnn",
    "cifar": "CIFAR-shaped synthetic + crop/flip / cifar_cnn8",
}


def run_case(case: str, threads: int, repeats: int, workers: int, quick: bool) -> dict[str, Any]:
    from pal_study.train import build_dataset_for, train

    torch.set_num_threads(threads)
    epochs = 1 + repeats
    cfg = case_config(case, threads, epochs, quick)
    bundle = build_dataset_for(cfg)
    t_case = time.perf_counter()
    with _bench.temp_root("pal-bench-epochs-") as root:
        data = baseline_data(case, bundle, root)
        assert len(data.train) == bundle.train_y.shape[0]
        base = build_baseline(cfg, bundle, data, workers)
        # The baseline's epoch i runs right after pal-study's epoch i (same background load).
        result = train(cfg, on_epoch=lambda m: base.epoch(), data=bundle)
    if result.status != "completed":
        raise RuntimeError(f"{case}: train() ended {result.status}: {result.reason}")
    ours = [h["train_time_s"] for h in result.history][1:]
    ours_eval = [h["eval_time_s"] for h in result.history][1:]
    b_train, b_eval, b_data = base.train_s[1:], base.eval_s[1:], base.data_s[1:]
    # After train() the process is warm for these shapes, so no extra warm-up epoch here.
    phases = _phases(cfg, bundle, repeats)
    steps = math.ceil(bundle.train_y.shape[0] / cfg.optim.batch_size)
    med = {key: _bench.median(v) for key, v in phases.items()}
    res = {
        "case": case,
        "label": LABELS[case],
        "threads": threads,
        "method": "ce" if case == "digits_linear" else "ce+fnpal",
        "arch": cfg.model.arch,
        "input_shape": list(bundle.input_shape),
        "n_train": int(bundle.train_y.shape[0]),
        "n_val": int(bundle.val_y.shape[0]),
        "n_test": int(bundle.test_y.shape[0]),
        "batch_size": cfg.optim.batch_size,
        "steps_per_epoch": steps,
        "baseline_workers": workers,
        "baseline_data": data.source,
        "pal_study_epoch_s": _bench.median(ours),
        "baseline_epoch_s": _bench.median(b_train),
        "speedup": _bench.median([b / o for b, o in zip(b_train, ours, strict=False)]),
        "pal_study_eval_s": _bench.median(ours_eval),
        "baseline_eval_s": _bench.median(b_eval),
        "speedup_with_eval": _bench.median(
            [(b + be) / (o + oe) for b, be, o, oe in zip(b_train, b_eval, ours, ours_eval, strict=False)]
        ),
        "baseline_data_s": _bench.median(b_data),
        "breakdown_s": {k_: med[k_] for k_ in ("data", "forward", "backward", "optimizer", "metrics")},
        "breakdown_epoch_s": med["epoch"],
        "raw": {
            "pal_study_train_s": ours,
            "pal_study_eval_s": ours_eval,
            "baseline_train_s": b_train,
            "baseline_eval_s": b_eval,
            "baseline_data_s": b_data,
            "phases": phases,
            "warmup": {"pal_study_train_s": result.history[0]["train_time_s"], "baseline_train_s": base.train_s[0]},
        },
        "wall_s": time.perf_counter() - t_case,
    }
    return res


# --------------------------------------------------------------------------------------------
# Diagnostics: two CPU settings of the trainer that decide much of a conv epoch's cost


def diagnostics(quick: bool, threads: int) -> list[dict[str, Any]]:
    """Per-step forward+backward, NCHW vs channels_last, and the evaluation forward per sample at
    the trainer's ``EVAL_BATCH`` vs the training batch, for pal-study's conv networks (CPU).

    ``train()`` uses channels_last only on CUDA and evaluates in batches of ``EVAL_BATCH``; these
    figures show what both choices cost on the CPU. Same model weights and inputs both ways.
    """
    from pal_study.train import EVAL_BATCH as _EB
    from pal_study.train import build_classifier

    EVAL_BATCH = _EB["cuda"]  # the GPU batch, compared here with the CPU training batch

    torch.set_num_threads(threads)
    out = []
    plan = [("mnist", (1, 28, 28))] if quick else [("mnist", (1, 28, 28)), ("cifar", (3, 32, 32))]
    for case, shape in plan:
        cfg = case_config(case, threads, 2, quick)
        bs = cfg.optim.batch_size
        reps = 1 if quick else (5 if case == "mnist" else 3)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(bs, *shape, generator=gen)
        y = torch.randint(0, 10, (bs,), generator=gen)
        models = {
            "nchw": build_classifier(cfg, shape, 10),
            "channels_last": build_classifier(cfg, shape, 10).to(memory_format=torch.channels_last),
        }
        inputs = {"nchw": x, "channels_last": x.contiguous(memory_format=torch.channels_last)}

        def step(layout: str, models=models, inputs=inputs, y=y) -> None:
            _, logits = models[layout](inputs[layout])
            F.cross_entropy(logits, y).backward()

        for layout in models:  # warm-up
            step(layout)
        step_s: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(reps):
            for layout in models:
                step_s[layout].append(_bench.timed(functools.partial(step, layout)))
        n_eval = EVAL_BATCH if not quick else 256
        xe = torch.randn(n_eval, *shape, generator=gen)
        model = models["nchw"].eval()
        eval_ms: dict[str, list[float]] = {str(EVAL_BATCH): [], str(bs): []}

        @torch.no_grad()
        def forward_all(batch: int, model=model, xe=xe, n_eval=n_eval) -> None:
            for s0 in range(0, n_eval, batch):
                model(xe[s0 : s0 + batch])

        forward_all(bs)
        for _ in range(max(2, reps - 1)):
            for key in eval_ms:
                eval_ms[key].append(1e3 * _bench.timed(functools.partial(forward_all, int(key))) / n_eval)
        m_nchw, m_cl = _bench.median(step_s["nchw"]), _bench.median(step_s["channels_last"])
        out.append(
            {
                "case": case,
                "arch": cfg.model.arch,
                "threads": threads,
                "batch_size": bs,
                "train_step_fwd_bwd_s": {"nchw": m_nchw, "channels_last": m_cl},
                "channels_last_speedup": m_nchw / m_cl,
                "eval_forward_ms_per_sample": {k: _bench.median(v) for k, v in eval_ms.items()},
                "eval_samples": n_eval,
                "raw": {"train_step_s": step_s, "eval_ms_per_sample": eval_ms},
            }
        )
    return out


FULL_PLAN = [
    ("digits", 2, 0),
    ("digits_linear", 2, 0),
    ("digits", 2, 2),
    ("digits", 1, 0),
    ("mnist", 2, 0),
    ("cifar", 2, 0),
]
QUICK_PLAN = [("digits", 2, 0), ("mnist", 2, 0), ("cifar", 2, 0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny data sets, 1 timed epoch each")
    ap.add_argument("--repeats", type=int, default=None, help="timed epochs per side after the warm-up (default 3)")
    ap.add_argument("--cases", nargs="+", choices=sorted(LABELS), default=None, help="subset of the plan")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the md5 warning for our synthetic files is expected
    repeats = args.repeats or (1 if args.quick else 3)
    plan = [p for p in (QUICK_PLAN if args.quick else FULL_PLAN) if not args.cases or p[0] in args.cases]
    t0 = time.perf_counter()
    res: dict[str, Any] = {
        "benchmark": "epochs",
        "quick": args.quick,
        "repeats": repeats,
        "machine": _bench.machine(sorted({p[1] for p in plan}, reverse=True)),
        "command": " ".join([".venv/bin/python", "benchmarks/epochs.py", *sys.argv[1:]]),
        "cases": [],
    }
    torch.manual_seed(0)
    for case, threads, workers in plan:
        r = run_case(case, threads, repeats, workers, args.quick)
        res["cases"].append(r)
        print(
            f"  {case} threads={threads} workers={workers}: pal-study {r['pal_study_epoch_s']:.3f} s, "
            f"baseline {r['baseline_epoch_s']:.3f} s, {r['speedup']:.2f}x ({r['wall_s']:.0f} s)",
            flush=True,
        )
    res["diagnostics"] = diagnostics(args.quick, 2)
    res["wall_s"] = time.perf_counter() - t0
    print(f"\nwhole epochs, median of {repeats} (after 1 warm-up epoch); seconds")
    print(
        _bench.table(
            [
                "case",
                "thr",
                "DL workers",
                "n_train",
                "batch",
                "pal-study",
                "baseline",
                "speed-up",
                "pal eval",
                "base eval",
                "incl. eval",
            ],
            [
                [
                    r["case"],
                    r["threads"],
                    r["baseline_workers"],
                    r["n_train"],
                    r["batch_size"],
                    r["pal_study_epoch_s"],
                    r["baseline_epoch_s"],
                    f"{r['speedup']:.2f}x",
                    r["pal_study_eval_s"],
                    r["baseline_eval_s"],
                    f"{r['speedup_with_eval']:.2f}x",
                ]
                for r in res["cases"]
            ],
        )
    )
    print("\nwhere pal-study's epoch goes (perf_counter per phase, median epoch; % of the instrumented epoch)")
    rows = []
    for r in res["cases"]:
        if r["baseline_workers"] != 0:
            continue
        b, tot = r["breakdown_s"], r["breakdown_epoch_s"]
        rows.append(
            [
                r["case"],
                r["threads"],
                *(f"{b[k]:.4f} ({100 * b[k] / tot:.0f}%)" for k in b),
                tot,
                r["pal_study_epoch_s"],
                r["pal_study_eval_s"],
                r["baseline_data_s"],
            ]
        )
    print(
        _bench.table(
            [
                "case",
                "thr",
                "data",
                "forward",
                "backward",
                "optimizer",
                "metrics",
                "epoch",
                "train() epoch",
                "train() eval",
                "baseline data",
            ],
            rows,
        )
    )
    print(
        "\ndiagnostics (pal-study's networks, CPU): forward+backward per training step, NCHW vs channels_last; "
        "evaluation forward per sample at train.EVAL_BATCH vs the training batch"
    )
    drows = []
    for d in res["diagnostics"]:
        ev = d["eval_forward_ms_per_sample"]
        drows.append(
            [
                d["arch"],
                d["threads"],
                d["batch_size"],
                d["train_step_fwd_bwd_s"]["nchw"],
                d["train_step_fwd_bwd_s"]["channels_last"],
                f"{d['channels_last_speedup']:.2f}x",
                *(ev.values()),
                d["eval_samples"],
            ]
        )
    eval_batch = res["diagnostics"][0]["eval_forward_ms_per_sample"] if res["diagnostics"] else {}
    print(
        _bench.table(
            [
                "arch",
                "thr",
                "batch",
                "step NCHW s",
                "step channels_last s",
                "speed-up",
                *(f"eval ms/sample @{k}" for k in eval_batch),
                "eval samples",
            ],
            drows,
        )
    )
    print(f"\nwall {res['wall_s']:.0f} s; wrote {_bench.write_json('epochs', args.quick, res)}")


if __name__ == "__main__":
    main()
