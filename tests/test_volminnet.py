"""VolMinNet: the loss and its gradients against a line-by-line port of the official code (sig_t,
the training loss, tools.error), T row-stochastic, T's own optimizer (exactly torch's SGD with
momentum / Adam, no weight decay) outside the engine's, its multistep schedule against
MultiStepLR, T moving toward the true T on toy data, T and its optimizer state surviving resume
bit-exactly, a run through the noisy-label study, and exact messages for bad options."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from study_helpers import run_tiny_study
from robustlab.corruptions import noise_report
from robustlab.data import DeviceLoader, Normalize
from robustlab.distributed import DistInfo
from robustlab.engine import TrainConfig, fit
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import BuildContext, create_strategy, make_config
from robustlab.strategies import volminnet as volminnet_module
from robustlab.strategies.volminnet import (VolMinNet, VolMinNetConfig, estimation_error, milestone_epochs,
                                            transition_from_weight, volmin_loss)
from resume_helpers import InterruptAt, toy_images as _toy


# ---- line-by-line port of the official code (xuefeng-li1/Provably-end-to-end-label-noise-learning-
# without-anchor-points, commit 9074c70) -------------------------------------------------------------

class OfficialSigTPort(nn.Module):
    """models.py sig_t, with the `device` argument and `.to(device)` calls dropped."""

    def __init__(self, num_classes, init=2):
        super(OfficialSigTPort, self).__init__()

        self.register_parameter(name='w', param=nn.parameter.Parameter(-init*torch.ones(num_classes, num_classes)))

        co = torch.ones(num_classes, num_classes)
        ind = np.diag_indices(co.shape[0])
        co[ind[0], ind[1]] = torch.zeros(co.shape[0])
        self.co = co
        self.identity = torch.eye(num_classes)

    def forward(self):
        sig = torch.sigmoid(self.w)
        T = self.identity.detach() + sig*self.co.detach()
        T = F.normalize(T, p=1, dim=1)

        return T


def official_loss_port(clean, trans, batch_y, lam):
    """main.py's training step up to `loss` (the model returns softmax probabilities: `clean`)."""
    loss_func_ce = F.nll_loss
    t = trans()
    out = torch.mm(clean, t)
    vol_loss = t.slogdet().logabsdet
    ce_loss = loss_func_ce(out.log(), batch_y.long())
    loss = ce_loss + lam * vol_loss
    return loss


def official_error_port(T, T_true):
    """tools.error."""
    error = np.sum(np.abs(T-T_true)) / np.sum(np.abs(T_true))
    return error


# ---- helpers -------------------------------------------------------------------------------------

def _strategy(classes=4, features=6, seed=0, **options):
    torch.manual_seed(seed)
    ctx = BuildContext(new_model=lambda: nn.Linear(features, classes), num_classes=classes,
                       noise_transition=options.pop("noise_transition", None))
    return create_strategy("volminnet", context=ctx, **options)


def _batch(classes=4, n=8, features=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


def _train(st, steps, x, y, net_optimizer=None):
    """The engine's order: loss, zero_grad, backward, the network's step, then after_step."""
    for _ in range(steps):
        out = st.train_step(x, y, torch.arange(len(y)), 0)
        if net_optimizer is not None:
            net_optimizer.zero_grad()
        out.loss.backward()
        if net_optimizer is not None:
            net_optimizer.step()
        st.after_step()


# ---- the loss, T and the estimation error against the official code -----------------------------

@pytest.mark.parametrize("classes,init,lam", [(4, 2.0, 1e-4), (10, 2.0, 1e-4), (5, 4.5, 0.3), (3, 0.7, 0.0)])
def test_loss_and_gradients_match_the_official_port(classes, init, lam):
    g = torch.Generator().manual_seed(classes)
    logits = (torch.randn(7, classes, generator=g) * 2).requires_grad_(True)
    ref_logits = logits.detach().clone().requires_grad_(True)
    y = torch.randint(0, classes, (7,), generator=g)
    w0 = torch.randn(classes, classes, generator=g) - init  # a moved T, not only the initial one
    port = OfficialSigTPort(classes, init)
    with torch.no_grad():
        port.w.copy_(w0)
    w = w0.clone().requires_grad_(True)
    mine = volmin_loss(logits, y, transition_from_weight(w), lam)
    ref = official_loss_port(F.softmax(ref_logits, 1), port, y, lam)
    assert mine.item() == pytest.approx(ref.item(), rel=1e-6, abs=1e-7)
    mine.backward()
    ref.backward()
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-7)
    assert torch.allclose(w.grad, port.w.grad, atol=1e-7)
    assert torch.equal(w.grad.diagonal(), torch.zeros(classes))  # the diagonal of w never moves
    assert w.grad.abs().sum() > 0


def test_initial_transition_by_hand_and_against_the_port():
    for classes, init in [(10, 2.0), (100, 4.5), (2, 1.0)]:
        s = 1 / (1 + math.exp(init))  # sigmoid(-init)
        diag = 1 / (1 + (classes - 1) * s)
        t = transition_from_weight(torch.full((classes, classes), -init))
        expected = torch.full((classes, classes), s * diag, dtype=torch.float64)
        expected.fill_diagonal_(diag)
        assert torch.allclose(t.double(), expected, atol=1e-7)
        assert torch.allclose(t, OfficialSigTPort(classes, init)().detach(), atol=1e-7)
    assert transition_from_weight(torch.full((10, 10), -2.0)).diagonal().mean().item() == pytest.approx(0.4825, abs=1e-4)
    double = transition_from_weight(torch.full((3, 3), -2.0, dtype=torch.float64))
    assert double.dtype == torch.float64 and torch.allclose(double.sum(1), torch.ones(3, dtype=torch.float64))
    meta = transition_from_weight(torch.zeros(3, 3, device="meta", dtype=torch.float64))  # T where w lives
    assert meta.device.type == "meta" and meta.dtype == torch.float64


def test_volume_term_by_hand():
    t = torch.tensor([[0.8, 0.2], [0.1, 0.9]])
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    y = torch.tensor([1, 0])
    # p = (0.5, 0.5) and (0.75, 0.25): p @ T = (0.45, 0.55) and (0.625, 0.375)
    ce = -(math.log(0.55) + math.log(0.625)) / 2
    assert volmin_loss(logits, y, t, 0.0).item() == pytest.approx(ce, rel=1e-6)
    assert volmin_loss(logits, y, t, 2.0).item() == pytest.approx(ce + 2 * math.log(0.7), rel=1e-6)
    # log|det| of a matrix with a negative determinant is its absolute value's log
    assert volmin_loss(logits, y, torch.tensor([[0.2, 0.8], [0.9, 0.1]]), 1.0).item() == pytest.approx(
        -(math.log(0.45) + math.log(0.375)) / 2 + math.log(0.7), rel=1e-6)


def test_estimation_error_by_hand_and_against_the_port():
    truth = np.array([[0.8, 0.2], [0.1, 0.9]])
    assert estimation_error(np.eye(2), truth) == pytest.approx(0.6 / 2)
    assert estimation_error(truth, truth) == 0.0
    g = np.random.default_rng(0)
    a, b = g.random((5, 5)), g.random((5, 5))
    assert estimation_error(a, b) == pytest.approx(official_error_port(a, b), rel=1e-12)
    assert estimation_error(a, -b) == pytest.approx(official_error_port(a, -b), rel=1e-12)  # |T_true| in the denominator


# ---- T stays row-stochastic; its own optimizer; gradients -----------------------------------------

def test_transition_stays_row_stochastic_with_the_largest_entry_on_the_diagonal():
    st = _strategy(5, t_lr=5.0)  # large steps: T moves a lot
    x, y = _batch(5, n=20)
    w0 = st.t_weight.clone()
    _train(st, 15, x, y, torch.optim.SGD(st.model.parameters(), lr=0.1))
    assert (st.t_weight - w0).abs().max() > 1.0
    t = st.transition()
    assert torch.allclose(t.sum(1), torch.ones(5), atol=1e-6)
    assert bool((t > 0).all()) and bool((t <= 1).all())
    off = t - torch.diag(t.diagonal())
    assert bool((t.diagonal()[:, None] >= off).all())


def test_transition_sgd_is_torch_sgd_with_momentum_and_no_weight_decay():
    st = _strategy(4, lam=0.2)
    assert st.t_optimizer == "sgd" and st.t_momentum == 0.9 and st.t_lr == 0.01
    net_ref = nn.Linear(6, 4)
    net_ref.load_state_dict(st.model.state_dict())
    port = OfficialSigTPort(4, 2.0)
    t_opt = torch.optim.SGD(port.parameters(), lr=0.01, weight_decay=0, momentum=0.9)
    net_opt = torch.optim.SGD(st.model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    ref_opt = torch.optim.SGD(net_ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for step in range(4):
        x, y = _batch(4, seed=step)
        _train(st, 1, x, y, net_opt)
        ref_opt.zero_grad()
        t_opt.zero_grad()
        official_loss_port(F.softmax(net_ref(x), 1), port, y, 0.2).backward()
        ref_opt.step()
        t_opt.step()
        assert torch.allclose(st.t_weight, port.w.detach(), atol=1e-7), step
        assert torch.allclose(st.t_momentum_buffer, t_opt.state[port.w]["momentum_buffer"], atol=1e-7)
        assert torch.allclose(st.model.weight, net_ref.weight, atol=1e-6)
    assert int(st.t_steps) == 4
    assert torch.equal(st.t_second_moment, torch.zeros(4, 4))  # Adam's buffer is untouched by SGD
    # T is no parameter: the engine's optimizer, weight decay and schedule never see it
    assert {id(p) for p in st.parameters()} == {id(p) for p in st.model.parameters()}
    assert {"t_weight", "t_momentum_buffer", "t_second_moment", "t_steps"} <= set(st.state_dict())


def test_transition_sgd_without_momentum_is_plain_gradient_descent():
    st = _strategy(3, t_momentum=0.0, t_lr=0.3)
    x, y = _batch(3)
    w0 = st.t_weight.clone()
    out = st.train_step(x, y, None, 0)
    out.loss.backward()
    grad = st._t_grad.clone()
    st.after_step()
    assert torch.allclose(st.t_weight, w0 - 0.3 * grad, atol=1e-7)
    assert torch.equal(st.t_momentum_buffer, torch.zeros(3, 3))


@pytest.mark.parametrize("steps", [1, 5])
def test_transition_adam_is_torch_adam_and_the_default_for_100_classes(steps):
    st = _strategy(100, features=4)
    assert (st.t_optimizer, st.config.init) == ("adam", 4.5)
    ref = _strategy(100, features=4, t_optimizer="sgd")  # same network weights (same seed)
    port = OfficialSigTPort(100, 4.5)
    t_opt = torch.optim.Adam(port.parameters(), lr=0.01, weight_decay=0)
    for step in range(steps):
        x, y = _batch(100, n=30, features=4, seed=step)
        _train(st, 1, x, y)
        t_opt.zero_grad()
        official_loss_port(F.softmax(ref.model(x), 1), port, y, 1e-4).backward()
        t_opt.step()
        assert torch.allclose(st.t_weight, port.w.detach(), atol=1e-6), step
    state = t_opt.state[port.w]
    assert torch.allclose(st.t_momentum_buffer, state["exp_avg"], atol=1e-8)
    assert torch.allclose(st.t_second_moment, state["exp_avg_sq"], atol=1e-10)
    assert int(st.t_steps) == int(state["step"]) == steps


def test_gradients_reach_the_network_and_t_only_through_the_step():
    st = _strategy(4)
    x, y = _batch(4)
    w0 = st.t_weight.clone()
    out = st.train_step(x, y, None, 0)
    assert torch.equal(out.logits, st.model(x))
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in st.model.parameters())
    assert st._t_grad is not None and st._t_grad.abs().sum() > 0
    assert torch.equal(st.t_weight, w0)  # nothing moves before the step
    st.after_step()
    assert not torch.equal(st.t_weight, w0) and st._t_grad is None
    st.after_step()  # no new backward pass: no second step
    assert int(st.t_steps) == 1
    with torch.no_grad():  # evaluation-style calls leave T alone
        st.train_step(x, y, None, 0)
    st.after_step()
    assert int(st.t_steps) == 1


def test_two_backward_passes_before_a_step_add_their_gradients():
    st = _strategy(3, t_momentum=0.0, t_lr=1.0)
    x, y = _batch(3)
    st.train_step(x, y, None, 0).loss.backward()
    one = st._t_grad.clone()
    st.train_step(x, y, None, 0).loss.backward()
    w0 = st.t_weight.clone()
    st.after_step()
    assert torch.allclose(st.t_weight, w0 - 2 * one, atol=1e-6)


def test_distributed_gradient_is_averaged_over_ranks(monkeypatch):
    single, dist = _strategy(3, t_momentum=0.0, t_lr=1.0), _strategy(3, t_momentum=0.0, t_lr=1.0)
    x, y = _batch(3)
    for st in (single, dist):
        st.train_step(x, y, None, 0).loss.backward()
    other = torch.full((3, 3), 0.5)  # the other rank's gradient
    monkeypatch.setattr(volminnet_module.distributed, "current", lambda: DistInfo(0, 2, 0))
    monkeypatch.setattr(volminnet_module.distributed, "all_reduce_sum", lambda t: t.add_(other))
    grad = dist._t_grad.clone()
    w0 = dist.t_weight.clone()
    dist.after_step()
    assert torch.allclose(dist.t_weight, w0 - (grad + other) / 2, atol=1e-7)


def test_class_count_mismatch_is_one_line():
    st = VolMinNet(nn.Linear(6, 3), 4)
    with pytest.raises(UsageError, match=r"^VolMinNet's T is 4x4, the network predicts 3 classes$"):
        st.train_step(torch.randn(2, 6), torch.tensor([0, 1]), None, 0)


# ---- T's learning-rate schedule ---------------------------------------------------------------------

def test_schedule_matches_the_official_multisteplr_over_80_epochs():
    st = _strategy(4)
    port = OfficialSigTPort(4)
    opt = torch.optim.SGD(port.parameters(), lr=0.01, weight_decay=0, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 60], gamma=0.1)
    for epoch in range(80):
        st.on_epoch_start(epoch, 80)
        assert st.t_lr_now == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), epoch
        opt.step()
        sched.step()
    assert milestone_epochs((0.375, 0.75), 80) == [30, 60]
    assert milestone_epochs((0.375, 0.75), 20) == [8, 15]  # 7.5 rounds up
    assert milestone_epochs((0.5,), 3) == [2]
    st.on_epoch_start(14, 20)
    assert st.t_lr_now == pytest.approx(0.001)
    st.on_epoch_start(15, 20)
    assert st.t_lr_now == pytest.approx(1e-4)
    custom = _strategy(4, t_milestones=[0.5], t_gamma=0.5, t_lr=0.2)
    custom.on_epoch_start(4, 10)
    assert custom.t_lr_now == 0.2
    custom.on_epoch_start(5, 10)
    assert custom.t_lr_now == pytest.approx(0.1)
    assert custom.epoch_metrics()["t_lr"] == pytest.approx(0.1)


def test_the_step_uses_the_scheduled_rate():
    st = _strategy(3, t_momentum=0.0, t_lr=1.0, t_milestones=[0.5], t_gamma=0.25)
    st.on_epoch_start(1, 2)
    x, y = _batch(3)
    st.train_step(x, y, None, 1).loss.backward()
    grad, w0 = st._t_grad.clone(), st.t_weight.clone()
    st.after_step()
    assert torch.allclose(st.t_weight, w0 - 0.25 * grad, atol=1e-7)


# ---- the mechanism on toy data ---------------------------------------------------------------------

def test_learned_t_moves_toward_the_true_t_on_toy_data():
    """Three separable clusters, labels flipped by a known asymmetric T: a linear network trained
    through the learned T recovers the clean classes, and T approaches the true T."""
    true_t = np.array([[0.7, 0.3, 0.0], [0.0, 0.7, 0.3], [0.3, 0.0, 0.7]])
    g = torch.Generator().manual_seed(0)
    clean = torch.arange(300) % 3
    centers = torch.tensor([[3.0, 0.0], [-1.5, 2.6], [-1.5, -2.6]])
    x = centers[clean] + 0.5 * torch.randn(300, 2, generator=g)
    noisy = torch.multinomial(torch.tensor(true_t, dtype=torch.float32)[clean], 1, generator=g).squeeze(1)
    realised = noise_report(clean.numpy(), noisy.numpy(), 3).transition
    st = _strategy(3, features=2, t_lr=0.5, noise_transition=realised)
    before = st.epoch_metrics()["t_estimation_error"]
    assert before == pytest.approx(estimation_error(st.transition().numpy(), realised))
    _train(st, 120, x, noisy, torch.optim.SGD(st.model.parameters(), lr=0.1, momentum=0.9))
    after = st.epoch_metrics()
    assert before > 0.4 and after["t_estimation_error"] < 0.1  # measured: 0.47 -> 0.01
    assert after["t_estimation_error"] == pytest.approx(official_error_port(st.transition().double().numpy(), realised))
    assert (st.model(x).argmax(1) == clean).float().mean() > 0.95  # the network predicts the clean class
    assert (st.model(x).argmax(1) == noisy).float().mean() < 0.8


def test_volume_term_shrinks_the_learned_t():
    """The same noisy problem: a larger lam ends with a smaller det T."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 3, generator=g), torch.randint(0, 3, (60,), generator=g)
    dets = []
    for lam in (0.0, 0.5):
        st = _strategy(3, features=3, t_lr=0.5, lam=lam)
        _train(st, 30, x, y, torch.optim.SGD(st.model.parameters(), lr=0.1))
        dets.append(torch.linalg.det(st.transition()).item())
    assert dets[1] < dets[0] - 0.05


# ---- defaults, presets, bad input ---------------------------------------------------------------------

def test_official_defaults_follow_the_class_count_and_the_record_names_the_truth():
    ten = _strategy(10).options()
    assert ten == {"lam": 1e-4, "init": 2.0, "t_lr": 0.01, "t_optimizer": "sgd", "t_momentum": 0.9,
                   "t_milestones": [0.375, 0.75], "t_gamma": 0.1, "t_true_source": "none"}
    hundred = _strategy(100).options()
    assert hundred == {**ten, "init": 4.5, "t_optimizer": "adam"}
    assert _strategy(100, init=3.0, t_optimizer="sgd").options() == {**ten, "init": 3.0}
    assert VolMinNet.presets == {"quick": {"t_lr": 0.74}, "paper": {}, "fast": {"t_lr": 0.65}}
    # the presets keep lr x steps of the official run (352 batches x 80 epochs at 0.01)
    assert VolMinNet.presets["quick"]["t_lr"] == pytest.approx(0.01 * 352 * 80 / (19 * 20), abs=0.005)
    assert VolMinNet.presets["fast"]["t_lr"] == pytest.approx(0.01 * 352 * 80 / (43 * 10), abs=0.005)
    truth = [[0.9, 0.1], [0.0, 0.0]]  # class 1 absent from the training labels: an identity row
    st = _strategy(2, noise_transition=truth)
    assert st.options()["t_true_source"] == "oracle (realised noise)"
    assert np.array_equal(st.true_transition, [[0.9, 0.1], [0.0, 1.0]])
    assert "t_estimation_error" not in _strategy(2).epoch_metrics()
    assert _strategy(2).epoch_metrics()["t_diagonal_mean"] == pytest.approx(1 / (1 + 1 / (1 + math.exp(2))))
    plain = VolMinNet(nn.Linear(2, 3), 3)  # the constructor's defaults are CIFAR-10's
    assert (plain.lam, plain.t_lr, plain.t_optimizer, plain.t_momentum) == (1e-4, 0.01, "sgd", 0.9)
    assert plain.t_milestones == (0.375, 0.75) and plain.t_gamma == 0.1
    assert torch.equal(plain.t_weight, torch.full((3, 3), -2.0)) and plain.t_steps.dtype == torch.long
    assert plain.warmup_length() == 0


@pytest.mark.parametrize("bad,message", [
    ({"lam": -1e-4}, "lam must be >= 0, got -0.0001"),
    ({"init": 0}, "init must be > 0 (w starts at -init: each off-diagonal entry of T below half its diagonal), got 0.0"),
    ({"init": -2}, "init must be > 0 (w starts at -init: each off-diagonal entry of T below half its diagonal), got -2.0"),
    ({"t_lr": 0}, "t_lr must be > 0, got 0.0"),
    ({"t_lr": -0.01}, "t_lr must be > 0, got -0.01"),
    ({"t_optimizer": "rmsprop"}, "t_optimizer must be one of sgd, adam, got 'rmsprop'"),
    ({"t_momentum": 1.0}, "t_momentum must be in [0, 1), got 1.0"),
    ({"t_momentum": -0.1}, "t_momentum must be in [0, 1), got -0.1"),
    ({"t_milestones": [0.5, 1.5]}, "t_milestones must be shares of the run in (0, 1], got [0.5, 1.5]"),
    ({"t_milestones": [0.0]}, "t_milestones must be shares of the run in (0, 1], got [0.0]"),
    ({"t_gamma": 0}, "t_gamma must be in (0, 1], got 0.0"),
    ({"t_gamma": 1.5}, "t_gamma must be in (0, 1], got 1.5"),
    ({"lam": float("nan")}, "option lam must be a finite number, got nan"),  # the registry checks finiteness first
])
def test_config_bounds_and_exact_messages(bad, message):
    with pytest.raises(UsageError) as err:
        make_config("volminnet", bad)
    assert str(err.value) == f"strategy 'volminnet': {message}"


def test_bounds_are_inclusive_where_the_range_is():
    VolMinNetConfig(lam=0.0, init=1e-6, t_lr=1e-9, t_optimizer="adam", t_momentum=0.0, t_milestones=(1.0,),
                    t_gamma=1.0).validate()
    VolMinNetConfig(t_momentum=0.999, t_milestones=()).validate()


def test_constructor_checks():
    with pytest.raises(UsageError, match=r"^VolMinNet needs >= 2 classes, got 1$"):
        VolMinNet(nn.Linear(2, 1), 1)
    with pytest.raises(UsageError, match=r"^t_optimizer must be one of sgd, adam, got 'lbfgs'$"):
        VolMinNet(nn.Linear(2, 2), 2, t_optimizer="lbfgs")
    assert VolMinNet(nn.Linear(2, 2), 2).t_weight.shape == (2, 2)


# ---- resume --------------------------------------------------------------------------------------------

def _volminnet(seed, t_optimizer):
    torch.manual_seed(seed)
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=4), num_classes=4, num_train=96)
    return create_strategy("volminnet", context=ctx, t_lr=0.5, t_optimizer=t_optimizer, t_milestones=[0.6])


@pytest.mark.parametrize("t_optimizer", ["sgd", "adam"])
def test_fit_learns_and_resume_is_bit_exact(tmp_path, t_optimizer):
    n = 96
    images, labels = _toy(n + 40)
    mean, std = (0.5,) * 3, (0.25,) * 3
    test = DeviceLoader(images[n:], labels[n:], 40, Normalize(mean, std), shuffle=False)
    cfg = TrainConfig(epochs=3, batch_size=32, tta="none",
                      optim=OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant"))
    full = _volminnet(0, t_optimizer)
    result = fit(full, DeviceLoader(images[:n], labels[:n], 32, Normalize(mean, std), seed=0), cfg,
                 test_loader=test, run_dir=tmp_path / "full", quiet=True, num_classes=4)
    assert result.metrics["test_acc"] > 0.5  # chance is 0.25
    assert int(full.t_steps) == 9  # 3 epochs of 3 batches
    assert [h["t_lr"] for h in result.history] == [0.5, 0.5, pytest.approx(0.05)]  # milestone round(1.8) = 2
    assert not torch.equal(full.t_weight, torch.full((4, 4), -2.0))

    part = _volminnet(0, t_optimizer)
    with pytest.raises(KeyboardInterrupt):
        fit(part, InterruptAt(images[:n], labels[:n], 32, Normalize(mean, std), seed=0), cfg, test_loader=test,
            run_dir=tmp_path / "part", quiet=True, num_classes=4)
    resumed = _volminnet(1, t_optimizer)  # other weights, a fresh T: the checkpoint must replace them all
    torch.manual_seed(123)
    fit(resumed, DeviceLoader(images[:n], labels[:n], 32, Normalize(mean, std), seed=0), cfg, test_loader=test,
        run_dir=tmp_path / "part", resume=tmp_path / "part" / "last.pt", quiet=True, num_classes=4)
    a, b = full.state_dict(), resumed.state_dict()
    assert {"t_weight", "t_momentum_buffer", "t_second_moment", "t_steps"} <= set(a)
    assert a["t_momentum_buffer"].abs().sum() > 0
    assert (a["t_second_moment"].abs().sum() > 0) == (t_optimizer == "adam")
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---- the noisy-label study on real data -----------------------------------------------------------------

def test_runs_end_to_end_in_the_noisy_label_study(cifar10, cifar10_dir, session_cache_dir, tmp_path):
    rows, record = run_tiny_study("volminnet", cifar10_dir, session_cache_dir, tmp_path / "study")
    assert "noisy_volminnet" in rows
    options = record["strategy_options"]
    assert options["t_lr"] == 0.74 and options["t_optimizer"] == "sgd"  # the quick preset on CIFAR-10
    assert options["t_true_source"] == "oracle (realised noise)"
    hist = record["history"]
    assert len(hist) == 2 and all(math.isfinite(h["train_loss"]) for h in hist)
    assert [h["t_lr"] for h in hist] == [0.74, pytest.approx(0.074)]  # milestones at epochs 1 and 2 of 2
    # the initial T (diagonal 0.48) is far from the realised noise of a 40% symmetric flip (diagonal ~0.6)
    assert all(0.0 < h["t_estimation_error"] < 2.0 for h in hist)
    assert 0.0 <= record["metrics"]["test_acc"] <= 1.0
