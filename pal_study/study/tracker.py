"""A study's tracking record, fed by the searcher's events (driver side, one writer): the run tree
(``run_tree``), its repair at start (``reconcile``), and what keeps the study going while the
store is unreachable: events queue in order and are retried every ``RETRY_S`` seconds, so the
study goes on and nothing is dropped. ``tracker_thread.TrackerThread`` calls it off the event loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pal_study.study.events import Event
from pal_study.study.reconcile import reconcile
from pal_study.study.run_tree import HANDLED, RunTree
from pal_study.study.spec import Study
from pal_study.study.store import StudyStore
from pal_study.tracking import TrackingStore

log = logging.getLogger(__name__)

RETRY_S = 5.0


class StudyTracker:
    """The study's run tree, written event by event; queues while the store is unreachable."""

    def __init__(self, tracking: TrackingStore, study: Study, store: StudyStore):
        self.tracking = tracking
        self.tree = RunTree(tracking, study, store)
        self.logging_s = 0.0
        self.logging_cpu_s = 0.0  # CPU of the driver thread: what tracking takes from trials on a busy machine
        self._pending: list[Event] = []
        self._retry_at = 0.0

    @property
    def exp_id(self) -> str:
        return self.tree.exp_id

    @property
    def parent_id(self) -> str | None:
        return self.tree.parent_id

    def start(self) -> str:
        """The study run's id (found again on resume, else created)."""
        t0 = time.perf_counter()
        try:
            return self.tree.start()
        finally:
            self.logging_s += time.perf_counter() - t0

    def reconcile(self, config_for: Callable[[Any, dict[str, Any]], dict[str, Any]]) -> int:
        """Runs a killed driver left half-logged, completed from the Optuna record (see ``reconcile``)."""
        return reconcile(self.tree, config_for)

    def finish(
        self,
        interrupted: bool,
        make_files: Any = None,
        drain_timeout_s: float = 120.0,
        summary: dict[str, Any] | None = None,
        report_rows: Any = None,
    ) -> list[str]:
        """Deliver what is still queued (waiting up to ``drain_timeout_s`` for the store), then
        the parent's files, its summary (trial counts and failure causes, as metrics, tags and
        ``summary.json``), the cell runs' comparisons with their baselines (from
        ``report_rows()``: ``report.aggregate`` rows, q adjusted over the whole study) and the
        comparison table, every run's status. Returns what could not be delivered (empty when all was)."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + drain_timeout_s
        while self._pending and time.monotonic() < deadline:
            if not self._drain():
                time.sleep(RETRY_S)
        undelivered = [f"{e.kind} {getattr(e.job.cell, 'label', '?')}" for e in self._pending]
        if not undelivered:
            try:
                files = dict(make_files() or {}) if make_files is not None else {}
                self.tree.log_summary(summary, files)
            except Exception as e:
                undelivered.append(f"study report ({e})")
            try:
                self.tree.finish_cells(
                    interrupted,
                    report_rows() if report_rows is not None else None,
                    claims=(summary or {}).get("claims") or (),
                )
            except Exception as e:
                undelivered.append(f"cell runs and comparison table ({e})")
            try:
                self.tree.end(interrupted)
            except Exception as e:
                undelivered.append(f"study status ({e})")
        self.logging_s += time.perf_counter() - t0
        return undelivered

    # -- events ----------------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        """Handle one event; while the store is unreachable, queue events in order and retry."""
        t0, c0 = time.perf_counter(), time.thread_time()
        if isinstance(event, HANDLED):
            if self._pending:
                self._pending.append(event)
                self._retry_if_due()
            elif not self._handle(event):
                self._pending.append(event)
        self.logging_s += time.perf_counter() - t0
        self.logging_cpu_s += time.thread_time() - c0

    def tick(self) -> None:
        """Retry queued events if the store was unreachable and the retry is due (no new event
        needed: TrackerThread calls this when its queue stays empty)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        self._retry_if_due()
        self.logging_s += time.perf_counter() - t0
        self.logging_cpu_s += time.thread_time() - c0

    def _retry_if_due(self) -> None:
        if self._pending and time.monotonic() >= self._retry_at:
            self._drain()

    def _drain(self) -> bool:
        while self._pending:
            if not self._handle(self._pending[0]):
                return False
            self._pending.pop(0)
        log.warning("tracking store reachable again: queued logs delivered")
        return True

    def _handle(self, event: Event) -> bool:
        try:
            self.tree.handle(event)
            return True
        except Exception as e:
            if not self._pending:
                log.warning(
                    "tracking failed for %s (%s): %s — queuing logs, retrying every %.0f s",
                    event.kind,
                    getattr(event.job.cell, "label", "?"),
                    str(e).splitlines()[0][:200] if str(e) else e,
                    RETRY_S,
                )
            self._retry_at = time.monotonic() + RETRY_S
            return False
