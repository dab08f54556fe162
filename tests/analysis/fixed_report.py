"""A fixed report (rows, claims' verdicts, ranks, probability of improvement, verdicts across a
sensitivity knob) built from constructed final runs: no tracking store, no journal, the same
numbers every time. The report-format tests render it and compare with the stored outputs in
``fixtures/``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pal_study.analysis.claims import ClaimSpec
from pal_study.analysis.report import Analysis, CellRow, FinalRun, StatedClaims, aggregate, analyse, judge_finals

FIXTURES = Path(__file__).parent / "fixtures"
TITLE = "fixed"
SEEDS = range(6)
NOISE = (0.2, 0.6)
# method -> its test accuracy above CE's at each noise rate (points / 100)
GAIN = {"ce": 0.0, "ce+pal": 0.01, "ce+fnpal": 0.06, "nce+rce": 0.03, "nce+rce+fnpal": 0.05, "gce+norm": -0.01}
SCALES = (5.0, 40.0)  # the sensitivity knob's values (head.scale), applied to ce+fnpal at noise 0.6


def _metrics(method: str, noise: float, seed: int, shift: float = 0.0) -> dict[str, float]:
    acc = 0.9 - 0.4 * noise + GAIN[method] + shift + 0.004 * ((seed * 7 + len(method)) % 5)
    return {
        "test_acc": acc,
        "val_acc": acc - 0.01,
        "ece": 0.05 + 0.01 * (seed % 3),
        "test_acc_many": acc + 0.05,
        "test_acc_medium": acc,
        "test_acc_few": acc - 0.1,
        "proto_norm_max": 1.0 + 0.1 * seed,
        "proto_norm_min": 0.5,
        "feature_norm_mean": 3.0 + noise,
    }


def _run(method: str, noise: float, seed: int, *, failed: bool = False, scale: float | None = None) -> FinalRun:
    group = f"data.noise.rate={noise:g}"
    cell = f"{group},method={method}"
    parent = None
    if scale is not None:
        parent, cell = cell, f"{cell},head.scale={scale:g}"
    return FinalRun(
        run_id=f"{cell}/seed{seed}",
        cell=cell,
        group=group,
        method=method,
        dataset="digits",
        noise_rate=noise,
        imbalance_ratio=1.0,
        seed=seed,
        weight_decay=5e-4,
        metrics={} if failed else _metrics(method, noise, seed, 0.0 if scale is None else (scale - 20) / 1000),
        failed=failed,
        variant=None if scale is None else {"head.scale": scale},
        parent=parent,
        num_classes=10,
    )


def final_runs() -> list[FinalRun]:
    runs = [
        _run(method, noise, seed, failed=(method, noise, seed) == ("gce+norm", 0.6, 2))
        for noise in NOISE
        for method in GAIN
        for seed in SEEDS
    ]
    runs += [_run("ce+fnpal", 0.6, seed, scale=s) for s in SCALES for seed in SEEDS]
    return runs


STATED = StatedClaims(
    claims=[
        ClaimSpec(better="ce+fnpal", than="ce", where={"data.noise.rate": 0.6}),
        ClaimSpec(better="*+fnpal", than="*", where={"data.noise.rate": [0.2, 0.6]}),
        ClaimSpec(better="ce+pal", than="ce", metric="ece"),
    ],
    alpha=0.05,
    notes=[["tuned equally"], [], []],
    sensitivity={"head.scale": list(SCALES)},
)


def fixed_report() -> tuple[list[CellRow], list[dict[str, Any]], Analysis]:
    """(rows, claims' verdicts, analysis with the sensitivity verdicts) of the fixed study."""
    runs = final_runs()
    rows = aggregate(runs)
    claims, sensitivity = judge_finals(STATED, runs)
    analysis = analyse(rows, runs, importance=None)
    analysis.sensitivity = sensitivity
    return rows, claims, analysis


_GENERATED = re.compile(r"Generated \d{4}-\d\d-\d\d \d\d:\d\d\.")
_PNG = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


def stable_html(text: str) -> str:
    """report.html without what changes from run to run or with the matplotlib version: the
    time it was generated and the figures' bytes (their names stay)."""
    return _PNG.sub("data:image/png;base64,PNG", _GENERATED.sub("Generated TIME.", text))
