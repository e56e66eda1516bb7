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
