"""robustlab.robustness: mCE/relative mCE by hand, seed matching, seed summaries, evaluation on
generated and released (CIFAR-10-C format) corruptions, and bad release files."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustlab.errors import UsageError
from robustlab.robustness import (CorruptionScores, ModelSpec, calibration_summary, corruption_errors,
                                  evaluate_corruptions, generated_corruptions, load_released, mean_corruption_accuracy,
                                  released_corruptions, robustness_rows, summarize_over_seeds)

CORR = ["gaussian_noise", "contrast"]


def scores(clean: float, noise: list[float], contrast: list[float], ece: float = 0.1) -> CorruptionScores:
    acc = {**{("gaussian_noise", s): a for s, a in enumerate(noise, 1)}, **{("contrast", s): a for s, a in enumerate(contrast, 1)}}
    return CorruptionScores(clean, 0.05, acc, {k: ece for k in acc})


# model A and a different baseline B
A = scores(0.90, [0.8, 0.7, 0.6, 0.5, 0.4], [0.85, 0.8, 0.75, 0.7, 0.6])
B = scores(0.80, [0.6, 0.5, 0.4, 0.3, 0.2], [0.8, 0.7, 0.6, 0.5, 0.4])


def test_mce_and_relative_mce_by_hand_with_two_different_models():
    out = corruption_errors(A, B, CORR)
    # noise: errors A 0.2+0.3+0.4+0.5+0.6 = 2.0, B 0.4+...+0.8 = 3.0 -> CE 2/3
    # contrast: A 0.15+0.2+0.25+0.3+0.4 = 1.3, B 0.2+0.3+0.4+0.5+0.6 = 2.0 -> CE 0.65
    assert out.ce == pytest.approx({"gaussian_noise": 2 / 3, "contrast": 0.65})
    assert out.mce == pytest.approx((2 / 3 + 0.65) / 2)
    # relative: subtract 5 x clean error (A: 0.5, B: 1.0): noise (2.0-0.5)/(3.0-1.0) = 0.75, contrast 0.8/1.0
    assert out.relative_ce == pytest.approx({"gaussian_noise": 0.75, "contrast": 0.8})
    assert out.relative_mce == pytest.approx(0.775)
    assert corruption_errors(B, A, CORR).mce == pytest.approx((1.5 + 2 / 1.3) / 2)  # not symmetric


def test_mean_corruption_accuracy_over_corruptions_and_severities():
    assert mean_corruption_accuracy(A.acc, CORR) == pytest.approx((3.0 + 3.7) / 10)
    assert mean_corruption_accuracy(A.acc, ["contrast"]) == pytest.approx(0.74)


def test_rows_match_the_baseline_seed_by_seed_and_keep_extras_apart():
    speckle = {("speckle_noise", s): 0.5 for s in range(1, 6)}
    runs = {("ce", 0): B, ("ce", 1): A, ("augmix", 0): A, ("augmix", 1): B, ("augmix", 2): A}
    runs = {k: CorruptionScores(v.clean_acc, v.clean_ece, {**v.acc, **speckle}, {**v.ece, **{k2: 0.3 for k2 in speckle}})
            for k, v in runs.items()}
    rows = {(r["model"], r["seed"]): r for r in robustness_rows(runs, CORR + ["speckle_noise"], baseline="ce")}
    assert rows[("augmix", 0)]["mce"] == pytest.approx((2 / 3 + 0.65) / 2)  # A against B (seed 0)
    assert rows[("augmix", 1)]["mce"] == pytest.approx((1.5 + 2 / 1.3) / 2)  # B against A (seed 1)
    assert rows[("ce", 0)]["mce"] == pytest.approx(1.0) and rows[("ce", 1)]["relative_mce"] == pytest.approx(1.0)
    assert rows[("augmix", 2)]["mce"] is None  # no baseline run with seed 2
    # the headline mean is over the benchmark corruptions only; speckle noise is an extra
    assert rows[("augmix", 0)]["mean_corruption_acc"] == pytest.approx(0.67)
    assert rows[("augmix", 0)]["extra_corruption_acc"] == pytest.approx(0.5)
    assert rows[("augmix", 0)]["mean_corruption_ece"] == pytest.approx(0.1)
    assert rows[("augmix", 0)]["acc_contrast"] == pytest.approx(0.74)
    assert all(r["mce"] is None for r in robustness_rows(runs, CORR, baseline=None))


def test_summary_over_seeds_by_hand():
    rows = [{"model": "m", "seed": 0, "acc": 0.5, "mce": None}, {"model": "m", "seed": 1, "acc": 0.7, "mce": 0.9},
            {"model": "m", "seed": 2, "acc": 0.9, "mce": 1.1}, {"model": "n", "seed": 0, "acc": 0.4, "mce": 1.0}]
    out = {r["model"]: r for r in summarize_over_seeds(rows)}
    assert out["m"]["acc"] == pytest.approx(0.7) and out["m"]["acc_std"] == pytest.approx(0.2)  # sample std
    assert out["m"]["mce"] == pytest.approx(1.0) and out["m"]["mce_std"] == pytest.approx(math.sqrt(0.02))
    assert out["m"]["n_seeds"] == 3 and out["n"]["acc_std"] == 0.0 and "seed" not in out["m"]


class Reader(torch.nn.Module):
    """Predicts the class written into the image: pixel value 40 * class, read from the mean."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        value = x.mean(dim=(1, 2, 3)) * 255 / 40
        return -(value[:, None] - torch.arange(self.num_classes, dtype=x.dtype)) ** 2 * 10


class Constant(torch.nn.Module):
    def forward(self, x):
        return torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1])).expand(len(x), 4)


def written(labels: np.ndarray) -> np.ndarray:
    return np.repeat(labels.astype(np.uint8) * 40, 32 * 32 * 3).reshape(len(labels), 32, 32, 3)


def test_generated_evaluation_scores_every_model_on_the_same_images():
    labels = torch.tensor([0, 1, 2, 3] * 4)
    images = torch.from_numpy(written(labels.numpy())).permute(0, 3, 1, 2).contiguous()
    models = {"reader": ModelSpec(Reader(), (0, 0, 0), (1, 1, 1)), "constant": ModelSpec(Constant(), (0, 0, 0), (1, 1, 1)),
              "reader2": ModelSpec(Reader(), (0, 0, 0), (1, 1, 1))}
    out = evaluate_corruptions(models, images, labels, generated_corruptions(images, labels, ["contrast", "gaussian_noise"], seed=3),
                               batch=6)
    assert out["reader"].clean_acc == 1.0
    assert out["reader"].acc[("contrast", 5)] == 1.0  # contrast keeps each image's mean
    assert out["reader"].acc == out["reader2"].acc and out["reader"].ece == out["reader2"].ece  # same corrupted images
    # a constant prediction (class 0 at confidence 0.7) is right on a quarter: ECE = |0.25 - 0.7|
    assert out["constant"].clean_acc == 0.25 and out["constant"].clean_ece == pytest.approx(0.45)
    assert all(a == 0.25 for a in out["constant"].acc.values()) and len(out["constant"].acc) == 10


def _release(tmp_path, n=4, wrong_severity=None):
    labels = np.arange(n) % 4
    blocks = [written(labels) for _ in range(5)]
    file_labels = np.tile(labels, 5)
    if wrong_severity:
        file_labels[(wrong_severity - 1) * n:wrong_severity * n] = (labels + 1) % 4
    np.save(tmp_path / "contrast.npy", np.concatenate(blocks))
    np.save(tmp_path / "labels.npy", file_labels.astype(np.uint8))
    return labels


def test_released_files_are_read_severity_by_severity(tmp_path):
    labels = _release(tmp_path, wrong_severity=3)
    images, y, n = load_released(tmp_path, "contrast")
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8 and n == 4
    clean = torch.from_numpy(written(labels)).permute(0, 3, 1, 2).contiguous()
    out = evaluate_corruptions({"reader": ModelSpec(Reader(), (0, 0, 0), (1, 1, 1))}, clean, torch.from_numpy(labels),
                               released_corruptions(tmp_path, ["contrast"]))
    accs = [out["reader"].acc[("contrast", s)] for s in range(1, 6)]
    assert accs == [1.0, 1.0, 0.0, 1.0, 1.0]  # the wrong labels sit in the third block of N
    assert load_released(tmp_path, "contrast", limit=2)[0].shape[0] == 10


@pytest.mark.parametrize("bad", ["missing", "pickled", "shape", "labels"])
def test_bad_release_files_name_the_file(tmp_path, bad):
    _release(tmp_path)
    if bad == "missing":
        target = tmp_path / "fog.npy"
    elif bad == "pickled":
        target = tmp_path / "contrast.npy"
        np.save(target, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif bad == "shape":
        target = tmp_path / "contrast.npy"
        np.save(target, np.zeros((7, 32, 32, 3), dtype=np.uint8))
    else:
        target = tmp_path / "labels.npy"
        np.save(target, np.zeros(3, dtype=np.int64))
    name = "fog" if bad == "missing" else "contrast"
    with pytest.raises(UsageError, match=str(target.name)):
        load_released(tmp_path, name)


def test_calibration_summary_fits_a_temperature_on_validation_logits():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (600,), generator=g)
    logits = torch.randn(600, 3, generator=g) * 5  # informative but overconfident: scaling should soften them
    logits[torch.arange(600), labels] += 4
    out = calibration_summary(logits[300:], labels[300:], logits[:300], labels[:300])
    assert out["temperature"] > 1 and out["test_nll_ts"] < out["test_nll"]
    assert calibration_summary(logits, labels)["temperature"] is None


def test_release_labels_beyond_the_models_classes_are_refused(tmp_path):
    _release(tmp_path)  # labels 0..3
    assert load_released(tmp_path, "contrast", num_classes=4)[1].max() == 3
    with pytest.raises(UsageError, match="labels.npy holds labels outside 0..2"):
        load_released(tmp_path, "contrast", num_classes=3)
