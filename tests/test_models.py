from __future__ import annotations

import pytest
import torch
from torch import nn

from pal_study.models import MODELS, build_model, count_parameters, default_arch, list_models

SHAPES = {
    "digits_mlp": (1, 8, 8),
    "digits_cnn": (1, 8, 8),
    "mnist_cnn": (1, 28, 28),
    "cifar_cnn8": (3, 32, 32),
    "resnet32": (3, 32, 32),
    "mnist1d_mlp": (1, 40),
    "mnist1d_cnn": (1, 40),
}
DIMS = {
    "digits_mlp": 128,
    "digits_cnn": 128,
    "mnist_cnn": 128,
    "cifar_cnn8": 256,
    "resnet32": 64,
    "mnist1d_mlp": 100,
    "mnist1d_cnn": 128,
}
CONV = [a for a in MODELS if a != "digits_mlp"]
IMAGE_CONV = [a for a in CONV if len(SHAPES[a]) == 3]  # channels_last is a 4-D (image batch) layout


def _shift_last_bn(model: nn.Module, value: float) -> None:
    # A strongly negative shift on the last BN leaves the final ReLU as the only thing that can
    # keep every feature non-negative.
    # (mnist1d_mlp, the paper's MLP, has no BN: its last Linear's bias then.)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    last = bns[-1] if bns else [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    last.bias.data.fill_(value)


def test_registry():
    assert list_models() == list(MODELS) == list(SHAPES)


@pytest.mark.parametrize("arch", MODELS)
def test_feature_shape_sign_and_backward(arch):
    torch.manual_seed(0)
    shape = SHAPES[arch]
    x = torch.randn(6, *shape)
    keep = build_model(arch, shape, last_relu=True, seed=0)
    drop = build_model(arch, shape, last_relu=False, seed=0)
    assert isinstance(keep.feature_dim, int) and keep.feature_dim == drop.feature_dim == DIMS[arch]
    for m in (keep, drop):
        _shift_last_bn(m, -5.0)
    z_keep, z_drop = keep(x), drop(x)
    assert z_keep.shape == z_drop.shape == (6, DIMS[arch])
    assert (z_keep >= 0).all()  # the standard net ends with a ReLU
    assert (z_drop < 0).any()  # without it, features can point anywhere
    z_drop.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in drop.parameters())
    assert any(p.grad.abs().sum() > 0 for p in drop.parameters())


@pytest.mark.parametrize("arch", IMAGE_CONV)
def test_channels_last_gives_same_features(arch):
    m = build_model(arch, SHAPES[arch], seed=1).eval()
    x = torch.randn(3, *SHAPES[arch], generator=torch.Generator().manual_seed(1))
    ref = m(x)
    m_cl = m.to(memory_format=torch.channels_last)
    assert torch.allclose(m_cl(x.contiguous(memory_format=torch.channels_last)), ref, atol=1e-5)


@pytest.mark.parametrize("arch", MODELS)
def test_autocast_forward_and_backward(arch):
    m = build_model(arch, SHAPES[arch], seed=2).eval()
    x = torch.randn(4, *SHAPES[arch], generator=torch.Generator().manual_seed(2))
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = m(x).float()
    assert torch.allclose(low, ref, atol=0.05 * ref.abs().max().item(), rtol=0.05)
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = m(x)
    assert z.shape == (4, DIMS[arch]) and torch.isfinite(z.float()).all()
    z.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_seed_makes_init_repeatable_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_model("mnist_cnn", (1, 28, 28), seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_model("mnist_cnn", (1, 28, 28), seed=7)
    c = build_model("mnist_cnn", (1, 28, 28), seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["fc.1.weight"], sc["fc.1.weight"])


def test_parameter_counts_pin_the_architectures():
    # MNIST CNN: conv 1→32 (288) + BN (64) + conv 32→64 (18432) + BN (128) + FC 3136→128
    # (401408) + BN1d (256); APL's has 352 more in conv/FC biases that BN cancels.
    assert count_parameters(build_model("mnist_cnn", (1, 28, 28))) == 420_576
    # CIFAR CNN: six 3x3 convs 64,64,128,128,196,196 (831312) + BN (1552) + FC 3136→256 (802816) + BN1d (512).
    assert count_parameters(build_model("cifar_cnn8", (3, 32, 32))) == 1_636_192
    # The CIFAR ResNet-32 has 464,154 parameters including its 64x10 (+10 bias) classifier.
    assert count_parameters(build_model("resnet32", (3, 32, 32))) + 650 == 464_154
    resnet = build_model("resnet32", (3, 32, 32))
    assert sum(isinstance(m, nn.Conv2d) for m in resnet.modules()) == 31  # + the FC = 32 layers


def test_other_input_shapes():
    flat = build_model("digits_mlp", (64,))
    assert flat(torch.randn(3, 64)).shape == (3, 128)
    odd = build_model("mnist_cnn", (3, 30, 30))  # pooling floors: 30 → 15 → 7
    assert odd(torch.randn(2, 3, 30, 30)).shape == (2, 128)
    small = build_model("resnet32", (1, 8, 8))
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 64)


def test_default_arch():
    assert default_arch("digits", (1, 8, 8)) == "digits_mlp"
    assert default_arch("mnist", (1, 28, 28)) == "mnist_cnn"
    assert default_arch("cifar10", (3, 32, 32)) == "cifar_cnn8"
    assert default_arch("cifar100", (3, 32, 32)) == "resnet32"
    assert default_arch("synthetic", (32,)) == "digits_mlp"
    assert default_arch("synthetic", (1, 28, 28)) == "mnist_cnn"
    assert default_arch("synthetic", (3, 32, 32)) == "cifar_cnn8"
    assert default_arch("synthetic", (1, 8, 8)) == "digits_mlp"
    with pytest.raises(ValueError, match=r"unknown dataset 'svhn'.*synthetic"):
        default_arch("svhn", (3, 32, 32))


def test_errors_name_the_bad_value_and_what_is_allowed():
    with pytest.raises(ValueError, match="'vgg16'; allowed: digits_mlp, digits_cnn, mnist_cnn, cifar_cnn8, resnet32"):
        build_model("vgg16", (3, 32, 32))
    with pytest.raises(ValueError, match=r"'resnet32' expects image inputs \(C, H, W\)"):
        build_model("resnet32", (64,))
    with pytest.raises(ValueError, match=r"'cifar_cnn8' expects H, W >= 8.*4x4"):
        build_model("cifar_cnn8", (3, 4, 4))
    with pytest.raises(ValueError, match="non-empty"):
        build_model("digits_mlp", ())
