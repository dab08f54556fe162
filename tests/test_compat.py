"""One test per seam in ``pal_study/_compat.py`` (the only place that touches private or
undocumented behaviour of Ray, Optuna, MLflow and torchvision): a dependency upgrade that
breaks one fails here, under the seam's name. Also: no private name of those libraries, and no
path outside the repository, anywhere else in the package."""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from pal_study import _compat
from pal_study.study.trial import bulky_keys

ROOT = Path(__file__).resolve().parents[1]


def test_keep_local_ray_on_loopback_sets_the_constant_ray_reads():
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    try:
        _compat.keep_local_ray_on_loopback()
        assert ray_constants.ENABLE_RAY_CLUSTER is False
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@pytest.mark.own_ray
def test_a_tune_callback_can_drop_bulky_fields_from_what_tune_keeps(tmp_path):
    """A real Tuner: the trial's retained last result no longer holds the *_json payload."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray import tune

    from pal_study.study.runner import RAY_ENV

    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)

    def trainable(config):
        tune.report({"value": 1.0, "blob_json": "x" * 10_000})

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        grid = tune.Tuner(
            trainable,
            run_config=tune.RunConfig(
                storage_path=str(tmp_path), verbose=0, callbacks=[_compat.drop_bulky_results_callback(bulky_keys)]
            ),
        ).fit()
    finally:
        ray.shutdown()
    last = grid[0].metrics
    assert last["value"] == 1.0 and "blob_json" not in last


def test_the_cluster_key_value_store_carries_a_drivers_word_to_a_worker(local_ray):
    """What a trial pack's channel rests on: a string the driver puts is read in a Ray worker
    process, overwritten, then gone once deleted."""
    import ray

    @ray.remote(num_cpus=0)
    def read(key: str) -> tuple[int, str | None]:
        return os.getpid(), _compat.kv_get(key)

    _compat.kv_put("compat-test/next", "first")
    _compat.kv_put("compat-test/next", "second")
    pid, seen = ray.get(read.remote("compat-test/next"))
    assert pid != os.getpid() and seen == "second"
    _compat.kv_delete("compat-test/next")
    assert ray.get(read.remote("compat-test/next"))[1] is None and _compat.kv_get("compat-test/next") is None
    _compat.kv_delete("compat-test/never-put")  # deleting what is not there is no error


def test_the_searcher_pickles_with_its_metric_and_mode(tmp_path):
    from pal_study.study import load_study
    from pal_study.study.engine import StudySearcher
    from pal_study.study.store import StudyStore
    from tests.support import write_study

    study = load_study(write_study(tmp_path, name="pickled"))
    searcher = StudySearcher(study, StudyStore(study, tmp_path / "runs"), slots=1)
    back = pickle.loads(pickle.dumps(searcher))
    assert (back.metric, back.mode) == ("val_acc", "max")


def test_resume_trial_reports_to_and_tells_a_trial_left_running(tmp_path):
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "j.journal")))
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.ask()
    left = study.ask()
    left.report(0.5, step=1)
    # A new process: a fresh study object over the same storage.
    again = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(tmp_path / "j.journal"))))
    trial = _compat.resume_trial(again, storage, left.number)
    assert trial.number == 1
    trial.report(0.7, step=2)
    again.tell(trial, 0.7)
    frozen = optuna.load_study(study_name="s", storage=storage).trials[1]
    assert frozen.state == optuna.trial.TrialState.COMPLETE and frozen.intermediate_values == {1: 0.5, 2: 0.7}


def test_journal_lock_path_is_the_file_optunas_lock_creates(tmp_path):
    journal = str(tmp_path / "optuna.journal")
    lock = JournalFileSymlinkLock(journal)
    assert not os.path.lexists(_compat.journal_lock_path(journal))
    lock.acquire()
    try:
        assert os.path.lexists(_compat.journal_lock_path(journal))
    finally:
        lock.release()
    assert not os.path.lexists(_compat.journal_lock_path(journal))


def test_lenient_cifar_loads_well_formed_files_with_another_md5(tmp_path, caplog):
    from torchvision.datasets import CIFAR10

    from pal_study.data.formats import write_cifar10

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 3, 32, 32), dtype=np.uint8)
    labels = (np.arange(30) % 10).tolist()
    write_cifar10(tmp_path, images[:20], labels[:20], images[20:], labels[20:])
    with pytest.raises(RuntimeError):
        CIFAR10(str(tmp_path), train=True)  # torchvision itself refuses them (md5)
    with caplog.at_level(logging.WARNING):
        ds = _compat.lenient_cifar(CIFAR10)(str(tmp_path), train=True)
    assert len(ds) == 20 and ds.classes and "differ from the official release" in caplog.text
    assert (np.asarray(ds.data) == images[:20].transpose(0, 2, 3, 1)).all()  # torchvision keeps HWC


PRIVATE = re.compile(r"\b(ray|optuna|mlflow|torchvision)(\.[A-Za-z0-9_]+)*\._[a-z]")


def test_no_private_library_name_and_no_outside_path_outside_compat():
    offenders = []
    for path in (ROOT / "pal_study").rglob("*.py"):
        if path.name == "_compat.py":
            continue
        text = path.read_text()
        for n, line in enumerate(text.splitlines(), 1):
            if (
                PRIVATE.search(line)
                or re.search(r"(?<!self)\._(trial_id|study_id|metric|mode)\b", line)
                or re.search(r"\b_(check_integrity|load_meta)\b", line)
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    for path in [*(ROOT / "pal_study").rglob("*.py"), ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "../shared" in line or "PAL_SPEC" in line or "STACK_NOTES" in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: points outside the repository: {line.strip()}")
    assert not offenders, "\n".join(offenders)
