"""Peer loss: the loss against a line-by-line port of the official stable CE and peer term, the
official alpha schedule (ported) stretched to the run, independent peer draws from the batch,
the 1 / (1 + alpha) step scale, bad options, and an exact resume (the peer draws use torch's RNG)."""
import numpy as np
import pytest
import torch
from torch import nn

from robustlab.data import DeviceLoader, Normalize
from robustlab.engine import TrainConfig, fit
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import BuildContext, create_strategy, make_config
from robustlab.strategies.peer import PeerConfig, PeerLoss, alpha_at, official_alphas, peer_loss, stable_ce
from resume_helpers import InterruptAt, toy_images as _toy


class CrossEntropyLossStablePort(nn.Module):
    """Line-by-line port of the official `CrossEntropyLossStable` (weijiaheng/Multi-class-Peer-Loss-functions,
    CIFAR-10/runner.py)."""

    def __init__(self, reduction='mean', eps=1e-5):
        super().__init__()
        self._eps = eps
        self._softmax = nn.Softmax(dim=-1)
        self._nllloss = nn.NLLLoss(reduction=reduction)

    def forward(self, outputs, labels):
        return self._nllloss(torch.log(self._softmax(outputs) + self._eps), labels)


def f_alpha_port(epoch):
    """Line-by-line port of the official CIFAR-10 `f_alpha`."""
    alpha1 = np.linspace(0.0, 0.0, num=20)
    alpha2 = np.linspace(0.0, 1, num=20)
    alpha3 = np.linspace(1, 2, num=10)
    alpha4 = np.linspace(2, 5, num=50)
    alpha5 = np.linspace(5, 10, num=100)
    alpha6 = np.linspace(10, 20, num=100)
    alpha = np.concatenate((alpha1, alpha2, alpha3, alpha4, alpha5, alpha6), axis=0)
    return alpha[epoch]


def test_the_alpha_schedule_is_the_official_one_stretched_to_the_run():
    assert len(official_alphas()) == 300
    assert [alpha_at(e, 300) for e in range(300)] == [f_alpha_port(e) for e in range(300)]
    assert [alpha_at(e, 10) for e in range(10)] == [f_alpha_port(30 * e) for e in range(10)]
    assert [alpha_at(e, 20) for e in range(20)] == [f_alpha_port(15 * e) for e in range(20)]
    assert alpha_at(0, 20) == alpha_at(1, 20) == 0.0 and alpha_at(19, 20) == pytest.approx(10 + 10 * 85 / 99)
    assert alpha_at(7, 20, alpha=1.5) == 1.5


@pytest.mark.parametrize("alpha", [0.0, 1.0, 4.5])
def test_loss_and_gradient_match_the_official_formula(alpha):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 4, generator=g) * 3, torch.randn(6, 4, generator=g) * 3
    y, y2 = torch.randint(0, 4, (6,), generator=g), torch.randint(0, 4, (6,), generator=g)
    mine = [t.clone().requires_grad_(True) for t in (a, b)]
    ref = [t.clone().requires_grad_(True) for t in (a, b)]
    criterion = CrossEntropyLossStablePort()
    lm = peer_loss(mine[0], y, mine[1], y2, alpha)
    lr = criterion(ref[0], y.long()) - alpha * criterion(ref[1], y2.long())  # official: train()
    assert lm.item() == pytest.approx(lr.item(), rel=1e-6, abs=1e-7)
    lm.backward()
    lr.backward()
    for m, r in zip(mine, ref):
        assert torch.allclose(m.grad, r.grad, atol=1e-7)
    # the stable CE differs from CE by the 1e-5 inside the log: hand value for a sure-wrong prediction
    z = torch.tensor([[100.0, 0.0]])
    assert stable_ce(z, torch.tensor([1])).item() == pytest.approx(-np.log(1e-5), rel=1e-4)


class Rows(nn.Module):
    """Logits from a per-sample table; the input holds sample ids (so peer images are identifiable)."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(torch.as_tensor(table, dtype=torch.float32))
        self.calls = []

    def forward(self, ids):
        self.calls.append(ids.clone())
        return self.table[ids.view(-1).long()]


def test_step_uses_independent_peer_images_and_labels_from_the_batch_and_scales_by_one_plus_alpha():
    torch.manual_seed(0)
    table = torch.randn(8, 3)
    net = Rows(table)
    st = PeerLoss(net, alpha=None)
    st.on_epoch_start(5, 10)  # official epoch 150: alpha = 5 + 5 * 50 / 99
    a = alpha_at(5, 10)
    assert a == pytest.approx(5 + 5 * 50 / 99) and st.epoch_metrics() == {"peer_alpha": a}
    x = torch.tensor([7, 2, 5, 0, 3, 1])
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(42)
    out = st.train_step(x, y, torch.arange(6), 5)
    torch.manual_seed(42)
    p1, p2 = torch.randperm(6), torch.randperm(6)
    assert not torch.equal(p1, p2)  # two independent draws
    assert len(net.calls) == 1 and torch.equal(net.calls[0], torch.cat([x, x[p1]]))  # one forward pass
    criterion = CrossEntropyLossStablePort()
    expected = (criterion(table[x], y) - a * criterion(table[x[p1]], y[p2])) / (1 + a)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(out.logits, table[x])
    out.loss.backward()
    assert set(torch.nonzero(net.table.grad.abs().sum(1)).squeeze(1).tolist()) == set(x.tolist())

    plain = PeerLoss(Rows(table), alpha=2.0, lr_divide=False)
    plain.on_epoch_start(0, 10)
    torch.manual_seed(42)
    out = plain.train_step(x, y, torch.arange(6), 0)
    assert out.loss.item() == pytest.approx((criterion(table[x], y) - 2.0 * criterion(table[x[p1]], y[p2])).item(),
                                            rel=1e-6)


def test_defaults_presets_and_bad_options():
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=10), num_classes=10, num_train=7)
    st = create_strategy("peer", context=ctx)
    assert st.options() == {"alpha": None, "lr_divide": True}
    assert set(PeerLoss.presets) == {"quick", "paper", "fast"}
    assert create_strategy("peer", context=ctx, alpha=0).alpha == 0.0
    PeerConfig(alpha=0.0).validate()
    with pytest.raises(UsageError) as err:
        make_config("peer", {"alpha": -1})
    assert str(err.value) == "strategy 'peer': alpha must be >= 0, got -1.0"
    with pytest.raises(UsageError) as err:
        PeerLoss(nn.Linear(2, 2), alpha=-0.5)
    assert str(err.value) == "peer alpha must be >= 0, got -0.5"


def _peer(seed):
    torch.manual_seed(seed)
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=4), num_classes=4, num_train=96)
    return create_strategy("peer", context=ctx, alpha=0.5)


def test_learns_and_resumes_exactly(tmp_path):
    images, labels = _toy()
    norm = Normalize((0.5,) * 3, (0.25,) * 3)
    cfg = TrainConfig(epochs=3, batch_size=32, tta="none",
                      optim=OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant"))
    test = DeviceLoader(*_toy(40, seed=1), 40, norm, shuffle=False)
    full = _peer(0)
    result = fit(full, DeviceLoader(images, labels, 32, norm, seed=0), cfg, test_loader=test, run_dir=tmp_path / "f",
                 quiet=True, num_classes=4)
    assert result.metrics["test_acc"] > 0.5
    part = _peer(0)
    with pytest.raises(KeyboardInterrupt):
        fit(part, InterruptAt(images, labels, 32, norm, seed=0), cfg, test_loader=test, run_dir=tmp_path / "p",
            quiet=True, num_classes=4)
    resumed = _peer(1)
    fit(resumed, DeviceLoader(images, labels, 32, norm, seed=0), cfg, test_loader=test, run_dir=tmp_path / "p",
        resume=tmp_path / "p" / "last.pt", quiet=True, num_classes=4)
    a, b = full.state_dict(), resumed.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_build_passes_every_option_and_alpha_is_known_before_the_first_epoch():
    ctx = BuildContext(new_model=lambda: nn.Linear(2, 2), num_classes=2, num_train=3)
    st = create_strategy("peer", context=ctx, alpha=2, lr_divide=False)
    assert (st.alpha, st.lr_divide) == (2.0, False) and st.options() == {"alpha": 2.0, "lr_divide": False}
    assert st.epoch_metrics() == {"peer_alpha": 2.0}
    assert PeerLoss(nn.Linear(2, 2)).epoch_metrics() == {"peer_alpha": 0.0}  # the schedule starts at 0
