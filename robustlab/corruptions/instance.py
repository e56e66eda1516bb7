"""Instance-dependent label noise (IDN): Xia et al., "Part-dependent Label Noise: Towards
Instance-dependent Label Noise", NeurIPS 2020 - the generator `get_instance_noisy_label` of the
official code (github.com/xiaoboxia/Part-dependent-label-noise, tools.py), which later papers
(CAL, CORES, ...) reuse unchanged.

For sample i with clean label y and flattened image x_i:
  q_i ~ TruncatedNormal(mean=rate, std=norm_std) on [0, 1]          (its own flip rate)
  W   ~ N(0, 1) of shape (C, D, C), drawn once                      (a projection per clean class)
  a   = x_i @ W[y];  a[y] = -inf
  p_i = q_i * softmax(a) + (1 - q_i) * onehot(y)
  noisy_i ~ Categorical(p_i)
so how likely a label is to flip is set per sample, and where it flips to depends on the pixels.
As in the official code the features are the raw pixel values (0..255, channel-first flattening
like CIFAR's rows); at that scale the softmax is almost one-hot, so a flipped label goes to the
class whose projection of the image is largest.

The realised rate is the mean of the truncated normal, which is `rate` for rates of about 0.3 and
above and a little more below that (0.2 -> 0.2055, 0.1 -> 0.129): `expected_instance_rate`.

Differences from the official code, none of which changes the draw: vectorised (the official
loops sample by sample on a GPU) and float64 instead of float32; a private
`np.random.RandomState(seed)` in place of the global `np.random.seed(seed)`, consumed in the same
order (flip rates, then W, then one uniform per sample for `np.random.choice`), so the labels
equal the official ones for the same seed and features.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robustlab.errors import require

NORM_STD = 0.1  # official default (`norm_std`)
# equivalent: any chunk size gives the same labels (pinned with sizes 1, 7, 64); it only bounds memory
_CHUNK = 4096   # rows per matrix product: bounds the float64 copy of the images  # pragma: no mutate


def _flip_distribution(rate: float, norm_std: float):
    from scipy import stats  # only instance noise needs scipy.stats: keep it off the CLI start-up path

    return stats.truncnorm((0 - rate) / norm_std, (1 - rate) / norm_std, loc=rate, scale=norm_std)


def expected_instance_rate(rate: float, norm_std: float = NORM_STD) -> float:
    """Expected fraction of flipped labels: the mean of the per-sample flip-rate distribution."""
    return float(_flip_distribution(rate, norm_std).mean())


def _features(images: Any) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    require(arr.ndim >= 2, f"instance noise needs one feature vector or image per sample, got shape {arr.shape}")
    return arr.reshape(len(arr), -1)


def instance_transition_rows(images: Any, labels: np.ndarray, num_classes: int, rate: float, seed: int,
                             norm_std: float = NORM_STD) -> tuple[np.ndarray, np.random.RandomState]:
    """Per-sample noisy-label distributions p_i (N, C), and the generator positioned after W."""
    require(0.0 < rate < 1.0, f"instance noise needs a rate in (0, 1), got {rate}")
    require(norm_std > 0, f"norm_std must be > 0, got {norm_std}")
    x = _features(images)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    require(len(x) == len(labels), f"{len(x)} images but {len(labels)} labels")
    require(labels.min() >= 0 and labels.max() < num_classes,  # no empty set: _features cannot reshape one
            f"labels must lie in [0, {num_classes})")
    rs = np.random.RandomState(int(seed))
    flip_rate = _flip_distribution(rate, norm_std).rvs(len(labels), random_state=rs)
    w = rs.randn(num_classes, x.shape[1], num_classes)
    probs = np.empty((len(labels), num_classes))
    for y in range(num_classes):
        rows = np.flatnonzero(labels == y)
        for start in range(0, len(rows), _CHUNK):
            part = rows[start:start + _CHUNK]
            logits = x[part].astype(np.float64) @ w[y]
            logits[:, y] = -np.inf  # the flip never lands on the clean class
            logits -= logits.max(axis=1, keepdims=True)
            soft = np.exp(logits)
            soft /= soft.sum(axis=1, keepdims=True)
            probs[part] = flip_rate[part, None] * soft
            probs[part, y] += 1 - flip_rate[part]
    return probs, rs


def instance_dependent_labels(images: Any, labels: Any, num_classes: int, rate: float, seed: int = 0,
                              norm_std: float = NORM_STD) -> np.ndarray:
    """Noisy int64 labels under the IDN generator (see module docstring); deterministic per seed."""
    probs, rs = instance_transition_rows(images, labels, num_classes, rate, seed, norm_std)  # any array-like labels
    return sample_rows(probs, rs.random_sample(len(probs)))


def sample_rows(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row i drawn as `np.random.choice(C, p=probs[i])` draws it from the uniform u[i]: through the
    CDF of the row divided by its total, searched from the right."""
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]  # the last entry is exactly 1, so the count below is at most C - 1
    return (cdf <= u[:, None]).sum(axis=1).astype(np.int64)
