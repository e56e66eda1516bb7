"""The ablation grids of studies.regularization; each arm's tag is `<ablation>-<arm>`.

Ablations and arms (each arm a variant of the "all combined" recipe unless stated):
  basic     none, l2, dropout, l2_dropout, augment, all   (each component alone, then together)
  augment   basic, basic_cutout, basic_smoothing
  schedule  constant, cosine_restarts_T<t0>x<mult> (several), warmup_cosine, step, cyclic
  arch      pool_fc, then strided convolutions with an FC or a GAP head over dropout x lambda
            (quick: the GAP head over the grid, the FC head at the basic dropout and lambda)
  norm      bn, gn, ln, in
Lambda is the reports' L2 coefficient (weight decay = 2 lambda). Batch normalization stays on in
every arm except those of the norm ablation.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass

from robustlab.errors import UsageError
from robustlab.config import ExperimentConfig

ABLATIONS = ("basic", "augment", "schedule", "arch", "norm")
NORMS = ("bn", "gn", "ln", "in")


@dataclass
class Settings:
    """The study's knobs beyond one run's config: regularizer strengths and per-ablation grids."""
    lam: float                      # L2 coefficient of the L2 arms (weight decay = 2 lam)
    dropout: float                  # dropout rate of the dropout arms
    cutout: int                     # side of the cutout square of the augment ablation
    smoothing: float                # label smoothing epsilon of the augment ablation
    basic_epochs: int               # budget of the basic ablation (report 000: 30 epochs)
    epochs: int                     # budget of every other ablation (report 000: 50 epochs)
    arch_dropouts: tuple[float, ...]
    arch_lams: tuple[float, ...]
    arch_fc_grid: bool = True       # FC head over the whole grid too (else only at dropout/lam, as report 000)
    gap_lr_scale: float = 1.0       # GAP head: learning rate x this (report 000 used 0.005 vs 0.001)
    # Schedule ablation, in epochs of a 50-epoch budget (scaled to `epochs`):
    restarts: tuple[tuple[int, int], ...] = ((10, 2), (15, 2), (20, 1))  # (T0, Tmult), report 000 table 3
    warmup: float = 2.0
    step_every: int = 10            # step decay by 0.1 every 10 epochs (report 002)
    cyclic_half: float = 5.0        # epochs per half cycle of the triangular cyclic LR
    cyclic_ratio: float = 60.0      # cyclic LR range lr / ratio .. lr (report 002: 5e-5 .. 3e-3)
    min_lr_ratio: float = 0.01      # floor of the cosine schedules: lr / 100 (report 000: 1e-3 -> 1e-5)
    reference_epochs: int = 50


# ---- arms ------------------------------------------------------------------------------------

def _arm(base: ExperimentConfig, ablation: str, arm: str, seed: int, *, lam: float, dropout: float,
         augment: bool = True, epochs: int | None = None, **model_kwargs) -> ExperimentConfig:
    cfg = copy.deepcopy(base)
    cfg.tag, cfg.seed = f"{ablation}-{arm}", seed
    cfg.train.optim.weight_decay = 2 * lam
    cfg.model_kwargs = {**cfg.model_kwargs, "dropout": dropout, **model_kwargs}
    if not augment:
        a = cfg.augment
        a.crop_pad, a.flip, a.cutout, a.rotate, a.shear, a.zoom, a.jitter = 0, False, 0, 0.0, 0.0, 0.0, 0.0
    if epochs is not None:
        cfg.train.epochs = epochs
    return cfg


def _scaled(epochs_ref: float, s: Settings, epochs: int, minimum: float = 1) -> float:
    return max(minimum, epochs_ref * epochs / s.reference_epochs)


def build_arms(ablation: str, base: ExperimentConfig, s: Settings, seeds: list[int]) -> list[ExperimentConfig]:
    """The configs of one ablation (seeds outer, arms inner); each arm's tag is `<ablation>-<arm>`."""
    if ablation not in ABLATIONS:
        raise UsageError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)} or all")
    lam, p = s.lam, s.dropout
    out = []
    for seed in seeds:
        def arm(name, **kw):
            out.append(_arm(base, ablation, name, seed, **kw))

        if ablation == "basic":
            e = s.basic_epochs
            arm("none", lam=0.0, dropout=0.0, augment=False, epochs=e)
            arm("l2", lam=lam, dropout=0.0, augment=False, epochs=e)
            arm("dropout", lam=0.0, dropout=p, augment=False, epochs=e)
            arm("l2_dropout", lam=lam, dropout=p, augment=False, epochs=e)
            arm("augment", lam=0.0, dropout=0.0, augment=True, epochs=e)
            arm("all", lam=lam, dropout=p, augment=True, epochs=e)
        elif ablation == "augment":
            arm("basic", lam=lam, dropout=p, epochs=s.epochs)
            arm("basic_cutout", lam=lam, dropout=p, epochs=s.epochs)
            out[-1].augment.cutout = s.cutout
            arm("basic_smoothing", lam=lam, dropout=p, epochs=s.epochs)
            out[-1].strategy.options["smoothing"] = s.smoothing
        elif ablation == "schedule":
            out.extend(_schedule_arms(base, s, seed))
        elif ablation == "arch":
            arm("pool_fc", lam=lam, dropout=p, epochs=s.epochs, downsample="pool", head="fc")
            for head in ("fc", "gap"):
                grid = [(d, x) for d in s.arch_dropouts for x in s.arch_lams]
                for drop, l2 in grid if head == "gap" or s.arch_fc_grid else [(p, lam)]:
                    arm(f"stride_{head}_p{drop:g}_lam{l2:g}", lam=l2, dropout=drop, epochs=s.epochs,
                        downsample="stride", head=head)
                    if head == "gap":
                        out[-1].train.optim.lr *= s.gap_lr_scale
        else:  # norm
            for norm in NORMS:
                arm(norm, lam=lam, dropout=p, epochs=s.epochs, norm=norm)
    return out


def _schedule_arms(base: ExperimentConfig, s: Settings, seed: int) -> list[ExperimentConfig]:
    e = s.epochs
    lr = base.train.optim.lr

    def arm(name: str, **optim) -> ExperimentConfig:
        cfg = _arm(base, "schedule", name, seed, lam=s.lam, dropout=s.dropout, epochs=e)
        for key, value in optim.items():
            setattr(cfg.train.optim, key, value)
        return cfg

    arms = [arm("constant", schedule="constant")]
    seen = set()
    for t0, mult in s.restarts:
        t0 = round(_scaled(t0, s, e))
        if (t0, mult) not in seen:  # short budgets can map two settings onto one
            seen.add((t0, mult))
            arms.append(arm(f"cosine_restarts_T{t0}x{mult}", schedule="cosine_restarts", t0=t0, t_mult=mult,
                            min_lr=lr * s.min_lr_ratio))
    arms.append(arm("warmup_cosine", schedule="warmup_cosine", warmup_epochs=_scaled(s.warmup, s, e, 0.0),
                    min_lr=lr * s.min_lr_ratio))
    arms.append(arm("step", schedule="step", step_size=round(_scaled(s.step_every, s, e)), gamma=0.1))
    arms.append(arm("cyclic", schedule="cyclic", cyclic_base_lr=lr / s.cyclic_ratio,
                    cyclic_half_epochs=_scaled(s.cyclic_half, s, e, 0.5)))
    return arms


def arm_name(cfg: ExperimentConfig) -> str:
    return cfg.tag.split("-", 1)[1]


def ablation_of(cfg: ExperimentConfig) -> str:
    return cfg.tag.split("-", 1)[0]


def describe(cfg: ExperimentConfig) -> str:
    """The arm's regularization recipe in one short line."""
    o, a, kw = cfg.train.optim, cfg.augment, cfg.model_kwargs
    aug = "+".join([*(["flip"] if a.flip else []), *([f"crop{a.crop_pad}"] if a.crop_pad else []),
                    *([f"cutout{a.cutout}"] if a.cutout else [])]) or "none"
    parts = [f"lambda={o.weight_decay / 2:g}", f"dropout={kw.get('dropout', 0):g}", f"aug={aug}"]
    smoothing = cfg.strategy.options.get("smoothing", 0)
    if smoothing:
        parts.append(f"smoothing={smoothing:g}")
    sched = o.schedule
    if sched == "cosine_restarts":
        sched += f"(T0={o.t0},Tmult={o.t_mult})"
    elif sched == "step":
        sched += f"(every {o.step_size},x{o.gamma:g})"
    parts.append(f"lr={o.lr:g} {sched}")
    parts += [f"{k}={kw[k]}" for k in ("norm", "downsample", "head") if k in kw]
    return " ".join(parts)


def check_models(configs: list[ExperimentConfig]) -> None:
    """Build each distinct (model, kwargs) once, so an arm the model cannot express fails before training."""
    from robustlab.models import create_model

    seen = set()
    for cfg in configs:
        key = (cfg.model, json.dumps(cfg.model_kwargs, sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        try:
            create_model(cfg.model, num_classes=10, **cfg.model_kwargs)
        except TypeError as exc:
            hint = " (the arch ablation needs a VGG: --model vgg3)" if ablation_of(cfg) == "arch" else ""
            raise UsageError(f"model {cfg.model!r} cannot build arm {arm_name(cfg)!r} of the {ablation_of(cfg)} "
                             f"ablation with {cfg.model_kwargs}: {exc}{hint}") from None
