"""A real study (Ray, Optuna, torch on CPU) tracked to the JSON-lines store: the run tree, the
per-epoch metrics, the finals read back, and a report from the store equal to the report from
the study's own record."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pal_study.analysis.report import fetch_finals
from pal_study.cli import main
from pal_study.tracking import open_store
from pal_study.tracking.jsonl_store import JsonlStore
from pal_study.tracking.names import PARENT_TAG, STUDY_RUN_TAG, TABLE_FILE, study_runs
from tests.support import EPOCHS, ensure_local_ray, study_file

# Studies run on one local Ray per test process (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def jsonl_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jsonl")
    uri = f"jsonl://{tmp}/track"
    path = study_file(
        tmp, "plain", noise=(0.4,), trials=2, claims=[{"better": "ce+fnpal", "than": "ce", "metric": "ece"}]
    )
    ensure_local_ray()  # module fixtures run before function ones (the local_ray mark)
    assert main(["run", str(path), "--runs-dir", str(tmp / "runs"), "--tracking-uri", uri, "--progress", "none"]) == 0
    return tmp, uri


def test_the_run_tree_metrics_and_files_are_in_plain_files(jsonl_study):
    tmp, uri = jsonl_study
    store = open_store(uri)
    assert isinstance(store, JsonlStore)
    exp = store.find_experiment("plain")
    [study] = store.find_runs(exp.experiment_id, study_runs())
    assert study.status == "FINISHED" and PARENT_TAG not in study.tags
    below = store.find_runs(exp.experiment_id, {STUDY_RUN_TAG: study.run_id})
    cells = {r.run_id: r for r in below if r.tags["stage"] == "cell"}
    trials = [r for r in below if r.tags["stage"] in ("tune", "final")]
    assert len(cells) == 2 and len(below) == 2 + 2 * 2 + 2 * 2
    assert {r.tags[PARENT_TAG] for r in cells.values()} == {study.run_id}
    assert {r.tags[PARENT_TAG] for r in trials} == set(cells)
    for cell in cells.values():
        assert cell.status == "FINISHED" and cell.metrics["n_finals"] == 2
        assert "final_test_acc_mean" in cell.metrics and "optim.weight_decay" in cell.params
    finals = [r for r in trials if r.tags["stage"] == "final"]
    assert sorted(int(r.tags["seed"]) for r in finals) == [0, 0, 1, 1]
    for r in finals + [r for r in trials if r.tags["outcome"] == "completed"]:
        assert [step for step, _ in store.metric_history(r.run_id, "val_acc")] == list(range(1, EPOCHS + 1))
        cfg = yaml.safe_load(store.read_file(r.run_id, "config.yaml"))
        assert cfg["seed"] == int(r.tags["seed"]) and cfg["optim"]["epochs"] == EPOCHS
    for r in finals:
        assert store.read_file(r.run_id, "reliability.png").startswith(b"\x89PNG")
    assert store.read_file(study.run_id, TABLE_FILE) and store.read_file(study.run_id, "summary.json")
    # Nothing but JSON-lines records and the files: one record file per run.
    assert len(list(Path(tmp, "track").glob("*/*/run.jsonl"))) == 1 + len(below)


def test_finals_read_back_match_the_journal(jsonl_study):
    from pal_study.analysis.record import journal_finals

    tmp, uri = jsonl_study
    _, _, finals = fetch_finals(open_store(uri), "plain")
    journal = journal_finals(tmp / "runs" / "plain")
    assert [(f.cell, f.seed, f.metrics["test_acc"]) for f in finals] == [
        (f.cell, f.seed, f.metrics["test_acc"]) for f in journal
    ]


def _report(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "pal_study.cli", "report", *args], capture_output=True, text=True, timeout=180, env=env
    )


def test_report_from_the_jsonl_store_equals_the_report_from_the_journal(jsonl_study):
    tmp, uri = jsonl_study
    runs = str(tmp / "runs")
    from_store = _report("plain", "--format", "md", "--tracking-uri", uri, "--runs-dir", runs)
    from_runs = _report("plain", "--format", "md", "--source", "runs", "--runs-dir", runs)
    assert from_store.returncode == from_runs.returncode == 0, from_store.stderr + from_runs.stderr
    assert from_store.stdout == from_runs.stdout and "## Claims" in from_store.stdout
    # A store that does not hold the study: auto falls back to the run directory; --source mlflow fails.
    empty = f"jsonl://{tmp}/empty"
    assert _report("plain", "--format", "md", "--tracking-uri", empty, "--runs-dir", runs).stdout == from_runs.stdout
    missing = _report("plain", "--source", "mlflow", "--tracking-uri", empty, "--runs-dir", runs)
    assert missing.returncode == 2 and "plain" in missing.stderr and "Traceback" not in missing.stderr


def test_train_and_ui_with_a_jsonl_store(tmp_path):
    uri = f"jsonl://{tmp_path}/track"
    assert main(["train", "--set", "optim.epochs=2", "-q", "-o", str(tmp_path / "r.json"), "--tracking-uri", uri]) == 0
    store = open_store(uri)
    [run] = store.find_runs(store.find_experiment("pal-study-train").experiment_id, {"stage": "train"})
    assert run.status == "FINISHED" and [s for s, _ in store.metric_history(run.run_id, "test_acc")] == [1, 2]
    assert store.read_file(run.run_id, "result.json")
    assert main(["ui", "--tracking-uri", uri]) == 2  # the MLflow UI cannot serve plain files
