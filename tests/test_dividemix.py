"""DivideMix: the GMM division on a separable toy set, sharpening, label co-refinement, mixup,
the ramp-up, the regularisers, the MixMatch loss against a reference written like the official
train(), co-divide, peer eval mode, and a short end-to-end fit()."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resume_helpers import TOY_MEAN, TOY_STD, flip_toy_labels, toy_eval_loaders
from robustlab.data import AugmentConfig, BatchAugment, DeviceLoader
from robustlab.data.augment import MultiView
from robustlab.engine import TrainConfig, fit
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import BuildContext, create_strategy, make_config
from robustlab.strategies.dividemix import (DivideMix, DivideMixConfig, MeanLogits, eval_mode, gmm_clean_probability, linear_rampup, mixup_lambda,
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
        self.modes, self.sizes = [], []

    def forward(self, x):
        self.modes.append(self.training)
        self.sizes.append(len(x))
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
                            "alpha": 4.0, "noise_mode": "sym", "rampup_epochs": 16}
    assert st.model is not st.peer and not st.penalty
    fast = create_strategy("dividemix", context=ctx(10, 0.5), rampup_epochs=3.0)
    fast._seen = 10  # half of the 20 samples seen: progress 3.5 epochs, 1.5 past the 2 warm-up epochs
    fast.warmup_epochs = 2
    assert fast.rampup_epochs == 3.0 and fast.unlabeled_weight(3, 4) == pytest.approx(25.0 * 1.5 / 3.0)
    with pytest.raises(UsageError, match="rampup_epochs must be > 0, got 0"):
        create_strategy("dividemix", context=ctx(10, 0.5), rampup_epochs=0)
    st100 = create_strategy("dividemix", context=ctx(100, 0.2), noise_mode="asym")
    assert st100.warmup_epochs == 30 and st100.lambda_u == 25.0 and st100.penalty
    assert set(DivideMix.presets) == {"quick", "paper", "fast"}
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
    noisy, flipped = flip_toy_labels(clean[:n], noise)
    augment = MultiView(BatchAugment(AugmentConfig(crop_pad=1, flip=True), TOY_MEAN, TOY_STD), DivideMix.views)
    train = DeviceLoader(images[:n], noisy, 32, augment, seed=0)
    whole, test = toy_eval_loaders(images, noisy, clean, n, 80, 80)
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


# ---- the official constants, boundaries and contracts ----------------------------------------

def test_paper_lambda_u_covers_every_tabulated_setting():
    # Appendix B of the paper: CIFAR-10 sym 20/50/80/90% -> 0/25/25/50, asym 40% -> 0;
    # CIFAR-100 sym 20/50/80/90% -> 25/150/150/150.
    table = {(10, 0.2, "sym"): 0, (10, 0.5, "sym"): 25, (10, 0.8, "sym"): 25, (10, 0.9, "sym"): 50,
             (10, 0.4, "asym"): 0, (100, 0.2, "sym"): 25, (100, 0.5, "sym"): 150, (100, 0.8, "sym"): 150,
             (100, 0.9, "sym"): 150}
    for (classes, rate, mode), value in table.items():
        assert paper_lambda_u(classes, rate, mode) == value, (classes, rate, mode)
    assert paper_lambda_u(99, 0.2, "sym") == 0       # fewer than 100 classes: the CIFAR-10 table
    assert paper_lambda_u(200, 0.2, "sym") == 25     # 100 or more: the CIFAR-100 table
    assert paper_lambda_u(10, 0.4, "sym") == 25      # sym at 40% is nearest to 50%, not the asym entry
    assert paper_lambda_u(100, 0.5, "asym") == 150   # no asym row for CIFAR-100: the sym row


def _official_eval_train_probability(losses):
    """Train_cifar.py eval_train(): min-max normalise, GMM(2, max_iter=10, tol=1e-2, reg_covar=5e-4),
    posterior of the lower-mean component (seeded here, as the documented deviation)."""
    from sklearn.mixture import GaussianMixture
    x = ((losses - losses.min()) / (losses.max() - losses.min())).reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0)
    gmm.fit(x)
    return gmm.predict_proba(x)[:, gmm.means_.argmin()], gmm


@pytest.mark.filterwarnings("ignore:Best performing initialization did not converge")
def test_gmm_division_reproduces_the_official_eval_train():
    # Losses whose GMM fit is still moving at the 10th EM iteration (so max_iter and tol bind), whose
    # k-means initialisation depends on the seed, and whose raw range is below 1 (so the min-max
    # normalisation matters against reg_covar).
    r = np.random.RandomState(60)
    raw = 0.05 * np.concatenate([r.gamma(1.0, 0.3, 40), r.normal(2.0, 1.0, 20)]) + 0.01
    assert raw.max() - raw.min() < 1
    expected, gmm = _official_eval_train_probability(raw)
    assert gmm.n_iter_ == 10 and not gmm.converged_
    prob = gmm_clean_probability(torch.as_tensor(raw, dtype=torch.float64))
    assert isinstance(prob, np.ndarray) and prob.shape == (60,)
    assert np.allclose(prob, expected, atol=1e-9)
    assert np.allclose(gmm_clean_probability(torch.as_tensor(raw, dtype=torch.float64), seed=0), expected, atol=1e-9)
    # Losses on which EM stops early by tol=1e-2 (sklearn's default tol 1e-3 would iterate on).
    r = np.random.RandomState(0)
    raw = 0.05 * np.concatenate([r.gamma(1.0, 0.3, 40), r.normal(2.0, 1.0, 20)]) + 0.01
    expected, gmm = _official_eval_train_probability(raw)
    assert gmm.converged_ and gmm.n_iter_ < 10
    assert np.allclose(gmm_clean_probability(torch.as_tensor(raw, dtype=torch.float64)), expected, atol=1e-9)


def test_config_bounds_and_exact_messages():
    DivideMixConfig(warmup_epochs=0, lambda_u=0.0).validate()  # no warm-up and lambda_u 0 (the paper's 20%) are valid
    DivideMixConfig(p_threshold=0.01, temperature=0.01, alpha=0.01).validate()
    for bad, message in (({"warmup_epochs": -1}, "warmup_epochs must be >= 0, got -1"),
                         ({"lambda_u": -1}, "lambda_u must be >= 0, got -1.0"),
                         ({"p_threshold": 1.0}, "p_threshold must be in (0, 1), got 1.0"),
                         ({"p_threshold": 0.0}, "p_threshold must be in (0, 1), got 0.0"),
                         ({"temperature": 0}, "temperature must be > 0, got 0.0"),
                         ({"alpha": 0}, "alpha must be > 0, got 0.0"),
                         ({"noise_mode": "x"}, "noise_mode must be auto, sym or asym, got 'x'")):
        with pytest.raises(UsageError) as err:
            make_config("dividemix", bad)
        assert str(err.value) == f"strategy 'dividemix': {message}"
    assert make_config("dividemix", {}) == DivideMixConfig(None, None, 0.5, 0.5, 4.0, "auto")


def test_constructor_defaults_are_the_official_cifar10_values():
    net1, net2 = _two_nets()
    st = DivideMix(net1, net2, num_train=2, num_classes=3)
    assert (st.warmup_epochs, st.lambda_u, st.p_threshold, st.temperature, st.alpha) == (10, 25.0, 0.5, 0.5, 4.0)
    assert st.penalty is False and st.clean_labels is None and st.world_size == 1
    assert st.model is net1 and st.peer is net2 and (st.num_train, st.num_classes) == (2, 3)
    # Before any division every sample counts as clean; the probabilities are not checkpointed
    # (they are recomputed before every epoch).
    assert torch.equal(st.prob1, torch.ones(2)) and torch.equal(st.prob2, torch.ones(2))
    assert not any(k.startswith("prob") for k in st.state_dict())
    assert st.epoch_metrics() == {}
    # Not divided until the first train pass after warm-up: a step is the warm-up step.
    x, y = torch.randn(2, 2, 3, 4, 4), torch.tensor([0, 2])
    ce = F.cross_entropy(net1(x[:, 0]), y) + F.cross_entropy(net2(x[:, 1]), y)
    assert st.train_step(x, y, torch.arange(2), epoch=0).loss.item() == pytest.approx(ce.item(), rel=1e-6)
    # The ramp counts samples from 0 without an on_epoch_start.
    st2 = DivideMix(net1, net2, num_train=8, num_classes=3, warmup_epochs=0, lambda_u=16.0)
    assert st2.unlabeled_weight(1, 4) == pytest.approx(1.0)
    with pytest.raises(UsageError) as err:
        DivideMix(net1, net2, num_train=1, num_classes=3)
    assert str(err.value) == "DivideMix needs the training-set size (num_train) for its per-sample division"


def test_ramp_accumulates_every_batch_of_the_epoch():
    st = DivideMix(nn.Linear(2, 2), nn.Linear(2, 2), num_train=12, num_classes=2, warmup_epochs=1, lambda_u=16.0)
    st.on_epoch_start(1, 30)
    # progress = 1 + seen / 12 before each batch: 1, 1 + 3/12, 1 + 7/12.
    weights = [st.unlabeled_weight(1, 3), st.unlabeled_weight(1, 4), st.unlabeled_weight(1, 5)]
    assert weights == pytest.approx([0.0, 16 * (3 / 12) / 16, 16 * (7 / 12) / 16])


def test_train_step_needs_two_views_and_warm_up_reports_net1_on_the_first_view():
    net1, net2 = _two_nets()
    st = DivideMix(net1, net2, num_train=4, num_classes=3, warmup_epochs=2)
    message = "DivideMix needs two augmented views per sample: x of shape (N, 2, C, H, W)"
    for shape in ((4, 3, 3, 4, 4), (4, 2, 48), (4, 1, 3, 4, 4)):
        with pytest.raises(UsageError) as err:
            st.train_step(torch.randn(*shape), torch.zeros(4, dtype=torch.long), torch.arange(4), epoch=0)
        assert str(err.value) == message
    x = torch.randn(4, 2, 3, 4, 4)
    out = st.train_step(x, torch.tensor([0, 1, 2, 0]), torch.arange(4), epoch=0)
    assert torch.allclose(out.logits, net1(x[:, 0]))


def test_eval_mode_restores_either_mode():
    net = nn.Linear(2, 2)
    for mode in (True, False):
        net.train(mode)
        with eval_mode(net):
            assert not net.training
        assert net.training is mode


def test_clean_probability_equal_to_the_threshold_is_unlabeled():
    # Official: pred = (prob > p_threshold); a sample at exactly the threshold loses its label.
    net1, net2 = _two_nets()
    st = DivideMix(net1, net2, num_train=4, num_classes=3, warmup_epochs=0, lambda_u=1.0, p_threshold=0.5)
    st.train()
    net2.sizes.clear()
    w = torch.tensor([0.5, 0.9, 0.5, 0.2])
    st.mixmatch_loss(net1, net2, torch.randn(4, 2, 3, 4, 4), torch.tensor([0, 1, 2, 0]), w, 1.0)
    assert net2.sizes == [3, 3]  # the peer guesses for samples 0, 2 and 3 (both views)
    st.prob1.copy_(torch.tensor([0.5, 0.9, 0.5, 0.2]))
    st.prob2.copy_(torch.tensor([0.5, 0.5, 0.5, 0.6]))
    assert st.division_metrics(torch.tensor([0, 1, 2, 0]))["clean_fraction"] == pytest.approx(2 / 8)


def test_division_metrics_with_one_or_no_labeled_sample_and_without_clean_labels():
    st = DivideMix(nn.Linear(2, 2), nn.Linear(2, 2), num_train=3, num_classes=2,
                   clean_labels=torch.tensor([0, 1, 1]))
    noisy = torch.tensor([0, 0, 1])  # samples 0 and 2 are clean
    st.prob1.copy_(torch.tensor([0.9, 0.1, 0.1]))  # net1 labels sample 0 only
    st.prob2.copy_(torch.tensor([0.1, 0.1, 0.1]))  # net2 labels nothing
    m = st.division_metrics(noisy)
    assert m == pytest.approx({"clean_fraction": 1 / 6, "label_precision": 1.0, "label_recall": 1 / 4})
    st.prob1.fill_(0.1)
    assert st.division_metrics(noisy) == pytest.approx({"clean_fraction": 0.0, "label_precision": 0.0,
                                                        "label_recall": 0.0})
    st.clean_labels = None  # nothing to measure precision against
    assert st.division_metrics(noisy) == {"clean_fraction": 0.0}


class FixedPerSample(nn.Module):
    """Logits looked up by sample id (x[:, 0] holds the id): a network with known per-sample losses."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x):
        return self.table[x[:, 0].long()]


def test_train_pass_divides_each_network_by_its_own_losses_from_the_warm_up_epoch_on():
    n, classes = 24, 3
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, classes, (n,), generator=g)
    table1, table2 = torch.randn(n, classes, generator=g) * 3, torch.randn(n, classes, generator=g) * 3
    clean = labels.clone()
    clean[:4] = (clean[:4] + 1) % classes
    st = DivideMix(FixedPerSample(table1), FixedPerSample(table2), num_train=n, num_classes=classes, warmup_epochs=3,
                   clean_labels=clean)
    order = torch.randperm(n, generator=g)  # a shuffled loader: results are stored by dataset index
    loader = [(order[i:i + 5].float().view(-1, 1), labels[order[i:i + 5]], order[i:i + 5]) for i in range(0, n, 5)]

    losses, got_labels = st.per_sample_losses(st.model, loader)
    assert torch.allclose(losses, F.cross_entropy(table1, labels, reduction="none"))
    assert got_labels.dtype == torch.long and torch.equal(got_labels, labels)

    st.on_train_pass(2, loader)  # still warming up: no division, no metrics
    assert not st._divided and st.epoch_metrics() == {}
    assert torch.equal(st.prob1, torch.ones(n)) and torch.equal(st.prob2, torch.ones(n))

    st.on_train_pass(3, loader)  # the first epoch after warm-up divides
    assert st._divided
    p1 = gmm_clean_probability(F.cross_entropy(table1, labels, reduction="none"))
    p2 = gmm_clean_probability(F.cross_entropy(table2, labels, reduction="none"))
    assert not np.allclose(p1, p2)
    assert torch.allclose(st.prob1, torch.as_tensor(p1, dtype=torch.float32))
    assert torch.allclose(st.prob2, torch.as_tensor(p2, dtype=torch.float32))
    assert st.prob1.dtype == torch.float32
    assert st.epoch_metrics() == st.division_metrics(labels) and "label_precision" in st.epoch_metrics()
    st.epoch_metrics()["clean_fraction"] = -1.0  # a copy: the caller cannot change the record
    assert st.epoch_metrics()["clean_fraction"] >= 0
    st.on_train_pass(2, loader)  # a later warm-up pass (e.g. a resumed run) clears the metrics again
    assert st.epoch_metrics() == {} and not st._divided


def _ctx(classes=10, noise=0.4, experiment=None, distributed=False, clean=None):
    return BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=classes), num_classes=classes,
                        num_train=20, noise_rate=noise, experiment=experiment, distributed=distributed,
                        clean_train_labels=clean)


def test_auto_noise_mode_follows_the_runs_noise_type():
    def experiment(noise_type):
        return SimpleNamespace(data=SimpleNamespace(noise_type=noise_type))

    for noise_type, mode in (("asymmetric", "asym"), ("pair", "asym"), ("symmetric", "sym"), ("instance", "sym")):
        st = create_strategy("dividemix", context=_ctx(experiment=experiment(noise_type)))
        assert st.options()["noise_mode"] == mode and st.penalty is (mode == "asym")
        # CIFAR-10 at 40%: lambda_u 0 for asymmetric noise, the 50% sym value (25) otherwise.
        assert st.lambda_u == (0.0 if mode == "asym" else 25.0)
    for experiment_ in (None, SimpleNamespace(), SimpleNamespace(data=SimpleNamespace())):
        assert create_strategy("dividemix", context=_ctx(experiment=experiment_)).options()["noise_mode"] == "sym"
    explicit = create_strategy("dividemix", context=_ctx(experiment=experiment("asymmetric")), noise_mode="sym")
    assert not explicit.penalty and explicit.lambda_u == 25.0
    clean = torch.arange(20) % 10
    assert create_strategy("dividemix", context=_ctx(clean=clean)).clean_labels is clean


def test_world_size_comes_from_the_process_group_only_when_distributed(monkeypatch):
    assert create_strategy("dividemix", context=_ctx()).world_size == 1
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    assert create_strategy("dividemix", context=_ctx(distributed=True)).world_size == 3
    assert create_strategy("dividemix", context=_ctx(distributed=False)).world_size == 1
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    assert create_strategy("dividemix", context=_ctx(distributed=True)).world_size == 1


def test_uniform_prior_lives_on_the_logits_device():
    out = uniform_prior_penalty(torch.zeros(2, 3, device="meta"))
    assert out.device.type == "meta" and out.shape == ()


def test_ensemble_averages_float32_logits():
    a, b = nn.Linear(4, 3).double(), nn.Linear(4, 3).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    out = MeanLogits(a, b)(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ((a(x) + b(x)) / 2).float())


def test_per_sample_losses_live_on_the_strategys_device():
    st = DivideMix(nn.Linear(3, 2), nn.Linear(3, 2), num_train=4, num_classes=2).to("meta")
    loader = [(torch.zeros(4, 3, device="meta"), torch.zeros(4, dtype=torch.long, device="meta"),
               torch.arange(4, device="meta"))]
    losses, labels = st.per_sample_losses(st.model, loader)
    assert losses.device.type == "meta" and labels.device.type == "meta" and labels.dtype == torch.long


def test_build_hands_every_option_to_the_strategy():
    # The paper's 90% setting: p_threshold 0.6; the other values are arbitrary overrides.
    st = create_strategy("dividemix", context=_ctx(noise=0.5), warmup_epochs=4, lambda_u=7, p_threshold=0.6,
                         temperature=0.3, alpha=0.75)
    assert (st.warmup_epochs, st.lambda_u, st.p_threshold, st.temperature, st.alpha) == (4, 7.0, 0.6, 0.3, 0.75)
    assert st.options() == {"warmup_epochs": 4, "lambda_u": 7.0, "p_threshold": 0.6, "temperature": 0.3,
                            "alpha": 0.75, "noise_mode": "sym", "rampup_epochs": 16}
