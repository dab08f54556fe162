"""MLflow adapter: one experiment per study; the study a parent run, each cell a run below it,
each tuning trial and final seed a run below its cell's.

Written from the driver only (SQLite allows one writer), in
batches: a trial's run is created when its trial starts, its epochs are buffered and flushed
every ``FLUSH_S`` seconds and at its end in one ``log_batch``. Runs are keyed by
``pal.run_key`` (``cell003``, ``cell003/tune/7``, ``cell003/final/seed1``) and carry the study
run's id (``pal.study_run``), so a resumed study finds and finishes its runs instead of opening
duplicates. The cell run holds the cell's factor tags, its best config (params), the aggregates
over its finals and its comparison with its baseline (``study/tracker.py``).

Default store: ``sqlite:///<cwd>/mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts/``;
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` point anywhere else (an MLflow server, PostgreSQL).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from pal_study.errors import ConfigError

FLUSH_S = 30.0
DEFAULT_DIR = "mlruns"


def resolve_uri(uri: str | None = None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(DEFAULT_DIR).resolve() / 'mlflow.db'}"


def default_artifact_root(uri: str) -> str | None:
    """Artifacts beside a local SQLite store (MLflow's own default is ./mlartifacts of the cwd)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class Tracking:
    """A checked connection to one tracking store."""

    def __init__(self, uri: str | None = None):
        self.uri = resolve_uri(uri)
        # Fail fast when a server is down: the study queues its logs and retries by itself.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        import logging

        from mlflow import MlflowClient

        # MLflow announces schema migrations of a new SQLite store at INFO: not the user's business.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)

        self.client = MlflowClient(tracking_uri=self.uri)

    def check(self) -> None:
        """Reach the store now: an unreachable tracking server is bad input, before any training."""
        try:
            self.client.search_experiments(max_results=1)
        except Exception as e:
            msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise ConfigError(
                f"cannot reach the MLflow tracking store {self.uri!r}: {msg}",
                key="--tracking-uri / MLFLOW_TRACKING_URI",
            ) from None

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

    # -- batched writes ---------------------------------------------------------------------
    def log_batch(
        self, run_id: str, metrics=(), params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        ms = [m if isinstance(m, Metric) else Metric(m[0], float(m[1]), now, int(m[2])) for m in metrics]
        ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        ts = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
        # MLflow's limits per call: 1000 metrics, 100 params + tags.
        while ms or ps or ts:
            take_p = ps[:100]
            take_t = ts[: 100 - len(take_p)]
            self.client.log_batch(run_id, metrics=ms[:1000], params=take_p, tags=take_t)
            ms, ps, ts = ms[1000:], ps[len(take_p) :], ts[len(take_t) :]

    def log_files(self, run_id: str, files: dict[str, bytes | str], artifact_path: str | None = None) -> None:
        """Write files to the run's artifact store in one upload."""
        with tempfile.TemporaryDirectory(prefix="pal-artifacts-") as tmp:
            for name, content in files.items():
                p = Path(tmp) / name
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(content if isinstance(content, bytes) else content.encode())
            self.client.log_artifacts(run_id, tmp, artifact_path)


def code_tags() -> dict[str, str]:
    """Which code made a run: the package version and, in a git checkout, the commit."""
    from pal_study import __version__

    commit = _GIT.get("commit", "unset")
    if commit == "unset":
        commit = _GIT["commit"] = _git_commit()
    return {"pal_study_version": __version__, **({"git_commit": commit} if commit else {})}


# A sensitivity cell's runs (cell and finals): the knob it fixes as JSON ({"head.scale": 5}) and
# the label of the cell whose best config it re-runs.
SENSITIVITY_TAG = "pal.sensitivity"
SENSITIVITY_OF_TAG = "pal.sensitivity_of"


def trial_tags(cfg: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The tags a child run is filtered and grouped by in the UI."""
    from pal_study.config import TrainConfig, method_name

    data = cfg.get("data", {})
    tags = {
        "method": method_name(TrainConfig.model_validate(cfg)),
        "loss": cfg.get("loss", {}).get("name"),
        "head": cfg.get("head", {}).get("kind"),
        "dataset": data.get("name"),
        "noise_kind": data.get("noise", {}).get("kind"),
        "noise_rate": data.get("noise", {}).get("rate"),
        "imbalance_ratio": data.get("imbalance", {}).get("ratio"),
        "seed": cfg.get("seed"),
        "config_hash": config_hash(cfg),
        **code_tags(),
    }
    tags.update(extra)
    # Strings: an MLflow server rejects other tag types (SQLite stores would take them).
    return {k: str(v) for k, v in tags.items() if v is not None}


_GIT: dict[str, Any] = {}


def config_hash(cfg: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def config_yaml(cfg: dict[str, Any], header: str = "") -> str:
    import yaml

    body = yaml.safe_dump(cfg, sort_keys=False)
    return (f"# {header}\n" if header else "") + body


def trial_artifacts(cfg: dict[str, Any], details: dict[str, Any] | None, header: str) -> dict[str, bytes | str]:
    """config.yaml (re-runnable with ``pal-study train``), prototype geometry, per-class accuracy,
    the reliability diagram (rendered by the trial's worker: finals) or its bins (tuning trials)."""
    files: dict[str, bytes | str] = {"config.yaml": config_yaml(cfg, header)}
    if details:
        if details.get("prototype_geometry"):
            files["prototype_geometry.json"] = json.dumps(details["prototype_geometry"], indent=1)
        pca = details.get("per_class_acc")
        if pca:
            counts = details.get("class_counts") or [None] * len(pca)
            rows = ["class,train_count,test_acc"] + [
                f"{i},{n if n is not None else ''},{'' if a is None else a}"
                for i, (a, n) in enumerate(zip(pca, counts, strict=False))
            ]
            files["per_class_acc.csv"] = "\n".join(rows) + "\n"
        if details.get("reliability_png"):
            import base64

            files["reliability.png"] = base64.b64decode(details["reliability_png"])
        elif details.get("reliability"):
            files["reliability.json"] = json.dumps(details["reliability"], indent=1)
    return files


def log_train_result(tracking: Tracking, experiment: str, result: Any) -> str:
    """One ``pal-study train`` as one run: config params, tags, per-epoch metrics, artifacts."""
    from pal_study.plots import reliability_png

    cfg = result.config
    exp_id = tracking.experiment_id(experiment)
    status = {"completed": "FINISHED", "stopped": "KILLED"}.get(result.status, "FAILED")
    run = tracking.client.create_run(
        exp_id,
        run_name=f"{result.method} seed {cfg.get('seed')}",
        tags=trial_tags(cfg, stage="train", outcome=result.status if result.status != "stopped" else "pruned"),
    )
    keys = (
        "train_loss",
        "val_acc",
        "val_acc_clean",
        "test_acc",
        "ece",
        "gamma_min",
        "margin_mean",
        "lr",
        "train_time_s",
        "eval_time_s",
    )
    metrics = [(k, h[k], int(h["epoch"])) for h in result.history for k in keys if isinstance(h.get(k), (int, float))]
    tracking.log_batch(run.info.run_id, metrics=metrics, params=flatten(cfg))
    details = {
        "prototype_geometry": result.prototype_geometry,
        "per_class_acc": result.per_class_acc,
        "class_counts": result.class_counts,
    }
    files = trial_artifacts(cfg, details, "pal-study train THIS_FILE reproduces this run")
    if result.reliability:
        files["reliability.png"] = reliability_png(result.reliability, result.final.get("ece"), result.method)
    files["result.json"] = json.dumps(result.to_dict(), default=str, indent=1)
    tracking.log_files(run.info.run_id, files)
    tracking.client.set_terminated(run.info.run_id, status=status)
    return run.info.run_id


# -- the MLflow UI's view of a study's cells ------------------------------------------------------
# MLflow's UI opens a "shared view" from an experiment tag ``mlflow.sharedViewState.<key>`` (JSON of
# its search facets and table/chart state; what its own Share button writes) when the URL carries
# ``viewStateShareKey=<key>``. pal-study writes one per study experiment: the cell runs only, their
# headline metrics and factors as columns, charts filtered to the test accuracy.
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
CELL_METRICS = (
    "final_test_acc_mean",
    "final_test_acc_std",
    "delta_test_acc",
    "ci_low",
    "ci_high",
    "q",
    "final_val_acc_mean",
    "ece_mean",
    "n_finals",
)


def cells_view_state(factors: list[str], searched: list[str]) -> dict[str, Any]:
    """The UI state of the cells view: search facets plus table columns (``type.`key```)."""
    cols = [f"metrics.`{m}`" for m in CELL_METRICS]
    cols += [f"tags.`{_FACTOR_TAGS[f]}`" if f in _FACTOR_TAGS else f"params.`{f}`" for f in factors]
    cols += [f"params.`{p}`" for p in searched if p not in factors]
    return {
        "searchFilter": "tags.stage = 'cell'",
        "orderByKey": "metrics.`final_test_acc_mean`",
        "orderByAsc": False,
        "lifecycleFilter": "Active",
        "selectedColumns": cols,
        "runsHiddenMode": "SHOW_ALL",
        "chartsSearchFilter": "test_acc",
        "hideEmptyCharts": True,
    }


def set_cells_view(client: Any, experiment_id: str, factors: list[str], searched: list[str]) -> None:
    """Write (or refresh) the study experiment's cells view; the URL is ``cells_view_url``."""
    client.set_experiment_tag(
        experiment_id, _SHARED_VIEW_TAG + CELLS_VIEW_KEY, json.dumps(cells_view_state(factors, searched))
    )


def has_cells_view(experiment: Any) -> bool:
    return _SHARED_VIEW_TAG + CELLS_VIEW_KEY in (experiment.tags or {})


def cells_view_url(base: str, experiment_id: str, charts: bool = False) -> str:
    """The runs page of the study's cells (table, or the chart view comparing them)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={CELLS_VIEW_KEY}" + (
        "&compareRunsMode=CHART" if charts else ""
    )
