"""Which labels are wrong, and how noisy is the data set: detectors on out-of-fold predictions.

Given labels `labels` (N,) and out-of-fold probabilities `pred_probs` (N, C) (`robustlab.crossval`):

- confident learning (Northcutt et al., JAIR 2021) through cleanlab itself:
  `cleanlab.filter.find_label_issues` (filter_by='prune_by_noise_rate', cleanlab's default) flags
  the issues; `cleanlab.rank.get_label_quality_scores` (self-confidence, the probability of the
  given label) ranks them;
- noise estimates from cleanlab's calibrated joint Q[s, y] = P(given s, true y)
  (`cleanlab.count.estimate_joint`): the noise rate 1 - trace(Q), and the transition matrix in
  robustlab's orientation T[y, s] = P(given s | true y) = Q[s, y] / sum_s' Q[s', y]
  (cleanlab's noise matrix, transposed);
- two detectors the toolkit already has, on the out-of-fold cross-entropy -log p[given label]:
  DivideMix's 2-component loss GMM (`robustlab.strategies.dividemix.gmm_clean_probability`; an
  issue when the clean probability is below 0.5, DivideMix's p_threshold) and the small-loss rule
  (the fraction = estimated noise rate with the largest loss is flagged, as Co-Teaching drops it).

Every detector gives a per-sample score (higher = more likely mislabeled) and flags. Where the
clean labels are known, `score_detector` measures flags (precision, recall, F1 against the real
errors) and scores (AUROC). `DETECTORS` maps a name to a function of the `DetectorInput`; a new
detector (e.g. one from training dynamics) registers there or is passed to `run_detectors` as
`extra` scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from robustlab.errors import require

GMM_P_THRESHOLD = 0.5  # DivideMix's p_threshold: clean probability above it keeps the label
EPS = 1e-12


@dataclass
class DetectorInput:
    labels: np.ndarray      # (N,) given labels
    pred_probs: np.ndarray  # (N, C) out-of-fold probabilities
    noise_rate: float       # estimated noise rate (for detectors that need a count)
    seed: int = 0


@dataclass
class Detection:
    score: np.ndarray               # (N,) higher = more likely mislabeled
    flags: np.ndarray | None = None  # (N,) bool; None: the top `noise_rate` fraction by score


def out_of_fold_loss(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy of the given label: -log max(p[i, labels[i]], 1e-12)."""
    labels = np.asarray(labels)
    return -np.log(np.maximum(pred_probs[np.arange(len(labels)), labels], EPS))


def top_fraction(score: np.ndarray, fraction: float) -> np.ndarray:
    """Flags on the round(fraction * N) largest scores (ties broken by position, stably)."""
    n = int(round(fraction * len(score)))
    flags = np.zeros(len(score), dtype=bool)
    if n > 0:
        flags[np.argsort(-score, kind="stable")[:n]] = True
    return flags


def confident_learning(inp: DetectorInput) -> Detection:
    """cleanlab's find_label_issues (flags) and 1 - self-confidence quality score (score)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    flags = find_label_issues(inp.labels, inp.pred_probs, filter_by="prune_by_noise_rate", n_jobs=1)
    quality = get_label_quality_scores(inp.labels, inp.pred_probs, method="self_confidence")
    return Detection(1.0 - quality, np.asarray(flags, dtype=bool))


def loss_gmm(inp: DetectorInput) -> Detection:
    """DivideMix's loss GMM on the out-of-fold losses: score 1 - clean probability, flag below p_threshold."""
    import torch

    from robustlab.strategies.dividemix import gmm_clean_probability

    clean = gmm_clean_probability(torch.as_tensor(out_of_fold_loss(inp.labels, inp.pred_probs)), seed=inp.seed)
    return Detection(1.0 - clean, clean < GMM_P_THRESHOLD)


def small_loss(inp: DetectorInput) -> Detection:
    """The small-loss rule: the estimated-noise-rate fraction with the largest loss is flagged."""
    loss = out_of_fold_loss(inp.labels, inp.pred_probs)
    return Detection(loss, top_fraction(loss, inp.noise_rate))


DETECTORS: dict[str, Callable[[DetectorInput], Detection]] = {
    "confident_learning": confident_learning,
    "dividemix_gmm": loss_gmm,
    "small_loss": small_loss,
}


def run_detectors(inp: DetectorInput, extra: dict[str, np.ndarray | Detection] | None = None) -> dict[str, Detection]:
    """Every registered detector, plus `extra` (name -> per-sample score or Detection); a score
    without flags flags its top `noise_rate` fraction."""
    out = {name: fn(inp) for name, fn in DETECTORS.items()}
    for name, value in (extra or {}).items():
        det = value if isinstance(value, Detection) else Detection(np.asarray(value, dtype=np.float64))
        require(det.score.shape == (len(inp.labels),),
                f"detector {name!r}: expected one score per sample ({len(inp.labels)}), got shape {det.score.shape}")
        out[name] = det
    for det in out.values():
        if det.flags is None:
            det.flags = top_fraction(det.score, inp.noise_rate)
    return out


def auroc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """Probability that a random positive scores above a random negative (ties count one half);
    None when one of the two groups is empty."""
    score, positive = np.asarray(score, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    # average ranks (1-based) over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def score_detector(det: Detection, is_error: np.ndarray) -> dict:
    """Flags against the real errors (precision, recall, F1) and the AUROC of the score."""
    is_error = np.asarray(is_error, dtype=bool)
    flags = np.asarray(det.flags, dtype=bool)
    tp = int((flags & is_error).sum())
    n_flag, n_err = int(flags.sum()), int(is_error.sum())
    precision = tp / n_flag if n_flag else None
    recall = tp / n_err if n_err else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else (0.0 if n_flag and n_err else None)
    return {"flagged": n_flag, "flagged_fraction": n_flag / len(flags) if len(flags) else 0.0, "true_errors": n_err,
            "precision": precision, "recall": recall, "f1": f1, "auroc": auroc(det.score, is_error)}


@dataclass
class NoiseEstimate:
    joint: np.ndarray       # (C, C) Q[s, y] = P(given s, true y), cleanlab's calibrated joint
    noise_rate: float       # 1 - trace(Q)
    transition: np.ndarray  # (C, C) T[y, s] = P(given s | true y)


def estimate_noise(labels: np.ndarray, pred_probs: np.ndarray) -> NoiseEstimate:
    """Noise rate and transition matrix from cleanlab's `estimate_joint`."""
    from cleanlab.count import estimate_joint

    joint = np.asarray(estimate_joint(np.asarray(labels), pred_probs), dtype=np.float64)
    return NoiseEstimate(joint, float(1.0 - np.trace(joint)), transition_from_joint(joint))


def transition_from_joint(joint: np.ndarray) -> np.ndarray:
    """T[y, s] = Q[s, y] / sum_s' Q[s', y]; a true class with no mass keeps its identity row."""
    joint = np.asarray(joint, dtype=np.float64)
    mass = joint.sum(0)
    t = np.divide(joint, mass, out=np.eye(len(joint)), where=mass > 0).T
    return t


def compare_noise(est: NoiseEstimate, true_rate: float | None, true_transition: np.ndarray | None) -> dict:
    """The estimate next to the truth: absolute error of the rate, Frobenius error of T."""
    out = {"estimated_noise_rate": est.noise_rate, "estimated_transition": est.transition.tolist(),
           "true_noise_rate": true_rate, "true_transition": None, "noise_rate_abs_error": None,
           "transition_frobenius_error": None}
    if true_rate is not None:
        out["noise_rate_abs_error"] = abs(est.noise_rate - true_rate)
    if true_transition is not None:
        t = np.asarray(true_transition, dtype=np.float64)
        out["true_transition"] = t.tolist()
        out["transition_frobenius_error"] = float(np.linalg.norm(est.transition - t))
    return out


ISSUE_COLUMNS = ("index", "path", "given_label", "suggested_label", "label_quality", "is_issue")


def issue_rows(index: np.ndarray, paths: list[str], labels: np.ndarray, pred_probs: np.ndarray,
               det: Detection) -> list[tuple]:
    """One row per sample, worst (lowest quality = 1 - score) first, ties in dataset order; labels
    are class ids, the suggested label is the most probable class."""
    quality = 1.0 - det.score
    order = np.argsort(quality, kind="stable")
    suggested = pred_probs.argmax(1)
    return [(int(index[i]), paths[i], int(labels[i]), int(suggested[i]), float(quality[i]), bool(det.flags[i]))
            for i in order]
