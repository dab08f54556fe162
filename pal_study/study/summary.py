"""A study's summary from its Optuna journal: per cell the trial counts by state, the best
config, the final seeds' mean ± std; the table printed at the end and ``summary.json``/``.csv``."""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from pal_study.analysis.claims import CellInfo, evaluate
from pal_study.analysis.failed_finals import failed_metrics, num_classes
from pal_study.analysis.sensitivity import Variant, judge
from pal_study.layout import SUMMARY, SUMMARY_CSV
from pal_study.metrics import mean_std
from pal_study.study.events import FinalEnded, FinalsSkipped
from pal_study.study.protocol import protocol_notes
from pal_study.study.spec import Study
from pal_study.study.store import StudyStore, best_trial, failure_counts, state_counts


@dataclass
class CellSummary:
    index: int
    label: str
    method: str
    factors: dict[str, Any]
    counts: dict[str, int]
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    finals: dict[int, dict[str, Any]] = field(default_factory=dict)
    val_mean: float | None = None
    val_std: float | None = None
    test_mean: float | None = None
    test_std: float | None = None
    groups: dict[str, float | None] = field(default_factory=dict)
    ece_mean: float | None = None
    epochs_run: int = 0
    note: str | None = None
    failures: dict[str, int] = field(default_factory=dict)  # reason -> trials
    variant: dict[str, Any] = field(default_factory=dict)  # a sensitivity cell's fixed knob: value
    parent: int | None = None  # a sensitivity cell's tuned cell
    title: str = ""  # the cell's short name (Cell.title)


@dataclass
class RunOutcome:
    cells: list[CellSummary]
    interrupted: bool = False
    wall_time_s: float = 0.0
    slots: int = 0
    resumed_trials: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    claims: list[dict[str, Any]] = field(default_factory=list)  # verdicts of the study's claims
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # the claims judged across knobs
    # The report's rows (analysis.report.CellRow) of a finished study: what its answer is printed from.
    rows: list[Any] = field(default_factory=list)

    def failure_causes(self) -> list[tuple[str, int]]:
        """Why trials failed, most common first (for the exit-1 summary)."""
        total: dict[str, int] = {}
        for c in self.cells:
            for reason, n in c.failures.items():
                total[reason] = total.get(reason, 0) + n
        return sorted(total.items(), key=lambda kv: -kv[1])

    @property
    def all_failed(self) -> bool:
        n = sum(sum(c.counts.values()) for c in self.cells)
        return n > 0 and all(c.counts["completed"] == 0 and c.counts["pruned"] == 0 for c in self.cells)


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    return mean_std(values) or (None, None)


def summarize(study: Study, store: StudyStore) -> list[CellSummary]:
    """Per cell: trial counts by state, the best config, final seeds' mean ± std (from storage)."""
    out = []
    mode = study.spec.objective.mode
    for cell in study.cells:
        trials = store.tuning_trials(cell)
        best = best_trial(store.tuning_trials(study.tuning_cell(cell)) if cell.is_variant else trials, mode)
        best_params = {k: v for k, v in (best.params if best else {}).items() if k not in cell.variant}
        finals = {s: r for s, r in store.final_results(cell).items() if s in study.spec.finals.seeds}
        ok = [r for r in finals.values() if r["state"] == "complete"]
        val = _mean_std([r.get("val_acc") for r in ok])
        test = _mean_std([r.get("test_acc") for r in ok])
        epochs = sum(int(t.user_attrs.get("epochs_run", 0) or 0) for t in trials if t.state.is_finished())
        groups = {g: _mean_std([r.get(f"test_acc_{g}") for r in ok])[0] for g in ("many", "medium", "few")}
        failures = failure_counts(trials)
        out.append(
            CellSummary(
                index=cell.index,
                label=cell.label,
                method=cell.method,
                factors=cell.factors,
                counts=state_counts(trials),
                best_trial=best.number if best else None,
                best_value=best.value if best else None,
                best_params={**best_params, **cell.variant},
                finals=finals,
                val_mean=val[0],
                val_std=val[1],
                test_mean=test[0],
                test_std=test[1],
                groups={g: v for g, v in groups.items() if v is not None},
                ece_mean=_mean_std([r.get("ece") for r in ok])[0],
                epochs_run=epochs,
                failures=failures,
                note=None if best or not trials else "no tuning trial completed: no finals",
                variant=dict(cell.variant),
                parent=cell.parent,
                title=cell.name,
            )
        )
    return out


def _pm(mean: float | None, std: float | None, n: int, failed: int = 0) -> str:
    if mean is None or std is None:  # both or neither (_mean_std)
        return f"- ({failed} failed)" if failed else "-"
    return f"{100 * mean:.2f} ± {100 * std:.2f} (n={n}{f', {failed} of {n + failed} failed' if failed else ''})"


def _group_pct(acc: float | None) -> str:
    return "-" if acc is None else f"{100 * acc:.1f}"


def _params(p: dict[str, Any]) -> str:
    if not p:
        return "(base config)"
    short = {k: (f"{v:.3g}" if isinstance(v, float) else str(v)) for k, v in p.items()}
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in short.items())


def render_table(study: Study, cells: list[CellSummary]) -> Table:
    s = study.spec
    t = Table(title=f"study {s.name}: best config per cell, finals over seeds {s.finals.seeds}", show_lines=False)
    t.add_column("#", justify="right")
    t.add_column("cell")
    t.add_column("best params")
    t.add_column(f"tune {s.objective.metric}", justify="right")
    t.add_column("final val acc %", justify="right")
    t.add_column("final test acc %", justify="right")
    t.add_column("trials done/pruned/failed", justify="right")
    with_groups = any(c.groups for c in cells)
    if with_groups:
        t.add_column("test many/medium/few %", justify="right")
    t.add_column("ECE", justify="right")
    for c in cells:
        n = sum(1 for r in c.finals.values() if r["state"] == "complete")
        failed = sum(1 for r in c.finals.values() if r["state"] == "fail")
        t.add_row(
            str(c.index),
            (c.title or c.label) + (" (sensitivity)" if c.variant else ""),
            c.note or _params(c.best_params),
            "-" if c.best_value is None else f"{c.best_value:.4f}",
            _pm(c.val_mean, c.val_std, n),
            _pm(c.test_mean, c.test_std, n, failed),
            f"{c.counts['completed']}/{c.counts['pruned']}/{c.counts['failed']}"
            + (f" (+{c.counts['running']} unfinished)" if c.counts.get("running") else ""),
            *([" / ".join(_group_pct(c.groups.get(g)) for g in ("many", "medium", "few"))] if with_groups else []),
            "-" if c.ece_mean is None else f"{c.ece_mean:.3f}",
        )
    return t


def write_summary(store: StudyStore, outcome: RunOutcome) -> Path:
    """``runs/<study>/summary.json`` and ``summary.csv``, written atomically."""
    rows = [asdict(c) for c in outcome.cells]
    path = store.dir / SUMMARY
    tmp = path.with_suffix(".json.tmp")
    # complete: false while the study runs (rewritten as each cell's finals end) or when interrupted.
    tmp.write_text(
        json.dumps(
            {
                "study": store.study.spec.name,
                "complete": not outcome.interrupted,
                "cells": rows,
                "claims": outcome.claims,
                "sensitivity": outcome.sensitivity,
            },
            indent=1,
            default=str,
        )
    )
    os.replace(tmp, path)
    csv_path = store.dir / SUMMARY_CSV
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "cell",
                "label",
                "method",
                "best_trial",
                "best_value",
                "best_params",
                "val_mean",
                "val_std",
                "test_mean",
                "test_std",
                "n_finals",
                "n_finals_failed",
                "completed",
                "pruned",
                "failed",
                "epochs_run",
                "sensitivity_of",
                "sensitivity",
            ]
        )
        for c in outcome.cells:
            w.writerow(
                [
                    c.index,
                    c.label,
                    c.method,
                    c.best_trial,
                    c.best_value,
                    json.dumps(c.best_params),
                    c.val_mean,
                    c.val_std,
                    c.test_mean,
                    c.test_std,
                    sum(1 for r in c.finals.values() if r["state"] == "complete"),
                    sum(1 for r in c.finals.values() if r["state"] == "fail"),
                    c.counts["completed"],
                    c.counts["pruned"],
                    c.counts["failed"],
                    c.epochs_run,
                    c.parent,
                    json.dumps(c.variant) if c.variant else "",
                ]
            )
    os.replace(tmp, csv_path)
    return path


class SummaryOnFinals:
    """Event sink: ``summary.json``/``.csv`` rewritten each time a cell's finals end, so a long
    study's finished cells can be read before the study ends."""

    def __init__(self, study: Study, store: StudyStore):
        self.study, self.store = study, store
        self.t0 = time.perf_counter()

    def __call__(self, event: Any) -> None:
        if not isinstance(event, (FinalEnded, FinalsSkipped)):
            return
        recorded = set(self.store.final_results(event.job.cell))
        if isinstance(event, FinalsSkipped) or set(self.study.spec.finals.seeds) <= recorded:
            write_summary(
                self.store,
                RunOutcome(
                    cells=summarize(self.study, self.store), interrupted=True, wall_time_s=time.perf_counter() - self.t0
                ),
            )


def final_values(study: Study, cells: list[CellSummary]) -> dict[str, dict[int, dict[str, Any]]]:
    """label -> seed -> that final's metrics, failed finals as the failed-finals rule counts them."""
    by_index = {c.index: c for c in study.cells}
    values: dict[str, dict[int, dict[str, Any]]] = {}
    for c in cells:
        k = num_classes(by_index[c.index].config.data.name, by_index[c.index].config.model_dump(mode="json"))
        values[c.label] = {
            int(seed): (rec if rec.get("state") == "complete" else failed_metrics(k))
            for seed, rec in c.finals.items()
            if rec.get("state") in ("complete", "fail")
        }
    return values


def claim_verdicts(study: Study, cells: list[CellSummary]) -> list[dict[str, Any]]:
    """The study's claims judged on its final seeds (from the Optuna journal), with what the
    protocol fixed beside each verdict."""
    if not study.spec.claims:
        return []
    values = final_values(study, cells)
    infos = [CellInfo(c.label, c.method, c.factors) for c in study.factor_cells]
    out = evaluate(study.spec.claims, infos, values, alpha=study.spec.claims_alpha)
    for result, notes in zip(out, protocol_notes(study.spec, study.factor_cells), strict=False):
        result["protocol"] = notes
    return out


def sensitivity_verdicts(study: Study, cells: list[CellSummary]) -> list[dict[str, Any]]:
    """The claims judged at each value of the study's sensitivity knobs (from the Optuna journal)."""
    if not study.spec.sensitivity or not study.spec.claims:
        return []
    values = final_values(study, cells)
    infos = [CellInfo(c.label, c.method, c.factors) for c in study.factor_cells]
    variants = [
        Variant(c.label, study.cells[c.parent].label, *next(iter(c.variant.items())))
        for c in study.sensitivity_cells
        if c.parent is not None
    ]
    return [
        r.as_dict()
        for r in judge(
            study.spec.claims, infos, variants, values, alpha=study.spec.claims_alpha, order=study.spec.sensitivity
        )
    ]
