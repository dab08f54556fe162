"""Parameter importance per cell, read from a real Optuna journal (pal_study.analysis.importance)."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from pal_study.analysis.importance import importance_png, render_importances, study_importances

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _cell(storage, name: str, method: str, objective, n: int, prune_every: int = 0):
    st = optuna.create_study(
        storage=storage, study_name=name, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1)
    )
    st.set_user_attr("cell", name.rpartition("/")[2] + f",method={method}")
    st.set_user_attr("method", method)
    for i in range(n):
        t = st.ask()
        if prune_every and i % prune_every == 0:
            t.report(0.1, 1)
            st.tell(t, state=optuna.trial.TrialState.PRUNED)
        else:
            st.tell(t, objective(t))
    return st


@pytest.fixture
def journal(tmp_path):
    path = tmp_path / "optuna.journal"
    storage = JournalStorage(JournalFileBackend(str(path)))

    def wd_matters(t):  # the weight decay drives the objective; the scale is noise-free irrelevant
        wd = t.suggest_float("optim.weight_decay", 1e-5, 1e-2, log=True)
        t.suggest_float("head.scale", 4.0, 32.0)
        return -abs(math.log10(wd) + 3.0)

    _cell(storage, "s/cell000", "ce+fnpal", wd_matters, 24)
    _cell(storage, "s/cell001", "ce", lambda t: t.suggest_float("optim.weight_decay", 1e-5, 1e-2, log=True), 6)
    _cell(storage, "s/cell002", "gce", wd_matters, 6, prune_every=2)  # 3 complete of 6
    _cell(storage, "s/cell003", "sce", wd_matters, 4, prune_every=2)  # 2 complete: too few
    fin = optuna.create_study(storage=storage, study_name="s/cell000/finals", direction="maximize")
    fin.add_trial(optuna.trial.create_trial(value=0.9, user_attrs={"seed": 0}))
    return path, storage


def test_importance_per_cell_matches_optuna_and_finds_the_parameter_that_matters(journal):
    path, storage = journal
    items = study_importances(path)
    assert [i.optuna_study for i in items] == ["s/cell000", "s/cell001", "s/cell002", "s/cell003"]  # no finals
    a, b, c, d = items
    assert a.method == "ce+fnpal" and a.n_complete == a.n_trials == 24 and a.note is None
    assert list(a.importances) == ["optim.weight_decay", "head.scale"]  # largest first
    assert a.importances["optim.weight_decay"] > 0.8 and sum(a.importances.values()) == pytest.approx(1.0)
    # the same numbers as Optuna's own default (PED-ANOVA)
    ref = optuna.importance.get_param_importances(optuna.load_study(study_name="s/cell000", storage=storage))
    assert a.importances == pytest.approx(dict(ref))
    assert b.importances == {"optim.weight_decay": 1.0} and "one parameter" in b.note
    assert c.n_trials == 6 and c.n_complete == 3 and set(c.importances) == {"optim.weight_decay", "head.scale"}
    assert "only 3 completed trials" in c.note
    assert d.importances == {} and "2 completed trial(s)" in d.note
    text = render_importances(items)
    assert "optim.weight_decay 0." in text.splitlines()[0] and "at least 3 needed" in text.splitlines()[3]
    png = importance_png(items, "s")
    assert png is not None and png.startswith(b"\x89PNG")
    assert importance_png([d], "s") is None
    assert importance_png([b], "s") is None  # one parameter: nothing to compare


def test_fanova_and_bad_evaluator(journal):
    path, storage = journal
    items = study_importances(path, evaluator="fanova")
    assert items[0].evaluator == "fanova"
    ref = optuna.importance.get_param_importances(
        optuna.load_study(study_name="s/cell000", storage=storage),
        evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
    )
    assert items[0].importances == pytest.approx(dict(ref))  # seeded: the same forest
    with pytest.raises(ValueError, match="allowed: fanova, ped_anova"):
        study_importances(path, evaluator="shap")
