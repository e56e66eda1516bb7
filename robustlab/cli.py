"""Argument parsing shared by `robustlab.train` and the study scripts.

Building a parser, printing --help and rejecting a bad option import neither torch nor the models:
what the options accept comes from `robustlab.settings` and `robustlab.noise_types`."""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
from pathlib import Path

from robustlab.config import Context, DataConfig
from robustlab.errors import UsageError
from robustlab.noise_types import NOISE_TYPE_HELP, parse_noise_type
from robustlab.settings import OPTIMIZERS, PAD_MODES, PRECISIONS, SCHEDULES, TTA_MODES, AugmentConfig, TrainConfig


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help shows each option's default: the value `describe_defaults` attached (the command's
    recipe for options whose parser default is None, "keep the recipe"), else the parser default;
    nothing for flags, for None, or where the help text already names its default. The description
    keeps its own line breaks, so usage examples stay one per line."""

    def _default_text(self, action) -> str:
        shown = getattr(action, "shown_default", action.default)
        if not action.option_strings or "default" in (action.help or "").lower() or shown is argparse.SUPPRESS:
            return ""
        if shown is None or isinstance(shown, bool) or shown == []:
            return ""
        if isinstance(shown, (list, tuple)):
            shown = ",".join(str(v) for v in shown)
        return f"(default: {str(shown).replace('%', '%%')})"

    def _get_help_string(self, action):
        return f"{action.help or ''} {self._default_text(action)}".strip()

    def _format_action(self, action):
        if not action.help and self._default_text(action):  # argparse prints no help line for help=None
            action = copy.copy(action)
            action.help = self._default_text(action)
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and exit code 2; --help shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonneg_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def unit_rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def forget_rate_arg(text: str) -> float | str:
    """A forget rate for the small-loss methods: a fraction in [0, 1), `estimate` (from the noisy
    labels, robustlab.labelissues) or `oracle` (the realised noise rate)."""
    if text in ("estimate", "oracle"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), estimate or oracle, got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def seed_list(text: str) -> list[int]:
    values = int_list(text)
    if min(values) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError("expected at least one name")
    return values


def check_output_file(path: str | Path, option: str, example: str) -> None:
    """`option` names a file that can be created: not a folder, and no regular file in its way."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; name the file to write, e.g. {path / example}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option} {path}: {parent} is a file, not a folder")
            break


def add_context_args(p: argparse.ArgumentParser, default_out: str) -> None:
    g = p.add_argument_group("where and how")
    g.add_argument("--data-dir", default=os.environ.get("ROBUSTLAB_DATA"),
                   help="folder with cifar-10-batches-py/, cifar-100-python/ or <dataset>/{train,test}/ (env ROBUSTLAB_DATA; default ./data)")
    g.add_argument("--cache-dir", default=None, help="decoded-array cache (env ROBUSTLAB_CACHE; default ~/.cache/robustlab)")
    g.add_argument("--out", default=default_out, help=f"results directory (default {default_out})")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only (slower on GPU; errors on ops without one)")
    g.add_argument("--no-tensorboard", action="store_true",
                   help="no TensorBoard event files in the run folders (metrics.csv is still written; "
                        "env ROBUSTLAB_TENSORBOARD=0 does the same)")


def add_data_args(p: argparse.ArgumentParser, dataset: str = "cifar10") -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=dataset, help="cifar10 | cifar100 | imagefolder:<path>")
    g.add_argument("--val-size", type=nonneg_int, default=None, help="validation images carved from train (by seed)")
    g.add_argument("--train-size", type=positive_int, default=None, help="class-balanced training subset size")
    g.add_argument("--test-size", type=positive_int, default=None, help="class-balanced test subset (quick runs only)")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="image folders: leave out files that cannot be decoded (with a warning) instead of stopping")
    g.add_argument("--noise-file", default=None, metavar="PATH",
                   help="noisy labels: a CIFAR-N .pt for --noise-type human:<set> (default: cifar-n/ beside the "
                        "dataset), or your own .npy/.csv/.pt with one label per training image in dataset order")


def noise_type(text: str) -> str:
    """argparse type for --noise-type: the forms `robustlab.noise_types` knows."""
    try:
        return parse_noise_type(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_noise_type_arg(group, default: str | None, help_prefix: str = "label noise") -> None:
    """--noise-type, listing every valid value in --help."""
    group.add_argument("--noise-type", type=noise_type, default=default, metavar="TYPE",
                       help=f"{help_prefix}: {NOISE_TYPE_HELP}")


def check_clean_val(data: DataConfig, clean_val: bool) -> None:
    """--clean-val needs validation images to keep clean."""
    if clean_val and not data.val_size:
        raise UsageError("--clean-val needs a validation split (--val-size > 0)")


def add_train_args(p: argparse.ArgumentParser, smoothing: bool = True) -> None:
    """Recipe options; `smoothing=False` for commands whose arms fix their own loss."""
    g = p.add_argument_group("training recipe", "options left out keep the command's recipe")
    g.add_argument("--epochs", type=positive_int, default=None)
    g.add_argument("--batch-size", type=positive_int, default=None)
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=None)
    g.add_argument("--lr", type=positive_float, default=None)
    g.add_argument("--momentum", type=float, default=None)
    g.add_argument("--no-nesterov", action="store_true", help="plain momentum SGD")
    g.add_argument("--weight-decay", type=float, default=None, help="L2 weight decay (the reports' lambda x 2)")
    g.add_argument("--schedule", choices=SCHEDULES, default=None)
    g.add_argument("--warmup-epochs", type=float, default=None)
    g.add_argument("--step-size", type=positive_int, default=None, help="step schedule: epochs between decays")
    g.add_argument("--milestones", type=int_list, default=None, help="multistep schedule: epochs, e.g. 50,75")
    g.add_argument("--gamma", type=float, default=None, help="decay factor for step/multistep/plateau")
    g.add_argument("--t0", type=positive_int, default=None, help="cosine_restarts: first period (epochs)")
    g.add_argument("--t-mult", type=positive_int, default=None, help="cosine_restarts: period multiplier")
    if smoothing:
        g.add_argument("--label-smoothing", type=unit_rate, default=None)
    g.add_argument("--early-stop", type=nonneg_int, default=None, help="patience in epochs on validation accuracy (0 = off)")
    g.add_argument("--tta", choices=TTA_MODES, default=None, help="test-time augmentation for the final evaluation")
    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="auto (default: bf16 autocast + channels_last where the CPU/GPU has native bf16, else fp32, "
                        "channels_last for convolutional networks on a CPU) | fp32 (contiguous) | bf16")
    g.add_argument("--no-amp", action="store_true", help="same as --precision fp32")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    a = p.add_argument_group("augmentation")
    a.add_argument("--crop-pad", type=nonneg_int, default=None, help="random-crop padding in pixels (0 = off)")
    a.add_argument("--pad-mode", choices=PAD_MODES, default=None)
    a.add_argument("--no-flip", action="store_true")
    a.add_argument("--cutout", type=nonneg_int, default=None, help="cutout square side (0 = off)")
    a.add_argument("--rotate", type=float, default=None, help="max rotation in degrees")
    a.add_argument("--shear", type=float, default=None, help="max shear in degrees")
    a.add_argument("--zoom", type=float, default=None, help="max zoom fraction")
    a.add_argument("--jitter", type=float, default=None, help="colour jitter strength")


def given_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The `dest`s of the options actually typed in `argv` (even when equal to their default)."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        given, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(given))


def recipe_defaults(cfg) -> dict:
    """The values an ExperimentConfig gives the data/recipe/augmentation options, by option `dest`."""
    t, o, a, d = cfg.train, cfg.train.optim, cfg.augment, cfg.data
    return {"epochs": t.epochs, "batch_size": t.batch_size, "optimizer": o.optimizer, "lr": o.lr,
            "momentum": o.momentum, "weight_decay": o.weight_decay, "schedule": o.schedule,
            "warmup_epochs": o.warmup_epochs, "step_size": o.step_size, "milestones": o.milestones,
            "gamma": o.gamma, "t0": o.t0, "t_mult": o.t_mult, "early_stop": t.early_stop_patience, "tta": t.tta,
            "precision": getattr(t, "precision", None), "crop_pad": a.crop_pad, "pad_mode": a.pad_mode,
            "cutout": a.cutout, "rotate": a.rotate, "shear": a.shear, "zoom": a.zoom, "jitter": a.jitter,
            "val_size": d.val_size, "train_size": d.train_size, "test_size": d.test_size}


def describe_defaults(parser: argparse.ArgumentParser, values: dict) -> None:
    """Show `values` as the defaults in --help without changing what parsing returns."""
    for action in parser._actions:
        if action.dest in values:
            action.shown_default = values[action.dest]


def _set(obj, **values) -> None:
    for key, value in values.items():
        if value is not None:
            setattr(obj, key, value)


def apply_train_args(args, train: TrainConfig, augment: AugmentConfig) -> None:
    """Overlay the options the user gave on a preset's TrainConfig / AugmentConfig."""
    o = train.optim
    _set(train, epochs=args.epochs, batch_size=args.batch_size, early_stop_patience=args.early_stop, tta=args.tta)
    _set(o, optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
         schedule=args.schedule, warmup_epochs=args.warmup_epochs, step_size=args.step_size,
         milestones=args.milestones, gamma=args.gamma, t0=args.t0, t_mult=args.t_mult)
    apply_momentum_args(args, o)
    if args.no_amp and args.precision not in (None, "fp32"):
        raise UsageError(f"--no-amp contradicts --precision {args.precision}")
    _set(train, precision="fp32" if args.no_amp else args.precision)
    if args.compile:
        train.compile = True
    _set(augment, crop_pad=args.crop_pad, pad_mode=args.pad_mode, cutout=args.cutout, rotate=args.rotate,
         shear=args.shear, zoom=args.zoom, jitter=args.jitter)
    if args.no_flip:
        augment.flip = False
    train.validate()
    augment.validate()


def apply_momentum_args(args, optim) -> None:
    """--momentum and --no-nesterov on an OptimConfig: also for a stage with its own step size
    (SupCon pretraining), which takes these but not --lr."""
    _set(optim, momentum=args.momentum)
    if args.no_nesterov:
        optim.nesterov = False


def apply_data_args(args, data: DataConfig) -> None:
    _set(data, dataset=args.dataset, val_size=args.val_size, train_size=args.train_size, test_size=args.test_size)
    if args.noise_file is not None:
        path = Path(args.noise_file).expanduser()
        if not path.is_file():
            raise UsageError(f"--noise-file {args.noise_file}: no such file")
        data.noise_file = str(path.resolve())


def context_from_args(args, resume: bool = False) -> Context:
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UsageError(f"data directory {args.data_dir} does not exist")
    out = Path(args.out)
    if not getattr(args, "print_config", False):  # --print-config runs nothing: no folder to create
        try:
            out.mkdir(parents=True, exist_ok=True)
            # A uniquely named probe: several processes (ranks, shards) may check the same folder at once.
            with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise UsageError(f"output directory {out} is not writable ({exc.strerror or exc})") from None
    if args.deterministic:
        enable_determinism()
    return Context(data_dir=args.data_dir, cache_dir=args.cache_dir, device=args.device, quiet=args.quiet, resume=resume,
                   tensorboard=not args.no_tensorboard, skip_bad_images=getattr(args, "skip_bad_images", False))


def enable_determinism() -> None:
    """Deterministic kernels everywhere (seeds are set per run from the config)."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
