"""Generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018): the L_q loss (1 - p_y^q) / q.

The negative Box-Cox transform of p_y interpolates between cross-entropy (q -> 0) and the
noise-robust mean absolute error (q = 1, where the loss is 1 - p_y). Its gradient is
cross-entropy's weighted by p_y^q, so samples the network finds implausible (often the
mislabelled ones) pull less.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import require
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.registry import register_strategy


def generalized_ce(logits: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """Per-sample L_q = (1 - p_y^q) / q, computed in float32 from log p_y.

    -expm1(q log p_y) / q stays exact for small q, where it tends to cross-entropy -log p_y.
    """
    log_py = F.log_softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
    return -torch.expm1(q * log_py) / q


@dataclass
class GCEConfig:
    q: float = 0.7  # the paper's value for CIFAR-10 and CIFAR-100

    def validate(self) -> None:
        require(0.0 < self.q <= 1.0, f"q must be in (0, 1], got {self.q}")


@register_strategy("gce")
class GeneralizedCE(Strategy):
    """Generalized cross-entropy L_q (Zhang & Sabuncu 2018): (1 - p_y^q) / q, q = 0.7.

    Deviations from the paper: only the plain L_q loss; the truncated variant (which prunes samples
    with p_y below k = 0.5 every 10 epochs) is not implemented. The paper's ResNet-34 / SGD
    recipe (lr 0.01, 120 epochs) is the study's to choose, not the strategy's.
    """

    Config = GCEConfig
    presets: ClassVar[dict[str, dict]] = {"quick": {"q": 0.7}, "paper": {"q": 0.7}}

    def __init__(self, model: nn.Module, q: float = 0.7):
        super().__init__()
        require(0.0 < q <= 1.0, f"GCE q must be in (0, 1], got {q}")
        self.model, self.q = model, q

    @classmethod
    def build(cls, config: GCEConfig, ctx):
        return cls(ctx.new_model(), q=config.q)

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        logits = self.model(x)
        return StepOutput(generalized_ce(logits, y, self.q).mean(), logits)
