"""Train one model.

    python -m robustlab.train --dataset cifar10 --model small_cnn --epochs 10
    python -m robustlab.train --strategy coteach --noise-rate 0.4 [--clean-val]
    python -m robustlab.train --plugin my_strategies.py --strategy mine --strategy-arg alpha=0.5

Re-run a finished run exactly:

    python -m robustlab.train --from-record results/train/records/<run_id>.json --out rerun

Validation labels carry the same noise as the training labels unless --clean-val (as in
studies.noisy_labels)."""
from __future__ import annotations

import json
import sys

from robustlab.cli import (Parser, add_context_args, add_data_args, add_noise_type_arg, add_train_args,
                           apply_data_args, apply_train_args, check_clean_val, context_from_args, describe_defaults,
                           given_options, nonneg_int, recipe_defaults, unit_rate)
from robustlab.config import ExperimentConfig, StrategyConfig
from robustlab.errors import UsageError, cli_entry
from robustlab.plugins import add_plugin_arg


def parse_model_args(pairs: list[str], option: str = "--model-arg") -> dict:
    """KEY=VALUE pairs; values are parsed as JSON when possible (numbers, true/false), else strings."""
    kwargs = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"{option} expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def default_config() -> ExperimentConfig:
    """What `robustlab.train` runs when given no options: ExperimentConfig's defaults for 10 epochs."""
    cfg = ExperimentConfig()
    cfg.train.epochs = 10
    cfg.data.noisy_val = True  # validation labels as noisy as the training labels, unless --clean-val
    return cfg


def build_parser() -> Parser:
    p = Parser(prog="python -m robustlab.train", description=__doc__)
    add_plugin_arg(p)
    r = p.add_argument_group("run")
    r.add_argument("--model", default="small_cnn", help="a name from `python -m robustlab.models --list`")
    r.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model keyword, e.g. norm=gn or dropout=0.2 (repeatable)")
    r.add_argument("--strategy", default="ce", help="a registered strategy (see --list-strategies)")
    r.add_argument("--strategy-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a strategy option, e.g. forget_rate=0.2 (repeatable)")
    r.add_argument("--list-strategies", action="store_true", help="print the strategies and their options, then exit")
    r.add_argument("--seed", type=nonneg_int, default=0)
    r.add_argument("--recipe", default="default", metavar="NAME",
                   help="default | fast (airbench94's recipe: batch 1024, 10 epochs, triangular LR, lookahead, "
                        "label smoothing 0.2, alternating flip, TTA level 2; robustlab.recipes)")
    n = p.add_argument_group("label noise")
    n.add_argument("--noise-rate", type=unit_rate, default=0.0, help="fraction of corrupted training labels")
    add_noise_type_arg(n, "symmetric")
    n.add_argument("--clean-val", action="store_true",
                   help="keep the validation labels clean (default: as noisy as the training labels, as a user "
                        "without clean labels would have them)")
    x = p.add_argument_group("reproduce and inspect")
    x.add_argument("--from-record", metavar="PATH",
                   help="run the config of a run record (<out>/records/<run_id>.json, or saved --print-config "
                        "output): data, noise, model, strategy, recipe, seed and augmentation, deterministically "
                        "if it was; options given alongside override the record's")
    x.add_argument("--print-config", action="store_true",
                   help="print the resolved config and run id as JSON and exit without running")
    x.add_argument("--record-dynamics", action="store_true",
                   help="after every epoch, each training image's loss and margin (float16) -> "
                        "<out>/runs/<run_id>/dynamics.npz, and the AUM mislabel detector's AUROC in the record")
    x.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                   help="continue from PATH, or from the run's last checkpoint under --out")
    add_data_args(p)
    add_train_args(p)
    add_context_args(p, default_out="results/train")
    describe_defaults(p, recipe_defaults(default_config()))
    return p


def apply_run_args(args, given: set[str], cfg: ExperimentConfig) -> None:
    """Overlay the options in `given` (the `dest`s the user typed) on `cfg`."""
    if "model" in given and args.model != cfg.model:
        cfg.model, cfg.model_kwargs = args.model, {}
    if "model_arg" in given:
        cfg.model_kwargs.update(parse_model_args(args.model_arg))
    if "strategy" in given and args.strategy != cfg.strategy.name:
        cfg.strategy, cfg.tag = StrategyConfig(name=args.strategy), ""  # a study's arm tag would mislead
    if "strategy_arg" in given:
        cfg.strategy.options.update(parse_model_args(args.strategy_arg, "--strategy-arg"))
    if "label_smoothing" in given and args.label_smoothing is not None:
        if args.label_smoothing:
            cfg.strategy.options["smoothing"] = args.label_smoothing
        else:
            cfg.strategy.options.pop("smoothing", None)
    if "noise_rate" in given:
        cfg.data.noise_rate = args.noise_rate
    if "noise_type" in given:
        cfg.data.noise_type = args.noise_type
    if "clean_val" in given and args.clean_val:
        cfg.data.noisy_val = False
    if "seed" in given:
        cfg.seed = args.seed
    if "record_dynamics" in given and args.record_dynamics:
        cfg.train.record_dynamics = True
    if "dataset" not in given:
        args.dataset = None  # keep the record's dataset
    apply_data_args(args, cfg.data)
    apply_train_args(args, cfg.train, cfg.augment)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_strategies:
        from robustlab.strategies.registry import strategy_help
        print(strategy_help())
        return 0
    recorded: dict = {}
    if args.from_record:
        from robustlab.runs import load_run_config
        cfg, recorded = load_run_config(args.from_record)
        apply_run_args(args, given_options(parser, argv), cfg)
    else:
        from robustlab.recipes import apply_recipe
        cfg = default_config()
        cfg.strategy = StrategyConfig(name=args.strategy)  # first, so the recipe can set its options
        apply_recipe(cfg, args.recipe)
        apply_run_args(args, set(vars(args)), cfg)
    check_clean_val(cfg.data, args.clean_val)
    cfg.strategy.validate()  # unknown name or option: one line listing what exists
    from robustlab.models import create_model
    create_model(cfg.model, **cfg.model_kwargs)  # a bad name or option fails before any data is decoded
    args.deterministic = args.deterministic or bool(recorded.get("deterministic"))
    if args.print_config:
        print(json.dumps({"run_id": cfg.run_id, "config": cfg.key(),
                          "environment": {"deterministic": args.deterministic}}, indent=1, sort_keys=True))
        return 0
    if recorded.get("deterministic") and isinstance(recorded.get("threads"), int) and recorded["threads"] >= 1:
        import torch
        torch.set_num_threads(recorded["threads"])  # CPU sums split by thread: same threads, same bits
    from robustlab import distributed
    from robustlab.experiment import run_experiment
    from robustlab.records import record_path

    info = distributed.init_from_env(args.device)
    ctx = context_from_args(args, resume=args.resume)
    record = run_experiment(cfg, args.out, ctx)
    if not info.is_main:
        return 0
    m = record["metrics"]
    keys = [k for k in ("test_acc", "test_loss", "test_cost", "test_acc_tta", "test_ece", "test_acc_best", "train_seconds") if k in m]
    print(" ".join(f"{k}={m[k]:.4f}" for k in keys))
    print(f"record: {record_path(args.out, record['run_id'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
