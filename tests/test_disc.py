"""DISC: the selection, correction and threshold update against a line-by-line port of the official
code and by hand, the loss on a fixed batch against the port and by hand, gradients into the
network, the official defaults and their scaling, selection metrics, exact messages for bad input,
the per-sample state surviving resume bit-exactly, the selection beating the noise rate on toy
data, and a run through the noisy-label study on real CIFAR-10."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from study_helpers import run_tiny_study
from robustlab.data import AugmentConfig, BatchAugment, DeviceLoader, Normalize
from robustlab.data.augment import MultiView
from robustlab.engine import TrainConfig, fit
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import BuildContext, create_strategy, make_config
from robustlab.strategies import disc as disc_module
from robustlab.strategies.disc import (DISC, DISCConfig, gce_loss, mixup_loss, official_defaults, select,
                                       updated_confidence)
from robustlab.strategies.sop import TwoViews
from resume_helpers import InterruptAt, toy_images as _toy


# ---- line-by-line port of the official code (JackYFL/DISC, algorithms/DISC.py, losses/) ------

class OfficialDISCSelectionPort:
    """DISC.__init__'s per-sample variables and the end of DISC.train() (the no_grad block)."""

    def __init__(self, N, num_classes, momentum, sigma=0.5):
        self.N, self.momentum, self.sigma = N, momentum, sigma
        self.s_prev_confidence = torch.ones(N) * 1 / N
        self.w_prev_confidence = torch.ones(N) * 1 / N
        self.w_probs = torch.zeros(N, num_classes)
        self.s_probs = torch.zeros(N, num_classes)
        self.labels = torch.ones(N).long()
        self.weak_labels = self.labels.detach().clone()

    def end_of_epoch(self):
        with torch.no_grad():
            ws_probs = (self.w_probs + self.s_probs) / 2
            w_prob_max, w_label = torch.max(self.w_probs, dim=1)
            s_prob_max, s_label = torch.max(self.s_probs, dim=1)
            ws_prob_max, ws_label = torch.max(ws_probs, dim=1)
            labels = w_label.clone()

            w_mask = self.w_probs[self.labels >= 0, self.labels] > self.w_prev_confidence[self.labels >= 0]
            s_mask = self.s_probs[self.labels >= 0, self.labels] > self.s_prev_confidence[self.labels >= 0]
            self.clean_flags = w_mask & s_mask
            self.selected_flags = w_mask + s_mask
            self.w_selected_flags = w_mask & (~self.clean_flags)  # H_w
            self.s_selected_flags = s_mask & (~self.clean_flags)  # H_s
            self.hard_flags = self.w_selected_flags + self.s_selected_flags  # H

            ws_threshold = (self.w_prev_confidence + self.s_prev_confidence) / 2 + self.sigma
            ws_threshold = torch.min(ws_threshold, torch.tensor(0.90))
            self.correction_flags = ws_prob_max > ws_threshold
            self.correction_flags = self.correction_flags & (~self.selected_flags)  # P-(C+H)

            self.weak_flags = self.correction_flags + self.selected_flags
            self.weak_labels[self.selected_flags] = self.labels[self.selected_flags]
            self.weak_labels[self.correction_flags] = ws_label[self.correction_flags]

            self.w_prev_confidence = self.momentum * self.w_prev_confidence + (1 - self.momentum) * w_prob_max
            self.s_prev_confidence = self.momentum * self.s_prev_confidence + (1 - self.momentum) * s_prob_max


class OfficialGCELossPort(torch.nn.Module):
    """losses/loss_other.py GCELoss."""

    def __init__(self, num_classes, q=0.7):
        super().__init__()
        self.num_classes = num_classes
        self.q = q

    def forward(self, pred, labels):
        pred = F.softmax(pred, dim=1)
        pred = torch.clamp(pred, min=1e-7, max=1.0)
        label_one_hot = torch.nn.functional.one_hot(labels, self.num_classes).float()
        gce = (1. - torch.pow(torch.sum(label_one_hot * pred, dim=1), self.q)) / self.q
        return gce.mean()


class OfficialMixupPort(nn.Module):
    """losses/loss_mixup.py Mixup.forward, with its Beta draw and randperm given in turn as `draws`."""

    def __init__(self, num_classes, draws):
        super().__init__()
        self.num_classes = num_classes
        self.draws = list(draws)

    def forward(self, x, y, model):
        b = x.size(0)
        lam, index = self.draws.pop(0)
        lam = max(lam, 1 - lam)
        y = torch.zeros(b, self.num_classes).scatter_(1, y.view(-1, 1), 1)
        mixed_x = lam * x + (1 - lam) * x[index, :]
        mixed_y = lam * y + (1 - lam) * y[index]
        mixed_p = model(mixed_x)
        loss = -torch.mean(torch.sum(F.log_softmax(mixed_p, dim=1) * mixed_y, dim=1))
        return loss


def official_train_batch_loss_port(model, w_imgs, s_imgs, targets, b_clean_flags, b_hard_flags, weak_flag,
                                   weak_labels, lamd_ce, lamd_h, gce, mixup):
    """The loss of one batch in DISC.train() after start_epoch (up to the backward call)."""
    criterion = nn.CrossEntropyLoss()
    all_inputs = torch.cat([w_imgs, s_imgs], dim=0)
    bs = w_imgs.shape[0]
    logits = model(all_inputs)
    w_logits = logits[:bs]
    s_logits = logits[bs:]
    loss_sup = torch.tensor(0).float()
    clean_num = b_clean_flags.sum()
    hard_num = b_hard_flags.sum()
    batch_size = len(w_imgs)
    if clean_num:
        clean_loss_sup = criterion(w_logits[b_clean_flags], targets[b_clean_flags]) \
            + criterion(s_logits[b_clean_flags], targets[b_clean_flags])
        loss_sup += clean_loss_sup * lamd_ce * (clean_num / batch_size)
    if hard_num:
        hard_loss_sup = gce(w_logits[b_hard_flags], targets[b_hard_flags]) \
            + gce(s_logits[b_hard_flags], targets[b_hard_flags])
        loss_sup += hard_loss_sup * lamd_h * (hard_num / batch_size)
    weak_num = weak_flag.sum()
    if weak_num:
        mixup_loss = mixup(w_imgs[weak_flag], weak_labels[weak_flag], model)
        mixup_loss += mixup(s_imgs[weak_flag], weak_labels[weak_flag], model)
        loss_sup += mixup_loss
    return loss_sup


# ---- helpers -----------------------------------------------------------------------------------

class Linear(nn.Module):
    def __init__(self, classes=3, features=6, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(features, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _strategy(classes=3, num_train=8, clean_labels=None, experiment=None, noise_rate=0.0, **options):
    ctx = BuildContext(new_model=lambda: Linear(classes), num_classes=classes, num_train=num_train,
                       noise_rate=noise_rate, clean_train_labels=clean_labels, experiment=experiment)
    return create_strategy("disc", context=ctx, **options)


def _experiment(noise_type="symmetric", noise_rate=0.4):
    return SimpleNamespace(data=SimpleNamespace(noise_type=noise_type, noise_rate=noise_rate))


def _fixed_mix(monkeypatch, draws):
    queue = list(draws)
    monkeypatch.setattr(disc_module, "mix", lambda alpha, n, device: queue.pop(0))


# ---- threshold update, selection and correction ------------------------------------------------

def test_selection_and_correction_by_hand():
    w = torch.tensor([[0.7, 0.2, 0.1],    # label 0: both views above -> clean
                      [0.5, 0.4, 0.1],    # label 0: weak above, strong below -> hard
                      [0.05, 0.93, 0.02],  # label 0: neither; mean max 0.94 > min(0.25 + 0.5, 0.9) -> corrected to 1
                      [0.2, 0.3, 0.5],    # label 0: neither, not confident -> nothing
                      [0.1, 0.1, 0.8]])   # not seen yet (label -1) -> nothing
    s = torch.tensor([[0.6, 0.3, 0.1],
                      [0.2, 0.7, 0.1],
                      [0.05, 0.95, 0.0],
                      [0.1, 0.3, 0.6],
                      [0.1, 0.1, 0.8]])
    labels = torch.tensor([0, 0, 0, 0, -1])
    w_conf = torch.tensor([0.6, 0.45, 0.2, 0.3, 0.0])
    s_conf = torch.tensor([0.5, 0.3, 0.3, 0.3, 0.0])
    sel = select(w, s, labels, w_conf, s_conf, sigma=0.5, cap=0.9)
    assert sel.clean.tolist() == [True, False, False, False, False]
    assert sel.hard.tolist() == [False, True, False, False, False]
    assert sel.corrected.tolist() == [False, False, True, False, False]
    assert sel.new_label.tolist() == [0, 1, 1, 2, 2]
    # sigma 0.7, cap 1: the threshold (0.2 + 0.3) / 2 + 0.7 = 0.95 is above the 0.94 mean
    assert select(w, s, labels, w_conf, s_conf, sigma=0.7, cap=1.0).corrected.tolist() == [False] * 5
    # cap 0.35: sample 3's mean max 0.55 passes too; sample 4 is never seen
    assert select(w, s, labels, w_conf, s_conf, sigma=0.5, cap=0.35).corrected.tolist() == [False, False, True, True, False]
    # threshold exactly at the label's probability: strict '>' keeps it out
    tie = select(w[:1], s[:1], labels[:1], torch.tensor([0.7]), torch.tensor([0.6]))
    assert not tie.clean[0] and not tie.hard[0]


def test_correction_threshold_cap_by_hand():
    w = torch.tensor([[0.0, 0.92, 0.08]])
    s = torch.tensor([[0.0, 0.92, 0.08]])
    y = torch.tensor([0])
    low = torch.tensor([0.3])
    # threshold min(0.3 + 0.5, 0.9) = 0.8 < 0.92
    assert select(w, s, y, low, low).corrected.tolist() == [True]
    # threshold min(0.45 + 0.5, 0.9) = 0.9 (the cap) < 0.92
    assert select(w, s, y, low + 0.15, low + 0.15).corrected.tolist() == [True]
    # cap 0.93: threshold 0.93 > 0.92
    assert select(w, s, y, low + 0.15, low + 0.15, cap=0.93).corrected.tolist() == [False]
    # sigma 0.7 with the default cap: min(1.0, 0.9) = 0.9 < 0.92
    assert select(w, s, y, low, low, sigma=0.7).corrected.tolist() == [True]
    # sigma 0.6, cap 1: threshold 0.9 exactly at 0.92? (0.3 + 0.6 = 0.9) -> corrected; 0.35 + 0.6 = 0.95 -> not
    assert select(w, s, y, low, low, sigma=0.6, cap=1.0).corrected.tolist() == [True]
    assert select(w, s, y, low + 0.05, low + 0.05, sigma=0.6, cap=1.0).corrected.tolist() == [False]
    # exactly at the threshold (0.25 + 0.25) / 2 + 0.5 = 0.75: strict '>' leaves it uncorrected
    at = torch.tensor([[0.0, 0.75, 0.25]])
    quarter = torch.tensor([0.25])
    assert select(at, at, y, quarter, quarter).corrected.tolist() == [False]
    assert select(at, at, y, quarter - 0.125, quarter - 0.125).corrected.tolist() == [True]
    # the mean of both views counts: 0.92 and 0.82 average to 0.87 < 0.9
    s2 = torch.tensor([[0.1, 0.82, 0.08]])
    assert select(w, s2, y, low + 0.15, low + 0.15).corrected.tolist() == [False]


def test_threshold_update_by_hand():
    conf = torch.tensor([0.1, 0.5])
    probs = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    assert torch.allclose(updated_confidence(conf, probs, 0.9), torch.tensor([0.9 * 0.1 + 0.1 * 0.8, 0.9 * 0.5 + 0.1 * 0.7]))
    assert torch.equal(updated_confidence(conf, probs, 0.0), torch.tensor([0.8, 0.7]))


def test_selection_over_epochs_matches_the_official_port():
    n, c, momentum = 12, 3, 0.8
    st = _strategy(c, num_train=n, momentum=momentum, start_epoch=1)
    port = OfficialDISCSelectionPort(n, c, momentum)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, c, (n,), generator=g)
    st.labels.copy_(labels)
    port.labels = labels.clone()
    assert torch.equal(st.w_conf, port.w_prev_confidence) and torch.equal(st.s_conf, port.s_prev_confidence)
    st.on_epoch_start(0, 6)  # nothing stored yet: no selection before the first epoch
    assert int(st.rounds) == 0 and st.epoch_metrics() == {}
    for epoch in range(1, 6):
        # sharpening predictions, as during training: the thresholds trail the confidences
        w = (torch.randn(n, c, generator=g) * epoch).softmax(1)
        s = (torch.randn(n, c, generator=g) * epoch).softmax(1)
        st.w_probs.copy_(w)
        st.s_probs.copy_(s)
        port.w_probs, port.s_probs = w.clone(), s.clone()
        st.on_epoch_start(epoch, 6)
        port.end_of_epoch()
        assert torch.equal(st.clean, port.clean_flags)
        assert torch.equal(st.hard, port.hard_flags)
        assert torch.equal(st.corrected, port.correction_flags)
        weak = st.clean | st.hard | st.corrected
        assert torch.equal(weak, port.weak_flags)
        assert torch.equal(torch.where(st.corrected, st.new_label, st.labels)[weak], port.weak_labels[weak])
        assert torch.allclose(st.w_conf, port.w_prev_confidence, atol=1e-7)
        assert torch.allclose(st.s_conf, port.s_prev_confidence, atol=1e-7)
        assert int(st.rounds) == epoch
        before = st.w_conf.clone()
        st.on_epoch_start(epoch, 6)  # a second call in the same epoch changes nothing
        assert torch.equal(st.w_conf, before) and int(st.rounds) == epoch
    assert port.clean_flags.any() and port.hard_flags.any() and port.correction_flags.any()  # every subset exercised
    st.on_epoch_start(1, 6)  # another run from epoch 1 (rounds 5): a new selection, not a stale one
    assert int(st.rounds) == 1 and not torch.equal(st.w_conf, before)


# ---- the loss ----------------------------------------------------------------------------------

def test_gce_by_hand_and_against_the_port():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    y = torch.tensor([0, 2])
    p = logits.softmax(1)
    expected = ((1 - p[0, 0] ** 0.7) / 0.7 + (1 - p[1, 2] ** 0.7) / 0.7) / 2
    assert gce_loss(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)
    assert gce_loss(logits, y, 0.5).item() == pytest.approx(OfficialGCELossPort(3, 0.5)(logits, y).item(), rel=1e-6)
    # the clamp: a vanishing probability counts 1e-7
    far = torch.tensor([[0.0, 200.0, 0.0]])
    assert gce_loss(far, torch.tensor([0])).item() == pytest.approx((1 - 1e-7 ** 0.7) / 0.7, rel=1e-7)
    assert gce_loss(far, torch.tensor([0])).item() == pytest.approx(OfficialGCELossPort(3)(far, torch.tensor([0])).item())


def test_warmup_is_ce_on_both_views_and_records_both_softmaxes():
    st = _strategy(3, num_train=8, start_epoch=2)
    g = torch.Generator().manual_seed(1)
    x, y, idx = torch.randn(4, 2, 1, 2, 3, generator=g), torch.tensor([0, 1, 2, 1]), torch.tensor([6, 1, 3, 0])
    out = st.train_step(x, y, idx, 1)
    wl, sl = st.model(x[:, 0]), st.model(x[:, 1])
    assert out.loss.item() == pytest.approx((F.cross_entropy(wl, y) + F.cross_entropy(sl, y)).item(), rel=1e-6)
    assert torch.allclose(out.logits, wl)
    assert torch.allclose(st.w_probs[idx], wl.softmax(1)) and torch.allclose(st.s_probs[idx], sl.softmax(1))
    assert st.labels.tolist() == [1, 1, -1, 2, -1, -1, 0, -1]
    assert torch.equal(st.w_probs[[2, 4, 5, 7]], torch.zeros(4, 3))
    with pytest.raises(UsageError, match=r"^DISC needs two augmented views per sample: x of shape \(N, 2, C, H, W\)$"):
        st.train_step(x[:, 0], y, idx, 0)
    with pytest.raises(UsageError, match=r"^DISC needs two augmented views"):
        st.train_step(torch.randn(4, 3, 1, 2, 3), y, idx, 0)


def _batch_with_subsets(st):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 2, 1, 2, 3, generator=g)
    y = torch.tensor([0, 1, 2, 1, 0])
    idx = torch.tensor([3, 0, 5, 7, 1])
    # sample at idx 3 clean, 0 hard, 5 corrected to 1, 7 clean, 1 in no subset
    st.clean[[3, 7]] = True
    st.hard[0] = True
    st.corrected[5] = True
    st.new_label[5] = 1
    st.new_label[3] = 2  # not corrected: its own label stays
    return x, y, idx


def test_loss_by_hand_without_mixing(monkeypatch):
    st = _strategy(3, num_train=8, start_epoch=1, lambda_hard=0.2, lambda_clean=1.5)
    x, y, idx = _batch_with_subsets(st)
    ident = torch.arange(4)
    _fixed_mix(monkeypatch, [(1.0, ident), (1.0, ident)])
    out = st.train_step(x, y, idx, 1)
    wl, sl = st.model(x[:, 0]), st.model(x[:, 1])
    c, h = torch.tensor([0, 3]), torch.tensor([1])
    ce = F.cross_entropy(wl[c], y[c]) + F.cross_entropy(sl[c], y[c])
    gce = gce_loss(wl[h], y[h]) + gce_loss(sl[h], y[h])
    m = torch.tensor([0, 1, 2, 3])
    targets = torch.tensor([0, 1, 1, 1])  # sample 2 corrected from 2 to 1
    mixup = F.cross_entropy(wl[m], targets) + F.cross_entropy(sl[m], targets)  # lambda 1: plain CE
    expected = 1.5 * ce * 2 / 5 + 0.2 * gce * 1 / 5 + mixup
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(out.logits, wl)


@pytest.mark.parametrize("lam_h", [1.0, 0.2])
def test_loss_matches_the_official_port(monkeypatch, lam_h):
    st = _strategy(3, num_train=8, start_epoch=1, lambda_hard=lam_h)
    x, y, idx = _batch_with_subsets(st)
    draws = [(0.7, torch.tensor([2, 0, 3, 1])), (0.35, torch.tensor([1, 3, 0, 2]))]
    _fixed_mix(monkeypatch, [(max(lam, 1 - lam), perm) for lam, perm in draws])
    loss = st.train_step(x, y, idx, 3).loss
    weak_flag = torch.tensor([True, True, True, True, False])
    weak_labels = torch.tensor([0, 1, 1, 1, 0])
    expected = official_train_batch_loss_port(
        st.model, x[:, 0], x[:, 1], y, torch.tensor([True, False, False, True, False]),
        torch.tensor([False, True, False, False, False]), weak_flag, weak_labels, 1.0, lam_h, OfficialGCELossPort(3),
        OfficialMixupPort(3, draws))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_mixup_loss_by_hand():
    model = Linear(2, features=1)
    x = torch.tensor([[1.0], [3.0]])
    y = torch.tensor([0, 1])
    torch.manual_seed(0)
    lam, perm = disc_module.mix(5.0, 2, "cpu")
    torch.manual_seed(0)
    loss = mixup_loss(model, x, y, 2, 5.0)
    mixed = lam * x + (1 - lam) * x[perm]
    t = lam * F.one_hot(y, 2).float() + (1 - lam) * F.one_hot(y[perm], 2).float()
    assert loss.item() == pytest.approx(-(F.log_softmax(model(mixed), 1) * t).sum(1).mean().item(), rel=1e-6)
    assert 0.5 <= lam <= 1.0
    # alpha 0: no mixing, plain CE
    assert mixup_loss(model, x, y, 2, 0.0).item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)


def test_gradients_reach_the_network_and_an_empty_batch_is_a_zero_loss():
    st = _strategy(3, num_train=8, start_epoch=1)
    x, y, idx = _batch_with_subsets(st)
    out = st.train_step(x, y, idx, 1)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in st.model.parameters())
    assert {id(p) for p in st.parameters() if p.requires_grad} == {id(p) for p in st.model.parameters()}
    st.zero_grad()
    empty = st.train_step(x[[4]], y[[4]], idx[[4]], 1)  # sample 1 is in no subset
    assert empty.loss.item() == 0.0 and empty.loss.requires_grad
    empty.loss.backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in st.model.parameters())


def test_only_the_hard_term_with_the_official_batch_fraction():
    st = _strategy(3, num_train=4, start_epoch=1, lambda_hard=0.5, mixup_alpha=0.0, gce_q=0.4)
    st.hard[1] = True
    x, y, idx = torch.randn(2, 2, 1, 2, 3), torch.tensor([2, 0]), torch.tensor([1, 2])
    loss = st.train_step(x, y, idx, 1).loss
    wl, sl = st.model(x[:1, 0]), st.model(x[:1, 1])
    gce = gce_loss(wl, y[:1], 0.4) + gce_loss(sl, y[:1], 0.4)
    mix = F.cross_entropy(wl, y[:1]) + F.cross_entropy(sl, y[:1])
    assert loss.item() == pytest.approx((0.5 * gce / 2 + mix).item(), rel=1e-6)


# ---- metrics -----------------------------------------------------------------------------------

def test_selection_metrics_by_hand():
    clean = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    st = _strategy(3, num_train=8, clean_labels=clean, start_epoch=1)
    st.labels.copy_(torch.tensor([0, 1, 0, 0, 2, 2, 0, -1]))  # samples 2 and 4 mislabeled, 7 not seen
    st.w_probs.copy_(F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2, 1, 0]), 3).float() * 0.9 + 0.1 / 3)
    st.s_probs.copy_(st.w_probs)
    st.s_probs[3] = torch.tensor([0.1, 0.8, 0.1])  # sample 3: only the weak view agrees -> hard
    st.on_epoch_start(1, 3)
    # thresholds 1/8: clean 0, 1, 5 (and 3 hard); 2 (label 0, predicted 2), 4 (label 2, predicted 1) and
    # 6 (label 0, predicted 1) corrected (0.93 > 0.625): 2 and 4 to their clean label, 6 away from it; 7 not seen
    assert st.clean.tolist() == [True, True, False, False, False, True, False, False]
    assert st.hard.tolist() == [False, False, False, True, False, False, False, False]
    assert st.corrected.tolist() == [False, False, True, False, True, False, True, False]
    m = st.epoch_metrics()
    # correctly labelled among the seen: 0, 1, 3, 5, 6 -> 3 of them clean-selected
    assert m == {"clean_fraction": 3 / 7, "hard_fraction": 1 / 7, "corrected": 3.0, "label_precision": 1.0,
                 "label_recall": 3 / 5, "corrected_right": 2.0, "correction_precision": 2 / 3}
    without = _strategy(3, num_train=8, start_epoch=1)
    without.labels.copy_(st.labels)
    without.w_probs.copy_(st.w_probs)
    without.s_probs.copy_(st.s_probs)
    without.on_epoch_start(1, 3)
    assert without.epoch_metrics() == {"clean_fraction": 3 / 7, "hard_fraction": 1 / 7, "corrected": 3.0}


def test_metrics_of_single_samples_and_the_cap_through_the_epoch_start():
    st = _strategy(3, num_train=3, clean_labels=torch.tensor([0, 1, 2]), start_epoch=1, correction_cap=0.6)
    st.labels.copy_(torch.tensor([0, 0, -1]))  # sample 1 mislabeled, sample 2 not seen
    st.w_probs.copy_(torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.0, 0.0, 0.0]]))
    st.s_probs.copy_(st.w_probs)
    st.on_epoch_start(1, 2)
    # threshold of sample 1: min(1/3 + 0.5, 0.6) = 0.6 < 0.7, corrected to 1 (the default cap 0.9 would not)
    assert st.clean.tolist() == [True, False, False] and st.corrected.tolist() == [False, True, False]
    assert st.epoch_metrics() == {"clean_fraction": 0.5, "hard_fraction": 0.0, "corrected": 1.0, "label_precision": 1.0,
                                  "label_recall": 1.0, "corrected_right": 1.0, "correction_precision": 1.0}
    one = _strategy(3, num_train=2, start_epoch=1)
    one.labels[0] = 1
    one.w_probs[0] = one.s_probs[0] = torch.tensor([0.1, 0.8, 0.1])
    one.on_epoch_start(1, 2)
    assert one.epoch_metrics() == {"clean_fraction": 1.0, "hard_fraction": 0.0, "corrected": 0.0}


# ---- defaults, presets, views and bad input ----------------------------------------------------

def test_official_defaults_for_each_setting():
    assert official_defaults(0.2, "symmetric") == (20, 0.99, 1.0)
    assert official_defaults(0.4, "symmetric") == (20, 0.99, 1.0)
    assert official_defaults(0.4, "asymmetric") == (20, 0.95, 1.0)
    assert official_defaults(0.3, "pair") == (20, 0.95, 1.0)
    assert official_defaults(0.4, "instance") == (15, 0.99, 1.0)
    assert official_defaults(0.6, "symmetric") == (20, 0.95, 0.2)
    assert official_defaults(0.5, None) == (20, 0.95, 0.2)
    assert official_defaults(0.49, None) == (20, 0.99, 1.0)
    assert official_defaults(0.6, "instance") == (15, 0.95, 0.2)


def test_build_resolves_the_official_values_and_scales_them():
    base = {"lambda_clean": 1.0, "sigma": 0.5, "correction_cap": 0.9, "gce_q": 0.7, "mixup_alpha": 5.0,
            "strong_jitter": 0.4, "strong_cutout": 4}
    assert _strategy(experiment=_experiment("symmetric", 0.4)).options() == {
        **base, "start_epoch": 20, "momentum": 0.99, "lambda_hard": 1.0, "epoch_scale": 1.0}
    # the nominal rate decides, not the realised one
    assert _strategy(experiment=_experiment("symmetric", 0.6), noise_rate=0.45).options()["lambda_hard"] == 0.2
    # a label file has no nominal rate (0): the realised one decides
    assert _strategy(experiment=_experiment("human:worst", 0.0), noise_rate=0.55).options()["momentum"] == 0.95
    # no experiment: the realised rate
    assert _strategy(noise_rate=0.55).options()["momentum"] == 0.95
    quick = _strategy(experiment=_experiment("instance", 0.2), epoch_scale=10.0).options()
    assert quick["start_epoch"] == 2 and quick["momentum"] == pytest.approx(0.99 ** 10)
    fast = _strategy(experiment=_experiment("asymmetric", 0.4), epoch_scale=20.0).options()
    assert fast["start_epoch"] == 1 and fast["momentum"] == pytest.approx(0.95 ** 20)
    # explicit values are used as given
    given = _strategy(epoch_scale=20.0, start_epoch=7, momentum=0.5, lambda_hard=0.3).options()
    assert (given["start_epoch"], given["momentum"], given["lambda_hard"]) == (7, 0.5, 0.3)
    st = _strategy(start_epoch=7)
    assert st.warmup_length() == 7 and DISC.views == 2
    assert DISC.presets == {"quick": {"epoch_scale": 10.0}, "paper": {}, "fast": {"epoch_scale": 20.0}}


def test_weak_view_is_the_runs_augmentation_and_the_strong_one_adds_jitter_and_cutout():
    st = _strategy(strong_jitter=0.3, strong_cutout=5)
    run = BatchAugment(AugmentConfig(crop_pad=2, flip=True), (0.5,) * 3, (0.25,) * 3)
    splits = SimpleNamespace(mean=(0.5,) * 3, std=(0.25,) * 3)
    views = st.train_augment(MultiView(run, 2), splits)
    assert isinstance(views, TwoViews) and views.weak is run
    assert views.strong.config == AugmentConfig(crop_pad=2, flip=True, jitter=0.3, cutout=5)
    images = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    assert views(images, torch.Generator().manual_seed(0)).shape == (4, 2, 3, 8, 8)
    custom = lambda images, generator: images.float()  # noqa: E731  a custom augmentation: two draws of itself
    two = st.train_augment(MultiView(custom, 2), splits)
    assert two.weak is custom and two.strong is custom


@pytest.mark.parametrize("bad,message", [
    ({"start_epoch": 0}, "start_epoch must be >= 1 (the first selection needs one epoch of predictions), got 0"),
    ({"momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
    ({"momentum": -0.1}, "momentum must be in [0, 1), got -0.1"),
    ({"lambda_hard": -1}, "lambda_hard must be >= 0, got -1.0"),
    ({"lambda_clean": -0.5}, "lambda_clean must be >= 0, got -0.5"),
    ({"sigma": -0.1}, "sigma must be >= 0, got -0.1"),
    ({"correction_cap": 0}, "correction_cap must be in (0, 1], got 0.0"),
    ({"correction_cap": 1.1}, "correction_cap must be in (0, 1], got 1.1"),
    ({"gce_q": 0}, "gce_q must be in (0, 1], got 0.0"),
    ({"gce_q": 1.5}, "gce_q must be in (0, 1], got 1.5"),
    ({"mixup_alpha": -1}, "mixup_alpha must be >= 0 (0 = no mixing), got -1.0"),
    ({"epoch_scale": 0}, "epoch_scale must be > 0, got 0.0"),
    ({"strong_jitter": 1.0}, "strong_jitter must be in [0, 1), got 1.0"),
    ({"strong_jitter": -0.1}, "strong_jitter must be in [0, 1), got -0.1"),
    ({"strong_cutout": -1}, "strong_cutout must be >= 0, got -1"),
])
def test_config_bounds_and_exact_messages(bad, message):
    with pytest.raises(UsageError) as err:
        make_config("disc", bad)
    assert str(err.value) == f"strategy 'disc': {message}"
    DISCConfig(start_epoch=1, momentum=0.0, lambda_hard=0.0, lambda_clean=0.0, sigma=0.0, correction_cap=1.0, gce_q=1.0,
               mixup_alpha=0.0, epoch_scale=0.01, strong_jitter=0.0, strong_cutout=0).validate()


def test_constructor_needs_the_training_set_size_and_two_classes():
    with pytest.raises(UsageError, match=r"^DISC needs the training-set size \(num_train\) for its per-sample thresholds$"):
        DISC(Linear(), 0, 3)
    with pytest.raises(UsageError, match=r"^DISC needs >= 2 classes, got 1$"):
        DISC(Linear(), 5, 1)
    one = DISC(Linear(2), 1, 2)
    assert one.w_conf.tolist() == [1.0] and one.labels.tolist() == [-1] and one.w_probs.shape == (1, 2)
    assert (one.start_epoch, one.momentum, one.lambda_hard, one.sigma, one.correction_cap, one.gce_q,
            one.mixup_alpha) == (20, 0.99, 1.0, 0.5, 0.9, 0.7, 5.0)
    assert one.lambda_clean == 1.0 and one.labels.dtype == torch.long and one.rounds.dtype == torch.long
    assert one.epoch_metrics() == {}  # nothing selected yet
    assert DISC(Linear(), 4, 3).s_conf.tolist() == [0.25] * 4


# ---- fit: resume, and the selection on toy data ------------------------------------------------

def _disc(seed, n, clean=None, **options):
    torch.manual_seed(seed)
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=4), num_classes=4, num_train=n,
                       clean_train_labels=clean)
    return create_strategy("disc", context=ctx, **options)


def _setup(n, noisy_labels=None):
    images, labels = _toy(n + 40)
    train_labels = labels[:n] if noisy_labels is None else noisy_labels
    mean, std = (0.5,) * 3, (0.25,) * 3
    splits = SimpleNamespace(mean=mean, std=std)
    test = DeviceLoader(images[n:], labels[n:], 40, Normalize(mean, std), shuffle=False)
    return images, labels, train_labels, splits, test


def test_fit_learns_and_resume_is_bit_exact(tmp_path):
    n = 96
    images, labels, train_labels, splits, test = _setup(n)
    cfg = TrainConfig(epochs=3, batch_size=32, tta="none",
                      optim=OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant"))
    run_aug = BatchAugment(AugmentConfig(crop_pad=1, flip=True), splits.mean, splits.std)

    full = _disc(0, n, start_epoch=1, momentum=0.5)
    augment = full.train_augment(MultiView(run_aug, 2), splits)
    result = fit(full, DeviceLoader(images[:n], train_labels, 32, augment, seed=0), cfg, test_loader=test,
                 run_dir=tmp_path / "full", quiet=True, num_classes=4)
    assert result.metrics["test_acc"] > 0.5  # chance is 0.25
    assert int(full.rounds) == 2 and torch.equal(full.labels, train_labels)
    assert "clean_fraction" not in result.history[0] and "clean_fraction" in result.history[2]

    part = _disc(0, n, start_epoch=1, momentum=0.5)
    with pytest.raises(KeyboardInterrupt):
        fit(part, InterruptAt(images[:n], train_labels, 32, augment, seed=0), cfg, test_loader=test,
            run_dir=tmp_path / "part", quiet=True, num_classes=4)
    resumed = _disc(1, n, start_epoch=1, momentum=0.5)  # other weights, empty state: the checkpoint must replace it
    torch.manual_seed(123)
    fit(resumed, DeviceLoader(images[:n], train_labels, 32, augment, seed=0), cfg, test_loader=test,
        run_dir=tmp_path / "part", resume=tmp_path / "part" / "last.pt", quiet=True, num_classes=4)
    a, b = full.state_dict(), resumed.state_dict()
    assert {"w_probs", "s_probs", "labels", "w_conf", "s_conf", "clean", "hard", "corrected", "new_label",
            "rounds"} <= set(a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_selection_on_noisy_toy_data_beats_the_noise_rate_and_corrects_labels():
    n = 160
    images, labels, _, splits, test = _setup(n)
    g = torch.Generator().manual_seed(5)
    flip = torch.rand(n, generator=g) < 0.4
    noisy = torch.where(flip, (labels[:n] + torch.randint(1, 4, (n,), generator=g)) % 4, labels[:n])
    st = _disc(0, n, clean=labels[:n], start_epoch=2, momentum=0.5, mixup_alpha=0.0)
    cfg = TrainConfig(epochs=6, batch_size=32, tta="none",
                      optim=OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant"))
    augment = st.train_augment(MultiView(BatchAugment(AugmentConfig(crop_pad=1, flip=True), splits.mean, splits.std), 2),
                               splits)
    result = fit(st, DeviceLoader(images[:n], noisy, 32, augment, seed=0), cfg, test_loader=test, quiet=True,
                 num_classes=4)
    last = result.history[-1]
    clean_share = 1 - flip.float().mean().item()
    assert last["label_precision"] > clean_share + 0.25  # the clean set holds far fewer wrong labels than the data
    assert result.history[1]["label_precision"] == pytest.approx(clean_share)  # the first selection keeps every sample
    assert last["corrected"] >= 5 and last["correction_precision"] > 0.8  # chance is 1/3 among the 3 wrong classes
    assert 0.0 < last["clean_fraction"] < 1.0


# ---- the noisy-label study on real data ---------------------------------------------------------

def test_runs_end_to_end_in_the_noisy_label_study(cifar10, cifar10_dir, session_cache_dir, tmp_path):
    rows, record = run_tiny_study("disc", cifar10_dir, session_cache_dir, tmp_path / "study", 2,
                                  "--strategy-arg", "disc.start_epoch=1")
    options = record["strategy_options"]
    assert options["epoch_scale"] == 10.0 and options["start_epoch"] == 1  # the quick preset, then the override
    assert options["momentum"] == pytest.approx(0.99 ** 10)
    hist = record["history"]
    assert len(hist) == 2 and all(math.isfinite(h["train_loss"]) for h in hist)
    assert "label_precision" not in hist[0]
    for key in ("label_precision", "label_recall", "correction_precision"):
        assert 0.0 <= hist[1][key] <= 1.0
    assert float(rows["noisy_disc"]["label_precision"]) == pytest.approx(hist[1]["label_precision"])
    assert 0.0 <= record["metrics"]["test_acc"] <= 1.0
