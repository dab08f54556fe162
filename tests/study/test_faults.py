"""Faults in trials: a NaN loss, an exception, a process killed like the OS would — each marked
failed with its reason in Optuna and MLflow while the study goes on; all failing → exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from pal_study.cli import main

# Studies run on one local Ray per test process (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("local_ray")

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, methods: list[str], trials: int = 2, **base) -> Path:
    spec = {
        "name": name,
        "base": {"data": {"name": "digits"}, "optim": {"epochs": 2, **base}},
        "factors": {"method": methods},
        "search": [str(ROOT / "search_spaces/weight_decay.yaml")],
        "budget": {"trials_per_cell": trials, "pruner": {"name": "none"}},
        "finals": {"seeds": [0]},
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


@pytest.mark.slow
@pytest.mark.own_ray
def test_failing_trials_are_recorded_with_reasons_and_the_study_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PAL_STUDY_FAULT", "raise:head.kind=pal;kill:head.kind=fnpal")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write(tmp_path, "faults", ["ce", "ce+pal", "ce+fnpal"])
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--tracking-uri", uri]) == 0
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "runs" / "faults" / "optuna.journal")))
    trials = {i: optuna.load_study(study_name=f"faults/cell00{i}", storage=storage).trials for i in range(3)}
    assert [t.state for t in trials[0]] == [TrialState.COMPLETE] * 2
    for t in trials[1]:
        assert t.state == TrialState.FAIL and t.user_attrs["reason"].startswith("RuntimeError: injected fault")
    for t in trials[2]:
        assert t.state == TrialState.FAIL and "process died" in t.user_attrs["reason"]
    finals = optuna.load_study(study_name="faults/cell000/finals", storage=storage).trials
    assert [t.state for t in finals] == [TrialState.COMPLETE]

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("faults")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'tune'")
    by_method = {}
    for r in runs:
        by_method.setdefault(r.data.tags["method"], []).append(r)
    assert {r.data.tags["outcome"] for r in by_method["ce"]} == {"completed"}
    for m, fragment in (("ce+pal", "injected fault"), ("ce+fnpal", "process died")):
        assert len(by_method[m]) == 2
        for r in by_method[m]:
            assert r.info.status == "FAILED" and r.data.tags["outcome"] == "failed"
            assert fragment in r.data.tags["outcome_reason"]
    captured = capsys.readouterr()
    assert "no tuning trial completed" in captured.out
    assert "some trials failed; causes:" in captured.err and "2 × RuntimeError: injected fault" in captured.err

    # Ray Tune marks them ERROR too, each with its reason in the trial's error.txt.
    errors = [p.read_text() for p in (tmp_path / "runs" / "faults" / "tune").rglob("error.txt")]
    assert len(errors) == 4
    assert sum("TrialFailed: RuntimeError: injected fault" in e for e in errors) == 2
    assert sum("worker process has died" in e for e in errors) == 2
    # The study's parent run says how many trials failed and why, for the UI's runs table.
    [parent] = client.search_runs([exp.experiment_id], "tags.stage = 'study'")
    assert parent.data.metrics["trials_failed"] == 4 and parent.data.metrics["trials_completed"] == 2
    causes = parent.data.tags["failure_causes"]
    assert "2 × RuntimeError: injected fault" in causes and "2 × the trial process died" in causes
    summary = json.loads(Path(client.download_artifacts(parent.info.run_id, "summary.json", str(tmp_path))).read_text())
    assert summary["counts"] == {"completed": 2, "pruned": 0, "failed": 4}
    assert next(c["failures"] for c in summary["cells"]) == {}


def test_a_study_whose_every_trial_fails_exits_1_with_the_causes(tmp_path, capsys):
    path = write(tmp_path, "allnan", ["ce", "gce"], trials=1, lr=1.0e9)  # a failed trial's actor is not reused
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--no-track"]) == 1
    err = capsys.readouterr().err
    assert "every trial failed; causes:" in err and "Traceback" not in err
    import re

    counts = [int(n) for n in re.findall(r"(\d+) × non-finite training loss \(nan\) in epoch \d", err)]
    assert sum(counts) == 2, err


@pytest.mark.slow
@pytest.mark.own_ray
def test_a_trial_whose_process_dies_is_run_again_under_the_same_optuna_trial(tmp_path, monkeypatch):
    """--trial-retries: a tuning trial SIGKILLed after epoch 2 and a final SIGKILLed after epoch 1
    are handed out again by the searcher; each ends COMPLETE once, its epochs stored once, its
    MLflow run reused (one run per trial, each epoch logged once)."""
    monkeypatch.setenv("PAL_STUDY_FAULT", "killonce:head.kind=pal@2;killonce:optim.epochs=4@1")
    monkeypatch.setenv("PAL_STUDY_FAULT_DIR", str(tmp_path))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = {
        "name": "retry",
        "base": {"data": {"name": "digits"}, "optim": {"epochs": 3}},
        "factors": {"method": ["ce", "ce+pal"]},
        "search": [str(ROOT / "search_spaces/weight_decay.yaml")],
        "budget": {"trials_per_cell": 2, "pruner": {"name": "none"}},
        "finals": {"seeds": [0], "epochs": 4},
    }
    path = tmp_path / "retry.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert (
        main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--tracking-uri", uri, "--trial-retries", "1"])
        == 0
    )
    assert len(list(tmp_path.glob("pal-fault-*"))) == 2  # both faults fired
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "runs" / "retry" / "optuna.journal")))
    for i in range(2):
        trials = optuna.load_study(study_name=f"retry/cell00{i}", storage=storage).trials
        assert [t.number for t in trials] == [0, 1]
        assert all(t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [1, 2, 3] for t in trials)
        finals = optuna.load_study(study_name=f"retry/cell00{i}/finals", storage=storage).trials
        assert [(t.state, t.user_attrs["seed"]) for t in finals] == [(TrialState.COMPLETE, 0)]

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("retry")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'tune'")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")]
        assert sorted(steps) == [1, 2, 3], (r.data.tags["method"], steps)
    finals = client.search_runs([exp.experiment_id], "tags.stage = 'final'")
    assert len(finals) == 2 and all(r.info.status == "FINISHED" for r in finals)


@pytest.mark.own_ray
def test_without_retries_a_died_trial_is_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("PAL_STUDY_FAULT", "killonce:head.kind=pal@1")
    monkeypatch.setenv("PAL_STUDY_FAULT_DIR", str(tmp_path))
    path = write(tmp_path, "noretry", ["ce+pal"])
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--no-track"]) == 0
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "runs" / "noretry" / "optuna.journal")))
    states = [t.state for t in optuna.load_study(study_name="noretry/cell000", storage=storage).trials]
    assert sorted(s.name for s in states) == ["COMPLETE", "FAIL"]
