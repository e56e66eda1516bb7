import math

import numpy as np
import pytest
import torch
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy.ndimage import distance_transform_edt, gaussian_filter, map_coordinates
from scipy.ndimage import zoom as scipy_zoom

from robustlab.corruptions import INPUT_CORRUPTIONS, SEVERITY_PARAMS, corrupt, list_input_corruptions
from robustlab.corruptions import _ops as ops
from robustlab.corruptions.elastic import _warp_affine
from robustlab.corruptions.inputs import (BENCHMARK_CORRUPTIONS, CORRUPTION_FAMILIES, EXTRA_CORRUPTIONS, _box_resize_matrix,
                                          _disk_kernel, corruption_family)
from robustlab.corruptions.weather import _distance_to, _equalize_hist, _frost_textures_cpu
from robustlab.errors import UsageError

NAMES = list_input_corruptions()
EXPECTED_NAMES = {
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
    "speckle_noise", "gaussian_blur", "spatter", "saturate",
}
# JPEG and pixelation error depends on how image structure aligns with 8x8 blocks / the pixel grid
NON_DECREASING_ONLY = {"jpeg_compression", "pixelate"}
# The generator's levels of these are not ordered by pixel distance (glass: sigma vs iterations,
# motion: equal kernels at 3/4 on small shifts, frost: image vs texture weight, saturate: x0.3,
# x0.1, x1.5, ..., elastic: alpha vs sigma, spatter: water vs mud); they get their own tests.
NOT_MONOTONE = {"glass_blur", "motion_blur", "frost", "saturate", "elastic_transform", "spatter"}


def _grid(size: int = 32):
    return torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")


def gradient_image() -> torch.Tensor:
    yy, xx = _grid()
    return torch.stack([xx / 31, yy / 31, (xx + yy) / 62])


def checkerboard_image(square: int = 5) -> torch.Tensor:
    yy, xx = _grid()
    return (((xx // square + yy // square) % 2) * 0.8 + 0.1).expand(3, 32, 32).clone()


def texture_image() -> torch.Tensor:
    yy, xx = _grid()
    return (0.5 + 0.25 * torch.sin(0.9 * xx + 0.3 * yy) + 0.2 * torch.cos(0.55 * yy - 0.2 * xx)).expand(3, 32, 32).clone()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.stack([gradient_image(), checkerboard_image(), texture_image()])


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().mean())


# ---------------------------------------------------------------------------------------------
# properties every corruption shares


def test_registry_holds_the_nineteen_corruptions():
    assert set(NAMES) == EXPECTED_NAMES == set(INPUT_CORRUPTIONS)
    assert all(len(SEVERITY_PARAMS[name]) == 5 for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_identity(name, batch):
    out = corrupt(batch, name, 0, seeded())
    assert torch.equal(out, batch)
    assert out is not batch


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_shape_dtype_and_range_are_kept(name, dtype, batch):
    x = batch.to(dtype)
    for severity in range(1, 6):
        out = corrupt(x, name, severity, seeded())
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize("name", sorted(set(NAMES) - NOT_MONOTONE))
def test_distance_from_clean_grows_with_severity(name, batch):
    distances = [mean_abs_diff(corrupt(batch, name, s, seeded()), batch) for s in range(6)]
    assert distances[0] == 0.0 and distances[1] > 0.0
    steps = np.diff(distances[1:])
    if name in NON_DECREASING_ONLY:
        assert np.all(steps >= 0), distances
    else:
        assert np.all(steps > 0), distances


@pytest.mark.parametrize("name", NAMES)
def test_same_generator_seed_same_output(name, batch):
    a = corrupt(batch, name, 3, seeded(5))
    b = corrupt(batch, name, 3, seeded(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "fog", "speckle_noise", "glass_blur",
                                  "motion_blur", "snow", "frost", "spatter", "elastic_transform"])
def test_different_seed_different_output(name, batch):
    assert not torch.equal(corrupt(batch, name, 3, seeded(1)), corrupt(batch, name, 3, seeded(2)))


def test_input_is_not_modified(batch):
    before = batch.clone()
    for name in NAMES:
        corrupt(batch, name, 5, seeded())
    assert torch.equal(batch, before)


# ---------------------------------------------------------------------------------------------
# each corruption against its formula


def test_gaussian_noise_has_the_cifar10c_std():
    grey = torch.full((4, 3, 32, 32), 0.5)
    for severity, std in enumerate((0.04, 0.06, 0.08, 0.09, 0.10), start=1):
        noise = corrupt(grey, "gaussian_noise", severity, seeded()) - grey
        assert float(noise.std()) == pytest.approx(std, rel=0.03)
        assert abs(float(noise.mean())) < 0.003


def test_shot_noise_is_poisson_scaled_by_photon_count():
    grey = torch.full((4, 3, 32, 32), 0.4)
    out = corrupt(grey, "shot_noise", 5, seeded())  # 50 photons at full intensity
    counts = out * 50
    assert torch.allclose(counts, counts.round(), atol=1e-4)  # whole photon counts
    assert float(out.mean()) == pytest.approx(0.4, abs=0.01)
    assert float(out.var()) == pytest.approx(0.4 / 50, rel=0.06)  # Poisson: var(k / c) = x / c


def test_impulse_noise_sets_a_fraction_to_zero_or_one():
    grey = torch.full((8, 3, 32, 32), 0.5)
    out = corrupt(grey, "impulse_noise", 5, seeded())  # amount 0.07
    hit = out != 0.5
    assert float(hit.float().mean()) == pytest.approx(0.07, abs=0.008)
    assert set(out[hit].unique().tolist()) == {0.0, 1.0}
    assert float((out[hit] == 1).float().mean()) == pytest.approx(0.5, abs=0.05)


def test_contrast_by_hand():
    x = torch.tensor([0.2, 0.4, 0.6, 1.0]).reshape(1, 1, 2, 2)
    out = corrupt(x, "contrast", 2, None)  # factor 0.5 around the mean 0.55
    assert torch.allclose(out, torch.tensor([0.375, 0.475, 0.575, 0.775]).reshape(1, 1, 2, 2))


def test_brightness_matches_an_hsv_round_trip(batch):
    for severity, shift in enumerate((0.05, 0.1, 0.15, 0.2, 0.3), start=1):
        out = corrupt(batch.double(), "brightness", severity, None)
        hsv = rgb_to_hsv(batch.double().permute(0, 2, 3, 1).numpy())
        hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
        reference = torch.from_numpy(hsv_to_rgb(hsv)).permute(0, 3, 1, 2)
        assert torch.allclose(out, reference, atol=1e-9)


def test_brightness_turns_black_into_grey():
    black = torch.zeros(1, 3, 2, 2)
    assert torch.allclose(corrupt(black, "brightness", 5, None), torch.full_like(black, 0.3))


def test_gaussian_blur_matches_scipy(batch):
    for severity, sigma in enumerate((0.4, 0.6, 0.7, 0.8, 1.0), start=1):
        out = corrupt(batch.double(), "gaussian_blur", severity, None).numpy()
        reference = gaussian_filter(batch.double().numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        assert np.allclose(out, reference, atol=1e-12)


def test_defocus_kernel_by_hand():
    # radius 0.3 covers only the centre pixel, so the kernel is the 3x3 anti-aliasing Gaussian
    g = torch.tensor([math.exp(-1 / (2 * 0.4**2)), 1.0, math.exp(-1 / (2 * 0.4**2))], dtype=torch.float64)
    g /= g.sum()
    k = _disk_kernel(0.3, 0.4)
    centre = k.shape[0] // 2
    assert torch.allclose(k[centre - 1:centre + 2, centre - 1:centre + 2], g[:, None] * g[None, :])
    assert float(k.sum()) == pytest.approx(1.0)
    # radius 1.5 covers the full 3x3 square (corner distance sqrt(2) <= 1.5) before anti-aliasing
    k = _disk_kernel(1.5, 1e-3)
    centre = k.shape[0] // 2
    assert torch.allclose(k[centre - 1:centre + 2, centre - 1:centre + 2], torch.full((3, 3), 1 / 9, dtype=torch.float64))
    assert float(k.sum()) == pytest.approx(1.0)


def test_defocus_blur_keeps_a_constant_image():
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(corrupt(flat, "defocus_blur", 5, None), flat)


def test_box_resize_by_hand():
    assert torch.allclose(_box_resize_matrix(4, 2), torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]], dtype=torch.float64))
    assert torch.allclose(_box_resize_matrix(2, 4), torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.float64))


def test_pixelate_matches_pil_box_resampling():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].double() / 255
    for severity, scale in enumerate((0.95, 0.9, 0.85, 0.75, 0.65), start=1):
        small = Image.fromarray(pixels).resize((int(32 * scale),) * 2, Image.BOX)
        reference = np.asarray(small.resize((32, 32), Image.BOX)) / 255
        out = corrupt(x, "pixelate", severity, None)[0].permute(1, 2, 0).numpy()
        assert np.abs(out - reference).max() <= 1.01 / 255  # PIL rounds to 8 bits in between


def test_jpeg_compression_quantizes_to_8_bits_and_loses_detail(batch):
    out = corrupt(batch, "jpeg_compression", 5, None)
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4)
    assert mean_abs_diff(out, batch) > 0.005


def test_jpeg_compression_of_a_grey_image_keeps_one_channel():
    grey = texture_image()[:1][None]
    out = corrupt(grey, "jpeg_compression", 1, None)
    assert out.shape == (1, 1, 32, 32)
    assert mean_abs_diff(out, grey) < 0.02  # quality 80 keeps a smooth image close


def test_fog_adds_a_normalized_haze_and_rescales():
    x = gradient_image()[None].double() * 0.8
    strength = 1.5  # severity 5
    out = corrupt(x, "fog", 5, seeded())
    peak = x.max()
    haze = (out * (peak + strength) / peak - x) / strength  # invert (x + s * haze) * peak / (peak + s)
    assert float(haze.min()) == pytest.approx(0.0, abs=1e-9)
    assert float(haze.max()) == pytest.approx(1.0, abs=1e-9)
    assert torch.allclose(haze[:, 0], haze[:, 1]) and torch.allclose(haze[:, 1], haze[:, 2])  # one haze per image


# ---------------------------------------------------------------------------------------------
# the rest of the release: parameters, families, and each new corruption against a reference

# make_cifar_c.py (hendrycks/robustness), severities 1-5; elastic in units of the image side (x32 there)
OFFICIAL_PARAMS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10), "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07), "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1), "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)), "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    "spatter": ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
                (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15), "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
    "jpeg_compression": (80, 65, 58, 50, 40), "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
}


def test_severity_parameters_are_the_cifar_generators():
    assert set(OFFICIAL_PARAMS) == set(NAMES)
    for name, levels in OFFICIAL_PARAMS.items():
        assert np.allclose(np.array(SEVERITY_PARAMS[name], dtype=float), np.array(levels, dtype=float)), name


def test_families_hold_fifteen_benchmark_and_four_extra_corruptions():
    assert len(BENCHMARK_CORRUPTIONS) == 15 and set(EXTRA_CORRUPTIONS) == {"speckle_noise", "gaussian_blur", "spatter", "saturate"}
    assert set(BENCHMARK_CORRUPTIONS).isdisjoint(EXTRA_CORRUPTIONS)
    assert sorted(c for f in CORRUPTION_FAMILIES.values() for c in f) == sorted(NAMES)
    assert {f: [c for c in BENCHMARK_CORRUPTIONS if corruption_family(c) == f] for f in CORRUPTION_FAMILIES} == {
        "noise": ["gaussian_noise", "shot_noise", "impulse_noise"],
        "blur": ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur"],
        "weather": ["snow", "frost", "fog", "brightness"],
        "digital": ["contrast", "elastic_transform", "pixelate", "jpeg_compression"]}


def test_speckle_noise_is_multiplicative():
    x = torch.cat([torch.full((4, 3, 32, 32), 0.25), torch.full((4, 3, 32, 32), 0.5)])
    noise = corrupt(x.double(), "speckle_noise", 5, seeded()) - x.double()  # std 0.2 * x
    assert float(noise[:4].std()) == pytest.approx(0.05, rel=0.05)
    assert float(noise[4:].std()) == pytest.approx(0.10, rel=0.05)
    assert torch.equal(corrupt(torch.zeros(1, 3, 4, 4), "speckle_noise", 5, seeded()), torch.zeros(1, 3, 4, 4))


def test_saturate_matches_an_hsv_round_trip(batch):
    x = torch.cat([batch, torch.full((1, 3, 32, 32), 0.4)]).double()  # a grey image: hue 0 in skimage
    for severity, (scale, shift) in enumerate(OFFICIAL_PARAMS["saturate"], start=1):
        hsv = rgb_to_hsv(x.permute(0, 2, 3, 1).numpy())
        hsv[..., 1] = np.clip(hsv[..., 1] * scale + shift, 0, 1)
        reference = torch.from_numpy(hsv_to_rgb(hsv)).permute(0, 3, 1, 2)
        assert torch.allclose(corrupt(x, "saturate", severity, None), reference, atol=1e-9), severity


def _scipy_clipped_zoom(img: np.ndarray, factor: float) -> np.ndarray:
    """make_cifar_c.py's clipped_zoom (square images), the reference."""
    h = img.shape[0]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    img = scipy_zoom(img[top:top + ch, top:top + ch], (factor, factor, 1), order=1)
    trim = (img.shape[0] - h) // 2
    return img[trim:trim + h, trim:trim + h]


def test_zoom_blur_matches_scipy_zoom(batch):
    img = batch[0].double().permute(1, 2, 0).numpy()
    for severity, stop in enumerate(OFFICIAL_PARAMS["zoom_blur"], start=1):
        factors = np.arange(1, stop, 0.01)
        reference = (img + sum(_scipy_clipped_zoom(img, z) for z in factors)) / (len(factors) + 1)
        out = corrupt(batch[:1].double(), "zoom_blur", severity, None)[0].permute(1, 2, 0).numpy()
        assert np.allclose(out, np.clip(reference, 0, 1), atol=1e-9), severity


def _imagemagick_motion_blur(img: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """MagickMotionBlurImage by hand: one-sided half-Gaussian line kernel, edge pixels outside."""
    width = 2 * math.ceil(radius) + 1
    k = np.exp(-np.arange(width) ** 2 / (2 * sigma**2))
    k /= k.sum()
    out = np.zeros_like(img)
    h, w = img.shape[-2:]
    for i in range(width):
        dx = math.ceil(i * math.cos(math.radians(angle)) - 0.5)
        dy = math.ceil(i * math.sin(math.radians(angle)) - 0.5)
        rows = np.clip(np.arange(h) + dy, 0, h - 1)
        cols = np.clip(np.arange(w) + dx, 0, w - 1)
        out += k[i] * img[..., rows[:, None], cols[None, :]]
    return out


def test_motion_blur_matches_imagemagicks_kernel(batch):
    x = batch.double()
    angles = torch.tensor([-40.0, 0.0, 30.0], dtype=torch.float64)
    out = ops.motion_blur(x, 9, 2.5, angles)
    for n in range(3):
        assert np.allclose(out[n].numpy(), _imagemagick_motion_blur(x[n].numpy(), 9, 2.5, float(angles[n])), atol=1e-12)
    # a horizontal blur leaves a vertical-stripes-free image's columns alone: only rows change
    stripes = torch.arange(8.0, dtype=torch.float64).view(1, 1, 8, 1).expand(1, 1, 8, 8) / 8
    assert torch.allclose(ops.motion_blur(stripes, 6, 2, torch.zeros(1, dtype=torch.float64)), stripes)


def test_glass_blur_only_copies_pixels_at_the_smallest_sigma():
    # sigma 0.05 truncates to a 1-tap Gaussian: what is left is the 8-bit cast and the pixel shuffle
    x = torch.rand(2, 3, 32, 32, generator=seeded(3), dtype=torch.float64)
    out = corrupt(x, "glass_blur", 1, seeded())
    cast = torch.floor(x * 255) / 255
    for n in range(2):
        before = sorted(map(tuple, cast[n].reshape(3, -1).T.tolist()))
        after = sorted(map(tuple, out[n].reshape(3, -1).T.tolist()))
        # every output pixel is an input pixel; the generator's "swap" copies, so some now appear twice
        assert set(after) <= set(before) and len(set(after)) < len(set(before))
    assert not torch.equal(out, cast)
    assert torch.equal(out[:, :, 0], cast[:, :, 0]) and torch.equal(out[:, :, :, 0], cast[:, :, :, 0])  # first row/col never written


def test_frost_blends_a_crop_of_a_frost_texture():
    out = corrupt(torch.zeros(6, 3, 32, 32, dtype=torch.float64), "frost", 5, seeded())  # 0.75 x + 0.45 frost
    textures = [t.double() / 255 for t in _frost_textures_cpu()]

    def is_a_crop(crop):
        for t in textures:  # candidates: where the crop's top-left pixel matches, then the whole crop
            for r, c in ((t[:, :-32, :-32] - crop[:, :1, :1]).abs().amax(0) < 1e-9).nonzero().tolist():
                if torch.allclose(t[:, r:r + 32, c:c + 32], crop, atol=1e-9):
                    return True
        return False

    assert all(is_a_crop(out[n] / 0.45) for n in range(6))
    assert not is_a_crop(out[0] / 0.45 * 0.9)
    white = corrupt(torch.full((1, 3, 32, 32), 0.5), "frost", 1, seeded())
    assert float(white.min()) >= 0.5  # weight 1 on the image plus a non-negative texture


def test_snow_layer_is_symmetric_under_a_half_turn():
    black = torch.zeros(3, 3, 32, 32, dtype=torch.float64)
    for severity, params in enumerate(OFFICIAL_PARAMS["snow"], start=1):
        out = corrupt(black, "snow", severity, seeded(severity))
        base = (1 - params[6]) * 0.5  # w * 0 + (1 - w) * max(0, 1.5 * grey + 0.5)
        assert float(out.min()) == pytest.approx(base, abs=1e-9)
        assert torch.allclose(out, out.flip(-2, -1))  # flakes + flakes rotated by 180 degrees
        assert torch.allclose(out[:, 0], out[:, 2])  # white flakes
        assert float(out.max()) > base + 0.05


def test_spatter_adds_water_or_blends_mud():
    grey = torch.full((4, 3, 32, 32), 0.3, dtype=torch.float64)  # dark enough that no channel clips
    water = corrupt(grey, "spatter", 2, seeded()) - grey
    assert float(water.min()) >= 0 and float(water.max()) > 0.01
    wet = water[:, 0] > 1e-6
    assert torch.allclose(water[:, 1][wet] / water[:, 0][wet], torch.full_like(water[:, 0][wet], 238 / 175))
    white = torch.full((4, 3, 32, 32), 0.6, dtype=torch.float64)
    mud = corrupt(white, "spatter", 5, seeded())
    m = (0.6 - mud) / (0.6 - torch.tensor([63, 42, 20], dtype=torch.float64).view(1, 3, 1, 1) / 255)
    hit = m[:, 0] > 1e-9
    assert hit.any() and torch.allclose(m[:, 0], m[:, 1]) and torch.allclose(m[:, 1], m[:, 2])
    assert float(m[:, 0][hit].min()) >= 0.8 - 1e-9  # the generator drops mask values below 0.8


def test_elastic_transform_warps_an_image_smoothly(batch):
    flat = torch.full((2, 3, 32, 32), 0.3)
    for severity in range(1, 6):
        assert torch.allclose(corrupt(flat, "elastic_transform", severity, seeded()), flat)
    out = corrupt(batch.double(), "elastic_transform", 1, seeded())  # alpha 0: a pure affine warp
    assert 0.01 < mean_abs_diff(out, batch.double()) < 0.2


def test_affine_warp_by_points():
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64, generator=seeded())
    src = torch.tensor([[[6.0, 6.0], [6.0, 2.0], [2.0, 2.0]]], dtype=torch.float64)
    assert torch.allclose(_warp_affine(x, src, src), x)
    shifted = _warp_affine(x, src, src + torch.tensor([1.0, 0.0], dtype=torch.float64))  # one pixel right
    assert torch.allclose(shifted[..., 1:], x[..., :-1])
    assert torch.allclose(shifted[..., 0], x[..., 1])  # reflect-101 border


@pytest.mark.parametrize("border, scipy_mode", [("symmetric", "reflect"), ("edge", "nearest"), ("reflect101", "mirror")])
def test_bilinear_sampling_matches_scipy_map_coordinates(border, scipy_mode):
    x = torch.rand(1, 1, 7, 9, dtype=torch.float64, generator=seeded())
    rows = torch.rand(1, 5, 6, dtype=torch.float64, generator=seeded(1)) * 14 - 3.5
    cols = torch.rand(1, 5, 6, dtype=torch.float64, generator=seeded(2)) * 18 - 4.5
    out = ops.sample_bilinear(x, rows, cols, border)[0, 0].numpy()
    reference = map_coordinates(x[0, 0].numpy(), [rows[0].numpy(), cols[0].numpy()], order=1, mode=scipy_mode)
    assert np.allclose(out, reference, atol=1e-12)


def test_symmetric_gaussian_filter_matches_scipy():
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64, generator=seeded())
    out = ops.gaussian_filter(x, 6.4, border="symmetric", truncate=3.0)[0, 0].numpy()
    assert np.allclose(out, gaussian_filter(x[0, 0].numpy(), 6.4, mode="reflect", truncate=3.0), atol=1e-12)


def test_distance_transform_is_exact_euclidean():
    edges = torch.rand(2, 1, 12, 10, generator=seeded()) < 0.05
    edges[0, 0, 3, 4] = edges[1, 0, 9, 1] = True
    out = _distance_to(edges)
    for n in range(2):
        assert np.allclose(out[n, 0].numpy(), distance_transform_edt(~edges[n, 0].numpy()), atol=1e-9)


def test_histogram_equalization_by_hand():
    x = torch.tensor([[10.0, 10.0], [20.0, 40.0]]).view(1, 1, 2, 2)
    # cdf: 10 -> 2, 20 -> 3, 40 -> 4; lut = round((cdf - 2) * 255 / (4 - 2))
    assert torch.equal(_equalize_hist(x), torch.tensor([[0.0, 0.0], [128.0, 255.0]], dtype=torch.float64).view(1, 1, 2, 2))
    assert torch.equal(_equalize_hist(torch.full((1, 1, 2, 2), 7.0)), torch.full((1, 1, 2, 2), 7.0))


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "images, name, severity, match",
    [
        (torch.rand(1, 3, 8, 8), "rain", 1, "unknown input corruption 'rain'"),
        (torch.rand(1, 1, 8, 8), "snow", 1, "3 channels"),
        (torch.rand(1, 3, 80, 80), "frost", 1, "smaller than its textures"),
        (torch.rand(1, 3, 8, 8), "gaussian_noise", 6, "severity"),
        (torch.rand(1, 3, 8, 8), "gaussian_noise", -1, "severity"),
        (torch.rand(1, 3, 8, 8), "gaussian_noise", 1.5, "severity"),
        (torch.rand(3, 8, 8), "gaussian_noise", 1, "shape"),
        (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), "gaussian_noise", 1, "float"),
        (torch.rand(1, 3, 8, 8) * 2, "gaussian_noise", 1, r"\[0, 1\]"),
        (torch.rand(1, 2, 8, 8), "jpeg_compression", 1, "channels"),
    ],
)
def test_bad_input_raises_usage_error(images, name, severity, match):
    with pytest.raises(UsageError, match=match):
        corrupt(images, name, severity)
