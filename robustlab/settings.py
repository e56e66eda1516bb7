"""The recipe's typed settings: optimizer and schedule, lookahead, the training loop and the batch
augmentation, each a dataclass validated once, and the names each option accepts.

Nothing here imports torch, so command lines can build their parsers, print --help and reject bad
options without loading it. The modules that use these settings (`robustlab.schedules`,
`robustlab.lookahead`, `robustlab.engine`, `robustlab.data.augment`, `robustlab.evaluate`,
`robustlab.precision`) import them from here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from robustlab.errors import require

SUPCON_HEADS = ("mlp", "linear", "finetune")  # classifier heads on a SupCon encoder (robustlab.strategies.supcon)
TTA_MODES = ("none", "flip", "flip_translate", "mirror_translate")
PRECISIONS = ("auto", "fp32", "bf16")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "multistep", "cosine", "warmup_cosine", "cosine_restarts", "cyclic", "onecycle", "plateau",
             "triangular")


@dataclass
class OptimConfig:
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "warmup_cosine"
    warmup_epochs: float = 1.0     # warmup_cosine
    min_lr: float = 0.0            # floor of the cosine schedules
    step_size: int = 30            # step: epochs between decays
    milestones: list[int] = field(default_factory=lambda: [50, 75])  # multistep: epochs
    gamma: float = 0.1             # step / multistep / plateau decay factor
    t0: int = 10                   # cosine_restarts: first period in epochs
    t_mult: int = 1                # cosine_restarts: period growth factor
    cyclic_base_lr: float = 1e-4   # cyclic (triangular) lower bound; lr is the upper bound
    cyclic_half_epochs: float = 2.0  # cyclic: epochs per half cycle
    plateau_patience: int = 3
    triangle: tuple[float, float, float] = (0.2, 0.23, 0.07)  # triangular: start factor, peak position, end factor
    norm_lr_scale: float = 1.0     # LR multiplier for trainable normalization parameters (airbench's bias_scaler 64)
    decoupled_wd: bool = False     # weight_decay is the per-step decay fraction at the peak LR, whatever lr is

    def validate(self) -> None:
        require(self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        require(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        require(self.lr > 0 and math.isfinite(self.lr), f"learning rate must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        require(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        require(self.t0 >= 1 and self.t_mult >= 1, "cosine restarts need t0 >= 1 and t_mult >= 1")
        require(self.step_size >= 1, f"step size must be >= 1 epoch, got {self.step_size}")
        require(0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}")
        require(self.schedule != "plateau" or self.gamma < 1, "the plateau schedule needs gamma < 1")
        require(self.warmup_epochs >= 0, "warm-up epochs must be >= 0")
        require(self.norm_lr_scale > 0 and math.isfinite(self.norm_lr_scale),
                f"norm LR scale must be > 0, got {self.norm_lr_scale}")
        start, peak, end = self.triangle
        require(0 < peak < 1 and start >= 0 and end >= 0,
                f"triangle needs a peak position in (0, 1) and factors >= 0, got {tuple(self.triangle)}")


@dataclass
class LookaheadConfig:
    start_epoch: int = 0     # 0 = off; airbench94 starts at epoch 3 (counted from 0, i.e. the 4th epoch)
    every: int = 5           # optimizer steps between updates
    decay: float = 0.95      # per-step decay base
    power: float = 3.0       # rho grows as (t / T) ** power

    def validate(self) -> None:
        require(self.start_epoch >= 0, f"lookahead start epoch must be >= 0, got {self.start_epoch}")
        require(self.every >= 1, f"lookahead every must be >= 1 step, got {self.every}")
        require(0 <= self.decay <= 1, f"lookahead decay must be in [0, 1], got {self.decay}")
        require(self.power >= 0, f"lookahead power must be >= 0, got {self.power}")

    @property
    def enabled(self) -> bool:
        return self.start_epoch > 0


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    optim: OptimConfig = field(default_factory=OptimConfig)
    precision: str = "auto"       # auto | fp32 | bf16 (robustlab.precision: auto = bf16 where native)
    channels_last: bool = True    # channels_last where the policy picks it (bf16; fp32 conv nets on CPU under auto)
    compile: bool = False         # torch.compile the networks
    early_stop_patience: int = 0  # epochs without validation improvement before stopping; 0 = never
    tta: str = "flip"             # extra final test evaluation with test-time augmentation
    grad_clip: float = 0.0        # max global grad norm; 0 = off
    nan_check_every: int = 50     # steps between (synchronizing) checks for a non-finite loss
    lookahead: LookaheadConfig = field(default_factory=LookaheadConfig)  # airbench's EMA weights; off by default
    drop_last: bool = False       # drop the last partial training batch (airbench does)
    record_dynamics: bool = False  # per-sample loss and margin after every epoch -> dynamics.npz (robustlab.dynamics)

    def validate(self) -> None:
        require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}")
        require(self.precision in PRECISIONS,
                f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        require(self.tta in TTA_MODES, f"unknown TTA mode {self.tta!r}; choose one of {', '.join(TTA_MODES)}")
        require(self.early_stop_patience >= 0, "early-stop patience must be >= 0")
        self.optim.validate()
        self.lookahead.validate()


PAD_MODES = ("reflect", "zeros")
FLIP_MODES = ("random", "alternate")


@dataclass
class AugmentConfig:
    crop_pad: int = 4          # random crop from a padded image; 0 disables (also "translate")
    pad_mode: str = "reflect"  # reflect | zeros
    flip: bool = True          # horizontal flip with probability 1/2
    flip_mode: str = "random"  # random | alternate (airbench: each image mirrored in every other epoch)
    cutout: int = 0            # side of the zeroed square (DeVries & Taylor 2017); 0 disables
    rotate: float = 0.0        # max degrees of random rotation (report 003 uses 15)
    shear: float = 0.0         # max degrees of random shear
    zoom: float = 0.0          # random scale in [1 - zoom, 1 + zoom]
    jitter: float = 0.0        # colour jitter strength for brightness/contrast/saturation

    def validate(self) -> None:
        require(self.crop_pad >= 0, f"crop padding must be >= 0, got {self.crop_pad}")
        require(self.flip_mode in FLIP_MODES,
                f"unknown flip mode {self.flip_mode!r}; choose {' or '.join(FLIP_MODES)}")
        require(self.pad_mode in PAD_MODES, f"unknown pad mode {self.pad_mode!r}; choose {' or '.join(PAD_MODES)}")
        require(self.cutout >= 0, f"cutout size must be >= 0, got {self.cutout}")
        require(0 <= self.zoom < 1, f"zoom must be in [0, 1), got {self.zoom}")
        require(0 <= self.jitter < 1, f"colour jitter must be in [0, 1), got {self.jitter}")
        require(self.rotate >= 0 and self.shear >= 0, "rotation and shear must be >= 0 degrees")
