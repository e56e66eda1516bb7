"""Synthetic label noise for CIFAR-style datasets, and a report of what a noisy label set contains.

Four noise models (rows of the expected transition matrix T are the true class):

* ``symmetric``  - each label flips with probability ``rate`` to one of the *other* C-1 classes,
  uniformly (Co-teaching convention: the realized noise rate is ``rate``).
* ``uniform``    - a ``rate`` fraction of the labels is redrawn uniformly from *all* C classes, the
  true one included (DivideMix convention: the realized noise rate is ``rate * (C-1) / C``).
* ``pair``       - class i flips to (i+1) mod C with probability ``rate``.
* ``asymmetric`` - class-conditional flips to a semantically close class with probability ``rate``:
  CIFAR-10 truck->automobile, bird->airplane, deer->horse, cat<->dog; CIFAR-100 (or any data set
  with a fine->coarse table) the next fine class of the same superclass, circularly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from robustlab.errors import UsageError, require
from robustlab.noise_types import NOISE_TYPES  # noqa: F401  (re-exported)


# CIFAR-10 class order: airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck.
CIFAR10_ASYMMETRIC_MAP: dict[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

# Superclass (coarse label, 0..19) of each CIFAR-100 fine label, fine labels in their standard
# alphabetical order (apple, aquarium_fish, baby, bear, beaver, ...).
CIFAR100_FINE_TO_COARSE: tuple[int, ...] = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)


# ---------------------------------------------------------------------------------------------
# validation helpers


def _check_common(noise: str, num_classes: int, rate: float) -> None:
    require(noise in NOISE_TYPES, f"unknown label noise {noise!r}; valid names: {', '.join(NOISE_TYPES)}")
    require(isinstance(num_classes, (int, np.integer)) and num_classes >= 2,
            f"num_classes must be an integer >= 2, got {num_classes!r}")
    require(isinstance(rate, (int, float, np.floating)) and 0.0 <= float(rate) < 1.0,
            f"noise rate must be in [0, 1), got {rate!r}")


def _as_label_array(labels: Any, num_classes: int, what: str = "labels") -> np.ndarray:
    """Labels as a flat int64 numpy array, checked to lie in [0, num_classes)."""
    if isinstance(labels, torch.Tensor):
        arr = labels.detach().cpu().numpy()
    else:
        try:
            arr = np.asarray(labels)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{what} must be a list, numpy array or torch tensor of integers") from exc
    require(arr.dtype.kind in "iu" or arr.size == 0,
            f"{what} must hold integers, got dtype {arr.dtype}")
    flat = arr.reshape(-1).astype(np.int64)
    if flat.size:
        lo, hi = int(flat.min()), int(flat.max())
        require(lo >= 0 and hi < num_classes,
                f"{what} must lie in [0, {num_classes}), found values in [{lo}, {hi}]")
    return flat


def _like_input(noisy: np.ndarray, original: Any) -> Any:
    """Return `noisy` in the container kind and shape of `original` (dtype int64)."""
    if isinstance(original, torch.Tensor):
        return torch.from_numpy(noisy.reshape(tuple(original.shape))).to(original.device)
    if isinstance(original, np.ndarray):
        return noisy.reshape(original.shape)
    return noisy.reshape(np.shape(original)).tolist()


# ---------------------------------------------------------------------------------------------
# asymmetric class maps


def _fine_to_coarse_table(coarse_labels: Any, num_classes: int, labels: np.ndarray | None) -> np.ndarray:
    """A length-C fine->coarse table (-1 for fine classes it cannot tell).

    `coarse_labels` is read per sample when its length equals the number of labels, otherwise
    as a table with one entry per fine class.
    """
    coarse = _as_label_array(coarse_labels, np.iinfo(np.int64).max, what="coarse_labels")
    if labels is not None and coarse.size == labels.size:
        table = np.full(num_classes, -1, dtype=np.int64)
        table[labels] = coarse  # any consistent assignment; checked below
        require(np.array_equal(table[labels], coarse),
                "coarse_labels read per sample give some fine class two superclasses; pass a "
                f"length-{num_classes} fine->coarse table instead")
        return table
    require(coarse.size == num_classes,
            f"coarse_labels must have one entry per sample ({'?' if labels is None else labels.size}) "
            f"or one per class ({num_classes}), got {coarse.size}")
    return coarse


def asymmetric_class_map(num_classes: int, coarse_labels: Any = None, labels: Any = None) -> np.ndarray:
    """Target class of each class under asymmetric noise (itself when the class never flips).

    With `coarse_labels` (a fine->coarse table, or per-sample coarse labels aligned with `labels`)
    each class maps to the next fine class of its superclass, circularly in increasing fine index.
    Without it: the CIFAR-10 map for 10 classes, the real CIFAR-100 superclasses for 100.
    """
    require(isinstance(num_classes, (int, np.integer)) and num_classes >= 2,
            f"num_classes must be an integer >= 2, got {num_classes!r}")
    if coarse_labels is None:
        if num_classes == 10:
            target = np.arange(10, dtype=np.int64)
            for src, dst in CIFAR10_ASYMMETRIC_MAP.items():
                target[src] = dst
            return target
        require(num_classes == 100,
                f"asymmetric noise needs coarse_labels for {num_classes} classes "
                "(built-in maps exist for CIFAR-10 and CIFAR-100 only)")
        table = np.asarray(CIFAR100_FINE_TO_COARSE, dtype=np.int64)
    else:
        flat = None if labels is None else _as_label_array(labels, num_classes)
        table = _fine_to_coarse_table(coarse_labels, num_classes, flat)

    target = np.arange(num_classes, dtype=np.int64)
    for superclass in np.unique(table[table >= 0]):
        members = np.flatnonzero(table == superclass)  # increasing fine index
        target[members] = np.roll(members, -1)
    return target


# ---------------------------------------------------------------------------------------------
# public API


def transition_matrix(noise: str, num_classes: int, rate: float, coarse_labels: Any = None) -> np.ndarray:
    """Expected (C, C) noise transition matrix T[i, j] = P(noisy = j | clean = i)."""
    _check_common(noise, num_classes, rate)
    c, r = int(num_classes), float(rate)
    eye = np.eye(c)
    if noise == "symmetric":
        return (1 - r) * eye + r / (c - 1) * (1 - eye)
    if noise == "uniform":
        return (1 - r) * eye + r / c
    if noise == "pair":
        return (1 - r) * eye + r * np.roll(eye, 1, axis=1)
    target = asymmetric_class_map(c, coarse_labels)
    t = eye.copy()
    moved = np.flatnonzero(target != np.arange(c))  # classes without a partner never flip
    t[moved, moved] = 1 - r
    t[moved, target[moved]] = r
    return t


def corrupt_labels(
    labels: Any,
    num_classes: int,
    noise: str = "symmetric",
    rate: float = 0.3,
    seed: int = 0,
    coarse_labels: Any = None,
) -> Any:
    """Noisy copy of `labels` (tensor, numpy array or list; returned as the same kind, int64).

    Deterministic for a given `seed`. `coarse_labels` only matters for asymmetric noise; see
    `asymmetric_class_map`.
    """
    _check_common(noise, num_classes, rate)
    require(isinstance(seed, (int, np.integer)), f"seed must be an integer, got {seed!r}")
    clean = _as_label_array(labels, num_classes)
    rng = np.random.default_rng(int(seed))
    c, n = int(num_classes), clean.size
    noisy = clean.copy()

    if noise == "symmetric":
        flip = rng.random(n) < rate
        # an offset in 1..C-1 lands uniformly on the other classes, never the true one
        offsets = rng.integers(1, c, size=n)
        noisy[flip] = (clean[flip] + offsets[flip]) % c
    elif noise == "uniform":
        chosen = rng.permutation(n)[: int(round(rate * n))]
        noisy[chosen] = rng.integers(0, c, size=chosen.size)
    elif noise == "pair":
        flip = rng.random(n) < rate
        noisy[flip] = (clean[flip] + 1) % c
    else:
        target = asymmetric_class_map(c, coarse_labels, labels=clean)
        flip = rng.random(n) < rate
        noisy[flip] = target[clean[flip]]
    return _like_input(noisy, labels)


@dataclass
class NoiseReport:
    """What a noisy label set contains relative to the clean one."""

    realized_rate: float  # fraction of labels that differ from the clean label
    transition: np.ndarray  # (C, C), rows = clean class, row-normalized (all-zero row if the class is absent)

    def to_dict(self) -> dict[str, Any]:
        return {
            "realized_rate": float(self.realized_rate),
            "num_classes": int(self.transition.shape[0]),
            "transition": self.transition.tolist(),
        }


def noise_report(clean: Any, noisy: Any, num_classes: int) -> NoiseReport:
    """Realized noise rate and empirical transition matrix of `noisy` against `clean`."""
    require(isinstance(num_classes, (int, np.integer)) and num_classes >= 2,
            f"num_classes must be an integer >= 2, got {num_classes!r}")
    a = _as_label_array(clean, num_classes, what="clean labels")
    b = _as_label_array(noisy, num_classes, what="noisy labels")
    require(a.size == b.size, f"clean and noisy labels differ in length: {a.size} vs {b.size}")
    require(a.size > 0, "noise_report needs at least one label")
    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (a, b), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    transition = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    return NoiseReport(realized_rate=float(np.mean(a != b)), transition=transition)


def list_label_noises() -> Sequence[str]:
    return NOISE_TYPES


def corrupt_with_transition(labels: Any, transition: Any, seed: int = 0) -> np.ndarray:
    """Class-conditional noise drawn from a given transition matrix: noisy_i ~ T[clean_i].

    With T the empirical matrix of another noisy label set (`noise_report(...).transition`), this
    is that noise's class-conditional twin: the same confusions between classes, but independent
    of the image. Deterministic for a given `seed`; returns int64 labels.
    """
    t = np.asarray(transition, dtype=np.float64)
    require(t.ndim == 2 and t.shape[0] == t.shape[1] and t.shape[0] >= 2,
            f"transition matrix must be square (C, C) with C >= 2, got shape {t.shape}")
    require(isinstance(seed, (int, np.integer)), f"seed must be an integer, got {seed!r}")
    c = t.shape[0]
    clean = _as_label_array(labels, c)
    rows = t[np.unique(clean)]
    require(bool(np.all(rows >= 0)) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-6),
            "every transition-matrix row of a class present in the labels must be a probability distribution")
    cdf = np.cumsum(t, axis=1)
    u = np.random.default_rng(int(seed)).random(clean.size)
    return np.minimum((cdf[clean] <= u[:, None]).sum(axis=1), c - 1).astype(np.int64)
