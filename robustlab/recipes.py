"""Named training recipes: what `robustlab.train --recipe` and the studies' presets start from.

`fast` is airbench94's recipe (Jordan 2024, KellerJordan/cifar10-airbench airbench94.py) on any
model: batch 1024, 10 epochs, Nesterov SGD (momentum 0.85) with decoupled weight decay and a 64x
LR for normalization parameters, the triangular schedule (0.2 -> 1 at 23% -> 0.07), label smoothing
0.2, lookahead weights from epoch 3, alternating flip + 2-pixel reflect translation, TTA level 2.

The official hyperparameters are per 1,024 examples of a *summed* loss (lr 11.5, wd 0.0153, scaled
by 1 / (1024 * (1 + 1 / (1 - momentum)))); robustlab's strategies return a *mean* loss, so the same
steps are lr = 11.5 * 1024 / kilostep = 1.5 and a per-step decay of 0.0153 * 1024 / kilostep.
Deviations: 10 whole epochs where the official script stops at 9.9; the first epoch's flips come
from an index hash instead of a random draw (robustlab.data.augment.alternating_flip_mask).
"""
from __future__ import annotations

from robustlab.config import ExperimentConfig
from robustlab.errors import UsageError
from robustlab.settings import LookaheadConfig, OptimConfig

RECIPES = ("default", "fast")
PRESETS = ("quick", "paper", "fast")  # the studies' --preset
QUICK_WIDTH = 16  # airbench_s base width of the noisy-label quick preset (README: demo trade-off table)

FAST_BATCH = 1024
FAST_MOMENTUM = 0.85
_KILOSTEP = 1024 * (1 + 1 / (1 - FAST_MOMENTUM))
FAST_LR = 11.5 * FAST_BATCH / _KILOSTEP           # = 1.5 for a mean loss over 1,024 images
FAST_DECAY = 0.0153 * FAST_BATCH / _KILOSTEP      # weight decay per step at the peak LR
FAST_SMOOTHING = 0.2


def apply_fast_recipe(cfg: ExperimentConfig, epochs: int = 10, batch_size: int = FAST_BATCH) -> ExperimentConfig:
    """Set `cfg`'s training recipe to airbench94's (in place; the model and data are left alone).

    A `batch_size` other than 1,024 keeps the official per-example hyperparameters: the mean-loss LR
    and the per-step decay both scale with batch_size / 1024 (small training sets need smaller
    batches to take enough steps)."""
    t = cfg.train
    scale = batch_size / FAST_BATCH
    t.epochs, t.batch_size, t.drop_last, t.tta = epochs, batch_size, True, "mirror_translate"
    t.optim = OptimConfig(optimizer="sgd", lr=FAST_LR * scale, momentum=FAST_MOMENTUM, nesterov=True,
                          weight_decay=FAST_DECAY * scale, decoupled_wd=True, norm_lr_scale=64.0,
                          schedule="triangular", triangle=(0.2, 0.23, 0.07))
    t.lookahead = LookaheadConfig(start_epoch=3, every=5, decay=0.95, power=3.0)
    a = cfg.augment
    a.crop_pad, a.pad_mode, a.flip, a.flip_mode = 2, "reflect", True, "alternate"
    a.cutout, a.rotate, a.shear, a.zoom, a.jitter = 0, 0.0, 0.0, 0.0, 0.0
    return cfg


def apply_recipe(cfg: ExperimentConfig, name: str) -> ExperimentConfig:
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    if name == "fast":
        apply_fast_recipe(cfg)
        if cfg.strategy.name == "ce":
            cfg.strategy.options.setdefault("smoothing", FAST_SMOOTHING)
    return cfg


def fast_config(model: str = "airbench") -> ExperimentConfig:
    """The fast preset: `model` (airbench by default) with airbench94's recipe on the 45k/5k split,
    10 epochs, plain cross-entropy (the recipe's label smoothing is left to the arms)."""
    cfg = ExperimentConfig()
    cfg.model, cfg.data.val_size = model, 5000
    return apply_fast_recipe(cfg)


def noisy_label_preset(name: str) -> ExperimentConfig:
    """The noisy-label presets (studies.noisy_labels, robustlab.labelissues). quick: airbench_s at
    width 16 (0.13M parameters) on 5,000 images for 20 epochs with airbench94's recipe scaled to
    batch 256, flip only: about 2.5 minutes for the demo's three arms on a 2-core CPU. paper:
    PreAct ResNet-18 on 45k images. fast: airbench with its 10-epoch recipe on 45k images (each
    method's `presets["fast"]` scales its own schedule to the 10 epochs). No TTA in any of them."""
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if name == "fast":
        cfg = fast_config()
    elif name == "quick":
        cfg = ExperimentConfig()
        cfg.model, cfg.model_kwargs = "airbench_s", {"width": QUICK_WIDTH}
        cfg.data.train_size, cfg.data.val_size, cfg.data.test_size = 5000, 500, 2000
        apply_fast_recipe(cfg, epochs=20, batch_size=256)
        cfg.augment.crop_pad = 0  # flip only: lets plain CE memorize the noise within the budget
    else:
        cfg = ExperimentConfig()
        cfg.model = "preact_resnet18"
        cfg.data.val_size = 5000
        cfg.train.epochs, cfg.train.batch_size = 100, 128
        cfg.train.optim = OptimConfig(optimizer="sgd", lr=0.02, weight_decay=5e-4, schedule="warmup_cosine",
                                      warmup_epochs=2)
    cfg.train.tta = "none"
    return cfg


def recipe_parts(cfg: ExperimentConfig, strategy_options: dict | None = None) -> list[str]:
    """The recipe parts a run uses, in words, for its record (whichever recipe set them)."""
    t, o, a = cfg.train, cfg.train.optim, cfg.augment
    parts = [f"{o.optimizer}{' nesterov' if o.optimizer == 'sgd' and o.nesterov and o.momentum > 0 else ''}",
             f"schedule {o.schedule}" + (f" {tuple(o.triangle)}" if o.schedule == "triangular" else "")]
    if o.decoupled_wd:
        parts.append("decoupled weight decay")
    if o.norm_lr_scale != 1.0:
        parts.append(f"normalization-parameter LR x{o.norm_lr_scale:g}")
    smoothing = (strategy_options or {}).get("smoothing") or 0.0
    if smoothing:
        parts.append(f"label smoothing {smoothing:g}")
    if t.lookahead.enabled:
        parts.append(f"lookahead from epoch {t.lookahead.start_epoch} every {t.lookahead.every} steps")
    if a.flip:
        parts.append("alternating flip" if a.flip_mode == "alternate" else "random flip")
    if a.crop_pad:
        parts.append(f"{a.crop_pad}-pixel {a.pad_mode} translation")
    if t.drop_last:
        parts.append("drop last partial batch")
    parts.append(f"TTA {t.tta}")
    return parts
