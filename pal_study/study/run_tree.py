"""A study's run tree in a tracking store, and what each engine event writes to it.

Layout: study run (``pal.stage=study``) > one run per cell (``stage=cell``, ``pal.run_key=cellNNN``)
> that cell's tuning and final runs. Every run below the study run carries ``pal.study_run`` (the
study run's id), so a study's runs are found by one tag whatever their depth; studies tracked
before cell runs existed (trials directly under the study run) are still read, and are moved
under cell runs when such a study is resumed (``reconcile``).

A trial's run is created when its trial starts, its epochs are buffered and flushed every
``FLUSH_S`` seconds and at its end in one ``log_batch``. Runs are keyed by ``pal.run_key``
(``cell003``, ``cell003/tune/7``, ``cell003/final/seed1``), so a resumed study finds and finishes
its runs instead of opening duplicates. The cell run holds the cell's factor tags, its best config
(params), the aggregates over its finals and its comparison with its baseline."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from pal_study.analysis.answer import cell_texts, pm_text, verdicts_by_pair
from pal_study.layout import SUMMARY_KEYS, cell_label, parse_cell_key, run_key
from pal_study.study.cell_table import cell_aggregates, comparison_table
from pal_study.study.events import (
    EpochReported,
    Event,
    FinalEnded,
    FinalsSkipped,
    TrialEnded,
    TrialRetried,
    TrialStarted,
)
from pal_study.study.spec import Study
from pal_study.study.store import StudyStore, fingerprint
from pal_study.study.trial import TrialReport
from pal_study.tracking import TrackingStore, code_tags, flatten, trial_artifacts, trial_tags
from pal_study.tracking.base import Run
from pal_study.tracking.names import (
    CHECKPOINT_TAG,
    FAILED,
    FINGERPRINT_TAG,
    FINISHED,
    KILLED,
    METRIC_KEYS,
    OUTCOME_STATUS,
    RUN_KEY_TAG,
    RUNNING,
    SENSITIVITY_OF_TAG,
    SENSITIVITY_TAG,
    STAGE_TAG,
    STUDY_RUN_TAG,
    SUMMARY_PREFIX,
    TABLE_FILE,
    TEST_ACC_TEXT,
    below_study,
    children_of,
    study_runs,
)

FLUSH_S = 30.0
# The events that write to the tree; the others (progress, status) are not the store's business.
HANDLED = (TrialStarted, EpochReported, TrialEnded, FinalEnded, TrialRetried, FinalsSkipped)


class RunTree:
    """The study run (re-found on resume), a run per cell below it, and below each cell run a
    run per tuning trial and final seed. Its methods raise when the store fails; every one is
    repeatable, so a caller may run an event again once the store is back."""

    def __init__(self, tracking: TrackingStore, study: Study, store: StudyStore):
        self.tracking = tracking
        self.study = study
        self.store = store
        self.exp_id = tracking.experiment_id(study.spec.name)
        self.parent_id: str | None = None
        self.children: dict[str, Run] = {}  # run_key -> run (cell runs under ``cellNNN``)
        # cell index -> {run_id, status, params (logged), metrics, tags}: the cell runs' state
        self.cells: dict[int, dict[str, Any]] = {}
        self._finished: set[str] = set()  # run keys of final runs this process finished
        self._live: dict[int, dict[str, Any]] = {}  # id(job) -> {run_id, buffer, last_flush, skip_to}

    # -- the study run ---------------------------------------------------------------------------
    def start(self) -> str:
        """Find (or create) the study run and every run already logged below it; its id."""
        t = self.tracking
        fp = fingerprint(self.study)
        # A study stored with a version-1 fingerprint has its study run tagged with that one
        # (re-tagged with the current one below).
        runs: list[Run] = []
        for tag in [fp, *([self.store.fingerprint_v1] if self.store.fingerprint_v1 else [])]:
            runs = t.find_runs(self.exp_id, study_runs(tag), newest_first=True, limit=1)
            if runs:
                break
        if runs:
            self.parent_id = runs[0].run_id
            if runs[0].tags.get(FINGERPRINT_TAG) != fp:
                t.log_batch(self.parent_id, tags={FINGERPRINT_TAG: fp})
            if runs[0].status != RUNNING:
                t.set_status(self.parent_id, RUNNING)
        else:
            self.parent_id = self._create_study_run(fp)
        # What `pal-study ui --study` opens: the cell runs with their headline metrics.
        searched = sorted({p for cell in self.study.cells for p in cell.params})
        t.set_study_view(self.exp_id, list(self.study.spec.factors), searched, [c.name for c in self.study.cells])
        # Every run already logged for this study, by key: a resume reuses, never duplicates. Cell
        # runs and everything below them carry the study run's id; runs of the layout before cell
        # runs (trials directly under the study run) are its children.
        seen: set[str] = set()
        for query in (below_study(self.parent_id), children_of(self.parent_id)):
            for r in t.find_runs(self.exp_id, query):
                key = r.tags.get(RUN_KEY_TAG)
                if key and r.run_id not in seen:
                    seen.add(r.run_id)
                    self.children[key] = r
        for key, r in self.children.items():
            index = parse_cell_key(key)  # a cell run's key: cellNNN
            if index is not None:
                self.cells[index] = {
                    "run_id": r.run_id,
                    "status": r.status,
                    "params": bool(r.params),
                    "metrics": dict(r.metrics),
                    "tags": dict(r.tags),
                }
        return self.parent_id

    @property
    def study_run_id(self) -> str:
        """The study run's id, once :meth:`start` has found or created it."""
        if self.parent_id is None:
            raise RuntimeError("the study run is not started: call start() first")
        return self.parent_id

    def _create_study_run(self, fp: str) -> str:
        s = self.study.spec
        run_id = self.tracking.create_run(
            self.exp_id,
            f"study {s.name}",
            {STAGE_TAG: "study", FINGERPRINT_TAG: fp, "stage": "study", "study": s.name, **code_tags()},
        )
        self.tracking.log_batch(
            run_id,
            params={
                "cells": len(self.study.factor_cells),
                "sensitivity_cells": len(self.study.sensitivity_cells),
                "trials_per_cell": s.budget.trials_per_cell,
                "tuning_seed": s.budget.tuning_seed,
                "epochs": s.budget.epochs,
                "sampler": s.budget.sampler.name,
                "sampler_seed": s.budget.sampler.seed,
                "pruner": s.budget.pruner.name,
                "final_seeds": s.finals.seeds,
                "objective": s.objective.metric,
                "mode": s.objective.mode,
                "resources_cpu": s.resources.cpu,
                "resources_gpu": s.resources.gpu,
                "factors": json.dumps(s.factors),
            },
        )
        self.tracking.log_files(
            run_id,
            {
                "study.yaml": self.study.path.read_text(),
                "study_resolved.json": json.dumps(s.model_dump(mode="json"), indent=1),
            },
        )
        return run_id

    def log_summary(self, summary: dict[str, Any] | None, files: dict[str, Any]) -> None:
        """The study run's summary (trial counts and failure causes as metrics and tags, claims,
        sensitivity) and its files (the report's, ``summary.json``)."""
        files = dict(files)
        if summary is not None:
            files["summary.json"] = json.dumps(summary, indent=1, default=str)
            counts = summary["counts"]
            causes = summary["failure_causes"]
            tags = {"failure_causes": "; ".join(f"{n} × {r}" for r, n in causes[:5])} if causes else {}
            if summary.get("claims"):
                # One line per claim in the runs table; every number in claims.json.
                tags["claims"] = "; ".join(f"{c['verdict']}: {c['claim']}" for c in summary["claims"])[:5000]
                files["claims.json"] = json.dumps(summary["claims"], indent=1, default=str)
            if summary.get("sensitivity"):
                files["sensitivity.json"] = json.dumps(summary["sensitivity"], indent=1, default=str)
                tags["sensitivity"] = "; ".join(
                    f"{k['knob']}: " + ", ".join(f"{b['value']}={b['verdict']}" for b in c["by_value"])
                    for k in summary["sensitivity"]
                    for c in k["claims"]
                )[:5000]
            self.tracking.log_batch(
                self.study_run_id, metrics=[(f"trials_{k}", v, 0) for k, v in counts.items()], tags=tags
            )
        if files:
            self.tracking.log_files(self.study_run_id, files)

    def end(self, interrupted: bool) -> None:
        self.tracking.set_status(self.study_run_id, KILLED if interrupted else FINISHED)

    # -- events ----------------------------------------------------------------------------------
    def handle(self, event: Event) -> None:
        """Write what ``event`` means for the tree. The one place event fields are read."""
        job = event.job
        if isinstance(event, TrialStarted) and job.stage == "tune":
            self._start_tuning(job, event.payload.config)
        elif isinstance(event, EpochReported):
            self._epoch(job, event.result.metrics)
        elif isinstance(event, TrialEnded):
            self._end_tuning(job, event.outcome, event.reason, _closing(event.closing))
        elif isinstance(event, FinalEnded):
            ok = event.ok
            self._final(job, int(event.seed), event.config, _closing(event.result), ok, event.reason, event.best_value)
        elif isinstance(event, TrialRetried) and job.stage == "tune":
            self._retried(job)
        elif isinstance(event, FinalsSkipped):
            self._skipped(job.cell, event.reason)

    def _key(self, job: Any, suffix: str) -> str:
        return run_key(job.cell.index, suffix)

    def child(
        self, key: str, name: str, tags: dict[str, Any], start_time: int | None = None, *, parent: str
    ) -> tuple[str, bool]:
        """(run id, whether it existed): existing runs are reused, so nothing is logged twice.
        Params go in later with the metrics: one ``log_batch`` per run where possible."""
        existing = self.children.get(key)
        if existing is not None:
            return existing.run_id, True
        all_tags = {STUDY_RUN_TAG: self.parent_id, RUN_KEY_TAG: key, "study": self.study.spec.name, **tags}
        run_id = self.tracking.create_run(self.exp_id, name, all_tags, parent_id=parent, start_time=start_time)
        self.children[key] = Run(run_id, self.exp_id, name, RUNNING, start_time or 0, tags=all_tags)
        return run_id, False

    def forget(self, key: str) -> None:
        """Delete the run logged under ``key`` (half-logged: replaced whole, never doubled)."""
        run = self.children.pop(key, None)
        if run is not None:
            self.tracking.delete_run(run.run_id)

    # -- cell runs -------------------------------------------------------------------------------
    def cell_run(self, cell: Any, cfg: dict[str, Any]) -> str:
        """The cell's run (created with its first trial, from that trial's ``cfg`` for the factor
        tags; a resumed study's is reused and, if an interruption had ended it, running again)."""
        info = self.cells.get(cell.index)
        if info is not None:
            if info["status"] == KILLED:
                self.tracking.set_status(info["run_id"], RUNNING)
                info["status"] = RUNNING
            return info["run_id"]
        tags = trial_tags(
            cfg,
            cell=cell.label,
            cell_group=cell_group(cell),
            stage="cell",
            optuna_study=self.store.tuning_name(self.study.tuning_cell(cell)),
            **variant_tags(self.study, cell),
        )
        for trial_only in ("seed", "config_hash"):
            tags.pop(trial_only, None)
        tags[STAGE_TAG] = "cell"
        run_id, _ = self.child(run_key(cell.index), cell.name, tags, parent=self.study_run_id)
        self.cells[cell.index] = {"run_id": run_id, "status": RUNNING, "params": False, "metrics": {}, "tags": tags}
        return run_id

    def cell_finals(
        self,
        cell: Any,
        cfg: dict[str, Any] | None,
        finals: dict[int, dict[str, Any]] | None = None,
        *,
        close: bool = False,
    ) -> None:
        """After a final of the cell ended: its best config as params (once), and when all its
        final seeds have ended (or ``close``), the aggregates over its completed finals and its
        status, in one ``log_batch``. Repeatable (a queued event runs it again)."""
        info = self.cells.get(cell.index)
        if info is None or info["status"] in (FINISHED, FAILED):
            return
        params = None
        if not info["params"] and cfg is not None:
            params = {k: v for k, v in flatten(cfg).items() if k != "seed"}  # the seed: the finals'
        finals = self.store.final_results(cell) if finals is None else finals
        ended = close or set(self.study.spec.finals.seeds) <= set(finals)
        metrics: list = []
        done = [r for r in finals.values() if r.get("state") == "complete"]
        tags: dict[str, str] = {}
        if ended:
            aggregates = cell_aggregates(done)
            metrics = [(k, v, 0) for k, v in aggregates.items()]
            if "final_test_acc_mean" in aggregates:  # until the study's end puts the report's there
                tags[TEST_ACC_TEXT] = pm_text((aggregates["final_test_acc_mean"], aggregates["final_test_acc_std"]))
            # Never dropped silently: the failed ones count in the comparison (chance accuracy).
            metrics.append(("n_finals_failed", float(sum(r.get("state") == "fail" for r in finals.values())), 0))
        if params or metrics:
            self.tracking.log_batch(info["run_id"], metrics=metrics, params=params, tags=tags)
            info["params"] = info["params"] or bool(params)
            info["metrics"].update({k: v for k, v, _ in metrics})
            info["tags"].update(tags)
        if ended:
            status = FINISHED if done else FAILED
            self.tracking.set_status(info["run_id"], status)
            info["status"] = status

    def _skipped(self, cell: Any, reason: str) -> None:
        """No finals for the cell (no tuning trial completed): its run ends FAILED, saying why."""
        info = self.cells.get(cell.index)
        if info is None or info["status"] in (FINISHED, FAILED):
            return
        self.tracking.log_batch(
            info["run_id"], metrics=[("n_finals", 0, 0)], tags={"outcome": "failed", "outcome_reason": reason}
        )
        self.tracking.set_status(info["run_id"], FAILED)
        info["status"] = FAILED

    def finish_cells(self, interrupted: bool, rows: list[Any] | None, claims: Sequence[Any] = ()) -> None:
        """At the study's end: cell runs still open end (KILLED if the study was interrupted);
        each cell's comparison with its baseline goes on its run (metrics, and as rounded text
        with the verdict of any claim that compares the two: the UI's first columns), the table
        on the study run."""
        for cell in self.study.cells:
            info = self.cells.get(cell.index)
            if info is None or info["status"] != RUNNING:
                continue
            if interrupted:
                self.tracking.set_status(info["run_id"], KILLED)
                info["status"] = KILLED
            else:
                self.cell_finals(cell, None, close=True)
        if rows is None:
            return
        index = {c.label: c.index for c in self.study.cells}
        verdicts = verdicts_by_pair(claims)
        for row in rows:
            info = self.cells.get(index.get(row.cell, -1))
            if info is None:
                continue
            texts = {k: v for k, v in cell_texts(row, verdicts).items() if info["tags"].get(k) != v}
            c = row.comparison
            if c is None:
                if texts:
                    self.tracking.log_batch(info["run_id"], tags=texts)
                    info["tags"].update(texts)
                continue
            metrics = [
                (k, v, 0)
                for k, v in (
                    ("delta_test_acc", c.delta),
                    ("ci_low", c.ci_low),
                    ("ci_high", c.ci_high),
                    ("p", c.p),
                    ("q", c.q),
                    ("p_t", c.p_t),
                )
                if isinstance(v, (int, float)) and info["metrics"].get(k) != v
            ]
            tags = {"baseline": c.baseline} if info["tags"].get("baseline") != c.baseline else {}
            tags.update(texts)
            if metrics or tags:  # a rerun of a finished study logs nothing twice
                self.tracking.log_batch(info["run_id"], metrics=metrics, tags=tags)
                info["metrics"].update({k: v for k, v, _ in metrics})
                info["tags"].update(tags)
        self.tracking.log_table(self.study_run_id, TABLE_FILE, comparison_table(rows))

    # -- tuning trials ---------------------------------------------------------------------------
    def _start_tuning(self, job: Any, cfg: dict[str, Any]) -> None:
        key = self._key(job, f"tune/{job.trial.number}")
        tags = trial_tags(
            cfg,
            cell=job.cell.label,
            cell_group=cell_group(job.cell),
            stage="tune",
            optuna_study=self.store.tuning_name(job.cell),
            optuna_trial=job.trial.number,
        )
        cell_id = self.cell_run(job.cell, cfg)
        run_id, existed = self.child(key, f"{job.cell.name} #{job.trial.number}", tags, parent=cell_id)
        skip_to = 0
        if existed:
            skip_to = max((step for step, _ in self.tracking.metric_history(run_id, "val_acc")), default=0)
            self.tracking.set_status(run_id, RUNNING)
        self._live[id(job)] = {
            "run_id": run_id,
            "buffer": [],
            "flushed": time.monotonic(),
            "skip_to": skip_to,
            "cfg": cfg,
            "params": None if existed and self.children[key].params else flatten(cfg),
        }

    def _epoch(self, job: Any, result: dict[str, Any]) -> None:
        live = self._live.get(id(job))
        if live is None:
            return
        step = int(result["epoch"])
        if step <= live["skip_to"]:
            return  # already logged (a resumed run, or a trial Tune re-ran after its node died)
        live["skip_to"] = step
        live["buffer"] += [(k, result[k], step) for k in METRIC_KEYS if isinstance(result.get(k), (int, float))]
        if time.monotonic() - live["flushed"] > FLUSH_S:
            self._flush(live)

    def _flush(self, live: dict[str, Any], tags: dict[str, Any] | None = None) -> None:
        params, live["params"] = live.get("params"), None
        if live["buffer"] or params or tags:
            self.tracking.log_batch(live["run_id"], metrics=live["buffer"], params=params, tags=tags)
            live["buffer"] = []
        live["flushed"] = time.monotonic()

    def _retried(self, job: Any) -> None:
        # The run stays RUNNING: the retry logs into it (by its run key) from the next epoch on.
        live = self._live.pop(id(job), None)
        if live is not None:
            self._flush(live)

    def _end_tuning(self, job: Any, outcome: str, reason: str | None, closing: dict[str, Any]) -> None:
        # Repeatable: if the store fails half-way, the queued event runs this again from the top.
        live = self._live.get(id(job))
        if live is None:
            return
        if not live.get("summarised"):
            live["buffer"] += summary_metrics(closing)
            live["summarised"] = True
        tags = {"outcome": outcome}
        if reason:
            tags["outcome_reason"] = reason
        tags.update(ending_tags(closing, checkpoint=False))
        self._flush(live, tags)
        self.tracking.log_files(
            live["run_id"],
            trial_artifacts(
                live["cfg"],
                closing.get("details"),
                f"{self.study.spec.name} {job.cell.label} tuning trial {job.trial.number}: pal-study train THIS_FILE",
            ),
        )
        self.tracking.set_status(live["run_id"], OUTCOME_STATUS[outcome])
        self._live.pop(id(job), None)

    # -- final seeds -----------------------------------------------------------------------------
    def _final(
        self,
        job: Any,
        seed: int,
        cfg: dict[str, Any],
        result: dict[str, Any],
        ok: bool,
        reason: str | None,
        best_value: float | None,
    ) -> None:
        key = self._key(job, f"final/seed{seed}")
        cell_id = self.cell_run(job.cell, cfg)
        if key not in self._finished and not (key in self.children and self.children[key].status == FINISHED):
            self._final_run(job, key, cell_id, seed, cfg, result, ok, reason, best_value)
            self._finished.add(key)
        self.cell_finals(job.cell, cfg)

    def _final_run(
        self,
        job: Any,
        key: str,
        cell_id: str,
        seed: int,
        cfg: dict[str, Any],
        result: dict[str, Any],
        ok: bool,
        reason: str | None,
        best_value: float | None,
    ) -> None:
        outcome = "completed" if ok else "failed"
        tags = trial_tags(
            cfg,
            cell=job.cell.label,
            cell_group=cell_group(job.cell),
            stage="final",
            outcome=outcome,
            optuna_study=self.store.finals_name(job.cell),
            **variant_tags(self.study, job.cell),
        )
        if reason:
            tags["outcome_reason"] = reason
        tags.update(ending_tags(result, checkpoint=True))
        # Created when the seed is done (one write burst): dated back to when it started.
        started = int(1000 * (time.time() - float(result.get("wall_time_s") or 0.0)))
        name = f"{job.cell.name} · final seed {seed}"
        metrics = [
            (k, h[k], int(h["epoch"]))
            for h in result.get("history", [])
            for k in METRIC_KEYS
            if isinstance(h.get(k), (int, float))
        ]
        metrics += summary_metrics(result)
        if isinstance(best_value, (int, float)):
            metrics.append(("final_tune_best_value", best_value, 0))
        self.forget(key)  # a half-logged run of a killed driver: its metrics would double up
        run_id, _ = self.child(key, name, {}, started, parent=cell_id)
        self.tracking.log_batch(run_id, metrics=metrics, params=flatten(cfg), tags=tags)
        self.tracking.log_files(
            run_id,
            trial_artifacts(
                cfg,
                result.get("details"),
                # the label (the record's name of the cell): the header reads the same from either source
                f"{self.study.spec.name} {job.cell.label} final seed {seed}: pal-study train THIS_FILE",
            ),
        )
        self.tracking.set_status(run_id, FINISHED if ok else FAILED)


def _closing(report: TrialReport | None) -> dict[str, Any]:
    """A trial's closing report as the run tree reads it: its scalars, details and history."""
    if report is None:
        return {}
    return {**report.values(), "details": report.details, "history": report.history or []}


def summary_metrics(attrs: dict[str, Any]) -> list[tuple[str, float, int]]:
    """A trial's closing numbers as ``final_<key>`` metrics at step 0."""
    return [(f"{SUMMARY_PREFIX}{k}", attrs[k], 0) for k in SUMMARY_KEYS if isinstance(attrs.get(k), (int, float))]


def ending_tags(attrs: dict[str, Any], *, checkpoint: bool) -> dict[str, str]:
    """Where a trial ran, the epoch it resumed from, and (finals) its trained model's path."""
    tags = {}
    if attrs.get("node"):
        tags["node"] = attrs["node"]
    if attrs.get("resumed_from_epoch") is not None:
        tags["resumed_from_epoch"] = str(attrs["resumed_from_epoch"])
    if checkpoint and attrs.get("checkpoint_path"):
        tags[CHECKPOINT_TAG] = attrs["checkpoint_path"]  # the trained model: pal-study export --weights
    return tags


def variant_tags(study: Any, cell: Any) -> dict[str, str]:
    """A sensitivity cell's tags (the knob it fixes, the cell it re-runs); {} for other cells."""
    if not cell.variant:
        return {}
    return {SENSITIVITY_TAG: json.dumps(cell.variant, default=str), SENSITIVITY_OF_TAG: study.cells[cell.parent].label}


def cell_group(cell: Any) -> str:
    """The cell's factors other than the method: cells of one group differ only by method, so
    the report compares each with the CE cell of its group."""
    return cell_label({k: v for k, v in cell.factors.items() if k != "method"})
