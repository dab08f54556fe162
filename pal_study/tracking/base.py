"""What a study needs from a tracking store: experiments, runs in a tree (study > cell > trial,
linked by tags), their metrics, params, tags and files, runs found again by their tags, and a
study's record read back. ``mlflow_store.MlflowStore`` and ``jsonl_store.JsonlStore`` implement
it; ``open_store`` picks one by URI.

Run statuses are ``names.RUNNING`` / ``FINISHED`` / ``FAILED`` / ``KILLED``; a run's parent is its
``names.PARENT_TAG`` tag, so a search by parent is a search by tag."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# (key, value, step): one metric point.
MetricPoint = tuple[str, float, int]


@dataclass
class Experiment:
    experiment_id: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    """A run as read back: its tags and params as strings, each metric's latest value."""

    run_id: str
    experiment_id: str
    name: str
    status: str
    start_time: int  # ms since the epoch
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    deleted: bool = False


@runtime_checkable
class TrackingStore(Protocol):
    """One tracking store. Written from one process at a time (the study's driver)."""

    uri: str

    def check(self) -> None:
        """Reach the store now; an unreachable one raises ``ConfigError`` (bad input, before any training)."""

    def experiment_id(self, name: str) -> str:
        """The experiment named ``name``, created if there is none (restored if deleted)."""

    def find_experiment(self, name: str) -> Experiment | None:
        """The experiment named ``name``, or None; creates nothing."""

    def set_study_view(
        self, experiment_id: str, factors: list[str], searched: list[str], titles: Sequence[str] = ()
    ) -> None:
        """Present a study's experiment in the store's UI (MLflow: its cells view); a no-op without one."""

    def create_run(
        self,
        experiment_id: str,
        name: str,
        tags: Mapping[str, Any],
        *,
        parent_id: str | None = None,
        start_time: int | None = None,
    ) -> str:
        """A new RUNNING run (below ``parent_id``); its id. ``start_time`` in ms, default now."""

    def set_status(self, run_id: str, status: str) -> None:
        """RUNNING again, or ended as FINISHED / FAILED / KILLED."""

    def delete_run(self, run_id: str) -> None:
        """Delete a run: searches no longer find it."""

    def log_batch(
        self,
        run_id: str,
        metrics: Iterable[MetricPoint] = (),
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """Metrics (with steps), params and tags in as few writes as the store allows."""

    def log_files(self, run_id: str, files: Mapping[str, bytes | str], artifact_path: str | None = None) -> None:
        """Files (name -> content) as the run's artifacts, under ``artifact_path``."""

    def log_table(self, run_id: str, path: str, table: Mapping[str, list]) -> None:
        """A table (column -> values) as the artifact ``path``, replacing one already there."""

    def read_file(self, run_id: str, path: str) -> bytes | None:
        """An artifact's content, or None if the run has no such file."""

    def get_run(self, run_id: str) -> Run: ...

    def find_runs(
        self, experiment_id: str, tags: Mapping[str, str], *, newest_first: bool = False, limit: int | None = None
    ) -> list[Run]:
        """The experiment's runs (not deleted) whose tags include all of ``tags``."""

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) of every point of one metric, in the order logged."""
