"""Early-Learning Regularization, ELR (Liu et al., NeurIPS 2020).

Early in training a network fits the clean labels first; ELR keeps a per-sample target
t_i, a temporal ensemble of the network's own predictions, and adds a term that rewards
agreeing with it, so memorising a wrong label means moving away from what the network
predicted early on:

    p   = clamp(softmax(logits), 1e-4, 1 - 1e-4)
    t_i <- beta * t_i + (1 - beta) * p_i / sum(p_i)          (p detached; t starts at 0)
    L   = CE(logits, y) + lambda * mean_i log(1 - <t_i, p_i>)

as in the official `elr_loss` (shengliu66/ELR, ELR/model/loss.py): the target is updated
before the regulariser is computed, and the regulariser uses the clamped probabilities.
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

PROB_CLAMP = 1e-4  # official: torch.clamp(y_pred, 1e-4, 1.0 - 1e-4)

# Official configs (ELR/config_cifar10.json, ELR/config_cifar100.json): (beta, lambda).
PAPER_CIFAR10 = (0.7, 3.0)
PAPER_CIFAR100 = (0.9, 7.0)


def clamped_probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(1).clamp(PROB_CLAMP, 1.0 - PROB_CLAMP)


def updated_targets(old: torch.Tensor, probs: torch.Tensor, beta: float) -> torch.Tensor:
    """beta * old + (1 - beta) * probs / sum(probs): the temporal-ensembling step (no gradient)."""
    probs = probs.detach()
    return beta * old + (1.0 - beta) * probs / probs.sum(1, keepdim=True)


def elr_regulariser(targets: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """mean_i log(1 - <t_i, p_i>): decreases as the prediction agrees with the target."""
    return (1.0 - (targets * probs).sum(1)).log().mean()


def _gather_across_ranks(idx: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (idx, rows), so that all ranks apply every memory update: DDP broadcasts
    rank 0's buffers before each step, which would otherwise drop the other ranks' updates."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return idx, rows
    world = torch.distributed.get_world_size()
    if world == 1:
        return idx, rows
    all_idx = [torch.empty_like(idx) for _ in range(world)]
    all_rows = [torch.empty_like(rows) for _ in range(world)]
    torch.distributed.all_gather(all_idx, idx.contiguous())
    torch.distributed.all_gather(all_rows, rows.contiguous())
    return torch.cat(all_idx), torch.cat(all_rows)


@dataclass
class ELRConfig:
    beta: float | None = None  # target momentum; None = official value for the dataset (0.7 CIFAR-10, 0.9 CIFAR-100)
    lam: float | None = None   # the paper's lambda, regulariser weight; None = official (3 CIFAR-10, 7 CIFAR-100)

    def validate(self) -> None:
        require(self.beta is None or 0.0 <= self.beta < 1.0, f"beta must be in [0, 1), got {self.beta}")
        require(self.lam is None or self.lam >= 0.0, f"lam must be >= 0, got {self.lam}")


@register_strategy("elr")
class ELR(Strategy):
    """ELR (Liu et al. 2020): CE + lambda * log(1 - <p, t>) with per-sample temporal-ensemble targets t.

    The target memory is the buffer `target` (num_train x classes), indexed by the loader's
    dataset indices, so it is saved in every checkpoint and restored on resume.

    Defaults (official configs): beta 0.7 and lambda 3 for 10 classes, beta 0.9 and lambda 7
    for 100 classes (picked from the class count when not given). The official recipes also use
    SGD lr 0.02, momentum 0.9, weight decay 1e-3, batch 128, 150 epochs and ResNet-34; here the
    training recipe is the run's own (see `presets`).

    Deviations from the official code: ELR+ (two networks, mixup, weight averaging) is not
    implemented, only ELR; under DDP the memory updates of all ranks are gathered and applied
    on every rank (the official code is single-GPU).
    """

    Config = ELRConfig
    # Options for the noisy-label study: both presets keep the defaults, the official beta and
    # lambda for the dataset's class count (the short quick budget needs no other values).
    presets: ClassVar[dict[str, dict]] = {"quick": {}, "paper": {}, "fast": {}}

    def __init__(self, model: nn.Module, num_train: int, num_classes: int, beta: float, lam: float):
        super().__init__()
        require(num_train >= 1, "ELR needs the training-set size (num_train) for its per-sample targets")
        require(num_classes >= 2, f"ELR needs >= 2 classes, got {num_classes}")
        require(0.0 <= beta < 1.0, f"ELR beta must be in [0, 1), got {beta}")
        require(lam >= 0.0, f"ELR lambda must be >= 0, got {lam}")
        self.model = model
        self.beta, self.lam = beta, lam
        self.register_buffer("target", torch.zeros(num_train, num_classes))

    @classmethod
    def build(cls, config: ELRConfig, ctx):
        paper = PAPER_CIFAR100 if ctx.num_classes >= 100 else PAPER_CIFAR10
        beta = config.beta if config.beta is not None else paper[0]
        lam = config.lam if config.lam is not None else paper[1]
        strategy = cls(ctx.new_model(), ctx.num_train, ctx.num_classes, beta, lam)
        strategy.config = ELRConfig(beta, lam)
        return strategy

    def loss(self, logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Update the targets of samples `idx`, then CE + lambda * regulariser (float32)."""
        logits = logits.float()
        probs = clamped_probs(logits)
        with torch.no_grad():
            new = updated_targets(self.target[idx], probs, self.beta)
            all_idx, all_new = _gather_across_ranks(idx, new)
            self.target[all_idx] = all_new
        return F.cross_entropy(logits, y) + self.lam * elr_regulariser(new, probs)

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        logits = self.model(x)
        return StepOutput(self.loss(logits, y, idx), logits)
