"""Live progress of a study (rich): tuning and final trials, states, best so far, time left."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pal_study.study.spec import Study


class StudyProgress:
    """An event sink for :class:`~pal_study.study.engine.StudySearcher` that draws two bars."""

    def __init__(self, study: Study, console: Console, *, done: dict[str, int], finals_done: int):
        self.study = study
        self.mode = study.spec.objective.mode
        self.metric = study.spec.objective.metric
        self.counts = {"running": 0, **done}
        self.finals_running = 0
        self.best: tuple[float, str] | None = None
        self.progress = Progress(
            TextColumn("[bold]{task.description:<7}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
            console=console, transient=False, disable=not console.is_terminal,
        )
        self.tune_task = self.progress.add_task(
            "tuning", total=study.tuning_trials, completed=min(study.tuning_trials, sum(done.values())), status="")
        self.final_task = self.progress.add_task(
            "finals", total=study.final_trials, completed=min(study.final_trials, finals_done), status="")
        self._n_cells = len(study.cells)
        self._refresh()

    def __enter__(self) -> StudyProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def __call__(self, kind: str, job: Any, info: dict[str, Any]) -> None:
        if kind == "started":
            if job.stage == "tune":
                self.counts["running"] += 1
            else:
                self.finals_running += len(job.seeds)
        elif kind in ("completed", "pruned", "failed"):
            self.counts["running"] -= 1
            self.counts[kind] += 1
            self.progress.advance(self.tune_task)
            value = info.get("value")
            if kind == "completed" and value is not None:
                better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
                if better:
                    self.best = (value, job.cell.label)
        elif kind in ("final_done", "final_failed"):
            self.finals_running -= 1
            self.progress.advance(self.final_task)
        elif kind == "retry":
            if job.stage == "tune":
                self.counts["running"] -= 1
            else:
                self.finals_running -= len(info.get("seeds") or [])
        elif kind == "finals_skipped":
            self.progress.advance(self.final_task, len(self.study.spec.finals.seeds))
        self._refresh()

    def _refresh(self) -> None:
        c = self.counts
        best = f" · best {self.metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        self.progress.update(
            self.tune_task,
            status=f"{self._n_cells} cells · running {c['running']} · completed {c['completed']} · "
                   f"pruned {c['pruned']} · failed {c['failed']}{best}")
        self.progress.update(self.final_task, status=f"running {self.finals_running}")
