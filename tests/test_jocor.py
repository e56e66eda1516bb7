"""JoCoR: the symmetric-KL co-regularisation, the joint loss, small-loss selection on it, both
networks updated from the same samples, options, a short training run and the CLI."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from coteach_helpers import PerSampleLogits, rows_with_grad, softplus
from noisy_toy import TWO_NETWORK_TOY, ce_test_accuracy, fit_toy
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.strategies import BuildContext, create_strategy, make_config
from robustlab.strategies.jocor import JoCoR, joint_loss, symmetric_kl


def test_co_regularisation_is_zero_for_equal_predictions_and_symmetric_kl_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=g)
    assert symmetric_kl(logits, logits).abs().max().item() < 1e-6
    assert symmetric_kl(logits, logits + 3.0).abs().max().item() < 1e-6  # same softmax, shifted logits
    # p = (a, 1 - a), q = (1 - a, a) with a = sigmoid(1): KL(p||q) = KL(q||p) = (2a - 1) * ln(a / (1 - a)) = 2a - 1
    a = 1 / (1 + math.exp(-1))
    got = symmetric_kl(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert got.item() == pytest.approx(2 * (2 * a - 1), rel=1e-6)


def official_co_reg(y1, y2):
    """kl_loss_compute(y1, y2) + kl_loss_compute(y2, y1) of hongxin001/JoCoR (algorithm/loss.py), per sample."""
    def kl(pred, soft_targets):
        return F.kl_div(F.log_softmax(pred, dim=1), F.softmax(soft_targets, dim=1), reduction="none").sum(1)
    return kl(y1, y2) + kl(y2, y1)


def test_joint_loss_equals_the_official_formula():
    g = torch.Generator().manual_seed(1)
    y1, y2 = torch.randn(32, 10, generator=g) * 3, torch.randn(32, 10, generator=g) * 3
    t = torch.randint(0, 10, (32,), generator=g)
    ce = F.cross_entropy(y1, t, reduction="none") + F.cross_entropy(y2, t, reduction="none")
    expected = (1 - 0.9) * ce + 0.9 * official_co_reg(y1, y2)
    assert torch.allclose(joint_loss(y1, y2, t, 0.9), expected, rtol=1e-5, atol=1e-6)


def test_joint_loss_vanishes_when_both_nets_agree_confidently_on_the_label():
    logits = torch.tensor([[20.0, 0.0, 0.0], [0.0, 0.0, 20.0]])
    y = torch.tensor([0, 2])
    assert joint_loss(logits, logits.clone(), y, 0.9).max().item() < 1e-7
    # agreeing nets: only the CE term is left, (1 - lambda) * 2 CE
    soft = torch.tensor([[1.0, 0.0, 0.0]])
    ce = F.cross_entropy(soft, torch.tensor([0])).item()
    assert joint_loss(soft, soft, torch.tensor([0]), 0.9).item() == pytest.approx(0.1 * 2 * ce, rel=1e-6)


# Two classes, every label 0: (net 1, net 2) margins per sample. Joint losses with lambda = 0.9:
# s0 0.0097, s1 ~7 (strong disagreement), s2 0.063, s3 0.120, s4 0.768 (nets disagree), s5 0.263.
# Smallest three: 0, 2, 3. By the cross-entropies alone it would be 0, 2, 4.
MARGINS1 = [3.0, 4.0, 1.0, 0.2, 2.0, -1.0]
MARGINS2 = [3.0, -4.0, 1.0, 0.2, 0.0, -1.0]
Y = torch.zeros(6, dtype=torch.long)
IDS = torch.arange(6)


def make(**kwargs):
    return JoCoR(PerSampleLogits.from_margins(MARGINS1), PerSampleLogits.from_margins(MARGINS2), forget_rate=0.5, num_gradual=0, **kwargs)


def test_both_nets_learn_only_from_the_samples_with_the_smallest_joint_loss():
    st = make(co_lambda=0.9, clean_labels=torch.tensor([0, 1, 0, 1, 0, 0]))  # samples 1 and 3 are mislabelled
    st.on_epoch_start(0, 1)
    out = st.train_step(IDS, Y, IDS, 0)
    out.loss.backward()
    assert rows_with_grad(st.model) == rows_with_grad(st.peer) == {0, 2, 3}
    # the kept samples' nets agree, so each joint loss is 0.1 * 2 * softplus(-margin)
    assert out.loss.item() == pytest.approx(sum(0.2 * softplus(m) for m in (3.0, 1.0, 0.2)) / 3, rel=1e-6)
    m = st.epoch_metrics()
    assert m["label_precision"] == pytest.approx(2 / 3)  # kept 0, 2, 3; 3 is mislabelled
    assert m["label_recall"] == pytest.approx(2 / 4)     # clean samples 0, 2, 4, 5; kept 0 and 2
    assert m["remember_rate"] == 0.5


def test_at_least_one_sample_is_kept():
    st = JoCoR(PerSampleLogits.from_margins(MARGINS1), PerSampleLogits.from_margins(MARGINS2), forget_rate=0.9, num_gradual=0)  # int(0.1 * 6) = 0
    st.on_epoch_start(0, 1)
    st.train_step(IDS, Y, IDS, 0).loss.backward()
    assert rows_with_grad(st.model) == rows_with_grad(st.peer) == {0}  # the smallest joint loss


def test_co_regularisation_sends_gradient_into_both_networks():
    st = JoCoR(PerSampleLogits.from_margins([2.0]), PerSampleLogits.from_margins([-1.0]), forget_rate=0.0, num_gradual=0, co_lambda=1.0)
    st.on_epoch_start(0, 1)
    out = st.train_step(torch.arange(1), torch.zeros(1, dtype=torch.long), torch.arange(1), 0)
    out.loss.backward()
    g1, g2 = st.model.table.grad[0], st.peer.table.grad[0]
    # pure co-regularisation pulls the margins together: net 1's down, net 2's up
    assert g1[0] > 0 and g2[0] < 0


def test_options_defaults_and_validation():
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=10), num_classes=10, noise_rate=0.4)
    st = create_strategy("jocor", context=ctx)
    assert st.co_lambda == 0.9 and st.tau == pytest.approx(0.4) and st.num_gradual == 10
    assert st.options() == {"forget_rate": pytest.approx(0.4), "num_gradual": 10, "exponent": 1.0, "ramp": "official",
                            "co_lambda": 0.9, "forget_rate_source": "oracle"}
    assert set(st.extra_predictors()) == {"net2", "ensemble"}
    assert create_strategy("jocor", context=ctx, co_lambda=0.5, forget_rate=0.2).co_lambda == 0.5
    for bad in (-0.1, 1.5):
        with pytest.raises(UsageError, match="co_lambda must be in"):
            make_config("jocor", {"co_lambda": bad})


def test_keeps_mostly_clean_samples_and_beats_memorising_ce():
    # 50% symmetric noise, Adam, 50 epochs: CE memorises the flipped labels (0.68 on the clean test
    # images); JoCoR's joint small-loss selection keeps the band (>= 0.99)
    _, result = fit_toy("jocor", TWO_NETWORK_TOY, num_gradual=10)
    last = result.history[-1]
    assert last["label_precision"] > 0.8  # half the labels are noisy: selection beats keeping everything
    assert 0.5 < last["label_recall"] <= 1.0
    assert min(result.metrics["test_acc"], result.metrics["test_net2_acc"]) >= ce_test_accuracy(TWO_NETWORK_TOY) + 0.2


def test_cli_runs_jocor_with_a_strategy_option(tiny_cifar10, tmp_path):
    from robustlab.train import main

    out = tmp_path / "out"
    rc = main(["--strategy", "jocor", "--strategy-arg", "co_lambda=0.5", "--noise-rate", "0.2",
               "--data-dir", str(tiny_cifar10.root), "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
               "--model", "tiny_cnn", "--epochs", "1", "--batch-size", "50", "--val-size", "0",
               "--tta", "none", "--device", "cpu", "--quiet"])
    assert rc == 0
    record = json.loads(next((out / "records").glob("jocor-*.json")).read_text())
    options = record["strategy_options"]
    assert options["co_lambda"] == 0.5
    assert options["forget_rate"] == pytest.approx(record["noise"]["realized_rate"])  # the default forget rate
    assert 0 < options["forget_rate"] <= 0.3
    assert {"label_precision", "label_recall"} <= set(record["history"][0])


def test_constructor_defaults_lambda_0_9_and_the_official_linear_ramp_over_ten_epochs():
    st = JoCoR(PerSampleLogits.from_margins(MARGINS1), PerSampleLogits.from_margins(MARGINS2), forget_rate=0.5)
    assert (st.co_lambda, st.num_gradual, st.exponent) == (0.9, 10, 1.0)
    assert st.epoch_metrics() == {"remember_rate": 1.0}
    st.on_epoch_start(4, 20)
    assert st.epoch_metrics() == {"remember_rate": pytest.approx(1 - 0.5 * 4 / 9)}  # 0.78 of 6 -> 4 kept
    out = st.train_step(IDS, Y, IDS, 4)
    per_sample = 0.1 * 2 * torch.tensor([softplus(m) for m in MARGINS1]) + 0.9 * official_co_reg(
        st.model.table.detach(), st.peer.table.detach())
    # joint losses (see MARGINS1): the four smallest are samples 0, 2, 3, 5
    assert torch.argsort(per_sample)[:4].sort().values.tolist() == [0, 2, 3, 5]
    assert out.loss.item() == pytest.approx(per_sample[[0, 2, 3, 5]].mean().item(), rel=1e-5)


def test_the_co_regularisation_uses_the_class_dimension_without_warnings():
    import warnings

    g = torch.Generator().manual_seed(2)
    y1, y2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "implicit dimension choice" deprecation
        got = symmetric_kl(y1, y2)
    assert torch.allclose(got, official_co_reg(y1, y2), rtol=1e-5, atol=1e-6)


def test_train_accuracy_is_measured_on_net_1s_logits():
    st = make()
    st.on_epoch_start(0, 1)
    out = st.train_step(IDS, Y, IDS, 0)
    assert torch.equal(out.logits, st.model.table.detach()) and out.targets is None


@pytest.mark.parametrize("co_lambda", [0.0, 1.0])
def test_co_lambda_edges_are_valid(co_lambda):
    # 0: two independent CE losses on the joint small-loss samples; 1: pure co-regularisation
    assert make_config("jocor", {"co_lambda": co_lambda}).co_lambda == co_lambda
    assert make(co_lambda=co_lambda).co_lambda == co_lambda


@pytest.mark.parametrize("make_it, prefix", [(lambda: make_config("jocor", {"co_lambda": 1.5}), "strategy 'jocor': "),
                                             (lambda: make(co_lambda=1.5), "")])
def test_co_lambda_outside_0_1_is_refused_with_its_value(make_it, prefix):
    with pytest.raises(UsageError) as info:
        make_it()
    assert str(info.value) == prefix + "co_lambda must be in [0, 1], got 1.5"
