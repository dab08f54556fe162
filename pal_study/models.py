"""Backbones: ``forward(x) -> features``; the classifier head is separate (``heads.py``).

Every model has ``feature_dim``. ``last_relu=False`` drops the ReLU right before the feature
output, so features can point anywhere on the sphere: a fixed-prototype head cannot align a
non-negative feature with a random ETF prototype (PAL_SPEC §1, cosine ceiling ≈ 0.7).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("digits_mlp", "digits_cnn", "mnist_cnn", "cifar_cnn8", "resnet32")


def list_models() -> list[str]:
    return list(MODELS)


def _relu(keep: bool) -> nn.Module:
    return nn.ReLU(inplace=True) if keep else nn.Identity()


class DigitsMLP(nn.Module):
    """Flatten → 256 → 128 (features). Small enough that a digits epoch is milliseconds."""

    def __init__(self, in_features: int, *, hidden: int = 256, feature_dim: int = 128, last_relu: bool = True):
        super().__init__()
        self.feature_dim = feature_dim
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, feature_dim),
            nn.BatchNorm1d(feature_dim),
            _relu(last_relu),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DigitsCNN(nn.Module):
    """1×8×8 → two 3×3 conv blocks → 4×4 pool → 128 features."""

    def __init__(self, in_channels: int, *, last_relu: bool = True):
        super().__init__()
        self.feature_dim = 128
        self.features = nn.Sequential(*_conv_bn(in_channels, 32), *_conv_bn(32, 64), nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Flatten(), nn.LazyLinear(128), nn.BatchNorm1d(128), _relu(last_relu))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class MnistCNN(nn.Module):
    """APL/ALFs' 4-layer MNIST CNN: [conv32-BN-ReLU-pool] [conv64-BN-ReLU-pool] FC128 (features)."""

    def __init__(self, in_channels: int = 1, *, last_relu: bool = True):
        super().__init__()
        self.feature_dim = 128
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 32), nn.MaxPool2d(2), *_conv_bn(32, 64), nn.MaxPool2d(2)
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.LazyLinear(128), nn.BatchNorm1d(128), _relu(last_relu))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class CifarCNN8(nn.Module):
    """APL's 8-layer CIFAR-10 CNN: 3 blocks of two 3×3 convs (64, 128, 196) + FC 256 (features)."""

    def __init__(self, in_channels: int = 3, *, last_relu: bool = True):
        super().__init__()
        self.feature_dim = 256
        blocks: list[nn.Module] = []
        cin = in_channels
        for c in (64, 128, 196):
            blocks += [*_conv_bn(cin, c), *_conv_bn(c, c), nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Sequential(nn.Flatten(), nn.LazyLinear(256), nn.BatchNorm1d(256), _relu(last_relu))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class _LambdaShortcut(nn.Module):
    """Option-A shortcut of the CIFAR ResNets: subsample and zero-pad channels (no parameters)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, planes: int, stride: int = 1, *, final_relu: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            _LambdaShortcut(planes) if stride != 1 or cin != planes else nn.Identity()
        )
        self.final_relu = final_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out) if self.final_relu else out


class ResNet32(nn.Module):
    """LDAM-DRW's CIFAR ResNet-32: 16/32/64 channels, 5 blocks per stage, avg-pool → 64 features."""

    def __init__(self, in_channels: int = 3, *, last_relu: bool = True, blocks_per_stage: int = 5):
        super().__init__()
        self.feature_dim = 64
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        cin = 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(blocks_per_stage):
                is_last = stage == 2 and i == blocks_per_stage - 1
                layers.append(BasicBlock(cin, planes, 2 if (i == 0 and stage > 0) else 1,
                                         final_relu=last_relu or not is_last))
                cin = planes
        self.layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def build_model(arch: str, input_shape: tuple[int, ...], *, last_relu: bool = True) -> nn.Module:
    """Build a backbone for inputs of ``input_shape`` (per sample, e.g. (1, 8, 8) or (32,))."""
    shape = tuple(int(d) for d in input_shape)
    if arch not in MODELS:
        raise ValueError(f"unknown arch {arch!r}; allowed: {', '.join(MODELS)}")
    if arch == "digits_mlp":
        model: nn.Module = DigitsMLP(_numel(shape), last_relu=last_relu)
    else:
        if len(shape) != 3:
            raise ValueError(f"arch {arch!r} expects image inputs (C, H, W), got shape {shape}")
        c, h, w = shape
        need = {"digits_cnn": 2, "mnist_cnn": 4, "cifar_cnn8": 8, "resnet32": 4}[arch]
        if h < need or w < need or h % need or w % need:
            raise ValueError(f"arch {arch!r} needs H and W divisible by {need}, got {h}×{w}")
        cls = {"digits_cnn": DigitsCNN, "mnist_cnn": MnistCNN, "cifar_cnn8": CifarCNN8, "resnet32": ResNet32}[arch]
        model = cls(c, last_relu=last_relu)
    # Materialise lazy layers now, so parameter counts, optimisers and state dicts are complete.
    with torch.no_grad():
        was_training = model.training
        model.eval()
        model(torch.zeros(2, *shape))
        model.train(was_training)
    return model


def default_arch(dataset: str, input_shape: tuple[int, ...]) -> str:
    """The data set's network (PAL_SPEC §5); synthetic data picks by input shape."""
    fixed = {"digits": "digits_mlp", "mnist": "mnist_cnn", "cifar10": "cifar_cnn8", "cifar100": "resnet32"}
    if dataset in fixed:
        return fixed[dataset]
    shape = tuple(input_shape)
    if len(shape) == 3 and shape[1] >= 32:
        return "cifar_cnn8"
    if len(shape) == 3 and shape[1] >= 16:
        return "mnist_cnn"
    return "digits_mlp"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
