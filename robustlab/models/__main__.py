"""List the registered models with their sizes, or describe one.

    python -m robustlab.models --list [--format table|json] [--num-classes 10]
    python -m robustlab.models --info NAME [--num-classes 10]
"""
from __future__ import annotations

import argparse
import json

from torch import nn

from robustlab.errors import UsageError, cli_entry
from robustlab.models import create_model, list_models

FORMATS = ("table", "json")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become UsageError, so cli_entry prints one line and exits 2."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(name: str, num_classes: int) -> dict:
    model = create_model(name, num_classes=num_classes)
    return {"params": count_params(model), "features": int(model.num_features)}


def table(rows: dict[str, dict]) -> str:
    header = ("model", "params", "features")
    lines = [(name, f"{r['params']:,}", str(r["features"])) for name, r in rows.items()]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = f"{{:<{widths[0]}}}  {{:>{widths[1]}}}  {{:>{widths[2]}}}"
    return "\n".join(fmt.format(*line) for line in [header, *lines])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m robustlab.models", description="Registered models and their sizes.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="every model with its parameter count, sorted by name")
    what.add_argument("--info", metavar="NAME", help="one model's layers, parameter count and feature size")
    p.add_argument("--format", choices=FORMATS, default="table", help="--list output (json: {name: {params, features}})")
    p.add_argument("--num-classes", type=int, default=10, help="classes of the head (default 10)")
    args = p.parse_args(argv)
    if args.num_classes < 1:
        raise UsageError(f"--num-classes must be >= 1, got {args.num_classes}")
    return args


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.info:
        model = create_model(args.info, num_classes=args.num_classes)
        print(model)
        print(f"{args.info}: {count_params(model):,} parameters, {model.num_features} features, {args.num_classes} classes")
        return 0
    rows = {name: describe(name, args.num_classes) for name in list_models()}
    print(json.dumps(rows, indent=2) if args.format == "json" else table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
