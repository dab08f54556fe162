"""A study's record and the names in it, defined once: the files of ``runs/<study>/``, the Optuna
study of each cell (``<study>/cell013`` for tuning, ``<study>/cell013/finals``), its jobs' and
checkpoints' names, the tracking runs' keys, and cell labels (``k=v,k=v``); each with its parser.

The study engine writes these names and the analysis reads them, so this module imports nothing
of the project: both may use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# -- the files of runs/<study>/ ----------------------------------------------------------------------
JOURNAL = "optuna.journal"  # Optuna's journal: every trial of every cell (the source of truth for resume)
STUDY_COPY = "study.json"  # the study's fingerprint, its resolved spec and each cell's budget
LOCK = ".lock"  # flock'd by the one driver running the study; says who (pid, host, started_at)
STATUS = "status.json"  # where the study stands, kept current by its running driver
SUMMARY = "summary.json"  # the cells' best configs, finals and claims' verdicts
SUMMARY_CSV = "summary.csv"  # the cells of summary.json as a table
CHECKPOINTS = "checkpoints"  # trial checkpoints, one directory per cell (unless stored elsewhere)
TUNE_LOGS = "tune"  # Ray Tune's trial directories
TRACKING_INCOMPLETE = "tracking_incomplete.json"  # what the tracking store never took (only then)

# The final-run numbers a finals trial records as Optuna user attributes, and the tracker logs as
# ``final_<key>``: the same set, so the journal and the tracking store give the same report.
SUMMARY_KEYS = (
    "val_acc",
    "val_acc_clean",
    "test_acc",
    "ece",
    "gamma_min",
    "margin_mean",
    "train_loss",
    "epochs_run",
    "train_time_s",
    "wall_time_s",
    "test_acc_many",
    "test_acc_medium",
    "test_acc_few",
    "proto_norm_min",
    "proto_norm_max",
    "proto_cos_max",
    "feature_norm_mean",
    "feature_norm_std",
)

# As the study spec validates a study's name (it names a directory: no "/").
_STUDY = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
_CELL_KEY = re.compile(r"cell([0-9]{3,})")
_FINALS = "finals"


# -- cells ------------------------------------------------------------------------------------------
def cell_key(index: int) -> str:
    """``cell013``: a cell's name in Optuna study names, checkpoint directories and tracking keys."""
    if index < 0:
        raise ValueError(f"a cell index is >= 0, not {index}")
    return f"cell{index:03d}"


def parse_cell_key(key: str) -> int | None:
    """The index of ``cell013`` (13); None for anything :func:`cell_key` does not write."""
    m = _CELL_KEY.fullmatch(key)
    if m is None or cell_key(int(m.group(1))) != key:
        return None
    return int(m.group(1))


# -- Optuna study names -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellStudyName:
    """What an Optuna study of a cell is: whose (the pal-study study), which cell, tuning or finals."""

    study: str
    cell: int
    finals: bool = False

    def __str__(self) -> str:
        return finals_study_name(self.study, self.cell) if self.finals else tuning_study_name(self.study, self.cell)


def tuning_study_name(study: str, index: int) -> str:
    """``<study>/cell013``: the Optuna study of a cell's tuning trials."""
    return f"{study}/{cell_key(index)}"


def finals_study_name(study: str, index: int) -> str:
    """``<study>/cell013/finals``: the Optuna study of a cell's final seeds."""
    return finals_of(tuning_study_name(study, index))


def finals_of(tuning_name: str) -> str:
    """The finals study beside a tuning study (``…/cell013`` -> ``…/cell013/finals``)."""
    return f"{tuning_name}/{_FINALS}"


def is_finals_study(name: str) -> bool:
    """Whether an Optuna study name is a finals study's (``…/finals``)."""
    return name.endswith(f"/{_FINALS}")


def tuning_of(finals_name: str) -> str:
    """The tuning study a finals study belongs to by name (``…/cell013/finals`` -> ``…/cell013``);
    a sensitivity cell's finals say in their ``tuning_study`` attribute whose tuning they use."""
    if not is_finals_study(finals_name):
        raise ValueError(f"not a finals study name: {finals_name!r}")
    return finals_name[: -len(_FINALS) - 1]


def parse_study_name(name: str) -> CellStudyName | None:
    """``<study>/cell013[/finals]`` parsed; None for any other name."""
    parts = name.split("/")
    finals = len(parts) == 3 and parts[2] == _FINALS
    if len(parts) != 2 and not finals:
        return None
    index = parse_cell_key(parts[1])
    if index is None or not re.fullmatch(_STUDY, parts[0]):
        return None
    return CellStudyName(parts[0], index, finals)


# -- jobs (Ray Tune trial directories) and checkpoints ---------------------------------------------
@dataclass(frozen=True)
class JobName:
    """A job of a study: a tuning trial (``trial``, its Optuna number) or a final run of ``seeds``."""

    cell: int
    stage: str  # "tune" | "final"
    trial: int | None = None
    seeds: tuple[int, ...] = ()

    def __str__(self) -> str:
        if self.stage == "tune":
            return tune_job_name(self.cell, self.trial or 0)
        return final_job_name(self.cell, self.seeds)


def tune_job_name(index: int, trial: int) -> str:
    """``cell003-tune-0007``: Optuna trial 7 of cell 3, as its Ray Tune trial directory starts."""
    return f"{cell_key(index)}-tune-{trial:04d}"


def final_job_name(index: int, seeds: Iterable[int]) -> str:
    """``cell003-final-s0-1``: the final run of cell 3 on seeds 0 and 1."""
    return f"{cell_key(index)}-final-s{'-'.join(str(s) for s in seeds)}"


_JOB = re.compile(r"(cell[0-9]+)-(?:tune-([0-9]{4,})|final-s([0-9]+(?:-[0-9]+)*)?)")


def parse_job_name(name: str) -> JobName | None:
    """A job's name parsed (a Ray Tune trial directory's ``_<tune id>`` suffix is ignored); None
    for any name :func:`tune_job_name` and :func:`final_job_name` do not write."""
    m = _JOB.fullmatch(name.split("_", 1)[0])
    if m is None:
        return None
    index = parse_cell_key(m.group(1))
    if index is None:
        return None
    if m.group(2) is not None:
        job = JobName(index, "tune", trial=int(m.group(2)))
    else:
        job = JobName(index, "final", seeds=tuple(int(s) for s in (m.group(3) or "").split("-") if s))
    return job if str(job) == name.split("_", 1)[0] else None


def tuning_checkpoint_name(trial: int) -> str:
    """``tune-0007.pt``: the checkpoint of tuning trial 7 in its cell's checkpoint directory."""
    return f"tune-{trial:04d}.pt"


def final_checkpoint_name(seed: int) -> str:
    """``final-seed3.pt``: the checkpoint of final seed 3 in its cell's checkpoint directory."""
    return f"final-seed{seed}.pt"


def parse_tuning_checkpoint(filename: str) -> int | None:
    """The trial number of ``tune-0007.pt``; None for any other file."""
    m = re.fullmatch(r"tune-([0-9]{4,})\.pt", filename)
    return int(m.group(1)) if m and tuning_checkpoint_name(int(m.group(1))) == filename else None


# -- tracking runs' keys ----------------------------------------------------------------------------
def run_key(index: int, suffix: str = "") -> str:
    """A tracking run's key within its study: ``cell013`` (the cell's run), ``cell013/tune/7``,
    ``cell013/final/seed3`` (with ``suffix`` ``tune/7`` or ``final/seed3``)."""
    return f"{cell_key(index)}/{suffix}" if suffix else cell_key(index)


# -- cell labels ------------------------------------------------------------------------------------
_LABEL_KEY = re.compile(r"^[A-Za-z_][\w.\-]*=")


def cell_label(factors: Mapping[str, Any]) -> str:
    """A cell's (or group's) label from its factors: ``k=v,k=v`` in their order; none: ``all``."""
    if not factors:
        return "all"
    return ",".join(f"{k}={_fmt(v)}" for k, v in factors.items())


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# How a factor reads in a cell's title: the method and the data set name stand bare; other keys by
# a word (their last dotted part where none is listed) before the value.
BARE_FACTORS = ("method", "data.name")
FACTOR_WORDS = {
    "data.noise.rate": "noise",
    "data.noise.kind": "noise kind",
    "data.imbalance.ratio": "imbalance",
    "optim.weight_decay": "wd",
    "head.scale": "scale",
    "loss.margin": "margin",
    "loss.drw_epoch": "DRW epoch",
}
TITLE_SEP = " · "


def cell_titles(factor_sets: Sequence[Mapping[str, Any]]) -> list[str]:
    """Short, readable names of cells that tell them apart (``ce+fnpal · noise 0.6``): only the
    factors whose value differs between the cells, the method first. Run names, chart legends and
    terminal lines are cut at ~30 characters; a label (``method=ce+fnpal,data.noise.rate=0.6``)
    spends them on keys. Falls back to the labels where two titles would coincide."""
    missing = object()
    keys: list[str] = []
    for factors in factor_sets:
        keys += [k for k in factors if k not in keys]
    varying = [k for k in keys if len({repr(f.get(k, missing)) for f in factor_sets}) > 1]
    varying.sort(key=lambda k: k != "method")  # stable: the rest keep the study's factor order
    words = {k: FACTOR_WORDS.get(k, k.rsplit(".", 1)[-1]) for k in varying}
    titles = []
    for factors in factor_sets:
        parts = [
            _fmt(factors[k]) if k in BARE_FACTORS else f"{words[k]} {_fmt(factors[k])}" for k in varying if k in factors
        ]
        titles.append(TITLE_SEP.join(parts) or str(factors.get("method", cell_label(factors))))
    if len(set(titles)) < len(titles):
        return [cell_label(f) for f in factor_sets]
    return titles


def factors_of(label: str) -> dict[str, str]:
    """``k=v,k=v`` (a cell or group label) as a dict of strings; ``all`` or "": {}. A value may
    hold commas (a part that does not start a ``key=`` continues the value before it)."""
    out: dict[str, str] = {}
    if not label or label == "all":
        return out
    key = None
    for part in label.split(","):
        if key is None or _LABEL_KEY.match(part):
            key, _, value = part.partition("=")
            out[key] = value
        else:
            out[key] += "," + part
    return out


__all__ = [
    "CHECKPOINTS",
    "JOURNAL",
    "LOCK",
    "STATUS",
    "STUDY_COPY",
    "SUMMARY",
    "SUMMARY_CSV",
    "SUMMARY_KEYS",
    "TRACKING_INCOMPLETE",
    "TUNE_LOGS",
    "CellStudyName",
    "JobName",
    "cell_key",
    "cell_label",
    "cell_titles",
    "factors_of",
    "final_checkpoint_name",
    "final_job_name",
    "finals_of",
    "finals_study_name",
    "is_finals_study",
    "parse_cell_key",
    "parse_job_name",
    "parse_study_name",
    "parse_tuning_checkpoint",
    "run_key",
    "tune_job_name",
    "tuning_checkpoint_name",
    "tuning_of",
    "tuning_study_name",
]
