"""Search spaces (``search_spaces/*.yaml``): distributions over dotted trial-config keys,
conditional on the cell's method, turned into Optuna distributions define-by-run.

    params:
      head.scale: {type: float, low: 4, high: 64, log: true, when: {head: [fnpal, norm]}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from pal_study.config import KeyedError, _Strict
from pal_study.resources import find_shipped


class When(_Strict):
    """A parameter applies to a cell only if every given list contains the cell's value."""

    method: list[str] | None = None
    loss: list[str] | None = None
    head: list[str] | None = None

    def matches(self, loss: str, head: str, method: str) -> bool:
        return all(
            allowed is None or value in allowed
            for allowed, value in ((self.method, method), (self.loss, loss), (self.head, head))
        )

    def describe(self) -> str:
        parts = [f"{k} in [{', '.join(v)}]" for k, v in self.model_dump().items() if v is not None]
        return " and ".join(parts) or "always"


class Param(_Strict):
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None
    when: When = When()

    @property
    def bounds(self) -> tuple[float, float]:
        """(low, high) of a numeric parameter (the validator guarantees both are set)."""
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter has no low/high")
        return self.low, self.high

    @model_validator(mode="after")
    def _coherent(self) -> Param:
        if self.type == "categorical":
            if not self.choices:
                raise KeyedError("choices", "a categorical parameter needs a non-empty list of choices")
            if self.low is not None or self.high is not None:
                raise KeyedError("low", "categorical parameters take choices, not low/high")
            return self
        if self.choices is not None:
            raise KeyedError("choices", f"{self.type} parameters take low/high, not choices")
        for key in ("low", "high"):
            value = getattr(self, key)
            if value is None:
                raise KeyedError(key, f"a {self.type} parameter needs {key}")
            if value != value or value in (float("inf"), float("-inf")):
                raise KeyedError(key, f"must be a finite number, got {value}")
        low, high = self.bounds
        if low > high:
            raise KeyedError("low", f"low ({low:g}) must be <= high ({high:g})")
        if self.log and low <= 0:
            raise KeyedError("low", f"a log range needs low > 0, got {low:g}")
        if self.log and self.step is not None:
            raise KeyedError("step", "step and log cannot be combined (Optuna rejects it)")
        if self.type == "int" and (low != int(low) or high != int(high)):
            raise KeyedError("low", "int parameters need integer low and high")
        return self


class SearchSpace(_Strict):
    name: str | None = None
    description: str | None = None
    params: dict[str, Param] = Field(default_factory=dict)


def active_params(spaces: list[tuple[str, SearchSpace]], loss: str, head: str, method: str) -> dict[str, Param]:
    """The parameters that apply to a cell of this method, later spaces overriding earlier ones."""
    out: dict[str, Param] = {}
    for _, space in spaces:
        for key, param in space.params.items():
            if param.when.matches(loss, head, method):
                out[key] = param
    return out


def suggest(trial, params: dict[str, Param]) -> dict[str, Any]:
    """Define-by-run sampling: only the cell's own parameters exist in its Optuna trials."""
    out: dict[str, Any] = {}
    for key, p in params.items():
        if p.type == "categorical":
            out[key] = trial.suggest_categorical(key, p.choices)
        elif p.type == "int":
            low, high = p.bounds
            out[key] = trial.suggest_int(key, int(low), int(high), step=int(p.step or 1), log=p.log)
        else:
            low, high = p.bounds
            out[key] = trial.suggest_float(key, low, high, step=p.step, log=p.log)
    return out


def resolve_space_path(ref: str, study_dir: Path, spaces_dir: Path | None = None) -> Path:
    """A bare name (``weight_decay``) is a file in ``search_spaces/`` (beside the study's folder,
    then in the working directory), else the shipped search space of that name; anything with a
    slash or a .yaml suffix is a path, relative to the study file (a bare ``weight_decay.yaml``
    found nowhere else is the shipped one). Bare names never match the study folder, where a
    study may share the name. Found nowhere: the first candidate, which does not exist."""
    is_path = "/" in ref or ref.endswith((".yaml", ".yml"))
    bases = [b for b in (spaces_dir, study_dir.parent / "search_spaces", Path.cwd() / "search_spaces") if b]
    if is_path:
        candidates = [study_dir / ref, Path.cwd() / ref]
    else:
        candidates = [c for b in bases for c in (b / f"{ref}.yaml", b / f"{ref}.yml")]
    shipped = None if "/" in ref else find_shipped("search_spaces", ref)
    if shipped is not None:
        candidates.append(shipped)
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0]
