"""Plain cross-entropy and label smoothing."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from robustlab.errors import require
from robustlab.strategies.base import StepOutput, Strategy


class CrossEntropy(Strategy):
    """Standard supervised training; `smoothing > 0` gives label smoothing (Szegedy et al. 2016)."""

    def __init__(self, model: nn.Module, smoothing: float = 0.0):
        super().__init__()
        require(0.0 <= smoothing < 1.0, f"label smoothing must be in [0, 1), got {smoothing}")
        self.model = model
        self.smoothing = smoothing

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="none", label_smoothing=self.smoothing)

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        logits = self.model(x)
        return StepOutput(self.per_sample_loss(logits, y).mean(), logits)


class LabelSmoothing(CrossEntropy):
    def __init__(self, model: nn.Module, eps: float = 0.1):
        super().__init__(model, smoothing=eps)
