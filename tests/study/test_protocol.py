"""The protocol behind claims, checked where a study is loaded (no training): disjoint tuning and
final seeds, oracle objectives behind an opt-in, equal tuning effort for compared cells, knobs fixed
on purpose named beside the verdicts, sensitivity cells, and validate's warnings."""

from __future__ import annotations

import pytest
import yaml

from pal_study.cli import main
from pal_study.errors import ConfigError
from pal_study.study import load_study
from pal_study.study.protocol import noisy_slope, protocol_notes, validation_size
from pal_study.study.spec import warnings

SPACES = "/".join(__file__.split("/")[:-3]) + "/search_spaces"


def _study(tmp_path, **over) -> str:
    spec = {
        "name": "proto",
        "base": {"data": {"name": "digits", "noise": {"kind": "symmetric", "rate": 0.4}}, "optim": {"epochs": 2}},
        "factors": {"method": ["ce", "ce+fnpal"]},
        "search": [f"{SPACES}/weight_decay.yaml", f"{SPACES}/pal_scale.yaml"],
        "budget": {"trials_per_cell": 4},
        "finals": {"seeds": [0, 1, 2, 3, 4, 5]},
        "claims": [{"better": "ce+fnpal", "than": "ce"}],
    }
    for key, value in over.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    path = tmp_path / "proto.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _error(path: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load_study(path)
    return e.value


# -- seeds ------------------------------------------------------------------------------------
def test_tuning_trials_run_on_their_own_seed_outside_the_finals(tmp_path):
    study = load_study(_study(tmp_path))
    assert study.spec.budget.tuning_seed == 1000
    assert {c.config.seed for c in study.cells} == {1000}
    assert 1000 not in study.spec.finals.seeds


def test_a_tuning_seed_that_is_a_final_seed_is_refused(tmp_path):
    e = _error(_study(tmp_path, budget={"trials_per_cell": 4, "tuning_seed": 3}))
    assert e.key == "budget.tuning_seed" and "also a final seed" in str(e)


def test_seed_is_not_a_factor(tmp_path):
    e = _error(_study(tmp_path, factors={"method": ["ce", "ce+fnpal"], "seed": [0, 1]}))
    assert e.key == "factors.seed"


# -- oracle objectives ------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["val_acc_clean", "test_acc"])
def test_oracle_objectives_need_the_opt_in(tmp_path, metric):
    e = _error(_study(tmp_path, objective={"metric": metric}))
    assert e.key == "objective.metric" and "allow_test" in str(e)
    study = load_study(_study(tmp_path, objective={"metric": metric, "allow_test": True}))
    assert study.spec.objective.metric == metric


# -- equal tuning -----------------------------------------------------------------------------
def test_a_pal_cell_tuned_while_its_baseline_is_not_is_refused(tmp_path):
    # The scale space applies to fnpal only; with the weight decay gone, ce searches nothing.
    e = _error(_study(tmp_path, search=[f"{SPACES}/pal_scale.yaml"]))
    assert e.key == "claims[0]" and "unequal budgets" in str(e) and "(1 trials)" in str(e)


def test_an_unsearched_head_scale_must_be_declared(tmp_path):
    e = _error(_study(tmp_path, search=[f"{SPACES}/weight_decay.yaml"]))
    assert e.key == "claims[0]" and "head.scale is neither searched nor declared fixed" in str(e)
    assert "10.0" in str(e)  # the value nobody chose
    study = load_study(_study(tmp_path, search=[f"{SPACES}/weight_decay.yaml"], protocol={"fixed": ["head.scale"]}))
    [notes] = protocol_notes(study.spec, study.factor_cells)
    assert notes == ["head.scale fixed at 10.0 for ce+fnpal (protocol.fixed)"]


def test_a_shared_knob_searched_for_one_side_only_is_refused(tmp_path):
    only_pal = tmp_path / "wd_pal.yaml"
    only_pal.write_text(
        yaml.safe_dump(
            {
                "name": "wd_pal",
                "params": {
                    "optim.weight_decay": {
                        "type": "float",
                        "low": 1e-5,
                        "high": 1e-2,
                        "log": True,
                        "when": {"head": ["fnpal"]},
                    }
                },
            }
        )
    )
    e = _error(_study(tmp_path, search=[str(only_pal), f"{SPACES}/pal_scale.yaml"], protocol={"fixed": ["head.scale"]}))
    assert "unequal budgets" in str(e)  # ce searches nothing at all now
    # Both search something, but the weight decay only for fnpal: still unequal.
    e = _error(_study(tmp_path, search=[str(only_pal), f"{SPACES}/pal_scale.yaml", f"{SPACES}/optimizer.yaml"]))
    assert "optim.weight_decay applies to both, but only ce+fnpal searches it" in str(e)


def test_unequal_tuning_allowed_on_request_is_said_beside_the_verdict(tmp_path):
    study = load_study(_study(tmp_path, search=[f"{SPACES}/pal_scale.yaml"], protocol={"equal_tuning": False}))
    [notes] = protocol_notes(study.spec, study.factor_cells)
    assert any(n.startswith("unequal tuning allowed (protocol.equal_tuning: false): unequal budgets") for n in notes)


def test_equal_tuning_applies_only_to_studies_with_claims(tmp_path):
    study = load_study(_study(tmp_path, claims=None, search=[f"{SPACES}/pal_scale.yaml"]))
    assert [study.budget(c) for c in study.cells] == [1, 4]


# -- sensitivity cells ------------------------------------------------------------------------
def test_sensitivity_adds_cells_that_rerun_the_tuned_cell_at_each_value(tmp_path):
    study = load_study(_study(tmp_path, sensitivity={"head.scale": [2, 30]}))
    fnpal = next(c for c in study.factor_cells if c.method == "ce+fnpal")
    sens = study.sensitivity_cells
    assert [(c.parent, c.variant, c.config.head.scale) for c in sens] == [
        (fnpal.index, {"head.scale": 2}, 2.0),
        (fnpal.index, {"head.scale": 30}, 30.0),
    ]
    assert [c.index for c in sens] == [2, 3] and all(study.budget(c) == 0 for c in sens)
    assert all("head.scale" not in c.params for c in sens)  # fixed, not searched
    assert study.tuning_cell(sens[0]) is fnpal and study.tuning_trials == 8 and study.final_trials == 4 * 6
    [notes] = protocol_notes(study.spec, study.factor_cells)
    assert notes == ["head.scale also judged at fixed values [2, 30] (sensitivity)"]


def test_sensitivity_set_from_the_command_line_keeps_its_dotted_key(tmp_path):
    study = load_study(_study(tmp_path), ["sensitivity.head.scale=[2, 5, 7]"])
    assert study.spec.sensitivity == {"head.scale": [2, 5, 7]} and len(study.sensitivity_cells) == 3


@pytest.mark.parametrize(
    "section,key,text",
    [
        ({"head.scale": []}, "sensitivity.head.scale", "non-empty"),
        ({"head.scale": [2, 2]}, "sensitivity.head.scale", "repeated"),
        ({"head.scael": [2]}, "sensitivity.head.scael", "not a trial config key"),
        ({"head.scale": [-1]}, "sensitivity.head.scale", "invalid trial"),
        ({"method": ["ce"]}, "sensitivity.method", "is a factor already"),
    ],
)
def test_bad_sensitivity_sections_name_the_key(tmp_path, section, key, text):
    e = _error(_study(tmp_path, sensitivity=section))
    assert e.key == key and text in str(e), str(e)


def test_sensitivity_needs_claims_and_a_cell_it_applies_to(tmp_path):
    assert _error(_study(tmp_path, claims=None, sensitivity={"head.scale": [2]})).key == "sensitivity"
    e = _error(
        _study(
            tmp_path,
            factors={"method": ["ce", "gce"]},
            claims=[{"better": "gce", "than": "ce"}],
            search=[f"{SPACES}/weight_decay.yaml"],
            sensitivity={"head.scale": [2]},
        )
    )
    assert e.key == "sensitivity.head.scale" and "applies to none" in str(e)


# -- warnings before compute ------------------------------------------------------------------
def test_validation_size_and_noisy_slope():
    from pal_study.config import TrainConfig

    assert validation_size(TrainConfig.model_validate({"data": {"name": "mnist1d"}})) == 400
    assert validation_size(TrainConfig.model_validate({"data": {"name": "digits"}})) == 140
    assert [round(noisy_slope("symmetric", r, 10), 2) for r in (0.2, 0.4, 0.6, 0.8)] == [0.78, 0.56, 0.33, 0.11]
    assert noisy_slope("asymmetric", 0.4, 10) is None


def test_underpowered_claims_and_weak_objective_are_warned(tmp_path):
    study = load_study(_study(tmp_path, finals={"seeds": [0, 1, 2]}))
    said = warnings(study)
    assert any("with 3 final seeds no comparison can reach" in w and "at least 6" in w for w in said)
    assert any("symmetric noise 0.4" in w and "standard error" in w for w in said)
    # Six seeds reach alpha; a clean objective has no noise to drown it.
    clean = load_study(_study(tmp_path, base={"data": {"name": "digits"}, "optim": {"epochs": 2}}))
    assert warnings(clean) == []


def test_validate_prints_the_warnings_and_still_exits_0(tmp_path, capsys):
    path = _study(tmp_path, finals={"seeds": [0, 1, 2]})
    assert main(["validate", path]) == 0
    out = capsys.readouterr().out
    assert "seeds: tuning trials 1000, finals [0, 1, 2]" in out
    assert "warning: with 3 final seeds no comparison can reach α=0.05" in out


def test_shipped_paper_claims_is_fair_and_decidable():
    from pal_study.study.listing import shipped_dir

    for name in ("paper_claims", "paper_claims_quick"):
        study = load_study(shipped_dir("studies") / f"{name}.yaml")
        assert study.spec.protocol.equal_tuning and study.spec.budget.tuning_seed not in study.spec.finals.seeds
        assert all("head.scale" in c.params for c in study.factor_cells if c.method.endswith("+fnpal"))
        assert not [w for w in warnings(study) if "seeds" in w]  # every claim can be decided both ways
        assert study.sensitivity_cells


def test_a_study_stored_before_tuning_seeds_is_told_why_it_cannot_resume(tmp_path):
    import json

    from pal_study.study.store import StudyStore

    study = load_study(_study(tmp_path))
    store = StudyStore(study, tmp_path / "runs")
    store.dir.mkdir(parents=True)
    spec = study.spec.model_dump(mode="json")
    spec["budget"].pop("tuning_seed")
    (store.dir / "study.json").write_text(json.dumps({"fingerprint": "0123456789abcdef", "spec": spec}))
    with pytest.raises(ConfigError, match=r"before tuning trials got their own seed .* --restart"):
        store.check_fingerprint()
    spec["budget"]["tuning_seed"] = 1000
    (store.dir / "study.json").write_text(json.dumps({"fingerprint": "0123456789abcdef", "spec": spec}))
    with pytest.raises(ConfigError, match=r"search spaces, objective, sampler, pruner, final epochs or sensitivity"):
        store.check_fingerprint()
    store.write_fingerprint()
    store.check_fingerprint()  # its own fingerprint resumes
