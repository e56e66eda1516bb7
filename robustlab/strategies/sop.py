"""Sparse Over-Parameterization, SOP and SOP+ (Liu et al., ICML 2022, "Robust Training under Label
Noise by Over-parameterization").

The label noise of sample i is modelled as a sparse term s_i = u_i^2 * y_i - v_i^2 * (1 - y_i)
(y_i one-hot, u_i a scalar, v_i a vector per class), learned jointly with the network by plain
gradient descent, whose implicit bias keeps s_i sparse. As in the official `overparametrization_loss`
(shengliu66/SOP, model/loss.py, newest version):

    U = clamp(u_i^2 * y_i, 0, 1),  V = clamp(v_i^2 * (1 - y_i), 0, 1)
    p = clamp(softmax(f(x)) + U - V.detach(), min=1e-4);  p = p / max(|p|_1, 1e-4);  p = clamp(p, 1e-4, 1)
    L = mean_i -<y_i, log p_i> + sum_i |onehot(argmax f(x_i)) + U_i - V_i - y_i|^2 / N

so u learns from the cross-entropy and the squared term, v from the squared term only. SOP+ adds
    + ratio_balance * mean_c(-(1/C) log clamp(mean_i p_ic, 1e-4, 1))     (class balance)
    + ratio_consistency * mean_i KL(softmax f(x'_i).detach() || softmax f(x''_i))  (two views)
with both views of a batch in one forward pass (their BatchNorm statistics shared).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.data.augment import BatchAugment
from robustlab.errors import require
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.elr import _gather_across_ranks
from robustlab.strategies.registry import register_strategy

EPS = 1e-4  # official: eps = 1e-4 for every clamp and the L1 normalisation

# Official hyper-parameters (paper Table A.1, README, config_cifar100.json): (lr_u, lr_v).
PAPER_CIFAR10 = (10.0, 10.0)
PAPER_CIFAR100 = (1.0, 10.0)
INIT_STD = 1e-8          # reparam_arch.args.std: u, v ~ N(0, 1e-8^2)
PLUS_CONSISTENCY = 0.9   # train_loss.args.ratio_consistency of SOP+
PLUS_BALANCE = 0.1       # train_loss.args.ratio_balance of SOP+
PLUS_CUTOUT = 16         # data_augmentation.cutout of the second view


def noise_terms(u: torch.Tensor, v: torch.Tensor, onehot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V): clamp(u^2 * y, 0, 1) and clamp(v^2 * (1 - y), 0, 1) for rows u (N, 1), v (N, C)."""
    return (u ** 2 * onehot).clamp(0, 1), (v ** 2 * (1 - onehot)).clamp(0, 1)


def corrected_prediction(logits: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """softmax + U - V (V without gradient), clamped, L1-normalised and clamped again."""
    p = (logits.softmax(1) + U - V.detach()).clamp(min=EPS)
    p = F.normalize(p, p=1, dim=1, eps=EPS)
    return p.clamp(EPS, 1.0)


def sop_loss(logits: torch.Tensor, onehot: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
             ratio_balance: float = 0.0, logits2: torch.Tensor | None = None, ratio_consistency: float = 0.0) -> torch.Tensor:
    """The official SOP(+) training loss for one batch (float32 logits, u (N, 1), v (N, C) rows)."""
    U, V = noise_terms(u, v, onehot)
    p = corrected_prediction(logits, U, V)
    hard = F.one_hot(logits.detach().argmax(1), onehot.shape[1]).to(onehot.dtype)
    mse = F.mse_loss(hard + U - V, onehot, reduction="sum") / len(onehot)
    loss = -(onehot * p.log()).sum(1).mean() + mse
    if ratio_balance > 0:
        avg = p.mean(0).clamp(EPS, 1.0)
        loss = loss + ratio_balance * (-(avg.log() / onehot.shape[1]).sum())
    if logits2 is not None and ratio_consistency > 0:
        kl = F.kl_div(logits2.log_softmax(1), logits.softmax(1).detach(), reduction="none").sum(1)
        loss = loss + ratio_consistency * kl.mean()
    return loss


class TwoViews:
    """SOP+'s pair of views: the run's augmentation, and the same with a Cutout square on top."""

    def __init__(self, weak, strong):
        self.weak, self.strong = weak, strong

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.stack([self.weak(images, generator), self.strong(images, generator)], dim=1)


@dataclass
class SOPConfig:
    lr_u: float | None = None   # SGD step of u (no momentum, no decay); None = official (10 CIFAR-10, 1 CIFAR-100)
    lr_v: float | None = None   # SGD step of v; None = official (10); the official asymmetric-noise runs use 100
    init_std: float = INIT_STD  # u, v ~ N(0, init_std^2)
    plus: bool = False          # SOP+: two views, consistency and class-balance terms
    ratio_consistency: float | None = None  # None = 0.9 with plus, else 0
    ratio_balance: float | None = None      # None = 0.1 with plus, else 0
    cutout: int = PLUS_CUTOUT   # side of the Cutout square of SOP+'s second view

    def validate(self) -> None:
        require(self.lr_u is None or self.lr_u > 0, f"lr_u must be > 0, got {self.lr_u}")
        require(self.lr_v is None or self.lr_v > 0, f"lr_v must be > 0, got {self.lr_v}")
        require(self.init_std >= 0, f"init_std must be >= 0, got {self.init_std}")
        require(self.ratio_consistency is None or self.ratio_consistency >= 0,
                f"ratio_consistency must be >= 0, got {self.ratio_consistency}")
        require(self.ratio_balance is None or self.ratio_balance >= 0,
                f"ratio_balance must be >= 0, got {self.ratio_balance}")
        require(self.cutout >= 0, f"cutout must be >= 0, got {self.cutout}")
        require(self.plus or not self.ratio_consistency,
                "ratio_consistency > 0 needs two views: set plus=true")


@register_strategy("sop")
class SOP(Strategy):
    """SOP / SOP+ (Liu et al. 2022): per-sample sparse noise terms u, v learned beside the network.

    u (num_train x 1) and v (num_train x classes) are buffers indexed by the loader's dataset
    indices, so they are checkpointed and restored on resume. They are not in the engine's
    optimizer: their gradient (of the step's loss) is caught by a hook during the engine's
    backward pass and applied at once as plain SGD, u <- u - lr_u * grad, v <- v - lr_v * grad,
    exactly the official `optimizer_overparametrization` (SGD, momentum 0, weight decay 0, no LR
    schedule). So the run's weight decay, LR schedule, gradient clipping and lookahead averaging
    never touch u and v.

    Defaults (official): lr_u 10 and lr_v 10 for 10 classes, lr_u 1 and lr_v 10 for 100 classes;
    u, v ~ N(0, 1e-8^2); SOP+ adds ratio_consistency 0.9, ratio_balance 0.1 and a second view with
    Cutout 16. The official network recipe (SGD lr 0.02, momentum 0.9, weight decay 5e-4 / 1e-3,
    cosine over 300 epochs, PreAct ResNet-18, batch 128) is the run's own here (see `presets`).

    Short runs: each sample's u, v take one step per epoch and start at 1e-8, so they grow by a
    roughly constant factor per epoch (about 2-3 for a mislabeled sample with lr_u 10 and batch
    128) and only reach the prediction after 15-20 epochs; on a 6-epoch run SOP trained exactly
    as CE did (measured), and the fast preset (10 epochs) keeps the official values, untuned.

    Deviations from the official code: SOP+'s second view is the run's augmentation plus Cutout
    (the official one is AutoAugment's CIFAR-10 policy + crop + flip + Cutout 16; robustlab has no
    AutoAugment); the u/v step is taken during the backward pass instead of after the network's
    step (they are independent variables, so the result is the same); SOP+'s views are drawn
    without the dataset indices, so an alternating flip (the fast recipe's) becomes a random
    flip, and a custom augmentation without a Cutout option gives two draws of itself; under
    DDP each rank's u/v rows are gathered in the backward pass and applied on every rank (the
    official code is single-GPU; not exercised by the tests).
    """

    Config = SOPConfig
    # SOP has no warm-up or ramp (official trainer.warmup 0), so every preset keeps the official values.
    presets: ClassVar[dict[str, dict]] = {"quick": {}, "paper": {}, "fast": {}}

    def __init__(self, model: nn.Module, num_train: int, num_classes: int, lr_u: float, lr_v: float,
                 init_std: float = INIT_STD, ratio_consistency: float = 0.0, ratio_balance: float = 0.0,
                 plus: bool = False, cutout: int = PLUS_CUTOUT):
        super().__init__()
        require(num_train >= 1, "SOP needs the training-set size (num_train) for its per-sample u, v")
        require(num_classes >= 2, f"SOP needs >= 2 classes, got {num_classes}")
        require(lr_u > 0, f"SOP lr_u must be > 0, got {lr_u}")
        require(lr_v > 0, f"SOP lr_v must be > 0, got {lr_v}")
        require(ratio_consistency == 0 or plus, "SOP ratio_consistency > 0 needs two views: set plus=true")
        self.model = model
        self.num_classes = num_classes
        self.lr_u, self.lr_v = lr_u, lr_v
        self.ratio_consistency, self.ratio_balance = ratio_consistency, ratio_balance
        self.plus, self.cutout = plus, cutout
        self.views = 2 if plus else 1
        self.register_buffer("u", torch.randn(num_train, 1) * init_std)
        self.register_buffer("v", torch.randn(num_train, num_classes) * init_std)

    @classmethod
    def build(cls, config: SOPConfig, ctx):
        paper = PAPER_CIFAR100 if ctx.num_classes >= 100 else PAPER_CIFAR10
        resolved = replace(
            config, lr_u=config.lr_u if config.lr_u is not None else paper[0],
            lr_v=config.lr_v if config.lr_v is not None else paper[1],
            ratio_consistency=(config.ratio_consistency if config.ratio_consistency is not None
                               else PLUS_CONSISTENCY if config.plus else 0.0),
            ratio_balance=(config.ratio_balance if config.ratio_balance is not None
                           else PLUS_BALANCE if config.plus else 0.0))
        strategy = cls(ctx.new_model(), ctx.num_train, ctx.num_classes, resolved.lr_u, resolved.lr_v,
                       resolved.init_std, resolved.ratio_consistency, resolved.ratio_balance, resolved.plus,
                       resolved.cutout)
        strategy.config = resolved
        return strategy

    def train_augment(self, default, splits):
        if not self.plus:
            return default
        weak = default.augment  # MultiView(run's augmentation, 2) -> the run's augmentation
        strong = BatchAugment(replace(weak.config, cutout=self.cutout), splits.mean, splits.std) \
            if isinstance(weak, BatchAugment) else weak
        return TwoViews(weak, strong)

    def _sgd_hook(self, buffer: torch.Tensor, idx: torch.Tensor, lr: float):
        """A gradient hook on the batch rows of `buffer`: rows <- rows - lr * grad (no momentum, no decay)."""

        def step(grad: torch.Tensor) -> None:
            with torch.no_grad():
                new = buffer[idx] - lr * grad.to(buffer.dtype)
                all_idx, all_new = _gather_across_ranks(idx, new)
                buffer[all_idx] = all_new

        return step

    def batch_rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Leaf copies of the batch's u, v rows whose gradient, once back-propagated, steps the buffers."""
        u = self.u[idx].detach().requires_grad_(True)
        v = self.v[idx].detach().requires_grad_(True)
        if torch.is_grad_enabled():
            u.register_hook(self._sgd_hook(self.u, idx, self.lr_u))
            v.register_hook(self._sgd_hook(self.v, idx, self.lr_v))
        return u, v

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        if self.plus:
            n = x.shape[0]
            out = self.model(torch.cat([x[:, 0], x[:, 1]])).float()
            logits, logits2 = out[:n], out[n:]
        else:
            logits, logits2 = self.model(x).float(), None
        onehot = F.one_hot(y, self.num_classes).float()
        u, v = self.batch_rows(idx)
        loss = sop_loss(logits, onehot, u, v, self.ratio_balance, logits2, self.ratio_consistency)
        return StepOutput(loss, logits)
