"""Repair a study's run tree after a driver was killed while logging: every finished Optuna trial
and final seed gets a finished run (rebuilt from the Optuna record when its own logs never
arrived: its closing numbers and its val_acc per epoch), and runs of the layout before cell runs
move under their cell's run."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from optuna.trial import TrialState

from pal_study.layout import run_key
from pal_study.study.run_tree import RunTree, cell_group, summary_metrics, variant_tags
from pal_study.tracking import flatten, trial_artifacts, trial_tags
from pal_study.tracking.base import Run
from pal_study.tracking.names import (
    CHECKPOINT_TAG,
    FAILED,
    FINISHED,
    KILLED,
    PARENT_TAG,
    RECONCILED_TAG,
    RUNNING,
    STUDY_RUN_TAG,
)

_STATUS_OF = {
    TrialState.COMPLETE: ("completed", FINISHED),
    TrialState.PRUNED: ("pruned", KILLED),
    TrialState.FAIL: ("failed", FAILED),
}


def reconcile(tree: RunTree, config_for: Callable[[Any, dict[str, Any]], dict[str, Any]]) -> int:
    """Finish what a killed driver left half-logged in ``tree`` (started). ``config_for(cell,
    params)`` rebuilds a tuning trial's config. Returns runs repaired."""
    study, store = tree.study, tree.store
    repaired = 0
    for cell in study.cells:
        trials = store.tuning_trials(cell)
        finals = store.final_results(cell)
        curves = store.final_curves(cell) if finals else {}
        prefix = run_key(cell.index) + "/"  # its trials' runs
        if not trials and not finals and not any(k.startswith(prefix) for k in tree.children):
            continue  # not started: its cell run comes with its first trial
        best_cfg = json.loads(next(iter(finals.values()))["config"]) if finals else None
        cell_id = tree.cell_run(cell, best_cfg if best_cfg is not None else config_for(cell, {}))
        for t in trials:
            if t.state not in _STATUS_OF:
                continue
            key = f"{prefix}tune/{t.number}"
            run = tree.children.get(key)
            if run is not None and run.status != RUNNING:
                continue
            outcome, status = _STATUS_OF[t.state]
            metrics = [("val_acc", v, int(step)) for step, v in t.intermediate_values.items()]
            tags = dict(
                cell=cell.label,
                cell_group=cell_group(cell),
                stage="tune",
                optuna_study=store.tuning_name(cell),
                optuna_trial=t.number,
            )
            cfg = config_for(cell, dict(t.params))
            _repair(
                tree,
                key,
                (f"{cell.name} #{t.number}", f"{cell.label} tuning trial {t.number}"),
                cfg,
                outcome,
                status,
                t.user_attrs,
                metrics,
                tags,
                cell_id,
            )
            repaired += 1
        for seed, rec in finals.items():
            key = f"{prefix}final/seed{seed}"
            run = tree.children.get(key)
            if run is not None and run.status in (FINISHED, FAILED):
                continue
            outcome, status = ("completed", FINISHED) if rec["state"] == "complete" else ("failed", FAILED)
            tags = dict(
                cell=cell.label,
                cell_group=cell_group(cell),
                stage="final",
                optuna_study=store.finals_name(cell),
                **variant_tags(study, cell),
            )
            cfg = json.loads(rec["config"])
            metrics = [("val_acc", v, int(step)) for step, v in sorted(curves.get(seed, {}).items())]
            _repair(
                tree,
                key,
                (f"{cell.name} · final seed {seed}", f"{cell.label} final seed {seed}"),
                cfg,
                outcome,
                status,
                rec,
                metrics,
                tags,
                cell_id,
            )
            repaired += 1
        for key, run in tree.children.items():
            if key.startswith(prefix) and _misplaced(run, cell_id, tree.parent_id):
                tree.tracking.log_batch(run.run_id, tags={PARENT_TAG: cell_id, STUDY_RUN_TAG: tree.parent_id})
        if finals:
            # Its best config, and its aggregates and status if all its finals had ended.
            tree.cell_finals(cell, best_cfg, finals)
    return repaired


def _misplaced(run: Run, cell_id: str, study_id: str | None) -> bool:
    """A run logged before cell runs existed: directly under the study run, without its id."""
    return run.tags.get(PARENT_TAG) != cell_id or run.tags.get(STUDY_RUN_TAG) != study_id


def _repair(
    tree: RunTree,
    key: str,
    names: tuple[str, str],
    cfg: dict[str, Any],
    outcome: str,
    status: str,
    attrs: dict[str, Any],
    metrics: list,
    tags: dict[str, Any],
    parent: str,
) -> None:
    # The run's name (the cell's title) and its config.yaml's header (the cell's label), as the
    # driver logs them.
    name, header = names
    tree.forget(key)  # half-logged: replaced whole, never doubled
    run_id, _ = tree.child(key, name, {}, parent=parent)
    all_tags = trial_tags(cfg, outcome=outcome, **tags)
    all_tags[RECONCILED_TAG] = "from the Optuna record (the driver was killed while logging)"
    if attrs.get("reason"):
        all_tags["outcome_reason"] = attrs["reason"]
    if attrs.get("resumed_from_epoch") is not None:
        all_tags["resumed_from_epoch"] = str(attrs["resumed_from_epoch"])
    if attrs.get("checkpoint_path"):
        all_tags[CHECKPOINT_TAG] = attrs["checkpoint_path"]
    tree.tracking.log_batch(run_id, metrics=metrics + summary_metrics(attrs), params=flatten(cfg), tags=all_tags)
    tree.tracking.log_files(
        run_id, trial_artifacts(cfg, None, f"{tree.study.spec.name} {header}: pal-study train THIS_FILE")
    )
    tree.tracking.set_status(run_id, status)
