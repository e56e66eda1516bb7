"""Classifier heads shared by the model families."""
from __future__ import annotations

from torch import nn


def linear_head(num_features: int, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """Linear classifier, preceded by dropout when `dropout` > 0."""
    linear = nn.Linear(num_features, num_classes)
    return nn.Sequential(nn.Dropout(dropout), linear) if dropout else linear


def vector_norm(kind: str, features: int) -> nn.Module:
    """Normalization for an (N, D) vector: BatchNorm1d for bn, LayerNorm for ln.

    Group and instance norm have no meaning for a flat vector, so they (and none) leave it as is.
    """
    if kind == "bn":
        return nn.BatchNorm1d(features)
    if kind == "ln":
        return nn.LayerNorm(features)
    return nn.Identity()
