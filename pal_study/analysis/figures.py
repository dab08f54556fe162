"""A study's figures, each answering one question (matplotlib, Agg, PNG bytes).

* ``acc_vs_noise`` / ``acc_vs_imbalance``: how does each method's test accuracy fall with label
  noise (with the imbalance ratio)? Mean over the final seeds with the 95 % t interval of the mean.
* ``forest``: which differences to the baseline are real? Δ test accuracy with its paired CI,
  significant ones (q ≤ alpha) filled.
* ``learning_curves``: how did the tuning go, cell by cell? Every trial's validation accuracy per
  epoch; pruned trials faded and crossed where they stopped.
* ``objective_vs_params``: where in the searched range are the good trials?
* ``many_medium_few``: does a method help the tail classes?
* ``norms``: how do weight decay and the head shape prototype and feature norms?

The inputs are the report's rows (``pal_study.analysis.report.CellRow``) and the tuning trials read from
the study's Optuna journal (``journal_curves``): no MLflow. Rules every figure keeps: at most 8
series per axes (more methods: small multiples by base-loss family), one colour per method for
the whole study (``method_colors``: a base loss and its +pal/+fnpal/+norm versions share a hue,
told apart by shade, line style and marker), and a line only joins cells that differ in the x
variable alone. Figures are ``matplotlib.figure.Figure`` objects (no pyplot, no global state).
Every public function takes ``return_figures=True`` (the Figure objects instead of PNG bytes,
for tests) and ``colors`` (a study-wide ``method_colors``); each returns {} where its data do not
apply.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
import re
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from pal_study.analysis.journal import StudyRecord
from pal_study.layout import factors_of
from pal_study.methods import base_loss, head_of, method_order, suffix_heads

DPI = 110
MAX_SERIES = 8  # series per axes
FOREST_ROWS = 40  # comparisons per forest file
PANELS_PER_FILE = 24  # learning-curve panels per file

NOISE_KEY = "data.noise.rate"
KIND_KEY = "data.noise.kind"
IMBALANCE_KEY = "data.imbalance.ratio"
DATA_KEY = "data.name"
WD_KEY = "optim.weight_decay"
GROUPS = ("many", "medium", "few")
NORM_METRICS = ("proto_norm_max", "proto_norm_min", "feature_norm_mean")
NORM_TITLES = {
    "proto_norm_max": "largest prototype norm",
    "proto_norm_min": "smallest prototype norm",
    "feature_norm_mean": "mean feature norm",
}
KNOWN_PARAMS = ("head.scale", "loss.margin", "optim.weight_decay")
PARAM_LABELS = {
    "head.scale": "logit scale s (head.scale)",
    "loss.margin": "margin m (loss.margin)",
    "optim.weight_decay": "weight decay (optim.weight_decay)",
}
_SHORT = {
    NOISE_KEY: "noise",
    IMBALANCE_KEY: "ρ",
    WD_KEY: "wd",
    "head.scale": "s",
    "loss.margin": "m",
    "loss.drw_epoch": "DRW epoch",
}
_TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
# How a base loss's versions differ: the bare loss first, then one entry per head a label names,
# in the head registry's order (pal, fnpal, norm); heads registered later cycle through them.
_SHADES = (0.42, -0.38, 0.7)  # > 0 towards white, < 0 towards black
_STYLES = (("--", "s"), ("-.", "^"), (":", "D"))
_HATCHES = ("//", "..", "xx")
_STATES = ("complete", "pruned", "fail", "running")


# -- the tuning trials -------------------------------------------------------------------------


@dataclass
class TrialCurve:
    """One tuning trial, from the Optuna journal."""

    cell: str
    method: str
    number: int
    state: str  # "complete" | "pruned" | "fail" | "running"
    values: dict[int, float] = field(default_factory=dict)  # epoch -> intermediate objective (val acc)
    params: dict[str, float | str] = field(default_factory=dict)
    value: float | None = None  # the final objective (complete trials)

    @property
    def last(self) -> tuple[int, float] | None:
        """(epoch, value) of the last reported epoch."""
        if not self.values:
            return None
        e = max(self.values)
        return e, self.values[e]


def journal_curves(journal: StudyRecord | str | Path) -> dict[str, list[TrialCurve]]:
    """Cell label -> its tuning trials (by number), from the study's Optuna journal (a record, or
    a journal file's path), read only. Finals studies (``…/finals``) are left out; no journal: {}."""
    from optuna.trial import TrialState

    record = StudyRecord.of(journal)
    states = {
        TrialState.COMPLETE: "complete",
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "fail",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "running",
    }
    out: dict[str, list[TrialCurve]] = {}
    for st in record.tuning_studies():
        cell = str(st.user_attrs.get("cell", st.study_name))
        method = str(st.user_attrs.get("method") or factors_of(cell).get("method", "?"))
        trials = record.trials(st)
        items = out.setdefault(cell, [])
        for t in trials:
            items.append(
                TrialCurve(
                    cell=cell,
                    method=method,
                    number=t.number,
                    state=states.get(t.state, "running"),
                    values={
                        int(k): float(v)
                        for k, v in sorted(t.intermediate_values.items())
                        if v is not None and math.isfinite(v)
                    },
                    params=dict(t.params),
                    value=float(t.value) if t.state == TrialState.COMPLETE and t.value is not None else None,
                )
            )
        items.sort(key=lambda t: t.number)
    return out


# -- labels, families, colours -----------------------------------------------------------------


def short_label(factors: Iterable[tuple[str, Any]]) -> str:
    """Factors for a title: data set name and method bare, known keys abbreviated."""
    parts = []
    for k, v in factors:
        if k in (DATA_KEY, "method"):
            parts.append(str(v))
        elif k == KIND_KEY:
            parts.append(f"{v} noise")
        else:
            parts.append(f"{_SHORT.get(k, k.rsplit('.', 1)[-1])}={v}")
    return " · ".join(parts)


def _by_head(method: str, bare: Any, per_head: Sequence[Any]) -> Any:
    head = head_of(method)
    return per_head[suffix_heads().index(head) % len(per_head)] if head else bare


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{round(255 * min(max(c, 0.0), 1.0)):02x}" for c in rgb)


def _rgb(color: str) -> tuple[float, float, float]:
    return tuple(int(color[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def _family_palette(n: int) -> list[str]:
    if n <= len(_TAB10):
        return list(_TAB10[:n])
    return [_hex(colorsys.hls_to_rgb(i / n, 0.45, 0.7)) for i in range(n)]


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """Method -> colour (hex), a function of the sorted set of methods alone: the same for every
    figure of a study. A base loss has its family's colour (families take the palette in the loss
    registry's order), its +pal version a lighter shade, +fnpal a darker one, +norm a pale one
    (and line styles/markers/hatches differ per head)."""
    ms = sorted(set(methods))
    fams = sorted({base_loss(m) for m in ms}, key=method_order)
    palette = dict(zip(fams, _family_palette(len(fams)), strict=False))
    out = {}
    for m in ms:
        rgb = _rgb(palette[base_loss(m)])
        s = _by_head(m, 0.0, _SHADES)
        out[m] = _hex([c + (1 - c) * s for c in rgb] if s >= 0 else [c * (1 + s) for c in rgb])
    return out


class MethodStyle(TypedDict):
    linestyle: Literal["-", "--", "-.", ":"]
    marker: str


def method_style(method: str) -> MethodStyle:
    """Line style and marker of a method's head (base loss: solid circles)."""
    ls, marker = _by_head(method, ("-", "o"), _STYLES)
    return {"linestyle": ls, "marker": marker}


def method_panels(methods: Iterable[str], limit: int = MAX_SERIES) -> list[list[str]]:
    """The methods in chunks of at most ``limit`` for small multiples, a base-loss family never
    split (unless it alone has more than ``limit``), the chunks about equal; families and heads in
    the registries' order."""
    ms = sorted(set(methods), key=method_order)
    if len(ms) <= limit:
        return [ms] if ms else []
    fams: dict[str, list[str]] = {}
    for m in ms:
        fams.setdefault(base_loss(m), []).append(m)
    target = math.ceil(len(ms) / math.ceil(len(ms) / limit))
    chunks: list[list[str]] = []
    cur: list[str] = []
    for members in fams.values():
        if len(members) > limit:
            chunks += [members[i : i + limit] for i in range(0, len(members), limit)]
            continue
        if cur and len(cur) + len(members) > limit:
            chunks.append(cur)
            cur = []
        cur += members
        if len(cur) >= target:
            chunks.append(cur)
            cur = []
    if cur:
        chunks.append(cur)
    return chunks


def _colors_for(methods: Iterable[str], colors: dict[str, Any] | None) -> dict[str, Any]:
    ms = set(methods)
    if colors is not None and ms <= set(colors):
        return colors
    return method_colors(ms | set(colors or ()))


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\-]+", "_", str(name)) or "_"


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)  # constrained layout: no second (tight-bbox) draw
    return buf.getvalue()


def _done(figs: dict[str, Figure], return_figures: bool) -> dict[str, Any]:
    return figs if return_figures else {k: _png(f) for k, f in figs.items()}


def _numbered(stem: str, figs: list[Figure]) -> dict[str, Figure]:
    """``stem.png`` for one figure; ``stem_1.png``, ``stem_2.png``, … for several."""
    if len(figs) == 1:
        return {f"{stem}.png": figs[0]}
    return {f"{stem}_{i}.png": f for i, f in enumerate(figs, 1)}


def _figure(size: tuple[float, float]) -> Figure:
    """A constrained-layout figure with a margin at its edges (it is saved without a tight bbox)."""
    return Figure(figsize=size, layout=ConstrainedLayoutEngine(w_pad=0.1, h_pad=0.1))


def _method_bars(
    ax: Any,
    xs: Sequence[float],
    means: Sequence[float],
    stds: Sequence[float],
    width: float,
    method: str,
    colors: dict[str, Any],
) -> None:
    """One method's bars with error bars, in its colour and its head's hatch (legend label: the method)."""
    ax.bar(
        xs,
        means,
        width=width,
        yerr=stds,
        capsize=1.5,
        color=colors[method],
        edgecolor="black",
        linewidth=0.4,
        hatch=_by_head(method, "", _HATCHES),
        label=method,
        error_kw={"elinewidth": 0.8},
    )


def _grid(n: int, max_cols: int, w: float, h: float, extra_w: float = 1.6) -> tuple[Figure, list[Any]]:
    """A constrained-layout figure with ``n`` panels in rows of at most ``max_cols``."""
    ncols = max(1, min(n, max_cols))
    nrows = math.ceil(n / ncols)
    fig = _figure((w * ncols + extra_w, h * nrows + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def _fixed_grid(
    n: int,
    max_cols: int,
    w: float,
    h: float,
    *,
    left: float = 0.7,
    right: float = 2.3,
    top: float = 0.8,
    bottom: float = 0.5,
    wspace: float = 0.55,
    hspace: float = 1.0,
):
    """``n`` panels of w × h inches with fixed gaps (room for a two-line title and the axis labels)
    and no layout engine: a large grid is drawn once, not laid out by measuring every tick."""
    ncols = max(1, min(n, max_cols))
    nrows = math.ceil(n / ncols)
    width = left + ncols * w + (ncols - 1) * wspace + right
    height = top + nrows * h + (nrows - 1) * hspace + bottom
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        wspace=wspace / w,
        hspace=hspace / h,
    )
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n], ncols


def _method_legend(
    fig: Figure, methods: Iterable[str], colors: dict[str, Any], *, lines: bool = True, extra: Sequence[Any] = ()
) -> None:
    handles = list(extra)
    for m in sorted(set(methods), key=method_order):
        if lines:
            st = method_style(m)
            handles.append(
                Line2D([], [], color=colors[m], label=m, linestyle=st["linestyle"], marker=st["marker"], markersize=5)
            )
        else:
            handles.append(
                Patch(facecolor=colors[m], edgecolor="black", linewidth=0.5, hatch=_by_head(m, "", _HATCHES), label=m)
            )
    if fig.get_layout_engine() is None:  # a fixed grid: the legend in its right margin
        right = fig.subplotpars.right
        fig.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(right + 0.1 / fig.get_figwidth(), fig.subplotpars.top),
            fontsize=8,
            frameon=False,
        )
    else:
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)


def _families(chunk: Sequence[str]) -> str:
    fams = []
    for m in chunk:
        if base_loss(m) not in fams:
            fams.append(base_loss(m))
    return "losses: " + ", ".join(fams)


def _title(ax, parts: Sequence[str], width: int = 48, lines: bool = False) -> None:
    """Title from parts joined by " · " (``lines``: one line each), wrapped at ``width``."""
    if lines:
        text = "\n".join(w for p in parts if p for w in textwrap.wrap(p, width))
    else:
        text = "\n".join(textwrap.wrap(" · ".join(p for p in parts if p), width))
    ax.set_title(text, fontsize=8.5)


def _share_y(axes, keys) -> None:
    """One y range for the panels of one condition (its base-loss families side by side)."""
    by: dict[Any, list[Any]] = {}
    for ax, key in zip(axes, keys, strict=False):
        by.setdefault(key, []).append(ax)
    for group in by.values():
        if len(group) > 1:
            lims = [ax.get_ylim() for ax in group]
            for ax in group:
                ax.set_ylim(min(lo for lo, _ in lims), max(hi for _, hi in lims))


def _t_half_width(std: float, n: int) -> float | None:
    """Half width of the 95 % t interval of a mean over n values: t_{n-1}·std/√n; None for n < 2."""
    if n < 2 or std is None or not math.isfinite(std):
        return None
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)


# -- rows --------------------------------------------------------------------------------------


def _rest(row, drop: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
    """The row's group factors other than data set, imbalance ratio, noise kind and ``drop``."""
    skip = {DATA_KEY, IMBALANCE_KEY, KIND_KEY, "method", *drop}
    return tuple(sorted((k, v) for k, v in factors_of(row.group).items() if k not in skip))


def _noise_kind(row) -> str | None:
    kind = getattr(row, "noise_kind", None)
    return str(kind) if kind else factors_of(row.group).get(KIND_KEY)


def _datasets(rows) -> list[str]:
    return sorted({str(r.dataset) for r in rows})


def _num(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _series_points(rs: list[Any], xs: list[float], metric: str, scale: float):
    """Sorted (x, mean, band low, band high, cell) of one line: one point per distinct x."""
    pts = []
    for r, x in sorted(zip(rs, xs, strict=False), key=lambda p: p[1]):
        m, s = r.stats[metric]
        hw = _t_half_width(s, r.n)
        pts.append(
            (x, scale * m, None if hw is None else scale * (m - hw), None if hw is None else scale * (m + hw), r.cell)
        )
    return pts


def _draw_line(ax, pts, color, method) -> None:
    """One line through points of distinct x (a repeated x would join unrelated cells: those
    points are drawn unjoined) with its band where there is one."""
    import numpy as np

    xs = [p[0] for p in pts]
    if len(set(xs)) != len(xs):
        st = method_style(method)
        ax.plot(
            xs,
            [p[1] for p in pts],
            linestyle="none",
            marker=st["marker"],
            color=color,
            markersize=4,
            label=method,
            gid=json.dumps([p[4] for p in pts]),
        )
        return
    st = method_style(method)
    ax.plot(
        xs,
        [p[1] for p in pts],
        color=color,
        linewidth=1.4,
        markersize=4,
        label=method,
        gid=json.dumps([p[4] for p in pts]),
        **st,
    )
    lo = np.array([np.nan if p[2] is None else p[2] for p in pts], dtype=float)
    hi = np.array([np.nan if p[3] is None else p[3] for p in pts], dtype=float)
    if np.isfinite(lo).any():
        ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)


# -- accuracy vs noise rate / imbalance ratio --------------------------------------------------


def _acc_vs(rows, *, x: str, colors, return_figures: bool) -> dict[str, Any]:
    noise = x == "noise"
    xkey, xattr = (NOISE_KEY, "noise_rate") if noise else (IMBALANCE_KEY, "imbalance_ratio")
    rs_all = [r for r in rows if "test_acc" in r.stats and _num(getattr(r, xattr)) is not None]
    colors = _colors_for((r.method for r in rows), colors)
    figs: dict[str, Figure] = {}
    for ds in _datasets(rs_all):
        rs = [r for r in rs_all if r.dataset == ds]
        if len({float(getattr(r, xattr)) for r in rs}) < 2:
            continue
        facets: dict[tuple, dict[str, list[Any]]] = {}
        for r in rs:
            key = (
                (float(r.imbalance_ratio) if noise else float(r.noise_rate)),
                _noise_kind(r) or "",
                _rest(r, (xkey,)),
            )
            facets.setdefault(key, {}).setdefault(r.method, []).append(r)
        facets = {
            k: v for k, v in facets.items() if len({float(getattr(r, xattr)) for ms in v.values() for r in ms}) > 1
        }
        if not facets:
            continue
        panels = [
            (key, chunk, len(facets[key]) > MAX_SERIES)
            for key in sorted(facets)
            for chunk in method_panels(facets[key])
        ]
        per_facet = max(len(method_panels(v)) for v in facets.values())
        fig, axes = _grid(len(panels), per_facet if 1 < per_facet <= 4 else 3, 4.0, 3.0)
        methods = set()
        for ax, (key, chunk, chunked) in zip(axes, panels, strict=False):
            other, kind, rest = key
            for m in chunk:
                line = facets[key][m]
                xs = [(100 * float(r.noise_rate) if noise else float(r.imbalance_ratio)) for r in line]
                _draw_line(ax, _series_points(line, xs, "test_acc", 100.0), colors[m], m)
                methods.add(m)
            xvals = sorted(
                {
                    (100 * float(getattr(r, xattr)) if noise else float(getattr(r, xattr)))
                    for ms in facets[key].values()
                    for r in ms
                }
            )
            if not noise:
                ax.set_xscale("log")
                ax.minorticks_off()
            ax.set_xticks(xvals, [f"{v:g}" for v in xvals])
            ax.grid(alpha=0.3)
            ax.set_xlabel(
                (f"{kind} label noise rate (%)" if kind else "label noise rate (%)")
                if noise
                else "imbalance ratio ρ (log scale)",
                fontsize=8.5,
            )
            ax.set_ylabel("test accuracy (%)", fontsize=8.5)
            ax.tick_params(labelsize=8)
            cond = [
                short_label([(IMBALANCE_KEY, f"{other:g}")])
                if noise and len({k[0] for k in facets}) > 1
                else (
                    short_label([(NOISE_KEY, f"{other:g}")]) if not noise and len({k[0] for k in facets}) > 1 else ""
                ),
                f"{kind} noise" if kind and len({k[1] for k in facets}) > 1 else "",
                short_label(rest),
                _families(chunk) if chunked else "",
            ]
            _title(ax, cond)
        _share_y(axes, [p[0] for p in panels])
        what = "label noise" if noise else "class imbalance"
        fig.suptitle(f"{ds}: test accuracy vs {what}\n(mean over seeds, band: 95 % t-CI of the mean)", fontsize=10)
        _method_legend(fig, methods, colors)
        figs[f"acc_vs_{'noise' if noise else 'imbalance'}_{_safe(ds)}.png"] = fig
    return _done(figs, return_figures)


def acc_vs_noise(rows, *, colors: dict[str, Any] | None = None, return_figures: bool = False) -> dict[str, Any]:
    """Per data set, each method's mean test accuracy against the noise rate with the 95 % t-CI
    band over its seeds (none for one seed); panels per imbalance ratio × noise kind × the other
    factors (× base-loss family past 8 methods). {} where no data set has two noise rates."""
    return _acc_vs(rows, x="noise", colors=colors, return_figures=return_figures)


def acc_vs_imbalance(rows, *, colors: dict[str, Any] | None = None, return_figures: bool = False) -> dict[str, Any]:
    """As ``acc_vs_noise``, against the imbalance ratio (log x), panels per noise rate."""
    return _acc_vs(rows, x="imbalance", colors=colors, return_figures=return_figures)


# -- forest plot of the comparisons ------------------------------------------------------------


def _forest_figure(items, alpha: float, colors, method_of: dict[str, str], title: str) -> Figure:
    import numpy as np

    n = len(items)
    fig = _figure((9.0, 1.3 + 0.27 * n))
    ax = fig.subplots()
    ys = np.arange(n)[::-1].astype(float)
    labels, lo, hi, xs, cs, sig = [], [], [], [], [], []
    for r in items:
        c = r.comparison
        base = method_of.get(c.baseline, c.baseline)
        cond = short_label(factors_of(r.group).items())
        labels.append(f"{r.method} vs {base}" + (f"  [{cond}]" if cond else ""))
        xs.append(100 * c.delta)
        lo.append(None if c.ci_low is None else 100 * c.ci_low)
        hi.append(None if c.ci_high is None else 100 * c.ci_high)
        cs.append(colors[r.method])
        sig.append(c.q is not None and c.q <= alpha)
    segs = [[(a, y), (b, y)] for a, b, y in zip(lo, hi, ys, strict=False) if a is not None]
    seg_colors = [col for a, col in zip(lo, cs, strict=False) if a is not None]
    if segs:
        ax.add_collection(
            LineCollection(segs, colors=seg_colors, linewidths=1.6, label="CI (sign-flip, over paired seeds)")
        )
    sig_a = np.array(sig, dtype=bool)
    xs_a, cs_a = np.array(xs), np.array(cs, dtype=object)
    ax.scatter(
        xs_a[sig_a],
        ys[sig_a],
        s=42,
        c=list(cs_a[sig_a]),
        edgecolors="black",
        linewidths=0.6,
        zorder=3,
        label=f"q ≤ {alpha:g}",
    )
    ax.scatter(
        xs_a[~sig_a],
        ys[~sig_a],
        s=42,
        facecolors="white",
        edgecolors=list(cs_a[~sig_a]),
        linewidths=1.4,
        zorder=3,
        label=f"q > {alpha:g} or no test",
    )
    ax.axvline(0.0, color="black", linewidth=0.9)
    # separators between conditions (groups)
    seps = [ys[i] + 0.5 for i in range(1, n) if items[i].group != items[i - 1].group]
    if seps:
        ax.hlines(seps, 0, 1, transform=ax.get_yaxis_transform(), colors="0.85", linewidths=0.7)
    for r, y in zip(items, ys, strict=False):
        q = r.comparison.q
        ax.annotate(
            "q=–" if q is None else f"q={q:.2g}",
            (1.01, y),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            va="center",
            color="black" if q is not None and q <= alpha else "0.45",
        )
    ax.set_yticks(ys, labels, fontsize=7.5)
    ax.set_ylim(-0.7, n - 0.3)
    vals = [v for v in [*xs, *(v for v in lo if v is not None), *(v for v in hi if v is not None)]]
    span = max(max(vals) - min(vals), 0.5)
    ax.set_xlim(min(min(vals), 0.0) - 0.06 * span, max(max(vals), 0.0) + 0.06 * span)
    ax.set_xlabel(
        "Δ test accuracy vs baseline (percentage points; exact sign-flip CI over paired seeds, "
        "none where too few seeds bound it)",
        fontsize=8.5,
    )
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    key = [
        Line2D([], [], color="0.3", linewidth=1.6, label="CI (exact sign-flip over seeds, not adjusted)"),
        Line2D(
            [],
            [],
            linestyle="none",
            marker="o",
            markersize=7,
            color="0.3",
            markeredgecolor="black",
            label=f"significant: q ≤ {alpha:g}",
        ),
        Line2D(
            [],
            [],
            linestyle="none",
            marker="o",
            markersize=7,
            markerfacecolor="white",
            markeredgecolor="0.3",
            markeredgewidth=1.4,
            label=f"q > {alpha:g} or no test",
        ),
    ]
    fig.legend(handles=key, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def forest(
    rows,
    alpha: float = 0.05,
    *,
    colors: dict[str, Any] | None = None,
    max_rows: int = FOREST_ROWS,
    return_figures: bool = False,
) -> dict[str, Any]:
    """Every comparison's Δ test accuracy (points) vs its baseline with its CI, labelled
    "method vs baseline [condition]", those with q ≤ alpha filled, a line at 0; past ``max_rows``
    comparisons, several files of about equal length. {} without comparisons."""
    items = [
        r
        for r in rows
        if r.comparison is not None and r.comparison.delta is not None and math.isfinite(r.comparison.delta)
    ]
    if not items:
        return {}
    colors = _colors_for((r.method for r in rows), colors)
    method_of = {r.cell: r.method for r in rows}
    items.sort(
        key=lambda r: (str(r.dataset), float(r.imbalance_ratio), float(r.noise_rate), r.group, method_order(r.method))
    )
    k = math.ceil(len(items) / max_rows)
    size = math.ceil(len(items) / k)
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    n_sig = sum(r.comparison.q is not None and r.comparison.q <= alpha for r in items)
    figs = []
    for i, chunk in enumerate(chunks, 1):
        dss = sorted({str(r.dataset) for r in chunk})
        title = (
            f"Differences to the baseline: {n_sig} of {len(items)} significant (q ≤ {alpha:g})"
            + (f" — part {i}/{len(chunks)}" if len(chunks) > 1 else "")
            + f"\n{', '.join(dss)}"
        )
        figs.append(_forest_figure(chunk, alpha, colors, method_of, title))
    return _done(_numbered("forest", figs), return_figures)


# -- learning curves of the tuning trials ------------------------------------------------------


def _curve_scale(curves: dict[str, list[TrialCurve]]) -> tuple[float, str]:
    vals = [v for ts in curves.values() for t in ts for v in t.values.values()]
    if vals and all(0.0 <= v <= 1.0 for v in vals):
        return 100.0, "validation accuracy (%)"
    return 1.0, "objective"


def _cell_title(cell: str, trials: list[TrialCurve]) -> list[str]:
    f = factors_of(cell)
    counts = {s: sum(t.state == s for t in trials) for s in _STATES}
    names = {"complete": "complete", "pruned": "pruned", "fail": "failed", "running": "running"}
    tail = ", ".join(f"{n} {names[s]}" for s, n in counts.items() if n) + " trial" + ("s" if len(trials) > 1 else "")
    return [short_label(f.items()) if f else cell, tail]


def learning_curves(
    curves: dict[str, list[TrialCurve]],
    *,
    colors: dict[str, Any] | None = None,
    per_file: int = PANELS_PER_FILE,
    return_figures: bool = False,
) -> dict[str, Any]:
    """One panel per cell: every tuning trial's validation accuracy per epoch; completed trials
    solid in the method colour, pruned ones faded with an × at their last reported epoch (where
    they were pruned), failed ones dotted, running ones dashed. {} without reported epochs."""
    import numpy as np

    cells = [(c, ts) for c, ts in curves.items() if any(t.values for t in ts)]
    if not cells:
        return {}
    colors = _colors_for((t.method for ts in curves.values() for t in ts), colors)
    scale, ylabel = _curve_scale(curves)
    k = math.ceil(len(cells) / per_file)
    size = math.ceil(len(cells) / k)
    figs = []
    for part, start in enumerate(range(0, len(cells), size), 1):
        chunk = cells[start : start + size]
        fig, axes, ncols = _fixed_grid(len(chunk), 4, 2.7, 1.75)
        methods: set[str] = set()
        for ax, (cell, trials) in zip(axes, chunk, strict=False):
            method = trials[0].method
            methods.update(t.method for t in trials)
            color = colors[method]
            lines: dict[str, list[Any]] = {s: [] for s in _STATES}
            ends: dict[str, list[tuple[int, float]]] = {s: [] for s in _STATES}
            for t in trials:
                if not t.values:
                    continue
                es = sorted(t.values)
                lines[t.state].append(np.column_stack([es, [scale * t.values[e] for e in es]]))
                ends[t.state].append((es[-1], scale * t.values[es[-1]]))
            styles: dict[str, dict[str, Any]] = {  # LineCollection's keywords per trial state
                "complete": dict(linewidths=1.3, alpha=0.95, linestyles="solid"),
                "pruned": dict(linewidths=0.9, alpha=0.35, linestyles="solid"),
                "fail": dict(linewidths=1.1, alpha=0.8, linestyles="dotted"),
                "running": dict(linewidths=0.9, alpha=0.6, linestyles="dashed"),
            }
            for s in _STATES:
                if lines[s]:
                    ax.add_collection(LineCollection(lines[s], colors=color, label=s, **styles[s]))
            if ends["complete"]:
                e, v = zip(*ends["complete"], strict=False)
                ax.scatter(e, v, s=9, color=color, zorder=3, label="complete (last epoch)")
            if ends["pruned"]:
                e, v = zip(*ends["pruned"], strict=False)
                ax.scatter(
                    e, v, marker="x", s=24, color=color, linewidths=1.1, zorder=3, label="pruned here (last epoch)"
                )
            ax.autoscale_view()
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7.5)
            ax.set_xlabel("epoch", fontsize=8)
            if axes.index(ax) % ncols == 0:
                ax.set_ylabel(ylabel, fontsize=8)
            _title(ax, _cell_title(cell, trials), width=46, lines=True)
        key = [
            Line2D([], [], color="0.2", linewidth=1.3, label="complete"),
            Line2D(
                [],
                [],
                color="0.2",
                linewidth=0.9,
                alpha=0.35,
                marker="x",
                markersize=6,
                markeredgewidth=1.1,
                label="pruned (× last epoch)",
            ),
            Line2D([], [], color="0.2", linestyle=":", linewidth=1.1, label="failed"),
            Line2D([], [], color="0.2", linestyle="--", linewidth=0.9, alpha=0.6, label="running"),
        ]
        _method_legend(fig, methods, colors, extra=[*key, Line2D([], [], linestyle="none", label="")])
        fig.suptitle(
            "Tuning trials per cell: validation accuracy per epoch" + (f" (part {part}/{k})" if k > 1 else ""),
            fontsize=10,
            y=1 - 0.2 / fig.get_figheight(),
        )
        figs.append(fig)
    return _done(_numbered("learning_curves", figs), return_figures)


# -- final objective vs searched parameters ----------------------------------------------------


def _numeric_params(trials: list[TrialCurve]) -> list[str]:
    seen: dict[str, set[float]] = {}
    for t in trials:
        for p, v in t.params.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            seen.setdefault(p, set()).add(float(v))
    params = [p for p, vs in seen.items() if len(vs) > 1]
    return sorted(params, key=lambda p: (KNOWN_PARAMS.index(p) if p in KNOWN_PARAMS else len(KNOWN_PARAMS), p))


def objective_vs_params(
    curves: dict[str, list[TrialCurve]], *, colors: dict[str, Any] | None = None, return_figures: bool = False
) -> dict[str, Any]:
    """For each searched numeric parameter (one column of panels each; rows: data set × base-loss
    family past 8 methods) the trials' final objective against the parameter's value, coloured by
    method: complete trials solid, pruned ones (their last value) faded crosses; log x for a
    parameter spanning more than 2 decades. {} where no numeric parameter took two values."""
    trials = [t for ts in curves.values() for t in ts if t.state in ("complete", "pruned")]
    params = _numeric_params(trials)
    if not params:
        return {}
    colors = _colors_for((t.method for ts in curves.values() for t in ts), colors)
    scale, ylabel = _curve_scale(curves)
    ylabel = "final " + ylabel
    by_ds: dict[str, list[TrialCurve]] = {}
    for t in trials:
        by_ds.setdefault(factors_of(t.cell).get(DATA_KEY, ""), []).append(t)
    rows_ = [(ds, chunk) for ds in sorted(by_ds) for chunk in method_panels({t.method for t in by_ds[ds]})]
    ncols = len(params)
    fig = _figure((4.0 * ncols + 1.6, 3.1 * len(rows_) + 0.6))
    axes = fig.subplots(len(rows_), ncols, squeeze=False)
    methods = set()
    for i, (ds, chunk) in enumerate(rows_):
        for j, p in enumerate(params):
            ax = axes[i][j]
            # state -> (parameter values, objectives, colours or methods)
            pts: dict[str, tuple[list[float], list[float], list[Any]]] = {
                "complete": ([], [], []),
                "pruned": ([], [], []),
            }
            for t in by_ds[ds]:
                v = t.params.get(p)
                if t.method not in chunk or isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                y = t.value if t.state == "complete" else (t.last[1] if t.last else None)
                if y is None or not math.isfinite(y):
                    continue
                xs, ys, cs = pts[t.state]
                xs.append(float(v))
                ys.append(scale * y)
                cs.append(colors[t.method] if t.state == "pruned" else t.method)
                methods.add(t.method)
            if pts["pruned"][0]:
                ax.scatter(
                    pts["pruned"][0],
                    pts["pruned"][1],
                    c=pts["pruned"][2],
                    marker="x",
                    s=22,
                    alpha=0.35,
                    linewidths=1.0,
                    label="pruned (last value)",
                )
            for m in chunk:  # one series per method: its head's marker tells related colours apart
                sel = [k for k, mm in enumerate(pts["complete"][2]) if mm == m]
                if sel:
                    ax.scatter(
                        [pts["complete"][0][k] for k in sel],
                        [pts["complete"][1][k] for k in sel],
                        color=colors[m],
                        marker=method_style(m)["marker"],
                        s=28,
                        edgecolors="black",
                        linewidths=0.4,
                        zorder=3,
                        label=f"complete: {m}",
                    )
            if not pts["pruned"][0] and not pts["complete"][0]:
                ax.text(
                    0.5,
                    0.5,
                    "not searched in these cells",
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="0.4",
                )
                ax.set_xticks([])
                ax.set_yticks([])
            vals = [
                float(t.params[p])
                for t in trials
                if isinstance(t.params.get(p), (int, float)) and not isinstance(t.params.get(p), bool)
            ]
            pos = [v for v in vals if v > 0]
            if vals and min(vals) > 0 and max(pos) / min(pos) > 100:
                ax.set_xscale("log")
            log = ax.get_xscale() == "log"
            ax.set_xlabel(PARAM_LABELS.get(p, p) + (" (log scale)" if log else ""), fontsize=8.5)
            ax.set_ylabel(ylabel, fontsize=8.5)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            _title(ax, [ds, _families(chunk) if len(rows_) > len(by_ds) else ""])
    key = [
        Line2D([], [], linestyle="none", marker="o", color="0.3", markeredgecolor="black", label="complete"),
        Line2D([], [], linestyle="none", marker="x", color="0.3", alpha=0.5, label="pruned (last value)"),
        Line2D([], [], linestyle="none", label=""),
    ]
    handles = key + [
        Line2D(
            [],
            [],
            linestyle="none",
            marker=method_style(m)["marker"],
            color=colors[m],
            markeredgecolor="black",
            markeredgewidth=0.4,
            label=m,
        )
        for m in sorted(methods, key=method_order)
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle("Tuning: final objective vs searched parameter (every trial of every cell)", fontsize=10)
    return _done({"objective_vs_params.png": fig}, return_figures)


# -- many / medium / few -----------------------------------------------------------------------


def many_medium_few(rows, *, colors: dict[str, Any] | None = None, return_figures: bool = False) -> dict[str, Any]:
    """Per data set, test accuracy of the many/medium/few-shot classes: bars per method (± std
    over seeds), one panel per condition (the cells' group). {} where no row has them."""
    rs_all = [r for r in rows if any(f"test_acc_{g}" in r.stats for g in GROUPS)]
    if not rs_all:
        return {}
    colors = _colors_for((r.method for r in rows), colors)
    figs: dict[str, Figure] = {}
    for ds in _datasets(rs_all):
        rs = [r for r in rs_all if r.dataset == ds]
        conds: dict[tuple, dict[str, Any]] = {}
        for r in rs:
            key = (float(r.imbalance_ratio), _noise_kind(r) or "", float(r.noise_rate), _rest(r, (NOISE_KEY,)))
            conds.setdefault(key, {})[r.method] = r
        panels = [
            (key, chunk, len(conds[key]) > MAX_SERIES) for key in sorted(conds) for chunk in method_panels(conds[key])
        ]
        fig, axes = _grid(len(panels), 3, 4.2, 3.0)
        methods = set()
        many_ratios = len({k[0] for k in conds}) > 1
        many_noise = len({k[2] for k in conds}) > 1
        for ax, (key, chunk, chunked) in zip(axes, panels, strict=False):
            ratio, kind, rate, rest = key
            width = 0.8 / len(chunk)
            for j, m in enumerate(chunk):
                r = conds[key][m]
                means = [
                    100 * r.stats[f"test_acc_{g}"][0] if f"test_acc_{g}" in r.stats else float("nan") for g in GROUPS
                ]
                stds = [100 * r.stats[f"test_acc_{g}"][1] if f"test_acc_{g}" in r.stats else 0.0 for g in GROUPS]
                _method_bars(
                    ax, [i - 0.4 + (j + 0.5) * width for i in range(len(GROUPS))], means, stds, width, m, colors
                )
                methods.add(m)
            ax.set_xticks(range(len(GROUPS)), [f"{g}-shot" for g in GROUPS], fontsize=8)
            ax.set_ylim(0, 100)
            ax.set_ylabel("test accuracy (%)", fontsize=8.5)
            ax.tick_params(labelsize=8)
            ax.grid(axis="y", alpha=0.3)
            _title(
                ax,
                [
                    f"ρ={ratio:g}" if many_ratios or ratio != 1 else "",
                    f"{kind} noise" if kind else "",
                    f"noise={rate:g}" if many_noise or rate else "",
                    short_label(rest),
                    _families(chunk) if chunked else "",
                ],
            )
        fig.suptitle(f"{ds}: accuracy of many / medium / few-shot classes\n(mean ± std over seeds)", fontsize=10)
        _method_legend(fig, methods, colors, lines=False)
        figs[f"many_medium_few_{_safe(ds)}.png"] = fig
    return _done(figs, return_figures)


# -- prototype and feature norms ---------------------------------------------------------------


def _wd_of(row) -> float | None:
    v = factors_of(row.group).get(WD_KEY)
    x = _num(v) if v is not None else None
    return x if x is not None else _num(row.weight_decay)


def norms(rows, *, colors: dict[str, Any] | None = None, return_figures: bool = False) -> dict[str, Any]:
    """Per data set, one panel column per norm metric (largest/smallest prototype norm, mean
    feature norm): against the weight decay (log x; 0 drawn a decade below the smallest) where the
    study varies it as a factor, one line per method and other factors (mean, band ± std);
    otherwise bars per cell grouped by condition. {} where no row has a norm."""
    import numpy as np

    rs_all = [r for r in rows if any(k in r.stats for k in NORM_METRICS)]
    if not rs_all:
        return {}
    colors = _colors_for((r.method for r in rows), colors)
    figs: dict[str, Figure] = {}
    for ds in _datasets(rs_all):
        rs = [r for r in rs_all if r.dataset == ds]
        metrics = [k for k in NORM_METRICS if any(k in r.stats for r in rs)]
        wd_factor = {factors_of(r.group).get(WD_KEY) for r in rs} - {None}
        vs_wd = len(wd_factor) > 1
        facets: dict[tuple, dict[str, list[Any]]] = {}
        for r in rs:
            key = (float(r.imbalance_ratio), _noise_kind(r) or "", _rest(r, (WD_KEY,) if vs_wd else ()))
            facets.setdefault(key if vs_wd else ("bars",), {}).setdefault(r.method, []).append(r)
        methods = set()
        if vs_wd:
            panel_rows = [(key, chunk) for key in sorted(facets) for chunk in method_panels(facets[key])]
            fig = _figure((3.8 * len(metrics) + 1.8, 3.0 * len(panel_rows) + 0.6))
            axes = fig.subplots(len(panel_rows), len(metrics), squeeze=False)
            wds = sorted({w for r in rs if (w := _wd_of(r)) is not None})
            pos = [w for w in wds if w > 0]
            zero_at = min(pos) / 10 if pos else 1e-6
            ticks = [zero_at if w <= 0 else w for w in wds]
            tick_labels = ["0" if w <= 0 else f"{w:.0e}".replace("e-0", "e-") for w in wds]
            for i, (key, chunk) in enumerate(panel_rows):
                ratio, kind, rest = key
                for j, metric in enumerate(metrics):
                    ax = axes[i][j]
                    for m in chunk:
                        # (x, row): the rows with the metric and a weight decay, 0 drawn at zero_at
                        line = [
                            (zero_at if w <= 0 else w, r)
                            for r in facets[key][m]
                            if metric in r.stats and (w := _wd_of(r)) is not None
                        ]
                        if not line:
                            continue
                        pts = []
                        for x, r in sorted(line, key=lambda p: p[0]):
                            mu, sd = r.stats[metric]
                            pts.append((x, mu, mu - sd, mu + sd, r.cell))
                        _draw_line(ax, pts, colors[m], m)
                        methods.add(m)
                    ax.set_xscale("log")
                    ax.minorticks_off()
                    ax.set_xticks(ticks, tick_labels, fontsize=7.5, rotation=30)
                    ax.grid(alpha=0.3)
                    ax.tick_params(labelsize=7.5)
                    ax.set_xlabel(
                        "weight decay (log scale" + ("; 0 drawn a decade below)" if pos != wds else ")"), fontsize=8.5
                    )
                    ax.set_ylabel("L2 norm", fontsize=8.5)
                    _title(
                        ax,
                        [
                            NORM_TITLES[metric],
                            f"ρ={ratio:g}" if ratio != 1 else "",
                            f"{kind} noise" if kind else "",
                            short_label(rest),
                            _families(chunk) if len(facets[key]) > MAX_SERIES else "",
                        ],
                    )
            fig.suptitle(
                f"{ds}: prototype and feature norms vs weight decay\n(mean, band ± std over seeds)", fontsize=10
            )
            _method_legend(fig, methods, colors)
        else:
            by_cond: dict[tuple, dict[str, Any]] = {}
            for r in rs:
                cond = (float(r.imbalance_ratio), _noise_kind(r) or "", float(r.noise_rate), _rest(r, (NOISE_KEY,)))
                by_cond.setdefault(cond, {})[r.method] = r
            conds = sorted(by_cond)
            ratios, noises = {c[0] for c in conds}, {c[2] for c in conds}

            def cond_label(c, ratios=ratios, noises=noises, ds=ds):
                ratio, kind, rate, rest = c
                parts = [
                    f"ρ={ratio:g}" if len(ratios) > 1 else "",
                    f"{kind}" if kind else "",
                    f"noise={rate:g}" if len(noises) > 1 else "",
                    short_label(rest),
                ]
                return "\n".join(p for p in parts if p) or ds

            chunks = method_panels({r.method for r in rs})
            width_in = min(11.0, max(4.0, 1.4 + 0.17 * len(conds) * max(len(c) for c in chunks)))
            fig = _figure((width_in * len(chunks) + 1.8, 2.7 * len(metrics) + 0.8))
            axes = fig.subplots(len(metrics), len(chunks), squeeze=False)
            rotate = len(conds) > 5 or max(len(cond_label(c)) for c in conds) > 14
            for j, chunk in enumerate(chunks):
                width = 0.8 / len(chunk)
                for i, metric in enumerate(metrics):
                    ax = axes[i][j]
                    for k, m in enumerate(chunk):
                        xs, means, stds = [], [], []
                        for c_i, c in enumerate(conds):
                            r = by_cond[c].get(m)
                            if r is not None and metric in r.stats:
                                xs.append(c_i - 0.4 + (k + 0.5) * width)
                                means.append(r.stats[metric][0])
                                stds.append(r.stats[metric][1])
                        if xs:
                            _method_bars(ax, xs, means, stds, width, m, colors)
                            methods.add(m)
                    ax.set_xticks(
                        np.arange(len(conds)),
                        [cond_label(c) for c in conds],
                        fontsize=7.5,
                        rotation=30 if rotate else 0,
                        ha="right" if rotate else "center",
                    )
                    ax.set_xlim(-0.6, len(conds) - 0.4)
                    ax.set_ylabel("L2 norm", fontsize=8.5)
                    ax.tick_params(labelsize=7.5)
                    ax.grid(axis="y", alpha=0.3)
                    _title(ax, [NORM_TITLES[metric], _families(chunk) if len(chunks) > 1 else ""], width=70)
            fig.suptitle(f"{ds}: prototype and feature norms per cell\n(mean ± std over seeds)", fontsize=10)
            _method_legend(fig, methods, colors, lines=False)
        figs[f"norms_{_safe(ds)}.png"] = fig
    return _done(figs, return_figures)


# -- all of them -------------------------------------------------------------------------------


def study_figures(
    rows,
    curves: dict[str, list[TrialCurve]] | None = None,
    *,
    alpha: float = 0.05,
    colors: dict[str, Any] | None = None,
    return_figures: bool = False,
) -> dict[str, Any]:
    """Every figure above that applies to the study, one colour per method throughout:
    ``acc_vs_noise_<ds>.png``, ``acc_vs_imbalance_<ds>.png``, ``forest.png`` (``forest_1.png``, …),
    ``learning_curves.png`` (``learning_curves_1.png``, …), ``objective_vs_params.png``,
    ``many_medium_few_<ds>.png``, ``norms_<ds>.png``."""
    curves = curves or {}
    methods = {r.method for r in rows} | {t.method for ts in curves.values() for t in ts}
    colors = colors if colors is not None and methods <= set(colors) else method_colors(methods)
    kw: dict[str, Any] = {"colors": colors, "return_figures": return_figures}  # every figure's keywords
    out: dict[str, Any] = {}
    out.update(acc_vs_noise(rows, **kw))
    out.update(acc_vs_imbalance(rows, **kw))
    out.update(forest(rows, alpha, **kw))
    out.update(many_medium_few(rows, **kw))
    out.update(norms(rows, **kw))
    if curves:
        out.update(learning_curves(curves, **kw))
        out.update(objective_vs_params(curves, **kw))
    return {k: v for k, v in out.items() if v is not None and (return_figures or len(v))}
