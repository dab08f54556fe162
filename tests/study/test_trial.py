"""A trial across the Ray boundary (``pal_study.study.trial``): what a worker gets and reports
survives the trip through what Ray Tune carries, odd values included; and a study's status.json
is the same JSON it was before the status became typed."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import shutil
from pathlib import Path

from pal_study.study.status import study_status
from pal_study.study.trial import EPOCH_KEYS, CheckpointPlan, TrialJob, TrialReport, bulky_keys
from pal_study.train import EpochMetrics

FIXTURES = Path(__file__).parent / "fixtures"


def _through_tune(d: dict) -> dict:
    """What Tune hands back is JSON-shaped (results land in result.json, configs in params.json)."""
    return json.loads(json.dumps(d))


def test_a_tuning_job_and_a_final_job_round_trip():
    tuning = TrialJob(
        stage="tune",
        cell=3,
        config={"method": "ce+fnpal", "optim": {"lr": 0.1, "weight_decay": None}, "note": "ünïcödé ✓"},
        checkpoint=CheckpointPlan("auto", path="/ckpt/cell003/tune-7.pt"),
        optuna_trial=7,
        decision_epochs={"from": 1, "every": 2},
    )
    final = TrialJob(
        stage="final",
        cell=12,
        config={"seed": 0},
        details=False,
        checkpoint=CheckpointPlan(5, paths={0: "/c/s0.pt", 11: "/c/s11.pt"}),
        seeds=(0, 11),
        best_trial=4,
    )
    bare = TrialJob(stage="tune", cell=0, config={}, optuna_trial=0)
    for job in (tuning, final, bare):
        assert TrialJob.from_tune(job.to_tune()) == job
        assert TrialJob.from_tune(_through_tune(job.to_tune())) == job
    assert tuning.name == "cell003-tune-0007" and final.name == "cell012-final-s0-11"
    # The Tune config the trainable reads (and people see in params.json) keeps its shape.
    assert final.to_tune()["pal"]["checkpoint"] == {"paths": {"0": "/c/s0.pt", "11": "/c/s11.pt"}, "every_epochs": 5}
    assert tuning.to_tune()["pal"]["report"] == {"from": 1, "every": 2}


def test_an_epoch_report_with_held_epochs_round_trips():
    held = ({"epoch": 1, "val_acc": 0.5, "lr": 0.1}, {"epoch": 2, "val_acc": float("nan")})
    report = TrialReport(stage="tune", metrics={"epoch": 3, "val_acc": 0.75, "ece": float("inf")}, held=held)
    wire = report.to_tune()
    assert all(not isinstance(v, (dict, list)) for v in wire.values()), "Tune results stay flat"
    back = TrialReport.from_tune(_through_tune(wire))
    assert back.metrics == report.metrics and back.epoch == 3
    assert [e.epoch for e in back.epochs()] == [1, 2, 3]
    assert math.isnan(back.held[1]["val_acc"]) and back.held[0] == held[0]
    # An epoch's None metric (no validation split) is left out, as the trainable always did.
    assert "val_acc" not in TrialReport(metrics={"epoch": 1, "val_acc": None}).to_tune()


def test_a_closing_report_round_trips_with_odd_values():
    details = {
        "prototype_geometry": {"cos_max": 0.12, "norm_min": float("nan")},
        "per_class_acc": [1.0, None, 0.5],
        "nested": {"a": [{"b": "ünïcödé"}], "empty": {}},
    }
    report = TrialReport(
        stage="final",
        closing=True,
        metrics={"val_acc": 0.91, "test_acc": 0.9, "proto_cos_max": 0.12},
        status="failed",
        reason="RuntimeError: loss is NaN at epoch 3 — ünïcödé",
        epochs_run=3,
        wall_time_s=1.5,
        train_time_s=1.25,
        resumed_from_epoch=2,
        checkpoint_path="/c/seed0.pt",
        seed=7,
        node="127.0.0.1",
        details=details,
        history=[{"epoch": 1, "val_acc": 0.5}],
    )
    wire = report.to_tune()
    assert all(not isinstance(v, (dict, list)) for v in wire.values()), "Tune results stay flat"
    back = TrialReport.from_tune(_through_tune(wire))
    assert dataclasses.replace(back, details=None) == dataclasses.replace(report, details=None)
    assert back.details["nested"] == details["nested"] and math.isnan(back.details["prototype_geometry"]["norm_min"])
    # Unknown and NaN numbers are not sent: they read back as missing.
    sparse = TrialReport(closing=True, status="completed", metrics={"val_acc": float("nan"), "ece": None})
    back = TrialReport.from_tune(_through_tune(sparse.to_tune()))
    assert back.metrics == {} and back.status == "completed" and back.reason is None and back.details is None


def test_tunes_own_keys_are_kept_apart_and_bulk_can_be_dropped():
    report = TrialReport(stage="final", closing=True, status="completed", metrics={"val_acc": 0.9}, seed=1)
    wire = {
        **report.to_tune(),
        "details_json": json.dumps({"x": 1}),
        "trial_id": "abc",
        "training_iteration": 1,
        "config/pal/cell": 3,
        "config": {"pal": {"cell": 3}},
    }
    back = TrialReport.from_tune(wire)
    assert back.details == {"x": 1} and back.tune["trial_id"] == "abc"
    # A final's Optuna record: its scalars and Tune's scalar keys, not the Tune trial's config
    # (in a pack that is its first member's; the final records its own config).
    attrs = back.record_attrs()
    assert attrs["training_iteration"] == 1 and attrs["seed"] == 1 and attrs["status"] == "completed"
    assert "config/pal/cell" not in attrs and "config" not in attrs and "closing" not in attrs and "stage" not in attrs
    for key in bulky_keys(wire):
        del wire[key]
    assert TrialReport.from_tune(wire).details is None and TrialReport.from_tune(wire).is_closing(wire)


def test_epoch_keys_are_what_the_trainer_reports():
    assert tuple(f.name for f in dataclasses.fields(EpochMetrics)) == EPOCH_KEYS


def test_status_json_is_the_json_it_was(tmp_path):
    """status.json as a driver wrote it before the status was typed, and the typed status of the
    same run directory written the way the driver writes its last one: the same JSON."""
    study_dir = tmp_path / "runs" / "base"
    shutil.copytree(FIXTURES / "status_json" / "base", study_dir)
    before_text = (study_dir / "status.json").read_text()
    before = json.loads(before_text)
    with (study_dir / ".lock").open() as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as the driver held it when it wrote its last status
        status = study_status(study_dir, now=before["updated_at"])
    assert status.running
    status = status.ending()
    # One key was added since (each cell's short title, from the stored factors here): the rest
    # is the same JSON, text and all.
    after = status.to_dict()
    assert [c.pop("title") for c in after["cells"]] == [c.title for c in status.cells]
    assert all(c.title and c.title != c.label for c in status.cells)
    after_text = json.dumps(after, default=str, indent=1)
    before_text = before_text.replace(json.dumps(before["dir"]), json.dumps(str(study_dir)))
    assert after_text == before_text
    assert after == json.loads(before_text)
    assert json.loads(study_status(study_dir).to_json())["done"] is True
