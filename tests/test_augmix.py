"""AugMix: the JS consistency loss, the mixing, the operations against PIL, and the three views."""
from __future__ import annotations


import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from robustlab.data.augment import AugmentConfig, BatchAugment
from robustlab.errors import UsageError
from robustlab.strategies import create_strategy
from robustlab.strategies.augmix import (OPERATIONS, AugMixViews, apply_operation, jensen_shannon, mix,
                                         sample_mixing_weights)

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=gen(seed), dtype=torch.uint8)


def test_jensen_shannon_by_hand():
    logits = [torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]),
              torch.tensor([[1.0, 1.0, 1.0], [-2.0, 1.0, 0.0]])]
    p = [np.exp(z.numpy()) / np.exp(z.numpy()).sum(1, keepdims=True) for z in logits]
    m = (p[0] + p[1] + p[2]) / 3
    kl = [(pi * (np.log(pi) - np.log(m))).sum(1).mean() for pi in p]  # batchmean: sum over classes, mean over rows
    assert float(jensen_shannon(logits)) == pytest.approx(sum(kl) / 3, rel=1e-5)
    same = [logits[0]] * 3
    assert float(jensen_shannon(same)) == pytest.approx(0.0, abs=1e-7)


def test_mixing_weights_are_dirichlet_and_beta_and_sum_to_one():
    w, m = sample_mixing_weights(20000, 3, gen(), "cpu")
    assert w.shape == (20000, 3) and m.shape == (20000,)
    assert torch.allclose(w.sum(1), torch.ones(20000), atol=1e-6) and float(w.min()) > 0
    assert torch.allclose(w.mean(0), torch.full((3,), 1 / 3), atol=0.01)
    assert float(w[:, 0].var()) == pytest.approx(1 / 18, rel=0.05)  # Dirichlet(1,1,1) marginal: Beta(1, 2)
    assert float(m.mean()) == pytest.approx(0.5, abs=0.01) and float(m.var()) == pytest.approx(1 / 12, rel=0.05)


def test_mix_by_hand():
    base = torch.full((2, 1, 2, 2), 10.0)
    chains = [torch.full((2, 1, 2, 2), 100.0), torch.full((2, 1, 2, 2), 40.0)]
    weights = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    skip = torch.tensor([0.5, 0.2])
    out = mix(base, chains, weights, skip)
    assert torch.allclose(out[0], torch.full((1, 2, 2), 0.5 * 10 + 0.5 * (25 + 30)))
    assert torch.allclose(out[1], torch.full((1, 2, 2), 0.8 * 10 + 0.2 * 100))


def test_posterize_and_solarize_by_hand():
    x = torch.tensor([0.0, 17.0, 100.0, 180.0, 200.0, 255.0]).view(1, 1, 1, 6).repeat(2, 1, 1, 1)
    level = torch.tensor([1.0, 3.0])  # int(1 * 4 / 10) = 0 -> 4 bits; int(3 * 4 / 10) = 1 -> 3 bits
    out = apply_operation("posterize", x, level, torch.ones(2))
    assert out[0].flatten().tolist() == [0, 16, 96, 176, 192, 240]
    assert out[1].flatten().tolist() == [0, 0, 96, 160, 192, 224]
    # threshold 256 - int(3 * 256 / 10) = 180: values >= 180 are inverted
    out = apply_operation("solarize", x[:1], torch.tensor([3.0]), torch.ones(1))
    assert out.flatten().tolist() == [0, 17, 100, 75, 55, 0]


def _pil(op, img: np.ndarray) -> np.ndarray:
    return np.asarray(op(Image.fromarray(img))).astype(np.float32)


@pytest.mark.parametrize("name, level, sign", [("rotate", 3.0, 1.0), ("rotate", 2.0, -1.0), ("shear_x", 3.0, 1.0),
                                               ("shear_y", 2.5, -1.0), ("translate_x", 3.0, 1.0),
                                               ("translate_y", 3.0, -1.0), ("autocontrast", 1.0, 1.0),
                                               ("equalize", 1.0, 1.0)])
def test_operations_match_pil(name, level, sign):
    yy, xx = np.mgrid[0:32, 0:32]
    img = np.stack([xx * 6 + 20, yy * 5 + 30, (xx + yy) * 3 + 10], -1).astype(np.uint8)  # smooth, so borders are comparable
    s = level * 0.3 / 10 * sign
    t = int(level * 32 / 3 / 10) * sign
    reference = {
        "rotate": lambda im: im.rotate(int(level * 30 / 10) * sign, resample=Image.BILINEAR),
        "shear_x": lambda im: im.transform((32, 32), Image.AFFINE, (1, s, 0, 0, 1, 0), resample=Image.BILINEAR),
        "shear_y": lambda im: im.transform((32, 32), Image.AFFINE, (1, 0, 0, s, 1, 0), resample=Image.BILINEAR),
        "translate_x": lambda im: im.transform((32, 32), Image.AFFINE, (1, 0, t, 0, 1, 0), resample=Image.BILINEAR),
        "translate_y": lambda im: im.transform((32, 32), Image.AFFINE, (1, 0, 0, 0, 1, t), resample=Image.BILINEAR),
        "autocontrast": lambda im: __import__("PIL.ImageOps").ImageOps.autocontrast(im),
        "equalize": lambda im: __import__("PIL.ImageOps").ImageOps.equalize(im),
    }[name]
    expected = _pil(reference, img)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    out = apply_operation(name, x, torch.tensor([level]), torch.tensor([sign]))[0].permute(1, 2, 0).numpy()
    inner = (slice(4, -4), slice(4, -4))  # PIL does not blend the border with the black fill
    assert np.abs(out[inner] - expected[inner]).max() <= 1.0, name
    assert np.abs(out - img).max() > 0  # the operation did something


def test_clean_view_is_the_standard_augmentation_and_augmix_views_differ():
    standard = BatchAugment(AugmentConfig(crop_pad=4, flip=True), MEAN, STD)
    views = AugMixViews(standard, MEAN, STD)
    x = images()
    out = views(x, gen(5))
    assert out.shape == (8, 3, 3, 32, 32)
    assert torch.equal(out[:, 0], standard(x, gen(5)))
    assert not torch.allclose(out[:, 1], out[:, 0]) and not torch.allclose(out[:, 2], out[:, 1])
    assert torch.equal(views(x, gen(5)), out)  # a seed fixes every draw
    # each AugMix view is a convex mix of 8-bit images: inside the normalized [0, 255] range
    lo = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert bool((out >= lo.view(1, 1, 3, 1, 1) - 1e-5).all() and (out <= hi.view(1, 1, 3, 1, 1) + 1e-5).all())


def test_chains_apply_between_one_and_three_operations():
    views = AugMixViews(None, MEAN, STD, depth=1)
    base = images(64).float()
    one = views.chain(base, gen())
    changed = (one != base).flatten(1).any(1)
    assert float(changed.float().mean()) > 0.7  # a few ops may leave an image alone (e.g. a zero-degree rotation)
    assert set(OPERATIONS) == {"autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y",
                               "translate_x", "translate_y"}


def test_augmix_loss_is_clean_ce_plus_weighted_jsd():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    strategy = create_strategy("augmix", model, num_classes=5, jsd_weight=12)
    x = torch.randn(6, 3, 3, 4, 4)
    y = torch.randint(0, 5, (6,))
    out = strategy.train_step(x, y, torch.arange(6), 0)
    logits = [model(x[:, v]) for v in range(3)]
    expected = F.cross_entropy(logits[0], y) + 12 * jensen_shannon(logits)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(out.logits, logits[0], atol=1e-6)
    out.loss.backward()
    assert model[1].weight.grad.abs().sum() > 0
    plain = create_strategy("augmix", model, num_classes=5, jsd_weight=0)
    assert plain.train_step(x, y, torch.arange(6), 0).loss.item() == pytest.approx(F.cross_entropy(logits[0], y).item(), rel=1e-5)


@pytest.mark.parametrize("option, value", [("width", 0), ("depth", 0), ("severity", 11), ("jsd_weight", -1.0)])
def test_bad_options_are_usage_errors(option, value):
    with pytest.raises(UsageError, match=option):
        create_strategy("augmix", torch.nn.Linear(2, 2), num_classes=2, **{option: value})


# ---- the mechanism pinned to the official code (google-research/augmix) ----------------------

import robustlab.strategies.augmix as augmix_module  # noqa: E402
from robustlab.strategies.augmix import AugMix, AugMixConfig  # noqa: E402


def test_jensen_shannon_clamps_the_mixture_at_1e_7():
    # three identical distributions with a class of probability p << 1e-7: without the clamp the JS is 0;
    # with the official clamp log M = log 1e-7 there, so each KL is p (log p - log 1e-7)
    z = torch.tensor([[0.0, -25.0]])
    p = float(torch.softmax(z, 1)[0, 1])
    assert p < 1e-7
    got = float(jensen_shannon([z, z, z]))
    assert got == pytest.approx(p * (np.log(p) - np.log(1e-7)), rel=1e-4)
    assert got < 0
    # an explicit clamp is honoured
    assert float(jensen_shannon([z, z, z], clamp=1e-9)) == pytest.approx(p * (np.log(p) - np.log(1e-9)), rel=1e-4)


def test_jensen_shannon_is_computed_in_float32_from_half_logits():
    z = [torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]])]
    out = jensen_shannon([t.half() for t in z])
    assert out.dtype == torch.float32
    assert float(out) == pytest.approx(float(jensen_shannon(z)), rel=1e-3)


def test_mixing_weights_are_normalized_exponentials_of_the_generator_draws():
    # independent re-derivation: Dirichlet(1, ..., 1) = Exp(1) draws / their sum, Exp(1) = -log(1 - U)
    # from float64 uniforms; then Beta(1, 1) = one float32 uniform per image, from the same generator
    w, m = sample_mixing_weights(5, 4, gen(3), "cpu")
    g = gen(3)
    u = torch.rand(5, 4, generator=g, dtype=torch.float64).numpy()
    e = -np.log(1 - u)
    skip = torch.rand(5, generator=g).numpy()
    assert w.shape == (5, 4) and m.shape == (5,) and w.dtype == torch.float32 and m.dtype == torch.float32
    np.testing.assert_allclose(w.numpy(), e / e.sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(m.numpy(), skip)


def _param_ops(x, name, levels, signs):
    return apply_operation(name, x, torch.tensor(levels), torch.tensor(signs))


def test_posterize_keeps_4_minus_int_parameter_bits():
    # official: ImageOps.posterize(img, 4 - int(level * 4 / 10)); int(2.5 * 4 / 10) = 1 exactly, int(2.49 * 0.4) = 0,
    # int(5 * 0.4) = 2, int(10 * 0.4) = 4 (0 bits: PIL's mask is 0)
    x = torch.tensor([0.0, 17.0, 100.0, 180.0, 200.0, 255.0]).view(1, 1, 1, 6).repeat(4, 1, 1, 1)
    out = _param_ops(x, "posterize", [2.5, 2.49, 5.0, 10.0], [1.0, -1.0, 1.0, 1.0])
    mask = {3: 0xE0, 4: 0xF0, 2: 0xC0, 0: 0x00}
    for i, bits in enumerate([3, 4, 2, 0]):
        assert out[i].flatten().tolist() == [v & mask[bits] for v in [0, 17, 100, 180, 200, 255]], bits


def test_solarize_threshold_is_256_minus_int_parameter():
    # official: ImageOps.solarize(img, 256 - int(level * 256 / 10)); PIL inverts pixels >= threshold
    # level 0.1 -> int(2.56) = 2 -> 254; level 2.5 -> int(64.0) = 64 -> 192; level 10 -> 0 -> every pixel
    # level 3 -> int(76.8) = 76 -> 180
    x = torch.tensor([0.0, 100.0, 179.0, 180.0, 191.0, 192.0, 253.0, 254.0, 255.0]).view(1, 1, 1, 9).repeat(4, 1, 1, 1)
    out = _param_ops(x, "solarize", [0.1, 2.5, 10.0, 3.0], [1.0, -1.0, 1.0, 1.0])
    values = [0, 100, 179, 180, 191, 192, 253, 254, 255]
    for i, threshold in enumerate([254, 192, 0, 180]):
        assert out[i].flatten().tolist() == [255 - v if v >= threshold else v for v in values], threshold


def test_translate_is_an_integer_pixel_shift_of_int_parameter_size_over_3():
    # official: t = int(level * IMAGE_SIZE / 3 / 10), PIL AFFINE (1, 0, t, 0, 1, 0): out(x) = in(x + t), black outside.
    # A non-square image (H=32, W=16) tells width from height: translate_x uses W, translate_y uses H.
    x = torch.randint(1, 256, (4, 3, 32, 16), generator=gen(1)).float()
    out = _param_ops(x, "translate_x", [3.0, 2.8, 10.0, 0.5], [1.0, -1.0, 1.0, 1.0])
    for i, t in enumerate([1, -1, 5, 0]):  # int(1.6), -int(1.49), int(5.33), int(0.27)
        expected = torch.zeros_like(x[i])
        if t >= 0:
            expected[..., :16 - t] = x[i, ..., t:]
        else:
            expected[..., -t:] = x[i, ..., :16 + t]
        assert torch.equal(out[i], expected), (i, t)
    out = _param_ops(x, "translate_y", [3.0, 2.8, 10.0, 0.5], [-1.0, 1.0, 1.0, 1.0])
    for i, t in enumerate([-3, 2, 10, 0]):  # int(3.2), int(2.99), int(10.67), int(0.53)
        expected = torch.zeros_like(x[i])
        if t >= 0:
            expected[:, :32 - t] = x[i, :, t:]
        else:
            expected[:, -t:] = x[i, :, :32 + t]
        assert torch.equal(out[i], expected), (i, t)


def _captured_theta(monkeypatch, name, shape, levels, signs):
    seen = []
    monkeypatch.setattr(augmix_module, "_affine", lambda x, theta: seen.append(theta.clone()) or x)
    x = torch.zeros(len(levels), *shape)
    assert torch.equal(_param_ops(x, name, levels, signs), x)
    (theta,) = seen
    return theta.double().numpy()


def test_rotation_angle_is_int_parameter_degrees(monkeypatch):
    # official: degrees = int(level * 30 / 10), negated with probability 1/2; PIL rotate is counter-clockwise:
    # in pixel coordinates (y down) the output at p samples the input at [[cos, -sin], [sin, cos]] p
    theta = _captured_theta(monkeypatch, "rotate", (1, 4, 6), [3.0, 2.99, 10.0, 0.2], [1.0, -1.0, 1.0, -1.0])
    for th, deg in zip(theta, [9, -8, 30, 0]):
        r = np.deg2rad(deg)
        np.testing.assert_allclose(th, [[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0]], atol=1e-6)


def test_shear_is_float_parameter_with_pil_pixel_centres(monkeypatch):
    # official: s = level * 0.3 / 10 (a float), negated with probability 1/2; PIL AFFINE (1, s, 0, 0, 1, 0)
    # samples the input at pixel x + s (y + 1/2) (pixel indices). With centred coordinates
    # x = xc + (W-1)/2, y = yc + (H-1)/2 this is xc + s yc + s H/2: theta = [[1, s, s H/2], [0, 1, 0]].
    h, w = 6, 10
    theta = _captured_theta(monkeypatch, "shear_x", (1, h, w), [3.0, 2.5, 10.0], [1.0, -1.0, 1.0])
    for th, s in zip(theta, [0.09, -0.075, 0.3]):
        np.testing.assert_allclose(th, [[1, s, s * h / 2], [0, 1, 0]], atol=1e-6)
    theta = _captured_theta(monkeypatch, "shear_y", (1, h, w), [3.0, 2.5, 10.0], [-1.0, 1.0, 1.0])
    for th, s in zip(theta, [-0.09, 0.075, 0.3]):
        np.testing.assert_allclose(th, [[1, 0, 0], [s, 1, s * w / 2]], atol=1e-6)


def test_affine_resampling_matches_pil_transform_on_a_non_square_image():
    # PIL AFFINE (a, b, c, d, e, f) with BILINEAR samples the input at pixel (a (x+.5) + b (y+.5) + c - .5, ...);
    # in coordinates centred at ((W-1)/2, (H-1)/2) that is A p + (a W/2 + b H/2 + c - W/2, d W/2 + e H/2 + f - H/2)
    h, w = 24, 40
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 5 + 20, yy * 7 + 30, (xx + yy) * 3 + 10], -1).astype(np.uint8)
    a, b, c, d, e, f = 0.95, 0.12, 1.7, -0.08, 1.04, -2.3
    expected = _pil(lambda im: im.transform((w, h), Image.AFFINE, (a, b, c, d, e, f), resample=Image.BILINEAR), img)
    theta = torch.tensor([[[a, b, a * w / 2 + b * h / 2 + c - w / 2], [d, e, d * w / 2 + e * h / 2 + f - h / 2]]])
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    out = augmix_module._affine(x, theta)[0].permute(1, 2, 0).numpy()
    sx, sy = a * (xx + .5) + b * (yy + .5) + c - .5, d * (xx + .5) + e * (yy + .5) + f - .5
    inside = (sx >= 1) & (sx <= w - 2) & (sy >= 1) & (sy <= h - 2)  # PIL does not blend with the black fill
    assert inside.sum() > 0.6 * h * w
    assert np.abs(out[inside] - expected[inside]).max() <= 1.0
    outside = (sx <= -1) | (sx >= w) | (sy <= -1) | (sy >= h)  # more than one pixel out: black fill only
    assert outside.sum() > 0 and (out[outside] == 0).all()
    assert np.array_equal(out, np.round(out))  # 8-bit values


@pytest.mark.parametrize("name, level, sign", [("rotate", 3.0, 1.0), ("shear_x", 3.0, -1.0), ("shear_y", 2.5, 1.0)])
def test_geometric_operations_match_pil_on_a_non_square_image(name, level, sign):
    h, w = 24, 40
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 5 + 20, yy * 7 + 30, (xx + yy) * 3 + 10], -1).astype(np.uint8)
    s = level * 0.3 / 10 * sign
    reference = {
        "rotate": lambda im: im.rotate(int(level * 30 / 10) * sign, resample=Image.BILINEAR),
        "shear_x": lambda im: im.transform((w, h), Image.AFFINE, (1, s, 0, 0, 1, 0), resample=Image.BILINEAR),
        "shear_y": lambda im: im.transform((w, h), Image.AFFINE, (1, 0, 0, s, 1, 0), resample=Image.BILINEAR),
    }[name]
    expected = _pil(reference, img)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    out = apply_operation(name, x, torch.tensor([level]), torch.tensor([sign]))[0].permute(1, 2, 0).numpy()
    inner = (slice(4, -4), slice(4, -4))
    assert np.abs(out[inner] - expected[inner]).max() <= 1.0, name


def _reference_chain(x: torch.Tensor, depth_setting: int, severity: int, g: torch.Generator) -> torch.Tensor:
    """Each image its own chain, one image at a time: depth ~ U{1, 2, 3} (or fixed), then per step an
    operation drawn uniformly from the 9, a level ~ U(0.1, severity) and a sign (-1 when U > 0.5)."""
    n = len(x)
    depth = torch.randint(1, 4, (n,), generator=g) if depth_setting == -1 else torch.full((n,), depth_setting)
    x = x.clone()
    for step in range(int(depth.max())):
        op = torch.randint(9, (n,), generator=g)
        level = 0.1 + (severity - 0.1) * torch.rand(n, generator=g)
        sign = 1.0 - 2.0 * (torch.rand(n, generator=g) > 0.5).float()
        for i in range(n):
            if step < depth[i]:
                x[i:i + 1] = apply_operation(OPERATIONS[op[i]], x[i:i + 1], level[i:i + 1], sign[i:i + 1])
    return x


@pytest.mark.parametrize("depth, severity", [(-1, 3), (2, 7), (1, 1)])
def test_chain_applies_each_image_its_own_random_operations(depth, severity):
    base = images(24, seed=4).float()
    views = AugMixViews(None, MEAN, STD, width=3, depth=depth, severity=severity)
    out = views.chain(base, gen(11))
    assert torch.equal(out, _reference_chain(base, depth, severity, gen(11)))
    assert torch.equal(base, images(24, seed=4).float())  # the input is left alone


def test_chain_depth_minus_one_draws_one_to_three_operations():
    g = gen(2)
    depth = torch.randint(1, 4, (3000,), generator=g)
    assert set(depth.tolist()) == {1, 2, 3}
    # the chain consumes exactly these draws first: a chain of depth 3 for every image would differ
    base = images(16, seed=6).float()
    random_depth = AugMixViews(None, MEAN, STD, depth=-1).chain(base, gen(8))
    assert torch.equal(random_depth, _reference_chain(base, -1, 3, gen(8)))
    assert not torch.equal(random_depth, _reference_chain(base, 3, 3, gen(8)))


def test_augmix_mixes_width_chains_of_the_base_per_view():
    # count views x width chains run as one batch (view-major, then chain, then image), then per view
    # Dirichlet weights and a Beta skip: view = (1 - m) base + m sum_i w_i chain_i
    n, width = 5, 2
    base = images(n, seed=9).float()
    views = AugMixViews(None, MEAN, STD, width=width, depth=1, severity=3)
    out = views.augmix(base, gen(13), count=2)
    g = gen(13)
    chains = _reference_chain(base.repeat(2 * width, 1, 1, 1), 1, 3, g).view(2, width, n, 3, 32, 32)
    assert len(out) == 2
    for v in range(2):
        w, m = sample_mixing_weights(n, width, g, "cpu")
        mixed = sum(w[:, i].view(n, 1, 1, 1) * chains[v, i] for i in range(width))
        expected = (1 - m).view(n, 1, 1, 1) * base + m.view(n, 1, 1, 1) * mixed
        assert torch.allclose(out[v], expected, atol=1e-4), v
    assert len(views.augmix(base, gen(13))) == 1  # one view by default


def test_views_are_clean_then_two_normalized_augmix_views_of_the_8_bit_clean_image(monkeypatch):
    standard = BatchAugment(AugmentConfig(crop_pad=0, flip=False), MEAN, STD)
    views = AugMixViews(standard, MEAN, STD)
    x = images(4, seed=2)
    x[0, :, 0, 0], x[0, :, 0, 1] = 0, 255
    seen = {}

    def fake_augmix(base, generator, count=1):
        seen["base"], seen["count"] = base, count
        return [torch.full_like(base, 51.0), torch.full_like(base, 204.0)]

    monkeypatch.setattr(views, "augmix", fake_augmix)
    out = views(x, gen(1))
    assert torch.equal(seen["base"], x.float()) and seen["count"] == 2  # chains start from the 8-bit clean image
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(out[:, 0], (x.float() / 255 - mean) / std, atol=1e-5)
    assert torch.allclose(out[:, 1], ((0.2 - mean) / std).expand(4, 3, 32, 32), atol=1e-5)
    assert torch.allclose(out[:, 2], ((0.8 - mean) / std).expand(4, 3, 32, 32), atol=1e-5)


def test_defaults_are_the_official_ones():
    # official cifar.py: --mixture-width 3, --mixture-depth -1, --aug-severity 3, JSD weight 12
    c = AugMixConfig()
    assert (c.width, c.depth, c.severity, c.jsd_weight) == (3, -1, 3, 12.0)
    v = AugMixViews(None, MEAN, STD)
    assert (v.width, v.depth, v.severity) == (3, -1, 3)
    assert OPERATIONS == ("autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y",
                          "translate_x", "translate_y")


def test_train_augment_builds_views_from_the_config_and_the_split_statistics():
    class Splits:
        mean, std = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]

    strategy = create_strategy("augmix", torch.nn.Linear(2, 2), num_classes=2, width=2, depth=2, severity=5)
    default = object()
    views = strategy.train_augment(default, Splits())
    assert isinstance(views, AugMixViews) and views.standard is default
    assert (views.width, views.depth, views.severity) == (2, 2, 5)
    assert views.mean == (0.1, 0.2, 0.3) and views.std == (0.4, 0.5, 0.6)
    assert isinstance(strategy, AugMix) and strategy.config.width == 2


def test_train_step_sends_the_three_views_as_one_batch_in_view_order():
    seen = []

    class Record(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x.flatten(1)[:, :4]

    strategy = create_strategy("augmix", Record(), num_classes=4)
    x = torch.randn(2, 3, 1, 2, 2)
    y = torch.tensor([1, 3])
    out = strategy.train_step(x, y, torch.arange(2), 0)
    (batch,) = seen
    assert torch.equal(batch, torch.cat([x[:, 0], x[:, 1], x[:, 2]]))
    logits = [x[:, v].flatten(1) for v in range(3)]
    assert torch.equal(out.logits, logits[0])
    expected = F.cross_entropy(logits[0], y) + 12 * jensen_shannon(logits)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 2, 3, 4, 4), (2, 4, 3, 4, 4)])
def test_train_step_rejects_batches_that_are_not_three_views(shape):
    strategy = create_strategy("augmix", torch.nn.Flatten(), num_classes=2)
    with pytest.raises(UsageError, match=r"^augmix expects \(N, 3, C, H, W\) batches \(clean \+ 2 views\), got "
                                         + re.escape(str(shape)) + "$"):
        strategy.train_step(torch.zeros(shape), torch.zeros(2, dtype=torch.long), torch.arange(2), 0)


@pytest.mark.parametrize("option, value, message", [
    ("width", 0, "width must be >= 1, got 0"),
    ("depth", 0, "depth must be -1 (random 1-3) or >= 1, got 0"),
    ("depth", -2, "depth must be -1 (random 1-3) or >= 1, got -2"),
    ("severity", 0, "severity must be in 1..10, got 0"),
    ("severity", 11, "severity must be in 1..10, got 11"),
    ("jsd_weight", -0.5, "jsd_weight must be >= 0, got -0.5"),
])
def test_config_validation_messages(option, value, message):
    with pytest.raises(UsageError, match="^" + re.escape(f"strategy 'augmix': {message}") + "$"):
        create_strategy("augmix", torch.nn.Linear(2, 2), num_classes=2, **{option: value})
    with pytest.raises(UsageError, match="^" + re.escape(message) + "$"):
        AugMixConfig(**{option: value}).validate()


@pytest.mark.parametrize("option, value", [("width", 1), ("depth", -1), ("depth", 1), ("severity", 1),
                                           ("severity", 10), ("jsd_weight", 0.0)])
def test_boundary_options_are_accepted(option, value):
    AugMixConfig(**{option: value}).validate()
    strategy = create_strategy("augmix", torch.nn.Flatten(), num_classes=2, **{option: value})
    assert getattr(strategy.config, option) == value
    if option == "jsd_weight":
        # lambda = 0: the loss is the clean view's cross-entropy alone, whatever the AugMix views predict
        x, y = torch.randn(4, 3, 2, 1, 1, generator=gen(3)), torch.tensor([0, 1, 1, 0])
        loss = strategy.train_step(x, y, torch.arange(4), 0).loss
        assert loss.item() == pytest.approx(F.cross_entropy(x[:, 0].flatten(1), y).item(), rel=1e-6)
        assert jensen_shannon([x[:, 0].flatten(1), x[:, 1].flatten(1), x[:, 2].flatten(1)]).item() > 0.01
        return
    # the edge value reaches the views the run trains on, which are the reference mixture of reference chains
    settings = {"width": 3, "depth": -1, "severity": 3, option: value}  # AugMixConfig defaults + the edge
    views = strategy.train_augment(None, type("Splits", (), {"mean": MEAN, "std": STD})())
    assert isinstance(views, AugMixViews) and getattr(views, option) == value
    n, base = 4, images(4, seed=5).float()
    out = views.augmix(base, gen(21))
    g = gen(21)
    chains = _reference_chain(base.repeat(settings["width"], 1, 1, 1), settings["depth"], settings["severity"], g)
    w, m = sample_mixing_weights(n, settings["width"], g, "cpu")
    mixed = sum(w[:, i].view(n, 1, 1, 1) * chains[i * n:(i + 1) * n] for i in range(settings["width"]))
    expected = (1 - m).view(n, 1, 1, 1) * base + m.view(n, 1, 1, 1) * mixed
    assert torch.allclose(out[0], expected, atol=1e-4)
    assert not torch.allclose(out[0], base, atol=1.0)  # the chains changed the images


@pytest.mark.parametrize("option, value, message", [
    ("width", 0, "AugMix width must be >= 1, got 0"),
    ("depth", 0, "AugMix depth must be -1 (random 1-3) or >= 1, got 0"),
    ("depth", -3, "AugMix depth must be -1 (random 1-3) or >= 1, got -3"),
    ("severity", 0, "AugMix severity must be in 1..10, got 0"),
    ("severity", 11, "AugMix severity must be in 1..10, got 11"),
])
def test_views_validation_messages(option, value, message):
    with pytest.raises(UsageError, match="^" + re.escape(message) + "$"):
        AugMixViews(None, MEAN, STD, **{option: value})


def test_build_uses_the_context_model_factory():
    model = torch.nn.Linear(2, 2)
    strategy = create_strategy("augmix", lambda: model, num_classes=2)
    assert strategy.model is model and isinstance(strategy.config, AugMixConfig)
    assert AugMix(model).config == AugMixConfig()


def test_operations_follow_the_image_dtype_and_emit_no_warnings():
    # levels may come in float64 (e.g. from a float64 generator): the result keeps the image dtype;
    # no deprecated defaults (meshgrid indexing, grid_sample align_corners, implicit softmax dim)
    x = images(2, seed=3).float()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in OPERATIONS:
            out = apply_operation(name, x, torch.tensor([3.0, 2.0], dtype=torch.float64), torch.tensor([1.0, -1.0]))
            assert out.dtype == torch.float32 and out.shape == x.shape, name
        jensen_shannon([torch.randn(3, 4) for _ in range(3)])


def test_affine_resamples_in_the_image_dtype():
    x = images(2, seed=5).double()
    theta = torch.tensor([[[0.9, 0.1, 0.7], [-0.1, 1.05, -1.2]]]).repeat(2, 1, 1)
    out = augmix_module._affine(x, theta)
    assert out.dtype == torch.float64
    assert (out - augmix_module._affine(x.float(), theta).double()).abs().max() <= 1.0


def test_draws_and_tensors_follow_the_generator_and_the_images_not_the_default_device():
    # with torch's default device set elsewhere (here: meta), every draw comes from the generator's device
    # and every operation stays on the images' device
    x = images(6, seed=7).float()
    levels, signs = torch.full((6,), 3.0), torch.tensor([1.0, -1.0] * 3)
    standard = BatchAugment(AugmentConfig(crop_pad=4, flip=True), MEAN, STD)
    expected_chain = AugMixViews(None, MEAN, STD).chain(x, gen(1))
    expected_views = AugMixViews(standard, MEAN, STD)(x.to(torch.uint8), gen(2))
    expected_ops = {name: apply_operation(name, x, levels, signs) for name in OPERATIONS}
    expected_w = sample_mixing_weights(4, 3, gen(3), "cpu")
    expected_fixed_depth = _reference_chain(x, 2, 3, gen(1))
    with torch.device("meta"):
        assert torch.equal(AugMixViews(None, MEAN, STD, depth=2).chain(x, gen(1)), expected_fixed_depth)
        assert torch.equal(AugMixViews(None, MEAN, STD).chain(x, gen(1)), expected_chain)
        assert torch.equal(AugMixViews(standard, MEAN, STD)(x.to(torch.uint8), gen(2)), expected_views)
        for name in OPERATIONS:
            assert torch.equal(apply_operation(name, x, levels, signs), expected_ops[name]), name
        w, m = sample_mixing_weights(4, 3, gen(3), "cpu")
        assert torch.equal(w, expected_w[0]) and torch.equal(m, expected_w[1])


def test_mixing_weights_are_moved_to_the_requested_device():
    w, m = sample_mixing_weights(4, 3, gen(3), "meta")
    assert w.device.type == "meta" and m.device.type == "meta" and w.dtype == torch.float32


def test_base_image_is_the_clean_view_rounded_and_clamped_to_8_bits(monkeypatch):
    # a standard augmentation whose output leaves [0, 1] (or is not on the 8-bit grid) is brought back to it
    values = torch.tensor([-7.0, -0.4, 0.4, 12.6, 254.4, 255.0, 262.0, 300.0]).view(1, 1, 2, 4).repeat(2, 3, 1, 1)
    views = AugMixViews(lambda images, g: (values / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1),
                        MEAN, STD)
    seen = []
    monkeypatch.setattr(views, "augmix", lambda base, generator, count=1: seen.append(base) or [base, base])
    views(torch.zeros(2, 3, 2, 4, dtype=torch.uint8), gen())
    expected = torch.tensor([0.0, 0.0, 0.0, 13.0, 254.0, 255.0, 255.0, 255.0]).view(1, 1, 2, 4)
    assert torch.equal(seen[0], expected.expand(2, 3, 2, 4))
