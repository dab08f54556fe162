"""Ranking methods across conditions, and the probability that a method improves on its base.

A *condition* is one data set × noise rate × imbalance ratio: the cells of a study that differ
only in the method. Two views across conditions:

**Ranks (Demšar 2006).** Per condition the methods are ranked on the condition's mean metric
(higher is better; rank 1 = best; ties share the average rank, ``scipy.stats.rankdata`` on the
negated scores). The average ranks are tested with the Friedman test
(``scipy.stats.friedmanchisquare``, with its tie correction) and compared pairwise with the
Nemenyi post-hoc test (``scikit_posthocs.posthoc_nemenyi_friedman``'s arithmetic, in
:func:`nemenyi_friedman`) or, on request, Conover's test with Holm-adjusted p-values
(``scikit_posthocs.posthoc_conover_friedman(p_adjust="holm")``).
The post-hoc p-values are reported whatever the Friedman p; Demšar reads them only once the
Friedman test rejects. The Nemenyi critical difference is
``CD = q_alpha * sqrt(k (k + 1) / (6 N))`` with ``q_alpha`` the studentized range quantile over
``sqrt(2)`` (``scipy.stats.studentized_range``; 2.343 for k = 3 and 2.569 for k = 4 at 0.05).
The CD diagram is ``scikit_posthocs.critical_difference_diagram`` drawn on a matplotlib
``Figure`` (Agg canvas, PNG bytes; no pyplot state is touched), with the CD bar drawn above the
rank axis here (the library's own ``cd=`` bar overlaps the tick labels).

Only complete blocks are tested: a method missing (or NaN/None) in a condition makes the table
incomplete, and either the incomplete conditions or the incomplete methods are left out —
whichever keeps more values — and recorded in ``Ranking.dropped``.

**Probability of improvement (Agarwal et al. 2021).** This follows rliable's definition without
depending on rliable: per condition m, ``P(X_m > Y_m)`` is the Mann-Whitney U statistic of the
method's per-seed values X_m against its base's Y_m divided by ``n_m * k_m`` (ties count 1/2;
``scipy.stats.mannwhitneyu``), averaged over the conditions. Its 95 % interval is a stratified
percentile bootstrap (``scipy.stats.bootstrap`` with every condition's X and Y passed as separate
samples, so each is resampled independently within its condition, with a fixed seed). A sample
of one value resamples to itself, so it is held fixed; when every sample has one value (one seed
per condition) there is nothing to resample and the interval is None, with a note.

Edge cases give a ``note`` instead of an exception.
"""

from __future__ import annotations

import inspect
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

POSTHOCS = ("nemenyi", "conover-holm")


def _finite(v: Any) -> bool:
    if v is None:
        return False
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _clean(v: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python floats (for JSON)."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


# --------------------------------------------------------------------------- ranking


@dataclass
class Ranking:
    methods: list[str]  # in order of average rank (best first)
    conditions: list[str]  # the conditions used (complete blocks only)
    average_ranks: dict[str, float]  # rank 1 = best (higher metric is better)
    friedman_stat: float | None
    friedman_p: float | None
    posthoc: str  # "nemenyi" or "conover-holm"
    pairwise_p: dict[str, dict[str, float]]  # method -> method -> adjusted p
    critical_difference: float | None  # Nemenyi CD at alpha, or None
    dropped: dict[str, str]  # condition or method -> why it was left out
    note: str | None  # why there is no test
    alpha: float = 0.05

    def as_dict(self) -> dict:
        return _clean(asdict(self))


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference for k methods over n conditions (Demšar 2006, eq. 5)."""
    q_alpha = float(stats.studentized_range.ppf(1.0 - alpha, k, np.inf)) / math.sqrt(2.0)
    return q_alpha * math.sqrt(k * (k + 1) / (6.0 * n))


def _complete_table(scores: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str], dict[str, str]]:
    """The conditions and methods of the largest of the candidate complete tables, and what was dropped."""
    dropped: dict[str, str] = {}
    conditions = [str(c) for c in scores]
    methods: list[str] = []
    for c in scores:
        for m in scores[c] or {}:
            if str(m) not in methods:
                methods.append(str(m))
    present = {(str(c), str(m)) for c in scores for m, v in (scores[c] or {}).items() if _finite(v)}
    nan_cells = {(str(c), str(m)) for c in scores for m, v in (scores[c] or {}).items() if not _finite(v)}

    def why(c: str, m: str) -> str:
        return "NaN/None" if (c, m) in nan_cells else "missing"

    # Conditions with no value at all carry nothing: always dropped.
    empty = [c for c in conditions if not any((c, m) in present for m in methods)]
    for c in empty:
        dropped[c] = "condition: no finite value for any method"
    conditions = [c for c in conditions if c not in empty]
    if not conditions:
        return [], [], dropped

    def size(cs: Sequence[str], ms: Sequence[str]) -> int:
        return len(cs) * len(ms)

    # A: keep every method present in all conditions.  B: keep every condition with all methods.
    # C: greedily drop the line (condition or method) with the most holes.
    cand_a = (conditions, [m for m in methods if all((c, m) in present for c in conditions)])
    cand_b = ([c for c in conditions if all((c, m) in present for m in methods)], methods)
    cs, ms = list(conditions), list(methods)
    while True:
        holes_c = {c: sum((c, m) not in present for m in ms) for c in cs}
        holes_m = {m: sum((c, m) not in present for c in cs) for m in ms}
        if not any(holes_c.values()):
            break
        worst_c = max(cs, key=lambda c: holes_c[c] / len(ms))
        worst_m = max(ms, key=lambda m: holes_m[m] / len(cs))
        if holes_m[worst_m] / len(cs) > holes_c[worst_c] / len(ms):
            ms.remove(worst_m)
        else:
            cs.remove(worst_c)
    cand_c = (cs, ms)
    # Most values first; on a tie keep more methods (they are what is ranked).
    best_cs, best_ms = max((cand_b, cand_a, cand_c), key=lambda t: (size(*t), len(t[1])))

    for m in methods:
        if m not in best_ms:
            holes = [c for c in conditions if (c, m) not in present]
            if holes:
                dropped[m] = "method: " + ", ".join(f"{why(c, m)} in {c}" for c in holes)
            else:
                dropped[m] = "method: left out to keep a complete table"
    for c in conditions:
        if c not in best_cs:
            holes = [m for m in best_ms if (c, m) not in present]
            if holes:
                dropped[c] = "condition: " + ", ".join(f"{m} {why(c, m)}" for m in holes)
            else:
                dropped[c] = "condition: left out to keep a complete table"
    return best_cs, best_ms, dropped


def rank_methods(
    scores: dict[str, dict[str, float]], alpha: float = 0.05, posthoc: Literal["nemenyi", "conover-holm"] = "nemenyi"
) -> Ranking:
    """scores: condition -> method -> the condition's mean metric (higher is better).

    Uses only methods present in every kept condition (drop incomplete conditions or methods,
    whichever keeps more data, and record what was dropped and why). ``posthoc``: Nemenyi (with
    its critical difference) or Conover's test with Holm-adjusted p-values.
    """
    if posthoc not in POSTHOCS:
        raise ValueError(f"posthoc must be one of {POSTHOCS}, not {posthoc!r}")
    conditions, methods, dropped = _complete_table(scores)
    notes: list[str] = []
    empty = Ranking(
        methods=[],
        conditions=conditions,
        average_ranks={},
        friedman_stat=None,
        friedman_p=None,
        posthoc=posthoc,
        pairwise_p={},
        critical_difference=None,
        dropped=dropped,
        note=None,
        alpha=alpha,
    )
    if not conditions or not methods:
        empty.conditions = []
        empty.note = "no complete condition × method table: nothing to rank"
        return empty

    values = np.array([[float(scores[c][m]) for m in methods] for c in conditions], dtype=float)
    ranks = stats.rankdata(-values, axis=1, method="average")
    mean_ranks = ranks.mean(axis=0)
    order = sorted(range(len(methods)), key=lambda j: (mean_ranks[j], j))
    average_ranks = {methods[j]: float(mean_ranks[j]) for j in order}
    ranking = Ranking(
        methods=[methods[j] for j in order],
        conditions=conditions,
        average_ranks=average_ranks,
        friedman_stat=None,
        friedman_p=None,
        posthoc=posthoc,
        pairwise_p={},
        critical_difference=None,
        dropped=dropped,
        note=None,
        alpha=alpha,
    )
    n, k = values.shape
    if k < 3 or n < 2:
        parts = []
        if k < 3:
            parts.append(f"{k} method(s)")
        if n < 2:
            parts.append(f"{n} condition(s)")
        ranking.note = f"no Friedman test: {' and '.join(parts)} (it needs at least 3 methods and 2 conditions)"
        return ranking
    if np.all(ranks == ranks[:, :1]):
        ranking.note = "all methods tied in every condition: the Friedman statistic is undefined"
        return ranking

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.friedmanchisquare(*(values[:, j] for j in range(k)))
    stat, p = float(res.statistic), float(res.pvalue)
    if math.isfinite(stat) and math.isfinite(p):
        ranking.friedman_stat, ranking.friedman_p = stat, p
    else:
        notes.append("Friedman statistic undefined")

    # Negated so that the post-hoc tests rank exactly as above (their p-values are two-sided).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pmat = nemenyi_friedman(-values) if posthoc == "nemenyi" else _conover_holm(-values)
        at = {m: j for j, m in enumerate(methods)}
        pairwise = {a: {b: float(pmat[at[a], at[b]]) for b in ranking.methods if b != a} for a in ranking.methods}
        if all(math.isfinite(v) for row in pairwise.values() for v in row.values()):
            ranking.pairwise_p = pairwise
        else:
            notes.append(f"{posthoc} p-values undefined")
    except Exception as exc:
        notes.append(f"{posthoc} post-hoc failed: {exc}")
    if posthoc == "nemenyi":
        ranking.critical_difference = nemenyi_cd(k, n, alpha)
    ranking.note = "; ".join(notes) or None
    return ranking


def nemenyi_friedman(values: np.ndarray) -> np.ndarray:
    """Nemenyi's pairwise p-values after the Friedman test of a complete table (rows: blocks,
    columns: groups; each row ranked, higher values ranking higher): a groups × groups matrix, 1
    on the diagonal. The arithmetic of ``scikit_posthocs.posthoc_nemenyi_friedman`` on such a
    table, step for step (tests/analysis/test_ranking.py checks the two are equal to the bit):
    importing scikit-posthocs (pandas, matplotlib, seaborn) would cost ``report --format md``
    half a second for these few lines."""
    n, k = values.shape
    mean_ranks = stats.rankdata(values, axis=1, method="average").mean(axis=0)
    out = np.zeros((k, k))
    upper, lower = np.triu_indices(k, 1), np.tril_indices(k, -1)
    differences = np.abs(mean_ranks[upper[0]] - mean_ranks[upper[1]])
    q_values = differences / np.sqrt(k * (k + 1.0) / (6.0 * n))
    out[upper] = stats.studentized_range.sf(q_values * np.sqrt(2.0), k, np.inf)
    out[lower] = out.T[lower]
    np.fill_diagonal(out, 1)
    return out


def _conover_holm(values: np.ndarray) -> np.ndarray:
    """Conover's pairwise p-values, Holm-adjusted (scikit-posthocs), as :func:`nemenyi_friedman`."""
    import scikit_posthocs as sp

    return np.asarray(sp.posthoc_conover_friedman(values, p_adjust="holm").to_numpy(), dtype=float)


def cd_diagram_png(ranking: Ranking, title: str) -> bytes | None:
    """Critical difference diagram (scikit-posthocs) as PNG bytes; None when there is nothing to draw."""
    if len(ranking.methods) < 2 or not ranking.pairwise_p:
        return None
    import pandas as pd
    import scikit_posthocs as sp
    from matplotlib.figure import Figure

    ms = ranking.methods
    sig = pd.DataFrame(1.0, index=ms, columns=ms)
    for a, row in ranking.pairwise_p.items():
        for b, p in row.items():
            sig.loc[a, b] = p
    fig = Figure(figsize=(7.0, 1.2 + 0.32 * len(ms)))
    ax = fig.subplots()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp.critical_difference_diagram(
            pd.Series(ranking.average_ranks),
            sig,
            ax=ax,
            alpha=ranking.alpha,
            label_fmt_left="{label} ({rank:.2f})",
            label_fmt_right="({rank:.2f}) {label}",
        )
    cd = ranking.critical_difference
    if cd is not None:  # drawn here, clear of the tick labels (scikit-posthocs' cd= overlaps them)
        x0 = min(ranking.average_ranks.values())
        ax.plot([x0, x0 + cd], [1.6, 1.6], color="k", lw=2, clip_on=False)
        ax.plot([x0, x0], [1.45, 1.75], color="k", lw=1, clip_on=False)
        ax.plot([x0 + cd, x0 + cd], [1.45, 1.75], color="k", lw=1, clip_on=False)
        ax.text(x0 + cd / 2, 1.85, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=9)
        ax.set_ylim(top=2.6)
    subtitle = f"{ranking.posthoc}, α={ranking.alpha:g}, N={len(ranking.conditions)}"
    if ranking.friedman_p is not None:
        subtitle += f", Friedman p={ranking.friedman_p:.3g}"
    ax.set_title(f"{title}\n{subtitle}" if title else subtitle, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


# --------------------------------------------------------------------------- improvement


@dataclass
class Improvement:
    method: str
    base: str
    n_conditions: int
    probability: float | None
    ci_low: float | None
    ci_high: float | None
    note: str | None
    conditions: list[str] = field(default_factory=list)  # the conditions used

    def as_dict(self) -> dict:
        return _clean(asdict(self))


def _u_fraction(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mann-Whitney U of x against y over n·k: P(X > Y) + P(X = Y)/2."""
    u = stats.mannwhitneyu(x, y, axis=axis, method="asymptotic").statistic
    return np.asarray(u) / (x.shape[axis] * y.shape[axis])


def _rng_kw(seed: int) -> dict[str, Any]:
    # scipy >= 1.15 takes ``rng``; older releases only ``random_state``.
    name = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def probability_of_improvement(
    x: dict[str, list[float]],
    y: dict[str, list[float]],
    *,
    method: str,
    base: str,
    seed: int = 0,
    n_resamples: int = 2000,
) -> Improvement:
    """x, y: condition -> per-seed values of the method and of its base in that condition.

    Only conditions present in both are used (after dropping NaN/None values).
    """
    notes: list[str] = []
    used: list[str] = []
    samples: list[np.ndarray] = []
    for c in x:
        if c not in y:
            continue
        xs = np.array([float(v) for v in (x[c] or []) if _finite(v)], dtype=float)
        ys = np.array([float(v) for v in (y[c] or []) if _finite(v)], dtype=float)
        if xs.size == 0 or ys.size == 0:
            notes.append(f"{c} left out: no finite value for {method if xs.size == 0 else base}")
            continue
        used.append(str(c))
        samples += [xs, ys]
    result = Improvement(
        method=method,
        base=base,
        n_conditions=len(used),
        probability=None,
        ci_low=None,
        ci_high=None,
        note=None,
        conditions=used,
    )
    if not used:
        notes.insert(0, "no condition with values for both the method and its base")
        result.note = "; ".join(notes)
        return result

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_condition = [float(_u_fraction(samples[i], samples[i + 1])) for i in range(0, len(samples), 2)]
    result.probability = float(np.mean(per_condition))

    # A sample of one value always resamples to itself: hold it fixed, resample the others.
    varying = [i for i, s in enumerate(samples) if s.size >= 2]
    if not varying:
        notes.append("one seed per condition: nothing to resample, no confidence interval")
        result.note = "; ".join(notes)
        return result

    def statistic(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        full = list(samples)
        for i, s in zip(varying, resampled, strict=False):
            full[i] = s
        parts = [_u_fraction(full[i], full[i + 1], axis=axis) for i in range(0, len(full), 2)]
        return np.mean(np.broadcast_arrays(*parts), axis=0)  # fixed conditions give scalars

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            boot = stats.bootstrap(
                tuple(samples[i] for i in varying),
                statistic,
                n_resamples=n_resamples,
                method="percentile",
                confidence_level=0.95,
                vectorized=True,
                paired=False,
                **_rng_kw(seed),
            )
        lo, hi = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            result.ci_low, result.ci_high = lo, hi
        else:
            notes.append("bootstrap interval undefined")
        if any(issubclass(w.category, stats.DegenerateDataWarning) for w in caught):
            notes.append("bootstrap distribution degenerate")
    except Exception as exc:
        notes.append(f"bootstrap failed: {exc}")
    result.note = "; ".join(notes) or None
    return result
