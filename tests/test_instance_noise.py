"""Instance-dependent label noise (Xia et al. 2020): equal to the official generator, rate-controlled,
and dependent on the image."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from robustlab.corruptions.instance import expected_instance_rate, instance_dependent_labels, instance_transition_rows
from robustlab.errors import UsageError


def official_get_instance_noisy_label(n, images, labels, num_classes, norm_std, seed):
    """The official tools.get_instance_noisy_label, sample by sample, with numpy in place of CUDA torch."""
    np.random.seed(int(seed))
    flip_distribution = stats.truncnorm((0 - n) / norm_std, (1 - n) / norm_std, loc=n, scale=norm_std)
    flip_rate = flip_distribution.rvs(labels.shape[0])
    feature_size = images[0].size
    w = np.random.randn(num_classes, feature_size, num_classes)
    p = []
    for i, (x, y) in enumerate(zip(images, labels)):
        a = x.reshape(1, -1).astype(np.float64) @ w[y]
        a = a[0]
        a[y] = -np.inf
        a = np.exp(a - a.max())
        a = flip_rate[i] * a / a.sum()
        a[y] += 1 - flip_rate[i]
        p.append(a)
    return np.array([np.random.choice(list(range(num_classes)), p=p[i]) for i in range(len(labels))])


def _data(n: int, shape=(3, 4, 4), classes: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8), rng.integers(0, classes, size=n)


def test_equals_the_official_generator():
    images, labels = _data(400)
    for rate, seed in ((0.2, 0), (0.4, 7)):
        ours = instance_dependent_labels(images, labels, 10, rate, seed)
        np.testing.assert_array_equal(ours, official_get_instance_noisy_label(rate, images, labels, 10, 0.1, seed))


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_realised_rate_is_the_flip_rate_mean(rate):
    images, labels = _data(20_000, shape=(12,))
    noisy = instance_dependent_labels(images, labels, 10, rate, seed=1)
    realised = np.mean(noisy != labels)
    assert realised == pytest.approx(expected_instance_rate(rate), abs=0.012)
    assert realised == pytest.approx(rate, abs=0.02)  # the truncated-normal mean stays near the nominal rate
    assert expected_instance_rate(0.2) == pytest.approx(0.2 + 0.1 * stats.norm.pdf(2) / (1 - stats.norm.cdf(-2)), abs=1e-4)


def test_flips_go_where_the_image_projects_most():
    images, labels = _data(3000, shape=(3, 4, 4))
    probs, _ = instance_transition_rows(images, labels, 10, 0.4, seed=3)
    rs = np.random.RandomState(3)  # re-draw W exactly as the generator does
    _ = stats.truncnorm(-4, 6, loc=0.4, scale=0.1).rvs(len(labels), random_state=rs)
    w = rs.randn(10, images[0].size, 10)
    logits = np.einsum("nd,ndc->nc", images.reshape(len(images), -1).astype(np.float64), w[labels])
    logits[np.arange(len(labels)), labels] = -np.inf
    target = logits.argmax(axis=1)
    noisy = instance_dependent_labels(images, labels, 10, 0.4, seed=3)
    flipped = noisy != labels
    assert np.mean(noisy[flipped] == target[flipped]) > 0.97  # raw pixels: the softmax is nearly one-hot
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert np.all(probs[np.arange(len(labels)), labels] >= 0)
    # not class-conditional: one class's flipped labels spread over many classes, by image
    cat = flipped & (labels == 3)
    assert len(np.unique(noisy[cat])) >= 5


def test_same_image_same_distribution_other_image_other_target():
    images, labels = _data(200)
    images[1], labels[1] = images[0], labels[0]  # a duplicate
    probs, _ = instance_transition_rows(images, labels, 10, 0.3, seed=0)
    off = probs.copy()
    off[np.arange(len(labels)), labels] = 0
    # duplicates share where they flip to (their own flip rate differs)
    assert off[0].argmax() == off[1].argmax()
    changed = images.copy()
    changed[0] = 255 - changed[0]
    probs2, _ = instance_transition_rows(changed, labels, 10, 0.3, seed=0)
    np.testing.assert_array_equal(probs2[2:], probs[2:])  # others untouched
    assert not np.allclose(probs2[0], probs[0])


def test_seeded_and_validated():
    images, labels = _data(500)
    a = instance_dependent_labels(images, labels, 10, 0.3, seed=4)
    np.testing.assert_array_equal(a, instance_dependent_labels(images, labels, 10, 0.3, seed=4))
    assert np.mean(a != instance_dependent_labels(images, labels, 10, 0.3, seed=5)) > 0.2
    for bad in (0.0, 1.0):
        with pytest.raises(UsageError, match=r"rate in \(0, 1\)"):
            instance_dependent_labels(images, labels, 10, bad)
    with pytest.raises(UsageError, match="labels must lie"):
        instance_dependent_labels(images, labels + 10, 10, 0.3)
