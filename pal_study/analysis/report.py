"""Study reports from the tracking store alone: per cell mean ± std over the final seeds (and how
many failed), each X+head against its base loss X of the same condition paired by seed (exact
sign-flip test and interval, the paired t-test beside it, q-values over the report), the claims'
verdicts, the verdicts across a sensitivity knob; ``pal_study.analysis.formats`` lays them out
(md, csv, latex, json, html) with the figures.

    pal-study report quickstart --format md --out reports/quickstart
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pal_study.analysis.claims import CellInfo, ClaimSpec, evaluate
from pal_study.analysis.failed_finals import apply_rule, failed_metrics, num_classes
from pal_study.analysis.journal import StudyRecord
from pal_study.analysis.ranking import probability_of_improvement, rank_methods
from pal_study.analysis.sensitivity import Variant, judge
from pal_study.analysis.stats import Paired, adjust_all, adjustment, paired
from pal_study.errors import ConfigError
from pal_study.layout import factors_of
from pal_study.methods import split_method
from pal_study.plain_metrics import mean_std
from pal_study.tracking import names
from pal_study.tracking.base import TrackingStore

GROUPS = ("many", "medium", "few")


@dataclass
class FinalRun:
    run_id: str
    cell: str
    group: str  # the cell's factors other than the method
    method: str
    dataset: str
    noise_rate: float
    imbalance_ratio: float
    seed: int
    weight_decay: float | None
    metrics: dict[str, float]
    config_path: str = "config.yaml"
    checkpoint: str | None = None  # the final's trained model, where checkpoints were on
    config: dict[str, Any] | None = None  # the trained config, when read from the study's own record
    failed: bool = False  # a final that ended without a result (counted by the failed-finals rule)
    variant: dict[str, Any] | None = None  # a sensitivity cell's fixed knob: value
    parent: str | None = None  # a sensitivity cell's tuned cell (label)
    num_classes: int | None = None


@dataclass
class CellRow:
    cell: str
    group: str
    method: str
    dataset: str
    noise_rate: float
    imbalance_ratio: float
    weight_decay: float | None
    n: int
    seeds: list[int]
    run_ids: list[str]
    stats: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> (mean, std)
    comparison: Paired | None = None  # test_acc against the row's baseline cell, paired by seed
    failed_seeds: list[int] = field(default_factory=list)  # finals that ended without a result
    variant: dict[str, Any] | None = None  # a sensitivity cell's fixed knob: value


def _f(v: Any, default: float = 0.0) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def fetch_finals(tracking: TrackingStore, study: str) -> tuple[str, str, list[FinalRun]]:
    """(experiment id, parent run id, completed final runs) of the study's latest parent run."""
    exp = tracking.find_experiment(study)
    if exp is None:
        raise ConfigError(f"no experiment named {study!r} in the tracking store {tracking.uri}", key="STUDY")
    parents = tracking.find_runs(exp.experiment_id, names.study_runs(), newest_first=True, limit=1)
    if not parents:
        raise ConfigError(f"experiment {study!r} holds no pal-study study run", key="STUDY")
    parent = parents[0].run_id
    # Finals sit under their cell run and carry the study run's id (``pal.study_run``); studies
    # tracked before cell runs existed have them directly under the study run. Either layout,
    # each run once; completed and failed finals, not a run still open.
    runs, seen = [], set()
    for link in (names.STUDY_RUN_TAG, names.PARENT_TAG):
        for r in tracking.find_runs(exp.experiment_id, names.finals_of(parent, link)):
            if r.run_id not in seen and r.tags.get(names.OUTCOME_TAG) in names.ENDED_OUTCOMES:
                runs.append(r)
            seen.add(r.run_id)
    out = []
    for r in runs:
        t, p = r.tags, r.params
        dataset = t.get("dataset", "?")
        options = {k.split(".", 2)[2]: v for k, v in p.items() if k.startswith(f"data.{dataset}.")}
        out.append(
            FinalRun(
                run_id=r.run_id,
                cell=t.get("cell", "?"),
                group=t.get("cell_group", ""),
                method=t.get("method", "?"),
                dataset=t.get("dataset", "?"),
                noise_rate=_f(t.get("noise_rate")),
                imbalance_ratio=_f(t.get("imbalance_ratio"), 1.0),
                seed=int(_f(t.get("seed"))),
                weight_decay=_f(p["optim.weight_decay"]) if "optim.weight_decay" in p else None,
                metrics={
                    k.removeprefix(names.SUMMARY_PREFIX): v
                    for k, v in r.metrics.items()
                    if k.startswith(names.SUMMARY_PREFIX)
                },
                checkpoint=t.get(names.CHECKPOINT_TAG),
                failed=t.get(names.OUTCOME_TAG) == "failed",
                variant=json.loads(t[names.SENSITIVITY_TAG]) if t.get(names.SENSITIVITY_TAG) else None,
                parent=t.get(names.SENSITIVITY_OF_TAG),
                num_classes=num_classes(dataset, {"data": {dataset: {k: _num_or_str(v) for k, v in options.items()}}}),
            )
        )
    out.sort(key=lambda r: (r.cell, r.seed))
    return exp.experiment_id, parent, out


def _num_or_str(v: str) -> Any:
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


BASELINES = ("base", "ce")
METRIC = "test_acc"


def baseline_method(method: str, baseline: str = "base") -> str | None:
    """The method a cell is compared with: ``base`` (the paper's pairing) compares X+pal, X+fnpal
    and X+norm with their base loss X; ``ce`` compares every method with CE. None: no baseline."""
    if baseline == "ce":
        return None if method == "ce" else "ce"
    if baseline != "base":
        raise ValueError(f"unknown baseline {baseline!r}; allowed: {', '.join(BASELINES)}")
    loss, head = split_method(method)
    return loss if head else None


def run_values(runs: list[FinalRun]) -> dict[str, dict[int, dict[str, Any]]]:
    """cell -> seed -> metrics, failed finals as the failed-finals rule counts them."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        out.setdefault(r.cell, {})[r.seed] = failed_metrics(r.num_classes) if r.failed else r.metrics
    return out


def aggregate(runs: list[FinalRun], baseline: str = "base", adjust: str = "bh") -> list[CellRow]:
    """Per cell: mean ± std over its completed final seeds (and which failed), and its test
    accuracy against its baseline cell (same other factors), paired by seed with failed finals
    counted by the failed-finals rule, with q-values over all the report's comparisons."""
    cells: dict[str, list[FinalRun]] = {}
    for r in runs:
        cells.setdefault(r.cell, []).append(r)
    values = run_values(runs)
    rows = []
    for cell, every in cells.items():
        rs = [r for r in every if not r.failed]
        first = every[0]
        row = CellRow(
            cell=cell,
            group=first.group,
            method=first.method,
            dataset=first.dataset,
            noise_rate=first.noise_rate,
            imbalance_ratio=first.imbalance_ratio,
            weight_decay=first.weight_decay,
            n=len(rs),
            seeds=[r.seed for r in rs],
            run_ids=[r.run_id for r in rs],
            failed_seeds=[r.seed for r in every if r.failed],
            variant=first.variant,
        )
        for key in sorted({k for r in rs for k in r.metrics}):
            ms = mean_std([r.metrics.get(key) for r in rs])
            if ms:
                row.stats[key] = ms
        rows.append(row)
    by_group = {(r.group, r.method): r for r in rows}
    for row in rows:
        base_method = baseline_method(row.method, baseline)
        base = by_group.get((row.group, base_method)) if base_method is not None else None
        if base is None or base is row:
            continue
        row.comparison = paired(
            row.cell,
            base.cell,
            METRIC,
            {s: m.get(METRIC) for s, m in values[row.cell].items()},
            {s: m.get(METRIC) for s, m in values[base.cell].items()},
        )
        marks: dict[str, Any] = {}
        apply_rule(marks, values[row.cell], values[base.cell], METRIC)
        row.comparison.failed_cell = tuple(marks["failed_cell"])
        row.comparison.failed_baseline = tuple(marks["failed_baseline"])
        row.comparison.note = marks.get("note")
    adjust_all([r.comparison for r in rows if r.comparison is not None], adjustment(adjust))
    rows.sort(key=lambda r: (r.dataset, r.imbalance_ratio, r.noise_rate, r.variant is not None, r.group, r.method))
    return rows


def comparisons(rows: list[CellRow]) -> list[dict[str, Any]]:
    """Every comparison's numbers (the report's JSON format)."""
    keys = (
        "cell",
        "baseline",
        "metric",
        "n_pairs",
        "delta",
        "ci_low",
        "ci_high",
        "ci_level",
        "p",
        "p_se",
        "min_p",
        "q",
        "test",
        "p_t",
        "p_wilcoxon",
        "sd",
        "mdd",
        "seeds_needed",
        "note",
    )
    return [
        {k: getattr(r.comparison, k) for k in keys}
        | {k: list(getattr(r.comparison, k)) for k in ("seeds", "failed_cell", "failed_baseline")}
        for r in rows
        if r.comparison is not None
    ]


@dataclass
class Analysis:
    """What a report says beyond the per-cell table: the methods ranked across conditions, each
    PAL/FNPAL version's probability of improving on its base loss, and parameter importance."""

    ranking: Any = None  # pal_study.analysis.ranking.Ranking
    improvements: list[Any] = field(default_factory=list)  # pal_study.analysis.ranking.Improvement
    importance: list[Any] = field(default_factory=list)  # pal_study.analysis.importance.CellImportance
    importance_note: str | None = None
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # the claims judged across each knob
    record: StudyRecord | None = field(default=None, repr=False)  # the study's journal, for ``curves``
    _curves: dict[str, list[Any]] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def curves(self) -> dict[str, list[Any]] | None:
        """Cell -> its tuning trials (pal_study.analysis.figures.TrialCurve) from the journal, None
        without one: read when a figure first asks, so a report without figures (``--format md``)
        neither reads them nor imports matplotlib (figures' import)."""
        if self._curves is None and self.record is not None:
            from pal_study.analysis.figures import journal_curves

            self._curves = journal_curves(self.record)
        return self._curves or None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ranking": self.ranking.as_dict() if self.ranking is not None else None,
            "improvements": [i.as_dict() for i in self.improvements],
            "importance": [i.as_dict() for i in self.importance],
            "importance_note": self.importance_note,
            "sensitivity": self.sensitivity,
        }


def analyse(
    rows: list[CellRow], runs: list[FinalRun], *, run_dir: Any = None, importance: str | None = "ped_anova"
) -> Analysis:
    """Ranks over conditions (the cells' groups) on mean test accuracy, probability of improvement
    of every X+pal / X+fnpal / X+norm over X (per-seed test accuracy, across conditions), and the
    per-cell parameter importance from the study's Optuna journal in ``run_dir`` (when given)."""
    # Ranks and improvements are over the factor grid: sensitivity cells re-run a cell at fixed
    # knob values and are judged in their own section.
    rows = [r for r in rows if r.variant is None]
    runs = [f for f in runs if not f.variant and not f.failed]
    out = Analysis()
    scores: dict[str, dict[str, float]] = {}
    for r in rows:
        if METRIC in r.stats:
            scores.setdefault(r.group or "all", {})[r.method] = r.stats[METRIC][0]
    if scores:
        out.ranking = rank_methods(scores)
    per_seed: dict[tuple[str, str], list[float]] = {}
    for f in runs:
        v = f.metrics.get(METRIC)
        if v is not None:
            per_seed.setdefault((f.group or "all", f.method), []).append(v)
    pairs = sorted({(r.method, b) for r in rows if (b := baseline_method(r.method, "base"))})
    for method, base in pairs:
        x = {g: v for (g, m), v in per_seed.items() if m == method}
        y = {g: v for (g, m), v in per_seed.items() if m == base}
        if set(x) & set(y):
            out.improvements.append(probability_of_improvement(x, y, method=method, base=base))
    record = StudyRecord(run_dir) if run_dir is not None else None
    if importance:
        # Lazy: optuna's importance evaluators stay out of ``report --format md``'s start-up.
        from pal_study.analysis.importance import study_importances

        if record is not None and record.has_journal():
            out.importance = study_importances(record, evaluator=importance)
        else:
            out.importance_note = "parameter importance needs the study's Optuna journal (--runs-dir)"
    out.record = record  # the learning curves are read from it when a figure needs them
    return out


@dataclass
class StatedClaims:
    """What a study stated: its claims, their α, the protocol notes beside each verdict and the
    sensitivity knobs' values in the study's order."""

    claims: list[Any] = field(default_factory=list)  # pal_study.analysis.claims.ClaimSpec
    alpha: float = 0.05
    notes: list[list[str]] = field(default_factory=list)
    sensitivity: dict[str, list[Any]] = field(default_factory=dict)


def stated_claims(saved: list[dict[str, Any]] | None, spec: dict[str, Any] | None) -> StatedClaims:
    """From a study's saved verdicts (claims.json / summary.json) and, where kept, its resolved spec."""
    spec = spec or {}
    if saved:
        return StatedClaims(
            [ClaimSpec.model_validate(c["spec"]) for c in saved],
            float(saved[0]["alpha"]),
            [list(c.get("protocol") or []) for c in saved],
            dict(spec.get("sensitivity") or {}),
        )
    return StatedClaims(
        [ClaimSpec.model_validate(c) for c in spec.get("claims") or []],
        float(spec.get("claims_alpha", 0.05)),
        [],
        dict(spec.get("sensitivity") or {}),
    )


def study_claims(tracking: TrackingStore, parent_id: str) -> StatedClaims:
    """The claims the study stated (its parent run's ``claims.json`` and resolved spec)."""
    saved = tracking.read_file(parent_id, names.CLAIMS_FILE)
    spec = tracking.read_file(parent_id, names.RESOLVED_SPEC_FILE)
    return stated_claims(json.loads(saved) if saved else None, json.loads(spec) if spec else None)


def _factors_of(label: str) -> dict[str, Any]:
    """A cell label's factors (layout's parser), numbers as floats as the claims compare them."""
    out: dict[str, Any] = {}
    for key, value in factors_of(label).items():
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def judge_finals(
    stated: StatedClaims, runs: list[FinalRun], adjust: str = "bh"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(claims' verdicts, their verdicts across each sensitivity knob) judged on ``runs``: the one
    code path for the run's end, ``report`` from the tracking store and from the study's record."""
    if not stated.claims:
        return [], []
    cells: dict[str, CellInfo] = {}
    variants: dict[str, Variant] = {}
    for r in runs:
        if r.variant and r.parent:
            knob, value = next(iter(r.variant.items()))
            variants.setdefault(r.cell, Variant(r.cell, r.parent, knob, value))
        else:
            cells.setdefault(r.cell, CellInfo(r.cell, r.method, _factors_of(r.cell)))
    values = run_values(runs)
    results = evaluate(stated.claims, list(cells.values()), values, alpha=stated.alpha, adjust=adjust)
    for i, result in enumerate(results):
        result["protocol"] = stated.notes[i] if i < len(stated.notes) else []
    sens = judge(
        stated.claims,
        list(cells.values()),
        list(variants.values()),
        values,
        alpha=stated.alpha,
        order=stated.sensitivity,
    )
    return results, [k.as_dict() for k in sens]


def claim_results(
    tracking: TrackingStore, parent_id: str, runs: list[FinalRun], adjust: str = "bh"
) -> list[dict[str, Any]]:
    """The study's claims judged on the final runs in the tracking store (as at the study's end)."""
    return judge_finals(study_claims(tracking, parent_id), runs, adjust)[0]
