"""Tuning trials hold back the epochs at which the pruner cannot act and report them with the next
one (``trainable.EpochBatcher``): fewer round trips through Ray Tune's driver, the same study.

The pruner must see exactly what it saw with one report per epoch: the same decision epochs and the
same intermediate values, so the same trials are pruned at the same epochs and the Optuna record
(which the TPE sampler reads) is identical. Checked against Optuna's own pruners on a real journal.
"""

from __future__ import annotations

import json
import time

import optuna
import pytest
from optuna.trial import TrialState

from pal_study.study import load_study
from pal_study.study.engine import StudySearcher
from pal_study.study.pruners import PRUNER_REGISTRY
from pal_study.study.store import StudyStore
from pal_study.study.trainable import EpochBatcher
from tests.support import write_study

EPOCHS = 12


def _optuna_decision_epochs(spec, epochs: int) -> set[int]:
    """The epochs at which Optuna's pruner reaches its comparison when every epoch is reported: a
    trial always worse than the one completed trial is pruned wherever it is compared, so report
    epochs 1..E afresh for each E and ask once, at E."""
    hits = set()
    for stop in range(1, epochs + 1):
        st = optuna.create_study(direction="maximize", pruner=spec.build(epochs))
        done = st.ask()
        for e in range(1, epochs + 1):
            done.report(1.0, e)
        st.tell(done, 1.0)
        t = st.ask()
        for e in range(1, stop + 1):
            t.report(0.0, e)
        if t.should_prune():
            hits.add(stop)
    return hits


@pytest.mark.parametrize(
    "pruner",
    [
        {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
        {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 3},
        {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 2, "interval_steps": 3},
        {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0, "interval_steps": 4},
        {"name": "percentile", "percentile": 90, "n_startup_trials": 1, "n_warmup_steps": 5, "interval_steps": 2},
    ],
)
def test_the_held_back_epochs_are_those_where_optuna_cannot_prune(pruner):
    from pal_study.study.spec import BudgetSpec

    spec = BudgetSpec.model_validate({"pruner": pruner}).pruner
    batch = EpochBatcher(spec.decision_epochs(), max_gap_s=1e9)
    assert {e for e in range(1, EPOCHS + 1) if batch.decides(e)} == _optuna_decision_epochs(spec, EPOCHS)


def test_every_pruner_has_a_plan_and_none_never_decides():
    for name in PRUNER_REGISTRY.names():
        plan = PRUNER_REGISTRY.get(name)().decision_epochs()
        assert set(plan) == {"from", "every"}
    assert PRUNER_REGISTRY.get("none")().decision_epochs()["from"] is None
    assert PRUNER_REGISTRY.get("hyperband")().decision_epochs() == {"from": 1, "every": 1}


def test_held_epochs_travel_in_order_and_a_gap_flushes_them():
    batch = EpochBatcher({"from": 4, "every": 2}, max_gap_s=1e9)
    sent = [batch.add({"epoch": e, "val_acc": e / 10}) for e in range(1, 7)]
    assert sent[:3] == [None, None, None] and sent[4] is None
    assert json.loads(sent[3]["epochs_json"]) == [{"epoch": e, "val_acc": e / 10} for e in (1, 2, 3)]
    assert sent[3]["epoch"] == 4 and json.loads(sent[5]["epochs_json"]) == [{"epoch": 5, "val_acc": 0.5}]
    assert batch.rest() == {}
    slow = EpochBatcher({"from": None, "every": 1}, max_gap_s=0.05)
    assert slow.add({"epoch": 1}) is None
    time.sleep(0.06)
    assert slow.add({"epoch": 2}) == {"epoch": 2, "epochs_json": json.dumps([{"epoch": 1}])}
    assert slow.add({"epoch": 3}) is None
    assert slow.rest() == {"epochs_json": json.dumps([{"epoch": 3}])} and slow.rest() == {}
    assert EpochBatcher(None).add({"epoch": 1}) == {"epoch": 1}  # no plan: every epoch


# Validation curves of 6 trials: some rise late, some fall after an early peak (noisy labels).
CURVES = [
    [0.1 * e for e in range(1, 9)],
    [0.5, 0.5, 0.4, 0.3, 0.3, 0.2, 0.2, 0.2],
    [0.2, 0.3, 0.45, 0.5, 0.9, 0.9, 0.9, 0.95],
    [0.05] * 8,
    [0.3, 0.6, 0.6, 0.62, 0.63, 0.64, 0.65, 0.66],
    [0.9, 0.1, 0.1, 0.1, 0.85, 0.86, 0.87, 0.88],
]


def _drive(tmp_path, name: str, pruner: dict, batched: bool, min_gap_s: float = 0.0) -> list[tuple]:
    study = load_study(
        write_study(
            tmp_path,
            name=name,
            factors={"method": ["ce+fnpal"]},
            base={"data": {"name": "digits"}, "optim": {"epochs": 8}},
            # One Ray Tune trial per trial (no packs): this drives the searcher as Tune would.
            budget={
                "trials_per_cell": len(CURVES),
                "pruner": pruner,
                "sampler": {"name": "random", "seed": 0},
                "pack": {"size": 1},
            },
        )
    )
    searcher = StudySearcher(study, StudyStore(study, tmp_path / name), slots=1)
    for n, curve in enumerate(CURVES):
        tid = f"t{n}"
        payload = searcher.suggest(tid)["pal"]
        batch = EpochBatcher(payload["report"] if batched else None, max_gap_s=1e9, min_gap_s=min_gap_s)
        stopped = False
        for e, v in enumerate(curve, start=1):
            out = batch.add({"epoch": e, "val_acc": v, "train_time_s": 0.01, "eval_time_s": 0.0})
            if out is not None and searcher.report(tid, {**out, "stage": "tune", "closing": False}):
                stopped = True
                break
        if not stopped:
            searcher.report(
                tid, {"status": "completed", "val_acc": curve[-1], "stage": "tune", "closing": True, **batch.rest()}
            )
        searcher.on_trial_complete(tid)
    trials = searcher._tuning[0].get_trials(deepcopy=False)
    return [
        (t.number, t.state, t.value, t.intermediate_values, t.params, t.user_attrs.get("epochs_run")) for t in trials
    ]


@pytest.mark.parametrize(
    "pruner",
    [
        {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 3},
        {"name": "percentile", "percentile": 75, "n_startup_trials": 1, "n_warmup_steps": 1, "interval_steps": 2},
        {"name": "successive_halving"},
        {"name": "none"},
    ],
)
def test_a_batched_study_records_what_one_report_per_epoch_records(tmp_path, pruner):
    """Real searcher, real Optuna journal and pruner: the same trials pruned at the same epochs,
    the same intermediate values, states and params."""
    per_epoch = _drive(tmp_path, "one", pruner, batched=False)
    batched = _drive(tmp_path, "batched", pruner, batched=True)
    assert batched == per_epoch
    # Decision epochs held too (min_gap_s): here every epoch rides with the closing report, and
    # the searcher decides on each held decision epoch in order, pruning where it would have.
    held = _drive(tmp_path, "held", pruner, batched=True, min_gap_s=1e9)
    assert held == per_epoch
    if pruner["name"] != "none":
        assert any(t[1] == TrialState.PRUNED for t in per_epoch), "the curves should make the pruner act"
    assert all(len(t[3]) == (t[5] or 8) for t in per_epoch)
