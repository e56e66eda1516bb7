"""The recipes of studies.supcon per preset (CE baseline, SupCon pretraining, classifier stage) and
the command-line options laid over them."""
from __future__ import annotations

import copy
from dataclasses import dataclass

from robustlab.cli import apply_data_args, apply_momentum_args, apply_train_args
from studies.common import apply_label_noise
from robustlab.errors import UsageError
from robustlab.config import ExperimentConfig, StrategyConfig
from robustlab.settings import SUPCON_HEADS as HEADS, OptimConfig

DEFAULT_HEADS = ("mlp", "linear")


@dataclass
class Presets:
    """The three recipes of a preset (CE baseline, SupCon pretraining, classifier stage) and the
    embedding budget: training features kept for kNN / linear probe, test points in the t-SNE maps."""

    ce: ExperimentConfig
    pretrain: ExperimentConfig
    probe: ExperimentConfig
    bank_size: int
    tsne_points: int


def preset(name: str) -> Presets:
    """quick: small_cnn on 3,000 CIFAR images (1,000 test), minutes on a 2-core CPU: SupCon 20 epochs,
    batch 128, temperature 0.1, Adam 2e-3 with warm-up + cosine; CE 8 epochs (Adam 2e-3); heads
    8 epochs (Adam 1e-2).

    paper: ResNet-18 on the full training set (no validation split). SupCon pretraining 200 epochs,
    batch 512, temperature 0.1, SGD lr 0.357 and weight decay 7e-5: the SupCon recipe's lr 0.5 at batch 1024 scaled
    linearly to 0.25, times 0.1/0.07 because pytorch-metric-learning's loss lacks the official T/0.07 factor
    (weight decay 1e-4 x 0.07/0.1 keeps its step unchanged), plain momentum 0.9 as the official code, with
    10 warm-up epochs and cosine decay (per iteration: warm-up from lr/(10 x steps) rather than the official
    0.01, cosine to 0 rather than lr x 1e-3, counted from the end of the warm-up); classifier stage 25 epochs (Adam 1e-3, cosine); the CE
    baseline 100 epochs (SGD 0.1, weight decay 5e-4, warm-up + cosine), all with crop+flip.
    """
    if name == "fast":
        return fast_presets()
    base = ExperimentConfig()
    base.train.tta = "none"
    if name == "quick":
        base.model = "small_cnn"
        base.data.val_size, base.data.train_size, base.data.test_size = 0, 3000, 1000
        ce = copy.deepcopy(base)
        ce.train.epochs, ce.train.batch_size = 8, 128
        ce.train.optim = OptimConfig(optimizer="adam", lr=2e-3, weight_decay=0.0, schedule="warmup_cosine",
                                     warmup_epochs=0.5)
        pretrain = copy.deepcopy(base)
        # Batch 128 (256 views): twice the steps of 256 in the same time, which matters more this early.
        pretrain.train.epochs, pretrain.train.batch_size = 20, 128
        pretrain.train.optim = OptimConfig(optimizer="adam", lr=2e-3, weight_decay=0.0, schedule="warmup_cosine",
                                           warmup_epochs=0.5)
        pretrain.strategy = StrategyConfig("supcon_pretrain", options={"temperature": 0.1})
        probe = copy.deepcopy(ce)
        probe.train.optim.lr = 1e-2  # a new head on fixed features takes a larger step than a whole network
        return Presets(ce, pretrain, probe, bank_size=3000, tsne_points=1000)
    base.model = "resnet18"
    base.data.val_size = 0
    ce = copy.deepcopy(base)
    ce.train.epochs, ce.train.batch_size = 100, 128
    ce.train.optim = OptimConfig(optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="warmup_cosine", warmup_epochs=2)
    pretrain = copy.deepcopy(base)
    pretrain.train.epochs, pretrain.train.batch_size = 200, 512
    pretrain.train.optim = OptimConfig(optimizer="sgd", lr=0.357, momentum=0.9, nesterov=False, weight_decay=7e-5,
                                       schedule="warmup_cosine", warmup_epochs=10)
    pretrain.strategy = StrategyConfig("supcon_pretrain", options={"temperature": 0.1})
    probe = copy.deepcopy(base)
    probe.train.epochs, probe.train.batch_size = 25, 256
    probe.train.optim = OptimConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="warmup_cosine",
                                    warmup_epochs=1)
    return Presets(ce, pretrain, probe, bank_size=5000, tsne_points=2000)


def fast_presets() -> Presets:
    """fast: airbench on the full training set (no validation split). CE baseline: airbench94's
    10-epoch recipe with its label smoothing 0.2 (robustlab.recipes). SupCon pretraining of the same
    network: 20 epochs, batch 512, Adam 2e-3 with a half-epoch warm-up and cosine decay, crop 2 +
    alternating flip (no published fast SupCon recipe exists; this is the quick preset's optimizer at
    full scale). Classifier stage: 5 epochs of Adam 1e-3 with cosine decay."""
    from robustlab.recipes import FAST_SMOOTHING, apply_fast_recipe

    base = ExperimentConfig()
    base.model, base.data.val_size = "airbench", 0
    apply_fast_recipe(base)
    base.train.tta = "none"
    ce = copy.deepcopy(base)
    ce.strategy = StrategyConfig("ce", options={"smoothing": FAST_SMOOTHING})
    pretrain = copy.deepcopy(base)
    pretrain.train.epochs, pretrain.train.batch_size = 20, 512
    pretrain.train.lookahead.start_epoch = 0  # no lookahead: the recipe's averaging is tuned for CE
    pretrain.train.optim = OptimConfig(optimizer="adam", lr=2e-3, weight_decay=0.0, schedule="warmup_cosine",
                                       warmup_epochs=0.5)
    pretrain.strategy = StrategyConfig("supcon_pretrain", options={"temperature": 0.1})
    probe = copy.deepcopy(base)
    probe.train.epochs, probe.train.batch_size = 5, 512
    probe.train.lookahead.start_epoch = 0
    probe.train.optim = OptimConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="warmup_cosine",
                                    warmup_epochs=0.5)
    return Presets(ce, pretrain, probe, bank_size=5000, tsne_points=2000)


def configure(args) -> tuple[Presets, list[str]]:
    p = preset(args.preset)
    heads = list(DEFAULT_HEADS)
    for head in args.head or []:
        if head not in HEADS:
            raise UsageError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")
        if head not in heads:
            heads.append(head)
    ce_epochs = args.ce_epochs or args.epochs
    for cfg in (p.ce, p.pretrain, p.probe):
        if args.model:
            cfg.model = args.model
        apply_data_args(args, cfg.data)
        apply_label_noise(args, cfg.data)
    for cfg in (p.ce, p.probe):
        apply_train_args(args, cfg.train, cfg.augment)
    if ce_epochs:
        p.ce.train.epochs = ce_epochs
    t = p.pretrain.train
    t.epochs = args.pretrain_epochs or t.epochs
    t.batch_size = args.pretrain_batch_size or t.batch_size
    t.optim.lr = args.pretrain_lr or t.optim.lr
    apply_momentum_args(args, t.optim)  # --momentum / --no-nesterov reach the pretraining optimizer too
    t.precision, t.compile = p.ce.train.precision, p.ce.train.compile
    if args.temperature:
        p.pretrain.strategy.options["temperature"] = args.temperature
    from robustlab.models import require_model  # torch: only once the arguments are read
    require_model(p.ce.model)
    return p, heads
