import math

import numpy as np
import pytest
import torch

from robustlab.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from robustlab.calibration_plots import plot_reliability_diagram
from robustlab.errors import UsageError


def top_class_probs(confidences, num_classes: int = 4) -> torch.Tensor:
    """Rows whose class 0 has probability `conf`, the rest shared equally."""
    conf = torch.as_tensor(confidences, dtype=torch.float64)[:, None]
    rest = (1 - conf) / (num_classes - 1)
    return torch.cat([conf, rest.expand(-1, num_classes - 1)], dim=1)


@pytest.fixture(scope="module")
def calibrated_logits():
    """Logits with labels drawn from their own softmax: calibrated by construction."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 10, generator=g, dtype=torch.float64) * 1.5
    labels = torch.multinomial(logits.softmax(dim=1), 1, generator=g).squeeze(1)
    return logits, labels


# ---------------------------------------------------------------------------------------------
# ECE and bins


def test_ece_by_hand():
    # bin (0.8667, 0.9333]: 4 samples at confidence 0.9, 2 correct -> |0.5 - 0.9| = 0.4
    # bin (0.6, 0.6667]:    2 samples at confidence 0.65, both correct -> |1 - 0.65| = 0.35
    probs = top_class_probs([0.9, 0.9, 0.9, 0.9, 0.65, 0.65])
    labels = torch.tensor([0, 0, 1, 2, 0, 0])
    expected = 4 / 6 * 0.4 + 2 / 6 * 0.35
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-12)

    bins = reliability_bins(probs, labels)
    assert bins.counts.tolist() == [0] * 9 + [2, 0, 0, 0, 4, 0]
    assert bins.confidence[13] == pytest.approx(0.9) and bins.accuracy[13] == 0.5
    assert bins.confidence[9] == pytest.approx(0.65) and bins.accuracy[9] == 1.0
    assert np.allclose(bins.edges, np.linspace(0, 1, 16))


def test_ece_of_a_single_bin_is_the_accuracy_gap():
    probs = top_class_probs([0.9] * 4)
    assert expected_calibration_error(probs, [0, 0, 1, 2], n_bins=1) == pytest.approx(0.4)
    assert expected_calibration_error(probs, [0, 0, 0, 0], n_bins=1) == pytest.approx(0.1)


def test_bins_are_closed_on_the_right():
    # 0.5 belongs to (0.4, 0.5], the fifth of ten bins; 1.0 to the last
    bins = reliability_bins(top_class_probs([0.5, 1.0], num_classes=2), [0, 0], n_bins=10)
    assert bins.counts.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]


def test_perfectly_calibrated_predictions_have_near_zero_ece():
    g = torch.Generator().manual_seed(1)
    n = 200_000
    conf = 0.25 + 0.75 * torch.rand(n, generator=g, dtype=torch.float64)
    correct = torch.rand(n, generator=g, dtype=torch.float64) < conf  # Bernoulli(confidence)
    wrong_class = torch.randint(1, 4, (n,), generator=g)
    labels = torch.where(correct, torch.zeros_like(wrong_class), wrong_class)
    assert expected_calibration_error(top_class_probs(conf), labels) < 0.01


def test_logits_and_probabilities_give_the_same_ece(calibrated_logits):
    logits, labels = calibrated_logits
    assert expected_calibration_error(logits, labels, from_logits=True) == pytest.approx(
        expected_calibration_error(logits.softmax(dim=1), labels), abs=1e-12
    )


def test_float32_softmax_probabilities_are_accepted(calibrated_logits):
    logits, labels = calibrated_logits
    probs32 = logits.float().softmax(dim=1)
    assert expected_calibration_error(probs32, labels.numpy()) == pytest.approx(
        expected_calibration_error(logits, labels, from_logits=True), abs=1e-5
    )


# ---------------------------------------------------------------------------------------------
# NLL and temperature scaling


def test_nll_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(2)) / 2
    assert negative_log_likelihood(logits, labels) == pytest.approx(expected)


def test_apply_temperature_divides_logits():
    logits = torch.tensor([[3.0, -1.5]])
    assert torch.equal(apply_temperature(logits, 1.5), torch.tensor([[2.0, -1.0]]))
    # T < 1 sharpens (an underconfident model): any positive temperature is valid, integers too
    assert torch.equal(apply_temperature(logits, 0.5), torch.tensor([[6.0, -3.0]]))
    assert torch.equal(apply_temperature(logits, 1), logits)


def test_temperature_scaling_recovers_overconfidence(calibrated_logits):
    logits, labels = calibrated_logits
    overconfident = 3 * logits
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.04)

    scaled = apply_temperature(overconfident, temperature)
    assert negative_log_likelihood(scaled, labels) < negative_log_likelihood(overconfident, labels) - 0.5
    ece_before = expected_calibration_error(overconfident, labels, from_logits=True)
    ece_after = expected_calibration_error(scaled, labels, from_logits=True)
    assert ece_before > 0.25 and ece_after < 0.015
    # the fitted T is (near) the NLL minimum: nudging it either way does not help
    nll = negative_log_likelihood(scaled, labels)
    assert nll <= negative_log_likelihood(overconfident / (temperature * 1.05), labels)
    assert nll <= negative_log_likelihood(overconfident / (temperature / 1.05), labels)


def test_temperature_of_calibrated_logits_is_one(calibrated_logits):
    logits, labels = calibrated_logits
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.04)


# ---------------------------------------------------------------------------------------------
# reliability diagram


def test_reliability_diagram_is_a_png(tmp_path, calibrated_logits):
    logits, labels = calibrated_logits
    path = plot_reliability_diagram(3 * logits, labels, tmp_path / "plots" / "reliability.png",
                                    title="over-confident", from_logits=True)
    data = path.read_bytes()
    assert path.exists() and len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "probs, labels, kwargs, match",
    [
        (torch.tensor([[2.0, -1.0]]), [0], {}, "from_logits=True"),
        (torch.tensor([[0.5, 0.4]]), [0], {}, "sum to 1"),
        (torch.tensor([0.5, 0.5]), [0], {}, "shape"),
        (torch.tensor([[0.5, 0.5]]), [0, 1], {}, "labels must have shape"),
        (torch.tensor([[0.5, 0.5]]), [2], {}, r"\[0, 2\)"),
        (torch.tensor([[0.5, 0.5]]), [0.0], {}, "integers"),
        (torch.tensor([[0.5, 0.5]]), [0], {"n_bins": 0}, "n_bins"),
        (torch.tensor([[float("nan"), 0.5]]), [0], {}, "NaN"),
    ],
)
def test_bad_input_raises_usage_error(probs, labels, kwargs, match):
    with pytest.raises(UsageError, match=match):
        expected_calibration_error(probs, labels, **kwargs)


def test_bad_temperature_and_path_raise_usage_error(tmp_path):
    with pytest.raises(UsageError, match="temperature"):
        apply_temperature(torch.zeros(1, 2), 0.0)
    with pytest.raises(UsageError, match=".png"):
        plot_reliability_diagram(torch.tensor([[0.5, 0.5]]), [0], tmp_path / "plot.pdf")


# ---------------------------------------------------------------------------------------------
# every bin against a plain loop, exact messages


def _loop_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int):
    """Per-bin (count, mean confidence, accuracy) with right-closed bins ((m-1)/M, m/M], by a plain loop."""
    rows = [[0, 0.0, 0.0] for _ in range(n_bins)]
    for p, y in zip(probs, labels):
        conf, pred = float(p.max()), int(p.argmax())
        m = max(0, math.ceil(conf * n_bins) - 1)  # conf in ((m)/M, (m+1)/M]; 0 goes to the first bin
        rows[m][0] += 1
        rows[m][1] += conf
        rows[m][2] += float(pred == y)
    counts = np.array([r[0] for r in rows])
    safe = np.maximum(counts, 1)
    return counts, np.array([r[1] for r in rows]) / safe, np.array([r[2] for r in rows]) / safe


@pytest.mark.parametrize("n_bins", [1, 4, 15])
def test_every_bin_matches_a_plain_loop(n_bins):
    g = torch.Generator().manual_seed(n_bins)
    logits = torch.randn(500, 5, generator=g, dtype=torch.float64) * 2
    probs = logits.softmax(1)
    labels = torch.randint(0, 5, (500,), generator=g)
    bins = reliability_bins(probs, labels, n_bins=n_bins)
    counts, conf, acc = _loop_bins(probs.numpy(), labels.numpy(), n_bins)
    np.testing.assert_array_equal(bins.counts, counts)
    np.testing.assert_allclose(bins.confidence, conf, atol=1e-12)
    np.testing.assert_allclose(bins.accuracy, acc, atol=1e-12)
    np.testing.assert_allclose(bins.edges, np.linspace(0, 1, n_bins + 1), atol=1e-15)
    ece = sum(c / 500 * abs(a - f) for c, a, f in zip(counts, acc, conf))
    assert bins.ece == pytest.approx(ece, abs=1e-12)
    assert expected_calibration_error(logits, labels, n_bins=n_bins, from_logits=True) == pytest.approx(ece, abs=1e-12)


def test_probability_rows_may_miss_one_by_the_tolerance_only():
    ok = torch.tensor([[0.6, 0.4 + 0.9e-3]], dtype=torch.float64)
    assert expected_calibration_error(ok, [0]) == pytest.approx(0.4, abs=1e-9)
    with pytest.raises(UsageError):
        expected_calibration_error(torch.tensor([[0.6, 0.4 + 1.1e-3]], dtype=torch.float64), [0])


@pytest.mark.parametrize("probs, labels, kwargs, message", [
    (torch.tensor([[2.0, -1.0]]), [0], {}, "predictions are not probabilities (rows must be in [0, 1] and sum to 1); "
                                            "pass from_logits=True for logits"),
    (torch.tensor([0.5, 0.5]), [0], {}, "predictions must have shape (N, C) with N >= 1 and C >= 2, got (2,)"),
    (torch.tensor([[1.0]]), [0], {}, "predictions must have shape (N, C) with N >= 1 and C >= 2, got (1, 1)"),
    (torch.tensor([[1, 0]]), [0], {}, "predictions must be floats, got dtype torch.int64"),
    (torch.tensor([[0.5, 0.5]]), [0, 1], {}, "labels must have shape (1,) to match the predictions, got (2,)"),
    (torch.tensor([[0.5, 0.5]]), [-1], {}, "labels must lie in [0, 2)"),
    (torch.tensor([[0.5, 0.5]]), [True], {}, "labels must be integers, got dtype torch.bool"),
    (torch.tensor([[0.5, 0.5]]), [0], {"n_bins": True}, "n_bins must be a positive integer, got True"),
    (torch.tensor([[0.5, 0.5]]), [0], {"n_bins": 2.0}, "n_bins must be a positive integer, got 2.0"),
    (torch.tensor([[float("inf"), 0.5]]), [0], {}, "predictions contain NaN or infinite values"),
])
def test_each_bad_input_has_its_own_message(probs, labels, kwargs, message):
    with pytest.raises(UsageError) as info:
        expected_calibration_error(probs, labels, **kwargs)
    assert str(info.value) == message


def test_temperature_and_max_iter_messages():
    for bad in (0.0, -1.0, float("inf"), float("nan"), "2"):
        with pytest.raises(UsageError) as info:
            apply_temperature(torch.zeros(1, 2), bad)
        assert str(info.value) == f"temperature must be a positive finite number, got {bad!r}"
    with pytest.raises(UsageError) as info:
        apply_temperature(torch.zeros(1, 2, dtype=torch.long), 2.0)
    assert str(info.value) == "logits must be floats, got dtype torch.int64"
    with pytest.raises(UsageError) as info:
        fit_temperature(torch.zeros(2, 2), [0, 1], max_iter=0)
    assert str(info.value) == "max_iter must be a positive integer, got 0"
    z = torch.tensor([[2.0, 0.0]], dtype=torch.float32)
    assert apply_temperature(z, 4).tolist() == [[0.5, 0.0]] and apply_temperature(z, 4).dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# more boundaries, and what a reliability diagram shows


def test_no_predictions_and_empty_bins():
    with pytest.raises(UsageError) as info:
        expected_calibration_error(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    assert str(info.value) == "predictions must have shape (N, C) with N >= 1 and C >= 2, got (0, 2)"
    # empty bins report zeros, and confidence exactly on an inner edge goes to the bin below it
    bins = reliability_bins(top_class_probs([0.25, 0.75, 0.75], num_classes=4), [0, 1, 0], n_bins=4)
    assert bins.counts.tolist() == [1, 0, 2, 0]
    assert bins.confidence.tolist() == [0.25, 0.0, 0.75, 0.0] and bins.accuracy.tolist() == [1.0, 0.0, 0.5, 0.0]
    assert bins.ece == pytest.approx((1 * 0.75 + 2 * 0.25) / 3)
    assert bins.counts.dtype.kind == "i" and bins.edges.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_labels_may_be_any_integer_type_and_probabilities_any_float():
    probs = top_class_probs([0.9, 0.6], num_classes=2).float()
    for labels in ([0, 1], np.array([0, 1], dtype=np.uint8), torch.tensor([0, 1], dtype=torch.int16)):
        assert expected_calibration_error(probs, labels) == pytest.approx((0.1 + 0.6) / 2, abs=1e-6)
    assert negative_log_likelihood(torch.tensor([[0.0, 0.0]], dtype=torch.float16), torch.tensor([1], dtype=torch.int32)) \
        == pytest.approx(math.log(2), abs=1e-6)


def test_temperature_optimum_on_a_toy_case():
    # logits (d, 0), the top class right on a fraction p: NLL(T) is smallest where sigmoid(d / T) = p
    for d, p, n in ((4.0, 0.75, 4), (1.0, 0.9, 10)):
        right = round(p * n)
        logits = torch.tensor([[d, 0.0]] * n)
        labels = torch.tensor([0] * right + [1] * (n - right))
        assert fit_temperature(logits, labels) == pytest.approx(d / math.log(p / (1 - p)), rel=1e-4)
    # one L-BFGS iteration does not reach the optimum from T = 1
    logits = torch.tensor([[4.0, 0.0]] * 4)
    t1 = fit_temperature(logits, torch.tensor([0, 0, 0, 1]), max_iter=1)
    assert 1.0 < t1 < 4 / math.log(3) * 0.999


def test_reliability_figure_shows_accuracy_bars_and_the_gap_to_confidence(tmp_path):
    import matplotlib.pyplot as plt

    from robustlab.calibration_plots import reliability_figure

    probs = top_class_probs([0.9, 0.9, 0.9, 0.9, 0.3], num_classes=4)
    fig = reliability_figure(probs, [0, 0, 1, 2, 0], title="model", n_bins=5)
    try:
        ax = fig.axes[0]
        assert ax.get_title() == f"model\nECE = {100 * (4 / 5 * 0.4 + 1 / 5 * 0.7):.2f}%"
        bars = [(round(p.get_x(), 9), round(p.get_width(), 9), round(p.get_y(), 9), round(p.get_height(), 9))
                for p in ax.patches]
        # accuracy bars of the two filled bins (0.2, 0.4] and (0.8, 1], then the gaps from accuracy to confidence
        assert bars == [(0.2, 0.2, 0.0, 1.0), (0.8, 0.2, 0.0, 0.5), (0.2, 0.2, 1.0, -0.7), (0.8, 0.2, 0.5, 0.4)]
        assert ax.get_xlim() == (0, 1) and ax.get_ylim() == (0, 1)
        assert ax.get_xlabel() == "confidence" and ax.get_ylabel() == "accuracy"
        diagonal = ax.lines[0]
        assert list(diagonal.get_xdata()) == [0, 1] and list(diagonal.get_ydata()) == [0, 1]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["perfect calibration", "accuracy", "gap"]
    finally:
        plt.close(fig)
    fig = reliability_figure(probs, [0, 0, 1, 2, 0], n_bins=5)
    assert fig.axes[0].get_title() == "ECE = 46.00%"  # 4/5 x 0.4 + 1/5 x 0.7
    plt.close(fig)
    fig = reliability_figure(probs, [0, 0, 1, 2, 0])  # 15 bins by default, as for the ECE
    assert {round(p.get_width(), 12) for p in fig.axes[0].patches} == {round(1 / 15, 12)}
    plt.close(fig)
    path = plot_reliability_diagram(probs, [0, 0, 1, 2, 0], tmp_path / "a" / "b" / "R.PNG")
    assert path == tmp_path / "a" / "b" / "R.PNG" and path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UsageError) as info:
        plot_reliability_diagram(probs, [0, 0, 1, 2, 0], tmp_path / "r.svg")
    assert str(info.value) == f"reliability diagram path must end in .png, got {str(tmp_path / 'r.svg')!r}"
    assert not (tmp_path / "r.svg").exists()


def test_a_probability_above_one_is_refused_even_within_the_sum_tolerance():
    with pytest.raises(UsageError) as info:
        expected_calibration_error(torch.tensor([[1.0005, 0.0]], dtype=torch.float64), [0])
    assert str(info.value).startswith("predictions are not probabilities")


def test_the_saved_diagram_has_the_title_and_may_share_a_folder(tmp_path, monkeypatch):
    import robustlab.calibration_plots as C

    titles = []
    make = C.reliability_figure
    monkeypatch.setattr(C, "reliability_figure", lambda *a, **k: titles.append(k["title"]) or make(*a, **k))
    probs = top_class_probs([0.9, 0.6], num_classes=2)
    plot_reliability_diagram(probs, [0, 1], tmp_path / "d" / "one.png", title="first")
    plot_reliability_diagram(probs, [0, 1], tmp_path / "d" / "two.png")  # the folder exists by now
    assert titles == ["first", None] and (tmp_path / "d" / "two.png").stat().st_size > 0
