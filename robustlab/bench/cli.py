"""`python -m robustlab.bench`: training throughput side by side, cost scaling, strategy cost, GPU suite.

    python -m robustlab.bench [--model small_cnn] [--batch-size 128] [--format table|json]
    python -m robustlab.bench --suite gpu --out benchmarks/gpu/ [--smoke]

One run compares, for one model, precision (fp32, bf16 autocast) x memory format (contiguous,
channels_last) x torch.compile on the device-resident loader, and the torchvision DataLoader with
per-sample PIL transforms (fp32/contiguous and the default policy). `default: true` marks the row
robustlab.train would use here. Then seconds per epoch at growing training-set sizes, and
Co-Teaching's and SupCon's cost per epoch relative to CE. Real CIFAR-10 is used when found
(--data-dir / ROBUSTLAB_DATA); the throughput part falls back to random images.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from robustlab.cli import Parser, check_output_file, nonneg_int, positive_int
from robustlab.errors import UsageError, cli_entry


def build_parser() -> Parser:
    p = Parser(prog="python -m robustlab.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="small_cnn", help="a registered model (default small_cnn)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--steps", type=positive_int, default=20, help="timed steps per window")
    p.add_argument("--warmup", type=nonneg_int, default=3, help="untimed steps per configuration (compile adds 2)")
    p.add_argument("--repeats", type=positive_int, default=3, help="round-robin windows; the median is reported")
    p.add_argument("--workers", type=nonneg_int, default=2, help="DataLoader worker processes")
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    p.add_argument("--no-dataloader", action="store_true", help="leave out the DataLoader rows")
    p.add_argument("--scaling", type=scaling_sizes, default="5000,10000,20000,40000", metavar="N[,N]",
                   help="training-set sizes for seconds per epoch (comma-separated, each >= 1; 'none' or 0 to skip)")
    p.add_argument("--strategy-cost", type=nonneg_int, default=5000, metavar="N",
                   help="training images for Co-Teaching's and SupCon's cost relative to CE (0 to skip)")
    p.add_argument("--format", choices=("table", "json"), default="table",
                   help="json: print the throughput rows as a JSON list")
    p.add_argument("--json-out", default=None, help="also write the whole report (all parts) to this JSON file")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 avoids spin-waiting on a busy, shared CPU)")
    p.add_argument("--data-dir", default=os.environ.get("ROBUSTLAB_DATA"))
    p.add_argument("--cache-dir", default=None)
    s = p.add_argument_group("GPU suite")
    s.add_argument("--suite", choices=("gpu",), default=None, help="run the GPU suite instead (see robustlab.bench.suite)")
    s.add_argument("--smoke", action="store_true", help="the suite with tiny sizes: seconds on a CPU")
    s.add_argument("--out", default="benchmarks/gpu", help="the suite's output folder (default benchmarks/gpu)")
    s.add_argument("--parts", default=None, help="comma-separated suite parts (default: all)")
    return p


def scaling_sizes(text: str) -> list[int]:
    """argparse type for --scaling: [] for none/0, else comma-separated image counts >= 1."""
    if text.strip().lower() in ("none", "0", ""):
        return []
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated image counts or 'none', got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"image counts must be >= 1, got {text!r}")
    return sizes


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def throughput_settings(args, device: torch.device):
    from robustlab.bench.throughput import Setting, default_setting

    b = args.batch_size
    compiles = (False,) if args.no_compile else (False, True)
    settings = [Setting("device", p, cl, c, b) for c in compiles for p in ("fp32", "bf16") for cl in (False, True)]
    if not args.no_dataloader:
        default = default_setting(device, b, args.model)
        for p, cl in dict.fromkeys([("fp32", False), (default.precision, default.channels_last)]):
            settings.append(Setting("dataloader", p, cl, False, b, args.workers))
    return settings


def format_rows(rows: list[dict]) -> str:
    base = next((r["img_per_s"] for r in rows if r["loader"] == "device" and r["precision"] == "fp32"
                 and not r["channels_last"] and not r["compile"]), None)
    out = [f"{'loader':<16}{'precision':<10}{'format':<15}{'compile':<9}{'batch':>6}{'img/s':>10}{'vs fp32':>9}  default"]
    for r in rows:
        loader = f"dataloader {r['workers']}w" if r["loader"] == "dataloader" else "device"
        speed = f"{r['img_per_s'] / base:.2f}x" if base else "-"
        out.append(f"{loader:<16}{r['precision']:<10}{'channels_last' if r['channels_last'] else 'contiguous':<15}"
                   f"{'yes' if r['compile'] else 'no':<9}{r['batch_size']:>6}{r['img_per_s']:>10,.0f}{speed:>9}  "
                   f"{'<- default' if r['default'] else ''}")
    return "\n".join(out)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from robustlab.experiment import Context, resolve_device
    from robustlab.models import require_model

    require_model(args.model)  # a bad name fails before any data loads
    scaling = args.scaling
    if args.json_out:
        check_output_file(args.json_out, "--json-out", "bench.json")  # before anything is timed
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UsageError(f"data directory {args.data_dir} does not exist")
    if args.suite:
        from robustlab.bench.suite import PARTS, format_report, run_suite

        parts = [p.strip() for p in args.parts.split(",")] if args.parts else list(PARTS)
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            raise UsageError(f"unknown suite part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
        report, path = run_suite(args.out, device, smoke=args.smoke, parts=parts, data_dir=args.data_dir,
                                 cache_dir=args.cache_dir, log=_log)
        print(format_report(report))
        print(f"wrote {path}")
        return 0
    if args.smoke:
        raise UsageError("--smoke belongs to --suite gpu")

    from robustlab.bench.costs import scaling_rows, strategy_cost_rows
    from robustlab.bench.throughput import bench_images, device_name, measure

    images, labels, source = bench_images(args.data_dir, args.cache_dir)
    _log(f"{args.model} on {device_name(device)}, {source}: timing {args.repeats} x {args.steps} steps per configuration")
    rows = measure(throughput_settings(args, device), args.model, images, labels, device, steps=args.steps,
                   warmup=args.warmup, repeats=args.repeats, log=_log)
    report = {"device": device_name(device), "torch": torch.__version__, "data": source, "throughput": rows}
    if args.format == "json" and not args.json_out:
        print(json.dumps(rows, indent=1))
        return 0
    if args.format == "table":
        print(f"model {args.model}, {device_name(device)}, {source}, torch {torch.__version__}")
        print(format_rows(rows))
    ctx = Context(data_dir=args.data_dir, cache_dir=args.cache_dir, device=args.device, quiet=True)
    if scaling:
        _log(f"seconds per epoch at {scaling} training images ...")
        report["scaling"] = scaling_rows(args.model, scaling, ctx, batch_size=args.batch_size)
        if args.format == "table":
            print("\nseconds per epoch (default path, CE, 1 epoch each)")
            for r in report["scaling"]:
                print(f"  {r['train_images']:>6} images: {r['seconds_per_epoch']:7.2f} s  ({r['img_per_s']:,.0f} img/s, "
                      f"per image {r['per_image_vs_smallest']:.2f}x the smallest)")
    if args.strategy_cost:
        _log(f"strategy cost at {args.strategy_cost} training images ...")
        report["strategy_cost"] = strategy_cost_rows(args.model, args.strategy_cost, ctx, batch_size=args.batch_size)
        if args.format == "table":
            print(f"\ncost per epoch relative to CE ({args.strategy_cost} images, fastest of 2 epochs)")
            for r in report["strategy_cost"]:
                goal = f"  (goal <= {r['goal']}x: {'met' if r['vs_ce'] <= r['goal'] else 'MISSED'})" if r["goal"] else ""
                print(f"  {r['strategy']:<16}{r['seconds_per_epoch']:7.2f} s  {r['vs_ce']:.2f}x{goal}")
    if args.json_out:
        from robustlab.fileio import write_json

        write_json(args.json_out, report)
        if args.format == "json":
            print(json.dumps(rows, indent=1))
    return 0
