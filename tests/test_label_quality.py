"""Label-issue detectors, their scores and the noise estimates (robustlab.label_quality): metrics
against hand calculations on toys, the transition estimate on synthetic probabilities with a known
T, and the CSV rows."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from robustlab.errors import UsageError
from robustlab.label_quality import (DETECTORS, ISSUE_COLUMNS, Detection, DetectorInput, NoiseEstimate, auroc,
                                     compare_noise, confident_learning, estimate_noise, issue_rows, loss_gmm,
                                     out_of_fold_loss, run_detectors, score_detector, small_loss, top_fraction,
                                     transition_from_joint)

T_TRUE = np.array([[0.8, 0.2, 0.0, 0.0],
                   [0.0, 0.7, 0.3, 0.0],
                   [0.0, 0.0, 0.9, 0.1],
                   [0.25, 0.0, 0.0, 0.75]])


def synthetic(n=8000, seed=0, margin=3.0):
    """True labels y, noisy labels s ~ T_TRUE[y], and probabilities of a model that predicts y
    (softmax of Gaussian logits with `margin` added to the true class: about 95% accurate)."""
    rng = np.random.default_rng(seed)
    c = len(T_TRUE)
    y = rng.integers(0, c, n)
    s = (rng.random(n)[:, None] > np.cumsum(T_TRUE[y], 1)).sum(1)
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), y] += margin
    p = np.exp(logits)
    return y, s, p / p.sum(1, keepdims=True)


# ---- metrics by hand ---------------------------------------------------------------------------

IS_ERROR = np.array([1, 1, 0, 0, 0, 1, 0, 0], dtype=bool)
SCORE = np.array([0.9, 0.4, 0.4, 0.1, 0.2, 0.8, 0.3, 0.4])


def test_precision_recall_f1_and_auroc_by_hand():
    flags = np.array([1, 0, 1, 0, 0, 1, 0, 0], dtype=bool)
    s = score_detector(Detection(SCORE, flags), IS_ERROR)
    # 2 of the 3 flags are errors, 2 of the 3 errors are flagged
    assert s["flagged"] == 3 and s["true_errors"] == 3 and s["flagged_fraction"] == pytest.approx(3 / 8)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    # positive scores 0.9, 0.8, 0.4 against negatives 0.4, 0.1, 0.2, 0.3, 0.4: 5 + 5 + (3 + 2 * 1/2) of 15 pairs
    assert s["auroc"] == pytest.approx(14 / 15)
    assert s["auroc"] == pytest.approx(roc_auc_score(IS_ERROR, SCORE))


def test_f1_with_unequal_precision_and_recall():
    flags = np.array([1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)  # one flag, correct: P = 1, R = 1/3
    s = score_detector(Detection(SCORE, flags), IS_ERROR)
    assert s["precision"] == 1.0 and s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))


def test_degenerate_flag_sets():
    none = score_detector(Detection(SCORE, np.zeros(8, bool)), IS_ERROR)
    assert none["precision"] is None and none["recall"] == 0.0 and none["f1"] is None and none["flagged"] == 0
    wrong = score_detector(Detection(SCORE, ~IS_ERROR), IS_ERROR)
    assert wrong["precision"] == 0.0 and wrong["recall"] == 0.0 and wrong["f1"] == 0.0
    clean = score_detector(Detection(SCORE, IS_ERROR), np.zeros(8, bool))
    assert clean["recall"] is None and clean["auroc"] is None and clean["precision"] == 0.0


def test_auroc_extremes_and_ties():
    assert auroc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0
    assert auroc(np.array([0.9, 0.1]), np.array([False, True])) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5]), np.array([False, True, True])) == 0.5
    assert auroc(np.array([0.5, 0.5]), np.array([True, True])) is None
    rng = np.random.default_rng(3)
    score, pos = rng.integers(0, 5, 200).astype(float), rng.random(200) < 0.3
    assert auroc(score, pos) == pytest.approx(roc_auc_score(pos, score))


def test_top_fraction_and_out_of_fold_loss():
    assert top_fraction(np.array([3.0, 1.0, 2.0, 5.0]), 0.5).tolist() == [True, False, False, True]
    assert top_fraction(np.array([1.0, 1.0, 1.0, 0.0]), 0.25).tolist() == [True, False, False, False]  # stable ties
    assert not top_fraction(np.array([1.0, 2.0]), 0.2).any()  # round(0.4) = 0
    loss = out_of_fold_loss(np.array([0, 1, 2]), np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.1, 0.2, 0.7]]))
    np.testing.assert_allclose(loss, [np.log(2), -np.log(1e-12), -np.log(0.7)])


# ---- the three detectors -----------------------------------------------------------------------

def test_small_loss_flags_the_noise_rate_fraction_with_the_largest_loss():
    labels = np.array([0, 0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05]])
    det = small_loss(DetectorInput(labels, probs, noise_rate=0.4))
    np.testing.assert_allclose(det.score, -np.log([0.9, 0.2, 0.4, 0.7, 0.95]))
    assert det.flags.tolist() == [False, True, True, False, False]


def test_loss_gmm_flags_the_high_loss_cluster():
    labels = np.zeros(100, dtype=int)
    p_given = np.r_[np.full(80, 0.9), np.full(20, 0.05)] + np.linspace(0, 0.01, 100)
    probs = np.c_[p_given, 1 - p_given]
    det = loss_gmm(DetectorInput(labels, probs, noise_rate=0.2))
    assert det.flags.tolist() == [False] * 80 + [True] * 20
    assert det.score[80:].min() > 0.5 > det.score[:80].max()


def test_confident_learning_is_cleanlabs_filter_and_self_confidence():
    from cleanlab.filter import find_label_issues

    y, s, p = synthetic(2000, seed=1)
    det = confident_learning(DetectorInput(s, p, noise_rate=0.2))
    np.testing.assert_array_equal(det.flags, find_label_issues(s, p, n_jobs=1))
    np.testing.assert_allclose(det.score, 1 - p[np.arange(len(s)), s], rtol=1e-6)  # self-confidence
    scored = score_detector(det, s != y)
    assert scored["precision"] > 0.8 and scored["recall"] > 0.8 and scored["auroc"] > 0.95


def test_run_detectors_takes_extra_scores():
    y, s, p = synthetic(1000, seed=2)
    inp = DetectorInput(s, p, noise_rate=0.25)
    out = run_detectors(inp, {"oracle_like": (s != y).astype(float), "given": Detection(np.zeros(1000), np.ones(1000, bool))})
    assert list(out) == [*DETECTORS, "oracle_like", "given"]
    assert out["oracle_like"].flags.sum() == 250  # a bare score flags its top noise-rate fraction
    assert out["given"].flags.all()
    with pytest.raises(UsageError, match=r"detector 'short': expected one score per sample \(1000\), got shape \(3,\)"):
        run_detectors(inp, {"short": np.zeros(3)})


# ---- noise estimates ---------------------------------------------------------------------------

def test_transition_from_a_joint_by_hand():
    joint = np.array([[0.3, 0.1], [0.2, 0.4]])  # Q[s, y]
    np.testing.assert_allclose(transition_from_joint(joint), [[0.6, 0.4], [0.2, 0.8]])
    # a true class without mass keeps the identity row
    np.testing.assert_allclose(transition_from_joint(np.array([[0.7, 0.0], [0.3, 0.0]])), [[0.7, 0.3], [0.0, 1.0]])


def test_estimate_recovers_a_known_transition_matrix():
    y, s, p = synthetic(8000, seed=0)
    est = estimate_noise(s, p)
    assert est.joint.sum() == pytest.approx(1.0)
    assert est.noise_rate == pytest.approx(1 - np.trace(est.joint))
    assert abs(est.noise_rate - np.mean(s != y)) < 0.02
    assert np.linalg.norm(est.transition - T_TRUE) < 0.08
    np.testing.assert_allclose(est.transition.sum(1), 1.0)


def test_compare_noise_errors_by_hand():
    est = NoiseEstimate(np.eye(2) / 2, 0.3, np.array([[0.6, 0.4], [0.2, 0.8]]))
    out = compare_noise(est, 0.25, np.array([[0.7, 0.3], [0.0, 1.0]]))
    assert out["noise_rate_abs_error"] == pytest.approx(0.05)
    assert out["transition_frobenius_error"] == pytest.approx(np.sqrt(0.01 + 0.01 + 0.04 + 0.04))
    assert out == {"estimated_noise_rate": 0.3, "estimated_transition": [[0.6, 0.4], [0.2, 0.8]],
                   "true_noise_rate": 0.25, "true_transition": [[0.7, 0.3], [0.0, 1.0]],
                   "noise_rate_abs_error": pytest.approx(0.05), "transition_frobenius_error": pytest.approx(np.sqrt(0.1))}
    unknown = compare_noise(est, None, None)
    assert unknown == {"estimated_noise_rate": 0.3, "estimated_transition": [[0.6, 0.4], [0.2, 0.8]],
                       "true_noise_rate": None, "true_transition": None, "noise_rate_abs_error": None,
                       "transition_frobenius_error": None}


def test_issue_rows_are_worst_first_with_the_documented_columns():
    assert ISSUE_COLUMNS == ("index", "path", "given_label", "suggested_label", "label_quality", "is_issue")
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    det = Detection(np.array([0.1, 0.8, 0.4, 0.8]), np.array([False, True, False, True]))
    rows = issue_rows(np.array([10, 11, 12, 13]), ["a", "b", "c", "d"], np.array([0, 0, 0, 1]), probs, det)
    assert rows == [(11, "b", 0, 1, pytest.approx(0.2), True), (13, "d", 1, 1, pytest.approx(0.2), True),
                    (12, "c", 0, 0, pytest.approx(0.6), False), (10, "a", 0, 0, pytest.approx(0.9), False)]


def test_issue_rows_keep_dataset_order_among_equal_qualities():
    n = 200  # long enough for numpy's default (unstable) sort to reorder ties
    det = Detection(np.tile([0.5, 0.9], n // 2), np.zeros(n, dtype=bool))
    rows = issue_rows(np.arange(n) + 1000, [str(i) for i in range(n)], np.zeros(n, dtype=int), np.full((n, 2), 0.5), det)
    assert [r[0] for r in rows] == [1000 + i for i in range(1, n, 2)] + [1000 + i for i in range(0, n, 2)]


def test_extra_detector_scores_are_float64_whatever_their_type():
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    out = run_detectors(DetectorInput(labels, probs, 0.5, 0), {"ints": np.array([3, 1, 2, 0], dtype=np.int8)})
    assert out["ints"].score.dtype == np.float64 and out["ints"].flags.tolist() == [True, False, True, False]


def test_top_fraction_flags_booleans_and_breaks_ties_in_dataset_order():
    flags = top_fraction(np.zeros(100), 0.1)
    assert flags.dtype == bool and np.flatnonzero(flags).tolist() == list(range(10))


def test_auroc_reads_integer_labels_as_a_mask():
    score = np.array([0.1, 0.9, 0.4, 0.8, 0.3])
    assert auroc(score, np.array([0, 1, 0, 1, 0])) == auroc(score, np.array([False, True, False, True, False])) == 1.0


def test_score_detector_without_true_flags_and_on_no_samples():
    out = score_detector(Detection(np.array([0.9, 0.1, 0.2]), np.array([True, False, False])), np.array([False, True, True]))
    assert (out["precision"], out["recall"], out["f1"], out["flagged_fraction"]) == (0.0, 0.0, 0.0, pytest.approx(1 / 3))
    empty = score_detector(Detection(np.array([]), np.array([], dtype=bool)), np.array([], dtype=bool))
    assert empty == {"flagged": 0, "flagged_fraction": 0.0, "true_errors": 0, "precision": None, "recall": None,
                     "f1": None, "auroc": None}
