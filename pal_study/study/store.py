"""A study's directory ``runs/<study>/``: the Optuna journal (the single source of truth for
resume), a copy of the study, its fingerprint, a lock against two drivers, Ray Tune's logs.

Optuna holds one study per cell for tuning (``<study>/cell003``) and one for its finals
(``<study>/cell003/finals``); finished work is only ever recorded there, atomically, so a driver
killed at any moment loses at most the trials that were running.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from pal_study._compat import journal_lock_path
from pal_study.errors import ConfigError
from pal_study.fingerprints import FINGERPRINT_VERSION, digest
from pal_study.fingerprints_v1 import fingerprint_v1
from pal_study.layout import (
    CHECKPOINTS,
    JOURNAL,
    LOCK,
    STUDY_COPY,
    cell_key,
    final_checkpoint_name,
    finals_study_name,
    is_finals_study,
    parse_tuning_checkpoint,
    tuning_checkpoint_name,
    tuning_study_name,
)
from pal_study.study.spec import Cell, Study

# Test hook: ``journal_lock@N`` SIGKILLs the driver on its N-th journal append, inside Optuna's
# locked section (the one instant a kill leaves the journal lock behind).
DRIVER_FAULT_ENV = "PAL_STUDY_DRIVER_FAULT"

optuna.logging.set_verbosity(optuna.logging.WARNING)


class StudyLockedError(ConfigError):
    """Another driver holds this study's directory."""


def fingerprint_payload(study: Study) -> dict[str, Any]:
    """What must not change under stored results: cells, their spaces, objective, sampler, pruner,
    finals epochs, as plain dumps. The budget (trials per cell) and the list of final seeds may grow
    on resume."""
    s = study.spec
    return {
        "cells": [
            {
                "label": c.label,
                "config": c.config.model_dump(mode="json"),
                "params": {k: p.model_dump(mode="json") for k, p in c.params.items()},
            }
            for c in study.cells
        ],
        "objective": s.objective.model_dump(mode="json"),
        "sampler": s.budget.sampler.model_dump(mode="json"),
        "pruner": s.budget.pruner.model_dump(mode="json"),
        "finals_epochs": s.finals.epochs,
    }


def fingerprint(study: Study) -> str:
    """The study's fingerprint (16 hex characters) of version :data:`FINGERPRINT_VERSION`."""
    return digest(fingerprint_payload(study))[:16]


class _JournalLock(JournalFileSymlinkLock):
    """Optuna's symlink lock, plus the driver-fault hook of the kill tests (inert otherwise)."""

    def __init__(self, filepath: str):
        super().__init__(filepath)
        rule = os.environ.get(DRIVER_FAULT_ENV, "")
        self._kill_at = int(rule.partition("@")[2]) if rule.startswith("journal_lock@") else 0
        self._acquired = 0

    def acquire(self) -> bool:
        ok = super().acquire()
        self._acquired += 1
        if self._kill_at and self._acquired == self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return ok


def lock_owner(study_dir: Path) -> dict[str, Any] | None:
    """Who holds (or last held) a study directory's lock: pid, host, started_at; None if never."""
    try:
        text = (study_dir / LOCK).read_text()
    except OSError:
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        owner = {"pid": int(text)} if text.strip().isdigit() else {}
    return owner if isinstance(owner, dict) else {}


class StudyStore:
    """Opens (or creates) ``runs_dir/<study name>`` for one driver at a time."""

    def __init__(self, study: Study, runs_dir: str | Path = "runs", storage: str | Path | None = None):
        self.study = study
        # Absolute: Optuna's journal lock is a symlink whose target is the journal path as given,
        # and its stale-lock check stats the link; a relative target resolves from the link's own
        # directory, dangles, and the check loops forever instead of expiring the lock.
        self.dir = Path(os.path.abspath(Path(runs_dir) / study.spec.name))
        # Trial checkpoints: DIR/<study>/checkpoints for `--storage DIR` or the study's
        # `checkpoint.dir` (a shared root several studies may use: each keeps to its own
        # subdirectory, which is all --restart removes), else beside the journal. Absolute:
        # trials run in other working directories.
        root = storage if storage is not None else study.spec.checkpoint.dir
        if root:
            self.checkpoints = Path(os.path.abspath(Path(root) / study.spec.name / CHECKPOINTS))
        else:
            self.checkpoints = self.dir / CHECKPOINTS
        # The version-1 fingerprint of stored results upgraded to the current version (see
        # check_fingerprint): the MLflow parent run of such a study still carries it.
        self.fingerprint_v1: str | None = None
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
            trials = storage.get_all_trials(storage.get_study_id_from_name(summary.study_name), deepcopy=False)
            n = sum(t.state.is_finished() for t in trials)
            if is_finals_study(summary.study_name):
                finals += n
            else:
                done += n
        return f"{self.dir}: {done} finished tuning trials and {finals} final runs"

    def acquire(self) -> None:
        """Take the directory's lock; a second driver on the same study is bad input (exit 2)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StudyLockedError(
                "another pal-study process is running this study; wait for it or stop it first", source=str(self.dir)
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time()}).encode())
        self._lock_fd = fd

    @property
    def held(self) -> bool:
        """Whether this process holds the study directory's lock."""
        return self._lock_fd is not None

    def clear_stale_journal_lock(self) -> bool:
        """Remove Optuna's journal lock left by a driver killed mid-append (True if there was one).

        Only the driver appends to the journal, and holding this directory's lock proves no other
        driver runs, so a journal lock found now is stale. Optuna would expire it after 30 s;
        removing it here (once, said in one line) saves the wait. Requires :meth:`acquire`."""
        assert self._lock_fd is not None, "acquire() first"
        lock = journal_lock_path(self.dir / JOURNAL)
        if not os.path.lexists(lock):
            return False
        os.unlink(lock)
        return True

    def release(self, *, remove_if_empty: bool = False) -> None:
        """Drop the lock; a directory that holds nothing but it is removed (a failed start)."""
        if remove_if_empty and self.dir.is_dir() and {p.name for p in self.dir.iterdir()} <= {LOCK}:
            (self.dir / LOCK).unlink(missing_ok=True)
            self.dir.rmdir()
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def discard(self) -> None:
        """``--restart``: remove everything stored for this study (the lock must be held)."""
        self._storage = None
        if self.checkpoints.is_dir() and not self.checkpoints.is_relative_to(self.dir):
            shutil.rmtree(self.checkpoints)
        for child in self.dir.iterdir():
            if child.name == LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def check_fingerprint(self) -> None:
        """Refuse to resume stored results of a different study under the same name.

        A ``study.json`` written before fingerprints were versioned (version 1) is verified with the
        version-1 computation and, if it matches, rewritten with the current fingerprint; the old
        one is kept as ``fingerprint_v1`` (the study's MLflow parent run is tagged with it)."""
        path = self.dir / STUDY_COPY
        if not path.exists():
            return
        stored = json.loads(path.read_text())
        version = stored.get("fingerprint_version", 1)
        if version == FINGERPRINT_VERSION:
            same = stored.get("fingerprint") == fingerprint(self.study)
        else:
            same = version == 1 and stored.get("fingerprint") == fingerprint_v1(fingerprint_payload(self.study))
        if same:
            self.fingerprint_v1 = stored.get("fingerprint") if version == 1 else stored.get("fingerprint_v1")
            if version != FINGERPRINT_VERSION:
                self.write_fingerprint()
            return
        budget = (stored.get("spec") or {}).get("budget") or {}
        why = (
            "it was run before tuning trials got their own seed (budget.tuning_seed): its tuning "
            "ran on seed 0, which is also a final seed"
            if "tuning_seed" not in budget
            else "its cells, search spaces, objective, sampler, pruner, final epochs or sensitivity changed"
        )
        raise ConfigError(
            f"{self.dir} holds results of a different version of study "
            f"{self.study.spec.name!r} ({why}); run again with --restart to discard them, or give "
            "the study a new name (pal-study report still reads the stored results)",
            source=str(self.study.path),
            key="name",
        )

    def write_fingerprint(self) -> None:
        """``study.json``: the fingerprint, the spec and each cell's budget, rewritten at every
        start (the budget and final seeds may grow); ``pal-study status`` reads it."""
        path = self.dir / STUDY_COPY
        s = self.study.spec
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "fingerprint": fingerprint(self.study),
                    "fingerprint_version": FINGERPRINT_VERSION,
                    **({"fingerprint_v1": self.fingerprint_v1} if self.fingerprint_v1 else {}),
                    "name": s.name,
                    "source": str(self.study.path),
                    "spec": s.model_dump(mode="json"),
                    "cells": [
                        {
                            "index": c.index,
                            "label": c.label,
                            "title": c.name,
                            "factors": c.factors,
                            "method": c.method,
                            "budget": self.study.budget(c),
                            "epochs": c.config.optim.epochs,
                            "finals_planned": len(s.finals.seeds),
                        }
                        for c in self.study.cells
                    ],
                },
                indent=1,
                default=str,
            )
        )
        os.replace(tmp, path)

    def update_owner(self, **info: Any) -> None:
        """Add facts about the running driver (e.g. its trial slots) to the lock file's record."""
        assert self._lock_fd is not None, "acquire() first"
        owner = {**(lock_owner(self.dir) or {}), **info}
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, json.dumps(owner).encode(), 0)

    # -- trial checkpoints ---------------------------------------------------------------------
    def checkpoint_dir(self, cell: Cell) -> Path:
        return self.checkpoints / cell_key(cell.index)

    def tuning_checkpoint(self, cell: Cell, number: int) -> Path:
        return self.checkpoint_dir(cell) / tuning_checkpoint_name(number)

    def final_checkpoint(self, cell: Cell, seed: int) -> Path:
        return self.checkpoint_dir(cell) / final_checkpoint_name(seed)

    def sweep_checkpoints(self) -> int:
        """Delete what no running trial needs: tuning checkpoints of finished Optuna trials (a
        pruned trial's worker may write one after the driver removed it) and torn temp files.
        Finals keep theirs (the trained model of the best config). Returns files removed."""
        removed = 0
        for cell in self.study.cells:
            d = self.checkpoint_dir(cell)
            if not d.is_dir():
                continue
            finished = {t.number for t in self.tuning_trials(cell) if t.state.is_finished()}
            for f in d.iterdir():
                stale = ".tmp" in f.name or parse_tuning_checkpoint(f.name) in finished
                if stale:
                    f.unlink(missing_ok=True)
                    removed += 1
        return removed

    # -- Optuna ----------------------------------------------------------------------------
    @property
    def storage(self) -> JournalStorage:
        if self._storage is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = str(self.dir / JOURNAL)
            self._storage = JournalStorage(JournalFileBackend(path, lock_obj=_JournalLock(path)))
        return self._storage

    def tuning_name(self, cell: Cell) -> str:
        return tuning_study_name(self.study.spec.name, cell.index)

    def finals_name(self, cell: Cell) -> str:
        return finals_study_name(self.study.spec.name, cell.index)

    @property
    def _direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if self.study.spec.objective.mode == "max" else "minimize"

    def open_tuning(
        self,
        cell: Cell,
        sampler: optuna.samplers.BaseSampler | None = None,
        pruner: optuna.pruners.BasePruner | None = None,
    ) -> optuna.Study:
        st = optuna.create_study(
            storage=self.storage,
            study_name=self.tuning_name(cell),
            direction=self._direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
        have = st.user_attrs
        if not have:
            st.set_user_attr("cell", cell.label)
            st.set_user_attr("factors", json.dumps(cell.factors, default=str))
            st.set_user_attr("method", cell.method)
        self._title(st, cell, have)
        return st

    @staticmethod
    def _title(st: optuna.Study, cell: Cell, have: dict[str, Any]) -> None:
        # The cell's short name, which optuna-dashboard shows beside the study's name (the name
        # itself, cellNNN, is what a resume finds the study by). Added to studies stored before.
        if have.get("title") != cell.name:
            st.set_user_attr("title", cell.name)

    def open_finals(self, cell: Cell) -> optuna.Study:
        st = optuna.create_study(
            storage=self.storage, study_name=self.finals_name(cell), direction=self._direction, load_if_exists=True
        )
        have = st.user_attrs
        if cell.is_variant:
            # A sensitivity cell has no tuning study of its own to say what it is. Each attribute
            # is written if missing, so a driver killed between two writes leaves none out.
            for key, value in (
                ("cell", cell.label),
                ("factors", json.dumps(cell.factors, default=str)),
                ("method", cell.method),
                ("variant", json.dumps(cell.variant, default=str)),
                ("tuning_study", self.tuning_name(self.study.tuning_cell(cell))),
            ):
                if have.get(key) != value:
                    st.set_user_attr(key, value)
        self._title(st, cell, have)
        return st

    def tuning_trials(self, cell: Cell) -> list[FrozenTrial]:
        """The cell's own tuning trials ([] for a sensitivity cell, which tunes nothing)."""
        if cell.is_variant:
            return []
        return self.open_tuning(cell).get_trials(deepcopy=False)

    def final_curves(self, cell: Cell) -> dict[int, dict[int, float]]:
        """Finished final runs' val_acc per epoch by seed (recorded since the curve was kept)."""
        trials = self.open_finals(cell).get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        return {int(t.user_attrs["seed"]): dict(t.intermediate_values) for t in trials}

    def final_results(self, cell: Cell) -> dict[int, dict[str, Any]]:
        """Finished final runs by seed (the last record wins if a seed was somehow recorded twice)."""
        out: dict[int, dict[str, Any]] = {}
        for t in self.open_finals(cell).get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            out[int(t.user_attrs["seed"])] = {
                **t.user_attrs,
                "state": t.state.name.lower(),
                "value": t.value,
                "params": dict(t.params),
            }
        return out


def best_trial(trials: list[FrozenTrial], mode: str) -> FrozenTrial | None:
    """The best COMPLETE trial (ties: the earlier one), or None."""
    done = [(t.value, t) for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        return None
    sign = 1.0 if mode == "max" else -1.0
    return max(done, key=lambda vt: (sign * vt[0], -vt[1].number))[1]


def state_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    out = {"completed": 0, "pruned": 0, "failed": 0, "running": 0}
    names = {
        TrialState.COMPLETE: "completed",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
    }
    for t in trials:
        if t.state in names:
            out[names[t.state]] += 1
    return out


def failure_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    """FAIL trials by their recorded reason."""
    out: dict[str, int] = {}
    for t in trials:
        if t.state == TrialState.FAIL:
            reason = str(t.user_attrs.get("reason") or "unknown")
            out[reason] = out.get(reason, 0) + 1
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
