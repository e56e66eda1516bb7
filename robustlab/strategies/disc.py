"""DISC: Dynamic Instance-Specific Selection and Correction (Li et al., CVPR 2023).

One network sees two views of every image, a weak one (the run's augmentation) and a strong one
(the same plus colour jitter and Cutout), in one forward pass. Each sample's softmax on both views
is stored as the epoch goes (the training forward pass, train mode). After every epoch each sample
i gets instance-specific thresholds, an exponential moving average of its own confidence (the
"memorisation strength", the top softmax value) over the previous epochs:

    tau_w(i) <- lambda * tau_w(i) + (1 - lambda) * max_c p_w(i, c)      (tau starts at 1 / N)

and likewise tau_s for the strong view, and the training set is split (official DISC.train(),
with the thresholds from *before* this epoch's update):

    w_i = p_w(i, y_i) > tau_w(i),  s_i = p_s(i, y_i) > tau_s(i)
    clean     C = w & s                       -> CE on both views
    hard      H = w xor s                     -> GCE (q 0.7) on both views
    purified  P = not (w or s) and max_c pbar(i, c) > min((tau_w(i) + tau_s(i)) / 2 + sigma, 0.9),
                  pbar = (p_w + p_s) / 2      -> its label corrected to argmax_c pbar(i, c)

From the start epoch on, a batch's loss is

    L = lambda_ce * |C_b| / B * (CE(f(x_w), y) + CE(f(x_s), y))_C
      + lambda_h  * |H_b| / B * (GCE(f(x_w), y) + GCE(f(x_s), y))_H
      + mixup(x_w, y~)_{C+H+P} + mixup(x_s, y~)_{C+H+P}

(each term a mean over its subset of the batch), y~ the noisy label on C and H and the corrected
label on P; mixup is soft cross-entropy on mixed images, lambda ~ Beta(5, 5) folded to >= 0.5,
a fresh forward pass per view. Before the start epoch the loss is CE on both views of every
sample; the stored probabilities and the thresholds are updated from the first epoch on.

Official defaults (JackYFL/DISC, algorithms/DISC.py, configs/DISC_CIFAR.py, main.py), the same for
CIFAR-10 and CIFAR-100: start epoch 20 (15 for instance-dependent noise), lambda 0.99 (0.95 for
asymmetric noise), sigma 0.5, the correction threshold capped at 0.9, lambda_ce 1, lambda_h 1,
GCE q 0.7 (softmax clamped to >= 1e-7), mixup alpha 5; at noise rates 0.6 and 0.8 lambda_h 0.2 and
lambda 0.95. Weak view: flip + 4-pixel reflect-padded crop; strong view: the same + RandAugment
(2 colour operations, magnitude < 5, no geometric ones) + 4-pixel Cutout. The network recipe
(ResNet-18, ResNet-34 for instance noise; SGD without momentum, lr 0.1, weight decay 1e-3, /10 at
epochs 80 and 160 of 200, batch 128; Adam lr 1e-3 decaying linearly from epoch 120 above 60% noise)
is the run's own here (see `presets`).

Short runs (`epoch_scale` = official epochs per run epoch; 1 = the official values): the
threshold EMA is per epoch, so over 20 or 10 epochs lambda 0.99 would barely move the thresholds
from 1/N and select almost every sample. With epoch_scale s the default lambda becomes lambda^s
(the EMA's memory is then the same share of the run) and the default start epoch
max(1, round(start / s)). An explicit momentum or start_epoch is used as given.

Reported per epoch (`epoch_metrics`, from the second epoch on, for the selection the epoch trains
with; before the start epoch it is the selection DISC would make, while every label trains):
clean_fraction and hard_fraction of the training set, corrected (labels corrected, the size of P),
and with the clean labels (measurement only, never used to train) label_precision / label_recall
of the clean set C as a detector of correctly labelled samples, corrected_right (corrections equal
to the clean label) and correction_precision.

Per-sample state (stored probabilities of both views, the noisy labels as seen, both thresholds,
the three subsets and the corrected labels, and the number of selection rounds done) is a set of
buffers indexed by the loader's dataset indices, saved in every checkpoint; the selection for an
epoch is made in `on_epoch_start` from the previous epoch's stored probabilities, so a resumed
run repeats it exactly.

Deviations from the official code:
- The strong view is the run's augmentation plus colour jitter (brightness, contrast, saturation,
  strength 0.4) and a 4-pixel Cutout, instead of RandAugment's colour operations plus Cutout
  (robustlab has no RandAugment); it is drawn without the dataset indices, so an alternating flip
  (the fast recipe's) becomes a random one in that view.
- The selection after the last epoch is not made (it trains nothing); the official code makes it
  and prints its statistics.
- A batch whose samples are in no subset has a zero loss and the optimizer still steps (weight
  decay, momentum); the official code skips the step.
- The noisy labels are recorded from the training batches (a sample not seen yet, e.g. dropped by
  drop_last in the first epoch, is in no subset until it is seen) instead of a pass over the
  loader before training.
- Which settings count as "high noise" (lambda_h 0.2, lambda 0.95): the official code checks the
  nominal rate for exactly 0.6 and 0.8; here the nominal rate (else the realised one) >= 0.5.
  Asymmetric and pair noise count as the official 'asym', instance-dependent noise as 'ins'.
- Mixup's lambda and permutation come from torch's global generator (saved in checkpoints).
- Under DDP the per-sample rows written by each rank are gathered and written on every rank (the
  official code is single-GPU; not exercised by the tests).
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
from robustlab.strategies.elr_plus import mix
from robustlab.strategies.registry import register_strategy
from robustlab.strategies.sop import TwoViews

# Official values (algorithms/DISC.py for cifar-10 / cifar-100, main.py's --momentum default).
START_EPOCH = 20
START_EPOCH_INSTANCE = 15    # noise_type 'ins'
MOMENTUM = 0.99
MOMENTUM_HARD = 0.95         # asymmetric noise, or noise rate 0.6 / 0.8
LAMBDA_HARD_HIGH_NOISE = 0.2  # lamd_h at noise rate 0.6 / 0.8 (else 1)
HIGH_NOISE = 0.5             # robustlab's cut between the official 0.4 and 0.6 settings
SIGMA = 0.5
CORRECTION_CAP = 0.9         # torch.min(ws_threshold, 0.90)
GCE_Q = 0.7                  # GCELoss(q=0.7)
GCE_CLAMP = 1e-7             # torch.clamp(pred, min=1e-7, max=1.0)
MIXUP_ALPHA = 5.0            # configs/DISC_CIFAR.py alpha
STRONG_JITTER = 0.4          # colour jitter standing in for RandAugment's colour operations
STRONG_CUTOUT = 4            # CutoutAbs(img, int(32 * 0.15))
ASYMMETRIC_NOISE = {"asymmetric", "pair"}


def official_defaults(noise_rate: float, noise_type: str | None) -> tuple[int, float, float]:
    """(start epoch, momentum, lambda_h) of the official code for a CIFAR noise setting."""
    start, momentum, lambda_hard = START_EPOCH, MOMENTUM, 1.0
    if noise_type in ASYMMETRIC_NOISE:
        momentum = MOMENTUM_HARD
    if noise_type == "instance":
        start = START_EPOCH_INSTANCE
    if noise_rate >= HIGH_NOISE:
        lambda_hard, momentum = LAMBDA_HARD_HIGH_NOISE, MOMENTUM_HARD
    return start, momentum, lambda_hard


def gce_loss(logits: torch.Tensor, y: torch.Tensor, q: float = GCE_Q) -> torch.Tensor:
    """mean_i (1 - p_i(y_i)^q) / q with the softmax clamped to [1e-7, 1], as the official GCELoss."""
    p = logits.softmax(1).clamp(GCE_CLAMP, 1.0).gather(1, y[:, None]).squeeze(1)
    return ((1.0 - p ** q) / q).mean()


def updated_confidence(conf: torch.Tensor, probs: torch.Tensor, momentum: float) -> torch.Tensor:
    """momentum * conf + (1 - momentum) * max_c probs: one epoch of a threshold's EMA."""
    return momentum * conf + (1.0 - momentum) * probs.max(1).values


@dataclass
class Selection:
    clean: torch.Tensor      # both views' label confidence above their thresholds
    hard: torch.Tensor       # exactly one view's above
    corrected: torch.Tensor  # neither, and the mean prediction confident enough: label corrected
    new_label: torch.Tensor  # argmax of the mean prediction (the corrected label where corrected)


def select(w_probs: torch.Tensor, s_probs: torch.Tensor, labels: torch.Tensor, w_conf: torch.Tensor,
           s_conf: torch.Tensor, sigma: float = SIGMA, cap: float = CORRECTION_CAP) -> Selection:
    """The official selection and correction for stored probabilities (N, C), labels (N,; -1 = not
    seen yet, in no subset) and the thresholds before this epoch's update."""
    known = labels >= 0
    y = labels.clamp(min=0)[:, None]
    w_mask = (w_probs.gather(1, y).squeeze(1) > w_conf) & known
    s_mask = (s_probs.gather(1, y).squeeze(1) > s_conf) & known
    selected = w_mask | s_mask
    clean = w_mask & s_mask
    mean_max, new_label = ((w_probs + s_probs) / 2).max(1)
    threshold = ((w_conf + s_conf) / 2 + sigma).clamp(max=cap)
    corrected = (mean_max > threshold) & ~selected & known
    return Selection(clean, selected & ~clean, corrected, new_label)


def mixup_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, alpha: float) -> torch.Tensor:
    """Soft cross-entropy of `model` on a mixup of (x, one-hot y) with its own permutation."""
    lam, perm = mix(alpha, len(x), x.device)
    onehot = F.one_hot(y, num_classes).float()
    mixed_x = lam * x + (1 - lam) * x[perm]
    mixed_y = lam * onehot + (1 - lam) * onehot[perm]
    return -(F.log_softmax(model(mixed_x).float(), 1) * mixed_y).sum(1).mean()


@dataclass
class DISCConfig:
    start_epoch: int | None = None     # epochs of plain CE first; None = official 20 (15 instance noise), / epoch_scale
    momentum: float | None = None      # threshold EMA lambda; None = official 0.99 (0.95 asymmetric or >= 50% noise), ^epoch_scale
    lambda_hard: float | None = None   # weight of the hard set's GCE; None = official 1 (0.2 at >= 50% noise)
    lambda_clean: float = 1.0          # weight of the clean set's CE
    sigma: float = SIGMA               # correction margin over the mean threshold
    correction_cap: float = CORRECTION_CAP  # the correction threshold's ceiling
    gce_q: float = GCE_Q               # q of the hard set's GCE
    mixup_alpha: float = MIXUP_ALPHA   # Beta(alpha, alpha) of mixup; 0 = no mixing
    epoch_scale: float = 1.0           # official epochs per run epoch, for the default start epoch and momentum
    strong_jitter: float = STRONG_JITTER  # colour jitter of the strong view
    strong_cutout: int = STRONG_CUTOUT    # Cutout side of the strong view (0: none)

    def validate(self) -> None:
        require(self.start_epoch is None or self.start_epoch >= 1,
                f"start_epoch must be >= 1 (the first selection needs one epoch of predictions), got {self.start_epoch}")
        require(self.momentum is None or 0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        require(self.lambda_hard is None or self.lambda_hard >= 0.0, f"lambda_hard must be >= 0, got {self.lambda_hard}")
        require(self.lambda_clean >= 0.0, f"lambda_clean must be >= 0, got {self.lambda_clean}")
        require(self.sigma >= 0.0, f"sigma must be >= 0, got {self.sigma}")
        require(0.0 < self.correction_cap <= 1.0, f"correction_cap must be in (0, 1], got {self.correction_cap}")
        require(0.0 < self.gce_q <= 1.0, f"gce_q must be in (0, 1], got {self.gce_q}")
        require(self.mixup_alpha >= 0.0, f"mixup_alpha must be >= 0 (0 = no mixing), got {self.mixup_alpha}")
        require(self.epoch_scale > 0.0, f"epoch_scale must be > 0, got {self.epoch_scale}")
        require(0.0 <= self.strong_jitter < 1.0, f"strong_jitter must be in [0, 1), got {self.strong_jitter}")
        require(self.strong_cutout >= 0, f"strong_cutout must be >= 0, got {self.strong_cutout}")


@register_strategy("disc")
class DISC(Strategy):
    """DISC (Li et al. 2023): per-sample EMA confidence thresholds split the data into clean (CE), hard (GCE) and corrected sets, plus mixup.

    See the module docstring for the method, the official constants and every deviation."""

    Config = DISCConfig
    views = 2  # weak and strong view of every sample
    # Options for the noisy-label study. The official schedule is 200 epochs with a 20-epoch CE
    # start and a per-epoch threshold EMA of momentum 0.99. quick (20 epochs): epoch_scale 10, so
    # the start epoch is 2 and the momentum 0.99^10 = 0.904 (0.95^10 = 0.60); fast (10 epochs):
    # epoch_scale 20, start epoch 1, momentum 0.99^20 = 0.818 (0.95^20 = 0.36); paper: the official
    # values.
    presets: ClassVar[dict[str, dict]] = {"quick": {"epoch_scale": 10.0}, "paper": {}, "fast": {"epoch_scale": 20.0}}

    def __init__(self, model: nn.Module, num_train: int, num_classes: int, start_epoch: int = START_EPOCH,
                 momentum: float = MOMENTUM, lambda_hard: float = 1.0, lambda_clean: float = 1.0, sigma: float = SIGMA,
                 correction_cap: float = CORRECTION_CAP, gce_q: float = GCE_Q, mixup_alpha: float = MIXUP_ALPHA,
                 strong_jitter: float = STRONG_JITTER, strong_cutout: int = STRONG_CUTOUT,
                 clean_labels: torch.Tensor | None = None):
        super().__init__()
        require(num_train >= 1, "DISC needs the training-set size (num_train) for its per-sample thresholds")
        require(num_classes >= 2, f"DISC needs >= 2 classes, got {num_classes}")
        self.model = model
        self.num_train, self.num_classes = num_train, num_classes
        self.start_epoch, self.momentum = start_epoch, momentum
        self.lambda_hard, self.lambda_clean = lambda_hard, lambda_clean
        self.sigma, self.correction_cap, self.gce_q, self.mixup_alpha = sigma, correction_cap, gce_q, mixup_alpha
        self.strong_jitter, self.strong_cutout = strong_jitter, strong_cutout
        self.clean_labels = clean_labels  # measurement only; a plain tensor so DDP does not broadcast it
        self.register_buffer("w_probs", torch.zeros(num_train, num_classes))
        self.register_buffer("s_probs", torch.zeros(num_train, num_classes))
        self.register_buffer("labels", torch.full((num_train,), -1, dtype=torch.long))
        self.register_buffer("w_conf", torch.full((num_train,), 1.0 / num_train))
        self.register_buffer("s_conf", torch.full((num_train,), 1.0 / num_train))
        self.register_buffer("clean", torch.zeros(num_train, dtype=torch.bool))
        self.register_buffer("hard", torch.zeros(num_train, dtype=torch.bool))
        self.register_buffer("corrected", torch.zeros(num_train, dtype=torch.bool))
        self.register_buffer("new_label", torch.zeros(num_train, dtype=torch.long))
        self.register_buffer("rounds", torch.zeros((), dtype=torch.long))  # selections made (= epochs seen)
        self._metrics: dict[str, float] = {}

    @classmethod
    def build(cls, config: DISCConfig, ctx):
        data = getattr(ctx.experiment, "data", None)
        noise_type = getattr(data, "noise_type", None)
        nominal = getattr(data, "noise_rate", None)
        rate = nominal if isinstance(nominal, (int, float)) and nominal > 0 else ctx.noise_rate
        start, momentum, lambda_hard = official_defaults(rate, noise_type)
        scale = config.epoch_scale
        resolved = replace(
            config,
            start_epoch=config.start_epoch if config.start_epoch is not None else max(1, round(start / scale)),
            momentum=config.momentum if config.momentum is not None else momentum ** scale,
            lambda_hard=config.lambda_hard if config.lambda_hard is not None else lambda_hard)
        strategy = cls(ctx.new_model(), ctx.num_train, ctx.num_classes, resolved.start_epoch, resolved.momentum,
                       resolved.lambda_hard, resolved.lambda_clean, resolved.sigma, resolved.correction_cap,
                       resolved.gce_q, resolved.mixup_alpha, resolved.strong_jitter, resolved.strong_cutout,
                       clean_labels=ctx.clean_train_labels)
        strategy.config = resolved
        return strategy

    def train_augment(self, default, splits):
        weak = default.augment  # MultiView(run's augmentation, 2) -> the run's augmentation
        strong = weak
        if isinstance(weak, BatchAugment):
            strong = BatchAugment(replace(weak.config, jitter=self.strong_jitter, cutout=self.strong_cutout),
                                  splits.mean, splits.std)
        return TwoViews(weak, strong)

    def warmup_length(self) -> int:
        return self.start_epoch

    # ---- selection, once per epoch -------------------------------------------------------------

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        if epoch >= 1 and int(self.rounds) != epoch:
            sel = select(self.w_probs, self.s_probs, self.labels, self.w_conf, self.s_conf, self.sigma,
                         self.correction_cap)
            self.clean.copy_(sel.clean)
            self.hard.copy_(sel.hard)
            self.corrected.copy_(sel.corrected)
            self.new_label.copy_(sel.new_label)
            self.w_conf.copy_(updated_confidence(self.w_conf, self.w_probs, self.momentum))
            self.s_conf.copy_(updated_confidence(self.s_conf, self.s_probs, self.momentum))
            self.rounds.fill_(epoch)
        self._metrics = self.selection_metrics() if int(self.rounds) >= 1 else {}

    def selection_metrics(self) -> dict[str, float]:
        known = self.labels >= 0
        seen = max(int(known.sum()), 1)
        n_clean, n_corrected = int(self.clean.sum()), int(self.corrected.sum())
        out = {"clean_fraction": n_clean / seen, "hard_fraction": int(self.hard.sum()) / seen,
               "corrected": float(n_corrected)}
        if self.clean_labels is not None:
            truth = self.clean_labels.to(self.labels.device)
            is_clean = known & (self.labels == truth)
            hits = int((self.clean & is_clean).sum())
            right = int((self.corrected & (self.new_label == truth)).sum())
            out.update(label_precision=hits / max(n_clean, 1), label_recall=hits / max(int(is_clean.sum()), 1),
                       corrected_right=float(right), correction_precision=right / max(n_corrected, 1))
        return out

    def epoch_metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    # ---- training ------------------------------------------------------------------------------

    def record(self, idx: torch.Tensor, y: torch.Tensor, w_logits: torch.Tensor, s_logits: torch.Tensor) -> None:
        """Store the batch's softmax on both views and its labels at the dataset indices."""
        with torch.no_grad():
            rows = torch.cat([w_logits.softmax(1), s_logits.softmax(1), y[:, None].to(w_logits.dtype)], 1)
            all_idx, all_rows = _gather_across_ranks(idx, rows)
            c = self.num_classes
            self.w_probs[all_idx] = all_rows[:, :c]
            self.s_probs[all_idx] = all_rows[:, c:2 * c]
            self.labels[all_idx] = all_rows[:, 2 * c].round().long()

    def disc_loss(self, xw: torch.Tensor, xs: torch.Tensor, w_logits: torch.Tensor, s_logits: torch.Tensor,
                  y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The loss after the start epoch: CE on the clean, GCE on the hard, mixup on all three subsets."""
        n = len(y)
        clean, hard, corrected = self.clean[idx], self.hard[idx], self.corrected[idx]
        loss = w_logits.sum() * 0.0
        if clean.any():
            ce = F.cross_entropy(w_logits[clean], y[clean]) + F.cross_entropy(s_logits[clean], y[clean])
            loss = loss + ce * self.lambda_clean * (int(clean.sum()) / n)
        if hard.any():
            gce = gce_loss(w_logits[hard], y[hard], self.gce_q) + gce_loss(s_logits[hard], y[hard], self.gce_q)
            loss = loss + gce * self.lambda_hard * (int(hard.sum()) / n)
        mixed = clean | hard | corrected
        if mixed.any():
            targets = torch.where(corrected, self.new_label[idx], y)[mixed]
            loss = loss + mixup_loss(self.model, xw[mixed], targets, self.num_classes, self.mixup_alpha)
            loss = loss + mixup_loss(self.model, xs[mixed], targets, self.num_classes, self.mixup_alpha)
        return loss

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        require(x.ndim == 5 and x.shape[1] == 2, "DISC needs two augmented views per sample: x of shape (N, 2, C, H, W)")
        n = len(y)
        xw, xs = x[:, 0], x[:, 1]
        logits = self.model(torch.cat([xw, xs])).float()
        w_logits, s_logits = logits[:n], logits[n:]
        if epoch < self.start_epoch:
            loss = F.cross_entropy(w_logits, y) + F.cross_entropy(s_logits, y)
        else:
            loss = self.disc_loss(xw, xs, w_logits, s_logits, y, idx)
        self.record(idx, y, w_logits, s_logits)
        return StepOutput(loss, w_logits)
