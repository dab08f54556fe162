"""``StudyProgress``: rich bars, plain timestamped lines (throttled), or nothing; fed synthetic
engine events with a recording console and a fake clock."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from rich.console import Console

from pal_study.cli import main
from pal_study.study import load_study
from pal_study.study.events import EpochReported, FinalEnded, FinalsSkipped, TrialEnded, TrialRetried, TrialStarted
from pal_study.study.progress import StudyProgress
from pal_study.study.runner import CellSummary

ROOT = Path(__file__).resolve().parents[2]
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def make_study(tmp_path: Path, noise=(0.0,), trials: int = 3, seeds=(0, 1)):
    spec = {
        "name": "prog",
        "base": {"data": {"name": "digits"}, "optim": {"epochs": 4}},
        "factors": {"method": ["ce", "ce+fnpal"], "data.noise.rate": list(noise)},
        "search": [str(ROOT / "search_spaces/pal_scale.yaml"), str(ROOT / "search_spaces/weight_decay.yaml")],
        "budget": {"trials_per_cell": trials},
        "finals": {"seeds": list(seeds)},
        "resources": {"cpu": 1},
    }
    path = tmp_path / "prog.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_study(path)


class Clock:
    def __init__(self, monkeypatch, t: float = 1_800_000_000.0):
        self.t = t
        monkeypatch.setattr(time, "time", lambda: self.t)

    def tick(self, s: float) -> None:
        self.t += s


def recording(terminal: bool = False) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=100), buf


def tune_job(cell, number: int, params: dict | None = None):
    return SimpleNamespace(stage="tune", cell=cell, trial=SimpleNamespace(number=number, params=params or {}), seeds=[])


def final_job(cell, seeds):
    return SimpleNamespace(stage="final", cell=cell, trial=None, seeds=list(seeds))


def lines(buf: io.StringIO) -> list[str]:
    return [ln for ln in buf.getvalue().splitlines() if ln.strip()]


def run_cell(p: StudyProgress, clock: Clock, cell, values, epochs: int = 4, epoch_s: float = 5.0) -> None:
    """One cell's tuning trials one after the other, an epoch event every ``epoch_s``."""
    for n, value in enumerate(values):
        job = tune_job(cell, n, {"optim.weight_decay": 1e-3 * (n + 1)})
        p(TrialStarted(job, {}))
        for e in range(1, epochs + 1):
            clock.tick(epoch_s)
            p(EpochReported(job, e, value, {}))
        p(TrialEnded(job, "completed" if value is not None else "pruned", value))


def test_plain_lines_are_throttled_timestamped_and_mark_cell_ends(tmp_path, monkeypatch):
    study = make_study(tmp_path)
    clock = Clock(monkeypatch)
    console, buf = recording()
    p = StudyProgress(study, console, before=[], mode="plain")
    assert p.mode == "plain"
    c0, c1 = study.cells
    with p:
        assert len(lines(buf)) == 1 and "2 cells, 6 tuning trials" in lines(buf)[0]
        # 3 trials x 4 epochs x 5 s = 60 s of epochs: two periodic lines, one cell-end line.
        run_cell(p, clock, c0, [0.8, 0.9, None])
        out = lines(buf)
        periodic = [ln for ln in out if "progress:" in ln]
        assert len(periodic) == 2, out
        tuned = [ln for ln in out if "tuning done" in ln]
        assert len(tuned) == 1 and f"cell 0 ({c0.title}) tuning done" in tuned[0]
        assert "best val_acc 0.9000 (trial 1): weight_decay=0.002" in tuned[0]
        # Its finals: one line at the end, with the mean over completed seeds.
        fj = final_job(c0, [0, 1])
        p(TrialStarted(fj, {}))
        p(FinalEnded(fj, 0, True, 0.91, None, {}, {}, None))
        assert not any("finals done" in ln for ln in lines(buf))
        p(FinalEnded(fj, 1, True, 0.93, None, {}, {}, None))
        finals = [ln for ln in lines(buf) if "finals done" in ln]
        assert len(finals) == 1 and "final val_acc mean 0.9200 over 2 seeds" in finals[0]
        # A burst of 100 epoch events inside one 30 s window adds no line.
        n = len(lines(buf))
        job = tune_job(c1, 0)
        p(TrialStarted(job, {}))
        for e in range(100):
            clock.tick(0.1)
            p(EpochReported(job, e, 0.5, {}))
        assert len(lines(buf)) == n
        clock.tick(30)
        p(EpochReported(job, 101, 0.5, {}))
        last = lines(buf)[-1]
        assert len(lines(buf)) == n + 1
        for field in (
            "completed 2",
            "pruned 1",
            "failed 0",
            "running 1",
            "remaining 2",
            "finals 2/4",
            f"best #0 ({c0.title}) 0.9000",
            "elapsed 1m40s",
            "eta ~",
        ):
            assert field in last, (field, last)
    out = lines(buf)
    assert "ended:" in out[-1]
    assert all(STAMP.match(ln) for ln in out), out  # every line timestamped, none wrapped


def test_plain_compacts_many_finished_cells_and_notes_skipped_finals(tmp_path, monkeypatch):
    study = make_study(tmp_path, noise=(0.0, 0.2, 0.4), trials=1, seeds=(0,))
    assert len(study.cells) == 6
    clock = Clock(monkeypatch)
    console, buf = recording()
    p = StudyProgress(study, console, before=[], mode="plain")
    with p:
        for i, cell in enumerate(study.cells[:5]):
            run_cell(p, clock, cell, [0.5 + 0.01 * i], epochs=1, epoch_s=1)
        clock.tick(31)
        p(EpochReported(tune_job(study.cells[5], 0), 1, 0.1, {}))
        # the best cell is named by its short title, not only its index
        assert study.cells[4].title == "ce · noise 0.4" and study.cells[4].title != study.cells[4].label
        assert "5 cells tuned, best #4 (ce · noise 0.4) 0.5400" in lines(buf)[-1]
        p(FinalsSkipped(final_job(study.cells[5], []), "no tuning trial completed"))
        assert f"cell 5 ({study.cells[5].title}): finals skipped" in lines(buf)[-1]


def test_resumed_cells_start_from_before_and_get_no_end_line(tmp_path, monkeypatch):
    study = make_study(tmp_path)
    clock = Clock(monkeypatch)
    c0, c1 = study.cells
    before = [
        CellSummary(
            index=0,
            label=c0.label,
            method=c0.method,
            factors=c0.factors,
            counts={"completed": 2, "pruned": 1, "failed": 0, "running": 0},
            best_trial=1,
            best_value=0.95,
            best_params={"optim.weight_decay": 0.01},
            finals={0: {"state": "complete", "value": 0.9}},
        ),
        CellSummary(
            index=1,
            label=c1.label,
            method=c1.method,
            factors=c1.factors,
            counts={"completed": 1, "pruned": 0, "failed": 0, "running": 1},
            best_trial=0,
            best_value=0.7,
            best_params={},
        ),
    ]
    console, buf = recording()
    p = StudyProgress(study, console, before=before, mode="plain")
    assert p.counts == {"running": 0, "completed": 3, "pruned": 1, "failed": 0}
    with p:
        fj = final_job(c0, [1])
        p(TrialStarted(fj, {}))
        p(FinalEnded(fj, 1, True, 0.8, None, {}, {}, None))
        ends = [ln for ln in lines(buf) if "done:" in ln]
        # Cell 0's tuning ended in an earlier session: only its finals' end is said, with the
        # mean over both seeds (one from before).
        assert len(ends) == 1 and "cell 0" in ends[0] and "mean 0.8500 over 2 seeds" in ends[0]
        run_cell(p, clock, c1, [0.6, 0.99], epochs=1)  # 1 + 2 = its budget of 3
        tuned = [ln for ln in lines(buf) if "tuning done" in ln]
        assert len(tuned) == 1 and "cell 1" in tuned[0] and "0.9900" in tuned[0]


def test_none_prints_nothing(tmp_path, monkeypatch):
    study = make_study(tmp_path)
    clock = Clock(monkeypatch)
    console, buf = recording()
    p = StudyProgress(study, console, before=[], mode="none")
    with p:
        run_cell(p, clock, study.cells[0], [0.8, 0.9, 0.7], epoch_s=60)
        p(FinalsSkipped(final_job(study.cells[1], []), "x"))
    assert buf.getvalue() == ""


def test_auto_picks_rich_on_a_terminal_else_plain(tmp_path):
    study = make_study(tmp_path)
    assert StudyProgress(study, recording(terminal=False)[0], before=[]).mode == "plain"
    assert StudyProgress(study, recording(terminal=True)[0], before=[]).mode == "rich"
    with pytest.raises(ValueError, match="allowed: auto, rich, plain, none"):
        StudyProgress(study, recording()[0], before=[], mode="fancy")


def test_rich_bars_follow_the_engine_events(tmp_path, monkeypatch):
    study = make_study(tmp_path)
    clock = Clock(monkeypatch)
    console, buf = recording(terminal=True)
    p = StudyProgress(study, console, before=[], mode="rich")
    c0, c1 = study.cells
    with p:
        job = tune_job(c0, 0)
        p(TrialStarted(job, {}))
        p(TrialRetried(job, 1))  # retry: no longer running
        assert p.counts["running"] == 0
        run_cell(p, clock, c0, [0.8, 0.9, 0.85])
        p(FinalsSkipped(final_job(c1, []), "no tuning trial completed"))
        tune, finals = p.progress.tasks
        assert (tune.completed, tune.total) == (3, 6)
        assert (finals.completed, finals.total) == (2, 4)
        assert f"best val_acc 0.9000 (#0 {c0.title})" in tune.fields["status"]
    assert "tuning" in buf.getvalue() and "finals" in buf.getvalue()


def test_bad_progress_value_exits_2(tmp_path, capsys):
    rc = main(["run", str(tmp_path / "whatever.yaml"), "--progress", "bogus"])
    err = capsys.readouterr().err
    assert rc == 2 and "--progress" in err and "auto, rich, plain, none" in err
