"""Co-teaching+: the disagreement filter, which samples drive each network, the Co-Teaching phase
before init_epoch, selection precision/recall, options, and a short training run."""

import pytest
import torch

from coteach_helpers import PerSampleLogits, rows_with_grad, softplus
from noisy_toy import TWO_NETWORK_TOY, ce_test_accuracy, fit_toy
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.strategies import BuildContext, CoTeaching, create_strategy, make_config
from robustlab.strategies.coteach_plus import CoTeachingPlus, disagreement


# Two classes, every label 0, so a sample's loss is softplus(-margin) and the net predicts 0 iff margin > 0.
MARGINS1 = [3.0, 1.0, 4.0, -1.0, 2.0, 5.0, -2.0, 0.5]
MARGINS2 = [3.0, -1.0, 4.0, 1.0, -0.5, 5.0, 2.0, -3.0]
# The nets agree on samples 0, 2, 5 (which have the smallest losses of all) and disagree on 1, 3, 4, 6, 7.
Y = torch.zeros(8, dtype=torch.long)
IDS = torch.arange(8)
CLEAN = torch.tensor([0, 0, 0, 1, 0, 0, 1, 0])  # samples 3 and 6 carry a wrong label


def make(init_epoch=2, forget_rate=0.4):
    # num_gradual = 0: R(T) = 1 - forget_rate from the first epoch on
    st = CoTeachingPlus(PerSampleLogits.from_margins(MARGINS1), PerSampleLogits.from_margins(MARGINS2), forget_rate=forget_rate,
                        num_gradual=0, init_epoch=init_epoch, clean_labels=CLEAN)
    return st


def step(st, epoch):
    st.on_epoch_start(epoch, 10)
    st.zero_grad()
    out = st.train_step(IDS, Y, IDS, epoch)
    out.loss.backward()
    return out


def test_disagreement_positions():
    l1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    l2 = torch.tensor([[0.0, 1.0], [0.0, 2.0], [3.0, 0.0]])
    assert disagreement(l1, l2).tolist() == [0]


def test_after_init_epoch_each_net_learns_from_its_peers_small_loss_disagreeing_samples():
    st = make(init_epoch=2)
    out = step(st, epoch=2)
    # R = 0.6 of the 5 disagreeing samples -> 3. Net 1's smallest losses among them (largest margins):
    # samples 4 (2), 1 (1), 7 (0.5) -> net 2 learns from them; net 2's: 6 (2), 3 (1), 4 (-0.5) -> net 1.
    assert rows_with_grad(st.model) == {3, 4, 6}
    assert rows_with_grad(st.peer) == {1, 4, 7}
    # the agreed samples 0, 2, 5 have the smallest losses but never take part
    expected = (sum(softplus(MARGINS1[i]) for i in (3, 4, 6)) / 3 + sum(softplus(MARGINS2[i]) for i in (1, 4, 7)) / 3)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    m = st.epoch_metrics()
    assert m["disagreement"] == pytest.approx(5 / 8)
    # kept: {3, 4, 6} and {1, 4, 7}: 4 clean of 6 kept; recall: 4 of 2 x 6 clean samples in the batch
    assert m["label_precision"] == pytest.approx(4 / 6)
    assert m["label_recall"] == pytest.approx(4 / 12)
    st.on_epoch_start(3, 10)  # the counts are per epoch
    assert st.epoch_metrics() == {"remember_rate": pytest.approx(0.6)}


def test_before_init_epoch_it_is_a_co_teaching_step_over_the_whole_batch():
    st = make(init_epoch=2)
    out = step(st, epoch=1)
    # R = 0.6 of 8 -> 4: net 1 keeps 5, 2, 0, 4 (net 2 learns from them); net 2 keeps 5, 2, 0, 6
    assert rows_with_grad(st.model) == {0, 2, 5, 6}
    assert rows_with_grad(st.peer) == {0, 2, 4, 5}
    ref = CoTeaching(PerSampleLogits.from_margins(MARGINS1), PerSampleLogits.from_margins(MARGINS2), forget_rate=0.4, num_gradual=0)
    ref.on_epoch_start(1, 10)
    assert out.loss.item() == pytest.approx(ref.train_step(IDS, Y, IDS, 1).loss.item(), rel=1e-6)
    assert "disagreement" not in st.epoch_metrics()
    assert st.epoch_metrics()["label_recall"] == pytest.approx((3 + 4) / 12)


def test_a_batch_without_disagreement_gives_no_gradient_and_misses_every_clean_sample():
    same = [1.0, 2.0, -1.0, 3.0]
    st = CoTeachingPlus(PerSampleLogits.from_margins(same), PerSampleLogits.from_margins(same), forget_rate=0.2, num_gradual=0, init_epoch=0,
                        clean_labels=torch.zeros(4, dtype=torch.long))
    st.on_epoch_start(0, 1)
    out = st.train_step(torch.arange(4), torch.zeros(4, dtype=torch.long), torch.arange(4), 0)
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert not st.model.table.grad.any() and not st.peer.table.grad.any()
    assert st.epoch_metrics()["label_recall"] == 0.0 and st.epoch_metrics()["disagreement"] == 0.0


def test_when_r_times_disagreements_rounds_to_zero_all_disagreeing_samples_are_used():
    st = make(init_epoch=0, forget_rate=0.9)  # R = 0.1: int(0.1 * 5) = 0 -> all 5, as in the official code
    step(st, epoch=0)
    assert rows_with_grad(st.model) == rows_with_grad(st.peer) == {1, 3, 4, 6, 7}


def test_options_defaults_and_validation():
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=10), num_classes=10, noise_rate=0.35)
    st = create_strategy("coteach_plus", context=ctx)
    assert st.init_epoch == 20 and st.tau == pytest.approx(0.35) and st.num_gradual == 10
    assert st.options() == {"forget_rate": pytest.approx(0.35), "num_gradual": 10, "exponent": 1.0, "ramp": "official",
                            "init_epoch": 20, "forget_rate_source": "oracle"}
    assert set(st.extra_predictors()) == {"net2", "ensemble"}
    assert create_strategy("coteach_plus", context=ctx, init_epoch=3).init_epoch == 3
    with pytest.raises(UsageError, match="init_epoch must be >= 0"):
        make_config("coteach_plus", {"init_epoch": -1})
    with pytest.raises(UsageError, match="needs a forget rate"):
        create_strategy("coteach_plus", context=BuildContext(new_model=ctx.new_model, num_classes=10))


def test_switches_to_disagreement_at_init_epoch_and_beats_memorising_ce():
    # 50% symmetric noise, Adam, 50 epochs: CE memorises the flipped labels (0.68 on the clean test
    # images); Co-teaching+ keeps the band (>= 0.99)
    st, result = fit_toy("coteach_plus", TWO_NETWORK_TOY, num_gradual=10, init_epoch=10)
    hist = result.history
    assert all("disagreement" not in row for row in hist[:10])
    assert all(0.0 <= row["disagreement"] < 0.5 for row in hist[10:])  # only a minority of samples is used
    assert hist[9]["label_precision"] > 0.8  # Co-Teaching phase: cleaner than the 50% clean labels
    ce = ce_test_accuracy(TWO_NETWORK_TOY)
    assert min(result.metrics["test_acc"], result.metrics["test_net2_acc"], result.metrics["test_ensemble_acc"]) >= ce + 0.2


def test_constructor_defaults_init_epoch_20_and_the_official_linear_ramp_over_ten_epochs():
    st = CoTeachingPlus(PerSampleLogits.from_margins(MARGINS1), PerSampleLogits.from_margins(MARGINS2),
                        forget_rate=0.4, clean_labels=CLEAN)
    assert (st.init_epoch, st.num_gradual, st.exponent) == (20, 10, 1.0)
    # before any on_epoch_start: R = 1 and nothing counted yet
    assert st.epoch_metrics() == {"remember_rate": 1.0}
    out = st.train_step(IDS, Y, IDS, 20)  # from epoch 20 on: all 5 disagreeing samples (R = 1) for both nets
    out.loss.backward()
    assert rows_with_grad(st.model) == rows_with_grad(st.peer) == {1, 3, 4, 6, 7}
    assert st.epoch_metrics()["disagreement"] == pytest.approx(5 / 8)
    st.on_epoch_start(5, 30)
    assert st.epoch_metrics() == {"remember_rate": pytest.approx(1 - 0.4 * 5 / 9)}  # official: linspace(0, 0.4, 10)[5]
    st.zero_grad()
    st.train_step(IDS, Y, IDS, 19).loss.backward()  # the last Co-Teaching epoch: R = 0.78 of the whole batch
    assert "disagreement" not in st.epoch_metrics()
    assert len(rows_with_grad(st.model)) == len(rows_with_grad(st.peer)) == int((1 - 0.4 * 5 / 9) * 8) == 6


def test_a_single_disagreeing_sample_trains_both_networks():
    margins1, margins2 = [2.0, 1.0, -1.0], [3.0, 0.5, 1.0]  # only sample 2 is disputed
    st = CoTeachingPlus(PerSampleLogits.from_margins(margins1), PerSampleLogits.from_margins(margins2),
                        forget_rate=0.5, num_gradual=0, init_epoch=0)
    st.on_epoch_start(0, 1)
    out = st.train_step(torch.arange(3), torch.zeros(3, dtype=torch.long), torch.arange(3), 0)
    out.loss.backward()
    assert rows_with_grad(st.model) == rows_with_grad(st.peer) == {2}  # int(0.5 * 1) = 0 -> the one sample
    assert out.loss.item() == pytest.approx(softplus(-1.0) + softplus(1.0), rel=1e-6)
    assert st.epoch_metrics()["disagreement"] == pytest.approx(1 / 3)


def test_an_agreeing_batch_counts_its_clean_samples_once_per_network_in_the_recall():
    st = make(init_epoch=0)
    st.on_epoch_start(0, 10)
    agree, disputed = torch.tensor([0, 2, 5]), torch.tensor([1, 3, 4, 6, 7])
    st.train_step(disputed, Y[disputed], disputed, 0)  # picks {3, 4, 6} and {1, 4, 7}, as above
    st.train_step(agree, Y[agree], agree, 0)            # no disagreement: nothing kept
    m = st.epoch_metrics()
    # kept: 4 clean of 6; clean seen: (3 in the disputed batch + 3 in the agreeing one) x 2 selections
    assert m["label_precision"] == pytest.approx(4 / 6)
    assert m["label_recall"] == pytest.approx(4 / 12)
    assert m["disagreement"] == pytest.approx(5 / 8)


def test_a_batch_without_disagreement_has_zero_loss_even_when_every_loss_underflows_to_zero():
    sure = [200.0] * 3  # CE = softplus(-200) = 0 exactly in float32
    st = CoTeachingPlus(PerSampleLogits.from_margins(sure), PerSampleLogits.from_margins(sure), forget_rate=0.2,
                        num_gradual=0, init_epoch=0)
    st.on_epoch_start(0, 1)
    out = st.train_step(torch.arange(3), torch.zeros(3, dtype=torch.long), torch.arange(3), 0)
    out.loss.backward()
    assert out.loss.item() == 0.0  # not 0 / 0
    assert st.model.table.grad is not None and not st.model.table.grad.any() and not st.peer.table.grad.any()


def test_train_accuracy_is_measured_on_net_1s_logits_in_every_phase():
    for epoch, margins2 in ((1, MARGINS2), (2, MARGINS2), (2, MARGINS1)):  # co-teaching, disagreement, none
        st = CoTeachingPlus(PerSampleLogits.from_margins(MARGINS1), PerSampleLogits.from_margins(margins2),
                            forget_rate=0.4, num_gradual=0, init_epoch=2)
        st.on_epoch_start(epoch, 10)
        out = st.train_step(IDS, Y, IDS, epoch)
        assert torch.equal(out.logits, st.model.table.detach()) and out.targets is None


@pytest.mark.parametrize("make_it, prefix", [(lambda: make_config("coteach_plus", {"init_epoch": -1}),
                                              "strategy 'coteach_plus': "), (lambda: make(init_epoch=-1), "")])
def test_a_negative_init_epoch_is_refused_with_its_value(make_it, prefix):
    with pytest.raises(UsageError) as info:
        make_it()
    assert str(info.value) == prefix + "init_epoch must be >= 0, got -1"


def test_init_epoch_zero_is_valid_and_filters_from_the_first_epoch():
    assert make_config("coteach_plus", {"init_epoch": 0}).init_epoch == 0
    st = make(init_epoch=0)
    step(st, epoch=0)
    assert st.epoch_metrics()["disagreement"] == pytest.approx(5 / 8)
