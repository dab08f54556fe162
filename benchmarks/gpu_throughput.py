"""Benchmark (j): trials per hour on one GPU at 1, 2, 4 and 8 trials per GPU, and a ResNet-32 epoch
with bf16 + channels_last (+ compile) against fp32 contiguous.

    .venv/bin/python benchmarks/gpu_throughput.py              # on a CUDA machine: < 8 minutes
    .venv/bin/python benchmarks/gpu_throughput.py --dry-run    # anywhere: the plumbing, tiny, on the CPU

Without a CUDA device (and without ``--dry-run``) it prints why and exits with status 0,
measuring nothing and writing nothing.

**Trials per GPU.** A study with ``resources: {gpu: 1/N}`` has Ray pack N trial processes onto one
GPU (each sees the same ``CUDA_VISIBLE_DEVICES``); here N trial processes are started directly,
each calling the real ``pal_study.train.train()`` with ``device: cuda`` (the trainer's defaults
on CUDA: bf16 autocast, channels_last; compile off), ``threads`` = CPU cores / N. Why not the
study engine itself: it would add Ray's start-up, Optuna and MLflow to every figure (measured
separately in (c)) and not fit the 8 minutes; what the GPU sees — N processes with their own
CUDA contexts issuing kernels concurrently, no MPS — is the same. Each process builds its data
and model, then waits at a start barrier, so the N trials train simultaneously; the wall time is
from the barrier to the last trial's end. Trials are short (``--epochs``, default 3, the first a
warm-up) on a fraction of the data (9,000 training images for the synthetic sets; MNIST-1D
whole); the figures:

- ``trials_per_hour_measured``: N × 3600 / wall, for these short trials;
- ``trials_per_hour_recipe``: N × 3600 / (recipe epochs × the steady epoch time under sharing —
  median over the N trials of their epochs 2.., train + eval — scaled to the full data set);
  process start-up and data loading are left out (a study reuses its worker processes).

**bf16 + channels_last.** resnet32 on CIFAR-shaped data: ``train()`` with amp=false,
channels_last=false, compile=false vs amp=true, channels_last=true, compile=false vs
(amp, channels_last, compile all true), each in its own one-trial process, one after the other
(``--layout-rounds`` for more rounds, in rotated order; a dedicated GPU varies little); epoch
time = median of the trainer's own ``train_time_s`` after the first epoch (compile + warm-up =
first epoch minus that; inductor's on-disk cache is shared between processes, so a later
round's compile is a warm one).

**Fused packs.** K trials of one cell as one model (``pal_study.fused_train.train_fused``: one
seed, K learning rates) in one process, K = 1, 2, 4, 8, 16, 32 (``--fused-ks``), against N
trials per GPU above: ``trials_per_hour_measured`` = K × 3600 / wall, the steady epoch of the
pack, its peak memory. They run after the N-per-GPU rows, within the same budget.

Order: the layout comparison, then N = 1 for every workload, then N = 2, 4, 8, so a run cut
short by ``--budget-s`` (default 420) has measured the most. No run is started that would
likely end past the budget (a guess from the workload's previous run); what was skipped is
listed in the JSON. Writes benchmarks/results/gpu_throughput.json (dry run:
a temporary file, printed), with the device, torch/CUDA versions and every raw timing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

# Workloads: data + arch; full = (training pool before the 10 % validation split, test) of the
# real data set whose recipe sets the epochs (the synthetic stand-ins are sized by --scale).
WORKLOADS: dict[str, dict[str, Any]] = {
    "mnist1d": {"data": {"name": "mnist1d"}, "arch": None, "recipe": "mnist1d", "full": None},
    "mnist_cnn": {
        "data": {"name": "synthetic", "synthetic": {"input_shape": [1, 28, 28]}},
        "arch": "mnist_cnn",
        "recipe": "mnist",
        "full": (60_000, 10_000),
        "per_class": (1000, 100),
    },
    "cifar_cnn8": {
        "data": {"name": "synthetic", "synthetic": {"input_shape": [3, 32, 32], "augment": "crop_flip"}},
        "arch": "cifar_cnn8",
        "recipe": "cifar10",
        "full": (50_000, 10_000),
        "per_class": (1000, 100),
    },
    "resnet32": {
        "data": {"name": "synthetic", "synthetic": {"input_shape": [3, 32, 32], "augment": "crop_flip"}},
        "arch": "resnet32",
        "recipe": "cifar100",
        "full": (50_000, 10_000),
        "per_class": (1000, 100),
    },
}
CONCURRENCY = (1, 2, 4, 8)
FUSED_KS = (1, 2, 4, 8, 16, 32)
DRY_PER_CLASS = (6, 2)
LAYOUTS = {  # the bf16 + channels_last comparison (resnet32)
    "fp32_contiguous": {"amp": False, "channels_last": False, "compile": False},
    "bf16_channels_last": {"amp": True, "channels_last": True, "compile": False},
    "bf16_channels_last_compile": {"amp": True, "channels_last": True, "compile": True},
}


def trial_config(
    workload: str, *, device: str, epochs: int, threads: int, dry: bool, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The TrainConfig dict of one trial of ``workload`` (the data set's recipe, short)."""
    w = WORKLOADS[workload]
    data = json.loads(json.dumps(w["data"]))
    if "per_class" in w:
        tr, te = DRY_PER_CLASS if dry else w["per_class"]
        data["synthetic"].update(train_per_class=tr, test_per_class=te)
    elif dry:
        data["mnist1d"] = {"num_samples": 200}
    from pal_study.data import get_dataset

    recipe = get_dataset(w["recipe"]).recipe
    cfg: dict[str, Any] = {
        "method": "ce+fnpal",
        "device": device,
        "threads": threads,
        "data": data,
        "optim": {"epochs": epochs, "batch_size": recipe.batch_size},
    }
    if w["arch"]:
        cfg["model"] = {"arch": w["arch"]}
    cfg.update(extra or {})
    return cfg


# --------------------------------------------------------------------------------------------
# One trial process: set up, wait at the barrier, train, write the result


def trial_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    from pal_study.config import TrainConfig
    from pal_study.train import build_dataset_for, train

    members = int(spec["config"].pop("_members", 0))
    cfg = TrainConfig.model_validate(spec["config"])
    data = build_dataset_for(cfg)
    if cfg.device.startswith("cuda"):
        torch.cuda.init()
        torch.zeros(1, device="cuda")  # the CUDA context, before the barrier
    Path(spec["ready"]).write_text("ready")
    deadline = time.time() + spec["barrier_timeout_s"]
    while not os.path.exists(spec["go"]):
        if time.time() > deadline:
            raise SystemExit("no start signal")
        time.sleep(0.005)
    t0 = time.time()
    if members:
        from pal_study.fused_train import train_fused

        # A fused pack of one cell: one seed and data order, K learning rates.
        base = spec["config"]
        cfgs = [
            TrainConfig.model_validate({**base, "optim": {**base["optim"], "lr": 0.05 * (1 + 0.1 * i)}})
            for i in range(members)
        ]
        results = train_fused(cfgs, data=data)
        result = results[0]
        statuses = [r.status for r in results]
    else:
        result = train(cfg, data=data)
        statuses = [result.status]
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
    t1 = time.time()
    out = {
        "t_start": t0,
        "t_end": t1,
        "status": result.status,
        "statuses": statuses,
        "reason": result.reason,
        "history": [
            {k: h[k] for k in ("epoch", "train_time_s", "eval_time_s", "train_loss", "test_acc")}
            for h in result.history
        ],
        "n_train": result.data["n_train"],
        "n_val": result.data["n_val"],
        "n_test": result.data["n_test"],
        "env": result.env,
        "pid": os.getpid(),
        "max_memory_allocated": torch.cuda.max_memory_allocated() if cfg.device.startswith("cuda") else None,
    }
    Path(spec["out"]).write_text(json.dumps(out))


def run_concurrent(configs: list[dict[str, Any]], tmp: Path, timeout_s: float) -> dict[str, Any]:
    """Start one trial process per config, release them together, wait for all."""
    tag = f"run{len(list(tmp.iterdir()))}"
    d = tmp / tag
    d.mkdir()
    go = d / "go"
    procs, specs, logs = [], [], []
    t_spawn = time.time()
    for i, cfg in enumerate(configs):
        spec = {
            "config": cfg,
            "ready": str(d / f"ready{i}"),
            "go": str(go),
            "out": str(d / f"out{i}.json"),
            "barrier_timeout_s": timeout_s,
        }
        p = d / f"spec{i}.json"
        p.write_text(json.dumps(spec))
        specs.append(spec)
        logs.append(d / f"log{i}.txt")
        with open(d / f"log{i}.txt", "w") as log:  # a file, not a pipe: a chatty child never blocks
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--trial", str(p)],
                    cwd=str(ROOT),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        deadline = time.time() + timeout_s
        while not all(os.path.exists(s["ready"]) for s in specs):
            if any(p.poll() is not None for p in procs) or time.time() > deadline:
                raise RuntimeError("a trial process exited or hung before the start barrier")
            time.sleep(0.01)
        t_ready = time.time()
        go.write_text("go")
        t_go = time.time()
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.time()))
    except BaseException:
        for p in procs:  # only the processes this function started
            if p.poll() is None:
                p.kill()
                p.wait()
        tails = [f.read_text()[-2000:] for f in logs]
        raise RuntimeError("trial processes failed:\n" + "\n---\n".join(tails)) from None
    for p, f in zip(procs, logs, strict=False):
        if p.returncode != 0:
            raise RuntimeError(f"trial process exited {p.returncode}:\n{f.read_text()[-3000:]}")
    results = [json.loads(Path(s["out"]).read_text()) for s in specs]
    t_end = max(r["t_end"] for r in results)
    return {"setup_s": t_ready - t_spawn, "wall_s": t_end - t_go, "trials": results}


# --------------------------------------------------------------------------------------------
# Figures


def steady_epoch_s(trials: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Median over trials of (train, eval, train + eval) per epoch, epochs 2.. (epoch 1 if only one)."""
    import statistics

    def med(key: str) -> float:
        per_trial = []
        for t in trials:
            hs = t["history"][1:] or t["history"]
            per_trial.append(statistics.median(h[key] for h in hs))
        return float(statistics.median(per_trial))

    tr, ev = med("train_time_s"), med("eval_time_s")
    return tr, ev, tr + ev


def full_scale(workload: str, trial: dict[str, Any], val_fraction: float = 0.1) -> tuple[float, float]:
    """Factors from the measured (train, val + test) sizes to the real data set's."""
    full = WORKLOADS[workload]["full"]
    if full is None:
        return 1.0, 1.0
    pool, test = full
    val = round(pool * val_fraction)
    return (pool - val) / trial["n_train"], (val + test) / (trial["n_val"] + trial["n_test"])


def device_info(dry: bool) -> dict[str, Any]:
    import platform

    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "dry_run": dry,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=torch.cuda.get_device_name(0),
            device_count=torch.cuda.device_count(),
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
        )
        try:
            query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
            smi = subprocess.run(query, capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            info["nvidia_smi"] = None
    else:
        import _bench

        info.update(device="cpu (dry run)", cpu_model=_bench.cpu_model())
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, N in (1, 2): checks the plumbing only")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="start no run that would likely end past this many seconds (default 420)",
    )
    ap.add_argument("--epochs", type=int, default=None, help="epochs per short trial (default 3; dry run 2)")
    ap.add_argument("--layout-rounds", type=int, default=1, help="rounds of the resnet32 layout comparison")
    ap.add_argument("--concurrency", nargs="+", type=int, default=None, help="trials per GPU (default 1 2 4 8)")
    ap.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=None)
    ap.add_argument(
        "--fused-ks", nargs="+", type=int, default=None, help="members per fused pack (default 1 2 4 8 16 32)"
    )
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_throughput.json)")
    ap.add_argument("--trial", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trial:
        trial_main(args.trial)
        return

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(
            "gpu_throughput: no CUDA device visible (torch.cuda.is_available() is False): nothing measured, "
            "nothing written. Run it on a GPU machine, or add --dry-run to check the plumbing on the CPU."
        )
        return
    t_begin = time.perf_counter()
    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    epochs = args.epochs or (2 if dry else 3)
    levels = args.concurrency or ([1, 2] if dry else list(CONCURRENCY))
    workloads = args.workloads or list(WORKLOADS)
    cores = os.cpu_count() or 1
    budget = args.budget_s
    res: dict[str, Any] = {
        "benchmark": "gpu_throughput",
        "device": device_info(dry),
        "epochs_per_trial": epochs,
        "command": " ".join([".venv/bin/python", "benchmarks/gpu_throughput.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "budget_s": budget,
        "layouts": [],
        "throughput": [],
        "fused": [],
        "skipped": [],
    }
    est: dict[str, float] = {}  # a workload's last run wall (s), to guess whether the next fits

    def remaining() -> float:
        return budget - (time.perf_counter() - t_begin)

    def fits(key: str, guess: float) -> bool:
        if remaining() < guess:
            res["skipped"].append({"run": key, "remaining_s": round(remaining(), 1), "estimated_s": round(guess, 1)})
            print(f"  skip {key}: {remaining():.0f} s left, ~{guess:.0f} s needed", flush=True)
            return False
        return True

    with tempfile.TemporaryDirectory(prefix="pal-gpu-throughput-") as tmpname:
        tmp = Path(tmpname)
        # 1. resnet32: fp32 contiguous vs bf16 + channels_last (+ compile), in one process, rotated.
        if "resnet32" in workloads:
            t = time.perf_counter()
            raw: dict[str, list[dict[str, Any]]] = {}
            for r in range(args.layout_rounds):
                names = list(LAYOUTS)[r % len(LAYOUTS) :] + list(LAYOUTS)[: r % len(LAYOUTS)]
                for name in names:
                    guess = (5.0 if dry else 30.0) + (0 if dry or not LAYOUTS[name]["compile"] else 90.0)
                    if not fits(f"layout {name} round {r + 1}", guess):
                        continue
                    cfg = trial_config(
                        "resnet32",
                        device=device,
                        epochs=epochs,
                        threads=1 if dry else cores,
                        dry=dry,
                        extra={**LAYOUTS[name], "seed": 0},
                    )
                    out = run_concurrent([cfg], tmp, timeout_s=max(60.0, remaining() + 60))
                    raw.setdefault(name, []).append(out["trials"][0])
            res["layouts"] = summarize_layouts(raw)
            print(
                f"  resnet32 layouts ({time.perf_counter() - t:.0f} s): "
                + ", ".join(f"{r['layout']} {r['epoch_s']:.3f} s/epoch" for r in res["layouts"]["summary"]),
                flush=True,
            )
        # 2. N concurrent trials per GPU.
        for n in levels:
            for w in workloads:
                key = f"{w} x{n}"
                guess = est.get(w, 20.0 if not dry else 3.0) * (1.0 if n == 1 else 1.6)
                if not fits(key, guess):
                    continue
                threads = 1 if dry else max(1, cores // n)
                cfgs = [
                    trial_config(w, device=device, epochs=epochs, threads=threads, dry=dry, extra={"seed": i})
                    for i in range(n)
                ]
                r = run_concurrent(cfgs, tmp, timeout_s=max(30.0, remaining() + 60))
                est[w] = r["wall_s"] + r["setup_s"]
                tr, ev, ep = steady_epoch_s(r["trials"])
                s_tr, s_ev = full_scale(w, r["trials"][0])
                full_epoch = tr * s_tr + ev * s_ev
                rec_epochs = _recipe_epochs(w)
                row = {
                    "workload": w,
                    "trials_per_gpu": n,
                    "threads_per_trial": threads,
                    "epochs": epochs,
                    "n_train": r["trials"][0]["n_train"],
                    "setup_s": r["setup_s"],
                    "wall_s": r["wall_s"],
                    "trials_per_hour_measured": n * 3600.0 / r["wall_s"],
                    "steady_train_epoch_s": tr,
                    "steady_eval_s": ev,
                    "full_epoch_s": full_epoch,
                    "recipe_epochs": rec_epochs,
                    "trials_per_hour_recipe": n * 3600.0 / (rec_epochs * full_epoch),
                    "statuses": [t["status"] for t in r["trials"]],
                    "max_memory_allocated": [t["max_memory_allocated"] for t in r["trials"]],
                    "raw": r["trials"],
                }
                res["throughput"].append(row)
                print(
                    f"  {key}: wall {r['wall_s']:.1f} s (setup {r['setup_s']:.1f} s), steady epoch "
                    f"{ep:.3f} s, {row['trials_per_hour_measured']:.0f} short trials/h, "
                    f"{row['trials_per_hour_recipe']:.1f} recipe-length trials/h",
                    flush=True,
                )
        # 3. Fused packs of K trials in one process.
        for k in args.fused_ks or ([1, 2] if dry else list(FUSED_KS)):
            for w in workloads:
                key = f"{w} fused x{k}"
                if not fits(key, est.get(w, 20.0 if not dry else 3.0) * max(1.0, k / 4)):
                    continue
                cfg = trial_config(w, device=device, epochs=epochs, threads=1 if dry else cores, dry=dry)
                r = run_concurrent([{**cfg, "seed": 0, "_members": k}], tmp, timeout_s=max(30.0, remaining() + 60))
                tr, ev, ep = steady_epoch_s(r["trials"])
                row = {
                    "workload": w,
                    "members": k,
                    "epochs": epochs,
                    "setup_s": r["setup_s"],
                    "wall_s": r["wall_s"],
                    "trials_per_hour_measured": k * 3600.0 / r["wall_s"],
                    "steady_epoch_s_per_member": ep,
                    "statuses": r["trials"][0]["statuses"],
                    "max_memory_allocated": r["trials"][0]["max_memory_allocated"],
                    "raw": r["trials"],
                }
                res["fused"].append(row)
                print(
                    f"  {key}: wall {r['wall_s']:.1f} s, {row['trials_per_hour_measured']:.0f} short trials/h, "
                    f"statuses {sorted(set(row['statuses']))}",
                    flush=True,
                )
    res["wall_s"] = time.perf_counter() - t_begin
    _print_tables(res)
    if args.out:
        out = Path(args.out)
    elif dry:
        out = Path(tempfile.gettempdir()) / "gpu_throughput_dryrun.json"
    else:
        out = HERE / "results" / "gpu_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nwall {res['wall_s']:.0f} s (budget {budget:.0f} s); wrote {out}")


def _recipe_epochs(workload: str) -> int:
    from pal_study.data import get_dataset

    return get_dataset(WORKLOADS[workload]["recipe"]).recipe.epochs


def summarize_layouts(raw: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per layout: median steady epoch over its runs; speed-up against fp32 contiguous."""
    summary = []
    base = None
    for name in LAYOUTS:
        if name not in raw:
            continue
        tr, ev, _ = steady_epoch_s(raw[name])
        first = [t["history"][0]["train_time_s"] for t in raw[name]]
        if name == "fp32_contiguous":
            base = tr
        summary.append(
            {
                "layout": name,
                **LAYOUTS[name],
                "epoch_s": tr,
                "eval_s": ev,
                "first_epoch_s": first,
                "compile_or_warmup_s": [f - tr for f in first],
            }
        )
    for row in summary:
        row["speedup_vs_fp32_contiguous"] = base / row["epoch_s"] if base else None
    return {"summary": summary, "raw": raw}


def _print_tables(res: dict[str, Any]) -> None:
    import _bench

    if res["layouts"] and res["layouts"]["summary"]:
        print("\nresnet32 epoch (CIFAR-shaped), median of the steady epochs")
        print(
            _bench.table(
                ["layout", "train epoch s", "eval s", "speed-up", "first epoch s"],
                [
                    [
                        r["layout"],
                        r["epoch_s"],
                        r["eval_s"],
                        f"{r['speedup_vs_fp32_contiguous']:.2f}x" if r["speedup_vs_fp32_contiguous"] else "n/a",
                        ", ".join(f"{v:.2f}" for v in r["first_epoch_s"]),
                    ]
                    for r in res["layouts"]["summary"]
                ],
            )
        )
    if res["throughput"]:
        print("\ntrials per GPU: N concurrent train() processes")
        print(
            _bench.table(
                [
                    "workload",
                    "N",
                    "threads",
                    "n_train",
                    "wall s",
                    "short trials/h",
                    "steady epoch s",
                    "full epoch s",
                    "recipe epochs",
                    "recipe trials/h",
                ],
                [
                    [
                        r["workload"],
                        r["trials_per_gpu"],
                        r["threads_per_trial"],
                        r["n_train"],
                        r["wall_s"],
                        r["trials_per_hour_measured"],
                        r["steady_train_epoch_s"] + r["steady_eval_s"],
                        r["full_epoch_s"],
                        r["recipe_epochs"],
                        r["trials_per_hour_recipe"],
                    ]
                    for r in res["throughput"]
                ],
            )
        )
    if res["fused"]:
        print("\nfused packs: K trials of one cell as one model in one process")
        print(
            _bench.table(
                ["workload", "K", "wall s", "short trials/h", "steady epoch s per member", "peak memory"],
                [
                    [
                        r["workload"],
                        r["members"],
                        r["wall_s"],
                        r["trials_per_hour_measured"],
                        r["steady_epoch_s_per_member"],
                        r["max_memory_allocated"] or "-",
                    ]
                    for r in res["fused"]
                ],
            )
        )
    if res["skipped"]:
        print("\nskipped (budget): " + ", ".join(s["run"] for s in res["skipped"]))


if __name__ == "__main__":
    main()
