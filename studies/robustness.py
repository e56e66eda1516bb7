"""How much accuracy survives common image corruptions, and how well calibrated is the model?

    python -m studies.robustness --checkpoint results/train/runs/<run_id>/last.pt [--checkpoint ...]
    python -m studies.robustness --models small_cnn,tiny_cnn [--preset paper]

A checkpoint (`last.pt` or `best.pt`) is read with its run record (`records/<run_id>.json`, two
folders above the run folder), which names the model, its keywords, the data split and the
normalization. `--models` first trains each model with the preset (or reuses its record), then
evaluates it.

Every corruption of `robustlab.corruptions.list_input_corruptions()` is applied at severities 1-5
to the [0, 1] test images on the device, batch by batch with a generator seeded per (corruption,
severity), before normalization. Reported per model:
  clean_acc, mean_corrupted_acc (mean over corruptions x severities), mce_unnormalized (the mean
  corruption error: mean over corruptions x severities of 1 - acc), mce_vs_baseline (Hendrycks &
  Dietterich's mCE: mean over corruptions of sum_s error / sum_s error of the baseline, the first
  model or --baseline; only with two or more models), and acc_<corruption> (mean over severities).
Calibration on the clean test split: ECE and NLL, and again after temperature scaling fitted on
the run's validation split (when it has one).

Writes table.md/csv, corruptions_long.csv (model, corruption, severity, acc), calibration.md/csv,
heatmap_<model>.png (corruption x severity accuracy) and reliability_<model>[_ts].png.
"""
from __future__ import annotations

import copy
import re
import shutil
import sys
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from robustlab.calibration import (apply_temperature, expected_calibration_error, fit_temperature,
                                   negative_log_likelihood, plot_reliability_diagram)
from robustlab.cli import apply_data_args, apply_train_args, context_from_args, name_list
from robustlab.corruptions.inputs import MAX_SEVERITY, corrupt, list_input_corruptions
from robustlab.data.augment import normalize
from robustlab.errors import UsageError, cli_entry, require
from robustlab.experiment import Context, DataConfig, ExperimentConfig, prepare_data, resolve_device
from robustlab.fileio import write_text
from robustlab.models import require_model
from robustlab.precision import resolve_precision
from robustlab.runs import load_run_network
from studies.common import (csv_table, output_dirs, run_grid, save_figure, sgd_recipe, should_tabulate, study_parser,
                            write_table)

EVAL_BATCH = 500
PRESET_MODELS = {"quick": ("small_cnn",), "paper": ("resnet18",)}
EVAL_TEST_SIZE = {"quick": 1000, "paper": None}  # test images evaluated (None: the run's whole test split)


def preset(name: str) -> ExperimentConfig:
    """Training recipe for `--models`. quick: 2,000 images, 10 epochs, minutes on a 2-core CPU.
    paper: 45k/5k CIFAR-10, 100 epochs of SGD with warm-up + cosine."""
    cfg = sgd_recipe(name, quick_train=2000, quick_test=1000, quick_epochs=10)
    cfg.train.tta = "none"
    return cfg


# ---- loading a run ---------------------------------------------------------------------------

@dataclass
class LoadedRun:
    label: str
    record: dict
    model: torch.nn.Module


def load_run(checkpoint: str | Path, device: torch.device) -> tuple[dict, torch.nn.Module]:
    """The run record and its classifier (the strategy's main model), in eval mode on `device`."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise UsageError(f"checkpoint {checkpoint} does not exist")
    run = load_run_network(checkpoint)
    from robustlab.strategies import get_strategy
    require(get_strategy(run.config.strategy.name).classifies,
            f"{checkpoint} is a {run.config.strategy.name!r} run, which trains no classifier; "
            "robustness evaluates classifier runs")
    return run.record, run.network.to(device).eval()


def eval_splits(record: dict, ctx: Context, test_size: int | None):
    """The run's validation split and (a class-balanced subset of) its test split."""
    known = {f.name for f in fields(DataConfig)}
    data = DataConfig(**{k: v for k, v in record["config"]["data"].items() if k in known})
    if test_size is not None and (data.test_size is None or test_size < data.test_size):
        data.test_size = test_size
    data.noise_rate = 0.0 if not data.noisy_val else data.noise_rate  # train labels are not needed
    splits = prepare_data(data, record["config"]["seed"], ctx).splits
    return splits.val, splits.test


# ---- evaluation ------------------------------------------------------------------------------

@torch.no_grad()
def logits_of(model, images: torch.Tensor, mean, std, device, corruption: str | None = None, severity: int = 0,
              generator: torch.Generator | None = None, batch: int = EVAL_BATCH) -> torch.Tensor:
    """Logits for uint8 images; with a corruption, it is applied to the [0, 1] batch (in float32) before
    normalization. The model runs under the training precision policy (bf16 where native)."""
    policy = resolve_precision("auto", device, channels_last=False)
    out = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device).float().div_(255)
        if corruption is not None and severity:
            x = corrupt(x, corruption, severity, generator)
        with policy.autocast():
            out.append(model(normalize(x, mean, std)).float())
    return torch.cat(out)


def corruption_generator(name: str, severity: int, seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed * 1_000_003 + zlib.crc32(f"{name}/{severity}".encode()))
    return g


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels.to(logits.device)).float().mean().item()


def evaluate_corruptions(model, test, mean, std, device, corruptions: list[str], seed: int = 0) -> dict:
    """{'clean': acc, (corruption, severity): acc, ...} on the test split."""
    labels = test.labels.to(device)
    result = {"clean": accuracy(logits_of(model, test.images, mean, std, device), labels)}
    for name in corruptions:
        for severity in range(1, MAX_SEVERITY + 1):
            g = corruption_generator(name, severity, seed, device)
            result[(name, severity)] = accuracy(
                logits_of(model, test.images, mean, std, device, name, severity, g), labels)
    return result


def summary_row(label: str, acc: dict, corruptions: list[str], baseline: dict | None = None) -> dict:
    per = {c: [acc[(c, s)] for s in range(1, MAX_SEVERITY + 1)] for c in corruptions}
    mean_acc = sum(sum(v) for v in per.values()) / sum(len(v) for v in per.values())
    row = {"model": label, "clean_acc": acc["clean"], "mean_corrupted_acc": mean_acc,
           "mce_unnormalized": 1.0 - mean_acc, "mce_vs_baseline": None}
    if baseline is not None:
        ratios = []
        for c, accs in per.items():
            base_err = sum(1 - baseline[(c, s)] for s in range(1, MAX_SEVERITY + 1))
            ratios.append(sum(1 - a for a in accs) / base_err if base_err > 0 else float("nan"))
        row["mce_vs_baseline"] = sum(ratios) / len(ratios)
    row.update({f"acc_{c}": sum(v) / len(v) for c, v in per.items()})
    return row


def calibration_row(label: str, model, val, test, mean, std, device, test_logits=None) -> tuple[dict, dict]:
    """ECE/NLL on the clean test split, raw and after temperature scaling fitted on `val` (if any)."""
    logits = test_logits if test_logits is not None else logits_of(model, test.images, mean, std, device)
    labels = test.labels.to(logits.device)
    row = {"model": label, "temperature": None, "test_ece": expected_calibration_error(logits, labels, from_logits=True),
           "test_nll": negative_log_likelihood(logits, labels), "test_ece_ts": None, "test_nll_ts": None}
    scaled = None
    if val is not None and len(val):
        val_logits = logits_of(model, val.images, mean, std, device)
        t = fit_temperature(val_logits, val.labels.to(val_logits.device))
        scaled = apply_temperature(logits, t)
        row.update(temperature=t, test_ece_ts=expected_calibration_error(scaled, labels, from_logits=True),
                   test_nll_ts=negative_log_likelihood(scaled, labels))
    return row, {"logits": logits, "scaled": scaled, "labels": labels}


# ---- figures ---------------------------------------------------------------------------------

def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def plot_heatmap(label: str, acc: dict, corruptions: list[str], dirs) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    frame = pd.DataFrame([[100 * acc[(c, s)] for s in range(1, MAX_SEVERITY + 1)] for c in corruptions],
                         index=corruptions, columns=range(1, MAX_SEVERITY + 1))
    fig, ax = plt.subplots(figsize=(6.0, 0.4 * len(corruptions) + 1.6))
    sns.heatmap(frame, annot=True, fmt=".1f", cmap="viridis", vmin=0, vmax=100, cbar_kws={"label": "accuracy (%)"},
                ax=ax)
    ax.set(xlabel="severity", ylabel="corruption", title=f"{label}: accuracy (clean {100 * acc['clean']:.1f}%)")
    fig.tight_layout()
    save_figure(fig, f"heatmap_{slug(label)}", dirs)


# ---- command line ----------------------------------------------------------------------------

def build_parser():
    p = study_parser("robustness", __doc__)
    g = p.add_argument_group("robustness")
    g.add_argument("--checkpoint", action="append", default=[], metavar="PATH",
                   help="a run's last.pt or best.pt (repeatable)")
    g.add_argument("--models", type=name_list, default=None,
                   help="comma-separated models to train with the preset, then evaluate (default: the preset's model "
                        "when no --checkpoint is given)")
    g.add_argument("--baseline", default=None, metavar="MODEL", help="label of the mCE baseline (default: the first model)")
    g.add_argument("--corruptions", type=name_list, default=None, help="comma-separated subset of the corruptions")
    g.add_argument("--corruption-seed", type=int, default=0, help="seed of the corruption noise")
    return p


def _unique_labels(records: list[dict], checkpoints: list[Path]) -> list[str]:
    """The run's tag (or model name), made unique with the run hash and then the checkpoint name."""
    labels = [r["config"].get("tag") or r["config"]["model"] for r in records]
    for extra in (lambda i: records[i]["run_id"].rsplit("-", 1)[-1], lambda i: checkpoints[i].stem):
        twice = {label for label in labels if labels.count(label) > 1}
        labels = [f"{label}-{extra(i)}" if label in twice else label for i, label in enumerate(labels)]
    return labels


def _train(args, ctx: Context) -> list[Path] | None:
    """Train (or find) the `--models` runs; returns their checkpoints, or None for a shard-only call."""
    base = preset(args.preset)
    apply_data_args(args, base.data)
    apply_train_args(args, base.train, base.augment)
    require_model(*args.models)
    configs = []
    for seed in args.seeds or [0]:
        for name in args.models:
            cfg = copy.deepcopy(base)
            cfg.model, cfg.tag, cfg.seed = name, name if len(args.seeds or [0]) == 1 else f"{name}_s{seed}", seed
            configs.append(cfg)
    runs = run_grid(configs, args, ctx)
    if not should_tabulate(args):
        return None
    return [Path(args.out) / "runs" / r.config.run_id / "last.pt" for r in runs]


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    corruptions = args.corruptions or list_input_corruptions()
    bad = [c for c in corruptions if c not in list_input_corruptions()]
    if bad:
        raise UsageError(f"unknown corruption {', '.join(map(repr, bad))}; known: {', '.join(list_input_corruptions())}")
    for path in args.checkpoint:
        if not Path(path).is_file():
            raise UsageError(f"checkpoint {path} does not exist")
    if not args.checkpoint and not args.models:
        args.models = list(PRESET_MODELS[args.preset])
    device = resolve_device(args.device)
    ctx = context_from_args(args)
    checkpoints = [Path(p) for p in args.checkpoint]
    if args.models:
        trained = _train(args, ctx)
        if trained is None:
            return 0
        checkpoints += trained
    if not checkpoints:
        raise UsageError("nothing to evaluate: no finished run")

    loaded = [load_run(p, device) for p in checkpoints]
    labels = _unique_labels([r for r, _ in loaded], checkpoints)
    if args.baseline is not None and args.baseline not in labels:
        raise UsageError(f"--baseline {args.baseline!r} is not one of the evaluated models: {', '.join(labels)}")
    test_size = args.test_size or EVAL_TEST_SIZE[args.preset]
    dirs = output_dirs(args)

    results, calib, long_rows, n_test = {}, [], [], set()
    for (record, model), label in zip(loaded, labels):
        print(f"evaluating {label} ({record['run_id']})", file=sys.stderr, flush=True)
        mean, std = record["data"]["mean"], record["data"]["std"]
        val, test = eval_splits(record, ctx, test_size)
        n_test.add(len(test))
        acc = evaluate_corruptions(model, test, mean, std, device, corruptions, args.corruption_seed)
        results[label] = acc
        long_rows += [{"model": label, "corruption": c, "severity": s, "acc": acc[(c, s)]}
                      for c in corruptions for s in range(1, MAX_SEVERITY + 1)]
        row, data = calibration_row(label, model, val, test, mean, std, device)
        calib.append(row)
        plot_heatmap(label, acc, corruptions, dirs)
        diagrams = [("", data["logits"], f"{label}: clean test")]
        if data["scaled"] is not None:
            diagrams.append(("_ts", data["scaled"], f"{label}: temperature {row['temperature']:.2f}"))
        for suffix, logits, title in diagrams:
            path = plot_reliability_diagram(logits, data["labels"], dirs[0] / f"reliability_{slug(label)}{suffix}.png",
                                            title=title, from_logits=True)
            for d in dirs[1:]:
                shutil.copyfile(path, d / path.name)

    baseline = (args.baseline or labels[0]) if len(labels) > 1 else None
    rows = [summary_row(label, results[label], corruptions, results[baseline] if baseline else None) for label in labels]
    columns = ["model", "clean_acc", "mean_corrupted_acc", "mce_unnormalized", "mce_vs_baseline",
               *[f"acc_{c}" for c in corruptions]]
    note = (f"{'/'.join(map(str, sorted(n_test)))} test images per model, corruptions at severities 1-{MAX_SEVERITY}, corruption seed "
            f"{args.corruption_seed}. mce_unnormalized = mean error over corruptions x severities; "
            + (f"mce_vs_baseline = mean over corruptions of summed error / summed error of {baseline}."
               if baseline else "mce_vs_baseline needs two or more models."))
    print(write_table(rows, columns, dirs, title="Corruption robustness", note=note))
    write_text(dirs[0] / "corruptions_long.csv", csv_table(long_rows, ["model", "corruption", "severity", "acc"]))
    print(write_table(calib, ["model", "temperature", "test_ece", "test_nll", "test_ece_ts", "test_nll_ts"], dirs,
                      stem="calibration", title="Calibration (clean test)",
                      note="_ts: after temperature scaling fitted on the run's validation split (blank without one)."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
