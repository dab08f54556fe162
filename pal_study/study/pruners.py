"""Pruners of a study's tuning trials (``budget.pruner``): one pydantic model per Optuna pruner,
each with only its own options, in one discriminated union on ``name``.

    budget:
      pruner: {name: median, n_startup_trials: 2, n_warmup_steps: 5}

An option of another pruner (``percentile:`` under ``median``) is an error naming the key and the
allowed ones. Adding a pruner is adding a class here, decorated with ``@_register``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import Field

from pal_study.config import _Strict
from pal_study.registry import Registry
from pal_study.schema import registry_union

if TYPE_CHECKING:
    import optuna

DEFAULT = "median"


class BasePrunerSpec(_Strict):
    name: str

    def build(self, epochs: int) -> optuna.pruners.BasePruner:
        """The Optuna pruner; ``epochs`` is the trials' length (a step is an epoch, from 1)."""
        raise NotImplementedError

    def decision_epochs(self) -> dict[str, Any]:
        """The epochs at which this pruner can stop a trial, as ``{"from": E, "every": N}`` (E, E+N,
        ...; ``from: None``: never). A trial reports its other epochs in batches (trainable.py):
        each report is a round trip through Ray Tune's driver that holds the trial. Pruners
        that do not say are asked at every epoch."""
        return {"from": 1, "every": 1}


PRUNER_REGISTRY: Registry[type[BasePrunerSpec]] = Registry("pruner")


def _register(cls: type[BasePrunerSpec]) -> type[BasePrunerSpec]:
    return PRUNER_REGISTRY.add(cls.model_fields["name"].default, cls)


class _Startup(BasePrunerSpec):
    n_startup_trials: int = Field(2, ge=0, description="completed trials before pruning starts")
    n_warmup_steps: int = Field(
        2, ge=0, description="Optuna's: no pruning at epochs below this (steps are epochs, from 1)"
    )
    interval_steps: int = Field(1, ge=1, description="epochs between pruning checks")

    def decision_epochs(self) -> dict[str, Any]:
        # Optuna's median/percentile: no decision below n_warmup_steps, then one per interval.
        return {"from": self.n_warmup_steps, "every": self.interval_steps}


class _Resource(BasePrunerSpec):
    min_resource: int | Literal["auto"] = Field(
        "auto", description="epochs every trial gets before a first cut (auto: Optuna's estimate; hyperband: 1)"
    )
    reduction_factor: int = Field(3, ge=2, description="1/reduction_factor of the trials go on at each rung")


@_register
class MedianPrunerSpec(_Startup):
    """Stop a trial whose value is below the median of earlier trials at the same epoch."""

    name: Literal["median"] = "median"

    def build(self, epochs: int) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.MedianPruner(
            n_startup_trials=self.n_startup_trials,
            n_warmup_steps=self.n_warmup_steps,
            interval_steps=self.interval_steps,
        )


@_register
class PercentilePrunerSpec(_Startup):
    """Keep the trials whose best value so far is in the top ``percentile`` % of the earlier trials'
    values at the same epoch (Optuna's meaning): ``percentile: 25`` prunes the bottom 75 %, 50 is the
    median pruner."""

    name: Literal["percentile"] = "percentile"
    percentile: float = Field(
        50.0,
        gt=0,
        lt=100,
        description="the top this-many % of trials at an epoch go on (25: the bottom 75 % are pruned)",
    )

    def build(self, epochs: int) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.PercentilePruner(
            self.percentile,
            n_startup_trials=self.n_startup_trials,
            n_warmup_steps=self.n_warmup_steps,
            interval_steps=self.interval_steps,
        )


@_register
class SuccessiveHalvingPrunerSpec(_Resource):
    """Asynchronous successive halving: only the best 1/reduction_factor go on at each rung."""

    name: Literal["successive_halving"] = "successive_halving"

    def build(self, epochs: int) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=self.min_resource, reduction_factor=self.reduction_factor
        )


@_register
class HyperbandPrunerSpec(_Resource):
    """Hyperband: successive halving over several brackets, up to the trials' epochs."""

    name: Literal["hyperband"] = "hyperband"

    def build(self, epochs: int) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.HyperbandPruner(
            min_resource=1 if self.min_resource == "auto" else self.min_resource,
            max_resource=epochs,
            reduction_factor=self.reduction_factor,
        )


@_register
class NoPrunerSpec(BasePrunerSpec):
    """Never prune: every tuning trial runs all its epochs."""

    name: Literal["none"] = "none"

    def build(self, epochs: int) -> optuna.pruners.BasePruner:
        import optuna

        return optuna.pruners.NopPruner()

    def decision_epochs(self) -> dict[str, Any]:
        return {"from": None, "every": 1}


if TYPE_CHECKING:
    # The union is built from the registry at run time; to the checker every member is a BasePrunerSpec.
    PrunerSpec: TypeAlias = BasePrunerSpec
else:
    # A pruner given without a name is the default one (as before the split).
    PrunerSpec = registry_union(PRUNER_REGISTRY, DEFAULT)


def default_pruner() -> BasePrunerSpec:
    # Each registered spec defaults its own name; the base class has none to default.
    return PRUNER_REGISTRY.get(DEFAULT).model_validate({})


def build_pruner(spec: BasePrunerSpec, epochs: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner a study's ``budget.pruner`` describes, for trials of ``epochs`` epochs."""
    if spec.name not in PRUNER_REGISTRY:
        raise ValueError(f"unknown pruner {spec.name!r}")
    return spec.build(epochs)


def pruner_options(name: str) -> dict[str, Any]:
    """The options of pruner ``name`` with their defaults (``name`` left out)."""
    cls = PRUNER_REGISTRY.get(name)
    return {k: f.default for k, f in cls.model_fields.items() if k != "name"}
