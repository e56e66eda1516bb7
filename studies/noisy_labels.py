"""How much does label noise hurt, and how much do label smoothing and Co-Teaching win back?

    python -m studies.noisy_labels --noise 0.3 --coteach [--smooth 0.1] [--preset paper]

Arms share model, data, budget and augmentation: clean_ce (clean labels), noisy_ce, noisy_ls
(with --smooth) and noisy_coteach (with --coteach). Writes table.md/csv and figures.
"""
from __future__ import annotations

import copy
import json
import sys

from robustlab.cli import apply_data_args, apply_train_args, context_from_args, positive_int, unit_rate
from robustlab.corruptions import NOISE_TYPES
from robustlab.errors import UsageError, cli_entry
from robustlab.experiment import ExperimentConfig, StrategyConfig
from robustlab.fileio import write_text
from robustlab.models import require_model
from robustlab.schedules import OptimConfig
from robustlab.strategies.coteaching import remember_rate
from studies.common import (aggregate, history_rows, output_dirs, plot_curves, run_grid, save_figure, should_tabulate,
                            study_parser, write_table)

COLUMNS = ["arm", "noise_type", "noise_rate", "realized_noise", "test_acc_last", "test_acc_best", "test_loss",
           "label_precision", "test_acc_ensemble", "test_ece", "train_seconds"]


def preset(name: str) -> ExperimentConfig:
    """quick: a small CNN on 4,000 images, minutes on a 2-core CPU. paper: PreAct ResNet-18 on 45k images."""
    cfg = ExperimentConfig()
    if name == "quick":
        cfg.model = "small_cnn"
        cfg.data.train_size, cfg.data.val_size, cfg.data.test_size = 4000, 500, 2000
        cfg.train.epochs, cfg.train.batch_size = 20, 128
        cfg.train.optim = OptimConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant")
        cfg.augment.crop_pad = 0  # flip only: lets plain CE memorize the noise within the budget
        cfg.strategy.options["num_gradual"] = 5
    else:
        cfg.model = "preact_resnet18"
        cfg.data.val_size = 5000
        cfg.train.epochs, cfg.train.batch_size = 100, 128
        cfg.train.optim = OptimConfig(optimizer="sgd", lr=0.02, weight_decay=5e-4, schedule="warmup_cosine",
                                      warmup_epochs=2)
        cfg.strategy.options["num_gradual"] = 10
    cfg.train.tta = "none"
    return cfg


def build_arms(base: ExperimentConfig, noise: float, noise_type: str, coteach: bool, smooth: float | None,
               seeds: list[int]) -> list[ExperimentConfig]:
    arms = []
    for seed in seeds:
        def arm(tag: str, rate: float, strategy: StrategyConfig) -> ExperimentConfig:
            cfg = copy.deepcopy(base)
            cfg.tag, cfg.seed = tag, seed
            cfg.data.noise_rate, cfg.data.noise_type = rate, noise_type
            cfg.strategy = strategy
            return cfg

        gradual = base.strategy.options["num_gradual"]
        arms.append(arm("clean_ce", 0.0, StrategyConfig("ce")))
        arms.append(arm("noisy_ce", noise, StrategyConfig("ce")))
        if smooth:
            arms.append(arm("noisy_ls", noise, StrategyConfig("ce", {"smoothing": smooth})))
        if coteach:
            arms.append(arm("noisy_coteach", noise, StrategyConfig("coteach", {"num_gradual": gradual})))
    return arms


def table_row(run) -> dict:
    r, cfg = run.record, run.config
    m, hist = r["metrics"], r["history"]
    return {"arm": cfg.tag, "noise_type": cfg.data.noise_type if cfg.data.noise_rate else "none",
            "noise_rate": cfg.data.noise_rate, "realized_noise": (r["noise"] or {}).get("realized_rate", 0.0),
            "test_acc_last": m["test_acc"], "test_acc_best": m["test_acc_best"], "test_loss": m["test_loss"],
            "label_precision": hist[-1].get("label_precision"), "test_acc_ensemble": m.get("test_ensemble_acc"),
            "test_ece": m.get("test_ece"), "train_seconds": m.get("train_seconds")}


def plot_schedule(tau: float, num_gradual: int, epochs: int, dirs) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = list(range(1, epochs + 1))
    ax.step(xs, [remember_rate(e - 1, tau, num_gradual) for e in xs], where="post")
    ax.set(xlabel="epoch", ylabel="R(T): kept fraction", ylim=(0, 1.05), title=f"Co-Teaching schedule (tau={tau}, Tk={num_gradual})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, "remember_rate", dirs)


def build_parser():
    p = study_parser("noisy_labels", __doc__)
    g = p.add_argument_group("noisy labels")
    g.add_argument("--noise", type=unit_rate, default=0.3, help="label noise rate in (0, 1)")
    g.add_argument("--noise-type", choices=NOISE_TYPES, default="symmetric")
    g.add_argument("--coteach", action="store_true", help="add the Co-Teaching arm")
    g.add_argument("--smooth", type=unit_rate, default=None, metavar="EPS", help="add a label-smoothing arm")
    g.add_argument("--noisy-val", action="store_true", help="corrupt the validation labels too (default: clean)")
    g.add_argument("--model", default=None, help="override the preset's model")
    g.add_argument("--num-gradual", type=positive_int, default=None, help="Co-Teaching: epochs to reach the full forget rate")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.noise == 0:
        raise UsageError("--noise 0 leaves nothing to study (and Co-Teaching needs noise); use a rate in (0, 1)")
    base = preset(args.preset)
    if args.model:
        base.model = args.model
    if args.num_gradual:
        base.strategy.options["num_gradual"] = args.num_gradual
    base.data.noisy_val = args.noisy_val
    apply_data_args(args, base.data)
    apply_train_args(args, base.train, base.augment)
    require_model(base.model)
    ctx = context_from_args(args, resume=args.resume)
    arms = build_arms(base, args.noise, args.noise_type, args.coteach, args.smooth, args.seeds or [0])
    runs = run_grid(arms, args, ctx)
    if not should_tabulate(args) or not runs:
        return 0

    dirs = output_dirs(args)
    rows = [table_row(r) for r in runs]
    keys = ["arm", "noise_type", "noise_rate"]
    metrics = [c for c in COLUMNS if c not in keys]
    table = aggregate(rows, keys, metrics)
    note = (f"{base.data.dataset}, model {base.model}, preset {args.preset}, {base.train.epochs} epochs, "
            f"seeds {sorted({r.config.seed for r in runs})}. Accuracies on the clean test split.")
    print(write_table(table, COLUMNS, dirs, title="Noisy labels", note=note))
    write_table(rows, COLUMNS + ["seed"], [dirs[0]], stem="runs")
    noisy = [r for r in runs if r.record.get("noise")]
    if noisy:
        report = noisy[0].record["noise"]
        print(f"realized noise {report['realized_rate']:.4f} ({args.noise_type}, nominal {args.noise})", file=sys.stderr)
        write_text(dirs[0] / "noise_report.json", json.dumps(report, indent=1))

    hist = history_rows(runs, lambda r: r.config.tag)
    plot_curves(hist, "test_acc", "test_acc", dirs, "test accuracy", "Test accuracy per epoch")
    coteach = [h for h in hist if h["arm"] == "noisy_coteach"]
    if coteach:
        clean_fraction = 1 - noisy[0].record["noise"]["realized_rate"] if noisy else None
        plot_curves(coteach, "label_precision", "label_precision", dirs, "label precision",
                    "Co-Teaching: clean fraction of the kept samples",
                    reference=(clean_fraction, "clean fraction of the noisy labels"))
        plot_schedule(args.noise, base.strategy.options["num_gradual"], base.train.epochs, dirs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
