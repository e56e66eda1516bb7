"""Label-noise tools.

    python -m robustlab.noise export --dataset cifar10 --noise-type human:worst --out labels.csv
    python -m robustlab.noise export --noise-type symmetric --noise 0.4 --seed 0 --out labels.csv

`export` writes one row per training image, in robustlab's dataset order (the order
`--noise-file` reads): `index, path, clean, noisy, split`. `path` is the image file for image
folders (empty for torchvision's pickles); `noisy` is the label a run with the same data options
and seed trains (split `train`) or validates (split `val`) on, so cleanlab or any other tool sees
exactly those labels. By default nothing is held out (`--val-size 0`): every image is `train`.
Images a run would not use (`--train-size` subsets) are `unused` and keep their clean label.
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np

from robustlab.cli import Parser, check_output_file, noise_type, nonneg_int, positive_int, unit_rate
from robustlab.errors import UsageError, cli_entry
from robustlab.fileio import write_text
from robustlab.noise_types import NOISE_TYPE_HELP

COLUMNS = ("index", "path", "clean", "noisy", "split")


def build_parser() -> Parser:
    p = Parser(prog="python -m robustlab.noise", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    e = sub.add_parser("export", help="write the clean and noisy label of every training image as CSV")
    e.add_argument("--dataset", default="cifar10", help="cifar10 | cifar100 | imagefolder:<path>")
    e.add_argument("--noise-type", type=noise_type, default=None,
                   help=f"{NOISE_TYPE_HELP} (default: file with --noise-file, else symmetric)")
    e.add_argument("--noise", "--noise-rate", dest="noise_rate", type=unit_rate, default=0.0,
                   help="rate for synthetic and instance noise (not needed for human:<set> or file)")
    e.add_argument("--noise-file", default=None, metavar="PATH", help="label file (see robustlab.train --help)")
    e.add_argument("--seed", type=nonneg_int, default=0, help="the run seed: split and synthetic draws")
    e.add_argument("--val-size", type=nonneg_int, default=0, help="validation images held out as a run holds them out")
    e.add_argument("--train-size", type=positive_int, default=None, help="class-balanced training subset, as in a run")
    e.add_argument("--noisy-val", action="store_true", help="validation labels get the noise too")
    e.add_argument("--data-dir", default=None, help="folder with the dataset (env ROBUSTLAB_DATA)")
    e.add_argument("--cache-dir", default=None, help="decoded-array cache (env ROBUSTLAB_CACHE)")
    e.add_argument("--out", required=True, help="CSV file to write")
    return p


def export_rows(cfg, seed: int, data_dir: str | None, cache_dir: str | None) -> tuple[list[tuple], dict | None]:
    """(rows, noise report) for every training image of `cfg.dataset` under DataConfig `cfg`."""
    from robustlab.corruptions.human import image_folder_train_files, locate_dataset
    from robustlab.config import Context
    from robustlab.prepare import _cached_dataset, prepare_data

    ctx = Context(data_dir=data_dir, cache_dir=cache_dir)
    train, _ = _cached_dataset(cfg.dataset, data_dir, cache_dir)
    prepared = prepare_data(cfg, seed, ctx)
    splits = prepared.splits
    clean = train.labels.numpy()
    noisy, split = clean.copy(), np.full(len(clean), "unused", dtype=object)
    noisy[splits.train_index], split[splits.train_index] = splits.train.labels.numpy(), "train"
    if splits.val is not None:
        noisy[splits.val_index], split[splits.val_index] = splits.val.labels.numpy(), "val"
    layout = locate_dataset(cfg.dataset, data_dir)
    paths = [p for p, _ in image_folder_train_files(layout.root)] if layout.kind == "imagefolder" else [""] * len(clean)
    if len(paths) != len(clean):
        raise UsageError(f"the image folder {layout.root / 'train'} changed since it was decoded; clear the cache")
    rows = [(i, paths[i], int(clean[i]), int(noisy[i]), split[i]) for i in range(len(clean))]
    return rows, prepared.noise


def write_csv(path: str | Path, rows: list[tuple]) -> None:
    """The CSV, written atomically (no partial or temporary file is left behind on failure)."""
    path = Path(path)
    check_output_file(path, "--out", "labels.csv")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    try:
        write_text(path, buf.getvalue())
    except OSError as exc:
        raise UsageError(f"cannot write {path} ({exc.strerror or exc})") from None


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from robustlab.experiment import DataConfig

    cfg = DataConfig(dataset=args.dataset, val_size=args.val_size, train_size=args.train_size,
                     noise_type=args.noise_type or ("file" if args.noise_file else "symmetric"),
                     noise_rate=args.noise_rate, noisy_val=args.noisy_val,
                     noise_file=str(Path(args.noise_file).expanduser().resolve()) if args.noise_file else None)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UsageError(f"data directory {args.data_dir} does not exist")
    if args.noise_file is not None and not Path(args.noise_file).expanduser().is_file():
        raise UsageError(f"--noise-file {args.noise_file}: no such file")
    check_output_file(args.out, "--out", "labels.csv")  # before the labels are computed
    rows, report = export_rows(cfg, args.seed, args.data_dir, args.cache_dir)
    write_csv(args.out, rows)
    rate = (report or {}).get("realized_rate", 0.0)
    print(f"wrote {len(rows)} rows to {args.out} (training labels {rate:.2%} noisy, {cfg.noise_type})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
