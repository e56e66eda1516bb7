"""The interface shared by every training strategy.

A strategy owns its network(s) and turns one training batch into a loss. The engine
(`robustlab.engine.fit`) owns everything else: optimizer, schedule, autocast, checkpoints,
evaluation and run records. Because a strategy is an `nn.Module`, its `parameters()` and
`state_dict()` cover all of its networks and buffers, so checkpoints, resume and optimizers need
no special cases: per-sample state (e.g. ELR's target memory) is a buffer indexed by the
loader's dataset indices and survives checkpoint/resume like any weight.

A strategy plugs into the engine through class attributes and hooks:

- `Config`: a dataclass of its options, validated once (`validate()`), built by the registry
  from keyword arguments or `--strategy-arg key=value` pairs;
- `build(config, ctx)`: constructs the strategy from its config and a `BuildContext` (a model
  factory for as many networks as it needs, class count, training-set size, noise prior);
- `views`: images per sample in a training batch (x is (N, V, C, H, W) when V > 1);
  `train_augment(default, splits)` may replace the augmentation altogether;
- `needs_train_pass`: `on_train_pass(epoch, loader)` is called before each epoch with the whole
  (noisy) training set, unaugmented, in a fixed order (DivideMix's per-sample-loss GMM);
- `on_epoch_start`, `epoch_metrics`, `extra_predictors`: per-epoch state, logged numbers and
  extra networks to evaluate;
- `warmup_length()`: the epochs before the method's own mechanism first acts (DivideMix's CE
  warm-up, truncated GCE's epochs before its first pruning); the engine warns, and the run record
  says, when a run is no longer than that, since it then never trains the method at all.
- `after_step`: called after every optimizer step, before the LR schedule steps (weight
  averages of the updated weights, e.g. ELR+'s mean-teacher copies).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from robustlab.strategies.registry import BuildContext


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar to back-propagate
    logits: torch.Tensor | None = None  # (N, C) for train accuracy; None when the step has no classifier
    targets: torch.Tensor | None = None  # labels matching logits when they are not the batch labels


@dataclass
class NoOptions:
    """The config of a strategy without options."""

    def validate(self) -> None:
        pass


class Strategy(nn.Module):
    """Subclasses implement `train_step` (and `build` to be created by name); `predict` defaults
    to the main network's logits."""

    name: ClassVar[str] = ""               # set by @register_strategy
    Config: ClassVar[type] = NoOptions     # the options dataclass
    views: ClassVar[int] = 1               # augmented views per sample in a training batch
    needs_train_pass: ClassVar[bool] = False  # call on_train_pass with the whole training set each epoch
    classifies: ClassVar[bool] = True      # False: the engine skips classification metrics (pretraining)
    presets: ClassVar[dict[str, dict]] = {}  # study preset ("quick", "paper", "fast") -> this method's recipe options
    unused_parameters = False  # True when a step leaves some trainable parameters without gradient (DDP needs to know)

    model: nn.Module
    config: object | None = None           # the resolved config, written to the run record

    @classmethod
    def build(cls, config, ctx: "BuildContext") -> "Strategy":
        """Construct from a validated `config` and the run's `ctx`."""
        raise NotImplementedError(f"{cls.__name__} does not define build(config, ctx)")

    def options(self) -> dict:
        """The resolved options (e.g. a forget rate taken from the noise rate), for the run record."""
        return asdict(self.config) if self.config is not None else {}

    def train_augment(self, default, splits):
        """The training augmentation: `default` is the run's BatchAugment (already repeated to
        `views` views when views > 1)."""
        return default

    def on_train_pass(self, epoch: int, loader) -> None:
        """With `needs_train_pass`: called in eval mode, under no_grad, before epoch `epoch` with a
        loader over the whole training set (noisy labels, no augmentation, dataset order)."""

    def warmup_length(self) -> int:
        """Epochs at the start of a run during which the method's own mechanism does not act yet
        (0: it acts from the first epoch); a run of at most this many epochs never leaves its warm-up."""
        return 0

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called before each training epoch (0-based); reset per-epoch state here."""

    def train_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, epoch: int) -> StepOutput:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, epoch: int) -> StepOutput:
        """A training step, so that DistributedDataParallel can wrap the whole strategy."""
        return self.train_step(x, y, idx, epoch)

    def after_step(self) -> None:
        """Called after every optimizer step (the weights are the updated ones), before the LR
        schedule and the lookahead step."""

    def epoch_metrics(self) -> dict[str, float]:
        """Extra per-epoch numbers for the history (e.g. Co-Teaching's label precision)."""
        return {}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def extra_predictors(self) -> dict[str, nn.Module]:
        """Other networks worth evaluating separately, by name (e.g. {'net2': ...})."""
        return {}
