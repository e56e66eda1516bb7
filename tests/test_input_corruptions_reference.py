"""The input corruptions pinned to their definitions, helper by helper and corruption by corruption.

References are computed independently here: numpy loops, numpy.pad, scipy.ndimage, PIL, and numpy
re-implementations of make_cifar_c.py (hendrycks/robustness, ImageNet-C/create_c). Random corruptions
are checked by replaying their documented draws from a generator seeded the same way, so the
reference gets the same random numbers and the test pins everything the corruption does with them.
"""
import io
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from robustlab.corruptions import INPUT_CORRUPTIONS, SEVERITY_PARAMS, corrupt
from robustlab.corruptions import _ops as ops
from robustlab.corruptions import inputs, weather
from robustlab.corruptions.inputs import corruption_family
from robustlab.errors import UsageError
from test_input_corruptions import _imagemagick_motion_blur

F64 = torch.float64
NAMES = sorted(INPUT_CORRUPTIONS)
# scipy.ndimage's name of each border rule of _ops.fold_index
SCIPY_MODE = {"edge": "nearest", "symmetric": "reflect", "reflect101": "mirror"}
NUMPY_PAD = {"edge": "edge", "symmetric": "symmetric", "reflect101": "reflect"}


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exactly(message: str) -> str:
    return "^" + re.escape(message) + "$"


def rand_images(n, c, h, w, seed=0, dtype=F64):
    return torch.rand(n, c, h, w, generator=seeded(seed), dtype=dtype)


def gaussian_nearest(img: np.ndarray, sigma: float) -> np.ndarray:
    """skimage.filters.gaussian as the generator calls it (mode 'nearest', truncate 4) on the last two axes."""
    return ndimage.gaussian_filter(img, sigma=(0,) * (img.ndim - 2) + (sigma, sigma), mode="nearest", truncate=4.0)


# ---------------------------------------------------------------------------------------------
# _ops: random draws


def test_random_draws_are_the_generators_in_the_images_dtype():
    like = torch.zeros(2, dtype=F64)
    a = ops.rand((3, 4), like, seeded(1))
    assert a.dtype == F64 and torch.equal(a, torch.rand((3, 4), generator=seeded(1), dtype=F64))
    b = ops.randn((5,), like, seeded(2))
    assert b.dtype == F64 and torch.equal(b, torch.randn((5,), generator=seeded(2), dtype=F64))
    u = ops.uniform((4000,), -2.0, 3.0, like, seeded(3))
    assert torch.allclose(u, -2.0 + 5.0 * torch.rand((4000,), generator=seeded(3), dtype=F64), atol=0, rtol=1e-15)
    assert float(u.min()) >= -2.0 and float(u.max()) < 3.0 and float(u.min()) < -1.9 and float(u.max()) > 2.9
    r = ops.randint(-1, 1, (2000,), like, seeded(4))
    assert torch.equal(r, torch.randint(-1, 1, (2000,), generator=seeded(4)))
    assert set(r.unique().tolist()) == {-1, 0}  # numpy's randint: high excluded


def test_random_draws_without_generator_use_the_global_rng_on_the_images_device():
    like = torch.zeros(1, dtype=torch.float32)
    torch.manual_seed(7)
    a = ops.rand((6,), like, None)
    torch.manual_seed(7)
    assert torch.equal(a, torch.rand(6)) and a.dtype == torch.float32
    meta = torch.zeros(1, device="meta")
    assert ops.randn((3,), meta, None).device.type == "meta"
    # with a generator the draw happens on the generator's device, then moves to the images'
    assert ops.rand((3,), meta, seeded()).device.type == "meta"
    assert ops.randn((3,), meta, seeded()).device.type == "meta"
    assert ops.randint(0, 4, (3,), meta, seeded()).device.type == "meta"


# ---------------------------------------------------------------------------------------------
# _ops: borders, filters, sampling


@pytest.mark.parametrize("border", ["edge", "symmetric", "reflect101"])
@pytest.mark.parametrize("h, w, ph, pw", [(5, 4, 2, 3), (3, 4, 7, 9), (1, 3, 2, 4), (2, 6, 0, 5)])
def test_pad_matches_numpy_pad(border, h, w, ph, pw):
    x = torch.arange(2 * h * w, dtype=F64).reshape(1, 2, h, w)
    reference = np.pad(x.numpy(), ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode=NUMPY_PAD[border])
    assert np.array_equal(ops.pad(x, ph, pw, border).numpy(), reference)


def test_fold_index_by_hand():
    idx = torch.arange(-4, 8)
    # n = 4, a b c d: symmetric d c b a | a b c d | d c b a; reflect101 ... c b | a b c d | c b a ...
    assert ops.fold_index(idx, 4, "symmetric").tolist() == [3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0]
    assert ops.fold_index(idx, 4, "reflect101").tolist() == [2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1]
    assert ops.fold_index(idx, 4, "edge").tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 3, 3, 3, 3]
    assert ops.fold_index(idx, 1, "reflect101").tolist() == [0] * 12


def test_unknown_border_is_refused():
    with pytest.raises(ValueError, match=exactly("unknown border 'reflect'; expected one of edge, symmetric, reflect101")):
        ops.fold_index(torch.arange(3), 3, "reflect")
    with pytest.raises(ValueError, match=exactly("unknown border None; expected one of edge, symmetric, reflect101")):
        ops.pad(torch.zeros(1, 1, 1, 1), 1, 1, None)


@pytest.mark.parametrize("border", ["edge", "symmetric", "reflect101"])
def test_correlate_matches_scipy(border):
    x = rand_images(2, 3, 6, 7)
    kernel = torch.rand(3, 5, generator=seeded(1), dtype=F64) - 0.3  # asymmetric: correlation, not convolution
    out = ops.correlate(x, kernel, border).numpy()
    reference = ndimage.correlate(x.numpy(), kernel.numpy()[None, None], mode=SCIPY_MODE[border])
    assert out.shape == (2, 3, 6, 7) and np.allclose(out, reference, atol=1e-12, rtol=0)


def test_gaussian_1d_by_hand():
    k = ops.gaussian_1d(0.8, 2)
    t = np.arange(-2, 3)
    expected = np.exp(-t**2 / (2 * 0.64))
    assert k.dtype == F64 and np.allclose(k.numpy(), expected / expected.sum(), atol=1e-15, rtol=0)


@pytest.mark.parametrize("sigma", [0.6, 1.3, 0.1])
def test_gaussian_filter_defaults_match_skimage_gaussian(sigma):
    # skimage.filters.gaussian: mode 'nearest', truncate 4, radius int(4 sigma + 0.5) (0.6 -> 2, not 3)
    x = rand_images(1, 2, 9, 11)
    out = ops.gaussian_filter(x, sigma).numpy()
    assert np.allclose(out, gaussian_nearest(x.numpy(), sigma), atol=1e-13, rtol=0)


def test_gaussian_filter_truncate_and_border():
    x = rand_images(1, 1, 9, 8)
    out = ops.gaussian_filter(x, 1.1, border="reflect101", truncate=2.0).numpy()
    assert np.allclose(out, ndimage.gaussian_filter(x.numpy(), (0, 0, 1.1, 1.1), mode="mirror", truncate=2.0), atol=1e-13, rtol=0)


def test_gaussian_filter_of_sigma_zero_is_the_identity():
    x = rand_images(1, 1, 4, 4)
    assert torch.equal(ops.gaussian_filter(x, 0.0), x)


def test_box_blur3_is_opencvs_3x3_mean():
    x = rand_images(2, 1, 5, 6)
    reference = ndimage.uniform_filter(x.numpy(), size=(1, 1, 3, 3), mode="mirror")
    assert np.allclose(ops.box_blur3(x).numpy(), reference, atol=1e-13, rtol=0)


def test_gather_pixels_by_hand():
    x = torch.arange(2 * 2 * 3 * 3, dtype=F64).reshape(2, 2, 3, 3)
    rows = torch.tensor([[[0, 2]], [[1, 1]]])
    cols = torch.tensor([[[1, 0]], [[2, 0]]])
    out = ops.gather_pixels(x, rows, cols)
    expected = torch.tensor([[[[1.0, 6.0]], [[10.0, 15.0]]], [[[23.0, 21.0]], [[32.0, 30.0]]]], dtype=F64)
    assert torch.equal(out, expected)


def test_motion_kernel_by_hand():
    for radius, width in ((2.5, 7), (3, 7), (3.2, 9), (0.4, 3)):
        k = ops.motion_kernel(radius, 1.5)
        w = np.exp(-np.arange(width) ** 2 / (2 * 1.5**2))
        assert k.shape == (width,) and np.allclose(k.numpy(), w / w.sum(), atol=1e-15, rtol=0)


def test_motion_blur_on_a_non_square_image():
    x = rand_images(2, 2, 6, 9)
    angles = torch.tensor([-110.0, 63.0], dtype=F64)
    out = ops.motion_blur(x, 4, 2.0, angles)
    for n in range(2):
        assert np.allclose(out[n].numpy(), _imagemagick_motion_blur(x[n].numpy(), 4, 2.0, float(angles[n])), atol=1e-12, rtol=0)


def _scipy_clipped_zoom_2d(img: np.ndarray, factor: float) -> np.ndarray:
    """make_cifar_c.py's clipped_zoom, applied per axis so that it also takes non-square images."""
    out = img
    for axis in (0, 1):
        size = img.shape[axis]
        crop = int(np.ceil(size / factor))
        top = (size - crop) // 2
        out = np.take(out, np.arange(top, top + crop), axis=axis)
    out = ndimage.zoom(out, factor, order=1)
    for axis in (0, 1):
        size = img.shape[axis]
        trim = (out.shape[axis] - size) // 2
        out = np.take(out, np.arange(trim, trim + size), axis=axis)
    return out


@pytest.mark.parametrize("h, w, factor", [(9, 13, 1.25), (12, 7, 1.75), (8, 8, 2.25), (5, 6, 1.06), (2, 3, 1.1)])
def test_clipped_zoom_matches_scipy_zoom(h, w, factor):
    x = rand_images(2, 1, h, w)
    out = ops.clipped_zoom(x, factor)
    for n in range(2):
        assert np.allclose(out[n, 0].numpy(), _scipy_clipped_zoom_2d(x[n, 0].numpy(), factor), atol=1e-12, rtol=0)


def test_clipped_zoom_of_a_single_pixel_is_the_identity():
    x = torch.tensor([[[[0.3]]]], dtype=F64)
    assert torch.equal(ops.clipped_zoom(x, 1.2), x)


# ---------------------------------------------------------------------------------------------
# inputs: the registration wrapper, the checks and their messages


@pytest.fixture()
def fresh_registry(monkeypatch):
    monkeypatch.setattr(inputs, "INPUT_CORRUPTIONS", {})
    monkeypatch.setattr(inputs, "SEVERITY_PARAMS", {})
    return inputs


def test_register_wraps_apply_with_checks_levels_clipping_and_dtype(fresh_registry):
    calls = []

    def toy(x, level, generator):
        """Toy corruption."""
        calls.append((x.dtype, level, generator))
        return x + level

    levels = (-0.5, 0.25, 0.5, 0.75, 2.0)
    run = fresh_registry._register("toy", levels)(toy)
    assert fresh_registry.INPUT_CORRUPTIONS == {"toy": run} and fresh_registry.SEVERITY_PARAMS == {"toy": levels}
    assert run.__name__ == run.__qualname__ == "toy"
    assert run.__doc__ == ("Toy corruption.\n\nSource: `toy` in hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py. "
                           "Per-severity parameters (1-5): (-0.5, 0.25, 0.5, 0.75, 2.0).")
    x = torch.tensor([0.0, 0.2, 0.6, 1.0]).reshape(1, 1, 2, 2)
    g = seeded()
    for severity, level in enumerate(levels, start=1):
        out = run(x, severity, g)
        assert out.dtype == torch.float32 and torch.equal(out, (x + level).clamp(0, 1))
        assert calls[-1] == (torch.float32, level, g)
    assert torch.equal(run(x), (x - 0.5).clamp(0, 1)) and calls[-1] == (torch.float32, -0.5, None)  # defaults
    assert len(calls) == 6
    same = run(x, 0, g)  # severity 0: a copy, apply not called
    assert torch.equal(same, x) and same is not x and len(calls) == 6
    empty = torch.zeros(0, 3, 4, 4)
    out = run(empty, 3, g)
    assert out.shape == (0, 3, 4, 4) and out is not empty and len(calls) == 6
    # float64 is corrupted in float64; float16 and bfloat16 in float32, returned in their dtype
    out = run(x.double(), 2)
    assert calls[-1][0] == F64 and out.dtype == F64 and torch.equal(out, (x.double() + 0.25).clamp(0, 1))
    for low in (torch.float16, torch.bfloat16):
        out = run(x.to(low), 2)
        assert calls[-1][0] == torch.float32 and out.dtype == low


def test_register_without_docstring(fresh_registry):
    run = fresh_registry._register("bare", (1, 2, 3, 4, 5))(lambda x, level, generator: x)
    assert run.__doc__ == ("\n\nSource: `bare` in hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py. "
                           "Per-severity parameters (1-5): (1, 2, 3, 4, 5).")


def test_register_needs_five_levels(fresh_registry):
    with pytest.raises(AssertionError):
        fresh_registry._register("four", (1, 2, 3, 4))


@pytest.mark.parametrize("name", NAMES)
def test_every_corruption_is_named_and_documented_by_its_registration(name):
    run = INPUT_CORRUPTIONS[name]
    assert run.__name__ == run.__qualname__ == name
    assert run.__doc__.endswith(f"\n\nSource: `{name}` in hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py. "
                                f"Per-severity parameters (1-5): {SEVERITY_PARAMS[name]}.")


@pytest.mark.parametrize("name", NAMES)
def test_every_corruption_returns_an_empty_batch_unchanged(name):
    empty = torch.zeros(0, 3, 8, 8, dtype=F64)
    out = corrupt(empty, name, 5, seeded())
    assert out.shape == (0, 3, 8, 8) and out.dtype == F64 and out is not empty


def test_images_at_the_ends_of_the_range_and_severity_bounds_are_accepted():
    x = torch.tensor([0.0, 1.0, 1.0, 0.0]).reshape(1, 1, 2, 2)
    # mean 0.5: (x - 0.5) * factor + 0.5
    assert torch.allclose(corrupt(x, "contrast", 5), torch.tensor([0.425, 0.575, 0.575, 0.425]).reshape(1, 1, 2, 2))
    assert torch.allclose(corrupt(x, "contrast", 1), torch.tensor([0.125, 0.875, 0.875, 0.125]).reshape(1, 1, 2, 2))
    for severity in (0, 5):
        corrupt(x, "gaussian_noise", severity, seeded())


def test_contrast_by_hand_all_severities():
    # two images, two channels: each channel of each image pulled to its own mean
    x = torch.tensor([[[[0.0, 0.2], [0.4, 0.6]], [[1.0, 1.0], [0.2, 0.2]]],
                      [[[0.5, 0.5], [0.5, 0.9]], [[0.1, 0.3], [0.3, 0.1]]]], dtype=F64)
    means = torch.tensor([[0.3, 0.6], [0.6, 0.2]], dtype=F64)[:, :, None, None]
    for severity, factor in enumerate((0.75, 0.5, 0.4, 0.3, 0.15), start=1):
        assert torch.allclose(corrupt(x, "contrast", severity), (x - means) * factor + means, atol=1e-15, rtol=0)


UNKNOWN = ("unknown input corruption 'rain'; known corruptions: brightness, contrast, defocus_blur, elastic_transform, "
           "fog, frost, gaussian_blur, gaussian_noise, glass_blur, impulse_noise, jpeg_compression, motion_blur, "
           "pixelate, saturate, shot_noise, snow, spatter, speckle_noise, zoom_blur")


@pytest.mark.parametrize(
    "images, name, severity, message",
    [
        (torch.rand(1, 3, 8, 8), "rain", 1, UNKNOWN),
        (np.zeros((1, 3, 8, 8)), "contrast", 1, "images must be a torch tensor, got ndarray"),
        (torch.rand(3, 8, 8), "contrast", 1, "images must have shape (N, C, H, W), got (3, 8, 8)"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "contrast", 1,
         "images must be a float tensor in [0, 1], got dtype torch.uint8"),
        (torch.full((1, 3, 2, 2), 1.0 + 1e-6), "contrast", 1, "images must lie in [0, 1]"),
        (torch.full((1, 3, 2, 2), -1e-6), "contrast", 1, "images must lie in [0, 1]"),
        (torch.rand(1, 3, 8, 8), "contrast", 6, "severity must be an integer in 0..5, got 6"),
        (torch.rand(1, 3, 8, 8), "contrast", -1, "severity must be an integer in 0..5, got -1"),
        (torch.rand(1, 3, 8, 8), "contrast", True, "severity must be an integer in 0..5, got True"),
        (torch.rand(1, 3, 8, 8), "contrast", 2.0, "severity must be an integer in 0..5, got 2.0"),
        (torch.rand(1, 1, 8, 8), "saturate", 1, "saturate needs RGB images (3 channels), got 1"),
        (torch.rand(1, 2, 8, 8), "jpeg_compression", 1, "jpeg_compression needs 1 or 3 channels, got 2"),
        (torch.rand(1, 4, 8, 8), "snow", 1, "snow needs RGB images (3 channels), got 4"),
        (torch.rand(1, 1, 8, 8), "frost", 1, "frost needs RGB images (3 channels), got 1"),
        (torch.rand(1, 1, 8, 8), "spatter", 1, "spatter needs RGB images (3 channels), got 1"),
    ],
)
def test_error_messages(images, name, severity, message):
    with pytest.raises(UsageError, match=exactly(message)):
        corrupt(images, name, severity)


def test_corruption_family_of_an_unknown_name():
    with pytest.raises(UsageError, match=exactly(UNKNOWN)):
        corruption_family("rain")
    assert [corruption_family(n) for n in ("speckle_noise", "zoom_blur", "spatter", "saturate")] == [
        "noise", "blur", "weather", "digital"]


# ---------------------------------------------------------------------------------------------
# inputs: noise, replayed draw by draw


@pytest.mark.parametrize("severity", range(1, 6))
def test_noises_by_their_formulas(severity):
    x = rand_images(2, 3, 5, 4, seed=9)
    std = SEVERITY_PARAMS["gaussian_noise"][severity - 1]
    ref = (x + std * torch.randn(x.shape, generator=seeded(severity), dtype=F64)).clamp(0, 1)
    assert torch.equal(corrupt(x, "gaussian_noise", severity, seeded(severity)), ref)

    std = SEVERITY_PARAMS["speckle_noise"][severity - 1]
    ref = (x + x * std * torch.randn(x.shape, generator=seeded(severity), dtype=F64)).clamp(0, 1)
    assert torch.allclose(corrupt(x, "speckle_noise", severity, seeded(severity)), ref, atol=1e-15, rtol=0)

    photons = SEVERITY_PARAMS["shot_noise"][severity - 1]
    ref = (torch.poisson(x * photons, generator=seeded(severity)) / photons).clamp(0, 1)
    assert torch.equal(corrupt(x, "shot_noise", severity, seeded(severity)), ref)

    amount = SEVERITY_PARAMS["impulse_noise"][severity - 1]
    g = seeded(severity)
    hit = torch.rand(x.shape, generator=g, dtype=F64) < amount
    salt = torch.rand(x.shape, generator=g, dtype=F64) < 0.5
    ref = np.where(hit.numpy(), salt.numpy().astype(float), x.numpy())
    assert np.array_equal(corrupt(x, "impulse_noise", severity, seeded(severity)).numpy(), ref)


def test_impulse_noise_salts_and_peppers_evenly():
    out = corrupt(torch.full((4, 3, 32, 32), 0.5, dtype=F64), "impulse_noise", 5, seeded())
    assert float((out == 1).double().mean()) == pytest.approx(0.035, abs=0.006)
    assert float((out == 0).double().mean()) == pytest.approx(0.035, abs=0.006)


def test_half_precision_is_corrupted_in_float32():
    x = rand_images(2, 3, 8, 8, dtype=torch.float32).half()
    for name in ("gaussian_noise", "contrast", "brightness"):
        expected = corrupt(x.float(), name, 1, seeded(3)).half()
        assert torch.equal(corrupt(x, name, 1, seeded(3)), expected), name


# ---------------------------------------------------------------------------------------------
# inputs: defocus blur against the generator's disk() and cv2.filter2D


def _official_disk(radius: float, alias_blur: float) -> np.ndarray:
    """make_cifar_c.py's disk(): a 17x17 disk, normalized, then cv2.GaussianBlur with ksize (3, 3)."""
    t = np.arange(-8, 9)
    xx, yy = np.meshgrid(t, t)
    disk = ((xx**2 + yy**2) <= radius**2).astype(float)
    disk /= disk.sum()
    g = np.exp(-np.arange(-1, 2) ** 2 / (2 * alias_blur**2))
    g /= g.sum()
    return ndimage.correlate(disk, g[:, None] * g[None, :], mode="mirror")  # zeros near the border


@pytest.mark.parametrize("radius, alias_blur", [(0.3, 0.4), (1.0, 0.2), (1.5, 0.1), (2.0, 0.5), (2.5, 0.3)])
def test_disk_kernel_is_the_generators_disk(radius, alias_blur):
    from robustlab.corruptions.inputs import _disk_kernel

    k = _disk_kernel(radius, alias_blur).numpy()
    reference = _official_disk(radius, alias_blur)
    r = k.shape[0] // 2
    assert k.dtype == np.float64 and k.shape == (2 * r + 1, 2 * r + 1)
    assert np.allclose(k, reference[8 - r:9 + r, 8 - r:9 + r], atol=1e-15, rtol=0)
    assert reference.sum() == pytest.approx(k.sum(), abs=1e-15)  # nothing of the generator's kernel left out


@pytest.mark.parametrize("severity", range(1, 6))
def test_defocus_blur_matches_the_generator(severity):
    x = rand_images(1, 3, 10, 12)
    kernel = _official_disk(*SEVERITY_PARAMS["defocus_blur"][severity - 1])
    reference = ndimage.correlate(x.numpy(), kernel[None, None], mode="mirror")  # filter2D: BORDER_REFLECT_101
    assert np.allclose(corrupt(x, "defocus_blur", severity).numpy(), np.clip(reference, 0, 1), atol=1e-12, rtol=0)


def test_defocus_blur_of_tiny_images():
    # the kernel of severity 5 has a 3-pixel margin: reflected on a 4x4 image, replicated on a 3x3 one
    kernel = _official_disk(1.5, 0.1)
    x = rand_images(1, 1, 4, 4)
    reference = ndimage.correlate(x.numpy(), kernel[None, None], mode="mirror")
    assert np.allclose(corrupt(x, "defocus_blur", 5).numpy(), reference, atol=1e-12, rtol=0)
    x = rand_images(1, 1, 3, 3)
    reference = ndimage.correlate(x.numpy(), kernel[None, None], mode="nearest")
    assert np.allclose(corrupt(x, "defocus_blur", 5).numpy(), reference, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------
# inputs: brightness, saturate, fog


def test_brightness_saturates_the_value_at_one():
    x = torch.tensor([0.9, 0.45, 0.0], dtype=F64).reshape(1, 3, 1, 1)  # V 0.9 + 0.3 -> 1: scaled by 1 / 0.9
    assert torch.allclose(corrupt(x, "brightness", 5), torch.tensor([1.0, 0.5, 0.0], dtype=F64).reshape(1, 3, 1, 1), atol=1e-12, rtol=0)
    x = torch.tensor([0.4, 0.2, 0.1], dtype=F64).reshape(1, 3, 1, 1)  # V 0.4 + 0.05: scaled by 0.45 / 0.4
    assert torch.allclose(corrupt(x, "brightness", 1), x * 0.45 / 0.4, atol=1e-12, rtol=0)


def test_saturate_by_hand():
    # V 0.8, min 0.4: S 0.5; severity 3 (x1.5): S' 0.75, every channel V - 1.5 (V - c)
    x = torch.tensor([0.8, 0.6, 0.4], dtype=F64).reshape(1, 3, 1, 1)
    assert torch.allclose(corrupt(x, "saturate", 3), torch.tensor([0.8, 0.5, 0.2], dtype=F64).reshape(1, 3, 1, 1), atol=1e-12, rtol=0)
    # severity 5 (x2.5 + 0.2): S' = min(1.45, 1) = 1
    assert torch.allclose(corrupt(x, "saturate", 5), torch.tensor([0.8, 0.4, 0.0], dtype=F64).reshape(1, 3, 1, 1), atol=1e-12, rtol=0)
    # a grey pixel has hue 0 (red): S' = 0.2 at severity 5
    grey = torch.full((1, 3, 1, 1), 0.5, dtype=F64)
    assert torch.allclose(corrupt(grey, "saturate", 5), torch.tensor([0.5, 0.4, 0.4], dtype=F64).reshape(1, 3, 1, 1), atol=1e-12, rtol=0)
    black = torch.zeros(1, 3, 1, 1, dtype=F64)
    assert torch.equal(corrupt(black, "saturate", 5), black)


def _official_plasma(n: int, size: int, decay: float, g: torch.Generator) -> np.ndarray:
    """make_cifar_c.py's plasma_fractal for n maps at once; its uniform(-wibble, wibble) draws are
    2 * rand - 1 times wibble, taken from g in the generator's order (squares, then the two diamond sets)."""
    maparray = np.zeros((n, size, size))
    stepsize, wibble = size, 100.0

    def wibbledmean(array):
        u = 2 * torch.rand(array.shape, generator=g, dtype=F64).numpy() - 1
        return array / 4 + wibble * (wibble * u)

    while stepsize >= 2:
        half = stepsize // 2
        cornerref = maparray[:, 0:size:stepsize, 0:size:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=1)
        squareaccum += np.roll(squareaccum, shift=-1, axis=2)
        maparray[:, half:size:stepsize, half:size:stepsize] = wibbledmean(squareaccum)
        drgrid = maparray[:, half:size:stepsize, half:size:stepsize]
        ulgrid = maparray[:, 0:size:stepsize, 0:size:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=1) + ulgrid + np.roll(ulgrid, -1, axis=2)
        maparray[:, 0:size:stepsize, half:size:stepsize] = wibbledmean(ltsum)
        ttsum = drgrid + np.roll(drgrid, 1, axis=2) + ulgrid + np.roll(ulgrid, -1, axis=1)
        maparray[:, half:size:stepsize, 0:size:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= decay
    maparray -= maparray.min(axis=(1, 2), keepdims=True)
    return maparray / maparray.max(axis=(1, 2), keepdims=True)


@pytest.mark.parametrize("h, w", [(8, 8), (5, 12), (1, 1), (2, 2)])
def test_fog_matches_the_generators_plasma_fractal(h, w):
    size = 2
    while size < max(h, w):
        size *= 2  # the smallest power of two (at least 2) that holds the image
    x = rand_images(2, 3, h, w) * 0.7
    for severity, (strength, decay) in enumerate(SEVERITY_PARAMS["fog"], start=1):
        haze = _official_plasma(2, size, decay, seeded(severity))[:, None, :h, :w]
        peak = x.numpy().max(axis=(1, 2, 3), keepdims=True)
        reference = (x.numpy() + strength * haze) * peak / (peak + strength)
        out = corrupt(x, "fog", severity, seeded(severity)).numpy()
        assert np.allclose(out, np.clip(reference, 0, 1), atol=1e-12, rtol=0), severity


# ---------------------------------------------------------------------------------------------
# inputs: JPEG and pixelate against PIL


def _pil_jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))


def test_jpeg_compression_is_pils_round_trip_at_the_generators_quality():
    x = rand_images(2, 3, 16, 8, seed=4)
    grey = rand_images(1, 1, 8, 16, seed=5)
    for severity, quality in enumerate((80, 65, 58, 50, 40), start=1):
        pixels = np.round(x.numpy() * 255).astype(np.uint8).transpose(0, 2, 3, 1)
        reference = np.stack([_pil_jpeg(p, quality) for p in pixels]).transpose(0, 3, 1, 2) / 255
        out = corrupt(x, "jpeg_compression", severity)
        assert out.dtype == F64 and np.allclose(out.numpy(), reference, atol=1e-12, rtol=0), severity
        pixels = np.round(grey.numpy()[0, 0] * 255).astype(np.uint8)
        reference = _pil_jpeg(pixels, quality)[None, None] / 255
        assert np.allclose(corrupt(grey, "jpeg_compression", severity).numpy(), reference, atol=1e-12, rtol=0), severity


def _pil_box(channel: np.ndarray, size_hw) -> np.ndarray:
    """PIL's BOX resize of a float32 image (mode 'F', no 8-bit rounding)."""
    image = Image.fromarray(channel.astype(np.float32), mode="F")
    return np.asarray(image.resize((size_hw[1], size_hw[0]), Image.BOX))


@pytest.mark.parametrize("h, w", [(7, 11), (13, 6), (32, 32)])
def test_pixelate_is_pils_box_down_and_up_sampling(h, w):
    x = rand_images(1, 2, h, w, seed=6)
    for severity, scale in enumerate((0.95, 0.9, 0.85, 0.75, 0.65), start=1):
        small = (int(h * scale), int(w * scale))
        out = corrupt(x, "pixelate", severity).numpy()
        for c in range(2):
            reference = _pil_box(_pil_box(x[0, c].numpy(), small), (h, w))
            assert np.allclose(out[0, c], reference, atol=2e-6, rtol=0), (severity, c)


def test_pixelate_of_tiny_images():
    x = torch.tensor([[[[0.0, 0.2], [0.4, 0.6]]]], dtype=F64)  # 2 x 0.95 -> 1 pixel: the mean everywhere
    assert torch.allclose(corrupt(x, "pixelate", 1), torch.full_like(x, 0.3), atol=1e-12, rtol=0)
    one = torch.tensor([[[[0.7]]]], dtype=F64)  # int(0.95) = 0, kept at one pixel
    assert torch.allclose(corrupt(one, "pixelate", 1), one, atol=1e-12, rtol=0)


def test_box_resize_weights_at_footprint_boundaries():
    # 3 -> 2: footprints [0, 1.5) and [1.5, 3); the centre 1.5 of pixel 1 is on the boundary and goes
    # to the first output only (PIL's box filter is 1 on (-0.5, 0.5])
    from robustlab.corruptions.inputs import _box_resize_matrix

    assert torch.allclose(_box_resize_matrix(3, 2), torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=F64), atol=1e-12, rtol=0)
    row = np.array([[1.0, 2.0, 4.0]], dtype=np.float32)
    assert np.allclose(_pil_box(row, (1, 2)), [[1.5, 4.0]])


# ---------------------------------------------------------------------------------------------
# blur family


@pytest.mark.parametrize("h, w", [(6, 8), (7, 5)])
def test_glass_blur_matches_the_generator_whose_swap_copies(h, w):
    """The generator's `x[h, w], x[h', w'] = x[h', w'], x[h, w]` on numpy views copies the neighbour into
    (h, w) and leaves the neighbour as it was: the published CIFAR-10-C files were made that way."""
    x = rand_images(2, 3, h, w, seed=2)
    for severity, (sigma, delta, iterations) in enumerate(SEVERITY_PARAMS["glass_blur"], start=1):
        img = np.floor(np.clip(gaussian_nearest(x.numpy(), sigma) * 255, 0, 255)) / 255  # np.uint8 truncates
        rows, cols = range(h - delta, delta, -1), range(w - delta, delta, -1)
        offsets = torch.randint(-delta, delta, (iterations, len(rows), len(cols), 2, 2), generator=seeded(severity)).numpy()
        for n in range(2):
            for it in range(iterations):
                for i, r in enumerate(rows):
                    for j, c in enumerate(cols):
                        dx, dy = offsets[it, i, j, :, n]
                        hwc = img[n].transpose(1, 2, 0)  # a view laid out like the generator's array
                        hwc[r, c], hwc[r + dy, c + dx] = hwc[r + dy, c + dx], hwc[r, c]
        reference = np.clip(gaussian_nearest(img, sigma), 0, 1)
        out = corrupt(x, "glass_blur", severity, seeded(severity)).numpy()
        assert np.allclose(out, reference, atol=1e-12, rtol=0), severity


def test_motion_blur_corruption_draws_its_angle_in_plus_minus_45_degrees():
    x = rand_images(3, 3, 9, 9, seed=3)
    for severity, (radius, sigma) in enumerate(SEVERITY_PARAMS["motion_blur"], start=1):
        angles = -45.0 + 90.0 * torch.rand(3, generator=seeded(severity), dtype=F64)
        out = corrupt(x, "motion_blur", severity, seeded(severity)).numpy()
        for n in range(3):
            reference = _imagemagick_motion_blur(x[n].numpy(), radius, sigma, float(angles[n]))
            assert np.allclose(out[n], np.clip(reference, 0, 1), atol=1e-12, rtol=0), severity


def test_zoom_blur_averages_the_image_and_its_zooms():
    x = rand_images(1, 2, 9, 7, seed=8)
    for severity, stop in enumerate(SEVERITY_PARAMS["zoom_blur"], start=1):
        factors = np.arange(1, stop, 0.01)
        zooms = [np.stack([_scipy_clipped_zoom_2d(x[0, c].numpy(), z) for c in range(2)]) for z in factors]
        reference = (x[0].numpy() + sum(zooms)) / (len(factors) + 1)
        assert np.allclose(corrupt(x, "zoom_blur", severity)[0].numpy(), np.clip(reference, 0, 1), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------
# weather family


@pytest.mark.parametrize("severity", range(1, 6))
def test_snow_matches_the_generator(severity):
    mean, std, zoom, threshold, radius, sigma, weight = SEVERITY_PARAMS["snow"][severity - 1]
    n, h = 2, 12
    x = rand_images(n, 3, h, h, seed=1)
    g = seeded(severity)
    layer = mean + std * torch.randn((n, 1, h, h), generator=g, dtype=F64).numpy()
    angles = -135.0 + 90.0 * torch.rand(n, generator=g, dtype=F64).numpy()
    out = corrupt(x, "snow", severity, seeded(severity)).numpy()
    for k in range(n):
        flakes = _scipy_clipped_zoom_2d(layer[k, 0], zoom)
        flakes[flakes < threshold] = 0
        flakes = np.floor(np.clip(flakes, 0, 1) * 255) / 255  # .astype(np.uint8)
        flakes = np.round(_imagemagick_motion_blur(flakes, radius, sigma, angles[k]) * 255) / 255  # 8-bit PNG
        img = x[k].numpy()
        grey = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]  # cv2.COLOR_RGB2GRAY
        img = weight * img + (1 - weight) * np.maximum(img, grey * 1.5 + 0.5)
        reference = np.clip(img + flakes + np.rot90(flakes, k=2), 0, 1)
        assert np.allclose(out[k], reference, atol=1e-12, rtol=0), k


def _texture_arrays():
    return [np.asarray(Image.open(weather.FROST_DIR / f).convert("RGB")).transpose(2, 0, 1) / 255 for f in weather.FROST_FILES]


@pytest.mark.parametrize("n", [3, 30])
def test_frost_crops_the_textures_the_generator_draws(n):
    textures = _texture_arrays()
    h, w = 5, 7
    x = rand_images(n, 3, h, w)
    for severity, (image_weight, frost_weight) in enumerate(SEVERITY_PARAMS["frost"], start=1):
        g = seeded(severity)
        which = torch.randint(0, 5, (n,), generator=g).numpy()
        u = torch.rand((n, 2), generator=g, dtype=F64).numpy()
        out = corrupt(x, "frost", severity, seeded(severity)).numpy()
        for k in range(n):
            t = textures[which[k]]
            top, left = int(u[k, 0] * (t.shape[1] - h)), int(u[k, 1] * (t.shape[2] - w))  # randint(0, size - side)
            reference = image_weight * x[k].numpy() + frost_weight * t[:, top:top + h, left:left + w]
            assert np.allclose(out[k], np.clip(reference, 0, 1), atol=1e-12, rtol=0), (severity, k)
    if n == 30:
        assert set(which.tolist()) == {0, 1, 2, 3, 4}


def test_frost_image_size_limit():
    heights = [t.shape[1] for t in _texture_arrays()]
    widths = [t.shape[2] for t in _texture_arrays()]
    assert (min(heights), min(widths)) == (63, 105)
    corrupt(torch.zeros(1, 3, 62, 104), "frost", 1, seeded())  # the largest that fits every texture
    for h, w in ((63, 10), (10, 105)):
        with pytest.raises(UsageError, match=exactly(
                f"frost needs images smaller than its textures (63 x 105 pixels), got {h} x {w}")):
            corrupt(torch.zeros(1, 3, h, w), "frost", 1, seeded())


def test_missing_frost_texture(monkeypatch, tmp_path):
    weather._frost_textures_cpu.cache_clear()
    monkeypatch.setattr(weather, "FROST_DIR", tmp_path)
    try:
        with pytest.raises(UsageError, match=exactly(f"frost texture {tmp_path / 'frost1.png'} is missing; reinstall robustlab")):
            corrupt(torch.zeros(1, 3, 4, 4), "frost", 1, seeded())
    finally:
        weather._frost_textures_cpu.cache_clear()


def _edges_loop(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask; beyond the border counts as the border pixel."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for i in range(h):
        for j in range(w):
            if mask[i, j]:
                neighbours = [mask[max(i - 1, 0), j], mask[min(i + 1, h - 1), j], mask[i, max(j - 1, 0)], mask[i, min(j + 1, w - 1)]]
                out[i, j] = not all(neighbours)
    return out


def test_mask_edges_by_a_loop():
    mask = torch.rand(2, 1, 7, 9, generator=seeded(4)) < 0.6
    out = weather._mask_edges(mask)
    for n in range(2):
        assert np.array_equal(out[n, 0].numpy(), _edges_loop(mask[n, 0].numpy()))


def test_distance_to_a_single_far_edge_and_to_no_edge():
    edges = torch.zeros(1, 1, 12, 10, dtype=torch.bool)
    edges[0, 0, 0, 0] = True
    assert np.allclose(weather._distance_to(edges)[0, 0].numpy(), ndimage.distance_transform_edt(~edges[0, 0].numpy()), atol=1e-12, rtol=0)
    for h, w in ((12, 10), (40, 3), (3, 40)):
        none = weather._distance_to(torch.zeros(1, 1, h, w, dtype=torch.bool))
        assert float(none.min()) > math.hypot(h, w)  # farther than any pixel of the image
    edges = torch.zeros(1, 1, 40, 3, dtype=torch.bool)
    edges[0, 0, 0, 2] = True
    assert np.allclose(weather._distance_to(edges)[0, 0].numpy(), ndimage.distance_transform_edt(~edges[0, 0].numpy()), atol=1e-12, rtol=0)


def _opencv_equalize(v: np.ndarray) -> np.ndarray:
    """cv2.equalizeHist on integer values 0..255."""
    hist = np.bincount(v.ravel(), minlength=256)
    first = int(np.nonzero(hist)[0][0])
    if hist[first] == v.size:
        return v.copy()
    scale = 255.0 / (v.size - hist[first])
    lut = np.zeros(256)
    total = 0
    for i in range(first + 1, 256):
        total += hist[i]
        lut[i] = min(255, round(total * scale))
    return lut[v]


def test_equalize_hist_matches_opencvs_algorithm():
    v = torch.randint(3, 40, (3, 1, 6, 7), generator=seeded(2)).double()
    out = weather._equalize_hist(v)
    for n in range(3):
        assert np.array_equal(out[n, 0].numpy(), _opencv_equalize(v[n, 0].numpy().astype(int)))
    # all pixels but one at the minimum: the other one maps to 255
    one = torch.tensor([[5.0, 5.0], [5.0, 9.0]], dtype=F64).view(1, 1, 2, 2)
    assert torch.equal(weather._equalize_hist(one), torch.tensor([[0.0, 0.0], [0.0, 255.0]], dtype=F64).view(1, 1, 2, 2))


def _box3(a: np.ndarray) -> np.ndarray:
    """cv2.blur(a, (3, 3)) with its default BORDER_REFLECT_101: the exact mean of nine values."""
    p = np.pad(a, 1, mode="reflect")
    return sum(p[i:i + a.shape[0], j:j + a.shape[1]] for i in range(3) for j in range(3)) / 9


def _official_spatter(x: np.ndarray, noise: np.ndarray, params) -> np.ndarray:
    """make_cifar_c.py's spatter on one (3, H, W) image given its N(0, 1) draws, with robustlab's
    documented deviations for water: drop edges = boundary pixels of the drop mask instead of Canny,
    the exact Euclidean distance."""
    mean, std, sigma, threshold, strength, mud = params
    liquid = ndimage.gaussian_filter(mean + std * noise, sigma, mode="nearest", truncate=4.0)
    liquid[liquid < threshold] = 0
    if mud:
        m = ndimage.gaussian_filter((liquid > threshold).astype(float), strength, mode="nearest", truncate=4.0)
        m[m < 0.8] = 0
        brown = np.array([63, 42, 20])[:, None, None] / 255
        return np.clip(x * (1 - m) + brown * m, 0, 1)
    liquid8 = np.floor(np.clip(liquid, 0, 1) * 255)
    edges = _edges_loop(liquid8 > 0)
    dist = ndimage.distance_transform_edt(~edges) if edges.any() else np.full(edges.shape, 1e9)
    dist = np.minimum(dist, 20)  # THRESH_TRUNC at 20
    dist = np.floor(_box3(dist))  # blur, astype(uint8)
    dist = _opencv_equalize(dist.astype(int))
    emboss = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
    dist = np.clip(np.round(ndimage.correlate(dist, emboss, mode="mirror")), 0, 255)  # filter2D to CV_8U
    dist = np.round(_box3(dist))  # cv2.blur of an 8-bit image rounds
    m = liquid8 * dist
    m = m / m.max() * strength if m.max() > 0 else m
    turquoise = np.array([175, 238, 238])[:, None, None] / 255
    return np.clip(x + m * turquoise, 0, 1)


@pytest.mark.parametrize("severity", range(1, 6))
def test_spatter_matches_the_generator(severity):
    n, h, w = 2, 14, 16
    x = rand_images(n, 3, h, w, seed=5)
    noise = torch.randn((n, 1, h, w), generator=seeded(severity), dtype=F64).numpy()
    out = corrupt(x, "spatter", severity, seeded(severity)).numpy()
    for k in range(n):
        reference = _official_spatter(x[k].numpy(), noise[k, 0], SEVERITY_PARAMS["spatter"][severity - 1])
        assert np.allclose(out[k], reference, atol=1e-12, rtol=0), k


def test_box_blur3_of_a_constant_integer_image_is_exact():
    # spatter truncates this blur to 8 bits: a flat 20 must stay 20 (OpenCV's blur gives exactly 20)
    assert torch.equal(torch.floor(ops.box_blur3(torch.full((1, 1, 5, 5), 20.0, dtype=F64))), torch.full((1, 1, 5, 5), 20.0, dtype=F64))


# ---------------------------------------------------------------------------------------------
# elastic transform


def _official_elastic(img: np.ndarray, jitter_u: np.ndarray, noise: np.ndarray, params) -> np.ndarray:
    """make_cifar_c.py's elastic_transform on one (C, H, W) image, given its uniform draws: jitter_u (3, 2)
    in [0, 1) and noise (2, H, W) in [-1, 1) (dx first), with parameters in units of min(H, W)."""
    c, h, w = img.shape
    side = min(h, w)
    alpha, sigma, jitter = (p * side for p in params)
    centre = np.array([h, w], dtype=float) // 2  # used as (x, y) points, as the generator does
    s = side // 3
    pts1 = np.array([centre + s, [centre[0] + s, centre[1] - s], centre - s])
    pts2 = pts1 + (-jitter + 2 * jitter * jitter_u)
    # cv2.getAffineTransform: pts2 = A pts1 + b; cv2.warpAffine samples the source at the inverse map
    m = np.linalg.solve(np.c_[pts1, np.ones(3)], pts2).T
    a_inv = np.linalg.inv(m[:, :2])
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    src = np.einsum("ij,jhw->ihw", a_inv, np.stack([xx - m[0, 2], yy - m[1, 2]]))
    warped = np.stack([ndimage.map_coordinates(ch, [src[1], src[0]], order=1, mode="mirror") for ch in img])
    if alpha == 0:
        return warped
    dx = ndimage.gaussian_filter(noise[0], sigma, mode="reflect", truncate=3) * alpha
    dy = ndimage.gaussian_filter(noise[1], sigma, mode="reflect", truncate=3) * alpha
    return np.stack([ndimage.map_coordinates(ch, [yy + dy, xx + dx], order=1, mode="reflect") for ch in warped])


@pytest.mark.parametrize("h, w", [(12, 12), (10, 14), (15, 9)])
def test_elastic_transform_matches_the_generator(h, w):
    n = 2
    x = rand_images(n, 2, h, w, seed=7)
    for severity, params in enumerate(SEVERITY_PARAMS["elastic_transform"], start=1):
        g = seeded(severity)
        jitter_u = torch.rand((n, 3, 2), generator=g, dtype=F64).numpy()
        noise = (-1 + 2 * torch.rand((n, 2, h, w), generator=g, dtype=F64)).numpy()
        out = corrupt(x, "elastic_transform", severity, seeded(severity)).numpy()
        for k in range(n):
            reference = np.clip(_official_elastic(x[k].numpy(), jitter_u[k], noise[k], params), 0, 1)
            assert np.allclose(out[k], reference, atol=1e-10, rtol=0), (severity, k)


# ---------------------------------------------------------------------------------------------
# device contract: every helper keeps its work on the images' device. The meta device (shapes, no
# data) stands in for an accelerator: a tensor left on the CPU by mistake fails to mix with it.


def test_helpers_stay_on_the_images_device():
    from robustlab.corruptions.elastic import _warp_affine
    from robustlab.corruptions.inputs import _depthwise, _plasma_fractal

    x = torch.zeros(2, 3, 6, 7, device="meta", dtype=F64)
    real = torch.zeros(2, 6, 7, device="meta", dtype=F64)
    mask = torch.zeros(2, 1, 6, 7, device="meta", dtype=torch.bool)
    points = torch.zeros(2, 3, 2, device="meta", dtype=F64)
    outputs = {
        "pad": ops.pad(x, 2, 3, "symmetric"),
        "correlate": ops.correlate(x, torch.ones(3, 3, dtype=F64), "edge"),
        "gaussian_filter": ops.gaussian_filter(x, 1.0),
        "box_blur3": ops.box_blur3(x),
        "sample_bilinear": ops.sample_bilinear(x, real, real, "symmetric"),
        "gather_pixels": ops.gather_pixels(x, real.long(), real.long()),
        "motion_blur": ops.motion_blur(x, 3, 1.0, torch.zeros(2, device="meta")),
        "clipped_zoom": ops.clipped_zoom(x, 1.3),
        "mask_edges": weather._mask_edges(mask),
        "distance_to": weather._distance_to(mask),
        "equalize_hist": weather._equalize_hist(torch.zeros(2, 1, 6, 7, device="meta", dtype=F64)),
        "warp_affine": _warp_affine(x, points, points),
        "plasma_fractal": _plasma_fractal(2, 8, 2.0, x, None),
        "depthwise": _depthwise(x, torch.ones(3, 3, dtype=F64), "replicate"),
    }
    for name, out in outputs.items():
        assert out.device.type == "meta", name
    assert outputs["pad"].shape == (2, 3, 10, 13) and outputs["distance_to"].dtype == F64
    assert outputs["equalize_hist"].shape == (2, 1, 6, 7) and outputs["plasma_fractal"].shape == (2, 8, 8)


def test_sampling_and_motion_blur_work_in_the_images_dtype():
    x = rand_images(1, 2, 5, 6, dtype=torch.float32)
    rows = torch.rand(1, 5, 6, dtype=F64, generator=seeded(1)) * 8 - 1.5  # float64 coordinates
    cols = torch.rand(1, 5, 6, dtype=F64, generator=seeded(2)) * 9 - 1.5
    out = ops.sample_bilinear(x, rows, cols, "edge")
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), ops.sample_bilinear(x.double(), rows, cols, "edge"), atol=1e-6, rtol=0)
    blurred = ops.motion_blur(x, 3, 1.5, torch.tensor([20.0, -30.0])[:1])
    assert blurred.dtype == torch.float32
    assert torch.allclose(blurred.double(), ops.motion_blur(x.double(), 3, 1.5, torch.tensor([20.0])), atol=1e-6, rtol=0)
