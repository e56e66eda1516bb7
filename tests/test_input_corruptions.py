import math

import numpy as np
import pytest
import torch
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy.ndimage import gaussian_filter

from robustlab.corruptions import INPUT_CORRUPTIONS, SEVERITY_PARAMS, corrupt, list_input_corruptions
from robustlab.corruptions.inputs import _box_resize_matrix, _disk_kernel
from robustlab.errors import UsageError

NAMES = list_input_corruptions()
EXPECTED_NAMES = {
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "gaussian_blur",
    "contrast", "brightness", "jpeg_compression", "pixelate", "fog",
}
# JPEG and pixelation error depends on how image structure aligns with 8x8 blocks / the pixel grid
NON_DECREASING_ONLY = {"jpeg_compression", "pixelate"}


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


def test_registry_holds_the_ten_corruptions():
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


@pytest.mark.parametrize("name", NAMES)
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


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "fog"])
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
# errors


@pytest.mark.parametrize(
    "images, name, severity, match",
    [
        (torch.rand(1, 3, 8, 8), "snow", 1, "unknown input corruption 'snow'"),
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
