"""Where a study stands, from its own files only: ``pal-study status`` and ``runs/<study>/status.json``.

:func:`study_status` reads the Optuna journal (read-only) and the run directory (``study.json``,
``.lock``); it never writes and never takes the study's lock, so it is safe while a driver runs
(Optuna's journal reader stops at a half-written last line). :class:`StatusWriter` is the running
driver's event sink that keeps ``status.json`` current for dashboards and other machines.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from optuna.storages import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from pal_study.analysis.journal import StudyRecord, direction_mode
from pal_study.errors import ConfigError
from pal_study.layout import JOURNAL, LOCK, STATUS, STUDY_COPY, cell_key, cell_titles
from pal_study.study.events import Event, FinalEnded, FinalsSkipped, TrialEnded
from pal_study.study.store import best_trial, failure_counts, jsonable, lock_owner, state_counts

log = logging.getLogger(__name__)

# A driver on another host (shared filesystem) is invisible to /proc/locks: it counts as running
# while its status.json is fresher than this (its writer refreshes it at least every 30 s).
REMOTE_FRESH_S = 120.0


# -- is a driver running it? ---------------------------------------------------------------
def _flock_holders(path: Path) -> list[int] | None:
    """PIDs holding an exclusive flock on ``path`` per ``/proc/locks`` (None where unreadable).

    Lines look like ``1: FLOCK  ADVISORY  WRITE 12345 fe:01:1234567 0 EOF``; the device is hex
    ``major:minor``; ``->`` marks a waiter, not a holder. Reading it takes no lock."""
    try:
        st = os.stat(path)
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    owner_pid = (lock_owner(path.parent) or {}).get("pid")
    holders = []
    for line in text.splitlines():
        fields = line.split()
        if "->" in fields or "FLOCK" not in fields:
            continue
        i = fields.index("FLOCK")
        try:
            kind, pid, where = fields[i + 2], int(fields[i + 3]), fields[i + 4]
            major, minor, ino = where.split(":")
            same_dev = (int(major, 16), int(minor, 16)) == (os.major(st.st_dev), os.minor(st.st_dev))
            ino_n = int(ino)
        except (IndexError, ValueError):
            continue
        if kind != "WRITE" or ino_n != st.st_ino:
            continue
        # Some stacked filesystems (overlayfs) report another device number than stat() does:
        # the inode plus the lock file's own pid is then enough.
        if same_dev or (owner_pid is not None and pid == owner_pid):
            holders.append(pid)
    return holders


def driver_running(study_dir: Path, now: float | None = None) -> tuple[bool, dict[str, Any] | None]:
    """(running, the lock file's record) without taking the lock: from /proc/locks (a FLOCK WRITE
    entry on the lock file's device:inode); for a driver on another host, which /proc/locks cannot
    see (a shared filesystem), or without /proc/locks: from the freshness of its status.json."""
    lock = study_dir / LOCK
    owner = lock_owner(study_dir)
    if owner is None:
        return False, None
    now = time.time() if now is None else now
    holders = _flock_holders(lock)
    if holders:
        return True, owner
    host = owner.get("host")
    if holders is not None and (not host or host == socket.gethostname()):
        return False, owner
    try:
        fresh = now - os.stat(study_dir / STATUS).st_mtime < REMOTE_FRESH_S
        # A driver's last write (StatusWriter.close) says it ended.
        fresh = fresh and not json.loads((study_dir / STATUS).read_text()).get("ended")
    except (OSError, ValueError, AttributeError):
        fresh = False
    return fresh, owner


# -- the status, as status.json holds it -----------------------------------------------------
@dataclass(frozen=True)
class Failure:
    reason: str
    count: int


@dataclass(frozen=True)
class DriverInfo:
    """The running driver, from the study's lock file."""

    pid: int | None
    host: str | None
    started_at: float | None
    slots: int | None


@dataclass(frozen=True)
class CellStatus:
    """One cell: its tuning trials by state (``interrupted``: left RUNNING by a driver that no
    longer runs; they run again on resume), its best trial, its finals and its phase."""

    index: int
    label: str
    method: str | None
    factors: dict[str, Any]
    completed: int
    pruned: int
    failed: int
    running: int
    interrupted: int
    remaining: int | None
    budget: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    finals_done: int
    finals_failed: int
    finals_planned: int
    finals_skipped: bool
    final_mean: float | None
    phase: str  # tuning | finals | done
    failures: list[Failure]
    title: str = ""  # the cell's short name among the study's cells (layout.cell_titles)


@dataclass(frozen=True)
class Totals:
    completed: int
    pruned: int
    failed: int
    running: int
    interrupted: int
    finals_done: int
    finals_failed: int
    finals_planned: int
    remaining: int
    budget: int
    finals_remaining: int


@dataclass(frozen=True)
class StudyStatus:
    """Where a study stands (see :func:`study_status`); :meth:`to_dict` is ``status.json``.
    ``ended`` is set only by the driver's last write (its :class:`StatusWriter` closing)."""

    study: str
    dir: str
    metric: str
    mode: str
    running: bool
    driver: DriverInfo | None
    last_driver: dict[str, Any] | None
    elapsed_s: float | None
    eta_s: float | None
    updated_at: float
    done: bool
    totals: Totals
    cells: list[CellStatus]
    failures: list[Failure]
    ended: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``status.json`` and ``pal-study status --json``."""
        out = asdict(self)
        if self.ended is None:
            del out["ended"]
        return out

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), default=str, **kwargs)

    def ending(self) -> StudyStatus:
        """The status the driver writes last: it no longer runs the study."""
        return replace(
            self, running=False, ended=True, last_driver=_as_record(self.driver) or self.last_driver, driver=None
        )


def _as_record(driver: DriverInfo | None) -> dict[str, Any] | None:
    return asdict(driver) if driver is not None else None


@dataclass(frozen=True)
class _Meta:
    """What the study's ``study.json`` copy says (with the defaults of a study without one)."""

    name: str
    metric: str
    mode: str | None  # None: unsaid (the tuning studies' direction then decides)
    seeds: list[int]
    default_budget: int | None
    tune_epochs: int | None
    finals_epochs: int | None
    cells: list[dict[str, Any]] | None


@dataclass
class _Timings:
    """What the ETA and elapsed time are computed from, gathered cell by cell."""

    tune_durations: list[float] = field(default_factory=list)
    final_walls: list[float] = field(default_factory=list)
    tune_epochs: list[int] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)


def _duration(t: FrozenTrial) -> float | None:
    if t.datetime_start is None or t.datetime_complete is None:
        return None
    return max(0.0, t.datetime_complete.timestamp() - t.datetime_start.timestamp())


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _failure_list(counts: dict[str, int]) -> list[Failure]:
    return [Failure(r, n) for r, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _unknown_study(study_dir: Path) -> ConfigError:
    runs = study_dir.parent
    if not runs.is_dir():
        held = "it does not exist"
    else:
        names = sorted(
            p.name for p in runs.iterdir() if p.is_dir() and ((p / JOURNAL).exists() or (p / STUDY_COPY).exists())
        )
        held = f"it holds: {', '.join(names)}" if names else "it holds no studies"
    return ConfigError(f"no study {study_dir.name!r} in runs directory {runs} ({held})")


def _read_meta(study_dir: Path) -> _Meta:
    copy_path = study_dir / STUDY_COPY
    try:
        copy = json.loads(copy_path.read_text()) if copy_path.exists() else {}
    except (OSError, ValueError):
        copy = {}
    spec = copy.get("spec") or {}
    objective = spec.get("objective") or {}
    budget = spec.get("budget") or {}
    finals = spec.get("finals") or {}
    return _Meta(
        name=copy.get("name") or study_dir.name,
        metric=objective.get("metric") or "val_acc",
        mode=objective.get("mode"),
        seeds=list(finals.get("seeds") or []),
        default_budget=budget.get("trials_per_cell"),
        tune_epochs=budget.get("epochs") or ((spec.get("base") or {}).get("optim") or {}).get("epochs"),
        finals_epochs=finals.get("epochs"),
        cells=copy.get("cells"),
    )


@dataclass
class _Trials:
    """The study's Optuna trials by cell (tuning, finals), the tuning studies' attributes, and the
    objective's direction as Optuna holds it."""

    tuning: dict[int, list[FrozenTrial]] = field(default_factory=dict)
    finals: dict[int, list[FrozenTrial]] = field(default_factory=dict)
    attrs: dict[int, dict[str, Any]] = field(default_factory=dict)
    mode: str | None = None


def _read_trials(study_dir: Path, storage: JournalStorage | None, name: str) -> _Trials:
    """The cells' Optuna studies (tuning "<name>/cellNNN", finals "<name>/cellNNN/finals")."""
    out = _Trials()
    record = StudyRecord(study_dir, storage=storage)
    if not record.has_journal():
        return out
    for idx, cell in record.cells(name).items():
        if cell.finals is not None:
            out.finals[idx] = record.trials(cell.finals)
        if cell.tuning is not None:
            out.tuning[idx] = record.trials(cell.tuning)
            out.attrs[idx] = cell.tuning.user_attrs
            out.mode = direction_mode(cell.tuning)
    return out


def _final_by_seed(finals: list[FrozenTrial], seeds: list[int]) -> dict[int, FrozenTrial]:
    by_seed: dict[int, FrozenTrial] = {}
    for t in finals:
        seed = t.user_attrs.get("seed")
        if t.state.is_finished() and seed is not None and (not seeds or int(seed) in seeds):
            by_seed[int(seed)] = t  # the last record wins, as in StudyStore.final_results
    return by_seed


def _cell_budget(cell: dict[str, Any], meta: _Meta, finished: int, running: int, has_finals: bool) -> int | None:
    if "budget" in cell:
        return cell["budget"]
    if has_finals and meta.default_budget is not None:
        # An older study.json (no per-cell budget): finals only start once tuning is over, and
        # a cell that searches nothing ran 1 trial, not trials_per_cell.
        return min(int(meta.default_budget), finished + running)
    return meta.default_budget


def _cell_status(
    cell: dict[str, Any],
    trials: list[FrozenTrial],
    finals: list[FrozenTrial],
    meta: _Meta,
    mode: str,
    running: bool,
    timings: _Timings,
) -> tuple[CellStatus, dict[str, int], int]:
    """One cell's status, its failures by reason and its final seeds still to run; adds its
    trials' times to ``timings``."""
    idx = int(cell["index"])
    counts = state_counts(trials)
    stale = 0 if running else counts["running"]
    if stale:
        counts["running"] = 0
    finished = counts["completed"] + counts["pruned"] + counts["failed"]
    best = best_trial(trials, mode)
    planned = int(cell.get("finals_planned", len(meta.seeds)))
    by_seed = _final_by_seed(finals, meta.seeds)
    budget = _cell_budget(cell, meta, finished, counts["running"], bool(by_seed))
    remaining = max(0, int(budget) - finished - counts["running"]) if budget is not None else None
    f_done = [t for t in by_seed.values() if t.state == TrialState.COMPLETE]
    f_failed = [t for t in by_seed.values() if t.state == TrialState.FAIL]
    tuning_over = remaining == 0 and counts["running"] == 0 and not stale
    skipped = tuning_over and best is None and not by_seed
    f_left = 0 if skipped else max(0, planned - len(by_seed))
    fails = failure_counts(trials)
    for reason, n in failure_counts(list(by_seed.values())).items():
        fails[reason] = fails.get(reason, 0) + n

    for t in trials:
        if t.state.is_finished():
            d = _duration(t)
            if d is not None:
                timings.tune_durations.append(d)
            if t.datetime_complete is not None:
                timings.ends.append(t.datetime_complete.timestamp())
        if t.datetime_start is not None:
            timings.starts.append(t.datetime_start.timestamp())
    for t in by_seed.values():
        w = _finite(t.user_attrs.get("wall_time_s"))
        if w is not None:
            timings.final_walls.append(w)
        if t.datetime_complete is not None:
            timings.ends.append(t.datetime_complete.timestamp())
    epochs = cell.get("epochs") or meta.tune_epochs
    if epochs:
        timings.tune_epochs.append(int(epochs))

    values = [v for v in (_finite(t.value) for t in f_done) if v is not None]
    status = CellStatus(
        index=idx,
        label=cell.get("label", cell_key(idx)),
        method=cell.get("method"),
        factors=cell.get("factors", {}),
        completed=counts["completed"],
        pruned=counts["pruned"],
        failed=counts["failed"],
        running=counts["running"],
        interrupted=stale,
        remaining=remaining,
        budget=budget,
        best_value=_finite(best.value) if best else None,
        best_params=jsonable(dict(best.params)) if best else {},
        best_trial=best.number if best else None,
        finals_done=len(f_done),
        finals_failed=len(f_failed),
        finals_planned=planned,
        finals_skipped=skipped,
        final_mean=statistics.fmean(values) if values else None,
        phase="tuning" if not tuning_over else ("finals" if f_left else "done"),
        failures=_failure_list(fails),
    )
    return status, fails, f_left


def _totals(cells: list[CellStatus], finals_remaining: int) -> Totals:
    def total(key: str) -> int:
        return sum(getattr(c, key) or 0 for c in cells)

    return Totals(
        **{
            k: total(k)
            for k in (
                "completed",
                "pruned",
                "failed",
                "running",
                "interrupted",
                "finals_done",
                "finals_failed",
                "finals_planned",
                "remaining",
                "budget",
            )
        },
        finals_remaining=finals_remaining,
    )


def _elapsed(timings: _Timings, running: bool, now: float) -> float | None:
    if not timings.starts:
        return None
    end = now if running else (max(timings.ends) if timings.ends else min(timings.starts))
    return max(0.0, end - min(timings.starts))


def _eta(done: bool, totals: Totals, timings: _Timings, finals_epochs: int | None, slots: int) -> float | None:
    if done:
        return 0.0
    if not timings.tune_durations and not timings.final_walls:
        return None
    tune_mean = statistics.fmean(timings.tune_durations) if timings.tune_durations else None
    if timings.final_walls:
        seed_mean = statistics.fmean(timings.final_walls)
    elif tune_mean is not None:
        te = statistics.fmean(timings.tune_epochs) if timings.tune_epochs else None
        seed_mean = tune_mean * (finals_epochs / te if finals_epochs and te else 1.0)
    else:
        seed_mean = None
    if (totals.remaining and tune_mean is None) or (totals.finals_remaining and seed_mean is None):
        return None
    work = totals.remaining * (tune_mean or 0.0) + totals.finals_remaining * (seed_mean or 0.0)
    return work / max(1, slots)


def study_status(study_dir: Path, *, storage: JournalStorage | None = None, now: float | None = None) -> StudyStatus:
    """A study's state from its own files (the Optuna journal, ``study.json``, ``.lock``). Never
    writes anything, never takes the study's lock.

    ``storage``: the running driver passes its own JournalStorage (replayed incrementally: cheap);
    otherwise the journal is opened read-only. ``driver`` is null when no driver runs it.

    Tuning trials left RUNNING in the journal by a driver that no longer runs are ``interrupted``
    (they run again on resume) and count as remaining. ``elapsed_s`` runs from the first tuning
    trial's start to now (running) or to the last recorded completion. ``eta_s`` is an ESTIMATE:
    remaining tuning trials x the mean wall time of finished tuning trials, plus remaining final
    seeds x the mean wall time of recorded finals (or, before any, the tuning mean scaled by final
    epochs / tuning epochs), divided by the driver's trial slots (1 if unknown); 0 when done, null
    while nothing has finished. Raises ConfigError (naming the runs directory) for an unknown study.
    """
    study_dir = Path(os.path.abspath(study_dir))
    journal = study_dir / JOURNAL
    if not journal.exists() and not (study_dir / STUDY_COPY).exists():
        raise _unknown_study(study_dir)
    now = time.time() if now is None else now
    meta = _read_meta(study_dir)
    trials = _read_trials(study_dir, storage, meta.name)
    mode = meta.mode or trials.mode or "max"
    cell_meta = meta.cells or [
        {"index": i, "label": trials.attrs[i].get("cell", cell_key(i)), "method": trials.attrs[i].get("method")}
        for i in sorted(trials.tuning)
    ]
    running, owner = driver_running(study_dir, now)

    # Stored by this version (study.json); computed from the factors for a study stored before.
    computed = cell_titles([dict(c.get("factors") or {}) for c in cell_meta]) if cell_meta else []
    titles = {
        int(c["index"]): c.get("title") or (t if c.get("factors") else None)
        for c, t in zip(cell_meta, computed, strict=True)
    }
    cells: list[CellStatus] = []
    all_failures: dict[str, int] = {}
    timings = _Timings()
    finals_remaining = 0
    for cell in cell_meta:
        idx = int(cell["index"])
        status, fails, finals_left = _cell_status(
            cell, trials.tuning.get(idx, []), trials.finals.get(idx, []), meta, mode, running, timings
        )
        cells.append(replace(status, title=str(titles.get(idx) or status.label)))
        finals_remaining += finals_left
        for reason, n in fails.items():
            all_failures[reason] = all_failures.get(reason, 0) + n

    done = bool(cells) and all(c.phase == "done" for c in cells)
    totals = _totals(cells, finals_remaining)
    slots = int(owner.get("slots") or 1) if owner else 1
    driver = None
    if running and owner is not None:
        driver = DriverInfo(owner.get("pid"), owner.get("host"), owner.get("started_at"), owner.get("slots"))
    return StudyStatus(
        study=meta.name,
        dir=str(study_dir),
        metric=meta.metric,
        mode=mode,
        running=running,
        driver=driver,
        last_driver=None if running else owner,
        elapsed_s=_elapsed(timings, running, now),
        eta_s=_eta(done, totals, timings, meta.finals_epochs, slots),
        updated_at=now,
        done=done,
        totals=totals,
        cells=cells,
        failures=_failure_list(all_failures),
    )


# -- the running driver's status.json ------------------------------------------------------
class StatusWriter:
    """The driver's event sink that keeps ``runs/<study>/status.json`` current (atomically).

    On ordinary events it rewrites at most every ``interval_s`` (10 s); when a cell's tuning or
    finals end, at once. A daemon thread also refreshes it every ``heartbeat_s`` (30 s) between
    :meth:`flush` (called at start) and :meth:`close` (at the end), so a reader on another host
    can tell a live driver (status.json fresher than 120 s) from a dead one; close's last write
    says ``running: false, ended: true``. The heartbeat also stops by itself once the store's
    lock is released. Errors are logged once and never reach the study."""

    def __init__(self, store: Any, *, interval_s: float = 10.0, heartbeat_s: float | None = 30.0):
        self.store = store
        self.path = Path(store.dir) / STATUS
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self._last = -math.inf
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False
        self._held = False
        study = store.study
        self._budget = {c.index: study.budget(c) for c in study.cells}
        self._planned = len(study.spec.finals.seeds)
        self._finished: dict[int, int] = {}
        self._finals: dict[int, int] = {}
        self.writes = 0

    # the sink
    def __call__(self, event: Event) -> None:
        cell = event.job.cell.index
        urgent = False
        if isinstance(event, TrialEnded):
            self._finished[cell] = self._finished.get(cell, 0) + 1
            urgent = self._finished[cell] >= self._budget.get(cell, math.inf)
        elif isinstance(event, FinalEnded):
            self._finals[cell] = self._finals.get(cell, 0) + 1
            urgent = self._finals[cell] >= self._planned
        elif isinstance(event, FinalsSkipped):
            urgent = True
        if urgent or time.monotonic() - self._last >= self.interval_s:
            self._write()

    def flush(self) -> None:
        """Write now (the runner calls it at start; it also starts the heartbeat)."""
        self._write()
        self._held = self.store.held
        if self.heartbeat_s and self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._beat, name="pal-status", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the heartbeat and write the last status (the runner calls it at the end)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._write(final=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if self._held and not self.store.held:
                return  # the driver let go of the study without close()
            self._write()

    def _write(self, final: bool = False) -> None:
        with self._lock:
            try:
                status = study_status(self.store.dir, storage=self.store.storage)
                if final:  # the driver is ending: it no longer runs the study
                    status = status.ending()
                for c in status.cells:  # re-anchor the event counts on the journal's
                    self._finished[c.index] = c.completed + c.pruned + c.failed
                    self._finals[c.index] = c.finals_done + c.finals_failed
                tmp = self.path.with_name(f"{STATUS}.{os.getpid()}.tmp")
                tmp.write_text(status.to_json(indent=1))
                os.replace(tmp, self.path)
                self.writes += 1
            except Exception as e:
                if not self._warned:
                    log.warning("could not write %s: %s", self.path, e)
                    self._warned = True
            finally:
                self._last = time.monotonic()


# -- rendering (pal-study status) ------------------------------------------------------------
def fmt_duration(s: float | None) -> str:
    """3s, 4m05s, 2h07m, 3d04h (progress lines and the status table)."""
    if s is None or not math.isfinite(s):
        return "unknown"
    s = round(max(0.0, s))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def fmt_params(p: dict[str, Any]) -> str:
    """A trial's parameters by their last key part: scale=3.25, weight_decay=0.00124."""
    if not p:
        return "(base config)"
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in p.items())


def render_status(status: StudyStatus) -> list[Any]:
    """A rich table per cell and the study's lines (for ``pal-study status``)."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"study {escape(status.study)} ({status.dir})")
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("#", "right"),
        ("cell", "left"),
        ("phase", "left"),
        ("completed", "right"),
        ("pruned", "right"),
        ("failed", "right"),
        ("running", "right"),
        ("left", "right"),
        (f"best {status.metric}", "right"),
        ("best params", "left"),
        ("finals", "right"),
    )
    for col, just in columns:
        t.add_column(col, justify=just)
    for c in status.cells:
        t.add_row(*_cell_row(c, escape))
    lines: list[Any] = [t, _state_line(status), _timing_line(status)]
    if status.failures:
        lines.append("failures:\n" + "\n".join(f"  {f.count} × {f.reason}" for f in status.failures[:8]))
    return lines


def _cell_row(c: CellStatus, escape: Callable[[str], str]) -> list[str]:
    finals = f"{c.finals_done}/{c.finals_planned}"
    if c.finals_failed:
        finals += f" ({c.finals_failed} failed)"
    if c.finals_skipped:
        finals = "skipped"
    running = str(c.running) + (f" (+{c.interrupted} interrupted)" if c.interrupted else "")
    return [
        str(c.index),
        escape(c.title or c.label),
        c.phase,
        str(c.completed),
        str(c.pruned),
        str(c.failed),
        running,
        "?" if c.remaining is None else str(c.remaining),
        "-" if c.best_value is None else f"{c.best_value:.4f}",
        escape(fmt_params(c.best_params)) if c.best_trial is not None else "-",
        finals,
    ]


def _state_line(status: StudyStatus) -> str:
    tot = status.totals
    if status.running:
        d = status.driver or DriverInfo(None, None, None, None)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.started_at)) if d.started_at else "?"
        slots = f", {d.slots} trial slots" if d.slots else ""
        state = f"running: pid {d.pid}@{d.host} since {since}{slots}"
    elif status.done:
        state = "done"
    else:
        state = "not running" + (" (interrupted: run it again to resume)" if status.last_driver else "")
    return (
        f"{state}; tuning {tot.completed + tot.pruned + tot.failed}/{tot.budget} finished "
        f"({tot.completed} completed, {tot.pruned} pruned, {tot.failed} failed, "
        f"{tot.running} running, {tot.remaining} left); finals {tot.finals_done}/"
        f"{tot.finals_planned} done" + (f", {tot.finals_failed} failed" if tot.finals_failed else "")
    )


def _timing_line(status: StudyStatus) -> str:
    eta = "-" if status.done else ("unknown" if status.eta_s is None else f"~{fmt_duration(status.eta_s)}")
    return f"elapsed {fmt_duration(status.elapsed_s)}; eta {eta}" + (
        "" if status.done or status.running or status.eta_s is None else " once resumed"
    )


__all__ = [
    "CellStatus",
    "DriverInfo",
    "Failure",
    "StatusWriter",
    "StudyStatus",
    "Totals",
    "driver_running",
    "render_status",
    "study_status",
]
