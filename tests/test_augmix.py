"""AugMix: the JS consistency loss, the mixing, the operations against PIL, and the three views."""
from __future__ import annotations


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
