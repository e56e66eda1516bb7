"""VGG-style nets: blocks of two 3x3 convolutions whose width doubles from block to block.

The presets follow reports 000 and 002: VGG-1 / VGG-3 with base width 32 and an FC-128 head,
downsampling by max-pooling or by a stride-2 second convolution, an optional global-average-pooling
head, and report 002's net with a 2x2 patchify stem.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from robustlab.errors import require
from robustlab.models.base import Classifier
from robustlab.models.checks import check_choice, check_int_list, check_norm, check_positive, check_rate
from robustlab.models.heads import linear_head, vector_norm
from robustlab.models.layers import norm_layer
from robustlab.models.registry import register_model

DOWNSAMPLES = ("pool", "stride")
HEADS = ("fc", "gap")


def conv_norm_act(cin: int, cout: int, norm: str, kernel_size: int = 3, stride: int = 1) -> list[nn.Module]:
    padding = 1 if kernel_size == 3 else 0
    conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=norm == "none")
    return [conv, norm_layer(norm, cout), nn.ReLU(inplace=True)]


class VGG(Classifier):
    """One block of two conv3x3-norm-ReLU per entry of `widths`.

    downsample:      "pool" (2x2 max-pool after the block) or "stride" (the block's second conv has stride 2).
    downsample_last: whether the last block downsamples as well.
    head:            "fc": flatten -> FC(fc_hidden) -> norm -> ReLU; forward_features returns that hidden
                     vector (or the flattened map when fc_hidden is 0). "gap": global average pooling.
                     Either way the classifier is dropout(`dropout`) + linear.
    block_dropout:   dropout after each block.
    patchify:        width of a 2x2 stride-2 conv stem (0: no stem).
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128),
        downsample: str = "pool",
        downsample_last: bool = False,
        head: str = "fc",
        fc_hidden: int = 128,
        dropout: float = 0.0,
        block_dropout: float = 0.0,
        norm: str = "bn",
        patchify: int = 0,
        img_size: int = 32,
        in_chans: int = 3,
    ):
        super().__init__()
        widths = check_int_list("widths", widths)
        check_choice("downsample", downsample, DOWNSAMPLES)
        check_choice("head", head, HEADS)
        check_norm(norm)
        dropout, block_dropout = check_rate("dropout", dropout), check_rate("block_dropout", block_dropout)
        require(isinstance(fc_hidden, int) and fc_hidden >= 0, f"fc_hidden must be an integer >= 0, got {fc_hidden!r}")
        require(isinstance(patchify, int) and patchify >= 0, f"patchify must be an integer >= 0, got {patchify!r}")
        check_positive("img_size", img_size)

        layers: list[nn.Module] = []
        c, size = in_chans, img_size
        if patchify:
            stem = nn.Conv2d(c, patchify, 2, stride=2, bias=norm == "none")
            layers += [stem, norm_layer(norm, patchify), nn.ReLU(inplace=True)]
            c, size = patchify, size // 2
        for i, w in enumerate(widths):
            down = i < len(widths) - 1 or downsample_last
            require(not down or size >= 2, f"{len(widths)} downsampling blocks shrink a {img_size}px input below 1 pixel")
            strided = down and downsample == "stride"
            layers += conv_norm_act(c, w, norm) + conv_norm_act(w, w, norm, stride=2 if strided else 1)
            if down:
                if downsample == "pool":
                    layers.append(nn.MaxPool2d(2))
                size = (size + 1) // 2 if strided else size // 2
            if block_dropout:
                layers.append(nn.Dropout(block_dropout))
            c = w
        self.features = nn.Sequential(*layers)

        if head == "gap":
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.num_features = c
        elif fc_hidden:
            self.pool = nn.Sequential(
                nn.Flatten(), nn.Linear(c * size * size, fc_hidden), vector_norm(norm, fc_hidden), nn.ReLU(inplace=True)
            )
            self.num_features = fc_hidden
        else:
            self.pool = nn.Flatten()
            self.num_features = c * size * size
        self.head = linear_head(self.num_features, num_classes, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))


@register_model
def vgg(
    num_classes: int = 10,
    blocks: int | None = None,
    base_width: int = 32,
    widths: Sequence[int] | None = None,
    downsample_last: bool | None = None,
    batchnorm: bool | None = None,
    **kwargs,
) -> VGG:
    """`blocks` blocks of widths base_width * 2**i (or explicit `widths`).

    downsample_last defaults to True only for a single block: the reports' VGG-1 pools its one
    block while VGG-3 leaves the last block at 8x8. `batchnorm=False` is `norm="none"`.
    """
    if widths is None:
        blocks = 3 if blocks is None else blocks
        require(isinstance(blocks, int) and 1 <= blocks <= 5, f"blocks must be an integer in 1..5, got {blocks!r}")
        check_positive("base_width", base_width)
        widths = tuple(base_width * 2**i for i in range(blocks))
    else:
        widths = check_int_list("widths", widths)
        require(blocks is None or blocks == len(widths), f"widths has {len(widths)} entries but blocks={blocks}")
    if batchnorm is not None:
        require("norm" not in kwargs, "pass either norm= or batchnorm=, not both")
        kwargs["norm"] = "bn" if batchnorm else "none"
    if downsample_last is None:
        downsample_last = len(widths) == 1
    return VGG(num_classes=num_classes, widths=widths, downsample_last=downsample_last, **kwargs)


def _preset(num_classes: int, defaults: dict, kwargs: dict) -> VGG:
    """Preset settings, each overridable by a keyword (the regularization study swaps head/downsample)."""
    return vgg(num_classes=num_classes, **{**defaults, **kwargs})


@register_model
def vgg1(num_classes: int = 10, **kwargs) -> VGG:
    """Report 000's vanilla net: one block (32) + max-pool, FC-128 head."""
    return _preset(num_classes, {"blocks": 1}, kwargs)


@register_model
def vgg3(num_classes: int = 10, **kwargs) -> VGG:
    """Report 000's VGG-3: blocks 32/64/128, max-pool after the first two, FC-128 head."""
    return _preset(num_classes, {"blocks": 3}, kwargs)


@register_model
def vgg3_strided(num_classes: int = 10, **kwargs) -> VGG:
    """VGG-3 with stride-2 second convolutions where VGG-3 max-pools (same 8x8 output)."""
    return _preset(num_classes, {"blocks": 3, "downsample": "stride"}, kwargs)


@register_model
def vgg3_gap(num_classes: int = 10, **kwargs) -> VGG:
    """Report 000's last variant: the strided VGG-3 with a global-average-pooling head."""
    return _preset(num_classes, {"blocks": 3, "downsample": "stride", "head": "gap"}, kwargs)


@register_model
def vgg_patchify(num_classes: int = 10, **kwargs) -> VGG:
    """Report 002 (section 4.1.1): 2x2 stride-2 patchify (64), [64,64,M,128,128,M,256,256,M], FC-128, dropout 0.5."""
    defaults = {"widths": (64, 128, 256), "patchify": 64, "downsample_last": True, "dropout": 0.5}
    return _preset(num_classes, defaults, kwargs)
