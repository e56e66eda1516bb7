"""SOP / SOP+: the loss against a line-by-line port of the official `overparametrization_loss`, the
u/v SGD step (own learning rates, no momentum, no weight decay, outside the engine's optimizer),
official defaults, SOP+'s two views, bad options, and u/v surviving checkpoint/resume bit-exactly."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.data import DeviceLoader, Normalize
from robustlab.data.augment import AugmentConfig, BatchAugment, MultiView
from robustlab.engine import TrainConfig, fit
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import BuildContext, create_strategy, make_config
from robustlab.strategies.sop import SOP, SOPConfig, TwoViews, sop_loss
from coteach_helpers import FixedLogits
from resume_helpers import InterruptAt, toy_images as _toy


def official_overparametrization_loss_port(u_all, v_all, index, outputs, label, num_classes,
                                           ratio_consistency=0.0, ratio_balance=0.0):
    """Line-by-line port of shengliu66/SOP model/loss.py `overparametrization_loss.forward` (newest
    version, commit 9a3fd24), with `soft_to_hard` inlined and `.cuda()` dropped."""
    if len(outputs) > len(index):
        output, output2 = torch.chunk(outputs, 2)
    else:
        output = outputs
    eps = 1e-4
    U_square = u_all[index] ** 2 * label
    V_square = v_all[index] ** 2 * (1 - label)
    U_square = torch.clamp(U_square, 0, 1)
    V_square = torch.clamp(V_square, 0, 1)
    original_prediction = F.softmax(output, dim=1)
    prediction = torch.clamp(original_prediction + U_square - V_square.detach(), min=eps)
    prediction = F.normalize(prediction, p=1, eps=eps)
    prediction = torch.clamp(prediction, min=eps, max=1.0)
    with torch.no_grad():
        label_one_hot = torch.zeros(len(output), num_classes).scatter_(1, output.detach().argmax(dim=1).view(-1, 1), 1)
    MSE_loss = F.mse_loss((label_one_hot + U_square - V_square), label, reduction='sum') / len(label)
    loss = torch.mean(-torch.sum((label) * torch.log(prediction), dim=-1))
    loss += MSE_loss
    if ratio_balance > 0:
        avg_prediction = torch.mean(prediction, dim=0)
        prior_distr = 1.0 / num_classes * torch.ones_like(avg_prediction)
        avg_prediction = torch.clamp(avg_prediction, min=eps, max=1.0)
        balance_kl = torch.mean(-(prior_distr * torch.log(avg_prediction)).sum(dim=0))
        loss += ratio_balance * balance_kl
    if (len(outputs) > len(index)) and (ratio_consistency > 0):
        preds1 = F.softmax(output, dim=1).detach()
        preds2 = F.log_softmax(output2, dim=1)
        loss_kldiv = torch.sum(F.kl_div(preds2, preds1, reduction='none'), dim=1)
        loss += ratio_consistency * torch.mean(loss_kldiv)
    return loss


def _case(seed=0, n=6, c=4, big=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * 2
    y = torch.randint(0, c, (n,), generator=g)
    # u, v large enough that some clamps bind and the noise terms matter
    u = torch.randn(n, 1, generator=g) * (0.9 if big else 1e-3)
    v = torch.randn(n, c, generator=g) * (0.9 if big else 1e-3)
    return logits, y, u, v


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sop_loss_and_its_gradients_match_the_official_port(seed):
    logits, y, u, v = _case(seed)
    onehot = F.one_hot(y, 4).float()
    mine = [t.clone().requires_grad_(True) for t in (logits, u, v)]
    ref = [t.clone().requires_grad_(True) for t in (logits, u, v)]
    a = sop_loss(mine[0], onehot, mine[1], mine[2])
    b = official_overparametrization_loss_port(ref[1], ref[2], torch.arange(6), ref[0], onehot, 4)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    a.backward()
    b.backward()
    for m, r in zip(mine, ref):
        assert torch.allclose(m.grad, r.grad, atol=1e-7)
    assert mine[1].grad.abs().sum() > 0 and mine[2].grad.abs().sum() > 0


@pytest.mark.parametrize("seed", [0, 3])
def test_sop_plus_loss_matches_the_official_port_with_two_views(seed):
    logits, y, u, v = _case(seed)
    logits2 = logits + torch.randn(6, 4, generator=torch.Generator().manual_seed(9))
    onehot = F.one_hot(y, 4).float()
    mine = [t.clone().requires_grad_(True) for t in (logits, logits2, u, v)]
    ref = [t.clone().requires_grad_(True) for t in (logits, logits2, u, v)]
    a = sop_loss(mine[0], onehot, mine[2], mine[3], 0.1, mine[1], 0.9)
    b = official_overparametrization_loss_port(ref[2], ref[3], torch.arange(6), torch.cat([ref[0], ref[1]]), onehot, 4,
                                               ratio_consistency=0.9, ratio_balance=0.1)
    plain = sop_loss(logits, onehot, u, v)
    assert a.item() == pytest.approx(b.item(), rel=1e-6) and a.item() > plain.item()
    a.backward()
    b.backward()
    for m, r in zip(mine, ref):
        assert torch.allclose(m.grad, r.grad, atol=1e-7)
    assert mine[0].grad.abs().sum() > 0 and mine[1].grad.abs().sum() > 0  # the KL reaches view 2, CE view 1


def test_hand_calculation_with_zero_noise_terms_is_cross_entropy_plus_the_argmax_error():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    onehot = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # sample 1's label disagrees with its prediction
    z = torch.zeros(2, 1), torch.zeros(2, 2)
    loss = sop_loss(logits, onehot, *z)
    ce = F.cross_entropy(logits, torch.tensor([0, 0]))
    # |onehot(argmax) - y|^2 summed: 0 for sample 0, 2 for sample 1; divided by N = 2
    assert loss.item() == pytest.approx(ce.item() + 1.0, rel=1e-6)
    # class balance: mean prediction (p0 + q0) / 2 etc.; -(1/2) * sum(log avg)
    p = logits.softmax(1)
    avg = p.mean(0)
    balanced = sop_loss(logits, onehot, *z, ratio_balance=0.5)
    assert balanced.item() == pytest.approx(loss.item() + 0.5 * -(avg.log().sum() / 2).item(), rel=1e-6)


def _strategy(num_train=5, c=3, logits=None, **kw):
    logits = logits if logits is not None else torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    args = {"lr_u": 10.0, "lr_v": 7.0, **kw}
    return SOP(FixedLogits(logits), num_train=num_train, num_classes=c, **args), logits


def test_backward_steps_u_and_v_rows_of_the_batch_with_their_own_rates_and_nothing_else():
    torch.manual_seed(0)
    st, logits = _strategy()
    st.u.normal_(0, 0.3)
    st.v.normal_(0, 0.3)
    u0, v0 = st.u.clone(), st.v.clone()
    idx, y = torch.tensor([3, 1]), torch.tensor([0, 2])
    out = st.train_step(torch.zeros(2, 1), y, idx, epoch=0)

    ur, vr = u0[idx].clone().requires_grad_(True), v0[idx].clone().requires_grad_(True)
    ref = official_overparametrization_loss_port(ur, vr, torch.arange(2), logits, F.one_hot(y, 3).float(), 3)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.equal(st.u, u0) and torch.equal(st.v, v0)  # nothing moves before the backward pass
    out.loss.backward()
    gu, gv = torch.autograd.grad(ref, [ur, vr])
    assert gu.abs().sum() > 0 and gv.abs().sum() > 0
    # plain SGD: no momentum, no weight decay, rate lr_u for u and lr_v for v
    assert torch.allclose(st.u[idx], u0[idx] - 10.0 * gu, atol=1e-7)
    assert torch.allclose(st.v[idx], v0[idx] - 7.0 * gv, atol=1e-7)
    rest = torch.tensor([0, 2, 4])
    assert torch.equal(st.u[rest], u0[rest]) and torch.equal(st.v[rest], v0[rest])
    # the network gets its gradient through the engine's optimizer; u, v are not its parameters
    assert st.model.scale.grad is not None and st.model.scale.grad.abs() > 0
    assert [n for n, _ in st.named_parameters()] == ["model.scale"]
    assert {"u", "v"} <= set(st.state_dict())


def test_no_step_without_gradients_and_v_gets_no_gradient_from_the_cross_entropy():
    st, logits = _strategy()
    st.u.fill_(0.5)
    st.v.fill_(0.5)
    u0, v0 = st.u.clone(), st.v.clone()
    with torch.no_grad():
        st.train_step(torch.zeros(2, 1), torch.tensor([0, 2]), torch.tensor([0, 1]), epoch=0)
    assert torch.equal(st.u, u0) and torch.equal(st.v, v0)
    # v's gradient is exactly the squared term's: 2 * V_ic * 2 v_ic / N on the wrong classes (V < 1 here)
    y = torch.tensor([0, 2])
    out = st.train_step(torch.zeros(2, 1), y, torch.tensor([0, 1]), epoch=0)
    out.loss.backward()
    onehot = F.one_hot(y, 3).float()
    hard = F.one_hot(logits.argmax(1), 3).float()
    V = 0.25 * (1 - onehot)
    U = 0.25 * onehot
    d = hard + U - V - onehot
    grad_v = (-2 * d / 2) * (2 * 0.5) * (1 - onehot)  # d/dv of sum(d^2)/N with dV/dv = 2v off the label
    assert torch.allclose(st.v[:2], v0[:2] - 7.0 * grad_v, atol=1e-6)


def test_the_engine_optimizer_never_sees_u_v_so_weight_decay_and_schedule_do_not_touch_them(tmp_path):
    images, labels = _toy()
    norm = Normalize((0.5,) * 3, (0.25,) * 3)
    cfg = TrainConfig(epochs=1, batch_size=32, tta="none",
                      optim=OptimConfig(optimizer="sgd", lr=0.05, weight_decay=0.5, schedule="constant"))
    st = _sop(0, lr_u=1e-30, lr_v=1e-30)  # a step that cannot move them: only decay or averaging could
    st.u.fill_(0.5)
    st.v.fill_(0.5)
    fit(st, DeviceLoader(images, labels, 32, norm, seed=0), cfg, quiet=True, num_classes=4)
    assert torch.equal(st.u, torch.full_like(st.u, 0.5)) and torch.equal(st.v, torch.full_like(st.v, 0.5))


def test_official_defaults_follow_the_class_count_and_plus_turns_on_its_terms():
    def ctx(c):
        return BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=c), num_classes=c, num_train=7)

    torch.manual_seed(0)
    st10, st100 = create_strategy("sop", context=ctx(10)), create_strategy("sop", context=ctx(100))
    assert (st10.lr_u, st10.lr_v, st100.lr_u, st100.lr_v) == (10.0, 10.0, 1.0, 10.0)
    assert st10.u.shape == (7, 1) and st10.v.shape == (7, 10) and st10.views == 1
    assert 0 < st10.v.abs().max() < 1e-7  # N(0, 1e-8^2)
    assert (st10.ratio_consistency, st10.ratio_balance) == (0.0, 0.0)
    plus = create_strategy("sop", context=ctx(10), plus=True)
    assert (plus.ratio_consistency, plus.ratio_balance, plus.views) == (0.9, 0.1, 2)
    assert plus.options() == {"lr_u": 10.0, "lr_v": 10.0, "init_std": 1e-8, "plus": True, "ratio_consistency": 0.9,
                              "ratio_balance": 0.1, "cutout": 16}
    custom = create_strategy("sop", context=ctx(10), lr_u=2, lr_v=3, plus=True, ratio_balance=0)
    assert (custom.lr_u, custom.lr_v, custom.ratio_balance, custom.ratio_consistency) == (2.0, 3.0, 0.0, 0.9)
    assert set(SOP.presets) == {"quick", "paper", "fast"}


def test_sop_plus_views_are_the_run_augmentation_and_the_same_with_cutout():
    st, _ = _strategy(plus=True, ratio_consistency=0.9, ratio_balance=0.1)
    base = BatchAugment(AugmentConfig(crop_pad=0, flip=False), (0.5,) * 3, (0.25,) * 3)

    class Splits:
        mean, std = (0.5,) * 3, (0.25,) * 3

    views = st.train_augment(MultiView(base, 2), Splits)
    assert isinstance(views, TwoViews) and views.weak is base and views.strong.config.cutout == 16
    images = torch.full((4, 3, 32, 32), 200, dtype=torch.uint8)
    x = views(images, torch.Generator().manual_seed(0))
    assert x.shape == (4, 2, 3, 32, 32)
    assert torch.equal(x[:, 0], base(images, torch.Generator()))  # no randomness in the weak view
    zeros = (x[:, 1] == 0).all(1).flatten(1).sum(1)
    assert ((zeros > 0) & (zeros <= 256)).all()  # one Cutout square (clipped at the border) per image
    plain, _ = _strategy()
    default = MultiView(base, 2)
    assert plain.train_augment(default, Splits) is default


def test_sop_plus_step_runs_both_views_through_the_network_in_one_batch():
    seen = []

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 3)

        def forward(self, x):
            seen.append(x.shape)
            return self.lin(x)

    torch.manual_seed(0)
    st = SOP(Net(), 4, 3, 1.0, 1.0, ratio_consistency=0.9, ratio_balance=0.1, plus=True)
    x = torch.randn(2, 2, 2)
    y, idx = torch.tensor([0, 1]), torch.tensor([2, 3])
    out = st.train_step(x, y, idx, 0)
    assert seen == [(4, 2)]
    l1, l2 = st.model(x[:, 0]), st.model(x[:, 1])
    ref = official_overparametrization_loss_port(st.u, st.v, idx, torch.cat([l1, l2]), F.one_hot(y, 3).float(), 3,
                                                 ratio_consistency=0.9, ratio_balance=0.1)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(out.logits, l1)


def test_config_and_constructor_bounds_give_one_line_naming_the_option():
    SOPConfig(lr_u=1e-9, lr_v=1e-9, init_std=0, ratio_balance=0, cutout=0).validate()
    for bad, message in (({"lr_u": -1}, "lr_u must be > 0, got -1.0"),
                         ({"lr_u": 0}, "lr_u must be > 0, got 0.0"),
                         ({"lr_v": -0.5}, "lr_v must be > 0, got -0.5"),
                         ({"init_std": -1}, "init_std must be >= 0, got -1.0"),
                         ({"ratio_consistency": -0.1, "plus": True}, "ratio_consistency must be >= 0, got -0.1"),
                         ({"ratio_balance": -2}, "ratio_balance must be >= 0, got -2.0"),
                         ({"cutout": -1}, "cutout must be >= 0, got -1"),
                         ({"ratio_consistency": 0.5}, "ratio_consistency > 0 needs two views: set plus=true")):
        with pytest.raises(UsageError) as err:
            make_config("sop", bad)
        assert str(err.value) == f"strategy 'sop': {message}"
        assert "\n" not in str(err.value)
    net = nn.Linear(2, 2)
    for kwargs, message in (({"num_train": 0}, "SOP needs the training-set size (num_train) for its per-sample u, v"),
                            ({"num_classes": 1}, "SOP needs >= 2 classes, got 1"),
                            ({"lr_u": 0.0}, "SOP lr_u must be > 0, got 0.0"),
                            ({"lr_v": -1.0}, "SOP lr_v must be > 0, got -1.0"),
                            ({"ratio_consistency": 0.9}, "SOP ratio_consistency > 0 needs two views: set plus=true")):
        args = {"num_train": 4, "num_classes": 3, "lr_u": 1.0, "lr_v": 1.0, **kwargs}
        with pytest.raises(UsageError) as err:
            SOP(net, **args)
        assert str(err.value) == message


# ---- resume ----------------------------------------------------------------------------------

def _sop(seed, **options):
    torch.manual_seed(seed)
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=4), num_classes=4, num_train=96)
    return create_strategy("sop", context=ctx, **options)


def test_u_v_survive_checkpoint_and_resume_bit_exactly(tmp_path):
    images, labels = _toy()
    labels = labels.clone()
    labels[::5] = (labels[::5] + 1) % 4  # some wrong labels for u, v to explain
    norm = Normalize((0.5,) * 3, (0.25,) * 3)
    cfg = TrainConfig(epochs=3, batch_size=32, tta="none",
                      optim=OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant"))
    test_images, test_labels = _toy(40, seed=1)
    test = DeviceLoader(test_images, test_labels, 40, norm, shuffle=False)

    full = _sop(0, init_std=1e-3)
    start = full.v.clone()
    result = fit(full, DeviceLoader(images, labels, 32, norm, seed=0), cfg, test_loader=test,
                 run_dir=tmp_path / "full", quiet=True, num_classes=4)
    assert result.metrics["test_acc"] > 0.5  # it learns (chance is 0.25)
    assert not torch.equal(full.v, start)  # u, v were trained

    part = _sop(0, init_std=1e-3)
    with pytest.raises(KeyboardInterrupt):
        fit(part, InterruptAt(images, labels, 32, norm, seed=0), cfg, test_loader=test, run_dir=tmp_path / "part",
            quiet=True, num_classes=4)
    resumed = _sop(1, init_std=1e-3)  # other u, v and weights: the checkpoint must replace them
    fit(resumed, DeviceLoader(images, labels, 32, norm, seed=0), cfg, test_loader=test, run_dir=tmp_path / "part",
        resume=tmp_path / "part" / "last.pt", quiet=True, num_classes=4)
    assert torch.equal(resumed.u, full.u) and torch.equal(resumed.v, full.v)
    a, b = full.state_dict(), resumed.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
