"""Common image corruptions of CIFAR-10-C, applied on the fly to whole batches.

The 15 benchmark corruptions of Hendrycks & Dietterich (ICLR 2019) and the 4 extra ones of their
release, with the per-severity parameters of the CIFAR generator (`make_cifar_c.py` in
hendrycks/robustness). Noise, Gaussian/defocus blur and photometric/digital ones live here; glass,
motion and zoom blur in `blur`, snow, frost and spatter in `weather`, elastic in `elastic`.
`CORRUPTION_FAMILIES`, `BENCHMARK_CORRUPTIONS` and `EXTRA_CORRUPTIONS` group them as the paper does.

Every corruption takes float images in [0, 1] of shape (N, C, H, W) on any device and returns a
tensor of the same shape, dtype and device, clipped to [0, 1]. Severity 0 is the identity and
severities 1-5 use the per-severity parameters of Hendrycks & Dietterich (2019)'s CIFAR-10-C
generator, so results are comparable with the published CIFAR-10-C files (they are not
bit-identical: the random draws differ, and those files were rounded to 8 bits).

Random corruptions draw from `generator` when given (sampled on the generator's device, then
moved to the images' device), so a seeded `torch.Generator` makes them reproducible.
"""
from __future__ import annotations

import io
import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from robustlab.corruptions import _ops as ops
from robustlab.errors import require

Corruption = Callable[..., torch.Tensor]  # (images, severity=1, generator=None) -> images

INPUT_CORRUPTIONS: dict[str, Corruption] = {}
SEVERITY_PARAMS: dict[str, tuple] = {}  # name -> the five per-severity parameters
MAX_SEVERITY = 5


def list_input_corruptions() -> list[str]:
    return sorted(INPUT_CORRUPTIONS)


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the corruption `name` at `severity` (0 = identity, 1-5 = CIFAR-10-C levels)."""
    require(name in INPUT_CORRUPTIONS,
            f"unknown input corruption {name!r}; known corruptions: {', '.join(list_input_corruptions())}")
    return INPUT_CORRUPTIONS[name](images, severity, generator)


# ---------------------------------------------------------------------------------------------
# registration and shared checks


def _check_images(images: torch.Tensor) -> None:
    require(isinstance(images, torch.Tensor), f"images must be a torch tensor, got {type(images).__name__}")
    require(images.dim() == 4, f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    require(images.is_floating_point(), f"images must be a float tensor in [0, 1], got dtype {images.dtype}")
    if images.numel():
        require(not bool(((images < 0) | (images > 1)).any()), "images must lie in [0, 1]")


def _check_severity(severity: int) -> None:
    require(isinstance(severity, int) and not isinstance(severity, bool) and 0 <= severity <= MAX_SEVERITY,
            f"severity must be an integer in 0..{MAX_SEVERITY}, got {severity!r}")


def _register(name: str, levels: Sequence):
    """Register `apply(x, level, generator)` as corruption `name` with its five levels.

    Called as `f = _register(name, levels)(f)` after each definition rather than as a decorator, so that
    mutation testing (mutmut skips decorated functions) reaches the corruption bodies."""
    assert len(levels) == MAX_SEVERITY

    def wrap(apply: Callable[[torch.Tensor, object, torch.Generator | None], torch.Tensor]) -> Corruption:
        def run(images: torch.Tensor, severity: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
            _check_images(images)
            _check_severity(severity)
            if severity == 0 or images.numel() == 0:
                return images.clone()
            # half-precision inputs are corrupted in float32 so small noise levels survive rounding
            x = images if images.dtype == torch.float64 else images.float()
            out = apply(x, levels[severity - 1], generator)
            return out.clamp(0, 1).to(images.dtype)

        run.__name__ = run.__qualname__ = apply.__name__
        run.__doc__ = ((apply.__doc__ or "") + f"\n\nSource: `{name}` in hendrycks/robustness, ImageNet-C/create_c/"
                       f"make_cifar_c.py. Per-severity parameters (1-5): {tuple(levels)}.")
        INPUT_CORRUPTIONS[name] = run
        SEVERITY_PARAMS[name] = tuple(levels)
        return run

    return wrap


_rand, _randn = ops.rand, ops.randn


def _pad_mode(x: torch.Tensor, pad: int) -> str:
    # reflect (OpenCV's default border) needs a pad smaller than the image; tiny images replicate
    return "reflect" if pad < min(x.shape[-2:]) else "replicate"


def _depthwise(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Filter every channel of x with the same odd-sized 2-D kernel, borders padded by `mode`."""
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    n, c, h, w = x.shape
    padded = F.pad(x.reshape(n * c, 1, h, w), (pw, pw, ph, ph), mode=mode)
    return F.conv2d(padded, kernel.to(x)[None, None]).reshape(n, c, h, w)


_gaussian_1d = ops.gaussian_1d


# ---------------------------------------------------------------------------------------------
# noise


def gaussian_noise(x, std, generator):
    """Additive zero-mean Gaussian noise with standard deviation `std`."""
    return x + std * _randn(x.shape, x, generator)
gaussian_noise = _register("gaussian_noise", (0.04, 0.06, 0.08, 0.09, 0.10))(gaussian_noise)


def shot_noise(x, photons, generator):
    """Poisson (photon) noise: each value becomes Poisson(x * photons) / photons."""
    device = generator.device if generator is not None else x.device
    counts = torch.poisson((x * photons).to(device), generator=generator).to(x.device)
    return counts / photons
shot_noise = _register("shot_noise", (500, 250, 100, 75, 50))(shot_noise)


def impulse_noise(x, amount, generator):
    """Salt-and-pepper noise: a fraction `amount` of values set to 0 or 1 with equal odds."""
    hit = _rand(x.shape, x, generator) < amount
    salt = _rand(x.shape, x, generator) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)
impulse_noise = _register("impulse_noise", (0.01, 0.02, 0.03, 0.05, 0.07))(impulse_noise)


def speckle_noise(x, std, generator):
    """Multiplicative Gaussian noise: x + x * N(0, std^2). Extra corruption (not in the 15-corruption mean)."""
    return x + x * std * _randn(x.shape, x, generator)
speckle_noise = _register("speckle_noise", (0.06, 0.10, 0.12, 0.16, 0.20))(speckle_noise)


# ---------------------------------------------------------------------------------------------
# blur


def _disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """Normalized disk of `radius`, anti-aliased by a 3x3 Gaussian of std `alias_blur`."""
    r = math.ceil(radius) + 1  # one spare ring for the 3x3 anti-aliasing blur to spread into
    t = torch.arange(-r, r + 1)
    disk = ((t[None, :] ** 2 + t[:, None] ** 2) <= radius**2).double()
    disk /= disk.sum()
    g = _gaussian_1d(alias_blur, 1)
    return F.conv2d(disk[None, None], (g[:, None] * g[None, :])[None, None], padding=1)[0, 0]


def defocus_blur(x, radius_and_alias, generator):
    """Convolution with an anti-aliased disk (radius, alias blur std), reflected borders."""
    kernel = _disk_kernel(*radius_and_alias)
    return _depthwise(x, kernel, _pad_mode(x, kernel.shape[0] // 2))
defocus_blur = _register("defocus_blur", ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)))(defocus_blur)


def gaussian_blur(x, sigma, generator):
    """Gaussian blur of std `sigma` pixels, truncated at 4 sigma, borders replicated."""
    g = _gaussian_1d(sigma, int(4 * sigma + 0.5))
    x = _depthwise(x, g[None, :], "replicate")
    return _depthwise(x, g[:, None], "replicate")
gaussian_blur = _register("gaussian_blur", (0.4, 0.6, 0.7, 0.8, 1.0))(gaussian_blur)


# ---------------------------------------------------------------------------------------------
# photometric


def contrast(x, factor, generator):
    """Pull every channel towards its per-image mean: (x - mean) * factor + mean."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * factor + mean
contrast = _register("contrast", (0.75, 0.5, 0.4, 0.3, 0.15))(contrast)


def brightness(x, shift, generator):
    """Add `shift` to the HSV value channel (clipped to 1), keeping hue and saturation.

    Since RGB = V * f(H, S), this rescales each pixel by V'/V; black pixels (V = 0, no hue)
    become grey V'. Identical to an RGB->HSV->RGB round trip without the conversions.
    """
    value = x.amax(dim=1, keepdim=True)
    new_value = (value + shift).clamp(max=1.0)
    scaled = x * (new_value / value.clamp(min=1e-12))
    return torch.where(value > 0, scaled, new_value.expand_as(x))
brightness = _register("brightness", (0.05, 0.1, 0.15, 0.2, 0.3))(brightness)


def saturate(x, scale_and_shift, generator):
    """HSV saturation S -> clip(S * scale + shift, 0, 1), hue and value kept. Extra corruption.

    With V = max and m = min over RGB, S = (V - m) / V and every channel is V - S * V * k(hue), so
    a new saturation S' gives channel' = V - (S' / S) (V - channel) without the conversions. Grey
    pixels (S = 0) have hue 0 in skimage's rgb2hsv, the generator's conversion: they become
    (V, V (1 - S'), V (1 - S')), a red tint when shift > 0. Severity 2 (x0.1) desaturates more
    than severity 1 (x0.3), as in the generator.
    """
    require(x.shape[1] == 3, f"saturate needs RGB images (3 channels), got {x.shape[1]}")
    scale, shift = scale_and_shift
    value = x.amax(dim=1, keepdim=True)
    spread = value - x.amin(dim=1, keepdim=True)
    sat = spread / value.clamp(min=1e-12)
    new_sat = (sat * scale + shift).clamp(0, 1)
    coloured = value - (new_sat / sat.clamp(min=1e-12)) * (value - x)
    red = torch.cat([value, value * (1 - new_sat), value * (1 - new_sat)], dim=1)
    return torch.where(spread > 0, coloured, red)
saturate = _register("saturate", ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)))(saturate)


def fog(x, strength_and_decay, generator):
    """Add a plasma-fractal haze (one per image, shared by the channels), then renormalize."""
    strength, decay = strength_and_decay
    n, _, h, w = x.shape
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))
    haze = _plasma_fractal(n, size, decay, x, generator)[:, None, :h, :w]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + strength * haze) * peak / (peak + strength)
fog = _register("fog", ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)))(fog)


def _plasma_fractal(n: int, size: int, decay: float, like: torch.Tensor, generator) -> torch.Tensor:
    """(n, size, size) diamond-square height maps scaled to [0, 1]; roughness falls with `decay`."""
    grid = torch.zeros(n, size, size, dtype=like.dtype, device=like.device)
    step = size
    # equivalent: the map is min-max normalized at the end, so the first wibble only scales it
    wibble = 100.0  # pragma: no mutate

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        jitter = _rand(total.shape, like, generator) * 2 - 1  # uniform(-1, 1)
        return total / 4 + wibble * wibble * jitter

    while step >= 2:
        half = step // 2
        corners = grid[:, 0:size:step, 0:size:step]
        square = corners + corners.roll(-1, dims=1)
        square = square + square.roll(-1, dims=2)
        grid[:, half:size:step, half:size:step] = wibbled_mean(square)

        centres = grid[:, half:size:step, half:size:step]
        corners = grid[:, 0:size:step, 0:size:step]
        left = centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2)
        grid[:, 0:size:step, half:size:step] = wibbled_mean(left)
        top = centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1)
        grid[:, half:size:step, 0:size:step] = wibbled_mean(top)
        step //= 2
        wibble /= decay

    flat = grid.reshape(n, -1)
    flat = flat - flat.amin(dim=1, keepdim=True)
    flat = flat / flat.amax(dim=1, keepdim=True).clamp(min=1e-12)
    return flat.reshape(n, size, size)


# ---------------------------------------------------------------------------------------------
# digital


def jpeg_compression(x, quality, generator):
    """JPEG round trip at `quality` through PIL, as CIFAR-10-C (8-bit, 1 or 3 channels, on the CPU).

    PIL rather than torchvision.io: torchvision's JPEG codecs are deprecated, and PIL's encoder
    is the one the CIFAR-10-C files were made with.
    """
    require(x.shape[1] in (1, 3), f"jpeg_compression needs 1 or 3 channels, got {x.shape[1]}")
    pixels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = [_jpeg_round_trip(image[..., 0] if image.shape[-1] == 1 else image, int(quality)) for image in pixels]
    out = torch.from_numpy(np.stack(decoded)).reshape(pixels.shape).permute(0, 3, 1, 2)
    return out.to(device=x.device, dtype=x.dtype) / 255
jpeg_compression = _register("jpeg_compression", (80, 65, 58, 50, 40))(jpeg_compression)


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer))  # Image.open reads from the start of the buffer


def pixelate(x, scale, generator):
    """Box-downsample to `scale` of the size, then box-upsample (blocky) back.

    Uses PIL's BOX filter weights, as CIFAR-10-C did: F.interpolate's "area" mode averages 2-3
    pixel windows at these near-1 ratios and blurs far more than the reference.
    """
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * scale)), max(1, int(w * scale))
    small = _box_resize_matrix(h, sh).to(x) @ x @ _box_resize_matrix(w, sw).to(x).T
    return _box_resize_matrix(sh, h).to(x) @ small @ _box_resize_matrix(sw, w).to(x).T
pixelate = _register("pixelate", (0.95, 0.9, 0.85, 0.75, 0.65))(pixelate)


def _box_resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) matrix of PIL's BOX resampling along one axis.

    Output pixel i averages the input pixels whose centres fall in its footprint
    ((i + 0.5) * scale +- scale / 2); when upsampling that is the nearest input pixel.
    """
    scale = size_in / size_out
    centre = (torch.arange(size_out, dtype=torch.float64)[:, None] + 0.5) * scale
    offset = (torch.arange(size_in)[None, :] + 0.5 - centre) / max(scale, 1.0)  # float64, as centre
    weights = ((offset > -0.5) & (offset <= 0.5)).double()
    return weights / weights.sum(dim=1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# the other families register themselves on import

from robustlab.corruptions import blur, elastic, weather  # noqa: E402,F401

# Hendrycks & Dietterich (2019): 15 benchmark corruptions in four families, and 4 extra ones
# released for validation (speckle noise, Gaussian blur, spatter, saturate), reported apart.
CORRUPTION_FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"),
    "weather": ("snow", "frost", "fog", "brightness", "spatter"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression", "saturate"),
}
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
BENCHMARK_CORRUPTIONS: tuple[str, ...] = tuple(
    c for family in CORRUPTION_FAMILIES.values() for c in family if c not in EXTRA_CORRUPTIONS)
assert len(BENCHMARK_CORRUPTIONS) == 15 and set(BENCHMARK_CORRUPTIONS) | set(EXTRA_CORRUPTIONS) == set(INPUT_CORRUPTIONS)


def corruption_family(name: str) -> str:
    """'noise', 'blur', 'weather' or 'digital'."""
    require(name in INPUT_CORRUPTIONS, f"unknown input corruption {name!r}; known corruptions: {', '.join(list_input_corruptions())}")
    return next(f for f, names in CORRUPTION_FAMILIES.items() if name in names)


__all__ = [
    "BENCHMARK_CORRUPTIONS",
    "CORRUPTION_FAMILIES",
    "EXTRA_CORRUPTIONS",
    "INPUT_CORRUPTIONS",
    "SEVERITY_PARAMS",
    "MAX_SEVERITY",
    "corrupt",
    "corruption_family",
    "list_input_corruptions",
    *INPUT_CORRUPTIONS,
]
