"""Train one model: `python -m robustlab.train --dataset cifar10 --model small_cnn --epochs 10`."""
from __future__ import annotations

import json
import sys

from robustlab import distributed
from robustlab.cli import (Parser, add_context_args, add_data_args, add_train_args, apply_data_args,
                           apply_train_args, context_from_args, noise_type, nonneg_int, unit_rate)
from robustlab.corruptions.dataset_noise import NOISE_TYPE_HELP
from robustlab.errors import UsageError, cli_entry
from robustlab.experiment import ExperimentConfig, StrategyConfig, run_experiment
from robustlab.records import record_path


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


def build_parser() -> Parser:
    p = Parser(prog="python -m robustlab.train", description=__doc__)
    p.add_argument("--model", default="small_cnn", help="a name from `python -m robustlab.models --list`")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model keyword, e.g. norm=gn or dropout=0.2 (repeatable)")
    p.add_argument("--strategy", default="ce", help="a registered strategy (see --list-strategies)")
    p.add_argument("--strategy-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a strategy option, e.g. forget_rate=0.2 (repeatable)")
    p.add_argument("--list-strategies", action="store_true", help="print the strategies and their options, then exit")
    p.add_argument("--noise-rate", type=unit_rate, default=0.0, help="fraction of corrupted training labels")
    p.add_argument("--noise-type", type=noise_type, default=None,
                   help=f"{NOISE_TYPE_HELP} (default: file with --noise-file, else symmetric)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="PATH",
                   help="continue from PATH, or from the run's last checkpoint under --out")
    add_data_args(p)
    add_train_args(p)
    add_context_args(p, default_out="results/train")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_strategies:
        from robustlab.strategies.registry import strategy_help
        print(strategy_help())
        return 0
    options = parse_model_args(args.strategy_arg, "--strategy-arg")
    if args.label_smoothing:
        options["smoothing"] = args.label_smoothing
    cfg = ExperimentConfig(model=args.model, model_kwargs=parse_model_args(args.model_arg), seed=args.seed,
                           strategy=StrategyConfig(name=args.strategy, options=options))
    cfg.strategy.validate()  # unknown name or option: one line listing what exists
    cfg.train.epochs = 10
    cfg.data.noise_rate = args.noise_rate
    cfg.data.noise_type = args.noise_type or ("file" if args.noise_file else "symmetric")
    apply_data_args(args, cfg.data)
    apply_train_args(args, cfg.train, cfg.augment)
    from robustlab.models import create_model
    create_model(args.model, **cfg.model_kwargs)  # a bad name or option fails before any data is decoded
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
