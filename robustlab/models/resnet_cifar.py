"""Report 004's small CIFAR ResNet: 32/64/128-wide stages with dropout after every convolution."""
from __future__ import annotations

from robustlab.models.registry import register_model
from robustlab.models.resnet import ResNet, build

# Stem conv3x3(32)-BN-ReLU, then stages at 32x32, 16x16 and 8x8 (the last two start with a stride-2 conv).
# The report does not give the dropout rate; 0.1 keeps the regularizer mild.
CIFAR = {"widths": (32, 64, 128), "block_dropout": 0.1}


@register_model
def resnet_cifar(num_classes: int = 10, **kwargs) -> ResNet:
    """Configurable report-004 ResNet (`depths`: blocks per stage; default two per stage)."""
    return build(num_classes, {**CIFAR, "depths": (2, 2, 2)}, kwargs)


@register_model
def resnet_cifar_1m(num_classes: int = 10, **kwargs) -> ResNet:
    """The report's 1.18M-parameter net (1,177,130 for 10 classes): [4, 4, 3] blocks, 1x1 conv + BN
    projection shortcuts. Its 108-row layer summary is exactly 3 stem rows, 11 blocks of 9 rows,
    2 projection shortcuts of 2 rows, and pooling + linear."""
    return build(num_classes, {**CIFAR, "depths": (4, 4, 3)}, kwargs)
