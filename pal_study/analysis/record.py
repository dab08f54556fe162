"""A study's results from its own record, ``runs/<study>/``: the Optuna journal (every final seed's
metrics and config are user attributes of its finals trial) and ``summary.json`` (the claims).

``report`` and ``export`` read the MLflow tracking store when it holds the study and this record
otherwise (a ``--no-track`` study, or a store on a server that is gone); both give the same
numbers: the journal's finals carry what the tracker logs as ``final_*`` metrics, and the config
a final was trained with is the ``config.yaml`` MLflow holds. ``report`` reads a complete record
first unless a store is named (``open_source``'s ``record_first``): it then starts without MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from pal_study.analysis.failed_finals import num_classes
from pal_study.analysis.journal import StudyRecord
from pal_study.analysis.report import FinalRun, fetch_finals, judge_finals, stated_claims, study_claims
from pal_study.config import TrainConfig, method_name
from pal_study.errors import ConfigError

# The final-run numbers the tracker logs (``final_<key>``): the same set, so both sources agree.
from pal_study.layout import JOURNAL, SUMMARY_KEYS, cell_label, tuning_of
from pal_study.tracking import config_yaml, open_store, resolve_uri, uri_named
from pal_study.tracking.base import TrackingStore
from pal_study.tracking.names import CONFIG_FILE


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def journal_finals(run_dir: str | Path, storage: Any = None) -> list[FinalRun]:
    """Completed final runs of the study whose record is ``run_dir`` (``runs/<study>``), in the
    order ``report.fetch_finals`` gives (cell, seed); ``run_id`` is ``<optuna study>#<trial>``.
    ``storage``: the running driver's open storage of that journal (no second replay)."""
    record = StudyRecord(run_dir, storage=storage)
    if not record.has_journal():
        raise ConfigError(
            f"no study record at {run_dir} (no {JOURNAL}); run the study first, or pass --runs-dir", key="--runs-dir"
        )
    names = {s.study_name for s in record.studies()}
    out = []
    for finals_summary in record.finals_studies():
        name = finals_summary.study_name
        finals_study = record.load(name)
        own = finals_study.user_attrs  # a sensitivity cell's: what it is, whose tuning picked it
        tuning_name = str(own.get("tuning_study") or tuning_of(name))
        attrs, best = {}, None
        if tuning_name in names:
            tuning = record.load(tuning_name)
            attrs = tuning.user_attrs
            done = [t for t in tuning.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
            if done:
                best = tuning.best_value
        variant = json.loads(own["variant"]) if own.get("variant") else None
        parent = str(attrs.get("cell", tuning_name)) if variant else None
        if variant:
            attrs = own
        factors = json.loads(attrs.get("factors", "{}"))
        by_seed: dict[int, Any] = {}
        for t in finals_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            by_seed[int(t.user_attrs["seed"])] = t  # the last record of a seed wins, as in the store
        for seed, t in sorted(by_seed.items()):
            ua = t.user_attrs
            cfg = json.loads(ua["config"])
            data = cfg.get("data", {})
            metrics = {k: float(ua[k]) for k in SUMMARY_KEYS if _num(ua.get(k)) is not None}
            failed = t.state != TrialState.COMPLETE
            if failed:
                metrics = {}
            elif best is not None:
                metrics["tune_best_value"] = float(best)
            wd = cfg.get("optim", {}).get("weight_decay")
            out.append(
                FinalRun(
                    run_id=f"{name}#{t.number}",
                    cell=str(attrs.get("cell", tuning_name)),
                    group=cell_label({k: v for k, v in factors.items() if k != "method"}),
                    method=str(attrs.get("method") or method_name(TrainConfig.model_validate(cfg))),
                    dataset=str(data.get("name", "?")),
                    noise_rate=float(data.get("noise", {}).get("rate", 0.0)),
                    imbalance_ratio=float(data.get("imbalance", {}).get("ratio", 1.0)),
                    seed=seed,
                    weight_decay=None if wd is None else float(wd),
                    metrics=metrics,
                    checkpoint=ua.get("checkpoint_path") or None,
                    config=cfg,
                    failed=failed,
                    variant=variant,
                    parent=parent,
                    num_classes=num_classes(str(data.get("name", "?")), cfg),
                )
            )
    out.sort(key=lambda r: (r.cell, r.seed))
    return out


def journal_judge(
    run_dir: str | Path, runs: list[FinalRun], adjust: str = "bh"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The study's claims (as ``summary.json`` and ``study.json`` state them) judged on ``runs``, and
    across its sensitivity knobs."""
    record = StudyRecord(run_dir)
    saved = record.summary().get("claims") or []
    spec = record.study_copy().get("spec")
    if not saved:
        return [], []
    return judge_finals(stated_claims(saved, spec), runs, adjust)


def journal_claims(run_dir: str | Path, runs: list[FinalRun], adjust: str = "bh") -> list[dict[str, Any]]:
    """The study's claims judged on ``runs``."""
    return journal_judge(run_dir, runs, adjust)[0]


SOURCES = ("auto", "mlflow", "runs")


class Source:
    """Where a report or export reads a study's finals: the tracking store or the run directory."""

    def __init__(
        self,
        kind: str,
        where: str,
        runs: list[FinalRun],
        *,
        tracking: TrackingStore | None = None,
        parent: str | None = None,
        experiment_id: str | None = None,
        run_dir: Path | None = None,
    ):
        self.kind, self.where, self.runs = kind, where, runs
        self.tracking, self.parent, self.experiment_id, self.run_dir = tracking, parent, experiment_id, run_dir

    def tracked(self) -> tuple[TrackingStore, str]:
        """The tracking store and the study's run in it, which an ``mlflow`` source has."""
        if self.tracking is None or self.parent is None:
            raise ValueError(f"a {self.kind} source ({self.where}) has no tracking store")
        return self.tracking, self.parent

    def record_dir(self) -> Path:
        """The study's run directory, which a ``runs`` source reads (an ``mlflow`` one where it exists)."""
        if self.run_dir is None:
            raise ValueError(f"a {self.kind} source ({self.where}) has no run directory")
        return self.run_dir

    def judge(self, adjust: str = "bh") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(claims' verdicts, verdicts across each sensitivity knob)."""
        if self.kind == "mlflow":
            tracking, parent = self.tracked()
            return judge_finals(study_claims(tracking, parent), self.runs, adjust)
        return journal_judge(self.record_dir(), self.runs, adjust)

    def claims(self, adjust: str = "bh") -> list[dict[str, Any]]:
        return self.judge(adjust)[0]

    def config_yaml(self, run: FinalRun, study: str) -> str:
        """The re-runnable ``config.yaml`` of a final run, as the tracking store holds it."""
        if self.kind == "mlflow":
            content = self.tracked()[0].read_file(run.run_id, CONFIG_FILE)
            if content is None:
                raise ConfigError(f"final run {run.run_id} has no {CONFIG_FILE} in {self.where}", key="STUDY")
            return content.decode()
        return config_yaml(run.config or {}, f"{study} {run.cell} final seed {run.seed}: pal-study train THIS_FILE")


def open_source(
    study: str,
    *,
    source: str = "auto",
    tracking_uri: str | None = None,
    runs_dir: str | Path = "runs",
    record_first: bool = False,
) -> Source:
    """``mlflow``: the tracking store (must hold the study); ``runs``: ``runs_dir/<study>``;
    ``auto``: the store when it holds the study, else the run directory. ``record_first`` (what
    ``report`` reads: the same numbers either way): ``auto`` takes the run directory when it holds
    the whole study (its ``summary.json`` says complete) and no store is named (``--tracking-uri``,
    ``$MLFLOW_TRACKING_URI``), without opening the store: MLflow's import and store alone take
    about 2 s of a 2-core machine (benchmarks/README.md, start-up)."""
    if source not in SOURCES:
        raise ConfigError(f"unknown source {source!r}; allowed: {', '.join(SOURCES)}", key="--source")
    run_dir = Path(runs_dir) / study
    record = StudyRecord(run_dir)
    has_record = record.has_journal()
    uri = resolve_uri(tracking_uri)
    store_named = uri_named(tracking_uri)
    local_db = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
    no_store = local_db is not None and not local_db.exists()
    complete = record_first and has_record and record.summary().get("complete") is True
    if source == "runs" or (source == "auto" and has_record and not store_named and (no_store or complete)):
        return Source("runs", str(run_dir), journal_finals(run_dir), run_dir=run_dir)
    try:
        tracking = open_store(tracking_uri)
        tracking.check()
        exp_id, parent, runs = fetch_finals(tracking, study)
    except ConfigError:
        if source == "auto" and has_record:
            return Source("runs", str(run_dir), journal_finals(run_dir), run_dir=run_dir)
        if source == "auto":
            raise ConfigError(
                f"study {study!r}: not in the tracking store {uri} and no record at {run_dir}", key="STUDY"
            ) from None
        raise
    return Source(
        "mlflow",
        tracking.uri,
        runs,
        tracking=tracking,
        parent=parent,
        experiment_id=exp_id,
        run_dir=run_dir if has_record else None,
    )
