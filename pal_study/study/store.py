"""A study's directory ``runs/<study>/``: the Optuna journal (the single source of truth for
resume), a copy of the study, its fingerprint, a lock against two drivers, Ray Tune's logs.

Optuna holds one study per cell for tuning (``<study>/cell003``) and one for its finals
(``<study>/cell003/finals``); finished work is only ever recorded there, atomically, so a driver
killed at any moment loses at most the trials that were running.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from pal_study.config import ConfigError
from pal_study.study.spec import Cell, Study

JOURNAL = "optuna.journal"
STUDY_COPY = "study.json"

optuna.logging.set_verbosity(optuna.logging.WARNING)


class StudyLockedError(ConfigError):
    """Another driver holds this study's directory."""


def fingerprint(study: Study) -> str:
    """What must not change under stored results: cells, their spaces, objective, sampler, pruner,
    finals epochs. The budget (trials per cell) and the list of final seeds may grow on resume."""
    s = study.spec
    payload = {
        "cells": [
            {"label": c.label, "config": c.config.model_dump(mode="json"),
             "params": {k: p.model_dump(mode="json") for k, p in c.params.items()}}
            for c in study.cells
        ],
        "objective": s.objective.model_dump(mode="json"),
        "sampler": s.budget.sampler.model_dump(mode="json"),
        "pruner": s.budget.pruner.model_dump(mode="json"),
        "finals_epochs": s.finals.epochs,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class StudyStore:
    """Opens (or creates) ``runs_dir/<study name>`` for one driver at a time."""

    def __init__(self, study: Study, runs_dir: str | Path = "runs"):
        self.study = study
        self.dir = Path(runs_dir) / study.spec.name
        self._lock_fd: int | None = None
        self._storage: JournalStorage | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.dir / JOURNAL).exists()

    def describe_stored(self) -> str:
        """One line on what is stored (said before ``--restart`` discards it)."""
        if not self.exists():
            return f"{self.dir}: nothing stored"
        storage = self.storage
        done = finals = 0
        for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
            trials = storage.get_all_trials(summary._study_id, deepcopy=False)
            n = sum(t.state.is_finished() for t in trials)
            if summary.study_name.endswith("/finals"):
                finals += n
            else:
                done += n
        return f"{self.dir}: {done} finished tuning trials and {finals} final runs"

    def acquire(self) -> None:
        """Take the directory's lock; a second driver on the same study is bad input (exit 2)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StudyLockedError(
                "another pal-study process is running this study; wait for it or stop it first",
                source=str(self.dir)) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def release(self, *, remove_if_empty: bool = False) -> None:
        """Drop the lock; a directory that holds nothing but it is removed (a failed start)."""
        if remove_if_empty and self.dir.is_dir() and {p.name for p in self.dir.iterdir()} <= {".lock"}:
            (self.dir / ".lock").unlink(missing_ok=True)
            self.dir.rmdir()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def discard(self) -> None:
        """``--restart``: remove everything stored for this study (the lock must be held)."""
        self._storage = None
        for child in self.dir.iterdir():
            if child.name == ".lock":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def check_fingerprint(self) -> None:
        """Refuse to resume stored results of a different study under the same name."""
        path = self.dir / STUDY_COPY
        fp = fingerprint(self.study)
        if path.exists():
            stored = json.loads(path.read_text())
            if stored.get("fingerprint") != fp:
                raise ConfigError(
                    f"{self.dir} holds results of a different version of study "
                    f"{self.study.spec.name!r} (its cells, search spaces, objective, sampler, pruner "
                    "or final epochs changed); run again with --restart to discard them, or give "
                    "the study a new name", source=str(self.study.path), key="name")

    def write_fingerprint(self) -> None:
        path = self.dir / STUDY_COPY
        if path.exists():
            return
        fp = fingerprint(self.study)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "fingerprint": fp, "name": self.study.spec.name, "source": str(self.study.path),
            "spec": self.study.spec.model_dump(mode="json"),
            "cells": [{"index": c.index, "label": c.label, "factors": c.factors, "method": c.method}
                      for c in self.study.cells],
        }, indent=1, default=str))
        os.replace(tmp, path)

    # -- Optuna ----------------------------------------------------------------------------
    @property
    def storage(self) -> JournalStorage:
        if self._storage is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._storage = JournalStorage(JournalFileBackend(str(self.dir / JOURNAL)))
        return self._storage

    def tuning_name(self, cell: Cell) -> str:
        return f"{self.study.spec.name}/cell{cell.index:03d}"

    def finals_name(self, cell: Cell) -> str:
        return f"{self.tuning_name(cell)}/finals"

    def open_tuning(self, cell: Cell, sampler: optuna.samplers.BaseSampler | None = None,
                    pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
        direction = "maximize" if self.study.spec.objective.mode == "max" else "minimize"
        st = optuna.create_study(storage=self.storage, study_name=self.tuning_name(cell), direction=direction,
                                 sampler=sampler, pruner=pruner, load_if_exists=True)
        if not st.user_attrs:
            st.set_user_attr("cell", cell.label)
            st.set_user_attr("factors", json.dumps(cell.factors, default=str))
            st.set_user_attr("method", cell.method)
        return st

    def open_finals(self, cell: Cell) -> optuna.Study:
        direction = "maximize" if self.study.spec.objective.mode == "max" else "minimize"
        return optuna.create_study(storage=self.storage, study_name=self.finals_name(cell),
                                   direction=direction, load_if_exists=True)

    def tuning_trials(self, cell: Cell) -> list[FrozenTrial]:
        return self.open_tuning(cell).get_trials(deepcopy=False)

    def final_results(self, cell: Cell) -> dict[int, dict[str, Any]]:
        """Finished final runs by seed (the last record wins if a seed was somehow recorded twice)."""
        out: dict[int, dict[str, Any]] = {}
        for t in self.open_finals(cell).get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            out[int(t.user_attrs["seed"])] = {**t.user_attrs, "state": t.state.name.lower(), "value": t.value,
                                              "params": dict(t.params)}
        return out


def best_trial(trials: list[FrozenTrial], mode: str) -> FrozenTrial | None:
    """The best COMPLETE trial (ties: the earlier one), or None."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(done, key=lambda t: (sign * t.value, -t.number))


def state_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    out = {"completed": 0, "pruned": 0, "failed": 0, "running": 0}
    names = {TrialState.COMPLETE: "completed", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running"}
    for t in trials:
        if t.state in names:
            out[names[t.state]] += 1
    return out


def jsonable(value: Any) -> Any:
    """Optuna user attrs must be JSON: floats that are NaN/inf become None."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
