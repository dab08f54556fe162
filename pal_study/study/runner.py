"""``pal-study run STUDY.yaml``: the study on Ray Tune (local or ``--address``), resumable.

    pal-study run studies/quickstart.yaml
    pal-study run studies/quickstart.yaml --address 10.0.0.1:6379 --max-concurrent 16

Everything a resume needs is in ``runs/<study>/optuna.journal``; Ray Tune's own directory
(``runs/<study>/tune/``) holds its logs only. We deliberately do not use ``Tuner.restore``: its
experiment snapshot is periodic, so after a SIGKILL it would re-run trials that had finished
since, and it does not restore schedulers (``../shared/STACK_NOTES.md``).
"""

from __future__ import annotations

import csv
import gc
import itertools
import json
import logging
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pal_study._compat import keep_local_ray_on_loopback
from pal_study.config import ConfigError
from pal_study.study.spec import Study
from pal_study.study.store import StudyStore, best_trial, state_counts

# Set before Ray is imported: Tune's CSV/JSON/TensorBoard loggers cost ~40 ms per trial and we
# track elsewhere; no usage reporting (the network rule); experiment snapshots rarely, since
# resume reads the Optuna journal, not Tune's snapshot.
RAY_ENV = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_GLOBAL_CHECKPOINT_S": "600",
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "1000",
    # A failed trial's closing result has no objective value: that is data, not an error.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Not a traceback per failed trial on the console: the reasons are in Optuna, MLflow, each
    # Tune trial's error.txt and the study's summary; deaths get a one-line warning.
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
}


class _NoIncompleteTrialsLine(logging.Filter):
    # Tune ends a run that had failed trials with "Trials did not complete: [ids]"; the study's
    # own table and summary say which failed and why.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Trials did not complete")


def _quiet_tune_summary() -> None:
    tune_log = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _NoIncompleteTrialsLine) for f in tune_log.filters):
        tune_log.addFilter(_NoIncompleteTrialsLine())


@dataclass
class CellSummary:
    index: int
    label: str
    method: str
    factors: dict[str, Any]
    counts: dict[str, int]
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    finals: dict[int, dict[str, Any]] = field(default_factory=dict)
    val_mean: float | None = None
    val_std: float | None = None
    test_mean: float | None = None
    test_std: float | None = None
    groups: dict[str, float | None] = field(default_factory=dict)
    ece_mean: float | None = None
    epochs_run: int = 0
    note: str | None = None
    failures: dict[str, int] = field(default_factory=dict)  # reason -> trials


@dataclass
class RunOutcome:
    cells: list[CellSummary]
    interrupted: bool = False
    wall_time_s: float = 0.0
    slots: int = 0
    resumed_trials: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def failure_causes(self) -> list[tuple[str, int]]:
        """Why trials failed, most common first (for the exit-1 summary)."""
        total: dict[str, int] = {}
        for c in self.cells:
            for reason, n in c.failures.items():
                total[reason] = total.get(reason, 0) + n
        return sorted(total.items(), key=lambda kv: -kv[1])

    @property
    def all_failed(self) -> bool:
        n = sum(sum(c.counts.values()) for c in self.cells)
        return n > 0 and all(c.counts["completed"] == 0 and c.counts["pruned"] == 0 for c in self.cells)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(study: Study, store: StudyStore) -> list[CellSummary]:
    """Per cell: trial counts by state, the best config, final seeds' mean ± std (from storage)."""
    out = []
    mode = study.spec.objective.mode
    for cell in study.cells:
        trials = store.tuning_trials(cell)
        best = best_trial(trials, mode)
        finals = {s: r for s, r in store.final_results(cell).items() if s in study.spec.finals.seeds}
        ok = [r for r in finals.values() if r["state"] == "complete"]
        val = _mean_std([r.get("val_acc") for r in ok])
        test = _mean_std([r.get("test_acc") for r in ok])
        epochs = sum(int(t.user_attrs.get("epochs_run", 0) or 0) for t in trials if t.state.is_finished())
        groups = {g: _mean_std([r.get(f"test_acc_{g}") for r in ok])[0] for g in ("many", "medium", "few")}
        failures: dict[str, int] = {}
        for t in trials:
            if t.state.name == "FAIL":
                reason = str(t.user_attrs.get("reason") or "unknown")
                failures[reason] = failures.get(reason, 0) + 1
        out.append(CellSummary(
            index=cell.index, label=cell.label, method=cell.method, factors=cell.factors,
            counts=state_counts(trials), best_trial=best.number if best else None,
            best_value=best.value if best else None, best_params=dict(best.params) if best else {},
            finals=finals, val_mean=val[0], val_std=val[1], test_mean=test[0], test_std=test[1],
            groups={g: v for g, v in groups.items() if v is not None},
            ece_mean=_mean_std([r.get("ece") for r in ok])[0], epochs_run=epochs, failures=failures,
            note=None if best or not trials else "no tuning trial completed: no finals",
        ))
    return out


def _pm(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f} ± {100 * std:.2f} (n={n})"


def _params(p: dict[str, Any]) -> str:
    if not p:
        return "(base config)"
    short = {k: (f"{v:.3g}" if isinstance(v, float) else str(v)) for k, v in p.items()}
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in short.items())


def render_table(study: Study, cells: list[CellSummary]) -> Table:
    s = study.spec
    t = Table(title=f"study {s.name}: best config per cell, finals over seeds {s.finals.seeds}",
              show_lines=False)
    t.add_column("#", justify="right")
    t.add_column("cell")
    t.add_column("best params")
    t.add_column(f"tune {s.objective.metric}", justify="right")
    t.add_column("final val acc %", justify="right")
    t.add_column("final test acc %", justify="right")
    t.add_column("trials done/pruned/failed", justify="right")
    with_groups = any(c.groups for c in cells)
    if with_groups:
        t.add_column("test many/medium/few %", justify="right")
    t.add_column("ECE", justify="right")
    for c in cells:
        n = sum(1 for r in c.finals.values() if r["state"] == "complete")
        t.add_row(
            str(c.index), c.label, c.note or _params(c.best_params),
            "-" if c.best_value is None else f"{c.best_value:.4f}",
            _pm(c.val_mean, c.val_std, n), _pm(c.test_mean, c.test_std, n),
            f"{c.counts['completed']}/{c.counts['pruned']}/{c.counts['failed']}"
            + (f" (+{c.counts['running']} unfinished)" if c.counts.get("running") else ""),
            *([" / ".join("-" if c.groups.get(g) is None else f"{100 * c.groups[g]:.1f}"
                          for g in ("many", "medium", "few"))] if with_groups else []),
            "-" if c.ece_mean is None else f"{c.ece_mean:.3f}",
        )
    return t


def write_summary(store: StudyStore, outcome: RunOutcome) -> Path:
    """``runs/<study>/summary.json`` and ``summary.csv``, written atomically."""
    rows = [asdict(c) for c in outcome.cells]
    path = store.dir / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    # complete: false while the study runs (rewritten as each cell's finals end) or when interrupted.
    tmp.write_text(json.dumps({"study": store.study.spec.name, "complete": not outcome.interrupted, "cells": rows},
                              indent=1, default=str))
    os.replace(tmp, path)
    csv_path = store.dir / "summary.csv"
    tmp = csv_path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "label", "method", "best_trial", "best_value", "best_params", "val_mean", "val_std",
                    "test_mean", "test_std", "n_finals", "completed", "pruned", "failed", "epochs_run"])
        for c in outcome.cells:
            w.writerow([c.index, c.label, c.method, c.best_trial, c.best_value, json.dumps(c.best_params),
                        c.val_mean, c.val_std, c.test_mean, c.test_std,
                        sum(1 for r in c.finals.values() if r["state"] == "complete"),
                        c.counts["completed"], c.counts["pruned"], c.counts["failed"], c.epochs_run])
    os.replace(tmp, csv_path)
    return path


class _SummaryOnFinals:
    """Event sink: ``summary.json``/``.csv`` rewritten each time a cell's finals end, so a long
    study's finished cells can be read before the study ends."""

    def __init__(self, study: Study, store: StudyStore):
        self.study, self.store = study, store
        self.t0 = time.perf_counter()

    def __call__(self, event: Any) -> None:
        from pal_study.study.events import FinalEnded, FinalsSkipped

        if not isinstance(event, (FinalEnded, FinalsSkipped)):
            return
        recorded = set(self.store.final_results(event.job.cell))
        if isinstance(event, FinalsSkipped) or set(self.study.spec.finals.seeds) <= recorded:
            write_summary(self.store, RunOutcome(cells=summarize(self.study, self.store), interrupted=True,
                                                 wall_time_s=time.perf_counter() - self.t0))


def check_data(study: Study) -> None:
    """Missing data set files are bad input, said before any trial starts (not 100 failed trials)."""
    from pal_study.data.sources import expected_files

    seen: set[tuple[str, str]] = set()
    for cell in study.cells:
        d = cell.config.data
        if d.name not in ("mnist", "cifar10", "cifar100") or d.download or not d.root:
            continue
        if (d.name, d.root) in seen:
            continue
        seen.add((d.name, d.root))
        missing = [p for p in expected_files(d.name, os.path.abspath(d.root)) if not p.exists()]
        if missing:
            key = next((f"factors.{k}" for k in cell.factors if k.startswith("data.")), "base.data.root")
            raise ConfigError(
                f"{d.name} files are not under data.root {d.root!r} (missing {missing[0]}"
                f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}); put the torchvision files "
                "there, point --set base.data.root=DIR at them, or set data.download: true where a network exists",
                source=str(study.path), key=key)


def start_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start a local Ray on 127.0.0.1 only.

    Returns whether we started it (and so must shut it down)."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        # Loopback only: Ray otherwise advertises the machine's outward address. Read when Ray
        # is imported: set before the first ``import ray``.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    if not address:
        keep_local_ray_on_loopback()  # in case Ray was imported before the variable was set
    if ray.is_initialized():
        return False
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {e}", key="--address") from None
        return True
    # "local" starts a new instance even if /tmp/ray/ray_current_cluster names an old one.
    ray.init(address="local", num_cpus=num_cpus or _allotted_cpus(), **common)
    return True


def _allotted_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def trial_slots(study: Study, max_concurrent: int | None) -> int:
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return slots_for_nodes(nodes, study, max_concurrent)


def slots_for(res: dict[str, float], study: Study, max_concurrent: int | None = None) -> int:
    """Concurrent trials one node's resources allow (``gpu: 0.25`` packs four per GPU)."""
    return slots_for_nodes([res], study, max_concurrent)


def slots_for_nodes(nodes: list[dict[str, float]], study: Study, max_concurrent: int | None = None) -> int:
    """Concurrent trials a cluster allows: a trial runs on one node, so each node counts alone
    (four 4-CPU nodes hold no 8-CPU trial, whatever their total)."""
    r = study.spec.resources
    slots = 0
    for res in nodes:
        n = int(res.get("CPU", 0) / r.cpu + 1e-9)
        if r.gpu > 0:
            n = min(n, int(res.get("GPU", 0) / r.gpu + 1e-9))
        slots += n
    if slots < 1:
        big = max(nodes, key=lambda res: (res.get("GPU", 0), res.get("CPU", 0)), default={})
        total_cpu, total_gpu = (sum(res.get(k, 0) for res in nodes) for k in ("CPU", "GPU"))
        raise ConfigError(
            f"one trial needs cpu {r.cpu:g} and gpu {r.gpu:g} on one node, but the largest node of the Ray "
            f"cluster has {big.get('CPU', 0):g} CPUs and {big.get('GPU', 0):g} GPUs ({len(nodes)} node"
            f"{'s' if len(nodes) != 1 else ''}, {total_cpu:g} CPUs and {total_gpu:g} GPUs in all)",
            source=str(study.path), key="resources")
    return min(slots, max_concurrent) if max_concurrent else slots


TRIALS_PER_TUNER = 250


def trial_name(trial: Any) -> str:
    """Ray Tune's name and directory for a trial, readable by a person following a failure:
    ``cell003-tune-0007_<tune id>`` (Optuna trial 7 of cell 3) or ``cell003-final-s0-1_<tune id>``."""
    from pal_study.study.engine import job_name

    return f"{job_name(trial.config.get('pal') or {})}_{trial.trial_id}"


def run_study(study: Study, *, runs_dir: str | Path = "runs", address: str | None = None,
              max_concurrent: int | None = None, restart: bool = False,
              console: Console | None = None, tracking_uri: str | None = None, track: bool = True,
              trial_retries: int | None = None, trials_per_tuner: int | None = TRIALS_PER_TUNER,
              progress: str = "auto", storage: str | Path | None = None) -> RunOutcome:
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
            console.print(f"removed a stale Optuna journal lock ({store.dir / 'optuna.journal.lock'}) left by a "
                          "killed driver: this process holds the study's lock, so no other writer exists",
                          soft_wrap=True, highlight=False)
        if restart and store.exists():
            console.print(f"--restart: discarding {store.describe_stored()}", soft_wrap=True)
            store.discard()
        store.check_fingerprint()
        tracking = None
        if track:
            from pal_study.tracking import Tracking

            tracking = Tracking(tracking_uri)
            tracking.check()
        if not address and not os.environ.get("RAY_ADDRESS"):
            check_data(study)  # on a cluster the files need only exist where the trials run

        # Imported here: Ray Tune is heavy and only the runner needs it.
        timings = {"setup_s": time.perf_counter() - t0}
        started_ray = start_ray(address)
        on_cluster = bool(address or os.environ.get("RAY_ADDRESS"))
        # A lost node costs only its running trials, which Tune runs again; on one machine a
        # failing trial fails deterministically, so retrying it would only repeat the failure.
        retries = trial_retries if trial_retries is not None else (3 if on_cluster else 0)
        timings["ray_start_s"] = time.perf_counter() - t0 - timings["setup_s"]
        from ray import tune

        _quiet_tune_summary()

        from pal_study._compat import drop_bulky_results_callback
        from pal_study.study.engine import OptunaPruningScheduler, StudySearcher
        from pal_study.study.progress import StudyProgress
        from pal_study.study.status import StatusWriter
        from pal_study.study.trainable import tune_trial

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
        sinks: list[Any] = [display, _SummaryOnFinals(study, store), status_writer]
        if tracking is not None:
            from pal_study.study.tracker import StudyTracker

            tracker = StudyTracker(tracking, study, store)
            tracker.start()
            sinks.append(tracker)
            console.print(f"tracking: {tracking.uri} (experiment {study.spec.name!r}; "
                          f"pal-study ui to browse)", soft_wrap=True, highlight=False)

        def on_event(event: Any) -> None:
            for sink in sinks:
                sink(event)

        searcher = StudySearcher(study, store, slots=slots, on_event=on_event, retries=retries)
        searcher.details = tracker is not None
        if tracker is not None:
            repaired = tracker.reconcile(searcher.trial_config)
            if repaired:
                console.print(f"tracking: {repaired} runs a killed driver left half-logged were completed "
                              "from the Optuna record", soft_wrap=True)
        resumed = len(searcher._resume)
        if resumed or sum(done.values()) or finals_done:
            console.print(f"resuming {store.dir}: {sum(done.values())} tuning trials and {finals_done} final "
                          f"runs finished, {resumed} interrupted trials to run again", soft_wrap=True)
        if not searcher.done():
            r = study.spec.resources
            trainable = tune.with_resources(tune_trial, {"cpu": r.cpu, "gpu": r.gpu})
            stamp = time.strftime("session-%Y%m%d-%H%M%S")
            t_fit = time.perf_counter()
            with display:
                # A Tuner keeps every trial it ran (config, last result, per-metric statistics:
                # ~0.1 MB each) until fit() returns; the state lives in Optuna, so the study runs
                # as successive Tuners of at most `trials_per_tuner` trials and the driver's
                # memory stays bounded however long the study is.
                for session in itertools.count():
                    searcher.start_session(trials_per_tuner)
                    tune.Tuner(
                        trainable,
                        tune_config=tune.TuneConfig(
                            search_alg=searcher, scheduler=OptunaPruningScheduler(searcher), num_samples=-1,
                            max_concurrent_trials=slots, reuse_actors=True,
                            trial_name_creator=trial_name, trial_dirname_creator=trial_name,
                        ),
                        run_config=tune.RunConfig(
                            name=stamp if session == 0 else f"{stamp}-{session}",
                            storage_path=str((store.dir / "tune").resolve()), verbose=0,
                            failure_config=tune.FailureConfig(max_failures=0),  # retries: the searcher's
                            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
                            callbacks=[drop_bulky_results_callback()],
                        ),
                    ).fit()
                    # The Tuner's trials sit in reference cycles; with torch, Ray and MLflow
                    # loaded the heap is large and Python's own full collections come rarely.
                    gc.collect()
                    # Ctrl-C ends fit() with trials still running: that is an interruption.
                    if searcher.done() or not searcher.session_full or searcher.jobs:
                        break
            timings["fit_s"] = time.perf_counter() - t_fit
            timings["tuners"] = session + 1
        interrupted = not searcher.done()
        outcome = RunOutcome(cells=summarize(study, store), interrupted=interrupted, slots=slots,
                             resumed_trials=resumed, timings=timings)
        if tracker is not None:
            from pal_study.report import aggregate, fetch_finals, report_files

            def make_files() -> dict[str, Any]:
                # Read back from the store, as `pal-study report` does, once every log is in.
                if interrupted:
                    return {}
                return report_files(aggregate(fetch_finals(tracking.client, study.spec.name)[2]), study.spec.name)

            counts = {k: sum(c.counts[k] for c in outcome.cells) for k in ("completed", "pruned", "failed")}
            undelivered = tracker.finish(interrupted, make_files, summary={
                "study": study.spec.name, "interrupted": interrupted, "counts": counts,
                "failure_causes": outcome.failure_causes(), "cells": [asdict(c) for c in outcome.cells]})
            if undelivered:
                note = store.dir / "tracking_incomplete.json"
                note.write_text(json.dumps({"tracking_uri": tracking.uri, "undelivered": undelivered}, indent=1))
                console.print(f"[yellow]warning:[/] the MLflow store {tracking.uri} stayed unreachable: "
                              f"{len(undelivered)} logs not delivered (listed in {note}); the study's results "
                              "are complete in runs/ (Optuna journal, summary.json)", soft_wrap=True)
            timings["tracking_s"] = tracker.logging_s
            timings["tracking_cpu_s"] = tracker.logging_cpu_s
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


__all__ = ["CellSummary", "RunOutcome", "render_table", "run_study", "slots_for", "slots_for_nodes", "start_ray",
           "summarize"]
