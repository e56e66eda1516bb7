"""Loss correction with a transition matrix (forward_t, backward_t): the losses against hand
calculations, backward's unbiasedness by enumeration, forward beating CE under strong asymmetric
noise on a toy, and every bad transition matrix rejected with one line."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from noisy_toy import CLASSES, NORM, toy_images
from robustlab.corruptions import corrupt_with_transition, noise_report
from robustlab.data import DeviceLoader
from robustlab.engine import TrainConfig, fit
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import BuildContext, create_strategy
from robustlab.strategies.backward_t import BackwardT, backward_corrected_loss
from robustlab.strategies.forward_t import ForwardT, forward_corrected_loss
from robustlab.strategies.transition import check_transition, load_transition, oracle_transition

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [-0.5, -0.5, 0.25]])
LABELS = torch.tensor([1, 2, 0])
T3 = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.0, 0.7]])


def softmax_by_hand(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_forward_is_ce_of_t_transposed_mixed_probabilities_by_hand():
    got = forward_corrected_loss(LOGITS, LABELS, T3)
    for i, (z, y) in enumerate(zip(LOGITS.tolist(), LABELS.tolist())):
        p = softmax_by_hand(z)
        mixed = [sum(T3[c, j].item() * p[c] for c in range(3)) for j in range(3)]  # T^T p
        assert got[i].item() == pytest.approx(-math.log(mixed[y]), rel=1e-6)


def test_backward_is_inverse_t_applied_to_per_class_losses_by_hand():
    inverse = torch.linalg.inv(T3.double()).float()
    got = backward_corrected_loss(LOGITS, LABELS, inverse)
    for i, (z, y) in enumerate(zip(LOGITS.tolist(), LABELS.tolist())):
        losses = [-math.log(v) for v in softmax_by_hand(z)]
        assert got[i].item() == pytest.approx(sum(inverse[y, j].item() * losses[j] for j in range(3)), rel=1e-5)


def test_identity_t_gives_plain_cross_entropy():
    ce = F.cross_entropy(LOGITS, LABELS, reduction="none")
    eye = torch.eye(3)
    torch.testing.assert_close(forward_corrected_loss(LOGITS, LABELS, eye), ce)
    torch.testing.assert_close(backward_corrected_loss(LOGITS, LABELS, eye), ce)


def test_backward_is_unbiased_in_expectation_over_the_noisy_label():
    """sum over noisy labels j of T[c, j] * corrected(z, j) equals CE(z, c), for every clean class c."""
    g = torch.Generator().manual_seed(0)
    t = torch.rand(4, 4, generator=g, dtype=torch.float64) + 2 * torch.eye(4, dtype=torch.float64)
    t = t / t.sum(1, keepdim=True)
    inverse = torch.linalg.inv(t)
    logits = torch.randn(5, 4, generator=g)
    for c in range(4):
        expected = sum(t[c, j] * backward_corrected_loss(logits, torch.full((5,), j), inverse.float()).double()
                       for j in range(4))
        clean = F.cross_entropy(logits, torch.full((5,), c), reduction="none").double()
        torch.testing.assert_close(expected, clean, rtol=1e-5, atol=1e-5)
        # the uncorrected loss is biased under this noise
        biased = sum(t[c, j] * F.cross_entropy(logits, torch.full((5,), j), reduction="none").double() for j in range(4))
        assert (biased - clean).abs().max() > 0.1


def test_probabilities_are_clipped_as_in_the_official_code():
    """p < 1e-7 counts as 1e-7: the loss of a hopeless label is -log(1e-7), the same in both corrections."""
    logits, y = torch.tensor([[100.0, 0.0, 0.0]]), torch.tensor([1])
    eye = torch.eye(3)
    assert forward_corrected_loss(logits, y, eye).item() == pytest.approx(-math.log(1e-7), rel=1e-5)
    assert backward_corrected_loss(logits, y, eye).item() == pytest.approx(-math.log(1e-7), rel=1e-5)
    # at the other end p = 1 counts as 1 - 1e-7
    assert backward_corrected_loss(logits, torch.tensor([0]), eye).item() == pytest.approx(1e-7, rel=0.2)
    assert forward_corrected_loss(logits, torch.tensor([0]), eye).item() == pytest.approx(1e-7, rel=0.2)


def test_forward_stays_float32_under_bf16_autocast():
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(1)) * 3
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    exact = -torch.log((torch.softmax(logits.double(), 1) @ T3.double())[torch.arange(6), y])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = forward_corrected_loss(logits, y, T3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-6)


# Strong asymmetric noise: most images of classes 0 and 2 are labelled 1 and 3; CE learns the flip.
PAIR_FLIP = np.array([[0.4, 0.6, 0, 0], [0, 1, 0, 0], [0, 0, 0.4, 0.6], [0, 0, 0, 1.0]])


def fit_pair_flip(name: str) -> float:
    torch.manual_seed(0)
    n_train = 256
    images, clean = toy_images(n_train + 96, seed=0)
    train_clean = clean[:n_train]
    noisy = torch.as_tensor(corrupt_with_transition(train_clean, PAIR_FLIP, seed=3))
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=CLASSES), num_classes=CLASSES,
                       num_train=n_train, noise_transition=noise_report(train_clean, noisy, CLASSES).transition)
    strategy = create_strategy(name, context=ctx)
    cfg = TrainConfig(epochs=6, batch_size=32, tta="none", precision="fp32",
                      optim=OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant"))
    result = fit(strategy, DeviceLoader(images[:n_train], noisy, 32, NORM, seed=0), cfg,
                 test_loader=DeviceLoader(images[n_train:], clean[n_train:], 96, NORM, shuffle=False),
                 quiet=True, num_classes=CLASSES)
    return result.metrics["test_acc"]


def test_forward_with_the_true_t_beats_ce_under_strong_asymmetric_noise():
    ce, forward = fit_pair_flip("ce"), fit_pair_flip("forward_t")
    assert ce < 0.7  # CE predicts the flipped class for most of classes 0 and 2
    assert forward > 0.9
    assert forward - ce > 0.25


def test_oracle_t_is_the_realised_noise_and_named_so():
    clean = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    noisy = torch.tensor([0, 0, 0, 1, 1, 1, 2, 0])
    ctx = BuildContext(new_model=lambda: torch.nn.Linear(2, 3), num_classes=3,
                       noise_transition=noise_report(clean, noisy, 3).transition)
    s = create_strategy("forward_t", context=ctx)
    torch.testing.assert_close(s.transition, torch.tensor([[0.75, 0.25, 0], [0, 1, 0], [0.5, 0, 0.5]]))
    assert s.options()["t_source"] == "oracle" and s.options()["t_origin"] == "oracle (realised noise)"
    assert s.options()["t_diagonal_mean"] == pytest.approx((0.75 + 1 + 0.5) / 3)
    # no noise: identity; a class absent from the labels: an identity row
    assert np.array_equal(oracle_transition(BuildContext(new_model=None, num_classes=3)), np.eye(3))
    absent = np.array([[0.5, 0.5, 0], [0, 0, 0], [0, 0, 1.0]])
    got = oracle_transition(BuildContext(new_model=None, num_classes=3, noise_transition=absent))
    assert np.array_equal(got, [[0.5, 0.5, 0], [0, 1, 0], [0, 0, 1]])


def test_t_from_npy_and_csv_files(tmp_path):
    t = np.array([[0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.0, 0.25, 0.75]])
    np.save(tmp_path / "T.npy", t)
    np.savetxt(tmp_path / "T.csv", t, delimiter=",", fmt="%.4f")
    for name, source in (("T.npy", "file"), ("T.csv", "estimate")):
        s = create_strategy("backward_t", torch.nn.Linear(2, 3), num_classes=3, t_source=source,
                            t_file=str(tmp_path / name))
        torch.testing.assert_close(s.transition, torch.tensor(t, dtype=torch.float32))
        torch.testing.assert_close(s.inverse, torch.linalg.inv(torch.tensor(t)).float())
        assert s.options()["t_origin"] == f"{source} {tmp_path / name}"
    # rows within 1e-3 of 1 pass and are renormalized exactly
    near = load_transition(_save(tmp_path, "near.npy", t * 1.0009))
    np.testing.assert_allclose(near.sum(1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(near, t, atol=1e-12)


def _save(folder, name, array, **kw):
    np.save(folder / name, np.asarray(array), **kw)
    return str(folder / name)


@pytest.mark.parametrize("array, message", [
    (np.full((2, 3), 1 / 3), "must be square"),
    (np.ones((1, 1)), "must be square"),
    (np.array([[1.2, -0.2], [0, 1]]), "negative entries"),
    (np.array([[0.5, 0.4], [0, 1]]), "row 0 sums to 0.9"),
    (np.array([[1, 0], [0.5, 0.5015]]), "row 1 sums to 1.002"),
    (np.array([[np.nan, 1], [0, 1]]), "NaN or inf"),
])
def test_bad_t_files_are_one_line_errors(tmp_path, array, message):
    path = _save(tmp_path, "T.npy", array)
    with pytest.raises(UsageError, match=message) as err:
        create_strategy("forward_t", torch.nn.Linear(2, 2), num_classes=2, t_source="file", t_file=path)
    assert "\n" not in str(err.value) and "T.npy" in str(err.value) and "forward_t" in str(err.value)


def test_t_of_the_wrong_size_for_the_dataset(tmp_path):
    path = _save(tmp_path, "T.npy", np.eye(3))
    with pytest.raises(UsageError, match=r"is 3x3, the dataset has 4 classes"):
        create_strategy("forward_t", torch.nn.Linear(2, 4), num_classes=4, t_source="file", t_file=path)
    assert check_transition(np.eye(4), "x", 4).shape == (4, 4)


def test_singular_t_is_refused_by_backward_only(tmp_path):
    singular = np.array([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]])
    path = _save(tmp_path, "T.npy", singular)
    with pytest.raises(UsageError, match="backward_t.*singular"):
        create_strategy("backward_t", torch.nn.Linear(2, 3), num_classes=3, t_source="file", t_file=path)
    create_strategy("forward_t", torch.nn.Linear(2, 3), num_classes=3, t_source="file", t_file=path)  # fine
    with pytest.raises(UsageError, match="singular"):
        BackwardT(torch.nn.Linear(2, 3), np.full((3, 3), 1 / 3))
    nearly = np.array([[0.5, 0.5], [0.5 - 1e-12, 0.5 + 1e-12]])
    with pytest.raises(UsageError, match="singular"):
        BackwardT(torch.nn.Linear(2, 2), nearly)
    BackwardT(torch.nn.Linear(2, 2), np.array([[0.5, 0.5], [0.49, 0.51]]))  # ill-conditioned but invertible


def test_file_format_and_option_errors(tmp_path):
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "T.txt").write_text("1,0\n0,1\n")
    (tmp_path / "bad.csv").write_text("1,0\nzero,1\n")
    cases = [({"t_source": "file", "t_file": str(obj)}, "not a readable matrix"),
             ({"t_source": "file", "t_file": str(tmp_path / "T.txt")}, "use a .npy or .csv"),
             ({"t_source": "file", "t_file": str(tmp_path / "bad.csv")}, "not a readable matrix"),
             ({"t_source": "file", "t_file": str(tmp_path / "missing.npy")}, "does not exist"),
             ({"t_source": "file"}, "needs t_file"),
             ({"t_source": "estimate"}, "labelissues writes T.npy"),
             ({"t_file": str(tmp_path / "T.npy")}, "t_file is read only with t_source=file or estimate"),
             ({"t_source": "guess"}, "t_source must be one of oracle, file, estimate")]
    for options, message in cases:
        with pytest.raises(UsageError, match=message):
            create_strategy("forward_t", torch.nn.Linear(2, 2), num_classes=2, **options)


def test_train_cli_rejects_a_bad_t_file_with_one_line_and_exit_2(tmp_path, capsys):
    from robustlab.train import main

    path = _save(tmp_path, "T.npy", np.array([[0.5, 0.4], [0, 1]]))
    code = main(["--strategy", "backward_t", "--strategy-arg", "t_source=file", "--strategy-arg", f"t_file={path}",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "row 0 sums to 0.9" in err and "T.npy" in err
    assert not (tmp_path / "out").exists()


def test_registered_with_the_shared_options():
    for cls in (ForwardT, BackwardT):
        assert cls.presets["quick"] == {} and cls.Config().t_source == "oracle"
    assert ForwardT.name == "forward_t" and BackwardT.name == "backward_t"


def test_train_cli_rejects_a_t_of_the_wrong_size_before_writing_anything(tiny_cifar10, tmp_path, capsys):
    from robustlab.train import main

    path = _save(tmp_path, "T.npy", np.eye(3))
    out = tmp_path / "out"
    code = main(["--strategy", "forward_t", "--strategy-arg", "t_source=estimate", "--strategy-arg", f"t_file={path}",
                 "--noise-rate", "0.2", "--epochs", "1", "--val-size", "0", "--model", "tiny_cnn", "--data-dir",
                 str(tiny_cifar10.root), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--quiet",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "is 3x3, the dataset has 10 classes" in err and "T.npy" in err
    assert not (out / "records").exists() and not (out / "runs").exists()


def test_noisy_label_study_passes_a_t_file_and_names_the_oracle(tmp_path):
    from types import SimpleNamespace

    from studies import noisy_labels

    path = _save(tmp_path, "T.npy", np.eye(10))
    args = noisy_labels.build_parser().parse_args(["--methods", "ce,forward_t,backward_t", "--t-file", path])
    methods = noisy_labels.choose_methods(args)
    assert methods["noisy_ce"].options == {}
    assert methods["noisy_forward_t"].options == methods["noisy_backward_t"].options == {"t_source": "file",
                                                                                          "t_file": path}
    default = noisy_labels.build_parser().parse_args(["--methods", "forward_t"])
    assert noisy_labels.choose_methods(default)["noisy_forward_t"].options == {}  # t_source oracle
    runs = [SimpleNamespace(config=SimpleNamespace(strategy=SimpleNamespace(name="forward_t", options={}), seed=0, tag="noisy_forward_t"),
                            record={"data": {"train": 8, "val": 2, "test": 4}, "strategy_options": {}})]
    base = noisy_labels.preset("quick")
    assert noisy_labels.table_note(runs, base, default).endswith("with the realised noise's T (an oracle).")
    assert noisy_labels.table_note(runs, base, args).endswith(f"with T from {path}.")
    bad = noisy_labels.build_parser().parse_args(["--methods", "forward_t", "--t-file", str(tmp_path / "no.npy")])
    with pytest.raises(UsageError, match="no.npy does not exist"):
        noisy_labels.choose_methods(bad)


@pytest.mark.parametrize("cls, loss", [(ForwardT, lambda z, y, s: forward_corrected_loss(z, y, s.transition)),
                                       (BackwardT, lambda z, y, s: backward_corrected_loss(z, y, torch.linalg.inv(T3)))])
def test_a_strategy_built_directly_steps_its_corrected_loss_and_says_t_was_given(cls, loss):
    model = torch.nn.Linear(4, 3)
    strategy = cls(model, T3.numpy())
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 1, 0])
    out = strategy.train_step(x, y, torch.arange(5), 0)
    logits = model(x)
    torch.testing.assert_close(out.logits, logits)  # what the engine's train accuracy reads
    torch.testing.assert_close(out.loss, loss(logits, y, strategy).mean(), rtol=1e-5, atol=1e-6)
    assert strategy.source == "given" and strategy.options()["t_origin"] == "given"


def test_a_bad_t_given_directly_is_named_by_the_strategy():
    with pytest.raises(UsageError, match="^forward_t: the transition matrix has negative entries"):
        ForwardT(torch.nn.Linear(2, 2), np.array([[1.2, -0.2], [0.0, 1.0]]))
    with pytest.raises(UsageError, match=r"^strategy 'backward_t': the transition matrix is singular .*; backward "
                                         r"correction needs an invertible T \(use forward_t\)$"):
        BackwardT(torch.nn.Linear(2, 2), np.array([[0.5, 0.5], [0.5, 0.5]]))


@pytest.mark.parametrize("source, message", [
    ("file", "t_source=file needs t_file=PATH (.npy or .csv)"),
    ("estimate", "t_source=estimate needs t_file=PATH (.npy or .csv; robustlab.labelissues writes T.npy)")])
def test_a_file_source_without_a_file_names_what_to_give(source, message):
    from robustlab.strategies.transition import TransitionConfig
    with pytest.raises(UsageError) as err:
        TransitionConfig(t_source=source).validate()
    assert str(err.value) == message


def test_unreadable_and_one_row_csv_files_name_the_problem(tmp_path):
    text = tmp_path / "t.csv"
    text.write_text("0.5,a\n0.5,0.5\n")
    with pytest.raises(UsageError) as err:
        load_transition(text)
    assert str(err.value).startswith(f"t_file {text} is not a readable matrix (could not convert")
    one = tmp_path / "one.csv"
    one.write_text("0.5,0.5\n")
    with pytest.raises(UsageError, match=r"must be square K x K with K >= 2, got shape \(1, 2\)"):
        load_transition(one)


def test_oracle_t_of_the_wrong_size_or_negative_is_named_as_the_oracle():
    from types import SimpleNamespace
    with pytest.raises(UsageError) as err:
        oracle_transition(SimpleNamespace(num_classes=3, noise_transition=np.eye(2)))
    assert str(err.value) == "the realised noise's transition matrix is (2, 2), the dataset has 3 classes"
    with pytest.raises(UsageError, match=r"^the realised noise \(oracle\): the transition matrix has negative"):
        oracle_transition(SimpleNamespace(num_classes=2, noise_transition=np.array([[1.5, -0.5], [0.0, 1.0]])))
