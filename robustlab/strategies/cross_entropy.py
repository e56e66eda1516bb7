"""Plain cross-entropy and label smoothing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import require
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.registry import register_strategy


@dataclass
class CEConfig:
    smoothing: float = 0.0  # label smoothing epsilon (0 = plain cross-entropy)

    def validate(self) -> None:
        require(0.0 <= self.smoothing < 1.0, f"smoothing must be in [0, 1), got {self.smoothing}")


@register_strategy("ce")
class CrossEntropy(Strategy):
    """Cross-entropy; `smoothing > 0` gives label smoothing (Szegedy et al. 2016)."""

    Config = CEConfig
    presets: ClassVar[dict[str, dict]] = {"quick": {}, "paper": {}, "fast": {}}  # no recipe options beyond the study's

    def __init__(self, model: nn.Module, smoothing: float = 0.0):
        super().__init__()
        require(0.0 <= smoothing < 1.0, f"label smoothing must be in [0, 1), got {smoothing}")
        self.model = model
        self.smoothing = smoothing

    @classmethod
    def build(cls, config: CEConfig, ctx):
        return cls(ctx.new_model(), smoothing=config.smoothing)

    def per_sample_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=self.smoothing)

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        logits = self.model(x)
        return StepOutput(self.per_sample_loss(logits, y).mean(), logits)


@dataclass
class LSConfig:
    smoothing: float = 0.1

    def validate(self) -> None:
        require(0.0 < self.smoothing < 1.0, f"smoothing must be in (0, 1), got {self.smoothing}")


@register_strategy("ls")
class LabelSmoothing(CrossEntropy):
    """Label smoothing (Szegedy et al. 2016): cross-entropy against (1 - eps) one-hot + eps / C."""

    Config = LSConfig

    def __init__(self, model: nn.Module, eps: float = 0.1):
        super().__init__(model, smoothing=eps)

    @classmethod
    def build(cls, config: LSConfig, ctx):
        return cls(ctx.new_model(), eps=config.smoothing)
