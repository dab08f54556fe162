"""A trial across the Ray boundary: the :class:`TrialJob` a worker gets and the :class:`TrialReport`
it sends back, each turned into and read from what Ray Tune carries here and nowhere else.

Tune keeps a trial's config (``param_space``: ``{"pal": {...}}``) as given, but flattens nested
dicts in reported results before searchers see them; so a report stays flat, and its nested parts
(details, history, held-back epochs) travel as JSON strings under keys ending in ``_json``
(:data:`BULKY_SUFFIX`): the driver drops those from what Tune keeps once the searcher has them.
Tune adds keys of its own to every result (``trial_id``, ``timestamp``, its flattened config...);
a report keeps them apart, in ``tune``, so a final's Optuna record holds what it always held.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pal_study.layout import final_job_name, tune_job_name

Stage = Literal["tune", "final"]

# The key of the study's part of a Tune config, and the suffix of a report's bulky fields.
TUNE_KEY = "pal"
BULKY_SUFFIX = "_json"

# What an epoch reports (``pal_study.train.EpochMetrics``; a test keeps the two the same).
EPOCH_KEYS = (
    "epoch",
    "train_loss",
    "val_acc",
    "val_acc_clean",
    "test_acc",
    "ece",
    "gamma_min",
    "margin_mean",
    "lr",
    "train_time_s",
    "eval_time_s",
)
# The scores of a trained config in its closing report (besides status, reason and timings).
SCORE_KEYS = (
    "val_acc",
    "val_acc_clean",
    "test_acc",
    "ece",
    "gamma_min",
    "margin_mean",
    "train_loss",
    "proto_norm_min",
    "proto_norm_max",
    "proto_cos_max",
    "feature_norm_mean",
    "feature_norm_std",
    "test_acc_many",
    "test_acc_medium",
    "test_acc_few",
)
# A closing report's own scalar fields, in the order they travel.
_CLOSING_FIELDS = (
    "status",
    "reason",
    "epochs_run",
    "wall_time_s",
    "train_time_s",
    "resumed_from_epoch",
    "checkpoint_path",
)
_BULKY = ("details", "history", "epochs")  # as details_json, history_json, epochs_json


def job_name(stage: str, cell: int, *, optuna_trial: int | None = None, seeds: tuple[int, ...] = ()) -> str:
    """A job's readable name, as in its Ray Tune trial directory: cell003-tune-0007, cell003-final-s0-1."""
    if stage == "tune":
        return tune_job_name(int(cell), int(optuna_trial or 0))
    return final_job_name(int(cell), seeds)


@dataclass(frozen=True)
class CheckpointPlan:
    """Where a trial saves as it goes (every ``every_epochs``): a tuning trial's one file, or one
    file per seed of a final."""

    every_epochs: int | str  # N > 0, or "auto" (see pal_study.checkpoint)
    path: str | None = None
    paths: dict[int, str] = field(default_factory=dict)

    def to_tune(self) -> dict[str, Any]:
        if self.paths:
            return {"paths": {str(s): p for s, p in self.paths.items()}, "every_epochs": self.every_epochs}
        return {"path": self.path, "every_epochs": self.every_epochs}

    @classmethod
    def from_tune(cls, d: Mapping[str, Any] | None) -> CheckpointPlan | None:
        if not d:
            return None
        paths = {int(s): str(p) for s, p in (d.get("paths") or {}).items()}
        return cls(every_epochs=d["every_epochs"], path=d.get("path"), paths=paths)


@dataclass(frozen=True)
class TrialJob:
    """What a worker gets: a tuning trial (one Optuna trial of a cell) or a final (the cell's best
    config over some of the final seeds). ``config`` is the resolved train config (JSON);
    ``decision_epochs`` the study pruner's plan (``{"from", "every"}``: which epochs a tuning trial
    reports at once); ``details``: send the MLflow artifacts' material in the closing report.
    ``pack``: the key under which the driver says what the trial's pack does next (None: the Tune
    trial runs this job only; see :mod:`pal_study.study.pack`). ``fused``: the tuning trials of
    one cell this job trains together as one model (:mod:`pal_study.fused_train`); their reports
    carry their name as ``member``.
    Fault injection for the harness's tests is not part of it: it comes from the worker's
    environment (``trainable.FAULT_ENV``)."""

    stage: Stage
    cell: int
    config: dict[str, Any]
    details: bool = True
    checkpoint: CheckpointPlan | None = None
    optuna_trial: int | None = None
    decision_epochs: dict[str, Any] | None = None
    seeds: tuple[int, ...] = ()
    best_trial: int | None = None
    pack: str | None = None
    fused: tuple[TrialJob, ...] = ()

    @property
    def name(self) -> str:
        if self.fused:  # a fused pack: named after its first member
            return f"{self.fused[0].name}-fused{len(self.fused)}"
        return job_name(self.stage, self.cell, optuna_trial=self.optuna_trial, seeds=self.seeds)

    def to_tune(self) -> dict[str, Any]:
        """The Tune config of the trial (what the searcher's ``suggest`` returns)."""
        ckpt = self.checkpoint.to_tune() if self.checkpoint is not None else None
        if self.stage == "tune":
            job = {
                "stage": "tune",
                "cell": self.cell,
                "optuna_trial": self.optuna_trial,
                "config": self.config,
                "details": self.details,
                "checkpoint": ckpt,
                "report": self.decision_epochs,
            }
        else:
            job = {
                "stage": "final",
                "cell": self.cell,
                "seeds": list(self.seeds),
                "best_trial": self.best_trial,
                "config": self.config,
                "details": self.details,
                "checkpoint": ckpt,
            }
        if self.pack is not None:
            job["pack"] = self.pack
        if self.fused:
            job["fused"] = [m.to_tune()[TUNE_KEY] for m in self.fused]
        return {TUNE_KEY: job}

    @classmethod
    def from_tune(cls, config: Mapping[str, Any]) -> TrialJob:
        job = config[TUNE_KEY]
        return cls(
            stage=job["stage"],
            cell=int(job.get("cell", 0)),
            config=dict(job.get("config") or {}),
            details=bool(job.get("details", True)),
            checkpoint=CheckpointPlan.from_tune(job.get("checkpoint")),
            optuna_trial=job.get("optuna_trial"),
            decision_epochs=job.get("report"),
            seeds=tuple(int(s) for s in job.get("seeds") or ()),
            best_trial=job.get("best_trial"),
            pack=job.get("pack"),
            fused=tuple(cls.from_tune({TUNE_KEY: m}) for m in job.get("fused") or ()),
        )


@dataclass(frozen=True)
class TrialReport:
    """What a worker reports: one epoch of a tuning trial (``closing`` False: ``metrics`` are the
    epoch's, ``held`` the earlier epochs it held back, in order), or a trial's outcome (``closing``:
    ``status`` completed | stopped | failed with its ``reason``, timings, ``metrics`` the scores,
    a final's ``seed``, the ``node`` it ran on, ``details`` for the MLflow artifacts, a final's
    ``history`` of epochs). ``tune``: the keys Ray Tune added on the way back.

    A closing report carries numbers and words only where they are known: None and NaN stay home
    (:meth:`to_tune` drops them), so a metric that went NaN reads as missing."""

    stage: Stage = "tune"
    closing: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    held: tuple[dict[str, Any], ...] = ()
    status: str | None = None
    reason: str | None = None
    epochs_run: int | None = None
    wall_time_s: float | None = None
    train_time_s: float | None = None
    resumed_from_epoch: int | None = None
    checkpoint_path: str | None = None
    seed: int | None = None
    node: str | None = None
    details: dict[str, Any] | None = None
    history: list[dict[str, Any]] | None = None
    member: str | None = None
    tune: dict[str, Any] = field(default_factory=dict)

    # -- reading it --------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return int(self.metrics["epoch"])

    def epochs(self) -> list[TrialReport]:
        """The epochs this report carries, in order: those held back, then its own."""
        return [TrialReport(stage=self.stage, metrics=dict(m)) for m in self.held] + [self]

    def values(self) -> dict[str, Any]:
        """A closing report's scalars by their names (status, reason, timings, scores, checkpoint
        path, seed, node), leaving out what is unknown: what Optuna and MLflow record of it."""
        out = {k: getattr(self, k) for k in _CLOSING_FIELDS}
        out.update(self.metrics)
        out.update(seed=self.seed, node=self.node)
        return {k: v for k, v in out.items() if v is not None}

    def record_attrs(self) -> dict[str, Any]:
        """A final seed's Optuna user attributes: its scalars and the scalar keys Tune added, less
        the Tune trial's config (flattened, ``config/...``): in a pack that is its first member's,
        and the final records its own."""
        extra = {
            k: v
            for k, v in self.tune.items()
            if k not in ("config", TUNE_KEY)
            and not k.startswith("config/")
            and (v is None or isinstance(v, (int, float, str)))
        }
        return {**extra, **{k: v for k, v in self.values().items() if isinstance(v, (int, float, str))}}

    # -- the Tune representation -----------------------------------------------------------
    def to_tune(self) -> dict[str, Any]:
        """The flat dict ``tune.report`` takes."""
        if self.closing:
            own = {k: getattr(self, k) for k in _CLOSING_FIELDS}
            out = {k: v for k, v in {**own, **self.metrics}.items() if _known(v)}
            if self.details is not None:
                out["details" + BULKY_SUFFIX] = _dumps(self.details)
            if self.history is not None:
                out["history" + BULKY_SUFFIX] = _dumps(self.history)
        else:
            out = {k: v for k, v in self.metrics.items() if v is not None}
        out.update(held_to_tune(self.held))
        out["stage"] = self.stage
        if self.seed is not None:
            out["seed"] = self.seed
        out["closing"] = self.closing
        if self.node is not None:
            out["node"] = self.node
        if self.member is not None:
            out["member"] = self.member
        return {**self.tune, **out}

    @staticmethod
    def is_closing(result: Mapping[str, Any]) -> bool:
        """Whether a Tune result is a trial's closing report (without reading the rest of it)."""
        return bool(result.get("closing"))

    @classmethod
    def from_tune(cls, result: Mapping[str, Any]) -> TrialReport:
        """A report from a Tune result: the original dict (the scheduler's) or Tune's flattened
        copy (the searcher's), with or without its bulky fields (dropped once taken)."""
        closing = cls.is_closing(result)
        bulky = {
            k[: -len(BULKY_SUFFIX)]: json.loads(v)
            for k, v in result.items()
            if k.endswith(BULKY_SUFFIX) and k[: -len(BULKY_SUFFIX)] in _BULKY and isinstance(v, str)
        }
        named = set(_CLOSING_FIELDS) if closing else set()
        metric_keys = SCORE_KEYS if closing else EPOCH_KEYS
        own = {"stage", "closing", "seed", "node", "member", *named, *(f"{k}{BULKY_SUFFIX}" for k in _BULKY)}
        return cls(
            stage=result.get("stage") or "tune",
            closing=closing,
            metrics={k: result[k] for k in metric_keys if k in result},
            held=tuple(bulky.get("epochs") or ()),
            seed=None if result.get("seed") is None else int(result["seed"]),
            node=result.get("node"),
            details=bulky.get("details"),
            history=bulky.get("history"),
            member=None if result.get("member") is None else str(result["member"]),
            tune={k: v for k, v in result.items() if k not in own and k not in metric_keys},
            **{k: result.get(k) for k in named},
        )


def held_to_tune(held: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> dict[str, str]:
    """Epochs held back, as the field of the next report that carries them (none: no field)."""
    return {"epochs" + BULKY_SUFFIX: _dumps(list(held))} if held else {}


def bulky_keys(result: Mapping[str, Any]) -> list[str]:
    """The keys of a Tune result that hold a report's bulky JSON payloads."""
    return [k for k in result if k.endswith(BULKY_SUFFIX)]


def _known(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _dumps(v: Any) -> str:
    # Whatever JSON cannot hold (a tensor left in a dict) travels as null rather than failing the trial.
    return json.dumps(v, default=lambda o: None)


__all__ = [
    "EPOCH_KEYS",
    "SCORE_KEYS",
    "CheckpointPlan",
    "TrialJob",
    "TrialReport",
    "bulky_keys",
    "held_to_tune",
    "job_name",
]
