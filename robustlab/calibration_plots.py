"""Reliability diagrams (accuracy per confidence bin against the diagonal) of robustlab.calibration's bins."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: plots are written to files, never shown

from robustlab.calibration import reliability_bins
from robustlab.errors import require


def reliability_figure(
    probs_or_logits: Any,
    labels: Any,
    title: str | None = None,
    n_bins: int = 15,
    from_logits: bool = False,
):
    """A reliability diagram (accuracy per confidence bin vs the diagonal) as a matplotlib Figure;
    the caller closes it (`plt.close(fig)`)."""
    import matplotlib.pyplot as plt

    bins = reliability_bins(probs_or_logits, labels, n_bins=n_bins, from_logits=from_logits)
    width = 1.0 / n_bins
    left = bins.edges[:-1]
    filled = bins.counts > 0

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    try:
        ax.bar(left[filled], bins.accuracy[filled], width=width, align="edge",
               color="#4c72b0", edgecolor="black", linewidth=0.6, label="accuracy")
        # the gap to the diagonal is the per-bin miscalibration that ECE averages
        ax.bar(left[filled], bins.confidence[filled] - bins.accuracy[filled], bottom=bins.accuracy[filled],
               width=width, align="edge", color="#dd8452", alpha=0.35, edgecolor="#dd8452", label="gap")
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
        ece_text = f"ECE = {100 * bins.ece:.2f}%"
        ax.set_title(f"{title}\n{ece_text}" if title else ece_text)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return fig


def plot_reliability_diagram(
    probs_or_logits: Any,
    labels: Any,
    path: str | Path,
    title: str | None = None,
    n_bins: int = 15,
    from_logits: bool = False,
) -> Path:
    """Save a reliability diagram (accuracy per confidence bin vs the diagonal) as a PNG."""
    import matplotlib.pyplot as plt

    path = Path(path)
    require(path.suffix.lower() == ".png", f"reliability diagram path must end in .png, got {str(path)!r}")
    fig = reliability_figure(probs_or_logits, labels, title=title, n_bins=n_bins, from_logits=from_logits)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
