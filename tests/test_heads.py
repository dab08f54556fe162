from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pal_study.heads import DEFAULT_SCALE, HEADS, build_head
from pal_study.prototypes import prototype_geometry, simplex_etf

K, D, B = 10, 16, 32


def _features(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed)) * 3.0


@pytest.mark.parametrize("kind", HEADS)
def test_shapes_and_attributes(kind):
    torch.manual_seed(0)
    head = build_head(kind, D, K, scale=7.0)
    z = _features()
    assert head(z).shape == (B, K)
    assert head.kind == kind and head.num_classes == K and head.in_dim == D
    assert head.weight_matrix().shape == (K, D) and not head.weight_matrix().requires_grad
    assert head.anchored == (kind in ("pal", "fnpal"))
    assert head.normalized == (kind in ("fnpal", "norm"))
    assert head.logit_scale == (7.0 if head.normalized else 1.0)
    cos = head.cosine_logits(z)
    assert cos.shape == (B, K) and cos.abs().max() <= 1 + 1e-6
    exp = F.normalize(z, dim=1) @ F.normalize(head.weight_matrix(), dim=1).T
    assert torch.allclose(cos, exp, atol=1e-6)


def test_default_scale_and_bad_scale():
    assert build_head("fnpal", D, K).logit_scale == DEFAULT_SCALE == 10.0
    assert build_head("norm", D, K).logit_scale == DEFAULT_SCALE
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="scale"):
            build_head("fnpal", D, K, scale=bad)
    assert build_head("pal", D, K, scale=30.0).logit_scale == 1.0


@pytest.mark.parametrize("kind", ["pal", "fnpal"])
def test_anchored_prototypes_are_a_frozen_buffer(kind):
    head = build_head(kind, D, K, scale=5.0)
    w0 = head.weight_matrix().clone()
    assert torch.equal(w0, simplex_etf(K, D, seed=0))
    assert not any(p is head.prototypes for p in head.parameters())
    assert list(head.parameters()) == []
    assert "prototypes" in head.state_dict()

    # A whole model with the head, trained a step with heavy weight decay: prototypes unchanged.
    model = nn.Sequential(nn.Linear(D, D), head)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.5)
    before = model[0].weight.detach().clone()
    loss = F.cross_entropy(model(_features()), torch.arange(B) % K)
    loss.backward()
    opt.step()
    assert not torch.equal(before, model[0].weight)  # the step did happen
    assert torch.equal(head.prototypes, w0)
    assert prototype_geometry(head.weight_matrix())["max_dev_from_etf"] < 1e-5

    # load_state_dict restores the buffer.
    state = {k: v.clone() for k, v in head.state_dict().items()}
    with torch.no_grad():
        head.prototypes.mul_(0.0)
    head.load_state_dict(state)
    assert torch.equal(head.prototypes, w0)


def test_pal_uses_raw_features():
    head = build_head("pal", D, K)
    z = _features()
    assert torch.allclose(head(z), z @ simplex_etf(K, D).T, atol=1e-6)
    # Raw features: scaling z scales the logits.
    assert torch.allclose(head(2 * z), 2 * head(z), atol=1e-5)


def test_fnpal_logits_are_scaled_cosines():
    s = 12.5
    head = build_head("fnpal", D, K, scale=s)
    z = _features()
    logits = head(z)
    assert logits.abs().max() <= s + 1e-5
    assert torch.allclose(logits, s * head.cosine_logits(z), atol=1e-5)
    assert torch.allclose(head(100 * z), logits, atol=1e-4)  # invariant to the feature norm
    # A feature equal to its prototype gets exactly the top logit s.
    assert torch.allclose(head(head.weight_matrix())[torch.arange(K), torch.arange(K)], torch.full((K,), s), atol=1e-5)


def test_zero_features_give_finite_logits_and_grads():
    for kind in HEADS:
        head = build_head(kind, D, K)
        z = torch.zeros(4, D, requires_grad=True)
        out = head(z)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(z.grad).all()
        assert torch.isfinite(head.cosine_logits(torch.zeros(4, D))).all()


def test_norm_head_trains_its_weight():
    torch.manual_seed(0)
    head = build_head("norm", D, K, scale=10.0)
    params = dict(head.named_parameters())
    assert set(params) == {"weight"}
    w0 = head.weight_matrix().clone()
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    F.cross_entropy(head(_features()), torch.arange(B) % K).backward()
    opt.step()
    assert not torch.equal(head.weight_matrix(), w0)
    # Logits are s·cos with normalised W, whatever W's norm.
    z = _features(1)
    with torch.no_grad():
        head.weight.mul_(3.0)
    assert torch.allclose(head(z), 10.0 * head.cosine_logits(z), atol=1e-5)
    assert head(z).abs().max() <= 10.0 + 1e-5


def test_linear_is_plain():
    torch.manual_seed(0)
    head = build_head("linear", D, K)
    assert isinstance(head, nn.Linear) and head.bias is not None
    assert {n for n, _ in head.named_parameters()} == {"weight", "bias"}
    z = _features()
    assert torch.allclose(head(z), z @ head.weight.T + head.bias, atol=1e-6)
    # Same init as nn.Linear from the same global RNG state.
    torch.manual_seed(0)
    ref = nn.Linear(D, K)
    assert torch.equal(head.weight, ref.weight) and torch.equal(head.bias, ref.bias)


def test_anchored_head_options():
    w = build_head("fnpal", 5, 10, prototypes="auto", prototype_steps=200).weight_matrix()
    geo = prototype_geometry(w)
    assert geo["num_classes"] == 10 and abs(geo["norm_min"] - 1) < 1e-5  # optimised, k > d+1
    with pytest.raises(ValueError, match="optimized"):
        build_head("pal", 5, 10, prototypes="etf")
    given = simplex_etf(K, D, seed=4)
    assert torch.equal(build_head("pal", D, K, prototypes=given).weight_matrix(), given)
    with pytest.raises(ValueError, match="shape"):
        build_head("pal", D + 1, K, prototypes=given)
    assert not torch.equal(build_head("pal", D, K, seed=1).weight_matrix(), simplex_etf(K, D, seed=0))


def test_unknown_kind_and_bad_sizes():
    with pytest.raises(ValueError, match="allowed: linear, pal, fnpal, norm"):
        build_head("cosine", D, K)
    with pytest.raises(ValueError, match="num_classes"):
        build_head("linear", D, 1)
    with pytest.raises(ValueError, match="in_dim"):
        build_head("linear", 0, K)
