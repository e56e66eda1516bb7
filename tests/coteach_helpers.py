"""Toy networks shared by the Co-Teaching, Co-teaching+ and JoCoR tests: per-sample logits whose
gradients show exactly which samples a network's loss used, and hand-computable losses."""
from __future__ import annotations

import math

import torch
from torch import nn


class PerSampleLogits(nn.Module):
    """Logits from a per-sample parameter table: the input holds sample ids, so row i receives
    gradient from sample i alone, and only if that sample is used."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(torch.as_tensor(table, dtype=torch.float32).clone())

    @classmethod
    def from_margins(cls, margins) -> "PerSampleLogits":
        """Two classes, logits (m, 0): with label 0 a sample's loss is softplus(-m), class 0 predicted iff m > 0."""
        return cls([[m, 0.0] for m in margins])

    def forward(self, ids):
        return self.table[ids.view(-1).long()]


class FixedLogits(nn.Module):
    """Returns preset logits for the batch regardless of input: makes losses hand-computable."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.logits * self.scale


def rows_with_grad(net: PerSampleLogits) -> set[int]:
    """The samples whose table rows received a non-zero gradient."""
    return set(torch.nonzero(net.table.grad.abs().sum(1)).squeeze(1).tolist())


def softplus(m: float) -> float:
    """Cross-entropy of logits (m, 0) for label 0: log(1 + exp(-m))."""
    return math.log1p(math.exp(-m))
