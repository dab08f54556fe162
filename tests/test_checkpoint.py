"""Per-trial checkpoints: atomic files, bad files ignored, exact resume (in process and after a
real SIGKILL), kept final models, the "auto" interval. Real files, real training on digits."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import pal_study.checkpoint as ckpt
from pal_study.checkpoint import (
    CheckpointPolicy,
    SaveSchedule,
    auto_interval,
    build_model_from_checkpoint,
    checkpoint_config_hash,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)
from pal_study.config import TrainConfig, resolve
from pal_study.train import build_dataset_for, train

# Digits recipe: SGD momentum 0.9, cosine schedule with 1 warm-up epoch, grad clip; threads pinned
# so the subprocesses compute exactly what this process does.
CFG = TrainConfig(method="ce+fnpal", optim={"epochs": 6}, threads=1)
ROOT = Path(__file__).resolve().parents[1]


def strip(history):
    """History without the timing fields (the only ones a resumed trial may differ in)."""
    return [{k: v for k, v in e.items() if not k.endswith("time_s")} for e in history]


def assert_same_trial(a: dict, b: dict) -> None:
    assert strip(a["history"]) == strip(b["history"])
    fa, fb = ({k: v for k, v in d["final"].items() if not k.endswith("time_s")} for d in (a, b))
    assert fa == fb
    for key in (
        "status",
        "epochs_completed",
        "per_class_acc",
        "prototype_geometry",
        "feature_norm",
        "reliability",
        "config",
    ):
        assert a[key] == b[key], key


@pytest.fixture(scope="module")
def base():
    """The uninterrupted 6-epoch trial."""
    return train(CFG)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A trial checkpointing every epoch whose caller stopped it after epoch 3: the file holds
    epoch 2 (the stopped epoch is never saved)."""
    path = tmp_path_factory.mktemp("stopped") / "trial.pt"
    seen = []
    r = train(CFG, lambda m: seen.append(m.epoch) or m.epoch == 3, checkpoint=CheckpointPolicy(path, every_epochs=1))
    assert r.status == "stopped" and seen == [1, 2, 3]
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A completed trial that kept its final checkpoint (and saved nothing else)."""
    path = tmp_path_factory.mktemp("final") / "trial.pt"
    r = train(CFG, checkpoint=CheckpointPolicy(path, every_epochs=0, keep_final=True))
    return r, path


def copy_of(path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt" / "trial.pt"
    dst.parent.mkdir()
    shutil.copy(path, dst)
    return dst


# --------------------------------------------------------------------------------------------
# Files


def test_save_load_roundtrip_is_atomic_and_leaves_no_tmp(tmp_path):
    path = tmp_path / "deep" / "dir" / "c.pt"
    state = {
        "config_hash": "h",
        "config": {"a": 1},
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "epoch": 3,
        "model": {"w": torch.arange(6.0).view(2, 3)},
        "optimizer": {},
        "scheduler": {"last_epoch": 9},
        "rng": {"python": (3, (1, 2), None)},
        "history": [{"epoch": 1, "val_acc": None}],
    }
    save_checkpoint(path, state)
    assert os.listdir(path.parent) == ["c.pt"]
    got = load_checkpoint(path, "h")
    assert got["format"] == "pal-study-checkpoint" and got["version"] == 1
    assert torch.equal(got["model"]["w"], state["model"]["w"])
    assert got["history"] == state["history"] and got["rng"]["python"] == (3, (1, 2), None)
    assert load_checkpoint(tmp_path / "missing.pt", "h") is None
    assert load_checkpoint(path, None) is not None  # None: no config check


def test_failed_save_keeps_the_old_file_and_removes_its_tmp(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"epoch": 2})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.pt"]


def test_stale_tmp_of_a_dead_writer_is_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    stale = tmp_path / f"c.pt.tmp-{dead.stdout.strip()}"
    stale.write_bytes(b"torn")
    live = tmp_path / f"c.pt.tmp-{os.getppid()}"  # a live process's: left alone
    live.write_bytes(b"in progress")
    assert ckpt.remove_stale_tmp(tmp_path / "c.pt") == [stale]
    assert live.exists() and not stale.exists()


def test_bad_files_are_ignored_with_one_warning(tmp_path, stopped, caplog):
    h = checkpoint_config_hash(CFG)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    other_version = tmp_path / "v0.pt"
    raw = torch.load(stopped, weights_only=True)
    raw["version"] = 0
    torch.save(raw, other_version)
    not_ours = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, not_ours)
    for path, why in ((garbage, "unreadable"), (other_version, "version"), (not_ours, "not a pal-study")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pal_study.checkpoint"):
            assert load_checkpoint(path, h) is None
        assert len(caplog.records) == 1 and str(path) in caplog.text and why in caplog.text


def test_foreign_config_is_ignored(tmp_path, stopped, caplog):
    path = copy_of(stopped, tmp_path)
    other = CFG.model_copy(update={"optim": CFG.optim.model_copy(update={"lr": 0.01})})
    with caplog.at_level(logging.WARNING, logger="pal_study.checkpoint"):
        r = train(other, lambda m: m.epoch == 1, checkpoint=CheckpointPolicy(path, every_epochs=0))
    assert r.resumed_from_epoch is None and r.epochs_completed == 1
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "config" in warnings[0].getMessage() and str(path) in warnings[0].getMessage()


def test_checkpoint_of_another_network_is_ignored(tmp_path, stopped, caplog):
    """Same config hash but a state that does not fit the model (the code changed in between):
    warned about and ignored before anything is loaded."""
    path = tmp_path / "trial.pt"
    state = torch.load(stopped, weights_only=True)
    state["model"]["head.extra"] = torch.zeros(2)
    torch.save(state, path)
    with caplog.at_level(logging.WARNING):
        r = train(CFG, lambda m: m.epoch == 1, checkpoint=CheckpointPolicy(path, every_epochs=0))
    assert r.resumed_from_epoch is None and r.epochs_completed == 1
    assert "does not match" in caplog.text and str(path) in caplog.text


def test_config_hash_ignores_threads_and_device_only():
    h = checkpoint_config_hash(CFG)
    assert h == checkpoint_config_hash(CFG.model_copy(update={"threads": 7, "device": "cpu"}))
    assert h == checkpoint_config_hash(resolve(CFG))  # resolved or not: the same trial
    assert h != checkpoint_config_hash(CFG.model_copy(update={"seed": 1}))
    assert h != checkpoint_config_hash(CFG.model_copy(update={"compile": True}))


def test_policy_validation():
    assert CheckpointPolicy("a/b.pt").path == Path("a/b.pt")
    for bad in (-1, "often", 1.5, True):
        with pytest.raises(ValueError, match="every_epochs"):
            CheckpointPolicy(Path("x.pt"), every_epochs=bad)


# --------------------------------------------------------------------------------------------
# Resume


def test_torn_checkpoint_restarts_from_epoch_1(tmp_path, stopped, base, caplog):
    path = copy_of(stopped, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    seen = []
    with caplog.at_level(logging.WARNING, logger="pal_study.checkpoint"):
        r = train(CFG, lambda m: seen.append(m.epoch), checkpoint=CheckpointPolicy(path, every_epochs=1))
    assert "unreadable" in caplog.text and str(path) in caplog.text
    assert seen == [1, 2, 3, 4, 5, 6] and r.resumed_from_epoch is None
    assert strip(r.history) == strip(base.history)
    assert load_checkpoint(path, checkpoint_config_hash(CFG))["epoch"] == 5  # rewritten; 6 is final


def test_stopped_trial_resumes_exactly(tmp_path, stopped, base, caplog):
    path = copy_of(stopped, tmp_path)
    assert load_checkpoint(path, checkpoint_config_hash(CFG))["epoch"] == 2
    seen = []
    with caplog.at_level(logging.INFO, logger="pal_study.train"):
        r = train(CFG, lambda m: seen.append(m.epoch), checkpoint=CheckpointPolicy(path, every_epochs=1))
    assert "resumed from epoch 2" in caplog.text
    assert seen == [3, 4, 5, 6] and r.resumed_from_epoch == 2 and r.status == "completed"
    assert_same_trial(r.to_dict(), base.to_dict())
    assert r.final["test_acc"] == base.final["test_acc"] and r.final["train_loss"] == base.final["train_loss"]
    assert r.checkpoint_path == str(path) and r.wall_time_s > 0


SCRIPT = """
import json, os, signal, sys
from pathlib import Path
from pal_study.checkpoint import CheckpointPolicy
from pal_study.config import TrainConfig
from pal_study.train import train

cfg = TrainConfig.model_validate(json.loads(sys.argv[1]))
kill_at = int(sys.argv[3])

def on_epoch(m):
    if m.epoch == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

result = train(cfg, on_epoch, checkpoint=CheckpointPolicy(Path(sys.argv[2]), every_epochs=1))
result.save(sys.argv[4])
"""


def test_sigkilled_trial_resumes_exactly(tmp_path, base):
    """Killed by SIGKILL while reporting epoch 4 (epoch 3 checkpointed, epoch 4 lost), then run
    again in a new process: the same result as the uninterrupted trial."""
    script = tmp_path / "trial.py"
    script.write_text(textwrap.dedent(SCRIPT))
    path, out = tmp_path / "ckpt" / "trial.pt", tmp_path / "result.json"
    args = [sys.executable, str(script), json.dumps(CFG.model_dump(mode="json")), str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([*args, "4", str(out)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists() and os.listdir(path.parent) == ["trial.pt"]
    rerun = subprocess.run([*args, "0", str(out)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["resumed_from_epoch"] == 3 and got["status"] == "completed"
    expected = tmp_path / "base.json"
    base.save(expected)
    assert_same_trial(got, json.loads(expected.read_text()))


def test_failed_epoch_is_not_saved(tmp_path):
    cfg = TrainConfig(method="ce", optim={"lr": 1e30, "grad_clip": 0.0, "epochs": 5, "warmup_epochs": 0}, threads=1)
    path = tmp_path / "c.pt"
    r = train(cfg, checkpoint=CheckpointPolicy(path, every_epochs=1))
    assert r.status == "failed"
    saved = load_checkpoint(path, checkpoint_config_hash(cfg))
    if r.epochs_completed == 0:
        assert saved is None and r.checkpoint_path is None
    else:
        assert saved["epoch"] == r.epochs_completed and all(math.isfinite(h["train_loss"]) for h in saved["history"])


# --------------------------------------------------------------------------------------------
# Final checkpoints and when saves happen


def test_kept_final_model_scores_the_trial_test_acc(finished):
    r, path = finished
    assert r.checkpoint_path == str(path) and r.resumed_from_epoch is None
    config, weights = load_model_weights(path)
    assert config == r.config and "head.prototypes" in weights
    model = build_model_from_checkpoint(path)
    data = build_dataset_for(resolve(CFG))
    with torch.no_grad():
        pred = torch.cat([model(data.test_x[i : i + 256])[1].argmax(1) for i in range(0, len(data.test_y), 256)])
    assert (pred == data.test_y).sum().item() / len(data.test_y) == r.final["test_acc"]


def test_finished_checkpoint_returns_without_training(finished, base):
    r, path = finished

    def on_epoch(m):
        raise AssertionError("a finished trial must not train")

    again = train(CFG, on_epoch, checkpoint=CheckpointPolicy(path, every_epochs=0, keep_final=True))
    assert again.resumed_from_epoch == 6 and again.status == "completed" and again.epochs_completed == 6
    assert_same_trial(again.to_dict(), r.to_dict())
    assert_same_trial(again.to_dict(), base.to_dict())


def test_final_epoch_is_saved_only_with_keep_final(tmp_path, monkeypatch):
    saves = []
    real = ckpt.save_checkpoint
    monkeypatch.setattr(ckpt, "save_checkpoint", lambda p, s: (saves.append(s["epoch"]), real(p, s)))
    cfg = CFG.model_copy(update={"optim": CFG.optim.model_copy(update={"epochs": 5})})
    r = train(cfg, checkpoint=CheckpointPolicy(tmp_path / "a.pt", every_epochs=2))
    assert saves == [2, 4] and r.checkpoint_path == str(tmp_path / "a.pt")  # the last one is left
    saves.clear()
    r = train(cfg.model_copy(update={"seed": 1}), checkpoint=CheckpointPolicy(tmp_path / "b.pt", every_epochs=5))
    assert saves == [] and r.checkpoint_path is None  # 5 divides the final epoch: still not saved
    r = train(
        cfg.model_copy(update={"seed": 2}),
        checkpoint=CheckpointPolicy(tmp_path / "c.pt", every_epochs=2, keep_final=True),
    )
    assert saves == [2, 4, 5]


def test_auto_interval_rule():
    assert auto_interval(0.001, 1.0) == 1  # 0.1 % of an epoch: save every epoch
    assert auto_interval(0.02, 1.0) == 1 and auto_interval(0.021, 1.0) == 2
    assert auto_interval(0.005, 0.017) == 15  # ceil(0.005 / (0.02 * 0.017)) = ceil(14.7)
    assert auto_interval(1.0, 1.0) == 50
    assert auto_interval(0.0, 1.0) == 1 and auto_interval(0.1, 0.0) == 1 and auto_interval(math.nan, 1.0) == 1


def test_auto_schedule_over_a_20_epoch_trial():
    """Save after epoch 1, then every auto_interval(mean save, mean epoch) epochs, re-planned."""
    s = SaveSchedule("auto")
    saved = []
    epoch_times = []
    for epoch in range(1, 21):
        epoch_times.append(0.03 if epoch == 1 else 0.017)  # a slower first epoch, like a real one
        if epoch < 20 and s.due(epoch):  # the final epoch is never a periodic save
            saved.append(epoch)
            s.saved(epoch, 0.006 if epoch == 1 else 0.004, epoch_times)
    # interval after epoch 1: ceil(6 ms / (2 % of 30 ms)) = 10; after epoch 11: mean save 5 ms,
    # mean epoch 18.2 ms -> 14, so the next (epoch 25) is past the trial.
    assert saved == [1, 11]
    # Resumed from the epoch-11 checkpoint (save times travel with it): the same plan continues.
    again = SaveSchedule("auto", last_saved=11, save_times=[0.006, 0.004], epoch_times=epoch_times[:11])
    assert again.next_auto == 25
    assert SaveSchedule(3).due(6) and not SaveSchedule(3).due(5) and not SaveSchedule(0).due(1)


def test_auto_policy_in_a_real_20_epoch_trial(tmp_path, monkeypatch):
    saves = []
    real = ckpt.save_checkpoint
    monkeypatch.setattr(ckpt, "save_checkpoint", lambda p, s: (saves.append(s["epoch"]), real(p, s)))
    cfg = TrainConfig(method="ce", optim={"epochs": 20}, threads=1)
    r = train(cfg, checkpoint=CheckpointPolicy(tmp_path / "c.pt"))
    assert r.status == "completed" and saves[0] == 1 and 20 not in saves
    assert saves == sorted(set(saves))
    assert load_checkpoint(tmp_path / "c.pt", checkpoint_config_hash(cfg))["epoch"] == saves[-1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_cuda_trial_resumes_and_its_model_loads_on_the_cpu(tmp_path):
    cfg = TrainConfig.model_validate(
        {"method": "ce+fnpal", "optim": {"epochs": 3}, "device": "cuda", "amp": True, "compile": False}
    )
    path = tmp_path / "c.pt"
    first = train(cfg, lambda m: m.epoch == 2, checkpoint=CheckpointPolicy(path, every_epochs=1))
    assert first.status == "stopped"
    r = train(cfg, checkpoint=CheckpointPolicy(path, every_epochs=1, keep_final=True))
    assert r.resumed_from_epoch == 1 and r.status == "completed" and len(r.history) == 3
    model = build_model_from_checkpoint(path)  # weights saved from the GPU, loaded on the CPU
    assert next(model.parameters()).device.type == "cpu"


def test_train_command_killed_and_rerun_continues_from_its_checkpoint(tmp_path):
    """`pal-study train --checkpoint-dir DIR`, SIGKILLed while reporting epoch 4 (a fault hook:
    the instant is certain), then the same command again: it says where it resumed and ends with
    the numbers of an uninterrupted run."""
    base = [
        sys.executable,
        "-m",
        "pal_study.cli",
        "train",
        "--set",
        "data.name=digits",
        "--set",
        "optim.epochs=6",
        "--set",
        "method=ce+fnpal",
        "--no-track",
        "--quiet",
    ]
    straight = subprocess.run(
        [*base, "--out", str(tmp_path / "straight.json")], capture_output=True, text=True, timeout=300
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    cmd = [
        *base,
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--checkpoint-every",
        "1",
        "--out",
        str(tmp_path / "resumed.json"),
    ]
    env = {**os.environ, "PAL_STUDY_FAULT": "killonce:seed=0@4", "PAL_STUDY_FAULT_DIR": str(tmp_path)}
    killed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "resumed.json").exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from epoch 3" in again.stderr
    a = json.loads((tmp_path / "straight.json").read_text())
    b = json.loads((tmp_path / "resumed.json").read_text())
    assert b["resumed_from_epoch"] == 3 and a["resumed_from_epoch"] is None
    timing = ("train_time_s", "eval_time_s")
    assert [{k: v for k, v in h.items() if k not in timing} for h in a["history"]] == [
        {k: v for k, v in h.items() if k not in timing} for h in b["history"]
    ]
    assert b["checkpoint_path"] == str(tmp_path / "ck" / "checkpoint.pt")


def test_train_command_rejects_a_bad_checkpoint_interval(tmp_path, capsys):
    from pal_study.cli import main

    assert (
        main(
            [
                "train",
                "--set",
                "data.name=digits",
                "--checkpoint-dir",
                str(tmp_path),
                "--checkpoint-every",
                "often",
                "--no-track",
            ]
        )
        == 2
    )
    assert "--checkpoint-every" in capsys.readouterr().err
