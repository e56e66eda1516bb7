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


# ---------------------------------------------------------------------------------------------
# the pieces: flip-rate distribution, chunking, the categorical draw, inputs


import re  # noqa: E402

import torch  # noqa: E402

from robustlab.corruptions import instance  # noqa: E402


def _exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def _truncated_normal_mean(mu: float, sigma: float) -> float:
    """Mean of N(mu, sigma) truncated to [0, 1], by the textbook formula."""
    a, b = (0 - mu) / sigma, (1 - mu) / sigma
    return mu + sigma * (stats.norm.pdf(a) - stats.norm.pdf(b)) / (stats.norm.cdf(b) - stats.norm.cdf(a))


def test_expected_rate_is_the_truncated_normal_mean_on_0_1():
    assert instance.NORM_STD == 0.1
    for rate, std in ((0.1, 0.1), (0.2, 0.1), (0.5, 0.1), (0.95, 0.1), (0.9, 0.3), (0.05, 0.2)):
        assert instance.expected_instance_rate(rate, std) == pytest.approx(_truncated_normal_mean(rate, std), abs=1e-12)
    assert instance.expected_instance_rate(0.1) == pytest.approx(0.129, abs=5e-4)  # the docstring's figures
    assert instance.expected_instance_rate(0.2) == pytest.approx(0.2055, abs=5e-4)
    assert isinstance(instance.expected_instance_rate(0.3), float)


def test_flip_rates_are_drawn_on_0_1_with_the_given_spread():
    images, labels = _data(4000, shape=(2,))
    for rate, std in ((0.9, 0.3), (0.1, 0.3)):
        probs, _ = instance_transition_rows(images, labels, 10, rate, seed=0, norm_std=std)
        q = 1 - probs[np.arange(len(labels)), labels]  # each sample's own flip rate
        assert q.min() >= 0 and q.max() <= 1
        assert q.mean() == pytest.approx(_truncated_normal_mean(rate, std), abs=0.015)
        a, b = (0 - rate) / std, (1 - rate) / std
        assert q.std() == pytest.approx(stats.truncnorm(a, b, loc=rate, scale=std).std(), abs=0.01)


def test_norm_std_is_passed_through_to_the_official_draw():
    images, labels = _data(300)
    ours = instance_dependent_labels(images, labels, 10, 0.5, 3, norm_std=0.25)
    np.testing.assert_array_equal(ours, official_get_instance_noisy_label(0.5, images, labels, 10, 0.25, 3))


def test_chunked_products_equal_the_official_draw(monkeypatch):
    images, labels = _data(250, classes=4)
    expected = official_get_instance_noisy_label(0.4, images, labels, 4, 0.1, 11)
    for chunk in (1, 7, 64):  # many chunks per class, a last short one
        monkeypatch.setattr(instance, "_CHUNK", chunk)
        np.testing.assert_array_equal(instance_dependent_labels(images, labels, 4, 0.4, 11), expected)


def test_probabilities_by_hand_for_two_samples():
    images = np.array([[1.0, 0.0], [0.0, 2.0]])  # small features: the softmax is not one-hot
    labels = np.array([0, 2])
    probs, rs = instance_transition_rows(images, labels, 3, 0.3, seed=5)
    ref = np.random.RandomState(5)
    q = stats.truncnorm(-3, 7, loc=0.3, scale=0.1).rvs(2, random_state=ref)
    w = ref.randn(3, 2, 3)
    for i, (x, y) in enumerate(zip(images, labels)):
        logits = x @ w[y]
        others = [k for k in range(3) if k != y]
        soft = np.exp(logits[others]) / np.exp(logits[others]).sum()
        expected = np.zeros(3)
        expected[others] = q[i] * soft
        expected[y] = 1 - q[i]
        np.testing.assert_allclose(probs[i], expected, rtol=1e-12)
    assert rs.random_sample() == ref.random_sample()  # the generator is handed back right after W


def test_large_pixel_values_do_not_overflow():
    images = np.full((5, 3, 8, 8), 255, dtype=np.uint8)  # logits in the thousands
    labels = np.arange(5)
    probs, _ = instance_transition_rows(images, labels, 5, 0.3, seed=1)
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_sample_rows_is_np_random_choice():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(6) * 0.5, size=500)
    probs[:50, -2:] = 0  # trailing zeros: never drawn
    probs[:50] /= probs[:50].sum(axis=1, keepdims=True)
    u = np.random.RandomState(4).random_sample(500)
    ref = np.random.RandomState(4)
    expected = [ref.choice(6, p=p) for p in probs]
    got = instance.sample_rows(probs, u)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int64 and got[:50].max() < 4
    # rows are read relative to their total, as choice's own normalisation does
    np.testing.assert_array_equal(instance.sample_rows(probs * 0.5, u), expected)
    # boundaries: u equal to a CDF value goes to the next class (searchsorted side="right")
    np.testing.assert_array_equal(instance.sample_rows(np.array([[0.25, 0.25, 0.5]] * 4), np.array([0.0, 0.25, 0.5, 0.999])),
                                  [0, 1, 2, 2])


def test_tensor_inputs_and_feature_vectors():
    images, labels = _data(120, shape=(6,))  # (N, D) feature vectors are accepted as they are
    expected = official_get_instance_noisy_label(0.3, images, labels, 10, 0.1, 2)
    np.testing.assert_array_equal(instance_dependent_labels(torch.from_numpy(images), torch.from_numpy(labels), 10, 0.3, 2),
                                  expected)
    np.testing.assert_array_equal(instance_dependent_labels(images, list(labels), 10, 0.3, 2), expected)
    assert instance_dependent_labels(images, labels, 10, 0.3, 2).dtype == np.int64


def test_input_errors_have_their_own_message():
    images, labels = _data(10)
    with pytest.raises(UsageError, match=_exact("instance noise needs a rate in (0, 1), got 0.0")):
        instance_transition_rows(images, labels, 10, 0.0, 0)
    with pytest.raises(UsageError, match=_exact("instance noise needs a rate in (0, 1), got 1")):
        instance_transition_rows(images, labels, 10, 1, 0)
    for std in (0, -0.1):
        with pytest.raises(UsageError, match=_exact(f"norm_std must be > 0, got {std}")):
            instance_transition_rows(images, labels, 10, 0.3, 0, norm_std=std)
    with pytest.raises(UsageError, match=_exact("instance noise needs one feature vector or image per sample, got shape (10,)")):
        instance_transition_rows(np.zeros(10), labels, 10, 0.3, 0)
    with pytest.raises(UsageError, match=_exact("10 images but 9 labels")):
        instance_transition_rows(images, labels[:9], 10, 0.3, 0)
    for bad in ([-1], [10]):  # one sample is enough to be checked
        with pytest.raises(UsageError, match=_exact("labels must lie in [0, 10)")):
            instance_transition_rows(images[:1], np.array(bad), 10, 0.3, 0)
    probs, _ = instance_transition_rows(images[:2], np.array([0, 9]), 10, 0.3, 0)  # 0 and C - 1 are labels
    assert probs.shape == (2, 10)


def test_defaults_are_seed_0_and_the_official_norm_std():
    images, labels = _data(200)
    expected = official_get_instance_noisy_label(0.35, images, labels, 10, 0.1, 0)
    np.testing.assert_array_equal(instance_dependent_labels(images, labels, 10, 0.35), expected)
    probs, _ = instance_transition_rows(images, labels, 10, 0.35, seed=0)
    np.testing.assert_array_equal(probs, instance_transition_rows(images, labels, 10, 0.35, 0, norm_std=0.1)[0])
    assert instance.expected_instance_rate(0.35) == instance.expected_instance_rate(0.35, 0.1)


def test_images_may_be_a_tensor_that_requires_grad():
    images, labels = _data(60, shape=(5,))
    x = torch.tensor(images, dtype=torch.float64, requires_grad=True)  # np.asarray alone would refuse it
    np.testing.assert_array_equal(instance_dependent_labels(x, labels, 10, 0.3, 1),
                                  official_get_instance_noisy_label(0.3, images.astype(np.float64), labels, 10, 0.1, 1))
