"""Tracking stores: where a study's runs, metrics and files are recorded and read back.

A study is one experiment: the study a parent run, each cell a run below it, each tuning trial and
final seed a run below its cell's (``names`` holds every tag and metric key). ``base.TrackingStore``
is what the study needs of a store; ``open_store(uri)`` gives one: MLflow's
(``mlflow_store``; the default, ``sqlite:///<cwd>/mlruns/mlflow.db``) or plain JSON-lines files
(``jsonl_store``, ``--tracking-uri jsonl:///path``). This package knows neither the study engine
nor the analysis: both use it."""

from pal_study.config import flatten
from pal_study.tracking.base import Experiment, MetricPoint, Run, TrackingStore
from pal_study.tracking.choose import open_store, resolve_uri, uri_named
from pal_study.tracking.content import code_tags, config_hash, config_yaml, trial_artifacts, trial_tags
from pal_study.tracking.names import SENSITIVITY_OF_TAG, SENSITIVITY_TAG

__all__ = [
    "SENSITIVITY_OF_TAG",
    "SENSITIVITY_TAG",
    "Experiment",
    "MetricPoint",
    "Run",
    "TrackingStore",
    "code_tags",
    "config_hash",
    "config_yaml",
    "flatten",
    "open_store",
    "resolve_uri",
    "trial_artifacts",
    "trial_tags",
    "uri_named",
]
