"""ELR+: the loss against a line-by-line port of the official elr_plus_loss, the sigmoid ramps and
weight averaging by hand, gradients only into the two trained networks, the memories, averages
and counter surviving resume bit-exactly, exact messages, and a run through the noisy-label study."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.data import AugmentConfig, BatchAugment, DeviceLoader, Normalize
from robustlab.data.augment import MultiView
from robustlab.engine import TrainConfig, fit
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import BuildContext, create_strategy, make_config
from robustlab.strategies import elr_plus as elr_plus_module
from robustlab.strategies.elr_plus import (ELRPlus, ELRPlusConfig, ema_decay, elr_plus_loss, mix, sigmoid_rampup,
                                           update_average)
from resume_helpers import InterruptAt, toy_images as _toy


# ---- line-by-line port of the official code (shengliu66/ELR, ELR_plus) ------------------------

def official_sigmoid_rampup_port(current, rampup_length):
    """ELR_plus/utils/util.py sigmoid_rampup."""
    if rampup_length == 0:
        return 1.0
    else:
        current = np.clip(current, 0.0, rampup_length)
        phase = 1.0 - current / rampup_length
        return float(np.exp(-5.0 * phase * phase))


class OfficialELRPlusLossPort(nn.Module):
    """ELR_plus/model/loss.py elr_plus_loss, with config['coef_step'] and lambda passed in."""

    def __init__(self, num_examp, coef_step, lam, num_classes=10, beta=0.3):
        super().__init__()
        self.coef_step, self.lam = coef_step, lam
        self.pred_hist = (torch.zeros(num_examp, num_classes))
        self.q = 0
        self.beta = beta
        self.num_classes = num_classes

    def forward(self, iteration, output, y_labeled):
        y_pred = F.softmax(output, dim=1)
        y_pred = torch.clamp(y_pred, 1e-4, 1.0 - 1e-4)
        if self.num_classes == 100:
            y_labeled = y_labeled * self.q
            y_labeled = y_labeled / (y_labeled).sum(dim=1, keepdim=True)
        ce_loss = torch.mean(-torch.sum(y_labeled * F.log_softmax(output, dim=1), dim=-1))
        reg = ((1 - (self.q * y_pred).sum(dim=1)).log()).mean()
        final_loss = ce_loss + official_sigmoid_rampup_port(iteration, self.coef_step) * (self.lam * reg)
        return final_loss, y_pred.cpu().detach()

    def update_hist(self, epoch, out, index=None, mix_index=..., mixup_l=1):
        y_pred_ = F.softmax(out, dim=1)
        self.pred_hist[index] = self.beta * self.pred_hist[index] + \
            (1 - self.beta) * y_pred_ / (y_pred_).sum(dim=1, keepdim=True)
        self.q = mixup_l * self.pred_hist[index] + (1 - mixup_l) * self.pred_hist[index][mix_index]


def official_update_ema_variables_port(model, model_ema, global_step, alpha_, ema_step):
    """trainer.py update_ema_variables with config['ema_update'] true."""
    alpha = official_sigmoid_rampup_port(global_step + 1, ema_step) * alpha_
    for ema_param, param in zip(model_ema.parameters(), model.parameters()):
        ema_param.data.mul_(alpha).add_(param.data, alpha=1 - alpha)


# ---- helpers -----------------------------------------------------------------------------------

class Linear(nn.Module):
    def __init__(self, classes=4, features=6, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(features, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _strategy(classes=4, num_train=10, **options):
    seeds = iter(range(100))
    ctx = BuildContext(new_model=lambda: Linear(classes, seed=next(seeds)), num_classes=classes, num_train=num_train)
    return create_strategy("elr_plus", context=ctx, **options)


def _fixed_mix(monkeypatch, draws):
    """Make mix() return the given (lambda, permutation) pairs in turn."""
    queue = list(draws)
    monkeypatch.setattr(elr_plus_module, "mix", lambda alpha, n, device: queue.pop(0))


# ---- the loss and its pieces -------------------------------------------------------------------

def test_sigmoid_rampup_by_hand_and_against_the_port():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(10, 10) == sigmoid_rampup(25, 10) == 1.0
    assert sigmoid_rampup(-3, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(7, 0) == 1.0
    for t, length in [(0, 40000), (1, 40000), (39999, 40000), (123, 330), (3.5, 7)]:
        assert sigmoid_rampup(t, length) == official_sigmoid_rampup_port(t, length)
    assert ema_decay(1, 10, 0.997) == pytest.approx(math.exp(-5 * 0.8 ** 2) * 0.997)  # sigmoid_rampup(2, 10)


def test_loss_by_hand_without_mixing():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[0.8, 0.2], [0.5, 0.5]])
    p0 = math.exp(2) / (math.exp(2) + 1)
    ce = (-math.log(p0) - math.log(0.5)) / 2
    reg = (math.log(1 - (0.8 * p0 + 0.2 * (1 - p0))) + math.log(1 - 0.5)) / 2
    assert elr_plus_loss(logits, labels, q, 3.0, False).item() == pytest.approx(ce + 3 * reg, rel=1e-6)
    # weighted labels: y * q renormalised is y itself for one-hot y
    assert elr_plus_loss(logits, labels, q, 3.0, True).item() == pytest.approx(ce + 3 * reg, rel=1e-6)
    soft = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    w = torch.tensor([[0.8, 0.2], [0.5, 0.5]])  # the renormalised y * q
    ce_w = -(w * F.log_softmax(logits, 1)).sum(1).mean().item()
    assert elr_plus_loss(logits, soft, q, 0.0, True).item() == pytest.approx(ce_w, rel=1e-6)
    # the lower clamp: a class predicted ~0 but fully in the target still counts 1e-4
    low = elr_plus_loss(torch.tensor([[-50.0, 50.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), 1.0, False)
    assert low.item() == pytest.approx(math.log(1 - 1e-4), abs=1e-7)
    # the upper clamp: a saturated prediction and target give log(1 - (1 - 1e-4)), not log(0)
    sat = torch.tensor([[100.0, -100.0]])
    assert elr_plus_loss(sat, torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]), 1.0, False).item() == \
        pytest.approx(math.log(1e-4), rel=1e-3)


@pytest.mark.parametrize("classes", [4, 100])
def test_network_loss_matches_the_official_port_over_several_batches(monkeypatch, classes):
    st = _strategy(classes, num_train=10, beta=0.6, lam=2.0, coef_step=5)
    port = OfficialELRPlusLossPort(10, coef_step=5, lam=2.0, num_classes=classes, beta=0.6)
    assert st.weighted_labels == (classes == 100)
    g = torch.Generator().manual_seed(3)
    for it, (idx, lam) in enumerate([([0, 3, 5, 7], 0.7), ([3, 5, 8, 9], 0.55), ([0, 1, 3, 9], 1.0)], start=1):
        idx = torch.tensor(idx)
        x, y = torch.randn(4, 6, generator=g), torch.randint(0, classes, (4,), generator=g)
        perm = torch.randperm(4, generator=g)
        _fixed_mix(monkeypatch, [(lam, perm)])
        loss, logits, targets = st.network_loss(st.model, st.average2, st.target1, x, y, idx,
                                                sigmoid_rampup(it, st.coef_step) * st.lam)
        # the official trainer: mix, forward, peer average on the unmixed batch, update_hist, loss
        onehot = torch.zeros(4, classes).scatter_(1, y.view(-1, 1), 1)
        mixed_x, mixed_t = lam * x + (1 - lam) * x[perm], lam * onehot + (1 - lam) * onehot[perm]
        output = st.model(mixed_x)
        port.update_hist(0, st.average2(x).detach(), idx.tolist(), mix_index=perm, mixup_l=lam)
        expected, _ = port(it, output, mixed_t)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
        assert torch.allclose(st.target1, port.pred_hist, atol=1e-7)
        assert torch.equal(logits, output) and torch.equal(targets, mixed_t.argmax(1))
    assert torch.equal(st.target2, torch.zeros(10, classes))  # network 2's memory is its own


def test_mix_folds_lambda_and_zero_alpha_does_not_mix():
    torch.manual_seed(0)
    lams = [mix(1.0, 8, "cpu") for _ in range(50)]
    assert all(0.5 <= lam <= 1.0 for lam, _ in lams) and len({round(lam, 6) for lam, _ in lams}) > 40
    assert all(sorted(p.tolist()) == list(range(8)) for _, p in lams)
    assert any(p.tolist() != list(range(8)) for _, p in lams)
    lam, perm = mix(0.0, 5, "cpu")
    assert lam == 1.0 and perm.tolist() == [0, 1, 2, 3, 4]


def test_weight_average_by_hand_and_against_the_port():
    net, avg, avg_port = Linear(seed=0), Linear(seed=1), Linear(seed=1)
    w, a = net.fc.weight.detach().clone(), avg.fc.weight.detach().clone()
    update_average(avg, net, 0.9)
    assert torch.allclose(avg.fc.weight, 0.9 * a + 0.1 * w)
    official_update_ema_variables_port(net, avg_port, 1, 0.997, 40)  # decay sigmoid_rampup(2, 40) * 0.997
    avg2 = Linear(seed=1)
    update_average(avg2, net, ema_decay(1, 40, 0.997))
    for p, q in zip(avg2.parameters(), avg_port.parameters()):
        assert torch.allclose(p, q, atol=1e-7)


# ---- a training step: both networks, gradients, counter, averages -----------------------------

def test_step_trains_both_networks_their_own_views_and_no_average(monkeypatch):
    st = _strategy(4, num_train=6, lam=3.0)
    g = torch.Generator().manual_seed(0)
    x, y, idx = torch.randn(3, 2, 1, 2, 3, generator=g), torch.tensor([0, 1, 2]), torch.tensor([4, 0, 2])
    _fixed_mix(monkeypatch, [(1.0, torch.arange(3)), (1.0, torch.arange(3))])
    out = st.train_step(x, y, idx, 0)
    out.loss.backward()
    for net in (st.model, st.peer):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    for avg in (st.average1, st.average2):
        assert all(not p.requires_grad and p.grad is None for p in avg.parameters())
    trainable = {id(p) for p in st.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in (*st.model.parameters(), *st.peer.parameters())}
    # network 1 sees view 0 with targets from average 2; network 2 view 1 with targets from average 1
    p2 = st.average2(x[:, 0]).softmax(1)
    assert torch.allclose(st.target1[idx], 0.3 * p2, atol=1e-7)
    p1 = st.average1(x[:, 1]).softmax(1)
    assert torch.allclose(st.target2[idx], 0.3 * p1, atol=1e-7)
    assert torch.equal(st.target1[[1, 3, 5]], torch.zeros(3, 4))
    expected = (elr_plus_loss(st.model(x[:, 0]), F.one_hot(y, 4).float(), st.target1[idx], 3.0, False)
                + elr_plus_loss(st.peer(x[:, 1]), F.one_hot(y, 4).float(), st.target2[idx], 3.0, False))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(out.logits, st.model(x[:, 0]).float()) and torch.equal(out.targets, y)
    assert int(st.iteration) == 1
    # the averages move toward the (updated) networks after the step
    a1 = st.average1.fc.weight.detach().clone()
    st.after_step()
    d = ema_decay(1, st.ema_step, st.ema_alpha)
    assert torch.allclose(st.average1.fc.weight, d * a1 + (1 - d) * st.model.fc.weight)


def test_counter_drives_the_lambda_ramp_and_needs_two_views(monkeypatch):
    st = _strategy(4, num_train=6, lam=2.0, coef_step=4)
    weights = []
    monkeypatch.setattr(elr_plus_module, "elr_plus_loss",
                        lambda logits, t, q, weight, wl: weights.append(weight) or logits.sum() * 0)
    x, y, idx = torch.randn(2, 2, 1, 2, 3), torch.tensor([0, 1]), torch.tensor([0, 1])
    st.on_epoch_start(0, 1)
    for _ in range(3):
        st.train_step(x, y, idx, 0)
    assert weights == [2.0 * sigmoid_rampup(t, 4) for t in (1, 1, 2, 2, 3, 3)]
    assert int(st.iteration) == 3
    st.iteration.fill_(10)  # a loaded checkpoint: the counter is re-read at the epoch start
    st.on_epoch_start(1, 2)
    st.train_step(x, y, idx, 1)
    assert int(st.iteration) == 11 and weights[-1] == 2.0
    for bad in (torch.randn(2, 6), torch.randn(2, 1, 1, 2, 3), torch.randn(2, 2, 6)):
        with pytest.raises(UsageError, match=r"^ELR\+ needs two augmented views per sample: x of shape \(N, 2, C, H, W\)$"):
            st.train_step(bad, y, idx, 0)
    fresh = _strategy(4, num_train=6)
    a = [p.clone() for p in fresh.average1.parameters()]
    fresh.after_step()  # nothing trained yet: nothing to average
    assert all(torch.equal(p, q) for p, q in zip(a, fresh.average1.parameters()))


def test_prediction_is_the_mean_of_the_trained_networks():
    st = _strategy(4)
    x = torch.randn(5, 6)
    mean = (st.model(x) + st.peer(x)) / 2
    assert torch.allclose(st.predict(x), mean)
    extra = st.extra_predictors()
    assert set(extra) == {"net1", "net2", "ensemble"} and extra["net1"] is st.model and extra["net2"] is st.peer
    assert torch.allclose(extra["ensemble"](x), mean)


# ---- defaults, presets and bad input -----------------------------------------------------------

def test_official_defaults_follow_the_class_count():
    ten = _strategy(10).options()
    assert ten == {"beta": 0.7, "lam": 3.0, "ema_alpha": 0.997, "ema_step": 40000, "coef_step": 0,
                   "mixup_alpha": 1.0, "weighted_labels": False}
    hundred = _strategy(100).options()
    assert hundred == {**ten, "beta": 0.9, "lam": 7.0, "coef_step": 40000, "weighted_labels": True}
    assert _strategy(100, ema_step=300).options()["coef_step"] == 300
    assert _strategy(100, coef_step=7, weighted_labels=False, beta=0.5).options() == {
        **hundred, "coef_step": 7, "weighted_labels": False, "beta": 0.5}
    assert ELRPlus.presets == {"quick": {"ema_step": 330}, "paper": {}, "fast": {"ema_step": 220}}
    assert ELRPlus.views == 2


@pytest.mark.parametrize("bad,message", [
    ({"beta": 1.0}, "beta must be in [0, 1), got 1.0"),
    ({"beta": -0.1}, "beta must be in [0, 1), got -0.1"),
    ({"lam": -1}, "lam must be >= 0, got -1.0"),
    ({"ema_alpha": 1.0}, "ema_alpha must be in [0, 1), got 1.0"),
    ({"ema_alpha": -0.5}, "ema_alpha must be in [0, 1), got -0.5"),
    ({"ema_step": -1}, "ema_step must be >= 0 (batches), got -1"),
    ({"coef_step": -2}, "coef_step must be >= 0 (batches), got -2"),
    ({"mixup_alpha": -1}, "mixup_alpha must be >= 0 (0 = no mixup), got -1.0"),
    ({"mixup_alpha": float("inf")}, "option mixup_alpha must be a finite number, got inf"),  # the registry checks finiteness first
])
def test_config_bounds_and_exact_messages(bad, message):
    with pytest.raises(UsageError) as err:
        make_config("elr_plus", bad)
    assert str(err.value) == f"strategy 'elr_plus': {message}"
    ELRPlusConfig(beta=0.0, lam=0.0, ema_alpha=0.0, ema_step=0, coef_step=0, mixup_alpha=0.0).validate()


def test_constructor_needs_the_training_set_size_and_two_classes():
    nets = [Linear() for _ in range(4)]
    with pytest.raises(UsageError, match=r"^ELR\+ needs the training-set size \(num_train\) for its per-sample targets$"):
        ELRPlus(*nets, 0, 4, 0.7, 3.0)
    one = ELRPlus(*nets, 1, 4, 0.7, 3.0)  # one sample is enough; the constructor's defaults are CIFAR-10's
    assert one.target1.shape == (1, 4) and (one.coef_step, one.weighted_labels) == (0, False)
    assert (one.ema_alpha, one.ema_step, one.mixup_alpha) == (0.997, 40000, 1.0)
    assert one.iteration.dtype == torch.long and one.iteration.shape == ()  # an exact batch count
    assert ELRPlus(*nets, 3, 2, 0.7, 3.0).target2.shape == (3, 2)  # two classes are enough
    with pytest.raises(UsageError, match="needs >= 2 classes, got 1"):
        ELRPlus(*nets, 5, 1, 0.7, 3.0)


# ---- resume ------------------------------------------------------------------------------------

def _elr_plus(seed, n):
    torch.manual_seed(seed)
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=4), num_classes=4, num_train=n)
    return create_strategy("elr_plus", context=ctx, ema_step=6)


def test_fit_learns_and_resume_is_bit_exact(tmp_path):
    n = 96
    images, labels = _toy(n + 40)
    mean, std = (0.5,) * 3, (0.25,) * 3
    augment = MultiView(BatchAugment(AugmentConfig(crop_pad=1, flip=True), mean, std), ELRPlus.views)
    test = DeviceLoader(images[n:], labels[n:], 40, Normalize(mean, std), shuffle=False)
    cfg = TrainConfig(epochs=3, batch_size=32, tta="none",
                      optim=OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant"))

    full = _elr_plus(0, n)
    result = fit(full, DeviceLoader(images[:n], labels[:n], 32, augment, seed=0), cfg, test_loader=test,
                 run_dir=tmp_path / "full", quiet=True, num_classes=4)
    assert result.metrics["test_acc"] > 0.5  # chance is 0.25
    assert {"test_net1_acc", "test_net2_acc", "test_ensemble_acc"} <= set(result.metrics)
    assert int(full.iteration) == 9  # 3 epochs of 3 batches
    # every sample's memory was updated once per epoch from 0: each row sums to 1 - 0.7^3
    for target in (full.target1, full.target2):
        assert torch.allclose(target.sum(1), torch.full((n,), 1 - 0.7 ** 3))

    part = _elr_plus(0, n)
    with pytest.raises(KeyboardInterrupt):
        fit(part, InterruptAt(images[:n], labels[:n], 32, augment, seed=0), cfg, test_loader=test,
            run_dir=tmp_path / "part", quiet=True, num_classes=4)
    resumed = _elr_plus(1, n)  # other weights, empty memories: the checkpoint must replace them all
    torch.manual_seed(123)
    fit(resumed, DeviceLoader(images[:n], labels[:n], 32, augment, seed=0), cfg, test_loader=test,
        run_dir=tmp_path / "part", resume=tmp_path / "part" / "last.pt", quiet=True, num_classes=4)
    a, b = full.state_dict(), resumed.state_dict()
    assert {"target1", "target2", "iteration"} <= set(a)
    assert any(k.startswith("average1.") for k in a) and any(k.startswith("average2.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---- the noisy-label study on real data ---------------------------------------------------------

def test_runs_end_to_end_in_the_noisy_label_study(cifar10, cifar10_dir, session_cache_dir, tmp_path):
    from studies import noisy_labels

    out = tmp_path / "study"
    argv = ["--noise", "0.4", "--methods", "elr_plus", "--epochs", "2", "--train-size", "200", "--val-size", "100",
            "--test-size", "200", "--data-dir", str(cifar10_dir), "--cache-dir", str(session_cache_dir),
            "--out", str(out), "--figures-dir", str(out / "fig"), "--quiet", "--model", "tiny_cnn"]
    assert noisy_labels.main(argv) == 0
    rows = {r["arm"]: r for r in csv.DictReader(open(out / "table.csv"))}
    row = rows["noisy_elr_plus"]
    record = next(json.loads(p.read_text()) for p in (out / "records").glob("*.json")
                  if json.loads(p.read_text())["config"]["tag"] == "noisy_elr_plus")
    assert row["headline"] == "ensemble"
    m = record["metrics"]
    assert float(row["test_acc_net1"]) == pytest.approx(m["test_net1_acc"])
    assert float(row["test_acc_ensemble"]) == pytest.approx(m["test_ensemble_acc"])
    assert record["strategy_options"]["ema_step"] == 330  # the quick preset
    assert 0.0 <= m["test_acc"] <= 1.0 and len(record["history"]) == 2
