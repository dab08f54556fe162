"""Method labels: ``<loss>[+<head>]``, a registered loss (itself possibly ``nce+rce``) and a
registered head kind, e.g. ``ce``, ``ce+fnpal``, ``nce+rce+fnpal``. The plain linear head is never
named in a label (``ce`` is CE on the linear head). The one place that splits a label; reports,
figures and the trial config read losses and heads through it, in the registries' order.

    parse_method("nsl")              # ("nsl", "fnpal"): validated, a bare loss takes its default head
    split_method("nce+rce+fnpal")    # ("nce+rce", "fnpal"): a label as stored, never rejected
    method_label("ce", "linear")     # "ce"
"""

from __future__ import annotations

from pal_study.specs.heads import HEAD_REGISTRY, PLAIN_HEAD
from pal_study.specs.losses import LOSS_REGISTRY


def suffix_heads() -> tuple[str, ...]:
    """The heads a label names after its loss (every head but the plain one), in registry order."""
    return tuple(h for h in HEAD_REGISTRY.names() if h != PLAIN_HEAD)


def method_label(loss: str, head: str) -> str:
    """The canonical label of ``loss`` on ``head``: the plain head left unnamed."""
    return loss if head == PLAIN_HEAD else f"{loss}+{head}"


def split_method(method: str) -> tuple[str, str]:
    """(base loss, head) of a stored label: ``nce+rce+fnpal`` -> (``nce+rce``, ``fnpal``); a label
    without a head suffix -> (label, ""). Reports read labels of finished studies, so a loss the
    registry no longer has still splits; a registered loss is never cut at its own ``+``."""
    if method in LOSS_REGISTRY:
        return method, ""
    loss, sep, head = method.rpartition("+")
    if sep and head in suffix_heads():
        return loss, head
    return method, ""


def base_loss(method: str) -> str:
    """The base loss of ``X+pal``/``X+fnpal``/``X+norm`` (X); any other method is its own."""
    return split_method(method)[0]


def head_of(method: str) -> str:
    """The head a label names (``""``: none, the loss's own)."""
    return split_method(method)[1]


def parse_method(method: str) -> tuple[str, str]:
    """Split ``<loss>[+<head>]`` into (loss name, head kind); unknown names list the known ones.

    Without a head suffix a loss takes the head it is defined with (its ``LossSpec.default_head``):
    NSL is only symmetric with bounded, anchored logits (docs/method.md §3); LDAM-DRW uses a normalised
    classifier; every other loss the linear head.
    """
    heads = HEAD_REGISTRY.names()
    head = None
    loss = method.strip().lower()
    for kind in heads:
        if loss.endswith("+" + kind):
            head, loss = kind, loss[: -len(kind) - 1]
            break
    if loss not in LOSS_REGISTRY:
        raise ValueError(
            f"unknown method {method!r}: loss part {loss!r} is not one of {', '.join(LOSS_REGISTRY.names())}; "
            f"optional head suffix: +{', +'.join(heads)}"
        )
    return loss, head or LOSS_REGISTRY.get(loss).default_head


def method_order(method: str) -> tuple[int, str, int]:
    """Sort key of a label: its base loss in loss-registry order (losses the registry no longer
    has after them, by name), then its head in head-registry order (no head first)."""
    loss, head = split_method(method)
    losses = LOSS_REGISTRY.names()
    return (losses.index(loss) if loss in losses else len(losses), loss, suffix_heads().index(head) + 1 if head else 0)


__all__ = ["base_loss", "head_of", "method_label", "method_order", "parse_method", "split_method", "suffix_heads"]
