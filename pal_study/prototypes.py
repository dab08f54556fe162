"""Class prototypes for anchored heads: simplex ETF, the paper's optimisation, geometry report.

PAL anchors the classifier to k unit prototypes with pairwise cosine -1/(k-1) (a simplex
equiangular tight frame) before training (docs/method.md). That configuration exists only for
d >= k-1; for k > d+1, or for non-negative (post-ReLU) features, we fall back to the paper's
``generate_weight`` optimisation.

Everything here draws randomness from local ``torch.Generator`` objects only, so the global RNG
is never touched and a seed gives the same prototypes bit for bit on CPU.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

METHODS = ("auto", "etf", "optimized")

# F.normalize's default; used so an all-zero row (possible after ReLU) gives 0, not NaN.
_EPS = 1e-12


def _check_k(num_classes: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")


def _check_dim(dim: int) -> None:
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")


def simplex_etf(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """k unit prototypes in R^d with all pairwise cosines -1/(k-1) (closed form).

    d >= k: ``W = sqrt(k/(k-1)) (I - 11ᵀ/k) Uᵀ`` with U (d×k) the orthonormal Q of a seeded
    Gaussian, so each seed gives a different random rotation of the same frame.
    d = k-1: the frame ``sqrt(k/(k-1)) (I - 11ᵀ/k)`` lives in R^k, orthogonal to the ones
    vector; we express it in an orthonormal basis B (k×(k-1)) of that complement, which is
    ``sqrt(k/(k-1)) B`` because every column of B is already centred. B is the QR of a seeded
    matrix whose first column is the ones vector, so this branch is seed-dependent too.

    Computed in float64 and cast, so the cosines match -1/(k-1) to float32 precision.
    Returns a float32 tensor of shape (k, d). Raises ValueError for k < 2 or d < k-1.
    """
    _check_k(num_classes)
    _check_dim(dim)
    k = num_classes
    if dim < k - 1:
        raise ValueError(
            f"no simplex ETF of {k} classes exists in dim={dim} (needs dim >= k-1 = {k - 1}); "
            "use optimized_prototypes (or make_prototypes(method='auto'))"
        )
    g = torch.Generator().manual_seed(int(seed))
    c = math.sqrt(k / (k - 1))
    if dim >= k:
        u, _ = torch.linalg.qr(torch.randn(dim, k, generator=g, dtype=torch.float64))
        centred = u.T - u.T.mean(dim=0, keepdim=True)  # (I - 11ᵀ/k) Uᵀ
        w = c * centred
    else:
        a = torch.randn(k, k, generator=g, dtype=torch.float64)
        a[:, 0] = 1.0
        q, _ = torch.linalg.qr(a)
        w = c * q[:, 1:]
    return w.to(torch.float32).contiguous()


def _kaiming_normal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    # nn.init.kaiming_normal_ defaults (fan_in = cols, gain sqrt(2)), with a local generator.
    return torch.randn(rows, cols, generator=g, dtype=torch.float32) * math.sqrt(2.0 / cols)


def _normalize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.norm(dim=1, keepdim=True).clamp_min(_EPS)
    return x / n, n


def _normalize_backward(grad_out: torch.Tensor, xn: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    # d(x/|x|) = (I - x̂x̂ᵀ)/|x|; matches F.normalize's gradient whenever |x| > eps.
    return (grad_out - xn * (xn * grad_out).sum(dim=1, keepdim=True)) / n


# The paper's generate_weight runs 20000 steps; measured here, k=100 in d=64 (CIFAR-100 on
# ResNet-32) then still ends at max cosine 0.025-0.09 depending on the seed, while 40000 steps
# reach ~0.003 for every seed (about 5 s on one CPU thread). So the default is 40000.
DEFAULT_STEPS = 40000


def optimized_prototypes(
    num_classes: int,
    dim: int,
    *,
    use_relu: bool = False,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    scale: float = 5.0,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
) -> torch.Tensor:
    """The paper's ``generate_weight``: prototypes spread out by a k-sample softmax problem.

    Free Z, W (k×d, Kaiming-normal from a local generator seeded with ``seed``); one sample per
    class (Z's row y has label y); loss = mean CE of ``scale · normalize(f(Z)) normalize(W)ᵀ``
    with f = ReLU if ``use_relu`` else identity; full-batch SGD (momentum, weight decay on both
    Z and W, as the paper's single optimiser over both) with cosine annealing to 0 over
    ``steps``. Returns ``normalize(W)`` as float32 (k, d), as the paper's code does.

    With ``use_relu`` the samples the prototypes were fitted against are non-negative, so the
    returned prototypes are the ones a non-negative feature can separate: for every class y the
    non-negative vector ``normalize(relu(w_y))`` has its largest cosine with w_y (a positive
    margin over every other prototype). W itself is not constrained to be non-negative, since
    its negative entries push other classes' non-negative features away. In few dimensions the
    ReLU can strand two classes' samples on one direction (e.g. k=10, d=5, seed 0), giving two
    identical prototypes; that is logged as a WARNING (see ``prototype_geometry``'s cos_max).

    Convergence: at the paper's 20000 steps, k=100 in d=64 ends with max cosine 0.025-0.09
    depending on the seed; 40000 steps reach ~0.003 (the cross-polytope-like optimum, max 0).

    Speed: gradients and the SGD/cosine-annealing update are written out by hand (identical to
    autograd + torch.optim.SGD + CosineAnnealingLR up to float rounding; tests check this),
    so the loop carries no autograd or scheduler overhead and needs no grad mode. The global
    RNG is never used.
    """
    _check_k(num_classes)
    _check_dim(dim)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    for name, value in (("scale", scale), ("lr", lr)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")

    k = num_classes
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        z = _kaiming_normal(k, dim, g)
        w = _kaiming_normal(k, dim, g)
        buf_z = torch.zeros_like(z)
        buf_w = torch.zeros_like(w)
        eye = torch.eye(k, dtype=torch.float32)
        coef = scale / k  # d(mean CE)/d(logits) carries 1/k; fold s in once
        for t in range(steps):
            lr_t = 0.5 * lr * (1.0 + math.cos(math.pi * t / steps))
            zr = z.clamp_min(0.0) if use_relu else z
            zn, z_norm = _normalize_rows(zr)
            wn, w_norm = _normalize_rows(w)
            logits = (zn @ wn.T).mul_(scale)
            g_logits = torch.softmax(logits, dim=1).sub_(eye).mul_(coef)  # (p - onehot)·s/k
            grad_z = _normalize_backward(g_logits @ wn, zn, z_norm)
            if use_relu:
                grad_z = grad_z * (z > 0)
            grad_w = _normalize_backward(g_logits.T @ zn, wn, w_norm)
            # torch.optim.SGD: d = grad + wd·p; buf = m·buf + d; p -= lr·buf
            buf_z.mul_(momentum).add_(grad_z).add_(z, alpha=weight_decay)
            buf_w.mul_(momentum).add_(grad_w).add_(w, alpha=weight_decay)
            z.sub_(buf_z, alpha=lr_t)
            w.sub_(buf_w, alpha=lr_t)
        out, _ = _normalize_rows(w.to(torch.float64))
    out = out.to(torch.float32).contiguous()
    _warn_if_collapsed(out, use_relu)
    return out


# Two prototypes this close are one direction for two classes: those classes cannot be told apart.
_COLLAPSE_COS = 0.99


def _warn_if_collapsed(w: torch.Tensor, use_relu: bool) -> None:
    cos = w @ w.T
    cos.fill_diagonal_(-1.0)
    i, j = divmod(int(cos.argmax()), w.shape[0])
    if float(cos[i, j]) > _COLLAPSE_COS:
        n_pairs = int((cos > _COLLAPSE_COS).sum()) // 2
        why = (
            " (with use_relu, samples whose ReLU'd coordinates died can get stuck on one "
            "direction; more dims or another seed help)"
            if use_relu
            else ""
        )
        log.warning(
            "optimized prototypes collapsed: %d pair(s) of classes share a direction, e.g. %d and %d (cos %.4f)%s",
            n_pairs,
            i,
            j,
            float(cos[i, j]),
            why,
        )


def make_prototypes(
    num_classes: int,
    dim: int,
    method: str = "auto",
    *,
    use_relu: bool = False,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
) -> torch.Tensor:
    """Prototypes for an anchored head.

    ``auto``: the simplex ETF when it exists (dim >= k-1) and features may be negative, else
    the optimised prototypes, with a WARNING saying why. ``etf``: ValueError when k > dim+1.
    ``optimized``: always the paper's optimisation (``steps`` steps).
    """
    if method not in METHODS:
        raise ValueError(f"unknown prototype method {method!r}; allowed: {', '.join(METHODS)}")
    _check_k(num_classes)
    _check_dim(dim)
    k = num_classes
    if method == "auto":
        reasons = []
        if k > dim + 1:
            reasons.append(f"k={k} > d+1={dim + 1}: no simplex ETF exists")
        if use_relu:
            reasons.append("features are non-negative (use_relu): an ETF prototype is out of their reach")
        if reasons:
            log.warning(
                "prototypes: using optimized prototypes (%d steps) instead of a simplex ETF: %s",
                steps,
                "; ".join(reasons),
            )
            method = "optimized"
        else:
            method = "etf"
    if method == "etf":
        if use_relu:
            log.warning(
                "prototypes: method='etf' with use_relu=True: non-negative features "
                "cannot reach these prototypes (cosine ceiling well below 1)"
            )
        return simplex_etf(k, dim, seed=seed)
    return optimized_prototypes(k, dim, use_relu=use_relu, seed=seed, steps=steps)


def prototype_geometry(w: torch.Tensor) -> dict[str, float]:
    """Norms and pairwise cosines of k prototypes (rows of W), as plain Python numbers.

    Keys: num_classes, dim (ints); norm_min/max/mean; cos_min/max/mean over pairs i != j;
    etf_cos = -1/(k-1); max_dev_from_etf = max |cos_ij - etf_cos|; sum_norm = ‖Σ_j ŵ_j‖ of the
    row-normalised prototypes (0 for an ETF).
    """
    if w.ndim != 2 or w.shape[0] < 2:
        raise ValueError(f"prototypes must be a k×d matrix with k >= 2, got shape {tuple(w.shape)}")
    w64 = w.detach().to(device="cpu", dtype=torch.float64)
    k, d = w64.shape
    norms = w64.norm(dim=1)
    wn = w64 / norms.clamp_min(_EPS).unsqueeze(1)
    cos = (wn @ wn.T)[~torch.eye(k, dtype=torch.bool)]
    etf = -1.0 / (k - 1)
    return {
        "num_classes": int(k),
        "dim": int(d),
        "norm_min": float(norms.min()),
        "norm_max": float(norms.max()),
        "norm_mean": float(norms.mean()),
        "cos_min": float(cos.min()),
        "cos_max": float(cos.max()),
        "cos_mean": float(cos.mean()),
        "etf_cos": float(etf),
        "max_dev_from_etf": float((cos - etf).abs().max()),
        "sum_norm": float(wn.sum(dim=0).norm()),
    }


_SUFFIXES = (".pt", ".npy")


def save_prototypes(w: torch.Tensor, path: str | Path) -> None:
    """Write W as ``.pt`` (torch.save of the tensor) or ``.npy`` (numpy.save), by suffix."""
    p = Path(path)
    if p.suffix not in _SUFFIXES:
        raise ValueError(f"prototype file {str(p)!r}: suffix {p.suffix!r} not allowed; allowed: .pt, .npy")
    t = w.detach().cpu().contiguous()
    if p.suffix == ".pt":
        torch.save(t, p)
    else:
        np.save(p, t.numpy())


def load_prototypes(path: str | Path) -> torch.Tensor:
    """Read prototypes written by :func:`save_prototypes` (no pickle: safe on untrusted files)."""
    p = Path(path)
    if p.suffix not in _SUFFIXES:
        raise ValueError(f"prototype file {str(p)!r}: suffix {p.suffix!r} not allowed; allowed: .pt, .npy")
    if p.suffix == ".pt":
        t = torch.load(p, weights_only=True, map_location="cpu")
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"prototype file {str(p)!r} holds a {type(t).__name__}, not a tensor")
        return t
    return torch.from_numpy(np.load(p, allow_pickle=False))
