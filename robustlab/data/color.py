"""Per-sample colour operations on float images in [0, 1], shape (N, 3, H, W); factors are (N,).

They match torchvision's adjust_* functions, but each image in the batch gets its own factor.
"""
from __future__ import annotations

import torch

# ITU-R 601 luma weights, the ones torchvision's rgb_to_grayscale uses.
_LUMA = (0.2989, 0.587, 0.114)


def _per_sample(factors: torch.Tensor) -> torch.Tensor:
    return factors.view(-1, 1, 1, 1)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = images.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def adjust_brightness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    return (images * _per_sample(factors)).clamp(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend each image with its mean luma."""
    mean = to_grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    f = _per_sample(factors)
    return (f * images + (1 - f) * mean).clamp(0.0, 1.0)


def adjust_saturation(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend each image with its own grayscale version."""
    f = _per_sample(factors)
    return (f * images + (1 - f) * to_grayscale(images)).clamp(0.0, 1.0)


def _rgb_to_hsv(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = images.unbind(dim=1)
    minc, maxc = torch.aminmax(images, dim=1)
    delta = maxc - minc
    grey = delta == 0  # hue and saturation are undefined there; any finite value works
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    d = torch.where(grey, torch.ones_like(delta), delta)
    h = torch.where(
        maxc == r, (g - b) / d, torch.where(maxc == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d)
    )
    h = torch.where(grey, torch.zeros_like(h), h)
    return torch.remainder(h / 6.0, 1.0), s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    h6 = h * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    p = v * (1 - s)
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    sector = sector.long().remainder(6).unsqueeze(1)  # (N, 1, H, W)
    # Channel values for sectors 0..5 of the hue circle.
    r = torch.stack((v, q, p, p, t, v), dim=1).gather(1, sector)
    g = torch.stack((t, v, v, q, p, p), dim=1).gather(1, sector)
    b = torch.stack((p, p, t, v, v, q), dim=1).gather(1, sector)
    return torch.cat((r, g, b), dim=1).clamp(0.0, 1.0)


def adjust_hue(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `shifts` (fractions of the hue circle, in [-0.5, 0.5]) in HSV space."""
    h, s, v = _rgb_to_hsv(images)
    h = torch.remainder(h + shifts.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(h, s, v)
