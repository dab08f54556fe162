"""Verdicts across a knob the paper leaves open (a study's ``sensitivity:`` section).

    sensitivity: {head.scale: [2, 3, 5, 10, 20, 40]}

For each value, every cell a claim compares and the knob applies to (the scale: fnpal and norm
cells) has a *sensitivity cell*: its best tuned config with the knob fixed at the value, re-run
over the study's final seeds. The claims are then judged again with those finals in place of the
tuned cell's, against the same baselines (whose finals the knob does not touch), so an answer
reads "CE+FNPAL > CE at η = 0.4 for s ≤ 5, inconclusive for s ≥ 10".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pal_study.analysis.claims import CellInfo, ClaimSpec, evaluate


@dataclass(frozen=True)
class Variant:
    """A sensitivity cell: ``label`` re-runs ``parent``'s (a cell label) best config with ``knob`` = ``value``."""

    label: str
    parent: str
    knob: str
    value: Any


@dataclass
class KnobResult:
    knob: str
    values: list[Any]
    claims: list[dict[str, Any]] = field(default_factory=list)  # claim, by_value: [{value, verdict, comparisons}]

    def as_dict(self) -> dict[str, Any]:
        return {"knob": self.knob, "values": self.values, "claims": self.claims}


def _values_in_order(variants: list[Variant], knob: str, order: list[Any] | None) -> list[Any]:
    seen: list[Any] = []
    for v in variants:
        if v.knob == knob and v.value not in seen:
            seen.append(v.value)
    if order:
        return [v for v in order if v in seen] + [v for v in seen if v not in order]
    try:
        return sorted(seen)
    except TypeError:
        return seen


def judge(
    claims: list[ClaimSpec],
    cells: list[CellInfo],
    variants: list[Variant],
    values: dict[str, dict[int, dict[str, Any]]],
    alpha: float = 0.05,
    order: dict[str, list[Any]] | None = None,
) -> list[KnobResult]:
    """The claims judged at each value of each knob. ``cells``: the factor grid's cells (no
    sensitivity cells); ``values``: label -> seed -> metrics, for factor and sensitivity cells."""
    if not claims or not variants:
        return []
    by_label = {c.label: c for c in cells}
    out = []
    for knob in dict.fromkeys(v.knob for v in variants):
        result = KnobResult(knob, _values_in_order(variants, knob, (order or {}).get(knob)))
        per_claim: list[list[dict[str, Any]]] = [[] for _ in claims]
        for value in result.values:
            swap = {v.parent: v for v in variants if v.knob == knob and v.value == value}
            # The sensitivity cell stands where its parent stood: same method and factors, so a
            # claim pairs it with the same baseline; its label points at its own finals.
            pool = [
                CellInfo(swap[c.label].label, c.method, c.factors) if c.label in swap else c
                for c in cells
                if c.label in by_label
            ]
            for i, r in enumerate(evaluate(claims, pool, values, alpha=alpha)):
                for comp in r["comparisons"]:
                    comp["parent"] = next((v.parent for v in swap.values() if v.label == comp["cell"]), comp["cell"])
                per_claim[i].append({"value": value, "verdict": r["verdict"], "comparisons": r["comparisons"]})
        result.claims = [
            {"claim": claim.text(), "by_value": rows} for claim, rows in zip(claims, per_claim, strict=False)
        ]
        out.append(result)
    return out


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def render(results: list[KnobResult] | list[dict[str, Any]]) -> str:
    """Plain lines: per knob and claim, the verdict at each value, then each comparison's Δ by value."""
    lines = []
    for r in results:
        d = r.as_dict() if isinstance(r, KnobResult) else r
        for c in d["claims"]:
            verdicts = ", ".join(f"{_fmt(b['value'])}: {b['verdict']}" for b in c["by_value"])
            lines.append(f"sensitivity of {c['claim']} to {d['knob']}: {verdicts}")
            rows: dict[str, list[str]] = {}
            for b in c["by_value"]:
                for comp in b["comparisons"]:
                    name = f"{comp.get('parent', comp['cell'])} vs {comp['baseline']}"
                    delta = "-" if comp["delta"] is None else f"{100 * comp['delta']:+.1f}"
                    mark = {"supported": "+", "contradicted": "−"}.get(comp["verdict"], "")
                    rows.setdefault(name, []).append(f"{_fmt(b['value'])}: {delta}{mark}")
            for name, cells in rows.items():
                lines.append(f"  {name}: Δ points {'; '.join(cells)}")
    if lines:
        lines.append("  (+ supported, − contradicted at the claim's α; otherwise inconclusive)")
    return "\n".join(lines)


def table(results: list[KnobResult] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per knob, value and comparison (csv / latex)."""
    out = []
    for r in results:
        d = r.as_dict() if isinstance(r, KnobResult) else r
        for c in d["claims"]:
            for b in c["by_value"]:
                for comp in b["comparisons"]:
                    out.append(
                        {
                            "knob": d["knob"],
                            "value": b["value"],
                            "claim": c["claim"],
                            "claim_verdict": b["verdict"],
                            "cell": comp.get("parent", comp["cell"]),
                            "sensitivity_cell": comp["cell"],
                            "baseline": comp["baseline"],
                            "n_pairs": comp["n_pairs"],
                            "delta": comp["delta"],
                            "ci_low": comp["ci_low"],
                            "ci_high": comp["ci_high"],
                            "p": comp["p"],
                            "verdict": comp["verdict"],
                        }
                    )
    return out


SENSITIVITY_COLUMNS = ["knob", "value", "cell", "vs", "n", "Δ (points)", "interval", "p", "verdict", "claim verdict"]


def table_cells(results: list[KnobResult] | list[dict[str, Any]]) -> list[list[str]]:
    """The flat rows as text, in SENSITIVITY_COLUMNS order (md, html, latex)."""
    out = []
    for r in table(results):
        pct = lambda v: "-" if v is None else f"{100 * v:+.2f}"  # noqa: E731
        interval = (
            "-"
            if r["delta"] is None
            else (f"[{pct(r['ci_low'])}, {pct(r['ci_high'])}]" if r["ci_low"] is not None else "unbounded")
        )
        out.append(
            [
                r["knob"],
                _fmt(r["value"]),
                r["cell"],
                r["baseline"],
                str(r["n_pairs"]),
                pct(r["delta"]),
                interval,
                "-" if r["p"] is None else f"{r['p']:.3g}",
                r["verdict"],
                r["claim_verdict"],
            ]
        )
    return out


def figure_png(results: list[KnobResult] | list[dict[str, Any]], title: str = "") -> bytes | None:
    """Δ with its interval against the knob's value, one line per comparison, one panel per knob
    and claim; None when there is nothing to draw."""
    panels = []
    for r in results:
        d = r.as_dict() if isinstance(r, KnobResult) else r
        for c in d["claims"]:
            panels.append((d["knob"], c))
    if not panels:
        return None
    from pal_study.analysis.figures import _figure, _png  # matplotlib: only where the figure is drawn

    fig = _figure((8.5, 3.6 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (knob, claim) in zip(axes, panels, strict=False):
        series: dict[str, list[tuple[Any, Any, Any, Any, str]]] = {}
        for b in claim["by_value"]:
            for comp in b["comparisons"]:
                name = f"{comp.get('parent', comp['cell'])} vs {comp['baseline']}"
                series.setdefault(name, []).append(
                    (b["value"], comp["delta"], comp["ci_low"], comp["ci_high"], comp["verdict"])
                )
        xs_all = [x for pts in series.values() for x, *_ in pts if isinstance(x, (int, float))]
        numeric = len(xs_all) == sum(len(p) for p in series.values())
        log = numeric and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8
        cats = [] if numeric else list(dict.fromkeys(str(x) for pts in series.values() for x, *_ in pts))
        n = max(1, len(series))
        for j, (name, pts) in enumerate(series.items()):
            # A small sideways offset keeps the intervals of different comparisons apart.
            off = (j - (n - 1) / 2) * 0.035
            xs = []
            for x, *_ in pts:
                if numeric:
                    xs.append(x * math.exp(off) if log else x + off * (max(xs_all) - min(xs_all) or 1))
                else:
                    xs.append(cats.index(str(x)) + off * 3)
            ys = [None if dl is None else 100 * dl for _, dl, _, _, _ in pts]
            line = ax.plot(
                [x for x, y in zip(xs, ys, strict=False) if y is not None],
                [y for y in ys if y is not None],
                marker="o",
                linewidth=1.2,
                markersize=4,
                label=name,
            )[0]
            for x, (_, dl, lo, hi, verdict) in zip(xs, pts, strict=False):
                if dl is None:
                    continue
                if lo is not None and hi is not None:
                    ax.plot([x, x], [100 * lo, 100 * hi], color=line.get_color(), linewidth=1.0, alpha=0.7)
                if verdict != "inconclusive":
                    ax.plot(
                        [x],
                        [100 * dl],
                        marker="o",
                        markersize=7,
                        color=line.get_color(),
                        markeredgecolor="black",
                        linestyle="none",
                    )
        ax.axhline(0.0, color="black", linewidth=0.8)
        if log:
            ax.set_xscale("log")
        if cats:
            ax.set_xticks(range(len(cats)), cats)
        elif numeric:
            ticks = sorted(set(xs_all))
            ax.set_xticks(ticks, [_fmt(t) for t in ticks])
            ax.minorticks_off()
        verdicts = ", ".join(f"{_fmt(b['value'])}: {b['verdict']}" for b in claim["by_value"])
        ax.set_title(f"{claim['claim']}\n{knob} → {verdicts}", fontsize=8.5)
        ax.set_xlabel(knob, fontsize=8.5)
        ax.set_ylabel("Δ (points) vs baseline", fontsize=8.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best", frameon=False)
    fig.suptitle(
        (title + ": " if title else "") + "verdicts across the knob (bars: exact 95 % intervals; filled dots: decided)",
        fontsize=9,
    )
    return _png(fig)


__all__ = ["SENSITIVITY_COLUMNS", "KnobResult", "Variant", "figure_png", "judge", "render", "table", "table_cells"]
