"""Classifier heads shared by the model families."""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn


def linear_head(num_features: int, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """Linear classifier, preceded by dropout when `dropout` > 0."""
    linear = nn.Linear(num_features, num_classes)
    return nn.Sequential(nn.Dropout(dropout), linear) if dropout else linear


def residual_stages(in_width: int, widths: Sequence[int], depths: Sequence[int],
                    block: Callable[[int, int, int], nn.Module]) -> tuple[nn.Sequential, int]:
    """Stages of `block(in, out, stride)`; the first block of every stage after the first has stride 2.

    Returns the stages and their output width.
    """
    stages, c = [], in_width
    for i, (w, d) in enumerate(zip(widths, depths)):
        blocks = []
        for j in range(d):
            blocks.append(block(c, w, 2 if i > 0 and j == 0 else 1))
            c = w
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages), c


def vector_norm(kind: str, features: int) -> nn.Module:
    """Normalization for an (N, D) vector: BatchNorm1d for bn, LayerNorm for ln.

    Group and instance norm have no meaning for a flat vector, so they (and none) leave it as is.
    """
    if kind == "bn":
        return nn.BatchNorm1d(features)
    if kind == "ln":
        return nn.LayerNorm(features)
    return nn.Identity()
