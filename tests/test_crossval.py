"""K-fold out-of-fold probabilities (robustlab.crossval): fold assignment, the out-of-fold guarantee
shown with a fake trainer that records what each fold model saw, per-fold resume and shards, and
the checks on probability files."""
from __future__ import annotations

import numpy as np
import pytest

from robustlab.crossval import (assign_folds, check_folds, check_probabilities, fold_path, fold_seconds, gather_aum,
                                gather_folds,
                                load_fold, load_pred_probs, missing_folds, run_folds, save_fold, shard_folds)
from robustlab.errors import UsageError

LABELS = np.array([0] * 7 + [1] * 5 + [2] * 9)  # unequal classes, smallest 5
C = 3


class RecordingTrainer:
    """Remembers the positions each fold model trained on and scored; its probabilities put
    0.5 + 0.1 * k on class k mod C, so every row tells which fold model produced it."""

    def __init__(self, fail_at: int | None = None):
        self.seen: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.fail_at = fail_at

    def __call__(self, k, train, heldout):
        if k == self.fail_at:
            raise RuntimeError("killed")
        self.seen[k] = (train.copy(), heldout.copy())
        p = np.full((len(heldout), C), (0.5 - 0.1 * k) / (C - 1))
        p[:, k % C] = 0.5 + 0.1 * k
        return p


def test_every_index_is_in_exactly_one_fold_and_classes_are_balanced():
    folds = assign_folds(LABELS, 4, seed=0)
    assert folds.shape == LABELS.shape and set(folds) == {0, 1, 2, 3}
    for c in range(C):
        per_fold = np.bincount(folds[LABELS == c], minlength=4)
        assert per_fold.max() - per_fold.min() <= 1  # each class spread as evenly as possible
        assert per_fold.sum() == (LABELS == c).sum()
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1  # 21 images over 4 folds: 6, 5, 5, 5


def test_folds_are_fixed_by_the_seed():
    a, b, c = assign_folds(LABELS, 3, seed=1), assign_folds(LABELS, 3, seed=1), assign_folds(LABELS, 3, seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("k, message", [(1, "--folds must be an integer >= 2, got 1"),
                                        (6, "--folds 6 is larger than the smallest class (5 images of class 1)")])
def test_bad_fold_counts(k, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_folds(LABELS, k)
    check_folds(LABELS, 5)  # the smallest class itself is allowed


def test_no_fold_model_sees_the_images_it_scores(tmp_path):
    folds = assign_folds(LABELS, 3, seed=0)
    trainer = RecordingTrainer()
    assert run_folds(folds, C, trainer, tmp_path) == [0, 1, 2]
    for k, (train, heldout) in trainer.seen.items():
        assert not set(train) & set(heldout)
        assert sorted([*train, *heldout]) == list(range(len(LABELS)))
        assert np.array_equal(heldout, np.flatnonzero(folds == k))
    probs = gather_folds(folds, C, tmp_path)
    # row i comes from the model of its own fold: the model that did not train on it
    np.testing.assert_allclose(probs[np.arange(len(LABELS)), folds % C], 0.5 + 0.1 * folds, rtol=1e-6)


def test_a_rerun_skips_finished_folds(tmp_path):
    folds = assign_folds(LABELS, 4, seed=0)
    with pytest.raises(RuntimeError):
        run_folds(folds, C, RecordingTrainer(fail_at=2), tmp_path)
    assert missing_folds(folds, C, tmp_path) == [2, 3]
    again = RecordingTrainer()
    assert run_folds(folds, C, again, tmp_path) == [2, 3]
    assert sorted(again.seen) == [2, 3]
    assert run_folds(folds, C, RecordingTrainer(fail_at=0), tmp_path) == []  # nothing left to train


def test_shards_split_the_folds(tmp_path):
    assert shard_folds(5, None) == [0, 1, 2, 3, 4]
    assert shard_folds(5, (0, 2)) == [0, 2, 4] and shard_folds(5, (1, 2)) == [1, 3]
    folds = assign_folds(LABELS, 4, seed=0)
    first = RecordingTrainer()
    run_folds(folds, C, first, tmp_path, shard=(1, 2))
    assert sorted(first.seen) == [1, 3]
    with pytest.raises(UsageError, match=r"fold\(s\) 0, 2 of 4 have not finished"):
        gather_folds(folds, C, tmp_path)
    run_folds(folds, C, RecordingTrainer(), tmp_path, shard=(0, 2))
    assert gather_folds(folds, C, tmp_path).shape == (len(LABELS), C)


def test_a_fold_file_of_another_split_is_refused(tmp_path):
    folds = assign_folds(LABELS, 3, seed=0)
    other = assign_folds(LABELS, 3, seed=5)
    heldout = np.flatnonzero(other == 0)
    save_fold(tmp_path, 0, heldout, np.full((len(heldout), C), 1 / C))
    with pytest.raises(UsageError, match="written for another fold split"):
        load_fold(tmp_path, 0, folds, C)
    fold_path(tmp_path, 1).write_bytes(b"not an npz")
    with pytest.raises(UsageError, match="is corrupt"):
        load_fold(tmp_path, 1, folds, C)


def test_a_trainer_returning_bad_probabilities_saves_nothing(tmp_path):
    folds = assign_folds(LABELS, 3, seed=0)
    with pytest.raises(UsageError, match="fold 0's predictions: every row must sum to 1"):
        run_folds(folds, C, lambda k, tr, ho: np.full((len(ho), C), 0.5), tmp_path)
    assert not fold_path(tmp_path, 0).exists()


@pytest.mark.parametrize("probs, message", [
    (np.full((4, 3), 1 / 3), r"expected probabilities of shape \(5, 3\), got \(4, 3\)"),
    (np.full((5, 3), 0.3), r"every row must sum to 1 \(row 0 sums to 0.9\)"),
    (np.array([[1.5, -0.5, 0.0]] * 5), "must be finite floats >= 0"),
    (np.full((5, 3), np.nan), "must be finite floats >= 0"),
    (np.ones((5, 3), dtype=np.int64), "must be finite floats >= 0"),
])
def test_bad_probability_arrays(probs, message):
    with pytest.raises(UsageError, match=message):
        check_probabilities(probs, 5, 3, "x")


def test_rows_within_the_tolerance_pass():
    p = np.full((5, 3), 1 / 3) + np.array([5e-4, 0, 0])
    assert check_probabilities(p, 5, 3, "x").dtype == np.float32
    ok = np.array([[1.0, 0.0, 0.0]] * 2 + [[0.0, 0.0, 1.0]] * 3)
    assert check_probabilities(ok, 5, 3, "x").shape == (5, 3)
    with pytest.raises(UsageError, match="row 0 sums to 1.002"):
        check_probabilities(np.full((5, 3), 1 / 3) + np.array([2e-3, 0, 0]), 5, 3, "x")


def test_load_pred_probs(tmp_path):
    good = tmp_path / "p.npy"
    np.save(good, np.full((5, 3), 1 / 3))
    assert load_pred_probs(good, 5, 3).shape == (5, 3)
    with pytest.raises(UsageError, match=r"--pred-probs .*p.npy: expected probabilities of shape \(6, 3\)"):
        load_pred_probs(good, 6, 3)
    bad = tmp_path / "bad.npy"
    bad.write_text("hello")
    with pytest.raises(UsageError, match="cannot read --pred-probs"):
        load_pred_probs(bad, 5, 3)


def test_fold_training_time_is_saved(tmp_path):
    import time

    def slow(k, train, heldout):
        time.sleep(0.05)
        return np.full((len(heldout), C), 1 / C)

    folds = assign_folds(LABELS, 2, seed=0)
    run_folds(folds, C, slow, tmp_path)
    assert 0.1 <= fold_seconds(tmp_path, 2) < 5.0
    assert fold_seconds(tmp_path / "none", 2) == 0.0


class AumTrainer(RecordingTrainer):
    """Also returns an AUM for each trained position: 10 * position + fold, so the mean over the
    fold models that trained on an image is 10 * position + (sum of the other folds) / (K - 1)."""

    def __call__(self, k, train, heldout):
        return super().__call__(k, train, heldout), 10.0 * train + k


def test_aum_is_the_mean_over_the_fold_models_that_trained_on_each_image(tmp_path):
    folds = assign_folds(LABELS, 3, seed=0)
    run_folds(folds, C, AumTrainer(), tmp_path)
    aum = gather_aum(folds, tmp_path)
    expected = 10.0 * np.arange(len(LABELS)) + (0 + 1 + 2 - folds) / 2
    np.testing.assert_allclose(aum, expected, rtol=1e-6)
    np.testing.assert_allclose(gather_folds(folds, C, tmp_path)[np.arange(len(LABELS)), folds % C], 0.5 + 0.1 * folds,
                               rtol=1e-6)  # the probabilities are saved as before


def test_no_aum_unless_every_fold_has_one(tmp_path):
    folds = assign_folds(LABELS, 3, seed=0)
    run_folds(folds, C, RecordingTrainer(), tmp_path)
    assert gather_aum(folds, tmp_path) is None  # trainers that return only probabilities
    mixed = tmp_path / "mixed"
    run_folds(folds, C, AumTrainer(), mixed, shard=(0, 2))
    assert gather_aum(folds, mixed) is None  # fold 1 missing
    run_folds(folds, C, RecordingTrainer(), mixed, shard=(1, 2))
    assert gather_aum(folds, mixed) is None  # fold 1 without AUM


@pytest.mark.parametrize("aum, message", [
    (lambda train: np.zeros(len(train) - 1), "fold 0's AUM: expected 14 finite values, got shape (13,)"),
    (lambda train: np.full(len(train), np.nan), "fold 0's AUM: expected 14 finite values"),
])
def test_a_trainer_returning_bad_aum_saves_nothing(tmp_path, aum, message):
    folds = assign_folds(LABELS, 3, seed=0)

    def trainer(k, train, heldout):
        return np.full((len(heldout), C), 1 / C), aum(train)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_folds(folds, C, trainer, tmp_path)
    assert not fold_path(tmp_path, 0).exists()


def test_a_fold_file_with_aum_of_another_size_is_refused(tmp_path):
    folds = assign_folds(LABELS, 3, seed=0)
    run_folds(folds, C, AumTrainer(), tmp_path)
    save_fold(tmp_path, 2, np.flatnonzero(folds == 2), np.full(((folds == 2).sum(), C), 1 / C), train_aum=np.zeros(3))
    with pytest.raises(UsageError, match="train_aum has 3 values, the fold trains on 14"):
        gather_aum(folds, tmp_path)


def test_fold_seconds_sum_the_saved_times_and_count_a_file_without_one_as_zero(tmp_path):
    folds = assign_folds(LABELS, 3, seed=0)
    for k in range(3):
        save_fold(tmp_path, k, np.flatnonzero(folds == k), np.full(((folds == k).sum(), C), 1 / C), seconds=2.5 * (k + 1))
    assert fold_seconds(tmp_path, 3) == pytest.approx(15.0)
    np.savez(fold_path(tmp_path, 1), heldout=np.flatnonzero(folds == 1), probs=np.full(((folds == 1).sum(), C), 1 / C))
    assert fold_seconds(tmp_path, 3) == pytest.approx(10.0)  # fold 1 has no time: 0


def test_pred_probs_with_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "p.npy"
    np.save(path, np.array([{"not": "numbers"}] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(UsageError, match="cannot read --pred-probs .* as a .npy array"):
        load_pred_probs(path, 3, C)


def test_gathered_probabilities_are_float32(tmp_path):
    folds = assign_folds(LABELS, 3, seed=0)
    run_folds(folds, C, RecordingTrainer(), tmp_path)
    assert gather_folds(folds, C, tmp_path).dtype == np.float32
