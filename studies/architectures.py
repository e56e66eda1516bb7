"""Which architecture wins on CIFAR under one shared training recipe?

    python -m studies.architectures --models resnet18,se_resnet18 [--dataset cifar100] [--preset paper]

Every model trains on the same data, budget and augmentation, over `--seeds`. Transformer-style
models (ViT, ConvNeXt) get AdamW instead of SGD; the table note lists every such override.
Writes table.md/csv (model, params, last/best/TTA test accuracy, loss, ECE, time, throughput;
mean ± std over seeds), runs.md/csv (one row per run) and test_acc.png (test-accuracy curves).
"""
from __future__ import annotations

import copy
import sys

from robustlab.cli import apply_data_args, apply_train_args, context_from_args, name_list
from robustlab.errors import UsageError, cli_entry
from robustlab.config import ExperimentConfig
from studies.common import (accuracy_summary, apply_label_noise, describe_preset_defaults, history_rows, plot_curves,
                            require_model, sgd_recipe, study_parser)
from studies.skeleton import Results, Study, Table, run_study

COLUMNS = ["model", "params", "test_acc_last", "test_acc_val_selected", "test_acc_best_oracle", "test_loss",
           "test_acc_tta", "test_ece", "train_seconds", "images_per_s"]
KEYS = ["model", "params"]

# quick: the first of these that are registered (small nets, a few minutes each on a 2-core CPU).
QUICK_MODELS = ("vgg1", "vgg3_gap", "resnet_cifar")
# quick: constructor arguments that shrink a model to the CPU budget (any listed model, default or not).
QUICK_MODEL_KWARGS = {"resnet_cifar": {"depths": (1, 1, 1), "widths": (16, 32, 64)}}
PAPER_MODELS = ("resnet18", "se_resnet18", "resnet_cifar_1m", "convnext_cifar", "vit_cifar", "se_resnet80")
# fast: airbench and its CPU sibling with airbench94's recipe (every model listed gets that recipe).
FAST_MODELS = ("airbench", "airbench_s")

# Per-family optimizer overrides (prefix of the model name -> OptimConfig fields), applied before
# the command-line recipe options, which therefore still win for every model.
RECIPE_OVERRIDES = {
    "vit": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 5.0},
    "convnext": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 5.0},
}


def preset(name: str) -> ExperimentConfig:
    """quick: 4,000 images, 12 epochs, minutes on a 2-core CPU. paper: 45k/5k CIFAR-10, 100 epochs on a GPU.
    fast: 45k/5k, airbench94's 10-epoch recipe (robustlab.recipes) for every model."""
    return sgd_recipe(name, quick_train=4000, quick_test=2000, quick_epochs=12)


def default_models(preset_name: str) -> list[str]:
    if preset_name == "paper":
        return list(PAPER_MODELS)
    if preset_name == "fast":
        return list(FAST_MODELS)
    return list(QUICK_MODELS)


def recipe_override(model: str) -> dict:
    for prefix, fields in RECIPE_OVERRIDES.items():
        if model.startswith(prefix):
            return fields
    return {}


def validate_models(models: list[str]) -> None:
    require_model(*models)
    twice = sorted({m for m in models if models.count(m) > 1})
    if twice:
        raise UsageError(f"model{'s' if len(twice) > 1 else ''} listed more than once: {', '.join(twice)}")


def build_arms(base: ExperimentConfig, models: list[str], seeds: list[int], args) -> list[ExperimentConfig]:
    shrink = QUICK_MODEL_KWARGS if args.preset == "quick" else {}
    arms = []
    for model in models:
        for seed in seeds:
            cfg = copy.deepcopy(base)
            cfg.model, cfg.tag, cfg.seed = model, model, seed
            cfg.model_kwargs = copy.deepcopy(shrink.get(model, {}))
            for key, value in (recipe_override(model) if args.preset != "fast" else {}).items():
                setattr(cfg.train.optim, key, value)
            apply_train_args(args, cfg.train, cfg.augment)
            arms.append(cfg)
    return arms


def table_row(run) -> dict:
    r, m = run.record, run.record["metrics"]
    return {"model": run.config.model, "params": r["num_params"], **accuracy_summary(r), "test_loss": m.get("test_loss"),
            "test_acc_tta": m.get("test_acc_tta"), "test_ece": m.get("test_ece"),
            "train_seconds": m.get("train_seconds"), "images_per_s": m.get("images_per_s")}


def plot_figures(res: Results) -> None:
    hist = history_rows(res.runs, lambda r: r.config.model)
    dataset = res.runs[0].config.data.dataset
    plot_curves(hist, "test_acc", "test_acc", res.dirs, "test accuracy", f"Test accuracy per epoch ({dataset})")


def recipe_text(cfg: ExperimentConfig) -> str:
    o = cfg.train.optim
    opt = f"{o.optimizer}{' nesterov' if o.optimizer == 'sgd' and o.nesterov else ''} lr {o.lr:g} wd {o.weight_decay:g}"
    return f"{opt}, {o.schedule} (warm-up {o.warmup_epochs:g})"


def _kwargs_text(kwargs: dict) -> str:
    return ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in kwargs.items())


def table_note(runs, preset_name: str) -> str:
    cfgs = {r.config.model: r.config for r in runs}
    first_run = runs[0]
    first, sizes = first_run.config, first_run.record.get("data", {})
    data = (f"{first.data.dataset} ({sizes.get('train', '?')} train / {sizes.get('val', '?')} val / "
            f"{sizes.get('test', '?')} test images)")
    a = first.augment
    aug = ", ".join(filter(None, [f"crop pad {a.crop_pad}" if a.crop_pad else "", "flip" if a.flip else ""])) or "none"
    recipes: dict[str, list[str]] = {}
    for model, cfg in cfgs.items():
        recipes.setdefault(recipe_text(cfg), []).append(model)
    if len(recipes) == 1:
        recipe = next(iter(recipes))
    else:
        recipe = "; ".join(f"{', '.join(ms)}: {text}" for text, ms in recipes.items())
    seeds = sorted({r.config.seed for r in runs})
    kwargs = "".join(f" {m} built with {_kwargs_text(c.model_kwargs)}." for m, c in cfgs.items() if c.model_kwargs)
    return (f"{data}, preset {preset_name}, {first.train.epochs} epochs, batch {first.train.batch_size}, "
            f"seeds {seeds}. Recipe: {recipe}; augmentation {aug}; TTA {first.train.tta}.{kwargs} "
            f"Last = final epoch; val_selected = the epoch chosen on validation; best_oracle = the best epoch chosen "
            f"on the test split (an oracle, optimistic); TTA and ECE on the final weights.")


def build_parser():
    p = study_parser("architectures", __doc__)
    g = p.add_argument_group("architectures")
    g.add_argument("--models", type=name_list, default=None,
                   help="comma-separated registry names (default: the preset's list); "
                        "recipe options such as --lr apply to every model")
    describe_preset_defaults(p, preset)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    models = args.models or default_models(args.preset)
    validate_models(models)
    base = preset(args.preset)
    apply_data_args(args, base.data)
    apply_label_noise(args, base.data)
    apply_train_args(args, base.train, base.augment)  # validates the options once, before any run
    ctx = context_from_args(args, resume=args.resume)
    arms = build_arms(base, models, args.seeds or [0], args)
    tables = lambda runs: [Table(COLUMNS, KEYS, "Architectures", table_note(runs, args.preset))]  # noqa: E731
    return run_study(Study(arms, table_row, tables, plot_figures), args, ctx)


if __name__ == "__main__":
    sys.exit(main())
