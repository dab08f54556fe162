"""Backbones: ``forward(x) -> features`` of shape (batch, ``feature_dim``); the classifier head is
separate (``heads.py``).

``last_relu=False`` drops the ReLU right before the feature output, so features can point
anywhere on the sphere: a fixed-prototype head cannot align a non-negative feature with a random
ETF prototype (docs/method.md §1, cosine ceiling ≈ 0.7). ``last_relu=True`` is the standard network.

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
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# The table of backbones (torch-free, for the trial config; it names the builds below): re-exported here.
from pal_study.specs.models import MODEL_REGISTRY, MODELS, ModelSpec, default_arch, list_models

log = logging.getLogger(__name__)

__all__ = [
    "MODELS",
    "MODEL_REGISTRY",
    "Backbone",
    "ModelSpec",
    "build_model",
    "count_parameters",
    "default_arch",
    "list_models",
    "register_model",
]


class Backbone(nn.Module):
    """What a backbone's build gives: ``forward(x)`` is (batch, ``feature_dim``) features."""

    feature_dim: int


def register_model(
    name: str, *, feature_dim: int, min_side: int | None, summary: str
) -> Callable[[Callable[[tuple[int, ...], bool], Backbone]], Callable[..., Backbone]]:
    """Decorator: register ``build(input_shape, last_relu) -> Backbone`` as backbone ``name``."""

    def deco(build: Callable[[tuple[int, ...], bool], Backbone]) -> Callable[..., Backbone]:
        MODEL_REGISTRY.add(name, ModelSpec(name, build, feature_dim, min_side, summary))
        return build

    return deco


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _feature_relu(keep: bool) -> nn.Module:
    return nn.ReLU(inplace=True) if keep else nn.Identity()


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _fc_bn(cin: int, cout: int, last_relu: bool) -> nn.Sequential:
    """The feature layer: FC → BN → [ReLU] (APL's ``fc1``)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), _feature_relu(last_relu))


def _apl_init(model: nn.Module) -> None:
    # APL's ToyModel._reset_prams; BN keeps PyTorch's (weight 1, bias 0).
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)


class DigitsMLP(Backbone):
    """Flatten → Linear 256 → BN → ReLU → Linear 128 → BN → [ReLU]; 128 features.

    BN makes plain SGD at the digits recipe's lr stable and costs nothing at this size; the BN
    before the feature output matches the CNNs' FC-BN-ReLU feature layer.
    """

    def __init__(self, in_features: int, *, hidden: int = 256, feature_dim: int = 128, last_relu: bool = True):
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


class DigitsCNN(Backbone):
    """C×H×W (1×8×8 for digits) → conv32 → conv64 → max-pool 2 → FC 128 → BN → [ReLU]."""

    def __init__(self, in_channels: int, height: int, width: int, *, last_relu: bool = True):
        super().__init__()
        self.feature_dim = 128
        self.features = nn.Sequential(*_conv_bn_relu(in_channels, 32), *_conv_bn_relu(32, 64), nn.MaxPool2d(2))
        self.fc = _fc_bn(64 * (height // 2) * (width // 2), self.feature_dim, last_relu)
        _apl_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class MnistCNN(Backbone):
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


class CifarCNN8(Backbone):
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


class ResNet32(Backbone):
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


class Mnist1dMLP(Backbone):
    """The MNIST-1D paper's MLP without its output layer: Flatten → Linear 100 → ReLU → Linear 100
    → [ReLU]; 100 features (the head is the paper's last Linear 100 → 10). PyTorch's default init,
    biases, no BN, as in the paper."""

    def __init__(self, in_features: int, *, hidden: int = 100, last_relu: bool = True):
        super().__init__()
        self.feature_dim = hidden
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            _feature_relu(last_relu),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv1d_bn_relu(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv1d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]


class Mnist1dCNN(Backbone):
    """A small 1-D CNN for (C, L) sequences (MNIST-1D: (1, 40)): [conv32 k5] [conv64 k3] pool 2
    [conv64 k3] pool 2, each conv-BN-ReLU, then FC 128 → BN → [ReLU]; 128 features.

    Other shapes are read as C channels of length prod(rest) ((L,) as one channel).
    """

    def __init__(self, in_channels: int = 1, length: int = 40, *, last_relu: bool = True):
        super().__init__()
        self.feature_dim = 128
        self.in_channels, self.length = in_channels, length
        self.features = nn.Sequential(
            *_conv1d_bn_relu(in_channels, 32, 5),
            *_conv1d_bn_relu(32, 64, 3),
            nn.MaxPool1d(2),
            *_conv1d_bn_relu(64, 64, 3),
            nn.MaxPool1d(2),
        )
        self.fc = _fc_bn(64 * (length // 4), self.feature_dim, last_relu)
        for m in self.modules():  # as _apl_init, for Conv1d
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x.reshape(x.shape[0], self.in_channels, self.length)))


def _as_sequence(shape: tuple[int, ...]) -> tuple[int, int]:
    """(C, L) of a per-sample shape: (L,) -> (1, L); (C, d1, d2, ...) -> (C, d1·d2·...)."""
    return (1, shape[0]) if len(shape) == 1 else (shape[0], math.prod(shape[1:]))


# --------------------------------------------------------------------------------------------
# The built-in backbones' builds (named in pal_study.specs.models' table, in listing order).


def _digits_mlp(shape: tuple[int, ...], last_relu: bool) -> Backbone:
    return DigitsMLP(math.prod(shape), last_relu=last_relu)


def _digits_cnn(shape: tuple[int, ...], last_relu: bool) -> Backbone:
    return DigitsCNN(*shape, last_relu=last_relu)


def _mnist_cnn(shape: tuple[int, ...], last_relu: bool) -> Backbone:
    return MnistCNN(*shape, last_relu=last_relu)


def _cifar_cnn8(shape: tuple[int, ...], last_relu: bool) -> Backbone:
    return CifarCNN8(*shape, last_relu=last_relu)


def _resnet32(shape: tuple[int, ...], last_relu: bool) -> Backbone:
    return ResNet32(shape[0], last_relu=last_relu)


def _mnist1d_mlp(shape: tuple[int, ...], last_relu: bool) -> Backbone:
    return Mnist1dMLP(math.prod(shape), last_relu=last_relu)


def _mnist1d_cnn(shape: tuple[int, ...], last_relu: bool) -> Backbone:
    c, length = _as_sequence(shape)
    if length < 4:
        raise ValueError(f"arch 'mnist1d_cnn' expects sequences of length >= 4 (two 2x max-pools), got shape {shape}")
    return Mnist1dCNN(c, length, last_relu=last_relu)


def _check_shape(spec: ModelSpec, shape: tuple[int, ...]) -> None:
    arch, need = spec.name, spec.min_side
    if need is None:
        if not shape or min(shape) < 1:
            raise ValueError(f"arch {arch!r} expects a non-empty input shape, got {shape}")
        return
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"arch {arch!r} expects image inputs (C, H, W) with H, W >= {need}, got shape {shape}")
    _, h, w = shape
    if h < need or w < need:
        raise ValueError(
            f"arch {arch!r} expects H, W >= {need} (one pixel after its {int(math.log2(need))} "
            f"downsamplings), got {h}x{w} in shape {shape}"
        )


def build_model(
    arch: str, input_shape: tuple[int, ...], *, last_relu: bool = True, seed: int | None = None
) -> Backbone:
    """Backbone ``arch`` for per-sample inputs of ``input_shape`` (e.g. (1, 8, 8) or (32,)).

    With ``seed`` the initial weights come from a forked RNG seeded with it (the global RNG is
    left untouched); without, from the global RNG.
    """
    if arch not in MODEL_REGISTRY:
        raise ValueError(f"unknown arch {arch!r}; allowed: {', '.join(MODEL_REGISTRY.names())}")
    spec = MODEL_REGISTRY.get(arch)
    shape = tuple(int(d) for d in input_shape)
    _check_shape(spec, shape)

    if seed is None:
        model = spec.build(shape, last_relu)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = spec.build(shape, last_relu)
    log.debug("built %s for %s (last_relu=%s): %d parameters", arch, shape, last_relu, count_parameters(model))
    return model
