"""Figures of `robustlab.labelissues`: the worst-ranked images, and the estimated vs true transition matrix."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np


def plot_worst_labels(images, given: np.ndarray, suggested: np.ndarray, quality: Sequence[float],
                      classes: Sequence[str], path: str | Path, columns: int = 8) -> Path:
    """A grid of uint8 (N, 3, H, W) images titled 'given -> suggested' and their label quality."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    n = len(images)
    rows = max(1, math.ceil(n / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        ax.imshow(images[i].transpose(1, 2, 0))
        ax.set_title(f"{classes[int(given[i])]}\n-> {classes[int(suggested[i])]} ({quality[i]:.2f})", fontsize=7)
    fig.suptitle("Worst-ranked labels: given -> suggested (label quality)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_transition_estimate(estimated: np.ndarray, true: np.ndarray | None, classes: Sequence[str],
                             path: str | Path) -> Path:
    """Heat maps of the estimated T (and the true one where known), rows = true class."""
    from robustlab.corruptions.plots import plot_transition_matrices

    matrices = [("estimated T (confident learning)", np.asarray(estimated))]
    if true is not None:
        matrices.append(("true T (realised)", np.asarray(true)))
    return _save(plot_transition_matrices(matrices, list(classes)), path)


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    from robustlab.fileio import atomic_write

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path
