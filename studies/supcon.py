"""Supervised contrastive pretraining (SupCon) vs plain cross-entropy, on the same backbone.

    python -m studies.supcon [--dataset cifar100] [--head finetune] [--temperature 0.1] [--preset paper]

Arms (one backbone, one data split, the standard crop+flip augmentation for every classifier):
  ce             cross-entropy from scratch (the baseline);
  supcon_mlp     a Linear-ReLU-Linear head on the frozen SupCon encoder, trained with CE;
  supcon_linear  a linear probe on the frozen SupCon encoder;
  supcon_finetune (with --head finetune) a linear head, encoder trained end to end from SupCon.
The SupCon encoder comes from its own run (`supcon_pretrain`: two views per image by SupConViews,
warm-up + cosine LR), which the classifier runs reference by run id.

Writes table.md/csv (test accuracy and ECE of each classifier; kNN accuracy, linear-probe accuracy,
silhouette, alignment and uniformity of its test features, the kNN/probe memory being up to 5,000
training features), side-by-side t-SNE maps of the test features (CIFAR-100: coloured by
superclass) and loss curves, to the results directory and the figures directory.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path

from robustlab.cli import (apply_data_args, apply_momentum_args, apply_train_args, context_from_args, name_list,
                           positive_float, positive_int)
from robustlab.errors import UsageError, cli_entry
from robustlab.experiment import ExperimentConfig, StrategyConfig, prepare_data, resolve_device, run_experiment
from robustlab.fileio import read_json, write_json
from robustlab.models import require_model
from robustlab.records import find_record
from robustlab.schedules import OptimConfig
from robustlab.strategies.supcon import HEADS
from studies.common import (aggregate, history_rows, output_dirs, plot_curves, run_grid, save_figure, should_tabulate,
                            study_parser, write_table)

COLUMNS = ["arm", "test_acc", "knn_acc", "linear_probe_acc", "silhouette", "alignment", "uniformity", "test_ece",
           "train_seconds"]
DEFAULT_HEADS = ("mlp", "linear")
LABELS = {"ce": "cross-entropy", "supcon": "SupCon encoder", "supcon_finetune": "SupCon fine-tuned"}


@dataclass
class Presets:
    """The three recipes of a preset (CE baseline, SupCon pretraining, classifier stage) and the
    embedding budget: training features kept for kNN / linear probe, test points in the t-SNE maps."""

    ce: ExperimentConfig
    pretrain: ExperimentConfig
    probe: ExperimentConfig
    bank_size: int
    tsne_points: int


def preset(name: str) -> Presets:
    """quick: small_cnn on 3,000 CIFAR images (1,000 test), minutes on a 2-core CPU: SupCon 20 epochs,
    batch 128, temperature 0.1, Adam 2e-3 with warm-up + cosine; CE 8 epochs (Adam 2e-3); heads
    8 epochs (Adam 1e-2).

    paper: ResNet-18 on the full training set (no validation split). SupCon pretraining 200 epochs,
    batch 512, temperature 0.1, SGD lr 0.357 and weight decay 7e-5: the SupCon recipe's lr 0.5 at batch 1024 scaled
    linearly to 0.25, times 0.1/0.07 because pytorch-metric-learning's loss lacks the official T/0.07 factor
    (weight decay 1e-4 x 0.07/0.1 keeps its step unchanged), with
    10 warm-up epochs and cosine decay; classifier stage 25 epochs (Adam 1e-3, cosine); the CE
    baseline 100 epochs (SGD 0.1, weight decay 5e-4, warm-up + cosine), all with crop+flip.
    """
    base = ExperimentConfig()
    base.train.tta = "none"
    if name == "quick":
        base.model = "small_cnn"
        base.data.val_size, base.data.train_size, base.data.test_size = 0, 3000, 1000
        ce = copy.deepcopy(base)
        ce.train.epochs, ce.train.batch_size = 8, 128
        ce.train.optim = OptimConfig(optimizer="adam", lr=2e-3, weight_decay=0.0, schedule="warmup_cosine",
                                     warmup_epochs=0.5)
        pretrain = copy.deepcopy(base)
        # Batch 128 (256 views): twice the steps of 256 in the same time, which matters more this early.
        pretrain.train.epochs, pretrain.train.batch_size = 20, 128
        pretrain.train.optim = OptimConfig(optimizer="adam", lr=2e-3, weight_decay=0.0, schedule="warmup_cosine",
                                           warmup_epochs=0.5)
        pretrain.strategy = StrategyConfig("supcon_pretrain", options={"temperature": 0.1})
        probe = copy.deepcopy(ce)
        probe.train.optim.lr = 1e-2  # a new head on fixed features takes a larger step than a whole network
        return Presets(ce, pretrain, probe, bank_size=3000, tsne_points=1000)
    base.model = "resnet18"
    base.data.val_size = 0
    ce = copy.deepcopy(base)
    ce.train.epochs, ce.train.batch_size = 100, 128
    ce.train.optim = OptimConfig(optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="warmup_cosine", warmup_epochs=2)
    pretrain = copy.deepcopy(base)
    pretrain.train.epochs, pretrain.train.batch_size = 200, 512
    pretrain.train.optim = OptimConfig(optimizer="sgd", lr=0.357, weight_decay=7e-5, schedule="warmup_cosine",
                                       warmup_epochs=10)
    pretrain.strategy = StrategyConfig("supcon_pretrain", options={"temperature": 0.1})
    probe = copy.deepcopy(base)
    probe.train.epochs, probe.train.batch_size = 25, 256
    probe.train.optim = OptimConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="warmup_cosine",
                                    warmup_epochs=1)
    return Presets(ce, pretrain, probe, bank_size=5000, tsne_points=2000)


def build_arms(p: Presets, heads: list[str], seeds: list[int]) -> tuple[list[ExperimentConfig], list[ExperimentConfig]]:
    """(pretraining runs, classifier runs): the second list references the first by run id."""
    pretrains, classifiers = [], []
    for seed in seeds:
        pre = copy.deepcopy(p.pretrain)
        pre.tag, pre.seed = "supcon_pretrain", seed
        pretrains.append(pre)
        ce = copy.deepcopy(p.ce)
        ce.tag, ce.seed, ce.strategy = "ce", seed, StrategyConfig("ce")
        classifiers.append(ce)
        for head in heads:
            cfg = copy.deepcopy(p.probe)
            cfg.tag, cfg.seed = f"supcon_{head}", seed
            cfg.strategy = StrategyConfig("supcon_probe", options={"encoder_run": pre.run_id, "head": head})
            classifiers.append(cfg)
    return pretrains, classifiers


def _run_when_encoder_exists(cfg: ExperimentConfig, out: Path, ctx) -> dict | None:
    encoder = cfg.strategy.options.get("encoder_run")
    if encoder and find_record(out, encoder) is None:  # only with --shard: another share pretrains it
        print(f"skip {cfg.run_id}: its encoder run {encoder} has no record yet (rerun after the pretraining)",
              file=sys.stderr)
        return None
    return run_experiment(cfg, out, ctx)


# ---- embeddings ------------------------------------------------------------------------------

def feature_run(run) -> str:
    """The run whose checkpoint holds an arm's features: a frozen head shares its encoder's run."""
    opts = run.config.strategy.options
    frozen = run.config.strategy.name == "supcon_probe" and opts.get("head", "mlp") != "finetune"
    return opts["encoder_run"] if frozen else run.config.run_id


def embedding_scores(run_id: str, out: Path, ctx, bank_size: int, tsne_points: int) -> dict:
    """Embedding scores and t-SNE points of one run's test features; cached in embeddings/<run_id>.json."""
    cache = out / "embeddings" / f"{run_id}.json"
    if cache.exists():
        return read_json(cache)
    import numpy as np

    from robustlab.embed import split_features
    from robustlab.runs import load_run_network
    from robustlab.embeddings import embedding_report, project_2d, sample_indices

    run = load_run_network(out / "runs" / run_id / "last.pt")
    cfg, device = run.config, resolve_device(ctx.device)
    data = prepare_data(cfg.data, cfg.seed, ctx)
    splits = data.splits
    mean, std = run.record["data"]["mean"], run.record["data"]["std"]
    bank = split_features(run.network, splits.train.images, data.clean_train_labels, mean, std, device,
                          max_points=bank_size, seed=cfg.seed)
    test = split_features(run.network, splits.test.images, splits.test.labels, mean, std, device,
                          coarse=splits.test.coarse_labels)
    scores = embedding_report(bank.features, bank.labels, test.features, test.labels, seed=cfg.seed)
    keep = sample_indices(len(test.labels), tsne_points, cfg.seed)
    points = project_2d(test.features, "tsne", seed=cfg.seed, max_points=tsne_points)
    result = {"run_id": run_id, "scores": scores, "bank_size": len(bank.labels), "test_size": len(test.labels),
              "tsne": {"points": np.round(points, 4).tolist(), "labels": test.labels[keep].tolist()}}
    write_json(cache, result)
    return result


def plot_tsne(panels: dict, splits, dirs, dataset: str) -> None:
    from robustlab.embed import superclass_lookup
    from robustlab.embeddings import plot_embeddings_side_by_side

    lookup = superclass_lookup(splits.test.labels, splits.test.coarse_labels, splits.num_classes)
    coloured = "superclass" if lookup is not None and splits.num_classes > 20 else "class"
    for d in dirs:
        shown = plot_embeddings_side_by_side(panels, Path(d) / "tsne_test.png", class_names=splits.classes,
                                             title=f"t-SNE of {dataset} test features (colour: {coloured})",
                                             class_to_hue=lookup, hue_names=splits.test.coarse_classes)
    # What the figure shows, in machine-readable form.
    write_json(Path(dirs[0]) / "tsne_test.json", {
        "colour": coloured, "num_colour_groups": shown.num_colour_groups,
        "panels": [[name, len(points)] for name, (points, _) in panels.items()]})


def plot_losses(pretrain_runs, classifier_runs, dirs) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, runs, title, ylabel in ((axes[0], pretrain_runs, "SupCon pretraining", "SupCon loss"),
                                    (axes[1], classifier_runs, "Classifier training", "train cross-entropy")):
        frame = pd.DataFrame(history_rows(runs, lambda r: r.config.tag))
        if not frame.empty:
            sns.lineplot(data=frame, x="epoch", y="train_loss", hue="arm", marker="o", markersize=3,
                         errorbar="sd", ax=ax)
        ax.set(title=title, ylabel=ylabel, xlabel="epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, "loss_curves", dirs)


# ---- CLI -------------------------------------------------------------------------------------

def build_parser():
    p = study_parser("supcon", __doc__)
    g = p.add_argument_group("supcon")
    g.add_argument("--model", default=None, help="override the preset's backbone (every arm uses it)")
    g.add_argument("--head", type=name_list, default=None, metavar="HEAD[,HEAD]",
                   help=f"classifier heads on the SupCon encoder in addition to {', '.join(DEFAULT_HEADS)}: "
                        f"{' | '.join(HEADS)}")
    g.add_argument("--pretrain-epochs", type=positive_int, default=None, help="SupCon pretraining epochs")
    g.add_argument("--pretrain-batch-size", type=positive_int, default=None,
                   help="SupCon pretraining batch (images; each gives two views)")
    g.add_argument("--pretrain-lr", type=positive_float, default=None, help="SupCon pretraining peak learning rate")
    g.add_argument("--temperature", type=positive_float, default=None, help="SupCon temperature (default 0.1)")
    g.add_argument("--ce-epochs", type=positive_int, default=None,
                   help="CE baseline epochs (default: --epochs, or the preset's)")
    return p


def configure(args) -> tuple[Presets, list[str]]:
    p = preset(args.preset)
    heads = list(DEFAULT_HEADS)
    for head in args.head or []:
        if head not in HEADS:
            raise UsageError(f"unknown head {head!r}; choose from {', '.join(HEADS)}")
        if head not in heads:
            heads.append(head)
    ce_epochs = args.ce_epochs or args.epochs
    for cfg in (p.ce, p.pretrain, p.probe):
        if args.model:
            cfg.model = args.model
        apply_data_args(args, cfg.data)
    for cfg in (p.ce, p.probe):
        apply_train_args(args, cfg.train, cfg.augment)
    if ce_epochs:
        p.ce.train.epochs = ce_epochs
    t = p.pretrain.train
    t.epochs = args.pretrain_epochs or t.epochs
    t.batch_size = args.pretrain_batch_size or t.batch_size
    t.optim.lr = args.pretrain_lr or t.optim.lr
    apply_momentum_args(args, t.optim)  # --momentum / --no-nesterov reach the pretraining optimizer too
    t.precision, t.compile = p.ce.train.precision, p.ce.train.compile
    if args.temperature:
        p.pretrain.strategy.options["temperature"] = args.temperature
    require_model(p.ce.model)
    return p, heads


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    p, heads = configure(args)
    ctx = context_from_args(args, resume=args.resume)
    pretrains, classifiers = build_arms(p, heads, args.seeds or [0])
    pre_runs = run_grid(pretrains, args, ctx)
    runs = run_grid(classifiers, args, ctx, runner=_run_when_encoder_exists)
    if not should_tabulate(args) or not runs:
        return 0

    out, dirs = Path(args.out), output_dirs(args)
    pretrain_seconds = {r.config.run_id: r.record["metrics"].get("train_seconds", 0.0) for r in pre_runs}
    rows, panels = [], {}
    first_seed = min(r.config.seed for r in runs)
    for run in runs:
        source = feature_run(run)
        if not (out / "runs" / source / "last.pt").exists():
            print(f"skip embeddings of {run.config.run_id}: {out / 'runs' / source / 'last.pt'} is missing",
                  file=sys.stderr)
            emb = {"scores": {}}
        else:
            emb = embedding_scores(source, out, ctx, p.bank_size, p.tsne_points)
        m = run.record["metrics"]
        seconds = m.get("train_seconds", 0.0) + pretrain_seconds.get(run.config.strategy.options.get("encoder_run"), 0.0)
        rows.append({"arm": run.config.tag, "seed": run.config.seed, "test_acc": m.get("test_acc"),
                     "test_ece": m.get("test_ece"), "train_seconds": seconds, **emb["scores"]})
        if run.config.seed == first_seed and "tsne" in emb:
            name = LABELS["supcon"] if source != run.config.run_id else LABELS.get(run.config.tag, run.config.tag)
            panels.setdefault(name, (emb["tsne"]["points"], emb["tsne"]["labels"]))

    table = aggregate(rows, ["arm"], [c for c in COLUMNS if c != "arm"])
    pre = p.pretrain
    note = (f"{p.ce.data.dataset}, {p.ce.model}, preset {args.preset}, seeds {sorted({r.config.seed for r in runs})}. "
            f"SupCon pretraining: {pre.train.epochs} epochs, batch {pre.train.batch_size}, "
            f"temperature {pre.strategy.options['temperature']}; classifier heads {p.probe.train.epochs} epochs; "
            f"CE {p.ce.train.epochs} epochs. test_acc/test_ece: the classifier on the test split. "
            f"knn_acc, linear_probe_acc, silhouette, alignment, uniformity: the test features (frozen heads share "
            f"their encoder's), kNN and probe fitted on up to {p.bank_size} training features. "
            f"train_seconds of a SupCon arm include its pretraining.")
    print(write_table(table, COLUMNS, dirs, title="SupCon vs cross-entropy", note=note))
    write_table(rows, COLUMNS + ["seed"], [dirs[0]], stem="runs")

    if panels:
        splits = prepare_data(p.ce.data, first_seed, ctx).splits
        plot_tsne(panels, splits, dirs, p.ce.data.dataset)
    plot_losses(pre_runs, runs, dirs)
    plot_curves(history_rows(runs, lambda r: r.config.tag), "test_acc", "test_acc", dirs, "test accuracy",
                "Test accuracy per epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
