"""Study files (``studies/*.yaml``): a base trial, factors crossed into cells, search spaces,
budget, finals, resources, objective. Loaded and checked once, here.

    pal-study validate studies/quickstart.yaml
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pal_study.analysis.claims import CellInfo, ClaimSpec
from pal_study.analysis.claims import check as check_claims
from pal_study.config import (
    ConfigError,
    KeyedError,
    TrainConfig,
    _Strict,
    apply_overrides,
    method_name,
    parse_override,
    read_yaml,
    validate_train_config,
    validation_error_to_config_error,
)
from pal_study.layout import cell_label, cell_titles
from pal_study.study.protocol import (
    check_equal_tuning,
    claim_pairs,
    knob_applies,
    objective_warnings,
    power_warnings,
    tuning_budget,
)
from pal_study.study.pruners import DEFAULT as DEFAULT_PRUNER
from pal_study.study.pruners import PrunerSpec, default_pruner
from pal_study.study.samplers import DEFAULT as DEFAULT_SAMPLER
from pal_study.study.samplers import SamplerSpec, default_sampler
from pal_study.study.space import Param, SearchSpace, active_params, resolve_space_path

TUNING_SEED = 1000


# Members per pack when `pack.size` is auto: enough that the Tune trial's own cost (~0.14 s of a
# slot per trial on this project's CPU benchmark) is spread thin, few enough that one Tune trial's
# directory and result log stay readable.
AUTO_PACK_SIZE = 16


class PackSpec(_Strict):
    size: int | Literal["auto"] = Field(
        "auto",
        description="trials one Ray Tune trial runs one after another in its worker (1: a Tune trial "
        f"per Optuna trial, as before packs; auto: {AUTO_PACK_SIZE}); each stays its own Optuna trial "
        "and MLflow run",
    )

    fuse: Literal["auto", "on", "off"] = Field(
        "auto",
        description="train a pack of one cell's tuning trials as one fused model: auto where it measured "
        "faster for the model on the trial's device, on wherever the trials can fuse, off never",
    )

    @field_validator("fuse", mode="before")
    @classmethod
    def _fuse(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare on/off (as in --set budget.pack.fuse=off) as a boolean.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("size")
    @classmethod
    def _size(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 1024:
            raise ValueError(f"must be auto or a number of trials from 1 to 1024, got {v}")
        return v

    @property
    def members(self) -> int:
        """The pack size in trials, ``auto`` resolved."""
        return AUTO_PACK_SIZE if self.size == "auto" else int(self.size)


class BudgetSpec(_Strict):
    trials_per_cell: int = Field(8, ge=1, le=100_000)
    tuning_seed: int = Field(
        TUNING_SEED,
        ge=0,
        lt=2**32,
        description="seed of every tuning trial (split, noisy labels, init, data order); never one of "
        "finals.seeds, so no final repeats a tuning run",
    )
    epochs: int | None = Field(None, ge=1, description="epochs of each tuning trial; default: the base's")
    # One model per sampler / pruner, each with only its own options (study/samplers.py, pruners.py).
    sampler: SamplerSpec = Field(default_factory=default_sampler)
    pruner: PrunerSpec = Field(default_factory=default_pruner)
    pack: PackSpec = Field(default_factory=PackSpec)


class FinalsSpec(_Strict):
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    epochs: int | None = Field(None, ge=1, description="default: the tuning epochs")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or any(s < 0 for s in v):
            raise ValueError(f"seeds must be distinct non-negative ints, got {v}")
        return v


class ResourcesSpec(_Strict):
    cpu: float = Field(1.0, gt=0, le=1024)
    gpu: float = Field(0.0, ge=0, le=64)

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: float) -> float:
        # A trial trains on one device; reserving more would leave the others idle.
        if v > 1:
            raise ValueError(
                f"a trial trains on one device: gpu must be at most 1 (a fraction such as 0.25 "
                f"packs several trials on one GPU), got {v:g}"
            )
        return v


class CheckpointSpec(_Strict):
    every_epochs: int | Literal["auto"] = Field(
        "auto",
        description="save a running trial every N epochs; 0: never; auto: as often as costs < 2 % of "
        "epoch time (measured in the trial)",
    )
    dir: str | None = Field(
        None,
        description="root for checkpoints: DIR/<study>/checkpoints (default "
        "runs/<study>/checkpoints); on a cluster, a path every node can reach",
    )

    @field_validator("every_epochs")
    @classmethod
    def _every(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError(f"must be auto, 0 (off) or a positive number of epochs, got {v}")
        return v


# Objectives a real user of noisy labels does not have: the test set, and the validation split's
# clean labels. Tuning on either selects with information the setting withholds (an oracle).
ORACLE_OBJECTIVES = {
    "test_acc": "tuning on test_acc leaks the test set into model selection",
    "val_acc_clean": "tuning on val_acc_clean selects with the validation split's clean labels, which a "
    "study of noisy labels does not have (an oracle)",
}


class ObjectiveSpec(_Strict):
    metric: Literal["val_acc", "val_acc_clean", "test_acc", "train_loss", "ece", "gamma_min", "margin_mean"] = "val_acc"
    mode: Literal["max", "min"] = "max"
    allow_test: bool = Field(False, description="opt in to an oracle objective (test_acc, val_acc_clean)")

    @model_validator(mode="after")
    def _no_oracle(self) -> ObjectiveSpec:
        if self.metric in ORACLE_OBJECTIVES and not self.allow_test:
            raise KeyedError(
                "metric",
                f"{ORACLE_OBJECTIVES[self.metric]}; use val_acc (default), or set objective.allow_test: true knowingly",
            )
        return self


class ProtocolSpec(_Strict):
    """How a study with claims compares methods."""

    equal_tuning: bool = Field(
        True,
        description="every compared pair of cells searches the same optimiser and loss knobs with the same "
        "number of trials, and the head's own knobs (the scale s of fnpal/norm) are searched or "
        "listed in fixed",
    )
    fixed: list[str] = Field(
        default_factory=list,
        description="knobs the study leaves at their config value on purpose (e.g. head.scale); "
        "the report names them beside the verdicts",
    )


class StudySpec(_Strict):
    name: str = Field(..., description="study name: runs/<name>/, the MLflow experiment")
    description: str | None = None
    base: dict[str, Any] | str = Field(default_factory=dict, description="trial config, inline or a YAML path")
    factors: dict[str, list[Any]] = Field(default_factory=dict)
    search: list[str | dict[str, Any]] = Field(default_factory=list)
    budget: BudgetSpec = BudgetSpec()
    finals: FinalsSpec = FinalsSpec()
    resources: ResourcesSpec = ResourcesSpec()
    objective: ObjectiveSpec = ObjectiveSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    claims: list[ClaimSpec] = Field(default_factory=list, description="stated results, given verdicts at the end")
    claims_alpha: float = Field(0.05, gt=0, lt=1, description="significance level of the claims' tests")
    protocol: ProtocolSpec = ProtocolSpec()
    sensitivity: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="knob: values; each claim is judged again with the finals run at each "
        "fixed value (e.g. head.scale: [2, 5, 10, 20])",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v):
            raise ValueError("must be 1-100 letters, digits, '_', '.', '-' (it names a directory)")
        return v

    @field_validator("factors")
    @classmethod
    def _factors(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise KeyedError(key, "empty grid: give at least one value")
            if len({repr(x) for x in values}) != len(values):
                raise KeyedError(key, f"repeated values in {values}")
        return v

    @field_validator("sensitivity")
    @classmethod
    def _sensitivity(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not isinstance(values, list) or not values:
                raise KeyedError(key, "give a non-empty list of values, e.g. [2, 5, 10, 20]")
            if len({repr(x) for x in values}) != len(values):
                raise KeyedError(key, f"repeated values in {values}")
        return v

    @model_validator(mode="after")
    def _seeds_disjoint(self) -> StudySpec:
        if self.budget.tuning_seed in self.finals.seeds:
            raise KeyedError(
                "budget.tuning_seed",
                f"{self.budget.tuning_seed} is also a final seed "
                f"(finals.seeds {self.finals.seeds}): a final would repeat a tuning run and carry "
                "the winner's luck; pick a seed outside finals.seeds (default 1000)",
            )
        if self.sensitivity and not self.claims:
            raise KeyedError(
                "sensitivity",
                "judges the study's claims at each value: state claims (see docs/statistics.md) or remove the section",
            )
        return self


@dataclass
class Cell:
    """One point of the factor grid. ``label`` is stable and machine-readable."""

    index: int
    factors: dict[str, Any]
    config: TrainConfig
    method: str
    params: dict[str, Param] = field(default_factory=dict)
    # A sensitivity cell: the finals of cell ``parent``'s best config with ``variant`` (knob: value)
    # fixed; it tunes nothing itself. Its factors are the parent's plus the knob.
    parent: int | None = None
    variant: dict[str, Any] = field(default_factory=dict)
    # Its short name among the study's cells (layout.cell_titles): what people read in run names,
    # legends and terminal lines. The label stays the machine-readable key.
    title: str = ""

    @property
    def label(self) -> str:
        return cell_label(self.factors)

    @property
    def name(self) -> str:
        """The title, or the label where the cell was built without its study."""
        return self.title or self.label

    @property
    def is_variant(self) -> bool:
        return self.parent is not None


@dataclass
class Study:
    spec: StudySpec
    path: Path
    base: dict[str, Any]
    spaces: list[tuple[str, SearchSpace]]
    cells: list[Cell]

    def budget(self, cell: Cell) -> int:
        """Tuning trials of a cell: the study's budget, or 1 where nothing is searched (more
        trials of one fixed config would only repeat it); none for a sensitivity cell."""
        return 0 if cell.is_variant else tuning_budget(self.spec, cell)

    @property
    def factor_cells(self) -> list[Cell]:
        """The cells of the factor grid (without the sensitivity cells)."""
        return [c for c in self.cells if not c.is_variant]

    def tuning_cell(self, cell: Cell) -> Cell:
        """The cell whose tuning trials pick ``cell``'s config (itself, or a sensitivity cell's parent)."""
        return cell if cell.parent is None else self.cells[cell.parent]

    @property
    def tuning_trials(self) -> int:
        return sum(self.budget(c) for c in self.cells)

    @property
    def sensitivity_cells(self) -> list[Cell]:
        return [c for c in self.cells if c.is_variant]

    @property
    def final_trials(self) -> int:
        return len(self.cells) * len(self.spec.finals.seeds)


def load_study(path: str | Path, overrides: list[str] | None = None) -> Study:
    """Read, validate and expand a study. Every problem is a ConfigError naming file and key."""
    p = Path(path)
    src = str(p)
    data = read_yaml(p)
    # A changed pruner or sampler name starts its section afresh: `--set budget.pruner.name=none`
    # must not carry over the median's options, which `none` would reject.
    keyed = ("factors.", "sensitivity.")
    data = apply_overrides(
        data,
        [o for o in overrides or [] if not o.startswith(keyed)],
        reset_on_name={"budget.pruner": DEFAULT_PRUNER, "budget.sampler": DEFAULT_SAMPLER},
    )
    for item in overrides or []:
        if item.startswith(keyed):
            # Factor and sensitivity names are dotted trial-config keys themselves:
            # factors.data.noise.rate=[0.4] sets the factor "data.noise.rate", not a nested "data" section.
            key, value = parse_override(item)
            section, _, name = key.partition(".")
            current = data.get(section)
            data[section] = {**(current if isinstance(current, dict) else {}), name: value}
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        raise validation_error_to_config_error(err, src) from None

    if isinstance(spec.base, str):
        base_path = (p.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
        if not base_path.is_file():
            raise ConfigError(
                f"base names a trial config file, {str(base_path)!r}, that does not exist; give a "
                "path relative to the study file or the config inline",
                source=src,
                key="base",
            )
        base, base_src = read_yaml(base_path), str(base_path)
    else:
        base, base_src = spec.base, f"{src}: base"
    validate_train_config(base, base_src)
    if spec.budget.epochs is not None:
        base = apply_overrides(base, [f"optim.epochs={spec.budget.epochs}"])

    spaces = [_load_space(ref, i, p) for i, ref in enumerate(spec.search)]
    cells = _expand(spec, base, src)
    if spec.resources.gpu > 0:
        for cell in cells:
            if cell.config.device == "cpu":
                raise ConfigError(
                    f"resources.gpu {spec.resources.gpu:g} reserves a GPU share but cell "
                    f"{cell.label} sets device: cpu; set resources.gpu: 0 or device: auto/cuda",
                    source=src,
                    key="resources.gpu",
                )
    _check_params_used(spaces, cells, src)
    for i, key in enumerate(spec.protocol.fixed):
        try:
            _check_key_exists(key)
        except ValueError as e:
            raise ConfigError(str(e), source=src, key=f"protocol.fixed[{i}]") from None
    if spec.claims:
        infos = [CellInfo(c.label, c.method, c.factors) for c in cells]
        check_claims(spec.claims, infos, src)
        if spec.protocol.equal_tuning:
            check_equal_tuning(spec, cells, src)
    cells += _sensitivity_cells(spec, cells, src)
    for cell, title in zip(cells, cell_titles([c.factors for c in cells]), strict=True):
        cell.title = title
    return Study(spec=spec, path=p, base=base, spaces=spaces, cells=cells)


def _load_space(ref: str | dict[str, Any], index: int, study_path: Path) -> tuple[str, SearchSpace]:
    if isinstance(ref, dict):
        src, data = f"{study_path}: search[{index}]", ref
    else:
        space_path = resolve_space_path(ref, study_path.parent)
        if not space_path.is_file():
            raise ConfigError(
                f"search space {ref!r} not found (looked for {space_path} and in search_spaces/)",
                source=str(study_path),
                key=f"search[{index}]",
            )
        src, data = str(space_path), read_yaml(space_path)
    try:
        space = SearchSpace.model_validate(data)
    except ValidationError as err:
        raise validation_error_to_config_error(err, src) from None
    for key in space.params:
        try:
            _check_key_exists(key)
        except ValueError as e:
            raise ConfigError(str(e), source=src, key=f"params.{key}") from None
    return src, space


def _check_key_exists(key: str) -> None:
    model: Any = TrainConfig
    for part in key.split("."):
        fields = getattr(model, "model_fields", None)
        if fields is None or part not in fields:
            allowed = ", ".join(fields) if fields else "(none: a value, not a section)"
            raise ValueError(f"{key!r} is not a trial config key; allowed at {part!r}: {allowed}")
        model = fields[part].annotation
        if not (isinstance(model, type) and hasattr(model, "model_fields")):
            model = None


def _expand(spec: StudySpec, base: dict[str, Any], src: str) -> list[Cell]:
    keys = list(spec.factors)
    for key in keys:
        try:
            _check_key_exists(key)
        except ValueError as e:
            raise ConfigError(str(e), source=src, key=f"factors.{key}") from None
        if key == "seed":
            raise ConfigError(
                "seeds are not a factor: tuning trials run with budget.tuning_seed and each cell's "
                "best config is re-run over finals.seeds",
                source=src,
                key="factors.seed",
            )
    cells = []
    for index, values in enumerate(itertools.product(*(spec.factors[k] for k in keys))):
        factors = dict(zip(keys, values, strict=False))
        data = base
        if "method" in factors:
            # A factor's method replaces the base's loss/head choice, not conflicts with it.
            data = {k: v for k, v in base.items() if k != "method"}
            for section, key in (("loss", "name"), ("head", "kind")):
                if isinstance(data.get(section), dict) and key in data[section]:
                    data = {**data, section: {k: v for k, v in data[section].items() if k != key}}
        # Tuning trials run with the tuning seed; finals replace it with each final seed.
        data = apply_overrides(
            data, [f"{k}={_yaml_value(v)}" for k, v in factors.items()] + [f"seed={spec.budget.tuning_seed}"]
        )
        label = cell_label(factors)
        cfg = validate_train_config(data, f"{src}: cell {label}")
        cells.append(Cell(index=index, factors=factors, config=cfg, method=method_name(cfg)))
    return cells


def _sensitivity_cells(spec: StudySpec, cells: list[Cell], src: str) -> list[Cell]:
    """One cell per sensitivity knob, value and claimed cell the knob applies to: the cell's best
    config with the knob fixed at the value, re-run over the final seeds (it tunes nothing)."""
    if not spec.sensitivity:
        return []
    involved = {c.index for pairs in claim_pairs(spec, cells) for pair in pairs for c in pair}
    out: list[Cell] = []
    for key, values in spec.sensitivity.items():
        try:
            _check_key_exists(key)
        except ValueError as e:
            raise ConfigError(str(e), source=src, key=f"sensitivity.{key}") from None
        if key in spec.factors:
            raise ConfigError(
                f"{key} is a factor already: every value of it has its own cells", source=src, key=f"sensitivity.{key}"
            )
        targets = [c for c in cells if c.index in involved and knob_applies(key, c.config)]
        if not targets:
            raise ConfigError(
                f"{key} applies to none of the cells the claims compare (methods: "
                f"{', '.join(sorted({c.method for c in cells}))})",
                source=src,
                key=f"sensitivity.{key}",
            )
        for value in values:
            for parent in targets:
                factors = {**parent.factors, key: value}
                data = apply_overrides(parent.config.model_dump(mode="json"), [f"{key}={_yaml_value(value)}"])
                try:
                    cfg = validate_train_config(data, f"{src}: sensitivity {key}={value!r}")
                except ConfigError as e:
                    raise ConfigError(
                        f"value {value!r} makes an invalid trial: {e}", source=src, key=f"sensitivity.{key}"
                    ) from None
                out.append(
                    Cell(
                        index=len(cells) + len(out),
                        factors=factors,
                        config=cfg,
                        method=parent.method,
                        params={k: p for k, p in parent.params.items() if k != key},
                        parent=parent.index,
                        variant={key: value},
                    )
                )
    return out


def _yaml_value(v: Any) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def _check_params_used(spaces: list[tuple[str, SearchSpace]], cells: list[Cell], src: str) -> None:
    for cell in cells:
        c = cell.config
        cell.params = active_params(spaces, c.loss.name, c.head.kind, cell.method)
        # Each active parameter must make a valid trial at its range's ends.
        for key, param in cell.params.items():
            for value in _probe_values(param):
                try:
                    validate_train_config(
                        apply_overrides(c.model_dump(), [f"{key}={_yaml_value(value)}"]), f"{src}: cell {cell.label}"
                    )
                except ConfigError as e:
                    raise ConfigError(
                        f"search value {value!r} makes an invalid trial: {e}",
                        source=_space_src(spaces, key),
                        key=f"params.{key}",
                    ) from None
    methods = sorted({cell.method for cell in cells})
    for space_src, space in spaces:
        for key, param in space.params.items():
            if not any(key in cell.params for cell in cells):
                raise ConfigError(
                    f"used by no cell of this study: it applies when {param.when.describe()}, "
                    f"and the study's methods are {', '.join(methods)}",
                    source=space_src,
                    key=f"params.{key}",
                )


def _space_src(spaces: list[tuple[str, SearchSpace]], key: str) -> str:
    return next((s for s, sp in reversed(spaces) if key in sp.params), "search")


def _probe_values(p: Param) -> list[Any]:
    if p.type == "categorical":
        return list(p.choices or [])
    lo, hi = p.bounds
    if p.type == "int":
        return [int(lo), int(hi)]
    return [lo, hi] if math.isfinite(lo) and math.isfinite(hi) else []


def _fixed_note(study: Study) -> str:
    fixed = sum(1 for c in study.factor_cells if not c.params)
    return f" ({fixed} cells search nothing: 1 trial each)" if fixed and study.spec.budget.trials_per_cell > 1 else ""


def describe_packs(pack: PackSpec) -> str:
    """What ``budget.pack`` makes of the study's Ray Tune trials (said by validate and run)."""
    auto = " (auto)" if pack.size == "auto" else ""
    if pack.members == 1:
        return "packs: off, one Ray Tune trial per trial (budget.pack.size 1)"
    fuse = {
        "auto": "fused into one model where that measured faster for the cell's model on its device (fuse auto)",
        "on": "fused into one model wherever a cell's trials can fuse (fuse on)",
        "off": "never fused (fuse off)",
    }[pack.fuse]
    return (
        f"packs: up to {pack.members}{auto} trials per Ray Tune trial, one after another in its worker or "
        f"{fuse}; each its own Optuna trial and MLflow run"
    )


def describe(study: Study) -> str:
    s = study.spec
    n_sens = len(study.sensitivity_cells)
    sens = f" and {n_sens} sensitivity cells" if n_sens else ""
    lines = [
        f"study {s.name!r}: {len(study.factor_cells)} cells × {s.budget.trials_per_cell} tuning trials "
        f"= {study.tuning_trials} trials{_fixed_note(study)}, then {len(s.finals.seeds)} final seeds per cell{sens} "
        f"= {study.final_trials} final runs ({study.tuning_trials + study.final_trials} in all)",
        f"  objective {s.objective.metric} ({s.objective.mode}); sampler {s.budget.sampler.name} "
        f"seed {s.budget.sampler.seed}; pruner {s.budget.pruner.name}; resources cpu {s.resources.cpu:g} "
        f"gpu {s.resources.gpu:g} per trial",
        f"  seeds: tuning trials {s.budget.tuning_seed}, finals {s.finals.seeds}",
        f"  {describe_packs(s.budget.pack)}",
    ]
    for cell in study.factor_cells:
        params = ", ".join(cell.params) or "(no search: base config only)"
        lines.append(f"  [{cell.index}] {cell.label}: {params}")
    for key, values in s.sensitivity.items():
        # A sensitivity cell always has a parent; the test only tells the checker so.
        parents = sorted({c.parent for c in study.sensitivity_cells if key in c.variant and c.parent is not None})
        lines.append(f"  sensitivity {key} = {values}: finals of cells {parents} at each value")
    return "\n".join(lines)


def warnings(study: Study) -> list[str]:
    """What ``validate`` (and ``run``, at its start) says before compute is spent."""
    cells = study.factor_cells
    return power_warnings(study.spec, cells) + objective_warnings(study.spec, cells)
