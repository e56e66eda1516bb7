"""ELR: the target-memory update, the regulariser and its gradient, the loss against a hand
calculation, official defaults, and a memory that survives checkpoint/resume."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.data import DeviceLoader, Normalize
from robustlab.engine import TrainConfig, fit
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import BuildContext, create_strategy, make_config
from robustlab.strategies.elr import ELR, ELRConfig, _gather_across_ranks, clamped_probs, elr_regulariser, updated_targets
from coteach_helpers import FixedLogits
from resume_helpers import InterruptAt, toy_images as _toy


def test_target_update_matches_hand_values():
    old = torch.tensor([[0.2, 0.8], [0.0, 0.0]])
    probs = torch.tensor([[0.6, 0.2], [0.5, 0.5]])  # row 0 is renormalised to (0.75, 0.25)
    new = updated_targets(old, probs, beta=0.7)
    expected = torch.tensor([[0.7 * 0.2 + 0.3 * 0.75, 0.7 * 0.8 + 0.3 * 0.25], [0.15, 0.15]])
    assert torch.allclose(new, expected)


def test_probabilities_are_clamped_as_in_the_official_code():
    p = clamped_probs(torch.tensor([[30.0, 0.0, 0.0]]))
    assert p[0, 0].item() == pytest.approx(1 - 1e-4) and p[0, 1].item() == pytest.approx(1e-4)


def test_regulariser_matches_hand_values():
    t = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    p = torch.tensor([[0.8, 0.2], [0.9, 0.1]])
    expected = (math.log(1 - 0.8) + math.log(1 - 0.5)) / 2
    assert elr_regulariser(t, p).item() == pytest.approx(expected)


def test_regulariser_gradient_pushes_the_prediction_toward_the_target():
    logits = torch.tensor([[2.0, 0.0, 0.0]], requires_grad=True)  # predicts class 0
    target = torch.tensor([[0.05, 0.9, 0.05]])                     # the memory says class 1
    elr_regulariser(target, clamped_probs(logits)).backward()
    step = -logits.grad[0]
    assert step[1] > 0 and step[0] < 0  # descent raises the target class, lowers the predicted one
    moved = logits.detach() + 0.5 * step
    assert (target * clamped_probs(moved)).sum() > (target * clamped_probs(logits.detach())).sum()


def test_loss_updates_only_the_batch_rows_then_adds_lambda_times_the_regulariser():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    idx = torch.tensor([3, 1])
    st = ELR(FixedLogits(logits), num_train=5, num_classes=3, beta=0.6, lam=2.5)
    st.target[3] = torch.tensor([0.1, 0.1, 0.8])
    before = st.target.clone()
    out = st.train_step(torch.zeros(2, 1), y, idx, epoch=0)

    p = logits.softmax(1).clamp(1e-4, 1 - 1e-4)
    t = 0.6 * before[idx] + 0.4 * p / p.sum(1, keepdim=True)
    expected = F.cross_entropy(logits, y) + 2.5 * torch.log(1 - (t * p).sum(1)).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(st.target[idx], t)
    untouched = torch.tensor([0, 2, 4])
    assert torch.equal(st.target[untouched], before[untouched])


def test_official_defaults_follow_the_class_count_and_options_override():
    def ctx(c):
        return BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=c), num_classes=c, num_train=7)

    st10, st100 = create_strategy("elr", context=ctx(10)), create_strategy("elr", context=ctx(100))
    assert (st10.beta, st10.lam) == (0.7, 3.0) and st10.target.shape == (7, 10)
    assert (st100.beta, st100.lam) == (0.9, 7.0)
    assert st10.options() == {"beta": 0.7, "lam": 3.0}
    custom = create_strategy("elr", context=ctx(10), beta=0.5, lam=1)
    assert (custom.beta, custom.lam) == (0.5, 1.0)
    assert set(ELR.presets) == {"quick", "paper", "fast"}
    assert create_strategy("elr", context=ctx(100), **ELR.presets["paper"]).options() == {"beta": 0.9, "lam": 7.0}
    with pytest.raises(UsageError, match="beta must be in"):
        make_config("elr", {"beta": 1.0})
    with pytest.raises(UsageError, match="lam must be >= 0"):
        make_config("elr", {"lam": -1})


# ---- resume ----------------------------------------------------------------------------------

def _elr(seed):
    torch.manual_seed(seed)
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=4), num_classes=4, num_train=96)
    return create_strategy("elr", context=ctx)


def test_memory_survives_checkpoint_and_resume(tmp_path):
    images, labels = _toy()
    norm = Normalize((0.5,) * 3, (0.25,) * 3)
    cfg = TrainConfig(epochs=3, batch_size=32, tta="none",
                      optim=OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant"))

    test_images, test_labels = _toy(40, seed=1)
    test = DeviceLoader(test_images, test_labels, 40, norm, shuffle=False)

    full = _elr(0)
    result = fit(full, DeviceLoader(images, labels, 32, norm, seed=0), cfg, test_loader=test, run_dir=tmp_path / "full",
                 quiet=True, num_classes=4)
    assert result.metrics["test_acc"] > 0.6  # it learns (chance is 0.25)
    # Every sample was seen once per epoch: its memory sums to 1 - 0.7^3 after three updates from 0.
    assert torch.allclose(full.target.sum(1), torch.full((96,), 1 - 0.7 ** 3))

    part = _elr(0)
    with pytest.raises(KeyboardInterrupt):
        fit(part, InterruptAt(images, labels, 32, norm, seed=0), cfg, test_loader=test, run_dir=tmp_path / "part",
            quiet=True, num_classes=4)
    resumed = _elr(1)  # a fresh memory of zeros and other weights: the checkpoint must replace both
    torch.manual_seed(123)
    fit(resumed, DeviceLoader(images, labels, 32, norm, seed=0), cfg, test_loader=test, run_dir=tmp_path / "part",
        resume=tmp_path / "part" / "last.pt", quiet=True, num_classes=4)

    assert torch.equal(resumed.target, full.target)
    a, b = full.state_dict(), resumed.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---- bounds, exact messages and the DDP memory update ----------------------------------------

def test_constructor_bounds_and_exact_messages():
    net = nn.Linear(2, 2)
    st = ELR(net, num_train=1, num_classes=2, beta=0.0, lam=0.0)  # the smallest valid values
    assert st.target.shape == (1, 2) and st.target.dtype == torch.float32 and not st.target.any()
    assert "target" in st.state_dict()  # checkpointed with the model
    for kwargs, message in (({"num_train": 0}, "ELR needs the training-set size (num_train) for its per-sample targets"),
                            ({"num_classes": 1}, "ELR needs >= 2 classes, got 1"),
                            ({"beta": 1.0}, "ELR beta must be in [0, 1), got 1.0"),
                            ({"beta": -0.1}, "ELR beta must be in [0, 1), got -0.1"),
                            ({"lam": -0.5}, "ELR lambda must be >= 0, got -0.5")):
        args = {"num_train": 4, "num_classes": 3, "beta": 0.7, "lam": 3.0, **kwargs}
        with pytest.raises(UsageError) as err:
            ELR(net, **args)
        assert str(err.value) == message


def test_config_bounds_and_exact_messages():
    ELRConfig(beta=0.0, lam=0.0).validate()
    ELRConfig().validate()
    for bad, message in (({"beta": 1.0}, "beta must be in [0, 1), got 1.0"),
                         ({"beta": -0.5}, "beta must be in [0, 1), got -0.5"),
                         ({"lam": -1}, "lam must be >= 0, got -1.0")):
        with pytest.raises(UsageError) as err:
            make_config("elr", bad)
        assert str(err.value) == f"strategy 'elr': {message}"


def test_beta_zero_memory_is_the_normalised_prediction_and_lambda_zero_is_plain_ce():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    st = ELR(FixedLogits(logits), num_train=2, num_classes=3, beta=0.0, lam=0.0)
    out = st.train_step(torch.zeros(1, 1), torch.tensor([2]), torch.tensor([1]), epoch=0)
    assert out.loss.item() == pytest.approx(F.cross_entropy(logits, torch.tensor([2])).item(), rel=1e-6)
    p = logits.softmax(1)
    assert torch.allclose(st.target[1], p[0]) and not st.target[0].any()
    assert torch.equal(out.logits, logits)  # the model's logits, for train accuracy


def test_the_loss_is_float32_for_half_logits():
    st = ELR(nn.Identity(), num_train=2, num_classes=2, beta=0.5, lam=1.0)
    loss = st.loss(torch.tensor([[2.0, -1.0]], dtype=torch.bfloat16), torch.tensor([0]), torch.tensor([0]))
    assert loss.dtype == torch.float32 and st.target.dtype == torch.float32


def _fake_process_group(monkeypatch, world, others):
    """A process group of `world` ranks in which this is rank 0 and the other ranks contribute `others`
    (a list of (idx, rows)), as all_gather would."""
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)
    calls = []

    def all_gather(out, tensor):
        calls.append(tensor)
        assert len(out) == world
        out[0].copy_(tensor)
        for rank, (idx, rows) in enumerate(others, start=1):
            out[rank].copy_(idx if tensor.dtype == idx.dtype else rows)

    monkeypatch.setattr(torch.distributed, "all_gather", all_gather)
    return calls


def test_gather_is_the_identity_without_a_process_group_or_with_one_rank(monkeypatch):
    idx, rows = torch.tensor([2, 0]), torch.rand(2, 3)
    out = _gather_across_ranks(idx, rows)  # no process group here
    assert out[0] is idx and out[1] is rows
    calls = _fake_process_group(monkeypatch, 1, [])
    out = _gather_across_ranks(idx, rows)
    assert out[0] is idx and out[1] is rows and calls == []


def test_every_rank_applies_every_ranks_memory_update(monkeypatch):
    # Rank 0 has samples 3, 1; rank 1 had samples 0, 4 and computed their new rows.
    other_idx, other_rows = torch.tensor([0, 4]), torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    _fake_process_group(monkeypatch, 2, [(other_idx, other_rows)])
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    idx = torch.tensor([3, 1])
    st = ELR(FixedLogits(logits), num_train=5, num_classes=3, beta=0.6, lam=2.5)
    out = st.train_step(torch.zeros(2, 1), torch.tensor([0, 2]), idx, epoch=0)

    p = logits.softmax(1).clamp(1e-4, 1 - 1e-4)
    t = 0.4 * p / p.sum(1, keepdim=True)
    assert torch.allclose(st.target[idx], t)
    assert torch.equal(st.target[other_idx], other_rows)
    assert not st.target[2].any()
    # The loss is this rank's own: its rows and its regulariser only.
    expected = F.cross_entropy(logits, torch.tensor([0, 2])) + 2.5 * torch.log(1 - (t * p).sum(1)).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    gathered_idx, gathered_rows = _gather_across_ranks(idx, t)
    assert torch.equal(gathered_idx, torch.tensor([3, 1, 0, 4]))
    assert torch.equal(gathered_rows, torch.cat([t, other_rows]))
