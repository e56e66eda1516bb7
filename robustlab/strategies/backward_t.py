"""Backward loss correction (Patrini et al., CVPR 2017): the vector of per-class cross-entropy
losses multiplied by T^-1, read at the noisy label; unbiased for the clean loss."""
from __future__ import annotations

import math

import torch

from robustlab.strategies.registry import register_strategy
from robustlab.strategies.transition import CLIP_EPS, TransitionCorrected, require_invertible


def backward_corrected_loss(logits: torch.Tensor, y: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Per-sample (T^-1 l)[y] = sum_j T^-1[y, j] * l_j, l_j = -log p_j with p = softmax(logits)
    clipped to [eps, 1 - eps] (as the official code does), in float32. With T = I it is cross-entropy.

    For every p, E over y ~ T[c] of the result is l_c: the clean loss in expectation."""
    log_p = torch.log_softmax(logits.float(), dim=1).clamp(math.log(CLIP_EPS), math.log1p(-CLIP_EPS))
    return -(inverse.to(log_p.dtype)[y] * log_p).sum(1)


@register_strategy("backward_t")
class BackwardT(TransitionCorrected):
    """Backward correction (Patrini et al. 2017): loss = (T^-1 [CE(z, e_1) .. CE(z, e_K)])[y_noisy].

    T (rows true class, columns noisy class) comes from `t_source`: `oracle` (the realised noise
    of the training labels, an oracle; the default), `file` or `estimate` (`t_file`, .npy/.csv;
    robustlab.labelissues writes an estimated T.npy). T must be invertible (a singular T is an
    error naming it). T^-1 has negative entries, so the corrected loss of one sample can be
    negative; clipping the probabilities bounds it, as in the official code.

    Deviations from the official code (giorgiop/loss-correction, Keras): PyTorch; T^-1 is computed
    once in float64 and kept in float32; T comes from the realised noise or a file instead of the
    official two-stage estimator (`filter_outlier`), which robustlab.labelissues replaces with
    cleanlab's estimate; rows of a T read from a file are renormalized to sum to exactly 1.
    Kept as in the official code: probabilities clipped to [1e-7, 1 - 1e-7] (clamping log p to
    the same range gives the same values and gradients), the loss averaged over the batch.
    """

    def __init__(self, model, transition):
        super().__init__(model, transition)
        inverse = require_invertible(self.transition.double().cpu().numpy(), f"strategy {self.name!r}")
        self.register_buffer("inverse", torch.as_tensor(inverse, dtype=torch.float32))

    def corrected_loss(self, logits, y):
        return backward_corrected_loss(logits, y, self.inverse)
