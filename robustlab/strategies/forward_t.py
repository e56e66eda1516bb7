"""Forward loss correction (Patrini et al., CVPR 2017): cross-entropy of the noisy label against
the network's class probabilities pushed through the noise, p @ T."""
from __future__ import annotations

import torch

from robustlab.strategies.registry import register_strategy
from robustlab.strategies.transition import CLIP_EPS, TransitionCorrected


def forward_corrected_loss(logits: torch.Tensor, y: torch.Tensor, transition: torch.Tensor) -> torch.Tensor:
    """Per-sample -log (p @ T)[y] with p = softmax(logits) clipped to [eps, 1 - eps] (as the
    official code does), in float32. With T = I it is cross-entropy."""
    p = torch.softmax(logits.float(), dim=1).clamp(CLIP_EPS, 1 - CLIP_EPS)
    # (p @ T)[i, y_i] = sum_c p_ic T[c, y_i]: only the label's column, elementwise so that
    # autocast leaves it in float32 (a matmul would run in bf16)
    noisy = (p * transition.to(p.dtype).t()[y]).sum(1)
    return -torch.log(noisy)


@register_strategy("forward_t")
class ForwardT(TransitionCorrected):
    """Forward correction (Patrini et al. 2017): loss = CE(log(softmax(z) @ T), y_noisy).

    T (rows true class, columns noisy class) comes from `t_source`: `oracle` (the realised noise
    of the training labels, an oracle; the default), `file` or `estimate` (`t_file`, .npy/.csv;
    robustlab.labelissues writes an estimated T.npy). The network is trained on the noisy labels
    through the noise model; predictions are its uncorrected softmax, an estimate of the clean
    class posterior. Consistent for any T (no inverse needed).

    Deviations from the official code (giorgiop/loss-correction, Keras): PyTorch; T comes from
    the realised noise or a file instead of the official two-stage estimator (a first network's
    softmax at the 97th percentile per class, `filter_outlier`), which robustlab.labelissues
    replaces with cleanlab's estimate; rows of a T read from a file are renormalized to sum to
    exactly 1 (entries within 1e-3 pass). Kept as in the official code: probabilities clipped to
    [1e-7, 1 - 1e-7] before mixing, the loss averaged over the batch. The paper's networks and
    SGD schedules are the study's to choose, not the strategy's.
    """

    def corrected_loss(self, logits, y):
        return forward_corrected_loss(logits, y, self.transition)
