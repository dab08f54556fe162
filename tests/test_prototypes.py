from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pal_study.prototypes import (
    DEFAULT_STEPS,
    load_prototypes,
    make_prototypes,
    optimized_prototypes,
    prototype_geometry,
    save_prototypes,
    simplex_etf,
)

TOL = 1e-5


def _cos(w: torch.Tensor) -> torch.Tensor:
    w = w.double()
    return F.normalize(w, dim=1) @ F.normalize(w, dim=1).T


def _offdiag(m: torch.Tensor) -> torch.Tensor:
    return m[~torch.eye(m.shape[0], dtype=torch.bool)]


@st.composite
def etf_shapes(draw):
    k = draw(st.integers(2, 60))
    # Both branches: d = k-1 (built in R^k, projected) and d >= k (QR in R^d).
    d = draw(st.one_of(st.just(k - 1), st.integers(k, 128)))
    return k, d


@settings(max_examples=60, deadline=None)
@given(shape=etf_shapes(), seed=st.integers(0, 2**31 - 1))
def test_etf_geometry(shape, seed):
    k, d = shape
    w = simplex_etf(k, d, seed=seed)
    assert w.shape == (k, d) and w.dtype == torch.float32
    w64 = w.double()
    assert torch.allclose(w64.norm(dim=1), torch.ones(k, dtype=torch.float64), atol=TOL)
    cos = _offdiag(w64 @ w64.T)
    assert torch.allclose(cos, torch.full_like(cos, -1.0 / (k - 1)), atol=TOL)
    assert w64.sum(dim=0).norm() < TOL * k
    # Same seed, same bits; and the global RNG is not used.
    state = torch.random.get_rng_state()
    assert torch.equal(w, simplex_etf(k, d, seed=seed))
    assert torch.equal(state, torch.random.get_rng_state())


@settings(max_examples=20, deadline=None)
@given(k=st.integers(2, 40), extra=st.integers(0, 40), seed=st.integers(0, 1000))
def test_etf_seeds_differ(k, extra, seed):
    d = k + extra  # d >= k: a random rotation per seed
    assert not torch.allclose(simplex_etf(k, d, seed=seed), simplex_etf(k, d, seed=seed + 1), atol=1e-3)


def test_etf_rejects_bad_shapes():
    with pytest.raises(ValueError, match="optimized_prototypes"):
        simplex_etf(10, 8)
    with pytest.raises(ValueError, match="num_classes"):
        simplex_etf(1, 8)
    with pytest.raises(ValueError, match="dim"):
        simplex_etf(3, 0)


def _reference_generate_weight(k, d, *, use_relu, seed, steps, scale=5.0):
    """The paper's procedure written the obvious way: autograd, torch.optim, an LR scheduler."""
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(k, d, generator=g) * math.sqrt(2 / d)).requires_grad_()
    w = (torch.randn(k, d, generator=g) * math.sqrt(2 / d)).requires_grad_()
    opt = torch.optim.SGD([z, w], lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    y = torch.arange(k)
    for _ in range(steps):
        zz = F.relu(z) if use_relu else z
        loss = F.cross_entropy(scale * F.normalize(zz) @ F.normalize(w).T, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return F.normalize(w.detach())


@pytest.mark.parametrize("use_relu", [False, True])
def test_optimized_matches_autograd_reference(use_relu):
    ref = _reference_generate_weight(12, 6, use_relu=use_relu, seed=3, steps=300)
    got = optimized_prototypes(12, 6, use_relu=use_relu, seed=3, steps=300)
    assert torch.allclose(got, ref, atol=1e-5)


def test_optimized_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    with torch.no_grad():
        a = optimized_prototypes(10, 5, seed=7, steps=500)
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(a, optimized_prototypes(10, 5, seed=7, steps=500))
    assert not torch.allclose(a, optimized_prototypes(10, 5, seed=8, steps=500))
    assert a.dtype == torch.float32 and a.shape == (10, 5)
    assert torch.allclose(a.double().norm(dim=1), torch.ones(10, dtype=torch.float64), atol=1e-6)


# k > d+1 with k <= 2d: the best max-cosine is 0. Steps lowered for the small cases where the
# property still holds (seeds 0-2, measured) to keep the file fast; (100, 64), CIFAR-100 on
# ResNet-32, runs the default (the paper's 20000 steps stop at 0.025-0.09 there).
@pytest.mark.parametrize("k,d,steps", [(10, 5, 5000), (20, 12, 20000), (100, 64, DEFAULT_STEPS)])
def test_optimized_beyond_etf_reaches_near_orthogonal(k, d, steps):
    geo = prototype_geometry(optimized_prototypes(k, d, steps=steps))
    assert geo["cos_max"] <= 0.05
    assert abs(geo["norm_min"] - 1) < 1e-5 and abs(geo["norm_max"] - 1) < 1e-5


@pytest.mark.parametrize("k,d,steps", [(10, 9, 5000), (10, 32, 2000)])
def test_optimized_approaches_etf_when_it_exists(k, d, steps):
    assert prototype_geometry(optimized_prototypes(k, d, steps=steps))["max_dev_from_etf"] < 0.02


def _nonneg_certificate(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each class y the non-negative feature relu(w_y)/|relu(w_y)|: its cosine with w_y
    (the reachable ceiling) and its margin over the best other prototype."""
    v = F.normalize(w.double().clamp_min(0), dim=1)
    cos = v @ F.normalize(w.double(), dim=1).T
    own = cos.diag().clone()
    cos.fill_diagonal_(-math.inf)
    return own, own - cos.max(dim=1).values


@pytest.mark.parametrize("k,d", [(20, 12), (10, 32)])
def test_relu_prototypes_are_reachable_by_nonnegative_features(k, d):
    own, margin = _nonneg_certificate(optimized_prototypes(k, d, use_relu=True, steps=2000))
    assert own.min() > 0.8 and margin.min() > 0.3
    # ...unlike a simplex ETF (or plain optimised prototypes), which the orthant barely reaches.
    etf_own, _ = _nonneg_certificate(simplex_etf(k, max(d, k - 1)))
    assert etf_own.min() < 0.6


def test_relu_collapse_is_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="pal_study.prototypes"):
        w = optimized_prototypes(10, 5, use_relu=True, seed=0, steps=2000)
    assert prototype_geometry(w)["cos_max"] > 0.99
    assert any("collapsed" in r.getMessage() for r in caplog.records)


def test_auto_picks_etf_or_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="pal_study.prototypes"):
        w = make_prototypes(10, 9, "auto")
    assert not caplog.records and torch.equal(w, simplex_etf(10, 9))

    with caplog.at_level(logging.WARNING, logger="pal_study.prototypes"):
        w = make_prototypes(10, 5, "auto", steps=200)
    assert any("k=10 > d+1=6" in r.getMessage() for r in caplog.records)
    assert torch.equal(w, optimized_prototypes(10, 5, steps=200))

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pal_study.prototypes"):
        make_prototypes(4, 16, "auto", use_relu=True, steps=200)
    assert any("non-negative" in r.getMessage() for r in caplog.records)


def test_make_prototypes_errors():
    with pytest.raises(ValueError, match="optimized"):
        make_prototypes(10, 4, "etf")
    with pytest.raises(ValueError, match="allowed: auto, etf, optimized"):
        make_prototypes(10, 4, "simplex")
    with pytest.raises(ValueError, match="steps"):
        optimized_prototypes(10, 4, steps=0)


def test_geometry_on_hand_made_example():
    # Three 2-d prototypes: e1, 2·e2 (norm 2), and -e1.
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    geo = prototype_geometry(w)
    assert set(geo) == {
        "num_classes",
        "dim",
        "norm_min",
        "norm_max",
        "norm_mean",
        "cos_min",
        "cos_max",
        "cos_mean",
        "etf_cos",
        "max_dev_from_etf",
        "sum_norm",
    }
    assert geo["num_classes"] == 3 and geo["dim"] == 2
    assert geo["norm_min"] == pytest.approx(1.0) and geo["norm_max"] == pytest.approx(2.0)
    assert geo["norm_mean"] == pytest.approx(4 / 3)
    # Pairwise cosines: (1,2)=0, (1,3)=-1, (2,3)=0.
    assert geo["cos_min"] == pytest.approx(-1.0) and geo["cos_max"] == pytest.approx(0.0)
    assert geo["cos_mean"] == pytest.approx(-1 / 3)
    assert geo["etf_cos"] == pytest.approx(-0.5)
    assert geo["max_dev_from_etf"] == pytest.approx(0.5)
    assert geo["sum_norm"] == pytest.approx(1.0)  # e1 + e2 - e1 on unit rows
    json.dumps(geo)
    assert all(type(v) in (int, float) for v in geo.values())


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_save_load_round_trip(tmp_path, suffix):
    w = simplex_etf(7, 11, seed=2)
    p = tmp_path / f"w{suffix}"
    save_prototypes(w, p)
    back = load_prototypes(p)
    assert isinstance(back, torch.Tensor) and torch.equal(back, w)
    if suffix == ".npy":
        assert np.load(p).shape == (7, 11)


def test_save_load_reject_other_suffixes(tmp_path):
    with pytest.raises(ValueError, match=r"\.pt, \.npy"):
        save_prototypes(simplex_etf(3, 4), tmp_path / "w.csv")
    with pytest.raises(ValueError, match=r"\.pt, \.npy"):
        load_prototypes(tmp_path / "w.txt")
