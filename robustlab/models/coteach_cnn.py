"""The 9-layer CNN of Co-teaching (Han et al., 2018, Table 3), the usual backbone for CIFAR label noise."""
from __future__ import annotations

import torch
from torch import nn

from robustlab.models.base import Classifier
from robustlab.models.checks import check_norm, check_rate
from robustlab.models.heads import linear_head
from robustlab.models.layers import norm_layer
from robustlab.models.registry import register_model


class CoTeachingCNN(Classifier):
    """3x[conv3x3 128] - max-pool - dropout, 3x[conv3x3 256] - max-pool - dropout,
    conv3x3 512 (no padding), conv1x1 256, conv1x1 128, global average pooling, linear.

    Every convolution is followed by a norm and LeakyReLU(negative_slope).
    """

    def __init__(
        self,
        num_classes: int = 10,
        norm: str = "bn",
        dropout: float = 0.25,
        negative_slope: float = 0.01,
        in_chans: int = 3,
    ):
        super().__init__()
        check_norm(norm)
        dropout = check_rate("dropout", dropout)

        def conv(cin: int, cout: int, kernel_size: int = 3, padding: int = 1) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, kernel_size, padding=padding, bias=norm == "none"),
                norm_layer(norm, cout),
                nn.LeakyReLU(negative_slope),
            ]

        self.features = nn.Sequential(
            *conv(in_chans, 128), *conv(128, 128), *conv(128, 128), nn.MaxPool2d(2), nn.Dropout(dropout),
            *conv(128, 256), *conv(256, 256), *conv(256, 256), nn.MaxPool2d(2), nn.Dropout(dropout),
            *conv(256, 512, padding=0), *conv(512, 256, 1, 0), *conv(256, 128, 1, 0),
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = 128
        self.head = linear_head(128, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))


@register_model
def coteach_cnn(num_classes: int = 10, **kwargs) -> CoTeachingCNN:
    return CoTeachingCNN(num_classes=num_classes, **kwargs)
