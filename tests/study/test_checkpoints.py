"""Trial checkpoints inside studies: a trial whose process or driver is SIGKILLed continues from
its last checkpoint and ends with exactly the metrics of an uninterrupted trial; it says so
(Optuna user attr and MLflow tag ``resumed_from_epoch``); tuning checkpoints go when their trial
ends, finals keep theirs, and ``export --weights`` writes each cell's trained model."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from pal_study.cli import main
from pal_study.config import TrainConfig
from pal_study.train import train
from tests.support import journal, studies_by_name  # the same small-study helpers

# Studies run on one local Ray per test process (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("local_ray")

ROOT = Path(__file__).resolve().parents[2]
SAME = ("val_acc", "val_acc_clean", "test_acc", "train_loss", "ece")


def uninterrupted(cfg: dict) -> dict:
    """The same trial straight through, in this process, with no checkpoint."""
    result = train(TrainConfig.model_validate(cfg))
    return result.final


@pytest.mark.slow
@pytest.mark.own_ray
def test_killed_trials_resume_from_their_checkpoints_with_the_same_metrics(tmp_path, monkeypatch):
    """A tuning trial's process SIGKILLed after epoch 3 and a final's after epoch 2 (a fault hook,
    so the instants are certain); --trial-retries hands them out again and each continues from
    the checkpoint it wrote after epoch 2 (resp. 1; the kill lands before the epoch's save)."""
    monkeypatch.setenv("PAL_STUDY_FAULT", "killonce:head.kind=pal@3;killonce:optim.epochs=5@2")
    monkeypatch.setenv("PAL_STUDY_FAULT_DIR", str(tmp_path))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = {
        "name": "ckpt",
        "base": {"data": {"name": "digits"}, "optim": {"epochs": 4}},
        "factors": {"method": ["ce+pal"]},
        "search": [str(ROOT / "search_spaces/weight_decay.yaml")],
        "budget": {"trials_per_cell": 2, "pruner": {"name": "none"}},
        "finals": {"seeds": [0, 1], "epochs": 5},
        "checkpoint": {"every_epochs": 1},
    }
    path = tmp_path / "ckpt.yaml"
    path.write_text(yaml.safe_dump(spec))
    runs = tmp_path / "runs"
    assert main(["run", str(path), "--runs-dir", str(runs), "--tracking-uri", uri, "--trial-retries", "1"]) == 0
    assert len(list(tmp_path.glob("pal-fault-*"))) == 2  # both faults fired

    st = studies_by_name(journal(runs, "ckpt"))
    tuning = st["ckpt/cell000"].trials
    assert [t.state for t in tuning] == [TrialState.COMPLETE] * 2
    resumed = [t for t in tuning if "resumed_from_epoch" in t.user_attrs]
    assert len(resumed) == 1 and resumed[0].user_attrs["resumed_from_epoch"] == 2
    assert sorted(resumed[0].intermediate_values) == [1, 2, 3, 4]
    finals = st["ckpt/cell000/finals"].trials
    assert sorted(t.user_attrs["seed"] for t in finals) == [0, 1]
    [final_resumed] = [t for t in finals if "resumed_from_epoch" in t.user_attrs]
    assert final_resumed.user_attrs["resumed_from_epoch"] == 1

    # Exactly the numbers of the same trials run straight through.
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("ckpt")
    [run] = client.search_runs(
        [exp.experiment_id], f"tags.optuna_trial = '{resumed[0].number}' and tags.stage = 'tune'"
    )
    assert run.data.tags["resumed_from_epoch"] == "2"
    cfg = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text())
    straight = uninterrupted(cfg)
    for key in ("val_acc", "val_acc_clean", "test_acc", "ece"):  # what Optuna keeps of a tuning trial
        assert resumed[0].user_attrs[key] == straight[key], key
    assert resumed[0].value == straight["val_acc"]
    fcfg = json.loads(final_resumed.user_attrs["config"])
    straight = uninterrupted(fcfg)
    for key in SAME:
        assert final_resumed.user_attrs[key] == straight[key], key
    # MLflow: each epoch once in the resumed tuning run.
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
    assert sorted(steps) == [1, 2, 3, 4]

    # Retention: no tuning checkpoint left; each final seed keeps its trained model.
    ckpts = sorted(p.name for p in (runs / "ckpt" / "checkpoints" / "cell000").iterdir())
    assert ckpts == ["final-seed0.pt", "final-seed1.pt"]

    # export --weights: the model beside its YAML reproduces the exported seed's test accuracy.
    out = tmp_path / "exports"
    assert main(["export", "ckpt", "--out", str(out), "--weights", "--tracking-uri", uri]) == 0
    [item] = json.loads((out / "ckpt" / "index.json").read_text())
    assert item["weights"] and (out / "ckpt" / item["weights"]).is_file()
    from pal_study.checkpoint import build_model_from_checkpoint
    from pal_study.train import build_dataset_for

    model = build_model_from_checkpoint(out / "ckpt" / item["weights"]).eval()
    exported_cfg = TrainConfig.model_validate(yaml.safe_load((out / "ckpt" / item["config"]).read_text()))
    data = build_dataset_for(exported_cfg)
    with torch.no_grad():
        correct = int((model(data.test_x)[1].argmax(1) == data.test_y).sum())
    assert correct / len(data.test_y) == item["test_acc_of_exported_seed"]


def test_export_weights_without_checkpoints_exits_2_and_writes_nothing(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = {
        "name": "nockpt",
        "base": {"data": {"name": "digits"}, "optim": {"epochs": 1}},
        "factors": {"method": ["ce"]},
        "budget": {"trials_per_cell": 1},
        "finals": {"seeds": [0]},
        "checkpoint": {"every_epochs": 0},
    }
    path = tmp_path / "nockpt.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--tracking-uri", uri]) == 0
    assert not (tmp_path / "runs" / "nockpt" / "checkpoints").exists()
    out = tmp_path / "exports"
    assert main(["export", "nockpt", "--out", str(out), "--weights", "--tracking-uri", uri]) == 2
    assert "--weights" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_a_driver_killed_mid_trial_resumes_the_trial_from_its_checkpoint(tmp_path):
    """A real SIGKILL of the driver and its trial processes once the running trial has
    checkpointed epoch 3; the rerun continues that trial after its saved epoch, with the same
    final numbers as the trial straight through."""
    spec = {
        "name": "drv",
        "base": {"data": {"name": "digits"}, "optim": {"epochs": 60}},
        "factors": {"method": ["ce+fnpal"]},
        "budget": {"trials_per_cell": 1},
        "finals": {"seeds": [0], "epochs": 2},
        "checkpoint": {"every_epochs": 1},
    }
    path = tmp_path / "drv.yaml"
    path.write_text(yaml.safe_dump(spec))
    cmd = [sys.executable, "-m", "pal_study.cli", "run", str(path), "--runs-dir", "runs", "--no-track"]
    ckpt = tmp_path / "runs" / "drv" / "checkpoints" / "cell000" / "tune-0000.pt"
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists():
                saved = torch.load(ckpt, weights_only=True, map_location="cpu")["epoch"]
                if saved >= 3:
                    break
            time.sleep(0.05)
        else:
            pytest.fail(f"no checkpoint of epoch 3 appeared: {proc.stderr.read().decode()[-2000:]}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    st = studies_by_name(journal(tmp_path / "runs", "drv"))
    [cut] = st["drv/cell000"].trials
    assert cut.state == TrialState.RUNNING
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [t] = studies_by_name(journal(tmp_path / "runs", "drv"))["drv/cell000"].trials
    assert t.state == TrialState.COMPLETE and t.user_attrs["resumed_from_epoch"] >= saved
    assert sorted(t.intermediate_values) == list(range(1, 61))
    from pal_study.study import load_study
    from pal_study.study.engine import StudySearcher
    from pal_study.study.store import StudyStore

    study = load_study(path)
    searcher = StudySearcher(study, StudyStore(study, tmp_path / "runs"), slots=1)
    straight = uninterrupted(searcher.trial_config(study.cells[0], dict(t.params)))
    assert t.value == straight["val_acc"]
    for key in ("val_acc", "val_acc_clean", "test_acc", "ece"):  # what Optuna keeps of a tuning trial
        assert t.user_attrs[key] == straight[key], key
    assert not ckpt.exists()


def test_restart_removes_only_the_studys_own_checkpoints_under_a_shared_root(tmp_path):
    from pal_study.study import load_study
    from pal_study.study.store import StudyStore
    from tests.support import write_study

    shared = tmp_path / "shared"
    other = shared / "other-study" / "checkpoints" / "cell000"
    other.mkdir(parents=True)
    (other / "final-seed0.pt").write_bytes(b"another study's model")
    study = load_study(write_study(tmp_path, name="mine", factors={"method": ["ce+fnpal"]}))
    store = StudyStore(study, tmp_path / "runs", storage=shared)
    assert store.checkpoints == shared / "mine" / "checkpoints"
    store.checkpoint_dir(study.cells[0]).mkdir(parents=True)
    store.tuning_checkpoint(study.cells[0], 0).write_bytes(b"x")
    store.acquire()
    try:
        store.discard()
    finally:
        store.release()
    assert not store.checkpoints.exists()
    assert (other / "final-seed0.pt").read_bytes() == b"another study's model"
