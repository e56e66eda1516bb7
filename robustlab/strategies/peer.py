"""Peer loss (Liu & Guo, ICML 2020, "Peer Loss Functions: Learning from Noisy Labels without
Knowing Noise Rates").

Each step subtracts the loss on a "peer" pair built from two independently drawn samples, the
image of one and the label of another, which estimates the loss under labels independent of the
inputs and so cancels the effect of (class-conditional) label noise:

    L = CE_s(f(x_i), y_i) - alpha(T) * CE_s(f(x_p1), y_p2),   CE_s(z, y) = -log(softmax(z)_y + 1e-5)

as in the official multi-class code (weijiaheng/Multi-class-Peer-Loss-functions, CIFAR-10/runner.py):
the stable cross-entropy, and alpha(T) piecewise linear over 300 epochs: 0 for epochs 0-19,
0 -> 1 over 20-39, 1 -> 2 over 40-49, 2 -> 5 over 50-99, 5 -> 10 over 100-199, 10 -> 20 over 200-299
(np.linspace pieces), with the learning rate of epoch T divided by 1 + alpha(T).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from robustlab.errors import require
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.registry import register_strategy

STABLE_EPS = 1e-5       # CrossEntropyLossStable: log(softmax + 1e-5)
OFFICIAL_EPOCHS = 300   # CIFAR-10 runner: num_epochs = 300
# (start, end, epochs) of each np.linspace piece of the official f_alpha (CIFAR-10)
ALPHA_PIECES = ((0.0, 0.0, 20), (0.0, 1.0, 20), (1.0, 2.0, 10), (2.0, 5.0, 50), (5.0, 10.0, 100), (10.0, 20.0, 100))


def official_alphas() -> np.ndarray:
    """alpha for each of the official 300 epochs."""
    return np.concatenate([np.linspace(a, b, num=n) for a, b, n in ALPHA_PIECES])


def alpha_at(epoch: int, num_epochs: int, alpha: float | None = None) -> float:
    """alpha of (0-based) `epoch` of `num_epochs`: a constant `alpha`, or the official schedule
    stretched to the run, read at official epoch floor(epoch * 300 / num_epochs)."""
    if alpha is not None:
        return alpha
    return float(official_alphas()[epoch * OFFICIAL_EPOCHS // num_epochs])


def stable_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean_i -log(softmax(z_i)_{y_i} + 1e-5)."""
    p = logits.float().softmax(-1)
    return -(p.gather(1, y.unsqueeze(1)).squeeze(1) + STABLE_EPS).log().mean()


def peer_loss(logits: torch.Tensor, y: torch.Tensor, peer_logits: torch.Tensor, peer_y: torch.Tensor,
              alpha: float) -> torch.Tensor:
    """CE_s(f(x), y) - alpha * CE_s(f(x_p1), y_p2)."""
    return stable_ce(logits, y) - alpha * stable_ce(peer_logits, peer_y)


@dataclass
class PeerConfig:
    alpha: float | None = None  # constant peer weight; None = the official schedule stretched to the run
    lr_divide: bool = True      # scale the step by 1 / (1 + alpha) as the official LR plan does

    def validate(self) -> None:
        require(self.alpha is None or self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")


@register_strategy("peer")
class PeerLoss(Strategy):
    """Peer loss (Liu & Guo 2020): CE on the sample minus alpha * CE on a random image with a random label.

    The peer images and the peer labels come from two independent random permutations of the
    batch (torch's RNG, so a resumed run draws the same pairs); the peer images go through the
    network in the same forward pass as the batch. The official schedule of alpha (300 epochs)
    is stretched to the run's epochs: epoch T reads official epoch floor(T * 300 / epochs), e.g.
    with 10 epochs (fast) alpha is 0, 0.53, 2.61, 4.45, 6.01, 7.53, 9.04, 11.01, 14.04, 17.07 and
    with 20 (quick) it is 0 for the first 2 epochs, then rises to 18.59 at the last.

    The official LR plan divides the learning rate by 1 + alpha(T); the engine owns the LR, so
    with lr_divide the loss is divided by 1 + alpha(T) instead, which is the same step for
    SGD (whose LR multiplies the gradient) except that weight decay is not divided (and is
    without effect under Adam, which is invariant to the loss scale).

    Under Adam (the quick preset) the 1 / (1 + alpha) scale has no effect and the growing alpha
    lets the peer term dominate: on a 6-epoch quick run test accuracy fell to chance (measured);
    SGD, as in the official recipe (and the paper and fast presets), keeps the scale.

    Deviations from the official code: peer samples are drawn from the batch, not from a
    separate loader over the whole training set (two fresh batches per step); the peer images
    share the batch's augmentation and its forward pass (so its BatchNorm statistics); the
    last, partial batch is used (the official code skips it); the official network recipe
    (PreAct ResNet-18, SGD momentum 0.9, weight decay 1e-4, LR 0.1 divided by 10 every 40
    epochs, optimizer re-created each epoch) is the run's own.
    """

    Config = PeerConfig
    # Every preset stretches the official 300-epoch alpha schedule to the run's epochs.
    presets: ClassVar[dict[str, dict]] = {"quick": {}, "paper": {}, "fast": {}}

    def __init__(self, model: nn.Module, alpha: float | None = None, lr_divide: bool = True):
        super().__init__()
        require(alpha is None or alpha >= 0, f"peer alpha must be >= 0, got {alpha}")
        self.model = model
        self.alpha, self.lr_divide = alpha, lr_divide
        self._alpha_now = alpha_at(0, 1, alpha)

    @classmethod
    def build(cls, config: PeerConfig, ctx):
        strategy = cls(ctx.new_model(), config.alpha, config.lr_divide)
        strategy.config = config
        return strategy

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self._alpha_now = alpha_at(epoch, num_epochs, self.alpha)

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        n = len(y)
        p1 = torch.randperm(n, device=y.device)
        p2 = torch.randperm(n, device=y.device)
        out = self.model(torch.cat([x, x[p1]]))
        logits, peer_logits = out[:n], out[n:]
        loss = peer_loss(logits, y, peer_logits, y[p2], self._alpha_now)
        if self.lr_divide:
            loss = loss / (1.0 + self._alpha_now)
        return StepOutput(loss, logits)

    def epoch_metrics(self) -> dict[str, float]:
        return {"peer_alpha": self._alpha_now}
