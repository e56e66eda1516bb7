"""Residual networks with a CIFAR stem (3x3 stride-1 conv, no max-pool) built from basic blocks.

One `ResNet` covers ResNet-18/34 and SE-ResNet-18 (reports 000-002), the small CIFAR ResNet of
report 004 (`resnet_cifar`) and the SE-ResNet of report 003 (`se_resnet80`): they differ in widths,
depths, SE, dropout inside the blocks and convolution biases.
"""
from __future__ import annotations

from typing import Sequence

import torch
from timm.layers import SEModule
from torch import nn

from robustlab.errors import require
from robustlab.models.base import Classifier
from robustlab.models.checks import check_int_list, check_norm, check_positive, check_rate
from robustlab.models.heads import linear_head, residual_stages
from robustlab.models.layers import norm_layer
from robustlab.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-norm-ReLU-drop, conv3x3-norm-SE-drop, add the shortcut, ReLU.

    The SE module (reduction `se_reduction`, 0: none) rescales the residual branch after its last
    norm and before the addition. The shortcut is a 1x1 conv + norm when the shape changes.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int = 1,
        norm: str = "bn",
        se_reduction: int = 0,
        dropout: float = 0.0,
        conv_bias: bool = False,
    ):
        super().__init__()
        bias = conv_bias or norm == "none"
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = norm_layer(norm, out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.drop1 = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=bias)
        self.bn2 = norm_layer(norm, out_chs)
        # An exact reduction (no rounding to a multiple of 8, unlike timm's default).
        self.se = SEModule(out_chs, rd_channels=max(1, out_chs // se_reduction)) if se_reduction else nn.Identity()
        self.drop2 = nn.Dropout(dropout) if dropout else nn.Identity()
        if stride != 1 or in_chs != out_chs:
            projection = nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=bias)
            self.shortcut = nn.Sequential(projection, norm_layer(norm, out_chs))
        else:
            self.shortcut = nn.Identity()
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop1(self.act1(self.bn1(self.conv1(x))))
        out = self.drop2(self.se(self.bn2(self.conv2(out))))
        return self.act2(out + self.shortcut(x))


class ResNet(Classifier):
    """Stem conv3x3(stem_width)-norm-ReLU, then one stage per entry of `widths` (the first at stride 1,
    the others halving the resolution in their first block), global average pooling, linear head.

    dropout:       before the classifier.
    block_dropout: after each convolution inside the blocks (report 004).
    conv_bias:     biases on every convolution, as in Keras models (report 003's parameter count).
    """

    def __init__(
        self,
        num_classes: int = 10,
        depths: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: int | None = None,
        norm: str = "bn",
        se_reduction: int = 0,
        dropout: float = 0.0,
        block_dropout: float = 0.0,
        conv_bias: bool = False,
        in_chans: int = 3,
    ):
        super().__init__()
        widths = check_int_list("widths", widths)
        depths = check_int_list("depths", depths, length=len(widths))
        stem_width = check_positive("stem_width", widths[0] if stem_width is None else stem_width)
        check_norm(norm)
        ok = isinstance(se_reduction, int) and se_reduction >= 0
        require(ok, f"se_reduction must be an integer >= 0, got {se_reduction!r}")
        dropout, block_dropout = check_rate("dropout", dropout), check_rate("block_dropout", block_dropout)

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=conv_bias or norm == "none"),
            norm_layer(norm, stem_width),
            nn.ReLU(inplace=True),
        )
        self.stages, c = residual_stages(
            stem_width, widths, depths,
            lambda cin, cout, stride: BasicBlock(cin, cout, stride, norm, se_reduction, block_dropout, conv_bias))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = c
        self.head = linear_head(c, num_classes, dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(x)))


def build(num_classes: int, defaults: dict, kwargs: dict) -> ResNet:
    """A preset: `defaults`, each overridable by a keyword argument."""
    return ResNet(num_classes=num_classes, **{**defaults, **kwargs})


@register_model
def resnet18(num_classes: int = 10, **kwargs) -> ResNet:
    """ResNet-18 for 32x32 inputs: [2, 2, 2, 2] blocks, widths 64-512 (11,173,962 parameters for 10 classes)."""
    return build(num_classes, {"depths": (2, 2, 2, 2)}, kwargs)


@register_model
def se_resnet18(num_classes: int = 10, **kwargs) -> ResNet:
    """ResNet-18 with an SE module (reduction 16) after each block's second norm, before the addition."""
    return build(num_classes, {"depths": (2, 2, 2, 2), "se_reduction": 16}, kwargs)


@register_model
def resnet34(num_classes: int = 10, **kwargs) -> ResNet:
    """The deeper option of report 001: [3, 4, 6, 3] blocks."""
    return build(num_classes, {"depths": (3, 4, 6, 3)}, kwargs)
