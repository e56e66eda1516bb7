"""Co-teaching+: the disagreement filter, which samples drive each network, the Co-Teaching phase
before init_epoch, selection precision/recall, options, and a short training run."""
import math

import pytest
import torch
from torch import nn

from noisy_toy import fit_toy
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.strategies import BuildContext, CoTeaching, create_strategy, make_config
from robustlab.strategies.coteach_plus import CoTeachingPlus, disagreement


class PerSampleLogits(nn.Module):
    """Logits looked up per sample id (the input): a row receives gradient only if that sample is used."""

    def __init__(self, margins):
        super().__init__()
        self.table = nn.Parameter(torch.tensor([[m, 0.0] for m in margins]))

    def forward(self, ids):
        return self.table[ids]


# Two classes, every label 0, so a sample's loss is softplus(-margin) and the net predicts 0 iff margin > 0.
MARGINS1 = [3.0, 1.0, 4.0, -1.0, 2.0, 5.0, -2.0, 0.5]
MARGINS2 = [3.0, -1.0, 4.0, 1.0, -0.5, 5.0, 2.0, -3.0]
# The nets agree on samples 0, 2, 5 (which have the smallest losses of all) and disagree on 1, 3, 4, 6, 7.
Y = torch.zeros(8, dtype=torch.long)
IDS = torch.arange(8)
CLEAN = torch.tensor([0, 0, 0, 1, 0, 0, 1, 0])  # samples 3 and 6 carry a wrong label


def softplus(m):
    return math.log1p(math.exp(-m))


def make(init_epoch=2, forget_rate=0.4):
    # num_gradual = 0: R(T) = 1 - forget_rate from the first epoch on
    st = CoTeachingPlus(PerSampleLogits(MARGINS1), PerSampleLogits(MARGINS2), forget_rate=forget_rate,
                        num_gradual=0, init_epoch=init_epoch, clean_labels=CLEAN)
    return st


def rows_with_grad(net):
    return set(torch.nonzero(net.table.grad.abs().sum(1)).squeeze(1).tolist())


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
    ref = CoTeaching(PerSampleLogits(MARGINS1), PerSampleLogits(MARGINS2), forget_rate=0.4, num_gradual=0)
    ref.on_epoch_start(1, 10)
    assert out.loss.item() == pytest.approx(ref.train_step(IDS, Y, IDS, 1).loss.item(), rel=1e-6)
    assert "disagreement" not in st.epoch_metrics()
    assert st.epoch_metrics()["label_recall"] == pytest.approx((3 + 4) / 12)


def test_a_batch_without_disagreement_gives_no_gradient_and_misses_every_clean_sample():
    same = [1.0, 2.0, -1.0, 3.0]
    st = CoTeachingPlus(PerSampleLogits(same), PerSampleLogits(same), forget_rate=0.2, num_gradual=0, init_epoch=0,
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
    assert st.options() == {"forget_rate": pytest.approx(0.35), "num_gradual": 10, "exponent": 1.0, "init_epoch": 20}
    assert set(st.extra_predictors()) == {"net2", "ensemble"}
    assert create_strategy("coteach_plus", context=ctx, init_epoch=3).init_epoch == 3
    with pytest.raises(UsageError, match="init_epoch must be >= 0"):
        make_config("coteach_plus", {"init_epoch": -1})
    with pytest.raises(UsageError, match="needs a forget rate"):
        create_strategy("coteach_plus", context=BuildContext(new_model=ctx.new_model, num_classes=10))


def test_trains_on_noisy_toy_labels_and_switches_to_disagreement_at_init_epoch():
    st, result = fit_toy("coteach_plus", noise=0.3, epochs=6, num_gradual=2, init_epoch=3)
    hist = result.history
    assert all("disagreement" not in row for row in hist[:3])
    assert all(0.0 <= row["disagreement"] < 0.5 for row in hist[3:])  # only a minority of samples is used
    assert hist[2]["label_precision"] > 0.8  # Co-Teaching phase: cleaner than the 70% clean labels
    assert result.metrics["test_acc"] >= 0.6 and result.metrics["test_net2_acc"] >= 0.6  # chance: 0.25
    assert "test_ensemble_acc" in result.metrics
