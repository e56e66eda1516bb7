"""Which regularizers, augmentations, LR schedules, architecture tweaks and normalizations help VGG-3?

    python -m studies.regularization --ablation basic|augment|schedule|arch|norm|all [--preset paper]

Reproduces report 000's tables 1-4 (VGG-3 regularization, extra augmentation, LR schedules,
strided convolutions and GAP head), report 002's section 5.1 (warm-up + cosine, step decay,
cyclic LR) and report 001's normalization comparison (BN / GroupNorm / LayerNorm / InstanceNorm).
Every arm of an ablation shares model, data and budget; only the studied component changes.

The ablations and their arms are listed in `studies.regularization_arms`. Lambda is the reports'
L2 coefficient: cost = loss + lambda * sum(W^2), weight decay = 2 lambda. Each ablation writes
table_<ablation>.md/csv (arm, setting, test accuracy, loss, cost, TTA accuracy, ECE, training
seconds; mean ± std over seeds), runs_<ablation>.csv (one row per run) and test_acc_<ablation>.png.
"""
from __future__ import annotations

import json
import sys

from robustlab.cli import apply_data_args, apply_train_args, context_from_args, unit_rate
from robustlab.errors import cli_entry
from robustlab.recipes import fast_config
from robustlab.config import ExperimentConfig
from robustlab.settings import OptimConfig
from robustlab.train import parse_model_args
from studies.common import (apply_label_noise, describe_preset_defaults, history_rows, plot_curves, require_model,
                            split_sizes, study_parser)
from studies.regularization_arms import (ABLATIONS, Settings, ablation_of, arm_name, build_arms,  # noqa: F401
                                        check_models, describe)
from studies.skeleton import Results, Study, Table, run_study, seeds_of

COLUMNS = ["arm", "setting", "test_acc", "test_loss", "test_cost", "test_acc_tta", "test_ece", "train_seconds"]
KEYS = ["arm", "setting"]

QUICK_MODEL = ("vgg3", {"widths": [16, 32, 64]})  # a narrow VGG-3: minutes per ablation on a CPU


def preset(name: str) -> tuple[ExperimentConfig, Settings]:
    """quick: a narrow VGG-3 on 4,000 images for 15 epochs, a few minutes per ablation on a 2-core CPU.
    paper: VGG-3 on CIFAR-10 (49k train / 1k validation), report 000's recipe: SGD momentum 0.9,
    batch 100, lr 0.001, lambda 0.001, 30 epochs (basic) or 50 epochs (the rest)."""
    if name == "fast":
        return fast_preset()
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


def fast_preset() -> tuple[ExperimentConfig, Settings]:
    """fast: airbench on 45k/5k with airbench94's 10-epoch recipe (robustlab.recipes); the L2 arms use
    the recipe's own (decoupled, per-step) decay as 2 lambda, dropout 0.2 before the head, cutout 8,
    smoothing 0.2 (the recipe's). The arch and norm ablations compare VGG-3 variants and stop with a
    one-line error on airbench; pass --model vgg3 for them."""
    from robustlab.recipes import FAST_DECAY, FAST_SMOOTHING

    cfg = fast_config()
    s = Settings(lam=FAST_DECAY / 2, dropout=0.2, cutout=8, smoothing=FAST_SMOOTHING, basic_epochs=10, epochs=10,
                 arch_dropouts=(0.0, 0.2), arch_lams=(FAST_DECAY / 4, FAST_DECAY / 2), arch_fc_grid=False)
    return cfg, s


# ---- tables and figures ----------------------------------------------------------------------

def table_row(run) -> dict:
    m = run.record["metrics"]
    return {"ablation": ablation_of(run.config), "arm": arm_name(run.config), "setting": describe(run.config),
            "test_acc": m["test_acc"], "test_loss": m["test_loss"], "test_cost": m.get("test_cost"),
            "test_acc_tta": m.get("test_acc_tta"), "test_ece": m.get("test_ece"), "train_seconds": m.get("train_seconds")}


def tables(runs, base: ExperimentConfig, preset_name: str) -> list[Table]:
    """One table per ablation that has runs."""
    out = []
    for ablation in dict.fromkeys(ablation_of(r.config) for r in runs):
        mine = [r for r in runs if ablation_of(r.config) == ablation]
        epochs = "/".join(map(str, sorted({r.config.train.epochs for r in mine})))
        kwargs = f" {json.dumps(base.model_kwargs)}" if base.model_kwargs else ""
        o = base.train.optim
        note = (f"{base.data.dataset} ({split_sizes(mine)}), model {base.model}{kwargs}, preset {preset_name}, {epochs} "
                f"epochs, batch "
                f"{base.train.batch_size}, {o.optimizer} momentum {o.momentum:g}, seeds {seeds_of(mine)}. Last-epoch "
                f"weights on the test split; test_cost = test_loss + lambda * sum(W^2); TTA: {base.train.tta}.")
        out.append(Table(COLUMNS, KEYS, f"Regularization: {ablation}", note, stem=f"table_{ablation}",
                         runs_stem=f"runs_{ablation}", select=lambda row, a=ablation: row["ablation"] == a))
    return out


def plot_figures(res: Results) -> None:
    for ablation in dict.fromkeys(ablation_of(r.config) for r in res.runs):
        hist = history_rows([r for r in res.runs if ablation_of(r.config) == ablation], lambda r: arm_name(r.config))
        plot_curves(hist, "test_acc", f"test_acc_{ablation}", res.dirs, "test accuracy",
                    f"Test accuracy per epoch ({ablation})")
        if ablation == "schedule":
            plot_curves(hist, "lr", "lr_schedule", res.dirs, "learning rate (epoch start)", "Learning-rate schedules")


def build_parser():
    p = study_parser("regularization", __doc__, smoothing=True)
    g = p.add_argument_group("regularization")
    g.add_argument("--ablation", choices=(*ABLATIONS, "all"), default="basic", help="which table(s) to build")
    g.add_argument("--model", default=None, help="override the preset's model (default: vgg3; quick: a narrow one)")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model keyword for every arm, e.g. widths=[16,32,64] (repeatable)")
    g.add_argument("--dropout", type=unit_rate, default=None, help="dropout rate of the dropout arms")
    describe_preset_defaults(p, lambda name: preset(name)[0])
    return p


def _apply_args(args, base: ExperimentConfig, s: Settings) -> None:
    if args.model:
        base.model, base.model_kwargs = args.model, {}
    base.model_kwargs.update(parse_model_args(args.model_arg))
    apply_data_args(args, base.data)
    apply_label_noise(args, base.data)
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
    study = Study(configs, table_row, lambda runs: tables(runs, base, args.preset), plot_figures)
    return run_study(study, args, ctx)


if __name__ == "__main__":
    sys.exit(main())
