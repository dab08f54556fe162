"""Trial configuration: pydantic models, YAML loading, dotted overrides, per-dataset recipes.

A config is validated once, here, at the boundary. Everything after this module may assume a
well-formed, fully resolved :class:`TrainConfig`. Errors are :class:`ConfigError`s that name
the file (or ``--set``), the dotted key, the bad value and what is allowed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DATASET_NAMES = ("digits", "mnist", "cifar10", "cifar100", "synthetic")
HEAD_KINDS = ("linear", "pal", "fnpal", "norm")
ANCHORED_HEADS = ("pal", "fnpal")
NORMALIZED_HEADS = ("fnpal", "norm")
# A method without a head suffix takes the head its loss is defined with: NSL is only
# symmetric with bounded, anchored logits (PAL_SPEC §3); LDAM-DRW uses a normalised classifier.
DEFAULT_HEAD_FOR_LOSS = {"nsl": "fnpal", "ldam": "norm"}
DEFAULT_SCALE = {"fnpal": 10.0, "norm": 10.0}
LDAM_NORM_SCALE = 30.0  # LDAM-DRW's s for its normalised classifier


class ConfigError(ValueError):
    """A user mistake in a config: which file, which key, which value, what is allowed."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        where = ": ".join(p for p in (source, key) if p)
        super().__init__(f"{where}: {message}" if where else message)


class KeyedError(ValueError):
    """Raised inside cross-field validators so the message can name the offending dotted key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _finite(v: float | None) -> float | None:
    if v is not None and not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


class NoiseConfig(_Strict):
    kind: Literal["symmetric", "asymmetric"] = "symmetric"
    rate: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of training labels corrupted")


class ImbalanceConfig(_Strict):
    ratio: float = Field(1.0, ge=1.0, description="n_max / n_min; 1 = balanced")
    profile: Literal["exp", "step"] = "exp"

    _fin = field_validator("ratio")(_finite)


class SyntheticConfig(_Strict):
    num_classes: int = Field(10, ge=2, le=10_000)
    dim: int = Field(32, ge=1, le=100_000)
    train_per_class: int = Field(200, ge=1, le=1_000_000)
    test_per_class: int = Field(100, ge=1, le=1_000_000)
    separation: float = Field(3.0, gt=0.0)
    input_shape: list[int] | None = Field(None, description="e.g. [3, 32, 32] for image-shaped data")
    data_seed: int = Field(0, ge=0, description="draws the data; the trial seed varies noise and splits")
    augment: Literal["none", "crop_flip"] = "none"

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(d < 1 for d in v)):
            raise ValueError("must be a non-empty list of positive ints, e.g. [3, 32, 32]")
        return v

    @model_validator(mode="after")
    def _augment_needs_images(self) -> SyntheticConfig:
        if self.augment == "crop_flip" and (self.input_shape is None or len(self.input_shape) != 3):
            raise KeyedError("augment", "crop_flip needs an image input_shape [C, H, W]")
        return self


class DataConfig(_Strict):
    name: Literal["digits", "mnist", "cifar10", "cifar100", "synthetic"] = "digits"
    root: str | None = Field(None, description="directory holding the torchvision data set files")
    download: bool = False
    val_fraction: float = Field(0.1, ge=0.0, le=0.5)
    noise: NoiseConfig = NoiseConfig()
    imbalance: ImbalanceConfig = ImbalanceConfig()
    synthetic: SyntheticConfig = SyntheticConfig()


class ModelConfig(_Strict):
    arch: str = Field("auto", description="backbone; 'auto' picks the data set's default")

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        from pal_study.models import MODELS

        if v != "auto" and v not in MODELS:
            raise ValueError(f"unknown arch {v!r}; allowed: auto, {', '.join(MODELS)}")
        return v


class HeadConfig(_Strict):
    kind: Literal["linear", "pal", "fnpal", "norm"] = "linear"
    scale: float | None = Field(None, gt=0.0, description="logit scale s of normalised heads")
    prototypes: Literal["auto", "etf", "optimized"] = "auto"
    last_relu: bool | None = Field(
        None, description="keep the backbone's final ReLU; default: dropped for anchored heads"
    )
    use_relu_prototypes: bool | None = Field(
        None, description="prototypes for non-negative features; default: = last_relu when anchored"
    )

    _fin = field_validator("scale")(_finite)


class LossConfig(_Strict):
    name: str = "ce"
    margin: float = Field(0.0, ge=0.0, lt=2.0, description="additive cosine margin (normalised heads)")
    q: float | None = Field(None, gt=0.0, le=1.0)
    gamma: float | None = Field(None, ge=0.0)
    alpha: float | None = Field(None, ge=0.0)
    beta: float | None = Field(None, ge=0.0)
    max_m: float | None = Field(None, gt=0.0)

    _fin = field_validator("margin", "gamma", "alpha", "beta", "max_m")(_finite)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        from pal_study.losses import LOSSES

        if v not in LOSSES:
            raise ValueError(f"unknown loss {v!r}; allowed: {', '.join(LOSSES)}")
        return v


class OptimConfig(_Strict):
    lr: float | None = Field(None, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float | None = Field(None, ge=0.0)
    epochs: int | None = Field(None, ge=1, le=100_000)
    batch_size: int | None = Field(None, ge=1, le=1_000_000)
    schedule: Literal["cosine", "step", "constant"] | None = None
    warmup_epochs: int | None = Field(None, ge=0)
    milestones: list[int] | None = None
    step_gamma: float | None = Field(None, gt=0.0, le=1.0, description="lr factor per milestone")
    grad_clip: float | None = Field(None, ge=0.0, description="max grad norm; 0 disables")

    _fin = field_validator("lr", "weight_decay", "grad_clip")(_finite)


class TrainConfig(_Strict):
    """One trial. ``None`` fields take the data set's documented recipe in :func:`resolve`."""

    method: str | None = Field(None, description="shorthand <loss>[+<head>] setting loss.name and head.kind")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    head: HeadConfig = HeadConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    seed: int = Field(0, ge=0, lt=2**32)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads; default: CPUs allotted")
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = Field(True, description="channels_last conv layout on CUDA (ignored on CPU)")
    compile: bool = Field(False, description="torch.compile the model on CUDA (ignored on CPU)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        ok = v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())
        if not ok:
            raise ValueError(f"unknown device {v!r}; allowed: auto, cpu, cuda, cuda:N")
        return v

    @model_validator(mode="before")
    @classmethod
    def _apply_method(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("method") is None:
            return data
        method = data["method"]
        if not isinstance(method, str):
            raise KeyedError("method", f"must be a string like 'nce+rce+fnpal', got {method!r}")
        try:
            loss_name, head_kind = parse_method(method)
        except ValueError as e:
            raise KeyedError("method", str(e)) from None
        data = dict(data)
        for section, key, value in (("loss", "name", loss_name), ("head", "kind", head_kind)):
            if not isinstance(data.get(section) or {}, dict):
                continue  # let field validation report the bad section
            sub = dict(data.get(section) or {})
            given = sub.get(key)
            if given is not None and given != value:
                raise KeyedError(
                    f"{section}.{key}",
                    f"method {method!r} sets {section}.{key}={value!r} but {section}.{key}={given!r} "
                    f"is also given; drop one of them"
                )
            sub[key] = value
            data[section] = sub
        return data

    @model_validator(mode="after")
    def _coherent(self) -> TrainConfig:
        from pal_study.losses import NORMALIZED_ONLY

        if self.loss.name in NORMALIZED_ONLY and self.head.kind not in NORMALIZED_HEADS:
            raise KeyedError(
                "head.kind",
                f"loss {self.loss.name!r} needs bounded logits: head.kind must be one of "
                f"{', '.join(NORMALIZED_HEADS)}, not {self.head.kind!r} (try method={self.loss.name}+fnpal)"
            )
        from pal_study.losses import LOSS_PARAMS

        unused = [k for k in ("q", "gamma", "alpha", "beta", "max_m")
                  if getattr(self.loss, k) is not None and k not in LOSS_PARAMS[self.loss.name]]
        if unused:
            users = {k: [n for n, ps in LOSS_PARAMS.items() if k in ps] for k in unused}
            detail = "; ".join(f"loss.{k} is used by {', '.join(v) or 'no loss'}" for k, v in users.items())
            raise KeyedError(f"loss.{unused[0]}", f"loss {self.loss.name!r} takes none of {', '.join(unused)} ({detail})")
        if self.loss.margin > 0 and self.head.kind not in NORMALIZED_HEADS:
            raise KeyedError(
                "loss.margin",
                f"loss.margin is a cosine margin: it needs head.kind in {', '.join(NORMALIZED_HEADS)}, "
                f"not {self.head.kind!r}"
            )
        if self.data.name in ("mnist", "cifar10", "cifar100") and not self.data.root and not self.data.download:
            raise KeyedError(
                "data.root",
                f"data.root is required for {self.data.name!r} (a directory with the torchvision files); "
                f"or pass --download / data.download=true where a network exists"
            )
        return self


def parse_method(method: str) -> tuple[str, str]:
    """Split ``<loss>[+<head>]`` into (loss name, head kind); unknown names list the known ones."""
    from pal_study.losses import LOSSES

    head = None
    loss = method.strip().lower()
    for kind in HEAD_KINDS:
        if loss.endswith("+" + kind):
            head, loss = kind, loss[: -len(kind) - 1]
            break
    if loss not in LOSSES:
        raise ValueError(
            f"unknown method {method!r}: loss part {loss!r} is not one of {', '.join(LOSSES)}; "
            f"optional head suffix: +{', +'.join(HEAD_KINDS)}"
        )
    return loss, head or DEFAULT_HEAD_FOR_LOSS.get(loss, "linear")


def method_name(cfg: TrainConfig) -> str:
    """The canonical method label of a config (``ce``, ``nce+rce+fnpal``, ``nsl+fnpal`` ...)."""
    if cfg.head.kind == "linear":
        return cfg.loss.name
    return f"{cfg.loss.name}+{cfg.head.kind}"


# --------------------------------------------------------------------------------------------
# Recipes (PAL_SPEC §5). Digits and synthetic are ours: small, fast, CPU-friendly.

RECIPES: dict[str, dict[str, Any]] = {
    "digits": dict(lr=0.05, weight_decay=5e-4, epochs=30, batch_size=64, schedule="cosine",
                   warmup_epochs=1, grad_clip=5.0),
    "synthetic": dict(lr=0.05, weight_decay=5e-4, epochs=20, batch_size=128, schedule="cosine",
                      warmup_epochs=1, grad_clip=5.0),
    "mnist": dict(lr=0.01, weight_decay=1e-3, epochs=50, batch_size=128, schedule="cosine",
                  warmup_epochs=0, grad_clip=5.0),
    "cifar10": dict(lr=0.01, weight_decay=1e-4, epochs=120, batch_size=128, schedule="cosine",
                    warmup_epochs=0, grad_clip=5.0),
    # The paper trains ResNet-34 on CIFAR-100; ResNet-32 is what pal-study ships (see README).
    "cifar100": dict(lr=0.1, weight_decay=1e-5, epochs=200, batch_size=128, schedule="cosine",
                     warmup_epochs=0, grad_clip=5.0),
    # LDAM-DRW's CIFAR-LT recipe: warm-up 5, lr x0.01 at 160 and again at 180.
    "cifar-lt": dict(lr=0.1, weight_decay=2e-4, epochs=200, batch_size=128, schedule="step",
                     warmup_epochs=5, milestones=[160, 180], step_gamma=0.01, grad_clip=0.0),
}


def recipe_for(cfg: TrainConfig) -> dict[str, Any]:
    name = cfg.data.name
    if name in ("cifar10", "cifar100") and cfg.data.imbalance.ratio > 1:
        return RECIPES["cifar-lt"]
    return RECIPES[name]


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill every ``None`` with its documented default; the result is a fixed point.

    The resolved config is what is saved beside results, so re-running it gives the same trial
    even if the defaults change later.
    """
    from pal_study.losses import loss_defaults

    d = cfg.model_dump()
    recipe = recipe_for(cfg)
    for key, value in recipe.items():
        if d["optim"].get(key) is None:
            d["optim"][key] = value
    if d["optim"]["milestones"] is None:
        d["optim"]["milestones"] = []
    if d["optim"]["step_gamma"] is None:
        d["optim"]["step_gamma"] = 0.1

    head = d["head"]
    if head["kind"] in NORMALIZED_HEADS and head["scale"] is None:
        head["scale"] = LDAM_NORM_SCALE if d["loss"]["name"] == "ldam" else DEFAULT_SCALE[head["kind"]]
    anchored = head["kind"] in ANCHORED_HEADS
    if head["last_relu"] is None:
        head["last_relu"] = not anchored
    if head["use_relu_prototypes"] is None:
        head["use_relu_prototypes"] = bool(anchored and head["last_relu"])

    loss = d["loss"]
    for key, value in loss_defaults(loss["name"], cfg.data.name).items():
        if key in loss and loss[key] is None:
            loss[key] = value

    if d["model"]["arch"] == "auto":
        from pal_study.models import default_arch

        shape = _input_shape(cfg)
        d["model"]["arch"] = default_arch(cfg.data.name, shape)
    d["method"] = None
    return TrainConfig.model_validate(d)


def _input_shape(cfg: TrainConfig) -> tuple[int, ...]:
    shapes = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}
    if cfg.data.name == "synthetic":
        s = cfg.data.synthetic
        return tuple(s.input_shape) if s.input_shape else (s.dim,)
    return shapes[cfg.data.name]


# --------------------------------------------------------------------------------------------
# Loading, overrides, error messages


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b=c`` → ("a.b", parsed c); the value is read as YAML so 5, 1e-3, true, [1,2] work."""
    if "=" not in item:
        raise ConfigError(f"expected key=value, got {item!r}", source="--set")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad key in {item!r}", source="--set")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = _deepcopy(data)
    for item in overrides:
        key, value = parse_override(item)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{part!r} is a value, not a section", source="--set", key=key)
            node = child
        node[parts[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Safe-load a YAML mapping; every failure is a ConfigError naming the file."""
    p = Path(path)
    src = str(p)
    if not p.exists():
        raise ConfigError("file not found", source=src)
    if p.is_dir():
        raise ConfigError("is a directory, expected a YAML file", source=src)
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", source=src) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", source=src) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"YAML syntax error{at}: {getattr(e, 'problem', e)}", source=src) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of keys at the top level, got {type(data).__name__}", source=src)
    return data


def validation_error_to_config_error(
    err: ValidationError, source: str, overridden: set[str] | None = None
) -> ConfigError:
    """Turn pydantic's errors into lines of: file or --set, dotted key, message, bad value."""
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, KeyedError):
            key = f"{key}.{cause.key}" if key else cause.key
        key = key or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown key; allowed here: {', '.join(_allowed_keys(e['loc']))}"
        value = e.get("input")
        if e["type"] not in ("extra_forbidden", "missing") and not isinstance(value, dict):
            msg += f" (got {value!r})"
        where = "--set" if overridden and key in overridden else source
        problems.append((where, key, msg))
    if len(problems) == 1:
        where, key, msg = problems[0]
        return ConfigError(msg, source=where, key=key)
    lines = "\n".join(f"  {w}: {k}: {m}" for w, k, m in problems)
    return ConfigError(f"{len(problems)} problems\n{lines}", source=problems[0][0], key=problems[0][1])


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = TrainConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a trial config (or the built-in defaults), apply ``--set`` overrides, validate."""
    source = str(path) if path is not None else "(defaults)"
    data = read_yaml(path) if path is not None else {}
    overrides = list(overrides or [])
    merged = apply_overrides(data, overrides)
    return validate_train_config(merged, source, {parse_override(o)[0] for o in overrides})


def validate_train_config(data: dict[str, Any], source: str, overridden: set[str] | None = None) -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as err:
        raise validation_error_to_config_error(err, source, overridden) from None


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
