"""Elastic transform of CIFAR-10-C (digital family), batched on the images' device."""
from __future__ import annotations

import torch

from robustlab.corruptions import _ops as ops
from robustlab.corruptions.inputs import _register

# In units of the image side (the generator multiplies by IMSIZE = 32).
_LEVELS = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))


def elastic_transform(x, params, generator):
    """A random affine warp, then a smooth random displacement field (Simard et al. 2003).

    params = (alpha, sigma, affine jitter), in units of the image side S (32 on CIFAR). Affine: the
    three points centre + (s, s), (s, -s), (-s, -s), s = S // 3, each moved by uniform(-jitter * S,
    jitter * S) per coordinate; the image is warped by the affine map between them (OpenCV's
    warpAffine: bilinear, reflect-101 border). Displacement: dx, dy = alpha * S * Gaussian blur
    (sigma * S, truncate 3, symmetric border) of uniform(-1, 1) noise, sampled bilinearly with a
    symmetric border (scipy's map_coordinates, order 1, mode 'reflect').
    Deviation: OpenCV interpolates with 1/32-pixel fixed-point weights; this uses exact weights.
    """
    alpha, sigma, jitter = params
    n, _, h, w = x.shape
    side = min(h, w)
    alpha, sigma, jitter = alpha * side, sigma * side, jitter * side
    f64 = x.to(torch.float64)
    # the generator's points (x, y): centre_square = (h // 2, w // 2), used as (x, y) as it is there
    cx, cy, s = float(h // 2), float(w // 2), float(side // 3)
    src = torch.tensor([[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]], dtype=torch.float64, device=x.device)
    dst = src + ops.uniform((n, 3, 2), -jitter, jitter, f64, generator)
    x = _warp_affine(x, src.expand(n, 3, 2), dst)
    if alpha > 0:
        noise = ops.uniform((n, 2, h, w), -1.0, 1.0, f64, generator)
        shift = ops.gaussian_filter(noise, sigma, border="symmetric", truncate=3.0) * alpha
        rows = torch.arange(h, device=x.device, dtype=torch.float64)[None, :, None] + shift[:, 1]
        cols = torch.arange(w, device=x.device, dtype=torch.float64)[None, None, :] + shift[:, 0]
        x = ops.sample_bilinear(x, rows, cols, "symmetric")
    return x
elastic_transform = _register("elastic_transform", _LEVELS)(elastic_transform)


def _warp_affine(x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """out(p) = x(A^-1 (p - b)) for the affine map p -> A p + b sending the points `src` to `dst`
    ((N, 3, 2) as (x, y)), bilinear with a reflect-101 border."""
    n, _, h, w = x.shape
    m = torch.linalg.solve(torch.cat([src, torch.ones_like(src[..., :1])], dim=2), dst).transpose(1, 2)  # (N, 2, 3): [A | b]
    inv = torch.linalg.inv(m[:, :, :2])
    xx, yy = torch.meshgrid(torch.arange(w, dtype=src.dtype, device=src.device),
                            torch.arange(h, dtype=src.dtype, device=src.device), indexing="xy")  # (H, W) each
    p = torch.stack([xx, yy]).reshape(1, 2, -1) - m[:, :, 2:]  # (N, 2, H*W)
    q = (inv @ p).reshape(n, 2, h, w)
    return ops.sample_bilinear(x, q[:, 1], q[:, 0], "reflect101")
