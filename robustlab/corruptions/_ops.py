"""Batched tensor operations shared by the input corruptions: random draws, padding, filtering,
bilinear sampling, ImageMagick-style motion blur and scipy-style clipped zoom.

Images are float tensors of shape (N, C, H, W); every operation works on any device.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


# ---- random numbers: drawn on the generator's device, then moved to the images' -------------

def _device(like: torch.Tensor, generator: torch.Generator | None):
    return generator.device if generator is not None else like.device


def rand(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=_device(like, generator), dtype=like.dtype).to(like.device)


def randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=_device(like, generator), dtype=like.dtype).to(like.device)


def uniform(shape, low: float, high: float, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return low + (high - low) * rand(shape, like, generator)


def randint(low: int, high: int, shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Integers in [low, high), like numpy's randint."""
    return torch.randint(low, high, shape, generator=generator, device=_device(like, generator)).to(like.device)


# ---- borders ----------------------------------------------------------------------------------

BORDERS = ("edge", "symmetric", "reflect101")


def fold_index(idx: torch.Tensor, n: int, border: str) -> torch.Tensor:
    """Map integer indices (any range) into 0..n-1 by the border rule.

    symmetric: d c b a | a b c d (scipy's and skimage's 'reflect'); reflect101: d c b | a b c d
    (OpenCV's default, torch's 'reflect'); edge: a a a | a b c d (scipy 'nearest', 'replicate').
    """
    if border not in BORDERS:
        raise ValueError(f"unknown border {border!r}; expected one of {', '.join(BORDERS)}")
    if border == "edge" or n == 1:
        return idx.clamp(0, n - 1)
    period = 2 * n if border == "symmetric" else 2 * n - 2
    m = idx.remainder(period)
    return torch.where(m >= n, period - 1 - m if border == "symmetric" else period - m, m)


def pad(x: torch.Tensor, ph: int, pw: int, border: str) -> torch.Tensor:
    """Pad the last two dims by (ph, pw) on both sides with `border` (any pad size)."""
    h, w = x.shape[-2:]
    rows = fold_index(torch.arange(-ph, h + ph, device=x.device), h, border)
    cols = fold_index(torch.arange(-pw, w + pw, device=x.device), w, border)
    return x.index_select(-2, rows).index_select(-1, cols)


def correlate(x: torch.Tensor, kernel: torch.Tensor, border: str) -> torch.Tensor:
    """Filter every channel of x with the same odd-sized 2-D kernel (correlation, as OpenCV's filter2D)."""
    kh, kw = kernel.shape
    n, c, h, w = x.shape
    padded = pad(x.reshape(n * c, 1, h, w), kh // 2, kw // 2, border)
    return F.conv2d(padded, kernel.to(x)[None, None]).reshape(n, c, h, w)


def gaussian_1d(sigma: float, radius: int, dtype=torch.float64) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def gaussian_filter(x: torch.Tensor, sigma: float, border: str = "edge", truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian over H and W: radius int(truncate * sigma + 0.5); sigma 0 is the identity."""
    if sigma <= 0:
        return x
    g = gaussian_1d(sigma, int(truncate * sigma + 0.5))
    return correlate(correlate(x, g[None, :], border), g[:, None], border)


def box_blur3(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's blur(x, (3, 3)): 3x3 mean, reflect101 border. The sum is divided by 9 (not summed
    in ninths) so that the mean of equal integers is that integer, as OpenCV's is."""
    return correlate(x, torch.ones(3, 3), "reflect101") / 9


# ---- sampling ---------------------------------------------------------------------------------

def gather_pixels(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """out[n, c, i, j] = x[n, c, rows[n, i, j], cols[n, i, j]] for in-range integer indices."""
    n, c, h, w = x.shape
    flat = (rows * w + cols).reshape(n, 1, -1).expand(n, c, -1)
    return x.reshape(n, c, h * w).gather(2, flat).reshape(n, c, *rows.shape[1:])


def sample_bilinear(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, border: str) -> torch.Tensor:
    """Bilinear interpolation of x at real (rows, cols) of shape (N, H', W'), pixel centres at
    integers, values outside the image taken from its `border` extension (scipy's map_coordinates
    with order=1, OpenCV's remap with INTER_LINEAR)."""
    h, w = x.shape[-2:]
    r0, c0 = rows.floor(), cols.floor()
    fr, fc = (rows - r0).unsqueeze(1).to(x.dtype), (cols - c0).unsqueeze(1).to(x.dtype)
    r0, c0 = r0.long(), c0.long()
    ra, rb = fold_index(r0, h, border), fold_index(r0 + 1, h, border)
    ca, cb = fold_index(c0, w, border), fold_index(c0 + 1, w, border)
    top = gather_pixels(x, ra, ca) * (1 - fc) + gather_pixels(x, ra, cb) * fc
    bottom = gather_pixels(x, rb, ca) * (1 - fc) + gather_pixels(x, rb, cb) * fc
    return top * (1 - fr) + bottom * fr


# ---- motion blur (ImageMagick's MotionBlurImage) ----------------------------------------------

def motion_kernel(radius: float, sigma: float) -> torch.Tensor:
    """ImageMagick's one-sided motion kernel: width 2 * ceil(radius) + 1, weights exp(-i^2 / 2 sigma^2)."""
    width = 2 * math.ceil(radius) + 1
    i = torch.arange(width, dtype=torch.float64)
    k = torch.exp(-(i**2) / (2 * sigma**2))
    return k / k.sum()


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angle: torch.Tensor) -> torch.Tensor:
    """Per-sample motion blur along `angle` (degrees, (N,)): out(r, c) = sum_i k_i x(r + dy_i, c + dx_i)
    with dx_i = ceil(i cos(angle) - 1/2), dy_i = ceil(i sin(angle) - 1/2), edge pixels beyond the border."""
    n, _, h, w = x.shape
    k = motion_kernel(radius, sigma).to(x)
    i = torch.arange(len(k), device=x.device, dtype=torch.float64)
    a = torch.deg2rad(angle.to(torch.float64))[:, None]
    dx = torch.ceil(i * torch.cos(a) - 0.5).long()  # (N, width)
    dy = torch.ceil(i * torch.sin(a) - 0.5).long()
    r = torch.arange(h, device=x.device)[None, :, None]
    c = torch.arange(w, device=x.device)[None, None, :]
    out = torch.zeros_like(x)
    for j in range(len(k)):
        rows = (r + dy[:, j, None, None]).clamp(0, h - 1).expand(n, h, w)
        cols = (c + dx[:, j, None, None]).clamp(0, w - 1).expand(n, h, w)
        out = out + k[j] * gather_pixels(x, rows, cols)
    return out


# ---- clipped zoom (scipy.ndimage.zoom, order 1, of a central crop) ----------------------------

def clipped_zoom_matrix(size: int, factor: float) -> torch.Tensor:
    """(size, size) matrix Z such that Z @ column = the generator's clipped_zoom along one axis:
    take the central ceil(size / factor) pixels, zoom them by `factor` with scipy's linear
    interpolation (corners aligned, output length round(crop * factor)), keep the central `size`."""
    crop = int(np.ceil(size / factor))
    top = (size - crop) // 2
    out_len = int(round(crop * factor))
    trim = (out_len - size) // 2
    o = torch.arange(trim, trim + size, dtype=torch.float64)
    src = o * (crop - 1) / (out_len - 1) if out_len > 1 else torch.zeros_like(o)
    lo = src.floor().clamp(0, crop - 1)
    frac = src - lo
    lo = lo.long()
    hi = (lo + 1).clamp(max=crop - 1)
    z = torch.zeros(size, size, dtype=torch.float64)
    rows = torch.arange(size)
    z.index_put_((rows, top + lo), 1 - frac, accumulate=True)
    z.index_put_((rows, top + hi), frac, accumulate=True)
    return z


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    return clipped_zoom_matrix(h, factor).to(x) @ x @ clipped_zoom_matrix(w, factor).to(x).T
