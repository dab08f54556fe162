"""Trainer benchmarks (issue 2), measured as ratios in one run.

    .venv/bin/python benchmarks/trainer_bench.py            # full (a few minutes on 2 cores)
    .venv/bin/python benchmarks/trainer_bench.py --quick    # smoke run, seconds

(a) data path: batches/s of DeviceBatches(crop_flip) on CIFAR-shaped 50k×3×32×32 data vs a
    torch DataLoader over torchvision's CIFAR10 class (files written in the real format) with the
    baselines' transforms (ToTensor, RandomCrop(32, 4), RandomHorizontalFlip, Normalize).
(b) whole epochs, same model and batch size: pal-study's loop (device-resident batches, loss
    summed on device) vs the baselines' loop (DataLoader over a per-sample dataset, per-step
    .item()), for digits/MLP, MNIST-shaped/mnist_cnn, CIFAR-shaped/cifar_cnn8; and where
    pal-study's epoch time goes (data, forward+backward, optimiser step, evaluation).
Results: printed, and written to benchmarks/results/trainer_bench.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pal_study.config import TrainConfig, resolve
from pal_study.data import DeviceBatches, build_dataset
from pal_study.data.formats import write_cifar10
from pal_study.losses import build_loss
from pal_study.train import build_classifier, make_optimizer

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_data_path(n: int, batches: int, repeats: int) -> dict:
    import torchvision
    from torchvision import transforms as T

    g = np.random.default_rng(0)
    images = g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = g.integers(0, 10, n).tolist()
    with tempfile.TemporaryDirectory() as root:
        write_cifar10(root, images, labels, images[:100], labels[:100])
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(CIFAR_MEAN, CIFAR_STD)])
        # torchvision's CIFAR10 reading the files written above; pal-study's subclass only relaxes
        # the md5 check (synthetic pixels), the per-sample __getitem__ + PIL path is torchvision's.
        from pal_study.data.sources import _lenient_cifar

        ds = _lenient_cifar(torchvision.datasets.CIFAR10)(root, train=True, transform=tf)
        x = torch.from_numpy(images).float().div_(255)
        x = (x - torch.tensor(CIFAR_MEAN)[:, None, None]) / torch.tensor(CIFAR_STD)[:, None, None]
        y = torch.tensor(labels)

        def device_batches():
            it = iter(DeviceBatches(x, y, 128, generator=torch.Generator().manual_seed(0), augment="crop_flip"))
            for _ in range(batches):
                next(it)

        def loader(workers: int):
            def run():
                it = iter(DataLoader(ds, batch_size=128, shuffle=True, num_workers=workers))
                for _ in range(batches):
                    next(it)
            return run

        res = {"n": n, "batch_size": 128, "batches": batches}
        res["device_batches_per_s"] = batches / _median_time(device_batches, repeats)
        for w in (0, 2):
            res[f"dataloader_w{w}_per_s"] = batches / _median_time(loader(w), max(1, repeats - 1))
            res[f"speedup_vs_w{w}"] = res["device_batches_per_s"] / res[f"dataloader_w{w}_per_s"]
    return res


class _PerSample(Dataset):
    """A torchvision-style dataset: one sample at a time, transformed in Python."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: str):
        from torchvision import transforms as T

        self.x, self.y = x, y
        self.tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]) if augment == "crop_flip" else None

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i]
        return (self.tf(x) if self.tf else x), int(self.y[i])


def _epoch_ours(model, criterion, opt, batches, profile: dict | None = None):
    model.train()
    loss_sum = torch.zeros(())
    t_data = t_fb = t_opt = 0.0
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            xb, yb = next(it)
        except StopIteration:
            break
        t1 = time.perf_counter()
        _, logits = model(xb)
        loss = criterion(logits, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0, foreach=True)
        opt.step()
        loss_sum += loss.detach() * yb.shape[0]
        t3 = time.perf_counter()
        t_data, t_fb, t_opt = t_data + t1 - t0, t_fb + t2 - t1, t_opt + t3 - t2
    loss_sum.item()
    if profile is not None:
        for k, v in (("data", t_data), ("forward_backward", t_fb), ("optimizer", t_opt)):
            profile[k] = profile.get(k, 0.0) + v


def _epoch_baseline(model, loader, opt):
    model.train()
    total = 0.0
    for xb, yb in loader:
        _, logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        total += loss.item()  # the baselines' per-step host sync


def bench_epochs(cases: list[tuple[str, dict]], repeats: int) -> list[dict]:
    out = []
    for label, cfg_kw in cases:
        cfg = resolve(TrainConfig(**cfg_kw))
        data = build_dataset(cfg.data.name, val_fraction=0.0, synthetic=cfg.data.synthetic.model_dump())
        k = data.num_classes
        ours_model = build_classifier(cfg, tuple(data.input_shape), k)
        base_cfg = resolve(TrainConfig(**{**cfg_kw, "method": "ce"}))
        base_model = build_classifier(base_cfg, tuple(data.input_shape), k)
        criterion = build_loss("ce", k)
        ours_opt, base_opt = make_optimizer(ours_model, cfg), make_optimizer(base_model, base_cfg)
        bs = cfg.optim.batch_size
        batches = DeviceBatches(data.train_x, data.train_y, bs, generator=torch.Generator().manual_seed(0),
                                augment=data.augment)
        loader = DataLoader(_PerSample(data.train_x, data.train_y, data.augment), batch_size=bs, shuffle=True, num_workers=0)
        _epoch_ours(ours_model, criterion, ours_opt, batches)  # warm-up
        _epoch_baseline(base_model, loader, base_opt)
        profile: dict = {}
        t_ours = _median_time(lambda: _epoch_ours(ours_model, criterion, ours_opt, batches, profile), repeats)
        t_base = _median_time(lambda: _epoch_baseline(base_model, loader, base_opt), repeats)
        # Evaluation share: one pass over the test set as train() does it.
        from pal_study.train import _evaluate
        from contextlib import nullcontext

        ours_model.eval()
        t_eval = _median_time(lambda: _evaluate(ours_model, data.test_x, data.test_y, k, nullcontext, False), repeats)
        share = {key: v / repeats for key, v in profile.items()}
        out.append({
            "case": label, "n_train": int(data.train_y.shape[0]), "batch_size": bs, "arch": cfg.model.arch,
            "pal_study_epoch_s": t_ours, "baseline_epoch_s": t_base, "speedup": t_base / t_ours,
            "pal_study_breakdown_s": share, "eval_pass_s": t_eval,
        })
        print(f"{label:>28}: pal-study {t_ours:.3f} s, baseline {t_base:.3f} s, speed-up {t_base / t_ours:.2f}x, "
              f"breakdown {', '.join(f'{k} {v:.3f}' for k, v in share.items())}, eval {t_eval:.3f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke run")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    q = args.quick
    repeats = 1 if q else 3
    res: dict = {"machine": {"cpus": torch.get_num_threads(), "cpu": _cpu_model(), "torch": torch.__version__,
                             "python": platform.python_version(), "threads": args.threads}}
    res["data_path"] = bench_data_path(n=2000 if q else 50_000, batches=5 if q else 100, repeats=repeats)
    d = res["data_path"]
    print(f"data path: DeviceBatches {d['device_batches_per_s']:.0f} batches/s; DataLoader w0 "
          f"{d['dataloader_w0_per_s']:.1f}/s ({d['speedup_vs_w0']:.1f}x), w2 {d['dataloader_w2_per_s']:.1f}/s "
          f"({d['speedup_vs_w2']:.1f}x)", flush=True)
    mnist = {"num_classes": 10, "input_shape": [1, 28, 28], "train_per_class": 100 if q else 1000, "test_per_class": 50}
    cifar = {"num_classes": 10, "input_shape": [3, 32, 32], "train_per_class": 50 if q else 500,
             "test_per_class": 50, "augment": "crop_flip"}
    cases = [
        ("digits / digits_mlp", {"method": "ce+fnpal"}),
        ("mnist-shaped / mnist_cnn", {"method": "ce+fnpal", "data": {"name": "synthetic", "synthetic": mnist},
                                      "optim": {"batch_size": 128}}),
        ("cifar-shaped / cifar_cnn8", {"method": "ce+fnpal", "data": {"name": "synthetic", "synthetic": cifar},
                                       "optim": {"batch_size": 128}}),
    ]
    res["epochs"] = bench_epochs(cases, repeats)
    out = Path(__file__).parent / "results" / ("trainer_bench_quick.json" if q else "trainer_bench.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
