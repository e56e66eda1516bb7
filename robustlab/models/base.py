"""The interface every robustlab model follows (timm-style split of features and head)."""
from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """Subclasses set `num_features` and `head`, and implement `forward_features`.

    forward_features(x) -> (N, num_features) pooled embedding
    forward_head(f)     -> (N, num_classes) logits
    """

    num_features: int
    head: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
