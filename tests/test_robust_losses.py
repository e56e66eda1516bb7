"""Robust losses: generalized cross-entropy (L_q) and symmetric cross-entropy, against hand values,
their limits, the official SCE code and a short training run; the study presets of every method."""
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from noisy_toy import ROBUST_LOSS_TOY, ce_test_accuracy, fit_toy
from robustlab.errors import UsageError
from robustlab.strategies import BuildContext, create_strategy, get_strategy, make_config
from robustlab.strategies.gce import GCEConfig, GeneralizedCE, generalized_ce
from robustlab.strategies.sce import OFFICIAL_LOG_ZERO, SCEConfig, SymmetricCE, reverse_ce, symmetric_ce

LOGITS = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 2.0], [-1.0, 3.0, 0.5]])
Y = torch.tensor([0, 2, 0])


def softmax_py(row, label):
    exps = [math.exp(v) for v in row]
    return exps[label] / sum(exps)


# ---- GCE ----------------------------------------------------------------------------------------

def test_gce_matches_the_hand_formula():
    got = generalized_ce(LOGITS, Y, q=0.7)
    for i, (row, label) in enumerate(zip(LOGITS.tolist(), Y.tolist())):
        p = softmax_py(row, label)
        assert got[i].item() == pytest.approx((1 - p ** 0.7) / 0.7, rel=1e-6)
    # e.g. sample 0: p_y = e^2 / (e^2 + 2) = 0.78699, (1 - 0.78699^0.7) / 0.7 = 0.22054
    assert got[0].item() == pytest.approx(0.22054, abs=1e-5)


def test_gce_limits_are_cross_entropy_and_mae():
    assert torch.allclose(generalized_ce(LOGITS, Y, q=1e-6), F.cross_entropy(LOGITS, Y, reduction="none"), atol=1e-5)
    p_y = LOGITS.softmax(1).gather(1, Y[:, None]).squeeze(1)
    assert torch.allclose(generalized_ce(LOGITS, Y, q=1.0), 1 - p_y, atol=1e-6)


def test_gce_gradient_is_cross_entropy_gradient_weighted_by_p_y_to_the_q():
    q = 0.7
    a = LOGITS.clone().requires_grad_(True)
    generalized_ce(a, Y, q).sum().backward()
    b = LOGITS.clone().requires_grad_(True)
    F.cross_entropy(b, Y, reduction="sum").backward()
    weight = LOGITS.softmax(1).gather(1, Y[:, None]) ** q
    assert torch.allclose(a.grad, weight * b.grad, atol=1e-6)
    # so the implausible sample 2 (p_y = 0.016) pulls ~ 0.06x as hard as under CE
    assert weight[2].item() < 0.1


def test_gce_strategy_averages_in_float32_and_validates_q():
    model = nn.Linear(4, 3)
    st = create_strategy("gce", model)
    assert st.q == 0.7 and isinstance(st, GeneralizedCE)
    x = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 0, 1])
    out = st.train_step(x, y, torch.arange(5), 0)
    assert out.loss.item() == pytest.approx(generalized_ce(model(x), y, 0.7).mean().item(), rel=1e-6)
    assert generalized_ce(LOGITS.bfloat16(), Y, 0.7).dtype == torch.float32
    for bad in (0.0, 1.5):
        with pytest.raises(UsageError, match="q must be in"):
            make_config("gce", {"q": bad})


class PerSampleLogits(nn.Module):
    """Logits looked up per sample id (the input): a row receives gradient only if that sample is used."""

    def __init__(self, logits):
        super().__init__()
        self.table = nn.Parameter(logits.clone())

    def forward(self, ids):
        return self.table[ids]


def test_truncated_gce_holds_the_pruned_samples_at_the_constant_lq_of_k():
    st = GeneralizedCE(PerSampleLogits(LOGITS), q=0.7, truncate_k=0.5, num_train=3)
    st.kept.copy_(torch.tensor([True, True, False]))  # sample 2 (p_y = 0.016) truncated
    out = st.train_step(torch.arange(3), Y, torch.arange(3), 0)
    lq = generalized_ce(LOGITS, Y, 0.7)
    constant = (1 - 0.5 ** 0.7) / 0.7  # L_q(k) = 0.54083
    assert out.loss.item() == pytest.approx((lq[0] + lq[1] + constant).item() / 3, rel=1e-6)
    out.loss.backward()
    assert st.model.table.grad[:2].abs().sum() > 0 and not st.model.table.grad[2].any()


def test_truncated_gce_prunes_p_y_below_k_on_schedule_and_measures_the_selection():
    st = GeneralizedCE(PerSampleLogits(LOGITS), q=0.7, truncate_k=0.5, num_train=3, prune_start=40, prune_every=10,
                       clean_labels=torch.tensor([0, 2, 1]))  # sample 2's label (0) is wrong
    assert st.needs_train_pass
    # 1-based epochs 40, 50, ...: the passes before 0-based epochs 39, 49
    assert [e for e in range(60) if st.prunes_before(e)] == [39, 49, 59]
    batches = [(torch.tensor([0, 1]), Y[:2], torch.tensor([0, 1])), (torch.tensor([2]), Y[2:], torch.tensor([2]))]
    st.on_train_pass(38, batches)
    assert st.kept.all() and st.epoch_metrics() == {}  # no pruning yet: every sample counts
    # p_y: 0.787, 0.665, 0.016 -> sample 2 is truncated
    st.on_train_pass(39, batches)
    assert st.kept.tolist() == [True, True, False]
    assert st.epoch_metrics() == {"kept_fraction": pytest.approx(2 / 3), "label_precision": 1.0, "label_recall": 1.0}
    assert not GeneralizedCE(nn.Linear(2, 3)).needs_train_pass  # plain L_q: no pass over the training set
    with pytest.raises(UsageError, match="truncate_k must be in"):
        make_config("gce", {"truncate_k": 1.0})


def test_truncated_gce_beats_memorising_ce_and_reports_its_selection():
    _, result = fit_toy("gce", ROBUST_LOSS_TOY, truncate_k=0.5, prune_start=10, prune_every=10)
    hist = result.history
    assert all("kept_fraction" not in row for row in hist[:9])  # first pruning before (1-based) epoch 10
    assert [i for i, row in enumerate(hist) if "kept_fraction" in row][0] == 9
    assert hist[9]["label_precision"] > 0.8  # the kept samples are cleaner than the 50% clean labels
    assert result.metrics["test_acc"] >= 0.9
    assert result.metrics["test_acc"] >= ce_test_accuracy(ROBUST_LOSS_TOY) + 0.25  # CE fits the flips: 0.48


# ---- SCE ----------------------------------------------------------------------------------------

def test_rce_by_hand_with_the_official_clamps():
    # Sample 0: p = softmax(10, -30, -30): the wrong classes' p ~ 4e-18 are clamped up to 1e-7,
    # so RCE = -log(1e-4) * 2e-7 = 1.842e-6 (not ~1e-16).
    logits = torch.tensor([[10.0, -30.0, -30.0], [0.0, 1.0, 2.0]])
    y = torch.tensor([0, 2])
    rce = reverse_ce(logits, y)
    assert rce[0].item() == pytest.approx(-math.log(1e-4) * 2e-7, rel=1e-4)
    # Sample 1: RCE = -A (p_0 + p_1) = 9.2103 * (0.09003 + 0.24473)
    assert rce[1].item() == pytest.approx(9.21034 * (0.090031 + 0.244728), rel=1e-5)
    assert reverse_ce(logits, y, log_zero=-4.0)[1].item() == pytest.approx(4 * (0.090031 + 0.244728), rel=1e-5)


def test_sce_value_by_hand():
    logits, y = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([2])
    ce = -math.log(0.665241)
    rce = 9.21034 * (1 - 0.665241)
    assert symmetric_ce(logits, y, alpha=0.1, beta=1.0).item() == pytest.approx(0.1 * ce + rce, rel=1e-5)
    assert symmetric_ce(logits, y, alpha=6.0, beta=0.1).item() == pytest.approx(6 * ce + 0.1 * rce, rel=1e-5)


def official_sce(pred, labels, alpha, beta, num_classes):
    """SCELoss.forward of HanxunH/SCELoss-Reproduce (loss.py), per sample instead of averaged."""
    ce = F.cross_entropy(pred, labels, reduction="none")
    pred = torch.clamp(F.softmax(pred, dim=1), min=1e-7, max=1.0)
    label_one_hot = torch.clamp(F.one_hot(labels, num_classes).float(), min=1e-4, max=1.0)
    rce = -1 * torch.sum(pred * torch.log(label_one_hot), dim=1)
    return alpha * ce + beta * rce


def test_sce_equals_the_official_code_on_random_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=g) * 8
    y = torch.randint(0, 10, (64,), generator=g)
    assert torch.allclose(symmetric_ce(logits, y, 0.1, 1.0), official_sce(logits, y, 0.1, 1.0, 10), rtol=1e-5, atol=1e-6)
    assert OFFICIAL_LOG_ZERO == pytest.approx(math.log(1e-4))


def test_sce_strategy_defaults_options_and_validation():
    model = nn.Linear(4, 3)
    st = create_strategy("sce", model)
    assert isinstance(st, SymmetricCE) and (st.alpha, st.beta) == (0.1, 1.0)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    st6 = create_strategy("sce", model, alpha=6.0, beta=0.1)
    assert st6.train_step(x, y, torch.arange(6), 0).loss.item() == pytest.approx(
        official_sce(model(x), y, 6.0, 0.1, 3).mean().item(), rel=1e-5)
    with pytest.raises(UsageError, match="log_zero must be < 0"):
        make_config("sce", {"log_zero": 0.0})
    with pytest.raises(UsageError, match="not both 0"):
        make_config("sce", {"alpha": 0.0, "beta": 0.0})


# ---- training and presets -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gce", "sce"])
def test_robust_loss_resists_the_label_noise_that_ce_memorises(name):
    # 50% symmetric noise, SGD, 50 epochs: CE memorises the flipped labels (0.48 on the clean test
    # images); the robust loss barely moves on samples it finds implausible and keeps the band (1.00)
    _, result = fit_toy(name, ROBUST_LOSS_TOY)
    assert result.metrics["test_acc"] >= 0.9  # chance is 0.25; the clean test labels are learnt
    assert result.metrics["test_acc"] >= ce_test_accuracy(ROBUST_LOSS_TOY) + 0.25


@pytest.mark.parametrize("name", ["ce", "coteach", "coteach_plus", "jocor", "gce", "sce"])
def test_study_presets_are_valid_options(name):
    presets = get_strategy(name).presets
    assert set(presets) == {"quick", "paper", "fast"}
    for options in presets.values():
        make_config(name, options)  # a preset naming an unknown option or a bad value would raise here


# ---- GCE / SCE: contracts pinned one mechanism at a time ----------------------------------------

def test_losses_name_the_class_dimension_and_emit_no_warnings():
    # softmax over an implicit dimension is deprecated and warns on every step; the class axis is dim 1.
    # LOGITS is square, so a softmax over the batch (dim 0) would run silently: the values tell them apart.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lq = generalized_ce(LOGITS, Y, 0.7)
        rce = reverse_ce(LOGITS, Y)
        st = GeneralizedCE(PerSampleLogits(LOGITS), truncate_k=0.5, num_train=3, prune_start=1)
        st.on_train_pass(0, [(torch.arange(3), Y, torch.arange(3))])
    p_y = [softmax_py(row, label) for row, label in zip(LOGITS.tolist(), Y.tolist())]  # 0.787, 0.665, 0.016
    assert lq.tolist() == pytest.approx([(1 - p ** 0.7) / 0.7 for p in p_y], rel=1e-6)
    assert rce.tolist() == pytest.approx([-math.log(1e-4) * (1 - p) for p in p_y], rel=1e-5)
    assert st.kept.tolist() == [p > 0.5 for p in p_y] == [True, True, False]
    by_batch = LOGITS.softmax(0).gather(1, Y[:, None]).squeeze(1)  # what dim 0 would have used
    assert not torch.allclose(by_batch, torch.tensor(p_y), atol=0.05)


def test_gce_constructor_defaults_are_the_papers_cifar_recipe():
    st = GeneralizedCE(nn.Linear(2, 3))
    assert (st.q, st.truncate_k, st.prune_start, st.prune_every) == (0.7, None, 40, 10)
    assert st.kept.numel() == 0  # plain L_q keeps no per-sample state
    assert GCEConfig() == GCEConfig(q=0.7, truncate_k=None, prune_start=40, prune_every=10)
    with pytest.raises(UsageError, match=r"^truncated GCE needs the training-set size \(num_train\)$"):
        GeneralizedCE(nn.Linear(2, 3), truncate_k=0.5)  # num_train defaults to 0: unknown


def test_gce_validation_boundaries_and_messages():
    make_config("gce", {"q": 1.0})  # q = 1 is the MAE end of the family
    make_config("gce", {"truncate_k": 0.999, "prune_start": 1, "prune_every": 1})
    cases = [({"q": 0.0}, "q must be in (0, 1], got 0.0"),
             ({"truncate_k": 0.0}, "truncate_k must be in (0, 1), got 0.0"),
             ({"truncate_k": 1.0}, "truncate_k must be in (0, 1), got 1.0"),
             ({"prune_start": 0}, "prune_start must be >= 1, got 0"),
             ({"prune_every": 0}, "prune_every must be >= 1, got 0")]
    for options, message in cases:
        with pytest.raises(UsageError, match=f"^strategy 'gce': {re.escape(message)}$"):
            make_config("gce", options)


def test_gce_constructor_validates_every_argument():
    model = PerSampleLogits(LOGITS)
    for kwargs, message in [({"q": 1.5}, "q must be in (0, 1], got 1.5"),
                            ({"truncate_k": 1.5}, "truncate_k must be in (0, 1), got 1.5"),
                            ({"prune_start": 0, "prune_every": 5}, "prune_start must be >= 1, got 0"),
                            ({"prune_start": 5, "prune_every": 0}, "prune_every must be >= 1, got 0")]:
        with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
            GeneralizedCE(model, num_train=3, **{"truncate_k": 0.5, **kwargs})
    st = GeneralizedCE(model, truncate_k=0.5, num_train=1)  # one training sample is enough
    assert st.kept.tolist() == [True]


def test_gce_build_passes_every_option_and_the_context():
    clean = torch.tensor([0, 1, 2])
    ctx = BuildContext(new_model=lambda: PerSampleLogits(LOGITS), num_classes=3, num_train=3, clean_train_labels=clean)
    st = GeneralizedCE.build(make_config("gce", {"q": 0.5, "truncate_k": 0.3, "prune_start": 3, "prune_every": 4}), ctx)
    assert (st.q, st.truncate_k, st.prune_start, st.prune_every) == (0.5, 0.3, 3, 4)
    assert st.kept.shape == (3,) and st.clean_labels is clean
    plain = GeneralizedCE.build(make_config("gce", {}), ctx)
    assert plain.kept.numel() == 0 and not plain.needs_train_pass  # num_train is known, but no state is needed


def test_gce_pruning_epochs_count_from_prune_start():
    st = GeneralizedCE(nn.Linear(2, 3), truncate_k=0.5, num_train=1, prune_start=3, prune_every=4)
    # 1-based epochs 3, 7, 11: before 0-based epochs 2, 6, 10
    assert [e for e in range(12) if st.prunes_before(e)] == [2, 6, 10]
    assert not any(GeneralizedCE(nn.Linear(2, 3), prune_start=1, prune_every=1).prunes_before(e) for e in range(5))


def test_truncation_includes_p_y_equal_to_k():
    # Zhang & Sabuncu eq. 9: L_trunc = L_q(k) where p_y <= k. Equal logits over 2 classes give p_y = 0.5 exactly.
    logits = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    st = GeneralizedCE(PerSampleLogits(logits), truncate_k=0.5, num_train=2, prune_start=1)
    st.on_train_pass(0, [(torch.arange(2), torch.tensor([0, 0]), torch.arange(2))])
    assert st.kept.tolist() == [False, True]
    assert st.epoch_metrics() == {"kept_fraction": 0.5}  # no clean labels: no precision / recall


def test_gce_and_sce_steps_return_the_logits_for_train_accuracy():
    x = torch.arange(3)
    for st in (GeneralizedCE(PerSampleLogits(LOGITS)), SymmetricCE(PerSampleLogits(LOGITS))):
        out = st.train_step(x, Y, x, 0)
        assert torch.equal(out.logits, LOGITS)


def test_sce_constructor_defaults_and_validation():
    st = SymmetricCE(nn.Linear(2, 3))
    assert (st.alpha, st.beta, st.log_zero) == (0.1, 1.0, OFFICIAL_LOG_ZERO)  # the paper's CIFAR-10 values
    assert SCEConfig() == SCEConfig(alpha=0.1, beta=1.0, log_zero=OFFICIAL_LOG_ZERO)
    with pytest.raises(UsageError, match=r"^log_zero must be < 0, got 0.0$"):
        SymmetricCE(nn.Linear(2, 3), log_zero=0.0)
    with pytest.raises(UsageError, match=r"^alpha and beta must be >= 0 and not both 0, got alpha=-0.1, beta=1.0$"):
        SymmetricCE(nn.Linear(2, 3), alpha=-0.1)
    with pytest.raises(UsageError, match=r"^alpha and beta must be >= 0 and not both 0, got alpha=1.0, beta=-0.1$"):
        SymmetricCE(nn.Linear(2, 3), alpha=1.0, beta=-0.1)
    # either term alone is allowed: pure RCE (a scaled MAE) and pure CE, at any positive scale
    for alpha, beta in [(0.0, 0.5), (0.5, 0.0), (0.3, 0.3)]:
        make_config("sce", {"alpha": alpha, "beta": beta})
    make_config("sce", {"log_zero": -1e-3})


def test_sce_log_zero_reaches_the_loss_everywhere():
    # A = -4 (the paper's text): RCE = 4 (1 - p_y); sample 1 of LOGITS: p_y = 0.665241
    rce = 4 * (1 - 0.665241)
    ce = -math.log(0.665241)
    assert symmetric_ce(LOGITS[1:2], Y[1:2], 0.1, 1.0, log_zero=-4.0).item() == pytest.approx(0.1 * ce + rce, rel=1e-5)
    ctx = BuildContext(new_model=lambda: PerSampleLogits(LOGITS[1:2]), num_classes=3)
    st = SymmetricCE.build(make_config("sce", {"log_zero": -4.0}), ctx)
    assert st.log_zero == -4.0
    out = st.train_step(torch.tensor([0]), Y[1:2], torch.tensor([0]), 0)
    assert out.loss.item() == pytest.approx(0.1 * ce + rce, rel=1e-5)
