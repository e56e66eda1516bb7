"""Look inside a trained encoder: extract features, project them to 2-D, plot them, score them.

The scores describe how well the classes are separated in feature space:
  knn_acc           cosine k-nearest-neighbour accuracy (train features as the memory bank)
  linear_probe_acc  logistic regression on standardized features
  silhouette        cosine silhouette of the class clusters, in [-1, 1]
  alignment         mean squared distance between same-class unit features (Wang & Isola 2020; lower = tighter)
  uniformity        log E exp(-t ||f_i - f_j||^2) over all pairs of unit features (lower = more spread out)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from scipy.spatial.distance import pdist  # noqa: E402
from scipy.special import logsumexp  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from sklearn.metrics import silhouette_score  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from robustlab.errors import require  # noqa: E402

# Above this many colour groups a legend is unreadable, and distinct colours run out.
MAX_LEGEND_GROUPS = 20


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def extract_features(model: torch.nn.Module, loader: Iterable, device=None,
                     precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Run `model.forward_features` over `loader` in eval mode, under `precision` (robustlab.precision).

    `loader` yields (x, y, idx) or (x, y). Returns (float32 (N, D), int64 (N,)) CPU tensors in
    loader order. The model's train/eval mode is restored afterwards.
    """
    require(hasattr(model, "forward_features"), "extract_features needs a model with forward_features")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    from robustlab.precision import resolve_precision

    policy = resolve_precision(precision, device, channels_last=False)
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for batch in loader:
            require(isinstance(batch, (tuple, list)) and len(batch) >= 2, "extract_features expects batches (x, y, idx) or (x, y)")
            x, y = batch[0], batch[1]
            with policy.autocast():
                feats.append(model.forward_features(x.to(device)).float().cpu())
            labels.append(torch.as_tensor(y).long().cpu())
    finally:
        model.train(was_training)
    require(len(feats) > 0, "extract_features got an empty loader")
    return torch.cat(feats), torch.cat(labels)


def _numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _features_and_labels(features, labels, what: str) -> tuple[np.ndarray, np.ndarray]:
    f, y = _numpy(features).astype(np.float64), _numpy(labels).reshape(-1)
    require(f.ndim == 2, f"{what}: features must be (N, D), got shape {f.shape}")
    require(len(f) == len(y), f"{what}: {len(f)} feature rows but {len(y)} labels")
    return f, y


def _unit(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def sample_indices(n: int, max_points: int | None, seed: int = 0) -> np.ndarray:
    """The rows kept when at most `max_points` of `n` are used (all of them, in order, if n <= max_points)."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    require(max_points >= 1, f"max_points must be >= 1, got {max_points}")
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


# ----------------------------------------------------------------------------------------------
# 2-D projection and plots
# ----------------------------------------------------------------------------------------------

PROJECTIONS = ("tsne", "pca")


def project_2d(features, method: str = "tsne", seed: int = 0, max_points: int | None = None) -> np.ndarray:
    """Project (N, D) features to (M, 2) with t-SNE or PCA.

    With `max_points`, M = min(N, max_points) rows are used: those of `sample_indices(N, max_points, seed)`
    (select the labels with the same call).
    """
    require(method in PROJECTIONS, f"unknown projection {method!r}; choose one of {', '.join(PROJECTIONS)}")
    f = _numpy(features).astype(np.float32)
    require(f.ndim == 2, f"features must be (N, D), got shape {f.shape}")
    f = f[sample_indices(len(f), max_points, seed)]
    require(len(f) >= 3, f"need at least 3 points to project, got {len(f)}")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(f)
    # The usual perplexity of 30 must stay well below the number of points.
    perplexity = min(30.0, (len(f) - 1) / 3)
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(f)


@dataclass(frozen=True)
class PlotSummary:
    """What a saved plot shows, read back from the drawn artists."""

    path: Path
    num_points: int  # scatter points drawn (all panels together)
    num_colour_groups: int  # distinct point colours drawn


def _hue_values(labels: np.ndarray, class_names, hue_labels, hue_names) -> tuple[np.ndarray, bool]:
    """Per-point colour groups: classes, or superclasses when there are too many classes."""
    if len(np.unique(labels)) > MAX_LEGEND_GROUPS and hue_labels is not None:
        hue = _numpy(hue_labels).reshape(-1)
        require(len(hue) == len(labels), f"{len(hue)} hue labels for {len(labels)} points")
        names = hue_names
    else:
        hue, names = labels, class_names
    if names is not None:
        hue = np.asarray([names[int(h)] for h in hue])
    return hue, len(np.unique(hue)) <= MAX_LEGEND_GROUPS


def _scatter(ax, points, labels, class_names, hue_labels, hue_names, title, legend: bool) -> None:
    p = _numpy(points)
    y = _numpy(labels).reshape(-1)
    require(p.ndim == 2 and p.shape[1] == 2, f"points must be (N, 2), got shape {p.shape}")
    require(len(p) == len(y), f"{len(p)} points but {len(y)} labels")
    hue, legible = _hue_values(y, class_names, hue_labels, hue_names)
    groups = list(dict.fromkeys(hue[np.argsort(y, kind="stable")]))  # legend in label order
    palette = sns.color_palette("tab20" if len(groups) <= 20 else "husl", len(groups))
    sns.scatterplot(
        x=p[:, 0], y=p[:, 1], hue=hue, hue_order=groups, palette=palette, s=8, linewidth=0,
        legend="full" if legend and legible else False, ax=ax,
    )
    ax.set(xticks=[], yticks=[], title=title)
    if ax.get_legend() is not None:
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", markerscale=2, frameon=False)


def _save(fig, axes, path) -> PlotSummary:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    colours, n = set(), 0
    for ax in axes:
        for coll in ax.collections:
            n += len(coll.get_offsets())
            colours.update(map(tuple, np.round(coll.get_facecolors(), 6)))
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return PlotSummary(path, n, len(colours))


def plot_embedding(
    points_2d, labels, path, class_names: Sequence[str] | None = None, title: str | None = None,
    hue_labels=None, hue_names: Sequence[str] | None = None,
) -> PlotSummary:
    """Scatter one point per sample, coloured by class, and save to `path`.

    With more than 20 classes (e.g. CIFAR-100) and per-sample `hue_labels` (e.g. superclasses),
    points are coloured by those instead, so the legend stays legible; otherwise the legend is
    dropped when there are more than 20 colour groups.
    """
    fig, ax = plt.subplots(figsize=(6, 5))
    _scatter(ax, points_2d, labels, class_names, hue_labels, hue_names, title, legend=True)
    return _save(fig, [ax], path)


def plot_embeddings_side_by_side(
    panels: Mapping[str, tuple], path, class_names: Sequence[str] | None = None, title: str | None = None,
    class_to_hue=None, hue_names: Sequence[str] | None = None,
) -> PlotSummary:
    """One panel per entry of {name: (points_2d, labels)}, e.g. cross-entropy vs SupCon.

    `class_to_hue` maps a class label to a colour group (e.g. CIFAR-100 fine -> coarse label);
    it is used when there are more than 20 classes. The legend is drawn once, on the last panel.
    """
    require(len(panels) > 0, "plot_embeddings_side_by_side needs at least one panel")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 1, 5), squeeze=False)
    axes = list(axes[0])
    lookup = None if class_to_hue is None else _numpy(class_to_hue).reshape(-1)
    for i, (ax, (name, (points, labels))) in enumerate(zip(axes, panels.items())):
        hue = None if lookup is None else lookup[_numpy(labels).reshape(-1).astype(int)]
        _scatter(ax, points, labels, class_names, hue, hue_names, name, legend=i == len(axes) - 1)
    if title:
        fig.suptitle(title)
    return _save(fig, axes, path)


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int = 20) -> float:
    """Accuracy of a majority vote among the k cosine-nearest training features."""
    xtr, ytr = _features_and_labels(train_feats, train_labels, "knn_accuracy (train)")
    xte, yte = _features_and_labels(test_feats, test_labels, "knn_accuracy (test)")
    require(k >= 1, f"k must be >= 1, got {k}")
    knn = KNeighborsClassifier(n_neighbors=min(k, len(xtr)), metric="cosine").fit(xtr, ytr)
    return float((knn.predict(xte) == yte).mean())


def linear_probe_accuracy(train_feats, train_labels, test_feats, test_labels, max_iter: int = 1000, C: float = 1.0) -> float:
    """Accuracy of a logistic-regression probe on standardized features."""
    xtr, ytr = _features_and_labels(train_feats, train_labels, "linear_probe_accuracy (train)")
    xte, yte = _features_and_labels(test_feats, test_labels, "linear_probe_accuracy (test)")
    require(len(np.unique(ytr)) >= 2, "linear_probe_accuracy needs at least 2 classes in the training features")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=C)).fit(xtr, ytr)
    return float(probe.score(xte, yte))


def silhouette(features, labels, max_points: int = 5000, seed: int = 0) -> float:
    """Cosine silhouette score of the class clusters (on a seeded subsample above `max_points`)."""
    f, y = _features_and_labels(features, labels, "silhouette")
    keep = sample_indices(len(f), max_points, seed)
    f, y = f[keep], y[keep]
    require(2 <= len(np.unique(y)) <= len(f) - 1, "silhouette needs between 2 and N-1 distinct labels")
    return float(silhouette_score(f, y, metric="cosine"))


def alignment(features, labels) -> float:
    """Mean ||f_i - f_j||^2 over all same-class pairs i < j of L2-normalized features (exact).

    For unit vectors, the pairs of a class with n members and feature sum S add up to n^2 - ||S||^2,
    so no pairwise matrix is needed.
    """
    f, y = _features_and_labels(features, labels, "alignment")
    f = _unit(f)
    total, pairs = 0.0, 0
    for c in np.unique(y):
        members = f[y == c]
        n = len(members)
        total += n * n - float(np.sum(members.sum(axis=0) ** 2))
        pairs += n * (n - 1) // 2
    require(pairs > 0, "alignment needs at least one class with two samples")
    return max(total, 0.0) / pairs  # clip rounding below zero


def uniformity(features, t: float = 2.0, max_points: int = 4000, seed: int = 0) -> float:
    """log mean_{i<j} exp(-t ||f_i - f_j||^2) of L2-normalized features (seeded subsample above `max_points`)."""
    f = _numpy(features).astype(np.float64)
    require(f.ndim == 2 and len(f) >= 2, f"uniformity needs (N >= 2, D) features, got shape {f.shape}")
    require(t > 0, f"t must be > 0, got {t}")
    f = _unit(f[sample_indices(len(f), max_points, seed)])
    sq = pdist(f, metric="sqeuclidean")
    return float(logsumexp(-t * sq) - np.log(len(sq)))


def embedding_report(train_feats, train_labels, test_feats, test_labels, k: int = 20, seed: int = 0) -> dict[str, float]:
    """All scores; the probes train on the train features, the geometry scores use the test features."""
    return {
        "knn_acc": knn_accuracy(train_feats, train_labels, test_feats, test_labels, k=k),
        "linear_probe_acc": linear_probe_accuracy(train_feats, train_labels, test_feats, test_labels),
        "silhouette": silhouette(test_feats, test_labels, seed=seed),
        "alignment": alignment(test_feats, test_labels),
        "uniformity": uniformity(test_feats, seed=seed),
    }
