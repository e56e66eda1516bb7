"""Glass, motion and zoom blur of CIFAR-10-C (blur family), batched on the images' device."""
from __future__ import annotations

import numpy as np
import torch

from robustlab.corruptions import _ops as ops
from robustlab.corruptions.inputs import _register


def glass_blur(x, params, generator):
    """Gaussian blur (sigma), 8-bit truncation, local pixel shuffling, Gaussian blur again.

    params = (sigma, max_delta, iterations). The shuffle is the generator's: for each pixel (h, w)
    from the bottom-right inwards, h and w in (max_delta, size - max_delta], take the value of
    (h + dy, w + dx), dx, dy uniform integers in [-max_delta, max_delta). make_cifar_c.py writes this
    as a swap, `x[h, w], x[h', w'] = x[h', w'], x[h, w]`, but on numpy views it copies the neighbour
    and leaves the neighbour unchanged; the published CIFAR-10-C files were made that way, so it is
    copied here too. The copies are sequential (a value may travel far), so they run pixel by pixel,
    each one batched over the images.
    """
    sigma, delta, iterations = params
    n, _, h, w = x.shape
    # np.uint8(...) truncates; a Gaussian (positive weights summing to 1) of [0, 1] values stays in [0, 1]
    x = torch.floor(ops.gaussian_filter(x, sigma) * 255) / 255
    rows, cols = range(h - delta, delta, -1), range(w - delta, delta, -1)
    offsets = ops.randint(-delta, delta, (iterations, len(rows), len(cols), 2, n), x, generator)
    batch = torch.arange(n, device=x.device)
    for it in range(iterations):
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                dx, dy = offsets[it, i, j]
                r2, c2 = r + dy, c + dx
                x[:, :, r, c] = x[batch, :, r2, c2]
    return ops.gaussian_filter(x, sigma)
glass_blur = _register("glass_blur", ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)))(glass_blur)


def motion_blur(x, radius_and_sigma, generator):
    """ImageMagick's motion blur (radius, sigma) at an angle uniform in [-45, 45] degrees per image.

    Reimplements MagickMotionBlurImage instead of calling ImageMagick: a one-sided line kernel of
    width 2 * ceil(radius) + 1 with half-Gaussian weights exp(-i^2 / 2 sigma^2), offsets rounded to
    whole pixels along the angle, edge pixels beyond the border (ImageMagick's default). Deviation:
    no 8-bit PNG round trip in between.
    """
    radius, sigma = radius_and_sigma
    angle = ops.uniform(x.shape[0], -45.0, 45.0, x, generator)
    return ops.motion_blur(x, radius, sigma, angle)
motion_blur = _register("motion_blur", ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)))(motion_blur)


def zoom_blur(x, stop, generator):
    """Mean of the image and its central zooms by factors np.arange(1, stop, 0.01).

    Each zoom is the generator's clipped_zoom (scipy.ndimage.zoom, order 1, of the central crop),
    written as a (H, H) and a (W, W) interpolation matrix, so the whole batch is two matmuls per factor.
    """
    out = x.clone()
    factors = np.arange(1, stop, 0.01)
    for factor in factors:
        out = out + ops.clipped_zoom(x, float(factor))
    return out / (len(factors) + 1)
zoom_blur = _register("zoom_blur", (1.06, 1.11, 1.16, 1.21, 1.26))(zoom_blur)
