"""DivideMix: the GMM division on a separable toy set, sharpening, label co-refinement, mixup,
the ramp-up, the regularisers, the MixMatch loss against a reference written like the official
train(), co-divide, peer eval mode, and a short end-to-end fit()."""
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
from robustlab.strategies.dividemix import (DivideMix, eval_mode, gmm_clean_probability, linear_rampup, mixup_lambda,
                                            negative_entropy, paper_lambda_u, refine_labels, sharpen,
                                            uniform_prior_penalty)

# ---- the pieces against hand values ----------------------------------------------------------


def test_sharpen_matches_hand_values():
    p = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.2, 0.8]])
    out = sharpen(p, temperature=0.5)  # p^2, renormalised
    expected = torch.tensor([[0.36 / 0.52, 0.16 / 0.52], [0.5, 0.5], [0.04 / 0.68, 0.64 / 0.68]])
    assert torch.allclose(out, expected)
    assert torch.allclose(sharpen(p, temperature=1.0), p)


def test_label_refinement_is_w_times_label_plus_rest_times_prediction():
    onehot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    pred = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    out = refine_labels(onehot, torch.tensor([0.7, 0.25]), pred)
    expected = torch.tensor([[0.76, 0.15, 0.09], [0.45, 0.325, 0.225]])
    assert torch.allclose(out, expected)


def test_mixup_lambda_is_folded_above_one_half_and_still_random():
    torch.manual_seed(0)
    lams = np.array([mixup_lambda(4.0) for _ in range(400)])
    assert lams.min() >= 0.5 and lams.max() <= 1.0
    # Beta(4, 4) folded: E = 0.5 + E|l - 0.5| ~ 0.64; a spread, not a constant.
    assert 0.6 < lams.mean() < 0.68 and lams.std() > 0.05


@pytest.mark.parametrize("progress,expected", [(10.0, 0.0), (5.0, 0.0), (14.0, 6.25), (18.0, 12.5), (26.0, 25.0), (40.0, 25.0)])
def test_lambda_u_ramps_up_linearly_over_16_epochs_after_warmup(progress, expected):
    assert linear_rampup(progress, warmup_epochs=10, lambda_u=25.0) == pytest.approx(expected)


def test_ramp_progress_counts_the_samples_seen_this_epoch():
    st = DivideMix(nn.Linear(2, 2), nn.Linear(2, 2), num_train=10, num_classes=2, warmup_epochs=10, lambda_u=16.0)
    st.on_epoch_start(12, 30)
    assert [st.unlabeled_weight(12, 5), st.unlabeled_weight(12, 5)] == pytest.approx([2.0, 2.5])
    st.on_epoch_start(13, 30)
    assert st.unlabeled_weight(13, 5) == pytest.approx(3.0)
    st.world_size = 2  # under DDP each rank sees 1/world of the epoch's samples
    st.on_epoch_start(12, 30)
    assert [st.unlabeled_weight(12, 2), st.unlabeled_weight(12, 2)] == pytest.approx([2.0, 2.4])


def test_uniform_prior_penalty_matches_hand_values():
    assert uniform_prior_penalty(torch.zeros(3, 4)).item() == pytest.approx(0.0, abs=1e-7)
    logits = torch.tensor([[math.log(0.9), math.log(0.1)], [math.log(0.7), math.log(0.3)]])  # mean (0.8, 0.2)
    expected = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert uniform_prior_penalty(logits).item() == pytest.approx(expected, rel=1e-6)


def test_negative_entropy_matches_hand_values():
    logits = torch.tensor([[math.log(0.75), math.log(0.25)], [0.0, 0.0]])
    expected = ((0.75 * math.log(0.75) + 0.25 * math.log(0.25)) + 2 * 0.5 * math.log(0.5)) / 2
    assert negative_entropy(logits).item() == pytest.approx(expected, rel=1e-6)


def test_paper_lambda_u_per_setting():
    assert paper_lambda_u(10, 0.2, "sym") == 0
    assert paper_lambda_u(10, 0.5, "sym") == 25
    assert paper_lambda_u(10, 0.8, "sym") == 25
    assert paper_lambda_u(10, 0.9, "sym") == 50
    assert paper_lambda_u(10, 0.4, "asym") == 0
    assert paper_lambda_u(100, 0.2, "sym") == 25
    assert paper_lambda_u(100, 0.5, "sym") == 150
    assert paper_lambda_u(10, 0.45, "sym") == 25  # the nearest tabulated rate


# ---- the GMM division on a separable toy set -------------------------------------------------

def test_gmm_puts_most_flipped_labels_in_the_noisy_component():
    g = torch.Generator().manual_seed(0)
    n, classes = 600, 3
    labels = torch.arange(n) % classes
    centres = torch.tensor([[4.0, 0.0], [-2.0, 3.5], [-2.0, -3.5]])
    x = centres[labels] + torch.randn(n, 2, generator=g)
    torch.manual_seed(0)
    model = nn.Linear(2, classes)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(100):  # trained on the clean labels
        opt.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        opt.step()
    flipped = torch.rand(n, generator=g) < 0.3
    noisy = torch.where(flipped, (labels + 1 + torch.randint(0, classes - 1, (n,), generator=g)) % classes, labels)
    with torch.no_grad():
        losses = F.cross_entropy(model(x), noisy, reduction="none")
    prob = torch.as_tensor(gmm_clean_probability(losses))
    assert prob.shape == (n,) and (prob >= 0).all() and (prob <= 1).all()
    clean_pred = prob > 0.5
    recall_noisy = (~clean_pred & flipped).sum() / flipped.sum()
    precision_clean = (clean_pred & ~flipped).sum() / clean_pred.sum()
    assert recall_noisy > 0.9 and precision_clean > 0.95
    # Scale and shift do not matter: the losses are min-max normalised first.
    assert np.allclose(gmm_clean_probability(losses * 7 + 3), prob.numpy(), atol=1e-6)


def test_division_metrics_against_hand_counts():
    st = DivideMix(nn.Linear(2, 2), nn.Linear(2, 2), num_train=4, num_classes=2,
                   clean_labels=torch.tensor([0, 1, 1, 0]))
    noisy = torch.tensor([0, 1, 0, 1])  # samples 0 and 1 are clean
    st.prob1.copy_(torch.tensor([0.9, 0.2, 0.6, 0.1]))  # labeled: 0, 2
    st.prob2.copy_(torch.tensor([0.8, 0.7, 0.3, 0.4]))  # labeled: 0, 1
    m = st.division_metrics(noisy)
    assert m["clean_fraction"] == pytest.approx(4 / 8)
    assert m["label_precision"] == pytest.approx(3 / 4)  # 0, 2 | 0, 1: three of the four are clean
    assert m["label_recall"] == pytest.approx(3 / 4)     # clean samples 0, 1 in both divisions: 3 of 4 kept


# ---- the training step -----------------------------------------------------------------------

class Recorder(nn.Module):
    """A linear classifier on flattened images that records its mode at every call."""

    def __init__(self, features, classes, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(features, classes)
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.fc(x.flatten(1))


def reference_loss(net, net2, inputs_x, inputs_x2, labels_x, w_x, inputs_u, inputs_u2, lamb, C, T=0.5, alpha=4.0):
    """The official train() body for one batch (net trained, net2 the peer), in float32."""
    labels_x = torch.zeros(len(labels_x), C).scatter_(1, labels_x.view(-1, 1), 1)
    w_x = w_x.view(-1, 1)
    with torch.no_grad():
        pu = (net(inputs_u).softmax(1) + net(inputs_u2).softmax(1) + net2(inputs_u).softmax(1)
              + net2(inputs_u2).softmax(1)) / 4
        ptu = pu ** (1 / T)
        targets_u = ptu / ptu.sum(1, keepdim=True)
        px = (net(inputs_x).softmax(1) + net(inputs_x2).softmax(1)) / 2
        px = w_x * labels_x + (1 - w_x) * px
        ptx = px ** (1 / T)
        targets_x = ptx / ptx.sum(1, keepdim=True)
    l = float(torch.distributions.Beta(alpha, alpha).sample())
    l = max(l, 1 - l)
    all_inputs = torch.cat([inputs_x, inputs_x2, inputs_u, inputs_u2])
    all_targets = torch.cat([targets_x, targets_x, targets_u, targets_u])
    idx = torch.randperm(all_inputs.size(0))
    mixed_input = l * all_inputs + (1 - l) * all_inputs[idx]
    mixed_target = l * all_targets + (1 - l) * all_targets[idx]
    logits = net(mixed_input)
    b = len(inputs_x)
    Lx = -torch.mean(torch.sum(F.log_softmax(logits[:b * 2], 1) * mixed_target[:b * 2], 1))
    Lu = torch.mean((logits[b * 2:].softmax(1) - mixed_target[b * 2:]) ** 2)
    prior = torch.ones(C) / C
    penalty = torch.sum(prior * torch.log(prior / logits.softmax(1).mean(0)))
    return Lx + lamb * Lu + penalty


def _two_nets(C=3, features=3 * 4 * 4):
    return Recorder(features, C, seed=1), Recorder(features, C, seed=2)


def test_step_after_warmup_matches_the_official_loss_with_co_divide():
    C, N = 3, 8
    net1, net2 = _two_nets(C)
    st = DivideMix(net1, net2, num_train=10, num_classes=C, warmup_epochs=2, lambda_u=25.0)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, 2, 3, 4, 4, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    idx = torch.tensor([9, 0, 1, 2, 3, 4, 5, 6])
    st.prob1.copy_(torch.linspace(0.05, 0.95, 10))               # net1's division: the high indices are clean
    st.prob2.copy_(torch.linspace(0.95, 0.05, 10))               # net2's: the low ones
    st._divided = True
    st.train()
    st.on_epoch_start(3, 10)
    torch.manual_seed(7)
    out = st.train_step(x, y, idx, epoch=3)
    lamb = 25.0 * (3 - 2) / 16  # first batch of epoch 3: ramp (3 - warm-up) / 16

    torch.manual_seed(7)
    expected = 0.0
    for net, peer, prob in ((net1, net2, st.prob2), (net2, net1, st.prob1)):  # co-divide: the peer's division
        w = prob[idx]
        lab, unl = w > 0.5, w <= 0.5
        with eval_mode(peer):
            expected = expected + reference_loss(net, peer, x[lab, 0], x[lab, 1], y[lab], w[lab], x[unl, 0], x[unl, 1],
                                                 lamb, C)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # Train accuracy is of net1's view-averaged prediction against the batch labels.
    own = (net1(x[:, 0]).softmax(1) + net1(x[:, 1]).softmax(1)) / 2
    assert torch.allclose(out.logits.exp(), own, atol=1e-6)
    # Gradients reach both networks (one optimizer covers both).
    out.loss.backward()
    assert net1.fc.weight.grad.abs().sum() > 0 and net2.fc.weight.grad.abs().sum() > 0


def test_peer_guesses_in_eval_mode_and_the_trained_net_in_train_mode():
    net1, net2 = _two_nets()
    st = DivideMix(net1, net2, num_train=4, num_classes=3, warmup_epochs=0, lambda_u=1.0)
    st.prob1.fill_(0.2)  # everything unlabeled: every call guesses
    st.prob2.fill_(0.2)
    st._divided = True
    st.train()
    net1.modes.clear(), net2.modes.clear()
    st.mixmatch_loss(net1, net2, torch.randn(4, 2, 3, 4, 4), torch.tensor([0, 1, 2, 0]), st.prob2[:4], 1.0)
    assert net1.modes == [True, True, True]  # own guesses on both views, then the mixed batch
    assert net2.modes == [False, False]      # the peer's guesses
    assert net2.training                     # restored afterwards


def test_batches_with_an_empty_part_train_on_the_other():
    net1, net2 = _two_nets()
    st = DivideMix(net1, net2, num_train=4, num_classes=3, warmup_epochs=0, lambda_u=10.0)
    st._divided = True
    st.train()
    x, y = torch.randn(4, 2, 3, 4, 4), torch.tensor([0, 1, 2, 0])
    for p in (0.9, 0.1):  # all labeled, then all unlabeled
        st.prob1.fill_(p), st.prob2.fill_(p)
        st.on_epoch_start(20, 30)
        loss = st.train_step(x, y, torch.arange(4), epoch=20).loss
        assert torch.isfinite(loss)
        loss.backward()
        assert net1.fc.weight.grad.abs().sum() > 0


def test_warmup_is_cross_entropy_per_view_plus_the_penalty_for_asymmetric_noise():
    net1, net2 = _two_nets()
    x, y = torch.randn(5, 2, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    ce = F.cross_entropy(net1(x[:, 0]), y) + F.cross_entropy(net2(x[:, 1]), y)
    st = DivideMix(net1, net2, num_train=5, num_classes=3, warmup_epochs=3)
    assert st.train_step(x, y, torch.arange(5), epoch=0).loss.item() == pytest.approx(ce.item(), rel=1e-6)
    st.penalty = True
    with_penalty = ce + negative_entropy(net1(x[:, 0])) + negative_entropy(net2(x[:, 1]))
    assert st.train_step(x, y, torch.arange(5), epoch=0).loss.item() == pytest.approx(with_penalty.item(), rel=1e-6)


def test_prediction_is_the_mean_of_both_networks_logits():
    net1, net2 = _two_nets()
    st = DivideMix(net1, net2, num_train=2, num_classes=3)
    x = torch.randn(4, 3, 4, 4)
    assert torch.allclose(st.predict(x), (net1(x) + net2(x)) / 2)
    extras = st.extra_predictors()
    assert extras["net1"] is net1 and extras["net2"] is net2
    assert torch.allclose(extras["ensemble"](x), st.predict(x))


def test_options_resolve_to_the_official_values_and_bad_ones_are_usage_errors():
    def ctx(classes, noise):
        return BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=classes), num_classes=classes,
                            num_train=20, noise_rate=noise)

    st = create_strategy("dividemix", context=ctx(10, 0.5))
    assert st.options() == {"warmup_epochs": 10, "lambda_u": 25.0, "p_threshold": 0.5, "temperature": 0.5,
                            "alpha": 4.0, "noise_mode": "sym"}
    assert st.model is not st.peer and not st.penalty
    st100 = create_strategy("dividemix", context=ctx(100, 0.2), noise_mode="asym")
    assert st100.warmup_epochs == 30 and st100.lambda_u == 25.0 and st100.penalty
    assert set(DivideMix.presets) == {"quick", "paper"}
    assert create_strategy("dividemix", context=ctx(10, 0.8), **DivideMix.presets["paper"]).options()["warmup_epochs"] == 10
    assert create_strategy("dividemix", context=ctx(10, 0.5), **DivideMix.presets["quick"]).warmup_epochs == 5
    for bad, message in (({"p_threshold": 1.0}, "p_threshold"), ({"noise_mode": "x"}, "noise_mode"),
                         ({"temperature": 0}, "temperature"), ({"lambda_u": -1}, "lambda_u")):
        with pytest.raises(UsageError, match=message):
            make_config("dividemix", bad)


# ---- end to end ------------------------------------------------------------------------------

def _toy(n, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 100, (n, 3, size, size), generator=g, dtype=torch.uint8)
    for i in range(n):  # a bright channel and half per class makes the labels learnable
        images[i, labels[i] % 3, : size // 2 if labels[i] < 3 else size] += 120
    return images, labels


def test_fit_divides_better_than_chance_and_learns_through_noise():
    n, noise = 160, 0.3
    images, clean = _toy(n + 80)
    g = torch.Generator().manual_seed(1)
    flipped = torch.rand(n, generator=g) < noise
    noisy = torch.where(flipped, (clean[:n] + torch.randint(1, 4, (n,), generator=g)) % 4, clean[:n])
    mean, std = (0.5,) * 3, (0.25,) * 3
    augment = MultiView(BatchAugment(AugmentConfig(crop_pad=1, flip=True), mean, std), DivideMix.views)
    train = DeviceLoader(images[:n], noisy, 32, augment, seed=0)
    whole = DeviceLoader(images[:n], noisy, 80, Normalize(mean, std), shuffle=False)
    test = DeviceLoader(images[n:], clean[n:], 80, Normalize(mean, std), shuffle=False)
    torch.manual_seed(0)
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=4), num_classes=4, num_train=n,
                       noise_rate=float(flipped.float().mean()), clean_train_labels=clean[:n])
    st = create_strategy("dividemix", context=ctx, warmup_epochs=2, lambda_u=25)
    cfg = TrainConfig(epochs=4, batch_size=32, tta="none",
                      optim=OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant"))
    result = fit(st, train, cfg, test_loader=test, quiet=True, num_classes=4, train_pass_loader=whole)
    divided = result.history[-1]
    assert ["label_precision" in row for row in result.history] == [False, False, True, True]  # after warm-up only
    assert divided["label_precision"] > 1 - noise + 0.1  # the labeled sets are cleaner than the data
    assert divided["label_recall"] > 0.5 and 0 < divided["clean_fraction"] < 1
    assert result.metrics["test_acc"] > 0.6  # chance is 0.25
    for key in ("test_net1_acc", "test_net2_acc", "test_ensemble_acc"):
        assert key in result.metrics
