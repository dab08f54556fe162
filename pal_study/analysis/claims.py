"""Claims a study states, and their verdicts from the final runs.

    claims:
      - {better: ce+fnpal, than: ce, where: {data.noise.rate: 0.6}, metric: test_acc}
      - {better: "*+fnpal", than: "*", where: {data.noise.rate: [0.2, 0.4, 0.6, 0.8]}}

A claim expands to comparisons: every cell whose method matches ``better`` (``*`` stands for a
loss name, the same in ``than``) and whose factors match ``where``, against the cell with the
same other factors and the method ``than``. Each comparison is paired by seed and tested with
the exact sign-flip test (:func:`pal_study.analysis.stats.paired`). A comparison is ``supported`` when
its unadjusted p <= alpha and the difference has the claimed sign, ``contradicted`` when the
difference has the other sign and its p, Holm-adjusted over the claim's own comparisons, is
<= alpha, ``inconclusive`` otherwise. A claim is supported when it has comparisons and all are
supported (an intersection-union test: no adjustment needed, since every one must reject),
contradicted when any is contradicted (Holm keeps the chance of a false contradiction <= alpha),
inconclusive otherwise. The report-wide q (``adjust``, BH by default) is on the rows for display
only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pal_study.analysis.failed_finals import apply_rule
from pal_study.analysis.stats import Paired, adjust_all, adjustment, paired, power_line
from pal_study.analysis.stats import adjust as adjust_p
from pal_study.errors import ConfigError

LOWER_IS_BETTER = ("ece", "train_loss")
RULE = (
    "supported: every comparison p ≤ α in the claimed direction (intersection–union); "
    "contradicted: any comparison against it with Holm-adjusted p ≤ α"
)


class ClaimSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    better: str = Field(..., description="method, or a pattern with * for the loss, e.g. *+fnpal")
    than: str = Field(..., description="method, or a pattern with the same * (e.g. *)")
    where: dict[str, Any] = Field(default_factory=dict, description="factor: value or list of values")
    metric: Literal[
        "test_acc", "val_acc", "val_acc_clean", "ece", "test_acc_many", "test_acc_medium", "test_acc_few"
    ] = "test_acc"

    def text(self) -> str:
        where = ", ".join(f"{k} in {v}" if isinstance(v, list) else f"{k}={v}" for k, v in self.where.items())
        return f"{self.better} better than {self.than} on {self.metric}" + (f" where {where}" if where else "")


@dataclass(frozen=True)
class CellInfo:
    label: str
    method: str
    factors: dict[str, Any]


def _pattern(text: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(text).replace(r"\*", "(?P<loss>[a-z0-9+]+?)") + "$")


def _matches(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, list):
        return any(_matches(value, w) for w in wanted)
    if isinstance(value, (int, float)) and isinstance(wanted, (int, float)):
        return float(value) == float(wanted)
    return str(value) == str(wanted)


def expand(claim: ClaimSpec, cells: list[CellInfo]) -> list[tuple[CellInfo, CellInfo]]:
    """(cell, baseline cell) pairs the claim is about, in the study's cell order."""
    better = _pattern(claim.better)
    out = []
    for cell in cells:
        m = better.match(cell.method)
        if m is None or not all(_matches(cell.factors.get(k), v) for k, v in claim.where.items()):
            continue
        base_method = claim.than.replace("*", m.group("loss")) if "*" in claim.than else claim.than
        others = {k: v for k, v in cell.factors.items() if k != "method"}
        for base in cells:
            if (
                base.method == base_method
                and {k: v for k, v in base.factors.items() if k != "method"} == others
                and base is not cell
            ):
                out.append((cell, base))
                break
    return out


def check(claims: list[ClaimSpec], cells: list[CellInfo], source: str) -> None:
    """Every claim must name at least one comparison the study makes (bad input otherwise)."""
    factor_keys = {k for c in cells for k in c.factors}
    for i, claim in enumerate(claims):
        unknown = [k for k in claim.where if k not in factor_keys]
        if unknown:
            raise ConfigError(
                f"where names {unknown[0]!r}, which is not a factor of this study "
                f"(factors: {', '.join(sorted(factor_keys)) or 'none'})",
                source=source,
                key=f"claims[{i}].where",
            )
        if not expand(claim, cells):
            raise ConfigError(
                f"claim {claim.text()!r} matches no pair of cells of this study (methods: "
                f"{', '.join(sorted({c.method for c in cells}))})",
                source=source,
                key=f"claims[{i}]",
            )


def _verdict(c: Paired, q_holm: float | None, alpha: float, direction: str) -> str:
    if c.p is None or c.delta is None or c.delta == 0:
        return "inconclusive"
    good = c.delta > 0 if direction == "higher" else c.delta < 0
    if good:
        return "supported" if c.p <= alpha else "inconclusive"
    return "contradicted" if q_holm is not None and q_holm <= alpha else "inconclusive"


def _metric_by_seed(values: dict[str, dict[int, dict[str, float]]], label: str, metric: str) -> dict[int, Any]:
    return {s: m.get(metric) for s, m in values.get(label, {}).items()}


def evaluate(
    claims: list[ClaimSpec],
    cells: list[CellInfo],
    values: dict[str, dict[int, dict[str, float]]],
    alpha: float = 0.05,
    adjust: str = "bh",
) -> list[dict[str, Any]]:
    """Verdicts. ``values``: cell label -> seed -> that final run's metrics. ``adjust`` sets the
    report-wide ``q`` shown on the rows (over all claims' distinct comparisons); the verdicts use
    the unadjusted p (supported) and Holm within each claim (``q_holm``, contradicted)."""
    unique: dict[tuple[str, str, str], Paired] = {}  # a comparison two claims share is computed once
    per_claim: list[list[Paired]] = []
    for claim in claims:
        comps = []
        for cell, base in expand(claim, cells):
            key = (cell.label, base.label, claim.metric)
            if key not in unique:
                unique[key] = paired(
                    cell.label,
                    base.label,
                    claim.metric,
                    _metric_by_seed(values, cell.label, claim.metric),
                    _metric_by_seed(values, base.label, claim.metric),
                    confidence=1.0 - alpha,
                )
            comps.append(unique[key])
        per_claim.append(comps)
    adjust_all(list(unique.values()), adjustment(adjust))
    out = []
    for claim, comps in zip(claims, per_claim, strict=False):
        direction = "lower" if claim.metric in LOWER_IS_BETTER else "higher"
        holm = adjust_p([c.p for c in comps], "holm")
        rows = [
            {
                **c.as_dict(),
                "seeds": list(c.seeds),
                "q_holm": q,
                "verdict": _verdict(c, q, alpha, direction),
                "power": power_line(c, alpha),
            }
            for c, q in zip(comps, holm, strict=False)
        ]
        for row in rows:  # failed finals: counted (accuracy) or the comparison left undecided
            apply_rule(row, values.get(row["cell"], {}), values.get(row["baseline"], {}), claim.metric)
        verdicts = {r["verdict"] for r in rows}
        overall = (
            "contradicted"
            if "contradicted" in verdicts
            else "supported"
            if rows and verdicts == {"supported"}
            else "inconclusive"
        )
        out.append(
            {
                "claim": claim.text(),
                "spec": claim.model_dump(),
                "alpha": alpha,
                "adjust": adjust,
                "rule": RULE,
                "comparisons": rows,
                "verdict": overall,
            }
        )
    return out


def _g(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def render_verdicts(results: list[dict[str, Any]]) -> str:
    """Plain lines for the console after a run's table and in the report: per comparison its
    verdict, Δ (points) with the exact interval, n, the sign-flip p, Holm's q within the claim and
    the paired t-test's p in brackets, then what the seeds can detect."""
    lines = []
    for r in results:
        lines.append(f"claim: {r['claim']}: {r['verdict'].upper()}")
        for note in r.get("protocol") or []:
            lines.append(f"  protocol: {note}")
        for c in r["comparisons"]:
            n = c["n_pairs"]
            if c["delta"] is None:
                nums = f"n={n}"
            elif c["p"] is None:
                nums = f"Δ {100 * c['delta']:+.2f} points, n={n}, no test"
            else:
                ci = (
                    f"interval unbounded at n={n}"
                    if c["ci_low"] is None
                    else f"[{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}]"
                )
                nums = (
                    f"Δ {100 * c['delta']:+.2f} points {ci}, n={n}, p={_g(c['p'])}, "
                    f"q_holm={_g(c.get('q_holm'))} (t: p={_g(c.get('p_t'))})"
                )
            lines.append(f"  {c['verdict']:<12} {c['cell']} vs {c['baseline']}: {nums}")
            if c.get("note"):
                lines.append(f"{'':15}{c['note']}")
            if c.get("power"):
                lines.append(f"{'':15}{c['power']}")
    return "\n".join(lines)


__all__ = ["CellInfo", "ClaimSpec", "check", "evaluate", "expand", "render_verdicts"]
