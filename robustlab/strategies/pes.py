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

Official defaults: T1 = 25 (CIFAR-10, ResNet-18) / 30 (CIFAR-100, ResNet-34), T2 = T3 = 7
(refine_times_2 = refine_times_1 = 7; the paper reports T2 = 7, T3 = 5), a stage for the last two
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

Per-sample state: the confident mask and the class weights are buffers (`confident`,
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
- PES-semi (MixMatch on the confident/unconfident split, PES_semi.py) is not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import require
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.registry import register_strategy

T1_CIFAR10, T1_CIFAR100 = 25, 30  # official warm-up: 25 (CIFAR-10), 30 (CIFAR-100)
T2_DEFAULT = T3_DEFAULT = 7        # official refine_times_2 (last block + head), refine_times_1 (head)

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


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """mean(n) / n_c over the confident samples' labels, the mean over classes present; 0 for absent classes."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    present = counts > 0
    weights = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
    if present.any():
        weights[present] = counts[present].mean() / counts[present]
    return weights.float()


@dataclass
class PESConfig:
    t1: int | None = None  # epochs of the whole network; None = official 25 (30 for >= 100 classes)
    t2: int = T2_DEFAULT   # epochs of the re-initialised last block(s) and head, the rest frozen
    t3: int = T3_DEFAULT   # epochs of the re-initialised head, the rest frozen
    blocks: int = 1        # blocks before the head re-initialised and trained in the t2 stage

    def validate(self) -> None:
        require(self.t1 is None or self.t1 >= 1, f"t1 must be >= 1 epoch, got {self.t1}")
        require(self.t2 >= 0, f"t2 must be >= 0 epochs, got {self.t2}")
        require(self.t3 >= 0, f"t3 must be >= 0 epochs, got {self.t3}")
        require(self.blocks >= 1, f"blocks must be >= 1, got {self.blocks}")


def check_stages(t1: int, t2: int, t3: int, epochs: int) -> None:
    """One line unless the stages fit the run's epochs."""
    require(t1 + t2 + t3 <= epochs, f"pes stages t1 + t2 + t3 = {t1} + {t2} + {t3} = {t1 + t2 + t3} epochs do not "
                                    f"fit the run's {epochs} epochs: lower t1, t2 or t3 (or train longer)")


@register_strategy("pes")
class PES(Strategy):
    """PES (Bai et al. 2021): whole network for t1 epochs, then the re-initialised last block(s)+head and head alone, then confident samples.

    See the module docstring for the method, the official constants and every deviation."""

    Config = PESConfig
    needs_train_pass = True  # stage 4 predicts every training sample before each epoch
    unused_parameters = True  # frozen groups get no gradient in stages 2 and 3
    # Options for the noisy-label study. quick (20 epochs of a small CNN with Adam, where CE starts
    # memorising the noise within ~10 epochs): t1 6, t2 3, t3 2, leaving 9 confident-sample epochs.
    # fast (airbench, 10 epochs; ~80% clean accuracy after 3): t1 3, t2 2, t3 1, leaving 4, the
    # official stage-4 share being the larger part of the run. paper: the official values
    # (25 + 7 + 7 of the 100 epochs).
    presets: ClassVar[dict[str, dict]] = {"quick": {"t1": 6, "t2": 3, "t3": 2}, "paper": {},
                                          "fast": {"t1": 3, "t2": 2, "t3": 1}}

    def __init__(self, model: nn.Module, num_train: int, num_classes: int, t1: int, t2: int = T2_DEFAULT,
                 t3: int = T3_DEFAULT, blocks: int = 1, clean_labels: torch.Tensor | None = None):
        super().__init__()
        require(num_train >= 1, "PES needs the training-set size (num_train) for its confident split")
        self.model = model
        self.num_classes = num_classes
        self.t1, self.t2, self.t3 = t1, t2, t3
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
        t1 = config.t1 if config.t1 is not None else (T1_CIFAR100 if ctx.num_classes >= 100 else T1_CIFAR10)
        epochs = getattr(getattr(ctx.experiment, "train", None), "epochs", None)
        if epochs is not None:
            check_stages(t1, config.t2, config.t3, epochs)
        strategy = cls(ctx.new_model(), ctx.num_train, ctx.num_classes, t1, config.t2, config.t3, config.blocks,
                       clean_labels=ctx.clean_train_labels)
        strategy.config = PESConfig(t1, config.t2, config.t3, config.blocks)
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
        if epoch == 0:
            check_stages(self.t1, self.t2, self.t3, num_epochs)
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
        self.class_weight.copy_(class_weights(labels[self.confident], self.num_classes))
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
        if self.stage(epoch) < 4:
            logits = self.model(x)
            return StepOutput(F.cross_entropy(logits.float(), y), logits)
        keep = self.confident[idx]
        if not bool(keep.any()):
            logits = self.model(x)
            return StepOutput(logits.float().sum() * 0.0, logits[:0], y[:0])
        logits = self.model(x[keep])
        loss = F.cross_entropy(logits.float(), y[keep], weight=self.class_weight)
        return StepOutput(loss, logits, y[keep])

