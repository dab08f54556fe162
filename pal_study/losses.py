"""Classification losses by name: CE and the robust losses PAL is compared with, NSL and LDAM.

``build_loss(name, num_classes, **params)`` returns an ``nn.Module`` called as
``loss(logits, targets)`` -> mean scalar over the batch (``targets``: int64 class indices).

Notation (docs/method.md §3): z = logits (N×k), p = softmax(z), y = target class.

=========  ====================================================================================
ce         −log p_y
fl         −(1 − p_y)^γ · log p_y, with p_y *detached* in the factor (APL and ALFs do this)
gce        (1 − p_y^q) / q, p_y clamped to [1e−7, 1]
mae        1 − p_y  (APL's convention; ALFs' ``MAELoss`` uses 2(1 − p_y) on its own, but
           β·(1 − p_y) inside NCE+MAE, so the combinations agree and only the stand-alone
           loss differs by a factor 2, which rescales the gradient like a learning rate)
rce        −Σ_k p_k log q_k, q the one-hot target clamped to [1e−4, 1], p clamped to
           [1e−7, 1]; equals −log(1e−4)·(1 − p_y) up to the clamp on p
sce        α·CE + β·RCE
nce        α·(−log p_y) / (−Σ_k log p_k)   (α: APL's ``scale`` of a single normalised loss)
nfl        α·FL_y / Σ_k FL_k, FL_k = −(1 − p_k)^γ log p_k with p_k detached in the factors
nce+mae    α·NCE + β·MAE      nce+rce  α·NCE + β·RCE      nfl+rce  α·NFL + β·RCE
nsl        −z_y  (negative-signed sample logit; symmetric only with bounded, anchored logits)
ldam       CE(z − s·m_y·e_y), m_j = max_m · n_j^(−1/4) / max_i n_i^(−1/4)
=========  ====================================================================================

Numerics: log p is always ``log_softmax`` (exact and stable), never ``log(clamp(softmax))``.
That is what the reference code does for every log of p (APL/ALFs CE, FL, NCE, NFL); their
[1e−7, 1] clamp only touches p where p enters directly (GCE, RCE), and so does ours. Clamping
inside the logs would cap CE at 16.1 and zero its gradient on confidently wrong samples, a
robustness trick of its own that the baselines do not have.

Class weights (deferred re-weighting, DRW): a loss whose :class:`LossSpec` says
``supports_weights`` (ce, ldam) takes ``weight`` (per class, or None) and :meth:`Loss.set_weight`;
with weights the batch reduction is the weighted mean Σ w_{y_i} ℓ_i / Σ w_{y_i}, as
``F.cross_entropy(weight=...)`` and LDAM-DRW's code do. :func:`class_balanced_weights` gives
DRW's weights; the trainer sets them from ``loss.drw_epoch`` on (see docs/method.md §3).

Margins: normalised heads (``fnpal``, ``norm``) output s·cos, so a margin is given in cosine
units and subtracted from the target logit as ``scale · margin`` before any loss formula.
Every loss takes ``scale`` (the head's logit scale, default 1.0) and ``margin`` (additive cosine
margin, default 0.0); LDAM adds its per-class m_y to ``margin``.

The table: every loss is one :class:`LossSpec` in :data:`LOSS_REGISTRY` (``pal_study.specs.losses``,
torch-free so that the trial config validates without torch; re-exported here), which names the
terms of this module it sums: its hyperparameters (names in :data:`PARAM_REGISTRY`, which holds
each one's range and generic default), its terms, its per-data-set defaults with their source,
whether it is symmetric and whether it needs a normalised head. ``LOSSES``, ``LOSS_PARAMS``,
``NORMALIZED_ONLY``, ``DATASET_DEFAULTS`` and the trial config's ``loss.*`` keys are all read from
it. Adding a loss is adding one entry there (and a new hyperparameter one :class:`LossParam`), and
its terms here.

Hyperparameter defaults: ``build_loss``'s keyword defaults are generic. The per-data-set
values of the baselines' papers are each entry's ``defaults`` (keyed by a reference data set,
which every data set names in its ``DatasetSpec.loss_defaults``) and come from
:func:`loss_defaults`; the trainer merges them with user overrides and passes the result.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from numbers import Integral, Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The table (torch-free, for the trial config; it names the terms and modules below): re-exported here.
from pal_study.specs.losses import (
    COMMON_PARAMS,
    DATASET_DEFAULTS,
    DRW_BETA,
    LOSS_PARAMS,
    LOSS_REGISTRY,
    LOSSES,
    NORMALIZED_ONLY,
    PARAM_REGISTRY,
    LossParam,
    LossSpec,
    config_params,
    get_loss,
    list_losses,
    loss_defaults,
)

log = logging.getLogger(__name__)

__all__ = [
    "COMMON_PARAMS",
    "DATASET_DEFAULTS",
    "DRW_BETA",
    "LOSSES",
    "LOSS_PARAMS",
    "LOSS_REGISTRY",
    "NORMALIZED_ONLY",
    "PARAM_REGISTRY",
    "LDAMLoss",
    "Loss",
    "LossParam",
    "LossSpec",
    "build_loss",
    "class_balanced_weights",
    "config_params",
    "get_loss",
    "ldam_margins",
    "list_losses",
    "loss_defaults",
]

P_CLAMP_MIN = 1e-7  # APL/ALFs: p clamped to [1e-7, 1] where p enters directly
RCE_Q_MIN = 1e-4  # APL/ALFs: one-hot target clamped to [1e-4, 1], so log 0 becomes log 1e-4
_RCE_A = -math.log(RCE_Q_MIN)  # −log q_k for k ≠ y; 0 for k = y


# --------------------------------------------------------------------------------------------
# Per-class vectors: class weights, LDAM's margins, DRW's class-balanced weights.


def _as_float_vector(key: str, value: Any, k: int) -> Tensor:
    try:
        v = torch.as_tensor(value, dtype=torch.float64).detach().cpu().flatten()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{key} must be a sequence of {k} numbers, got {value!r}") from e
    if v.numel() != k or torch.as_tensor(value).dim() != 1:
        raise ValueError(f"{key} must be a sequence of {k} numbers (one per class), got {value!r}")
    if not torch.isfinite(v).all():
        raise ValueError(f"{key} must be finite, got {v.tolist()}")
    return v


def ldam_margins(class_counts: Sequence[int] | Tensor, max_m: float = 0.5) -> Tensor:
    """LDAM's per-class margins m_j = max_m · n_j^(−1/4) / max_i n_i^(−1/4) (float64, shape (k,))."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    m = n.pow(-0.25)
    return m * (max_m / m.max())


def class_balanced_weights(class_counts: Sequence[int] | Tensor, beta: float = DRW_BETA) -> Tensor:
    """DRW's class-balanced weights (Cui et al. 2019; LDAM-DRW, Cao et al. 2019):
    w_c ∝ (1 − β) / (1 − β^{n_c}), normalised to sum to k (float64, shape (k,)). β = 0 gives all 1."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    if n.dim() != 1 or n.numel() < 1 or not (n > 0).all():
        raise ValueError(f"class_counts must be positive counts, one per class, got {n.tolist()}")
    if not (isinstance(beta, Real) and 0.0 <= float(beta) < 1.0):
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    beta = float(beta)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return w / w.sum() * n.numel()


# --------------------------------------------------------------------------------------------
# Terms: per-sample loss vectors computed from a _Batch, which caches what several terms share
# (one log_softmax for α·NCE + β·RCE, not two).


class _Batch:
    def __init__(self, logits: Tensor, targets: Tensor):
        self.logits = logits
        self.targets = targets

    @cached_property
    def logp(self) -> Tensor:
        return F.log_softmax(self.logits, dim=1)

    @cached_property
    def logp_y(self) -> Tensor:
        return self.logp.gather(1, self.targets.unsqueeze(1)).squeeze(1)

    @cached_property
    def target_mask(self) -> Tensor:
        mask = torch.zeros(self.logits.shape, dtype=torch.bool, device=self.logits.device)
        return mask.scatter_(1, self.targets.unsqueeze(1), True)


Term = Callable[[_Batch], Tensor]


def _ce(b: _Batch) -> Tensor:
    return -b.logp_y


def _fl(b: _Batch, gamma: float) -> Tensor:
    # The focusing factor uses a detached p_y, as APL/ALFs do; it also keeps the gradient of
    # (1 − p_y)^γ (infinite at p_y = 1 for γ < 1) out of the graph.
    p_y = b.logp_y.detach().exp()
    return -(1.0 - p_y).pow(gamma) * b.logp_y


def _gce(b: _Batch, q: float) -> Tensor:
    p_y = b.logp_y.exp().clamp(P_CLAMP_MIN, 1.0)
    return (1.0 - p_y.pow(q)) / q


def _mae(b: _Batch) -> Tensor:
    return 1.0 - b.logp_y.exp()


def _rce(b: _Batch) -> Tensor:
    # −Σ_k p_k log q_k with log q_y = 0 and log q_k = log 1e-4 elsewhere. Summing the off-target
    # probabilities (rather than 1 − p_y) keeps the clamp's effect and loses no precision when
    # p_y ≈ 1.
    p = b.logp.exp().clamp(P_CLAMP_MIN, 1.0)
    return _RCE_A * p.masked_fill(b.target_mask, 0.0).sum(dim=1)


def _nce(b: _Batch) -> Tensor:
    # Denominator −Σ_k log p_k ≥ k log k > 0 (minimum at uniform p), so the ratio is safe.
    return b.logp_y / b.logp.sum(dim=1)


def _nfl(b: _Batch, gamma: float) -> Tensor:
    fl = -(1.0 - b.logp.detach().exp()).pow(gamma) * b.logp
    return fl.gather(1, b.targets.unsqueeze(1)).squeeze(1) / fl.sum(dim=1)


def _nsl(b: _Batch) -> Tensor:
    return -b.logits.gather(1, b.targets.unsqueeze(1)).squeeze(1)


# --------------------------------------------------------------------------------------------
# Modules


class Loss(nn.Module):
    """Σ_i c_i · term_i on margin-shifted logits, averaged over the batch.

    ``params`` holds every resolved keyword (defaults included), for logging with each run.
    """

    def __init__(
        self,
        name: str,
        num_classes: int,
        terms: Sequence[tuple[float, Term]],
        params: Mapping[str, Any],
        *,
        supports_weights: bool = False,
    ):
        super().__init__()
        self.name = name
        self.num_classes = num_classes
        self.terms = tuple(terms)
        self.params = dict(params)
        self.scale = float(params["scale"])
        self.margin = float(params["margin"])
        self.supports_weights = supports_weights
        self.register_buffer("weight", None)
        if supports_weights:
            self.set_weight(params.get("weight"))

    def set_weight(self, weight: Sequence[float] | Tensor | None) -> None:
        """Per-class loss weights (length k, finite, ≥ 0, not all 0), or ``None`` for none.

        Only losses whose :class:`LossSpec` has ``supports_weights`` take them (ValueError otherwise).
        The trainer calls this at the start of every epoch (DRW), so it must stay idempotent.
        """
        if weight is None:
            self.weight = None
            return
        if not self.supports_weights:
            accepting = ", ".join(s.name for s in LOSS_REGISTRY.entries() if s.supports_weights)
            raise ValueError(f"loss {self.name!r} takes no class weights (losses that do: {accepting})")
        w = _as_float_vector("weight", weight, self.num_classes)
        if (w < 0).any() or not (w > 0).any():
            raise ValueError(f"loss {self.name!r}: weight must be ≥ 0 and not all 0, got {w.tolist()}")
        if isinstance(weight, Tensor):
            device = weight.device
        else:
            device = next((b.device for b in self.buffers()), torch.device("cpu"))
        self.weight = w.to(device)

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.params.items() if k not in ("class_counts", "weight")}
        return f"name={self.name!r}, num_classes={self.num_classes}, " + ", ".join(f"{k}={v}" for k, v in shown.items())

    def _target_shift(self, targets: Tensor, dtype: torch.dtype) -> Tensor | float:
        """What to subtract from each target logit: scale · margin (per sample or a scalar)."""
        return self.scale * self.margin

    def _check(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"loss {self.name!r}: logits must have shape (N, {self.num_classes}), got {tuple(logits.shape)}"
            )
        if targets.shape != (logits.shape[0],):
            raise ValueError(
                f"loss {self.name!r}: targets must have shape ({logits.shape[0]},), got {tuple(targets.shape)}"
            )
        if logits.shape[0] == 0:
            raise ValueError(f"loss {self.name!r}: empty batch")
        if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.is_complex():
            raise ValueError(f"loss {self.name!r}: targets must be integer class indices, got {targets.dtype}")
        if logits.dtype in (torch.float16, torch.bfloat16):
            # The clamps at 1e-7 and the NCE/NFL ratios are meaningless in half precision.
            logits = logits.float()
        return logits, targets.long()

    def shifted_logits(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Logits with the target logit lowered by ``scale · (margin [+ m_y])``."""
        shift = self._target_shift(targets, logits.dtype)
        if isinstance(shift, float):
            if shift == 0.0:
                return logits
            shift = torch.full((logits.shape[0],), shift, dtype=logits.dtype, device=logits.device)
        return logits.scatter_add(1, targets.unsqueeze(1), -shift.unsqueeze(1))

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-sample losses (N,), margins applied; ``forward`` is their mean."""
        logits, targets = self._check(logits, targets)
        b = _Batch(self.shifted_logits(logits, targets), targets)
        out: Tensor | None = None
        for coef, term in self.terms:
            t = coef * term(b)
            out = t if out is None else out + t
        assert out is not None
        return out

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        per = self.per_sample(logits, targets)
        if self.weight is None:
            return per.mean()
        # Weighted mean Σ w_{y_i} ℓ_i / Σ w_{y_i}, as F.cross_entropy(weight=...) reduces.
        w = self.weight.to(device=per.device, dtype=per.dtype)[targets.long()]
        return (w * per).sum() / w.sum()


class LDAMLoss(Loss):
    """LDAM (Cao et al. 2019): CE with the target logit lowered by s·(margin + m_y).

    ``weight`` (per-class, DRW's re-weighting) makes the batch reduction a weighted mean
    Σ w_{y_i} ℓ_i / Σ w_{y_i}, as ``F.cross_entropy(weight=...)`` and LDAM-DRW's code do.
    Change it during training with :meth:`set_weight`.
    """

    margins: Tensor

    def __init__(self, num_classes: int, params: Mapping[str, Any]):
        super().__init__("ldam", num_classes, [(1.0, _ce)], params, supports_weights=True)
        counts = params["class_counts"]
        # float64 so float64 logits get exact margins; cast to the logits dtype per call.
        self.register_buffer("margins", ldam_margins(counts, params["max_m"]))

    def _target_shift(self, targets: Tensor, dtype: torch.dtype) -> Tensor:
        return self.scale * (self.margin + self.margins.to(dtype)[targets])


# --------------------------------------------------------------------------------------------
# Building a loss of the table (pal_study.specs.losses)


def _build(spec: LossSpec, num_classes: int, params: dict[str, Any]) -> Loss:
    if spec.module is not None:
        loss: Loss = spec.module(num_classes, params)
        return loss
    assert spec.terms is not None, spec.name
    return Loss(spec.name, num_classes, spec.terms(params), params, supports_weights=spec.supports_weights)


def build_loss(name: str, num_classes: int, **params: Any) -> Loss:
    """The loss ``name`` for ``num_classes`` classes; see the module docstring for formulas.

    Keywords (``LOSS_PARAMS[name]`` lists those a loss accepts; ``PARAM_REGISTRY`` holds each
    one's range and default): ``scale`` (>0, default 1.0) and ``margin`` (≥0, default 0.0) for
    every loss; ``gamma`` (≥0, 0.5) for fl, nfl, nfl+rce; ``q`` (in (0, 1], 0.7) for gce;
    ``alpha``, ``beta`` (≥0) for sce (0.1, 1.0) and the combinations (1.0, 1.0); ``alpha`` (≥0, 1.0)
    for nce and nfl; ``class_counts`` (required) and ``max_m`` (>0, 0.5) for ldam; ``weight``
    (per-class tensor or None) for the losses with ``supports_weights`` (ce, ldam). Data-set
    defaults are *not* applied here: see :func:`loss_defaults`. Raises
    ValueError on an unknown name, keyword or bad value.
    """
    spec = get_loss(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an int ≥ 2, got {num_classes!r}")
    num_classes = int(num_classes)
    accepted = spec.accepted
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown keyword{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for loss {name!r}; accepted: {', '.join(accepted)}"
        )
    p: dict[str, Any] = {
        k: spec.generic.get(k, PARAM_REGISTRY.get(k).default) for k in accepted if not PARAM_REGISTRY.get(k).required
    }
    p.update(params)
    for param in PARAM_REGISTRY.entries():  # checked in the registry's order
        if param.name not in accepted:
            continue
        if param.name not in p:
            raise ValueError(f"loss {name!r} needs {param.name} ({param.doc})")
        p[param.name] = param.validate(name, p[param.name], num_classes)
    return _build(spec, num_classes, p)
