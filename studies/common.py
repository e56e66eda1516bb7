"""What every study shares: the study command line, grid execution with sharding and resume,
seed aggregation, tables, and curve figures. `studies.skeleton.Study` puts them together.

A study is a list of `ExperimentConfig`s (arms x seeds x ...). `run_grid` runs this process's
share of the missing ones (`--shard i/n`) through the chosen launcher (this process, or submitit
jobs), then gathers every record that exists, so a SLURM array or several GPUs can split a study
and a final `--collect` builds the tables.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

from robustlab.cli import (Parser, add_context_args, add_data_args, add_noise_type_arg, add_train_args, check_clean_val,
                           describe_defaults, recipe_defaults, seed_list, unit_rate)
from robustlab.config import Context, ExperimentConfig
from robustlab.errors import UsageError
from robustlab.fileio import write_text
from robustlab.launch import parse_shard
from robustlab.plugins import add_plugin_arg
from robustlab.recipes import PRESETS, fast_config
from robustlab.records import find_record
from robustlab.settings import OptimConfig
from studies.launcher import add_launcher_args, check_launcher_args, run_direct, run_submitit


def study_parser(name: str, description: str, dataset: str = "cifar10", smoothing: bool = False,
                 label_noise: bool = True) -> Parser:
    """The options every study shares; `label_noise` adds --noise-type/--noise-rate/--clean-val for
    every arm (`apply_label_noise`), for studies whose arms do not vary the noise themselves."""
    p = Parser(prog=f"python -m studies.{name}", description=description)
    add_plugin_arg(p)
    g = p.add_argument_group("study")
    g.add_argument("--preset", choices=PRESETS, default="quick",
                   help="quick: minutes on a laptop CPU; paper: the full GPU recipe; fast: airbench and its "
                        "recipe on the full 45k/5k split (seconds per run on a GPU, minutes on a CPU)")
    g.add_argument("--seeds", type=seed_list, default=None, help="comma-separated seeds, e.g. 0,1,2")
    g.add_argument("--shard", type=parse_shard, default=None, metavar="I/N",
                   help="run only share I (0-based) of N of the grid, and skip the tables")
    g.add_argument("--collect", action="store_true", help="run nothing; build tables and figures from existing records")
    g.add_argument("--resume", action="store_true", help="continue unfinished runs from their last checkpoint")
    g.add_argument("--figures-dir", default=None, metavar="DIR",
                   help=f"also copy the tables and figures to DIR (default: none; they are always written to --out; "
                        f"`make figures` passes figures/{name} to refresh the README's)")
    g.add_argument("--print-config", action="store_true",
                   help="print every run's run id and config, one JSON object a line (prerequisites first; a line "
                        "saved to a file works with robustlab.train --from-record), and exit without running")
    add_launcher_args(p)
    add_data_args(p, dataset)
    if label_noise:
        n = p.add_argument_group("label noise", "the same noisy training labels for every arm (default: clean labels)")
        add_noise_type_arg(n, None, "label noise of every arm (default: none; file with --noise-file)")
        n.add_argument("--noise-rate", type=unit_rate, default=0.0,
                       help="rate of synthetic and instance noise (label files bring their own)")
        n.add_argument("--clean-val", action="store_true",
                       help="keep the validation labels clean (default: as noisy as the training labels)")
    add_train_args(p, smoothing=smoothing)
    add_context_args(p, default_out=f"results/{name}")
    return p


def require_model(*names: str) -> None:
    """`robustlab.models.require_model`, imported when a study checks its models (not for --help)."""
    from robustlab.models import require_model as check

    check(*names)


def apply_label_noise(args, data) -> None:
    """--noise-type / --noise-rate / --clean-val of `study_parser(label_noise=True)` on a DataConfig
    (after `apply_data_args`, which sets --noise-file)."""
    from robustlab.noise_types import has_nominal_rate

    kind = args.noise_type or ("file" if data.noise_file else ("symmetric" if args.noise_rate else None))
    if kind is None:
        if args.clean_val:
            raise UsageError("--clean-val needs label noise (--noise-type, --noise-rate or --noise-file)")
        return
    if has_nominal_rate(kind) and not 0 < args.noise_rate < 1:
        raise UsageError(f"--noise-type {kind} needs --noise-rate in (0, 1)")
    data.noise_type, data.noise_rate, data.noisy_val = kind, args.noise_rate, not args.clean_val
    check_clean_val(data, args.clean_val)


def describe_preset_defaults(parser: argparse.ArgumentParser, preset: Callable[[str], ExperimentConfig],
                             presets: tuple[str, ...] = PRESETS) -> None:
    """Show each data/recipe option's value under every preset in --help, e.g. "20 (quick) / 100
    (paper) / 10 (fast)", or the one value where the presets agree."""
    per_preset = {name: recipe_defaults(preset(name)) for name in presets}
    shown = {}
    for dest in per_preset[presets[0]]:
        values = {name: per_preset[name][dest] for name in presets}
        texts = {name: _show(v) for name, v in values.items()}
        if len(set(texts.values())) == 1:
            shown[dest] = None if values[presets[0]] is None else texts[presets[0]]
        else:
            shown[dest] = " / ".join(f"{texts[name]} ({name})" for name in presets)
    describe_defaults(parser, shown)


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(map(_show, value))
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def split_sizes(runs: list[Run]) -> str:
    """"N train / M validation / K test images" of the runs' records (every size seen, if they differ)."""
    parts = []
    for key, label in (("train", "train"), ("val", "validation"), ("test", "test")):
        sizes = sorted({(r.record.get("data") or {}).get(key) for r in runs} - {None})
        parts.append(f"{'|'.join(f'{s:,}' for s in sizes) or '?'} {label}")
    return " / ".join(parts) + " images"


def sgd_recipe(preset: str, quick_train: int, quick_test: int, quick_epochs: int) -> ExperimentConfig:
    """The standard CIFAR recipe: SGD nesterov, warm-up + cosine, crop + flip, flip TTA.

    quick: a class-balanced subset, lr 0.05, a few epochs; paper: 45k/5k split, lr 0.1, 100 epochs;
    fast: airbench's recipe (`fast_config`).
    """
    if preset == "fast":
        return fast_config()
    cfg = ExperimentConfig()
    if preset == "quick":
        cfg.data.train_size, cfg.data.val_size, cfg.data.test_size = quick_train, 500, quick_test
        cfg.train.epochs, lr, warmup = quick_epochs, 0.05, 1
    else:
        cfg.data.val_size = 5000
        cfg.train.epochs, lr, warmup = 100, 0.1, 2
    cfg.train.batch_size = 128
    cfg.train.optim = OptimConfig(optimizer="sgd", lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                  schedule="warmup_cosine", warmup_epochs=warmup)
    cfg.augment.crop_pad, cfg.augment.flip = 4, True
    cfg.train.tta = "flip"
    return cfg


def select_shard(configs: list[ExperimentConfig], shard: tuple[int, int] | None) -> list[ExperimentConfig]:
    """Every N-th run of the grid ordered by run id: the same split in every process."""
    if shard is None:
        return configs
    i, n = shard
    ordered = sorted(configs, key=lambda c: c.run_id)
    return [c for k, c in enumerate(ordered) if k % n == i]


@dataclass
class Run:
    config: ExperimentConfig
    record: dict


def run_grid(configs: list[ExperimentConfig], args, ctx: Context,
             runner: Callable[[ExperimentConfig, Path, Context], dict] | None = None) -> list[Run]:
    """Run this shard's missing runs (with the chosen launcher), then return every run of the grid
    that has a record. `--collect` runs nothing and refuses when no run has a record."""
    ids = [c.run_id for c in configs]
    if len(set(ids)) != len(ids):
        raise UsageError("the study grid contains duplicate runs")
    if getattr(args, "print_config", False):
        print_configs(configs, args)
        raise SystemExit(0)
    check_launcher_args(args)
    from robustlab import distributed

    if not args.collect:
        distributed.init_from_env(args.device)
        pending = [c for c in select_shard(configs, args.shard) if find_record(args.out, c.run_id) is None]
        if getattr(args, "launcher", "direct") == "direct":
            quiet = ctx.quiet or not distributed.current().is_main
            run_direct(pending, Path(args.out), replace(ctx, quiet=quiet), runner)
        elif pending:
            run_submitit(pending, args, ctx, runner)
    done, missing = [], []
    for cfg in configs:
        record = find_record(args.out, cfg.run_id)
        (done if record else missing).append(Run(cfg, record) if record else cfg)
    if args.collect and configs and not done:
        raise UsageError(f"nothing to collect: none of the {len(configs)} runs of this study has a record in {args.out}")
    if missing:
        print(f"{len(missing)} of {len(configs)} runs have no record yet: "
              f"{', '.join(c.run_id for c in missing[:5])}{' ...' if len(missing) > 5 else ''}", file=sys.stderr)
    return done


def print_configs(configs: list[ExperimentConfig], args) -> None:
    """One line per run: the `robustlab.train --print-config` object of that run."""
    for cfg in configs:
        print(json.dumps({"run_id": cfg.run_id, "config": cfg.key(),
                          "environment": {"deterministic": bool(getattr(args, "deterministic", False))}},
                         sort_keys=True))


def accuracy_summary(record: dict) -> dict:
    """The honest test-accuracy columns of a run: last epoch, mean of the last 10 epochs (as the
    Co-teaching papers report), the epoch chosen on validation (the engine's `best`; training loss
    without a validation split), and the best epoch chosen on the test split itself (an oracle)."""
    m, last10 = record["metrics"], [h["test_acc"] for h in record["history"][-10:] if "test_acc" in h]
    return {"test_acc_last": m.get("test_acc"), "test_acc_last10": sum(last10) / len(last10) if last10 else None,
            "test_acc_val_selected": (record.get("best") or {}).get("test_acc"),
            "test_acc_best_oracle": m.get("test_acc_best")}


FORGET_RATE_SOURCES = {"given": "given", "estimate": "estimated from the noisy labels (K-fold confident learning)",
                       "oracle": "oracle: the realised noise rate"}


def forget_rate_note(runs: list[Run]) -> str:
    """Which forget rate each small-loss arm trained with (from its records' strategy_options), so
    that an oracle rate is never shown without the word oracle; empty when no arm has one."""
    parts = []
    for tag in dict.fromkeys(r.config.tag for r in runs):
        options = [r.record.get("strategy_options") or {} for r in runs if r.config.tag == tag]
        sources = sorted({o["forget_rate_source"] for o in options if "forget_rate_source" in o})
        if sources:
            rates = [o["forget_rate"] for o in options if "forget_rate_source" in o]
            shown = f"{rates[0]:.3f}" if len(set(rates)) == 1 else f"{min(rates):.3f}-{max(rates):.3f}"
            parts.append(f"{tag} {shown} ({'; '.join(FORGET_RATE_SOURCES[s] for s in sources)})")
    return f"Forget rate: {', '.join(parts)}." if parts else ""


def should_tabulate(args) -> bool:
    """Tables and figures come from an unsharded invocation, and from rank 0 only under torchrun."""
    from robustlab import distributed

    return args.shard is None and distributed.current().is_main


# ---- tables ----------------------------------------------------------------------------------

def _is_pct(column: str) -> bool:
    return any(k in column for k in ("acc", "precision", "recall", "realized_noise", "ece"))


def aggregate(rows: list[dict], keys: list[str], metrics: list[str]) -> list[dict]:
    """Group rows by `keys` (groups in order of first appearance); each numeric metric becomes its
    mean plus `<metric>_std` (sample std, 0 for one value) over the rows that have it (None and NaN
    are missing); a text metric is kept when the whole group agrees on it."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        agg = dict(zip(keys, key))
        agg["n_seeds"] = len(members)
        for m in metrics:
            values = [r[m] for r in members if r.get(m) is not None and not _nan(r[m])]
            if values and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                agg[m] = values[0] if len(set(map(str, values))) == 1 and len(values) == len(members) else None
            elif values:
                mean = sum(values) / len(values)
                agg[m] = mean
                agg[f"{m}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            else:
                agg[m], agg[f"{m}_std"] = None, None
        out.append(agg)
    return out


def _nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _fmt(value, pct: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{100 * value:.2f}" if pct else f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """Markdown with mean ± std where a `<col>_std` is present; accuracies in percent."""
    header = [f"{c} (%)" if _is_pct(c) else c for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            cell = _fmt(row.get(c), _is_pct(c))
            std = row.get(f"{c}_std")
            if cell and std and row.get("n_seeds", 1) > 1:
                cell += f" ± {_fmt(std, _is_pct(c))}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict], columns: list[str]) -> str:
    fields = []
    for c in columns:
        fields.append(c)
        if any(f"{c}_std" in r for r in rows):
            fields.append(f"{c}_std")
    if any("n_seeds" in r for r in rows) and "n_seeds" not in fields:
        fields.append("n_seeds")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return buf.getvalue()


def write_table(rows: list[dict], columns: list[str], dirs: Iterable[str | Path], stem: str = "table",
                title: str | None = None, note: str | None = None) -> str:
    md = (f"## {title}\n\n" if title else "") + markdown_table(rows, columns) + (f"\n{note}\n" if note else "")
    for d in dirs:
        write_text(Path(d) / f"{stem}.md", md)
        write_text(Path(d) / f"{stem}.csv", csv_table(rows, columns))
    return md


# ---- figures ---------------------------------------------------------------------------------

def history_rows(runs: list[Run], label: Callable[[Run], str]) -> list[dict]:
    """One row per (run, epoch) with the run's label and seed: the long format seaborn wants."""
    rows = []
    for run in runs:
        for h in run.record["history"]:
            rows.append({"arm": label(run), "seed": run.config.seed, **h})
    return rows


def plot_curves(rows: list[dict], y: str, path_stem: str, dirs: Iterable[str | Path], ylabel: str | None = None,
                title: str | None = None, hue: str = "arm", reference: tuple[float | None, str] | None = None) -> list[Path]:
    """Line plot of `y` per epoch, one line per `hue` value (mean over seeds with a band);
    `reference` = (value, label) adds a dashed horizontal line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    frame = pd.DataFrame([r for r in rows if r.get(y) is not None])
    if frame.empty:
        return []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sns.lineplot(data=frame, x="epoch", y=y, hue=hue, marker="o", markersize=3, errorbar="sd", ax=ax)
    if reference and reference[0] is not None:
        ax.axhline(reference[0], color="grey", linestyle="--", label=reference[1])
        ax.legend()
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path_stem, dirs)


def plot_panels(panels: list[tuple[list[dict], str, str, str]], stem: str, dirs: Iterable[str | Path],
                hue: str = "arm") -> list[Path]:
    """Side-by-side line plots per epoch, one panel per (rows, y, title, ylabel), mean over seeds with a band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (rows, y, title, ylabel) in zip(axes[0], panels):
        frame = pd.DataFrame([r for r in rows if r.get(y) is not None])
        if not frame.empty:
            sns.lineplot(data=frame, x="epoch", y=y, hue=hue, marker="o", markersize=3, errorbar="sd", ax=ax)
        ax.set(title=title, ylabel=ylabel, xlabel="epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, stem, dirs)


def save_figure(fig, stem: str, dirs: Iterable[str | Path]) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = []
    for d in dirs:
        path = Path(d) / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        paths.append(path)
    plt.close(fig)
    return paths


def output_dirs(args) -> list[Path]:
    dirs = [Path(args.out)]
    if args.figures_dir and Path(args.figures_dir).resolve() != Path(args.out).resolve():
        dirs.append(Path(args.figures_dir))
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs
