"""The answer a study was run for, in a few lines: each X+head against its base loss X (Δ test
accuracy paired by seed, its exact interval, q, the verdict of any claim that compares the two),
printed at the end of ``pal-study run`` and written on the MLflow cell runs as rounded text.

The numbers are the report's rows (``pal_study.analysis.report.aggregate``), laid out by the same
text helpers as ``pal-study report``'s table, so the run's last lines and the report agree digit
for digit. This module imports no figures, no tracking client and no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pal_study.analysis.stats import Paired, min_p, min_seeds
from pal_study.layout import cell_titles, factors_of
from pal_study.tracking.names import DELTA_TEXT, Q_TEXT, TEST_ACC_TEXT, VERDICT_TEXT

if TYPE_CHECKING:
    from pal_study.analysis.report import CellRow


def delta_text(c: Paired | None) -> str:
    """Δ in points with its sign-flip interval: ``+2.31 [+0.50, +4.10]`` (the report's column)."""
    if c is None or c.delta is None:
        return "-"
    if c.p is None:
        return f"{100 * c.delta:+.2f} (n={c.n_pairs})"
    if c.ci_low is None or c.ci_high is None:  # set together
        return f"{100 * c.delta:+.2f} (unbounded at n={c.n_pairs})"
    return f"{100 * c.delta:+.2f} [{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]"


def pm_text(stat: tuple[float, float] | None, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` as the report prints it (accuracy in %)."""
    if stat is None:
        return "-"
    m, s = stat
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


def q_text(c: Paired | None) -> str:
    return "-" if c is None or c.q is None else f"{c.q:.3g}"


def row_titles(rows: Sequence[CellRow]) -> dict[str, str]:
    """Cell label -> its short title among the report's cells (``layout.cell_titles``: what the
    study's runs and its end-of-run lines call it, for the same set of cells)."""
    labels = list(dict.fromkeys(r.cell for r in rows))
    return dict(zip(labels, cell_titles([factors_of(label) for label in labels]), strict=True))


def verdicts_by_pair(claims: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """(cell label, baseline label) -> the verdicts the claims gave that comparison (joined when
    two claims judge the same pair differently)."""
    out: dict[tuple[str, str], list[str]] = {}
    for claim in claims:
        for comp in claim.get("comparisons") or []:
            got = out.setdefault((str(comp["cell"]), str(comp["baseline"])), [])
            if comp["verdict"] not in got:
                got.append(str(comp["verdict"]))
    return {k: "/".join(v) for k, v in out.items()}


def cell_texts(row: CellRow, verdicts: Mapping[tuple[str, str], str]) -> dict[str, str]:
    """A cell's headline numbers as text (test acc, Δ, q, verdict): the UI's first columns."""
    c = row.comparison
    out = {TEST_ACC_TEXT: pm_text(row.stats.get("test_acc"))}
    if c is not None:
        out[DELTA_TEXT] = delta_text(c)
        out[Q_TEXT] = q_text(c)
        verdict = verdicts.get((row.cell, c.baseline))
        if verdict:
            out[VERDICT_TEXT] = verdict
    return out


def render_answer(
    rows: Sequence[CellRow],
    claims: Sequence[Mapping[str, Any]],
    titles: Mapping[str, str],
    *,
    adjust: str = "bh",
    alpha: float = 0.05,
    command: str | None = None,
) -> str:
    """The comparison at the end of a run: one line per X+head vs X. ``titles``: cell label ->
    its short name (labels where missing); ``command``: what prints the rest."""
    compared = [r for r in rows if r.comparison is not None and r.comparison.delta is not None]
    lines: list[str] = []
    if not compared:
        lines.append("no X+head vs X comparison: the study has no PAL/FNPAL/norm cell beside its base loss")
    else:
        verdicts = verdicts_by_pair(claims)
        lines.append(
            f"X+head vs X: test accuracy, Δ in points paired by seed [exact {round(100 * (1 - alpha))} % interval], "
            f"q ({adjust} over {len(compared)} comparisons)"
        )
        table = []
        for r in compared:
            c = r.comparison
            assert c is not None
            table.append(
                [
                    titles.get(r.cell, r.cell),
                    "vs " + titles.get(c.baseline, c.baseline),
                    "Δ " + delta_text(c),
                    "q " + q_text(c),
                    f"n={c.n_pairs}",
                    verdicts.get((r.cell, c.baseline), ""),
                ]
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        smallest = min(c.n_pairs for c in (r.comparison for r in compared) if c is not None)
        need = min_seeds(alpha)
        if smallest < need:
            lines.append(
                f"  with {smallest} seeds no difference can reach α={alpha:g} (smallest exact p "
                f"{min_p(smallest):.3g}): at least {need} final seeds for a verdict"
            )
    if command:
        lines.append(f"the rest (per cell, claims, ranks, figures): {command}")
    return "\n".join(lines)


__all__ = ["cell_texts", "delta_text", "pm_text", "q_text", "render_answer", "row_titles", "verdicts_by_pair"]
