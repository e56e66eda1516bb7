"""Transition matrices side by side as heatmaps (e.g. real noise next to its class-conditional twin)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from robustlab.errors import require


def plot_transition_matrices(matrices: Sequence[tuple[str, np.ndarray]], classes: Sequence[str] | None = None,
                             annotate: bool | None = None):
    """One heatmap per (title, T) pair on a shared 0..1 colour scale; returns the matplotlib Figure.

    T[i, j] = P(noisy = j | clean = i): rows are the clean class. Cells are annotated with their
    value (two decimals) up to 12 classes unless `annotate` says otherwise.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    require(len(matrices) >= 1, "plot_transition_matrices needs at least one matrix")
    arrays = [np.asarray(t, dtype=float) for _, t in matrices]
    c = arrays[0].shape[0]
    require(all(a.shape == (c, c) for a in arrays), "all transition matrices must be square and of one size")
    names = list(classes) if classes is not None else [str(i) for i in range(c)]
    require(len(names) == c, f"{len(names)} class names for {c} classes")
    annotate = c <= 12 if annotate is None else annotate
    side = 0.42 * c + 1.5 if c <= 20 else 8.0
    fig, axes = plt.subplots(1, len(arrays), figsize=(side * len(arrays) + 1.0, side), squeeze=False)
    for ax, (title, _), t in zip(axes[0], matrices, arrays):
        sns.heatmap(t, ax=ax, vmin=0.0, vmax=1.0, cmap="viridis", square=True, annot=annotate, fmt=".2f",
                    annot_kws={"fontsize": 6}, xticklabels=names if c <= 20 else False,
                    yticklabels=names if c <= 20 else False, cbar=ax is axes[0][-1])
        off = 1.0 - float(np.trace(t)) / c
        ax.set(title=f"{title}\nmean off-diagonal mass {off:.3f}", xlabel="noisy label", ylabel="clean label")
    fig.tight_layout()
    return fig
