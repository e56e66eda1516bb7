"""Evaluation: accuracy, loss, cost, per-class accuracy, confusion matrix, test-time augmentation."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from robustlab.errors import require
from robustlab.settings import TTA_MODES  # noqa: F401  (re-exported)

Predict = Callable[[torch.Tensor], torch.Tensor]


def tta_logits(predict: Predict, x: torch.Tensor, mode: str = "none", shift: int = 2) -> torch.Tensor:
    """Average the logits over test-time views: flip adds the mirror image; flip_translate adds
    the image and its mirror each shifted by `shift` pixels (reflect-padded) up-left and down-right;
    mirror_translate is airbench94's level 2 (image and mirror 1/4 each, the four 1-pixel shifted
    views 1/8 each)."""
    require(mode in TTA_MODES, f"unknown TTA mode {mode!r}; choose one of {', '.join(TTA_MODES)}")
    if mode == "none":
        return predict(x)
    if mode == "mirror_translate":  # airbench's TTA level 2: weights 1/4, 1/4 and 1/8 for each shifted view
        mirror = lambda v: 0.5 * predict(v).float() + 0.5 * predict(v.flip(3)).float()  # noqa: E731
        padded = F.pad(x, (1,) * 4, mode="reflect")
        h, w = x.shape[-2:]
        shifted = [padded[..., :h, :w], padded[..., 2:2 + h, 2:2 + w]]
        return 0.5 * mirror(x) + 0.25 * (mirror(shifted[0]) + mirror(shifted[1]))
    views = [x, x.flip(3)]
    if mode == "flip_translate":
        padded = F.pad(x, (shift,) * 4, mode="reflect")
        h, w = x.shape[-2:]
        for oy, ox in ((0, 0), (2 * shift, 2 * shift)):
            moved = padded[..., oy:oy + h, ox:ox + w]
            views += [moved, moved.flip(3)]
    return torch.stack([predict(v).float() for v in views]).mean(0)


@torch.no_grad()
def collect_logits(predict: Predict, batches: Iterable, tta: str = "none", autocast=None,
                   precision=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `predict` over (x, y, idx) batches; returns float logits (N, C) and labels (N,) on the device.

    `autocast` is a callable returning a context; `precision` (a robustlab.precision.Precision)
    gives both the autocast and the input memory format. Without either, fp32."""
    logits, labels = [], []
    if precision is not None:
        autocast = precision.autocast
    for x, y, *_ in batches:
        if precision is not None:
            x = precision.format_input(x)
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            out = tta_logits(predict, x, tta)
        logits.append(out.float())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, prefix: str = "",
                           full: bool = False) -> dict:
    """acc and mean loss; with `full`, also per-class accuracy, the confusion matrix and ECE."""
    pred = logits.argmax(1)
    out = {f"{prefix}acc": (pred == labels).float().mean().item(),
           f"{prefix}loss": F.cross_entropy(logits, labels).item()}
    if full:
        from robustlab.calibration import expected_calibration_error

        confusion = torch.bincount(labels * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes)
        support = confusion.sum(1).clamp(min=1)
        out[f"{prefix}per_class_acc"] = (confusion.diag() / support).tolist()
        out[f"{prefix}confusion"] = confusion.tolist()
        out[f"{prefix}ece"] = expected_calibration_error(logits, labels, from_logits=True)
    return out


def l2_term(module: torch.nn.Module) -> float:
    """Sum of squared trainable conv/linear kernels (biases, norm parameters and frozen weights excluded)."""
    return sum(float(p.detach().float().pow(2).sum()) for p in module.parameters() if p.ndim > 1 and p.requires_grad)
