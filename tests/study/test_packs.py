"""Trial packs (``budget.pack``): the searcher driven by hand as Ray Tune drives it, through a real
local Ray's key-value store (the pack's channel) and a real Optuna journal. A whole packed study
against an unpacked one, record by record, is in test_run.py (it shares that module's study)."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from pal_study.errors import ConfigError
from pal_study.fused_train import FUSION_PAYS
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
        load_study(write_study(tmp_path, name="bad2", budget={"pack": {"size": 4, "fuse": "sometimes"}}))
    # YAML reads a bare off/on as a boolean: --set budget.pack.fuse=off still means off.
    assert load_study(write_study(tmp_path, name="o"), ["budget.pack.fuse=off"]).spec.budget.pack.fuse == "off"
    assert load_study(write_study(tmp_path, name="o"), ["budget.pack.fuse=on"]).spec.budget.pack.fuse == "on"
    said = describe(load_study(write_study(tmp_path, name="auto")))
    assert f"packs: up to {AUTO_PACK_SIZE} (auto) trials per Ray Tune trial" in said
    assert "packs: off" in describe(load_study(write_study(tmp_path, name="off", pack_size=1)))


def _fused_searcher(tmp_path, size=3, **overrides):
    budget = {
        "trials_per_cell": 4,
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "percentile", "percentile": 90, "n_startup_trials": 1, "n_warmup_steps": 1},
        "pack": {"size": size, "fuse": "on"},
    }
    study = load_study(write_study(tmp_path, name="fused", budget=budget, **overrides))
    return StudySearcher(study, StudyStore(study, tmp_path / "runs"), slots=1)


def _member(name, **fields):
    return {"stage": "tune", "member": name, **fields}


def test_a_fused_pack_hands_out_trials_of_one_cell_together_and_prunes_each_alone(tmp_path):
    searcher = _fused_searcher(tmp_path, factors={"method": ["ce+fnpal", "ce"]})
    pack = TrialJob.from_tune(searcher.suggest("t0"))
    assert [m.optuna_trial for m in pack.fused] == [0, 1, 2] and {m.cell for m in pack.fused} == {0}
    assert pack.name == "cell000-tune-0000-fused3" and pack.pack
    assert len({m.config["optim"]["weight_decay"] for m in pack.fused}) == 3  # their own params
    assert sorted(searcher.jobs) == [f"t0#cell000-tune-000{n}" for n in range(3)]
    searcher.report("t0", _member(pack.fused[0].name, closing=False, epoch=1, val_acc=0.9))
    searcher.report("t0", _member(pack.fused[0].name, closing=True, status="completed", val_acc=0.9, epochs_run=4))
    assert _tuning(searcher)[0].state == TrialState.COMPLETE
    # Member 1 below the 90th percentile at epoch 1: pruned and recorded at once, alone.
    assert searcher.report("t0", _member(pack.fused[1].name, closing=False, epoch=1, val_acc=0.1)) is False
    assert is_pruned(pack.pack, pack.fused[1].name)
    assert _tuning(searcher)[1].state == TrialState.PRUNED and "t0#cell000-tune-0001" not in searcher.jobs
    assert next_member(pack.pack, 1) is None, "the pack's member 2 still trains"
    searcher.report("t0", _member(pack.fused[1].name, closing=True, status="stopped", val_acc=0.1))  # ignored now
    assert _tuning(searcher)[1].user_attrs["epochs_run"] == 1 and "val_acc" not in _tuning(searcher)[1].user_attrs
    searcher.report("t0", _member(pack.fused[2].name, closing=False, epoch=1, val_acc=0.95))
    searcher.report("t0", _member(pack.fused[2].name, closing=True, status="completed", val_acc=0.95, epochs_run=4))
    # Nothing of the pack runs: it gets its next job, the next cell's fused pack (fewest issued).
    following = next_member(pack.pack, 1)
    assert following is not None and following.cell == 1 and [m.optuna_trial for m in following.fused] == [0, 1, 2]
    assert [t.state for t in _tuning(searcher)][:3] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    # A late report of the first pack's members never lands on the next pack's (keys are names).
    running = sorted(searcher.jobs)
    searcher.report("t0", _member(pack.fused[1].name, closing=True, status="stopped", val_acc=0.1))
    searcher.report("t0", _member(pack.fused[2].name, closing=True, status="completed", val_acc=0.1))
    assert sorted(searcher.jobs) == running and len(running) == 3
    assert all(t.state == TrialState.RUNNING for t in _tuning(searcher, cell=1))


def test_a_fused_pack_that_dies_runs_its_unfinished_members_again_alone(tmp_path):
    searcher = _fused_searcher(tmp_path, factors={"method": ["ce+fnpal"]})
    searcher.retries = 1
    pack = TrialJob.from_tune(searcher.suggest("t0"))
    searcher.report("t0", _member(pack.fused[0].name, closing=True, status="completed", val_acc=0.9))
    searcher.report("t0", _member(pack.fused[1].name, closing=False, epoch=1, val_acc=0.8))
    searcher.on_trial_complete("t0", error=True)  # the worker died: members 1 and 2 had not ended
    assert searcher.interrupted_to_resume == 2 and not searcher.jobs
    again = [TrialJob.from_tune(searcher.suggest(f"r{n}")) for n in range(2)]
    assert [j.optuna_trial for j in again] == [1, 2] and not any(j.fused for j in again)
    assert next_member(pack.pack, 1) is None


def test_a_failed_member_ends_a_fused_pack_after_its_siblings(tmp_path):
    searcher = _fused_searcher(tmp_path, factors={"method": ["ce+fnpal"]})
    pack = TrialJob.from_tune(searcher.suggest("t0"))
    searcher.report("t0", _member(pack.fused[0].name, closing=True, status="failed", reason="ValueError: x"))
    searcher.report("t0", _member(pack.fused[1].name, closing=True, status="completed", val_acc=0.9))
    searcher.report("t0", _member(pack.fused[2].name, closing=True, status="completed", val_acc=0.8))
    assert [t.state for t in _tuning(searcher)] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert next_member(pack.pack, 1) is None and not searcher.jobs


def test_what_does_not_fuse_packs_one_after_another(tmp_path, monkeypatch):
    # A search over a shared key (the batch size) cannot fuse; nor can auto where fusing measured
    # slower (the digits MLP on the CPU).
    space = tmp_path / "batch.yaml"
    space.write_text("params:\n  optim.batch_size: {type: categorical, choices: [32, 64]}\n")
    searcher = _fused_searcher(tmp_path, factors={"method": ["ce"]}, search=[str(space)])
    assert not TrialJob.from_tune(searcher.suggest("t0")).fused
    study = load_study(write_study(tmp_path, name="auto", budget={"pack": {"size": 4, "fuse": "auto"}}))
    auto = StudySearcher(study, StudyStore(study, tmp_path / "auto-runs"), slots=1)
    assert not TrialJob.from_tune(auto.suggest("t0")).fused
    assert auto.describe_fusion().startswith("fused packs: no cell (fuse auto")
    study = load_study(
        write_study(
            tmp_path,
            name="mlp",
            base={"data": {"name": "mnist1d"}, "model": {"arch": "mnist1d_mlp"}, "optim": {"epochs": 2}},
            budget={"pack": {"size": 4, "fuse": "auto"}},
        )
    )
    # auto fuses where FUSION_PAYS says it paid (nowhere measured so far); a measured entry makes it.
    mlp = StudySearcher(study, StudyStore(study, tmp_path / "mlp-runs"), slots=1)
    assert not TrialJob.from_tune(mlp.suggest("t0")).fused
    monkeypatch.setitem(FUSION_PAYS, "cpu", {"mnist1d_mlp": 4})
    mlp = StudySearcher(study, StudyStore(study, tmp_path / "mlp-runs-2"), slots=1)
    assert len(TrialJob.from_tune(mlp.suggest("t0")).fused) == 4
    assert mlp.describe_fusion() == "fused packs: cells 0, 1, 2, 3, up to 4 tuning trials as one model"


@pytest.mark.slow
def test_a_fused_study_trains_its_members_as_alone_and_records_each(tmp_path):
    """A real study (digits, fuse on, packs of 4): each tuning trial is its own Optuna trial and
    MLflow run with the params it would have unpacked (a random sampler seeds by trial number), the
    same value to float drift, pruned members recorded where the pruner stopped them."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from mlflow import MlflowClient

    from pal_study.cli import main
    from tests.support import journal, studies_by_name

    def run(name, size, track):
        budget = {
            "trials_per_cell": 4,
            "sampler": {"name": "random", "seed": 0},
            "pruner": {"name": "percentile", "percentile": 75, "n_startup_trials": 1, "n_warmup_steps": 2},
            "pack": {"size": size, "fuse": "on"},
        }
        path = write_study(
            tmp_path / name,
            name="fz",
            factors={"method": ["ce+fnpal", "ce"]},
            budget=budget,
            finals={"seeds": [0]},
            base={"data": {"name": "digits"}, "optim": {"epochs": 3}},
        )
        argv = ["run", str(path), "--runs-dir", str(tmp_path / name / "runs")]
        argv += ["--tracking-uri", f"sqlite:///{tmp_path}/{name}/mlflow.db"] if track else ["--no-track"]
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            assert main(argv) == 0
        return {
            n: {t.number: t for t in st.trials}
            for n, st in studies_by_name(journal(tmp_path / name / "runs", "fz")).items()
        }

    (tmp_path / "fused").mkdir()
    (tmp_path / "alone").mkdir()
    fused, alone = run("fused", 4, True), run("alone", 1, False)
    assert sorted(fused) == sorted(alone)
    logs = list((tmp_path / "fused" / "runs" / "fz" / "tune").glob("*/cell000-tune-0000-fused4_*"))
    assert logs, "the Tune trial of cell 0's fused pack"
    compared = 0
    for name in (n for n in fused if not n.endswith("/finals")):
        assert sorted(fused[name]) == [0, 1, 2, 3]
        for number, t in fused[name].items():
            assert t.params == alone[name][number].params
            assert t.user_attrs["tune_logs" if t.state == TrialState.FAIL else "tune_trial_id"]
            if t.state == TrialState.PRUNED:
                step = max(t.intermediate_values)
                assert t.user_attrs["epochs_run"] == step and f"at epoch {step}" in t.user_attrs["reason"]
            else:
                assert t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [1, 2, 3]
                other = alone[name][number]
                if other.state == TrialState.COMPLETE:
                    assert abs(t.value - other.value) <= 0.02, (name, number)
                    compared += 1
    assert compared >= 4
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/fused/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("fz").experiment_id], max_results=100)
    assert len(runs) == 1 + 2 + 2 * 4 + 2 * 1  # study, cells, tuning trials, finals
