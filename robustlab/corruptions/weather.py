"""Snow, frost and spatter of CIFAR-10-C (weather family), batched on the images' device."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from robustlab.corruptions import _ops as ops
from robustlab.corruptions.inputs import _register
from robustlab.errors import require

FROST_DIR = Path(__file__).with_name("frost")
# The generator draws np.random.randint(5): frost6 is listed there but never chosen.
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.png", "frost5.png")
_GREY = (0.299, 0.587, 0.114)  # OpenCV's RGB2GRAY weights


def _rgb_only(x: torch.Tensor, name: str) -> None:
    require(x.shape[1] == 3, f"{name} needs RGB images (3 channels), got {x.shape[1]}")


def _grey(x: torch.Tensor) -> torch.Tensor:
    return sum(w * x[:, i:i + 1] for i, w in enumerate(_GREY))


def snow(x, params, generator):
    """Falling snow: a motion-blurred flake layer (and its 180-degree rotation) over a brightened image.

    params = (mean, std, zoom, threshold, blur radius, blur sigma, image weight). Flakes: Gaussian
    noise (mean, std) per pixel, clipped-zoomed by `zoom`, set to 0 below `threshold`, truncated to
    8 bits, motion-blurred (ImageMagick's kernel, see motion_blur) at an angle uniform in
    [-135, -45] degrees and rounded to 8 bits. The image becomes w x + (1 - w) max(x, 1.5 grey + 0.5).
    Deviation: ImageMagick is replaced by the same kernel in torch (as for motion_blur).
    """
    _rgb_only(x, "snow")
    mean, std, zoom, threshold, radius, sigma, weight = params
    n, _, h, w = x.shape
    flakes = ops.clipped_zoom(mean + std * ops.randn((n, 1, h, w), x, generator), zoom)
    flakes = torch.where(flakes < threshold, torch.zeros_like(flakes), flakes)
    flakes = torch.floor(flakes.clamp(0, 1) * 255) / 255
    angle = ops.uniform(n, -135.0, -45.0, x, generator)
    flakes = torch.round(ops.motion_blur(flakes, radius, sigma, angle) * 255) / 255
    x = weight * x + (1 - weight) * torch.maximum(x, _grey(x) * 1.5 + 0.5)
    return x + flakes + flakes.flip(-2, -1)
snow = _register("snow", ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                    (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                    (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)))(snow)


@functools.lru_cache(maxsize=None)
def _frost_textures_cpu() -> tuple[torch.Tensor, ...]:
    from PIL import Image

    textures = []
    for name in FROST_FILES:
        path = FROST_DIR / name
        require(path.is_file(), f"frost texture {path} is missing; reinstall robustlab")
        textures.append(torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).contiguous())
    return tuple(textures)


def frost(x, weights, generator):
    """image_weight * x + frost_weight * a random crop of one of five frost photographs.

    The textures are the generator's frost1-5 images downscaled by 0.2 (as make_cifar_c.py does
    before cropping), shipped in robustlab/corruptions/frost (Apache-2.0, see NOTICE there). Each
    image gets texture randint(5) and a crop at a uniform offset, as in the generator. Images must
    be smaller than every texture: at most 62 x 104 pixels (H x W).
    """
    _rgb_only(x, "frost")
    image_weight, frost_weight = weights
    n, _, h, w = x.shape
    textures = _frost_textures_cpu()
    require(all(h < t.shape[1] and w < t.shape[2] for t in textures),
            f"frost needs images smaller than its textures ({min(t.shape[1] for t in textures)} x "
            f"{min(t.shape[2] for t in textures)} pixels), got {h} x {w}")
    which = ops.randint(0, len(textures), (n,), x, generator)
    u = ops.rand((n, 2), x.to(torch.float64), generator)
    layer = torch.empty_like(x)
    for k, texture in enumerate(textures):
        chosen = (which == k).nonzero().flatten()
        if not len(chosen):
            continue
        # np.random.randint(0, size - 32): offsets uniform over [0, size - side)
        top = (u[chosen, 0] * (texture.shape[1] - h)).long()
        left = (u[chosen, 1] * (texture.shape[2] - w)).long()
        rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]
        tex = texture.to(x.device, x.dtype) / 255
        layer[chosen] = tex[:, rows, cols].permute(1, 0, 2, 3)
    return image_weight * x + frost_weight * layer
frost = _register("frost", ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)))(frost)


def spatter(x, params, generator):
    """Water drops (severities 1-3) or mud (4-5) on the lens. Extra corruption.

    params = (mean, std, sigma, threshold, strength, mud). A liquid layer of Gaussian noise
    (mean, std), Gaussian-blurred by sigma and zeroed below `threshold`.
    Mud: the layer's mask blurred by `strength`, kept where >= 0.8, blends to mud brown (63, 42, 20).
    Water: pale turquoise (175, 238, 238) added with weight liquid x emboss(distance to the drop
    edges), the generator's pipeline (distance truncated at 20, 3x3 mean, histogram equalization,
    emboss kernel, 3x3 mean, normalized to max `strength`). Deviations (water only): the drop
    edges are the boundary pixels of the liquid mask instead of OpenCV's Canny edges, the distance
    is the exact Euclidean one (OpenCV: a 5x5-mask approximation), and liquid values above 1 are
    clipped (the generator's uint8 cast wraps them).
    """
    _rgb_only(x, "spatter")
    mean, std, sigma, threshold, strength, mud = params
    n, _, h, w = x.shape
    liquid = ops.gaussian_filter(mean + std * ops.randn((n, 1, h, w), x, generator), sigma)
    liquid = torch.where(liquid < threshold, torch.zeros_like(liquid), liquid)
    if mud:
        m = ops.gaussian_filter((liquid > threshold).to(x.dtype), strength)
        m = torch.where(m < 0.8, torch.zeros_like(m), m)
        brown = torch.tensor((63, 42, 20), dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255
        return x * (1 - m) + brown * m
    liquid8 = torch.floor(liquid.clamp(0, 1) * 255)
    dist = _distance_to(_mask_edges(liquid8 > 0)).clamp(max=20)
    dist = torch.floor(ops.box_blur3(dist))
    dist = _equalize_hist(dist)
    emboss = torch.tensor([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=torch.float64)
    dist = ops.correlate(dist, emboss, "reflect101").round().clamp(0, 255)  # filter2D to CV_8U saturates
    dist = ops.box_blur3(dist).round()  # blur of an 8-bit image: rounded to 8 bits
    m = liquid8 / 255 * dist
    m = m / m.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12) * strength
    turquoise = torch.tensor((175, 238, 238), dtype=x.dtype, device=x.device).view(1, 3, 1, 1) / 255
    return x + m * turquoise
spatter = _register("spatter", ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                       (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)))(spatter)


def _mask_edges(mask: torch.Tensor) -> torch.Tensor:
    """Pixels of `mask` (N, 1, H, W) with a 4-neighbour outside it (the drop outlines)."""
    outside = ops.pad(~mask, 1, 1, "edge")
    touches = outside[..., :-2, 1:-1] | outside[..., 2:, 1:-1] | outside[..., 1:-1, :-2] | outside[..., 1:-1, 2:]
    return mask & touches


def _distance_to(edges: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distance from every pixel to the nearest edge pixel (separable, two passes);
    images without edges get a large distance."""
    n, _, h, w = edges.shape
    big = float(h * h + w * w) * 4
    r = torch.arange(h, device=edges.device)
    c = torch.arange(w, device=edges.device)
    e = edges[:, 0]
    # pass 1, along rows: d1[n, i, j] = min over k with an edge at (k, j) of (i - k)^2
    cost = torch.where(e[:, None, :, :], 0.0, big).double()  # (N, 1, K, W); float64 from here on
    d1 = ((r[:, None] - r[None, :]) ** 2)[None, :, :, None] + cost  # (N, I, K, W)
    d1 = d1.amin(dim=2)  # (N, I, W)
    # pass 2, along columns: d[n, i, j] = min over l of d1[n, i, l] + (j - l)^2
    d = (d1[:, :, None, :] + ((c[:, None] - c[None, :]) ** 2)[None, None]).amin(dim=3)
    return d.sqrt()[:, None]


def _equalize_hist(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's equalizeHist per image on 8-bit values (N, 1, H, W): lut(v) = round((cdf(v) -
    count(min)) * 255 / (pixels - count(min))); a constant image is left as it is."""
    n = x.shape[0]
    v = x.reshape(n, -1).long()
    hist = torch.zeros(n, 256, dtype=torch.float64, device=x.device).scatter_add_(1, v, torch.ones_like(v, dtype=torch.float64))
    cdf = hist.cumsum(1)
    first = cdf.gt(0).float().argmax(1, keepdim=True)
    low = hist.gather(1, first)
    total = cdf[:, -1:]
    lut = ((cdf - low) * 255 / (total - low).clamp(min=1)).round()  # in 0..255 at every value present
    out = lut.gather(1, v).reshape(x.shape)
    constant = (total == low).view(n, 1, 1, 1)
    return torch.where(constant, x, out)
