"""Samplers of a study's tuning trials (``budget.sampler``): one pydantic model per Optuna sampler,
each with only its own options, in one discriminated union on ``name``.

    budget:
      sampler: {name: tpe, seed: 0, n_startup_trials: 4}

Adding a sampler is adding a class here, decorated with ``@_register``.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from pydantic import Field

from pal_study.config import _Strict
from pal_study.registry import Registry
from pal_study.schema import registry_union

if TYPE_CHECKING:
    import optuna

DEFAULT = "tpe"


class BaseSamplerSpec(_Strict):
    name: str
    seed: int = Field(0, ge=0, description="with the cell index and trial number, seeds each trial's draw")

    def draw_seed(self, cell_index: int, trial_number: int = 0) -> int:
        # A seed per cell and trial number: cells do not draw the same sequence, and trial n of a
        # cell draws the same whether the study ran straight through or was killed and resumed
        # before it.
        return (self.seed * 1_000_003 + cell_index * 10_007 + trial_number) % (2**31)

    def build(self, seed: int) -> optuna.samplers.BaseSampler:
        raise NotImplementedError


SAMPLER_REGISTRY: Registry[type[BaseSamplerSpec]] = Registry("sampler")


def _register(cls: type[BaseSamplerSpec]) -> type[BaseSamplerSpec]:
    return SAMPLER_REGISTRY.add(cls.model_fields["name"].default, cls)


@_register
class TPESamplerSpec(BaseSamplerSpec):
    """Optuna's multivariate TPE with constant liar (concurrent trials are not all drawn at the
    same promising point), after n_startup_trials random ones."""

    name: Literal["tpe"] = "tpe"
    n_startup_trials: int = Field(4, ge=0, description="random trials before TPE models the space")

    def build(self, seed: int) -> optuna.samplers.BaseSampler:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=self.n_startup_trials, multivariate=True, constant_liar=True
            )


@_register
class RandomSamplerSpec(BaseSamplerSpec):
    """Independent uniform draws (log-uniform on log ranges)."""

    name: Literal["random"] = "random"

    def build(self, seed: int) -> optuna.samplers.BaseSampler:
        import optuna

        return optuna.samplers.RandomSampler(seed=seed)


if TYPE_CHECKING:
    # The union is built from the registry at run time; to the checker every member is a BaseSamplerSpec.
    SamplerSpec: TypeAlias = BaseSamplerSpec
else:
    # A sampler given without a name is the default one (as before the split).
    SamplerSpec = registry_union(SAMPLER_REGISTRY, DEFAULT)


def default_sampler() -> BaseSamplerSpec:
    # Each registered spec defaults its own name; the base class has none to default.
    return SAMPLER_REGISTRY.get(DEFAULT).model_validate({})


def build_sampler(spec: BaseSamplerSpec, cell_index: int, trial_number: int = 0) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of trial ``trial_number`` of cell ``cell_index`` (see ``draw_seed``)."""
    return spec.build(spec.draw_seed(cell_index, trial_number))


def sampler_options(name: str) -> dict[str, Any]:
    """The options of sampler ``name`` with their defaults (``name`` left out)."""
    cls = SAMPLER_REGISTRY.get(name)
    return {k: f.default for k, f in cls.model_fields.items() if k != "name"}
