"""Co-teaching+ (Yu et al., ICML 2019): Co-Teaching restricted to the samples the two networks disagree on.

Co-Teaching's two networks converge to the same predictions over training and then select the
same samples, so the cross-update stops helping. Co-teaching+ keeps them apart: after `init_epoch`
epochs of plain Co-Teaching, each batch is first reduced to the samples whose predicted classes
differ between the networks, and the small-loss cross-update runs on those only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from robustlab.errors import require
from robustlab.strategies.base import StepOutput
from robustlab.strategies.coteaching import CoTeaching, CoTeachingConfig, cross_update_indices
from robustlab.strategies.registry import register_strategy


def disagreement(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """Batch positions where the two networks predict different classes."""
    return (logits1.argmax(1) != logits2.argmax(1)).nonzero().squeeze(1)


@dataclass
class CoTeachingPlusConfig(CoTeachingConfig):
    # epochs of plain Co-Teaching before the disagreement filter (official: 20 on CIFAR-10, 5 on CIFAR-100)
    init_epoch: int = 20

    def validate(self) -> None:
        super().validate()
        require(self.init_epoch >= 0, f"init_epoch must be >= 0, got {self.init_epoch}")


@register_strategy("coteach_plus")
class CoTeachingPlus(CoTeaching):
    """Co-teaching+ (Yu et al. 2019): after init_epoch, small-loss cross-update among disagreeing samples only.

    Forget rate tau (default: the realised noise rate, an oracle;
    forget_rate="estimate" takes the noise rate estimated from the noisy labels) and its ramp over num_gradual epochs are
    Co-Teaching's; the default ramp="official" is the official `gen_forget_rate` ('type_1':
    np.linspace(0, tau, Tk), then tau; the official code has no exponent, i.e. c = 1). Before
    epoch `init_epoch` (0-based) a step is a Co-Teaching step; from then on net 1 learns from the
    int(R(T) * d) disagreeing samples with the smallest loss under net 2 and vice versa, d being the
    number of disagreeing samples (all d of them if that rounds to 0).

    Deviations from the official code (xingruiyu/coteaching_plus): the official disagreement branch
    applies cross-entropy to softmax outputs instead of logits and divides the mean loss by the
    number kept once more; here it is the paper's cross-entropy of the logits, averaged over the
    kept samples (the Co-Teaching phase before init_epoch differs in the same division, see
    CoTeaching). A batch without disagreement gives no gradient (the official code then trains on
    the whole batch while epoch * batch_index < 5000). Epochs count from 0 here (the official
    loop trains epochs 1..n-1, so its first epoch already uses R(1) and only 19 epochs precede
    init_epoch = 20). The official recipe (Adam lr 1e-3, linear decay from epoch 80 of 200) is the
    study's to choose.
    """

    Config = CoTeachingPlusConfig
    presets: ClassVar[dict[str, dict]] = {"quick": {"num_gradual": 5, "init_epoch": 5},
                                          "paper": {"num_gradual": 10, "init_epoch": 20},
                                          "fast": {"num_gradual": 2, "init_epoch": 2}}

    def __init__(self, model, peer, forget_rate: float, num_gradual: int = 10, exponent: float = 1.0,
                 init_epoch: int = 20, clean_labels: torch.Tensor | None = None, ramp: str = "official"):
        super().__init__(model, peer, forget_rate, num_gradual, exponent, clean_labels, ramp)
        require(init_epoch >= 0, f"init_epoch must be >= 0, got {init_epoch}")
        self.init_epoch = init_epoch
        self._disagree = self._seen = 0

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_start(epoch, num_epochs)
        self._disagree = self._seen = 0

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        if epoch < self.init_epoch:
            return super().train_step(x, y, idx, epoch)
        logits1, logits2 = self.model(x), self.peer(x)
        loss1 = F.cross_entropy(logits1.float(), y, reduction="none")
        loss2 = F.cross_entropy(logits2.float(), y, reduction="none")
        pool = disagreement(logits1.detach(), logits2.detach())
        self._disagree, self._seen = self._disagree + len(pool), self._seen + len(y)
        if len(pool) == 0:
            self.selection.update(y, idx, pool, pool)  # nothing kept: the batch's clean samples count as missed
            # zero loss that still touches every parameter, so DDP finds all gradients
            return StepOutput(0.0 * (loss1.sum() + loss2.sum()), logits1)
        num_remember = int(self._remember * len(pool)) or len(pool)
        picks1, picks2 = cross_update_indices(loss1[pool].detach(), loss2[pool].detach(), num_remember)
        update1, update2 = pool[picks1], pool[picks2]
        self.selection.update(y, idx, update1, update2)
        return StepOutput(loss1[update1].mean() + loss2[update2].mean(), logits1)

    def epoch_metrics(self) -> dict[str, float]:
        out = super().epoch_metrics()
        if self._seen:
            out["disagreement"] = self._disagree / self._seen  # fraction of samples the nets disagreed on
        return out
