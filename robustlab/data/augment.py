"""Augmentations of whole batches on the device (airbench style): each sample gets its own
random parameters, but the work is a handful of batched tensor ops instead of per-image PIL calls.

The pure functions take explicit parameters (offsets, masks, boxes), so they can be tested pixel
by pixel; `BatchAugment` draws those parameters from a `torch.Generator`, so a seed fixes them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from robustlab.data.color import adjust_brightness, adjust_contrast, adjust_saturation
from robustlab.errors import require
from robustlab.settings import FLIP_MODES, PAD_MODES, AugmentConfig  # noqa: F401  (re-exported)

# ---- pure, parameterised transforms ---------------------------------------------------------

def crop_padded(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, pad: int, mode: str = "reflect") -> torch.Tensor:
    """Pad by `pad` and take the HxW window at per-sample offsets (oy, ox) in [0, 2*pad].

    out[n, :, i, j] = padded[n, :, i + oy[n], j + ox[n]]; offsets (pad, pad) give the identity.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (pad,) * 4, mode="reflect" if mode == "reflect" else "constant")
    rows = (torch.arange(h, device=x.device)[None, :] + oy[:, None])  # (N, H)
    cols = (torch.arange(w, device=x.device)[None, :] + ox[:, None])  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def hflip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the samples where mask is True."""
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def alternating_flip_mask(idx: torch.Tensor, epoch: int) -> torch.Tensor:
    """airbench's derandomized flip: sample `idx` is mirrored in epoch `epoch` iff a fixed coin of
    its own (a hash of the index) differs from the epoch's parity, so every image is seen both ways
    in any two consecutive epochs and half of them are mirrored in each."""
    coin = ((idx.long() * 2654435761) >> 16) & 1  # Knuth's multiplicative hash: a fixed, balanced bit per index
    return coin != (epoch % 2)


def cutout(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: int, fill: float = 0.0) -> torch.Tensor:
    """Set a size x size square centred at (cy, cx) to `fill`; the square is clipped at the border."""
    _, _, h, w = x.shape
    top, left = cy - size // 2, cx - size // 2
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + size)
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + size)
    mask = in_rows[:, :, None] & in_cols[:, None, :]
    return x.masked_fill(mask[:, None], fill)


def affine(x: torch.Tensor, angle: torch.Tensor, shear: torch.Tensor, scale: torch.Tensor, mode: str = "reflect") -> torch.Tensor:
    """Per-sample rotation/shear (degrees) and zoom about the centre, bilinear sampling."""
    a, s = torch.deg2rad(angle), torch.deg2rad(shear)
    cos, sin, tan = torch.cos(a), torch.sin(a), torch.tan(s)
    # Output->input map: inverse scale, rotation, then x-shear.
    theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = (cos + tan * sin) / scale
    theta[:, 0, 1] = (-sin + tan * cos) / scale
    theta[:, 1, 0] = sin / scale
    theta[:, 1, 1] = cos / scale
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection" if mode == "reflect" else "zeros",
                         align_corners=False)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


# ---- random pipelines -----------------------------------------------------------------------

def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


class Normalize:
    """uint8 batch -> normalized float batch; the evaluation pipeline."""

    def __init__(self, mean, std):
        self.mean, self.std = tuple(mean), tuple(std)
        self._stats: dict = {}  # device -> (mean, std) tensors, so no host-to-device copy per batch

    def stats(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:
            self._stats[device] = (torch.tensor(self.mean, device=device).view(1, -1, 1, 1),
                                   torch.tensor(self.std, device=device).view(1, -1, 1, 1))
        return self._stats[device]

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return normalize(images.float().div_(255), *self.stats(images.device))


class BatchAugment(Normalize):
    """uint8 batch -> augmented, normalized float batch, all parameters drawn from `generator`.

    The loader also hands the dataset indices and the epoch (`takes_index`), which the alternating
    flip needs; without them (a plain call) the flip falls back to random."""

    takes_index = True

    def __init__(self, config: AugmentConfig, mean, std):
        super().__init__(mean, std)
        config.validate()
        self.config = config

    def __call__(self, images: torch.Tensor, generator: torch.Generator, idx: torch.Tensor | None = None,
                 epoch: int | None = None) -> torch.Tensor:
        c, g, dev = self.config, generator, images.device
        n, _, h, w = images.shape
        x = images.float().div_(255)
        if c.crop_pad:
            oy = torch.randint(0, 2 * c.crop_pad + 1, (n,), generator=g, device=dev)
            ox = torch.randint(0, 2 * c.crop_pad + 1, (n,), generator=g, device=dev)
            x = crop_padded(x, oy, ox, c.crop_pad, c.pad_mode)
        if c.flip:
            if c.flip_mode == "alternate" and idx is not None and epoch is not None:
                x = hflip(x, alternating_flip_mask(idx, epoch))
            else:
                x = hflip(x, torch.rand(n, generator=g, device=dev) < 0.5)
        if c.rotate or c.shear or c.zoom:
            x = affine(x, _uniform(n, -c.rotate, c.rotate, g, dev), _uniform(n, -c.shear, c.shear, g, dev),
                       _uniform(n, 1 - c.zoom, 1 + c.zoom, g, dev), c.pad_mode)
        if c.jitter:
            x = adjust_brightness(x, _uniform(n, 1 - c.jitter, 1 + c.jitter, g, dev))
            x = adjust_contrast(x, _uniform(n, 1 - c.jitter, 1 + c.jitter, g, dev))
            x = adjust_saturation(x, _uniform(n, 1 - c.jitter, 1 + c.jitter, g, dev))
        x = normalize(x, *self.stats(x.device))
        if c.cutout:
            # Applied after normalization, so the square holds the dataset mean (0).
            cy = torch.randint(0, h, (n,), generator=g, device=dev)
            cx = torch.randint(0, w, (n,), generator=g, device=dev)
            x = cutout(x, cy, cx, c.cutout)
        return x


class MultiView:
    """`views` independent draws of `augment` per sample: uint8 (N, C, H, W) -> (N, V, C, H, W)."""

    def __init__(self, augment, views: int):
        require(views >= 2, f"MultiView needs views >= 2, got {views}")
        self.augment, self.views = augment, views

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.stack([self.augment(images, generator) for _ in range(self.views)], dim=1)
