"""What a data set is to pal-study: :class:`DatasetSpec` (everything that varies per data set) and
:class:`Recipe` (its documented training recipe), and the registry that holds them."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from pal_study.plain_metrics import GROUP_THRESHOLDS, scaled_thresholds
from pal_study.registry import Registry
from pal_study.schema import StrictModel

if TYPE_CHECKING:
    from pal_study.data.raw import RawData

Options = Mapping[str, Any]  # the data set's own options (``data.synthetic`` for synthetic), or {}
Shape = tuple[int, ...]
Loader = Callable[..., "RawData"]  # (root: str | PathLike | None, download: bool, options: Options)


# The optim.* keys a recipe may set (and resolve fills where a config leaves them unset).
RECIPE_OPTIM_KEYS = (
    "lr",
    "weight_decay",
    "epochs",
    "batch_size",
    "schedule",
    "warmup_epochs",
    "milestones",
    "step_gamma",
    "grad_clip",
)


@dataclass(frozen=True)
class Recipe:
    """The optimiser settings a trial takes when its config leaves them unset (docs/method.md §5)."""

    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    schedule: Literal["cosine", "step", "constant"]
    warmup_epochs: int
    grad_clip: float
    milestones: tuple[int, ...] | None = None  # unset: none (resolve gives [])
    step_gamma: float | None = None  # unset: 0.1
    # Deferred re-weighting (not an optim value: resolve sets loss.drw_epoch from it for the losses
    # defined with it, LossSpec.recipe_drw): epochs before DRW's class-balanced weights apply, counted
    # like ``milestones``; None: no DRW.
    drw_epoch: int | None = None

    def as_optim(self) -> dict[str, Any]:
        """The ``optim.*`` values this recipe sets (unset ones left out), JSON-friendly."""
        out: dict[str, Any] = {}
        for key in RECIPE_OPTIM_KEYS:
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True)
class DatasetSpec:
    """One data set. ``input_shape``, ``num_classes``, ``default_arch`` and ``asymmetric_map`` are
    values, or functions of what they depend on (the options, the input shape, the class count)
    for a data set whose geometry is configurable (synthetic)."""

    name: str
    summary: str  # one line for ``pal-study list datasets``
    load: Loader  # (root, download, options) -> clean RawData (see data/sources.py)
    input_shape: Shape | Callable[[Options], Shape]
    num_classes: int | Callable[[Options], int]
    default_arch: str | Callable[[Shape], str]  # a name in models.MODELS
    recipe: Recipe
    long_tail_recipe: Recipe | None = None  # replaces ``recipe`` when data.imbalance.ratio > 1
    # Whose per-data-set loss hyperparameters (losses.py, each loss's ``defaults``) this set takes.
    loss_defaults: str = "cifar10"
    augment: str = "none"  # what the loader sets (batching.AUGMENTS); synthetic: an option
    # (folder under data.root, file names) of a set read from disk; None: needs no files.
    files: tuple[str, tuple[str, ...]] | None = None
    # Source class -> target class of asymmetric label noise; None: the set has none.
    asymmetric_map: Mapping[int, int] | Callable[[int], dict[int, int]] | None = None
    group_thresholds: tuple[float, float] = GROUP_THRESHOLDS  # many > hi >= medium >= lo > few
    group_reference_max: int = 500  # largest class the thresholds were defined for
    options_key: str | None = None  # the ``data.<key>`` config section holding its options
    # The model of that section (its keys, defaults and checks): the trial config's ``data.<key>``
    # is this model, so options are validated where the config is.
    options: type[StrictModel] | None = None
    # Clean training examples before the validation split and any subsampling (validate's warnings
    # size the validation split from it without loading the data); None: unknown.
    train_size: int | Callable[[Options], int] | None = None

    # -- derived ----------------------------------------------------------------------------
    def shape_for(self, options: Options | None = None) -> Shape:
        s = self.input_shape
        return tuple(s(dict(options or {}))) if callable(s) else tuple(s)

    def classes_for(self, options: Options | None = None) -> int:
        k = self.num_classes
        return int(k(dict(options or {}))) if callable(k) else int(k)

    def train_size_for(self, options: Options | None = None) -> int | None:
        n = self.train_size
        return int(n(dict(options or {}))) if callable(n) else n

    def arch_for(self, input_shape: Shape) -> str:
        a = self.default_arch
        return a(tuple(int(d) for d in input_shape)) if callable(a) else a

    def recipe_for(self, imbalance_ratio: float = 1.0) -> Recipe:
        if imbalance_ratio > 1 and self.long_tail_recipe is not None:
            return self.long_tail_recipe
        return self.recipe

    @property
    def needs_files(self) -> bool:
        return self.files is not None

    def expected_files(self, root: str | os.PathLike[str]) -> list[Path]:
        """The files the loader reads under ``root`` ([] for a set that needs none)."""
        if self.files is None:
            return []
        folder, names = self.files
        return [Path(root) / folder / f for f in names]

    def noise_map(self, num_classes: int) -> dict[int, int]:
        """The asymmetric-noise map for ``num_classes`` classes; ValueError if there is none."""
        m = self.asymmetric_map
        if m is None:
            raise ValueError(f"data set {self.name!r} has no asymmetric noise map")
        if callable(m):
            return dict(m(num_classes))
        expected = self.num_classes if isinstance(self.num_classes, int) else num_classes
        if num_classes != expected:
            raise ValueError(f"the asymmetric map of {self.name!r} needs num_classes={expected}, got {num_classes}")
        return dict(m)

    def group_thresholds_for(self, class_counts: list[int]) -> tuple[float, float]:
        """Many/medium/few thresholds for these training class sizes (see plain_metrics.scaled_thresholds)."""
        return scaled_thresholds(class_counts, self.group_reference_max, self.group_thresholds)


def parse_options(model: type[StrictModel], dataset: str, options: Options | None) -> dict[str, Any]:
    """``options`` (None values meaning "default") checked by the data set's options ``model``, strictly
    (no coercion: these come from code, the config has validated a user's), with its defaults
    filled in; a ValueError naming the data set and the key otherwise."""
    given = {k: v for k, v in dict(options or {}).items() if v is not None}
    try:
        return model.model_validate(given, strict=True).model_dump()
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(part) for part in e["loc"])
        if e["type"] == "extra_forbidden":
            raise ValueError(f"unknown {dataset} option {key!r}; allowed: {tuple(model.model_fields)}") from None
        raise ValueError(f"{dataset} {key}: {e['msg'].removeprefix('Value error, ')}, got {e.get('input')!r}") from None


DATASET_REGISTRY: Registry[DatasetSpec] = Registry("data set")
