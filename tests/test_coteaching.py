"""Co-Teaching: the R(T) schedule, small-loss cross selection, label precision and recall, the loss."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coteach_helpers import FixedLogits, PerSampleLogits
from robustlab.errors import UsageError
from robustlab.strategies.coteaching import RAMPS, CoTeaching, EnsembleLogits, cross_update_indices, remember_rate


@pytest.mark.parametrize("epoch,paper,official", [(0, 1.0, 1.0), (1, 0.94, 0.925), (4, 0.76, 0.7), (5, 0.7, 0.7),
                                                   (10, 0.7, 0.7), (50, 0.7, 0.7)])
def test_remember_rate_matches_hand_values(epoch, paper, official):
    # tau = 0.3, Tk = 5. paper: R(T) = 1 - min(T / Tk * tau, tau); official: 1 - linspace(0, 0.3, 5)[T]
    # = 1 - (0, 0.075, 0.15, 0.225, 0.3)[T], then 0.7
    assert remember_rate(epoch, tau=0.3, num_gradual=5, ramp="paper") == pytest.approx(paper)
    assert remember_rate(epoch, tau=0.3, num_gradual=5) == pytest.approx(official)


def test_remember_rate_exponent_shapes_the_ramp():
    # paper: tau * (T/Tk)^2 at T = 2, Tk = 4: 0.4 * 0.25 = 0.1 forgotten
    assert remember_rate(2, tau=0.4, num_gradual=4, exponent=2, ramp="paper") == pytest.approx(0.9)
    # official: linspace(0, 0.4 ** 2, 4) = (0, 0.0533, 0.1067, 0.16), then a step to tau = 0.4
    official = [remember_rate(e, tau=0.4, num_gradual=4, exponent=2) for e in range(6)]
    assert official == pytest.approx([1.0, 1 - 0.16 / 3, 1 - 0.32 / 3, 0.84, 0.6, 0.6])


def test_cross_update_swaps_small_loss_picks():
    loss1 = torch.tensor([0.9, 0.1, 0.5, 0.3, 2.0])
    loss2 = torch.tensor([0.2, 0.8, 0.1, 1.5, 0.05])
    update1, update2 = cross_update_indices(loss1, loss2, num_remember=3)
    # net 2's three smallest losses are samples 4, 2, 0: net 1 learns from them, and vice versa.
    assert sorted(update1.tolist()) == [0, 2, 4]
    assert sorted(update2.tolist()) == [1, 2, 3]


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
    loss = st.train_step(torch.zeros(2, 1), y, torch.arange(2), 0).loss
    assert loss.dtype == torch.float32
    # both networks' losses in float32: 2 x mean(softplus(-1), softplus(-2)); bf16 would be ~3e-3 off
    expected = 2 * (math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


# ---- which samples drive which network's gradient, precision over many batches ----------------


def _two_nets():
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    # per-sample losses: net 1 is surest of samples 0, 1, 2; net 2 of samples 3, 4, 5
    t1 = torch.tensor([[5.0, 0], [0, 4.0], [3.0, 0], [0, -1.0], [-2.0, 0], [0, -3.0]])
    t2 = torch.tensor([[-3.0, 0], [0, -2.0], [-1.0, 0], [0, 3.0], [4.0, 0], [0, 5.0]])
    return PerSampleLogits(t1), PerSampleLogits(t2), y


def test_each_network_is_trained_only_on_its_peers_small_loss_samples():
    net1, net2, y = _two_nets()
    st = CoTeaching(net1, net2, forget_rate=0.5, num_gradual=0)
    st.on_epoch_start(0, 1)  # keep 3 of 6
    x = torch.arange(6).float().view(6, 1)
    out = st.train_step(x, y, torch.arange(6), 0)
    out.loss.backward()
    rows1 = net1.table.grad.abs().sum(1).nonzero().view(-1).tolist()
    rows2 = net2.table.grad.abs().sum(1).nonzero().view(-1).tolist()
    assert rows1 == [3, 4, 5]  # net 2's small-loss picks
    assert rows2 == [0, 1, 2]  # net 1's small-loss picks
    # d mean_k CE / d logits_i = (softmax_i - onehot_i) / 3 for each kept sample
    for net, rows in ((net1, rows1), (net2, rows2)):
        expected = (net.table.detach()[rows].softmax(1) - F.one_hot(y[rows], 2)) / 3
        assert torch.allclose(net.table.grad[rows], expected, atol=1e-6)
    assert torch.equal(out.logits, net1.table.detach()) and out.targets is None


def test_a_tiny_remember_rate_still_keeps_one_sample_per_network():
    net1, net2, y = _two_nets()
    st = CoTeaching(net1, net2, forget_rate=0.9, num_gradual=0)
    st.on_epoch_start(0, 1)  # int(0.1 * 6) = 0 samples: one is kept instead
    out = st.train_step(torch.arange(6).float().view(6, 1), y, torch.arange(6), 0)
    l1 = F.cross_entropy(net1.table.detach(), y, reduction="none")
    l2 = F.cross_entropy(net2.table.detach(), y, reduction="none")
    assert out.loss.item() == pytest.approx((l1[5] + l2[0]).item(), rel=1e-6)


def test_label_precision_accumulates_over_batches_with_shuffled_indices():
    torch.manual_seed(0)
    n = 12
    clean = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1])
    noisy = clean.clone()
    noisy[[1, 4, 6, 9]] = 1 - noisy[[1, 4, 6, 9]]  # 4 mislabelled samples
    table1, table2 = torch.randn(n, 2), torch.randn(n, 2)
    st = CoTeaching(PerSampleLogits(table1), PerSampleLogits(table2), forget_rate=0.5, num_gradual=0,
                    clean_labels=clean)
    st.on_epoch_start(0, 1)
    kept = clean_kept = clean_seen = 0
    for batch in (torch.tensor([7, 2, 11, 4]), torch.tensor([0, 9, 5, 1]), torch.tensor([10, 3, 6, 8])):
        y = noisy[batch]
        st.train_step(batch.float().view(-1, 1), y, batch, 0)
        l1 = F.cross_entropy(table1[batch], y, reduction="none")
        l2 = F.cross_entropy(table2[batch], y, reduction="none")
        is_clean = clean[batch] == y
        for picks in (torch.argsort(l1)[:2], torch.argsort(l2)[:2]):
            kept += 2
            clean_kept += int(is_clean[picks].sum())
            clean_seen += int(is_clean.sum())
    m = st.epoch_metrics()
    assert kept == 12 and m["label_precision"] == pytest.approx(clean_kept / kept)
    assert m["label_recall"] == pytest.approx(clean_kept / clean_seen)
    assert 0 < clean_kept < kept  # a case where precision is neither 0 nor 1


def test_remember_rate_ramps_then_holds_and_reaches_the_step():
    for ramp, ramped in (("official", [1.0, 1 - 0.32 / 3, 0.84]), ("paper", [1.0, 1 - 0.4 * 0.25, 1 - 0.4 * 0.5625])):
        st = CoTeaching(nn.Linear(1, 2), nn.Linear(1, 2), forget_rate=0.4, num_gradual=4, exponent=2.0, ramp=ramp)
        for epoch, expected in zip((0, 2, 3, 4, 9), ramped + [0.6, 0.6]):
            st.on_epoch_start(epoch, 10)
            assert st.epoch_metrics() == {"remember_rate": pytest.approx(expected)}
        assert remember_rate(3, tau=0.2, num_gradual=0, ramp=ramp) == pytest.approx(0.8)  # Tk = 0: tau from the start


def test_build_takes_the_noise_rate_and_two_fresh_networks():
    from robustlab.strategies import BuildContext, create_strategy

    made = []

    def new_model():
        made.append(nn.Linear(3, 2))
        return made[-1]

    ctx = BuildContext(new_model=new_model, num_classes=2, num_train=10, noise_rate=0.25)
    st = create_strategy("coteach", context=ctx, num_gradual=3, exponent=0.5)
    assert st.model is made[0] and st.peer is made[1] and len(made) == 2
    assert (st.tau, st.num_gradual, st.exponent) == (0.25, 3, 0.5)
    assert st.options() == {"forget_rate": 0.25, "num_gradual": 3, "exponent": 0.5, "ramp": "official",
                            "forget_rate_source": "oracle"}
    explicit = create_strategy("coteach", context=ctx, forget_rate=0.1)
    assert explicit.tau == 0.1 and explicit.options()["forget_rate"] == 0.1
    assert set(st.extra_predictors()) == {"net2", "ensemble"} and st.extra_predictors()["net2"] is st.peer


def test_without_a_noise_rate_or_forget_rate_build_says_what_to_pass():
    from robustlab.strategies import BuildContext, create_strategy

    ctx = BuildContext(new_model=lambda: nn.Linear(3, 2), num_classes=2, num_train=10, noise_rate=0.0)
    with pytest.raises(UsageError) as info:
        create_strategy("coteach", context=ctx)
    assert str(info.value) == "coteach needs a forget rate: train on noisy labels or pass forget_rate=<fraction>"


@pytest.mark.parametrize("kwargs, message", [
    ({"forget_rate": 1.0}, "co-teaching forget rate must be in [0, 1), got 1.0"),
    ({"forget_rate": -0.1}, "co-teaching forget rate must be in [0, 1), got -0.1"),
    ({"forget_rate": 0.2, "num_gradual": -1}, "num_gradual must be >= 0, got -1"),
    ({"forget_rate": 0.2, "exponent": 0.0}, "exponent must be > 0, got 0.0"),
])
def test_bad_settings_name_the_setting(kwargs, message):
    with pytest.raises(UsageError) as info:
        CoTeaching(nn.Linear(1, 2), nn.Linear(1, 2), **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("options, message", [
    ({"forget_rate": 1.0}, "forget_rate must be in [0, 1), 'estimate' or 'oracle', got 1.0"),
    ({"num_gradual": -2}, "num_gradual must be >= 0, got -2"),
    ({"exponent": -1.0}, "exponent must be > 0, got -1.0"),
])
def test_bad_config_fields_are_named(options, message):
    from robustlab.strategies.coteaching import CoTeachingConfig

    with pytest.raises(UsageError) as info:
        CoTeachingConfig(**options).validate()
    assert str(info.value) == message
    CoTeachingConfig(forget_rate=0.0, num_gradual=0, exponent=1e-3).validate()  # the edges are valid


def test_ensemble_of_a_certain_and_an_uncertain_network():
    sure = FixedLogits(torch.tensor([[100.0, 0.0]]))
    unsure = FixedLogits(torch.tensor([[0.0, 0.0]]))
    out = EnsembleLogits(sure, unsure)(torch.zeros(1, 1))
    assert torch.allclose(out.exp(), torch.tensor([[0.75, 0.25]]), atol=1e-6)


def test_built_strategy_measures_precision_with_the_contexts_clean_labels_and_ensembles_both_networks():
    from robustlab.strategies import BuildContext, create_strategy

    torch.manual_seed(0)
    clean = torch.tensor([0, 1, 1, 0])
    ctx = BuildContext(new_model=lambda: nn.Linear(3, 2), num_classes=2, num_train=4, noise_rate=0.5,
                       clean_train_labels=clean)
    st = create_strategy("coteach", context=ctx, num_gradual=0)
    st.on_epoch_start(0, 1)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])  # samples 2 and 3 are mislabelled
    st.train_step(x, y, torch.arange(4), 0)
    assert "label_precision" in st.epoch_metrics()
    ensemble = st.extra_predictors()["ensemble"](x)  # the inputs reach both networks
    expected = ((st.model(x).softmax(1) + st.peer(x).softmax(1)) / 2).log()
    assert torch.allclose(ensemble, expected, atol=1e-6)


def test_exponent_zero_is_refused_by_the_config():
    from robustlab.strategies.coteaching import CoTeachingConfig

    with pytest.raises(UsageError) as info:
        CoTeachingConfig(exponent=0.0).validate()
    assert str(info.value) == "exponent must be > 0, got 0.0"


def test_one_gradual_epoch_starts_from_keeping_everything_and_the_default_ramp_is_linear():
    for ramp in RAMPS:  # official: linspace(0, tau, 1) = [0]; paper: tau * min(0 / 1, 1) = 0
        assert remember_rate(0, tau=0.3, num_gradual=1, ramp=ramp) == 1.0
        assert remember_rate(1, tau=0.3, num_gradual=1, ramp=ramp) == pytest.approx(0.7)
    st = CoTeaching(nn.Linear(1, 2), nn.Linear(1, 2), forget_rate=0.4, num_gradual=4)  # default exponent: linear
    st.on_epoch_start(1, 4)
    assert st.epoch_metrics()["remember_rate"] == pytest.approx(1 - 0.4 / 3)  # official: linspace(0, 0.4, 4)[1]


def test_constructor_defaults_are_the_official_linear_ramp_over_ten_epochs():
    from robustlab.strategies.coteaching import forget_rate

    # bhanML/Co-teaching: rate_schedule[:10] = linspace(0, tau, 10) (exponent c = 1)
    st = CoTeaching(nn.Linear(1, 2), nn.Linear(1, 2), forget_rate=0.4)
    assert (st.num_gradual, st.exponent, st.ramp) == (10, 1.0, "official")
    st.on_epoch_start(5, 20)
    assert st.epoch_metrics()["remember_rate"] == pytest.approx(1 - 0.4 * 5 / 9)
    assert forget_rate(2, 0.4, 4) == pytest.approx(0.4 * 2 / 3)  # forget_rate's own default is the official ramp
    assert forget_rate(2, 0.4, 4, ramp="paper") == pytest.approx(0.4 * 2 / 4)


def test_before_any_epoch_start_every_sample_is_kept():
    # R = 1 until on_epoch_start sets the schedule: a step then is plain CE on both networks
    net1, net2, y = _two_nets()
    st = CoTeaching(net1, net2, forget_rate=0.5, num_gradual=0)
    assert st.epoch_metrics() == {"remember_rate": 1.0}
    out = st.train_step(torch.arange(6).float().view(6, 1), y, torch.arange(6), 0)
    l1 = F.cross_entropy(net1.table.detach(), y)
    l2 = F.cross_entropy(net2.table.detach(), y)
    assert out.loss.item() == pytest.approx((l1 + l2).item(), rel=1e-6)


# ---- the official forget-rate schedule, pinned sample by sample ---------------------------------


def official_rate_schedule(n_epoch, forget_rate, num_gradual, exponent):
    """Port of bhanML/Co-teaching main.py (also hongxin001/JoCoR; xingruiyu/coteaching_plus with c = 1)."""
    import numpy as np

    rate_schedule = np.ones(n_epoch) * forget_rate
    rate_schedule[:num_gradual] = np.linspace(0, forget_rate ** exponent, num_gradual)
    return rate_schedule


def kept_per_epoch(epochs, batch=32, **kwargs):
    """How many of a batch of `batch` samples each network keeps at each epoch, read off the gradients."""
    net1 = PerSampleLogits(torch.randn(batch, 2, generator=torch.Generator().manual_seed(0)))
    net2 = PerSampleLogits(torch.randn(batch, 2, generator=torch.Generator().manual_seed(1)))
    st = CoTeaching(net1, net2, **kwargs)
    counts = []
    for epoch in range(epochs):
        st.on_epoch_start(epoch, epochs)
        st.zero_grad()
        st.train_step(torch.arange(batch), torch.zeros(batch, dtype=torch.long), torch.arange(batch), epoch).loss.backward()
        rows1 = int(net1.table.grad.abs().sum(1).gt(0).sum())
        assert rows1 == int(net2.table.grad.abs().sum(1).gt(0).sum())
        counts.append(rows1)
    return counts


def test_kept_counts_per_epoch_follow_the_official_schedule_and_the_paper_option():
    # batch 32, Tk = 10. official: int((1 - tau * e / 9) * 32); paper: int((1 - tau * min(e / 10, 1)) * 32)
    assert kept_per_epoch(12, forget_rate=0.25, num_gradual=10) == [32, 31, 30, 29, 28, 27, 26, 25, 24, 24, 24, 24]
    assert kept_per_epoch(12, forget_rate=0.25, num_gradual=10, ramp="paper") == [32, 31, 30, 29, 28, 28, 27, 26, 25, 24, 24, 24]
    # tau = 0.4: at epoch 5 the official schedule keeps 24 (forget 0.4 * 5 / 9), the paper's 25 (forget 0.2)
    assert kept_per_epoch(11, forget_rate=0.4, num_gradual=10) == [32, 30, 29, 27, 26, 24, 23, 22, 20, 19, 19]
    assert kept_per_epoch(11, forget_rate=0.4, num_gradual=10, ramp="paper") == [32, 30, 29, 28, 26, 25, 24, 23, 21, 20, 19]
    # c = 2: linear up to tau ** 2 = 0.16 (keep 26 of 32), then the step to tau (keep 19)
    assert kept_per_epoch(6, forget_rate=0.4, num_gradual=4, exponent=2.0) == [32, 30, 28, 26, 19, 19]


@pytest.mark.parametrize("tau", [0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.8])
@pytest.mark.parametrize("num_gradual, exponent", [(0, 1.0), (1, 1.0), (2, 1.0), (5, 1.0), (10, 1.0), (15, 1.0),
                                                   (10, 0.5), (10, 2.0), (7, 1.5)])
def test_forget_rate_equals_the_official_rate_schedule_to_the_bit(tau, num_gradual, exponent):
    from robustlab.strategies.coteaching import forget_rate

    n_epoch = 25
    official = official_rate_schedule(n_epoch, tau, num_gradual, exponent)
    ours = [forget_rate(e, tau, num_gradual, exponent) for e in range(n_epoch)]
    assert ours == official.tolist()  # exact: the kept counts int((1 - rate) * batch) agree for every batch size
    for batch in (7, 32, 100, 128):
        assert [int((1 - r) * batch) for r in ours] == [int((1 - r) * batch) for r in official]


def test_an_unknown_ramp_is_refused_naming_the_choices():
    from robustlab.strategies import make_config
    from robustlab.strategies.coteaching import CoTeachingConfig, forget_rate

    message = "ramp must be one of official, paper, got 'linear'"
    for make_it, prefix in ((lambda: make_config("coteach", {"ramp": "linear"}), "strategy 'coteach': "),
                            (lambda: CoTeachingConfig(ramp="linear").validate(), ""),
                            (lambda: CoTeaching(nn.Linear(1, 2), nn.Linear(1, 2), forget_rate=0.2, ramp="linear"), ""),
                            (lambda: forget_rate(1, 0.2, 10, ramp="linear"), "")):
        with pytest.raises(UsageError) as info:
            make_it()
        assert str(info.value) == prefix + message
    assert make_config("jocor", {"ramp": "paper"}).ramp == "paper"
    assert make_config("coteach_plus", {"ramp": "paper"}).ramp == "paper"
