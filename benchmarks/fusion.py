"""Benchmark (k): K models trained as one (``pal_study.fusion``) against one model at a time.

    .venv/bin/python benchmarks/fusion.py                    # every registered model, K = 1 2 4 8 16
    .venv/bin/python benchmarks/fusion.py --quick            # smoke run: two small models, K = 1 2, ~20 s
    .venv/bin/python benchmarks/fusion.py --models resnet32 --ks 1 4 --steps 3 --threads 2
    .venv/bin/python benchmarks/fusion.py --shared --name fusion_shared   # members share their batches

For each registered backbone, on inputs of its data set's shape at that recipe's batch size
(random inputs and labels: only time is measured), one training step of K members:

- ``sequential``: K separate models, each with its own FNPAL head, cross-entropy and
  ``torch.optim.SGD`` (momentum 0.9, weight decay 5e-4), stepped one after the other (what K
  trials in one worker cost without fusion);
- ``fused``: the same K members as one ``StackedModules`` (vmapped forward, one backward) with
  ``FusedSGD`` (per-member lr/momentum/weight decay), heads and losses per member.

``--shared``: every member gets the same batch (a tuning pack of one cell: one seed, one data
order, as ``pal_study.fused_train`` trains it); the fused side then runs ``StackedModules.shared``
(the inputs not stacked). Per-member step time = step time / K; speed-up = sequential / fused at the same K. Warm-up
steps first, then ``--rounds`` rounds of ``--steps`` steps per side, the order of the two sides
alternating per round (same background load on each); medians over the rounds.
Results: ``benchmarks/results/fusion.json`` (``fusion_quick.json`` for ``--quick``; ``--name``
picks another file, e.g. for the large models run with fewer steps).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from _bench import machine, median, table, write_json
from torch import nn

from pal_study.fusion import FusedSGD, StackedModules
from pal_study.heads import build_head
from pal_study.models import MODELS, build_model

# (input shape, batch size of the data set's recipe) per backbone.
CASES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits_mlp": ((64,), 64),
    "digits_cnn": ((1, 8, 8), 64),
    "mnist_cnn": ((1, 28, 28), 128),
    "cifar_cnn8": ((3, 32, 32), 128),
    "resnet32": ((3, 32, 32), 128),
    "mnist1d_mlp": ((40,), 128),
    "mnist1d_cnn": ((1, 40), 128),
}


def _members(arch: str, shape: tuple[int, ...], k: int) -> tuple[list[nn.Module], list[nn.Module]]:
    backbones, heads = [], []
    for seed in range(k):
        torch.manual_seed(seed)
        b = build_model(arch, shape, last_relu=True).train()
        backbones.append(b)
        heads.append(build_head("fnpal", b.feature_dim, 10, scale=10.0, seed=seed))
    return backbones, heads


def _sequential(arch: str, shape: tuple[int, ...], k: int, shared: bool = False) -> Any:
    models, heads = _members(arch, shape, k)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) for m in models]
    loss = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        for i, (m, h, o) in enumerate(zip(models, heads, opts, strict=True)):
            o.zero_grad(set_to_none=True)
            loss(h(m(x[0] if shared else x[i])), y[0] if shared else y[i]).backward()
            o.step()

    return step


def _fused(arch: str, shape: tuple[int, ...], k: int, shared: bool = False) -> Any:
    models, heads = _members(arch, shape, k)
    fused = StackedModules(models).train()
    opt = FusedSGD(fused.parameters(), lr=[0.05] * k, momentum=[0.9] * k, weight_decay=[5e-4] * k)
    loss = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad()
        z = fused.shared(x[0]) if shared else fused(x)
        total = sum(loss(h(z[i]), y[0] if shared else y[i]) for i, h in enumerate(heads))
        total.backward()
        opt.step()

    return step


def measure(arch: str, k: int, steps: int, rounds: int, warmup: int, shared: bool = False) -> dict[str, Any]:
    shape, batch = CASES[arch]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(k, batch, *shape, generator=g)
    y = torch.randint(0, 10, (k, batch), generator=g)
    sides = {"sequential": _sequential(arch, shape, k, shared), "fused": _fused(arch, shape, k, shared)}
    for fn in sides.values():
        for _ in range(warmup):
            fn(x, y)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            t = time.perf_counter()
            for _ in range(steps):
                sides[name](x, y)
            times[name].append((time.perf_counter() - t) / steps / k)
    seq, fus = median(times["sequential"]), median(times["fused"])
    return {
        "model": arch,
        "k": k,
        "batch": batch,
        "shared_batches": shared,
        "per_member_step_s": {"sequential": seq, "fused": fus},
        "speedup": seq / fus,
        "raw_per_member_step_s": times,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=None, help="backbones (default: every registered one)")
    p.add_argument("--ks", nargs="+", type=int, default=None, help="members per pack (default: 1 2 4 8 16)")
    p.add_argument("--steps", type=int, default=5, help="steps per side per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (a trial's share)")
    p.add_argument("--quick", action="store_true", help="smoke run: digits_mlp and mnist1d_mlp, K = 1 2")
    p.add_argument("--name", default="fusion", help="results file: benchmarks/results/NAME.json")
    p.add_argument("--shared", action="store_true", help="every member gets the same batch (a tuning pack)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    described = machine([a.threads])  # before the run: its load average is the one at the start
    models = a.models or (["digits_mlp", "mnist1d_mlp"] if a.quick else list(MODELS))
    unknown = [m for m in models if m not in CASES]
    if unknown:
        print(f"no benchmark case for {unknown}; known: {sorted(CASES)}", file=sys.stderr)
        return 2
    ks = a.ks or ([1, 2] if a.quick else [1, 2, 4, 8, 16])
    steps, rounds = (2, 2) if a.quick else (a.steps, a.rounds)
    rows = []
    for arch in models:
        for k in ks:
            r = measure(arch, k, steps, rounds, a.warmup, a.shared)
            rows.append(r)
            s = r["per_member_step_s"]
            print(
                f"{arch:12s} K={k:2d}  sequential {s['sequential'] * 1e3:8.2f} ms  fused {s['fused'] * 1e3:8.2f} ms"
                f"  per member  ×{r['speedup']:.2f}",
                flush=True,
            )
    print()
    print(
        table(
            ["model", "K", "batch", "sequential ms/member", "fused ms/member", "fused speed-up"],
            [
                [
                    r["model"],
                    r["k"],
                    r["batch"],
                    r["per_member_step_s"]["sequential"] * 1e3,
                    r["per_member_step_s"]["fused"] * 1e3,
                    f"{r['speedup']:.2f}x",
                ]
                for r in rows
            ],
        )
    )
    args = {
        "argv": sys.argv[1:],
        "models": models,
        "ks": ks,
        "steps": steps,
        "rounds": rounds,
        "warmup": a.warmup,
        "threads": a.threads,
    }
    path = write_json(a.name, a.quick, {"machine": described, "args": args, "rows": rows})
    print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
