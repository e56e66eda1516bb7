"""ConvNeXt for 32x32 inputs (report 002): timm's ConvNeXt with a small stem in place of the 4x4 patchify."""
from __future__ import annotations

from typing import Sequence

import torch
from timm.models.convnext import ConvNeXt
from torch import nn

from robustlab.models.base import Classifier
from robustlab.models.checks import check_choice, check_int_list, check_rate
from robustlab.models.heads import linear_head
from robustlab.models.registry import register_model

# conv3: 3x3 stride-1 conv (stages at 32, 16, 8, 4 px); patch2: 2x2 stride-2 patchify (16, 8, 4, 2 px).
STEMS = ("conv3", "patch2")


class ConvNeXtCifar(Classifier):
    """Stem conv + LayerNorm, four stages of ConvNeXt blocks (7x7 depthwise conv, LayerNorm, 1x1 MLP
    with GELU, layer scale, stochastic depth) joined by stride-2 downsampling convs; global average
    pooling + LayerNorm give the features."""

    def __init__(
        self,
        num_classes: int = 10,
        depths: Sequence[int] = (2, 2, 6, 2),
        dims: Sequence[int] = (48, 96, 192, 384),
        stem: str = "conv3",
        drop_path_rate: float = 0.1,
        dropout: float = 0.0,
        in_chans: int = 3,
    ):
        super().__init__()
        depths, dims = check_int_list("depths", depths, length=4), check_int_list("dims", dims, length=4)
        check_choice("stem", stem, STEMS)
        drop_path_rate, dropout = check_rate("drop_path_rate", drop_path_rate), check_rate("dropout", dropout)
        # Built with timm's 4x4 patch stem, whose first stage keeps the stem's resolution; only the
        # stem conv is then replaced, so every later stage still halves the resolution once.
        self.backbone = ConvNeXt(
            in_chans=in_chans, num_classes=0, depths=depths, dims=dims, patch_size=4, drop_path_rate=drop_path_rate
        )
        if stem == "conv3":
            conv = nn.Conv2d(in_chans, dims[0], 3, padding=1)
        else:
            conv = nn.Conv2d(in_chans, dims[0], 2, stride=2)
        nn.init.trunc_normal_(conv.weight, std=0.02)  # timm's ConvNeXt init
        nn.init.zeros_(conv.bias)
        self.backbone.stem[0] = conv
        self.num_features = self.backbone.num_features
        self.head = linear_head(self.num_features, num_classes, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)


@register_model
def convnext_cifar(num_classes: int = 10, **kwargs) -> ConvNeXtCifar:
    return ConvNeXtCifar(num_classes=num_classes, **kwargs)
