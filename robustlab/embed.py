"""Look at what a trained run's encoder learned: features, class-separation scores and a 2-D map.

    python -m robustlab.embed --checkpoint results/supcon/runs/<run_id>/last.pt --out DIR
        [--split test] [--method tsne|pca] [--max-points 2000] [--dataset ...] [--data-dir ...]

The run's record (`<results>/records/<run_id>.json`, found two folders above the checkpoint, or
given with --record) names the model, its keyword arguments, the dataset and the split seed, so
the features come from exactly the network and data split the run trained on. Writes
`embedding_<split>.json` (knn_acc, linear_probe_acc, silhouette, alignment, uniformity; the probes
use up to --max-train training features as their memory, never the scored points: with --split train
they are fit on one part of the training set and scored on the rest) and `embedding_<split>_<method>.png`.
CIFAR-100 points are coloured by superclass.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robustlab.cli import Parser, positive_int
from robustlab.errors import UsageError, cli_entry, require
from robustlab.experiment import Context, prepare_data, resolve_device
from robustlab.fileio import write_json
from robustlab.runs import load_run_network

SPLITS = ("test", "train", "val")


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------


@dataclass
class SplitFeatures:
    features: torch.Tensor       # float32 (N, D), CPU
    labels: torch.Tensor         # int64 (N,): true (clean) labels
    coarse: torch.Tensor | None  # superclass labels (CIFAR-100), else None


def split_features(network: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std, device,
                   coarse: torch.Tensor | None = None, max_points: int | None = None, seed: int = 0,
                   batch_size: int = 512, precision: str = "auto") -> SplitFeatures:
    """Features of (a seeded subsample of at most `max_points` of) uint8 `images`, normalized by (mean, std),
    under the training precision policy (`auto`: bf16 where the device computes it natively)."""
    from robustlab.data import DeviceLoader, Normalize
    from robustlab.embeddings import extract_features, sample_indices

    keep = torch.as_tensor(sample_indices(len(labels), max_points, seed))
    loader = DeviceLoader(images[keep], labels[keep], batch_size, Normalize(mean, std), shuffle=False, device=device)
    network.to(device)
    feats, labs = extract_features(network, loader, device=device, precision=precision)
    return SplitFeatures(feats, labs, None if coarse is None else coarse[keep].cpu())


def probe_rows(split: str, n_train: int, n_split: int, max_train: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows for the kNN memory bank / probe fit, rows of `split` that are scored and plotted).

    The probes must be scored on points they have not seen: with split "train" the training set is
    shuffled (seeded) and cut in two, the bank taking up to `max_train` rows but at most half, the
    scored points the rest. Other splits are scored whole against up to `max_train` training rows.
    """
    from robustlab.embeddings import sample_indices

    if split != "train":
        return torch.as_tensor(sample_indices(n_train, max_train, seed)), torch.arange(n_split)
    require(n_train >= 2, f"--split train needs at least 2 training images, got {n_train}")
    order = torch.as_tensor(np.random.default_rng(seed).permutation(n_train))
    size = min(max_train, n_train // 2)
    return order[:size].sort().values, order[size:].sort().values


@dataclass
class RunEmbedding:
    """A run's features of one split, their scores and a 2-D map of (a subsample of) them."""
    run: object                  # robustlab.runs.RunNetwork
    split: object                # the scored DataSplit (classes, coarse_classes)
    features: SplitFeatures      # the scored points
    bank_size: int               # training features in the kNN memory / probe fit
    scores: dict                 # knn_acc, linear_probe_acc, silhouette, alignment, uniformity
    points: np.ndarray           # (P, 2) projection of the points in `shown`
    shown: np.ndarray            # indices into `features` of the projected points


def embed_run(checkpoint: str | Path, ctx: Context, split: str = "test", max_train: int = 5000,
              max_points: int = 2000, method: str = "tsne", seed: int = 0, record: str | Path | None = None,
              dataset: str | None = None) -> RunEmbedding:
    """Features of a run's `split` from its checkpoint, on exactly the data split the run trained on
    (true labels), scored against up to `max_train` training features it never scores (`probe_rows`)."""
    from robustlab.embeddings import embedding_report, project_2d, sample_indices

    run = load_run_network(checkpoint, record)
    cfg = run.config
    if dataset:
        cfg.data.dataset = dataset
    # Scores and colours use the true labels: no synthetic, file or human noise.
    cfg.data.noise_rate, cfg.data.noise_type, cfg.data.noise_file = 0.0, "symmetric", None
    device = resolve_device(ctx.device)
    splits = prepare_data(cfg.data, cfg.seed, ctx).splits
    chosen = {"test": splits.test, "train": splits.train, "val": splits.val}[split]
    if chosen is None:
        raise UsageError(f"the run has no {split} split (its val_size is 0)")
    stats = run.record.get("data") or {}
    mean, std = stats.get("mean") or splits.mean, stats.get("std") or splits.std  # the run's own normalization
    bank_rows, scored_rows = probe_rows(split, len(splits.train), len(chosen), max_train, seed)
    bank = split_features(run.network, splits.train.images[bank_rows], splits.train.labels[bank_rows], mean, std,
                          device, seed=seed)
    feats = split_features(run.network, chosen.images[scored_rows], chosen.labels[scored_rows], mean, std, device,
                           coarse=None if chosen.coarse_labels is None else chosen.coarse_labels[scored_rows],
                           seed=seed)
    scores = embedding_report(bank.features, bank.labels, feats.features, feats.labels, seed=seed)
    points = project_2d(feats.features, method, seed=seed, max_points=max_points)
    return RunEmbedding(run, chosen, feats, len(bank.labels), scores, points,
                        np.asarray(sample_indices(len(feats.labels), max_points, seed)))


def cached_run_embedding(results_dir: str | Path, run_id: str, ctx: Context, max_train: int, max_points: int) -> dict:
    """`embed_run` of `<results>/runs/<run_id>/last.pt` (test split, t-SNE, the run's seed) as JSON
    {run_id, scores, bank_size, tsne: {points, labels}}, cached in `<results>/embeddings/<run_id>.json`."""
    from robustlab.fileio import read_json

    results_dir = Path(results_dir)
    cache = results_dir / "embeddings" / f"{run_id}.json"
    if cache.exists():
        return read_json(cache)
    seed = read_json(results_dir / "records" / f"{run_id}.json")["config"]["seed"]
    emb = embed_run(results_dir / "runs" / run_id / "last.pt", ctx, "test", max_train, max_points, seed=seed)
    result = {"run_id": run_id, "scores": emb.scores, "bank_size": emb.bank_size,
              "tsne": {"points": emb.points.round(4).tolist(), "labels": emb.features.labels[emb.shown].tolist()}}
    write_json(cache, result)
    return result


def plot_test_embeddings(panels: dict, splits, paths: list[Path], dataset: str) -> dict:
    """Side-by-side 2-D maps {name: (points, labels)} of test features, coloured by superclass where
    the dataset has them (CIFAR-100); returns what the figure shows."""
    from robustlab.embeddings import plot_embeddings_side_by_side

    lookup = superclass_lookup(splits.test.labels, splits.test.coarse_labels, splits.num_classes)
    coloured = "superclass" if lookup is not None and splits.num_classes > 20 else "class"
    for path in paths:
        shown = plot_embeddings_side_by_side(panels, path, class_names=splits.classes, class_to_hue=lookup,
                                             title=f"t-SNE of {dataset} test features (colour: {coloured})",
                                             hue_names=splits.test.coarse_classes)
    return {"colour": coloured, "num_colour_groups": shown.num_colour_groups,
            "panels": [[name, len(points)] for name, (points, _) in panels.items()]}


def superclass_lookup(labels: torch.Tensor, coarse: torch.Tensor | None, num_classes: int):
    """(num_classes,) class -> superclass array from per-sample labels, or None without superclasses."""
    if coarse is None:
        return None
    lookup = torch.zeros(num_classes, dtype=torch.long)
    lookup[labels.long()] = coarse.long()
    return lookup.numpy()


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def build_parser() -> Parser:
    from robustlab.embeddings import PROJECTIONS

    p = Parser(prog="python -m robustlab.embed", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a run's runs/<run_id>/last.pt or best.pt")
    p.add_argument("--record", default=None, help="the run's record (default: <results>/records/<run_id>.json)")
    p.add_argument("--out", required=True, help="folder for embedding_<split>.json and the scatter PNG")
    p.add_argument("--dataset", default=None, help="override the run's dataset (cifar10 | cifar100 | imagefolder:<path>)")
    p.add_argument("--data-dir", default=None, help="folder holding the dataset (env ROBUSTLAB_DATA)")
    p.add_argument("--cache-dir", default=None, help="decoded-array cache (env ROBUSTLAB_CACHE)")
    p.add_argument("--split", choices=SPLITS, default="test", help="whose features are scored and plotted")
    p.add_argument("--method", choices=PROJECTIONS, default="tsne", help="2-D projection")
    p.add_argument("--max-points", type=positive_int, default=2000, help="points projected and plotted")
    p.add_argument("--max-train", type=positive_int, default=5000, help="training features used by kNN / linear probe")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, default=0, help="subsampling and t-SNE seed")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise UsageError(f"data directory {args.data_dir} does not exist")
    ctx = Context(data_dir=args.data_dir, cache_dir=args.cache_dir, device=args.device)
    emb = embed_run(args.checkpoint, ctx, args.split, args.max_train, args.max_points, args.method, args.seed,
                    args.record, args.dataset)

    from robustlab.embeddings import plot_embedding

    run, cfg, feats, keep, report = emb.run, emb.run.config, emb.features, emb.shown, emb.scores
    out = Path(args.out)
    plotted = plot_embedding(
        emb.points, feats.labels[keep], out / f"embedding_{args.split}_{args.method}.png",
        class_names=emb.split.classes, title=f"{run.record['run_id']} ({cfg.data.dataset} {args.split}, {args.method})",
        hue_labels=None if feats.coarse is None else feats.coarse[keep], hue_names=emb.split.coarse_classes)
    summary = {"run_id": run.record["run_id"], "checkpoint": str(run.checkpoint), "model": cfg.model,
               "dataset": cfg.data.dataset, "split": args.split, "num_points": len(feats.labels),
               "feature_dim": int(feats.features.shape[1]), "memory_bank": {"split": "train", "size": emb.bank_size},
               "method": args.method, "plotted_points": plotted.num_points, **report}
    write_json(out / f"embedding_{args.split}.json", summary)
    print(" ".join(f"{k}={v:.4f}" for k, v in report.items()))
    print(f"wrote {out / f'embedding_{args.split}.json'} and {plotted.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
