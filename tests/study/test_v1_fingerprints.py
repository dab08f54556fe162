"""Results stored before fingerprints were versioned (version 1) still resume: a study run dir and a
trial checkpoint written then (``fixtures/``, see its README) are verified with the version-1
computation; the study is upgraded in place to the current version, and nothing finished runs again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pal_study.checkpoint import CheckpointPolicy, checkpoint_config_hash, load_checkpoint
from pal_study.config import TrainConfig, resolve
from pal_study.errors import ConfigError
from pal_study.fingerprints import FINGERPRINT_VERSION, canonical, digest
from pal_study.fingerprints_v1 import config_hash_v1
from pal_study.study import load_study
from pal_study.study.store import StudyStore, fingerprint
from pal_study.train import train
from tests.support import ROOT, journal, studies_by_name

FIXTURES = Path(__file__).parent / "fixtures"
V1_FINGERPRINT = "ea2d08800f3fcd40"  # what the fixture's study.json holds
# The fixture checkpoint's trial (fixtures/README.md).
V1_TRIAL = {
    "method": "ce",
    "threads": 1,
    "device": "cpu",
    "optim": {"epochs": 2},
    "data": {
        "name": "synthetic",
        "synthetic": {"num_classes": 3, "dim": 4, "train_per_class": 20, "test_per_class": 10},
    },
}
# Checkpoint hashes pal-study wrote before hashes were versioned, for configs that differ in what
# version 1 left out of its dumps (unset DRW keys, data.mnist1d at its default).
V1_CONFIG_HASHES = {
    "c7b9a4c02531d007e3ed50464ba6153ebb45da0cfd2a96a28a888a33af3af664": {"method": "ce"},
    "4967c55698bf4bbbee7636142b23b483fa43b89e632057e55dac8b035d9cf40d": {"method": "ce", "loss": {"drw_epoch": 2}},
    "950bfae4e426375dc85fdcbd630cd18095edf9e651198e12e875364024de4541": {"data": {"name": "mnist1d"}},
    "75d9153a9e52f17061a4627392931770209c487323f0f7a4d23673595c710b6f": {
        "data": {"name": "mnist1d", "mnist1d": {"num_samples": 10000}}
    },
}


def _v1_study(tmp_path: Path) -> Path:
    """The fixture study in ``tmp_path``, its stored run dir as ``runs/v1_digits``."""
    for name in ("v1_digits.yaml", "search_spaces"):
        src = FIXTURES / "v1_study" / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    shutil.copytree(FIXTURES / "v1_study" / "run_dir", tmp_path / "runs" / "v1_digits")
    return tmp_path / "v1_digits.yaml"


def _stored(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "runs" / "v1_digits" / "study.json").read_text())


def test_the_canonical_text_is_versioned_sorted_and_complete():
    dump = TrainConfig().model_dump(mode="json")
    text = canonical(dump)
    assert json.loads(text) == {"fingerprint_version": FINGERPRINT_VERSION, **dump}
    assert text == canonical(dict(reversed(dump.items())))  # key order does not matter
    assert digest(dump) != digest({**dump, "seed": 1})
    with pytest.raises(ValueError):
        canonical({"fingerprint_version": 1})


@pytest.mark.parametrize("h", sorted(V1_CONFIG_HASHES))
def test_v1_checkpoint_hashes_derive_from_the_plain_dump(h):
    cfg = TrainConfig.model_validate(V1_CONFIG_HASHES[h])
    plain = resolve(cfg).model_dump(mode="json")
    for key in ("threads", "device"):
        plain.pop(key)
    assert config_hash_v1(plain) == h
    assert checkpoint_config_hash(cfg) == digest(plain) != h


def test_a_v1_checkpoint_resumes(tmp_path):
    path = tmp_path / "trial.pt"
    shutil.copy(FIXTURES / "v1_trial.pt", path)
    cfg = TrainConfig.model_validate(V1_TRIAL)
    h = checkpoint_config_hash(cfg)
    assert load_checkpoint(path, h, config=cfg)["epoch"] == 1
    assert load_checkpoint(path, h) is None  # a v1 hash is verified against the trial's config only
    other = cfg.model_copy(update={"seed": 1})
    assert load_checkpoint(path, checkpoint_config_hash(other), config=other) is None  # another trial's
    result = train(cfg, checkpoint=CheckpointPolicy(path, every_epochs=1, keep_final=True))
    assert result.resumed_from_epoch == 1 and len(result.history) == 2
    state = load_checkpoint(path, h)  # rewritten with the current hash
    assert state["epoch"] == 2 and state["config_hash_version"] == FINGERPRINT_VERSION


def test_a_v1_study_dir_is_upgraded_in_place(tmp_path):
    study = load_study(_v1_study(tmp_path))
    store = StudyStore(study, tmp_path / "runs")
    assert _stored(tmp_path)["fingerprint"] == V1_FINGERPRINT and "fingerprint_version" not in _stored(tmp_path)
    store.check_fingerprint()
    stored = _stored(tmp_path)
    assert stored["fingerprint"] == fingerprint(study) != V1_FINGERPRINT
    assert stored["fingerprint_version"] == FINGERPRINT_VERSION and stored["fingerprint_v1"] == V1_FINGERPRINT
    assert store.fingerprint_v1 == V1_FINGERPRINT
    assert sorted(p.name for p in store.dir.iterdir()) == ["optuna.journal", "study.json"]  # no temporary left
    again = StudyStore(study, tmp_path / "runs")
    again.check_fingerprint()  # the upgraded copy resumes, and still knows its v1 fingerprint
    assert again.fingerprint_v1 == V1_FINGERPRINT and _stored(tmp_path) == stored


@pytest.mark.parametrize("upgraded", [False, True])
def test_a_changed_v1_study_still_asks_for_restart(tmp_path, upgraded):
    path = _v1_study(tmp_path)
    if upgraded:
        StudyStore(load_study(path), tmp_path / "runs").check_fingerprint()
    before = _stored(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["base"]["optim"]["epochs"] = 3
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"different version of study 'v1_digits'.*--restart"):
        StudyStore(load_study(path), tmp_path / "runs").check_fingerprint()
    assert _stored(tmp_path) == before  # a mismatch rewrites nothing


def test_a_v1_study_resumes_without_running_anything_again(tmp_path):
    path = _v1_study(tmp_path)
    runs = tmp_path / "runs"

    def finished() -> dict:
        return {
            (name, t.number): (t.state, t.value, t.datetime_complete)
            for name, s in studies_by_name(journal(runs, "v1_digits")).items()
            for t in s.trials
            if t.state.is_finished()
        }

    before = finished()
    assert len(before) == 2 * 2 + 2  # 2 cells: 2 tuning trials and 1 final each
    cmd = [sys.executable, "-m", "pal_study.cli", "run", str(path), "--runs-dir", str(runs), "--no-track"]
    # The study's search space is found relative to it, in tmp_path; pal_study is this checkout's.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 tuning trials and 2 final runs finished, 0 interrupted" in done.stdout + done.stderr
    assert finished() == before
    stored = _stored(tmp_path)
    assert stored["fingerprint_version"] == FINGERPRINT_VERSION and stored["fingerprint_v1"] == V1_FINGERPRINT
