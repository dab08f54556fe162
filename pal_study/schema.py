"""The base of every config model (trial configs, data-set options, study specs): strict, so an
unknown key is an error naming the allowed ones rather than a silently ignored typo."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

if TYPE_CHECKING:
    from pal_study.registry import Registry


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def registry_union(registry: Registry[Any], default: str) -> Any:
    """The config type of a plug-in slot (pruner, sampler): a union of the registry's option
    models told apart by their ``name`` field; a value given without a name is ``default``'s.
    To a type checker the result is opaque: declare the slot's base model under TYPE_CHECKING."""

    def default_name(value: Any) -> Any:
        if isinstance(value, dict) and "name" not in value:
            return {"name": default, **value}
        return value

    return Annotated[
        Union[tuple(registry.entries())],  # noqa: UP007  (a union built from the registry)
        Field(discriminator="name"),
        BeforeValidator(default_name),
    ]
