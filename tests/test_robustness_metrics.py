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


# ---- metrics: edge cases, exact messages ------------------------------------------------------

def test_empty_corruption_lists_are_refused_with_their_messages():
    with pytest.raises(UsageError) as info:
        mean_corruption_accuracy(A.acc, [])
    assert str(info.value) == "mean corruption accuracy needs at least one corruption"
    with pytest.raises(UsageError) as info:
        corruption_errors(A, B, [])
    assert str(info.value) == "mCE needs at least one corruption"


def test_a_second_pair_of_models_by_hand():
    # C: clean 0.95, noise errors 0.1 each (sum 0.5), contrast errors 0.05..0.25 (sum 0.75)
    # D: clean 0.7,  noise errors 0.4 each (sum 2.0), contrast errors 0.3..0.7 (sum 2.5)
    C = scores(0.95, [0.9] * 5, [0.95, 0.9, 0.85, 0.8, 0.75])
    D = scores(0.70, [0.6] * 5, [0.7, 0.6, 0.5, 0.4, 0.3])
    out = corruption_errors(C, D, CORR)
    assert out.ce == pytest.approx({"gaussian_noise": 0.25, "contrast": 0.3})
    assert out.mce == pytest.approx(0.275)
    # relative: C subtracts 5 x 0.05 = 0.25, D 5 x 0.3 = 1.5: noise 0.25 / 0.5, contrast 0.5 / 1.0
    assert out.relative_ce == pytest.approx({"gaussian_noise": 0.5, "contrast": 0.5})
    assert out.relative_mce == pytest.approx(0.5)
    # a baseline whose corruption errors sum to less than one (0.5): CE is still their ratio
    assert corruption_errors(D, C, ["gaussian_noise"]).ce["gaussian_noise"] == pytest.approx(4.0)


def test_zero_denominators_give_nan_and_a_negative_baseline_gap_does_not():
    perfect = scores(1.0, [1.0] * 5, [1.0] * 5)  # no errors at all: CE undefined
    out = corruption_errors(A, perfect, CORR)
    assert math.isnan(out.ce["gaussian_noise"]) and math.isnan(out.mce)
    assert math.isnan(out.relative_ce["contrast"]) and math.isnan(out.relative_mce)
    # the baseline's corrupted error equals 5 x its clean error: relative CE undefined, CE defined
    flat = scores(0.8, [0.8] * 5, [0.8] * 5)
    out = corruption_errors(A, flat, ["gaussian_noise"])
    assert out.ce["gaussian_noise"] == pytest.approx(2.0) and math.isnan(out.relative_ce["gaussian_noise"])
    # a baseline better under corruption than clean: the gap is negative, the ratio is still taken
    better = scores(0.5, [0.6] * 5, [0.6] * 5)  # gap 2.0 - 2.5 = -0.5
    out = corruption_errors(A, better, ["gaussian_noise"])
    assert out.relative_ce["gaussian_noise"] == pytest.approx(1.5 / -0.5)


def test_rows_keys_headline_fallback_and_ece_mean_over_the_headline_only():
    ece = {("gaussian_noise", s): 0.1 * s for s in range(1, 6)}  # mean 0.3
    ece.update({("contrast", s): 0.05 for s in range(1, 6)})
    ece.update({("speckle_noise", s): 0.9 for s in range(1, 6)})
    acc = {**A.acc, **{("speckle_noise", s): 0.2 * s - 0.1 for s in range(1, 6)}}  # mean 0.5
    run = CorruptionScores(0.9, 0.07, acc, ece)
    rows = robustness_rows({("m", 3): run}, ["contrast", "speckle_noise", "gaussian_noise"], baseline="m")
    assert list(rows[0]) == ["model", "seed", "clean_acc", "mean_corruption_acc", "extra_corruption_acc", "mce",
                             "relative_mce", "clean_ece", "mean_corruption_ece", "acc_contrast", "acc_speckle_noise",
                             "acc_gaussian_noise"]
    r = rows[0]
    assert (r["model"], r["seed"], r["clean_acc"], r["clean_ece"]) == ("m", 3, 0.9, 0.07)
    assert r["mean_corruption_ece"] == pytest.approx((0.3 + 0.05) / 2)
    assert r["acc_gaussian_noise"] == pytest.approx(0.6) and r["acc_speckle_noise"] == pytest.approx(0.5)
    assert r["mce"] == pytest.approx(1.0) and r["relative_mce"] == pytest.approx(1.0)
    # only benchmark corruptions: no extra column value
    assert robustness_rows({("m", 3): run}, CORR)[0]["extra_corruption_acc"] is None
    # only extras evaluated: the headline reports them (and the mCE is over them)
    other = CorruptionScores(0.8, 0.1, {("speckle_noise", s): 0.4 for s in range(1, 6)},
                             {("speckle_noise", s): 0.2 for s in range(1, 6)})
    rows = {r["model"]: r for r in robustness_rows({("m", 0): run, ("b", 0): other}, ["speckle_noise"], baseline="b")}
    assert rows["m"]["mean_corruption_acc"] == pytest.approx(0.5) and rows["m"]["extra_corruption_acc"] == pytest.approx(0.5)
    assert rows["m"]["mean_corruption_ece"] == pytest.approx(0.9)
    assert rows["m"]["mce"] == pytest.approx(2.5 / 3.0)  # errors 0.9+0.7+0.5+0.3+0.1 vs 5 x 0.6
    assert rows["b"]["mce"] == pytest.approx(1.0)


def test_summary_by_another_key_leaves_out_nan_and_text_columns():
    rows = [{"arm": "x", "seed": 0, "acc": 0.2, "mce": math.nan, "note": "a"},
            {"arm": "x", "seed": 1, "acc": 0.4, "mce": 2.0, "note": "b"},
            {"arm": "y", "seed": 0, "acc": 0.1, "mce": math.nan, "note": "c"}]
    out = summarize_over_seeds(rows, key="arm")
    assert [r["arm"] for r in out] == ["x", "y"]
    x, y = out
    assert list(x) == ["arm", "n_seeds", "acc", "acc_std", "mce", "mce_std", "note", "note_std"]
    assert x["acc"] == pytest.approx(0.3) and x["acc_std"] == pytest.approx(math.sqrt(0.02))
    assert x["mce"] == 2.0 and x["mce_std"] == 0.0 and x["n_seeds"] == 2  # the NaN seed is left out of the mean
    assert x["note"] is None and x["note_std"] is None
    assert y["mce"] is None and y["mce_std"] is None and y["acc_std"] == 0.0 and y["n_seeds"] == 1
    assert list(y) == list(x) and y["note"] is None  # a column without numbers does not end the summary


def test_calibration_summary_on_a_toy_case_with_a_closed_form_temperature():
    # two classes, logits (4, 0) everywhere, class 0 right on 3 of 4: softmax(z / T) is calibrated when
    # sigmoid(4 / T) = 0.75, i.e. T = 4 / ln 3; then ECE = 0 and NLL = the entropy of (0.75, 0.25)
    logits = torch.tensor([[4.0, 0.0]] * 8, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1] * 2)
    row = calibration_summary(logits, labels, logits, labels)
    p = 1 / (1 + math.exp(-4))
    assert list(row) == ["temperature", "test_ece", "test_nll", "test_ece_ts", "test_nll_ts"]
    assert row["test_ece"] == pytest.approx(p - 0.75, abs=1e-12)
    assert row["test_nll"] == pytest.approx(-(0.75 * math.log(p) + 0.25 * math.log(1 - p)), abs=1e-12)
    assert row["temperature"] == pytest.approx(4 / math.log(3), rel=1e-4)  # L-BFGS tolerance
    assert row["test_ece_ts"] == pytest.approx(0.0, abs=1e-4)
    assert row["test_nll_ts"] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-8)
    empty = calibration_summary(logits, labels, logits[:0], labels[:0])  # a run without validation images
    assert empty["temperature"] is None and empty["test_ece_ts"] is None and empty["test_nll_ts"] is None


# ---- reading a CIFAR-10-C directory -----------------------------------------------------------

def _numbered_release(tmp_path, n=3, h=32, w=32, labels_per_block=False, label_dtype=np.uint8):
    """(5 n, h, w, 3) uint8 images of numbered pixels (0..250, repeating), labels 5 n (or n) integers."""
    images = (np.arange(5 * n * h * w * 3) % 251).astype(np.uint8).reshape(5 * n, h, w, 3)
    np.save(tmp_path / "fog.npy", images)
    labels = np.arange(n if labels_per_block else 5 * n) % 10
    np.save(tmp_path / "labels.npy", labels.astype(label_dtype))
    return images, labels


def test_n_comes_from_the_file_and_images_become_channels_first(tmp_path):
    images, labels = _numbered_release(tmp_path, n=3)
    x, y, n = load_released(tmp_path, "fog")
    assert n == 3 and x.shape == (15, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    np.testing.assert_array_equal(x.numpy(), images.transpose(0, 3, 1, 2))
    assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
    # the first `limit` of every severity block of N
    x, y, n = load_released(tmp_path, "fog", limit=2)
    rows = [0, 1, 3, 4, 6, 7, 9, 10, 12, 13]
    assert n == 2 and y.tolist() == labels[rows].tolist()
    np.testing.assert_array_equal(x.numpy(), images[rows].transpose(0, 3, 1, 2))
    assert load_released(tmp_path, "fog", limit=3)[2] == 3 and load_released(tmp_path, "fog", limit=50)[2] == 3


def test_labels_given_once_for_all_severities_are_repeated(tmp_path):
    _, labels = _numbered_release(tmp_path, n=3, labels_per_block=True, label_dtype=np.int16)
    x, y, n = load_released(tmp_path, "fog", limit=2)
    assert n == 2 and y.dtype == torch.int64 and y.tolist() == [0, 1] * 5
    assert load_released(tmp_path, "fog")[1].tolist() == [0, 1, 2] * 5


def _message(call) -> str:
    with pytest.raises(UsageError) as info:
        call()
    return str(info.value)


@pytest.mark.parametrize("array, shown", [
    (np.zeros((5, 4, 4, 3), dtype=np.float32), "float32 (5, 4, 4, 3)"),
    (np.zeros((5, 4, 4), dtype=np.uint8), "uint8 (5, 4, 4)"),
    (np.zeros((5, 4, 4, 1), dtype=np.uint8), "uint8 (5, 4, 4, 1)"),
    (np.zeros((0, 4, 4, 3), dtype=np.uint8), "uint8 (0, 4, 4, 3)"),
    (np.zeros((7, 4, 4, 3), dtype=np.uint8), "uint8 (7, 4, 4, 3)"),
    (np.zeros((4, 4, 4, 3), dtype=np.uint8), "uint8 (4, 4, 4, 3)"),
    (np.zeros((5, 4, 4, 3), dtype=np.uint8), "uint8 (5, 4, 4, 3)"),      # right count and type, not 32x32
    (np.zeros((5, 32, 28, 3), dtype=np.uint8), "uint8 (5, 32, 28, 3)"),
    (np.zeros((5, 64, 64, 3), dtype=np.uint8), "uint8 (5, 64, 64, 3)"),
])
def test_each_bad_image_file_has_its_message(tmp_path, array, shown):
    _numbered_release(tmp_path, n=1)
    np.save(tmp_path / "fog.npy", array)
    assert _message(lambda: load_released(tmp_path, "fog")) == (
        f"{tmp_path / 'fog.npy'} must hold uint8 32x32 RGB images of shape (5*N, 32, 32, 3), got {shown}")


@pytest.mark.parametrize("labels, shown", [
    (np.zeros(4, dtype=np.int64), "int64 (4,)"),          # neither N = 3 nor 5 N = 15
    (np.zeros(16, dtype=np.int64), "int64 (16,)"),
    (np.zeros(15, dtype=np.float32), "float32 (15,)"),
    (np.zeros((15, 1), dtype=np.int64), "int64 (15, 1)"),
    (np.zeros((3, 5), dtype=np.int64), "int64 (3, 5)"),
])
def test_each_bad_label_file_has_its_message(tmp_path, labels, shown):
    _numbered_release(tmp_path, n=3)
    np.save(tmp_path / "labels.npy", labels)
    assert _message(lambda: load_released(tmp_path, "fog")) == (
        f"{tmp_path / 'labels.npy'} must hold integer labels of shape (15,) or (3,) to match fog.npy, got {shown}")


def test_missing_and_unreadable_files_have_their_messages(tmp_path):
    assert _message(lambda: load_released(tmp_path, "fog")) == f"{tmp_path / 'fog.npy'} does not exist"
    (tmp_path / "fog.npy").mkdir()  # a folder is not a file
    assert _message(lambda: load_released(tmp_path, "fog")) == f"{tmp_path / 'fog.npy'} does not exist"
    (tmp_path / "fog.npy").rmdir()
    _numbered_release(tmp_path, n=1)
    (tmp_path / "labels.npy").unlink()
    assert _message(lambda: load_released(tmp_path, "fog")) == f"{tmp_path / 'labels.npy'} does not exist"
    np.save(tmp_path / "fog.npy", np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    assert _message(lambda: load_released(tmp_path, "fog")) == (
        f"{tmp_path / 'fog.npy'} is not a readable .npy array (Array can't be memory-mapped: Python objects in dtype.)")
    for content in (b"not numpy at all", np.lib.format.MAGIC_PREFIX):  # garbage (ValueError), cut short (EOFError)
        (tmp_path / "fog.npy").write_bytes(content)
        assert _message(lambda: load_released(tmp_path, "fog")).startswith(
            f"{tmp_path / 'fog.npy'} is not a readable .npy array (")


def test_label_range_against_the_models_classes_both_ends(tmp_path):
    _numbered_release(tmp_path, n=2, label_dtype=np.int64)  # labels 0..9
    assert load_released(tmp_path, "fog", num_classes=10)[1].max() == 9
    message = (f"{tmp_path / 'labels.npy'} holds labels outside 0..8, the evaluated models' classes "
               "(CIFAR-100-C files for a CIFAR-10 model?)")
    assert _message(lambda: load_released(tmp_path, "fog", num_classes=9)) == message
    np.save(tmp_path / "labels.npy", np.array([1, -1] * 5, dtype=np.int64))
    assert _message(lambda: load_released(tmp_path, "fog", num_classes=9)) == message
    np.save(tmp_path / "labels.npy", np.array([0, 8] * 5, dtype=np.int64))
    assert load_released(tmp_path, "fog", num_classes=9)[1].tolist() == [0, 8] * 5


def test_released_source_yields_each_severity_block_in_batches(tmp_path):
    images, labels = _numbered_release(tmp_path, n=3)
    seen = [(name, severity, [(x, y) for x, y in batches()])
            for name, severity, batches in released_corruptions(tmp_path, ["fog"], batch=2)]
    assert [(name, severity) for name, severity, _ in seen] == [("fog", s) for s in range(1, 6)]
    for (_, severity, parts) in seen:
        assert [len(y) for _, y in parts] == [2, 1]
        x = torch.cat([p[0] for p in parts])
        block = slice((severity - 1) * 3, severity * 3)
        assert x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(images[block].transpose(0, 3, 1, 2) / 255).float())
        assert torch.cat([p[1] for p in parts]).tolist() == labels[block].tolist()
    limited = [len(torch.cat([y for _, y in batches()])) for _, _, batches in released_corruptions(tmp_path, ["fog"], limit=1)]
    assert limited == [1] * 5
    with pytest.raises(UsageError, match=r"labels outside 0\.\.4"):
        list(released_corruptions(tmp_path, ["fog"], num_classes=5))


# ---- generated corruptions and evaluation -----------------------------------------------------

def _uint8_images(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(n) % 4


def _collect(source):
    return {(name, severity): [(x.clone(), y.clone()) for x, y in batches()] for name, severity, batches in source}


def test_generated_corruptions_are_seeded_per_corruption_and_severity():
    import zlib

    from robustlab.corruptions.inputs import corrupt
    from robustlab.seeds import mixed_seed

    images, labels = _uint8_images()
    got = _collect(generated_corruptions(images, labels, ["gaussian_noise", "shot_noise"], seed=7, batch=2))
    assert list(got) == [(c, s) for c in ("gaussian_noise", "shot_noise") for s in range(1, 6)]
    for (name, severity), parts in got.items():
        assert [len(y) for _, y in parts] == [2, 2, 1]
        assert torch.cat([y for _, y in parts]).tolist() == labels.tolist()
        # the documented contract: one generator per (corruption, severity), seeded from the crc32 of
        # "name/severity" under the corruption seed, drawn batch after batch
        g = torch.Generator().manual_seed(mixed_seed(7, zlib.crc32(f"{name}/{severity}".encode())))
        expected = [corrupt(images[i:i + 2].float() / 255, name, severity, g) for i in range(0, 5, 2)]
        for (x, _), e in zip(parts, expected):
            assert x.dtype == torch.float32 and torch.equal(x, e)
    # the same images whichever other corruptions are evaluated, and on every call
    alone = _collect(generated_corruptions(images, labels, ["shot_noise"], seed=7, batch=2))
    assert all(torch.equal(a[0], b[0]) for k in alone for a, b in zip(alone[k], got[k]))
    # another seed or severity: other noise
    other = _collect(generated_corruptions(images, labels, ["shot_noise"], seed=8, batch=2))
    assert not torch.equal(other[("shot_noise", 1)][0][0], got[("shot_noise", 1)][0][0])
    assert not torch.equal(got[("gaussian_noise", 1)][0][0], got[("gaussian_noise", 2)][0][0])


class MeanOfInput(torch.nn.Module):
    """Logits (mean of channel 0, mean of channel 1): shows what normalization the model got."""

    def forward(self, x):
        return torch.stack([x[:, 0].mean(dim=(1, 2)), x[:, 1].mean(dim=(1, 2))], dim=1).double()


def test_predict_logits_normalizes_and_returns_float32_outside_autocast():
    from robustlab.robustness import predict_logits

    x = torch.full((2, 3, 4, 4), 0.5)
    z = predict_logits(ModelSpec(MeanOfInput(), (0.25, 0.5, 0.0), (0.5, 0.25, 1.0)), x)
    assert z.dtype == torch.float32 and z.tolist() == [[0.5, 0.0], [0.5, 0.0]]
    # without autocast a linear layer computes in float32 even on CPU (where autocast would use bfloat16)
    lin = torch.nn.Linear(48, 2, bias=False)
    torch.nn.init.constant_(lin.weight, 1 / 3)
    model = torch.nn.Sequential(torch.nn.Flatten(), lin)
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    exact = x.flatten(1) @ lin.weight.t()
    assert torch.equal(predict_logits(ModelSpec(model, (0, 0, 0), (1, 1, 1)), x), exact.detach())
    entered = []

    class Recording:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False
    predict_logits(ModelSpec(model, (0, 0, 0), (1, 1, 1)), x, autocast=Recording)
    assert entered == [True]


def test_evaluation_reports_logits_to_the_callback_and_refuses_no_models():
    assert _message(lambda: evaluate_corruptions({}, *_uint8_images(), iter(()))) == "no models to evaluate"
    labels = torch.tensor([0, 1, 2, 3] * 2)
    images = torch.from_numpy(written(labels.numpy())).permute(0, 3, 1, 2).contiguous()
    calls = []
    out = evaluate_corruptions({"reader": ModelSpec(Reader(), (0, 0, 0), (1, 1, 1)),
                                "constant": ModelSpec(Constant(), (0, 0, 0), (1, 1, 1))}, images, labels,
                               generated_corruptions(images, labels, ["contrast"]), batch=3,
                               on_logits=lambda *a: calls.append(a))
    assert [(a[0], a[1], a[2]) for a in calls] == [("reader", "clean", 0), ("constant", "clean", 0)] + [
        (m, "contrast", s) for s in range(1, 6) for m in ("reader", "constant")]
    for label, name, severity, logits, y in calls:
        assert logits.shape == (8, 4) and y.tolist() == labels.tolist()
    assert torch.equal(calls[1][3], Constant()(images))
    assert out["reader"].acc == {("contrast", s): 1.0 for s in range(1, 6)}
    # ECE of logits: confidence of the reader's softmax, all right
    conf = torch.softmax(calls[0][3].double(), 1).max(1).values
    assert out["reader"].clean_ece == pytest.approx(float((1 - conf).mean()), abs=1e-6)


def test_long_rows_one_per_model_seed_corruption_severity():
    from robustlab.robustness import long_rows

    run = CorruptionScores(0.9, 0.05, {("fog", 2): 0.5, ("spatter", 1): 0.25}, {("fog", 2): 0.1, ("spatter", 1): 0.2})
    assert long_rows({("m", 4): run}) == [
        {"model": "m", "seed": 4, "corruption": "fog", "family": "weather", "severity": 2, "benchmark": True,
         "acc": 0.5, "ece": 0.1},
        {"model": "m", "seed": 4, "corruption": "spatter", "family": "weather", "severity": 1, "benchmark": False,
         "acc": 0.25, "ece": 0.2}]


def test_scores_start_empty_and_the_baseline_note_names_the_baseline():
    from robustlab.robustness import BASELINE_NOTE

    s, t = CorruptionScores(0.5, 0.1), CorruptionScores(0.5, 0.1)
    assert s.acc == {} and s.ece == {} and s.acc is not t.acc
    note = BASELINE_NOTE.format(baseline="ce")
    assert note.startswith("mCE and relative mCE are normalized by the baseline model 'ce' of this table, matched seed by seed")
    assert note.endswith("(Hendrycks & Dietterich 2019 use AlexNet), so they are not the published mCE numbers.")


def test_generated_corruptions_come_in_batches_of_500_by_default():
    images, labels = _uint8_images(n=501)
    default = _collect(generated_corruptions(images, labels, ["gaussian_noise"]))[("gaussian_noise", 1)]
    assert [len(y) for _, y in default] == [500, 1]


def test_batches_go_to_the_requested_device():
    # the meta device shows where tensors were sent without computing anything
    from robustlab.robustness import _uint8_batches

    images, labels = _uint8_images(n=3)
    for x, y in _uint8_batches(images, labels, torch.device("meta"), 2):
        assert x.device.type == "meta" and y.device.type == "meta" and x.dtype == torch.float32


def test_released_batches_go_to_the_requested_device(tmp_path):
    _numbered_release(tmp_path, n=2)
    for _, _, batches in released_corruptions(tmp_path, ["fog"], device="meta"):
        x, y = next(iter(batches()))
        assert x.device.type == "meta" and y.device.type == "meta"


def test_generated_corruptions_make_images_and_noise_on_the_device(monkeypatch):
    # (a CPU-only test: the device given is passed on to the generator and to the batches)
    import robustlab.robustness as R

    seen = []
    make_generator, batches_of = R.corruption_generator, R._uint8_batches
    monkeypatch.setattr(R, "corruption_generator", lambda *a: seen.append(("generator", a[3])) or make_generator(*a))
    monkeypatch.setattr(R, "_uint8_batches", lambda *a: seen.append(("batches", a[2])) or batches_of(*a))
    images, labels = _uint8_images(n=2)
    for _, _, batches in generated_corruptions(images, labels, ["contrast"], device="cpu"):
        list(batches())
    assert seen == [("generator", torch.device("cpu")), ("batches", torch.device("cpu"))] * 5
    assert R.corruption_generator("fog", 1, 0, "cpu").device == torch.device("cpu")


def test_the_default_corruption_seed_is_zero():
    images, labels = _uint8_images(n=2)
    default = _collect(generated_corruptions(images, labels, ["gaussian_noise"]))
    zero = _collect(generated_corruptions(images, labels, ["gaussian_noise"], seed=0))
    assert all(torch.equal(default[k][0][0], zero[k][0][0]) for k in zero)
