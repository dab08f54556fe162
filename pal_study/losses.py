"""Classification losses by name: CE and the robust losses PAL is compared with, NSL and LDAM.

``build_loss(name, num_classes, **params)`` returns an ``nn.Module`` called as
``loss(logits, targets)`` -> mean scalar over the batch (``targets``: int64 class indices).

Notation (PAL_SPEC §3): z = logits (N×k), p = softmax(z), y = target class.

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
nce        (−log p_y) / (−Σ_k log p_k)
nfl        FL_y / Σ_k FL_k, FL_k = −(1 − p_k)^γ log p_k with p_k detached in the factors
nce+mae    α·NCE + β·MAE      nce+rce  α·NCE + β·RCE      nfl+rce  α·NFL + β·RCE
nsl        −z_y  (negative-signed sample logit; symmetric only with bounded, anchored logits)
ldam       CE(z − s·m_y·e_y), m_j = max_m · n_j^(−1/4) / max_i n_i^(−1/4)
=========  ====================================================================================

Numerics: log p is always ``log_softmax`` (exact and stable), never ``log(clamp(softmax))``.
That is what the reference code does for every log of p (APL/ALFs CE, FL, NCE, NFL); their
[1e−7, 1] clamp only touches p where p enters directly (GCE, RCE), and so does ours. Clamping
inside the logs would cap CE at 16.1 and zero its gradient on confidently wrong samples, a
robustness trick of its own that the baselines do not have.

Margins: normalised heads (``fnpal``, ``norm``) output s·cos, so a margin is given in cosine
units and subtracted from the target logit as ``scale · margin`` before any loss formula.
Every loss takes ``scale`` (the head's logit scale, default 1.0) and ``margin`` (additive cosine
margin, default 0.0); LDAM adds its per-class m_y to ``margin``.

Hyperparameter defaults: ``build_loss``'s keyword defaults are generic. The per-data-set
values of the baselines' papers live in :data:`DATASET_DEFAULTS` and come from
:func:`loss_defaults`; the trainer merges them with user overrides and passes the result.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property, partial
from numbers import Integral, Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = [
    "DATASET_DEFAULTS",
    "LOSSES",
    "LOSS_PARAMS",
    "NORMALIZED_ONLY",
    "Loss",
    "LDAMLoss",
    "build_loss",
    "ldam_margins",
    "list_losses",
    "loss_defaults",
]

# Per-data-set defaults (PAL_SPEC §3). Sources: APL = Ma et al. 2020 configs, ALFs = Zhou et
# al. 2021 lnl/config.py. "digits" uses MNIST's values (same kind of data, a smaller net);
# "synthetic" and any unknown data set use CIFAR-10's, which are also the generic (α, β) = (1, 1).
# MNIST combinations: ALFs' (1, 100), chosen deliberately over APL's (1, 10): the PAL paper is
# by the ALFs authors and its MNIST recipe (PAL_SPEC §5: lr 0.01, wd 1e-3, 50 epochs) is ALFs',
# not APL's (wd 1e-2, nesterov). CIFAR-100 combinations: APL's (10, 0.1); ALFs use (10, 1).
# SCE follows APL throughout (ALFs call SCE with a = b = 1 on every data set).
DATASET_DEFAULTS: dict[str, dict[str, dict[str, float]]] = {
    "mnist": {
        "fl": {"gamma": 0.5},
        "gce": {"q": 0.7},
        "sce": {"alpha": 0.01, "beta": 1.0},
        "nfl": {"gamma": 0.5},
        "nce+mae": {"alpha": 1.0, "beta": 100.0},
        "nce+rce": {"alpha": 1.0, "beta": 100.0},
        "nfl+rce": {"alpha": 1.0, "beta": 100.0, "gamma": 0.5},
        "ldam": {"max_m": 0.5},
    },
    "cifar10": {
        "fl": {"gamma": 0.5},
        "gce": {"q": 0.7},
        "sce": {"alpha": 0.1, "beta": 1.0},
        "nfl": {"gamma": 0.5},
        "nce+mae": {"alpha": 1.0, "beta": 1.0},
        "nce+rce": {"alpha": 1.0, "beta": 1.0},
        "nfl+rce": {"alpha": 1.0, "beta": 1.0, "gamma": 0.5},
        "ldam": {"max_m": 0.5},
    },
    "cifar100": {
        "fl": {"gamma": 0.5},
        "gce": {"q": 0.7},
        "sce": {"alpha": 6.0, "beta": 0.1},
        "nfl": {"gamma": 0.5},
        "nce+mae": {"alpha": 10.0, "beta": 0.1},
        "nce+rce": {"alpha": 10.0, "beta": 0.1},
        "nfl+rce": {"alpha": 10.0, "beta": 0.1, "gamma": 0.5},
        "ldam": {"max_m": 0.5},
    },
}
_DATASET_ALIASES = {"digits": "mnist", "synthetic": "cifar10"}
_FALLBACK_DATASET = "cifar10"

LOSSES: tuple[str, ...] = (
    "ce", "fl", "gce", "sce", "mae", "nce", "rce", "nfl", "nce+mae", "nce+rce", "nfl+rce", "nsl", "ldam",
)
# NSL is unbounded below on raw logits (it just pushes z_y up), so it needs a normalised head.
NORMALIZED_ONLY: frozenset[str] = frozenset({"nsl"})

_COMMON = ("scale", "margin")
LOSS_PARAMS: dict[str, tuple[str, ...]] = {
    "ce": _COMMON,
    "fl": ("gamma", *_COMMON),
    "gce": ("q", *_COMMON),
    "sce": ("alpha", "beta", *_COMMON),
    "mae": _COMMON,
    "nce": _COMMON,
    "rce": _COMMON,
    "nfl": ("gamma", *_COMMON),
    "nce+mae": ("alpha", "beta", *_COMMON),
    "nce+rce": ("alpha", "beta", *_COMMON),
    "nfl+rce": ("alpha", "beta", "gamma", *_COMMON),
    "nsl": _COMMON,
    "ldam": ("class_counts", "max_m", "weight", *_COMMON),
}

# build_loss's own defaults (generic, data-set independent). class_counts has none: required.
_GENERIC_DEFAULTS: dict[str, Any] = {
    "scale": 1.0, "margin": 0.0, "gamma": 0.5, "q": 0.7, "alpha": 1.0, "beta": 1.0,
    "max_m": 0.5, "weight": None,
}
_SCE_DEFAULTS = {"alpha": 0.1, "beta": 1.0}

P_CLAMP_MIN = 1e-7  # APL/ALFs: p clamped to [1e-7, 1] where p enters directly
RCE_Q_MIN = 1e-4  # APL/ALFs: one-hot target clamped to [1e-4, 1], so log 0 becomes log 1e-4
_RCE_A = -math.log(RCE_Q_MIN)  # −log q_k for k ≠ y; 0 for k = y


def list_losses() -> list[str]:
    """Names accepted by :func:`build_loss`, in a stable order."""
    return list(LOSSES)


def _check_name(name: str) -> None:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}")


def loss_defaults(name: str, dataset: str) -> dict[str, float]:
    """The documented per-data-set hyperparameters of loss ``name`` (a fresh dict).

    Data sets: ``digits`` (= mnist), ``mnist``, ``cifar10``, ``cifar100``, ``synthetic``
    (= cifar10); any other name gets CIFAR-10's values. ``scale`` and ``margin`` are not
    included: they belong to the head and the user. Losses without hyperparameters give ``{}``.
    """
    _check_name(name)
    key = _DATASET_ALIASES.get(dataset, dataset)
    if key not in DATASET_DEFAULTS:
        log.warning("no loss defaults for data set %r; using %s's", dataset, _FALLBACK_DATASET)
        key = _FALLBACK_DATASET
    return dict(DATASET_DEFAULTS[key].get(name, {}))


def ldam_margins(class_counts: Sequence[int] | Tensor, max_m: float = 0.5) -> Tensor:
    """LDAM's per-class margins m_j = max_m · n_j^(−1/4) / max_i n_i^(−1/4) (float64, shape (k,))."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    m = n.pow(-0.25)
    return m * (max_m / m.max())


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
    ):
        super().__init__()
        self.name = name
        self.num_classes = num_classes
        self.terms = tuple(terms)
        self.params = dict(params)
        self.scale = float(params["scale"])
        self.margin = float(params["margin"])

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.params.items() if k not in ("class_counts", "weight")}
        return f"name={self.name!r}, num_classes={self.num_classes}, " + ", ".join(
            f"{k}={v}" for k, v in shown.items()
        )

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
        return self.per_sample(logits, targets).mean()


class LDAMLoss(Loss):
    """LDAM (Cao et al. 2019): CE with the target logit lowered by s·(margin + m_y).

    ``weight`` (per-class, e.g. DRW's re-weighting) makes the batch reduction a weighted mean
    Σ w_{y_i} ℓ_i / Σ w_{y_i}, as ``F.cross_entropy(weight=...)`` and LDAM-DRW's code do.
    Change it during training with :meth:`set_weight`.
    """

    margins: Tensor
    weight: Tensor | None

    def __init__(self, num_classes: int, params: Mapping[str, Any]):
        super().__init__("ldam", num_classes, [(1.0, _ce)], params)
        counts = params["class_counts"]
        # float64 so float64 logits get exact margins; cast to the logits dtype per call.
        self.register_buffer("margins", ldam_margins(counts, params["max_m"]))
        self.register_buffer("weight", None)
        self.set_weight(params["weight"])

    def set_weight(self, weight: Sequence[float] | Tensor | None) -> None:
        """Per-class loss weights (length k, finite, ≥ 0, not all 0), or ``None`` for none."""
        if weight is None:
            self.weight = None
            return
        w = _as_float_vector("weight", weight, self.num_classes)
        if (w < 0).any() or not (w > 0).any():
            raise ValueError(f"loss 'ldam': weight must be ≥ 0 and not all 0, got {w.tolist()}")
        self.weight = w.to(self.margins.device)

    def _target_shift(self, targets: Tensor, dtype: torch.dtype) -> Tensor:
        return self.scale * (self.margin + self.margins.to(dtype)[targets])

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.weight is None:
            return super().forward(logits, targets)
        logits, targets = self._check(logits, targets)
        shifted = self.shifted_logits(logits, targets)
        return F.cross_entropy(shifted, targets, weight=self.weight.to(shifted.dtype))


# --------------------------------------------------------------------------------------------
# Builder


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


def _real(name: str, key: str, value: Any, *, low: float, low_open: bool, high: float | None = None) -> float:
    """A finite real in [low, high] (or (low, high]); ValueError naming loss and keyword."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (high is None or v <= high)
    if not ok:
        lo = f"{'>' if low_open else '≥'} {low:g}"
        rng = lo if high is None else f"{lo} and ≤ {high:g}"
        raise ValueError(f"loss {name!r}: {key} must be a finite number {rng}, got {value!r}")
    return float(value)


def _validate(name: str, num_classes: int, p: dict[str, Any]) -> None:
    """Check values in place (converting numbers to float)."""
    p["scale"] = _real(name, "scale", p["scale"], low=0.0, low_open=True)
    p["margin"] = _real(name, "margin", p["margin"], low=0.0, low_open=False)
    if "gamma" in p:
        p["gamma"] = _real(name, "gamma", p["gamma"], low=0.0, low_open=False)
    if "q" in p:
        p["q"] = _real(name, "q", p["q"], low=0.0, low_open=True, high=1.0)
    for key in ("alpha", "beta"):
        if key in p:
            p[key] = _real(name, key, p[key], low=0.0, low_open=False)
    if "max_m" in p:
        p["max_m"] = _real(name, "max_m", p["max_m"], low=0.0, low_open=True)
    if name == "ldam":
        if "class_counts" not in p:
            raise ValueError("loss 'ldam' needs class_counts (training images per class, all > 0)")
        counts = p["class_counts"]
        if isinstance(counts, Tensor):
            counts = counts.tolist()
        ok = isinstance(counts, Sequence) and not isinstance(counts, str | bytes)
        ok = ok and len(counts) == num_classes
        ok = ok and all(isinstance(c, Integral) and not isinstance(c, bool) and c > 0 for c in counts)
        if not ok:
            raise ValueError(
                f"loss 'ldam': class_counts must be {num_classes} ints (one per class), all > 0, got {counts!r}"
            )
        p["class_counts"] = [int(c) for c in counts]


def build_loss(name: str, num_classes: int, **params: Any) -> Loss:
    """The loss ``name`` for ``num_classes`` classes; see the module docstring for formulas.

    Keywords (``LOSS_PARAMS[name]`` lists those a loss accepts): ``scale`` (>0, default 1.0)
    and ``margin`` (≥0, default 0.0) for every loss; ``gamma`` (≥0, 0.5) for fl, nfl, nfl+rce;
    ``q`` (in (0, 1], 0.7) for gce; ``alpha``, ``beta`` (≥0) for sce (0.1, 1.0) and the
    combinations (1.0, 1.0); ``class_counts`` (required), ``max_m`` (>0, 0.5) and ``weight``
    (per-class tensor or None) for ldam. Data-set defaults are *not* applied here: see
    :func:`loss_defaults`. Raises ValueError on an unknown name, keyword or bad value.
    """
    _check_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an int ≥ 2, got {num_classes!r}")
    num_classes = int(num_classes)
    accepted = LOSS_PARAMS[name]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown keyword{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for loss {name!r}; accepted: {', '.join(accepted)}"
        )
    p: dict[str, Any] = {k: _GENERIC_DEFAULTS[k] for k in accepted if k in _GENERIC_DEFAULTS}
    if name == "sce":
        p.update(_SCE_DEFAULTS)
    p.update(params)
    _validate(name, num_classes, p)

    if name == "ldam":
        return LDAMLoss(num_classes, p)
    terms: list[tuple[float, Term]]
    if name in ("fl", "nfl"):
        fn = _fl if name == "fl" else _nfl
        terms = [(1.0, partial(fn, gamma=p["gamma"]))]
    elif name == "gce":
        terms = [(1.0, partial(_gce, q=p["q"]))]
    elif name == "sce":
        terms = [(p["alpha"], _ce), (p["beta"], _rce)]
    elif name == "nce+mae":
        terms = [(p["alpha"], _nce), (p["beta"], _mae)]
    elif name == "nce+rce":
        terms = [(p["alpha"], _nce), (p["beta"], _rce)]
    elif name == "nfl+rce":
        terms = [(p["alpha"], partial(_nfl, gamma=p["gamma"])), (p["beta"], _rce)]
    else:
        terms = [(1.0, {"ce": _ce, "mae": _mae, "nce": _nce, "rce": _rce, "nsl": _nsl}[name])]
    return Loss(name, num_classes, terms, p)
