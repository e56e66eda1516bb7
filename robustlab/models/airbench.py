"""airbench: the fast CIFAR-10 network of Jordan (arXiv 2404.00498, KellerJordan/cifar10-airbench,
airbench94.py), in robustlab's Classifier form.

Layout (airbench94): a frozen 2x2 patch-whitening convolution (2 * 3 * 2 * 2 = 24 channels: the
12 eigenvectors of the training patches' covariance scaled by 1 / sqrt(eigenvalue + 5e-4), and
their negatives) with a trainable bias, GELU, three conv groups (conv, max-pool, BN, GELU, conv,
BN, GELU; widths 64/256/256), max-pool 3, a bias-free linear head and an output scale of 1/9.
Convolutions start as Dirac (identity) kernels; BatchNorm has eps 1e-12, running-stat momentum 0.4
(the official 0.6 in its own convention) and a frozen scale of one, so only its bias trains.

The whitening weights come from data: `init_whitening(images)` with the run's own (normalized)
training images; robustlab.prepare calls it for every network a strategy builds. They are a
parameter with requires_grad False, so they are saved in and restored from checkpoints.
`whiten_bias_epochs`: the whitening bias trains only in the first epochs (the engine calls
`begin_epoch` on every module that has it).

Deviations: the network runs in fp32 weights (autocast supplies bf16 where robustlab.precision
chooses it) where the official script casts the whole network to fp16; `airbench_s` is a narrower
sibling for CPUs (widths 32/128/128), not an official configuration; `dropout` (default 0) adds
dropout before the head for the regularization study's dropout arms.
"""
from __future__ import annotations

import torch
from torch import nn

from robustlab.errors import require
from robustlab.models.base import Classifier
from robustlab.models.registry import register_model

WHITEN_EPS = 5e-4
WHITEN_IMAGES = 5000  # airbench94 fits the whitening on the first 5,000 training images


def _positive_width(name: str, value) -> int:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"{name} must be a positive integer, got {value!r}")
    return value


class DiracConv(nn.Conv2d):
    """3x3 'same' convolution, no bias, initialised so its first in_channels filters pass their input through."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        torch.nn.init.dirac_(w[:w.size(1)])


class FrozenScaleBN(nn.BatchNorm2d):
    """BatchNorm with a fixed unit scale (only the bias trains), eps 1e-12 and momentum 0.4."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv1, self.pool, self.norm1 = DiracConv(c_in, c_out), nn.MaxPool2d(2), FrozenScaleBN(c_out)
        self.conv2, self.norm2, self.act = DiracConv(c_out, c_out), FrozenScaleBN(c_out), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


def patches(images: torch.Tensor, size: int) -> torch.Tensor:
    """Every size x size patch of (N, C, H, W) images as rows of a (P, C * size * size) matrix."""
    c = images.shape[1]
    p = images.unfold(2, size, 1).unfold(3, size, 1)  # (N, C, H', W', s, s)
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * size * size)


def whitening_filters(images: torch.Tensor, size: int, eps: float = WHITEN_EPS) -> torch.Tensor:
    """(2 * D, C, size, size) filters: the patch covariance's eigenvectors (largest first) scaled by
    1 / sqrt(eigenvalue + eps), then their negatives. D = C * size * size."""
    c, d = images.shape[1], images.shape[1] * size * size
    cov = torch.zeros(d, d, dtype=torch.float64, device=images.device)
    count = 0
    for chunk in images.split(1000):  # the patches of 5,000 images would take ~230 MB at once
        rows = patches(chunk.double(), size)
        cov += rows.T @ rows
        count += len(rows)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov / count)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    scaled = (eigenvectors / torch.sqrt(eigenvalues + eps)).T.reshape(d, c, size, size)
    return torch.cat([scaled, -scaled]).float()


class WhiteningConv(nn.Conv2d):
    """A 2x2 convolution whose frozen weights whiten the training patches; its bias trains for
    `bias_epochs` epochs."""

    def __init__(self, c_in: int = 3, size: int = 2, bias_epochs: int = 3):
        super().__init__(c_in, 2 * c_in * size * size, kernel_size=size, padding=0, bias=True)
        require(isinstance(bias_epochs, int) and bias_epochs >= 0,
                f"whiten_bias_epochs must be an integer >= 0, got {bias_epochs!r}")
        self.weight.requires_grad_(False)
        self.bias_epochs = bias_epochs
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        require(len(images) > 0, "the whitening set is empty")
        self.weight.copy_(whitening_filters(images.float(), self.kernel_size[0]).to(self.weight))
        self.fitted.fill_(True)

    def begin_epoch(self, epoch: int) -> None:
        self.bias.requires_grad_(epoch < self.bias_epochs)


class Airbench(Classifier):
    def __init__(self, num_classes: int = 10, widths=(64, 256, 256), scale: float = 1 / 9,
                 whiten_bias_epochs: int = 3, whiten_images: int | None = None, in_chans: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        widths = tuple(_positive_width("width", w) for w in widths)
        require(len(widths) == 3, f"airbench takes three widths, got {len(widths)}")
        # None: the official 5,000 images, or the whole training set when it is smaller
        self.whiten_images = None if whiten_images is None else _positive_width("whiten_images", whiten_images)
        self.whiten = WhiteningConv(in_chans, 2, whiten_bias_epochs)
        c = self.whiten.out_channels
        groups = []
        for w in widths:
            groups.append(ConvGroup(c, w))
            c = w
        require(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}")
        # dropout before the head: not in airbench94 (0 by default); the regularization study's dropout arms use it
        tail = [nn.Dropout(dropout)] if dropout else []
        self.body = nn.Sequential(nn.GELU(), *groups, nn.MaxPool2d(3), nn.Flatten(), *tail)
        self.num_features = c
        self.head = nn.Linear(c, num_classes, bias=False)
        self.scale = scale

    def init_whitening(self, images: torch.Tensor) -> None:
        """Fit the whitening filters on the first `whiten_images` of these normalized training images
        (by default min(5000, all of them))."""
        count = min(WHITEN_IMAGES, len(images)) if self.whiten_images is None else self.whiten_images
        require(count <= len(images),
                f"the whitening set ({count} images) is larger than the training set ({len(images)})")
        self.whiten.fit(images[:count])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.whiten(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features) * self.scale


@register_model
def airbench(num_classes: int = 10, width: int = 64, **kwargs) -> Airbench:
    """airbench94's network; `width` is the base width (groups are width, 4 width, 4 width)."""
    width = _positive_width("width", width)
    return Airbench(num_classes, widths=(width, 4 * width, 4 * width), **kwargs)


@register_model
def airbench_s(num_classes: int = 10, width: int = 32, **kwargs) -> Airbench:
    """A narrower airbench for CPUs (base width 32: groups 32/128/128)."""
    return airbench(num_classes, width=width, **kwargs)
