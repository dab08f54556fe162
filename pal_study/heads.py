"""Classifier heads: features (batch×d) -> logits (batch×k). docs/method.md §2.

| kind   | logits                        | W                                   |
| ------ | ----------------------------- | ----------------------------------- |
| linear | W z + b                       | learnable (nn.Linear)               |
| pal    | W* z                          | anchored buffer, raw features       |
| fnpal  | s · normalize(z) W*ᵀ          | anchored buffer, unit features      |
| norm   | s · normalize(z) normalize(W)ᵀ | learnable, normalised (ablation)    |

Anchored prototypes are a persistent buffer named ``prototypes``: saved in ``state_dict()``,
moved by ``.to()``, but never in ``parameters()``, so no optimiser ever updates or
weight-decays them.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from pal_study.prototypes import DEFAULT_STEPS, make_prototypes

# The table of head kinds and its constants (torch-free, for the trial config): re-exported here.
from pal_study.specs.heads import (
    ANCHORED_HEADS,
    DEFAULT_SCALE,
    HEAD_REGISTRY,
    HEADS,
    NORMALIZED_HEADS,
    PLAIN_HEAD,
    HeadSpec,
)

log = logging.getLogger(__name__)

__all__ = [
    "ANCHORED_HEADS",
    "DEFAULT_SCALE",
    "HEADS",
    "HEAD_REGISTRY",
    "NORMALIZED_HEADS",
    "PLAIN_HEAD",
    "AnchoredHead",
    "Head",
    "HeadSpec",
    "LinearHead",
    "NormHead",
    "build_head",
]


# Same as F.normalize's default: an all-zero feature maps to 0 (cosine 0), never NaN.
_EPS = 1e-12


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, p=2.0, dim=-1, eps=_EPS)


class _HeadMixin:
    """Attributes and the cosine view every head shares (see module docstring)."""

    kind: str
    num_classes: int
    in_dim: int
    logit_scale: float
    normalized: bool
    anchored: bool

    def _weight(self) -> torch.Tensor:  # k×d, with grad where W is learnable
        raise NotImplementedError

    def weight_matrix(self) -> torch.Tensor:
        """The current k×d prototypes/weights (raw, not normalised), detached."""
        return self._weight().detach()

    def cosine_logits(self, features: torch.Tensor) -> torch.Tensor:
        """cos(z, w_j) for every class: batch×k in [-1, 1]; differentiable (for cosine margins).

        For the linear head the bias is ignored: this is the geometry of W alone.
        """
        return _unit(features) @ _unit(self._weight()).T

    def _describe(self) -> str:
        s = f", s={self.logit_scale:g}" if self.normalized else ""
        return f"kind={self.kind}, in_dim={self.in_dim}, num_classes={self.num_classes}{s}"


class LinearHead(_HeadMixin, nn.Linear):
    """Plain baseline: ``W z + b`` (an nn.Linear with bias)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__(in_dim, num_classes, bias=True)
        self.kind = "linear"
        self.num_classes = num_classes
        self.in_dim = in_dim
        self.logit_scale = 1.0
        self.normalized = False
        self.anchored = False

    def _weight(self) -> torch.Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return self._describe()


class AnchoredHead(_HeadMixin, nn.Module):
    """PAL (``normalize_features=False``: ``z W*ᵀ``) or FNPAL (``s · normalize(z) W*ᵀ``)."""

    prototypes: torch.Tensor

    def __init__(self, prototypes: torch.Tensor, *, normalize_features: bool, scale: float = 1.0):
        super().__init__()
        if prototypes.ndim != 2:
            raise ValueError(f"prototypes must be k×d, got shape {tuple(prototypes.shape)}")
        self.register_buffer("prototypes", prototypes.detach().to(torch.float32).clone(), persistent=True)
        self.num_classes, self.in_dim = (int(n) for n in prototypes.shape)
        self.normalized = bool(normalize_features)
        self.kind = "fnpal" if self.normalized else "pal"
        self.logit_scale = float(scale) if self.normalized else 1.0
        self.anchored = True

    def _weight(self) -> torch.Tensor:
        return self.prototypes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.normalized:
            # Prototypes are unit already; normalising again keeps logits = s·cos exactly even
            # for prototypes loaded from a file that were not.
            return self.logit_scale * self.cosine_logits(features)
        return features @ self.prototypes.T

    def extra_repr(self) -> str:
        return self._describe()


class NormHead(_HeadMixin, nn.Module):
    """Ablation: learnable W, ``s · normalize(z) normalize(W)ᵀ`` (no bias)."""

    def __init__(self, in_dim: int, num_classes: int, *, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        # nn.Linear's init, so norm and linear start from the same distribution of directions.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.kind = "norm"
        self.num_classes = num_classes
        self.in_dim = in_dim
        self.logit_scale = float(scale)
        self.normalized = True
        self.anchored = False

    def _weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.cosine_logits(features)

    def extra_repr(self) -> str:
        return self._describe()


Head = LinearHead | AnchoredHead | NormHead  # what build_head gives


def build_head(
    kind: str,
    in_dim: int,
    num_classes: int,
    *,
    scale: float | None = None,
    prototypes: str | torch.Tensor = "auto",
    use_relu_prototypes: bool = False,
    seed: int = 0,
    prototype_steps: int = DEFAULT_STEPS,
) -> Head:
    """A head of ``kind`` in ``HEADS`` mapping in_dim features to num_classes logits.

    ``scale`` is s for fnpal/norm (None -> ``DEFAULT_SCALE``); ignored by linear/pal (their
    ``logit_scale`` is 1.0). Anchored heads take ``make_prototypes(num_classes, in_dim,
    prototypes, use_relu=use_relu_prototypes, seed=seed, steps=prototype_steps)``, or, when
    ``prototypes`` is a k×d tensor, that tensor as is. Learnable heads draw their init from the
    global RNG like any nn.Module (callers fork and seed it).
    """
    if kind not in HEADS:
        raise ValueError(f"unknown head kind {kind!r}; allowed: {', '.join(HEADS)}")
    if not isinstance(in_dim, int) or in_dim < 1:
        raise ValueError(f"in_dim must be an int >= 1, got {in_dim!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    logit_scale = 1.0  # s of the normalised heads; the others' logits are unscaled
    if kind in NORMALIZED_HEADS:
        if scale is None:
            scale = DEFAULT_SCALE
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0 for head {kind!r}, got {scale!r}")
        logit_scale = float(scale)
    elif scale is not None:
        log.debug("head %s: scale=%r ignored (unnormalised logits)", kind, scale)

    if kind == "linear":
        return LinearHead(in_dim, num_classes)
    if kind == "norm":
        return NormHead(in_dim, num_classes, scale=logit_scale)

    if isinstance(prototypes, torch.Tensor):
        if tuple(prototypes.shape) != (num_classes, in_dim):
            raise ValueError(
                f"prototypes tensor has shape {tuple(prototypes.shape)}; head {kind!r} needs ({num_classes}, {in_dim})"
            )
        w = prototypes
    else:
        w = make_prototypes(
            num_classes, in_dim, prototypes, use_relu=use_relu_prototypes, seed=seed, steps=prototype_steps
        )
    return AnchoredHead(w, normalize_features=kind == "fnpal", scale=logit_scale)
