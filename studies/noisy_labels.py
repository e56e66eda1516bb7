"""How much does label noise hurt, and how much do noisy-label methods win back?

    python -m studies.noisy_labels --noise 0.4 --methods ce,coteach,coteach_plus,jocor,dividemix,elr,gce,sce
    python -m studies.noisy_labels --noise 0.3 --coteach [--smooth 0.1] [--preset paper]
    python -m studies.noisy_labels --noise 0.5 --methods ce,dividemix --strategy-arg dividemix.warmup_epochs=5
    python -m studies.noisy_labels --noise-type human:worst --coteach [--clean-val]

Every arm shares model, data, budget and augmentation: clean_ce (clean labels), then noisy_<method>
for each registered strategy in --methods (default ce; --coteach adds coteach, --smooth EPS adds
noisy_ls, cross-entropy with label smoothing). Each method's options for the preset come from its
strategy class (`presets`); --strategy-arg METHOD.KEY=VALUE overrides one. Validation labels carry
the same noise as the training labels unless --clean-val. The table's noise_rate is the nominal
rate given with --noise; label files (human:<set>, file) and their transition twins have none
("-"), their rate is realized_noise. Writes table.md/csv, runs.csv, noise_report.json and figures
to --out, among them memorization.png (each noisy arm's per-sample training dynamics, clean vs
mislabeled; --no-dynamics turns them off).
"""
from __future__ import annotations

import copy
import json
import sys

from robustlab.cli import (add_noise_type_arg, apply_data_args, apply_train_args, check_clean_val, context_from_args,
                           describe_defaults, forget_rate_arg, name_list, positive_int, unit_rate)
from robustlab.config import ExperimentConfig, StrategyConfig
from robustlab.errors import UsageError, cli_entry
from robustlab.fileio import write_text
from robustlab.noise_types import NOISE_TYPES, has_nominal_rate
from robustlab.recipes import noisy_label_preset
from studies.common import (PRESETS, accuracy_summary, describe_preset_defaults, forget_rate_note,
                            history_rows, plot_curves, save_figure, split_sizes, study_parser)
from studies.skeleton import Results, Study, Table, run_study, seeds_of

COLUMNS = ["arm", "noise_type", "noise_rate", "realized_noise", "test_acc_last", "test_acc_last10",
           "test_acc_val_selected", "headline", "test_acc_net1", "test_acc_net2", "test_acc_ensemble",
           "label_precision", "label_recall", "aum_auroc", "test_acc_best_oracle", "wall_seconds"]
KEYS = ["arm", "noise_type", "noise_rate"]


preset = noisy_label_preset


def build_arms(base: ExperimentConfig, methods: dict[str, StrategyConfig], noise: float, noise_type: str,
               seeds: list[int]) -> list[ExperimentConfig]:
    """clean_ce, then one noisy arm per method (same data, model, budget), for every seed."""
    arms = []
    for seed in seeds:
        clean = copy.deepcopy(base)
        clean.tag, clean.seed, clean.strategy = "clean_ce", seed, StrategyConfig("ce")
        clean.data.noise_rate, clean.data.noise_type, clean.data.noise_file = 0.0, "symmetric", None
        arms.append(clean)
        for tag, strategy in methods.items():
            cfg = copy.deepcopy(base)
            cfg.tag, cfg.seed, cfg.strategy = tag, seed, copy.deepcopy(strategy)
            cfg.data.noise_rate, cfg.data.noise_type = noise, noise_type
            arms.append(cfg)
    return arms


def table_row(run) -> dict:
    r, cfg = run.record, run.config
    m, hist = r["metrics"], r["history"]
    two_nets = "test_net2_acc" in m  # the strategy's predictor is net1, or the ensemble where net1 is listed apart
    headline = ("ensemble" if "test_net1_acc" in m else "net1") if two_nets else ""
    noisy = bool(r.get("noise"))
    return {"arm": cfg.tag, "noise_type": cfg.data.noise_type if noisy else "none",
            "noise_rate": nominal_rate(cfg) if noisy else 0.0, "realized_noise": (r.get("noise") or {}).get("realized_rate", 0.0),
            **accuracy_summary(r), "headline": headline,
            "test_acc_net1": m.get("test_net1_acc", m["test_acc"]) if two_nets else None,
            "test_acc_net2": m.get("test_net2_acc"), "test_acc_ensemble": m.get("test_ensemble_acc"),
            "label_precision": hist[-1].get("label_precision"), "label_recall": hist[-1].get("label_recall"),
            "aum_auroc": (r.get("dynamics") or {}).get("aum_auroc"),
            "wall_seconds": r.get("wall_seconds")}


def nominal_rate(cfg: ExperimentConfig) -> float | str:
    """The rate the user asked for; "-" for noise whose rate comes from a label file (human:<set>, file,
    transition twins), where realized_noise is the only rate there is."""
    return cfg.data.noise_rate if has_nominal_rate(cfg.data.noise_type) and not cfg.data.noise_file else "-"


def table_note(runs, base: ExperimentConfig, args) -> str:
    val = "clean (--clean-val)" if args.clean_val else "noisy (same noise as training)"
    return (f"{base.data.dataset}, model {base.model}, preset {args.preset}, {split_sizes(runs)}, "
            f"{base.train.epochs} epochs, seeds {seeds_of(runs)}. noise_rate: the nominal rate (--noise; \"-\" for "
            f"label files, whose rate is realized_noise). Validation labels: {val}. Accuracies on the clean test split: last epoch, mean of "
            f"the last 10 epochs, and the epoch chosen on validation; for two-network methods that is the predictor "
            f"named in `headline` (net1/net2/ensemble listed apart). label_precision/recall: the last epoch's "
            f"selection. test_acc_best_oracle picks the epoch on the test split (an oracle)."

            f" aum_auroc: AUROC of the area under the margin as a detector of the mislabeled training images. "
            f"{forget_rate_note(runs)}"
            + (f" forward_t/backward_t correct the loss with T from {args.t_file}." if args.t_file else
               " forward_t/backward_t correct the loss with the realised noise's T (an oracle)."
               if {"forward_t", "backward_t"} & {r.config.strategy.name for r in runs} else ""))


def plot_figures(res: Results, dynamics_epoch: int | None = None) -> None:
    from studies.noisy_labels_plots import plot_memorization  # torch and matplotlib: only when plotting

    hist = history_rows(res.runs, lambda r: r.config.tag)
    plot_memorization(res, dynamics_epoch)
    plot_curves(hist, "test_acc", "test_acc", res.dirs, "test accuracy", "Test accuracy per epoch")
    noisy = [r for r in res.runs if r.record.get("noise")]
    report = noisy[0].record["noise"] if noisy else None
    plot_curves(hist, "label_precision", "label_precision", res.dirs, "label precision",
                "Selection precision: clean fraction of the kept samples",
                reference=(1 - report["realized_rate"] if report else None, "clean fraction of the noisy labels"))
    plot_curves(hist, "remember_rate", "remember_rate", res.dirs, "R(T): kept fraction", "Small-loss schedules")
    if report:
        write_text(res.dirs[0] / "noise_report.json", json.dumps(report, indent=1))
        kind = noisy[0].config.data.noise_type
        if kind not in NOISE_TYPES:  # real or dataset-level noise: show its transition matrix
            import numpy as np

            from robustlab.corruptions.plots import plot_transition_matrices

            fig = plot_transition_matrices([(kind, np.asarray(report["transition"]))], noisy[0].record["data"]["classes"])
            save_figure(fig, "transition_matrix", res.dirs)


def build_parser():
    p = study_parser("noisy_labels", __doc__, label_noise=False)
    g = p.add_argument_group("noisy labels")
    g.add_argument("--noise", type=unit_rate, default=None,
                   help="label noise rate in (0, 1) (default 0.3; noise from a label file has the file's rate)")
    add_noise_type_arg(g, "symmetric")
    g.add_argument("--methods", type=name_list, default=None, metavar="M[,M]",
                   help="registered strategies that train a classifier, one arm noisy_<M> each (default: ce; "
                        "python -m robustlab.train --list-strategies lists them)")
    g.add_argument("--strategy-arg", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="an option of one method's strategy over its preset, e.g. dividemix.warmup_epochs=5 "
                        "(repeatable; the options are listed by python -m robustlab.train --list-strategies)")
    g.add_argument("--coteach", action="store_true", help="add the Co-Teaching arm (as coteach in --methods)")
    g.add_argument("--smooth", type=unit_rate, default=None, metavar="EPS", help="add a label-smoothing arm noisy_ls")
    g.add_argument("--clean-val", action="store_true", help="keep the validation labels clean (default: noisy, "
                                                            "as a user without clean labels would have them)")
    g.add_argument("--model", default=None, help="override the preset's model")
    g.add_argument("--num-gradual", type=positive_int, default=None,
                   help="small-loss methods (those with a num_gradual option): epochs to the full forget rate")
    g.add_argument("--forget-rate", type=forget_rate_arg, default=None, metavar="RATE|estimate|oracle",
                   help="small-loss methods (those with a forget_rate option): a fraction; estimate: the noise rate "
                        "estimated from the noisy labels (5-fold confident learning, cached in --out); oracle "
                        "(default): the realised rate")
    describe_preset_defaults(p, preset)
    describe_defaults(p, {"model": " / ".join(f"{preset(name).model} ({name})" for name in PRESETS)})
    g.add_argument("--t-file", default=None, metavar="PATH",
                   help="forward_t/backward_t: transition matrix T (.npy/.csv, rows true class) from this file "
                        "(default: the realised noise's T, an oracle)")
    g.add_argument("--no-dynamics", action="store_true",
                   help="do not record per-sample loss and margin (dynamics.npz, the memorization figure, aum_auroc)")
    g.add_argument("--dynamics-epoch", type=positive_int, default=None,
                   help="epoch of the memorization figure's loss histogram (default: the last)")
    return p


def parse_method_args(pairs: list[str], methods: list[str]) -> dict[str, dict]:
    """--strategy-arg METHOD.KEY=VALUE pairs -> {method: {key: value}}; values parsed as JSON when
    they parse (numbers, true/false), else kept as strings. The method must be one of `methods`."""
    from robustlab.train import parse_model_args

    out: dict[str, dict] = {}
    for pair in pairs:
        head = pair.split("=", 1)[0]
        if "=" not in pair or "." not in head:
            raise UsageError(f"--strategy-arg expects METHOD.KEY=VALUE (e.g. dividemix.warmup_epochs=5), got {pair!r}")
        method, rest = pair.split(".", 1)
        if method not in methods:
            raise UsageError(f"--strategy-arg {pair}: {method!r} is not among the methods of this study "
                             f"({', '.join(methods)})")
        out.setdefault(method, {}).update(parse_model_args([rest], "--strategy-arg"))
    return out


def choose_methods(args) -> dict[str, StrategyConfig]:
    """Arm tag -> strategy: each method's recipe for the preset (its class's `presets`), then the user's options."""
    from robustlab.strategies.registry import config_fields, get_strategy, list_strategies

    names = list(dict.fromkeys([*(args.methods or ["ce"]), *(["coteach"] if args.coteach else [])]))
    classifiers = [m for m in list_strategies() if get_strategy(m).classifies]
    unknown = [m for m in names if m not in list_strategies()]
    if unknown:
        raise UsageError(f"unknown method(s) {', '.join(unknown)}; noisy-label methods: {', '.join(classifiers)}")
    pretraining = [m for m in names if m not in classifiers]
    if pretraining:
        raise UsageError(f"--methods {', '.join(pretraining)}: not a noisy-label method (trains no classifier); "
                         f"noisy-label methods: {', '.join(classifiers)}")
    for option in ("forget_rate", "num_gradual"):
        flag = "--" + option.replace("_", "-")
        having = [m for m in names if option in config_fields(m)]
        if getattr(args, option) is not None and not having:
            with_it = [m for m in classifiers if option in config_fields(m)]
            raise UsageError(f"{flag} applies to methods with a {option} option ({', '.join(with_it)}); "
                             f"none of {', '.join(names)} has one")
    user = parse_method_args(getattr(args, "strategy_arg", None) or [], names)
    methods = {}
    for m in names:
        options = {**getattr(get_strategy(m), "presets", {}).get(args.preset, {}),
                   **{k: v for k, v in (("num_gradual", args.num_gradual), ("forget_rate", args.forget_rate),
                                        ("t_source", "file" if args.t_file else None), ("t_file", args.t_file))
                      if v is not None and k in config_fields(m)},
                   **user.get(m, {})}
        methods[f"noisy_{m}"] = StrategyConfig(m, options)
        methods[f"noisy_{m}"].validate()
    if args.smooth:
        methods["noisy_ls"] = StrategyConfig("ls", {"smoothing": args.smooth})
    return methods


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    needs_rate = has_nominal_rate(args.noise_type)  # label files and their twins bring their own
    noise = args.noise if args.noise is not None else (0.3 if needs_rate else 0.0)
    if noise == 0 and needs_rate:
        raise UsageError("--noise 0 leaves nothing to study; use a rate in (0, 1)")
    base = preset(args.preset)
    if args.model and args.model != base.model:
        base.model, base.model_kwargs = args.model, {}  # the preset's model arguments belong to its own model
    base.data.noisy_val = not args.clean_val
    base.train.record_dynamics = not args.no_dynamics
    apply_data_args(args, base.data)
    apply_train_args(args, base.train, base.augment)
    check_clean_val(base.data, args.clean_val)
    from robustlab.models import require_model

    require_model(base.model)
    methods = choose_methods(args)
    ctx = context_from_args(args, resume=args.resume)
    arms = build_arms(base, methods, noise, args.noise_type, args.seeds or [0])
    tables = lambda runs: [Table(COLUMNS, KEYS, "Noisy labels", table_note(runs, base, args))]  # noqa: E731
    figures = lambda res: plot_figures(res, args.dynamics_epoch)  # noqa: E731
    return run_study(Study(arms, table_row, tables, figures), args, ctx)


if __name__ == "__main__":
    sys.exit(main())
