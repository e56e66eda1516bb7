"""How much accuracy survives common image corruptions, and how well calibrated is the model?

    python -m studies.robustness --methods ce,augmix [--preset paper] [--cifar-c DIR]
    python -m studies.robustness --checkpoint results/train/runs/<run_id>/last.pt [--checkpoint ...]
    python -m studies.robustness --from-results results/noisy_labels [--baseline noisy_ce]

`--models` x `--methods` are trained with the preset's model, data and budget (default: the
preset's model with plain cross-entropy); `--checkpoint` adds a run, `--from-results DIR` every
finished run of another study. Each run is scored on its own test split, clean and under every
corruption of CIFAR-10-C (the 15 benchmark ones plus the 4 extras) at severities 1-5, generated on
the fly with a seeded generator, or read from the released files with `--cifar-c DIR`
(CIFAR-10-C or CIFAR-100-C: DIR/<corruption>.npy and DIR/labels.npy).

Writes table.md/csv (clean and mean corruption accuracy, mCE and relative mCE against --baseline,
ECE clean and under corruption, per-corruption accuracy; mean ± std over seeds), runs.csv,
corruptions_long.csv, calibration.md/csv (ECE/NLL, temperature scaling on the validation split),
accuracy_by_family.png, ece_by_severity.png, heatmap_<model>.png and reliability_<model>[_ts].png.
"""
from __future__ import annotations

import copy
import re
import shutil
import sys
from pathlib import Path

from robustlab.cli import apply_data_args, apply_train_args, context_from_args, name_list
from robustlab.config import ExperimentConfig, StrategyConfig
from robustlab.errors import UsageError, cli_entry, require
from robustlab.fileio import write_text
from studies.common import (apply_label_noise, csv_table, describe_preset_defaults, output_dirs, run_grid, save_figure,
                            sgd_recipe, should_tabulate, study_parser, write_table)

# torch, the models, the corruptions and the plots are imported once the arguments are read, so that
# --help and usage errors answer at once.

PRESET_MODELS = {"quick": ("small_cnn",), "paper": ("resnet18",), "fast": ("airbench",)}
EVAL_TEST_SIZE = {"quick": 500, "paper": None, "fast": None}  # test images evaluated (None: the run's whole test split)


def preset(name: str) -> ExperimentConfig:
    """quick: 2,000 images, 10 epochs, minutes on a 2-core CPU. paper: 45k/5k CIFAR-10, 100 epochs of SGD.
    fast: airbench with airbench94's 10-epoch recipe on 45k/5k."""
    cfg = sgd_recipe(name, quick_train=2000, quick_test=1000, quick_epochs=10)
    cfg.train.tta = "none"
    return cfg


def build_parser():
    p = study_parser("robustness", __doc__)
    g = p.add_argument_group("robustness")
    g.add_argument("--checkpoint", action="append", default=[], metavar="PATH", help="a run's last.pt or best.pt (repeatable)")
    g.add_argument("--from-results", action="append", default=[], metavar="DIR",
                   help="add every finished run (its last.pt) of another study's results folder (repeatable)")
    g.add_argument("--models", type=name_list, default=None, help="models to train with the preset (default: the preset's)")
    g.add_argument("--methods", type=name_list, default=None,
                   help="strategies to train for each model with the same budget, e.g. ce,augmix (default: ce)")
    g.add_argument("--baseline", default=None, metavar="MODEL", help="row label the mCE is normalized by (default: the first)")
    g.add_argument("--corruptions", type=name_list, default=None, help="comma-separated subset of the corruptions")
    g.add_argument("--corruption-seed", type=int, default=0, help="seed of the generated corruptions")
    g.add_argument("--cifar-c", default=None, metavar="DIR",
                   help="evaluate on the released CIFAR-10-C / CIFAR-100-C files in DIR instead of generating")
    describe_preset_defaults(p, preset)
    return p


def train_arms(args, ctx) -> list[Path] | None:
    """Train (or find) models x methods x seeds; their checkpoints, or None for a shard-only call."""
    from robustlab.models import require_model
    from robustlab.strategies import get_strategy
    base = preset(args.preset)
    apply_data_args(args, base.data)
    apply_label_noise(args, base.data)
    apply_train_args(args, base.train, base.augment)
    require_model(*args.models)
    for method in args.methods:
        require(get_strategy(method).classifies, f"--methods: {method!r} trains no classifier")
    configs = []
    for seed in args.seeds or [0]:
        for model in args.models:
            for method in args.methods:
                cfg = copy.deepcopy(base)
                options = dict(getattr(get_strategy(method), "presets", {}).get(args.preset, {}))
                cfg.model, cfg.seed, cfg.strategy = model, seed, StrategyConfig(method, options)
                cfg.tag = "-".join(([model] if len(args.models) > 1 or args.methods == ["ce"] else [])
                                   + ([method] if args.methods != ["ce"] else []))
                configs.append(cfg)
    runs = run_grid(configs, args, ctx)
    return [Path(args.out) / "runs" / r.config.run_id / "last.pt" for r in runs] if should_tabulate(args) else None


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from robustlab.corruptions.inputs import list_input_corruptions
    from robustlab.experiment import resolve_device
    from robustlab.precision import resolve_precision
    from robustlab.robustness import (evaluate_runs, evaluation_note, finished_checkpoints, load_classifier, load_released,
                                      long_rows, robustness_rows, run_labels, summarize_over_seeds)
    from robustlab.robustness_plots import ece_figure, family_figure, heatmap_figure
    corruptions = args.corruptions or list_input_corruptions()
    bad = [c for c in corruptions if c not in list_input_corruptions()]
    if bad:
        raise UsageError(f"unknown corruption {', '.join(map(repr, bad))}; known: {', '.join(list_input_corruptions())}")
    for name in corruptions if args.cifar_c else []:  # every release file is checked before anything runs
        load_released(args.cifar_c, name, limit=1)
    for path in args.checkpoint:
        require(Path(path).is_file(), f"checkpoint {path} does not exist")
    checkpoints = [Path(p) for p in args.checkpoint] + [p for d in args.from_results for p in finished_checkpoints(d)]
    if not args.models and (args.methods or not checkpoints):
        args.models = list(PRESET_MODELS[args.preset])
    args.methods = args.methods or ["ce"]
    device, ctx = resolve_device(args.device), context_from_args(args)
    if args.models:
        trained = train_arms(args, ctx)
        if trained is None:
            return 0
        checkpoints += trained
    require(bool(checkpoints), "nothing to evaluate: no finished run")

    loaded = [load_classifier(p, device) for p in checkpoints]
    labels = run_labels([r for r, _ in loaded], checkpoints)
    baseline = args.baseline or labels[0]
    require(baseline in labels, f"--baseline {baseline!r} is not one of the evaluated models: {', '.join(dict.fromkeys(labels))}")
    dirs = output_dirs(args)
    eval_size = args.test_size or EVAL_TEST_SIZE[args.preset]
    result = evaluate_runs(loaded, labels, ctx, corruptions, device, eval_size,
                           args.corruption_seed, args.cifar_c, resolve_precision("auto", device, channels_last=False).autocast)
    scores, n_test = result.scores, result.test_sizes
    for row in result.calibration:
        reliability((row["model"], row["seed"]), row, result.clean_logits[(row["model"], row["seed"])], dirs)

    rows = robustness_rows(scores, corruptions, baseline)
    columns = ["model", "clean_acc", "mean_corruption_acc", "extra_corruption_acc", "mce", "relative_mce", "clean_ece",
               "mean_corruption_ece", *[f"acc_{c}" for c in corruptions]]
    note = (evaluation_note(n_test, eval_size, args.cifar_c, args.corruption_seed, [m for m, _ in scores], baseline)
            + " mean_corruption_acc: the 15 benchmark corruptions evaluated; extra_corruption_acc: speckle noise, "
            "Gaussian blur, spatter, saturate.")
    print(write_table(summarize_over_seeds(rows), columns, dirs, title="Corruption robustness", note=note))
    write_table(rows, ["seed", *columns], [dirs[0]], stem="runs")
    write_text(dirs[0] / "corruptions_long.csv",
               csv_table(long_rows(scores), ["model", "seed", "corruption", "family", "severity", "acc", "ece"]))
    print(write_table(summarize_over_seeds(result.calibration), ["model", "temperature", "test_ece", "test_nll", "test_ece_ts", "test_nll_ts"],
                      dirs, stem="calibration", title="Calibration (clean test)",
                      note="_ts: after temperature scaling fitted on the run's validation split (blank without one)."))
    save_figure(family_figure(scores), "accuracy_by_family", dirs)
    save_figure(ece_figure(scores), "ece_by_severity", dirs)
    for (label, seed), s in scores.items():
        save_figure(heatmap_figure(label, s), f"heatmap_{slug(label)}" + (f"_s{seed}" if seed else ""), dirs)
    return 0


def reliability(key, row, logits_labels, dirs) -> None:
    """Reliability diagrams of the clean test split, raw and after temperature scaling."""
    from robustlab.calibration_plots import plot_reliability_diagram
    (label, seed), (z, y) = key, logits_labels
    diagrams = [("", z, f"{label}: clean test")]
    if row["temperature"] is not None:
        diagrams.append(("_ts", z / row["temperature"], f"{label}: temperature {row['temperature']:.2f}"))
    for suffix, logits, title in diagrams:
        path = plot_reliability_diagram(logits, y, dirs[0] / f"reliability_{slug(label)}{f'_s{seed}' if seed else ''}{suffix}.png",
                                        title=title, from_logits=True)
        for d in dirs[1:]:
            shutil.copyfile(path, d / path.name)


if __name__ == "__main__":
    sys.exit(main())
