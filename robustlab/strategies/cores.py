"""CORES^2, phase 1: the confidence-regularized sample sieve (Cheng et al., ICLR 2021, "Learning with
Instance-Dependent Label Noise: A Sample Sieve Approach").

Per sample, with p = softmax(f(x)) and l_c = -log(p_c + 1e-8):

    CE_i   = -log softmax(f(x_i))_{y_i}
    sel_i  = CE_i - mean_c l_c                        (the sieve metric: confidence regularizer at beta = 1, uniform prior)
    loss_i = CE_i - beta(T) * sum_c prior_c * l_c      (the confidence-regularized loss)
    v_i    = 1 during the first 31 of the official 100 epochs, afterwards 1 iff sel_i <= 0 (the sieve)
    L      = sum_i v_i * loss_i / sum_i v_i

as in the official `loss_cores` (haochenglouis/cores, loss.py; phase1.py): beta(T) is 0 for epochs
0-9, rises linearly to 2 over epochs 10-39 (np.linspace(0, 2, 30)) and stays 2; `prior` is the class
distribution of the noisy labels, and before every epoch it becomes the distribution of the labels
that the previous epoch's sieve kept (counts of all labels minus those sieved out); the learning
rate of epoch T is divided by 1 + beta(T).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import require
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.registry import register_strategy
from robustlab.strategies.selection import SelectionMeter

LOG_EPS = 1e-8          # official: -torch.log(F.softmax(y) + 1e-8)
OFFICIAL_EPOCHS = 100   # phase1.py: n_epoch 100
SIEVE_AFTER = 30        # official: every sample is kept while epoch <= 30
BETA_PIECES = ((0.0, 0.0, 10), (0.0, 1.0, 30), (1.0, 1.0, 60))  # f_beta / beta_max: np.linspace pieces


def official_epoch(epoch: int, num_epochs: int) -> int:
    """The official epoch that (0-based) `epoch` of a `num_epochs` run stands for: floor(epoch * 100 / num_epochs)."""
    return epoch * OFFICIAL_EPOCHS // num_epochs


def beta_at(epoch: int, num_epochs: int, beta_max: float = 2.0) -> float:
    """The official f_beta (0, ramp to beta_max, beta_max) stretched to the run."""
    ramp = np.concatenate([np.linspace(a, b, num=n) for a, b, n in BETA_PIECES])
    return float(beta_max * ramp[official_epoch(epoch, num_epochs)])


def sieve_on(epoch: int, num_epochs: int) -> bool:
    """True once the official epoch is past 30."""
    return official_epoch(epoch, num_epochs) > SIEVE_AFTER


def cores_terms(logits: torch.Tensor, y: torch.Tensor, beta: float, prior: torch.Tensor | None):
    """(per-sample confidence-regularized loss, per-sample sieve metric) in float32; prior None = uniform."""
    logits = logits.float()
    ce = F.cross_entropy(logits, y, reduction="none")
    neg_log = -(logits.softmax(1) + LOG_EPS).log()
    sel = ce - neg_log.mean(1)
    reg = neg_log.mean(1) if prior is None else (prior.unsqueeze(0) * neg_log).sum(1)
    return ce - beta * reg, sel


@dataclass
class CORESConfig:
    beta_max: float = 2.0        # the plateau of the confidence regularizer's weight (official 2)
    uniform_prior: bool = False  # True: regularize towards the uniform prior (the official noise_prior=None path)
    lr_divide: bool = True       # scale the step by 1 / (1 + beta) as the official LR plan does

    def validate(self) -> None:
        require(self.beta_max >= 0, f"beta_max must be >= 0, got {self.beta_max}")


@register_strategy("cores")
class CORES(Strategy):
    """CORES^2 phase 1 (Cheng et al. 2021): confidence-regularized CE on the samples its sieve keeps.

    The official 100-epoch schedule is stretched to the run: epoch T of E acts as official epoch
    floor(T * 100 / E), so beta is 0 over the first 10% of the run, ramps to beta_max until 40%
    and the sieve starts after 31% (quick, 20 epochs: beta 0, 0, 0, 0.34, ... 2 from epoch 8, sieve
    from epoch 7; fast, 10 epochs: beta 0, 0, 0.69, 1.38, 2, ..., sieve from epoch 4).

    Per-sample state: `score` (num_train), each sample's latest sieve metric (the official
    loss_div_all column; > 0 means "predicted noisy"); class counts `label_counts` (noisy labels,
    counted over the first epoch, which sees every sample once) and `sieved_counts` (the current
    epoch's sieved-out labels) give the prior. All are buffers, so a resumed run continues exactly.
    With the clean labels (measurement only), label_precision/recall report the sieve's selection.

    The official LR plan divides the learning rate by 1 + beta(T); the engine owns the LR, so with
    lr_divide the loss is divided by 1 + beta(T) instead (the same step for SGD, except that weight
    decay is not divided; no effect under Adam).

    Deviations from the official code: phase 2 (semi-supervised training on the sieved data,
    phase2/) is not part of this strategy; the noisy-label prior is counted from the first
    epoch's batches (the official one is computed from the dataset; they agree unless the loader
    drops its last partial batch; under DDP, whose buffer broadcast keeps rank 0's buffers, the
    counts and scores are rank 0's shard); the official
    recipe (SGD without momentum, batch 64, lr 0.1 then 0.01 after 50 epochs, ResNet-34) is the run's own.
    """

    Config = CORESConfig
    # Every preset stretches the official 100-epoch beta / sieve schedule to the run's epochs.
    presets: ClassVar[dict[str, dict]] = {"quick": {}, "paper": {}, "fast": {}}

    def __init__(self, model: nn.Module, num_train: int, num_classes: int, beta_max: float = 2.0,
                 uniform_prior: bool = False, lr_divide: bool = True, clean_labels: torch.Tensor | None = None):
        super().__init__()
        require(num_train >= 1, "CORES needs the training-set size (num_train) for its per-sample sieve scores")
        require(num_classes >= 2, f"CORES needs >= 2 classes, got {num_classes}")
        require(beta_max >= 0, f"CORES beta_max must be >= 0, got {beta_max}")
        self.model = model
        self.num_classes = num_classes
        self.beta_max, self.uniform_prior, self.lr_divide = beta_max, uniform_prior, lr_divide
        self.register_buffer("score", torch.zeros(num_train))
        self.register_buffer("label_counts", torch.zeros(num_classes))
        self.register_buffer("sieved_counts", torch.zeros(num_classes))
        self.register_buffer("prior", torch.full((num_classes,), 1.0 / num_classes))
        self.selection = SelectionMeter(clean_labels)  # measurement only, never used to train
        self._epoch, self._beta, self._sieve = 0, 0.0, False

    @classmethod
    def build(cls, config: CORESConfig, ctx):
        strategy = cls(ctx.new_model(), ctx.num_train, ctx.num_classes, config.beta_max, config.uniform_prior,
                       config.lr_divide, clean_labels=ctx.clean_train_labels)
        strategy.config = config
        return strategy

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self._epoch = epoch
        self._beta = beta_at(epoch, num_epochs, self.beta_max)
        self._sieve = sieve_on(epoch, num_epochs)
        if epoch > 0:  # official: noise_prior * N - noise_prior_delta, normalised
            kept = self.label_counts - self.sieved_counts
            self.prior.copy_(kept / kept.sum().clamp(min=1))
        self.sieved_counts.zero_()
        self.selection.reset()

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        logits = self.model(x)
        loss, sel = cores_terms(logits, y, self._beta, None if self.uniform_prior else self.prior)
        sel = sel.detach()
        kept = sel <= 0 if self._sieve else torch.ones_like(sel, dtype=torch.bool)
        with torch.no_grad():
            self.score[idx] = sel
            if self._epoch == 0:
                self.label_counts += torch.bincount(y, minlength=self.num_classes).to(self.label_counts.dtype)
            self.sieved_counts += torch.bincount(y[~kept], minlength=self.num_classes).to(self.sieved_counts.dtype)
        self.selection.update(y, idx, torch.nonzero(kept).squeeze(1))
        weights = kept.float()
        loss = (weights * loss).sum() / weights.sum().clamp(min=1.0)  # 0 when the sieve keeps nothing
        if self.lr_divide:
            loss = loss / (1.0 + self._beta)
        return StepOutput(loss, logits)

    def epoch_metrics(self) -> dict[str, float]:
        return {"cores_beta": self._beta, **self.selection.metrics()}
