"""The memorization figure of robustlab.dynamics: per run, the mean loss and mean margin per epoch
of correctly labelled vs mislabeled training images, and the histogram of their losses at one epoch."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: plots are written to files, never shown

import numpy as np

from robustlab.dynamics import area_under_margin, auroc
from robustlab.errors import require

GROUPS = (("clean label", "#4c72b0"), ("mislabeled", "#c44e52"))


def has_both_groups(dynamics: dict) -> bool:
    """Whether the dynamics know the clean labels and hold both correctly labelled and mislabeled samples."""
    if "clean_labels" not in dynamics:
        return False
    wrong = dynamics["labels"] != dynamics["clean_labels"]
    return bool(wrong.any() and not wrong.all())


def memorization_figure(runs: list[tuple[str, dict]], epoch: int | None = None):
    """One row per (name, dynamics arrays) with clean labels: mean loss per epoch, mean margin per
    epoch (clean vs mislabeled), and the loss histogram of both groups at 1-based `epoch` (default:
    the last recorded). A matplotlib Figure; the caller closes it."""
    import matplotlib.pyplot as plt

    require(len(runs) > 0, "the memorization figure needs at least one run")
    for name, d in runs:
        require(has_both_groups(d), f"{name}: the dynamics need clean labels and both clean and mislabeled samples")
    fig, axes = plt.subplots(len(runs), 3, figsize=(13, 3.3 * len(runs)), squeeze=False)
    for row, (name, d) in zip(axes, runs):
        loss, margin = d["loss"].astype(np.float32), d["margin"].astype(np.float32)
        wrong = d["labels"] != d["clean_labels"]
        epochs = np.arange(1, len(loss) + 1)
        at = len(loss) if epoch is None else epoch
        require(1 <= at <= len(loss), f"{name}: histogram epoch must be in [1, {len(loss)}], got {at}")
        detector = auroc(-area_under_margin(margin), wrong)
        for (label, color), mask in zip(GROUPS, (~wrong, wrong)):
            n = int(mask.sum())
            row[0].plot(epochs, np.nanmean(loss[:, mask], 1), color=color, marker="o", ms=3, label=f"{label} ({n})")
            row[1].plot(epochs, np.nanmean(margin[:, mask], 1), color=color, marker="o", ms=3, label=label)
            values = loss[at - 1, mask]
            row[2].hist(values[np.isfinite(values)], bins=40, color=color, alpha=0.55, density=True, label=label)
        row[0].set(xlabel="epoch", ylabel="mean training loss", title=f"{name}: loss (memorization curve)")
        row[1].axhline(0, color="gray", linewidth=0.8, linestyle="--")
        row[1].set(xlabel="epoch", ylabel="mean margin", title=f"margin; AUM detector AUROC {detector:.3f}")
        row[2].set(xlabel="per-sample training loss", ylabel="density", title=f"loss at epoch {at}")
        for ax in row:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
