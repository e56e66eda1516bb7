"""Out-of-fold predicted probabilities by K-fold cross-validation.

Confident learning (and every other label-issue detector that looks at predictions) needs, for
each training image, the class probabilities of a model that never trained on that image. This
module splits the training set into K folds, class-balanced on the *given* (noisy) labels and
fixed by a seed, trains one model per fold on the other K - 1 folds through a `trainer` callable,
and stitches the held-out predictions into one (N, C) array.

Each finished fold is saved atomically as `fold_<k>.npz` (its held-out positions and their
probabilities, and, when the trainer returns them, the area under the margin of the positions it
trained on) in a folder, and skipped when the folder already has it: an interrupted job
loses at most the fold it was training. `run_folds(..., shard=(i, n))` trains only the folds
k with k % n == i, so several processes or machines can split the K models.

    folds = assign_folds(labels, k=5, seed=0)
    run_folds(folds, num_classes, trainer, folder)          # trainer(fold, train_pos, heldout_pos) -> probs
    pred_probs = gather_folds(folds, num_classes, folder)   # (N, C), every row out of fold
    aum = gather_aum(folds, folder)                          # (N,) or None: mean AUM over the K - 1 fold models

A trainer may return `(probs, train_aum)`: the AUM (Pleiss et al. 2020) of each image it trained
on, from its training dynamics. Every image is trained on by K - 1 fold models; its AUM is their mean.
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Callable

import numpy as np

from robustlab.errors import UsageError, require
from robustlab.fileio import atomic_write

# trainer(fold k, positions to train on, positions to score) -> (len(heldout), C) probabilities,
# or (probabilities, (len(train),) area under the margin of the trained positions)
Trainer = Callable[[int, np.ndarray, np.ndarray], "np.ndarray | tuple[np.ndarray, np.ndarray]"]
SUM_TOLERANCE = 1e-3  # rows of a probability file must sum to 1 within this


def check_folds(labels: np.ndarray, k: int) -> None:
    """`k` folds need 2 <= k <= the size of the smallest class (every fold holds every class)."""
    labels = np.asarray(labels)
    require(isinstance(k, (int, np.integer)) and k >= 2, f"--folds must be an integer >= 2, got {k}")
    counts = np.bincount(labels)
    present = counts[counts > 0]
    smallest = int(present.min()) if present.size else 0
    require(k <= smallest, f"--folds {k} is larger than the smallest class ({smallest} images of class "
                           f"{int(np.flatnonzero(counts == smallest)[0]) if smallest else '-'}); use 2..{smallest}")


def assign_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold id (0..k-1) of every sample: stratified on `labels`, shuffled by `seed`.

    Each class is spread over the folds as evenly as possible (fold sizes per class differ by at
    most one), so every fold model sees every class in the proportions of the given labels."""
    labels = np.asarray(labels)
    check_folds(labels, k)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0  # rotate where each class starts, so the remainders do not all land on fold 0
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng.shuffle(members)
        fold[members] = (np.arange(len(members)) + offset) % k
        offset += len(members)
    return fold


def fold_path(folder: str | Path, k: int) -> Path:
    return Path(folder) / f"fold_{k}.npz"


def check_probabilities(probs: np.ndarray, rows: int, num_classes: int, what: str) -> np.ndarray:
    """`probs` as float32 (rows, num_classes), finite, non-negative, each row summing to 1."""
    probs = np.asarray(probs)
    require(probs.shape == (rows, num_classes),
            f"{what}: expected probabilities of shape ({rows}, {num_classes}), got {probs.shape}")
    require(np.issubdtype(probs.dtype, np.floating) and bool(np.isfinite(probs).all()) and bool((probs >= 0).all()),
            f"{what}: probabilities must be finite floats >= 0")
    sums = probs.sum(1, dtype=np.float64)
    worst = int(np.abs(sums - 1).argmax()) if rows else 0
    require(rows == 0 or abs(sums[worst] - 1) <= SUM_TOLERANCE,
            f"{what}: every row must sum to 1 (row {worst} sums to {sums[worst] if rows else 0:.6g})")
    return probs.astype(np.float32)


def load_fold(folder: str | Path, k: int, folds: np.ndarray, num_classes: int) -> np.ndarray | None:
    """The saved probabilities of fold k (rows in the order of its held-out positions), or None if
    the fold has not finished. A file that does not match this fold split is a UsageError."""
    path = fold_path(folder, k)
    if not path.exists():
        return None
    try:
        with np.load(path) as f:
            heldout, probs = f["heldout"], f["probs"]
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{path} is corrupt ({exc.__class__.__name__}); delete it to retrain fold {k}") from None
    expected = np.flatnonzero(folds == k)
    require(np.array_equal(heldout, expected), f"{path} was written for another fold split; delete it to retrain fold {k}")
    return check_probabilities(probs, len(expected), num_classes, str(path))


def save_fold(folder: str | Path, k: int, heldout: np.ndarray, probs: np.ndarray, seconds: float = 0.0,
              train_aum: np.ndarray | None = None) -> Path:
    buf = io.BytesIO()
    extra = {} if train_aum is None else {"train_aum": np.asarray(train_aum, dtype=np.float32)}
    np.savez(buf, heldout=np.asarray(heldout, dtype=np.int64), probs=np.asarray(probs, dtype=np.float32),
             seconds=np.float64(seconds), **extra)
    path = fold_path(folder, k)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path


def shard_folds(k: int, shard: tuple[int, int] | None) -> list[int]:
    """The folds this process trains: every one, or those with fold % n == i for shard (i, n)."""
    if shard is None:
        return list(range(k))
    i, n = shard
    return [f for f in range(k) if f % n == i]


def run_folds(folds: np.ndarray, num_classes: int, trainer: Trainer, folder: str | Path,
              shard: tuple[int, int] | None = None) -> list[int]:
    """Train and save this shard's unfinished folds; returns the folds trained now.

    Fold k's model gets the positions of every other fold to train on and scores only fold k."""
    folds = np.asarray(folds)
    k_total = int(folds.max()) + 1
    trained = []
    for k in shard_folds(k_total, shard):
        if load_fold(folder, k, folds, num_classes) is not None:
            continue
        heldout, train = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
        t0 = time.perf_counter()
        probs, aum = _split_result(trainer(k, train, heldout))
        probs = check_probabilities(probs, len(heldout), num_classes, f"fold {k}'s predictions")
        if aum is not None:
            aum = np.asarray(aum, dtype=np.float64)
            require(aum.shape == (len(train),) and bool(np.isfinite(aum).all()),
                    f"fold {k}'s AUM: expected {len(train)} finite values, got shape {aum.shape}")
        save_fold(folder, k, heldout, probs, time.perf_counter() - t0, aum)
        trained.append(k)
    return trained


def _split_result(result) -> tuple[np.ndarray, np.ndarray | None]:
    return result if isinstance(result, tuple) else (result, None)


def gather_aum(folds: np.ndarray, folder: str | Path) -> np.ndarray | None:
    """(N,) area under the margin of every image, the mean over the fold models that trained on it
    (every fold but its own); None unless every saved fold has its `train_aum`."""
    folds = np.asarray(folds)
    k_total = int(folds.max()) + 1
    total, count = np.zeros(len(folds)), np.zeros(len(folds))
    for k in range(k_total):
        path = fold_path(folder, k)
        if not path.exists():
            return None
        with np.load(path) as f:
            if "train_aum" not in f.files:
                return None
            aum = f["train_aum"].astype(np.float64)
        train = np.flatnonzero(folds != k)
        require(aum.shape == train.shape, f"{path}: train_aum has {aum.shape[0]} values, the fold trains on {len(train)}")
        total[train] += aum
        count[train] += 1
    return total / count


def missing_folds(folds: np.ndarray, num_classes: int, folder: str | Path) -> list[int]:
    return [k for k in range(int(np.max(folds)) + 1) if load_fold(folder, k, folds, num_classes) is None]


def gather_folds(folds: np.ndarray, num_classes: int, folder: str | Path) -> np.ndarray:
    """(N, C) out-of-fold probabilities from the saved folds; every fold must have finished."""
    folds = np.asarray(folds)
    missing = missing_folds(folds, num_classes, folder)
    require(not missing, f"fold(s) {', '.join(map(str, missing))} of {int(folds.max()) + 1} have not finished "
                         f"in {folder}; run their shards (or rerun without --shard)")
    out = np.zeros((len(folds), num_classes), dtype=np.float32)
    for k in range(int(folds.max()) + 1):
        out[folds == k] = load_fold(folder, k, folds, num_classes)
    return out


def fold_seconds(folder: str | Path, k_total: int) -> float:
    """Training time of the saved folds, summed (this run's time only for folds trained in one go)."""
    total = 0.0
    for k in range(k_total):
        path = fold_path(folder, k)
        if path.exists():
            with np.load(path) as f:
                total += float(f["seconds"]) if "seconds" in f.files else 0.0
    return total


def load_pred_probs(path: str | Path, rows: int, num_classes: int) -> np.ndarray:
    """A user's `pred_probs.npy`: (rows, num_classes), rows summing to 1."""
    try:
        probs = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read --pred-probs {path} as a .npy array ({exc.__class__.__name__})") from None
    return check_probabilities(probs, rows, num_classes, f"--pred-probs {path}")
