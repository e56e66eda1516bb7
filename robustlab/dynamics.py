"""Per-sample training dynamics: each training image's loss and margin after every epoch, and the
area under the margin (AUM, Pleiss et al., NeurIPS 2020) as a label-error score.

The engine (`TrainConfig.record_dynamics`) scores the whole training set after each epoch with a
no-grad pass of `strategy.predict` (eval mode, unaugmented images, the assigned, possibly noisy,
labels, dataset order) and appends one row per epoch to `dynamics.npz` in the run folder:

- `loss`   (epochs, N) float16: cross-entropy of the logits against the assigned label;
- `margin` (epochs, N) float16: assigned-label logit minus the largest other logit;
- `labels` (N,) the assigned labels; `clean_labels` (N,) the clean ones where the caller knows them.

50,000 images x 100 epochs x 2 arrays x 2 bytes = 20 MB on disk, 20.8 MB with the labels
(uncompressed, so that a rewrite each epoch stays cheap), and the same in memory (rows
preallocated for the planned epochs). The file is rewritten atomically after every epoch and
before the epoch's checkpoint, so an interrupted run keeps every finished epoch and a resumed one
continues it.

Why a separate pass and not the training step's logits: every strategy would have to return
per-sample logits aligned with its batch (DivideMix's mixed batches, Co-Teaching's two networks
and multi-view strategies do not), and training-mode logits of augmented images change with
the augmentation draw. The pass costs one forward over the training set per epoch, no
backward, and draws no random numbers, so the training itself is bit-for-bit unchanged. The
network scored is the one the run evaluates (`strategy.predict`: the main network, or the
strategy's own predictor), after the epoch's last update.

AUM deviations from the official code (asappresearch/aum): margins come from that pass (the
official `AUMCalculator.update` takes the training batch's logits, augmented, in train mode, at
each step); the score is returned and scored by AUROC against known noise, without the paper's
threshold samples (an extra fake class whose 99th-percentile AUM sets the cut-off).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robustlab.errors import UsageError, require
from robustlab.fileio import atomic_write

DYNAMICS_FILE = "dynamics.npz"
FLOAT16_MAX = float(np.finfo(np.float16).max)


def loss_and_margin(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy and margin z_y - max_{j != y} z_j, in float32, from (N, C) logits."""
    z = logits.float()
    loss = F.cross_entropy(z, labels, reduction="none")
    assigned = z.gather(1, labels[:, None]).squeeze(1)
    others = z.scatter(1, labels[:, None], float("-inf")).amax(1)
    return loss, assigned - others


def _in_half_range(values: torch.Tensor) -> np.ndarray:
    """Values clipped to float16's range +-65504, so that storing them as float16 never gives inf."""
    return values.detach().float().clamp(-FLOAT16_MAX, FLOAT16_MAX).cpu().numpy()


class DynamicsRecorder:
    """Collects one (loss, margin) row per epoch for `labels` (N,) and writes them to `path`.

    `capacity` (the planned epochs) preallocates the rows, so that an epoch costs one row, not a
    copy of all earlier ones. `resume_epochs` continues a file written by an interrupted run: its
    first `resume_epochs` rows are kept (rows past them, from an epoch whose checkpoint was never
    written, are dropped; epochs missing from the file are NaN)."""

    def __init__(self, path: str | Path | None, labels: torch.Tensor, clean_labels: torch.Tensor | None = None,
                 resume_epochs: int = 0, capacity: int = 1):
        self.path = Path(path) if path is not None else None
        self.labels = labels.detach().cpu().numpy().astype(np.int64)
        n = len(self.labels)
        self.clean_labels = None if clean_labels is None else clean_labels.detach().cpu().numpy().astype(np.int64)
        if self.clean_labels is not None:
            require(len(self.clean_labels) == n,
                    f"clean labels ({len(self.clean_labels)}) and training labels ({n}) differ in length")
        require(capacity >= 1, f"capacity must be >= 1, got {capacity}")
        rows = max(capacity, resume_epochs)
        self._loss = np.full((rows, n), np.nan, np.float16)
        self._margin = np.full((rows, n), np.nan, np.float16)
        self.epochs = 0
        if resume_epochs:
            self._resume(resume_epochs)

    def _resume(self, epochs: int) -> None:
        if self.path is not None and self.path.exists():
            saved = load_dynamics(self.path)
            n = len(self.labels)
            require(saved["loss"].shape[1] == n,
                    f"{self.path} has {saved['loss'].shape[1]} samples per epoch, this run trains on {n}; "
                    "delete it or use another --out")
            kept = min(epochs, len(saved["loss"]))
            self._loss[:kept], self._margin[:kept] = saved["loss"][:kept], saved["margin"][:kept]
        self.epochs = epochs

    @property
    def loss(self) -> np.ndarray:
        return self._loss[:self.epochs]

    @property
    def margin(self) -> np.ndarray:
        return self._margin[:self.epochs]

    def add_epoch(self, logits: torch.Tensor) -> None:
        """Append the epoch's row from the training set's logits (N, C), in dataset order, and write the file."""
        require(len(logits) == len(self.labels),
                f"dynamics: got logits for {len(logits)} samples, the training set has {len(self.labels)}")
        loss, margin = loss_and_margin(logits, torch.as_tensor(self.labels, device=logits.device))
        if self.epochs == len(self._loss):  # beyond the planned epochs: double the rows
            grow = np.full_like(self._loss, np.nan)
            self._loss, self._margin = np.concatenate([self._loss, grow]), np.concatenate([self._margin, grow])
        self._loss[self.epochs], self._margin[self.epochs] = _in_half_range(loss), _in_half_range(margin)
        self.epochs += 1
        if self.path is not None:
            self.write()

    def arrays(self) -> dict[str, np.ndarray]:
        """The recorded rows (views, no copy) and the labels, as written to the file."""
        out = {"loss": self.loss, "margin": self.margin, "labels": self.labels}
        if self.clean_labels is not None:
            out["clean_labels"] = self.clean_labels
        return out

    def write(self) -> None:
        arrays = self.arrays()
        atomic_write(self.path, lambda f: np.savez(f, **arrays))


def load_dynamics(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a dynamics file (no pickled objects); a corrupt or foreign file is a UsageError."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"{path} is not a readable dynamics file ({exc.__class__.__name__}); delete it") from None
    require({"loss", "margin", "labels"} <= arrays.keys() and arrays["loss"].ndim == 2
            and arrays["loss"].shape == arrays["margin"].shape,
            f"{path} is not a dynamics file (needs loss and margin arrays of shape (epochs, N) and labels)")
    return arrays


def area_under_margin(margin: np.ndarray, epochs: int | None = None) -> np.ndarray:
    """AUM per sample: the mean margin over the first `epochs` recorded epochs (all by default),
    skipping epochs not recorded (NaN). Lower = more likely mislabeled."""
    m = np.asarray(margin, dtype=np.float64)
    require(m.ndim == 2, f"margins must be (epochs, N), got shape {m.shape}")
    require(epochs is None or 1 <= epochs <= len(m), f"AUM epochs must be in [1, {len(m)}], got {epochs}")
    m = m[:epochs]  # all rows when epochs is None
    seen = np.isfinite(m)
    return np.where(seen, m, 0.0).sum(0) / np.maximum(seen.sum(0), 1)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` (higher = more likely positive) for the boolean `positive`:
    P(score of a positive > score of a negative), ties counting one half (the Mann-Whitney U statistic)."""
    s = np.asarray(scores)
    p = np.asarray(positive, dtype=bool)
    require(s.shape == p.shape and s.ndim == 1, f"scores {s.shape} and labels {p.shape} must be two equal 1-D arrays")
    n_pos, n_neg = int(p.sum()), int((~p).sum())
    require(n_pos > 0 and n_neg > 0, "AUROC needs both positives and negatives")
    order = np.argsort(s)  # ties get their average rank below, whatever their order
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks (1-based) over ties
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + 1 + b) / 2
    return float((ranks[p].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def aum_detector_auroc(dynamics: dict[str, np.ndarray], epochs: int | None = None) -> float:
    """AUROC of AUM as a detector of the mislabeled samples (assigned != clean label) of a dynamics file."""
    require("clean_labels" in dynamics, "the dynamics file has no clean labels: mislabeled samples are unknown")
    mislabeled = dynamics["labels"] != dynamics["clean_labels"]
    return auroc(-area_under_margin(dynamics["margin"], epochs), mislabeled)
