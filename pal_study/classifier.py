"""The model a trial trains: a backbone (models.py) and a head (heads.py) as one module, built
from a resolved config. Its own module so that training and checkpoint loading both build it
without importing each other."""

from __future__ import annotations

import torch
from torch import nn

from pal_study.config import TrainConfig
from pal_study.heads import Head, build_head
from pal_study.models import Backbone, build_model


class Classifier(nn.Module):
    """Backbone + head; returns (features, logits)."""

    backbone: Backbone
    head: Head

    def __init__(self, backbone: Backbone, head: Head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.backbone(x)
        return z, self.head(z)


def build_classifier(cfg: TrainConfig, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    """Build from a resolved config; model init draws from the global RNG, so seed it locally."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        backbone = build_model(cfg.model.arch, tuple(input_shape), last_relu=bool(cfg.head.last_relu))
        head = build_head(
            cfg.head.kind,
            backbone.feature_dim,
            num_classes,
            scale=cfg.head.scale,
            prototypes=cfg.head.prototypes,
            use_relu_prototypes=bool(cfg.head.use_relu_prototypes),
            seed=cfg.seed,
        )
    return Classifier(backbone, head)


__all__ = ["Classifier", "build_classifier"]
