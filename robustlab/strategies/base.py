"""The interface shared by every training strategy.

A strategy owns its network(s) and turns one training batch into a loss. The engine
(`robustlab.engine.fit`) owns everything else: optimizer, schedule, autocast, checkpoints,
evaluation and run records. Because a strategy is an `nn.Module`, its `parameters()` and
`state_dict()` cover all of its networks, so checkpoints and optimizers need no special cases.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar to back-propagate
    logits: torch.Tensor | None = None  # (N, C) for train accuracy; None when the step has no classifier
    targets: torch.Tensor | None = None  # labels matching logits when they are not the batch labels


class Strategy(nn.Module):
    """Subclasses implement `train_step`; `predict` defaults to the main network's logits."""

    model: nn.Module
    unused_parameters = False  # True when a step leaves some trainable parameters without gradient (DDP needs to know)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called before each training epoch (0-based); reset per-epoch state here."""

    def train_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, epoch: int) -> StepOutput:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, epoch: int) -> StepOutput:
        """A training step, so that DistributedDataParallel can wrap the whole strategy."""
        return self.train_step(x, y, idx, epoch)

    def epoch_metrics(self) -> dict[str, float]:
        """Extra per-epoch numbers for the history (e.g. Co-Teaching's label precision)."""
        return {}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def extra_predictors(self) -> dict[str, nn.Module]:
        """Other networks worth evaluating separately, by name (e.g. {'net2': ...})."""
        return {}
