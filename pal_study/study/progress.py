"""Live progress of a study: rich bars on a terminal, timestamped lines in logs, or nothing.

``--progress auto|rich|plain|none`` (auto: rich on a terminal, plain otherwise). Plain mode is for
logs (CI, ``nohup``, a cluster's job output): a line at most every 30 s, a line when a cell's
tuning or finals end, never one per epoch.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pal_study.study.events import Event, FinalEnded, FinalsSkipped, TrialEnded, TrialRetried, TrialStarted
from pal_study.study.spec import Study
from pal_study.study.status import fmt_duration, fmt_params

MODES = ("auto", "rich", "plain", "none")
PLAIN_EVERY_S = 30.0
# Periodic lines name each finished cell's best up to this many cells, then only the overall best.
PLAIN_CELLS = 4


class StudyProgress:
    """An event sink for :class:`~pal_study.study.engine.StudySearcher`.

    ``before``: ``runner.summarize(study, store)`` at start (what earlier sessions finished).
    ``mode``: ``rich`` (two bars), ``plain`` (timestamped lines), ``none``, or ``auto`` (rich
    when ``console.is_terminal``, else plain)."""

    def __init__(self, study: Study, console: Console, *, before: list[Any] | None = None, mode: str = "auto"):
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}; allowed: {', '.join(MODES)}")
        if mode == "auto":
            mode = "rich" if console.is_terminal else "plain"
        self.mode = mode
        self.study = study
        self.console = console
        self.obj_mode = study.spec.objective.mode
        self.metric = study.spec.objective.metric
        self.seeds = list(study.spec.finals.seeds)
        cells = study.cells
        self._cells = {c.index: c for c in cells}
        self._budget = {c.index: study.budget(c) for c in cells}
        # Per cell: finished tuning trials, running ones, finals recorded (or skipped), best so far.
        self._finished = {c.index: 0 for c in cells}
        self._running = {c.index: 0 for c in cells}
        self._finals = {c.index: 0 for c in cells}
        self._final_values: dict[int, list[float]] = {c.index: [] for c in cells}
        self._best: dict[int, tuple[float, dict[str, Any], int | None]] = {}
        self.counts = {"running": 0, "completed": 0, "pruned": 0, "failed": 0}
        self.finals_running = 0
        for b in before or []:
            i = b.index
            if i not in self._finished:
                continue
            for k in ("completed", "pruned", "failed"):
                self.counts[k] += int(b.counts.get(k, 0))
            self._finished[i] = sum(int(b.counts.get(k, 0)) for k in ("completed", "pruned", "failed"))
            if b.best_value is not None:
                self._best[i] = (b.best_value, dict(b.best_params or {}), b.best_trial)
            recorded = {s: r for s, r in (b.finals or {}).items() if s in self.seeds}
            self._finals[i] = len(recorded)
            self._final_values[i] = [
                r["value"]
                for r in recorded.values()
                if r.get("state") == "complete" and isinstance(r.get("value"), (int, float))
            ]
        self._finals_total = sum(self._finals.values())
        self._tuning_total = sum(self.counts[k] for k in ("completed", "pruned", "failed"))
        # A cell already past a stage when this session starts gets no "ended" line.
        self._tune_ended = {i for i in self._finished if before is not None and self._tuning_over(i)}
        self._finals_ended = {i for i in self._finished if before is not None and self._finals[i] >= len(self.seeds)}
        # The rate so far (this session only) gives the ETA of plain lines.
        self._t0: float | None = None
        self._work0 = self._work_done()
        self._last_line: float | None = None

        self.progress: Progress | None = None
        if self.mode == "rich":
            self.progress = Progress(
                TextColumn("[bold]{task.description:<7}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self.tune_task = self.progress.add_task(
                "tuning", total=study.tuning_trials, completed=min(study.tuning_trials, self._tuning_total), status=""
            )
            self.final_task = self.progress.add_task(
                "finals", total=study.final_trials, completed=min(study.final_trials, self._finals_total), status=""
            )
            self._refresh()

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> StudyProgress:
        self._t0 = time.time()
        self._work0 = self._work_done()
        if self.progress is not None:
            self.progress.start()
        elif self.mode == "plain":
            s = self.study
            sens = f" (+{len(s.sensitivity_cells)} sensitivity cells)" if s.sensitivity_cells else ""
            self._line(
                f"study {s.spec.name}: {len(s.factor_cells)} cells{sens}, {s.tuning_trials} tuning trials "
                f"({self._tuning_total} finished before), {s.final_trials} final runs "
                f"({self._finals_total} before)"
            )
            self._last_line = self._t0
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
        elif self.mode == "plain":
            self._line(self._status_line(final=True))

    # -- events ----------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        job = event.job
        i = job.cell.index
        if isinstance(event, TrialStarted):
            if job.stage == "tune":
                self.counts["running"] += 1
                self._running[i] = self._running.get(i, 0) + 1
            else:
                self.finals_running += len(job.seeds)
        elif isinstance(event, TrialEnded):
            self.counts["running"] -= 1
            self._running[i] = self._running.get(i, 0) - 1
            self.counts[event.outcome] += 1
            self._finished[i] = self._finished.get(i, 0) + 1
            self._tuning_total += 1
            if self.progress is not None:
                self.progress.advance(self.tune_task)
            value = event.value
            if event.outcome == "completed" and value is not None and self._better(value, self._best.get(i)):
                trial = getattr(job, "trial", None)
                params = dict(getattr(trial, "params", None) or {}) if trial is not None else {}
                self._best[i] = (value, params, getattr(trial, "number", None))
            if i not in self._tune_ended and self._tuning_over(i):
                self._tune_ended.add(i)
                self._cell_tuned(i)
        elif isinstance(event, FinalEnded):
            self.finals_running -= 1
            self._finals[i] = self._finals.get(i, 0) + 1
            self._finals_total += 1
            if event.ok and isinstance(event.value, (int, float)):
                self._final_values.setdefault(i, []).append(event.value)
            if self.progress is not None:
                self.progress.advance(self.final_task)
            if i not in self._finals_ended and self._finals[i] >= len(self.seeds):
                self._finals_ended.add(i)
                self._cell_finals(i)
        elif isinstance(event, TrialRetried):
            if job.stage == "tune":
                self.counts["running"] -= 1
                self._running[i] = self._running.get(i, 0) - 1
            else:
                self.finals_running -= len(event.seeds)
        elif isinstance(event, FinalsSkipped):
            n = len(self.seeds) - self._finals.get(i, 0)
            self._finals[i] = len(self.seeds)
            self._finals_total += n
            if self.progress is not None:
                self.progress.advance(self.final_task, n)
            if i not in self._finals_ended:
                self._finals_ended.add(i)
                if self.mode == "plain":
                    self._line(f"cell {i} ({self._cells[i].name}): finals skipped: {event.reason}")
        if self.progress is not None:
            self._refresh()
        elif self.mode == "plain":
            now = time.time()
            if self._last_line is None:
                self._last_line = now
            elif now - self._last_line >= PLAIN_EVERY_S:
                self._line(self._status_line())
                self._last_line = now

    # -- state -----------------------------------------------------------------------------
    def _better(self, value: float, best: tuple[float, Any] | tuple[float, Any, Any] | None) -> bool:
        """Whether ``value`` beats ``best`` (its value first: a cell's best record, or a (value, label) pair)."""
        return best is None or (value > best[0] if self.obj_mode == "max" else value < best[0])

    def _tuning_over(self, i: int) -> bool:
        return self._finished.get(i, 0) >= self._budget[i] and self._running.get(i, 0) <= 0

    def _epochs_ratio(self) -> float:
        spec = self.study.spec
        tune = spec.budget.epochs or max((c.config.optim.epochs or 1) for c in self.study.cells)
        return (spec.finals.epochs or tune) / tune

    def _work_done(self) -> float:
        # Work in tuning-trial units: a final seed weighs its epochs relative to a tuning trial's.
        return self._tuning_total + self._finals_total * self._epochs_ratio()

    def _work_total(self) -> float:
        return self.study.tuning_trials + self.study.final_trials * self._epochs_ratio()

    def _eta(self, now: float) -> float | None:
        if self._t0 is None:
            return None
        rate_work = self._work_done() - self._work0
        left = max(0.0, self._work_total() - self._work_done())
        if left == 0:
            return 0.0
        if rate_work <= 0 or now <= self._t0:
            return None
        return left * (now - self._t0) / rate_work

    # -- output ----------------------------------------------------------------------------
    def _line(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time()))
        self.console.print(f"{stamp} {text}", markup=False, highlight=False, soft_wrap=True)

    def _fmt(self, v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    def _cell_tuned(self, i: int) -> None:
        if self.mode != "plain":
            return
        c = self.counts
        best = self._best.get(i)
        what = (
            (
                f"best {self.metric} {self._fmt(best[0])}"
                + (f" (trial {best[2]})" if best[2] is not None else "")
                + f": {fmt_params(best[1])}"
            )
            if best
            else "no trial completed"
        )
        self._line(
            f"cell {i} ({self._cells[i].name}) tuning done: {what}"
            f" · study tuning {self._tuning_total}/{self.study.tuning_trials} (running {c['running']})"
        )

    def _cell_finals(self, i: int) -> None:
        if self.mode != "plain":
            return
        vals = self._final_values.get(i) or []
        mean = (
            f"final {self.metric} mean {self._fmt(statistics.fmean(vals))} over {len(vals)} seeds"
            if vals
            else "no final seed completed"
        )
        self._line(
            f"cell {i} ({self._cells[i].name}) finals done: {mean}"
            f" · study finals {self._finals_total}/{self.study.final_trials}"
        )

    def _status_line(self, final: bool = False) -> str:
        now = time.time()
        c = self.counts
        remaining = sum(max(0, self._budget[i] - self._finished[i] - max(0, self._running[i])) for i in self._budget)
        tuned = sorted(i for i in self._tune_ended if i in self._best)
        if len(tuned) <= PLAIN_CELLS:
            best = ", ".join(f"#{i} ({self._cells[i].name}) {self._fmt(self._best[i][0])}" for i in tuned)
            best = f" · best {best}" if best else ""
        else:
            top = max(tuned, key=lambda i: self._best[i][0] if self.obj_mode == "max" else -self._best[i][0])
            best = f" · {len(tuned)} cells tuned, best #{top} ({self._cells[top].name}) {self._fmt(self._best[top][0])}"
        elapsed = now - self._t0 if self._t0 is not None else None
        eta = self._eta(now)
        head = "ended" if final else "progress"
        return (
            f"{head}: tuning completed {c['completed']} · pruned {c['pruned']} · failed {c['failed']} · "
            f"running {max(0, c['running'])} · remaining {remaining} · finals {self._finals_total}/"
            f"{self.study.final_trials}{best} · elapsed {fmt_duration(elapsed)}"
            + ("" if final else f" · eta {'unknown' if eta is None else '~' + fmt_duration(eta)}")
        )

    def _refresh(self) -> None:
        assert self.progress is not None
        c = self.counts
        best_cells = [(v[0], f"#{i} {self._cells[i].name}") for i, v in self._best.items()]
        best = None
        for value, label in best_cells:
            if best is None or self._better(value, best):
                best = (value, label)
        best_txt = f" · best {self.metric} {best[0]:.4f} ({best[1]})" if best else ""
        self.progress.update(
            self.tune_task,
            status=f"{len(self._cells)} cells · running {c['running']} · completed {c['completed']} · "
            f"pruned {c['pruned']} · failed {c['failed']}{best_txt}",
        )
        self.progress.update(self.final_task, status=f"running {self.finals_running}")
