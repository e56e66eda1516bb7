"""Pre-activation ResNet-18 as used across the noisy-label literature (DivideMix's `PreResNet18`)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from robustlab.models.base import Classifier
from robustlab.models.checks import check_int_list, check_norm, check_rate
from robustlab.models.heads import linear_head, residual_stages
from robustlab.models.layers import norm_layer
from robustlab.models.registry import register_model


class PreActBlock(nn.Module):
    """a = ReLU(norm(x)); out = conv3x3(ReLU(norm(conv3x3(a)))) + shortcut(a), with no activation after
    the addition. The shortcut is a 1x1 conv when the shape changes, else the identity on `a` (the
    activated input, as in the reference implementation, rather than `x`)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, norm: str = "bn"):
        super().__init__()
        self.bn1 = norm_layer(norm, in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(norm, out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        needs_projection = stride != 1 or in_chs != out_chs
        self.shortcut = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False) if needs_projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(x))
        shortcut = out if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.act(self.bn2(out)))
        return out + shortcut


class PreActResNet(Classifier):
    """Stem conv3x3(64)-norm-ReLU, four pre-activation stages (64-512), global average pooling, linear.

    As in the reference noisy-label implementation, the stem carries its own norm-ReLU and the last
    stage's sum is pooled directly (no final norm-ReLU); 11,171,274 parameters for 10 classes.
    """

    def __init__(
        self,
        num_classes: int = 10,
        depths: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        norm: str = "bn",
        dropout: float = 0.0,
        in_chans: int = 3,
    ):
        super().__init__()
        widths = check_int_list("widths", widths)
        depths = check_int_list("depths", depths, length=len(widths))
        check_norm(norm)
        dropout = check_rate("dropout", dropout)
        c = widths[0]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, c, 3, padding=1, bias=False), norm_layer(norm, c), nn.ReLU())
        self.stages, c = residual_stages(c, widths, depths, lambda cin, cout, stride: PreActBlock(cin, cout, stride, norm))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = c
        self.head = linear_head(c, num_classes, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x)))


@register_model
def preact_resnet18(num_classes: int = 10, **kwargs) -> PreActResNet:
    return PreActResNet(num_classes=num_classes, **kwargs)
