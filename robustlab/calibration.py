"""Calibration metrics and temperature scaling (Guo et al., 2017); the diagrams are in calibration_plots.

Confidence is the top-class probability. Bins are equal-width over (0, 1]: bin m holds the
confidences in ((m-1)/M, m/M]. The expected calibration error (ECE) is the count-weighted mean of
|accuracy - mean confidence| over the bins. All math is in torch, so GPU tensors work as they are;
scalar metrics come back as Python floats.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robustlab.errors import require

# rows of a probability matrix may drift this far from 1 (float32 softmax, saved predictions)
_PROB_SUM_TOLERANCE = 1e-3


# ---------------------------------------------------------------------------------------------
# input checks


def _as_scores(scores: Any) -> torch.Tensor:
    t = torch.as_tensor(scores)
    require(t.dim() == 2 and t.shape[0] > 0 and t.shape[1] >= 2,
            f"predictions must have shape (N, C) with N >= 1 and C >= 2, got {tuple(t.shape)}")
    require(t.is_floating_point(), f"predictions must be floats, got dtype {t.dtype}")
    require(bool(torch.isfinite(t).all()), "predictions contain NaN or infinite values")
    return t.double()


def _as_labels(labels: Any, scores: torch.Tensor) -> torch.Tensor:
    y = torch.as_tensor(labels, device=scores.device)
    require(y.dim() == 1 and y.shape[0] == scores.shape[0],
            f"labels must have shape ({scores.shape[0]},) to match the predictions, got {tuple(y.shape)}")
    require(not y.is_floating_point() and y.dtype != torch.bool, f"labels must be integers, got dtype {y.dtype}")
    num_classes = scores.shape[1]
    require(bool(((y >= 0) & (y < num_classes)).all()), f"labels must lie in [0, {num_classes})")
    return y.long()


def _probabilities(probs_or_logits: Any, from_logits: bool) -> torch.Tensor:
    scores = _as_scores(probs_or_logits)
    if from_logits:
        return scores.softmax(dim=1)
    in_range = bool(((scores >= 0) & (scores <= 1)).all())
    sums_to_one = bool(((scores.sum(dim=1) - 1).abs() <= _PROB_SUM_TOLERANCE).all())
    require(in_range and sums_to_one,
            "predictions are not probabilities (rows must be in [0, 1] and sum to 1); "
            "pass from_logits=True for logits")
    return scores


def _check_bins(n_bins: int) -> None:
    require(isinstance(n_bins, int) and not isinstance(n_bins, bool) and n_bins >= 1,
            f"n_bins must be a positive integer, got {n_bins!r}")


# ---------------------------------------------------------------------------------------------
# metrics


@dataclass
class ReliabilityBins:
    """Per-bin statistics; empty bins have count 0 and confidence = accuracy = 0."""

    edges: np.ndarray  # (n_bins + 1,) bin edges, 0 to 1
    confidence: np.ndarray  # (n_bins,) mean top-class probability in the bin
    accuracy: np.ndarray  # (n_bins,) fraction of correct top-class predictions in the bin
    counts: np.ndarray  # (n_bins,) number of samples in the bin

    @property
    def ece(self) -> float:
        total = self.counts.sum()
        return float((self.counts / total * np.abs(self.accuracy - self.confidence)).sum())


def reliability_bins(probs_or_logits: Any, labels: Any, n_bins: int = 15, from_logits: bool = False) -> ReliabilityBins:
    """Equal-width confidence bins with mean confidence, accuracy and sample count per bin."""
    _check_bins(n_bins)
    probs = _probabilities(probs_or_logits, from_logits)
    y = _as_labels(labels, probs)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == y).double()

    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=probs.device)
    # right-closed bins ((m-1)/M, m/M]; bucketize against the inner edges gives m-1
    index = torch.bucketize(confidence, edges[1:-1], right=False)
    # one-hot sums instead of bincount(weights=...), which CUDA's deterministic mode rejects
    membership = F.one_hot(index, n_bins).double()
    counts = membership.sum(dim=0)
    conf_sum = confidence @ membership
    correct_sum = correct @ membership
    nonempty = counts.clamp(min=1)
    return ReliabilityBins(
        edges=edges.cpu().numpy(),
        confidence=(conf_sum / nonempty).cpu().numpy(),
        accuracy=(correct_sum / nonempty).cpu().numpy(),
        counts=counts.long().cpu().numpy(),
    )


def expected_calibration_error(probs_or_logits: Any, labels: Any, n_bins: int = 15, from_logits: bool = False) -> float:
    """Count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    return reliability_bins(probs_or_logits, labels, n_bins=n_bins, from_logits=from_logits).ece


def negative_log_likelihood(logits: Any, labels: Any) -> float:
    """Mean cross-entropy of the softmax of `logits` (nats per sample)."""
    z = _as_scores(logits)
    return float(F.cross_entropy(z, _as_labels(labels, z)))


# ---------------------------------------------------------------------------------------------
# temperature scaling


def apply_temperature(logits: Any, temperature: float) -> torch.Tensor:
    """Logits divided by `temperature` (> 1 softens, < 1 sharpens); dtype and device kept."""
    require(isinstance(temperature, (int, float)) and np.isfinite(temperature) and temperature > 0,
            f"temperature must be a positive finite number, got {temperature!r}")
    z = torch.as_tensor(logits)
    require(z.is_floating_point(), f"logits must be floats, got dtype {z.dtype}")
    return z / temperature


def fit_temperature(logits: Any, labels: Any, max_iter: int = 50) -> float:
    """Temperature T minimizing the NLL of softmax(logits / T) on held-out (validation) logits.

    Optimizes log T with L-BFGS, which keeps T positive and makes the problem well scaled.
    """
    require(isinstance(max_iter, int) and max_iter >= 1, f"max_iter must be a positive integer, got {max_iter!r}")
    z = _as_scores(logits).detach()
    y = _as_labels(labels, z)
    log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().exp())
