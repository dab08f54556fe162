"""What the study engine tells its sinks (progress, status file, summary, MLflow tracker).

One small frozen dataclass per event, each carrying the :class:`~pal_study.study.engine.Job`
it is about; ``kind`` names the event in logs. A sink is any callable taking one event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pal_study.study.trial import TrialJob, TrialReport

TrialOutcome = Literal["completed", "pruned", "failed"]


@dataclass(frozen=True)
class TrialStarted:
    """A tuning trial or a final (one or more seeds) was handed to Ray Tune (``payload``: what its
    worker got)."""

    kind: ClassVar[str] = "started"
    job: Any
    payload: TrialJob


@dataclass(frozen=True)
class EpochReported:
    """A tuning trial reported an epoch (already given to its Optuna trial); ``result``: that
    epoch's report (its ``metrics``)."""

    kind: ClassVar[str] = "epoch"
    job: Any
    epoch: int
    value: float
    result: TrialReport


@dataclass(frozen=True)
class TrialEnded:
    """A tuning trial ended and Optuna was told: completed (value), pruned or failed (reason);
    ``closing``: the trial's closing report (None when it sent none: pruned, or its process died)."""

    kind: ClassVar[str] = "trial_ended"
    job: Any
    outcome: TrialOutcome
    value: float | None = None
    reason: str | None = None
    closing: TrialReport | None = None


@dataclass(frozen=True)
class TrialRetried:
    """A trial whose process or node died is handed out again (``seeds``: a final's unrecorded ones)."""

    kind: ClassVar[str] = "retry"
    job: Any
    attempt: int
    seeds: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class FinalEnded:
    """One final seed was recorded in Optuna: ``ok`` (completed) or failed with ``reason``;
    ``result``: the seed's closing report."""

    kind: ClassVar[str] = "final_ended"
    job: Any
    seed: int
    ok: bool
    value: float | None
    reason: str | None
    result: TrialReport
    config: dict[str, Any]
    best_value: float | None


@dataclass(frozen=True)
class FinalsSkipped:
    """A cell gets no finals (no tuning trial completed)."""

    kind: ClassVar[str] = "finals_skipped"
    job: Any
    reason: str


Event = TrialStarted | EpochReported | TrialEnded | TrialRetried | FinalEnded | FinalsSkipped
Sink = Callable[[Event], None]

__all__ = [
    "EpochReported",
    "Event",
    "FinalEnded",
    "FinalsSkipped",
    "Sink",
    "TrialEnded",
    "TrialOutcome",
    "TrialRetried",
    "TrialStarted",
]
