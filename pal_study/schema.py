"""The base of every config model (trial configs, data-set options, study specs): strict, so an
unknown key is an error naming the allowed ones rather than a silently ignored typo."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
