"""Which regularizers, augmentations, LR schedules, architecture tweaks and normalizations help VGG-3?

    python -m studies.regularization --ablation basic|augment|schedule|arch|norm|all [--preset paper]

Reproduces report 000's tables 1-4 (VGG-3 regularization, extra augmentation, LR schedules,
strided convolutions and GAP head), report 002's section 5.1 (warm-up + cosine, step decay,
cyclic LR) and report 001's normalization comparison (BN / GroupNorm / LayerNorm / InstanceNorm).
Every arm of an ablation shares model, data and budget; only the studied component changes.

Ablations and arms (each arm a variant of the "all combined" recipe unless stated):
  basic     none, l2, dropout, l2_dropout, augment, all   (each component alone, then together)
  augment   basic, basic_cutout, basic_smoothing
  schedule  constant, cosine_restarts_T<t0>x<mult> (several), warmup_cosine, step, cyclic
  arch      pool_fc, then strided convolutions with an FC or a GAP head over dropout x lambda
            (quick: the GAP head over the grid, the FC head at the basic dropout and lambda)
  norm      bn, gn, ln, in

Lambda is the reports' L2 coefficient: cost = loss + lambda * sum(W^2), weight decay = 2 lambda.
Batch normalization stays on in every arm except those of the norm ablation. Each ablation writes
table_<ablation>.md/csv (arm, setting, test accuracy, loss, cost, TTA accuracy, ECE, training
seconds; mean ± std over seeds), runs_<ablation>.csv (one row per run) and test_acc_<ablation>.png.
"""
from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass

from robustlab.cli import apply_data_args, apply_train_args, context_from_args, unit_rate
from robustlab.errors import UsageError, cli_entry
from robustlab.experiment import ExperimentConfig
from robustlab.models import require_model
from robustlab.schedules import OptimConfig
from robustlab.train import parse_model_args
from studies.common import (aggregate, history_rows, output_dirs, plot_curves, run_grid, should_tabulate, study_parser,
                            write_table)

ABLATIONS = ("basic", "augment", "schedule", "arch", "norm")
COLUMNS = ["arm", "setting", "test_acc", "test_loss", "test_cost", "test_acc_tta", "test_ece", "train_seconds"]
KEYS = ["arm", "setting"]
NORMS = ("bn", "gn", "ln", "in")

QUICK_MODEL = ("vgg3", {"widths": [16, 32, 64]})  # a narrow VGG-3: minutes per ablation on a CPU


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


def preset(name: str) -> tuple[ExperimentConfig, Settings]:
    """quick: a narrow VGG-3 on 4,000 images for 15 epochs, a few minutes per ablation on a 2-core CPU.
    paper: VGG-3 on CIFAR-10 (49k train / 1k validation), report 000's recipe: SGD momentum 0.9,
    batch 100, lr 0.001, lambda 0.001, 30 epochs (basic) or 50 epochs (the rest)."""
    cfg = ExperimentConfig()
    if name == "quick":
        cfg.model, cfg.model_kwargs = QUICK_MODEL[0], dict(QUICK_MODEL[1])
        cfg.data.train_size, cfg.data.val_size, cfg.data.test_size = 4000, 0, 2000
        s = Settings(lam=2.5e-3, dropout=0.2, cutout=8, smoothing=0.1, basic_epochs=15, epochs=15,
                     arch_dropouts=(0.0, 0.2), arch_lams=(1.25e-3, 2.5e-3), arch_fc_grid=False)
        lr = 0.05
    else:
        cfg.model, cfg.model_kwargs = "vgg3", {}
        cfg.data.val_size = 1000
        s = Settings(lam=1e-3, dropout=0.2, cutout=16, smoothing=0.1, basic_epochs=30, epochs=50,
                     arch_dropouts=(0.0, 0.1, 0.2), arch_lams=(5e-4, 1e-3), gap_lr_scale=5.0)
        lr = 1e-3
    cfg.train.epochs, cfg.train.batch_size = s.epochs, 100
    cfg.train.optim = OptimConfig(optimizer="sgd", lr=lr, momentum=0.9, nesterov=False, weight_decay=2 * s.lam,
                                  schedule="constant")
    cfg.augment.crop_pad, cfg.augment.flip, cfg.augment.cutout = 4, True, 0   # flip + translate by up to 4 px
    cfg.train.tta = "flip"
    return cfg, s


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


# ---- tables and figures ----------------------------------------------------------------------

def table_row(run) -> dict:
    m = run.record["metrics"]
    return {"arm": arm_name(run.config), "setting": describe(run.config), "test_acc": m["test_acc"],
            "test_loss": m["test_loss"], "test_cost": m.get("test_cost"), "test_acc_tta": m.get("test_acc_tta"),
            "test_ece": m.get("test_ece"), "train_seconds": m.get("train_seconds"), "seed": run.config.seed}


def build_parser():
    p = study_parser("regularization", __doc__, smoothing=True)
    g = p.add_argument_group("regularization")
    g.add_argument("--ablation", choices=(*ABLATIONS, "all"), default="basic", help="which table(s) to build")
    g.add_argument("--model", default=None, help="override the preset's model (default: vgg3; quick: a narrow one)")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model keyword for every arm, e.g. widths=[16,32,64] (repeatable)")
    g.add_argument("--dropout", type=unit_rate, default=None, help="dropout rate of the dropout arms")
    return p


def _apply_args(args, base: ExperimentConfig, s: Settings) -> None:
    if args.model:
        base.model, base.model_kwargs = args.model, {}
    base.model_kwargs.update(parse_model_args(args.model_arg))
    apply_data_args(args, base.data)
    apply_train_args(args, base.train, base.augment)
    if args.dropout is not None:
        s.dropout = args.dropout
    if args.weight_decay is not None:
        s.lam = args.weight_decay / 2
    if args.cutout:
        s.cutout = args.cutout
    base.augment.cutout = 0  # cutout belongs to its own arm
    if args.label_smoothing:
        s.smoothing = args.label_smoothing
    if args.epochs:
        s.basic_epochs = s.epochs = args.epochs


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    base, s = preset(args.preset)
    _apply_args(args, base, s)
    require_model(base.model)
    ablations = ABLATIONS if args.ablation == "all" else (args.ablation,)
    configs = [cfg for a in ablations for cfg in build_arms(a, base, s, args.seeds or [0])]
    check_models(configs)
    ctx = context_from_args(args, resume=args.resume)
    runs = run_grid(configs, args, ctx)
    if not should_tabulate(args) or not runs:
        return 0

    dirs = output_dirs(args)
    metrics = [c for c in COLUMNS if c not in KEYS]
    for ablation in ablations:
        mine = [r for r in runs if ablation_of(r.config) == ablation]
        if not mine:
            continue
        rows = [table_row(r) for r in mine]
        epochs = sorted({r.config.train.epochs for r in mine})
        kwargs = {k: v for k, v in base.model_kwargs.items()}
        note = (f"{base.data.dataset}, model {base.model}{' ' + json.dumps(kwargs) if kwargs else ''}, preset "
                f"{args.preset}, {'/'.join(map(str, epochs))} epochs, batch {base.train.batch_size}, "
                f"{base.train.optim.optimizer} momentum {base.train.optim.momentum:g}, seeds "
                f"{sorted({r.config.seed for r in mine})}. Last-epoch weights on the test split; "
                f"test_cost = test_loss + lambda * sum(W^2); TTA: {base.train.tta}.")
        print(write_table(aggregate(rows, KEYS, metrics), COLUMNS, dirs, stem=f"table_{ablation}",
                          title=f"Regularization: {ablation}", note=note))
        write_table(rows, COLUMNS + ["seed"], [dirs[0]], stem=f"runs_{ablation}")
        hist = history_rows(mine, lambda r: arm_name(r.config))
        plot_curves(hist, "test_acc", f"test_acc_{ablation}", dirs, "test accuracy",
                    f"Test accuracy per epoch ({ablation})")
        if ablation == "schedule":
            plot_curves(hist, "lr", "lr_schedule", dirs, "learning rate (epoch start)", "Learning-rate schedules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
