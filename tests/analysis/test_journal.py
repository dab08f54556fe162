"""The read-only reader of a study's record (pal_study.analysis.journal): it reads a journal that
another process is writing, and never creates, changes or locks a file of the run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from pal_study.analysis.figures import journal_curves
from pal_study.analysis.importance import study_importances
from pal_study.analysis.journal import StudyRecord, open_journal_readonly
from pal_study.analysis.record import journal_finals, journal_judge
from pal_study.layout import JOURNAL, LOCK, STATUS, STUDY_COPY, SUMMARY, finals_study_name, tuning_study_name
from pal_study.study.status import study_status


def _write_record(run_dir: Path, study: str = "s") -> JournalStorage:
    """A finished study's record as the driver leaves it: two cells (tuning and finals), a
    sensitivity cell (finals only), study.json, summary.json, status.json, the lock file and a
    checkpoint."""
    run_dir.mkdir(parents=True)
    storage = JournalStorage(JournalFileBackend(str(run_dir / JOURNAL)))
    config = {"data": {"name": "digits", "noise": {"rate": 0.0}}, "optim": {"weight_decay": 1e-4}}
    for cell, method in ((0, "ce"), (1, "ce+pal")):
        st = optuna.create_study(
            storage=storage,
            study_name=tuning_study_name(study, cell),
            direction="maximize",
            sampler=optuna.samplers.RandomSampler(seed=cell),
        )
        st.set_user_attr("cell", f"method={method}")
        st.set_user_attr("factors", json.dumps({"method": method}))
        st.set_user_attr("method", method)
        for i in range(5):
            st.add_trial(
                optuna.trial.create_trial(
                    params={"optim.weight_decay": 10.0 ** -(i + 2)},
                    distributions={"optim.weight_decay": optuna.distributions.FloatDistribution(1e-7, 1e-1, log=True)},
                    value=0.5 + 0.05 * i,
                    intermediate_values={0: 0.3, 1: 0.4 + 0.05 * i},
                )
            )
        fin = optuna.create_study(storage=storage, study_name=finals_study_name(study, cell), direction="maximize")
        for seed in (0, 1):
            attrs = {"seed": seed, "config": json.dumps({**config, "method": method}), "test_acc": 0.8 + 0.01 * seed}
            fin.add_trial(optuna.trial.create_trial(value=0.9, user_attrs=attrs))
    variant = optuna.create_study(storage=storage, study_name=finals_study_name(study, 2), direction="maximize")
    variant.set_user_attr("cell", "method=ce+pal,head.scale=5")
    variant.set_user_attr("variant", json.dumps({"head.scale": 5}))
    variant.set_user_attr("tuning_study", tuning_study_name(study, 1))
    (run_dir / STUDY_COPY).write_text(json.dumps({"name": study, "spec": {"objective": {"mode": "max"}}}))
    (run_dir / SUMMARY).write_text(json.dumps({"study": study, "complete": True, "claims": []}))
    (run_dir / STATUS).write_text(json.dumps({"study": study, "running": False, "ended": True}))
    (run_dir / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere", "started_at": 0.0}))
    (run_dir / "checkpoints" / "cell000").mkdir(parents=True)
    (run_dir / "checkpoints" / "cell000" / "final-seed0.pt").write_bytes(b"weights")
    return storage


def _snapshot(root: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every path under ``root`` (and ``root`` itself) -> (its bytes, None for a directory; mtime)."""
    out = {".": (None, root.stat().st_mtime_ns)}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (None if p.is_dir() else p.read_bytes(), st.st_mtime_ns)
    return out


def test_the_record_lists_cells_trials_and_files(tmp_path):
    _write_record(tmp_path / "s")
    rec = StudyRecord(tmp_path / "s")
    assert rec.has_journal()
    cells = rec.cells()
    assert list(cells) == [0, 1, 2]
    assert cells[0].tuning.study_name == "s/cell000" and cells[0].finals.study_name == "s/cell000/finals"
    assert cells[2].tuning is None and cells[2].finals.user_attrs["tuning_study"] == "s/cell001"
    assert rec.cells("other") == {}
    assert [s.study_name for s in rec.tuning_studies()] == ["s/cell000", "s/cell001"]
    assert [s.study_name for s in rec.finals_studies()] == ["s/cell000/finals", "s/cell001/finals", "s/cell002/finals"]
    assert len(rec.trials(cells[1].tuning)) == 5 and len(rec.trials("s/cell001/finals")) == 2
    assert rec.load("s/cell000").best_value == pytest.approx(0.7)
    assert rec.summary()["complete"] is True and rec.study_copy()["name"] == "s"


def test_reading_never_creates_changes_or_locks_a_file(tmp_path):
    run_dir = tmp_path / "s"
    _write_record(run_dir)
    past = time.time() - 3600  # mtimes an hour back: any rewrite, even of the same bytes, shows
    for p in [run_dir, *run_dir.rglob("*")]:
        os.utime(p, (past, past), follow_symlinks=False)
    before = _snapshot(run_dir)

    rec = StudyRecord(run_dir)
    assert len(rec.cells()) == 3
    assert study_importances(rec) and journal_curves(rec)
    assert study_importances(run_dir / JOURNAL, evaluator="fanova")
    runs = journal_finals(run_dir)
    assert {(r.cell, r.seed) for r in runs} >= {("method=ce", 0), ("method=ce+pal", 1)}
    assert journal_judge(run_dir, runs) == ([], [])
    assert study_status(run_dir).totals.completed == 10
    # Writes through the reader are refused, before Optuna's lock is taken.
    with pytest.raises(RuntimeError, match="read-only"):
        rec.load("s/cell000").set_user_attr("note", "x")
    with pytest.raises(RuntimeError, match="read-only"):
        optuna.delete_study(study_name="s/cell001", storage=rec.storage)

    assert _snapshot(run_dir) == before


def test_a_missing_journal_is_not_created(tmp_path):
    run_dir = tmp_path / "s"
    run_dir.mkdir()
    rec = StudyRecord(run_dir)
    assert not rec.has_journal()
    assert rec.studies() == [] and rec.cells() == {} and rec.summary() == {} and rec.study_copy() == {}
    with pytest.raises(FileNotFoundError):
        _ = rec.storage
    with pytest.raises(FileNotFoundError):
        open_journal_readonly(run_dir / JOURNAL)
    assert study_importances(run_dir / JOURNAL) == [] and journal_curves(run_dir / JOURNAL) == {}
    assert list(run_dir.iterdir()) == []


def test_unreadable_summary_files_read_as_empty(tmp_path):
    run_dir = tmp_path / "s"
    run_dir.mkdir()
    (run_dir / SUMMARY).write_text('{"torn": ')
    (run_dir / STUDY_COPY).write_text("[1, 2]")
    rec = StudyRecord(run_dir)
    assert rec.summary() == {} and rec.study_copy() == {}


_WRITER = textwrap.dedent(
    """
    import sys, time
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path, n = sys.argv[1], int(sys.argv[2])
    storage = JournalStorage(JournalFileBackend(path))
    st = optuna.create_study(storage=storage, study_name="w/cell000", direction="maximize")
    fin = optuna.create_study(storage=storage, study_name="w/cell000/finals", direction="maximize")
    print("ready", flush=True)
    for i in range(n):
        trial = st.ask()
        for epoch in range(3):
            trial.report(0.1 * epoch + 0.001 * i, epoch)
        st.tell(trial, 0.5 + 0.001 * i)
        fin.add_trial(optuna.trial.create_trial(value=0.9, user_attrs={"seed": i}))
        time.sleep(0.002)
    """
)


def test_reads_a_journal_another_process_is_writing(tmp_path):
    run_dir = tmp_path / "w"
    run_dir.mkdir()
    n = 150
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(run_dir / JOURNAL), str(n)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        live = StudyRecord(run_dir)  # one reader kept open (replays what was appended since)
        seen_live: list[int] = []
        seen_fresh: list[int] = []
        deadline = time.monotonic() + 120
        while writer.poll() is None and time.monotonic() < deadline:
            trials = live.trials(live.cells()[0].tuning)
            # A reader sees whole trials: each finished one with its value and epochs.
            assert all(t.value is not None and len(t.intermediate_values) == 3 for t in trials if t.state.is_finished())
            seen_live.append(sum(t.state.is_finished() for t in trials))
            fresh = StudyRecord(run_dir).cells("w")
            seen_fresh.append(len(StudyRecord(run_dir).trials(fresh[0].finals)) if 0 in fresh else 0)
        assert writer.wait(timeout=max(1.0, deadline - time.monotonic())) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert seen_live == sorted(seen_live) and len(seen_live) > 1
    assert len(set(seen_live)) > 1, "the reader only ever saw one state of the journal"
    assert max(seen_live + seen_fresh) <= n
    final = StudyRecord(run_dir)
    assert sum(t.state.is_finished() for t in final.trials("w/cell000")) == n
    assert len(final.trials("w/cell000/finals")) == n
    assert sum(t.state.is_finished() for t in live.trials("w/cell000")) == n  # the kept reader catches up
    assert sorted(p.name for p in run_dir.iterdir()) == [JOURNAL]  # no lock left behind by anyone


def test_study_titles_skip_what_is_not_a_cell_s_factors():
    """optuna-dashboard's list (TitledStudies) over a journal with odd attributes: stored titles
    win, factors that are not a JSON object give no title, other studies are left alone."""
    from optuna.study import StudyDirection
    from optuna.study._frozen import FrozenStudy

    from pal_study.analysis.journal import study_titles

    def st(name, attrs, i):
        return FrozenStudy(name, StudyDirection.MAXIMIZE, attrs, {}, i)

    studies = [
        st("s/cell000", {"factors": "[1, 2]"}, 0),
        st("s/cell001", {"factors": "{not json"}, 1),
        st("s/cell002", {"factors": '{"method": "ce"}'}, 2),
        st("s/cell002/finals", {}, 3),
        st("s/cell003", {"title": 5, "factors": '{"method": "ce+fnpal"}'}, 4),
        st("not-a-cell", {"title": "x"}, 5),
    ]
    assert study_titles(studies) == {"s/cell002": "ce", "s/cell002/finals": "ce", "s/cell003": "ce+fnpal"}
