"""Co-Teaching: the R(T) schedule, small-loss cross selection, label precision, the loss."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import UsageError
from robustlab.strategies.coteaching import CoTeaching, EnsembleLogits, cross_update_indices, remember_rate


@pytest.mark.parametrize("epoch,expected", [(0, 1.0), (1, 0.94), (5, 0.7), (10, 0.7), (50, 0.7)])
def test_remember_rate_matches_hand_values(epoch, expected):
    # R(T) = 1 - min(T / Tk * tau, tau) with tau = 0.3, Tk = 5
    assert remember_rate(epoch, tau=0.3, num_gradual=5) == pytest.approx(expected)


def test_remember_rate_exponent_shapes_the_ramp():
    # tau * (T/Tk)^2 at T = 2, Tk = 4: 0.4 * 0.25 = 0.1 forgotten
    assert remember_rate(2, tau=0.4, num_gradual=4, exponent=2) == pytest.approx(0.9)


def test_cross_update_swaps_small_loss_picks():
    loss1 = torch.tensor([0.9, 0.1, 0.5, 0.3, 2.0])
    loss2 = torch.tensor([0.2, 0.8, 0.1, 1.5, 0.05])
    update1, update2 = cross_update_indices(loss1, loss2, num_remember=3)
    # net 2's three smallest losses are samples 4, 2, 0: net 1 learns from them, and vice versa.
    assert sorted(update1.tolist()) == [0, 2, 4]
    assert sorted(update2.tolist()) == [1, 2, 3]


class FixedLogits(nn.Module):
    """Returns preset logits for the batch regardless of input: makes losses hand-computable."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return self.logits * self.scale


def test_train_step_loss_label_precision_and_ensemble():
    y = torch.tensor([0, 1, 0, 1])
    clean = torch.tensor([0, 1, 1, 1])  # sample 2's label is noisy
    logits1 = torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, 1.0], [0.5, 0.0]])
    logits2 = torch.tensor([[2.0, 0.0], [0.0, 0.5], [0.0, 3.0], [0.0, 1.0]])
    st = CoTeaching(FixedLogits(logits1), FixedLogits(logits2), forget_rate=0.5, num_gradual=1, clean_labels=clean)
    st.on_epoch_start(epoch=1, num_epochs=2)  # R = 0.5: keep 2 of 4
    out = st.train_step(torch.zeros(4, 1), y, torch.arange(4), epoch=1)
    l1 = F.cross_entropy(logits1, y, reduction="none")
    l2 = F.cross_entropy(logits2, y, reduction="none")
    keep_by_1 = torch.argsort(l1)[:2]
    keep_by_2 = torch.argsort(l2)[:2]
    expected = l1[keep_by_2].mean() + l2[keep_by_1].mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    kept = torch.cat([keep_by_1, keep_by_2])
    precision = (clean[kept] == y[kept]).float().mean().item()
    assert st.epoch_metrics()["label_precision"] == pytest.approx(precision)
    # recall: kept clean samples over the batch's 3 clean samples, once per network's selection
    recall = (clean[kept] == y[kept]).sum().item() / (2 * 3)
    assert st.epoch_metrics()["label_recall"] == pytest.approx(recall)
    assert st.epoch_metrics()["remember_rate"] == pytest.approx(0.5)
    ens = EnsembleLogits(st.model, st.peer)(torch.zeros(4, 1))
    ref = ((logits1.softmax(1) + logits2.softmax(1)) / 2).log()
    assert torch.allclose(ens, ref, atol=1e-6)


def test_bad_forget_rate_is_a_usage_error():
    with pytest.raises(UsageError):
        CoTeaching(nn.Linear(2, 2), nn.Linear(2, 2), forget_rate=1.0)


def test_precision_and_recall_by_hand_and_reset_each_epoch():
    # Every label 0; net 1 is most sure of samples 0, 1, net 2 of samples 2, 3 (keep 2 of 4 each).
    y = torch.zeros(4, dtype=torch.long)
    clean = torch.tensor([0, 1, 0, 0])  # sample 1 is mislabelled
    st = CoTeaching(FixedLogits(torch.tensor([[4.0, 0], [3.0, 0], [0.0, 0], [-1.0, 0]])),
                    FixedLogits(torch.tensor([[-1.0, 0], [0.0, 0], [3.0, 0], [4.0, 0]])),
                    forget_rate=0.5, num_gradual=0, clean_labels=clean)
    st.on_epoch_start(0, 2)
    st.train_step(torch.zeros(4, 1), y, torch.arange(4), 0)
    m = st.epoch_metrics()
    assert m["label_precision"] == pytest.approx(3 / 4)  # kept {0, 1} and {2, 3}: 3 clean of 4
    assert m["label_recall"] == pytest.approx(3 / 6)     # 3 clean samples per selection, 2 selections
    st.on_epoch_start(1, 2)
    assert "label_precision" not in st.epoch_metrics() and "label_recall" not in st.epoch_metrics()


def test_bf16_logits_are_ranked_in_float32():
    y = torch.tensor([0, 0])
    st = CoTeaching(FixedLogits(torch.tensor([[1.0, 0.0], [2.0, 0.0]]).bfloat16()),
                    FixedLogits(torch.tensor([[1.0, 0.0], [2.0, 0.0]]).bfloat16()), forget_rate=0.0)
    st.on_epoch_start(0, 1)
    assert st.train_step(torch.zeros(2, 1), y, torch.arange(2), 0).loss.dtype == torch.float32
