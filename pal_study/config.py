"""Trial configuration: pydantic models, YAML loading, dotted overrides, per-dataset recipes.

A config is validated once, here, at the boundary. Everything after this module may assume a
well-formed, fully resolved :class:`TrainConfig`. Errors are :class:`ConfigError`s that name
the file (or ``--set``), the dotted key, the bad value and what is allowed.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

# The allowed values of the config come from the registries' tables, which need no torch: data sets
# (data/sets/), heads, losses and their hyperparameters, models (specs/; heads.py, losses.py and
# models.py build them).
from pal_study.data.sets import DATASET_REGISTRY, dataset_names, get_dataset
from pal_study.data.sets.base import RECIPE_OPTIM_KEYS
from pal_study.errors import ConfigError, KeyedError
from pal_study.methods import method_label, parse_method
from pal_study.schema import StrictModel as _Strict
from pal_study.specs.heads import ANCHORED_HEADS, DEFAULT_SCALE, HEADS, NORMALIZED_HEADS
from pal_study.specs.losses import (
    DRW_BETA,
    LOSS_REGISTRY,
    PARAM_REGISTRY,
    LossParam,
    config_params,
    get_loss,
    loss_defaults,
)
from pal_study.specs.models import MODEL_REGISTRY, default_arch


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


class _DataConfigBase(_Strict):
    name: Literal[dataset_names()] = "digits"  # type: ignore[valid-type]
    root: str | None = Field(None, description="directory holding the torchvision data set files")
    download: bool = False
    val_fraction: float = Field(0.1, ge=0.0, le=0.5)
    noise: NoiseConfig = NoiseConfig()
    imbalance: ImbalanceConfig = ImbalanceConfig()


# data.<options_key> for every data set with options of its own (data.synthetic, data.mnist1d): each
# data set's module defines its options model beside its registry entry (DatasetSpec.options).
_data_options: dict[str, Any] = {
    spec.options_key: (spec.options, spec.options())
    for spec in DATASET_REGISTRY.entries()
    if spec.options_key is not None and spec.options is not None
}
DataConfig = create_model("DataConfig", __base__=_DataConfigBase, __module__=__name__, **_data_options)


class ModelConfig(_Strict):
    arch: str = Field("auto", description="backbone; 'auto' picks the data set's default")

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        if v != "auto" and v not in MODEL_REGISTRY:
            raise ValueError(f"unknown arch {v!r}; allowed: auto, {', '.join(MODEL_REGISTRY.names())}")
        return v


class HeadConfig(_Strict):
    kind: Literal[HEADS] = "linear"  # type: ignore[valid-type]
    scale: float | None = Field(None, gt=0.0, description="logit scale s of normalised heads")
    prototypes: Literal["auto", "etf", "optimized"] = "auto"
    last_relu: bool | None = Field(
        None, description="keep the backbone's final ReLU; default: dropped for anchored heads"
    )
    use_relu_prototypes: bool | None = Field(
        None, description="prototypes for non-negative features; default: = last_relu when anchored"
    )

    _fin = field_validator("scale")(_finite)


DRW_KEYS = ("drw_epoch", "drw_beta")


class _LossConfigBase(_Strict):
    name: str = "ce"
    margin: float = Field(0.0, ge=0.0, lt=2.0, description="additive cosine margin (normalised heads)")
    # Deferred re-weighting (DRW, Cao et al. 2019), for losses with LossSpec.supports_weights (ce, ldam).
    drw_epoch: int | bool | None = Field(
        None,
        description="DRW: class-balanced weights apply once this many epochs are done (as "
        "optim.milestones count: 160 = from the 161st epoch); false: off; unset: the long-tail recipe's "
        "value for ldam (LDAM-DRW), else off",
    )
    drw_beta: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description=f"DRW's β: w_c ∝ (1 − β)/(1 − β^n_c); unset: {DRW_BETA} (LDAM-DRW, Cui et al. 2019)",
    )

    _fin = field_validator("margin", "drw_beta")(_finite)

    @field_validator("drw_epoch", mode="before")
    @classmethod
    def _drw_epoch(cls, v: Any) -> Any:
        if v is None or v is False:
            return v
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError("must be an epoch count ≥ 0 (weights from the next epoch on), or false for off")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v not in LOSS_REGISTRY:
            raise ValueError(f"unknown loss {v!r}; allowed: {', '.join(LOSS_REGISTRY.names())}")
        return v

    @property
    def drw_active(self) -> bool:
        """Whether deferred re-weighting is on (a resolved config: drw_epoch an int)."""
        return self.drw_start is not None

    @property
    def drw_start(self) -> int | None:
        """``drw_epoch`` where deferred re-weighting is on (an int), else None (unset or false)."""
        e = self.drw_epoch
        return e if isinstance(e, int) and not isinstance(e, bool) else None


def _param_field(p: LossParam) -> tuple[Any, Any]:
    bounds: dict[str, Any] = {}  # Field's keywords
    if p.low is not None:
        bounds["gt" if p.low_open else "ge"] = p.low
    if p.high is not None:
        bounds["le"] = p.high
    return float | None, Field(None, description=f"{p.doc}; unset: the data set's default", **bounds)


# loss.<hyperparameter> for every loss hyperparameter the registry marks ``config`` (q, gamma, alpha,
# beta, max_m): unset (None) takes the data set's documented value in :func:`resolve`.
_loss_params: dict[str, Any] = {name: _param_field(PARAM_REGISTRY.get(name)) for name in config_params()}
LossConfig = create_model(
    "LossConfig",
    __base__=_LossConfigBase,
    __module__=__name__,
    __validators__={"_fin_params": field_validator(*config_params())(_finite)},
    **_loss_params,
)


Schedule = Literal["cosine", "step", "constant"]


@dataclass(frozen=True)
class ResolvedOptim:
    """The optimiser settings of a resolved config, every one set: what training reads."""

    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    epochs: int
    batch_size: int
    schedule: Schedule
    warmup_epochs: int
    milestones: list[int]
    step_gamma: float
    grad_clip: float  # 0: no clipping


class OptimConfig(_Strict):
    lr: float | None = Field(None, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float | None = Field(None, ge=0.0)
    epochs: int | None = Field(None, ge=1, le=100_000)
    batch_size: int | None = Field(None, ge=1, le=1_000_000)
    schedule: Schedule | None = None
    warmup_epochs: int | None = Field(None, ge=0)
    milestones: list[int] | None = None
    step_gamma: float | None = Field(None, gt=0.0, le=1.0, description="lr factor per milestone")
    grad_clip: float | None = Field(None, ge=0.0, description="max grad norm; 0 disables")

    _fin = field_validator("lr", "weight_decay", "grad_clip")(_finite)

    @property
    def resolved(self) -> ResolvedOptim:
        """These settings as :func:`resolve` fills them; a ValueError names the first one still unset."""
        lr, wd, epochs, batch, schedule = self.lr, self.weight_decay, self.epochs, self.batch_size, self.schedule
        warmup, milestones, gamma, clip = self.warmup_epochs, self.milestones, self.step_gamma, self.grad_clip
        if (
            lr is None
            or wd is None
            or epochs is None
            or batch is None
            or schedule is None
            or warmup is None
            or milestones is None
            or gamma is None
            or clip is None
        ):
            unset = next(k for k in _RESOLVED_OPTIM if getattr(self, k) is None)
            raise ValueError(f"optim.{unset} is unset: resolve the config first (config.resolve)")
        return ResolvedOptim(
            lr=lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=wd,
            epochs=epochs,
            batch_size=batch,
            schedule=schedule,
            warmup_epochs=warmup,
            milestones=milestones,
            step_gamma=gamma,
            grad_clip=clip,
        )


# The optim fields left unset (None) until resolve fills them: those a data set's recipe sets.
_RESOLVED_OPTIM = RECIPE_OPTIM_KEYS


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
    channels_last: bool = Field(
        True,
        description="channels_last layout for image (N, C, H, W) batches: on CUDA; "
        "on the CPU for the conv nets where it measured faster (train.CPU_CHANNELS_LAST)",
    )
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
                    f"is also given; drop one of them",
                )
            sub[key] = value
            data[section] = sub
        return data

    @model_validator(mode="after")
    def _coherent(self) -> TrainConfig:
        spec = get_loss(self.loss.name)
        if spec.normalized_only and self.head.kind not in NORMALIZED_HEADS:
            raise KeyedError(
                "head.kind",
                f"loss {self.loss.name!r} needs bounded logits: head.kind must be one of "
                f"{', '.join(NORMALIZED_HEADS)}, not {self.head.kind!r} (try method={self.loss.name}+fnpal)",
            )
        unused = [k for k in config_params() if getattr(self.loss, k) is not None and k not in spec.params]
        if unused:
            users = {k: [s.name for s in LOSS_REGISTRY.entries() if k in s.params] for k in unused}
            detail = "; ".join(f"loss.{k} is used by {', '.join(v) or 'no loss'}" for k, v in users.items())
            raise KeyedError(
                f"loss.{unused[0]}", f"loss {self.loss.name!r} takes none of {', '.join(unused)} ({detail})"
            )
        drw_set = [k for k in DRW_KEYS if getattr(self.loss, k) is not None]
        if drw_set and not spec.supports_weights:
            weighted = ", ".join(s.name for s in LOSS_REGISTRY.entries() if s.supports_weights)
            raise KeyedError(
                f"loss.{drw_set[0]}",
                f"loss {self.loss.name!r} takes no class weights: loss.{drw_set[0]} (deferred re-weighting) "
                f"is accepted by {weighted}",
            )
        if self.loss.margin > 0 and self.head.kind not in NORMALIZED_HEADS:
            raise KeyedError(
                "loss.margin",
                f"loss.margin is a cosine margin: it needs head.kind in {', '.join(NORMALIZED_HEADS)}, "
                f"not {self.head.kind!r}",
            )
        if get_dataset(self.data.name).needs_files and not self.data.root and not self.data.download:
            raise KeyedError(
                "data.root",
                f"data.root is required for {self.data.name!r} (a directory with the torchvision files); "
                f"or pass --download / data.download=true where a network exists",
            )
        return self


def method_name(cfg: TrainConfig) -> str:
    """The canonical method label of a config (``ce``, ``nce+rce+fnpal``, ``nsl+fnpal`` ...)."""
    return method_label(cfg.loss.name, cfg.head.kind)


# --------------------------------------------------------------------------------------------
# Recipes (docs/method.md §5): each data set's ``DatasetSpec.recipe`` (and ``long_tail_recipe``).

# A read-only view, data set -> its recipe's optim values (for scripts; resolve reads the specs).
RECIPES: dict[str, dict[str, Any]] = {spec.name: spec.recipe.as_optim() for spec in DATASET_REGISTRY.entries()}


def recipe_for(cfg: TrainConfig) -> dict[str, Any]:
    """The optim values of the config's data set: its long-tail recipe when data.imbalance.ratio > 1."""
    return get_dataset(cfg.data.name).recipe_for(cfg.data.imbalance.ratio).as_optim()


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill every ``None`` with its documented default; the result is a fixed point.

    The resolved config is what is saved beside results, so re-running it gives the same trial
    even if the defaults change later.
    """
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
        head["scale"] = get_loss(d["loss"]["name"]).head_scale or DEFAULT_SCALE
    anchored = head["kind"] in ANCHORED_HEADS
    if head["last_relu"] is None:
        head["last_relu"] = not anchored
    if head["use_relu_prototypes"] is None:
        head["use_relu_prototypes"] = bool(anchored and head["last_relu"])

    loss = d["loss"]
    for key, value in loss_defaults(loss["name"], cfg.data.name).items():
        if key in loss and loss[key] is None:
            loss[key] = value
    # Deferred re-weighting: the long-tail recipe's epoch for a loss defined with it (ldam: LDAM-DRW);
    # β only where DRW is on.
    spec = get_loss(loss["name"])
    if loss.get("drw_epoch") is None and spec.recipe_drw:
        loss["drw_epoch"] = get_dataset(cfg.data.name).recipe_for(cfg.data.imbalance.ratio).drw_epoch
    drw_on = isinstance(loss.get("drw_epoch"), int) and not isinstance(loss.get("drw_epoch"), bool)
    if drw_on and loss.get("drw_beta") is None:
        loss["drw_beta"] = DRW_BETA

    if d["model"]["arch"] == "auto":
        shape = _input_shape(cfg)
        d["model"]["arch"] = default_arch(cfg.data.name, shape)
    d["method"] = None
    return TrainConfig.model_validate(d)


def _input_shape(cfg: TrainConfig) -> tuple[int, ...]:
    spec = get_dataset(cfg.data.name)
    options = getattr(cfg.data, spec.options_key).model_dump() if spec.options_key else {}
    return spec.shape_for(options)


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


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as its dotted keys (``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``),
    the keys ``--set`` and the search spaces use."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def apply_overrides(
    data: dict[str, Any], overrides: list[str], reset_on_name: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``data`` with the ``key=value`` overrides applied in order (a new dict).

    ``reset_on_name``: {section: its default name} of sections that choose among variants with
    options of their own (a study's ``budget.pruner``): an override of ``<section>.name`` to
    another name starts the section afresh, as ``{name: <new>}``, since the options there were
    the old variant's. Later overrides then set the new variant's options.
    """
    reset_on_name = reset_on_name or {}
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
        section = ".".join(parts[:-1])
        if parts[-1] == "name" and section in reset_on_name and node.get("name", reset_on_name[section]) != value:
            node.clear()
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
    root = _model_named(err.title)
    problems = []
    for e in err.errors():
        parts, parent, variant = _walk(root, e["loc"])
        key = ".".join(parts)
        ctx = e.get("ctx") or {}
        cause = ctx.get("error")
        if isinstance(cause, KeyedError):
            key = f"{key}.{cause.key}" if key else cause.key
        key = key or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(parent.model_fields) if parent is not None else ""
            what = f" for {variant[0]} {variant[1]!r}" if variant else ""
            msg = f"unknown key{what}; allowed here: {allowed}"
        elif e["type"] == "union_tag_invalid":  # the name of a discriminated union (pruner, sampler)
            key = f"{key}.{str(ctx.get('discriminator', '')).strip(chr(39))}"
            msg = f"unknown {parts[-1] if parts else 'name'} {ctx.get('tag')!r}; allowed: {ctx.get('expected_tags')}"
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


def _model_named(title: str) -> type[BaseModel]:
    """The config model pydantic's error title names (TrainConfig, StudySpec, ...); TrainConfig if none."""
    stack: list[type[BaseModel]] = [_Strict]
    while stack:
        cls = stack.pop()
        if cls.__name__ == title:
            return cls
        stack.extend(cls.__subclasses__())
    return TrainConfig


def _tagged_variants(field: Any) -> dict[str, type[BaseModel]]:
    """{tag: model} of a field typed as a discriminated union of models, else {}."""
    disc = getattr(field, "discriminator", None)
    if not isinstance(disc, str):
        return {}
    out = {}
    for cls in typing.get_args(field.annotation):
        if isinstance(cls, type) and issubclass(cls, BaseModel) and disc in cls.model_fields:
            for tag in typing.get_args(cls.model_fields[disc].annotation):
                out[tag] = cls
    return out


def _walk(root: type[BaseModel], loc: tuple) -> tuple[list[str], type[BaseModel] | None, tuple[str, str] | None]:
    """An error location as config keys: its parts without the tags pydantic inserts for
    discriminated unions, the model holding the last part (None where that is not a model), and
    (field, tag) when that model is a union variant (``("pruner", "median")``)."""
    parts: list[str] = []
    model: type[BaseModel] | None = root
    variant: tuple[str, str] | None = None
    i = 0
    while i < len(loc):
        part = str(loc[i])
        parts.append(part)
        if i == len(loc) - 1:
            break
        field = model.model_fields.get(part) if model is not None else None
        model, variant = None, None
        if field is not None:
            ann = field.annotation
            variants = _tagged_variants(field)
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                model = ann
            elif variants and i + 1 < len(loc) and loc[i + 1] in variants:
                model, variant = variants[loc[i + 1]], (part, str(loc[i + 1]))
                i += 1  # the tag is no key of the config file
            elif typing.get_origin(ann) in (dict, list) and i + 1 < len(loc):
                inner = typing.get_args(ann)[-1] if typing.get_args(ann) else None
                if isinstance(inner, type) and issubclass(inner, BaseModel):  # params.<key>, search[0]
                    parts.append(str(loc[i + 1]))
                    model = inner
                    i += 1
        i += 1
    return parts, model, variant


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
