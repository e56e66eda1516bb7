"""Optimizers and learning-rate schedules, built from torch.optim and stepped once per iteration.

Epoch-denominated settings (warm-up, step size, milestones, restart period) are converted to
iterations, so every schedule changes the LR smoothly within an epoch. `plateau` is the one
exception: it steps once per epoch on the validation loss.

Schedules change the learning rate only: `cyclic` and `onecycle` keep the configured momentum
(SGD) and betas (Adam) instead of PyTorch's default momentum cycling (0.95 -> 0.85 -> 0.95), so
`--momentum` means the same under every schedule.
"""
from __future__ import annotations

import math

import torch

from robustlab.errors import UsageError
from robustlab.settings import OPTIMIZERS, SCHEDULES, OptimConfig  # noqa: F401  (re-exported)


def param_groups(module: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    """The trainable parameters as optimizer groups: normalization-layer parameters apart when
    `norm_lr_scale` != 1 (their LR is scaled, their decay strength is not: weight decay / scale).

    With `decoupled_wd`, torch's coupled coefficient is weight_decay / lr, so every step decays the
    weights by the fraction weight_decay (times the schedule's factor), as airbench's hyperparameters mean it."""
    norm_types = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
    norm_ids = {id(p) for m in module.modules() if isinstance(m, norm_types) for p in m.parameters(recurse=False)}
    trainable = [p for p in module.parameters() if p.requires_grad]
    wd = cfg.weight_decay / cfg.lr if cfg.decoupled_wd else cfg.weight_decay
    if cfg.norm_lr_scale == 1.0:
        return [{"params": trainable, "lr": cfg.lr, "weight_decay": wd}]
    norms = [p for p in trainable if id(p) in norm_ids]
    others = [p for p in trainable if id(p) not in norm_ids]
    groups = [{"params": others, "lr": cfg.lr, "weight_decay": wd},
              {"params": norms, "lr": cfg.lr * cfg.norm_lr_scale, "weight_decay": wd / cfg.norm_lr_scale}]
    return [g for g in groups if g["params"]]


def triangle_factor(step: int, total: int, start: float, peak: float, end: float) -> float:
    """airbench's triangle(): linear from `start` at step 0 to 1 at int(peak * total), then to `end` at `total`."""
    top = int(peak * total)
    if step <= top:
        return start + (1 - start) * step / max(top, 1)
    return 1 + (end - 1) * min(step - top, total - top) / max(total - top, 1)


def build_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """`params`: tensors, or groups from `param_groups` (each with its own lr and weight decay)."""
    cfg.validate()
    params = list(params)
    if params and not isinstance(params[0], dict) and cfg.decoupled_wd:
        params = [{"params": params, "weight_decay": cfg.weight_decay / cfg.lr}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def warmup_cosine_factor(step: int, warmup: int, total: int, min_factor: float = 0.0) -> float:
    """Linear warm-up from ~0 to 1 over `warmup` steps, then cosine decay to `min_factor` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, steps_per_epoch: int):
    """Return a torch LR scheduler; call `.step()` after every iteration (plateau: every epoch, with val loss)."""
    from torch.optim import lr_scheduler as S

    total = epochs * steps_per_epoch
    spe = steps_per_epoch
    if cfg.schedule == "constant":
        return S.LambdaLR(optimizer, lambda step: 1.0)
    if cfg.schedule == "step":
        return S.StepLR(optimizer, step_size=cfg.step_size * spe, gamma=cfg.gamma)
    if cfg.schedule == "multistep":
        return S.MultiStepLR(optimizer, milestones=[m * spe for m in cfg.milestones], gamma=cfg.gamma)
    if cfg.schedule == "cosine":
        return S.CosineAnnealingLR(optimizer, T_max=total, eta_min=cfg.min_lr)
    if cfg.schedule == "warmup_cosine":
        warm = round(cfg.warmup_epochs * spe)
        floor = cfg.min_lr / cfg.lr
        return S.LambdaLR(optimizer, lambda step: warmup_cosine_factor(step, warm, total, floor))
    if cfg.schedule == "cosine_restarts":
        return S.CosineAnnealingWarmRestarts(optimizer, T_0=cfg.t0 * spe, T_mult=cfg.t_mult, eta_min=cfg.min_lr)
    if cfg.schedule == "cyclic":
        return S.CyclicLR(optimizer, base_lr=cfg.cyclic_base_lr, max_lr=cfg.lr, mode="triangular",
                          step_size_up=max(1, round(cfg.cyclic_half_epochs * spe)),
                          cycle_momentum=False)  # keep the chosen momentum: only the LR cycles
    if cfg.schedule == "onecycle":
        return S.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(total, 2),
                            cycle_momentum=False)  # keep the chosen momentum: only the LR cycles
    if cfg.schedule == "triangular":
        return S.LambdaLR(optimizer, lambda step: triangle_factor(step, total, *cfg.triangle))
    if cfg.schedule == "plateau":
        return S.ReduceLROnPlateau(optimizer, factor=cfg.gamma, patience=cfg.plateau_patience)
    raise UsageError(f"unknown schedule {cfg.schedule!r}")


def steps_per_iteration(cfg: OptimConfig) -> bool:
    """True when the scheduler steps every iteration (all but plateau)."""
    return cfg.schedule != "plateau"
