"""A study's record in ``runs/<study>/``, read only: its Optuna journal (every cell's tuning and
finals studies), ``summary.json`` and ``study.json``. ``status``, ``report``, ``export``, the
figures, the parameter importance and the dashboard all read a study through this module.

Reading is safe while the study's driver runs: Optuna's journal file backend reads without its
lock (it stops before a half-written last line) and takes the lock only to append, which the
backend here refuses; nothing in the run directory is created, changed or locked by a reader.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial

from pal_study.layout import (
    JOURNAL,
    STUDY_COPY,
    SUMMARY,
    cell_key,
    cell_titles,
    is_finals_study,
    parse_study_name,
)

if TYPE_CHECKING:
    from pal_study._compat import FrozenStudy


class ReadOnlyJournal(JournalFileBackend):
    """Optuna's journal file backend that refuses every append (so never takes the journal's lock)."""

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise RuntimeError(f"{self._file_path} is opened read-only: a reader never writes a study's journal")


def open_journal_readonly(path: str | os.PathLike[str], titled: bool = False) -> JournalStorage:
    """An Optuna storage over an existing journal file that refuses every write (a dashboard's
    "delete study" too). FileNotFoundError where there is no such file: Optuna's backend would
    create one. ``titled``: the study list names each cell's studies with its short title too."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    if titled:
        return TitledStudies(ReadOnlyJournal(path))
    return JournalStorage(ReadOnlyJournal(path))


class TitledStudies(JournalStorage):
    """A read-only journal storage whose study list names each cell's studies with the cell's
    short title too (``quickstart/cell013 · ce+fnpal · noise 0.6``): optuna-dashboard lists and
    titles studies by ``study_name``. Only the list is renamed; every lookup by name or id (plots,
    trials) still sees the stored names, which is what a resume finds its studies by."""

    def get_all_studies(self) -> list[FrozenStudy]:
        studies = super().get_all_studies()
        titles = study_titles(studies)
        out = []
        for st in studies:
            title = titles.get(st.study_name)
            if title:
                st = copy.copy(st)
                st.study_name = f"{st.study_name} · {title}"
            out.append(st)
        return out


def study_titles(studies: list[FrozenStudy]) -> dict[str, str]:
    """Optuna study name -> its cell's short title: the ``title`` each study stores, else (studies
    stored before titles) computed from the stored factors of every cell in the journal."""
    factors: dict[str, dict[str, Any]] = {}
    for st in studies:
        parsed = parse_study_name(st.study_name)
        raw = st.user_attrs.get("factors")
        if parsed is not None and isinstance(raw, str):
            try:
                loaded = json.loads(raw)
            except ValueError:
                continue
            if isinstance(loaded, dict):  # anything else is not a cell's factors: no title from it
                factors[cell_key(parsed.cell)] = loaded
    keys = sorted(factors)
    computed = dict(zip(keys, cell_titles([factors[k] for k in keys]), strict=True))
    out: dict[str, str] = {}
    for st in studies:
        parsed = parse_study_name(st.study_name)
        if parsed is None:
            continue
        # A finals study has the factors of its cell's tuning study (same index) unless it is a
        # sensitivity cell's, which stores its own.
        stored = st.user_attrs.get("title")
        title = stored if isinstance(stored, str) and stored else computed.get(cell_key(parsed.cell))
        if isinstance(title, str) and title:
            out[st.study_name] = title
    return out


@dataclass
class CellStudies:
    """One cell's Optuna studies in the journal: tuning (none for a sensitivity cell) and finals."""

    index: int
    tuning: FrozenStudy | None = None
    finals: FrozenStudy | None = None


class StudyRecord:
    """What ``runs/<study>/`` holds, read on demand. ``journal``: a journal file elsewhere to read
    instead of the run directory's (a copy); ``storage``: an open storage of the study's journal
    to read instead (the running driver's own, replayed incrementally: cheap). Otherwise the
    journal is opened read-only, once, when first needed."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        journal: str | os.PathLike[str] | None = None,
        storage: JournalStorage | None = None,
    ):
        self.dir = Path(run_dir)
        self.journal_path = self.dir / JOURNAL if journal is None else Path(journal)
        self._storage = storage

    @classmethod
    def of(cls, where: StudyRecord | str | os.PathLike[str]) -> StudyRecord:
        """``where`` as a record: a record as is; a path names a journal file (its directory is the
        run directory)."""
        if isinstance(where, StudyRecord):
            return where
        return cls(Path(where).parent, journal=where)

    def __repr__(self) -> str:
        return f"StudyRecord({str(self.dir)!r})"

    # -- files --------------------------------------------------------------------------------
    def has_journal(self) -> bool:
        return self._storage is not None or self.journal_path.is_file()

    def summary(self) -> dict[str, Any]:
        """``summary.json`` ({} where there is none or it cannot be read)."""
        return _read_json(self.dir / SUMMARY)

    def study_copy(self) -> dict[str, Any]:
        """``study.json``: fingerprint, resolved spec, cells with their budgets ({} where none)."""
        return _read_json(self.dir / STUDY_COPY)

    # -- the journal -------------------------------------------------------------------------
    @property
    def storage(self) -> JournalStorage:
        """The journal, read-only (FileNotFoundError where the study has none)."""
        if self._storage is None:
            self._storage = open_journal_readonly(self.journal_path)
        return self._storage

    def studies(self) -> list[FrozenStudy]:
        """Every Optuna study in the journal, by name; [] without a journal."""
        if not self.has_journal():
            return []
        return sorted(self.storage.get_all_studies(), key=lambda s: s.study_name)

    def tuning_studies(self) -> list[FrozenStudy]:
        """The studies that are not finals (each cell's tuning), by name."""
        return [s for s in self.studies() if not is_finals_study(s.study_name)]

    def finals_studies(self) -> list[FrozenStudy]:
        """Each cell's finals study, by name."""
        return [s for s in self.studies() if is_finals_study(s.study_name)]

    def cells(self, study: str | None = None) -> dict[int, CellStudies]:
        """Cells by index, from the studies named ``<study>/cellNNN[/finals]`` (any study name
        where ``study`` is None; other names are left out)."""
        out: dict[int, CellStudies] = {}
        for s in self.studies():
            name = parse_study_name(s.study_name)
            if name is None or (study is not None and name.study != study):
                continue
            cell = out.setdefault(name.cell, CellStudies(name.cell))
            if name.finals:
                cell.finals = s
            else:
                cell.tuning = s
        return dict(sorted(out.items()))

    def trials(self, study: FrozenStudy | str) -> list[FrozenTrial]:
        """An Optuna study's trials (not copied: do not change them)."""
        name = study if isinstance(study, str) else study.study_name
        storage = self.storage
        return storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False)

    def load(self, study: FrozenStudy | str) -> optuna.Study:
        """An Optuna study over the read-only journal (for Optuna's own analyses)."""
        name = study if isinstance(study, str) else study.study_name
        return optuna.load_study(study_name=name, storage=self.storage)


def direction_mode(study: FrozenStudy) -> str:
    """``max`` or ``min``: the objective's direction as the study spec writes it."""
    return "max" if study.direction == StudyDirection.MAXIMIZE else "min"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


__all__ = ["CellStudies", "ReadOnlyJournal", "StudyRecord", "direction_mode", "open_journal_readonly"]
