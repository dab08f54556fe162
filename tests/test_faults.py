"""Faults in trials: a NaN loss, an exception, a process killed like the OS would — each marked
failed with its reason in Optuna and MLflow while the study goes on; all failing → exit 1."""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from pal_study.cli import main

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, name: str, methods: list[str], **base) -> Path:
    spec = {"name": name, "base": {"data": {"name": "digits"}, "optim": {"epochs": 2, **base}},
            "factors": {"method": methods}, "search": [str(ROOT / "search_spaces/weight_decay.yaml")],
            "budget": {"trials_per_cell": 2, "pruner": {"name": "none"}}, "finals": {"seeds": [0]}}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


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
    out = capsys.readouterr().out
    assert "no tuning trial completed" in out


def test_a_study_whose_every_trial_fails_exits_1_with_the_causes(tmp_path, capsys):
    path = write(tmp_path, "allnan", ["ce", "gce"], lr=1.0e9)
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--no-track"]) == 1
    err = capsys.readouterr().err
    assert "every trial failed; causes:" in err and "Traceback" not in err
    import re

    counts = [int(n) for n in re.findall(r"(\d+) × non-finite training loss \(nan\) in epoch \d", err)]
    assert sum(counts) == 4, err
