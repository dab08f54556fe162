"""Backbones: ``forward(x) -> features`` of shape (batch, ``feature_dim``); the classifier head is
separate (``heads.py``).

``last_relu=False`` drops the ReLU right before the feature output, so features can point
anywhere on the sphere: a fixed-prototype head cannot align a non-negative feature with a random
ETF prototype (PAL_SPEC §1, cosine ceiling ≈ 0.7). ``last_relu=True`` is the standard network.

Sources: the MNIST and CIFAR-10 CNNs follow Active-Passive Losses' ``ToyModel`` (conv-BN-ReLU
blocks, FC-BN-ReLU feature layer, Kaiming-uniform conv / Xavier-uniform linear init); ResNet-32
follows LDAM-DRW's ``resnet_cifar`` (option-A shortcuts, Kaiming-normal init). Differences, all
without effect on what the network computes: convolutions and linear layers that feed a
BatchNorm have no bias (BN subtracts it again, so it would only carry weight decay), and the
feature-layer input size is computed from the input shape instead of being hard-coded.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

MODELS = ("digits_mlp", "digits_cnn", "mnist_cnn", "cifar_cnn8", "resnet32")

# Smallest H and W each conv net accepts: every 2×2 max-pool / stride-2 stage must leave ≥ 1 pixel.
_MIN_SIDE = {"digits_cnn": 2, "mnist_cnn": 4, "cifar_cnn8": 8, "resnet32": 4}

_DATASET_ARCH = {"digits": "digits_mlp", "mnist": "mnist_cnn", "cifar10": "cifar_cnn8", "cifar100": "resnet32"}
DATASETS = (*_DATASET_ARCH, "synthetic")


def list_models() -> list[str]:
    return list(MODELS)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _feature_relu(keep: bool) -> nn.Module:
    return nn.ReLU(inplace=True) if keep else nn.Identity()


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _fc_bn(cin: int, cout: int, last_relu: bool) -> nn.Sequential:
    """The feature layer: FC → BN → [ReLU] (APL's ``fc1``)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout),
                         _feature_relu(last_relu))


def _apl_init(model: nn.Module) -> None:
    # APL's ToyModel._reset_prams; BN keeps PyTorch's (weight 1, bias 0).
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)


class DigitsMLP(nn.Module):
    """Flatten → Linear 256 → BN → ReLU → Linear 128 → BN → [ReLU]; 128 features.

    BN makes plain SGD at the digits recipe's lr stable and costs nothing at this size; the BN
    before the feature output matches the CNNs' FC-BN-ReLU feature layer.
    """

    def __init__(self, in_features: int, *, hidden: int = 256, feature_dim: int = 128,
                 last_relu: bool = True):
        super().__init__()
        self.feature_dim = feature_dim
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, feature_dim, bias=False),
            nn.BatchNorm1d(feature_dim),
            _feature_relu(last_relu),
        )
        _apl_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DigitsCNN(nn.Module):
    """C×H×W (1×8×8 for digits) → conv32 → conv64 → max-pool 2 → FC 128 → BN → [ReLU]."""

    def __init__(self, in_channels: int, height: int, width: int, *, last_relu: bool = True):
        super().__init__()
        self.feature_dim = 128
        self.features = nn.Sequential(*_conv_bn_relu(in_channels, 32), *_conv_bn_relu(32, 64), nn.MaxPool2d(2))
        self.fc = _fc_bn(64 * (height // 2) * (width // 2), self.feature_dim, last_relu)
        _apl_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class MnistCNN(nn.Module):
    """APL's 4-layer MNIST CNN: [conv32-BN-ReLU-pool] [conv64-BN-ReLU-pool] FC128-BN-[ReLU]."""

    def __init__(self, in_channels: int = 1, height: int = 28, width: int = 28, *, last_relu: bool = True):
        super().__init__()
        self.feature_dim = 128
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 32), nn.MaxPool2d(2), *_conv_bn_relu(32, 64), nn.MaxPool2d(2)
        )
        self.fc = _fc_bn(64 * (height // 4) * (width // 4), self.feature_dim, last_relu)
        _apl_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class CifarCNN8(nn.Module):
    """APL's 8-layer CIFAR-10 CNN: 3 blocks of two 3×3 convs (64, 128, 196) + pool, FC256-BN-[ReLU]."""

    def __init__(self, in_channels: int = 3, height: int = 32, width: int = 32, *, last_relu: bool = True):
        super().__init__()
        self.feature_dim = 256
        blocks: list[nn.Module] = []
        cin = in_channels
        for c in (64, 128, 196):
            blocks += [*_conv_bn_relu(cin, c), *_conv_bn_relu(c, c), nn.MaxPool2d(2)]
            cin = c
        self.features = nn.Sequential(*blocks)
        self.fc = _fc_bn(196 * (height // 8) * (width // 8), self.feature_dim, last_relu)
        _apl_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class OptionAShortcut(nn.Module):
    """Option-A shortcut of the CIFAR ResNets: subsample by 2, zero-pad channels (no parameters)."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN + shortcut, then ReLU unless ``final_relu=False``."""

    def __init__(self, cin: int, planes: int, stride: int = 1, *, final_relu: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = OptionAShortcut(planes) if stride != 1 or cin != planes else nn.Identity()
        self.final_relu = final_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(out) if self.final_relu else out


class ResNet32(nn.Module):
    """LDAM-DRW's CIFAR ResNet-32: conv16, 3 stages (16/32/64 ch) × 5 blocks, global avg-pool → 64.

    With ``last_relu=False`` only the last block's closing ReLU is dropped; average pooling keeps
    the sign, so features may be negative.
    """

    def __init__(self, in_channels: int = 3, *, last_relu: bool = True, blocks_per_stage: int = 5):
        super().__init__()
        self.feature_dim = 64
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        cin = 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(blocks_per_stage):
                last = stage == 2 and i == blocks_per_stage - 1
                stride = 2 if (stage > 0 and i == 0) else 1
                layers.append(BasicBlock(cin, planes, stride, final_relu=last_relu or not last))
                cin = planes
        self.layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def _check_image_shape(arch: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
    need = _MIN_SIDE[arch]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"arch {arch!r} expects image inputs (C, H, W) with H, W >= {need}, got shape {shape}")
    c, h, w = shape
    if h < need or w < need:
        raise ValueError(f"arch {arch!r} expects H, W >= {need} (one pixel after its {int(math.log2(need))} "
                         f"downsamplings), got {h}x{w} in shape {shape}")
    return c, h, w


def build_model(arch: str, input_shape: tuple[int, ...], *, last_relu: bool = True,
                seed: int | None = None) -> nn.Module:
    """Backbone ``arch`` for per-sample inputs of ``input_shape`` (e.g. (1, 8, 8) or (32,)).

    With ``seed`` the initial weights come from a forked RNG seeded with it (the global RNG is
    left untouched); without, from the global RNG.
    """
    if arch not in MODELS:
        raise ValueError(f"unknown arch {arch!r}; allowed: {', '.join(MODELS)}")
    shape = tuple(int(d) for d in input_shape)
    if arch == "digits_mlp":
        if not shape or min(shape) < 1:
            raise ValueError(f"arch 'digits_mlp' expects a non-empty input shape, got {shape}")
    else:
        c, h, w = _check_image_shape(arch, shape)

    def make() -> nn.Module:
        if arch == "digits_mlp":
            return DigitsMLP(math.prod(shape), last_relu=last_relu)
        if arch == "resnet32":
            return ResNet32(c, last_relu=last_relu)
        cls = {"digits_cnn": DigitsCNN, "mnist_cnn": MnistCNN, "cifar_cnn8": CifarCNN8}[arch]
        return cls(c, h, w, last_relu=last_relu)

    if seed is None:
        model = make()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = make()
    log.debug("built %s for %s (last_relu=%s): %d parameters", arch, shape, last_relu, count_parameters(model))
    return model


def default_arch(dataset: str, input_shape: tuple[int, ...]) -> str:
    """The data set's network (PAL_SPEC §5); synthetic data picks by input shape.

    Synthetic: 1-D (or any non-image) input → digits_mlp; images with min(H, W) >= 32 (e.g.
    (3, 32, 32)) → cifar_cnn8; >= 16 (e.g. (1, 28, 28)) → mnist_cnn; smaller → digits_mlp.
    """
    if dataset in _DATASET_ARCH:
        return _DATASET_ARCH[dataset]
    if dataset != "synthetic":
        raise ValueError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3:
        return "digits_mlp"
    side = min(shape[1], shape[2])
    if side >= 32:
        return "cifar_cnn8"
    if side >= 16:
        return "mnist_cnn"
    return "digits_mlp"
