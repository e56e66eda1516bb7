"""Generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018): the L_q loss (1 - p_y^q) / q.

The negative Box-Cox transform of p_y interpolates between cross-entropy (q -> 0) and the
noise-robust mean absolute error (q = 1, where the loss is 1 - p_y). Its gradient is
cross-entropy's weighted by p_y^q, so samples the network finds implausible (often the
mislabelled ones) pull less.
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
from robustlab.strategies.selection import SelectionMeter


def generalized_ce(logits: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """Per-sample L_q = (1 - p_y^q) / q, computed in float32 from log p_y.

    -expm1(q log p_y) / q stays exact for small q, where it tends to cross-entropy -log p_y.
    """
    log_py = F.log_softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
    return -torch.expm1(q * log_py) / q


@dataclass
class GCEConfig:
    q: float = 0.7                  # the paper's value for CIFAR-10 and CIFAR-100
    truncate_k: float | None = None  # k of the truncated loss (paper: 0.5); None = plain L_q
    prune_start: int = 40           # truncated: first pruning before (1-based) epoch prune_start (paper: 40 on CIFAR-10)
    prune_every: int = 10           # truncated: epochs between prunings (paper: 10)

    def validate(self) -> None:
        require(0.0 < self.q <= 1.0, f"q must be in (0, 1], got {self.q}")
        require(self.truncate_k is None or 0.0 < self.truncate_k < 1.0,
                f"truncate_k must be in (0, 1), got {self.truncate_k}")
        require(self.prune_start >= 1, f"prune_start must be >= 1, got {self.prune_start}")
        require(self.prune_every >= 1, f"prune_every must be >= 1, got {self.prune_every}")


@register_strategy("gce")
class GeneralizedCE(Strategy):
    """Generalized cross-entropy L_q (Zhang & Sabuncu 2018): (1 - p_y^q) / q, q = 0.7.

    With truncate_k = k the truncated loss is used: L_q(k) (a constant, no gradient) for samples
    with p_y <= k, L_q(p_y) otherwise. As in the paper's alternating optimisation, which samples
    are truncated is decided every `prune_every` epochs from epoch `prune_start` (1-based) on, by a
    pass over the whole training set, and held fixed in between (a per-sample buffer, so it
    survives checkpoints); before the first pruning every sample counts. With clean labels given,
    label precision/recall of the kept (untruncated) samples are reported.

    Deviations from the paper: pruning uses the current network (the paper takes the best one on
    a validation split); the loss is averaged over the batch (not summed), as in the widely used
    PyTorch implementation AlanChou/Truncated-Loss (the authors released no code). The paper's
    ResNet-34 / SGD recipe (lr 0.01, 120 epochs) is the study's to choose, not the strategy's.

    Against AlanChou/Truncated-Loss: its TruncatedLoss is (L_q(p_y) - L_q(k)) * w with w in {0, 1}
    (kept: L_q(p_y) - L_q(k), truncated: 0); the loss here is L_q(p_y) for kept and L_q(k) for
    truncated samples, i.e. larger by the constant L_q(k) for every sample (0.5408 at q = 0.7,
    k = 0.5): same gradients, only the reported loss differs (the paper's eq. 9 is the form here).
    Its pruning pass iterates over the augmented training loader (random crop + flip, as for
    training) with the best-on-test checkpoint in eval mode, every 10 epochs from start_prune; the
    pass here sees the unaugmented training images (the run's shared train-pass loader, also used by
    DivideMix), so a sample's p_y is that of the image itself rather than of one random crop of it.
    """

    Config = GCEConfig
    presets: ClassVar[dict[str, dict]] = {"quick": {"q": 0.7}, "paper": {"q": 0.7}, "fast": {"q": 0.7}}

    def __init__(self, model: nn.Module, q: float = 0.7, truncate_k: float | None = None, num_train: int = 0,
                 prune_start: int = 40, prune_every: int = 10, clean_labels: torch.Tensor | None = None):
        super().__init__()
        GCEConfig(q, truncate_k, prune_start, prune_every).validate()
        require(truncate_k is None or num_train >= 1, "truncated GCE needs the training-set size (num_train)")
        self.model, self.q, self.truncate_k = model, q, truncate_k
        self.prune_start, self.prune_every = prune_start, prune_every
        self.needs_train_pass = truncate_k is not None  # the pruning pass over the training set
        self.clean_labels = clean_labels  # measurement only
        self.register_buffer("kept", torch.ones(num_train if truncate_k is not None else 0, dtype=torch.bool))
        self._selection: dict[str, float] = {}

    @classmethod
    def build(cls, config: GCEConfig, ctx):
        return cls(ctx.new_model(), q=config.q, truncate_k=config.truncate_k, num_train=ctx.num_train,
                   prune_start=config.prune_start, prune_every=config.prune_every, clean_labels=ctx.clean_train_labels)

    def prunes_before(self, epoch: int) -> bool:
        """Whether the truncation is re-decided before (0-based) `epoch`: 1-based epochs prune_start, +prune_every, ..."""
        n = epoch + 1
        return self.truncate_k is not None and n >= self.prune_start and (n - self.prune_start) % self.prune_every == 0

    def warmup_length(self) -> int:
        """Truncated: the epochs of untruncated GCE before the first pruning (1-based epoch prune_start); 0 otherwise."""
        return self.prune_start - 1 if self.truncate_k is not None else 0

    def on_train_pass(self, epoch: int, loader) -> None:
        if not self.prunes_before(epoch):
            return
        floor = math.log(self.truncate_k)
        meter = SelectionMeter(self.clean_labels)
        for x, y, idx in loader:
            log_py = F.log_softmax(self.model(x).float(), dim=1).gather(1, y[:, None]).squeeze(1)
            kept = log_py > floor  # p_y > k, i.e. L_q(p_y) < L_q(k)
            self.kept[idx] = kept
            meter.update(y, idx, kept.nonzero().squeeze(1))
        self._selection = {"kept_fraction": float(self.kept.float().mean()), **meter.metrics()}

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        logits = self.model(x)
        loss = generalized_ce(logits, y, self.q)
        if self.truncate_k is not None:
            # truncated samples contribute the constant L_q(k): the value of the truncated loss, no gradient
            constant = (1 - self.truncate_k ** self.q) / self.q
            loss = torch.where(self.kept[idx], loss, torch.full_like(loss, constant))
        return StepOutput(loss.mean(), logits)

    def epoch_metrics(self) -> dict[str, float]:
        return dict(self._selection)
