"""Trial packs (``budget.pack``): the searcher driven by hand as Ray Tune drives it, through a real
local Ray's key-value store (the pack's channel) and a real Optuna journal. A whole packed study
against an unpacked one, record by record, is in test_run.py (it shares that module's study)."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from pal_study.errors import ConfigError
from pal_study.study import load_study
from pal_study.study.engine import StudySearcher
from pal_study.study.pack import is_pruned, next_member
from pal_study.study.spec import AUTO_PACK_SIZE
from pal_study.study.store import StudyStore
from pal_study.study.trial import TrialJob
from tests.support import write_study

pytestmark = pytest.mark.usefixtures("local_ray")


def _searcher(tmp_path, pack_size, **overrides):
    study = load_study(write_study(tmp_path, name="packed", pack_size=pack_size, **overrides))
    return StudySearcher(study, StudyStore(study, tmp_path / "runs"), slots=1)


def _closing(value, status="completed", **extra):
    return {"stage": "tune", "closing": True, "status": status, "val_acc": value, **extra}


def _tuning(searcher, cell=0):
    return searcher._tuning[cell].get_trials(deepcopy=False)


def test_a_pack_runs_the_next_trial_the_searcher_would_hand_out_until_it_is_full(tmp_path):
    searcher = _searcher(tmp_path, 3, factors={"method": ["ce+fnpal"]})
    first = TrialJob.from_tune(searcher.suggest("t0"))
    assert first.pack and first.optuna_trial == 0
    members = [first]
    for done in (1, 2, 3):
        job = members[-1]
        assert searcher.report("t0", {"stage": "tune", "closing": False, "epoch": 1, "val_acc": 0.5}) is False
        assert searcher.report("t0", _closing(0.5 + done / 10, epochs_run=4, node="127.0.0.1")) is False
        # The member's Optuna trial is told at its closing report, while the pack runs on.
        told = _tuning(searcher)[job.optuna_trial]
        assert told.state == TrialState.COMPLETE and told.value == pytest.approx(0.5 + done / 10)
        assert told.user_attrs["node"] == "127.0.0.1" and told.user_attrs["tune_trial_id"] == "t0"
        following = next_member(first.pack, done)
        if done < 3:
            assert following is not None and following.pack == first.pack
            assert following.optuna_trial == job.optuna_trial + 1 and searcher.jobs["t0"].trial.number == done
            members.append(following)
        else:
            assert following is None and "t0" not in searcher.jobs  # full: the pack ends
    assert next_member(first.pack, 1) is None, "a stale read must not rerun a member"
    searcher.on_trial_complete("t0")  # Tune's end of the pack: nothing left to record
    assert [t.state for t in _tuning(searcher)] == [TrialState.COMPLETE] * 3
    assert next_member(first.pack, 3) is None  # the pack's keys are gone


def test_a_pruned_member_stops_alone_and_is_recorded_as_unpacked(tmp_path):
    searcher = _searcher(tmp_path, 4, factors={"method": ["ce+fnpal"]})
    first = TrialJob.from_tune(searcher.suggest("t0"))
    searcher.report("t0", {"stage": "tune", "closing": False, "epoch": 1, "val_acc": 0.9})
    searcher.report("t0", _closing(0.9, epochs_run=4))
    second = next_member(first.pack, 1)
    assert second is not None
    # Below the 90th percentile of the completed trial at epoch 1: pruned. Tune gets CONTINUE
    # (a STOP would end the pack); the member hears it through the pack's channel.
    assert searcher.report("t0", {"stage": "tune", "closing": False, "epoch": 1, "val_acc": 0.1}) is False
    assert is_pruned(first.pack, second.name) and not is_pruned(first.pack, first.name)
    # It answers with a closing report of a stopped run: the record is the pruner's, not the closing's.
    searcher.report("t0", _closing(0.2, status="stopped", epochs_run=1, test_acc=0.3, node="127.0.0.1"))
    pruned = _tuning(searcher)[1]
    assert pruned.state == TrialState.PRUNED and pruned.intermediate_values == {1: 0.1}
    assert pruned.user_attrs["epochs_run"] == 1 and "at epoch 1" in pruned.user_attrs["reason"]
    assert "test_acc" not in pruned.user_attrs and "node" not in pruned.user_attrs
    third = next_member(first.pack, 2)
    assert third is not None and third.optuna_trial == 2  # the slot goes on with the cell's next trial


def test_a_failed_member_ends_its_pack_and_a_death_retries_only_the_running_member(tmp_path):
    searcher = _searcher(tmp_path, 8, factors={"method": ["ce+fnpal"]})
    first = TrialJob.from_tune(searcher.suggest("t0"))
    searcher.report("t0", _closing(None, status="failed", reason="RuntimeError: boom"))
    assert next_member(first.pack, 1) is None
    failed = _tuning(searcher)[0]
    assert failed.state == TrialState.FAIL and failed.user_attrs["reason"] == "RuntimeError: boom"
    searcher.on_trial_complete("t0", error=True)  # the worker raised TrialFailed after its report
    assert searcher.interrupted_to_resume == 0, "a reported failure is no death: not retried"

    searcher.retries = 1
    second = TrialJob.from_tune(searcher.suggest("t1"))
    searcher.report("t1", _closing(0.7))
    third = next_member(second.pack, 1)
    assert third is not None
    searcher.report("t1", {"stage": "tune", "closing": False, "epoch": 1, "val_acc": 0.6})
    searcher.on_trial_complete("t1", error=True)  # the worker process died mid-member
    states = [t.state for t in _tuning(searcher)]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.RUNNING]
    resumed = TrialJob.from_tune(searcher.suggest("t2"))
    assert resumed.optuna_trial == third.optuna_trial and resumed.pack != second.pack


def test_finals_in_a_pack_end_once_every_seed_reported(tmp_path):
    searcher = _searcher(
        tmp_path,
        AUTO_PACK_SIZE,
        factors={"method": ["ce", "ce+fnpal"]},
        budget={"trials_per_cell": 1, "pack": {"size": "auto"}},
    )
    t = TrialJob.from_tune(searcher.suggest("t0"))
    searcher.report("t0", _closing(0.8))
    # The cell's tuning is done: its finals come first, all seeds in one job (cells >= slots).
    final = next_member(t.pack, 1)
    assert final is not None and final.stage == "final" and final.cell == 0 and final.seeds == (0, 1)
    searcher.report("t0", {"stage": "final", "closing": True, "status": "completed", "val_acc": 0.8, "seed": 0})
    assert next_member(t.pack, 2) is None and searcher.jobs["t0"].stage == "final"  # seed 1 still to come
    searcher.report("t0", {"stage": "final", "closing": True, "status": "completed", "val_acc": 0.9, "seed": 1})
    assert sorted(searcher.store.final_results(searcher.study.cells[0])) == [0, 1]
    following = next_member(t.pack, 2)
    assert following is not None and following.stage == "tune" and following.cell == 1


def test_pack_size_is_checked_and_said_at_start(tmp_path):
    from pal_study.study.spec import describe

    with pytest.raises(ConfigError, match=r"budget\.pack\.size.*auto or a number of trials from 1 to 1024"):
        load_study(write_study(tmp_path, name="bad", pack_size=0))
    with pytest.raises(ConfigError, match=r"budget\.pack"):
        load_study(write_study(tmp_path, name="bad2", budget={"pack": {"size": 4, "fuse": "on"}}))
    said = describe(load_study(write_study(tmp_path, name="auto")))
    assert f"packs: up to {AUTO_PACK_SIZE} (auto) trials per Ray Tune trial" in said
    assert "packs: off" in describe(load_study(write_study(tmp_path, name="off", pack_size=1)))
