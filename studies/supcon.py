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
from pathlib import Path

from robustlab.cli import context_from_args, name_list, positive_float, positive_int
from robustlab.errors import cli_entry
from robustlab.config import ExperimentConfig, StrategyConfig
from robustlab.fileio import write_json
from robustlab.records import find_record
from robustlab.settings import SUPCON_HEADS as HEADS
from studies.common import history_rows, plot_curves, plot_panels, split_sizes, study_parser
from studies.skeleton import Results, Study, Table, run_study, seeds_of
from studies.supcon_recipes import DEFAULT_HEADS, Presets, configure, preset  # noqa: F401

COLUMNS = ["arm", "test_acc", "knn_acc", "linear_probe_acc", "silhouette", "alignment", "uniformity", "test_ece",
           "train_seconds"]
LABELS = {"ce": "cross-entropy", "supcon": "SupCon encoder", "supcon_finetune": "SupCon fine-tuned"}


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
    from robustlab.experiment import run_experiment
    return run_experiment(cfg, out, ctx)


# ---- embeddings ------------------------------------------------------------------------------

def feature_run(run) -> str:
    """The run whose checkpoint holds an arm's features: a frozen head shares its encoder's run."""
    opts = run.config.strategy.options
    frozen = run.config.strategy.name == "supcon_probe" and opts.get("head", "mlp") != "finetune"
    return opts["encoder_run"] if frozen else run.config.run_id


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


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from robustlab.embed import cached_run_embedding, plot_test_embeddings  # torch: once the arguments are read
    from robustlab.experiment import prepare_data
    p, heads = configure(args)
    ctx = context_from_args(args, resume=args.resume)
    pretrains, classifiers = build_arms(p, heads, args.seeds or [0])
    out, embeddings = Path(args.out), {}

    def row(run) -> dict:
        source = feature_run(run)
        if source not in embeddings and not (out / "runs" / source / "last.pt").exists():
            print(f"skip the embedding of {source}: {out / 'runs' / source / 'last.pt'} is missing", file=sys.stderr)
        elif source not in embeddings:
            embeddings[source] = cached_run_embedding(out, source, ctx, p.bank_size, p.tsne_points)
        emb = embeddings.get(source, {"scores": {}})
        pre = find_record(out, run.config.strategy.options.get("encoder_run", "")) or {"metrics": {}}
        m = run.record["metrics"]
        seconds = m.get("train_seconds", 0.0) + pre["metrics"].get("train_seconds", 0.0)
        return {"arm": run.config.tag, "test_acc": m.get("test_acc"), "test_ece": m.get("test_ece"),
                "train_seconds": seconds, **emb["scores"]}

    def tables(runs) -> list[Table]:
        pre = p.pretrain
        note = (f"{p.ce.data.dataset} ({split_sizes(runs)}), {p.ce.model}, preset {args.preset}, seeds {seeds_of(runs)}. "
                f"SupCon pretraining: "
                f"{pre.train.epochs} epochs, batch {pre.train.batch_size}, temperature "
                f"{pre.strategy.options['temperature']}; classifier heads {p.probe.train.epochs} epochs; CE "
                f"{p.ce.train.epochs} epochs. test_acc/test_ece: the classifier on the test split. knn_acc, "
                f"linear_probe_acc, silhouette, alignment, uniformity: the test features (frozen heads share their "
                f"encoder's), kNN and probe fitted on up to {p.bank_size} training features. train_seconds of a "
                f"SupCon arm include its pretraining.")
        return [Table(COLUMNS, ["arm"], "SupCon vs cross-entropy", note)]

    def figures(res: Results) -> None:
        first, panels = min(seeds_of(res.runs)), {}
        for run in (r for r in res.runs if r.config.seed == first):
            source = feature_run(run)
            name = LABELS["supcon"] if source != run.config.run_id else LABELS.get(run.config.tag, run.config.tag)
            if "tsne" in embeddings.get(source, {}):
                panels.setdefault(name, (embeddings[source]["tsne"]["points"], embeddings[source]["tsne"]["labels"]))
        if panels:
            splits = prepare_data(p.ce.data, first, ctx).splits
            shown = plot_test_embeddings(panels, splits, [d / "tsne_test.png" for d in res.dirs], p.ce.data.dataset)
            write_json(res.dirs[0] / "tsne_test.json", shown)  # what the figure shows, machine-readable
        tag = lambda r: r.config.tag  # noqa: E731
        plot_panels([(history_rows(res.prerequisites, tag), "train_loss", "SupCon pretraining", "SupCon loss"),
                     (history_rows(res.runs, tag), "train_loss", "Classifier training", "train cross-entropy")],
                    "loss_curves", res.dirs)
        plot_curves(history_rows(res.runs, tag), "test_acc", "test_acc", res.dirs, "test accuracy",
                    "Test accuracy per epoch")

    study = Study(classifiers, row, tables, figures, prerequisites=pretrains, runner=_run_when_encoder_exists)
    return run_study(study, args, ctx)


if __name__ == "__main__":
    sys.exit(main())
