"""ProMix (Xiao et al., IJCAI 2023, "ProMix: Combating Label Noise via Maximizing Clean Sample Utility").

Two networks, each with a primary classifier head h and an auxiliary pseudo head h_AP (a freshly
initialised copy of the network's classifier head on the same pooled features, as the official
`pseudo_linear` beside `linear`). After a cross-entropy warm-up (both networks, primary
heads, weak view; plus the negative-entropy penalty for asymmetric noise), before every epoch each
network scores the whole training set with its primary head and keeps, per given class j, the
ceil(N / C * rho) samples of smallest CE loss (at least 1, at most the class's size): class-wise
small-loss selection (CSS) with rho = rho_start + (rho_end - rho_start) * r(epoch), r(e) =
min(e / rampup_epochs, 1). Each network trains on its *own* selection (the official Train_promix.py
hands net1 its own prob1 and net2 its own prob2; the networks interact through label guessing by
agreement only). Per batch and network, with p = softmax(primary logits of the weak view):

- matched high-confidence selection (MHCS): a sample whose given label has p_y > tau joins the
  selected set; the selected set D_l keeps its given label, every other sample is labelled with
  the network's debiased prediction argmax softmax(z - debias_pl * log pi) (used by LGA only);
- label guessing by agreement (LGA), in the last `start_expand` epochs only: while D_l holds
  fewer than `threshold` of the batch, samples on which both networks predict the same class with
  both max-probabilities > tau are added (newly, at most int(threshold * batch) - |D_l|, the most
  confident first) with that network's debiased predicted label;
- distribution debiasing: every logit used in a loss on D_l is z + debias_output * log pi, on the
  unselected samples D_u (pseudo head) z + debias_output * log pi_u, where pi (pi_u) is a moving
  average (momentum bias_m) of the mean softmax of the primary head over D_l (D_u); both start
  uniform and are updated after each batch's losses;
- primary head: L_h = CE(weak) + w * (CE(strong) + mixup + FMix), all on D_l with its labels;
  mixup has lambda ~ Beta(4, 4) folded to >= 0.5 and a permutation within D_l; FMix (Harris et al.
  2020: a binarised low-frequency Fourier mask of mean lambda ~ Beta(1, 1), decay power 3) mixes
  D_l with a permutation of itself under CE of the hard labels weighted lambda / 1 - lambda;
- pseudo head: L_ph = beta * [CE_u(weak) + w * CE_u(strong)] + the four D_l terms of L_h (own
  mixup and FMix draws), where CE_u is the soft CE on D_u against
  sharpen(softmax(z - debias_pl * log pi_u), T), the primary head's debiased guess;
- w = r(epoch); beta = 0.1 * min(epoch / (2 rampup_epochs), 1) while epoch < 2 * rampup_epochs,
  then 0 (official: `beta = 0 if epoch >= 2 * warmup_ep and beta < 1`); with debias_pl = 0 beta is 1.

The four losses (primary and pseudo head of both networks) are summed under one optimizer, as the
official code does (one SGD over both networks).

Official constants (Justherozen/ProMix, Train_promix.py, utils/utils.py, fmix.py, run.sh): tau 0.99
(CIFAR-10) / 0.95 (CIFAR-100); warm-up (pretrain_ep) 10 / 30; ramp-up (warmup_ep) 50; LGA threshold
0.9 in the last start_expand 250 epochs; debias_output = debias_pl = 0.8 / 0.5; T 0.5; bias_m
0.9999; rho_range 0.7,0.7 for 20% symmetric noise and 0.5,0.5 for every other run.sh setting (50%
symmetric, 40% asymmetric, CIFAR-10N, CIFAR-100N; the argparse default 0.2,0.6 is used by none);
mixup Beta(4, 4); FMix alpha 1, decay power 3; SGD lr 0.05, momentum 0.9, weight decay 5e-4, cosine
to lr * 1e-3, batch 256, 600 epochs, ResNet-18. The training recipe (optimizer, schedule, epochs,
network) is the run's own here.

Which prediction is the headline: `predict` (test_acc, val_acc, model selection) is the mean of the
two primary heads' logits, as the official test()'s `outputs_mean_ori`; `extra_predictors`
evaluates net1, net2 (primary heads), the ensemble and each network's pseudo head (net1_ph,
net2_ph: the official test() prints those as "Acc Net1/Net2").

State: the class distributions `pi1`, `pi2`, `pi1_unrel`, `pi2_unrel` are buffers, so they are
checkpointed and a resumed run continues bit-exactly; the CSS selections are recomputed by the
train pass before every epoch (also after a resume).

Deviations from the official code:
- One loader of the whole training set with two views per sample: the weak view is the run's
  augmentation, the strong view the run's augmentation plus rotation +-15 deg, shear +-8.5 deg,
  colour jitter 0.45 and Cutout 16 on every image, standing in for the official RandomAugment(3, 5)
  (three random PIL operations at magnitude 5 of 10, then crop and flip), which robustlab has not;
  the views are drawn without dataset indices, so an alternating flip becomes a random flip.
- Mixup's and FMix's lambdas, permutations and Fourier masks come from torch's global generator
  (saved in checkpoints) instead of numpy / scipy / random; the FMix mask has the images' size
  (official: 32 x 32) and is built as the official fmix.py builds it, including its spectrum
  indexing (see `low_frequency_image`); ties between mask pixels are broken by position.
- A loss term over an empty set (no selected, or no unselected sample in a batch) is 0, and a
  distribution estimate is not updated from an empty set (the official code gets NaN there).
- Sorting (CSS and LGA's most-confident-first) is stable, so ties are broken by batch / dataset
  order; the official per-sample losses are min-max normalised before sorting, which changes no
  ranking and is left out.
- LGA is on in the last `start_expand` epochs of the run (official: epoch > num_epochs -
  start_expand with epochs 0..num_epochs, the same count); the presets shorten start_expand with
  the run.
- The warm-up penalty for asymmetric noise is the official NegEntropy, including its clamp of the
  logits at 1e-12 before the softmax; noise_mode auto picks it for asymmetric / pair noise.
- Under DDP each rank updates the distribution estimates from its own batch (the official code is
  single-GPU; not exercised by the tests).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.data.augment import BatchAugment
from robustlab.errors import require
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.dividemix import ASYMMETRIC_NOISE, MeanLogits, mixup_lambda, sharpen
from robustlab.strategies.registry import register_strategy
from robustlab.strategies.sop import TwoViews

MIXUP_ALPHA = 4.0                  # np.random.beta(4, 4)
FMIX_ALPHA, FMIX_DECAY = 1.0, 3.0  # FMix() defaults: alpha 1, decay_power 3
UNREL_WEIGHT = 0.1                 # beta = 0.1 * linear_rampup2(epoch, 2 * warmup_ep)
# Strong view standing in for RandomAugment(3, 5): magnitude 5 of 10 of rotate 30 deg, shear 0.3
# (17 deg) and the colour enhancers' 0.9, plus the Cutout 16 of the FixMatch-style policies.
STRONG_ROTATE, STRONG_SHEAR, STRONG_JITTER, STRONG_CUTOUT = 15.0, 8.5, 0.45, 16
PAPER_RHO_LOW_NOISE, PAPER_RHO = 0.7, 0.5  # run.sh: rho_range 0.7,0.7 at 20% symmetric noise, else 0.5,0.5
SYMMETRIC_NOISE = {"symmetric", "uniform"}


# ---- the official formulas ---------------------------------------------------------------------

def linear_rampup(current: float, length: float) -> float:
    """min(current / length, 1); 1 when length is 0 (official linear_rampup2)."""
    return 1.0 if current >= length else current / length


def debias_logits(logits: torch.Tensor, pi: torch.Tensor, strength: float) -> torch.Tensor:
    """Debiased margin-based loss's logits: z + strength * log(pi) (official debias_output)."""
    return logits + strength * pi.detach().log()


def debias_probs(logits: torch.Tensor, pi: torch.Tensor, strength: float) -> torch.Tensor:
    """Debiased pseudo-label distribution softmax(z - strength * log(pi)) (official debias_pl)."""
    return F.softmax(logits - strength * pi.detach().log(), dim=1)


def update_distribution(pi: torch.Tensor, probs: torch.Tensor, momentum: float) -> torch.Tensor:
    """momentum * pi + (1 - momentum) * mean_i probs_i; pi unchanged for an empty set."""
    if len(probs) == 0:
        return pi
    return momentum * pi + (1.0 - momentum) * probs.detach().mean(0)


def soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean_i -<targets_i, log_softmax(logits_i)>; 0 for an empty batch (official CE_Soft_Label().mean())."""
    if len(logits) == 0:
        return logits.sum() * 0.0
    return -(F.log_softmax(logits, 1) * targets.detach()).sum(1).mean()


def negative_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The official NegEntropy: mean_i sum_c p log p of softmax(clamp(logits, min=1e-12))."""
    p = logits.clamp(min=1e-12).softmax(1)
    return (p.log() * p).sum(1).mean()


def classwise_small_loss(losses: torch.Tensor, labels: torch.Tensor, num_classes: int, rho: float) -> torch.Tensor:
    """CSS: per given class j the max(min(ceil(N / C * rho), n_j), 1) smallest-loss samples -> 0/1 mask."""
    chosen = torch.zeros_like(losses, dtype=torch.bool)
    quota = math.ceil(len(losses) * (1.0 / num_classes) * rho)  # the official arithmetic, rounding included
    for j in range(num_classes):
        members = (labels == j).nonzero().squeeze(1)
        if len(members) == 0:
            continue
        keep = max(min(quota, len(members)), 1)
        order = losses[members].sort(stable=True)[1]
        chosen[members[order[:keep]]] = True
    return chosen


def matched_high_confidence(selected: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """MHCS: add every sample whose given label's probability exceeds tau."""
    return selected | (probs.gather(1, labels.view(-1, 1)).squeeze(1) > tau)


def label_guessing(selected: torch.Tensor, score1: torch.Tensor, score2: torch.Tensor, match: torch.Tensor,
                   tau: float, threshold: float) -> torch.Tensor:
    """LGA: while the selected share is below `threshold`, add (newly) samples both networks predict
    alike with confidence > tau, at most int(N * threshold) - |selected|, most confident first."""
    n, count = len(selected), int(selected.sum())
    out = selected.clone()
    if count / n >= threshold:
        return out
    new = (score1 > tau) & (score2 > tau) & match & ~selected
    room = int(n * threshold) - count
    candidates = new.nonzero().squeeze(1)
    if len(candidates) > room:
        order = (-(score1 + score2)[candidates]).sort(stable=True)[1]  # descending mean score
        new[candidates[order[room:]]] = False
    return out | new


def low_frequency_image(param: torch.Tensor, height: int, width: int, decay_power: float = FMIX_DECAY) -> torch.Tensor:
    """FMix's grey-level image in [0, 1] from Gaussian parameters `param` (height, width // 2 + 1 + width % 2, 2):
    the spectrum scale / max(f, 1 / max(h, w))^decay * param, inverse-FFT'd to (height, width).

    As the official make_low_freq_image (ecs-vlc FMix), the complex spectrum is taken as the
    frequency rows 0 (real part) and 1 (imaginary part), `spectrum[:, 0] + 1j * spectrum[:, 1]` of
    the (channel, row, column, 2) array, and zero-padded to (height, width // 2 + 1) by irfftn."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.fftfreq(width, dtype=torch.float64)[: width // 2 + 1 + (width % 2)]
    freqs = (fx * fx + fy * fy).sqrt()
    scale = freqs.clamp(min=1.0 / max(height, width)) ** -decay_power
    scaled = scale.unsqueeze(-1) * param.double()
    low = torch.fft.irfftn(torch.complex(scaled[0], scaled[1]), s=(height, width))
    low = low - low.min()
    return low / low.max()


def binarise(image: torch.Tensor, lam: float, round_up: bool) -> torch.Tensor:
    """The top ceil (round_up) or floor(lam * pixels) pixels of `image` -> 1, the rest 0 (max_soft 0)."""
    flat = image.flatten()
    order = flat.argsort(descending=True, stable=True)
    num = math.ceil(lam * flat.numel()) if round_up else math.floor(lam * flat.numel())
    mask = torch.zeros_like(flat)
    mask[order[:num]] = 1.0
    return mask.view(image.shape)


def fmix_mask(lam: float, height: int, width: int, device=None) -> torch.Tensor:
    """FMix's binary mask of mean ~lam for (height, width) images, drawn from torch's generator."""
    param = torch.randn(height, width // 2 + 1 + (width % 2), 2, dtype=torch.float64)
    image = low_frequency_image(param, height, width)
    return binarise(image, lam, float(torch.rand(())) > 0.5).to(device)


def fmix(x: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
    """FMix of a batch with a permutation of itself: (mixed, lambda, permutation)."""
    lam = float(torch.distributions.Beta(FMIX_ALPHA, FMIX_ALPHA).sample())
    mask = fmix_mask(lam, x.shape[-2], x.shape[-1], device=x.device).to(x.dtype)
    perm = torch.randperm(len(x)).to(x.device)
    return mask * x + (1 - mask) * x[perm], lam, perm


def fmix_loss(logits: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """lam * CE(logits, argmax t) + (1 - lam) * CE(logits, argmax t[perm]) (official fmix_loss)."""
    if len(logits) == 0:
        return logits.sum() * 0.0
    hard = targets.argmax(1)
    return F.cross_entropy(logits, hard) * lam + F.cross_entropy(logits, hard[perm]) * (1 - lam)


class PseudoHead(nn.Module):
    """h_AP: a freshly initialised copy of the network's classifier head `head` (a linear layer on
    the pooled features where it has none), times the network's logit `scale` where it has one
    (airbench's 1/9), so both heads produce logits alike."""

    def __init__(self, net: nn.Module, num_classes: int):
        super().__init__()
        head = getattr(net, "head", None)
        if isinstance(head, nn.Module):
            self.head = copy.deepcopy(head)
            for module in self.head.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        else:
            self.head = nn.Linear(net.num_features, num_classes)
        self.scale = float(getattr(net, "scale", 1.0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features) * self.scale


class PseudoHeadNet(nn.Module):
    """A network's features through its pseudo head h_AP (for evaluation)."""

    def __init__(self, net: nn.Module, head: nn.Module):
        super().__init__()
        self.net, self.head = net, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net.forward_features(x))


@dataclass
class ProMixConfig:
    pretrain_epochs: int | None = None  # CE warm-up epochs (official pretrain_ep); None = 10 (30 for >= 100 classes)
    rampup_epochs: float = 50.0         # linear ramp of rho and w from epoch 0 (official warmup_ep); beta lives 2x that
    rho_start: float | None = None      # CSS selection ratio at epoch 0; None = run.sh value (0.7 at ~20% sym noise, else 0.5)
    rho_end: float | None = None        # CSS ratio after the ramp; None = rho_start's value
    tau: float | None = None            # MHCS / LGA confidence threshold; None = 0.99 (0.95 for >= 100 classes)
    threshold: float = 0.9              # LGA adds samples while the selected share of a batch is below this
    start_expand: int = 250             # LGA in the last start_expand epochs
    debias_output: float | None = None  # logit-adjustment strength of the losses; None = 0.8 (0.5 for >= 100 classes)
    debias_pl: float | None = None      # debiasing strength of pseudo-labels; None = 0.8 (0.5 for >= 100 classes)
    temperature: float = 0.5            # sharpening T of the pseudo head's targets
    bias_momentum: float = 0.9999       # moving-average momentum of the class distributions
    noise_mode: str = "auto"            # sym | asym (warm-up confidence penalty) | auto (asym for asymmetric/pair noise)

    def validate(self) -> None:
        require(self.pretrain_epochs is None or self.pretrain_epochs >= 0,
                f"pretrain_epochs must be >= 0, got {self.pretrain_epochs}")
        require(self.rampup_epochs >= 0, f"rampup_epochs must be >= 0, got {self.rampup_epochs}")
        for name in ("rho_start", "rho_end"):
            value = getattr(self, name)
            require(value is None or 0.0 < value <= 1.0, f"{name} must be in (0, 1], got {value}")
        require(self.tau is None or 0.0 < self.tau < 1.0, f"tau must be in (0, 1), got {self.tau}")
        require(0.0 < self.threshold <= 1.0, f"threshold must be in (0, 1], got {self.threshold}")
        require(self.start_expand >= 0, f"start_expand must be >= 0, got {self.start_expand}")
        for name in ("debias_output", "debias_pl"):
            value = getattr(self, name)
            require(value is None or value >= 0, f"{name} must be >= 0, got {value}")
        require(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        require(0.0 <= self.bias_momentum < 1.0, f"bias_momentum must be in [0, 1), got {self.bias_momentum}")
        require(self.noise_mode in ("auto", "sym", "asym"), f"noise_mode must be auto, sym or asym, got {self.noise_mode!r}")


@register_strategy("promix")
class ProMix(Strategy):
    """ProMix (Xiao et al. 2023): progressive clean-sample selection, mixup/FMix and consistency on it,
    and a debiased pseudo head trained on the rest.

    See the module docstring for the method, the official constants and every deviation."""

    Config = ProMixConfig
    views = 2                # weak view, strong view
    needs_train_pass = True  # CSS needs every sample's loss before each epoch
    unused_parameters = True  # the pseudo heads get no gradient during the warm-up
    # Options for the noisy-label study. The official 600-epoch schedule warms up for 10 epochs,
    # ramps rho and w over 50 (the pseudo head's D_u loss lives for 100) and guesses labels in the
    # last 250 (42%). paper (100 epochs) keeps the warm-up and ramp and shortens LGA to the last
    # 42 epochs. quick (20 epochs): 5 warm-up epochs (as DivideMix's quick), ramp 6 (D_u loss in
    # epochs 5-11), LGA in the last 7. fast (10 epochs): warm-up 2, ramp 3 (D_u loss in epochs
    # 2-5), LGA in the last 4.
    presets: ClassVar[dict[str, dict]] = {
        "quick": {"pretrain_epochs": 5, "rampup_epochs": 6.0, "start_expand": 7},
        "paper": {"start_expand": 42},
        "fast": {"pretrain_epochs": 2, "rampup_epochs": 3.0, "start_expand": 4}}

    def __init__(self, net1: nn.Module, net2: nn.Module, num_train: int, num_classes: int, pretrain_epochs: int = 10,
                 rampup_epochs: float = 50.0, rho_start: float = 0.5, rho_end: float = 0.5, tau: float = 0.99,
                 threshold: float = 0.9, start_expand: int = 250, debias_output: float = 0.8, debias_pl: float = 0.8,
                 temperature: float = 0.5, bias_momentum: float = 0.9999, penalty: bool = False,
                 clean_labels: torch.Tensor | None = None):
        super().__init__()
        require(num_train >= 1, "ProMix needs the training-set size (num_train) for its per-sample selection")
        require(num_classes >= 2, f"ProMix needs >= 2 classes, got {num_classes}")
        for net in (net1, net2):
            require(hasattr(net, "forward_features") and hasattr(net, "num_features"),
                    "ProMix needs a model with forward_features and num_features (its pseudo head shares the features)")
        self.model, self.peer = net1, net2
        self.ph1, self.ph2 = PseudoHead(net1, num_classes), PseudoHead(net2, num_classes)
        self.num_train, self.num_classes = num_train, num_classes
        self.pretrain_epochs, self.rampup_epochs = pretrain_epochs, rampup_epochs
        self.rho_start, self.rho_end, self.tau, self.threshold = rho_start, rho_end, tau, threshold
        self.start_expand, self.debias_output, self.debias_pl = start_expand, debias_output, debias_pl
        self.temperature, self.bias_momentum, self.penalty = temperature, bias_momentum, penalty
        self.clean_labels = clean_labels  # measurement only; a plain tensor so DDP does not broadcast it
        uniform = torch.full((num_classes,), 1.0 / num_classes)
        for name in ("pi1", "pi2", "pi1_unrel", "pi2_unrel"):
            self.register_buffer(name, uniform.clone())
        # CSS selection of each network (recomputed by every train pass).
        self.register_buffer("sel1", torch.ones(num_train, dtype=torch.bool), persistent=False)
        self.register_buffer("sel2", torch.ones(num_train, dtype=torch.bool), persistent=False)
        self._num_epochs = 0
        self._rho = rho_start
        self._clean: torch.Tensor | None = None  # clean_labels on the training device
        self._counts: torch.Tensor | None = None  # selected, selected and clean, clean (both networks, this epoch)

    @classmethod
    def build(cls, config: ProMixConfig, ctx):
        big = ctx.num_classes >= 100
        mode = config.noise_mode
        noise_type = getattr(getattr(ctx.experiment, "data", None), "noise_type", None) or "symmetric"
        if mode == "auto":
            mode = "asym" if noise_type in ASYMMETRIC_NOISE else "sym"
        low_sym = noise_type in SYMMETRIC_NOISE and ctx.noise_rate < 0.35  # nearest run.sh setting: 20% symmetric
        rho_start = config.rho_start if config.rho_start is not None else (PAPER_RHO_LOW_NOISE if low_sym else PAPER_RHO)
        rho_end = config.rho_end if config.rho_end is not None else rho_start
        debias = 0.5 if big else 0.8
        resolved = replace(
            config, pretrain_epochs=config.pretrain_epochs if config.pretrain_epochs is not None else (30 if big else 10),
            rho_start=rho_start, rho_end=rho_end, tau=config.tau if config.tau is not None else (0.95 if big else 0.99),
            debias_output=config.debias_output if config.debias_output is not None else debias,
            debias_pl=config.debias_pl if config.debias_pl is not None else debias, noise_mode=mode)
        strategy = cls(ctx.new_model(), ctx.new_model(), ctx.num_train, ctx.num_classes, resolved.pretrain_epochs,
                       resolved.rampup_epochs, resolved.rho_start, resolved.rho_end, resolved.tau, resolved.threshold,
                       resolved.start_expand, resolved.debias_output, resolved.debias_pl, resolved.temperature,
                       resolved.bias_momentum, penalty=mode == "asym", clean_labels=ctx.clean_train_labels)
        strategy.config = resolved
        return strategy

    def train_augment(self, default, splits):
        weak = default.augment  # MultiView(run's augmentation, 2) -> the run's augmentation
        if not isinstance(weak, BatchAugment):
            return default
        strong = BatchAugment(replace(weak.config, rotate=STRONG_ROTATE, shear=STRONG_SHEAR, jitter=STRONG_JITTER,
                                      cutout=STRONG_CUTOUT), splits.mean, splits.std)
        return TwoViews(weak, strong)

    # ---- schedules -----------------------------------------------------------------------------

    def warmup_length(self) -> int:
        return self.pretrain_epochs

    def rho(self, epoch: int) -> float:
        return self.rho_start + (self.rho_end - self.rho_start) * linear_rampup(epoch, self.rampup_epochs)

    def unreliable_weight(self, epoch: int) -> float:
        """beta of the pseudo head's D_u loss (official: ramped to 0.1 over 2 * warmup_ep, then 0)."""
        beta = UNREL_WEIGHT * linear_rampup(epoch, 2 * self.rampup_epochs) if self.debias_pl else 1.0
        return 0.0 if (epoch >= 2 * self.rampup_epochs and beta < 1) else beta

    def guessing(self, epoch: int) -> bool:
        """LGA is on in the last start_expand epochs of the run."""
        return epoch >= self._num_epochs - self.start_expand

    # ---- selection -----------------------------------------------------------------------------

    def on_train_pass(self, epoch: int, loader) -> None:
        self._rho = self.rho(epoch)
        if epoch < self.pretrain_epochs:
            return
        for net, sel in ((self.model, self.sel1), (self.peer, self.sel2)):
            losses = sel.new_zeros(self.num_train, dtype=torch.float32)
            labels = sel.new_zeros(self.num_train, dtype=torch.long)
            for x, y, idx in loader:
                losses[idx] = F.cross_entropy(net(x).float(), y, reduction="none")
                labels[idx] = y
            sel.copy_(classwise_small_loss(losses, labels, self.num_classes, self._rho))

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self._num_epochs = num_epochs
        self._counts = None

    def record_selection(self, chosen: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> None:
        """Count (on the device, without a sync) the selected, selected-and-clean and clean samples."""
        if self.clean_labels is None:
            return
        if self._clean is None:
            self._clean = self.clean_labels.to(y.device)
        clean = self._clean[idx] == y
        counts = torch.stack([chosen.sum(), (chosen & clean).sum(), clean.sum()])
        self._counts = counts if self._counts is None else self._counts + counts

    def epoch_metrics(self) -> dict[str, float]:
        out = {"promix_rho": float(self._rho)}
        if self._counts is not None:
            selected, hits, clean = self._counts.tolist()
            out["label_precision"] = hits / max(selected, 1)
            out["label_recall"] = hits / max(clean, 1)
        return out

    # ---- training ------------------------------------------------------------------------------

    def heads(self, net: nn.Module, head: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = net.forward_features(x)
        return net.forward_head(feats).float(), head(feats).float()

    def warmup_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> StepOutput:
        weak = x[:, 0]
        logits1, logits2 = self.model(weak).float(), self.peer(weak).float()
        loss = F.cross_entropy(logits1, y) + F.cross_entropy(logits2, y)
        if self.penalty:
            loss = loss + negative_entropy(logits1) + negative_entropy(logits2)
        everything = torch.ones_like(y, dtype=torch.bool)
        self.record_selection(everything, y, idx)
        self.record_selection(everything, y, idx)
        return StepOutput(loss, logits1)

    def mixed_loss(self, forward, inputs: torch.Tensor, targets: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """Mixup (Beta(4, 4)) plus FMix on the selected samples, through `forward`, debiased by pi."""
        if len(inputs) == 0:
            return inputs.sum() * 0.0
        lam = mixup_lambda(MIXUP_ALPHA)
        perm = torch.randperm(len(inputs)).to(inputs.device)
        mixed = lam * inputs + (1 - lam) * inputs[perm]
        loss = soft_ce(debias_logits(forward(mixed), pi, self.debias_output), lam * targets + (1 - lam) * targets[perm])
        fmixed, flam, fperm = fmix(inputs)
        return loss + fmix_loss(debias_logits(forward(fmixed), pi, self.debias_output), targets, flam, fperm)

    def network_loss(self, net: nn.Module, head: nn.Module, weak: torch.Tensor, strong: torch.Tensor,
                     out_w: tuple, out_s: tuple, targets: torch.Tensor, chosen: torch.Tensor, pi: torch.Tensor,
                     pi_unrel: torch.Tensor, w: float, beta: float) -> torch.Tensor:
        """L_h + L_ph of one network given its selection `chosen` and its labels `targets`."""
        a = self.debias_output
        (main_w, ph_w), (main_s, ph_s) = out_w, out_s
        c, u = chosen.nonzero().squeeze(1), (~chosen).nonzero().squeeze(1)
        t = targets[c]
        primary = soft_ce(debias_logits(main_w[c], pi, a), t) + w * (
            soft_ce(debias_logits(main_s[c], pi, a), t) + self.mixed_loss(lambda z: net(z).float(), weak[c], t, pi))
        pseudo = soft_ce(debias_logits(ph_w[c], pi, a), t) + w * (
            soft_ce(debias_logits(ph_s[c], pi, a), t)
            + self.mixed_loss(lambda z: head(net.forward_features(z)).float(), weak[c], t, pi))
        with torch.no_grad():
            guess = sharpen(debias_probs(main_w.detach()[u], pi_unrel, self.debias_pl), self.temperature)
        unreliable = soft_ce(debias_logits(ph_w[u], pi_unrel, a), guess) + w * soft_ce(
            debias_logits(ph_s[u], pi_unrel, a), guess)
        return primary + beta * unreliable + pseudo

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        require(x.ndim == 5 and x.shape[1] == 2, "ProMix needs a weak and a strong view per sample: x of shape (N, 2, C, H, W)")
        if epoch < self.pretrain_epochs:
            return self.warmup_step(x, y, idx)
        weak, strong = x[:, 0], x[:, 1]
        w, beta = linear_rampup(epoch, self.rampup_epochs), self.unreliable_weight(epoch)
        out1_w, out1_s = self.heads(self.model, self.ph1, weak), self.heads(self.model, self.ph1, strong)
        out2_w, out2_s = self.heads(self.peer, self.ph2, weak), self.heads(self.peer, self.ph2, strong)
        with torch.no_grad():
            onehot = F.one_hot(y, self.num_classes).float()
            p1, p2 = out1_w[0].detach().softmax(1), out2_w[0].detach().softmax(1)
            chosen1 = matched_high_confidence(self.sel1[idx], p1, y, self.tau)
            chosen2 = matched_high_confidence(self.sel2[idx], p2, y, self.tau)
            guess1 = F.one_hot(debias_probs(out1_w[0].detach(), self.pi1, self.debias_pl).argmax(1), self.num_classes)
            guess2 = F.one_hot(debias_probs(out2_w[0].detach(), self.pi2, self.debias_pl).argmax(1), self.num_classes)
            targets1 = torch.where(chosen1.view(-1, 1), onehot, guess1.float())
            targets2 = torch.where(chosen2.view(-1, 1), onehot, guess2.float())
            if self.guessing(epoch):
                (s1, c1), (s2, c2) = p1.max(1), p2.max(1)
                chosen1 = label_guessing(chosen1, s1, s2, c1 == c2, self.tau, self.threshold)
                chosen2 = label_guessing(chosen2, s1, s2, c1 == c2, self.tau, self.threshold)
        loss = self.network_loss(self.model, self.ph1, weak, strong, out1_w, out1_s, targets1, chosen1, self.pi1,
                                 self.pi1_unrel, w, beta)
        loss = loss + self.network_loss(self.peer, self.ph2, weak, strong, out2_w, out2_s, targets2, chosen2,
                                        self.pi2, self.pi2_unrel, w, beta)
        m = self.bias_momentum
        self.pi1.copy_(update_distribution(self.pi1, p1[chosen1], m))
        self.pi2.copy_(update_distribution(self.pi2, p2[chosen2], m))
        self.pi1_unrel.copy_(update_distribution(self.pi1_unrel, p1[~chosen1], m))
        self.pi2_unrel.copy_(update_distribution(self.pi2_unrel, p2[~chosen2], m))
        self.record_selection(chosen1, y, idx)
        self.record_selection(chosen2, y, idx)
        return StepOutput(loss, out1_w[0])

    # ---- prediction ----------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x).float() + self.peer(x).float()) / 2

    def extra_predictors(self) -> dict[str, nn.Module]:
        return {"net1": self.model, "net2": self.peer, "ensemble": MeanLogits(self.model, self.peer),
                "net1_ph": PseudoHeadNet(self.model, self.ph1), "net2_ph": PseudoHeadNet(self.peer, self.ph2)}
