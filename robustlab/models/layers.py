"""Small building blocks shared by the model families."""
from __future__ import annotations

from timm.layers import LayerNorm2d
from torch import nn

from robustlab.errors import UsageError

NORMS = ("bn", "gn", "ln", "in", "none")


def norm_layer(kind: str, channels: int, groups: int = 32) -> nn.Module:
    """bn: BatchNorm; gn: GroupNorm(min(groups, C)); ln: LayerNorm over channels; in: InstanceNorm."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        g = min(groups, channels)
        while channels % g:
            g -= 1
        return nn.GroupNorm(g, channels)
    if kind == "ln":
        return LayerNorm2d(channels)
    if kind == "in":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise UsageError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")
