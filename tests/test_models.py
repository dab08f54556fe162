from __future__ import annotations

import pytest
import torch

from pal_study.models import MODELS, build_model, count_parameters, default_arch

SHAPES = {"digits_mlp": (1, 8, 8), "digits_cnn": (1, 8, 8), "mnist_cnn": (1, 28, 28),
          "cifar_cnn8": (3, 32, 32), "resnet32": (3, 32, 32)}
DIMS = {"digits_mlp": 128, "digits_cnn": 128, "mnist_cnn": 128, "cifar_cnn8": 256, "resnet32": 64}


@pytest.mark.parametrize("arch", MODELS)
def test_feature_shape_sign_and_backward(arch):
    torch.manual_seed(0)
    shape = SHAPES[arch]
    x = torch.randn(8, *shape)
    keep = build_model(arch, shape, last_relu=True)
    drop = build_model(arch, shape, last_relu=False)
    assert keep.feature_dim == drop.feature_dim == DIMS[arch]
    # Shift the last BatchNorm down: only the final ReLU can then keep features non-negative.
    for m in (keep, drop):
        [bn for bn in m.modules() if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm)][-1].bias.data.fill_(-5.0)
    z_keep, z_drop = keep(x), drop(x)
    assert z_keep.shape == (8, DIMS[arch])
    assert (z_keep >= 0).all()  # the standard net ends with a ReLU
    assert (z_drop < 0).any()  # without it, features can point anywhere
    z_drop.sum().backward()
    assert all(p.grad is not None for p in drop.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ["mnist_cnn", "resnet32"])
def test_channels_last_gives_same_features(arch):
    torch.manual_seed(0)
    m = build_model(arch, SHAPES[arch]).eval()
    x = torch.randn(4, *SHAPES[arch])
    cl = m.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(m(x), cl, atol=1e-5)


def test_resnet32_size_matches_the_cifar_resnet():
    # The CIFAR ResNet-32 has 0.46M parameters including its 64x10 classifier.
    n = count_parameters(build_model("resnet32", (3, 32, 32)))
    assert 455_000 < n + 650 < 470_000


def test_default_arch_and_errors():
    assert default_arch("digits", (1, 8, 8)) == "digits_mlp"
    assert default_arch("cifar100", (3, 32, 32)) == "resnet32"
    assert default_arch("synthetic", (32,)) == "digits_mlp"
    assert default_arch("synthetic", (1, 28, 28)) == "mnist_cnn"
    assert default_arch("synthetic", (3, 32, 32)) == "cifar_cnn8"
    with pytest.raises(ValueError, match="allowed: digits_mlp"):
        build_model("vgg16", (3, 32, 32))
    with pytest.raises(ValueError, match="image inputs"):
        build_model("resnet32", (64,))
    with pytest.raises(ValueError, match="divisible by 8"):
        build_model("cifar_cnn8", (3, 28, 28))
