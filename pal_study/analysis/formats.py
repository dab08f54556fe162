"""Report formats: one renderer per format, each registered in ``REPORT_FORMATS`` with its name,
file extension and file in a report directory. ``render`` (``pal-study report --format``, whose
choices are the registry's names) and ``report_files`` (a report directory: every format, the
figures and the sensitivity table) read the registry; a new format is one registered function.

The renderers lay out what ``pal_study.analysis.report`` computed: its rows (``CellRow``), the
claims' verdicts and the ``Analysis`` (ranks, probability of improvement, importance, verdicts
across a sensitivity knob).

    @report_format("txt", "txt")
    def _txt(report: Report) -> str: ...
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from pal_study.analysis.answer import delta_text, pm_text, row_titles
from pal_study.analysis.claims import render_verdicts
from pal_study.analysis.importance import importance_png, render_importances
from pal_study.analysis.ranking import cd_diagram_png
from pal_study.analysis.report import GROUPS, Analysis, CellRow, comparisons
from pal_study.analysis.sensitivity import SENSITIVITY_COLUMNS, figure_png, table, table_cells
from pal_study.analysis.sensitivity import render as render_sensitivity
from pal_study.registry import Registry


@dataclass
class Report:
    """What a format renders: the rows, the claims' verdicts, the analysis, the title, and, for the
    report directory, a heading above the md table. Figures are drawn once, when a format first
    asks for them."""

    rows: list[CellRow]
    claims: list[dict[str, Any]] | None = None
    analysis: Analysis | None = None
    title: str = ""
    heading: str = ""  # md: "# heading" above the table (a report directory's comparison.md)
    _figures: dict[str, bytes] | None = field(default=None, init=False, repr=False)

    def figures(self) -> dict[str, bytes]:
        """The study's figures and the analysis' figures, by file name."""
        if self._figures is None:
            a = self.analysis
            self._figures = {**figures(self.rows, a.curves if a else None), **analysis_figures(a, self.title)}
        return self._figures


@dataclass(frozen=True)
class ReportFormat:
    name: str  # --format's value
    extension: str
    render: Callable[[Report], str]
    stem: str = "comparison"  # its file in a report directory: <stem>.<extension>
    embeds_figures: bool = False  # draws the figures into itself (one self-contained file)

    @property
    def filename(self) -> str:
        return f"{self.stem}.{self.extension}"


REPORT_FORMATS: Registry[ReportFormat] = Registry("report format")


def report_format(
    name: str, extension: str, *, stem: str = "comparison", embeds_figures: bool = False
) -> Callable[[Callable[[Report], str]], Callable[[Report], str]]:
    """Register the decorated function as the renderer of format ``name``."""

    def add(fn: Callable[[Report], str]) -> Callable[[Report], str]:
        REPORT_FORMATS.add(name, ReportFormat(name, extension, fn, stem, embeds_figures))
        return fn

    return add


# -- the comparison table as text ----------------------------------------------------------------


def _n(row: CellRow) -> str:
    k = len(row.failed_seeds)
    return f"{row.n} ({k} of {row.n + k} failed)" if k else str(row.n)


def _pm(row: CellRow, key: str, scale: float = 100.0, digits: int = 2) -> str:
    return pm_text(row.stats.get(key), scale, digits)


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
                delta_text(r.comparison),
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


def analysis_md(a: Analysis) -> list[str]:
    """The report's sections beyond the table and the claims, as markdown lines (the md format, the terminal)."""
    lines: list[str] = []
    if a.sensitivity:
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


# -- the formats, in the order the CLI lists them -------------------------------------------------


@report_format("md", "md")
def _md(report: Report) -> str:
    lines = [f"# {report.heading}", ""] if report.heading else []
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report.rows)]
    if report.claims:
        lines += ["", "## Claims", "", "```", render_verdicts(report.claims), "```"]
    if report.analysis is not None:
        lines += analysis_md(report.analysis)
    return "\n".join(lines) + "\n"


CSV_COLUMNS = [
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


@report_format("csv", "csv")
def _csv(report: Report) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in report.rows:
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


def _latex_table(header: list[str], body: list[list[str]], left: int) -> list[str]:
    esc = latex_escape
    lines = [
        r"\begin{tabular}{" + "l" * left + "r" * (len(header) - left) + "}",
        r"\toprule",
        " & ".join(esc(c) for c in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(esc(c) for c in row) + r" \\" for row in body]
    return [*lines, r"\bottomrule", r"\end{tabular}"]


@report_format("latex", "tex")
def _latex(report: Report) -> str:
    lines = _latex_table(COLUMNS, table_rows(report.rows), 2)
    if report.analysis is not None and report.analysis.sensitivity:
        lines += ["", *_latex_table(SENSITIVITY_COLUMNS, table_cells(report.analysis.sensitivity), 4)]
    return "\n".join(lines) + "\n"


@report_format("json", "json")
def _json(report: Report) -> str:
    rows, analysis = report.rows, report.analysis
    doc = {
        "comparisons": comparisons(rows),
        "cells": [{k: v for k, v in r.__dict__.items() if k != "comparison"} for r in rows],
        "claims": report.claims or [],
        **(analysis.as_dict() if analysis else {}),
    }
    return json.dumps(doc, indent=1, default=str) + "\n"


# -- html: the whole report in one self-contained file (tables, verdicts, ranks, figures inlined as
# base64 PNGs; no scripts, no external resources) that a person can open or mail.

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f2f2f2}
td:first-child,td:nth-child(2),th:first-child,th:nth-child(2){text-align:left}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:12px}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}figcaption{font-size:12px;color:#555}
img{max-width:100%;border:1px solid #eee}.sig{font-weight:600}
"""


def _table(header: list[str], rows: list[list[str]], marks: list[bool] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="sig"' if marks and marks[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@report_format("html", "html", stem="report", embeds_figures=True)
def _html(report: Report) -> str:
    marks = [r.comparison is not None and r.comparison.q is not None and r.comparison.q <= 0.05 for r in report.rows]
    return render_html(
        (COLUMNS, table_rows(report.rows), marks), report.title, report.claims, report.analysis, report.figures()
    )


def render_html(
    table: tuple[list[str], list[list[str]], list[bool]],
    title: str,
    claims: list[dict[str, Any]] | None,
    analysis: Any,
    figures: dict[str, bytes],
) -> str:
    """``table``: the comparison's header, rows as text and which rows to mark significant (the
    report builds them; this module only lays the page out)."""
    header, body, marks = table
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title or 'pal-study report')}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title or 'pal-study report')}</h1>",
        f"<p>Final seeds per cell, mean ± std (failed finals counted beside n); Δ paired by seed against "
        f"the row's baseline cell with the exact sign-flip test and its interval (the paired t-test beside "
        f"it), q adjusted over all comparisons. Generated {time.strftime('%Y-%m-%d %H:%M')}.</p>",
        "<h2>Comparison</h2>",
    ]
    parts.append(_table(header, body, marks))
    if claims:
        parts += ["<h2>Claims</h2>", f"<pre>{html.escape(render_verdicts(claims))}</pre>"]
    if analysis is not None and getattr(analysis, "sensitivity", None):
        parts += [
            "<h2>Verdicts across a knob (sensitivity)</h2>",
            f"<pre>{html.escape(render_sensitivity(analysis.sensitivity))}</pre>",
            _table(SENSITIVITY_COLUMNS, table_cells(analysis.sensitivity)),
        ]
    if analysis is not None:
        rk = analysis.ranking
        if rk is not None and rk.average_ranks:
            parts += [
                "<h2>Ranks across conditions</h2>",
                _table(["method", "average rank"], [[m, f"{rk.average_ranks[m]:.2f}"] for m in rk.methods]),
            ]
            if rk.friedman_p is not None:
                parts.append(
                    f"<p>Friedman χ² = {rk.friedman_stat:.3g}, p = {rk.friedman_p:.3g} over "
                    f"{len(rk.conditions)} conditions; post-hoc {html.escape(rk.posthoc)}"
                    + (f", critical difference {rk.critical_difference:.2f}" if rk.critical_difference else "")
                    + "</p>"
                )
            if rk.note:
                parts.append(f"<p>{html.escape(rk.note)}</p>")
        if analysis.improvements:
            parts += [
                "<h2>Probability of improvement over the base loss</h2>",
                _table(
                    ["method", "base", "conditions", "P(method > base)", "95% CI", "note"],
                    [
                        [
                            i.method,
                            i.base,
                            str(i.n_conditions),
                            "-" if i.probability is None else f"{i.probability:.2f}",
                            "-" if i.ci_low is None else f"[{i.ci_low:.2f}, {i.ci_high:.2f}]",
                            i.note or "",
                        ]
                        for i in analysis.improvements
                    ],
                ),
            ]
        if analysis.importance:
            params = sorted({p for i in analysis.importance for p in i.importances})
            parts += [
                "<h2>Parameter importance per cell</h2>",
                _table(
                    ["cell", "method", *params, "trials complete", "note"],
                    [
                        [
                            i.cell,
                            i.method,
                            *(f"{i.importances[p]:.2f}" if p in i.importances else "-" for p in params),
                            f"{i.n_complete}/{i.n_trials}",
                            i.note or "",
                        ]
                        for i in analysis.importance
                    ],
                ),
            ]
    if figures:
        parts.append("<h2>Figures</h2>")
        for name, png in figures.items():
            data = base64.b64encode(png).decode()
            parts.append(
                f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(name)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# -- entry points ---------------------------------------------------------------------------------


def render(
    rows: list[CellRow],
    fmt: str,
    claims: list[dict[str, Any]] | None = None,
    analysis: Analysis | None = None,
    title: str = "",
) -> str:
    """The comparison in format ``fmt`` (a name in ``REPORT_FORMATS``); ``claims`` (verdicts) and
    ``analysis`` (ranks, probability of improvement, importance) go into json, md and html (html
    also embeds the figures: one self-contained file)."""
    return REPORT_FORMATS.get(fmt).render(Report(rows, claims, analysis, title))


def report_files(
    rows: list[CellRow], study: str, claims: list[dict[str, Any]] | None = None, analysis: Analysis | None = None
) -> dict[str, bytes | str]:
    """A report directory, ``report/``-relative path -> content: every format (comparison.md under
    the study's name as heading), the sensitivity table, the figures (drawn once)."""
    report = Report(rows, claims, analysis, title=study, heading=study)
    files: dict[str, bytes | str] = {f"report/{f.filename}": f.render(report) for f in REPORT_FORMATS.entries()}
    if analysis is not None and analysis.sensitivity:
        files["report/sensitivity.csv"] = sensitivity_csv(analysis.sensitivity)
    files.update({f"report/{k}": v for k, v in report.figures().items()})
    return files


def sensitivity_csv(results: list[dict[str, Any]]) -> str:
    """Every comparison at every value of every sensitivity knob, one row each."""
    flat = table(results)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(flat[0]) if flat else ["knob"])
    w.writeheader()
    w.writerows(flat)
    return buf.getvalue()


def rich_table(rows: list[CellRow], title: str) -> Table:
    """The comparison table for the terminal."""
    t = Table(title=title)
    for c in COLUMNS:
        t.add_column(c, justify="left" if c in ("cell", "method") else "right")
    # A terminal cuts labels (method=nce+rce+fnpal,d…): cells go by their short titles here; the
    # files keep the labels, which name the factors.
    titles = row_titles(rows)
    cell, vs = COLUMNS.index("cell"), COLUMNS.index("vs")
    for row in table_rows(rows):
        row[cell] = titles.get(row[cell], row[cell])
        row[vs] = titles.get(row[vs], row[vs])
        t.add_row(*row)
    return t


def figures(rows: list[CellRow], curves: dict[str, list[Any]] | None = None) -> dict[str, bytes]:
    """The study's figures (pal_study/analysis/figures.py): accuracy vs noise / imbalance with CI bands,
    the forest plot of every comparison, many/medium/few, prototype and feature norms, and, from
    the Optuna journal's ``curves``, learning curves and the objective against each parameter."""
    from pal_study.analysis.figures import study_figures  # matplotlib: only where figures are drawn

    return study_figures([r for r in rows if r.variant is None], curves)


def analysis_figures(analysis: Analysis | None, study: str) -> dict[str, bytes]:
    """The critical-difference diagram and the parameter-importance heat map, where there is one."""
    out: dict[str, bytes] = {}
    if analysis is None:
        return out
    if analysis.sensitivity:
        png = figure_png(analysis.sensitivity, study)
        if png:
            out["sensitivity.png"] = png
    if analysis.ranking is not None:
        png = cd_diagram_png(
            analysis.ranking,
            f"{study}: average rank of test accuracy over {len(analysis.ranking.conditions)} conditions",
        )
        if png:
            out["critical_difference.png"] = png
    if analysis.importance:
        png = importance_png(analysis.importance, f"{study}: parameter importance per cell")
        if png:
            out["param_importance.png"] = png
    return out
