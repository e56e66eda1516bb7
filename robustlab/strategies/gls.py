"""Generalized label smoothing, GLS (Wei et al., ICML 2022, "To Smooth or Not? When Label Smoothing
Meets Noisy Labels").

Label smoothing with a rate r that may be negative (negative label smoothing, NLS) as well as
positive (PLS):

    L = mean_i (wa + wb * (1 - r)) * (-log p_{i, y_i}) + wb * r * mean_c(-log p_ic)

as in the official `loss_gls` (UCSC-REAL/negative-label-smoothing, loss.py); wa = 0, wb = 1 is
plain GLS, r = 0 plain cross-entropy. With r < 0 the loss is unbounded below (it rewards pushing
the other classes' probabilities to 0), which is why the official recipe for high noise rates has
two stages: a cross-entropy warm-up (main_warmup.py: 120 epochs, SGD, LR 0.1/0.01/0.001 every 40
epochs), then GLS from the warm-up network (main_GLS_load.py: 100 epochs, SGD lr 1e-6, momentum
0.9, Nesterov, weight decay 1e-4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import require
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.registry import register_strategy

# The official two-stage recipe: 120 warm-up epochs of 120 + 100.
OFFICIAL_WARMUP, OFFICIAL_GLS = 120, 100
OFFICIAL_SHARE = OFFICIAL_WARMUP / (OFFICIAL_WARMUP + OFFICIAL_GLS)


def gls_loss(logits: torch.Tensor, y: torch.Tensor, smooth_rate: float, wa: float = 0.0, wb: float = 1.0) -> torch.Tensor:
    """(wa + wb * (1 - r)) * NLL + wb * r * mean_c(-log p), averaged over the batch (float32)."""
    logp = logits.float().log_softmax(-1)
    nll = -logp.gather(-1, y.unsqueeze(1)).squeeze(1)
    smooth = -logp.mean(-1)
    return ((wa + wb * (1.0 - smooth_rate)) * nll + wb * smooth_rate * smooth).mean()


def warmup_length(epochs: int, warmup_epochs: int = 0, warmup_share: float | None = None) -> int:
    """CE epochs of a run of `epochs` epochs: round(warmup_share * epochs) when a share is given
    (the official one is 120 / 220), else warmup_epochs."""
    return round(warmup_share * epochs) if warmup_share is not None else warmup_epochs


def _check_warmup(warmup: int, epochs: int) -> None:
    require(warmup < epochs, f"gls warm-up ({warmup} epochs) must leave a GLS epoch: it must be < the run's epochs ({epochs})")


@dataclass
class GLSConfig:
    smooth_rate: float = 0.1   # r in (-inf, 1): > 0 PLS, < 0 NLS (official default 0.1)
    warmup_epochs: int = 0     # cross-entropy epochs before GLS (official high-noise recipe: 120 of 220)
    warmup_share: float | None = None  # or the warm-up as a share of the run's epochs (official 120/220 = 0.545)
    wa: float = 0.0            # weight of the plain loss (official default 0)
    wb: float = 1.0            # weight of the GLS loss (official default 1)

    def validate(self) -> None:
        require(math.isfinite(self.smooth_rate) and self.smooth_rate < 1.0,
                f"smooth_rate must be in (-inf, 1), got {self.smooth_rate}")
        require(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        require(self.warmup_share is None or 0 <= self.warmup_share < 1,
                f"warmup_share must be in [0, 1), got {self.warmup_share}")
        require(self.warmup_share is None or self.warmup_epochs == 0, "give warmup_epochs or warmup_share, not both")
        require(self.wa >= 0 and self.wb >= 0, f"wa and wb must be >= 0, got wa={self.wa}, wb={self.wb}")
        require(self.wa + self.wb > 0, "wa + wb must be > 0")


@register_strategy("gls")
class GLS(Strategy):
    """GLS (Wei et al. 2022): label smoothing with a positive or negative rate, after a CE warm-up.

    The first warm-up epochs (warmup_epochs, or round(warmup_share * epochs)) train with
    cross-entropy, the rest with the GLS loss; the history records the rate in force
    (`smooth_rate_now`, 0 during the warm-up).

    Presets for the noisy-label study scale the official two-stage recipe (120 CE + 100 GLS
    epochs) to the run: warmup_share 120/220, so the warm-up keeps its share of the epochs
    (quick 20 -> 11, paper 100 -> 55, fast 10 -> 5), and the rate is -0.4, one of the paper's
    candidates for high noise rates (its grid is 0.8 .. -8; not tuned here).

    Deviations from the official code: the second stage continues from the last warm-up
    weights (the official one reloads the warm-up checkpoint with the best *test* accuracy) and
    with the run's own optimizer and LR schedule (the official second stage restarts SGD at lr
    1e-6, which keeps a negative rate's unbounded loss from running away); the warm-up is in the
    same run instead of a separate script.
    """

    Config = GLSConfig
    presets: ClassVar[dict[str, dict]] = {name: {"smooth_rate": -0.4, "warmup_share": OFFICIAL_SHARE}
                                          for name in ("quick", "paper", "fast")}

    def __init__(self, model: nn.Module, smooth_rate: float, warmup_epochs: int = 0, wa: float = 0.0, wb: float = 1.0,
                 warmup_share: float | None = None):
        super().__init__()
        require(math.isfinite(smooth_rate) and smooth_rate < 1.0,
                f"GLS smooth_rate must be in (-inf, 1), got {smooth_rate}")
        require(warmup_epochs >= 0, f"GLS warmup_epochs must be >= 0, got {warmup_epochs}")
        require(warmup_share is None or 0 <= warmup_share < 1, f"GLS warmup_share must be in [0, 1), got {warmup_share}")
        self.model = model
        self.smooth_rate, self.warmup_epochs, self.wa, self.wb = smooth_rate, warmup_epochs, wa, wb
        self.warmup_share = warmup_share
        self._in_gls = warmup_epochs == 0 and not warmup_share

    @classmethod
    def build(cls, config: GLSConfig, ctx):
        epochs = getattr(getattr(getattr(ctx, "experiment", None), "train", None), "epochs", None)
        if epochs is not None:
            _check_warmup(warmup_length(epochs, config.warmup_epochs, config.warmup_share), epochs)
        strategy = cls(ctx.new_model(), config.smooth_rate, config.warmup_epochs, config.wa, config.wb,
                       config.warmup_share)
        strategy.config = config
        return strategy

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        warmup = warmup_length(num_epochs, self.warmup_epochs, self.warmup_share)
        _check_warmup(warmup, num_epochs)
        self._in_gls = epoch >= warmup

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self._in_gls:
            return F.cross_entropy(logits.float(), y)  # official warm-up: loss_gls with wa=1, wb=0
        return gls_loss(logits, y, self.smooth_rate, self.wa, self.wb)

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        logits = self.model(x)
        return StepOutput(self.loss(logits, y), logits)

    def epoch_metrics(self) -> dict[str, float]:
        return {"smooth_rate_now": self.smooth_rate if self._in_gls else 0.0}
