"""Report 003's SE-ResNet ("80 layers", 4,628,210 parameters for 10 classes).

The report's summary table (a 64-wide stem, four stages up to 512) cannot produce its own totals.
The configuration below reproduces both of them exactly, counted as Keras does: 4,628,210 parameters
of which 11,200 (the BatchNorm moving means and variances, i.e. 5,600 BN channels) are not trainable.
It is a stem conv3x3(32)-BN-ReLU, three stages of 12 SE basic blocks at widths 32/64/128 (16x16 and
8x8 reached by a stride-2 first conv), 1x1 conv + BN projection shortcuts, biased convolutions
(the Keras default), SE with reduction 16, global average pooling and a linear layer.
In PyTorch the running statistics are buffers, so `parameters()` counts 4,617,010.
"""
from __future__ import annotations

from robustlab.models.registry import register_model
from robustlab.models.resnet import ResNet, build


@register_model
def se_resnet80(num_classes: int = 10, **kwargs) -> ResNet:
    defaults = {"widths": (32, 64, 128), "depths": (12, 12, 12), "se_reduction": 16, "conv_bias": True}
    return build(num_classes, defaults, kwargs)
