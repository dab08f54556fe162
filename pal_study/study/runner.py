"""``pal-study run STUDY.yaml``: the study on Ray Tune (local or ``--address``), resumable.

    pal-study run studies/quickstart.yaml
    pal-study run studies/quickstart.yaml --address 10.0.0.1:6379 --max-concurrent 16

Everything a resume needs is in ``runs/<study>/optuna.journal``; Ray Tune's own directory
(``runs/<study>/tune/``) holds its logs only. We deliberately do not use ``Tuner.restore``: its
experiment snapshot is periodic, so after a SIGKILL it would re-run trials that had finished
since, and it does not restore schedulers.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console

from pal_study._compat import drop_bulky_results_callback, journal_lock_path
from pal_study.analysis.formats import report_files
from pal_study.analysis.record import journal_finals
from pal_study.analysis.report import aggregate, analyse, fetch_finals
from pal_study.layout import JOURNAL, TRACKING_INCOMPLETE, TUNE_LOGS
from pal_study.study.preflight import check_data
from pal_study.study.progress import StudyProgress
from pal_study.study.ray_env import (
    RAY_ENV,
    quiet_tune_summary,
    slots_for,
    slots_for_nodes,
    start_ray,
    trial_name,
    trial_slots,
)
from pal_study.study.spec import Study
from pal_study.study.status import StatusWriter
from pal_study.study.store import StudyStore
from pal_study.study.summary import (
    CellSummary,
    RunOutcome,
    SummaryOnFinals,
    claim_verdicts,
    render_table,
    sensitivity_verdicts,
    summarize,
    write_summary,
)
from pal_study.study.tracker import StudyTracker
from pal_study.study.tracker_thread import TrackerThread
from pal_study.study.trainable import tune_trial
from pal_study.study.trial import bulky_keys
from pal_study.tracking import open_store

TRIALS_PER_TUNER = 250


def run_study(
    study: Study,
    *,
    runs_dir: str | Path = "runs",
    address: str | None = None,
    max_concurrent: int | None = None,
    restart: bool = False,
    console: Console | None = None,
    tracking_uri: str | None = None,
    track: bool = True,
    trial_retries: int | None = None,
    trials_per_tuner: int | None = TRIALS_PER_TUNER,
    progress: str = "auto",
    storage: str | Path | None = None,
) -> RunOutcome:
    """Run (or resume) a study to the end; returns its per-cell summary.

    ``progress``: auto (rich on a terminal, plain lines otherwise), rich, plain or none.
    ``storage``: a directory every node can reach for trial checkpoints (DIR/<study>/checkpoints)."""
    console = console or Console()
    t0 = time.perf_counter()
    store = StudyStore(study, runs_dir, storage=storage)
    store.acquire()
    started_ray = False
    outcome: RunOutcome | None = None
    status_writer = None
    try:
        if store.clear_stale_journal_lock():
            console.print(
                f"removed a stale Optuna journal lock ({journal_lock_path(store.dir / JOURNAL)}) left by a "
                "killed driver: this process holds the study's lock, so no other writer exists",
                soft_wrap=True,
                highlight=False,
            )
        if restart and store.exists():
            console.print(f"--restart: discarding {store.describe_stored()}", soft_wrap=True)
            store.discard()
        store.check_fingerprint()
        on_cluster = bool(address or os.environ.get("RAY_ADDRESS"))
        if not on_cluster:
            check_data(study)  # on a cluster the files need only exist where the trials run
        # The tracking store is opened (MLflow imported, the store reached) in a thread while the
        # main thread starts Ray: both are mostly waiting. An unreachable store still stops the
        # study (exit 2) before any trial starts.
        opening = _Background(_open_tracking, tracking_uri) if track else None

        timings = {"setup_s": time.perf_counter() - t0}
        try:
            started_ray = start_ray(address)
        finally:
            tracking = opening.result() if opening is not None else None
        # A lost node costs only its running trials, which Tune runs again; on one machine a
        # failing trial fails deterministically, so retrying it would only repeat the failure.
        retries = trial_retries if trial_retries is not None else (3 if on_cluster else 0)
        timings["ray_start_s"] = time.perf_counter() - t0 - timings["setup_s"]
        quiet_tune_summary()

        # The engine imports Ray: only now that start_ray has set Ray's environment (RAY_ENV).
        from pal_study.study.engine import StudySearcher

        slots = trial_slots(study, max_concurrent)
        store.write_fingerprint()
        store.update_owner(slots=slots)
        store.sweep_checkpoints()
        before = summarize(study, store)
        done = {k: sum(c.counts[k] for c in before) for k in ("completed", "pruned", "failed")}
        finals_done = sum(len(c.finals) for c in before)
        display = StudyProgress(study, console, before=before, mode=progress)
        status_writer = StatusWriter(store)
        status_writer.flush()
        tracker = None
        sinks: list[Any] = [display, SummaryOnFinals(study, store), status_writer]
        if tracking is not None:
            tracker = StudyTracker(tracking, study, store)
            tracker.start()
            console.print(
                f"tracking: {tracking.uri} (experiment {study.spec.name!r}; pal-study ui to browse)",
                soft_wrap=True,
                highlight=False,
            )

        def on_event(event: Any) -> None:
            for sink in sinks:
                sink(event)

        searcher = StudySearcher(study, store, slots=slots, on_event=on_event, retries=retries)
        searcher.details = tracker is not None
        console.print(searcher.describe_fusion(), soft_wrap=True, highlight=False)
        if tracker is not None:
            repaired = tracker.reconcile(searcher.trial_config)
            # From here on the tracker runs on its own thread (on_event reads `sinks` at each call).
            tracker_thread = TrackerThread(tracker)
            sinks.append(tracker_thread)
            if repaired:
                console.print(
                    f"tracking: {repaired} runs a killed driver left half-logged were completed from the Optuna record",
                    soft_wrap=True,
                )
        resumed = searcher.interrupted_to_resume
        if resumed or sum(done.values()) or finals_done:
            console.print(
                f"resuming {store.dir}: {sum(done.values())} tuning trials and {finals_done} final "
                f"runs finished, {resumed} interrupted trials to run again",
                soft_wrap=True,
            )
        timings["ready_s"] = time.perf_counter() - t0
        if not searcher.done():
            t_fit = time.perf_counter()
            with display:
                timings["tuners"] = run_tuners(study, store, searcher, slots, trials_per_tuner)
            timings["fit_s"] = time.perf_counter() - t_fit
        interrupted = not searcher.done()
        outcome = RunOutcome(
            cells=summarize(study, store), interrupted=interrupted, slots=slots, resumed_trials=resumed, timings=timings
        )
        if not interrupted:
            outcome.claims = claim_verdicts(study, outcome.cells)
            outcome.sensitivity = sensitivity_verdicts(study, outcome.cells)
        if tracker is not None:
            tracker_thread.close()
            finish_tracking(tracker, study, store, outcome, console)
            timings["tracking_s"] = tracker.logging_s
            timings["tracking_cpu_s"] = tracker.logging_cpu_s
        if not interrupted and not outcome.rows:
            # Untracked, or the store never answered: the same rows from the study's own record.
            outcome.rows = aggregate(journal_finals(store.dir, storage=store.storage))
        outcome.wall_time_s = time.perf_counter() - t0
        store.sweep_checkpoints()
        write_summary(store, outcome)
        return outcome
    finally:
        if status_writer is not None:
            status_writer.close()  # says the study is no longer running
        if started_ray:
            import ray

            t_stop = time.perf_counter()
            ray.shutdown()
            if outcome is not None:
                outcome.timings["ray_shutdown_s"] = time.perf_counter() - t_stop
                outcome.wall_time_s = time.perf_counter() - t0
        store.release(remove_if_empty=True)


def run_tuners(study: Study, store: StudyStore, searcher: Any, slots: int, trials_per_tuner: int | None) -> int:
    """Run the searcher's work on Ray Tune until it is done or interrupted; returns the Tuners used.

    A Tuner keeps every trial it ran (config, last result, per-metric statistics: ~0.1 MB each)
    until fit() returns; the state lives in Optuna, so the study runs as successive Tuners of at
    most ``trials_per_tuner`` trials and the driver's memory stays bounded however long the study is.
    """
    # Here, not at the top: Ray is imported once start_ray has set its environment (RAY_ENV).
    from ray import tune

    from pal_study.study.engine import OptunaPruningScheduler

    r = study.spec.resources
    trainable = tune.with_resources(tune_trial, {"cpu": r.cpu, "gpu": r.gpu})
    stamp = time.strftime("session-%Y%m%d-%H%M%S")
    for session in itertools.count():
        searcher.start_session(trials_per_tuner)
        tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=OptunaPruningScheduler(searcher),
                num_samples=-1,
                max_concurrent_trials=slots,
                reuse_actors=True,
                trial_name_creator=trial_name,
                trial_dirname_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=stamp if session == 0 else f"{stamp}-{session}",
                storage_path=str((store.dir / TUNE_LOGS).resolve()),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),  # retries: the searcher's
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
                callbacks=[drop_bulky_results_callback(bulky_keys)],
            ),
        ).fit()
        # The Tuner's trials sit in reference cycles; with torch, Ray and MLflow loaded the heap
        # is large and Python's own full collections come rarely.
        gc.collect()
        # Ctrl-C ends fit() with trials still running: that is an interruption.
        if searcher.done() or not searcher.session_full or searcher.jobs:
            return session + 1
    raise AssertionError("unreachable")


class _Background:
    """A call running in a daemon thread; ``result()`` joins it and re-raises its exception."""

    def __init__(self, fn: Any, *args: Any):
        import threading

        self._value: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = fn(*args)
            except BaseException as e:
                self._error = e

        self._thread = threading.Thread(target=run, daemon=True, name="pal-study-setup")
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _open_tracking(uri: str | None) -> Any:
    tracking = open_store(uri)
    tracking.check()
    return tracking


def finish_tracking(tracker: Any, study: Study, store: StudyStore, outcome: RunOutcome, console: Console) -> None:
    """The study's parent run: the report (read back from the store, as ``pal-study report``
    does, once every log is in), trial counts, failure causes, its status; the cell runs: their
    comparison with their baselines (q adjusted over the whole study), their status; what the
    store never took is listed in ``tracking_incomplete.json``."""
    tracking = tracker.tracking
    read: list[Any] = []

    def report_rows() -> list[Any]:  # read back once, for the files, the cell runs and the answer
        if not read:
            finals = fetch_finals(tracking, study.spec.name)[2]
            read.append((finals, aggregate(finals)))
            outcome.rows = read[0][1]
        return read[0][1]

    def make_files() -> dict[str, Any]:
        if outcome.interrupted:
            return {}
        rows = report_rows()
        # Ranks, probability of improvement and parameter importance (from the journal here).
        analysis = analyse(rows, read[0][0], run_dir=store.dir)
        analysis.sensitivity = outcome.sensitivity
        files = report_files(rows, study.spec.name, outcome.claims, analysis)
        if analysis.importance:
            files["importance.json"] = json.dumps([i.as_dict() for i in analysis.importance], indent=1)
        return files

    counts = {k: sum(c.counts[k] for c in outcome.cells) for k in ("completed", "pruned", "failed")}
    undelivered = tracker.finish(
        outcome.interrupted,
        make_files,
        summary={
            "study": study.spec.name,
            "interrupted": outcome.interrupted,
            "counts": counts,
            "failure_causes": outcome.failure_causes(),
            "cells": [asdict(c) for c in outcome.cells],
            "claims": outcome.claims,
            "sensitivity": outcome.sensitivity,
        },
        report_rows=None if outcome.interrupted else report_rows,
    )
    if undelivered:
        note = store.dir / TRACKING_INCOMPLETE
        note.write_text(json.dumps({"tracking_uri": tracking.uri, "undelivered": undelivered}, indent=1))
        console.print(
            f"[yellow]warning:[/] the tracking store {tracking.uri} stayed unreachable: "
            f"{len(undelivered)} logs not delivered (listed in {note}); the study's results "
            "are complete in runs/ (Optuna journal, summary.json)",
            soft_wrap=True,
        )


# Re-exported: the names users and tests import from the runner.
__all__ = [
    "RAY_ENV",
    "CellSummary",
    "RunOutcome",
    "check_data",
    "render_table",
    "run_study",
    "slots_for",
    "slots_for_nodes",
    "start_ray",
    "summarize",
    "trial_name",
    "write_summary",
]
