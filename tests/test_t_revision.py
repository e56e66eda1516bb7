"""T-Revision: the anchor-point estimator by hand and against a port of the official tools.fit,
the losses against line-by-line ports of the official reweight_loss / reweighting_revision_loss,
Delta T's Adam against torch.optim.Adam, which stage sends gradient where, the estimate and the
slack surviving resume bit-exactly, exact messages for bad input, and a run through the
noisy-label study."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Variable

from study_helpers import run_tiny_study, tiny_study_argv
from robustlab.data import AugmentConfig, BatchAugment, DeviceLoader
from robustlab.engine import TrainConfig, fit
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import BuildContext, create_strategy, make_config
from robustlab.strategies.t_revision import (TRevision, adam_step, anchor_point_transition, check_stages,
                                             importance_weight, reweight_loss, revision_loss, transition_errors)
from resume_helpers import TOY_MEAN, TOY_STD, flip_toy_labels, toy_eval_loaders
from resume_helpers import toy_images as _toy


# ---- line-by-line ports of the official code (xiaoboxia/T-Revision) ----------------------------

def official_norm_port(T):
    """tools.py norm."""
    row_sum = np.sum(T, 1)
    T_norm = T / row_sum
    return T_norm


def official_fit_port(X, num_classes, filter_outlier=False):
    """tools.py fit (np.percentile's `interpolation` keyword is `method` in numpy >= 1.22)."""
    c = num_classes
    T = np.empty((c, c))
    eta_corr = X
    for i in np.arange(c):
        if not filter_outlier:
            idx_best = np.argmax(eta_corr[:, i])
        else:
            eta_thresh = np.percentile(eta_corr[:, i], 97, method='higher')
            robust_eta = eta_corr[:, i]
            robust_eta[robust_eta >= eta_thresh] = 0.0
            idx_best = np.argmax(robust_eta)
        for j in np.arange(c):
            T[i, j] = eta_corr[idx_best, j]
    return T


def official_error_port(T, T_true):
    """tools.py error."""
    error = np.sum(np.abs(T - T_true)) / np.sum(np.abs(T_true))
    return error


class OfficialReweightLossPort(nn.Module):
    """loss.py reweight_loss."""

    def forward(self, out, T, target):
        loss = 0.
        out_softmax = F.softmax(out, dim=1)
        for i in range(len(target)):
            temp_softmax = out_softmax[i]
            temp = out[i]
            temp = torch.unsqueeze(temp, 0)
            temp_softmax = torch.unsqueeze(temp_softmax, 0)
            temp_target = target[i]
            temp_target = torch.unsqueeze(temp_target, 0)
            pro1 = temp_softmax[:, target[i]]
            out_T = torch.matmul(T.t(), temp_softmax.t())
            out_T = out_T.t()
            pro2 = out_T[:, target[i]]
            beta = pro1 / pro2
            beta = Variable(beta, requires_grad=True)
            cross_loss = F.cross_entropy(temp, temp_target)
            _loss = beta * cross_loss
            loss += _loss
        return loss / len(target)


class OfficialRevisionLossPort(nn.Module):
    """loss.py reweighting_revision_loss."""

    def forward(self, out, T, correction, target):
        loss = 0.
        out_softmax = F.softmax(out, dim=1)
        T_result = T + correction
        for i in range(len(target)):
            temp_softmax = out_softmax[i]
            temp = out[i]
            temp = torch.unsqueeze(temp, 0)
            temp_softmax = torch.unsqueeze(temp_softmax, 0)
            temp_target = target[i]
            temp_target = torch.unsqueeze(temp_target, 0)
            pro1 = temp_softmax[:, target[i]]
            out_T = torch.matmul(T_result.t(), temp_softmax.t())
            out_T = out_T.t()
            pro2 = out_T[:, target[i]]
            beta = (pro1 / pro2)
            cross_loss = F.cross_entropy(temp, temp_target)
            _loss = beta * cross_loss
            loss += _loss
        return loss / len(target)


# ---- the anchor-point estimator ------------------------------------------------------------------

HAND = np.array([[0.90, 0.05, 0.05],
                 [0.70, 0.20, 0.10],
                 [0.50, 0.30, 0.20],
                 [0.10, 0.80, 0.10],
                 [0.20, 0.60, 0.20],
                 [0.05, 0.15, 0.80]])


def _same(a, b):
    return np.allclose(a, b, rtol=0, atol=1e-15)


def test_anchor_points_by_hand():
    # 97th percentile of 6 values, 'higher': index ceil(0.97 * 5) = 5, the maximum, so each column drops its
    # maximum: class 0 -> row 1 (0.7), class 1 -> row 4 (0.6), class 2 -> the first 0.2, row 2
    assert _same(anchor_point_transition(HAND), HAND[[1, 4, 2]])
    # without the filter (the official CIFAR-100 setting): the argmax of each column
    assert _same(anchor_point_transition(HAND, filter_outlier=False), HAND[[0, 3, 5]])
    # 50th percentile, 'higher': index ceil(2.5) = 3 of the sorted column: 0.5, 0.3, 0.2 and up are dropped
    # -> class 0: max of (0.1, 0.2, 0.05) = row 4; class 1: max of (0.05, 0.2, 0.15) = row 1;
    #    class 2: max of (0.05, 0.1, 0.1) = the first 0.1, row 1
    assert _same(anchor_point_transition(HAND, percentile=50), HAND[[4, 1, 1]])
    # 100th: the maximum is dropped as at the 97th here; rows are normalised to sum to 1 whatever the scale
    assert _same(anchor_point_transition(HAND, percentile=100), HAND[[1, 4, 2]])
    scaled = anchor_point_transition(HAND * 2.0)
    assert np.allclose(scaled, HAND[[1, 4, 2]], rtol=0, atol=1e-15)
    lopsided = HAND.copy()
    lopsided[1] *= 1.2  # row 1 (still class 0's anchor, below the dropped 0.9) sums to 1.2
    assert np.allclose(anchor_point_transition(lopsided)[0], HAND[1], rtol=0, atol=1e-15)


def test_the_outlier_threshold_is_a_value_of_the_column():
    # percentile 80.2 of 6 values sits at 4.01 in the sorted column: 'higher' takes the value at 5, one ulp above
    # the one at 4; linear interpolation would round to the value at 4 and drop the 0.5 as well
    top = np.nextafter(0.5, 1.0)
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6], [0.5, 0.5], [top, 1 - top]])
    assert _same(anchor_point_transition(probs, percentile=80.2)[0], probs[4])


@pytest.mark.parametrize("filter_outlier", [True, False])
def test_anchor_points_match_the_official_fit_and_norm(filter_outlier):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(300, 5, generator=g, dtype=torch.float64) * 3, 1).numpy()
    official = official_norm_port(official_fit_port(probs.copy(), 5, filter_outlier))
    assert np.allclose(anchor_point_transition(probs, filter_outlier=filter_outlier), official, rtol=0, atol=1e-12)


def test_anchor_point_estimator_rejects_bad_shapes_and_percentiles():
    with pytest.raises(UsageError, match=r"^the anchor-point estimate needs an N x K probability matrix with K >= 2, "
                                         r"got shape \(3,\)$"):
        anchor_point_transition(np.ones(3))
    with pytest.raises(UsageError, match=r"got shape \(4, 1\)$"):
        anchor_point_transition(np.ones((4, 1)))
    with pytest.raises(UsageError, match=r"got shape \(0, 3\)$"):
        anchor_point_transition(np.ones((0, 3)))
    assert anchor_point_transition(HAND[:1], filter_outlier=False).shape == (3, 3)  # one sample is enough
    assert _same(anchor_point_transition(HAND[:, :2], filter_outlier=False),  # two classes are enough
                 HAND[[0, 3], :2] / HAND[[0, 3], :2].sum(1, keepdims=True))
    assert _same(anchor_point_transition(HAND, percentile=0.5), HAND[[5, 0, 0]])  # only the minimum is kept
    for bad in (0, -1, 100.5):
        with pytest.raises(UsageError, match=rf"^percentile must be in \(0, 100\], got {bad}$"):
            anchor_point_transition(HAND, percentile=bad)


def test_transition_errors_by_hand_and_against_the_official_error():
    truth = np.array([[0.8, 0.2], [0.4, 0.6]])
    est = np.array([[0.7, 0.3], [0.4, 0.6]])
    errors = transition_errors(est, truth)
    assert errors["t_error_fro"] == pytest.approx(np.sqrt(0.01 + 0.01))
    assert errors["t_error"] == pytest.approx(0.2 / 2.0) == official_error_port(est, truth)


# ---- the losses ---------------------------------------------------------------------------------

def _batch(seed=0, n=7, k=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 2
    y = torch.randint(0, k, (n,), generator=g)
    t = torch.softmax(torch.randn(k, k, generator=g) + 3 * torch.eye(k), 1)
    return logits, y, t


def test_importance_weight_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    t = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.0, 0.5, 0.5]])
    # y = 1: p_1 / (0.5 * 0.1 + 0.3 * 0.7 + 0.2 * 0.5) = 0.3 / 0.36
    assert importance_weight(logits, torch.tensor([1]), t).item() == pytest.approx(0.3 / 0.36)
    # y = 2: 0.2 / (0.05 + 0.03 + 0.1)
    assert importance_weight(logits, torch.tensor([2]), t).item() == pytest.approx(0.2 / 0.18)
    assert importance_weight(logits, torch.tensor([2]), t.double()).dtype == torch.float32  # T follows p's dtype
    # a probability that underflows to 0 under a column of zeros: beta 0, not 0 / 0
    dead = torch.tensor([[0.0, 200.0, 0.0]])
    zero_col = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert importance_weight(dead, torch.tensor([2]), zero_col).item() == 0.0
    tiny = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1e-13, 0.0, 1.0 - 1e-13]])  # denominator 1e-13 -> 1e-12
    assert importance_weight(torch.log(torch.tensor([[0.0 + 1e-30, 0.0 + 1e-30, 1.0]])), torch.tensor([0]),
                             tiny).item() == pytest.approx(1e-30 / 1e-12, rel=1e-3)


@pytest.mark.parametrize("seed", [0, 1])
def test_reweight_loss_matches_the_official_port_with_beta_detached(seed):
    logits, y, t = _batch(seed)
    ours_in = logits.clone().requires_grad_(True)
    ref_in = logits.clone().requires_grad_(True)
    ours = reweight_loss(ours_in, y, t)
    ref = OfficialReweightLossPort()(ref_in, t, y)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    ours.backward()
    ref.sum().backward()
    assert torch.allclose(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-7)
    # beta has no gradient: the logits' gradient is beta_i * dCE_i / N
    beta = importance_weight(logits, y, t)
    ce_grad = (logits.softmax(1) - F.one_hot(y, 4)) / len(y)
    assert torch.allclose(ours_in.grad, beta[:, None] * ce_grad, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(beta, torch.ones_like(beta))  # the weights do weigh


@pytest.mark.parametrize("seed", [0, 1])
def test_revision_loss_matches_the_official_port_in_value_and_slack_gradient(seed):
    logits, y, t = _batch(seed)
    g = torch.Generator().manual_seed(seed + 10)
    slack = torch.randn(4, 4, generator=g) * 0.01
    ours_in, ref_in = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ours_slack, ref_slack = slack.clone().requires_grad_(True), slack.clone().requires_grad_(True)
    ours = revision_loss(ours_in, y, t, ours_slack)
    ref = OfficialRevisionLossPort()(ref_in, t, ref_slack, y)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    ours.backward()
    ref.sum().backward()
    assert torch.allclose(ours_slack.grad, ref_slack.grad, rtol=1e-5, atol=1e-7)
    assert ours_slack.grad.abs().sum() > 0
    # the network's gradient is the official reweight_loss's with T + slack (beta not differentiated through
    # the network), not the official revision loss's, which also follows beta down
    reweighted_in = logits.clone().requires_grad_(True)
    OfficialReweightLossPort()(reweighted_in, t + slack, y).sum().backward()
    assert torch.allclose(ours_in.grad, reweighted_in.grad, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(ours_in.grad, ref_in.grad, rtol=1e-3, atol=1e-5)
    # with a zero slack the value is the reweighting loss
    zero = torch.zeros(4, 4, requires_grad=True)
    assert revision_loss(logits, y, t, zero).item() == pytest.approx(reweight_loss(logits, y, t).item(), rel=1e-6)


def test_adam_step_matches_torch_adam():
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(3, 3, generator=g) for _ in range(4)]
    ref = torch.zeros(3, 3, requires_grad=True)
    ref.data += 0.1
    opt = torch.optim.Adam([ref], lr=1e-2, weight_decay=1e-2, foreach=False)
    param, avg, sq, steps = torch.full((3, 3), 0.1), torch.zeros(3, 3), torch.zeros(3, 3), torch.zeros((), dtype=torch.long)
    for grad in grads:
        ref.grad = grad.clone()
        opt.step()
        adam_step(param, grad, avg, sq, steps, 1e-2, 1e-2)
        assert torch.allclose(param, ref.detach(), rtol=0, atol=1e-7)
    assert int(steps) == 4
    assert torch.allclose(avg, opt.state[ref]["exp_avg"], atol=1e-7)
    assert torch.allclose(sq, opt.state[ref]["exp_avg_sq"], atol=1e-9)


# ---- the strategy -------------------------------------------------------------------------------

class Lin(nn.Module):
    def __init__(self, k=3):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(4, k)

    def forward(self, x):
        return self.head(x.flatten(1))


def _strategy(k=3, **kw):
    options = {"estimate_epochs": 1, "reweight_epochs": 1, **kw}
    return create_strategy("t_revision", Lin(k), num_classes=k, num_train=10, **options)


def test_stages_send_gradient_to_the_network_always_and_to_the_slack_only_in_the_revision():
    st = _strategy(lr_revision=1e-2)
    t = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    st.transition.copy_(t)
    st.has_transition.fill_(True)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    assert [st.stage(e) for e in range(4)] == [1, 2, 3, 3]
    for epoch in (0, 1, 2):  # every stage reports the network's logits for the training accuracy
        with torch.no_grad():
            assert torch.equal(st.train_step(x, y, torch.arange(6), epoch).logits, st.model(x))
    for epoch in (0, 1):
        st.zero_grad()
        out = st.train_step(x, y, torch.arange(6), epoch)
        out.loss.backward()
        assert st.model.head.weight.grad.abs().sum() > 0
        assert torch.equal(st.slack, torch.zeros(3, 3)) and int(st.slack_steps) == 0
    logits = st.model(x)
    assert st.train_step(x, y, torch.arange(6), 0).loss.item() == pytest.approx(F.cross_entropy(logits, y).item())
    assert st.train_step(x, y, torch.arange(6), 1).loss.item() == pytest.approx(reweight_loss(logits, y, t).item())
    st.zero_grad()
    out = st.train_step(x, y, torch.arange(6), 2)
    assert out.loss.item() == pytest.approx(reweight_loss(logits, y, t).item())  # the slack is still 0
    out.loss.backward()
    assert st.model.head.weight.grad.abs().sum() > 0
    assert int(st.slack_steps) == 1 and st.slack.abs().min() > 0  # one Adam step of size ~lr on every entry
    assert torch.allclose(st.slack.abs(), torch.full((3, 3), 1e-2), rtol=1e-3)
    # the step is Adam's on the official loss's gradient (plus L2 decay at the starting slack 0)
    leaf = torch.zeros(3, 3, requires_grad=True)
    revision_loss(logits.detach(), y, t, leaf).backward()
    assert torch.equal(torch.sign(st.slack), -torch.sign(leaf.grad))
    assert torch.equal(st.transition, t)  # T itself is never trained
    with torch.no_grad():  # no hook without gradients: the slack does not move
        st.train_step(x, y, torch.arange(6), 2)
    assert int(st.slack_steps) == 1
    assert st.options()["t_origin"] == "anchor" and st.warmup_length() == 1


def test_slack_gradient_is_averaged_over_ranks_before_its_adam_step(monkeypatch):
    from robustlab import distributed
    from robustlab.strategies import t_revision as module

    st = _strategy()
    st.has_transition.fill_(True)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    leaf = torch.zeros(3, 3, requires_grad=True)
    revision_loss(st.model(x).detach(), y, st.transition, leaf).backward()
    seen = []
    monkeypatch.setattr(module, "adam_step", lambda param, grad, *rest: seen.append((grad.clone(), rest)))
    st.train_step(x, y, torch.arange(6), 2).loss.backward()  # one process: the gradient as it is
    peer = torch.arange(9.0).reshape(3, 3)
    monkeypatch.setattr(distributed, "current", lambda: distributed.DistInfo(0, 2, 0))
    monkeypatch.setattr(distributed, "all_reduce_sum", lambda t: t.add_(peer))  # the other rank's gradient
    st.train_step(x, y, torch.arange(6), 2).loss.backward()
    assert torch.allclose(seen[0][0], leaf.grad, atol=1e-7)
    assert torch.allclose(seen[1][0], (leaf.grad + peer) / 2, atol=1e-7)
    assert seen[0][1][3:] == (5e-7, 1e-4) and seen[0][1][0] is st.slack_avg and seen[0][1][1] is st.slack_sq
    assert seen[0][1][2] is st.slack_steps


def test_train_pass_estimates_t_once_from_the_stage_one_network():
    st = _strategy()
    x = torch.randn(10, 4)
    labels = torch.arange(10) % 3
    loader = DeviceLoader(x, labels, 4, lambda v, _generator: v, shuffle=False)
    with pytest.raises(UsageError) as err:
        st.train_step(x, labels, torch.arange(10), 1)
    assert str(err.value) == ("T-Revision has no T yet: the anchor-point estimate runs in on_train_pass before the "
                              "first epoch after stage 1 (give fit() a train_pass_loader)")
    st.on_train_pass(0, loader)  # still stage 1: nothing
    assert not bool(st.has_transition) and torch.equal(st.transition, torch.eye(3))
    with torch.no_grad():
        st.on_train_pass(1, loader)
        expected = anchor_point_transition(st.model(x).softmax(1).numpy())
    assert bool(st.has_transition)
    assert np.allclose(st.transition.numpy(), expected, atol=1e-7)
    with torch.no_grad():
        st.model.head.weight.add_(1.0)
        st.on_train_pass(2, loader)  # estimated once
    assert np.allclose(st.transition.numpy(), expected, atol=1e-7)


def test_epoch_metrics_record_the_error_of_t_plus_slack_where_the_truth_is_known():
    truth = np.array([[0.6, 0.2, 0.2], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    ctx = BuildContext(new_model=lambda: Lin(3), num_classes=3, num_train=10, noise_transition=truth)
    st = create_strategy("t_revision", context=ctx, estimate_epochs=1, reweight_epochs=1)
    st.on_epoch_start(0, 4)
    assert st.epoch_metrics() == {"stage": 1.0}
    st.has_transition.fill_(True)  # T = I
    st.slack.fill_(0.01)
    st.on_epoch_start(2, 4)
    m = st.epoch_metrics()
    est = np.eye(3) + 0.01
    assert m["stage"] == 3.0 and m["slack_max"] == pytest.approx(0.01)
    assert m["t_error_fro"] == pytest.approx(np.linalg.norm(est - truth), rel=1e-6)
    assert m["t_error"] == pytest.approx(official_error_port(est, truth), rel=1e-6)
    no_truth = _strategy()
    no_truth.has_transition.fill_(True)
    no_truth.on_epoch_start(1, 3)
    assert no_truth.epoch_metrics() == {"stage": 2.0, "slack_max": 0.0}


# ---- defaults, presets and bad input ------------------------------------------------------------

def _ctx(k, epochs=None, **kw):
    exp = SimpleNamespace(train=SimpleNamespace(epochs=epochs)) if epochs is not None else None
    return BuildContext(new_model=lambda: Lin(k), num_classes=k, num_train=10, experiment=exp, **kw)


def test_official_defaults_follow_the_class_count_and_presets():
    ten = create_strategy("t_revision", context=_ctx(10)).options()
    assert ten == {"estimate_epochs": 20, "reweight_epochs": 200, "percentile": 97.0, "filter_outlier": True,
                   "lr_revision": 5e-7, "weight_decay_revision": 1e-4, "t_source": "anchor", "t_file": None,
                   "t_origin": "anchor"}
    hundred = create_strategy("t_revision", context=_ctx(100, epochs=420)).options()
    assert hundred == {**ten, "estimate_epochs": 15, "filter_outlier": False}
    assert create_strategy("t_revision", context=_ctx(100), filter_outlier=True).options()["filter_outlier"] is True
    assert TRevision.presets == {"quick": {"estimate_epochs": 6, "reweight_epochs": 7, "lr_revision": 2.6e-4},
                                 "paper": {"estimate_epochs": 20, "reweight_epochs": 40, "lr_revision": 2.5e-6},
                                 "fast": {"estimate_epochs": 3, "reweight_epochs": 4, "lr_revision": 2.7e-4}}
    for name, epochs in (("quick", 20), ("paper", 100), ("fast", 10)):
        config = make_config("t_revision", TRevision.presets[name])
        check_stages(config.estimate_epochs, config.reweight_epochs, epochs)
        revision = epochs - config.estimate_epochs - config.reweight_epochs
        steps = {"quick": 5000 // 256, "paper": 352, "fast": 45000 // 1024}[name]
        # lr x revision steps ~ the official 5e-7 x 200 x 352
        assert config.lr_revision * revision * steps == pytest.approx(5e-7 * 200 * 352, rel=0.05)


def test_oracle_and_file_transitions_replace_the_estimate(tmp_path):
    truth = np.array([[0.7, 0.3], [0.2, 0.8]])
    st = create_strategy("t_revision", context=_ctx(2, epochs=3, noise_transition=truth), t_source="oracle",
                         estimate_epochs=0, reweight_epochs=1)
    assert bool(st.has_transition) and np.allclose(st.transition.numpy(), truth)
    assert st.stage(0) == 2 and st.options()["t_origin"] == "oracle"
    path = tmp_path / "t.npy"
    np.save(path, np.array([[0.9, 0.1], [0.4, 0.6]]))
    st = create_strategy("t_revision", context=_ctx(2), t_source="file", t_file=str(path), estimate_epochs=2,
                         reweight_epochs=0)
    assert np.allclose(st.transition.numpy(), [[0.9, 0.1], [0.4, 0.6]])
    assert st.options()["t_origin"] == f"file {path}"
    st.on_train_pass(5, None)  # a given T is never re-estimated (the loader is not even read)
    st.on_epoch_start(1, 3)
    assert st.epoch_metrics() == {"stage": 1.0}  # no error before stage 2, even with T known from the start
    np.save(path, np.eye(3))
    with pytest.raises(UsageError, match=r"^t_file .*t\.npy: the transition matrix is 3x3, the dataset has 2 classes$"):
        create_strategy("t_revision", context=_ctx(2), t_source="file", t_file=str(path))


@pytest.mark.parametrize("bad,message", [
    ({"estimate_epochs": -1}, "estimate_epochs must be >= 0, got -1"),
    ({"estimate_epochs": 0}, "estimate_epochs must be >= 1 with t_source=anchor (T is estimated from the stage-1 network)"),
    ({"reweight_epochs": -2}, "reweight_epochs must be >= 0, got -2"),
    ({"percentile": 0}, "percentile must be in (0, 100], got 0.0"),
    ({"percentile": 100.1}, "percentile must be in (0, 100], got 100.1"),
    ({"lr_revision": -1e-3}, "lr_revision must be > 0, got -0.001"),
    ({"lr_revision": 0}, "lr_revision must be > 0, got 0.0"),
    ({"weight_decay_revision": -1}, "weight_decay_revision must be >= 0, got -1.0"),
    ({"t_source": "estimate"}, "t_source must be one of anchor, oracle, file, got 'estimate'"),
    ({"t_source": "file"}, "t_file is given exactly with t_source=file (got t_source=file, t_file=None)"),
    ({"t_file": "t.npy"}, "t_file is given exactly with t_source=file (got t_source=anchor, t_file=t.npy)"),
])
def test_config_bounds_and_exact_messages(bad, message):
    with pytest.raises(UsageError) as err:
        make_config("t_revision", bad)
    assert str(err.value) == f"strategy 't_revision': {message}"
    make_config("t_revision", {"percentile": 0.5})
    make_config("t_revision", {"percentile": 100, "weight_decay_revision": 0, "reweight_epochs": 0,
                               "t_source": "oracle", "estimate_epochs": 0})


def test_stages_that_do_not_fit_the_run_are_one_line():
    msg = ("t_revision stages estimate_epochs + reweight_epochs = 20 + 200 epochs do not fit the run's 100 epochs "
           "(estimate_epochs must be < 100 and the sum <= 100; the rest revises T)")
    with pytest.raises(UsageError) as err:
        create_strategy("t_revision", context=_ctx(10, epochs=100))
    assert str(err.value) == msg
    with pytest.raises(UsageError, match=r"= 5 \+ 0 epochs do not fit the run's 5 epochs"):
        create_strategy("t_revision", context=_ctx(10, epochs=5), estimate_epochs=5, reweight_epochs=0)
    ok = create_strategy("t_revision", context=_ctx(10, epochs=5), estimate_epochs=4, reweight_epochs=1)  # no revision
    assert [ok.stage(e) for e in range(5)] == [1, 1, 1, 1, 2]
    with pytest.raises(UsageError, match=r"= 4 \+ 1 epochs do not fit the run's 4 epochs"):
        ok.on_epoch_start(0, 4)  # a run shorter than the one it was built for
    ok.on_epoch_start(0, 5)


def test_constructor_checks_its_arguments():
    with pytest.raises(UsageError, match=r"^T-Revision needs >= 2 classes, got 1$"):
        TRevision(Lin(1), 1, 1, 1)
    with pytest.raises(UsageError, match=r"^estimate_epochs must be >= 1, got 0$"):
        TRevision(Lin(2), 2, 0, 1)
    assert TRevision(Lin(2), 2, 0, 1, transition=np.eye(2)).stage(0) == 2
    with pytest.raises(UsageError, match=r"^estimate_epochs must be >= 0, got -1$"):
        TRevision(Lin(2), 2, -1, 1, transition=np.eye(2))
    with pytest.raises(UsageError, match=r"^reweight_epochs must be >= 0, got -1$"):
        TRevision(Lin(2), 2, 1, -1)
    with pytest.raises(UsageError, match=r"^percentile must be in \(0, 100\], got 0$"):
        TRevision(Lin(2), 2, 1, 1, percentile=0)
    with pytest.raises(UsageError, match=r"^lr_revision must be > 0, got 0$"):
        TRevision(Lin(2), 2, 1, 1, lr_revision=0)
    with pytest.raises(UsageError, match=r"^weight_decay_revision must be >= 0, got -1$"):
        TRevision(Lin(2), 2, 1, 1, weight_decay_revision=-1)
    with pytest.raises(UsageError, match=r"^T-Revision: the transition matrix is 3x3, the dataset has 2 classes$"):
        TRevision(Lin(2), 2, 1, 1, transition=np.eye(3))
    with pytest.raises(UsageError, match=r"^the true T: the transition matrix is 3x3, the dataset has 2 classes$"):
        TRevision(Lin(2), 2, 1, 1, true_transition=np.eye(3))
    assert TRevision(Lin(2), 2, 0, 1, transition=np.eye(2)).source == "given"
    default = TRevision(Lin(2), 2, 1, 1)
    assert default.source == "anchor" and default.true_transition is None and not bool(default.has_transition)
    assert default.epoch_metrics() == {"stage": 1.0}  # before any epoch: stage 1
    assert default.slack_steps.dtype == torch.long and default.slack_steps.shape == ()
    assert all(torch.equal(getattr(default, b), torch.zeros(2, 2)) for b in ("slack", "slack_avg", "slack_sq"))
    assert (default.percentile, default.filter_outlier, default.lr_revision, default.weight_decay_revision) == (
        97.0, True, 5e-7, 1e-4)
    assert TRevision(Lin(2), 2, 1, 1, percentile=100, weight_decay_revision=0).percentile == 100
    assert TRevision(Lin(2), 2, 1, 0, percentile=0.5).reweight_epochs == 0  # the boundaries are allowed
    with pytest.raises(UsageError, match=r"^percentile must be in \(0, 100\], got 100.5$"):
        TRevision(Lin(2), 2, 1, 1, percentile=100.5)
    given = TRevision(Lin(2), 2, 1, 1, transition=np.array([[0.75, 0.25], [0.5, 0.5]]))  # float64 in, float32 kept
    assert given.transition.dtype == torch.float32 and bool(given.has_transition)
    assert torch.equal(given.transition, torch.tensor([[0.75, 0.25], [0.5, 0.5]]))


# ---- a run: every stage, and resume ---------------------------------------------------------------

class InterruptAt(DeviceLoader):
    stop = 2

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.stop:
            raise KeyboardInterrupt
        super().set_epoch(epoch)


@pytest.mark.parametrize("stop", [2, 3])  # just before the estimate, inside the revision
def test_fit_runs_every_stage_and_resume_is_bit_exact(tmp_path, stop):
    n = 96
    images, clean = _toy(n + 40)
    noisy, _ = flip_toy_labels(clean[:n], 0.3)
    truth = np.full((4, 4), 0.1) + np.eye(4) * 0.6
    augment = BatchAugment(AugmentConfig(crop_pad=1, flip=True), TOY_MEAN, TOY_STD)
    whole, test = toy_eval_loaders(images, noisy, clean, n, 48, 40)
    cfg = TrainConfig(epochs=5, batch_size=32, tta="none",
                      optim=OptimConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="constant"))

    def make(seed):
        torch.manual_seed(seed)
        ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=4), num_classes=4, num_train=n,
                           noise_transition=truth)
        return create_strategy("t_revision", context=ctx, estimate_epochs=2, reweight_epochs=1, lr_revision=1e-3)

    full = make(0)
    result = fit(full, DeviceLoader(images[:n], noisy, 32, augment, seed=0), cfg, test_loader=test,
                 run_dir=tmp_path / "full", quiet=True, num_classes=4, train_pass_loader=whole)
    assert [r["stage"] for r in result.history] == [1, 1, 2, 3, 3]
    assert ["t_error_fro" in r for r in result.history] == [False, False, True, True, True]
    assert result.history[2]["slack_max"] == 0.0 < result.history[3]["slack_max"] < result.history[4]["slack_max"]
    assert int(full.slack_steps) == 6  # 2 revision epochs of 3 batches
    assert result.metrics["test_acc"] > 0.4  # chance is 0.25
    t = full.transition.numpy()
    assert np.allclose(t.sum(1), 1, atol=1e-6) and (t.argmax(1) == np.arange(4)).all()  # each row peaks on its class

    part = make(0)
    loader = InterruptAt(images[:n], noisy, 32, augment, seed=0)
    loader.stop = stop
    with pytest.raises(KeyboardInterrupt):
        fit(part, loader, cfg, test_loader=test, run_dir=tmp_path / "part", quiet=True, num_classes=4,
            train_pass_loader=whole)
    resumed = make(1)  # other weights, no T: the checkpoint must restore them all
    torch.manual_seed(123)
    fit(resumed, DeviceLoader(images[:n], noisy, 32, augment, seed=0), cfg, test_loader=test, run_dir=tmp_path / "part",
        resume=tmp_path / "part" / "last.pt", quiet=True, num_classes=4, train_pass_loader=whole)
    a, b = full.state_dict(), resumed.state_dict()
    assert {"transition", "has_transition", "slack", "slack_avg", "slack_sq", "slack_steps"} <= set(a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---- the noisy-label study on real data ---------------------------------------------------------

def test_runs_end_to_end_in_the_noisy_label_study(cifar10, cifar10_dir, session_cache_dir, tmp_path):
    rows, record = run_tiny_study("t_revision", cifar10_dir, session_cache_dir, tmp_path / "study", 3,
                                  "--strategy-arg", "t_revision.estimate_epochs=1",
                                  "--strategy-arg", "t_revision.reweight_epochs=1")
    assert set(rows) == {"clean_ce", "noisy_t_revision"}
    opts = record["strategy_options"]
    assert (opts["estimate_epochs"], opts["reweight_epochs"], opts["lr_revision"]) == (1, 1, 2.6e-4)  # quick's lr
    hist = record["history"]
    assert [h["stage"] for h in hist] == [1, 2, 3]
    # symmetric 40% noise on 10 classes: the realised T is known, and the estimate's error is recorded
    assert "t_error_fro" not in hist[0] and 0 < hist[1]["t_error_fro"] < 3.2 and 0 < hist[1]["t_error"] <= 2
    assert hist[2]["slack_max"] > 0
    assert 0.0 <= record["metrics"]["test_acc"] <= 1.0


def test_study_with_too_few_epochs_for_the_stages_exits_2(cifar10, cifar10_dir, session_cache_dir, tmp_path, capsys):
    from studies import noisy_labels

    argv = tiny_study_argv("t_revision", cifar10_dir, session_cache_dir, tmp_path / "s", 5)
    code = None
    try:
        code = noisy_labels.main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("t_revision stages estimate_epochs + reweight_epochs = 6 + 7 epochs do not fit the "
                              "run's 5 epochs") in err[0]
