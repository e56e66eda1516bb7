"""Feature extraction, 2-D projections, embedding plots and class-separation scores."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from robustlab.embeddings import (
    alignment,
    embedding_report,
    extract_features,
    knn_accuracy,
    linear_probe_accuracy,
    plot_embedding,
    plot_embeddings_side_by_side,
    project_2d,
    sample_indices,
    silhouette,
    uniformity,
)
from robustlab.errors import UsageError


def clustered(n_per_class: int, num_classes: int, seed: int, dim: int = 16, noise: float = 0.05):
    """Each class sits tightly around its own orthogonal direction."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), n_per_class)
    centres = np.eye(dim)[:num_classes] * 5
    return centres[labels] + noise * rng.standard_normal((len(labels), dim)), labels


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------


def test_perfect_clusters_score_perfectly():
    xtr, ytr = clustered(30, 4, seed=0)
    xte, yte = clustered(10, 4, seed=1)
    assert knn_accuracy(xtr, ytr, xte, yte, k=5) == 1.0
    assert linear_probe_accuracy(xtr, ytr, xte, yte) == 1.0
    assert silhouette(xte, yte) > 0.95
    report = embedding_report(torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), torch.tensor(yte), k=5)
    assert set(report) == {"knn_acc", "linear_probe_acc", "silhouette", "alignment", "uniformity"}
    assert report["knn_acc"] == 1.0 and report["linear_probe_acc"] == 1.0
    assert report["alignment"] < 0.01  # same-class unit vectors nearly coincide
    # 4 classes at right angles, 10 each: ~30% of pairs are same-class (distance 0), the rest at distance^2 2.
    same = 4 * 45 / (40 * 39 / 2)
    assert report["uniformity"] == pytest.approx(math.log(same + (1 - same) * math.exp(-4)), abs=0.02)


def test_random_embedding_is_near_chance():
    rng = np.random.default_rng(0)
    classes = 5
    xtr, xte = rng.standard_normal((1000, 32)), rng.standard_normal((1000, 32))
    ytr, yte = rng.integers(0, classes, 1000), rng.integers(0, classes, 1000)
    assert abs(knn_accuracy(xtr, ytr, xte, yte) - 1 / classes) < 0.1
    assert abs(linear_probe_accuracy(xtr, ytr, xte, yte) - 1 / classes) < 0.1
    assert abs(silhouette(xte, yte)) < 0.05


def test_alignment_values():
    # Identical unit vectors within each class (scaled copies normalize to the same point) -> 0.
    f = np.array([[1.0, 0], [3.0, 0], [0, 2.0], [0, 0.5]])
    assert alignment(f, [0, 0, 1, 1]) == pytest.approx(0.0, abs=1e-12)
    # Mixed classes, checked against the pairwise definition.
    rng = np.random.default_rng(0)
    f, y = rng.standard_normal((9, 4)), np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    u = f / np.linalg.norm(f, axis=1, keepdims=True)
    pairs = [np.sum((u[i] - u[j]) ** 2) for i in range(9) for j in range(i + 1, 9) if y[i] == y[j]]
    assert len(pairs) == 3 + 1 + 6
    assert alignment(torch.tensor(f), torch.tensor(y)) == pytest.approx(np.mean(pairs), rel=1e-10)
    # Opposite unit vectors in one class: distance^2 = 4.
    assert alignment([[1.0, 0], [-2.0, 0]], [7, 7]) == pytest.approx(4.0)
    with pytest.raises(UsageError, match="two samples"):
        alignment([[1.0, 0], [0, 1.0]], [0, 1])


def test_uniformity_on_three_points_by_hand():
    # After normalization: (1,0), (0,1), (-1,0); squared distances 2, 4, 2.
    f = [[2.0, 0], [0, 1.0], [-0.5, 0]]
    expected = math.log((math.exp(-2 * 2) + math.exp(-2 * 4) + math.exp(-2 * 2)) / 3)
    assert uniformity(f) == pytest.approx(expected, rel=1e-12)
    expected_t1 = math.log((2 * math.exp(-2) + math.exp(-4)) / 3)
    assert uniformity(f, t=1) == pytest.approx(expected_t1, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------


class BNEncoder(nn.Module):
    """forward_features depends on train/eval mode through BatchNorm, so eval mode is observable."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3)
        self.bn.running_mean.fill_(1.0)  # eval: x - 1 (running_var 1, affine identity)

    def forward_features(self, x):
        return self.bn(x.flatten(1))


def test_extract_features_in_eval_mode_and_loader_order():
    model = BNEncoder().train()
    batches = [(torch.arange(6.0).view(2, 3), torch.tensor([1, 0]), torch.tensor([0, 1])),
               (torch.arange(6.0, 12.0).view(2, 3), torch.tensor([2, 2]), torch.tensor([2, 3]))]
    feats, labels = extract_features(model, batches)
    expected = (torch.arange(12.0).view(4, 3) - 1) / math.sqrt(1 + 1e-5)
    assert feats.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.allclose(feats, expected)
    assert torch.equal(labels, torch.tensor([1, 0, 2, 2]))
    assert model.training  # mode restored
    assert torch.equal(model.bn.running_mean, torch.ones(3))  # eval mode: statistics untouched
    pairs = [(x, y) for x, y, _ in batches]  # plain (x, y) pairs work too
    assert torch.allclose(extract_features(model, pairs)[0], expected)


# ----------------------------------------------------------------------------------------------
# Projections and plots
# ----------------------------------------------------------------------------------------------


def test_pca_preserves_distances_of_planar_data():
    rng = np.random.default_rng(0)
    plane = rng.standard_normal((40, 2)) * [3.0, 1.0]
    basis = np.linalg.qr(rng.standard_normal((10, 2)))[0]  # orthonormal 2-D subspace of R^10
    points = project_2d(plane @ basis.T, method="pca")
    assert points.shape == (40, 2)
    d_in = np.linalg.norm(plane[:, None] - plane[None], axis=-1)
    d_out = np.linalg.norm(points[:, None] - points[None], axis=-1)
    assert np.allclose(d_in, d_out, atol=1e-4)


def test_tsne_shape_seed_and_subsampling():
    x, y = clustered(20, 3, seed=0)
    # One thread: t-SNE's OpenMP workers crawl when the test machine's cores are busy.
    with threadpool_limits(limits=1):
        a = project_2d(x, method="tsne", seed=0)
        assert np.allclose(a, project_2d(x, method="tsne", seed=0))
    assert a.shape == (60, 2)
    # Clusters stay apart: every point's nearest 2-D neighbour has its class.
    d = np.linalg.norm(a[:, None] - a[None], axis=-1) + np.eye(60) * 1e9
    assert np.all(y[d.argmin(axis=1)] == y)
    sub = project_2d(x, method="pca", max_points=25, seed=3)
    keep = sample_indices(60, 25, seed=3)
    assert sub.shape == (25, 2) and len(np.unique(keep)) == 25
    with pytest.raises(UsageError, match="unknown projection 'umap'"):
        project_2d(x, method="umap")


def test_plot_embedding_draws_every_point(tmp_path):
    rng = np.random.default_rng(0)
    points, labels = rng.standard_normal((50, 2)), rng.integers(0, 10, 50)
    names = [f"class{i}" for i in range(10)]
    summary = plot_embedding(points, labels, tmp_path / "sub" / "emb.png", class_names=names, title="toy")
    assert summary.path.is_file() and summary.path.stat().st_size > 0
    assert summary.num_points == 50
    assert summary.num_colour_groups == len(np.unique(labels))


def test_cifar100_like_labels_are_coloured_by_superclass(tmp_path):
    rng = np.random.default_rng(0)
    fine = np.tile(np.arange(100), 3)
    coarse = fine % 20
    points = rng.standard_normal((300, 2))
    summary = plot_embedding(points, fine, tmp_path / "c100.png", hue_labels=coarse)
    assert summary.num_points == 300 and summary.num_colour_groups == 20
    # Without superclasses every class keeps its own colour (and the legend is dropped).
    assert plot_embedding(points, fine, tmp_path / "fine.png").num_colour_groups == 100


def test_side_by_side_panels(tmp_path):
    rng = np.random.default_rng(0)
    fine = np.arange(100).repeat(2)
    panels = {"cross-entropy": (rng.standard_normal((200, 2)), fine), "SupCon": (rng.standard_normal((200, 2)), fine)}
    summary = plot_embeddings_side_by_side(panels, tmp_path / "ce_vs_supcon.png", class_to_hue=np.arange(100) // 5)
    assert summary.path.is_file()
    assert summary.num_points == 400 and summary.num_colour_groups == 20
