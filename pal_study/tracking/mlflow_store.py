"""The MLflow tracking store: the one module that talks to MLflow's client.

Default store: ``sqlite:///<cwd>/mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts/``;
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` point anywhere else (an MLflow server, PostgreSQL).
MLflow is imported when a store is opened, not with this module: ``pal-study`` starts fast and a
study imports it on a thread of its own while Ray starts.

Also the MLflow UI's view of a study's cells: MLflow's UI opens a "shared view" from an experiment
tag ``mlflow.sharedViewState.<key>`` (JSON of its search facets and table/chart state; what its
own Share button writes) when the URL carries ``viewStateShareKey=<key>``. pal-study writes one
per study experiment: the cell runs only, their headline metrics and factors as columns, charts
filtered to the test accuracy."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pal_study.errors import ConfigError
from pal_study.tracking.base import Experiment, MetricPoint, Run
from pal_study.tracking.names import (
    CELL_METRICS,
    CELL_TEXT_TAGS,
    DELTA_TEXT,
    PARENT_TAG,
    Q_TEXT,
    RUNNING,
    TEST_ACC_TEXT,
    VERDICT_TEXT,
    cell_runs,
    mlflow_filter,
)

DEFAULT_DIR = "mlruns"


def default_uri() -> str:
    return f"sqlite:///{Path(DEFAULT_DIR).resolve() / 'mlflow.db'}"


def default_artifact_root(uri: str) -> str | None:
    """Artifacts beside a local SQLite store (MLflow's own default is ./mlartifacts of the cwd)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


class MlflowStore:
    """A connection to one MLflow tracking store (``client``: its ``MlflowClient``)."""

    def __init__(self, uri: str):
        self.uri = uri
        # Fail fast when a server is down: the study queues its logs and retries by itself.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        from mlflow import MlflowClient

        # MLflow announces schema migrations of a new SQLite store at INFO: not the user's business.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)

        self.client = MlflowClient(tracking_uri=self.uri)

    def check(self) -> None:
        try:
            self.client.search_experiments(max_results=1)
        except Exception as e:
            msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise ConfigError(
                f"cannot reach the MLflow tracking store {self.uri!r}: {msg}",
                key="--tracking-uri / MLFLOW_TRACKING_URI",
            ) from None

    # -- experiments ----------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        root = default_artifact_root(self.uri)
        location = f"{root}/{name}" if root else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def find_experiment(self, name: str) -> Experiment | None:
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            return None
        return Experiment(exp.experiment_id, exp.name, dict(exp.tags or {}))

    def set_study_view(
        self, experiment_id: str, factors: list[str], searched: list[str], titles: Sequence[str] = ()
    ) -> None:
        # Rewritten where it differs: a study tracked by an older pal-study gets today's view.
        state = json.dumps(cells_view_state(factors, searched, titles))
        exp = self.client.get_experiment(experiment_id)
        if (exp.tags or {}).get(_SHARED_VIEW_TAG + CELLS_VIEW_KEY) != state:
            self.client.set_experiment_tag(experiment_id, _SHARED_VIEW_TAG + CELLS_VIEW_KEY, state)

    # -- runs -----------------------------------------------------------------------------------
    def create_run(
        self,
        experiment_id: str,
        name: str,
        tags: Mapping[str, Any],
        *,
        parent_id: str | None = None,
        start_time: int | None = None,
    ) -> str:
        all_tags = {**({PARENT_TAG: parent_id} if parent_id else {}), **tags}
        run = self.client.create_run(experiment_id, run_name=name, start_time=start_time, tags=all_tags)
        return run.info.run_id

    def set_status(self, run_id: str, status: str) -> None:
        if status == RUNNING:
            self.client.update_run(run_id, status=RUNNING)
        else:
            self.client.set_terminated(run_id, status=status)

    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def log_batch(
        self,
        run_id: str,
        metrics: Iterable[MetricPoint] = (),
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, int(step)) for k, v, step in metrics]
        ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        ts = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
        # MLflow's limits per call: 1000 metrics, 100 params + tags.
        while ms or ps or ts:
            take_p = ps[:100]
            take_t = ts[: 100 - len(take_p)]
            self.client.log_batch(run_id, metrics=ms[:1000], params=take_p, tags=take_t)
            ms, ps, ts = ms[1000:], ps[len(take_p) :], ts[len(take_t) :]

    def log_files(self, run_id: str, files: Mapping[str, bytes | str], artifact_path: str | None = None) -> None:
        """Written to a temporary folder and uploaded in one call."""
        with tempfile.TemporaryDirectory(prefix="pal-artifacts-") as tmp:
            for name, content in files.items():
                p = Path(tmp) / name
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(content if isinstance(content, bytes) else content.encode())
            self.client.log_artifacts(run_id, tmp, artifact_path)

    def log_table(self, run_id: str, path: str, table: Mapping[str, list]) -> None:
        """As an MLflow table (the UI's artifact view shows it). ``log_table`` appends to a table
        already there: a rerun's (same) table replaces it instead."""
        import pandas as pd

        df = pd.DataFrame(dict(table))
        # Text columns as object (pandas 3 makes them ``str``, which log_table's image check warns about).
        text = [k for k in df.columns if df[k].dtype != object and pd.api.types.is_string_dtype(df[k])]
        df[text] = df[text].astype(object)
        folder = path.rpartition("/")[0] or None
        if path in {a.path for a in self.client.list_artifacts(run_id, folder)}:
            self.log_files(run_id, {path: df.to_json(orient="split", index=False, date_format="iso")})
        else:
            self.client.log_table(run_id, data=df, artifact_file=path)

    def read_file(self, run_id: str, path: str) -> bytes | None:
        folder = path.rpartition("/")[0] or None
        if path not in {a.path for a in self.client.list_artifacts(run_id, folder)}:
            return None
        with tempfile.TemporaryDirectory(prefix="pal-artifacts-") as tmp:
            return Path(self.client.download_artifacts(run_id, path, tmp)).read_bytes()

    def get_run(self, run_id: str) -> Run:
        return _run(self.client.get_run(run_id))

    def find_runs(
        self, experiment_id: str, tags: Mapping[str, str], *, newest_first: bool = False, limit: int | None = None
    ) -> list[Run]:
        order = ["attributes.start_time DESC"] if newest_first else None
        out: list[Run] = []
        token = None
        while limit is None or len(out) < limit:
            page = self.client.search_runs(
                [experiment_id],
                filter_string=mlflow_filter(dict(tags)),
                max_results=min(1000, limit - len(out)) if limit else 1000,
                order_by=order,
                page_token=token,
            )
            out += [_run(r) for r in page]
            token = page.token
            if not token:
                break
        return out

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, key)]


def _run(r: Any) -> Run:
    return Run(
        run_id=r.info.run_id,
        experiment_id=r.info.experiment_id,
        name=r.info.run_name or "",
        status=r.info.status,
        start_time=int(r.info.start_time or 0),
        tags=dict(r.data.tags),
        params=dict(r.data.params),
        metrics=dict(r.data.metrics),
        deleted=r.info.lifecycle_stage == "deleted",
    )


# -- the MLflow UI's view of a study's cells ------------------------------------------------------
CELLS_VIEW_KEY = "pal-cells"
_SHARED_VIEW_TAG = "mlflow.sharedViewState."
# Factor keys that the runs carry as tags (trial_tags); other factors are params of the cell run.
_FACTOR_TAGS = {
    "method": "method",
    "data.name": "dataset",
    "data.noise.kind": "noise_kind",
    "data.noise.rate": "noise_rate",
    "data.imbalance.ratio": "imbalance_ratio",
}


# What a person reads first, in this order and rounded (text tags, CELL_TEXT_TAGS), then the factors,
# the best config, and the numbers in full precision (metrics: sorting, charts, recomputation).
_FIRST_METRICS = ("final_test_acc_mean", "final_test_acc_std", "delta_test_acc", "ci_low", "ci_high", "n_finals")
# Column widths in px: the UI's default (~100) cuts "95.12 ± 0.31" and every interval.
_TEXT_WIDTHS = {TEST_ACC_TEXT: 130, DELTA_TEXT: 200, Q_TEXT: 80, VERDICT_TEXT: 120}
_RUN_NAME = "attributes.`Run Name`"


def _name_width(titles: Sequence[str]) -> int:
    """The run-name column's width: the longest title in full (~7.5 px per character of the UI's
    font, plus the colour dot and padding), within 180-420 px."""
    return max(180, min(420, 60 + round(7.5 * max((len(t) for t in titles), default=0))))


def _bar(uuid: str, section: str, metric: str) -> dict[str, Any]:
    """A bar chart card as the UI serialises one: a bar per run in the run list's colours."""
    return {
        "uuid": uuid,
        "type": "BAR",
        "runsCountToCompare": 100,
        "metricSectionId": section,
        "deleted": False,
        "isGenerated": False,
        "displayName": metric,
        "metricKey": metric,
    }


def cells_view_state(factors: list[str], searched: list[str], titles: Sequence[str] = ()) -> dict[str, Any]:
    """The UI state of the cells view: search facets, table columns (``type.`key```) in the order
    and widths they open with, and the chart view's charts: test accuracy per cell; Δ against the
    base beside its interval's ends (MLflow's charts draw no error bars)."""
    text = [f"tags.`{t}`" for t in CELL_TEXT_TAGS]
    factor_cols = [f"tags.`{_FACTOR_TAGS[f]}`" if f in _FACTOR_TAGS else f"params.`{f}`" for f in factors]
    param_cols = [f"params.`{p}`" for p in searched if p not in factors]
    metric_cols = [f"metrics.`{m}`" for m in _FIRST_METRICS]
    metric_cols += [f"metrics.`{m}`" for m in CELL_METRICS if m not in _FIRST_METRICS and m != "q"]
    cols = [*text, *factor_cols, *param_cols, *metric_cols]
    stage, value = next(iter(cell_runs().items()))
    n = max(len(titles), 1)
    height = max(360, 160 + 28 * n)  # a bar per cell stays legible
    return {
        "searchFilter": f"tags.{stage} = '{value}'",
        "orderByKey": "metrics.`final_test_acc_mean`",
        "orderByAsc": False,
        "lifecycleFilter": "Active",
        "selectedColumns": cols,
        "columnOrder": [_RUN_NAME, *cols],
        "columnWidths": {_RUN_NAME: _name_width(titles), **{f"tags.`{k}`": w for k, w in _TEXT_WIDTHS.items()}},
        "runsHiddenMode": "SHOW_ALL",
        "hideEmptyCharts": True,
        "compareRunSections": [
            {
                "uuid": "pal-test-acc",
                "name": "Test accuracy per cell (mean over the final seeds)",
                "display": True,
                "isReordered": False,
                "columns": 1,
                "cardHeight": height,
            },
            {
                "uuid": "pal-delta",
                "name": "Δ test accuracy vs base loss, interval low, high",
                "display": True,
                "isReordered": False,
                "columns": 1,
                "cardHeight": height,
            },
        ],
        # One metric per chart: a chart of several draws grouped bars without the runs' names.
        "compareRunCharts": [
            _bar("pal-test-acc-mean", "pal-test-acc", "final_test_acc_mean"),
            *(_bar(f"pal-{m}", "pal-delta", m) for m in ("delta_test_acc", "ci_low", "ci_high")),
        ],
        "isAccordionReordered": True,
    }


def has_cells_view(experiment: Experiment) -> bool:
    return _SHARED_VIEW_TAG + CELLS_VIEW_KEY in experiment.tags


def cells_view_url(base: str, experiment_id: str, charts: bool = False) -> str:
    """The runs page of the study's cells (table, or the chart view comparing them)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={CELLS_VIEW_KEY}" + (
        "&compareRunsMode=CHART" if charts else ""
    )
