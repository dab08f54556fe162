"""Study files and search spaces: expansion into cells, conditional spaces, bad studies named."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from pal_study.cli import main
from pal_study.config import ConfigError
from pal_study.study import load_study, suggest

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, study: dict, spaces: dict[str, dict] | None = None) -> Path:
    (tmp_path / "search_spaces").mkdir(exist_ok=True)
    for name, space in (spaces or {}).items():
        (tmp_path / "search_spaces" / f"{name}.yaml").write_text(yaml.safe_dump(space))
    (tmp_path / "studies").mkdir(exist_ok=True)
    p = tmp_path / "studies" / "s.yaml"
    p.write_text(yaml.safe_dump(study, sort_keys=False))
    return p


SCALE = {
    "params": {"head.scale": {"type": "float", "low": 2, "high": 32, "log": True, "when": {"head": ["fnpal", "norm"]}}}
}
Q = {"params": {"loss.q": {"type": "float", "low": 0.1, "high": 1.0, "when": {"loss": ["gce"]}}}}


def base_study(**kw) -> dict:
    d = {
        "name": "t",
        "base": {"optim": {"epochs": 2}},
        "factors": {"method": ["ce", "ce+fnpal"], "data.noise.rate": [0.0, 0.4]},
        "search": ["scale"],
        "budget": {"trials_per_cell": 3},
        "finals": {"seeds": [0, 1]},
    }
    d.update(kw)
    return d


def test_expansion_and_conditional_params(tmp_path):
    s = load_study(write(tmp_path, base_study(), {"scale": SCALE}))
    assert [c.label for c in s.cells] == [
        "method=ce,data.noise.rate=0",
        "method=ce,data.noise.rate=0.4",
        "method=ce+fnpal,data.noise.rate=0",
        "method=ce+fnpal,data.noise.rate=0.4",
    ]
    # A cell with nothing to search runs its one config once; the others get the budget.
    assert [s.budget(c) for c in s.cells] == [1, 1, 3, 3]
    assert s.tuning_trials == 8 and s.final_trials == 8
    assert list(s.cells[0].params) == [] and list(s.cells[2].params) == ["head.scale"]
    assert s.cells[3].config.data.noise.rate == 0.4 and s.cells[3].config.head.kind == "fnpal"
    assert s.cells[0].config.optim.epochs == 2


def test_define_by_run_sampling_with_real_optuna(tmp_path):
    s = load_study(write(tmp_path, base_study(), {"scale": SCALE}))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = suggest(trial, s.cells[2].params)
    assert set(values) == {"head.scale"} and 2 <= values["head.scale"] <= 32
    assert suggest(study.ask(), s.cells[0].params) == {}


def test_method_factor_replaces_base_choice(tmp_path):
    s = load_study(write(tmp_path, base_study(base={"method": "ce+pal", "optim": {"epochs": 1}}), {"scale": SCALE}))
    assert [c.method for c in s.cells] == ["ce", "ce", "ce+fnpal", "ce+fnpal"]


def test_shipped_studies_and_spaces_validate():
    s = load_study(ROOT / "studies" / "quickstart.yaml")
    assert len(s.cells) >= 14 and len(s.spec.finals.seeds) == 3
    methods = {c.method for c in s.cells}
    assert {"ce", "gce", "sce", "nce+rce", "ce+pal", "ce+fnpal", "nce+rce+fnpal"} <= methods
    assert {c.config.data.noise.rate for c in s.cells} >= {0.0, 0.6}
    assert s.spec.budget.pruner.name != "none"


@pytest.mark.parametrize(
    "change, spaces, key, fragment",
    [
        ({"factors": {"data.noise.rte": [0.1]}}, {"scale": SCALE}, "factors.data.noise.rte", "not a trial config key"),
        ({"factors": {"method": []}}, {"scale": SCALE}, "factors.method", "empty grid"),
        ({"factors": {"method": ["xent"]}}, {"scale": SCALE}, "method", "not one of"),
        ({"factors": {"data.noise.rate": [0.2, 1.5]}}, {"scale": SCALE}, "data.noise.rate", "less than 1"),
        (
            {},
            {"scale": {"params": {"head.scale": {"type": "float", "low": 8, "high": 2}}}},
            "params.head.scale.low",
            "must be <= high",
        ),
        (
            {},
            {"scale": {"params": {"head.scale": {"type": "float", "low": 0, "high": 2, "log": True}}}},
            "params.head.scale.low",
            "log range needs low > 0",
        ),
        ({"search": ["scale", "q"]}, {"scale": SCALE, "q": Q}, "params.loss.q", "used by no cell"),
        ({"search": ["nope"]}, {"scale": SCALE}, "search[0]", "not found"),
        ({"budget": {"pruner": {"name": "asha"}}}, {"scale": SCALE}, "budget.pruner.name", "'median'"),
        ({"objective": {"metric": "test_acc"}}, {"scale": SCALE}, "objective.metric", "leaks the test set"),
        ({"budget": {"trials_per_cell": 0}}, {"scale": SCALE}, "budget.trials_per_cell", "greater than or equal to 1"),
        ({"finals": {"seeds": [1, 1]}}, {"scale": SCALE}, "finals.seeds", "distinct"),
        (
            {},
            {"scale": {"params": {"optim.lrate": {"type": "float", "low": 0.1, "high": 1}}}},
            "params.optim.lrate",
            "not a trial config key",
        ),
    ],
)
def test_bad_studies_name_the_key(tmp_path, change, spaces, key, fragment):
    p = write(tmp_path, base_study(**change), spaces)
    with pytest.raises(ConfigError) as e:
        load_study(p)
    assert key in str(e.value) and fragment in str(e.value)


def test_validate_cli_on_studies(tmp_path, capsys):
    p = write(tmp_path, base_study(), {"scale": SCALE})
    assert main(["validate", str(p)]) == 0
    out = capsys.readouterr().out
    assert "4 cells" in out and "= 8 trials (2 cells search nothing: 1 trial each)" in out
    p = write(tmp_path, base_study(search=["scale", "q"]), {"scale": SCALE, "q": Q})
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "q.yaml" in err and "params.loss.q" in err and "Traceback" not in err


def test_factor_overrides_take_dotted_factor_names(tmp_path):
    p = write(tmp_path, base_study(), {"scale": SCALE})
    s = load_study(p, ["factors.data.noise.rate=[0.2]", "factors.method=[ce+fnpal]", "budget.trials_per_cell=2"])
    assert [c.label for c in s.cells] == ["method=ce+fnpal,data.noise.rate=0.2"]
    assert s.cells[0].config.data.noise.rate == 0.2 and s.tuning_trials == 2
