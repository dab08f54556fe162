"""The head kinds (``pal_study.heads`` builds them; docs/method.md §2), without torch."""

from __future__ import annotations

from dataclasses import dataclass

from pal_study.registry import Registry


@dataclass(frozen=True)
class HeadSpec:
    name: str
    anchored: bool  # fixed prototypes (a buffer), never trained
    normalized: bool  # logits are s·cos: bounded, take a scale s and cosine margins
    summary: str


HEAD_REGISTRY: Registry[HeadSpec] = Registry("head kind")
for _spec in (
    HeadSpec("linear", anchored=False, normalized=False, summary="W z + b, learnable (the plain baseline)"),
    HeadSpec("pal", anchored=True, normalized=False, summary="W* z, anchored prototypes, raw features"),
    HeadSpec("fnpal", anchored=True, normalized=True, summary="s · cos(z, W*), anchored prototypes, unit features"),
    HeadSpec("norm", anchored=False, normalized=True, summary="s · cos(z, W), learnable normalised W (ablation)"),
):
    HEAD_REGISTRY.add(_spec.name, _spec)

# The one definition of the head constants (the trial config reads them from here).
HEADS: tuple[str, ...] = HEAD_REGISTRY.names()
PLAIN_HEAD = "linear"  # the baseline head: a method label never names it (``ce`` is CE on it)
ANCHORED_HEADS: tuple[str, ...] = tuple(h.name for h in HEAD_REGISTRY.entries() if h.anchored)
NORMALIZED_HEADS: tuple[str, ...] = tuple(h.name for h in HEAD_REGISTRY.entries() if h.normalized)
DEFAULT_SCALE = 10.0  # s of a normalised head when neither the config nor the loss sets one
