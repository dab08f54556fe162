"""Contract tests over every registry entry: data sets, losses, models, heads, pruners, samplers.

Adding an entry to a registry runs it through these. A data set also needs one row in
``DATASET_CASES`` (how to get a tiny copy of it: options, or files written in its real format).
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import yaml
from pydantic import ValidationError
from rich.table import Table

from pal_study.config import (
    DRW_KEYS,
    ConfigError,
    DataConfig,
    HeadConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    parse_method,
    resolve,
    validate_train_config,
)
from pal_study.data import AUGMENTS, DataError, build_dataset
from pal_study.data.formats import write_cifar10, write_cifar100, write_mnist
from pal_study.data.sets import DATASET_REGISTRY, dataset_needs_files, expected_files
from pal_study.fingerprints_v1 import fingerprint_v1, old_study
from pal_study.heads import ANCHORED_HEADS, HEAD_REGISTRY, HEADS, NORMALIZED_HEADS, build_head
from pal_study.losses import LOSS_REGISTRY, PARAM_REGISTRY, build_loss, config_params, loss_defaults
from pal_study.models import MODEL_REGISTRY, build_model
from pal_study.registry import Registry, UnknownName
from pal_study.study import load_study
from pal_study.study.listing import LISTINGS, listing, render_listing
from pal_study.study.pruners import PRUNER_REGISTRY, build_pruner, pruner_options
from pal_study.study.samplers import SAMPLER_REGISTRY, build_sampler, sampler_options
from pal_study.study.spec import BudgetSpec

# --------------------------------------------------------------------------------------------
# Registry


def test_registry_basics():
    r: Registry[int] = Registry("thing")
    r.add("a", 1)

    @r.register("b")
    def b() -> int:
        return 2

    assert r.names() == ("a", "b") and list(r) == ["a", "b"] and len(r) == 2
    assert r.get("a") == 1 and r["b"] is b and "a" in r and "c" not in r and ["x"] not in r
    with pytest.raises(ValueError, match="already registered"):
        r.add("a", 3)
    with pytest.raises(UnknownName) as e:
        r.get("c")
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    assert str(e.value) == "unknown thing 'c'; known: a, b"


# --------------------------------------------------------------------------------------------
# Data sets: one row per data set (a new data set without one fails test_every_dataset_has_a_case).


def _write_mnist(root: Path) -> None:
    g = np.random.default_rng(0)
    write_mnist(
        root, g.integers(0, 256, (60, 28, 28)), np.arange(60) % 10, g.integers(0, 256, (20, 28, 28)), np.arange(20) % 10
    )


def _write_cifar10(root: Path) -> None:
    g = np.random.default_rng(0)
    write_cifar10(
        root,
        g.integers(0, 256, (60, 3, 32, 32)),
        (np.arange(60) % 10).tolist(),
        g.integers(0, 256, (20, 3, 32, 32)),
        (np.arange(20) % 10).tolist(),
    )


def _write_cifar100(root: Path) -> None:
    g = np.random.default_rng(0)
    write_cifar100(
        root,
        g.integers(0, 256, (300, 3, 32, 32)),
        (np.arange(300) % 100).tolist(),
        g.integers(0, 256, (100, 3, 32, 32)),
        (np.arange(100) % 100).tolist(),
    )


DATASET_CASES: dict[str, dict] = {
    "digits": {},
    "mnist": {"write": _write_mnist},
    "cifar10": {"write": _write_cifar10},
    "cifar100": {"write": _write_cifar100},
    "synthetic": {
        "options": {"num_classes": 4, "input_shape": [3, 16, 16], "train_per_class": 10, "test_per_class": 3}
    },
    "mnist1d": {},  # generated in memory (~0.7 s, cached per process)
}


def test_every_dataset_has_a_case():
    assert set(DATASET_CASES) == set(DATASET_REGISTRY.names()), "add a row for the new data set to DATASET_CASES"


@pytest.fixture(scope="module")
def tiny_roots(tmp_path_factory) -> dict[str, Path]:
    roots = {}
    for name, case in DATASET_CASES.items():
        if "write" in case:
            roots[name] = tmp_path_factory.mktemp(name)
            case["write"](roots[name])
    return roots


def _data_section(name: str, roots: dict[str, Path]) -> dict:
    spec = DATASET_REGISTRY.get(name)
    data: dict = {"name": name}
    if spec.needs_files:
        data["root"] = str(roots[name])
    if spec.options_key:
        data[spec.options_key] = DATASET_CASES[name].get("options", {})
    return data


@pytest.mark.parametrize("name", DATASET_REGISTRY.names())
def test_dataset_builds_with_its_declared_shape_and_classes(name, tiny_roots):
    spec = DATASET_REGISTRY.get(name)
    options = DATASET_CASES[name].get("options", {})
    b = build_dataset(name, root=tiny_roots.get(name), synthetic=options, noise_rate=0.2, seed=1)
    config_options = (
        getattr(DataConfig(**_data_section(name, tiny_roots)), spec.options_key).model_dump()
        if spec.options_key
        else {}
    )
    assert b.num_classes == spec.classes_for(config_options)
    assert b.input_shape == spec.shape_for(config_options) == tuple(b.train_x.shape[1:])
    assert b.augment in AUGMENTS and (spec.options_key or b.augment == spec.augment)
    assert b.train_x.dtype == torch.float32 and b.train_y.dtype == torch.int64
    assert int(b.train_y.min()) >= 0 and int(b.train_y.max()) < b.num_classes
    assert b.noise_rate_measured > 0


@pytest.mark.parametrize("name", DATASET_REGISTRY.names())
def test_dataset_files_declaration(name, tiny_roots, tmp_path):
    spec = DATASET_REGISTRY.get(name)
    assert dataset_needs_files(name) == spec.needs_files == (spec.files is not None)
    if not spec.needs_files:
        assert expected_files(name, tmp_path) == []
        TrainConfig(data={"name": name})  # needs no data.root
        return
    files = expected_files(name, tiny_roots[name])
    assert files and all(p.is_file() for p in files), "the fixture writes every file the spec expects"
    with pytest.raises(DataError, match="not found"):
        build_dataset(name, root=tmp_path / "empty")
    with pytest.raises(ConfigError, match=r"data.root is required"):
        validate_train_config({"data": {"name": name}}, "(test)")


@pytest.mark.parametrize("name", DATASET_REGISTRY.names())
def test_dataset_default_arch_trains_one_step(name, tiny_roots):
    spec = DATASET_REGISTRY.get(name)
    b = build_dataset(name, root=tiny_roots.get(name), synthetic=DATASET_CASES[name].get("options"), seed=0)
    arch = spec.arch_for(b.input_shape)
    assert arch in MODEL_REGISTRY
    backbone = build_model(arch, b.input_shape, seed=0)
    head = build_head("linear", backbone.feature_dim, b.num_classes)
    model = torch.nn.Sequential(backbone, head)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = build_loss("ce", b.num_classes)(model(b.train_x[:8]), b.train_y[:8])
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(p0, p) for p0, p in zip(before, model.parameters(), strict=False))


@pytest.mark.parametrize("name", DATASET_REGISTRY.names())
def test_dataset_recipe_resolves(name, tiny_roots):
    spec = DATASET_REGISTRY.get(name)
    data = _data_section(name, tiny_roots)
    cfg = resolve(TrainConfig(data=data))
    shape = spec.shape_for(getattr(cfg.data, spec.options_key).model_dump() if spec.options_key else {})
    assert cfg.model.arch == spec.arch_for(shape)
    for key, value in spec.recipe.as_optim().items():
        assert getattr(cfg.optim, key) == value, key
    lt = resolve(TrainConfig(data={**data, "imbalance": {"ratio": 10}}))
    for key, value in spec.recipe_for(10).as_optim().items():
        assert getattr(lt.optim, key) == value, key
    assert spec.recipe_for(1.0) is spec.recipe


@pytest.mark.parametrize("name", DATASET_REGISTRY.names())
def test_dataset_loss_defaults_noise_map_and_groups(name):
    spec = DATASET_REGISTRY.get(name)
    for loss in LOSS_REGISTRY.entries():
        if loss.defaults:
            assert spec.loss_defaults in loss.defaults, (loss.name, spec.loss_defaults)
            assert loss_defaults(loss.name, name) == dict(loss.defaults[spec.loss_defaults])
    k = spec.classes_for(DATASET_CASES[name].get("options"))
    if spec.asymmetric_map is not None:
        m = spec.noise_map(k)
        assert m and all(0 <= s < k and 0 <= t < k and s != t for s, t in m.items())
    hi, lo = spec.group_thresholds
    assert 0 <= lo <= hi
    assert spec.group_thresholds_for([spec.group_reference_max, 1]) == (hi, lo)


# --------------------------------------------------------------------------------------------
# Losses


def _required(name: str, k: int) -> dict:
    spec = LOSS_REGISTRY.get(name)
    return {p: [5] * k for p in spec.params if PARAM_REGISTRY.get(p).required}  # class_counts


@pytest.mark.parametrize("name", LOSS_REGISTRY.names())
def test_loss_builds_and_is_finite(name):
    k = 5
    loss = build_loss(name, k, **_required(name, k))
    z = torch.randn(16, k, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = torch.arange(16) % k
    value = loss(z, y)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value) and torch.isfinite(z.grad).all()
    assert set(loss.params) == set(LOSS_REGISTRY.get(name).accepted)


@pytest.mark.parametrize("name", LOSS_REGISTRY.names())
def test_loss_rejects_unknown_and_out_of_range_parameters(name):
    spec = LOSS_REGISTRY.get(name)
    with pytest.raises(ValueError, match="bogus"):
        build_loss(name, 3, bogus=1.0, **_required(name, 3))
    for key in spec.accepted:
        p = PARAM_REGISTRY.get(key)
        if p.low is None:
            continue
        with pytest.raises(ValueError, match=key):
            build_loss(name, 3, **{**_required(name, 3), key: p.low - (0 if p.low_open else 1)})


@pytest.mark.parametrize("name", LOSS_REGISTRY.names())
def test_loss_defaults_and_config_keys(name):
    spec = LOSS_REGISTRY.get(name)
    for _ref, values in spec.defaults.items():
        assert set(values) <= set(spec.params)
        build_loss(name, 3, **values, **_required(name, 3))
    assert spec.default_head in HEADS
    head = spec.default_head if spec.default_head in NORMALIZED_HEADS else "fnpal"
    for key in config_params():
        value = PARAM_REGISTRY.get(key).default
        data = {"loss": {"name": name, key: value}, "head": {"kind": head}}
        if key in spec.params:
            assert getattr(TrainConfig(**data).loss, key) == value
        else:
            with pytest.raises(ValidationError, match=f"takes none of {key}"):
                TrainConfig(**data)
    if spec.normalized_only:
        with pytest.raises(ValidationError, match="needs bounded logits"):
            TrainConfig(method=f"{name}+linear")
    assert parse_method(name) == (name, spec.default_head)


# --------------------------------------------------------------------------------------------
# Models and heads


@pytest.mark.parametrize("arch", MODEL_REGISTRY.names())
def test_model_forward_gives_feature_dim(arch):
    spec = MODEL_REGISTRY.get(arch)
    side = max(8, spec.min_side or 0)
    shape = (3, side, side)
    m = build_model(arch, shape, seed=0).eval()
    z = m(torch.randn(2, *shape))
    assert m.feature_dim == spec.feature_dim and z.shape == (2, spec.feature_dim)
    if spec.min_side is not None:
        with pytest.raises(ValueError, match=arch):
            build_model(arch, (3, spec.min_side - 1, spec.min_side - 1))
        with pytest.raises(ValueError, match="image"):
            build_model(arch, (side * side,))


@pytest.mark.parametrize("kind", HEAD_REGISTRY.names())
def test_head_flags_match_the_module(kind):
    spec = HEAD_REGISTRY.get(kind)
    h = build_head(kind, 8, 3)
    assert (h.anchored, h.normalized, h.kind) == (spec.anchored, spec.normalized, kind)
    assert (kind in ANCHORED_HEADS) == spec.anchored and (kind in NORMALIZED_HEADS) == spec.normalized


# --------------------------------------------------------------------------------------------
# Pruners and samplers


def _study(tmp_path: Path, budget: dict) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(
        yaml.safe_dump({"name": "s", "base": {"data": {"name": "digits"}, "optim": {"epochs": 2}}, "budget": budget})
    )
    return p


def _foreign(registry: Registry, name: str) -> str:
    """An option of another pruner or sampler that ``name`` does not take."""
    own = set(registry.get(name).model_fields)
    others = [*registry.entries(), *PRUNER_REGISTRY.entries(), *SAMPLER_REGISTRY.entries()]
    return next(k for cls in others for k in cls.model_fields if k not in own)


@pytest.mark.parametrize("name", PRUNER_REGISTRY.names())
def test_pruner_builds_and_rejects_a_foreign_option(name, tmp_path):
    spec = BudgetSpec.model_validate({"pruner": {"name": name}}).pruner
    assert type(spec) is PRUNER_REGISTRY.get(name)
    assert isinstance(build_pruner(spec, 10), optuna.pruners.BasePruner)
    foreign = _foreign(PRUNER_REGISTRY, name)
    with pytest.raises(ConfigError) as e:
        load_study(_study(tmp_path, {"pruner": {"name": name, foreign: 1}}))
    msg = str(e.value)
    assert str(tmp_path / "s.yaml") in msg and f"budget.pruner.{foreign}" in msg
    assert "allowed here: " + ", ".join(type(spec).model_fields) in msg


@pytest.mark.parametrize("name", SAMPLER_REGISTRY.names())
def test_sampler_builds_and_rejects_a_foreign_option(name, tmp_path):
    spec = BudgetSpec.model_validate({"sampler": {"name": name, "seed": 3}}).sampler
    assert type(spec) is SAMPLER_REGISTRY.get(name)
    assert isinstance(build_sampler(spec, 1, 2), optuna.samplers.BaseSampler)
    foreign = _foreign(SAMPLER_REGISTRY, name)
    with pytest.raises(ConfigError) as e:
        load_study(_study(tmp_path, {"sampler": {"name": name, foreign: 1}}))
    msg = str(e.value)
    assert str(tmp_path / "s.yaml") in msg and f"budget.sampler.{foreign}" in msg
    assert "allowed here: " + ", ".join(type(spec).model_fields) in msg


def test_unnamed_pruner_and_sampler_take_the_defaults():
    b = BudgetSpec.model_validate({"pruner": {"n_startup_trials": 1}, "sampler": {"seed": 3}})
    assert (b.pruner.name, b.pruner.n_startup_trials, b.sampler.name, b.sampler.seed) == ("median", 1, "tpe", 3)
    assert (BudgetSpec().pruner.name, BudgetSpec().sampler.name) == ("median", "tpe")


def _primitive_state(obj) -> dict:
    return {k: v for k, v in vars(obj).items() if isinstance(v, (int, float, str, type(None)))}


@pytest.mark.parametrize("name", PRUNER_REGISTRY.names())
def test_pruner_matches_the_engine_copy(name):
    from pal_study.study import engine

    spec = BudgetSpec.model_validate({"pruner": {"name": name}}).pruner
    a, b = build_pruner(spec, 12), engine.build_pruner(spec, 12)
    assert type(a) is type(b) and _primitive_state(a) == _primitive_state(b)


@pytest.mark.parametrize("name", SAMPLER_REGISTRY.names())
def test_sampler_draws_like_the_engine_copy(name):
    from pal_study.study import engine

    spec = BudgetSpec.model_validate({"sampler": {"name": name, "seed": 3}}).sampler

    def draws(sampler) -> list[float]:
        study = optuna.create_study(sampler=sampler)
        out = []
        for _ in range(3):
            trial = study.ask()
            out.append(trial.suggest_float("x", 0.0, 1.0))
            study.tell(trial, out[-1])
        return out

    assert draws(build_sampler(spec, 2, 5)) == draws(engine.build_sampler(spec, 2, 5))
    assert draws(build_sampler(spec, 2, 5)) != draws(build_sampler(spec, 2, 6))


# The flat PrunerSpec/SamplerSpec before the split dumped every option; version-1 study
# fingerprints hashed those dumps, which the legacy computation derives from today's plain ones.
OLD_PRUNER_DUMP = {
    "n_startup_trials": 2,
    "n_warmup_steps": 2,
    "interval_steps": 1,
    "percentile": 50.0,
    "min_resource": "auto",
    "reduction_factor": 3,
}


def _v1_payload(budget: dict) -> dict:
    spec = BudgetSpec.model_validate(budget)
    plain = {
        "cells": [],
        "pruner": spec.pruner.model_dump(mode="json"),
        "sampler": spec.sampler.model_dump(mode="json"),
    }
    return old_study(plain)


@pytest.mark.parametrize("name", PRUNER_REGISTRY.names())
def test_pruner_v1_dump_is_the_old_flat_one(name):
    spec = BudgetSpec.model_validate({"pruner": {"name": name}}).pruner
    assert spec.model_dump(mode="json") == {"name": name, **pruner_options(name)}  # its own options only
    assert _v1_payload({"pruner": {"name": name}})["pruner"] == {"name": name, **OLD_PRUNER_DUMP}


@pytest.mark.parametrize("name", SAMPLER_REGISTRY.names())
def test_sampler_v1_dump_is_the_old_flat_one(name):
    spec = BudgetSpec.model_validate({"sampler": {"name": name, "seed": 2}}).sampler
    assert spec.model_dump(mode="json") == {"name": name, **sampler_options(name), "seed": 2}
    assert _v1_payload({"sampler": {"name": name, "seed": 2}})["sampler"] == {
        "name": name,
        "seed": 2,
        "n_startup_trials": 4,
    }


# Stored runs of the shipped studies must not be declared "a different version of the study" by
# accident. Changed on purpose: every study when fingerprints got versioned (version 2: the plain,
# complete dumps; SHIPPED_FINGERPRINTS_V1 are those before, which results stored then are checked
# against), and, before that, long_tail (its grid gained DRW, loss.drw_epoch, cells), quickstart
# (its pruner waits 15 epochs instead of 3: benchmarks/README.md, pruning under label noise), and
# every study when tuning trials moved to their own seed (budget.tuning_seed, 1000: disjoint from
# the final seeds; before, tuning ran on the base config's seed 0, also a final seed).
SHIPPED_FINGERPRINTS = {
    "long_tail": "bf3828a37c43969d",
    "margin_ablation": "c86d4990beb42202",
    "noisy_labels": "798fd24e242cb760",
    "paper_claims": "80c97fb37ae9b101",
    "paper_claims_quick": "ccb25ca54400bcfa",
    "quickstart": "56875e11c95170d5",
    "scale_ablation": "b478471b08621932",
    "weight_decay": "50eb936665f8f21c",
}
SHIPPED_FINGERPRINTS_V1 = {
    "long_tail": "2df6e54e1fdd35c3",
    "margin_ablation": "8a919f21341b0cd5",
    "noisy_labels": "9994bcad35c11222",
    "quickstart": "5f215a54b6fcfccf",
    "scale_ablation": "bc65e41d4f0490ad",
    "weight_decay": "3f0298227eaa5041",
    "paper_claims": "13d87c4f3a33d701",
    "paper_claims_quick": "11d8682980389032",
}


def test_every_shipped_study_has_pinned_fingerprints():
    from pal_study.study.listing import shipped_dir

    shipped = {p.stem for p in shipped_dir("studies").glob("*.yaml")}
    assert shipped == set(SHIPPED_FINGERPRINTS) == set(SHIPPED_FINGERPRINTS_V1)


@pytest.mark.parametrize("study", sorted(SHIPPED_FINGERPRINTS))
def test_shipped_study_fingerprints_unchanged(study):
    from pal_study.study.listing import shipped_dir
    from pal_study.study.store import fingerprint, fingerprint_payload

    loaded = load_study(shipped_dir("studies") / f"{study}.yaml")
    assert fingerprint(loaded) == SHIPPED_FINGERPRINTS[study]
    # The v1 -> v2 mapping: results stored with the v1 fingerprint are recognised (and upgraded).
    assert fingerprint_v1(fingerprint_payload(loaded)) == SHIPPED_FINGERPRINTS_V1[study]


# --------------------------------------------------------------------------------------------
# The config's allowed values are the registries'


def _literal(model, field: str) -> tuple:
    return typing.get_args(model.model_fields[field].annotation)


def test_config_allowed_values_are_the_registry_names():
    assert _literal(DataConfig, "name") == DATASET_REGISTRY.names()
    assert _literal(HeadConfig, "kind") == HEAD_REGISTRY.names() == HEADS
    assert set(config_params()) <= set(LossConfig.model_fields)
    assert set(LossConfig.model_fields) == {"name", "margin", *DRW_KEYS, *config_params()}
    for name in LOSS_REGISTRY.names():
        LossConfig(name=name)
    for arch in MODEL_REGISTRY.names():
        ModelConfig(arch=arch)
    with pytest.raises(ValidationError, match=re.escape(", ".join(LOSS_REGISTRY.names()))):
        LossConfig(name="bogus")
    with pytest.raises(ConfigError) as e:
        validate_train_config({"data": {"name": "imagenet"}}, "(test)")
    assert all(f"'{n}'" in str(e.value) for n in DATASET_REGISTRY.names())
    for field, registry in (("pruner", PRUNER_REGISTRY), ("sampler", SAMPLER_REGISTRY)):
        tags = {
            typing.get_args(c.model_fields["name"].annotation)[0]
            for c in typing.get_args(BudgetSpec.model_fields[field].annotation)
        }
        assert tags == set(registry.names())
        with pytest.raises(ValidationError, match=", ".join(f"'{n}'" for n in registry.names())):
            BudgetSpec.model_validate({field: {"name": "bogus"}})


# --------------------------------------------------------------------------------------------
# Listing


@pytest.mark.parametrize("what", LISTINGS)
def test_listing_rows_and_table(what):
    rows = listing(what)
    assert rows and json.loads(json.dumps(rows)) == rows
    table = render_listing(what, rows)
    assert isinstance(table, Table) and table.row_count == len(rows)


def test_listing_names_match_the_registries():
    assert [r["name"] for r in listing("datasets")] == list(DATASET_REGISTRY.names())
    assert [r["name"] for r in listing("models")] == list(MODEL_REGISTRY.names())
    assert [r["name"] for r in listing("losses")] == list(LOSS_REGISTRY.names())
    assert [r["name"] for r in listing("pruners")] == list(PRUNER_REGISTRY.names())
    assert [r["name"] for r in listing("samplers")] == list(SAMPLER_REGISTRY.names())
    median = next(r for r in listing("pruners") if r["name"] == "median")
    assert median["options"] == {"n_startup_trials": 2, "n_warmup_steps": 2, "interval_steps": 1}
    methods = {r["method"]: r for r in listing("methods")}
    assert "nce+rce+fnpal" in methods and methods["nce+rce+fnpal"]["canonical"]
    assert "nsl+linear" not in methods and "nsl+pal" not in methods and methods["nsl"]["head"] == "fnpal"
    for m in methods:
        validate_train_config({"method": m}, "(test)")
    assert {"quickstart", "noisy_labels"} <= {r["name"] for r in listing("studies")}
    assert {"pal_scale", "weight_decay"} <= {r["name"] for r in listing("spaces")}
    with pytest.raises(ValueError, match="datasets, models"):
        listing("bogus")
