"""``report.html``: the whole report in one self-contained file (tables, verdicts, ranks, figures
inlined as base64 PNGs; no scripts, no external resources) that a person can open or mail."""

from __future__ import annotations

import base64
import html
import time
from typing import Any

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
        from pal_study.analysis.claims import render_verdicts

        parts += ["<h2>Claims</h2>", f"<pre>{html.escape(render_verdicts(claims))}</pre>"]
    if analysis is not None and getattr(analysis, "sensitivity", None):
        from pal_study.analysis.sensitivity import SENSITIVITY_COLUMNS, table_cells
        from pal_study.analysis.sensitivity import render as render_sensitivity

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
