"""Benchmark (i): CPU memory layout and torch.compile for the conv networks' training epochs.

    .venv/bin/python benchmarks/cpu_layout.py                 # full: ~30-40 min on 2 shared cores
    .venv/bin/python benchmarks/cpu_layout.py --quick         # smoke run: tiny sizes, no compile, ~1 min
    .venv/bin/python benchmarks/cpu_layout.py --cases mnist_cnn --threads 2 --repeats 5

What it compares, per network at its data set's recipe (batch size; the recipe's epoch count
and full training-set size only enter the extrapolated time-to-finish):

- ``contiguous``: what ``train()`` did on the CPU before (NCHW tensors, the model as built);
- ``channels_last``: the model converted with ``.to(memory_format=torch.channels_last)`` and
  every batch ``.contiguous(memory_format=torch.channels_last)``, as ``train()`` does on CUDA
  (4-D image batches only: a 1-D conv's (N, C, L) batch has no channels_last layout);
- ``no_mkldnn``: contiguous with ``torch.backends.mkldnn.flags(enabled=False)`` (ATen's own
  convolution instead of oneDNN's), a cheap runtime switch;
- ``compile`` / ``compile+channels_last``: ``torch.compile(model)`` (mode default, inductor;
  ``--compile-dynamic true`` adds ``dynamic=True``) of the same model, called as ``train()``
  calls it on CUDA (the epoch loop's ``net``; evaluation stays eager). Compile time = the first
  epoch's time minus the variant's steady epoch time (with torch's default the first epoch
  compiles the full-batch graph and recompiles for the partial last batch).

Every variant is a whole training epoch of the trainer's own ``train_epoch`` (the loop
``train()`` runs: ``DeviceBatches``, forward, loss, backward, clip, SGD, per-step LR schedule),
each variant with its own model, optimiser and batch generator seeded alike, so every variant
trains the same trajectory; the evaluation (``train()``'s validation accuracy + test metrics,
in the variant's layout) is timed after each epoch. One warm-up epoch per variant, then
``--repeats`` rounds; in each round every variant runs one epoch, in an order rotated by one
per round (same background load on every side). Speed-up = contiguous time / variant time,
median over the rounds (min-max in brackets).

Each (network, threads) case runs in a fresh subprocess with an empty inductor cache directory,
so the first compile in it is what a new trial process pays ("cold"). After the rounds it also
measures the compile cost a *later* trial pays: a fresh model compiled in the same process
("same process": a reused Ray actor) and after ``torch._dynamo.reset()`` with the on-disk cache
now filled ("cache warm": a new process on the same machine, minus its one-off imports).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import _bench
import torch

# (case: arch, data, recipe data set whose epochs/batch/full size are the target). Full sizes:
# the real data sets' training pools (before the 10 % validation split) and test sets.
CASES: dict[str, dict[str, Any]] = {
    "digits_cnn": {"data": {"name": "digits"}, "recipe": "digits", "full": None, "label": "digits (real, 1x8x8)"},
    "mnist_cnn": {
        "data": {"name": "synthetic", "synthetic": {"input_shape": [1, 28, 28]}},
        "per_class": (130, 20),
        "recipe": "mnist",
        "full": (60_000, 10_000),
        "label": "MNIST-shaped synthetic 1x28x28",
    },
    "cifar_cnn8": {
        "data": {"name": "synthetic", "synthetic": {"input_shape": [3, 32, 32], "augment": "crop_flip"}},
        "per_class": (60, 20),
        "recipe": "cifar10",
        "full": (50_000, 10_000),
        "label": "CIFAR-shaped synthetic 3x32x32 + crop/flip",
    },
    "resnet32": {
        "data": {"name": "synthetic", "synthetic": {"input_shape": [3, 32, 32], "augment": "crop_flip"}},
        "per_class": (60, 20),
        "recipe": "cifar100",
        "full": (50_000, 10_000),
        "label": "CIFAR-shaped synthetic 3x32x32 + crop/flip (CIFAR-100's recipe)",
    },
    "mnist1d_cnn": {
        "data": {"name": "mnist1d"},
        "recipe": "mnist1d",
        "full": None,
        "label": "MNIST-1D (real, generated; 1x40 sequences)",
    },
}
QUICK_PER_CLASS = (15, 5)


def case_config(case: str, threads: int, quick: bool) -> Any:
    from pal_study.config import TrainConfig, resolve
    from pal_study.data import get_dataset

    spec = CASES[case]
    recipe = get_dataset(spec["recipe"]).recipe
    data = json.loads(json.dumps(spec["data"]))
    if "per_class" in spec:
        tr, te = QUICK_PER_CLASS if quick else spec["per_class"]
        data["synthetic"].update(train_per_class=tr, test_per_class=te)
    elif quick and data["name"] == "mnist1d":
        data["mnist1d"] = {"num_samples": 1000}
    return resolve(
        TrainConfig(
            method="ce+fnpal",
            device="cpu",
            threads=threads,
            model={"arch": case},
            data=data,
            optim={"batch_size": recipe.batch_size, "epochs": recipe.epochs},
        )
    )


class Variant:
    """One side of the comparison: its own model, optimiser, schedule and batch generator."""

    def __init__(self, name: str, cfg: Any, bundle: Any, *, channels_last: bool, compiled: bool, mkldnn: bool = True):
        from pal_study.data import DeviceBatches
        from pal_study.losses import build_loss
        from pal_study.train import build_classifier, loss_params, lr_factor, make_optimizer

        self.name, self.channels_last, self.compiled, self.mkldnn = name, channels_last, compiled, mkldnn
        k = bundle.num_classes
        counts = torch.bincount(bundle.train_y, minlength=k).tolist()
        self.model = build_classifier(cfg, tuple(bundle.input_shape), k)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion = build_loss(cfg.loss.name, k, **loss_params(cfg, self.model.head, counts))
        self.optimizer = make_optimizer(self.model, cfg)
        self.batches = DeviceBatches(
            bundle.train_x,
            bundle.train_y,
            cfg.optim.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(cfg.seed),
            augment=bundle.augment,
        )
        steps = len(self.batches)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, steps, cfg))
        self.net = torch.compile(self.model, **compile_kw()) if compiled else self.model
        self.clip = cfg.optim.grad_clip or 0.0
        self.bundle = bundle
        self.epoch_s: list[float] = []
        self.eval_s: list[float] = []
        self.losses: list[float] = []

    def _flags(self) -> Any:
        return nullcontext() if self.mkldnn else torch.backends.mkldnn.flags(enabled=False)

    def epoch(self) -> float:
        from pal_study.train import train_epoch

        with self._flags():
            t = time.perf_counter()
            loss = train_epoch(
                self.model,
                self.net,
                self.batches,
                self.criterion,
                self.optimizer,
                self.scheduler,
                clip=self.clip,
                channels_last=self.channels_last,
            )
            dt = time.perf_counter() - t
        if not math.isfinite(loss):
            raise RuntimeError(f"{self.name}: non-finite training loss {loss}")
        self.losses.append(loss)
        return dt

    def evaluate(self) -> float:
        """``train()``'s per-epoch evaluation: validation accuracy, then the test metrics."""
        from pal_study.train import accuracy, evaluate

        b = self.bundle
        with self._flags():
            t = time.perf_counter()
            self.model.eval()
            accuracy(self.model, b.val_x, [b.val_y, b.val_y_clean], nullcontext, self.channels_last)
            evaluate(self.model, b.test_x, b.test_y, b.num_classes, nullcontext, self.channels_last)
            return time.perf_counter() - t


def compile_kw() -> dict[str, Any]:
    """torch.compile's keywords: none (torch's default, automatic dynamic shapes: what ``train()``
    does on CUDA), or ``dynamic=True`` with ``--compile-dynamic true`` (one graph for all batch
    sizes: what keeps a compiled run repeatable, benchmarks/README.md (i))."""
    return {"dynamic": True} if os.environ.get("PAL_BENCH_COMPILE_DYNAMIC") == "true" else {}


def run_worker(case: str, threads: int, repeats: int, quick: bool, compile_: bool, mkldnn_off: bool) -> dict[str, Any]:
    from pal_study.train import build_dataset_for

    torch.set_num_threads(threads)
    cfg = case_config(case, threads, quick)
    bundle = build_dataset_for(cfg)
    image = bundle.train_x.dim() == 4
    plan: list[tuple[str, bool, bool, bool]] = [("contiguous", False, False, True)]
    if image:
        plan.append(("channels_last", True, False, True))
    if mkldnn_off:
        plan.append(("no_mkldnn", False, False, False))
    if compile_:
        # The compiled variant of the layout train() picks on the CPU goes first (it pays the cold compile).
        if image:
            plan += [("compile+channels_last", True, True, True), ("compile", False, True, True)]
        else:
            plan.append(("compile", False, True, True))
    variants = [Variant(n, cfg, bundle, channels_last=cl, compiled=c, mkldnn=m) for n, cl, c, m in plan]
    t_case = time.perf_counter()
    first: dict[str, float] = {}
    for v in variants:  # warm-up epoch: compiles the compiled variants
        first[v.name] = v.epoch()
        v.evaluate()
    for r in range(repeats):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            v.epoch_s.append(v.epoch())
            v.eval_s.append(v.evaluate())
    later: dict[str, dict[str, float]] = {}
    if compile_:
        from torch import _dynamo

        for v in variants:
            if not v.compiled:
                continue
            steady = _bench.median(v.epoch_s)
            fresh = Variant(v.name, cfg, bundle, channels_last=v.channels_last, compiled=True)
            same_process = fresh.epoch()
            _dynamo.reset()
            fresh = Variant(v.name, cfg, bundle, channels_last=v.channels_last, compiled=True)
            cache_warm = fresh.epoch()
            later[v.name] = {
                "same_process_first_epoch_s": same_process,
                "cache_warm_first_epoch_s": cache_warm,
                "same_process_compile_s": max(0.0, same_process - steady),
                "cache_warm_compile_s": max(0.0, cache_warm - steady),
            }
    return {
        "case": case,
        "threads": threads,
        "arch": cfg.model.arch,
        "recipe": CASES[case]["recipe"],
        "label": CASES[case]["label"],
        "input_shape": list(bundle.input_shape),
        "image_batches": image,
        "n_train": int(bundle.train_y.shape[0]),
        "n_val": int(bundle.val_y.shape[0]),
        "n_test": int(bundle.test_y.shape[0]),
        "batch_size": cfg.optim.batch_size,
        "recipe_epochs": cfg.optim.epochs,
        "val_fraction": cfg.data.val_fraction,
        "steps_per_epoch": len(variants[0].batches),
        "variants": {
            v.name: {
                "channels_last": v.channels_last,
                "compiled": v.compiled,
                "mkldnn": v.mkldnn,
                "first_epoch_s": first[v.name],
                "epoch_s": v.epoch_s,
                "eval_s": v.eval_s,
                "train_losses": v.losses,
            }
            for v in variants
        },
        "later_compiles": later,
        "wall_s": time.perf_counter() - t_case,
        "torch_threads": torch.get_num_threads(),
        "compile_kwargs": compile_kw(),
    }


# --------------------------------------------------------------------------------------------
# Summaries


def full_sizes(r: dict[str, Any]) -> tuple[int, int]:
    """(train, val + test) samples per epoch at the recipe data set's full size."""
    full = CASES[r["case"]]["full"]
    if full is None:  # real data here already: its own sizes
        return r["n_train"], r["n_val"] + r["n_test"]
    pool, test = full
    val = round(pool * r["val_fraction"])
    return pool - val, val + test


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    """Per-round ratios against ``contiguous`` and the extrapolated time to finish the recipe."""
    vs = r["variants"]
    base = vs["contiguous"]
    n_full, n_eval_full = full_sizes(r)
    scale_train = n_full / r["n_train"]
    scale_eval = n_eval_full / (r["n_val"] + r["n_test"])
    epochs = r["recipe_epochs"]
    out: dict[str, Any] = {}
    for name, v in vs.items():
        ratio = [b / x for b, x in zip(base["epoch_s"], v["epoch_s"], strict=False)]
        # Evaluation is eager in train(): a compiled variant evaluates like its eager layout.
        ev_src = (
            vs["channels_last" if v["channels_last"] and "channels_last" in vs else "contiguous"]
            if v["compiled"]
            else v
        )
        ratio_eval = [
            (b + be) / (x + xe)
            for b, be, x, xe in zip(base["epoch_s"], base["eval_s"], v["epoch_s"], ev_src["eval_s"], strict=False)
        ]
        s = {
            "epoch_s": _bench.median(v["epoch_s"]),
            "eval_s": _bench.median(ev_src["eval_s"]),
            "speedup": _bench.median(ratio),
            "speedup_min": min(ratio),
            "speedup_max": max(ratio),
            "speedup_with_eval": _bench.median(ratio_eval),
            "speedup_with_eval_min": min(ratio_eval),
            "speedup_with_eval_max": max(ratio_eval),
            "final_train_loss": v["train_losses"][-1],
        }
        full_epoch = s["epoch_s"] * scale_train + s["eval_s"] * scale_eval
        s["full_epoch_s"] = full_epoch
        if v["compiled"]:
            compile_cold = max(0.0, v["first_epoch_s"] - s["epoch_s"])
            later = r["later_compiles"].get(name, {})
            s["compile_cold_s"] = compile_cold
            s["compile_same_process_s"] = later.get("same_process_compile_s")
            s["compile_cache_warm_s"] = later.get("cache_warm_compile_s")
            # Time to finish the recipe, per round (the sides of a round ran under the same load):
            # compile + epochs x (train + eval) at full size, against the eager run of the same
            # layout and against the faster eager layout of that round.
            same = "channels_last" if v["channels_last"] else "contiguous"

            def full(n: str, i: int, ev: str | None = None) -> float:
                return vs[n]["epoch_s"][i] * scale_train + vs[ev or n]["eval_s"][i] * scale_eval

            rounds = range(len(v["epoch_s"]))
            eager_names = [n for n in ("contiguous", "channels_last") if n in vs]
            for tag, c in (
                ("cold", compile_cold),
                ("same_process", s["compile_same_process_s"]),
                ("cache_warm", s["compile_cache_warm_s"]),
            ):
                if c is None:
                    continue
                finish = [c + epochs * full(name, i, same) for i in rounds]
                vs_same = [epochs * full(same, i) / f for i, f in zip(rounds, finish, strict=False)]
                vs_best = [
                    epochs * min(full(n, i) for n in eager_names) / f for i, f in zip(rounds, finish, strict=False)
                ]
                s[f"finish_s_{tag}"] = _bench.median(finish)
                for key, vals in (("vs_same_layout", vs_same), ("vs_best_eager", vs_best)):
                    s[f"finish_speedup_{key}_{tag}"] = _bench.median(vals)
                    s[f"finish_speedup_{key}_{tag}_min"] = min(vals)
                    s[f"finish_speedup_{key}_{tag}_max"] = max(vals)
            # Epochs after which the compiled run would catch up with eager (same layout; medians).
            gain = summarize_eager(vs, same, scale_train, scale_eval) - full_epoch
            s["break_even_epochs_cold"] = compile_cold / gain if gain > 0 else None
        else:
            s["finish_s"] = epochs * full_epoch
        out[name] = s
    return {"full_train": n_full, "full_eval": n_eval_full, "recipe_epochs": epochs, "variants": out}


def _range(s: dict[str, Any], key: str) -> str:
    return f"{s[key]:.2f}x ({s[key + '_min']:.2f}-{s[key + '_max']:.2f})"


def summarize_eager(vs: dict[str, Any], name: str, scale_train: float, scale_eval: float) -> float:
    v = vs[name]
    return _bench.median(v["epoch_s"]) * scale_train + _bench.median(v["eval_s"]) * scale_eval


# --------------------------------------------------------------------------------------------
# Driver: one fresh subprocess per (case, threads)


def spawn(case: str, threads: int, args: argparse.Namespace, compile_: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pal-bench-layout-") as tmp:
        out = os.path.join(tmp, "result.json")
        env = dict(
            os.environ,
            TORCHINDUCTOR_CACHE_DIR=os.path.join(tmp, "inductor"),
            TRITON_CACHE_DIR=os.path.join(tmp, "triton"),
            PAL_BENCH_COMPILE_DYNAMIC=args.compile_dynamic,
        )
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            case,
            "--threads",
            str(threads),
            "--repeats",
            str(args.repeats_for(case)),
            "--out",
            out,
        ]
        if args.quick:
            cmd.append("--quick")
        if not compile_:
            cmd.append("--no-compile")
        if args.no_mkldnn_variant:
            cmd.append("--no-mkldnn-variant")
        subprocess.run(cmd, check=True, env=env)
        with open(out) as f:
            return json.load(f)


def print_tables(res: dict[str, Any]) -> None:
    print("\ntraining epoch, speed-up vs contiguous = contiguous / variant, median of the rounds (min-max)")
    names = ["channels_last", "no_mkldnn", "compile", "compile+channels_last"]
    rows = []
    for r in res["cases"]:
        sv = r["summary"]["variants"]
        rows.append(
            [
                r["case"],
                r["threads"],
                r["n_train"],
                r["batch_size"],
                sv["contiguous"]["epoch_s"],
                *(
                    f"{sv[n]['speedup']:.2f}x ({sv[n]['speedup_min']:.2f}-{sv[n]['speedup_max']:.2f})"
                    if n in sv
                    else "n/a"
                    for n in names
                ),
                (f"{sv['channels_last']['speedup_with_eval']:.2f}x" if "channels_last" in sv else "n/a"),
            ]
        )
    print(_bench.table(["case", "thr", "n_train", "batch", "contiguous s", *names, "channels_last incl. eval"], rows))

    crow = []
    for r in res["cases"]:
        sm = r["summary"]
        for n, s in sm["variants"].items():
            if "compile_cold_s" not in s:
                continue
            crow.append(
                [
                    r["case"],
                    r["threads"],
                    n,
                    s["compile_cold_s"],
                    s["compile_same_process_s"],
                    s["compile_cache_warm_s"],
                    sm["recipe_epochs"],
                    sm["full_train"],
                    _range(s, "finish_speedup_vs_best_eager_cold"),
                    _range(s, "finish_speedup_vs_best_eager_cache_warm")
                    if "finish_speedup_vs_best_eager_cache_warm" in s
                    else "n/a",
                ]
            )
    if crow:
        print(
            "\ntorch.compile: compile s (cold: first in a new process; same process: a later trial in a reused "
            "worker; cache warm: dynamo reset, inductor's disk cache filled); time-to-finish of the recipe "
            "(epochs x full data, eval included) vs the faster eager layout of the same round: median of the "
            "rounds (min-max)"
        )
        print(
            _bench.table(
                [
                    "case",
                    "thr",
                    "variant",
                    "compile cold",
                    "same proc",
                    "cache warm",
                    "epochs",
                    "full n_train",
                    "finish vs eager (cold)",
                    "finish vs eager (warm)",
                ],
                crow,
            )
        )
    print(f"\nload average at start {res['machine']['loadavg_at_start']}, at end {res['machine']['loadavg_at_end']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny data, 1 round, no compile, 2 threads only")
    ap.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="rounds after the warm-up (default: 5 for digits/mnist/mnist1d, 3 for the CIFAR nets)",
    )
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=None)
    ap.add_argument("--threads", nargs="+", type=int, default=None, help="torch intra-op threads (default 2 1)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--compile", action="store_true", help="with --quick: include the compile variants")
    ap.add_argument("--no-mkldnn-variant", action="store_true", help="skip the mkldnn-disabled variant")
    ap.add_argument(
        "--compile-dynamic",
        choices=["auto", "true"],
        default="auto",
        help="torch.compile(dynamic=...): torch's default (automatic) or True",
    )
    ap.add_argument(
        "--name",
        default="cpu_layout",
        help="results/<name>.json (default cpu_layout; a partial re-run should not overwrite it)",
    )
    ap.add_argument(
        "--resummarize",
        metavar="JSON",
        default=None,
        help="recompute the summaries of a results file from its raw figures, print its tables",
    )
    ap.add_argument("--worker", choices=sorted(CASES), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    def repeats_for(case: str) -> int:
        if args.repeats:
            return args.repeats
        if args.quick:
            return 1
        return 3 if case in ("cifar_cnn8", "resnet32") else 5

    args.repeats_for = repeats_for
    compile_ = not args.no_compile and (args.compile or not args.quick)
    if args.worker:
        res = run_worker(
            args.worker, args.threads[0], args.repeats, args.quick, not args.no_compile, not args.no_mkldnn_variant
        )
        with open(args.out, "w") as f:
            json.dump(res, f)
        return

    if args.resummarize:
        with open(args.resummarize) as f:
            res = json.load(f)
        for r in res["cases"]:
            r.setdefault("compile_kwargs", {})  # files from before --compile-dynamic: torch's default
            r["summary"] = summarize(r)
        print_tables(res)
        tmp = args.resummarize + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(res, indent=2) + "\n")
        os.replace(tmp, args.resummarize)
        return

    threads = args.threads or ([2] if args.quick else [2, 1])
    cases = args.cases or list(CASES)
    t0 = time.perf_counter()
    res: dict[str, Any] = {
        "benchmark": "cpu_layout",
        "quick": args.quick,
        "compile": compile_,
        "machine": _bench.machine(threads),
        "command": " ".join([".venv/bin/python", "benchmarks/cpu_layout.py", *sys.argv[1:]]),
        "cases": [],
    }
    for case in cases:
        for t in threads:
            r = spawn(case, t, args, compile_)
            r["summary"] = summarize(r)
            res["cases"].append(r)
            sv = r["summary"]["variants"]
            print(
                f"  {case} threads={t}: "
                + ", ".join(f"{n} {s['epoch_s']:.3f} s ({s['speedup']:.2f}x)" for n, s in sv.items())
                + f"  [{r['wall_s']:.0f} s]",
                flush=True,
            )
    res["machine"]["loadavg_at_end"] = _bench._loadavg()
    res["wall_s"] = time.perf_counter() - t0

    print_tables(res)
    print(f"wall {res['wall_s']:.0f} s; wrote {_bench.write_json(args.name, args.quick, res)}")


if __name__ == "__main__":
    main()
