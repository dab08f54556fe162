"""The losses' table (``pal_study.losses`` computes them; its docstring has the formulas), without
torch: every loss is one :class:`LossSpec` in :data:`LOSS_REGISTRY`, its hyperparameters (names
in :data:`PARAM_REGISTRY`, which holds each one's range and generic default), its terms, its
per-data-set defaults with their source, whether it is symmetric and whether it needs a normalised
head. ``LOSSES``, ``LOSS_PARAMS``, ``NORMALIZED_ONLY``, ``DATASET_DEFAULTS`` and the trial
config's ``loss.*`` keys are all read from it. Adding a loss is adding one entry here (and a new
hyperparameter one :class:`LossParam`); its terms, functions of ``pal_study.losses``, are named
there with :func:`_impl` and imported when a loss is first built.
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from numbers import Integral, Real
from typing import Any

from pal_study.data.sets import DATASET_REGISTRY
from pal_study.registry import Registry

log = logging.getLogger(__name__)

# DRW's β of the class-balanced weights: LDAM-DRW's train.py (betas = [0, 0.9999]) and Cui et al.
# 2019's CIFAR-LT value.
DRW_BETA = 0.9999

# Data sets without documented values of their own (an unknown name) take CIFAR-10's.
_FALLBACK_DATASET = "cifar10"

# --------------------------------------------------------------------------------------------
# Hyperparameters: one LossParam each, shared by every loss that takes it.


def _real(name: str, key: str, value: Any, *, low: float, low_open: bool, high: float | None = None) -> float:
    """A finite real in [low, high] (or (low, high]); ValueError naming loss and keyword."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (high is None or v <= high)
    if not ok:
        lo = f"{'>' if low_open else '≥'} {low:g}"
        rng = lo if high is None else f"{lo} and ≤ {high:g}"
        raise ValueError(f"loss {name!r}: {key} must be a finite number {rng}, got {value!r}")
    return float(value)


def _class_counts(loss: str, counts: Any, num_classes: int) -> list[int]:
    torch = sys.modules.get("torch")  # a tensor means torch is imported; this module does not import it
    if torch is not None and isinstance(counts, torch.Tensor):
        counts = counts.tolist()
    ok = isinstance(counts, Sequence) and not isinstance(counts, str | bytes)
    ok = ok and len(counts) == num_classes
    ok = ok and all(isinstance(c, Integral) and not isinstance(c, bool) and int(c) > 0 for c in counts)
    if not ok:
        raise ValueError(
            f"loss {loss!r}: class_counts must be {num_classes} ints (one per class), all > 0, got {counts!r}"
        )
    return [int(c) for c in counts]


@dataclass(frozen=True)
class LossParam:
    """A keyword of ``build_loss``. Numbers are finite reals ≥ ``low`` (> with ``low_open``) and
    ≤ ``high``; ``check`` replaces that for other kinds of value. ``config``: a ``loss.<name>``
    key of the trial config (unset there: the data set's default, then ``default``)."""

    name: str
    default: Any  # build_loss's generic default (a loss entry may override it)
    doc: str
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    config: bool = False
    required: bool = False  # no default: the caller must pass it
    check: Callable[[str, Any, int], Any] | None = None  # (loss name, value, num_classes) -> value

    def validate(self, loss: str, value: Any, num_classes: int) -> Any:
        if self.check is not None:
            return self.check(loss, value, num_classes)
        if self.low is None:
            return value
        return _real(loss, self.name, value, low=self.low, low_open=self.low_open, high=self.high)


PARAM_REGISTRY: Registry[LossParam] = Registry("loss parameter")
for _p in (
    # Taken by every loss: the head's logit scale and the user's additive cosine margin.
    LossParam("scale", 1.0, "logit scale s of the head (normalised heads: s·cos)", low=0.0, low_open=True),
    LossParam("margin", 0.0, "additive cosine margin subtracted from the target logit as s·margin", low=0.0),
    LossParam("q", 0.7, "GCE's exponent; q → 0 is CE, q = 1 is MAE", low=0.0, low_open=True, high=1.0, config=True),
    LossParam("gamma", 0.5, "focusing exponent of FL/NFL", low=0.0, config=True),
    LossParam(
        "alpha", 1.0, "weight of the first (active) term; of nce and nfl alone: APL's scale", low=0.0, config=True
    ),
    LossParam("beta", 1.0, "weight of the second (passive) term", low=0.0, config=True),
    LossParam("max_m", 0.5, "LDAM's largest per-class margin", low=0.0, low_open=True, config=True),
    LossParam("class_counts", None, "training images per class, all > 0", required=True, check=_class_counts),
    LossParam("weight", None, "per-class loss weights (DRW), or None; losses with supports_weights"),
):
    PARAM_REGISTRY.add(_p.name, _p)
COMMON_PARAMS = ("scale", "margin")


def config_params() -> tuple[str, ...]:
    """The loss hyperparameters that are ``loss.<name>`` keys of the trial config, in order."""
    return tuple(p.name for p in PARAM_REGISTRY.entries() if p.config)


# --------------------------------------------------------------------------------------------
# The losses


def _impl(name: str) -> Any:
    """``pal_study.losses.<name>`` (a term or a Loss class), imported on first use: a loss is built
    by ``pal_study.losses``, so by then it is loaded; the table itself needs no torch."""
    return getattr(importlib.import_module("pal_study.losses"), name)


# A term: the batch (``pal_study.losses._Batch``) -> its per-sample losses (a tensor).
Term = Callable[[Any], Any]
Terms = Callable[[dict[str, Any]], list[tuple[float, Term]]]


@dataclass(frozen=True)
class LossSpec:
    """One loss: ``terms(params)`` gives the Σ c_i · term_i it computes (or ``module(k, params)``
    builds a Loss subclass), ``params`` its own hyperparameters besides scale and margin."""

    name: str
    summary: str  # the formula, one line
    terms: Terms | None = None
    module: Callable[[int, dict[str, Any]], Any] | None = None  # -> a pal_study.losses.Loss
    params: tuple[str, ...] = ()
    generic: Mapping[str, Any] = field(default_factory=dict)  # build_loss defaults differing from LossParam's
    # Per reference data set (``DatasetSpec.loss_defaults``): the documented values.
    defaults: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    symmetric: bool = False  # Σ_k L(z, k) constant: tolerant of symmetric label noise
    normalized_only: bool = False  # unbounded on raw logits: needs a normalised head
    default_head: str = "linear"  # the head of a method given without one (``nsl`` = ``nsl+fnpal``)
    head_scale: float | None = None  # s of a normalised head with this loss (None: heads.DEFAULT_SCALE)
    # Takes per-class weights (``weight``, Loss.set_weight), hence loss.drw_epoch / loss.drw_beta.
    supports_weights: bool = False
    # The data set's long-tail recipe's DRW epoch (Recipe.drw_epoch) applies when loss.drw_epoch is
    # unset: LDAM-DRW's recipe (ldam); other losses need loss.drw_epoch set (ce: CE-DRW).
    recipe_drw: bool = False

    @property
    def accepted(self) -> tuple[str, ...]:
        """Every keyword ``build_loss`` takes for this loss."""
        weight = ("weight",) if self.supports_weights and "weight" not in self.params else ()
        return (*self.params, *weight, *COMMON_PARAMS)


def _all(**values: float) -> dict[str, dict[str, float]]:
    """The same values on every reference data set."""
    return {ref: dict(values) for ref in ("mnist", "cifar10", "cifar100")}


# Per-data-set defaults (docs/method.md §3). Sources: APL = Ma et al. 2020 configs
# (github.com/HanxunH/Active-Passive-Losses, configs/<data set>/sym/<loss>.yaml), ALFs = Zhou et
# al. 2021 lnl/config.py. MNIST combinations: ALFs' (1, 100), chosen deliberately over APL's
# (1, 10): the PAL paper is by the ALFs authors and its MNIST recipe (docs/method.md §5: lr 0.01, wd
# 1e-3, 50 epochs) is ALFs', not APL's (wd 1e-2, nesterov). CIFAR-100 NCE+RCE and NFL+RCE: APL's
# (10, 0.1); ALFs use (10, 1). CIFAR-100 NCE+MAE: (10, 1), APL's configs/cifar100/sym/nce+mae.yaml
# and ALFs alike. CIFAR-10's (1, 1) are also the generic values.
_COMBINATION = {
    "mnist": {"alpha": 1.0, "beta": 100.0},
    "cifar10": {"alpha": 1.0, "beta": 1.0},
    "cifar100": {"alpha": 10.0, "beta": 0.1},
}
_NCE_MAE = {**_COMBINATION, "cifar100": {"alpha": 10.0, "beta": 1.0}}

LOSS_REGISTRY: Registry[LossSpec] = Registry("loss")
for _spec in (
    # CE-DRW: ce with loss.drw_epoch set (Cao et al. 2019's CE baseline with deferred re-weighting).
    LossSpec("ce", "−log p_y", terms=lambda p: [(1.0, _impl("_ce"))], supports_weights=True),
    LossSpec(
        "fl",
        "−(1 − p_y)^γ · log p_y, p_y detached in the factor",
        params=("gamma",),
        terms=lambda p: [(1.0, partial(_impl("_fl"), gamma=p["gamma"]))],
        defaults=_all(gamma=0.5),
    ),  # APL and ALFs, every data set
    LossSpec(
        "gce",
        "(1 − p_y^q) / q",
        params=("q",),
        terms=lambda p: [(1.0, partial(_impl("_gce"), q=p["q"]))],
        defaults=_all(q=0.7),
    ),  # APL and ALFs, every data set
    LossSpec(
        "sce",
        "α·CE + β·RCE",
        params=("alpha", "beta"),
        terms=lambda p: [(p["alpha"], _impl("_ce")), (p["beta"], _impl("_rce"))],
        generic={"alpha": 0.1, "beta": 1.0},
        # APL throughout (ALFs call SCE with a = b = 1 on every data set).
        defaults={
            "mnist": {"alpha": 0.01, "beta": 1.0},
            "cifar10": {"alpha": 0.1, "beta": 1.0},
            "cifar100": {"alpha": 6.0, "beta": 0.1},
        },
    ),
    LossSpec("mae", "1 − p_y", terms=lambda p: [(1.0, _impl("_mae"))], symmetric=True),
    # α = APL's ``scale`` of NormalizedCrossEntropy: 10 on MNIST (configs/mnist/{sym,asym}/nce.yaml),
    # 1 on CIFAR-10 and CIFAR-100 (configs/cifar10/*/nce.yaml, configs/cifar100/sym/nce.yaml).
    LossSpec(
        "nce",
        "α·(−log p_y) / (−Σ_k log p_k)",
        params=("alpha",),
        terms=lambda p: [(p["alpha"], _impl("_nce"))],
        defaults={"mnist": {"alpha": 10.0}, "cifar10": {"alpha": 1.0}, "cifar100": {"alpha": 1.0}},
        symmetric=True,
    ),
    LossSpec(
        "rce", "−Σ_k p_k log q_k, q the clamped one-hot target", terms=lambda p: [(1.0, _impl("_rce"))], symmetric=True
    ),
    # γ = 0.5: APL and ALFs. α = APL's ``scale`` of NormalizedFocalLoss: 10 on CIFAR-10 with symmetric
    # noise (configs/cifar10/sym/nfl.yaml; its asym/nfl.yaml uses 1: the defaults are per data set,
    # not per noise kind, so asymmetric CIFAR-10 runs take 10 too unless loss.alpha is set), 1 on
    # MNIST (configs/mnist/sym/nfl.yaml) and CIFAR-100 (configs/cifar100/sym/nfl.yaml).
    LossSpec(
        "nfl",
        "α·FL_y / Σ_k FL_k",
        params=("alpha", "gamma"),
        terms=lambda p: [(p["alpha"], partial(_impl("_nfl"), gamma=p["gamma"]))],
        defaults={
            "mnist": {"alpha": 1.0, "gamma": 0.5},
            "cifar10": {"alpha": 10.0, "gamma": 0.5},
            "cifar100": {"alpha": 1.0, "gamma": 0.5},
        },
        symmetric=True,
    ),
    LossSpec(
        "nce+mae",
        "α·NCE + β·MAE",
        params=("alpha", "beta"),
        terms=lambda p: [(p["alpha"], _impl("_nce")), (p["beta"], _impl("_mae"))],
        defaults=_NCE_MAE,
        symmetric=True,
    ),
    LossSpec(
        "nce+rce",
        "α·NCE + β·RCE",
        params=("alpha", "beta"),
        terms=lambda p: [(p["alpha"], _impl("_nce")), (p["beta"], _impl("_rce"))],
        defaults=_COMBINATION,
        symmetric=True,
    ),
    LossSpec(
        "nfl+rce",
        "α·NFL + β·RCE",
        params=("alpha", "beta", "gamma"),
        terms=lambda p: [(p["alpha"], partial(_impl("_nfl"), gamma=p["gamma"])), (p["beta"], _impl("_rce"))],
        defaults={ref: {**v, "gamma": 0.5} for ref, v in _COMBINATION.items()},
        symmetric=True,
    ),
    # NSL is unbounded below on raw logits (it just pushes z_y up), so it needs a normalised head;
    # it is symmetric only with bounded, anchored logits (docs/method.md §3).
    LossSpec(
        "nsl",
        "−z_y",
        terms=lambda p: [(1.0, _impl("_nsl"))],
        symmetric=True,
        normalized_only=True,
        default_head="fnpal",
    ),
    # LDAM-DRW: a normalised classifier with s = 30; max_m 0.5 on every data set (Cao et al. 2019);
    # deferred re-weighting from the long-tail recipe's drw_epoch (LDAM-DRW's train.py, train_rule DRW).
    LossSpec(
        "ldam",
        "CE(z − s·m_y·e_y), m_j ∝ n_j^(−1/4), max m_j = max_m",
        params=("class_counts", "max_m", "weight"),
        module=lambda k, p: _impl("LDAMLoss")(k, p),
        defaults=_all(max_m=0.5),
        default_head="norm",
        head_scale=30.0,
        supports_weights=True,
        recipe_drw=True,
    ),
):
    LOSS_REGISTRY.add(_spec.name, _spec)

# Views of the table, for callers that want plain names.
LOSSES: tuple[str, ...] = LOSS_REGISTRY.names()
LOSS_PARAMS: dict[str, tuple[str, ...]] = {s.name: s.accepted for s in LOSS_REGISTRY.entries()}
NORMALIZED_ONLY: frozenset[str] = frozenset(s.name for s in LOSS_REGISTRY.entries() if s.normalized_only)
DATASET_DEFAULTS: dict[str, dict[str, dict[str, float]]] = {
    ref: {s.name: dict(s.defaults[ref]) for s in LOSS_REGISTRY.entries() if ref in s.defaults}
    for ref in dict.fromkeys(ref for s in LOSS_REGISTRY.entries() for ref in s.defaults)
}


def list_losses() -> list[str]:
    """Names accepted by :func:`build_loss`, in a stable order."""
    return list(LOSS_REGISTRY.names())


def get_loss(name: str) -> LossSpec:
    """The table entry of loss ``name``; ValueError listing the known losses if there is none."""
    if name not in LOSS_REGISTRY:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSS_REGISTRY.names())}")
    return LOSS_REGISTRY.get(name)


def loss_defaults(name: str, dataset: str) -> dict[str, float]:
    """The documented per-data-set hyperparameters of loss ``name`` (a fresh dict).

    A registered data set takes the values of the reference data set its
    ``DatasetSpec.loss_defaults`` names (digits: mnist's, synthetic: cifar10's); any other name
    gets CIFAR-10's. ``scale`` and ``margin`` are not included: they belong to the head and the
    user. Losses without hyperparameters give ``{}``.
    """
    spec = get_loss(name)
    if dataset in DATASET_REGISTRY:
        ref = DATASET_REGISTRY.get(dataset).loss_defaults
    else:
        log.warning("no loss defaults for data set %r; using %s's", dataset, _FALLBACK_DATASET)
        ref = _FALLBACK_DATASET
    return dict(spec.defaults.get(ref, {}))
