import json

import numpy as np
import pytest
import torch

from robustlab.corruptions import (
    CIFAR100_FINE_TO_COARSE,
    NOISE_TYPES,
    asymmetric_class_map,
    corrupt_labels,
    noise_report,
    transition_matrix,
)
from robustlab.errors import UsageError

N = 50_000
BALANCED_10 = np.arange(N) % 10
BALANCED_100 = np.arange(N) % 100
TOLERANCE = 0.015  # realized rates must be within 1.5 points of expectation


def realized(clean, noisy) -> float:
    return float(np.mean(np.asarray(clean) != np.asarray(noisy)))


# ---------------------------------------------------------------------------------------------
# realized rates


@pytest.mark.parametrize(
    "noise, classes, rate, expected",
    [
        ("symmetric", 10, 0.4, 0.4),
        ("symmetric", 10, 0.8, 0.8),
        ("uniform", 10, 0.5, 0.5 * 9 / 10),
        ("uniform", 10, 0.8, 0.8 * 9 / 10),
        ("pair", 10, 0.45, 0.45),
        ("asymmetric", 10, 0.4, 0.4 * 5 / 10),  # 5 of the 10 CIFAR-10 classes have a partner
        ("asymmetric", 100, 0.4, 0.4),  # every CIFAR-100 class moves within its superclass
    ],
)
def test_realized_rate_matches_expectation(noise, classes, rate, expected):
    clean = BALANCED_10 if classes == 10 else BALANCED_100
    noisy = corrupt_labels(clean, classes, noise=noise, rate=rate, seed=1)
    assert abs(realized(clean, noisy) - expected) < TOLERANCE
    # the expected transition matrix predicts the same rate on balanced classes
    t = transition_matrix(noise, classes, rate)
    assert np.isclose(1 - np.trace(t) / classes, expected)


def test_uniform_replaces_exactly_the_requested_fraction():
    # with 10 classes, 1/10 of the redrawn labels land on their own class again
    clean = BALANCED_10
    noisy = corrupt_labels(clean, 10, noise="uniform", rate=0.5, seed=3)
    changed = realized(clean, noisy)
    assert 0.45 - TOLERANCE < changed < 0.45 + TOLERANCE
    assert changed < 0.5  # never more than the replaced fraction


# ---------------------------------------------------------------------------------------------
# where the flips go


def test_symmetric_flips_never_stay_and_spread_uniformly():
    clean = BALANCED_10
    noisy = corrupt_labels(clean, 10, noise="symmetric", rate=0.6, seed=0)
    report = noise_report(clean, noisy, 10)
    t = report.transition
    # every off-diagonal entry ~ 0.6 / 9 = 0.0667, the diagonal ~ 0.4
    off = t[~np.eye(10, dtype=bool)]
    assert np.all(np.abs(off - 0.6 / 9) < 0.012)
    assert np.all(np.abs(np.diag(t) - 0.4) < 0.03)
    # flips that could land on the true class would leave only 0.6 * 9/10 = 0.54 changed
    assert abs(report.realized_rate - 0.6) < TOLERANCE
    assert np.allclose(t, transition_matrix("symmetric", 10, 0.6), atol=0.03)


def test_pair_maps_to_next_class_only():
    clean = BALANCED_10
    noisy = corrupt_labels(clean, 10, noise="pair", rate=0.3, seed=0)
    changed = noisy != clean
    assert changed.any()
    assert np.array_equal(noisy[changed], (clean[changed] + 1) % 10)


def test_asymmetric_cifar10_map_is_the_standard_one():
    expected = np.array([0, 1, 0, 5, 7, 3, 6, 7, 8, 1])  # truck->automobile, bird->airplane, deer->horse, cat<->dog
    assert np.array_equal(asymmetric_class_map(10), expected)
    clean = BALANCED_10
    noisy = corrupt_labels(clean, 10, noise="asymmetric", rate=0.4, seed=0)
    changed = noisy != clean
    assert np.array_equal(noisy[changed], expected[clean[changed]])
    assert set(np.unique(clean[changed])) == {2, 3, 4, 5, 9}
    for c in (2, 3, 4, 5, 9):
        assert abs(np.mean(noisy[clean == c] != c) - 0.4) < 0.03


def test_cifar100_table_has_20_superclasses_of_5():
    table = np.asarray(CIFAR100_FINE_TO_COARSE)
    assert table.shape == (100,)
    assert np.array_equal(np.bincount(table), np.full(20, 5))
    # spot checks by name: apple/mushroom/orange/pear/sweet_pepper are fruit_and_vegetables (4),
    # beaver/dolphin/otter/seal/whale are aquatic_mammals (0)
    assert table[[0, 51, 53, 57, 83]].tolist() == [4] * 5
    assert table[[4, 30, 55, 72, 95]].tolist() == [0] * 5


def test_asymmetric_cifar100_moves_within_superclass_circularly():
    target = asymmetric_class_map(100)
    # aquatic mammals (fine 4, 30, 55, 72, 95) form the cycle 4->30->55->72->95->4
    assert [target[i] for i in (4, 30, 55, 72, 95)] == [30, 55, 72, 95, 4]
    table = np.asarray(CIFAR100_FINE_TO_COARSE)
    assert np.array_equal(table[target], table)
    assert np.all(target != np.arange(100))

    clean = BALANCED_100
    noisy = corrupt_labels(clean, 100, noise="asymmetric", rate=0.4, seed=0)
    changed = noisy != clean
    assert np.array_equal(noisy[changed], target[clean[changed]])


def test_asymmetric_with_given_coarse_labels():
    # 6 classes in superclasses {0, 2, 4} and {1, 3}; class 5 alone never flips
    table = [0, 1, 0, 1, 0, 2]
    assert asymmetric_class_map(6, table).tolist() == [2, 3, 4, 1, 0, 5]
    clean = np.arange(6000) % 6
    per_sample = np.asarray(table)[clean]
    from_table = corrupt_labels(clean, 6, noise="asymmetric", rate=0.5, seed=2, coarse_labels=table)
    from_samples = corrupt_labels(clean, 6, noise="asymmetric", rate=0.5, seed=2, coarse_labels=per_sample)
    assert np.array_equal(from_table, from_samples)
    changed = from_table != clean
    assert np.array_equal(from_table[changed], np.array([2, 3, 4, 1, 0, 5])[clean[changed]])
    assert not changed[clean == 5].any()
    t = transition_matrix("asymmetric", 6, 0.5, coarse_labels=table)
    assert t[0, 2] == 0.5 and t[0, 0] == 0.5 and t[5, 5] == 1.0


# ---------------------------------------------------------------------------------------------
# expected transition matrices


def test_transition_matrices_by_hand():
    assert np.allclose(transition_matrix("symmetric", 3, 0.3), [[0.7, 0.15, 0.15], [0.15, 0.7, 0.15], [0.15, 0.15, 0.7]])
    assert np.allclose(transition_matrix("uniform", 3, 0.3), [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    assert np.allclose(transition_matrix("pair", 3, 0.3), [[0.7, 0.3, 0.0], [0.0, 0.7, 0.3], [0.3, 0.0, 0.7]])
    for noise in NOISE_TYPES:
        assert np.allclose(transition_matrix(noise, 10, 0.25).sum(axis=1), 1.0)


# ---------------------------------------------------------------------------------------------
# determinism, containers, identity


@pytest.mark.parametrize("noise", NOISE_TYPES)
def test_same_seed_same_labels_different_seed_different(noise):
    clean = BALANCED_10[:5000]
    a = corrupt_labels(clean, 10, noise=noise, rate=0.3, seed=7)
    b = corrupt_labels(clean, 10, noise=noise, rate=0.3, seed=7)
    c = corrupt_labels(clean, 10, noise=noise, rate=0.3, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_container_type_shape_and_dtype_are_kept():
    clean_np = (np.arange(24) % 10).reshape(4, 6).astype(np.int32)
    out_np = corrupt_labels(clean_np, 10, rate=0.5)
    assert isinstance(out_np, np.ndarray) and out_np.shape == (4, 6) and out_np.dtype == np.int64

    clean_t = torch.arange(24).reshape(4, 6) % 10
    out_t = corrupt_labels(clean_t, 10, rate=0.5)
    assert isinstance(out_t, torch.Tensor) and out_t.shape == (4, 6) and out_t.dtype == torch.int64
    # same seed, same result whatever the container
    assert np.array_equal(out_t.numpy(), out_np)

    out_list = corrupt_labels(clean_np.reshape(-1).tolist(), 10, rate=0.5)
    assert isinstance(out_list, list) and out_list == out_np.reshape(-1).tolist()


@pytest.mark.parametrize("noise", NOISE_TYPES)
def test_rate_zero_is_identity(noise):
    clean = BALANCED_10[:1000]
    assert np.array_equal(corrupt_labels(clean, 10, noise=noise, rate=0.0), clean)


def test_input_is_not_modified():
    clean = torch.arange(100) % 10
    before = clean.clone()
    corrupt_labels(clean, 10, rate=0.9)
    assert torch.equal(clean, before)


# ---------------------------------------------------------------------------------------------
# noise report


def test_noise_report_by_hand():
    clean = [0, 0, 0, 0, 1, 1, 2, 2]
    noisy = [0, 0, 1, 2, 1, 0, 2, 2]
    report = noise_report(clean, noisy, 3)
    assert report.realized_rate == pytest.approx(3 / 8)
    expected = np.array([[0.5, 0.25, 0.25], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert np.allclose(report.transition, expected)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["realized_rate"] == pytest.approx(0.375)
    assert np.allclose(d["transition"], expected)


def test_noise_report_absent_class_has_zero_row():
    report = noise_report(np.array([0, 1]), np.array([1, 1]), 3)
    assert np.allclose(report.transition, [[0, 1, 0], [0, 1, 0], [0, 0, 0]])
    assert report.realized_rate == 0.5


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rate=1.0), "rate"),
        (dict(rate=-0.1), "rate"),
        (dict(noise="gaussian"), "symmetric, uniform, pair, asymmetric"),
        (dict(num_classes=1), "num_classes"),
        (dict(labels=[0, 1, 10]), r"\[0, 10\)"),
        (dict(labels=[-1, 0]), r"\[0, 10\)"),
        (dict(labels=[0.5, 1.0]), "integers"),
        (dict(num_classes=7, noise="asymmetric"), "coarse_labels"),
        (dict(noise="asymmetric", coarse_labels=[0, 1, 2]), "coarse_labels"),
        (dict(labels=[0, 0, 1], noise="asymmetric", coarse_labels=[0, 1, 1]), "two superclasses"),
    ],
)
def test_bad_input_raises_usage_error(kwargs, match):
    args = dict(labels=[0, 1, 2, 3], num_classes=10, noise="symmetric", rate=0.3)
    args.update(kwargs)
    labels = args.pop("labels")
    num_classes = args.pop("num_classes")
    with pytest.raises(UsageError, match=match):
        corrupt_labels(labels, num_classes, **args)


def test_noise_report_errors():
    with pytest.raises(UsageError, match="length"):
        noise_report([0, 1], [0], 2)
    with pytest.raises(UsageError, match=r"\[0, 2\)"):
        noise_report([0, 2], [0, 1], 2)


# ---------------------------------------------------------------------------------------------
# class-conditional noise from a given transition matrix (the "transition twin")


def _random_transition(c: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.random((c, c)) ** 3 + np.eye(c) * 2  # mostly kept, uneven confusions
    return t / t.sum(axis=1, keepdims=True)


def test_transition_noise_reproduces_the_matrix():
    from robustlab.corruptions.labels import corrupt_with_transition

    t = _random_transition(10, 0)
    clean = np.arange(200_000) % 10
    noisy = corrupt_with_transition(clean, t, seed=1)
    got = noise_report(clean, noisy, 10).transition
    assert np.abs(got - t).max() < 0.006  # 20,000 draws per row
    np.testing.assert_allclose(1 - np.diag(got), 1 - np.diag(t), atol=0.006)  # off-diagonal mass per row
    np.testing.assert_array_equal(noisy, corrupt_with_transition(clean, t, seed=1))
    assert np.mean(noisy != corrupt_with_transition(clean, t, seed=2)) > 0.2
    # a matrix that never moves a label, and one that always moves class i to i+1
    np.testing.assert_array_equal(corrupt_with_transition(clean[:100], np.eye(10)), clean[:100])
    shift = np.roll(np.eye(10), 1, axis=1)
    np.testing.assert_array_equal(corrupt_with_transition(clean[:100], shift), (clean[:100] + 1) % 10)


def test_transition_noise_rejects_bad_matrices():
    from robustlab.corruptions.labels import corrupt_with_transition

    with pytest.raises(UsageError, match="square"):
        corrupt_with_transition([0, 1], np.ones((2, 3)) / 3)
    with pytest.raises(UsageError, match="probability distribution"):
        corrupt_with_transition([0, 1], np.array([[0.5, 0.4], [0.0, 1.0]]))
    with pytest.raises(UsageError, match="must lie in"):
        corrupt_with_transition([0, 2], np.eye(2))


def test_transition_heatmaps_show_the_matrices():
    from robustlab.corruptions.plots import plot_transition_matrices

    a, b = _random_transition(4, 0), np.eye(4)
    fig = plot_transition_matrices([("human", a), ("twin", b)], ["w", "x", "y", "z"])
    heatmaps = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title().splitlines()[0] for ax in heatmaps] == ["human", "twin"]
    np.testing.assert_allclose(np.asarray(heatmaps[0].collections[0].get_array()).reshape(4, 4), a)
    assert f"{1 - np.trace(a) / 4:.3f}" in heatmaps[0].get_title()
    assert [t.get_text() for t in heatmaps[1].get_yticklabels()] == ["w", "x", "y", "z"]
    with pytest.raises(UsageError, match="one size"):
        plot_transition_matrices([("a", a), ("b", np.eye(3))])


# ---- every noise model's full transition matrix -----------------------------------------------

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# The CIFAR-100 superclasses and their fine classes (the dataset's meta file, Krizhevsky 2009).
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}


def _cifar100_coarse_of_fine() -> list[int]:
    """Fine labels in alphabetical order (CIFAR-100's), superclass indices in alphabetical order."""
    fine = sorted(f for members in CIFAR100_SUPERCLASSES.values() for f in members)
    coarse_names = sorted(CIFAR100_SUPERCLASSES)
    return [coarse_names.index(next(c for c, m in CIFAR100_SUPERCLASSES.items() if f in m)) for f in fine]


def test_cifar100_fine_to_coarse_table_entry_by_entry():
    expected = _cifar100_coarse_of_fine()
    assert len(expected) == 100
    assert list(CIFAR100_FINE_TO_COARSE) == expected


def _expected_cifar10_asymmetric(rate: float) -> np.ndarray:
    flips = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
    t = np.eye(10)
    for src, dst in flips.items():
        i, j = CIFAR10_NAMES.index(src), CIFAR10_NAMES.index(dst)
        t[i, i], t[i, j] = 1 - rate, rate
    return t


def _expected_cifar100_asymmetric(rate: float) -> np.ndarray:
    coarse = np.array(_cifar100_coarse_of_fine())
    t = np.zeros((100, 100))
    for i in range(100):
        members = [f for f in range(100) if coarse[f] == coarse[i]]  # increasing fine index
        t[i, i] = 1 - rate
        t[i, members[(members.index(i) + 1) % 5]] = rate
    return t


def _expected(noise: str, c: int, rate: float) -> np.ndarray:
    t = np.empty((c, c))
    for i in range(c):
        for j in range(c):
            if noise == "symmetric":
                t[i, j] = 1 - rate if i == j else rate / (c - 1)
            elif noise == "uniform":
                t[i, j] = 1 - rate + rate / c if i == j else rate / c
            elif noise == "pair":
                t[i, j] = 1 - rate if i == j else (rate if j == (i + 1) % c else 0.0)
    return t


@pytest.mark.parametrize("noise, c, rate", [("symmetric", 10, 0.4), ("symmetric", 4, 0.3), ("uniform", 10, 0.5),
                                            ("uniform", 5, 0.2), ("pair", 10, 0.45), ("pair", 3, 0.2)])
def test_transition_matrix_entry_by_entry(noise, c, rate):
    np.testing.assert_allclose(transition_matrix(noise, c, rate), _expected(noise, c, rate), atol=1e-12)


def test_asymmetric_transition_matrices_entry_by_entry():
    np.testing.assert_allclose(transition_matrix("asymmetric", 10, 0.4), _expected_cifar10_asymmetric(0.4), atol=1e-12)
    np.testing.assert_allclose(transition_matrix("asymmetric", 100, 0.3), _expected_cifar100_asymmetric(0.3), atol=1e-12)
    # with a given fine->coarse table: superclasses {0, 2, 3} and {1, 4}; class 5 alone never flips
    t = transition_matrix("asymmetric", 6, 0.2, coarse_labels=[7, 9, 7, 7, 9, 8])
    expected = np.eye(6)
    for i, j in ((0, 2), (2, 3), (3, 0), (1, 4), (4, 1)):
        expected[i, i], expected[i, j] = 0.8, 0.2
    np.testing.assert_allclose(t, expected, atol=1e-12)


@pytest.mark.parametrize("noise, c, rate, expected", [
    ("symmetric", 10, 0.4, _expected("symmetric", 10, 0.4)),
    ("uniform", 10, 0.5, _expected("uniform", 10, 0.5)),
    ("pair", 10, 0.45, _expected("pair", 10, 0.45)),
    ("asymmetric", 10, 0.4, _expected_cifar10_asymmetric(0.4)),
])
def test_corrupted_labels_follow_the_full_expected_matrix(noise, c, rate, expected):
    clean = np.arange(100_000) % c
    noisy = corrupt_labels(clean, c, noise, rate, seed=3)
    np.testing.assert_allclose(noise_report(clean, noisy, c).transition, expected, atol=0.012)


def test_cifar100_asymmetric_labels_follow_the_superclass_table():
    clean = np.arange(200_000) % 100
    noisy = np.asarray(corrupt_labels(clean, 100, "asymmetric", 0.3, seed=4))
    np.testing.assert_allclose(noise_report(clean, noisy, 100).transition, _expected_cifar100_asymmetric(0.3),
                               atol=0.03)
    partner = np.array([np.flatnonzero(row == 0.3)[0] for row in _expected_cifar100_asymmetric(0.3)])
    moved = noisy != clean
    assert np.array_equal(noisy[moved], partner[clean[moved]])  # every flip hits the class's one partner


def test_uniform_noise_redraws_exactly_round_rate_n_labels():
    clean = np.zeros(1000, dtype=np.int64)
    for rate, n_redrawn in ((0.25, 250), (0.0015, 2)):  # round(1.5) = 2
        noisy = np.asarray(corrupt_labels(clean, 1000, "uniform", rate, seed=0))
        # with 1000 classes a redraw keeps the label with probability 1/1000: almost all redraws show
        assert n_redrawn - 2 <= int((noisy != clean).sum()) <= n_redrawn


def test_per_sample_coarse_labels_leave_absent_classes_in_place():
    # classes 4 and 5 never occur: their superclass is unknown, so they map to themselves
    labels = [0, 1, 2, 3, 0, 2]
    coarse = [8, 9, 8, 9, 8, 8]
    assert asymmetric_class_map(6, coarse_labels=coarse, labels=labels).tolist() == [2, 3, 0, 1, 4, 5]


@pytest.mark.parametrize("kwargs, message", [
    ({"coarse_labels": [-1, 0, 0, 0, 0, 0]}, "coarse_labels must lie in [0, 9223372036854775807), found values in [-1, 0]"),
    ({"coarse_labels": [0, 1, 2]}, "coarse_labels must have one entry per sample (?) or one per class (6), got 3"),
    ({"coarse_labels": [0, 1, 2], "labels": [0, 1, 2, 3, 4]},
     "coarse_labels must have one entry per sample (5) or one per class (6), got 3"),
    ({"coarse_labels": [0, 1, 2], "labels": [0, 0, 1]},
     "coarse_labels read per sample give some fine class two superclasses; pass a length-6 fine->coarse table instead"),
])
def test_bad_coarse_labels_have_their_own_message(kwargs, message):
    with pytest.raises(UsageError) as info:
        asymmetric_class_map(6, **kwargs)
    assert str(info.value) == message


def test_noise_report_as_a_dict():
    report = noise_report([0, 0, 1, 2], [0, 1, 1, 2], 3).to_dict()
    assert report == {"realized_rate": 0.25, "num_classes": 3,
                      "transition": [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]}


def test_two_classes_of_one_superclass_swap():
    assert asymmetric_class_map(2, coarse_labels=[5, 5]).tolist() == [1, 0]


def test_asymmetric_noise_without_a_map_names_what_is_missing():
    with pytest.raises(UsageError) as info:
        asymmetric_class_map(7)
    assert str(info.value) == ("asymmetric noise needs coarse_labels for 7 classes "
                               "(built-in maps exist for CIFAR-10 and CIFAR-100 only)")
    with pytest.raises(UsageError) as info:
        asymmetric_class_map(1)
    assert str(info.value) == "num_classes must be an integer >= 2, got 1"


def test_corrupt_labels_defaults_are_symmetric_30_percent_seed_0():
    clean = np.arange(1000) % 10
    assert np.array_equal(corrupt_labels(clean, 10), corrupt_labels(clean, 10, "symmetric", 0.3, 0))


def test_transition_sampling_never_leaves_the_classes_when_a_row_sums_just_below_one():
    from robustlab.corruptions.labels import corrupt_with_transition

    t = [[0.5, 0.49999], [0.0, 1.0]]  # row 0 sums to 1 - 1e-5 (within tolerance): u can exceed its cdf
    noisy = corrupt_with_transition(np.zeros(1_000_000, dtype=np.int64), t, seed=0)
    assert noisy.max() == 1 and noisy.min() == 0


def test_transition_sampling_errors_name_the_problem():
    from robustlab.corruptions.labels import corrupt_with_transition

    with pytest.raises(UsageError) as info:
        corrupt_with_transition([0, 1], [[1.0, 0.0], [0.0, 1.0]], seed=1.5)
    assert str(info.value) == "seed must be an integer, got 1.5"
    with pytest.raises(UsageError) as info:
        corrupt_with_transition([0, 1], [[0.7, 0.7], [0.0, 1.0]])
    assert str(info.value) == ("every transition-matrix row of a class present in the labels must be a probability "
                               "distribution")


def test_two_classes_symmetric_noise_flips_to_the_other_class():
    clean = np.arange(20_000) % 2
    noisy = np.asarray(corrupt_labels(clean, 2, "symmetric", 0.25, seed=1))
    np.testing.assert_allclose(noise_report(clean, noisy, 2).transition, [[0.75, 0.25], [0.25, 0.75]], atol=0.015)


def test_label_containers_round_trip_nested_and_empty():
    nested = [[0, 1], [2, 3]]
    out = corrupt_labels(nested, 4, "pair", 0.0)
    assert out == nested and isinstance(out[0], list)
    assert corrupt_labels([], 10, "symmetric", 0.5) == []


@pytest.mark.parametrize("call, message", [
    (lambda: corrupt_labels([[0], [0, 1]], 2), "labels must be a list, numpy array or torch tensor of integers"),
    (lambda: corrupt_labels([0.5], 2), "labels must hold integers, got dtype float64"),
    (lambda: corrupt_labels([0, 1], 2, seed=0.5), "seed must be an integer, got 0.5"),
    (lambda: noise_report([0], [0], 1), "num_classes must be an integer >= 2, got 1"),
    (lambda: noise_report([0, 5], [0, 1], 3), "clean labels must lie in [0, 3), found values in [0, 5]"),
    (lambda: noise_report([0, 1], [0, -1], 3), "noisy labels must lie in [0, 3), found values in [-1, 0]"),
    (lambda: noise_report([], [], 3), "noise_report needs at least one label"),
])
def test_label_input_errors_have_their_own_message(call, message):
    with pytest.raises(UsageError) as info:
        call()
    assert str(info.value) == message


def test_noise_report_of_a_single_label():
    report = noise_report([0], [1], 2)
    assert report.realized_rate == 1.0 and report.transition.tolist() == [[0.0, 1.0], [0.0, 0.0]]
