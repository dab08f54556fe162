"""Study reports from the tracking store alone: per cell mean ± std over the final seeds (and how
many failed), each X+head against its base loss X of the same condition paired by seed (exact
sign-flip test and interval, the paired t-test beside it, q-values over the report), the claims'
verdicts, the verdicts across a sensitivity knob, and the figures.

    pal-study report quickstart --format md --out reports/quickstart
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from pal_study.analysis.failed_finals import num_classes
from pal_study.analysis.stats import Paired, adjust_all, paired
from pal_study.errors import ConfigError
from pal_study.metrics import mean_std
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
    loss, sep, head = method.rpartition("+")
    return loss if sep and head in ("pal", "fnpal", "norm") else None


def run_values(runs: list[FinalRun]) -> dict[str, dict[int, dict[str, Any]]]:
    """cell -> seed -> metrics, failed finals as the failed-finals rule counts them."""
    from pal_study.analysis.failed_finals import failed_metrics

    out: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        out.setdefault(r.cell, {})[r.seed] = failed_metrics(r.num_classes) if r.failed else r.metrics
    return out


def aggregate(runs: list[FinalRun], baseline: str = "base", adjust: str = "bh") -> list[CellRow]:
    """Per cell: mean ± std over its completed final seeds (and which failed), and its test
    accuracy against its baseline cell (same other factors), paired by seed with failed finals
    counted by the failed-finals rule, with q-values over all the report's comparisons."""
    from pal_study.analysis.failed_finals import apply_rule

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
        base = by_group.get((row.group, baseline_method(row.method, baseline)))
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
    adjust_all([r.comparison for r in rows if r.comparison is not None], adjust)
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


def _delta(c: Paired | None) -> str:
    if c is None or c.delta is None:
        return "-"
    if c.p is None:
        return f"{100 * c.delta:+.2f} (n={c.n_pairs})"
    if c.ci_low is None:
        return f"{100 * c.delta:+.2f} (unbounded at n={c.n_pairs})"
    return f"{100 * c.delta:+.2f} [{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]"


def _n(row: CellRow) -> str:
    k = len(row.failed_seeds)
    return f"{row.n} ({k} of {row.n + k} failed)" if k else str(row.n)


def _pm(row: CellRow, key: str, scale: float = 100.0, digits: int = 2) -> str:
    if key not in row.stats:
        return "-"
    m, s = row.stats[key]
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


COLUMNS = [
    "cell",
    "method",
    "n",
    "val acc %",
    "test acc %",
    "Δ test (points) [sign-flip CI]",
    "vs",
    "p (sign-flip)",
    "q",
    "p (paired t)",
    "ECE",
    "many/medium/few %",
]


def table_rows(rows: list[CellRow]) -> list[list[str]]:
    out = []
    for r in rows:
        groups = " / ".join(
            f"{100 * r.stats[f'test_acc_{g}'][0]:.1f}" if f"test_acc_{g}" in r.stats else "-" for g in GROUPS
        )
        out.append(
            [
                r.cell,
                r.method,
                _n(r),
                _pm(r, "val_acc"),
                _pm(r, "test_acc"),
                _delta(r.comparison),
                "-" if r.comparison is None else r.comparison.baseline,
                "-" if r.comparison is None or r.comparison.p is None else f"{r.comparison.p:.3g}",
                "-" if r.comparison is None or r.comparison.q is None else f"{r.comparison.q:.3g}",
                "-" if r.comparison is None or r.comparison.p_t is None else f"{r.comparison.p_t:.3g}",
                _pm(r, "ece", 1.0, 3),
                groups if groups != "- / - / -" else "-",
            ]
        )
    return out


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "Δ": r"$\Delta$",
    "η": r"$\eta$",
    "ρ": r"$\rho$",
}


def latex_escape(text: str) -> str:
    """Text safe in a LaTeX table cell: the ten special characters and the table's Greek."""
    return "".join(_LATEX.get(ch, ch) for ch in text)


@dataclass
class Analysis:
    """What a report says beyond the per-cell table: the methods ranked across conditions, each
    PAL/FNPAL version's probability of improving on its base loss, and parameter importance."""

    ranking: Any = None  # pal_study.analysis.ranking.Ranking
    improvements: list[Any] = field(default_factory=list)  # pal_study.analysis.ranking.Improvement
    importance: list[Any] = field(default_factory=list)  # pal_study.analysis.importance.CellImportance
    importance_note: str | None = None
    curves: dict[str, list[Any]] | None = None  # cell -> pal_study.analysis.figures.TrialCurve, from the journal
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # the claims judged across each knob

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
    from pal_study.analysis.ranking import probability_of_improvement, rank_methods

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
    if importance:
        from pathlib import Path

        from pal_study.analysis.importance import study_importances
        from pal_study.study.store import JOURNAL

        if run_dir is not None and (Path(run_dir) / JOURNAL).is_file():
            out.importance = study_importances(Path(run_dir) / JOURNAL, evaluator=importance)
        else:
            out.importance_note = "parameter importance needs the study's Optuna journal (--runs-dir)"
    if run_dir is not None:
        from pathlib import Path

        from pal_study.analysis.figures import journal_curves
        from pal_study.study.store import JOURNAL

        out.curves = journal_curves(Path(run_dir) / JOURNAL) or None
    return out


def _analysis_md(a: Analysis) -> list[str]:
    from pal_study.analysis.importance import render_importances

    lines: list[str] = []
    if a.sensitivity:
        from pal_study.analysis.sensitivity import SENSITIVITY_COLUMNS, table_cells
        from pal_study.analysis.sensitivity import render as render_sensitivity

        lines += [
            "",
            "## Verdicts across a knob (sensitivity)",
            "",
            "```",
            render_sensitivity(a.sensitivity),
            "```",
            "",
            "| " + " | ".join(SENSITIVITY_COLUMNS) + " |",
            "|" + "---|" * len(SENSITIVITY_COLUMNS),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in table_cells(a.sensitivity)]
    rk = a.ranking
    if rk is not None:
        lines += ["", "## Ranks across conditions", ""]
        if rk.average_ranks:
            lines += ["| method | average rank |", "|---|---|"]
            lines += [f"| {m} | {rk.average_ranks[m]:.2f} |" for m in rk.methods]
        test = (
            f"Friedman chi2 = {rk.friedman_stat:.3g}, p = {rk.friedman_p:.3g} over {len(rk.conditions)} conditions"
            if rk.friedman_p is not None
            else "no Friedman test"
        )
        cd = f"; Nemenyi critical difference {rk.critical_difference:.2f}" if rk.critical_difference else ""
        lines += ["", test + cd + (f" ({rk.note})" if rk.note else "")]
        if rk.dropped:
            lines += ["", "left out: " + "; ".join(f"{k}: {v}" for k, v in rk.dropped.items())]
    if a.improvements:
        lines += [
            "",
            "## Probability of improvement over the base loss (test accuracy, per seed)",
            "",
            "| method | base | conditions | P(method > base) [95% CI] |",
            "|---|---|---|---|",
        ]
        for i in a.improvements:
            p = "-" if i.probability is None else f"{i.probability:.2f}"
            if i.ci_low is not None:
                p += f" [{i.ci_low:.2f}, {i.ci_high:.2f}]"
            lines.append(f"| {i.method} | {i.base} | {i.n_conditions} | {p}{' (' + i.note + ')' if i.note else ''} |")
    if a.importance or a.importance_note:
        lines += ["", "## Parameter importance per cell", ""]
        if a.importance and all(len(i.importances) <= 1 for i in a.importance):
            searched = sorted({p for i in a.importance for p in i.importances})
            lines.append(f"one parameter searched per cell ({', '.join(searched) or 'none'}): nothing to rank")
        else:
            lines += ["```", render_importances(a.importance), "```"] if a.importance else [a.importance_note or ""]
    return lines


FORMATS = ("md", "csv", "latex", "json", "html")
EXTENSIONS = {"md": "md", "csv": "csv", "latex": "tex", "json": "json", "html": "html"}


def render(
    rows: list[CellRow],
    fmt: str,
    claims: list[dict[str, Any]] | None = None,
    analysis: Analysis | None = None,
    title: str = "",
) -> str:
    """The comparison as md, csv, latex, json or html; ``claims`` (verdicts) and ``analysis``
    (ranks, probability of improvement, importance) go into json, md and html (html also embeds
    the figures: one self-contained file)."""
    if fmt == "html":
        from pal_study.analysis.report_html import render_html

        return render_html(
            _html_table(rows),
            title,
            claims,
            analysis,
            {**figures(rows, analysis.curves if analysis else None), **analysis_figures(analysis, title)},
        )
    body = table_rows(rows)
    if fmt == "json":
        return (
            json.dumps(
                {
                    "comparisons": comparisons(rows),
                    "cells": [{k: v for k, v in r.__dict__.items() if k != "comparison"} for r in rows],
                    "claims": claims or [],
                    **(analysis.as_dict() if analysis else {}),
                },
                indent=1,
                default=str,
            )
            + "\n"
        )
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(
            [
                "cell",
                "method",
                "dataset",
                "noise_rate",
                "imbalance_ratio",
                "n",
                "seeds",
                "val_mean",
                "val_std",
                "test_mean",
                "test_std",
                "baseline",
                "n_pairs",
                "delta",
                "ci_low",
                "ci_high",
                "ci_level",
                "p",
                "q",
                "p_t",
                "mdd",
                "test",
                "ece_mean",
                "many",
                "medium",
                "few",
                "run_ids",
            ]
        )
        for r in rows:
            g = [r.stats.get(f"test_acc_{x}", (None,))[0] for x in GROUPS]
            w.writerow(
                [
                    r.cell,
                    r.method,
                    r.dataset,
                    r.noise_rate,
                    r.imbalance_ratio,
                    r.n,
                    " ".join(map(str, r.seeds)),
                    *r.stats.get("val_acc", (None, None)),
                    *r.stats.get("test_acc", (None, None)),
                    *(
                        (
                            c.baseline,
                            c.n_pairs,
                            c.delta,
                            c.ci_low,
                            c.ci_high,
                            c.ci_level,
                            c.p,
                            c.q,
                            c.p_t,
                            c.mdd,
                            c.test,
                        )
                        if (c := r.comparison)
                        else (None,) * 11
                    ),
                    r.stats.get("ece", (None,))[0],
                    *g,
                    " ".join(r.run_ids),
                ]
            )
        return buf.getvalue()
    if fmt == "latex":
        esc = latex_escape
        lines = [
            r"\begin{tabular}{" + "l" * 2 + "r" * (len(COLUMNS) - 2) + "}",
            r"\toprule",
            " & ".join(esc(c) for c in COLUMNS) + r" \\",
            r"\midrule",
        ]
        lines += [" & ".join(esc(c) for c in row) + r" \\" for row in body]
        lines += [r"\bottomrule", r"\end{tabular}"]
        if analysis is not None and analysis.sensitivity:
            from pal_study.analysis.sensitivity import SENSITIVITY_COLUMNS, table_cells

            lines += [
                "",
                r"\begin{tabular}{" + "l" * 4 + "r" * (len(SENSITIVITY_COLUMNS) - 4) + "}",
                r"\toprule",
                " & ".join(esc(c) for c in SENSITIVITY_COLUMNS) + r" \\",
                r"\midrule",
            ]
            lines += [" & ".join(esc(c) for c in row) + r" \\" for row in table_cells(analysis.sensitivity)]
            lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    if claims:
        from pal_study.analysis.claims import render_verdicts

        lines += ["", "## Claims", "", "```", render_verdicts(claims), "```"]
    if analysis is not None:
        lines += _analysis_md(analysis)
    return "\n".join(lines) + "\n"


def sensitivity_csv(results: list[dict[str, Any]]) -> str:
    """Every comparison at every value of every sensitivity knob, one row each."""
    from pal_study.analysis.sensitivity import table

    flat = table(results)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(flat[0]) if flat else ["knob"])
    w.writeheader()
    w.writerows(flat)
    return buf.getvalue()


def _html_table(rows: list[CellRow]) -> tuple[list[str], list[list[str]], list[bool]]:
    """The comparison table for report.html: header, rows as text, which rows are significant."""
    marks = [r.comparison is not None and r.comparison.q is not None and r.comparison.q <= 0.05 for r in rows]
    return COLUMNS, table_rows(rows), marks


def rich_table(rows: list[CellRow], title: str):
    from rich.table import Table

    t = Table(title=title)
    for c in COLUMNS:
        t.add_column(c, justify="left" if c in ("cell", "method") else "right")
    for row in table_rows(rows):
        t.add_row(*row)
    return t


def figures(rows: list[CellRow], curves: dict[str, list[Any]] | None = None) -> dict[str, bytes]:
    """The study's figures (pal_study/analysis/figures.py): accuracy vs noise / imbalance with CI bands,
    the forest plot of every comparison, many/medium/few, prototype and feature norms, and, from
    the Optuna journal's ``curves``, learning curves and the objective against each parameter."""
    from pal_study.analysis.figures import study_figures

    return study_figures([r for r in rows if r.variant is None], curves)


def report_files(
    rows: list[CellRow], study: str, claims: list[dict[str, Any]] | None = None, analysis: Analysis | None = None
) -> dict[str, bytes | str]:
    files: dict[str, bytes | str] = {
        "report/comparison.md": f"# {study}\n\n" + render(rows, "md", claims, analysis),
        "report/comparison.csv": render(rows, "csv"),
        "report/comparison.tex": render(rows, "latex", analysis=analysis),
        "report/comparison.json": render(rows, "json", claims, analysis),
    }
    if analysis is not None and analysis.sensitivity:
        files["report/sensitivity.csv"] = sensitivity_csv(analysis.sensitivity)
    pngs = {**figures(rows, analysis.curves if analysis else None), **analysis_figures(analysis, study)}
    files.update({f"report/{k}": v for k, v in pngs.items()})
    from pal_study.analysis.report_html import render_html

    files["report/report.html"] = render_html(_html_table(rows), study, claims, analysis, pngs)  # figures drawn once
    return files


def analysis_figures(analysis: Analysis | None, study: str) -> dict[str, bytes]:
    """The critical-difference diagram and the parameter-importance heat map, where there is one."""
    out: dict[str, bytes] = {}
    if analysis is None:
        return out
    if analysis.sensitivity:
        from pal_study.analysis.sensitivity import figure_png

        png = figure_png(analysis.sensitivity, study)
        if png:
            out["sensitivity.png"] = png
    if analysis.ranking is not None:
        from pal_study.analysis.ranking import cd_diagram_png

        png = cd_diagram_png(
            analysis.ranking,
            f"{study}: average rank of test accuracy over {len(analysis.ranking.conditions)} conditions",
        )
        if png:
            out["critical_difference.png"] = png
    if analysis.importance:
        from pal_study.analysis.importance import importance_png

        png = importance_png(analysis.importance, f"{study}: parameter importance per cell")
        if png:
            out["param_importance.png"] = png
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
    from pal_study.analysis.claims import ClaimSpec

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
    out: dict[str, Any] = {}
    for part in label.split(","):
        key, _, value = part.partition("=")
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
    from pal_study.analysis.claims import CellInfo, evaluate
    from pal_study.analysis.sensitivity import Variant, judge

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
