"""The tracking-store protocol, one contract for every implementation: the same calls against
MLflow (SQLite) and the JSON-lines store read the same answers back."""

from __future__ import annotations

import json

import pytest

from pal_study.errors import ConfigError
from pal_study.tracking import TrackingStore, open_store
from pal_study.tracking.jsonl_store import JsonlStore
from pal_study.tracking.mlflow_store import MlflowStore
from pal_study.tracking.names import FAILED, FINISHED, KILLED, PARENT_TAG, RUNNING


@pytest.fixture(params=["mlflow", "jsonl"])
def store(request, tmp_path) -> TrackingStore:
    uri = f"sqlite:///{tmp_path}/mlflow.db" if request.param == "mlflow" else f"jsonl://{tmp_path}/track"
    s = open_store(uri)
    assert isinstance(s, MlflowStore if request.param == "mlflow" else JsonlStore)
    assert isinstance(s, TrackingStore)
    s.check()
    return s


def test_open_store_picks_the_implementation_by_uri(tmp_path, monkeypatch):
    assert isinstance(open_store(f"jsonl:///{tmp_path}/x"), JsonlStore)
    assert isinstance(open_store(f"sqlite:///{tmp_path}/a.db"), MlflowStore)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"jsonl://{tmp_path}/env")
    assert open_store().uri == f"jsonl://{tmp_path}/env"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    default = open_store()
    assert isinstance(default, MlflowStore) and default.uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"


def test_experiments_are_created_once_and_found_by_name(store):
    assert store.find_experiment("exp") is None
    exp_id = store.experiment_id("exp")
    assert store.experiment_id("exp") == exp_id
    found = store.find_experiment("exp")
    assert (found.experiment_id, found.name) == (exp_id, "exp")
    assert store.experiment_id("exp/other one") != exp_id


def test_a_run_tree_reads_back_tags_params_metrics_status(store):
    exp = store.experiment_id("tree")
    study = store.create_run(exp, "study s", {"pal.stage": "study", "stage": "study"}, start_time=1000)
    cell = store.create_run(exp, "cell a", {"pal.study_run": study, "stage": "cell"}, parent_id=study, start_time=2000)
    trial = store.create_run(exp, "a #0", {"pal.study_run": study, "stage": "tune", "n": 3}, parent_id=cell)
    store.log_batch(
        trial,
        metrics=[("val_acc", 0.5, 1), ("val_acc", 0.7, 2), ("loss", 1.5, 1)],
        params={"optim.lr": 0.1, "model.arch": "mlp"},
        tags={"outcome": "completed"},
    )
    store.log_batch(trial, metrics=[("final_test_acc", 0.75, 0)])
    store.set_status(trial, KILLED)
    store.set_status(trial, RUNNING)
    store.set_status(trial, FINISHED)
    store.set_status(cell, FAILED)

    run = store.get_run(trial)
    assert (run.run_id, run.experiment_id, run.name, run.status) == (trial, exp, "a #0", FINISHED)
    assert run.tags["stage"] == "tune" and run.tags["n"] == "3" and run.tags[PARENT_TAG] == cell
    assert run.tags["outcome"] == "completed"
    assert run.params == {"optim.lr": "0.1", "model.arch": "mlp"}
    assert run.metrics == {"val_acc": 0.7, "loss": 1.5, "final_test_acc": 0.75}
    assert store.metric_history(trial, "val_acc") == [(1, 0.5), (2, 0.7)]
    assert store.metric_history(trial, "missing") == []
    assert store.get_run(cell).status == FAILED and PARENT_TAG not in store.get_run(study).tags
    assert store.get_run(cell).start_time == 2000


def test_runs_are_found_by_all_their_tags_newest_first_and_not_once_deleted(store):
    exp = store.experiment_id("find")
    other = store.experiment_id("elsewhere")
    a = store.create_run(exp, "a", {"k": "1", "stage": "final"}, start_time=1000)
    b = store.create_run(exp, "b", {"k": "1", "stage": "tune"}, start_time=3000)
    c = store.create_run(exp, "c", {"k": "1", "stage": "final"}, start_time=2000)
    store.create_run(other, "d", {"k": "1", "stage": "final"})
    ids = lambda runs: [r.run_id for r in runs]  # noqa: E731
    assert sorted(ids(store.find_runs(exp, {"k": "1"}))) == sorted([a, b, c])
    assert ids(store.find_runs(exp, {"k": "1", "stage": "final"}, newest_first=True)) == [c, a]
    assert ids(store.find_runs(exp, {"k": "1"}, newest_first=True, limit=1)) == [b]
    assert store.find_runs(exp, {"k": "2"}) == []
    # A tag logged later is searchable; a parent is a tag like any other.
    store.log_batch(a, tags={"moved": "yes", PARENT_TAG: b})
    assert ids(store.find_runs(exp, {"moved": "yes", PARENT_TAG: b})) == [a]
    store.delete_run(c)
    assert ids(store.find_runs(exp, {"stage": "final"})) == [a]
    assert store.get_run(c).deleted


def test_files_and_tables_are_read_back(store):
    exp = store.experiment_id("files")
    run = store.create_run(exp, "r", {})
    store.log_files(run, {"config.yaml": "seed: 1\n", "sub/b.bin": b"\x00\x01"})
    store.log_files(run, {"index.json": "[]"}, artifact_path="export")
    assert store.read_file(run, "config.yaml") == b"seed: 1\n"
    assert store.read_file(run, "sub/b.bin") == b"\x00\x01"
    assert store.read_file(run, "export/index.json") == b"[]"
    assert store.read_file(run, "absent.json") is None
    table = {"cell": ["a", "b"], "n": [2, 3], "delta": [None, 0.5]}
    store.log_table(run, "report/table.json", table)
    store.log_table(run, "report/table.json", table)  # a rerun's table replaces, never appends
    saved = json.loads(store.read_file(run, "report/table.json"))
    assert saved["columns"] == ["cell", "n", "delta"]
    assert saved["data"] == [["a", 2, None], ["b", 3, 0.5]]


def test_an_unwritable_jsonl_store_is_bad_input(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write the tracking store"):
        open_store(f"jsonl://{blocker}/track").check()
    open_store(f"jsonl://{tmp_path}/not/yet").check()
    assert not (tmp_path / "not").exists()  # checking creates nothing


def test_jsonl_store_ignores_a_record_cut_short_by_a_kill(tmp_path):
    s = JsonlStore(f"jsonl://{tmp_path}")
    exp = s.experiment_id("e")
    run = s.create_run(exp, "r", {})
    s.log_batch(run, metrics=[("m", 1.0, 1)])
    path = next(tmp_path.glob(f"*/{run}/run.jsonl"))
    with path.open("a") as f:
        f.write('{"op":"log","metrics":[["m",9')
    fresh = JsonlStore(f"jsonl://{tmp_path}")
    assert fresh.get_run(run).metrics == {"m": 1.0}
    assert s.get_run(run).metrics == {"m": 1.0}
    # The next writer appends after the torn record: what it logs is read, the torn one skipped.
    fresh.log_batch(run, metrics=[("m", 2.0, 2)])
    assert s.get_run(run).metrics == {"m": 2.0} and s.metric_history(run, "m") == [(1, 1.0), (2, 2.0)]
