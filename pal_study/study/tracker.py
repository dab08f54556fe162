"""A study's MLflow record, fed by the searcher's events (driver side, one writer).

Layout: study run (``pal.stage=study``) > one run per cell (``stage=cell``, ``pal.run_key=cellNNN``)
> that cell's tuning and final runs. Every run below the study run carries ``pal.study_run`` (the
study run's id), so a study's runs are found by one tag whatever their depth; studies tracked
before cell runs existed (trials directly under the study run) are still read, and are moved
under cell runs when such a study is resumed."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

from pal_study.layout import SUMMARY, SUMMARY_KEYS, cell_label, parse_cell_key, run_key
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
from pal_study.tracking import (
    FLUSH_S,
    SENSITIVITY_OF_TAG,
    SENSITIVITY_TAG,
    Tracking,
    code_tags,
    flatten,
    has_cells_view,
    set_cells_view,
    trial_artifacts,
    trial_tags,
)

log = logging.getLogger(__name__)

RETRY_S = 5.0
HANDLED = (TrialStarted, EpochReported, TrialEnded, FinalEnded, TrialRetried, FinalsSkipped)
STUDY_RUN_TAG = "pal.study_run"
TABLE_FILE = "report/comparison_table.json"

# Per epoch (step = epoch); timings only in the closing summary: every key costs on every epoch.
METRIC_KEYS = ("train_loss", "val_acc", "val_acc_clean", "test_acc", "ece", "gamma_min", "margin_mean", "lr")


class StudyTracker:
    """Parent run per study (re-found on resume), a run per cell below it, and below each cell
    run a run per tuning trial and final seed."""

    def __init__(self, tracking: Tracking, study: Study, store: StudyStore):
        self.t = tracking
        self.study = study
        self.store = store
        self.exp_id = tracking.experiment_id(study.spec.name)
        self.parent_id: str | None = None
        self.children: dict[str, Any] = {}  # run_key -> mlflow Run (cell runs under ``cellNNN``)
        # cell index -> {run_id, status, params (logged), metrics, tags}: the cell runs' state
        self._cells: dict[int, dict[str, Any]] = {}
        self._finished: set[str] = set()  # run keys of final runs this process finished
        self._live: dict[int, dict[str, Any]] = {}  # id(job) -> {run_id, buffer, last_flush, skip_to}
        self.logging_s = 0.0
        self.logging_cpu_s = 0.0  # CPU of the driver thread: what tracking takes from trials on a busy machine
        self._pending: list[Event] = []
        self._retry_at = 0.0

    # -- parent --------------------------------------------------------------------------------
    def start(self) -> str:
        t0 = time.perf_counter()
        c = self.t.client
        fp = fingerprint(self.study)
        # A study stored with a version-1 fingerprint has its parent run tagged with that one
        # (re-tagged below).
        runs = []
        for tag in [fp, *([self.store.fingerprint_v1] if self.store.fingerprint_v1 else [])]:
            runs = c.search_runs(
                [self.exp_id],
                filter_string=f"tags.`pal.stage` = 'study' and tags.`pal.fingerprint` = '{tag}'",
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
            if runs:
                break
        if runs:
            if runs[0].data.tags.get("pal.fingerprint") != fp:
                c.set_tag(runs[0].info.run_id, "pal.fingerprint", fp)
            self.parent_id = runs[0].info.run_id
            if runs[0].info.status != "RUNNING":
                c.update_run(self.parent_id, status="RUNNING")
        else:
            s = self.study.spec
            run = c.create_run(
                self.exp_id,
                run_name=f"study {s.name}",
                tags={"pal.stage": "study", "pal.fingerprint": fp, "stage": "study", "study": s.name, **code_tags()},
            )
            self.parent_id = run.info.run_id
            self.t.log_batch(
                self.parent_id,
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
            self.t.log_files(
                self.parent_id,
                {
                    "study.yaml": self.study.path.read_text(),
                    "study_resolved.json": json.dumps(s.model_dump(mode="json"), indent=1),
                },
            )

        if not has_cells_view(c.get_experiment(self.exp_id)):
            # What `pal-study ui --study` opens: the cell runs with their headline metrics.
            searched = sorted({p for cell in self.study.cells for p in cell.params})
            set_cells_view(c, self.exp_id, list(self.study.spec.factors), searched)
        # Every run already logged for this study, by key: a resume reuses, never duplicates. Cell
        # runs and everything below them carry the study run's id; runs of the layout before cell
        # runs (trials directly under the study run) are its children.
        seen: set[str] = set()
        for flt in (f"tags.`{STUDY_RUN_TAG}` = '{self.parent_id}'", f"tags.`mlflow.parentRunId` = '{self.parent_id}'"):
            token = None
            while True:
                page = c.search_runs([self.exp_id], filter_string=flt, max_results=1000, page_token=token)
                for r in page:
                    key = r.data.tags.get("pal.run_key")
                    if key and r.info.run_id not in seen:
                        seen.add(r.info.run_id)
                        self.children[key] = r
                token = page.token
                if not token:
                    break
        for key, r in self.children.items():
            index = parse_cell_key(key)  # a cell run's key: cellNNN
            if index is not None:
                self._cells[index] = {
                    "run_id": r.info.run_id,
                    "status": r.info.status,
                    "params": bool(r.data.params),
                    "metrics": dict(r.data.metrics),
                    "tags": dict(r.data.tags),
                }
        self.logging_s += time.perf_counter() - t0
        return self.parent_id

    def reconcile(self, config_for: Any) -> int:
        """Finish what a killed driver left half-logged: every finished Optuna trial and final seed
        gets a finished MLflow run (from the Optuna record when its own logs never arrived).
        ``config_for(cell, params)`` rebuilds a tuning trial's config. Returns runs repaired."""
        from optuna.trial import TrialState

        repaired = 0
        status_of = {
            TrialState.COMPLETE: ("completed", "FINISHED"),
            TrialState.PRUNED: ("pruned", "KILLED"),
            TrialState.FAIL: ("failed", "FAILED"),
        }
        for cell in self.study.cells:
            trials = self.store.tuning_trials(cell)
            finals = self.store.final_results(cell)
            prefix = run_key(cell.index) + "/"  # its trials' runs
            if not trials and not finals and not any(k.startswith(prefix) for k in self.children):
                continue  # not started: its cell run comes with its first trial
            cell_id = self._cell_run(
                cell, json.loads(next(iter(finals.values()))["config"]) if finals else config_for(cell, {})
            )
            for t in trials:
                if t.state not in status_of:
                    continue
                key = f"{prefix}tune/{t.number}"
                run = self.children.get(key)
                if run is not None and run.info.status != "RUNNING":
                    continue
                outcome, status = status_of[t.state]
                cfg = config_for(cell, dict(t.params))
                metrics = [("val_acc", v, int(step)) for step, v in t.intermediate_values.items()]
                self._repair(
                    key,
                    f"{cell.label} #{t.number}",
                    cfg,
                    run,
                    outcome,
                    status,
                    t.user_attrs,
                    metrics,
                    tags=dict(
                        cell=cell.label,
                        cell_group=_group(cell),
                        stage="tune",
                        optuna_study=self.store.tuning_name(cell),
                        optuna_trial=t.number,
                    ),
                    parent=cell_id,
                )
                repaired += 1
            for seed, rec in finals.items():
                key = f"{prefix}final/seed{seed}"
                run = self.children.get(key)
                if run is not None and run.info.status in ("FINISHED", "FAILED"):
                    continue
                outcome, status = ("completed", "FINISHED") if rec["state"] == "complete" else ("failed", "FAILED")
                self._repair(
                    key,
                    f"{cell.label} final seed {seed}",
                    json.loads(rec["config"]),
                    run,
                    outcome,
                    status,
                    rec,
                    [],
                    tags=dict(
                        cell=cell.label,
                        cell_group=_group(cell),
                        stage="final",
                        optuna_study=self.store.finals_name(cell),
                        **variant_tags(self.study, cell),
                    ),
                    parent=cell_id,
                )
                repaired += 1
            # Runs logged before cell runs existed (directly under the study run) move under theirs.
            for key, run in self.children.items():
                tags = run.data.tags
                if key.startswith(prefix) and (
                    tags.get("mlflow.parentRunId") != cell_id or tags.get(STUDY_RUN_TAG) != self.parent_id
                ):
                    self.t.log_batch(
                        run.info.run_id, tags={"mlflow.parentRunId": cell_id, STUDY_RUN_TAG: self.parent_id}
                    )
            if finals:
                # Its best config, and its aggregates and status if all its finals had ended.
                self._cell_finals(cell, json.loads(next(iter(finals.values()))["config"]), finals)
        return repaired

    def _repair(
        self,
        key: str,
        name: str,
        cfg: dict[str, Any],
        run: Any,
        outcome: str,
        status: str,
        attrs: dict[str, Any],
        metrics: list,
        tags: dict[str, Any],
        parent: str,
    ) -> None:
        if run is not None:
            self.t.client.delete_run(run.info.run_id)  # half-logged: replaced whole, never doubled
            self.children.pop(key, None)
        run_id, _ = self._child(key, name, {}, parent=parent)
        summary = [(f"final_{k}", attrs[k], 0) for k in SUMMARY_KEYS if isinstance(attrs.get(k), (int, float))]
        all_tags = trial_tags(cfg, outcome=outcome, **tags)
        all_tags["pal.reconciled"] = "from the Optuna record (the driver was killed while logging)"
        if attrs.get("reason"):
            all_tags["outcome_reason"] = attrs["reason"]
        if attrs.get("resumed_from_epoch") is not None:
            all_tags["resumed_from_epoch"] = str(attrs["resumed_from_epoch"])
        if attrs.get("checkpoint_path"):
            all_tags["pal.checkpoint"] = attrs["checkpoint_path"]
        self.t.log_batch(run_id, metrics=metrics + summary, params=flatten(cfg), tags=all_tags)
        self.t.log_files(
            run_id, trial_artifacts(cfg, None, f"{self.study.spec.name} {name}: pal-study train THIS_FILE")
        )
        self.t.client.set_terminated(run_id, status=status)

    def finish(
        self,
        interrupted: bool,
        make_files: Any = None,
        drain_timeout_s: float = 120.0,
        summary: dict[str, Any] | None = None,
        report_rows: Any = None,
    ) -> list[str]:
        """Deliver what is still queued (waiting up to ``drain_timeout_s`` for the store), then
        the parent's files, its summary (trial counts and failure causes, as metrics, tags and
        ``summary.json``), the cell runs' comparisons with their baselines (from
        ``report_rows()``: ``report.aggregate`` rows, q adjusted over the whole study) and the
        comparison table, every run's status. Returns what could not be delivered (empty when all was)."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + drain_timeout_s
        while self._pending and time.monotonic() < deadline:
            if not self._drain():
                time.sleep(RETRY_S)
        undelivered = [f"{e.kind} {getattr(e.job.cell, 'label', '?')}" for e in self._pending]
        if not undelivered:
            try:
                files = dict(make_files() or {}) if make_files is not None else {}
                if summary is not None:
                    files[SUMMARY] = json.dumps(summary, indent=1, default=str)
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
                    self.t.log_batch(
                        self.parent_id, metrics=[(f"trials_{k}", v, 0) for k, v in counts.items()], tags=tags
                    )
                if files:
                    self.t.log_files(self.parent_id, files)
            except Exception as e:
                undelivered.append(f"study report ({e})")
            try:
                self._finish_cells(interrupted, report_rows() if report_rows is not None else None)
            except Exception as e:
                undelivered.append(f"cell runs and comparison table ({e})")
            try:
                self.t.client.set_terminated(self.parent_id, status="KILLED" if interrupted else "FINISHED")
            except Exception as e:
                undelivered.append(f"study status ({e})")
        self.logging_s += time.perf_counter() - t0
        return undelivered

    # -- events ----------------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        """Handle one event; while the store is unreachable, queue events in order and retry
        every RETRY_S seconds, so the study goes on and nothing is dropped."""
        t0, c0 = time.perf_counter(), time.thread_time()
        if isinstance(event, HANDLED):
            if self._pending:
                self._pending.append(event)
                self._retry_if_due()
            elif not self._handle(event):
                self._pending.append(event)
        self.logging_s += time.perf_counter() - t0
        self.logging_cpu_s += time.thread_time() - c0

    def tick(self) -> None:
        """Retry queued events if the store was unreachable and the retry is due (no new event
        needed: TrackerThread calls this when its queue stays empty)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        self._retry_if_due()
        self.logging_s += time.perf_counter() - t0
        self.logging_cpu_s += time.thread_time() - c0

    def _retry_if_due(self) -> None:
        if self._pending and time.monotonic() >= self._retry_at:
            self._drain()

    def _drain(self) -> bool:
        while self._pending:
            if not self._handle(self._pending[0]):
                return False
            self._pending.pop(0)
        log.warning("MLflow tracking store reachable again: queued logs delivered")
        return True

    def _handle(self, event: Event) -> bool:
        job = event.job
        try:
            if isinstance(event, TrialStarted) and job.stage == "tune":
                self._start_tuning(job, event.payload.config)
            elif isinstance(event, EpochReported):
                self._epoch(job, event.result.metrics)
            elif isinstance(event, TrialEnded):
                self._end_tuning(event)
            elif isinstance(event, FinalEnded):
                self._final(event)
            elif isinstance(event, TrialRetried) and job.stage == "tune":
                self._retried(job)
            elif isinstance(event, FinalsSkipped):
                self._skipped(job.cell, event.reason)
            return True
        except Exception as e:
            if not self._pending:
                log.warning(
                    "MLflow logging failed for %s (%s): %s — queuing logs, retrying every %.0f s",
                    event.kind,
                    getattr(job.cell, "label", "?"),
                    str(e).splitlines()[0][:200] if str(e) else e,
                    RETRY_S,
                )
            self._retry_at = time.monotonic() + RETRY_S
            return False

    def _key(self, job: Any, suffix: str) -> str:
        return run_key(job.cell.index, suffix)

    def _child(
        self, key: str, name: str, tags: dict[str, Any], start_time: int | None = None, *, parent: str
    ) -> tuple[str, bool]:
        """(run id, whether it existed): existing runs are reused, so nothing is logged twice.
        Params go in later with the metrics: one ``log_batch`` per run where possible."""
        existing = self.children.get(key)
        if existing is not None:
            return existing.info.run_id, True
        c = self.t.client
        run = c.create_run(
            self.exp_id,
            run_name=name,
            start_time=start_time,
            tags={
                "mlflow.parentRunId": parent,
                STUDY_RUN_TAG: self.parent_id,
                "pal.run_key": key,
                "study": self.study.spec.name,
                **tags,
            },
        )
        self.children[key] = run
        return run.info.run_id, False

    # -- cell runs -------------------------------------------------------------------------------
    def _cell_run(self, cell: Any, cfg: dict[str, Any]) -> str:
        """The cell's run (created with its first trial, from that trial's ``cfg`` for the factor
        tags; a resumed study's is reused and, if an interruption had ended it, running again)."""
        info = self._cells.get(cell.index)
        if info is not None:
            if info["status"] == "KILLED":
                self.t.client.update_run(info["run_id"], status="RUNNING")
                info["status"] = "RUNNING"
            return info["run_id"]
        key = run_key(cell.index)
        tags = trial_tags(
            cfg,
            cell=cell.label,
            cell_group=_group(cell),
            stage="cell",
            optuna_study=self.store.tuning_name(self.study.tuning_cell(cell)),
            **variant_tags(self.study, cell),
        )
        for trial_only in ("seed", "config_hash"):
            tags.pop(trial_only, None)
        tags["pal.stage"] = "cell"
        run_id, _ = self._child(key, cell.label, tags, parent=self.parent_id)
        self._cells[cell.index] = {"run_id": run_id, "status": "RUNNING", "params": False, "metrics": {}, "tags": tags}
        return run_id

    def _cell_finals(
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
        info = self._cells.get(cell.index)
        if info is None or info["status"] in ("FINISHED", "FAILED"):
            return
        params = None
        if not info["params"] and cfg is not None:
            params = {k: v for k, v in flatten(cfg).items() if k != "seed"}  # the seed: the finals'
        finals = self.store.final_results(cell) if finals is None else finals
        ended = close or set(self.study.spec.finals.seeds) <= set(finals)
        metrics: list = []
        done = [r for r in finals.values() if r.get("state") == "complete"]
        if ended:
            metrics = [(k, v, 0) for k, v in cell_aggregates(done).items()]
            # Never dropped silently: the failed ones count in the comparison (chance accuracy).
            metrics.append(("n_finals_failed", float(sum(r.get("state") == "fail" for r in finals.values())), 0))
        if params or metrics:
            self.t.log_batch(info["run_id"], metrics=metrics, params=params)
            info["params"] = info["params"] or bool(params)
            info["metrics"].update({k: v for k, v, _ in metrics})
        if ended:
            status = "FINISHED" if done else "FAILED"
            self.t.client.set_terminated(info["run_id"], status=status)
            info["status"] = status

    def _skipped(self, cell: Any, reason: str) -> None:
        """No finals for the cell (no tuning trial completed): its run ends FAILED, saying why."""
        info = self._cells.get(cell.index)
        if info is None or info["status"] in ("FINISHED", "FAILED"):
            return
        self.t.log_batch(
            info["run_id"], metrics=[("n_finals", 0, 0)], tags={"outcome": "failed", "outcome_reason": reason}
        )
        self.t.client.set_terminated(info["run_id"], status="FAILED")
        info["status"] = "FAILED"

    def _finish_cells(self, interrupted: bool, rows: list[Any] | None) -> None:
        """At the study's end: cell runs still open end (KILLED if the study was interrupted);
        each cell's comparison with its baseline goes on its run, the table on the study run."""
        for cell in self.study.cells:
            info = self._cells.get(cell.index)
            if info is None or info["status"] != "RUNNING":
                continue
            if interrupted:
                self.t.client.set_terminated(info["run_id"], status="KILLED")
                info["status"] = "KILLED"
            else:
                self._cell_finals(cell, None, close=True)
        if rows is None:
            return
        index = {c.label: c.index for c in self.study.cells}
        for row in rows:
            info = self._cells.get(index.get(row.cell, -1))
            c = row.comparison
            if info is None or c is None:
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
            if metrics or tags:  # a rerun of a finished study logs nothing twice
                self.t.log_batch(info["run_id"], metrics=metrics, tags=tags)
                info["metrics"].update({k: v for k, v, _ in metrics})
                info["tags"].update(tags)
        self._log_table(comparison_table(rows))

    def _log_table(self, table: dict[str, list]) -> None:
        """The comparison as an MLflow table (the UI's artifact view shows it). ``log_table``
        appends to a table already there: a rerun's (same) table replaces it instead."""
        import pandas as pd

        df = pd.DataFrame(table)
        # Text columns as object (pandas 3 makes them ``str``, which log_table's image check warns about).
        text = [k for k in df.columns if df[k].dtype != object and pd.api.types.is_string_dtype(df[k])]
        df[text] = df[text].astype(object)
        c = self.t.client
        if TABLE_FILE in {a.path for a in c.list_artifacts(self.parent_id, "report")}:
            self.t.log_files(self.parent_id, {TABLE_FILE: df.to_json(orient="split", index=False, date_format="iso")})
        else:
            c.log_table(self.parent_id, data=df, artifact_file=TABLE_FILE)

    def _start_tuning(self, job: Any, cfg: dict[str, Any]) -> None:
        key = self._key(job, f"tune/{job.trial.number}")
        tags = trial_tags(
            cfg,
            cell=job.cell.label,
            cell_group=_group(job.cell),
            stage="tune",
            optuna_study=self.store.tuning_name(job.cell),
            optuna_trial=job.trial.number,
        )
        cell_id = self._cell_run(job.cell, cfg)
        run_id, existed = self._child(key, f"{job.cell.label} #{job.trial.number}", tags, parent=cell_id)
        skip_to = 0
        if existed:
            hist = self.t.client.get_metric_history(run_id, "val_acc")
            skip_to = max((m.step for m in hist), default=0)
            self.t.client.update_run(run_id, status="RUNNING")
        self._live[id(job)] = {
            "run_id": run_id,
            "buffer": [],
            "flushed": time.monotonic(),
            "skip_to": skip_to,
            "cfg": cfg,
            "params": None if existed and self.children[key].data.params else flatten(cfg),
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
            self.t.log_batch(live["run_id"], metrics=live["buffer"], params=params, tags=tags)
            live["buffer"] = []
        live["flushed"] = time.monotonic()

    def _retried(self, job: Any) -> None:
        # The run stays RUNNING: the retry logs into it (by its run key) from the next epoch on.
        live = self._live.pop(id(job), None)
        if live is not None:
            self._flush(live)

    def _end_tuning(self, event: TrialEnded) -> None:
        # Repeatable: if the store fails half-way, the queued event runs this again from the top.
        job, outcome = event.job, event.outcome
        live = self._live.get(id(job))
        if live is None:
            return
        closing = event.closing.values() if event.closing is not None else {}
        if not live.get("summarised"):
            live["buffer"] += [
                (f"final_{k}", closing[k], 0) for k in SUMMARY_KEYS if isinstance(closing.get(k), (int, float))
            ]
            live["summarised"] = True
        tags = {"outcome": outcome}
        if event.reason:
            tags["outcome_reason"] = event.reason
        if closing.get("node"):
            tags["node"] = closing["node"]
        if closing.get("resumed_from_epoch") is not None:
            tags["resumed_from_epoch"] = str(closing["resumed_from_epoch"])
        self._flush(live, tags)
        self.t.log_files(
            live["run_id"],
            trial_artifacts(
                live["cfg"],
                event.closing.details if event.closing is not None else None,
                f"{self.study.spec.name} {job.cell.label} tuning trial {job.trial.number}: pal-study train THIS_FILE",
            ),
        )
        status = {"completed": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}[outcome]
        self.t.client.set_terminated(live["run_id"], status=status)
        self._live.pop(id(job), None)

    def _final(self, event: FinalEnded) -> None:
        job = event.job
        seed = int(event.seed)
        key = self._key(job, f"final/seed{seed}")
        cfg = event.config
        cell_id = self._cell_run(job.cell, cfg)
        if key not in self._finished and not (key in self.children and self.children[key].info.status == "FINISHED"):
            self._final_run(event, key, cell_id)
            self._finished.add(key)
        self._cell_finals(job.cell, cfg)

    def _final_run(self, event: FinalEnded, key: str, cell_id: str) -> None:
        job = event.job
        seed = int(event.seed)
        result = event.result.values()
        cfg = event.config
        outcome = "completed" if event.ok else "failed"
        tags = trial_tags(
            cfg,
            cell=job.cell.label,
            cell_group=_group(job.cell),
            stage="final",
            outcome=outcome,
            optuna_study=self.store.finals_name(job.cell),
            **variant_tags(self.study, job.cell),
        )
        if event.reason:
            tags["outcome_reason"] = event.reason
        if result.get("node"):
            tags["node"] = result["node"]
        if result.get("resumed_from_epoch") is not None:
            tags["resumed_from_epoch"] = str(result["resumed_from_epoch"])
        if result.get("checkpoint_path"):
            tags["pal.checkpoint"] = result["checkpoint_path"]  # the trained model: pal-study export --weights
        # Created when the seed is done (one write burst): dated back to when it started.
        started = int(1000 * (time.time() - float(result.get("wall_time_s") or 0.0)))
        run_id, existed = self._child(key, f"{job.cell.label} final seed {seed}", {}, started, parent=cell_id)
        metrics = [
            (k, h[k], int(h["epoch"]))
            for h in event.result.history or []
            for k in METRIC_KEYS
            if isinstance(h.get(k), (int, float))
        ]
        metrics += [(f"final_{k}", result[k], 0) for k in SUMMARY_KEYS if isinstance(result.get(k), (int, float))]
        if isinstance(event.best_value, (int, float)):
            metrics.append(("final_tune_best_value", event.best_value, 0))
        if existed:  # a half-logged run of a killed driver: its metrics would double up
            self.t.client.delete_run(run_id)
            self.children.pop(key)
            run_id, _ = self._child(key, f"{job.cell.label} final seed {seed}", {}, started, parent=cell_id)
        self.t.log_batch(run_id, metrics=metrics, params=flatten(cfg), tags=tags)
        self.t.log_files(
            run_id,
            trial_artifacts(
                cfg,
                event.result.details,
                f"{self.study.spec.name} {job.cell.label} final seed {seed}: pal-study train THIS_FILE",
            ),
        )
        self.t.client.set_terminated(run_id, status="FINISHED" if outcome == "completed" else "FAILED")


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def cell_aggregates(finals: list[dict[str, Any]]) -> dict[str, float]:
    """A cell run's metrics over its completed finals' records (mean and sample std, as the report)."""
    from pal_study.metrics import mean_std

    out: dict[str, float] = {"n_finals": float(len(finals))}
    for key, names in (
        ("test_acc", ("final_test_acc_mean", "final_test_acc_std")),
        ("val_acc", ("final_val_acc_mean", "final_val_acc_std")),
        ("ece", ("ece_mean",)),
    ):
        ms = mean_std([_num(r.get(key)) for r in finals])
        if ms:
            out.update(zip(names, ms, strict=False))
    return out


def comparison_table(rows: list[Any]) -> dict[str, list]:
    """One row per cell: its test accuracy (mean, std over its finals) and the comparison with
    its baseline in the columns of ``report.comparisons`` (empty for cells without one)."""
    from pal_study.analysis.report import comparisons

    comps = {c["cell"]: c for c in comparisons(rows)}
    keys = (
        "baseline",
        "metric",
        "n_pairs",
        "delta",
        "ci_low",
        "ci_high",
        "p",
        "q",
        "p_t",
        "test",
        "p_wilcoxon",
        "seeds",
    )
    table: dict[str, list] = {k: [] for k in ("cell", "method", "n", "test_acc_mean", "test_acc_std", *keys)}
    for r in rows:
        mean, std = r.stats.get("test_acc", (None, None))
        comp = comps.get(r.cell, {})
        for k, v in (
            ("cell", r.cell),
            ("method", r.method),
            ("n", r.n),
            ("test_acc_mean", mean),
            ("test_acc_std", std),
        ):
            table[k].append(v)
        for k in keys:
            v = comp.get(k)
            table[k].append(" ".join(map(str, v)) if k == "seeds" and v is not None else v)
    return table


def variant_tags(study: Any, cell: Any) -> dict[str, str]:
    """A sensitivity cell's tags (the knob it fixes, the cell it re-runs); {} for other cells."""
    if not cell.variant:
        return {}
    return {SENSITIVITY_TAG: json.dumps(cell.variant, default=str), SENSITIVITY_OF_TAG: study.cells[cell.parent].label}


def _group(cell: Any) -> str:
    """The cell's factors other than the method: cells of one group differ only by method, so
    the report compares each with the CE cell of its group."""
    return cell_label({k: v for k, v in cell.factors.items() if k != "method"})


class TrackerThread:
    """Feeds a :class:`StudyTracker` from its own thread, so the MLflow writes (a run created when
    a trial starts, its metrics, artifacts and status when it ends) are off Ray Tune's event loop:
    the next trial is handed out without waiting for the database. Events keep their order (one
    queue, one writer). A driver killed with events still queued leaves those runs half-logged,
    as a kill between Optuna's record and the tracker always could: the next run's
    ``reconcile`` completes them from the Optuna record."""

    def __init__(self, tracker: StudyTracker):
        self.tracker = tracker
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="pal-study-tracking")
        self._thread.start()

    def __call__(self, event: Event) -> None:
        if isinstance(event, HANDLED) and not self._closed:
            self._queue.put(event)

    def _run(self) -> None:
        while True:
            try:
                event = self._queue.get(timeout=RETRY_S)
            except queue.Empty:
                self._guarded(self.tracker.tick)
                continue
            if event is None:
                return
            self._guarded(self.tracker, event)

    @staticmethod
    def _guarded(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("MLflow tracking: an event could not be logged")

    def close(self) -> None:
        """Deliver (or queue for ``finish``'s retries) every event handed over so far, then stop."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
