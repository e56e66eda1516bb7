"""SupConViews pinned to its specification: the random resized crop geometry, flip, colour jitter
ranges and order, grayscale, normalisation and the validation of its arguments.

The references below re-draw the documented random numbers from a generator with the same seed
(one `torch.rand(2N)` per documented quantity, in the documented order: crop area, log aspect
ratio, centre x, centre y, flip coin, jitter coin, brightness, contrast, saturation, hue, grayscale
coin) and apply the operations by formula or with torchvision.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from robustlab.errors import UsageError
from robustlab.strategies.supcon import SupConViews

MEAN = STD = (0.5, 0.5, 0.5)


def uniforms(seed: int, n: int, k: int) -> list[np.ndarray]:
    """The first k batches of n uniforms that a generator seeded with `seed` hands out."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=g).double().numpy() for _ in range(k)]


def ramp_images(n: int, h: int, w: int) -> torch.Tensor:
    """Channel 0 rises 8 per column, channel 1 rises 8 per row, channel 2 is 20 * (sample index + 1)."""
    cols = torch.arange(w).mul(8).view(1, w).expand(h, w)
    rows = torch.arange(h).mul(8).view(h, 1).expand(h, w)
    out = torch.stack([torch.stack([cols, rows, torch.full((h, w), 20 * (i + 1))]) for i in range(n)])
    return out.to(torch.uint8)


def crop_reference(images: torch.Tensor, size: int, scale, ratio, flip: float, seed: int) -> np.ndarray:
    """Random resized crop of ramp images, by formula (N, 2, 3, size, size) in [0, 1].

    A box of area * H * W pixels with width/height = aspect, centred uniformly so that it stays in
    the image, sides clipped to the image; sampled bilinearly at the output pixel centres, which on
    a linear ramp is the ramp at the (border-clamped) source coordinate.
    """
    n, _, h, w = images.shape
    b = 2 * n
    u_area, u_aspect, u_cx, u_cy, u_flip = uniforms(seed, b, 5)
    area = scale[0] + u_area * (scale[1] - scale[0])
    aspect = np.exp(math.log(ratio[0]) + u_aspect * (math.log(ratio[1]) - math.log(ratio[0])))
    box_w_px, box_h_px = np.sqrt(area * h * w * aspect), np.sqrt(area * h * w / aspect)
    bw, bh = np.minimum(box_w_px / w, 1.0), np.minimum(box_h_px / h, 1.0)
    cx, cy = (2 * u_cx - 1) * (1 - bw), (2 * u_cy - 1) * (1 - bh)
    mirror = np.where(u_flip < flip, -1.0, 1.0)
    grid = (2 * np.arange(size) + 1) / size - 1  # output pixel centres in [-1, 1]
    out = np.zeros((b, 3, size, size))
    for v in range(b):
        sx = bw[v] * mirror[v] * grid + cx[v]  # source x of each output column, in [-1, 1]
        sy = bh[v] * grid + cy[v]
        px = np.clip(((sx + 1) * w - 1) / 2, 0, w - 1)  # align_corners=False pixel coordinate
        py = np.clip(((sy + 1) * h - 1) / 2, 0, h - 1)
        out[v, 0] = 8 * px[None, :]
        out[v, 1] = 8 * py[:, None]
        out[v, 2] = 20 * (v // 2 + 1)
    return out.reshape(n, 2, 3, size, size) / 255


@pytest.mark.parametrize(
    "h, w, size, scale, ratio, flip",
    [
        (24, 32, 16, (0.2, 1.0), (3 / 4, 4 / 3), 0.5),  # the defaults, on a landscape image
        (32, 20, 12, (0.3, 0.5), (0.5, 2.0), 0.0),      # portrait, wide ratio range, never flipped
        (20, 20, 20, (0.95, 1.0), (3 / 4, 4 / 3), 1.0),  # sides beyond the image are clipped; always flipped
        (16, 24, 8, (0.25, 0.25), (2.0, 2.0), 0.3),     # fixed box shape
    ],
)
def test_crop_and_flip_follow_the_random_resized_crop_formula(h, w, size, scale, ratio, flip):
    images = ramp_images(3, h, w)
    aug = SupConViews((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), size=size, scale=scale, ratio=ratio, flip=flip,
                      jitter_p=0.0, grayscale_p=0.0)
    got = aug(images, torch.Generator().manual_seed(7))
    assert got.shape == (3, 2, 3, size, size) and got.dtype == torch.float32
    want = crop_reference(images, size, scale, ratio, flip, seed=7)
    np.testing.assert_allclose(got.double().numpy(), want, atol=2e-5)


def test_crop_box_has_the_drawn_area_and_aspect():
    """Read the box back from the ramps: its sides in pixels multiply to area * H * W and divide to aspect."""
    h, w, size = 30, 40, 30
    images = ramp_images(2, h, w)
    aug = SupConViews((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), size=size, scale=(0.36, 0.36), ratio=(1.5, 1.5), flip=0.0,
                      jitter_p=0.0, grayscale_p=0.0)
    out = aug(images, torch.Generator().manual_seed(3)).flatten(0, 1) * 255 / 8  # pixel coordinates
    # Interior columns/rows step by box side / size pixels per output pixel (no border clamping in the middle).
    box_w = (out[:, 0, 0, size // 2 + 1] - out[:, 0, 0, size // 2]) * size
    box_h = (out[:, 1, size // 2 + 1, 0] - out[:, 1, size // 2, 0]) * size
    assert torch.allclose(box_w * box_h, torch.full((4,), 0.36 * h * w), rtol=1e-4)
    assert torch.allclose(box_w / box_h, torch.full((4,), 1.5), rtol=1e-4)


def test_views_are_sample_major_and_normalised_per_channel():
    """Rows 2i and 2i+1 of the flat batch are the two views of image i; (x/255 - mean) / std per channel."""
    images = torch.stack([torch.stack([torch.full((6, 6), 10 * i + c) for c in range(3)]) for i in range(4)]).to(torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    aug = SupConViews(mean, std, size=5, jitter_p=0.0, grayscale_p=0.0)  # a crop of a constant image is constant
    out = aug(images, torch.Generator().manual_seed(0))
    assert out.shape == (4, 2, 3, 5, 5)
    for i in range(4):
        for c in range(3):
            want = ((10 * i + c) / 255 - mean[c]) / std[c]
            assert torch.allclose(out[i, :, c], torch.full((2, 5, 5), want), atol=1e-5)


def colour_reference(images: torch.Tensor, jitter, jitter_p: float, grayscale_p: float, seed: int) -> torch.Tensor:
    """Identity crop, then torchvision's colour ops with the documented factor ranges, then grayscale."""
    n = len(images)
    b = 2 * n
    bri, con, sat, hue = jitter
    k = 11 if hue > 0 else 10
    u = uniforms(seed, b, k)
    apply = u[5] < jitter_p
    ranges = [(max(0.0, 1 - bri), 1 + bri), (max(0.0, 1 - con), 1 + con), (max(0.0, 1 - sat), 1 + sat)]
    factors = [np.where(apply, lo + u[6 + j] * (hi - lo), 1.0) for j, (lo, hi) in enumerate(ranges)]
    shifts = np.where(apply, -hue + u[9] * 2 * hue, 0.0) if hue > 0 else np.zeros(b)
    gray = u[k - 1] < grayscale_p
    x = images.float().div(255).repeat_interleave(2, dim=0)
    out = []
    for v in range(b):
        img = TF.adjust_brightness(x[v], float(factors[0][v]))
        img = TF.adjust_contrast(img, float(factors[1][v]))
        img = TF.adjust_saturation(img, float(factors[2][v]))
        img = TF.adjust_hue(img, float(shifts[v]))
        if gray[v]:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        out.append(img)
    return torch.stack(out).view(n, 2, 3, *images.shape[-2:])


@pytest.mark.parametrize(
    "jitter, jitter_p, grayscale_p",
    [
        ((0.4, 0.3, 0.2, 0.1), 0.8, 0.2),  # the defaults except distinct brightness/contrast/saturation
        ((1.5, 0.0, 0.6, 0.0), 0.5, 0.5),  # brightness range floored at 0; no hue draw when hue is 0
        ((0.0, 0.7, 0.0, 0.45), 1.0, 0.0),
    ],
)
def test_colour_jitter_and_grayscale_follow_torchvision(jitter, jitter_p, grayscale_p):
    images = torch.randint(0, 256, (6, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    aug = SupConViews((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), size=5, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0,
                      jitter=jitter, jitter_p=jitter_p, grayscale_p=grayscale_p)
    got = aug(images, torch.Generator().manual_seed(11))
    want = colour_reference(images, jitter, jitter_p, grayscale_p, seed=11)
    assert torch.allclose(got, want, atol=1e-4)


def test_jitter_probability_gates_every_colour_op():
    """jitter_p = 0 leaves colours alone however strong the jitter; p = 1 jitters every view."""
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    plain = images.float().div(255).repeat_interleave(2, dim=0).view(5, 2, 3, 4, 4)
    kw = dict(size=4, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, jitter=(0.9, 0.9, 0.9, 0.5), grayscale_p=0.0)
    off = SupConViews((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), jitter_p=0.0, **kw)(images, torch.Generator().manual_seed(4))
    on = SupConViews((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), jitter_p=1.0, **kw)(images, torch.Generator().manual_seed(4))
    assert torch.allclose(off, plain, atol=1e-5)
    assert all(not torch.allclose(on[i, v], plain[i, v], atol=1e-3) for i in range(5) for v in range(2))


def test_grayscale_probability_bounds():
    images = torch.randint(0, 256, (4, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    kw = dict(size=4, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0, jitter_p=0.0)
    never = SupConViews(MEAN, STD, grayscale_p=0.0, **kw)(images, torch.Generator().manual_seed(0))
    always = SupConViews(MEAN, STD, grayscale_p=1.0, **kw)(images, torch.Generator().manual_seed(0))
    luma = TF.rgb_to_grayscale(images.float() / 255, num_output_channels=3).repeat_interleave(2, dim=0).view(4, 2, 3, 4, 4)
    assert torch.allclose(always, (luma - 0.5) / 0.5, atol=1e-5)
    assert not torch.allclose(never[:, :, 0], never[:, :, 1], atol=1e-3)


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mean=(0.5, 0.5)), "mean and std need one value per RGB channel"),
        (dict(std=(0.5, 0.5, 0.5, 0.5)), "mean and std need one value per RGB channel"),
        (dict(std=(0.5, 0.0, 0.5)), "std must be positive, got (0.5, 0.0, 0.5)"),
        (dict(std=(-0.1, 0.5, 0.5)), "std must be positive, got (-0.1, 0.5, 0.5)"),
        (dict(size=0), "crop size must be >= 1, got 0"),
        (dict(scale=(0.0, 1.0)), "scale must satisfy 0 < min <= max <= 1, got (0.0, 1.0)"),
        (dict(scale=(0.6, 0.5)), "scale must satisfy 0 < min <= max <= 1, got (0.6, 0.5)"),
        (dict(scale=(0.5, 1.01)), "scale must satisfy 0 < min <= max <= 1, got (0.5, 1.01)"),
        (dict(ratio=(0.0, 1.0)), "ratio must satisfy 0 < min <= max, got (0.0, 1.0)"),
        (dict(ratio=(1.2, 1.1)), "ratio must satisfy 0 < min <= max, got (1.2, 1.1)"),
        (dict(jitter=(0.4, 0.4, 0.4)), "jitter must be 4 non-negative numbers (brightness, contrast, saturation, hue)"),
        (dict(jitter=(0.4, 0.4, 0.4, 0.1, 0.1)), "jitter must be 4 non-negative numbers (brightness, contrast, saturation, hue)"),
        (dict(jitter=(0.4, -0.1, 0.4, 0.1)), "jitter must be 4 non-negative numbers (brightness, contrast, saturation, hue)"),
        (dict(jitter=(0.4, 0.4, 0.4, 0.51)), "hue jitter must be <= 0.5, got 0.51"),
        (dict(flip=-0.1), "flip is a probability, got -0.1"),
        (dict(flip=1.1), "flip is a probability, got 1.1"),
        (dict(jitter_p=1.5), "jitter_p is a probability, got 1.5"),
        (dict(jitter_p=-0.5), "jitter_p is a probability, got -0.5"),
        (dict(grayscale_p=1.01), "grayscale_p is a probability, got 1.01"),
        (dict(grayscale_p=-1.0), "grayscale_p is a probability, got -1.0"),
    ],
)
def test_views_reject_invalid_arguments(kwargs, message):
    args = {"mean": MEAN, "std": STD, **kwargs}
    with pytest.raises(UsageError) as err:
        SupConViews(**args)
    assert str(err.value) == message


def test_views_accept_boundary_arguments():
    aug = SupConViews(MEAN, STD, size=1, scale=(1.0, 1.0), ratio=(2.0, 2.0), flip=1.0, jitter=(0.0, 0.0, 0.0, 0.5),
                      jitter_p=0.0, grayscale_p=1.0)
    assert (aug.size, aug.scale, aug.ratio, aug.flip, aug.jitter, aug.jitter_p, aug.grayscale_p) == (
        1, (1.0, 1.0), (2.0, 2.0), 1.0, (0.0, 0.0, 0.0, 0.5), 0.0, 1.0)
    assert aug(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.Generator()).shape == (2, 2, 3, 1, 1)
    SupConViews(MEAN, STD, scale=(0.3, 0.3), ratio=(0.5, 0.5), flip=0.0, jitter_p=1.0, grayscale_p=0.0)


def test_view_defaults_are_the_simclr_supcon_ones():
    aug = SupConViews(MEAN, STD)
    assert aug.size == 32 and aug.scale == (0.2, 1.0) and aug.flip == 0.5
    assert aug.jitter == (0.4, 0.4, 0.4, 0.1) and aug.jitter_p == 0.8 and aug.grayscale_p == 0.2
    assert aug.ratio == pytest.approx((3 / 4, 4 / 3))
    assert aug.mean.shape == aug.std.shape == (1, 3, 1, 1) and aug.mean.dtype == torch.float32


@pytest.mark.parametrize(
    "images",
    [torch.zeros(2, 3, 8, 8), torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(2, 1, 8, 8, dtype=torch.uint8)],
)
def test_views_reject_a_batch_that_is_not_uint8_rgb(images):
    with pytest.raises(UsageError) as err:
        SupConViews(MEAN, STD)(images, torch.Generator())
    assert str(err.value) == (f"SupConViews expects a uint8 batch of shape (N, 3, H, W), got {images.dtype} "
                              f"{tuple(images.shape)}")


def test_views_move_mean_and_std_to_the_images_device():
    """Random numbers come from the (CPU) generator, everything else follows the images (here: meta)."""
    aug = SupConViews(MEAN, STD, size=8)
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8, device="meta")
    out = aug(images, torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == (2, 2, 3, 8, 8)
    assert aug.mean.device.type == "meta" and aug.std.device.type == "meta"
    assert aug.mean.shape == aug.std.shape == (1, 3, 1, 1)


def test_views_are_float32_whatever_the_type_of_mean_and_std():
    aug = SupConViews(np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.2, 0.25]), size=4)
    assert aug.mean.dtype == aug.std.dtype == torch.float32
    out = aug(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32


@pytest.mark.filterwarnings("error")
def test_views_warn_about_nothing():
    """grid_sample/affine_grid get an explicit align_corners (and mode): no per-batch warning."""
    SupConViews(MEAN, STD, size=8)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.Generator().manual_seed(0))
