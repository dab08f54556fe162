"""Claims a study states, and their verdicts from the final runs.

    claims:
      - {better: ce+fnpal, than: ce, where: {data.noise.rate: 0.6}, metric: test_acc}
      - {better: "*+fnpal", than: "*", where: {data.noise.rate: [0.2, 0.4, 0.6, 0.8]}}

A claim expands to comparisons: every cell whose method matches ``better`` (``*`` stands for a
loss name, the same in ``than``) and whose factors match ``where``, against the cell with the
same other factors and the method ``than``. Each comparison is paired by seed
(:func:`pal_study.stats.paired`); q-values are adjusted over all claims' comparisons together;
a comparison is ``supported`` (q < alpha, difference in the claimed direction), ``contradicted``
(q < alpha the other way) or ``inconclusive``. A claim is supported when all its comparisons
are, contradicted when any is, inconclusive otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pal_study.stats import Paired, adjust_all, paired, verdict

LOWER_IS_BETTER = ("ece", "train_loss")


class ClaimSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    better: str = Field(..., description="method, or a pattern with * for the loss, e.g. *+fnpal")
    than: str = Field(..., description="method, or a pattern with the same * (e.g. *)")
    where: dict[str, Any] = Field(default_factory=dict, description="factor: value or list of values")
    metric: Literal["test_acc", "val_acc", "val_acc_clean", "ece", "test_acc_many", "test_acc_medium",
                    "test_acc_few"] = "test_acc"

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
            if base.method == base_method and {k: v for k, v in base.factors.items() if k != "method"} == others \
                    and base is not cell:
                out.append((cell, base))
                break
    return out


def check(claims: list[ClaimSpec], cells: list[CellInfo], source: str) -> None:
    """Every claim must name at least one comparison the study makes (bad input otherwise)."""
    from pal_study.errors import ConfigError

    factor_keys = {k for c in cells for k in c.factors}
    for i, claim in enumerate(claims):
        unknown = [k for k in claim.where if k not in factor_keys]
        if unknown:
            raise ConfigError(f"where names {unknown[0]!r}, which is not a factor of this study "
                              f"(factors: {', '.join(sorted(factor_keys)) or 'none'})", source=source,
                              key=f"claims[{i}].where")
        if not expand(claim, cells):
            raise ConfigError(f"claim {claim.text()!r} matches no pair of cells of this study (methods: "
                              f"{', '.join(sorted({c.method for c in cells}))})", source=source, key=f"claims[{i}]")


def evaluate(claims: list[ClaimSpec], cells: list[CellInfo], values: dict[str, dict[int, dict[str, float]]],
             alpha: float = 0.05, adjust: str = "bh") -> list[dict[str, Any]]:
    """Verdicts. ``values``: cell label -> seed -> that final run's metrics."""
    # One family: every distinct comparison of every claim (one that two claims share counts once).
    unique: dict[tuple[str, str, str], Paired] = {}
    per_claim: list[list[Paired]] = []
    for claim in claims:
        comps = []
        for cell, base in expand(claim, cells):
            key = (cell.label, base.label, claim.metric)
            if key not in unique:
                get = lambda label: {s: m.get(claim.metric) for s, m in values.get(label, {}).items()}  # noqa: E731
                unique[key] = paired(cell.label, base.label, claim.metric, get(cell.label), get(base.label))
            comps.append(unique[key])
        per_claim.append(comps)
    adjust_all(list(unique.values()), adjust)
    out = []
    for claim, comps in zip(claims, per_claim):
        direction = "lower" if claim.metric in LOWER_IS_BETTER else "higher"
        rows = [{**c.as_dict(), "seeds": list(c.seeds), "verdict": verdict(c, alpha, direction)} for c in comps]
        verdicts = {r["verdict"] for r in rows}
        overall = ("contradicted" if "contradicted" in verdicts else
                   "supported" if rows and verdicts == {"supported"} else "inconclusive")
        out.append({"claim": claim.text(), "spec": claim.model_dump(), "alpha": alpha, "adjust": adjust,
                    "comparisons": rows, "verdict": overall})
    return out


def render_verdicts(results: list[dict[str, Any]]) -> str:
    """Plain lines for the console after a run's table and in the report."""
    lines = []
    for r in results:
        lines.append(f"claim: {r['claim']}: {r['verdict'].upper()}")
        for c in r["comparisons"]:
            if c["delta"] is None:
                nums = f"n={c['n_pairs']}"
            else:
                ci = "" if c["ci_low"] is None else f" [{100 * c['ci_low']:+.2f}, {100 * c['ci_high']:+.2f}]"
                pq = "" if c["p"] is None else f", p={c['p']:.3g}, q={c['q']:.3g}"
                nums = f"Δ {100 * c['delta']:+.2f} points{ci}, n={c['n_pairs']}{pq}"
            lines.append(f"  {c['verdict']:<12} {c['cell']} vs {c['baseline']}: {nums}")
    return "\n".join(lines)


__all__ = ["CellInfo", "ClaimSpec", "check", "evaluate", "expand", "render_verdicts"]
