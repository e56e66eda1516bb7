"""Small CNNs that train in minutes on a CPU."""
from __future__ import annotations

import torch
from torch import nn

from robustlab.models.base import Classifier
from robustlab.models.checks import check_int_list, check_rate
from robustlab.models.heads import linear_head
from robustlab.models.layers import norm_layer
from robustlab.models.registry import register_model


class SmallCNN(Classifier):
    """Three conv-norm-ReLU-pool stages and a linear head: the CPU workhorse for tests and quick presets."""

    def __init__(self, num_classes: int = 10, widths=(32, 64, 128), norm: str = "bn", dropout: float = 0.0, in_chans: int = 3):
        super().__init__()
        widths = check_int_list("widths", widths)
        dropout = check_rate("dropout", dropout)
        layers, c = [], in_chans
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=norm == "none"), norm_layer(norm, w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = c
        self.head = linear_head(c, num_classes, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))


@register_model
def small_cnn(num_classes: int = 10, **kwargs) -> SmallCNN:
    return SmallCNN(num_classes=num_classes, **kwargs)


@register_model
def tiny_cnn(num_classes: int = 10, **kwargs) -> SmallCNN:
    """A very small net for unit tests and smoke runs."""
    return SmallCNN(num_classes=num_classes, widths=(8, 16), **kwargs)
