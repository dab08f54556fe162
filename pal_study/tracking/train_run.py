"""One ``pal-study train`` as one run of a tracking store."""

from __future__ import annotations

import json
from typing import Any

from pal_study.config import flatten
from pal_study.plots import reliability_png
from pal_study.tracking.base import TrackingStore
from pal_study.tracking.content import trial_artifacts, trial_tags
from pal_study.tracking.names import FAILED, FINISHED, KILLED, TRAIN_METRIC_KEYS


def log_train_result(store: TrackingStore, experiment: str, result: Any) -> str:
    """Config params, tags, per-epoch metrics, artifacts; returns the run's id."""
    cfg = result.config
    exp_id = store.experiment_id(experiment)
    status = {"completed": FINISHED, "stopped": KILLED}.get(result.status, FAILED)
    run_id = store.create_run(
        exp_id,
        f"{result.method} seed {cfg.get('seed')}",
        trial_tags(cfg, stage="train", outcome=result.status if result.status != "stopped" else "pruned"),
    )
    metrics = [
        (k, h[k], int(h["epoch"]))
        for h in result.history
        for k in TRAIN_METRIC_KEYS
        if isinstance(h.get(k), (int, float))
    ]
    store.log_batch(run_id, metrics=metrics, params=flatten(cfg))
    details = {
        "prototype_geometry": result.prototype_geometry,
        "per_class_acc": result.per_class_acc,
        "class_counts": result.class_counts,
    }
    files = trial_artifacts(cfg, details, "pal-study train THIS_FILE reproduces this run")
    if result.reliability:
        files["reliability.png"] = reliability_png(result.reliability, result.final.get("ece"), result.method)
    files["result.json"] = json.dumps(result.to_dict(), default=str, indent=1)
    store.log_files(run_id, files)
    store.set_status(run_id, status)
    return run_id
