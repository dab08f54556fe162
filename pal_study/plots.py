"""Figures people would rather look at than read: PNG bytes from matplotlib (Agg, no display)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def reliability_png(bins: Sequence[dict[str, Any]], ece: float | None = None, title: str = "") -> bytes:
    """Reliability diagram: accuracy per confidence bin against the diagonal; bar width ∝ bin."""
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    n = max(len(bins), 1)
    width = 1.0 / n
    for i, b in enumerate(bins):
        acc, conf, count = b.get("accuracy"), b.get("confidence"), b.get("count", 0)
        if acc is None or not count:
            continue
        left = i * width
        ax.bar(left, acc, width=width, align="edge", color="#4477aa", edgecolor="white")
        if conf is not None:
            ax.bar(left, conf - acc, bottom=acc, width=width, align="edge", color="#ee6677", alpha=0.35)
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.set_title(f"{title} ECE {ece:.3f}" if ece is not None else title, fontsize=9)
    return _png(fig)


def lines_png(
    series: dict[str, list[tuple[float, float, float]]], xlabel: str, ylabel: str, title: str, log_x: bool = False
) -> bytes:
    """One line per key through (x, mean, std) points, with error bars."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, pts in sorted(series.items()):
        pts = sorted(pts)
        if not pts:
            continue
        xs, ms, ss = zip(*pts, strict=False)
        ax.errorbar(xs, [100 * m for m in ms], yerr=[100 * s for s in ss], marker="o", capsize=3, label=label)
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def grouped_bars_png(
    groups: dict[str, dict[str, tuple[float, float]]], ylabel: str, title: str, scale: float = 100.0
) -> bytes:
    """Bars per (outer label → inner label) with std error bars, e.g. method → many/medium/few."""
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(groups)), 4.2))
    outer = list(groups)
    inner = sorted({k for g in groups.values() for k in g})
    width = 0.8 / max(len(inner), 1)
    for j, key in enumerate(inner):
        xs = [i + j * width for i in range(len(outer))]
        means = [scale * groups[o].get(key, (float("nan"), 0.0))[0] for o in outer]
        stds = [scale * groups[o].get(key, (0.0, 0.0))[1] for o in outer]
        ax.bar(xs, means, width=width, yerr=stds, capsize=2, label=key)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(outer))], outer, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)
