"""Study reports from the tracking store alone: per cell mean ± std over the final seeds, the
difference to the CE baseline of the same cell with Welch's t-test, and the figures.

    pal-study report quickstart --format md --out reports/quickstart
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from pal_study.config import ConfigError
from pal_study.metrics import mean_std
from pal_study.stats import Paired, adjust_all, paired

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


def _f(v: Any, default: float = 0.0) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def fetch_finals(client, study: str) -> tuple[str, str, list[FinalRun]]:
    """(experiment id, parent run id, completed final runs) of the study's latest parent run."""
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise ConfigError(f"no MLflow experiment named {study!r} in this tracking store", key="STUDY")
    parents = client.search_runs([exp.experiment_id], "tags.`pal.stage` = 'study'", max_results=1,
                                 order_by=["attributes.start_time DESC"])
    if not parents:
        raise ConfigError(f"experiment {study!r} holds no pal-study study run", key="STUDY")
    parent = parents[0].info.run_id
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent}' and tags.stage = 'final' "
                                  "and tags.outcome = 'completed'", max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    out = []
    for r in runs:
        t, p = r.data.tags, r.data.params
        out.append(FinalRun(
            run_id=r.info.run_id, cell=t.get("cell", "?"), group=t.get("cell_group", ""), method=t.get("method", "?"),
            dataset=t.get("dataset", "?"), noise_rate=_f(t.get("noise_rate")), imbalance_ratio=_f(t.get("imbalance_ratio"), 1.0),
            seed=int(_f(t.get("seed"))), weight_decay=_f(p["optim.weight_decay"]) if "optim.weight_decay" in p else None,
            metrics={k.removeprefix("final_"): v for k, v in r.data.metrics.items() if k.startswith("final_")},
            checkpoint=t.get("pal.checkpoint"),
        ))
    out.sort(key=lambda r: (r.cell, r.seed))
    return exp.experiment_id, parent, out


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


def aggregate(runs: list[FinalRun], baseline: str = "base", adjust: str = "bh") -> list[CellRow]:
    """Per cell: mean ± std over its final seeds, and its test accuracy against its baseline
    cell (same other factors), paired by seed, with q-values over all the report's comparisons."""
    cells: dict[str, list[FinalRun]] = {}
    for r in runs:
        cells.setdefault(r.cell, []).append(r)
    rows = []
    for cell, rs in cells.items():
        first = rs[0]
        row = CellRow(cell=cell, group=first.group, method=first.method, dataset=first.dataset,
                      noise_rate=first.noise_rate, imbalance_ratio=first.imbalance_ratio,
                      weight_decay=first.weight_decay, n=len(rs), seeds=[r.seed for r in rs],
                      run_ids=[r.run_id for r in rs])
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
        row.comparison = paired(row.cell, base.cell, METRIC,
                                {r.seed: r.metrics.get(METRIC) for r in cells[row.cell]},
                                {r.seed: r.metrics.get(METRIC) for r in cells[base.cell]})
    adjust_all([r.comparison for r in rows if r.comparison is not None], adjust)
    rows.sort(key=lambda r: (r.dataset, r.imbalance_ratio, r.noise_rate, r.group, r.method))
    return rows


def comparisons(rows: list[CellRow]) -> list[dict[str, Any]]:
    """Every comparison's numbers (the report's JSON format)."""
    keys = ("cell", "baseline", "metric", "n_pairs", "delta", "ci_low", "ci_high", "p", "q", "test", "p_wilcoxon")
    return [{k: getattr(r.comparison, k) for k in keys} | {"seeds": list(r.comparison.seeds)}
            for r in rows if r.comparison is not None]


def _delta(c: Paired | None) -> str:
    if c is None or c.delta is None:
        return "-"
    if c.ci_low is None:
        return f"{100 * c.delta:+.2f} (n={c.n_pairs})"
    return f"{100 * c.delta:+.2f} [{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]"


def _pm(row: CellRow, key: str, scale: float = 100.0, digits: int = 2) -> str:
    if key not in row.stats:
        return "-"
    m, s = row.stats[key]
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


COLUMNS = ["cell", "method", "n", "val acc %", "test acc %", "Δ test (points) [95% CI]", "vs", "p (paired t)", "q",
           "ECE", "many/medium/few %"]


def table_rows(rows: list[CellRow]) -> list[list[str]]:
    out = []
    for r in rows:
        groups = " / ".join(f"{100 * r.stats[f'test_acc_{g}'][0]:.1f}" if f"test_acc_{g}" in r.stats else "-"
                            for g in GROUPS)
        out.append([
            r.cell, r.method, str(r.n), _pm(r, "val_acc"), _pm(r, "test_acc"), _delta(r.comparison),
            "-" if r.comparison is None else r.comparison.baseline,
            "-" if r.comparison is None or r.comparison.p is None else f"{r.comparison.p:.3g}",
            "-" if r.comparison is None or r.comparison.q is None else f"{r.comparison.q:.3g}",
            _pm(r, "ece", 1.0, 3), groups if groups != "- / - / -" else "-",
        ])
    return out


def render(rows: list[CellRow], fmt: str, claims: list[dict[str, Any]] | None = None) -> str:
    """The comparison as md, csv, latex or json; ``claims`` (verdicts) go into json and md."""
    body = table_rows(rows)
    if fmt == "json":
        return json.dumps({"comparisons": comparisons(rows),
                           "cells": [{k: v for k, v in r.__dict__.items() if k != "comparison"} for r in rows],
                           "claims": claims or []}, indent=1, default=str) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["cell", "method", "dataset", "noise_rate", "imbalance_ratio", "n", "seeds", "val_mean", "val_std",
                    "test_mean", "test_std", "baseline", "n_pairs", "delta", "ci_low", "ci_high", "p", "q", "test",
                    "ece_mean", "many", "medium", "few", "run_ids"])
        for r in rows:
            g = [r.stats.get(f"test_acc_{x}", (None,))[0] for x in GROUPS]
            w.writerow([r.cell, r.method, r.dataset, r.noise_rate, r.imbalance_ratio, r.n, " ".join(map(str, r.seeds)),
                        *r.stats.get("val_acc", (None, None)), *r.stats.get("test_acc", (None, None)),
                        *((c.baseline, c.n_pairs, c.delta, c.ci_low, c.ci_high, c.p, c.q, c.test)
                          if (c := r.comparison) else (None,) * 8),
                        r.stats.get("ece", (None,))[0], *g, " ".join(r.run_ids)])
        return buf.getvalue()
    if fmt == "latex":
        esc = lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("Δ", r"$\Delta$")  # noqa: E731
        lines = [r"\begin{tabular}{" + "l" * 2 + "r" * (len(COLUMNS) - 2) + "}", r"\toprule",
                 " & ".join(esc(c) for c in COLUMNS) + r" \\", r"\midrule"]
        lines += [" & ".join(esc(c) for c in row) + r" \\" for row in body]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    if claims:
        from pal_study.claims import render_verdicts

        lines += ["", "## Claims", "", "```", render_verdicts(claims), "```"]
    return "\n".join(lines) + "\n"


def rich_table(rows: list[CellRow], title: str):
    from rich.table import Table

    t = Table(title=title)
    for c in COLUMNS:
        t.add_column(c, justify="left" if c in ("cell", "method") else "right")
    for row in table_rows(rows):
        t.add_row(*row)
    return t


def figures(rows: list[CellRow]) -> dict[str, bytes]:
    """Accuracy vs noise rate and vs imbalance ratio per method, many/medium/few bars, and the
    prototype/feature norms (the paper's Figure 2 style) — only where the study varies them."""
    from pal_study.plots import grouped_bars_png, lines_png

    out: dict[str, bytes] = {}
    for ds in sorted({r.dataset for r in rows}):
        rs = [r for r in rows if r.dataset == ds and "test_acc" in r.stats]
        if len({r.noise_rate for r in rs}) > 1:
            series: dict[str, list] = {}
            for r in rs:
                label = r.method + ("" if len({x.imbalance_ratio for x in rs}) == 1 else f" ρ={r.imbalance_ratio:g}")
                series.setdefault(label, []).append((r.noise_rate, *r.stats["test_acc"]))
            out[f"acc_vs_noise_{ds}.png"] = lines_png(series, "symmetric noise rate", "test accuracy %",
                                                      f"{ds}: test accuracy vs label noise (mean ± std over seeds)")
        if len({r.imbalance_ratio for r in rs}) > 1:
            series = {}
            for r in rs:
                label = r.method + ("" if len({x.noise_rate for x in rs}) == 1 else f" η={r.noise_rate:g}")
                series.setdefault(label, []).append((r.imbalance_ratio, *r.stats["test_acc"]))
            out[f"acc_vs_imbalance_{ds}.png"] = lines_png(series, "imbalance ratio", "test accuracy %",
                                                          f"{ds}: test accuracy vs imbalance", log_x=True)
        grp = {r.cell: {g: r.stats[f"test_acc_{g}"] for g in GROUPS if f"test_acc_{g}" in r.stats} for r in rs}
        grp = {k: v for k, v in grp.items() if v}
        if grp:
            out[f"many_medium_few_{ds}.png"] = grouped_bars_png(grp, "test accuracy %", f"{ds}: many / medium / few classes")
        norms = {r.cell: {k: r.stats[k] for k in ("proto_norm_min", "proto_norm_max", "feature_norm_mean") if k in r.stats}
                 for r in rs}
        norms = {k: v for k, v in norms.items() if v}
        if norms:
            wds = {r.weight_decay for r in rs if r.weight_decay is not None}
            if len(wds) > 1:
                series = {}
                for r in rs:
                    for k in ("proto_norm_max", "proto_norm_min", "feature_norm_mean"):
                        if k in r.stats:
                            series.setdefault(f"{r.method} {k}", []).append((r.weight_decay or 1e-6, *r.stats[k]))
                out[f"norms_vs_weight_decay_{ds}.png"] = lines_png(
                    {k: [(x, m / 100, s / 100) for x, m, s in v] for k, v in series.items()},
                    "weight decay", "norm", f"{ds}: prototype and feature norms vs weight decay", log_x=True)
            else:
                out[f"norms_{ds}.png"] = grouped_bars_png(norms, "norm", f"{ds}: prototype and feature norms", scale=1.0)
    return out


def report_files(rows: list[CellRow], study: str) -> dict[str, bytes | str]:
    files: dict[str, bytes | str] = {
        "report/comparison.md": f"# {study}\n\n" + render(rows, "md"),
        "report/comparison.csv": render(rows, "csv"),
        "report/comparison.tex": render(rows, "latex"),
        "report/comparison.json": render(rows, "json"),
    }
    files.update({f"report/{k}": v for k, v in figures(rows).items()})
    return files


def study_claims(client: Any, parent_id: str) -> tuple[list[Any], float]:
    """The claims the study stated (its parent run's ``claims.json``, else its resolved spec) and alpha."""
    import tempfile
    from pathlib import Path

    from pal_study.claims import ClaimSpec

    names = {a.path for a in client.list_artifacts(parent_id)}
    with tempfile.TemporaryDirectory() as tmp:
        if "claims.json" in names:
            saved = json.loads(Path(client.download_artifacts(parent_id, "claims.json", tmp)).read_text())
            return [ClaimSpec.model_validate(c["spec"]) for c in saved], float(saved[0]["alpha"]) if saved else 0.05
        if "study_resolved.json" in names:
            spec = json.loads(Path(client.download_artifacts(parent_id, "study_resolved.json", tmp)).read_text())
            return [ClaimSpec.model_validate(c) for c in spec.get("claims") or []], float(spec.get("claims_alpha", 0.05))
    return [], 0.05


def _factors_of(label: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in label.split(","):
        key, _, value = part.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def claim_results(client: Any, parent_id: str, runs: list[FinalRun], adjust: str = "bh") -> list[dict[str, Any]]:
    """The study's claims judged on the final runs in the tracking store (as at the study's end)."""
    from pal_study.claims import CellInfo, evaluate

    claims, alpha = study_claims(client, parent_id)
    if not claims:
        return []
    cells: dict[str, CellInfo] = {}
    values: dict[str, dict[int, dict[str, float]]] = {}
    for r in runs:
        cells.setdefault(r.cell, CellInfo(r.cell, r.method, _factors_of(r.cell)))
        values.setdefault(r.cell, {})[r.seed] = r.metrics
    return evaluate(claims, list(cells.values()), values, alpha=alpha, adjust=adjust)

