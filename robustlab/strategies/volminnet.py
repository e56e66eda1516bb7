"""VolMinNet (Li et al., ICML 2021, "Provably End-to-end Label-Noise Learning without Anchor
Points"): the network and the noise transition matrix T learned together, T's volume minimised.

T[i, j] = P(noisy = j | clean = i) (rows clean class, as `robustlab.strategies.transition`) is
parametrised as the official `sig_t` module (xuefeng-li1/Provably-end-to-end-label-noise-learning-
without-anchor-points, models.py): a K x K matrix w initialised to -init everywhere, and

    T = row_l1_normalise(I + sigmoid(w) * (1 - I))

so every row is a probability distribution whose diagonal entry is the largest (the diagonal of
w gets no gradient). The loss of a batch (official main.py) is

    L = nll(log(softmax(f(x)) @ T), y_noisy) + lam * log|det T|

the forward-corrected cross-entropy (mean over the batch) plus lam times T's log-volume, which
makes T, among all matrices that explain the noisy labels, the one of smallest volume: the
paper's identifiability result needs no anchor points. Predictions are the network's own
softmax (an estimate of the clean posterior), as the official test loop.

How T is optimised. w is a buffer, not a parameter, so the engine's optimizer (with the run's
learning rate, weight decay, schedule, gradient clipping and lookahead) never touches it. Each
step takes a leaf copy of w whose gradient a hook catches during the engine's backward pass; after
the engine's optimizer step (`after_step`) w takes one step of its own optimizer, exactly
torch.optim.SGD(lr=t_lr, momentum=0.9, weight_decay=0) for CIFAR-10 and torch.optim.Adam(lr=t_lr,
weight_decay=0) for CIFAR-100, as the official `optimizer_trans`. The optimizer state (momentum /
Adam moments and step count) is kept in buffers, so it is checkpointed and restored on resume.
T's learning rate follows the official MultiStepLR (gamma 0.1 at epochs 30 and 60 of 80), with the
milestones given as shares of the run (`t_milestones` 0.375 and 0.75), set at each epoch start.

Official defaults (main.py, models.py): lam 1e-4; init 2 (CIFAR-10) and 4.5 (CIFAR-100); T's
optimizer SGD lr 0.01 momentum 0.9 (CIFAR-10), Adam lr 0.01 (CIFAR-100), no weight decay; both
optimizers decayed x0.1 at epochs 30 and 60 of 80; the network SGD lr 0.01, momentum 0.9, weight
decay 1e-4, batch 128, ResNet-18 (CIFAR-10) / ResNet-34 (CIFAR-100) on a 45k/5k split of the
training set. The network's recipe is the run's own (see the study presets). The official code
logs T's estimation error against the true T, sum|T_est - T| / sum|T| (tools.error), after every
epoch; `epoch_metrics` reports it as `t_estimation_error` wherever the run knows the realised noise.

Presets. T's step length matters per optimizer step: the official CIFAR-10 run takes 28,160 steps
(352 batches of 128 from 45,000 images, 80 epochs) at lr 0.01. `paper` (100 epochs of 352
batches) keeps the official values; `quick` (20 epochs of 19 batches) and `fast` (10 epochs of 43
batches) scale t_lr so that lr x steps equals the official run's: 0.01 x 28160 / 380 = 0.74 and
0.01 x 28160 / 430 = 0.65. The milestones are shares of the run, so they scale by themselves.
Measured on the quick preset (CIFAR-10, 40% symmetric noise, seed 0): T's estimation error went
from 0.247 to 0.141 over the run with t_lr 0.74, and only to 0.243 with the unscaled 0.01.

As in the official code nothing bounds T away from singular matrices: with a large lam or t_lr the
volume term can drive det T to 0 and the loss to NaN (on toy data: lam 0.5 with t_lr 5), which
the engine's NaN guard reports as a diverged run.

Deviations from the official code:
- T's learning rate is its own option (official: the network's --lr, 0.01 in every setting) and
  its schedule is its own multistep (official: the network's milestones), because the network's
  optimizer and schedule are the run's; the quick and fast presets scale it (above).
- The optimizer of T is chosen by class count: SGD below 100 classes, Adam from 100 (official: by
  dataset, with Adam also for MNIST); the network's is the run's.
- The estimation error is measured against the realised noise's empirical T (the oracle of
  `robustlab.strategies.transition`; a class absent from the training labels gets an identity
  row) instead of the matrix the noise was drawn from; without known clean labels it is not
  reported. The 5% noisy validation split, model selection by validation loss through T and the
  `--anchor` data variants are the study's business (robustlab selects by validation accuracy of
  the network's prediction).
- The corrected probability is computed only in the label's column, elementwise in float32
  ((p * T[:, y]^T).sum), the same value as torch.mm then gather, but free of bf16 autocast.
- train_acc is the network's prediction against the noisy labels (official: of p @ T).
- The official per-epoch matrix files (matrix_epoch_N.npy) are not written: T is in every
  checkpoint (`t_weight`; `transition()` turns it into T) and its error and mean diagonal are in
  the history.
- Under DDP T's gradient is averaged over ranks before its step (the official code is single-GPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustlab import distributed
from robustlab.errors import require
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.registry import register_strategy
from robustlab.strategies.transition import oracle_transition

LAM = 1e-4                     # main.py --lam
INIT_CIFAR10, INIT_CIFAR100 = 2.0, 4.5  # sig_t(init=2) default; args.init = 4.5 for CIFAR-100
T_LR = 0.01                    # main.py --lr, shared by both optimizers
T_MOMENTUM = 0.9               # optim.SGD(trans.parameters(), momentum=0.9) for CIFAR-10
T_MILESTONES = (30 / 80, 60 / 80)  # MultiStepLR milestones [30, 60] of n_epoch 80
T_GAMMA = 0.1
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam defaults, as the official call
T_OPTIMIZERS = ("sgd", "adam")
OFFICIAL_STEPS = 352 * 80      # CIFAR-10: ceil(45000 / 128) batches x 80 epochs at T_LR
QUICK_STEPS, FAST_STEPS = 19 * 20, 43 * 10  # the study's quick and fast presets (batches x epochs)


def transition_from_weight(w: torch.Tensor) -> torch.Tensor:
    """T = row-L1-normalised (I + sigmoid(w) off the diagonal): the official sig_t.forward."""
    eye = torch.eye(len(w)).to(w)
    return F.normalize(eye + torch.sigmoid(w) * (1 - eye), p=1, dim=1)


def volmin_loss(logits: torch.Tensor, y: torch.Tensor, transition: torch.Tensor, lam: float) -> torch.Tensor:
    """mean_i -log (softmax(logits_i) @ T)[y_i] + lam * log|det T|, in float32."""
    p = torch.softmax(logits.float(), dim=1)
    t = transition.float()
    noisy = (p * t.t()[y]).sum(1)  # (p @ T)[i, y_i], elementwise: no bf16 matmul under autocast
    return -torch.log(noisy).mean() + lam * torch.linalg.slogdet(t).logabsdet


def estimation_error(estimate, truth) -> float:
    """sum |T_est - T_true| / sum |T_true| (the official tools.error)."""
    estimate, truth = np.asarray(estimate), np.asarray(truth)
    return float(np.abs(estimate - truth).sum() / np.abs(truth).sum())


def milestone_epochs(milestones: tuple[float, ...], num_epochs: int) -> list[int]:
    """The 0-based epochs from which each decay applies: share x epochs, rounded half up."""
    return [int(math.floor(m * num_epochs + 0.5)) for m in milestones]


@dataclass
class VolMinNetConfig:
    lam: float = LAM                    # weight of log|det T|
    init: float | None = None           # w starts at -init; None = official (2 below 100 classes, 4.5 from 100)
    t_lr: float = T_LR                  # learning rate of T's own optimizer
    t_optimizer: str | None = None      # sgd | adam; None = official (sgd below 100 classes, adam from 100)
    t_momentum: float = T_MOMENTUM      # momentum of T's SGD (no weight decay, no Nesterov)
    t_milestones: tuple[float, ...] = T_MILESTONES  # shares of the run after which T's lr is multiplied by t_gamma
    t_gamma: float = T_GAMMA            # T's learning-rate decay factor at each milestone

    def validate(self) -> None:
        require(self.lam >= 0, f"lam must be >= 0, got {self.lam}")
        require(self.init is None or self.init > 0,
                f"init must be > 0 (w starts at -init: each off-diagonal entry of T below half its diagonal), got {self.init}")
        require(self.t_lr > 0, f"t_lr must be > 0, got {self.t_lr}")
        require(self.t_optimizer is None or self.t_optimizer in T_OPTIMIZERS,
                f"t_optimizer must be one of {', '.join(T_OPTIMIZERS)}, got {self.t_optimizer!r}")
        require(0 <= self.t_momentum < 1, f"t_momentum must be in [0, 1), got {self.t_momentum}")
        require(all(0 < m <= 1 for m in self.t_milestones),
                f"t_milestones must be shares of the run in (0, 1], got {list(self.t_milestones)}")
        require(0 < self.t_gamma <= 1, f"t_gamma must be in (0, 1], got {self.t_gamma}")


@register_strategy("volminnet")
class VolMinNet(Strategy):
    """VolMinNet (Li et al. 2021): forward correction with a learned T whose log-volume is minimised.

    See the module docstring for the method, the official defaults, the presets and every deviation."""

    Config = VolMinNetConfig
    # T's lr scaled to keep lr x steps of the official CIFAR-10 run (28,160 steps at 0.01):
    # quick 20 epochs x 19 batches (0.74), fast 10 epochs x 43 batches (0.65); paper keeps the official values.
    presets: ClassVar[dict[str, dict]] = {"quick": {"t_lr": round(T_LR * OFFICIAL_STEPS / QUICK_STEPS, 2)}, "paper": {},
                                          "fast": {"t_lr": round(T_LR * OFFICIAL_STEPS / FAST_STEPS, 2)}}

    def __init__(self, model: nn.Module, num_classes: int, lam: float = LAM, init: float = INIT_CIFAR10,
                 t_lr: float = T_LR, t_optimizer: str = "sgd", t_momentum: float = T_MOMENTUM,
                 t_milestones: tuple[float, ...] = T_MILESTONES, t_gamma: float = T_GAMMA, true_transition=None):
        super().__init__()
        require(num_classes >= 2, f"VolMinNet needs >= 2 classes, got {num_classes}")
        require(t_optimizer in T_OPTIMIZERS, f"t_optimizer must be one of {', '.join(T_OPTIMIZERS)}, got {t_optimizer!r}")
        self.model = model
        self.num_classes = num_classes
        self.lam, self.t_lr, self.t_optimizer, self.t_momentum = lam, t_lr, t_optimizer, t_momentum
        self.t_milestones, self.t_gamma = tuple(t_milestones), t_gamma
        self.register_buffer("t_weight", torch.full((num_classes, num_classes), -float(init)))
        self.register_buffer("t_momentum_buffer", torch.zeros(num_classes, num_classes))  # SGD momentum / Adam's first moment
        self.register_buffer("t_second_moment", torch.zeros(num_classes, num_classes))  # Adam only
        self.register_buffer("t_steps", torch.zeros((), dtype=torch.long))
        self.true_transition = None if true_transition is None else np.asarray(true_transition)
        self.t_lr_now = t_lr
        self._t_grad: torch.Tensor | None = None  # T's gradient of the current step, applied in after_step

    @classmethod
    def build(cls, config: VolMinNetConfig, ctx):
        big = ctx.num_classes >= 100
        resolved = replace(config, init=config.init if config.init is not None else (INIT_CIFAR100 if big else INIT_CIFAR10),
                           t_optimizer=config.t_optimizer or ("adam" if big else "sgd"))
        truth = oracle_transition(ctx) if ctx.noise_transition is not None else None
        strategy = cls(ctx.new_model(), ctx.num_classes, resolved.lam, resolved.init, resolved.t_lr,
                       resolved.t_optimizer, resolved.t_momentum, resolved.t_milestones, resolved.t_gamma, truth)
        strategy.config = resolved
        return strategy

    def options(self) -> dict:
        out = super().options()
        out["t_milestones"] = list(self.t_milestones)
        out["t_true_source"] = "oracle (realised noise)" if self.true_transition is not None else "none"
        return out

    # ---- T ---------------------------------------------------------------------------------------

    def transition(self) -> torch.Tensor:
        """The current T (no gradient)."""
        return transition_from_weight(self.t_weight)

    def _catch_gradient(self, grad: torch.Tensor) -> None:
        grad = grad.detach()
        self._t_grad = grad if self._t_grad is None else self._t_grad + grad

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        passed = sum(epoch >= m for m in milestone_epochs(self.t_milestones, num_epochs))
        self.t_lr_now = self.t_lr * self.t_gamma ** passed

    def step_transition(self, grad: torch.Tensor) -> None:
        """One step of T's own optimizer on w (torch.optim.SGD / Adam semantics, weight decay 0)."""
        with torch.no_grad():
            self.t_steps += 1
            lr = self.t_lr_now
            if self.t_optimizer == "sgd":
                buf = self.t_momentum_buffer
                if self.t_momentum > 0:
                    buf.mul_(self.t_momentum).add_(grad)
                    grad = buf
                self.t_weight.add_(grad, alpha=-lr)
                return
            beta1, beta2 = ADAM_BETAS
            step = int(self.t_steps)
            self.t_momentum_buffer.lerp_(grad, 1 - beta1)
            self.t_second_moment.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = lr / (1 - beta1 ** step)
            denom = (self.t_second_moment.sqrt() / math.sqrt(1 - beta2 ** step)).add_(ADAM_EPS)
            self.t_weight.addcdiv_(self.t_momentum_buffer, denom, value=-step_size)

    def after_step(self) -> None:
        if self._t_grad is None:  # no backward pass reached T since the last step
            return
        grad, self._t_grad = self._t_grad, None
        distributed.all_reduce_sum(grad)  # a no-op in a single process
        self.step_transition(grad / distributed.current().world_size)

    # ---- training ----------------------------------------------------------------------------------

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        logits = self.model(x)
        require(logits.shape[1] == self.num_classes,
                f"VolMinNet's T is {self.num_classes}x{self.num_classes}, the network predicts {logits.shape[1]} classes")
        w = self.t_weight.detach().clone().requires_grad_(torch.is_grad_enabled())
        if w.requires_grad:
            w.register_hook(self._catch_gradient)
        loss = volmin_loss(logits, y, transition_from_weight(w), self.lam)
        return StepOutput(loss, logits)

    def epoch_metrics(self) -> dict[str, float]:
        t = self.transition().double().cpu().numpy()
        out = {"t_lr": self.t_lr_now, "t_diagonal_mean": float(np.diag(t).mean())}
        if self.true_transition is not None:
            out["t_estimation_error"] = estimation_error(t, self.true_transition)
        return out
