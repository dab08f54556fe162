"""Trial packs: one Ray Tune trial runs several of the study's trials, one after another, in its
worker (``budget.pack.size``).

Each Ray Tune trial costs its slot a fixed ~0.14 s (scheduling, the actor's reset, the trial's
logger and directory) however short the training; a digits trial trains for 0.5–0.9 s. In a pack
the Tune trial stays and only the work changes: when a member's closing report reaches the
driver, the study's searcher picks the next job exactly as it would for a new Tune trial (same
budget per cell, same order, resumed trials first, then finals) and puts it under the pack's
key; the worker reads it once its report returns. A member the pruner stops is told through the
same channel and ends at once (a Tune STOP would end the whole pack). So every member stays its
own Optuna trial and MLflow run with the same records as an unpacked trial.

Why the worker's read is never early: a function trainable's ``tune.report`` is synchronous: it
returns only once the driver has processed the result (searcher and scheduler included) and asked
for the next one, and the driver writes before that.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pal_study._compat import kv_delete, kv_get, kv_put
from pal_study.study.trial import TrialJob


def new_pack_key() -> str:
    """A key no other pack of any driver on the same Ray cluster uses."""
    return f"pack-{uuid.uuid4().hex}"


class PackChannel:
    """The driver's end of one pack: which member comes after the ``done``-th, and who is pruned."""

    def __init__(self, key: str, size: int):
        self.key = key
        self.size = size
        self.first: str | None = None  # the first job's name: the Tune trial's name and log directory
        self.handed = 1
        self.failed = False  # a member reported its own failure: its worker raises, the pack ends

    @property
    def full(self) -> bool:
        return self.handed >= self.size

    def hand(self, job: TrialJob | None) -> None:
        """What the worker runs after its current member (None: the pack ends)."""
        done = self.handed
        if job is not None:
            self.handed += 1
        kv_put(f"{self.key}/next", json.dumps({"after": done, "job": None if job is None else job.to_tune()}))

    def prune(self, member: str) -> None:
        kv_put(f"{self.key}/prune", member)

    def close(self) -> None:
        kv_delete(f"{self.key}/next")
        kv_delete(f"{self.key}/prune")


def next_member(key: str, done: int) -> TrialJob | None:
    """The worker's read: the job that follows its ``done``-th member, or None."""
    raw = kv_get(f"{key}/next")
    if raw is None:
        return None
    said: dict[str, Any] = json.loads(raw)
    if said.get("after") != done or not said.get("job"):
        return None
    return TrialJob.from_tune(said["job"])


def is_pruned(key: str, member: str) -> bool:
    """Whether the driver's pruner stopped ``member`` (read after each report of it)."""
    return kv_get(f"{key}/prune") == member


__all__ = ["PackChannel", "is_pruned", "new_pack_key", "next_member"]
