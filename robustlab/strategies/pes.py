"""PES, progressive early stopping (Bai et al., NeurIPS 2021).

Later layers of a network memorise noisy labels sooner than earlier ones, so instead of stopping
the whole network at one epoch PES trains it in stages (official PES_cs.py, tmllab/2021_NeurIPS_PES):

1. epochs [0, T1): the whole network with cross-entropy on every (noisy) label;
2. epochs [T1, T1 + T2): the last block(s) and the head are re-initialised and trained with every
   earlier layer frozen (official noisy_refine(model, 1, refine_times_2): ResNet layer4 + linear);
3. epochs [T1 + T2, T1 + T2 + T3): the head alone is re-initialised and trained, everything else
   frozen (noisy_refine(model, 0, refine_times_1));
4. the remaining epochs: the whole network again, on the confident samples only: before every
   epoch each training sample is predicted, and a sample is confident when the prediction equals
   its noisy label; the loss is cross-entropy over the batch's confident samples with class
   weights mean(n) / n_c (n_c confident samples of class c, the mean over classes with n_c > 0; a
   class without confident samples weighs 0), as the official update_trainloader().

Stages 2 and 3 also use cross-entropy on every noisy label (the official noisy_refine computes a
confident split but trains on the full loader with the plain criterion).

PES-semi (`semi=true`, official PES_semi.py) replaces stage 4 by MixMatch on the split: confident
samples are labeled (their noisy label, one-hot), the others unlabeled with the guess
q = sharpen(mean of the network's softmax on two augmented views, T); both views of both parts
are mixed (lambda ~ Beta(alpha, alpha), lambda = max(lambda, 1 - lambda); alpha drops to 0.75 from
half the run on) and

    L = sum_c w_c * mean_i -y~_ic log p_ic  (labeled part)  +  lambda_u(t) * mean (p - q~)^2  (unlabeled part)

with the class weights w capped at 3 and lambda_u(t) = lambda_u * clip((t - start) / 16, 0, 1), t
the (fractional) epoch and start the first MixMatch epoch. PES-semi's own defaults: T1 = 30, no
last-block stage (refine_times_2 = 0), T3 = 5 (refine_times_1), T 0.5, alpha 4, lambda_u 150 (the
script's default; its README trains CIFAR-10 with 15), SGD lr 0.02 with cosine decay over 300 epochs.

Official defaults: T1 = 25 (CIFAR-10, ResNet-18) / 30 (CIFAR-100, ResNet-34), T2 = T3 = 7
(refine_times_2 = refine_times_1 = 7 in PES_cs.py, whose help strings say 'default 5'), a stage for the last two
blocks of length refine_times_3 = 0 (off; `blocks` = 2 gives that stage's layers to stage 2 instead),
SGD lr 0.1 (momentum 0.9, weight decay 1e-4, /10 at epochs 100 and 150), 200 epochs, batch 128,
refinement with Adam lr 1e-4. The training recipe itself (optimizer, schedule, epochs) is the run's own.

Layer groups. A model may define `layer_groups()` returning its parameterised parts from input to
output, the head last. Otherwise robustlab splits it by rule: the model's top-level children in
order, each `nn.Sequential` opened one level, and inside it a new block starts at every
convolution, linear layer or composite module (one with children) while norms, activations and
pooling join the block before them; parameter-free blocks are dropped and the head is `model.head`.
So `preact_resnet18`/`resnet18` end in their four stages (the last = the official layer4), airbench
in its three conv groups, `small_cnn` in its three conv-norm-ReLU-pool units. Freezing sets
`requires_grad` to False, so the frozen parameters get no gradient and the optimizer skips them
(no weight decay, no momentum). Parameters a model keeps frozen itself (airbench's whitening
filters and BN scales) stay frozen; those of a module that schedules its own (`begin_epoch`, e.g.
airbench's whitening bias) are frozen in stages 2 and 3 and otherwise left to that schedule.

Per-sample state: the confident mask (PES-semi's labeled set) and the class weights are buffers (`confident`,
`class_weight`) recomputed before every epoch of stage 4; re-initialisation happens at the first
epoch of stages 2 and 3 from torch's global generator (saved in checkpoints), so a resumed run is
bit-exact.

Deviations from the official code:
- One optimizer and schedule for the whole run: the official refinement stages are extra epochs
  (outside the 200) trained by a fresh Adam at lr 1e-4; here they are epochs of the run, trained by
  the run's optimizer at its scheduled rate, whose state (momentum, Adam moments) for the
  re-initialised parameters is the state left by stage 1.
- After the refinement the official SGD optimizer still holds the parameter objects replaced by
  renew_layers(), so the re-initialised block and head are never updated again; here they are
  re-initialised in place and train with the rest of the network in stage 4 (as the paper's
  "train the whole network on the confident examples").
- The confident split is predicted on the unaugmented training images (the official one averages
  the softmax over two augmented views), and stage-4 batches are the run's batches restricted to
  their confident samples (the official loader holds only confident samples, 128 a batch, dropping
  the last); a batch without confident samples contributes a zero loss.
- With a recipe that uses lookahead weights (the fast preset's airbench recipe), the lookahead
  average still covers every parameter: frozen groups follow it (w <- average at each epoch end)
  and re-initialised ones are pulled toward their pre-re-initialisation average, so "frozen" means
  no gradient step, not constant weights, there.
- PES-semi: each batch of the run's single loader is split into its labeled and unlabeled
  samples (the official code draws them from two loaders, the unlabeled share of a batch set by
  the split's proportions, 50000 / 128 batches an epoch), so an epoch visits every sample once and
  a batch with an empty part has Lx = 0 or Lu = 0. Mixup's lambda and permutation come from torch's
  global generator. The guesses run in train mode, as the official ones.
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
from robustlab.strategies.dividemix import mixup_lambda, sharpen
from robustlab.strategies.registry import register_strategy

T1_CIFAR10, T1_CIFAR100 = 25, 30  # official warm-up: 25 (CIFAR-10), 30 (CIFAR-100)
T2_DEFAULT = T3_DEFAULT = 7        # official refine_times_2 (last block + head), refine_times_1 (head)
SEMI_T1, SEMI_T2, SEMI_T3 = 30, 0, 5  # PES_semi.py: warmup 30, refine_times_2 0, refine_times_1 5
SEMI_LAMBDA_U, SEMI_ALPHA_LATE, SEMI_WEIGHT_CAP = 150.0, 0.75, 3.0  # lambda_u default, alpha from half the run, cw cap

WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _sequential_blocks(seq: nn.Sequential) -> list[nn.Module]:
    """Split a Sequential: a block starts at each weight layer or composite child; the rest join the block before."""
    blocks: list[list[nn.Module]] = []
    for child in seq.children():
        starts = isinstance(child, WEIGHT_LAYERS) or any(True for _ in child.children())
        if starts or not blocks:
            blocks.append([child])
        else:
            blocks[-1].append(child)
    return [nn.ModuleList(b) if len(b) > 1 else b[0] for b in blocks]


def layer_groups(model: nn.Module) -> list[nn.Module]:
    """The model's parameterised blocks from input to output, the head last (see the module docstring)."""
    custom = getattr(model, "layer_groups", None)
    if callable(custom):
        groups = list(custom())
    else:
        head = getattr(model, "head", None)
        require(isinstance(head, nn.Module),
                f"PES needs the model's layer groups: {type(model).__name__} has neither layer_groups() nor a head")
        groups = []
        for child in model.children():
            if child is head:
                continue
            groups += _sequential_blocks(child) if isinstance(child, nn.Sequential) else [child]
        groups.append(head)
    groups = [g for g in groups if _has_params(g)]
    require(len(groups) >= 3, f"PES needs at least two blocks before the head; {type(model).__name__} has "
                              f"{len(groups) - 1}")
    return groups


@torch.no_grad()
def reinitialise(module: nn.Module) -> None:
    """Every submodule's own reset_parameters() (weights and, for norms, running statistics)."""
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


def class_weights(labels: torch.Tensor, num_classes: int, cap: float | None = None) -> torch.Tensor:
    """mean(n) / n_c over the confident samples' labels, the mean over classes present; 0 for absent
    classes; at most `cap` when given (PES-semi's 3)."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    present = counts > 0
    weights = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
    if present.any():
        weights[present] = counts[present].mean() / counts[present]
    if cap is not None:
        weights = weights.clamp(max=cap)
    return weights.float()


@dataclass
class PESConfig:
    t1: int | None = None  # epochs of the whole network; None = official 25 (30 for >= 100 classes; 30 with semi)
    t2: int | None = None  # epochs of the re-initialised last block(s) and head; None = official 7 (0 with semi)
    t3: int | None = None  # epochs of the re-initialised head; None = official 7 (5 with semi)
    blocks: int = 1        # blocks before the head re-initialised and trained in the t2 stage
    semi: bool = False     # PES-semi: MixMatch on the confident/unconfident split after the stages
    lambda_u: float = SEMI_LAMBDA_U  # semi: weight of the unlabeled loss after its ramp-up
    temperature: float = 0.5         # semi: sharpening T of the guesses
    alpha: float = 4.0               # semi: Beta(alpha, alpha) of mixup (0.75 from half the run on)
    rampup_epochs: float = 16.0      # semi: epochs of the linear lambda_u ramp (official 16)

    def validate(self) -> None:
        require(self.t1 is None or self.t1 >= 1, f"t1 must be >= 1 epoch, got {self.t1}")
        require(self.t2 is None or self.t2 >= 0, f"t2 must be >= 0 epochs, got {self.t2}")
        require(self.t3 is None or self.t3 >= 0, f"t3 must be >= 0 epochs, got {self.t3}")
        require(self.blocks >= 1, f"blocks must be >= 1, got {self.blocks}")
        require(self.lambda_u >= 0 and math.isfinite(self.lambda_u), f"lambda_u must be >= 0, got {self.lambda_u}")
        require(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        require(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        require(self.rampup_epochs > 0 and math.isfinite(self.rampup_epochs),
                f"rampup_epochs must be > 0, got {self.rampup_epochs}")


def check_stages(t1: int, t2: int, t3: int, epochs: int) -> None:
    """One line unless the stages fit the run's epochs."""
    require(t1 + t2 + t3 <= epochs, f"pes stages t1 + t2 + t3 = {t1} + {t2} + {t3} = {t1 + t2 + t3} epochs do not "
                                    f"fit the run's {epochs} epochs: lower t1, t2 or t3 (or train longer)")


@register_strategy("pes")
class PES(Strategy):
    """PES (Bai et al. 2021): progressive early stopping, re-initialised later layer groups trained in stages.

    See the module docstring for the method, the official constants and every deviation."""

    Config = PESConfig
    needs_train_pass = True  # stage 4 predicts every training sample before each epoch
    unused_parameters = True  # frozen groups get no gradient in stages 2 and 3
    # Options for the noisy-label study. quick (20 epochs of a small CNN with Adam, where CE starts
    # memorising the noise within ~10 epochs): t1 6, t2 3, t3 2, leaving 9 confident-sample epochs.
    # fast (airbench, 10 epochs; ~80% clean accuracy after 3): t1 3, t2 2, t3 1, leaving 4, the
    # official stage-4 share being the larger part of the run. paper: the official values
    # (25 + 7 + 7 of the 100 epochs; with semi=true 30 + 0 + 5). The presets set the stage lengths
    # for PES-semi as well; its lambda_u ramp (16 epochs) may then be shortened with rampup_epochs.
    presets: ClassVar[dict[str, dict]] = {"quick": {"t1": 6, "t2": 3, "t3": 2}, "paper": {},
                                          "fast": {"t1": 3, "t2": 2, "t3": 1}}

    def __init__(self, model: nn.Module, num_train: int, num_classes: int, t1: int, t2: int = T2_DEFAULT,
                 t3: int = T3_DEFAULT, blocks: int = 1, clean_labels: torch.Tensor | None = None, semi: bool = False,
                 lambda_u: float = SEMI_LAMBDA_U, temperature: float = 0.5, alpha: float = 4.0,
                 rampup_epochs: float = 16.0):
        super().__init__()
        require(num_train >= 1, "PES needs the training-set size (num_train) for its confident split")
        self.model = model
        self.num_train, self.num_classes = num_train, num_classes
        self.t1, self.t2, self.t3 = t1, t2, t3
        self.semi, self.lambda_u, self.temperature, self.alpha = semi, lambda_u, temperature, alpha
        self.rampup_epochs = rampup_epochs
        self.views = 2 if semi else 1  # PES-semi's MixMatch needs two augmented views of every sample
        self._seen, self._num_epochs = 0, 0
        groups = layer_groups(model)
        n_blocks = len(groups) - 1
        require(1 <= blocks <= n_blocks - 1, f"blocks must be in [1, {n_blocks - 1}] for {type(model).__name__} "
                                             f"(the t2 stage keeps at least its first of {n_blocks} blocks), got {blocks}")
        self.blocks = blocks
        self.groups = tuple(groups)  # a tuple: not registered again as submodules of the strategy
        self.clean_labels = clean_labels  # measurement only
        # Parameters the model keeps frozen itself, and those a module schedules itself.
        self._fixed = {id(p) for p in model.parameters() if not p.requires_grad}
        self._scheduled = {id(p) for m in model.modules() if hasattr(m, "begin_epoch") for p in m.parameters(recurse=False)}
        self.register_buffer("confident", torch.ones(num_train, dtype=torch.bool))
        self.register_buffer("class_weight", torch.ones(num_classes))
        self._metrics: dict[str, float] = {}

    @classmethod
    def build(cls, config: PESConfig, ctx):
        if config.semi:
            t1, t2, t3 = SEMI_T1, SEMI_T2, SEMI_T3
        else:
            t1, t2, t3 = (T1_CIFAR100 if ctx.num_classes >= 100 else T1_CIFAR10), T2_DEFAULT, T3_DEFAULT
        t1 = config.t1 if config.t1 is not None else t1
        t2 = config.t2 if config.t2 is not None else t2
        t3 = config.t3 if config.t3 is not None else t3
        epochs = getattr(getattr(ctx.experiment, "train", None), "epochs", None)
        if epochs is not None:
            check_stages(t1, t2, t3, epochs)
        strategy = cls(ctx.new_model(), ctx.num_train, ctx.num_classes, t1, t2, t3, config.blocks,
                       clean_labels=ctx.clean_train_labels, semi=config.semi, lambda_u=config.lambda_u,
                       temperature=config.temperature, alpha=config.alpha, rampup_epochs=config.rampup_epochs)
        strategy.config = PESConfig(t1, t2, t3, config.blocks, config.semi, config.lambda_u, config.temperature,
                                    config.alpha, config.rampup_epochs)
        return strategy

    # ---- stages ------------------------------------------------------------------------------

    def stage(self, epoch: int) -> int:
        """1: whole network, 2: last block(s) + head, 3: head, 4: whole network on confident samples."""
        if epoch < self.t1:
            return 1
        if epoch < self.t1 + self.t2:
            return 2
        if epoch < self.t1 + self.t2 + self.t3:
            return 3
        return 4

    def trainable_groups(self, stage: int) -> list[nn.Module]:
        """Stage 2: the last `blocks` blocks and the head; stage 3: the head; otherwise the whole model."""
        if stage == 2:
            return list(self.groups[-1 - self.blocks:])
        return [self.groups[-1]] if stage == 3 else [self.model]

    def set_trainable(self, modules: list[nn.Module]) -> None:
        """requires_grad True exactly for the parameters of `modules` (less the model's own frozen and scheduled ones)."""
        on = {id(p) for m in modules for p in m.parameters()}
        for p in self.model.parameters():
            if id(p) in self._fixed:
                continue
            if id(p) not in on:
                p.requires_grad_(False)
            elif id(p) not in self._scheduled:
                p.requires_grad_(True)

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        check_stages(self.t1, self.t2, self.t3, num_epochs)
        self._seen, self._num_epochs = 0, num_epochs
        stage = self.stage(epoch)
        if stage == 2 and epoch == self.t1:
            for group in self.groups[-1 - self.blocks:]:
                reinitialise(group)
        if stage == 3 and epoch == self.t1 + self.t2:
            reinitialise(self.groups[-1])
        self.set_trainable(self.trainable_groups(stage))

    # ---- the confident split -----------------------------------------------------------------

    def on_train_pass(self, epoch: int, loader) -> None:
        self._metrics = {}
        if self.stage(epoch) < 4:
            return
        labels = torch.zeros_like(self.confident, dtype=torch.long)
        for x, y, idx in loader:
            self.confident[idx] = self.model(x).argmax(1) == y
            labels[idx] = y
        cap = SEMI_WEIGHT_CAP if self.semi else None
        self.class_weight.copy_(class_weights(labels[self.confident], self.num_classes, cap))
        self._metrics = self.selection_metrics(labels)

    def selection_metrics(self, noisy_labels: torch.Tensor) -> dict[str, float]:
        kept = self.confident
        out = {"clean_fraction": kept.float().mean().item()}
        if self.clean_labels is not None:
            is_clean = self.clean_labels.to(noisy_labels.device) == noisy_labels
            hits = (kept & is_clean).sum().item()
            out["label_precision"] = hits / max(int(kept.sum()), 1)
            out["label_recall"] = hits / max(int(is_clean.sum()), 1)
        return out

    def epoch_metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    # ---- training ----------------------------------------------------------------------------

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        if self.semi:
            require(x.ndim == 5 and x.shape[1] == 2,
                    "PES-semi needs two augmented views per sample: x of shape (N, 2, C, H, W)")
        if self.stage(epoch) < 4:
            logits = self.model(x[:, 0] if self.semi else x)
            return StepOutput(F.cross_entropy(logits.float(), y), logits)
        if self.semi:
            return self.mixmatch_step(x, y, idx, epoch)
        keep = self.confident[idx]
        if not bool(keep.any()):
            logits = self.model(x)
            return StepOutput(logits.float().sum() * 0.0, logits[:0], y[:0])
        logits = self.model(x[keep])
        loss = F.cross_entropy(logits.float(), y[keep], weight=self.class_weight)
        return StepOutput(loss, logits, y[keep])

    # ---- PES-semi ----------------------------------------------------------------------------

    def unlabeled_weight(self, epoch: int, batch_size: int) -> float:
        """lambda_u * clip((t - start) / rampup, 0, 1), t = epoch + fraction of the epoch done before this batch."""
        progress = epoch + self._seen / self.num_train
        self._seen += batch_size
        start = self.t1 + self.t2 + self.t3
        return self.lambda_u * min(max((progress - start) / self.rampup_epochs, 0.0), 1.0)

    def mixmatch_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, epoch: int) -> StepOutput:
        xa, xb = x[:, 0], x[:, 1]
        labeled = self.confident[idx]
        lab, unl = labeled.nonzero().squeeze(1), (~labeled).nonzero().squeeze(1)
        weight = self.unlabeled_weight(epoch, len(y))
        with torch.no_grad():
            if len(unl):
                guess = (self.model(xa[unl]).float().softmax(1) + self.model(xb[unl]).float().softmax(1)) / 2
                targets_u = sharpen(guess, self.temperature)
            else:
                targets_u = torch.zeros(0, self.num_classes, device=x.device)
        onehot = F.one_hot(y[lab], self.num_classes).float()
        inputs = torch.cat([xa[lab], xb[lab], xa[unl], xb[unl]])
        targets = torch.cat([onehot, onehot, targets_u, targets_u])
        alpha = self.alpha if epoch < self._num_epochs / 2 else SEMI_ALPHA_LATE
        lam = mixup_lambda(alpha)
        perm = torch.randperm(len(inputs)).to(inputs.device)
        mixed_inputs = lam * inputs + (1 - lam) * inputs[perm]
        mixed_targets = lam * targets + (1 - lam) * targets[perm]
        logits = self.model(mixed_inputs).float()
        n_x = 2 * len(lab)
        loss = logits.sum() * 0.0
        if n_x:
            per_class = -(F.log_softmax(logits[:n_x], 1) * mixed_targets[:n_x]).mean(0)
            loss = loss + (per_class * self.class_weight).sum()
        if len(unl):
            loss = loss + weight * ((logits[n_x:].softmax(1) - mixed_targets[n_x:]) ** 2).mean()
        return StepOutput(loss, logits[:n_x], mixed_targets[:n_x].argmax(1))
