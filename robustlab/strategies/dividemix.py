"""DivideMix (Li et al., ICLR 2020): learning with noisy labels as semi-supervised learning.

Two networks. During warm-up both train with cross-entropy (plus, for asymmetric noise, a
negative-entropy penalty against over-confident predictions). After warm-up, before every
epoch each network scores the whole training set (per-sample CE, min-max normalised) and a
2-component Gaussian mixture splits it: the clean probability of a sample is the posterior of
the lower-mean component. Each network then trains on its *peer's* division (co-divide):
samples with clean probability > p_threshold keep their label (labeled set), the rest lose it
(unlabeled set). Per batch, for the network being trained:

- label co-refinement: y' = sharpen(w * y + (1 - w) * p), w = the peer's clean probability,
  p = the network's own prediction averaged over the two augmented views;
- label co-guessing: q = sharpen(mean of both networks' predictions on both views);
- MixMatch: mixup (lambda ~ Beta(alpha, alpha), lambda = max(lambda, 1 - lambda)) over the
  labeled and unlabeled views together, then
  L = Lx (soft CE on the mixed labeled part) + lambda_u(ramp-up) * Lu (squared error on the
  mixed unlabeled part) + KL(uniform || mean prediction) (the uniform-prior regulariser).

Constants from the official code (LiJunnan1992/DivideMix, Train_cifar.py): GaussianMixture
(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4), T 0.5, alpha 4, p_threshold 0.5,
lambda_u ramp-up clip((t - warm_up) / 16, 0, 1) with t = epoch + fraction of the epoch done,
warm-up 10 epochs (CIFAR-10) / 30 (CIFAR-100), SGD lr 0.02 (momentum 0.9, wd 5e-4, /10 after
150 epochs), batch 64 labeled + 64 unlabeled (128 during warm-up), 300 epochs, PreAct ResNet-18;
lambda_u from the paper's per-setting table (CIFAR-10: 0 at 20% symmetric and 40% asymmetric,
25 at 50% and 80%, 50 at 90%; CIFAR-100: 25 at 20%, 150 at 50-90%).

Which prediction is the headline: `predict` (test_acc, val_acc and so model selection) is
the two networks' ensemble, the mean of their logits, as the official test() (which sums them);
`model` is network 1, and `extra_predictors` evaluates net1, net2 and the ensemble separately.

Deviations from the official code:
- One loader, one optimizer: the official code trains net1 for a whole epoch over a labeled and
  an (independently shuffled, cycled) unlabeled loader, then net2, with two SGD optimizers.
  Here each batch of the single training loader is split by the peer's division into its
  labeled and unlabeled samples, and both networks' losses are summed under one optimizer (the
  same per-parameter update for SGD, since no loss term couples the two networks' gradients).
  So the labeled:unlabeled ratio of a batch follows the division instead of being 1:1, an
  epoch visits every sample once (the official epoch is one pass over the labeled set), and a
  batch with an empty part simply has Lx = 0 or Lu = 0.
- Warm-up trains both networks on the same batches (net1 on the first augmented view, net2 on
  the second) at the run's batch size, not 2x.
- The GMM is fitted with a fixed random_state (reproducible divisions, identical on every DDP
  rank); the official one is unseeded. Mixup's lambda and permutation come from torch's global
  generator (saved in checkpoints) instead of numpy's.
- The 5-epoch loss averaging the official code uses only at 90% noise is not implemented, nor
  the p_threshold 0.6 the paper uses there (pass p_threshold=0.6).
- The networks' guesses run on each batch's two views as two forward passes over the whole
  batch (labeled and unlabeled together), so batch-norm statistics of those no-grad passes are
  those of the whole batch rather than of separate labeled/unlabeled batches.
"""
from __future__ import annotations

import math

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import require
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.registry import register_strategy

# Official eval_train(): GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4).
GMM_MAX_ITER, GMM_TOL, GMM_REG_COVAR = 10, 1e-2, 5e-4
RAMPUP_EPOCHS = 16  # official linear_rampup(rampup_length=16)

# The paper's lambda_u per setting (Appendix B): classes -> noise mode -> noise rate -> lambda_u.
PAPER_LAMBDA_U = {
    10: {"sym": {0.2: 0.0, 0.5: 25.0, 0.8: 25.0, 0.9: 50.0}, "asym": {0.4: 0.0}},
    100: {"sym": {0.2: 25.0, 0.5: 150.0, 0.8: 150.0, 0.9: 150.0}},
}
ASYMMETRIC_NOISE = {"asymmetric", "pair"}  # run noise types that count as DivideMix's 'asym'


def paper_lambda_u(num_classes: int, noise_rate: float, noise_mode: str) -> float:
    """The paper's lambda_u for the nearest tabulated setting (CIFAR-100's table for >= 100 classes)."""
    table = PAPER_LAMBDA_U[100 if num_classes >= 100 else 10]
    rates = table.get(noise_mode, table["sym"])
    nearest = min(rates, key=lambda r: abs(r - noise_rate))
    return rates[nearest]


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """p^(1/T), renormalised per row."""
    pt = p ** (1.0 / temperature)
    return pt / pt.sum(1, keepdim=True)


def refine_labels(onehot: torch.Tensor, w: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Label co-refinement before sharpening: w * y + (1 - w) * p, w the clean probability."""
    w = w.view(-1, 1)
    return w * onehot + (1.0 - w) * pred


def mixup_lambda(alpha: float) -> float:
    """lambda ~ Beta(alpha, alpha), folded to max(lambda, 1 - lambda) so the mix stays closer to its first input."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return max(lam, 1.0 - lam)


def linear_rampup(progress: float, warmup_epochs: int, lambda_u: float, length: float = RAMPUP_EPOCHS) -> float:
    """lambda_u * clip((progress - warm-up) / length, 0, 1), progress in (fractional) epochs."""
    return lambda_u * float(np.clip((progress - warmup_epochs) / length, 0.0, 1.0))


def uniform_prior_penalty(logits: torch.Tensor) -> torch.Tensor:
    """sum_c pi_c log(pi_c / mean_prediction_c) with the uniform prior pi = 1/C."""
    prior = torch.full((logits.shape[1],), 1.0 / logits.shape[1], device=logits.device)
    mean = logits.softmax(1).mean(0)
    return (prior * (prior / mean).log()).sum()


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """mean_i sum_c p log p: the warm-up penalty for asymmetric noise (lower = less confident)."""
    p = logits.softmax(1)
    return (p * p.log()).sum(1).mean()


def gmm_clean_probability(losses: torch.Tensor, seed: int = 0) -> np.ndarray:
    """Min-max normalise per-sample losses, fit a 2-component GMM and return each sample's
    posterior of the lower-mean (clean) component."""
    from sklearn.mixture import GaussianMixture

    x = losses.detach().double().cpu()
    x = ((x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)).numpy().reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=GMM_MAX_ITER, tol=GMM_TOL, reg_covar=GMM_REG_COVAR,
                          random_state=seed)
    gmm.fit(x)
    return gmm.predict_proba(x)[:, gmm.means_.argmin()]


@contextlib.contextmanager
def eval_mode(net: nn.Module):
    """Run the peer in eval mode (as the official train() does), restoring its mode after."""
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


class MeanLogits(nn.Module):
    """The two networks' mean logits (the official test() sums them: the same argmax)."""

    def __init__(self, net1: nn.Module, net2: nn.Module):
        super().__init__()
        self.nets = nn.ModuleList([net1, net2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.nets[0](x).float() + self.nets[1](x).float()) / 2


@dataclass
class DivideMixConfig:
    warmup_epochs: int | None = None  # CE epochs before dividing; None = official 10 (30 for >= 100 classes)
    lambda_u: float | None = None     # unlabeled-loss weight; None = the paper's value for the noise rate
    p_threshold: float = 0.5          # clean-probability threshold of the division
    temperature: float = 0.5          # sharpening T
    alpha: float = 4.0                # Beta(alpha, alpha) of mixup
    noise_mode: str = "auto"          # sym | asym (warm-up confidence penalty) | auto (asym for asymmetric/pair noise)
    rampup_epochs: float = RAMPUP_EPOCHS  # epochs of the linear lambda_u ramp after warm-up (official 16)

    def validate(self) -> None:
        require(self.warmup_epochs is None or self.warmup_epochs >= 0,
                f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        require(self.lambda_u is None or self.lambda_u >= 0, f"lambda_u must be >= 0, got {self.lambda_u}")
        require(0.0 < self.p_threshold < 1.0, f"p_threshold must be in (0, 1), got {self.p_threshold}")
        require(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        require(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        require(self.rampup_epochs > 0 and math.isfinite(self.rampup_epochs),
                f"rampup_epochs must be > 0, got {self.rampup_epochs}")
        require(self.noise_mode in ("auto", "sym", "asym"), f"noise_mode must be auto, sym or asym, got {self.noise_mode!r}")


@register_strategy("dividemix")
class DivideMix(Strategy):
    """DivideMix (Li et al. 2020): GMM co-divide into labeled/unlabeled sets, then MixMatch with co-refined and co-guessed labels.

    See the module docstring for the method, the official constants and every deviation."""

    Config = DivideMixConfig
    views = 2                # each batch holds two independent crops+flips of every sample
    needs_train_pass = True  # the GMM division needs every sample's loss before each epoch
    # Options for the noisy-label study. quick: a 20-epoch small-CNN budget, so 5 warm-up epochs
    # (CE starts memorising the noise within ~10 epochs there); paper: the defaults, which are the
    # official values (warm-up 10/30 and lambda_u resolved from the class count and noise rate).
    # fast (10 epochs): 2 warm-up epochs (airbench reaches ~80% clean accuracy by then, as the
    # official 10 warm-up epochs do for PreAct ResNet-18) and lambda_u ramped over 3 epochs instead
    # of 16, the official ramp's share of the schedule after warm-up being far larger than 10 epochs.
    presets: ClassVar[dict[str, dict]] = {"quick": {"warmup_epochs": 5}, "paper": {},
                                          "fast": {"warmup_epochs": 2, "rampup_epochs": 3.0}}

    def __init__(self, net1: nn.Module, net2: nn.Module, num_train: int, num_classes: int, warmup_epochs: int = 10,
                 lambda_u: float = 25.0, p_threshold: float = 0.5, temperature: float = 0.5, alpha: float = 4.0,
                 penalty: bool = False, clean_labels: torch.Tensor | None = None, world_size: int = 1,
                 rampup_epochs: float = RAMPUP_EPOCHS):
        super().__init__()
        require(num_train >= 2, "DivideMix needs the training-set size (num_train) for its per-sample division")
        self.model, self.peer = net1, net2
        self.num_train, self.num_classes = num_train, num_classes
        self.warmup_epochs, self.lambda_u, self.p_threshold = warmup_epochs, lambda_u, p_threshold
        self.temperature, self.alpha, self.penalty = temperature, alpha, penalty
        self.rampup_epochs = rampup_epochs
        self.clean_labels = clean_labels  # measurement only; a plain tensor so DDP does not broadcast it
        self.world_size = world_size
        # Clean probability of every training sample under each network's GMM (recomputed each epoch).
        self.register_buffer("prob1", torch.ones(num_train), persistent=False)
        self.register_buffer("prob2", torch.ones(num_train), persistent=False)
        self._divided = False
        self._seen = 0
        self._metrics: dict[str, float] = {}

    @classmethod
    def build(cls, config: DivideMixConfig, ctx):
        mode = config.noise_mode
        if mode == "auto":
            noise_type = getattr(getattr(ctx.experiment, "data", None), "noise_type", None)  # None: symmetric
            mode = "asym" if noise_type in ASYMMETRIC_NOISE else "sym"
        warmup = config.warmup_epochs if config.warmup_epochs is not None else (30 if ctx.num_classes >= 100 else 10)
        lambda_u = config.lambda_u if config.lambda_u is not None else paper_lambda_u(ctx.num_classes, ctx.noise_rate, mode)
        world = 1
        if ctx.distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
        strategy = cls(ctx.new_model(), ctx.new_model(), ctx.num_train, ctx.num_classes, warmup_epochs=warmup,
                       lambda_u=lambda_u, p_threshold=config.p_threshold, temperature=config.temperature,
                       alpha=config.alpha, penalty=mode == "asym", clean_labels=ctx.clean_train_labels,
                       world_size=world, rampup_epochs=config.rampup_epochs)
        strategy.config = DivideMixConfig(warmup, lambda_u, config.p_threshold, config.temperature, config.alpha, mode,
                                          config.rampup_epochs)
        return strategy

    # ---- division ----------------------------------------------------------------------------

    def per_sample_losses(self, net: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
        """Every training sample's CE loss under `net`, and its (noisy) label, by dataset index."""
        losses = torch.zeros(self.num_train, device=self.prob1.device)
        labels = torch.zeros(self.num_train, dtype=torch.long, device=self.prob1.device)
        for x, y, idx in loader:
            losses[idx] = F.cross_entropy(net(x).float(), y, reduction="none")
            labels[idx] = y
        return losses, labels

    def warmup_length(self) -> int:
        """The cross-entropy warm-up: the first division happens before (0-based) epoch warmup_epochs."""
        return self.warmup_epochs

    def on_train_pass(self, epoch: int, loader) -> None:
        self._divided = epoch >= self.warmup_epochs
        self._metrics = {}
        if not self._divided:
            return
        for net, prob in ((self.model, self.prob1), (self.peer, self.prob2)):
            losses, labels = self.per_sample_losses(net, loader)
            prob.copy_(torch.as_tensor(gmm_clean_probability(losses)))  # copy_ casts to the buffer's dtype and device
        self._metrics = self.division_metrics(labels)

    def division_metrics(self, noisy_labels: torch.Tensor) -> dict[str, float]:
        """Clean fraction of the division (both networks) and, with clean labels, precision and
        recall of the labeled sets as clean-sample detectors."""
        labeled = torch.stack([self.prob1, self.prob2]) > self.p_threshold
        out = {"clean_fraction": labeled.float().mean().item()}
        if self.clean_labels is not None:
            is_clean = (self.clean_labels.to(noisy_labels.device) == noisy_labels).expand_as(labeled)
            hits = (labeled & is_clean).sum().item()
            out["label_precision"] = hits / max(int(labeled.sum()), 1)
            out["label_recall"] = hits / max(int(is_clean.sum()), 1)
        return out

    def epoch_metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    # ---- training ----------------------------------------------------------------------------

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self._seen = 0

    def warmup_loss(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = net(x).float()
        loss = F.cross_entropy(logits, y)
        if self.penalty:
            loss = loss + negative_entropy(logits)
        return loss, logits

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        require(x.ndim == 5 and x.shape[1] == 2, "DivideMix needs two augmented views per sample: x of shape (N, 2, C, H, W)")
        if not self._divided:
            loss1, logits1 = self.warmup_loss(self.model, x[:, 0], y)
            loss2, _ = self.warmup_loss(self.peer, x[:, 1], y)
            return StepOutput(loss1 + loss2, logits1)
        lambda_u = self.unlabeled_weight(epoch, len(y))
        # Co-divide: each network learns from the division its peer made.
        loss1, pred1 = self.mixmatch_loss(self.model, self.peer, x, y, self.prob2[idx], lambda_u)
        loss2, _ = self.mixmatch_loss(self.peer, self.model, x, y, self.prob1[idx], lambda_u)
        return StepOutput(loss1 + loss2, pred1.clamp_min(1e-12).log())

    def unlabeled_weight(self, epoch: int, batch_size: int) -> float:
        """lambda_u ramped up by the progress before this batch (official: epoch + batch_idx / num_iter)."""
        progress = epoch + self._seen * self.world_size / self.num_train
        self._seen += batch_size
        return linear_rampup(progress, self.warmup_epochs, self.lambda_u, self.rampup_epochs)

    def mixmatch_loss(self, net: nn.Module, peer: nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                      lambda_u: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of `net` on one batch given the peer's clean probabilities `w`; also returns
        `net`'s view-averaged prediction of the batch (for train accuracy)."""
        xa, xb = x[:, 0], x[:, 1]
        labeled = w > self.p_threshold
        lab, unl = labeled.nonzero().squeeze(1), (~labeled).nonzero().squeeze(1)
        with torch.no_grad():
            own = (net(xa).float().softmax(1) + net(xb).float().softmax(1)) / 2  # net in train mode, as official
            onehot = F.one_hot(y[lab], self.num_classes).float()
            targets_x = sharpen(refine_labels(onehot, w[lab].float(), own[lab]), self.temperature)
            if len(unl):
                with eval_mode(peer):
                    guess = (peer(xa[unl]).float().softmax(1) + peer(xb[unl]).float().softmax(1)) / 2
                targets_u = sharpen(torch.stack([own[unl], guess]).mean(0), self.temperature)  # = mean of the 4 predictions
            else:
                targets_u = own[:0]
        inputs = torch.cat([xa[lab], xb[lab], xa[unl], xb[unl]])
        targets = torch.cat([targets_x, targets_x, targets_u, targets_u])
        lam = mixup_lambda(self.alpha)
        perm = torch.randperm(len(inputs)).to(inputs.device)
        mixed_inputs = lam * inputs + (1 - lam) * inputs[perm]
        mixed_targets = lam * targets + (1 - lam) * targets[perm]
        logits = net(mixed_inputs).float()
        n_x = 2 * len(lab)
        loss = uniform_prior_penalty(logits)
        if n_x:
            loss = loss - (F.log_softmax(logits[:n_x], 1) * mixed_targets[:n_x]).sum(1).mean()
        if len(unl):
            loss = loss + lambda_u * ((logits[n_x:].softmax(1) - mixed_targets[n_x:]) ** 2).mean()
        return loss, own

    # ---- prediction --------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x).float() + self.peer(x).float()) / 2

    def extra_predictors(self) -> dict[str, nn.Module]:
        return {"net1": self.model, "net2": self.peer, "ensemble": MeanLogits(self.model, self.peer)}
