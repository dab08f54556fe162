"""The tracker's own thread: tracking writes off Ray Tune's event loop."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from pal_study.study.events import Event
from pal_study.study.run_tree import HANDLED
from pal_study.study.tracker import RETRY_S, StudyTracker

log = logging.getLogger(__name__)


class TrackerThread:
    """Feeds a :class:`StudyTracker` from its own thread, so the store's writes (a run created when
    a trial starts, its metrics, artifacts and status when it ends) are off Ray Tune's event loop:
    the next trial is handed out without waiting for the database. Events keep their order (one
    queue, one writer). A driver killed with events still queued leaves those runs half-logged,
    as a kill between Optuna's record and the tracker always could: the next run's
    ``reconcile`` completes them from the Optuna record."""

    def __init__(self, tracker: StudyTracker):
        self.tracker = tracker
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="pal-study-tracking")
        self._thread.start()

    def __call__(self, event: Event) -> None:
        if isinstance(event, HANDLED) and not self._closed:
            self._queue.put(event)

    def _run(self) -> None:
        while True:
            try:
                event = self._queue.get(timeout=RETRY_S)
            except queue.Empty:
                self._guarded(self.tracker.tick)
                continue
            if event is None:
                return
            self._guarded(self.tracker, event)

    @staticmethod
    def _guarded(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("tracking: an event could not be logged")

    def close(self) -> None:
        """Deliver (or queue for ``finish``'s retries) every event handed over so far, then stop."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
