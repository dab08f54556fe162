from __future__ import annotations

import pytest

from pal_study.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    load_train_config,
    method_name,
    parse_method,
    resolve,
)


def test_defaults_resolve_to_digits_recipe():
    cfg = resolve(load_train_config())
    assert cfg.data.name == "digits"
    assert cfg.model.arch == "digits_mlp"
    assert cfg.head.kind == "linear" and cfg.loss.name == "ce"
    assert cfg.optim.lr == 0.05 and cfg.optim.epochs == 30 and cfg.optim.schedule == "cosine"
    assert resolve(cfg) == cfg  # a fixed point: the saved config re-runs as is


@pytest.mark.parametrize(
    "method, loss, head",
    [
        ("ce", "ce", "linear"),
        ("ce+pal", "ce", "pal"),
        ("ce+fnpal", "ce", "fnpal"),
        ("nce+rce+fnpal", "nce+rce", "fnpal"),
        ("sce+fnpal", "sce", "fnpal"),
        ("nsl", "nsl", "fnpal"),
        ("ldam", "ldam", "norm"),
        ("ldam+pal", "ldam", "pal"),
        ("NCE+RCE", "nce+rce", "linear"),
    ],
)
def test_method_shorthand(method, loss, head):
    assert parse_method(method) == (loss, head)
    cfg = TrainConfig(method=method)
    assert (cfg.loss.name, cfg.head.kind) == (loss, head)
    assert method_name(resolve(cfg)) == (loss if head == "linear" else f"{loss}+{head}")


def test_per_method_defaults():
    fn = resolve(TrainConfig(method="nce+rce+fnpal"))
    assert fn.head.scale == 10.0
    assert fn.head.last_relu is False  # anchored head drops the final ReLU (docs/method.md)
    assert fn.head.use_relu_prototypes is False
    assert (fn.loss.alpha, fn.loss.beta) == (1.0, 100.0)  # digits take MNIST's (ALFs) defaults
    assert fn.loss.q is None  # only the loss's own parameters are filled
    gce = resolve(TrainConfig(method="gce"))
    assert gce.loss.q == 0.7 and gce.head.last_relu is True
    ldam = resolve(TrainConfig(method="ldam"))
    assert ldam.head.scale == 30.0 and ldam.loss.max_m == 0.5
    kept = resolve(TrainConfig(method="ce+pal", head={"last_relu": True}))
    assert kept.head.use_relu_prototypes is True


def test_cifar_lt_recipe():
    cfg = resolve(TrainConfig(data={"name": "cifar10", "root": "/x", "imbalance": {"ratio": 100}}))
    assert cfg.optim.schedule == "step" and cfg.optim.milestones == [160, 180]
    assert cfg.optim.warmup_epochs == 5 and cfg.model.arch == "cifar_cnn8"


def test_overrides_parse_yaml_values():
    d = apply_overrides(
        {"optim": {"lr": 0.1}},
        ["optim.epochs=5", "head.scale=8", "data.noise.rate=0.4", "amp=false", "optim.milestones=[3, 4]"],
    )
    assert d == {
        "optim": {"lr": 0.1, "epochs": 5, "milestones": [3, 4]},
        "head": {"scale": 8},
        "data": {"noise": {"rate": 0.4}},
        "amp": False,
    }


def _err(path=None, overrides=()):
    with pytest.raises(ConfigError) as e:
        load_train_config(path, list(overrides))
    return e.value, str(e.value)


@pytest.mark.parametrize(
    "overrides, key, fragment",
    [
        (["optim.epoch=5"], "optim.epoch", "unknown key; allowed here: lr, momentum"),
        (["method=xent"], "method", "is not one of ce, fl"),
        (["data.noise.rate=1.0"], "data.noise.rate", "less than 1"),
        (["data.imbalance.ratio=-3"], "data.imbalance.ratio", "greater than or equal to 1"),
        (["data.noise.kind=uniform"], "data.noise.kind", "'symmetric' or 'asymmetric'"),
        (["data.name=mnist"], "data.root", "data.root is required"),
        (["head.kind=softmax"], "head.kind", "'linear', 'pal', 'fnpal' or 'norm'"),
        (["loss.name=ce", "head.kind=pal", "loss.margin=0.2"], "loss.margin", "cosine margin"),
        (["method=nsl+pal"], "head.kind", "needs bounded logits"),
        (["method=ce", "loss.q=0.5"], "loss.q", "loss.q is used by gce"),
        (["model.arch=vgg"], "model.arch", "allowed: auto, digits_mlp"),
        (["optim.lr=nan"], "optim.lr", "greater than 0"),
        (["optim.weight_decay=.inf"], "optim.weight_decay", "finite"),
        (["device=tpu"], "device", "auto, cpu, cuda"),
    ],
)
def test_bad_values_name_key_and_allowed(overrides, key, fragment):
    e, text = _err(overrides=overrides)
    assert e.key == key
    assert fragment in text
    assert key in text
    # Blame --set when the bad key came from it, the config source otherwise.
    assert e.source == ("--set" if any(o.startswith(key + "=") for o in overrides) else "(defaults)")


def test_errors_name_the_file(tmp_path):
    p = tmp_path / "trial.yaml"
    p.write_text("data:\n  noise:\n    rate: 2.5\n")
    e, text = _err(p)
    assert e.source == str(p) and e.key == "data.noise.rate"
    assert str(p) in text and "2.5" in text

    p.write_text("data: [1, 2\n")
    _, text = _err(p)
    assert str(p) in text and "YAML syntax error at line" in text

    p.write_bytes(b"seed: \xff\xfe\n")
    _, text = _err(p)
    assert "not UTF-8" in text

    p.write_text("- 1\n- 2\n")
    _, text = _err(p)
    assert "mapping" in text

    _, text = _err(tmp_path / "missing.yaml")
    assert "file not found" in text


def test_method_conflict_is_reported():
    _, text = _err(overrides=["method=ce+fnpal", "head.kind=pal"])
    assert "head.kind" in text and "drop one" in text
