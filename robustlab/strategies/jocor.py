"""JoCoR (Wei et al., CVPR 2020): two networks trained jointly on the small-loss samples of one joint loss.

Per sample, the joint loss is (1 - lambda) * (CE_1 + CE_2) + lambda * (KL(p1 || p2) + KL(p2 || p1)):
the cross-entropies of both networks plus a co-regularisation that pulls their predictions
together. The R(T) fraction of the batch with the smallest joint loss is kept (Co-Teaching's
schedule) and the mean joint loss over those samples updates both networks at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from robustlab.errors import require
from robustlab.strategies.base import StepOutput
from robustlab.strategies.coteaching import CoTeaching, CoTeachingConfig
from robustlab.strategies.registry import register_strategy


def symmetric_kl(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p1 || p2) + KL(p2 || p1) = sum_k (p1_k - p2_k)(log p1_k - log p2_k), float32.

    Gradient flows into both networks, as in the official code (neither softmax is detached).
    """
    log1, log2 = F.log_softmax(logits1.float(), dim=1), F.log_softmax(logits2.float(), dim=1)
    return ((log1.exp() - log2.exp()) * (log1 - log2)).sum(1)


def joint_loss(logits1: torch.Tensor, logits2: torch.Tensor, y: torch.Tensor, co_lambda: float) -> torch.Tensor:
    """Per-sample (1 - lambda) * (CE_1 + CE_2) + lambda * symmetric KL."""
    ce = F.cross_entropy(logits1.float(), y, reduction="none") + F.cross_entropy(logits2.float(), y, reduction="none")
    return (1 - co_lambda) * ce + co_lambda * symmetric_kl(logits1, logits2)


@dataclass
class JoCoRConfig(CoTeachingConfig):
    co_lambda: float = 0.9  # weight of the co-regularisation (official README: 0.9 for CIFAR-10 at 20%/50% symmetric noise)

    def validate(self) -> None:
        super().validate()
        require(0.0 <= self.co_lambda <= 1.0, f"co_lambda must be in [0, 1], got {self.co_lambda}")


@register_strategy("jocor")
class JoCoR(CoTeaching):
    """JoCoR (Wei et al. 2020): both nets learn from the small-loss samples of a joint CE + symmetric-KL loss.

    Forget rate tau (default: the realised noise rate, an oracle;
    forget_rate="estimate" takes the noise rate estimated from the noisy labels) and its ramp over num_gradual epochs are
    Co-Teaching's (default ramp="official": the official `rate_schedule`, np.linspace(0, tau ** c,
    Tk) then tau, the same code as Co-Teaching's); the loss is the mean joint loss over the kept
    samples, as in the official `loss_jocor`. co_lambda = 0.9 is the official README's value for
    CIFAR-10 with 20% and 50% symmetric noise (its command-line default is 0.1; 0.65 at 80% noise,
    0.85 for CIFAR-100).

    Deviations from the official code (hongxin001/JoCoR): the forget rate defaults to the realised
    noise rate for every noise type (the official code halves it for asymmetric noise: pass
    forget_rate=<rate / 2> there); at least one sample is kept per batch; epochs count from 0 (the
    official loop trains epochs 1..n-1 and caps an epoch at 400 batches). The official recipe
    (Adam lr 1e-3, linear decay from epoch 80 of 200) is the study's to choose.
    """

    Config = JoCoRConfig
    presets: ClassVar[dict[str, dict]] = {"quick": {"num_gradual": 5, "co_lambda": 0.9},
                                          "paper": {"num_gradual": 10, "co_lambda": 0.9},
                                          "fast": {"num_gradual": 2, "co_lambda": 0.9}}

    def __init__(self, model, peer, forget_rate: float, num_gradual: int = 10, exponent: float = 1.0,
                 co_lambda: float = 0.9, clean_labels: torch.Tensor | None = None, ramp: str = "official"):
        super().__init__(model, peer, forget_rate, num_gradual, exponent, clean_labels, ramp)
        require(0.0 <= co_lambda <= 1.0, f"co_lambda must be in [0, 1], got {co_lambda}")
        self.co_lambda = co_lambda

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        logits1, logits2 = self.model(x), self.peer(x)
        loss = joint_loss(logits1, logits2, y, self.co_lambda)
        num_remember = max(1, int(self._remember * len(y)))
        keep = torch.argsort(loss.detach())[:num_remember]
        self.selection.update(y, idx, keep)
        return StepOutput(loss[keep].mean(), logits1)
