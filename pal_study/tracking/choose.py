"""Which tracking store a URI names: ``jsonl://`` the plain-files store, anything else MLflow's
(``sqlite:///``, ``postgresql://``, ``http://``, ``file:``, ...: every URI MLflow accepts)."""

from __future__ import annotations

import os

from pal_study.tracking.base import TrackingStore
from pal_study.tracking.jsonl_store import JsonlStore, is_jsonl_uri
from pal_study.tracking.mlflow_store import MlflowStore, default_uri

URI_ENV = "MLFLOW_TRACKING_URI"


def resolve_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the SQLite store under ``./mlruns/``."""
    return uri or os.environ.get(URI_ENV) or default_uri()


def uri_named(uri: str | None = None) -> bool:
    """Whether the user named a store (option or environment) rather than taking the default."""
    return bool(uri or os.environ.get(URI_ENV))


def open_store(uri: str | None = None) -> TrackingStore:
    """The store ``uri`` names (see ``resolve_uri``), not yet checked: call its ``check``."""
    uri = resolve_uri(uri)
    if is_jsonl_uri(uri):
        return JsonlStore(uri)
    return MlflowStore(uri)
