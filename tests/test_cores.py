"""CORES^2: the loss and sieve against a line-by-line port of the official `loss_cores`, the beta and
sieve schedules (ported f_beta) stretched to the run, the prior update from the sieved counts,
selection precision/recall, bad options, and per-sample state surviving resume bit-exactly."""
import numpy as np
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
from robustlab.strategies.cores import CORES, CORESConfig, beta_at, cores_terms, official_epoch, sieve_on
from coteach_helpers import FixedLogits
from resume_helpers import InterruptAt, toy_images as _toy


def f_beta_port(epoch):
    """Line-by-line port of the official `f_beta` (haochenglouis/cores, loss.py)."""
    beta1 = np.linspace(0.0, 0.0, num=10)
    beta2 = np.linspace(0.0, 2, num=30)
    beta3 = np.linspace(2, 2, num=60)
    beta = np.concatenate((beta1, beta2, beta3), axis=0)
    return beta[epoch]


def loss_cores_port(epoch, y, t, noise_prior=None):
    """Line-by-line port of the official `loss_cores` (loss.py) without its numpy logging arrays and
    `.cuda()`; returns (loss, loss_v) as the official code does when some sample is kept."""
    beta = f_beta_port(epoch)
    loss = F.cross_entropy(y, t, reduction='none')
    loss_numpy = loss.data.cpu().numpy()
    num_batch = len(loss_numpy)
    loss_v = np.zeros(num_batch)
    loss_ = -torch.log(F.softmax(y, dim=1) + 1e-8)
    loss_sel = loss - torch.mean(loss_, 1)
    if noise_prior is None:
        loss = loss - beta * torch.mean(loss_, 1)
    else:
        loss = loss - beta * torch.sum(torch.mul(noise_prior, loss_), 1)
    loss_div_numpy = loss_sel.data.cpu().numpy()
    for i in range(len(loss_numpy)):
        if epoch <= 30:
            loss_v[i] = 1.0
        elif loss_div_numpy[i] <= 0:
            loss_v[i] = 1.0
    loss_v = loss_v.astype(np.float32)
    loss_v_var = torch.from_numpy(loss_v)
    loss_ = loss_v_var * loss
    if sum(loss_v) == 0.0:
        return torch.mean(loss_) / 100000000, loss_v.astype(int)
    return torch.sum(loss_) / sum(loss_v), loss_v.astype(int)


def test_schedules_are_the_official_ones_stretched_to_the_run():
    assert [beta_at(e, 100) for e in range(100)] == [pytest.approx(f_beta_port(e)) for e in range(100)]
    assert [official_epoch(e, 20) for e in (0, 1, 19)] == [0, 5, 95]
    assert [beta_at(e, 20) for e in range(20)] == [pytest.approx(f_beta_port(5 * e)) for e in range(20)]
    assert [sieve_on(e, 100) for e in (30, 31)] == [False, True]
    assert [sieve_on(e, 20) for e in (6, 7)] == [False, True] and [sieve_on(e, 10) for e in (3, 4)] == [False, True]
    assert beta_at(50, 100, beta_max=3.0) == pytest.approx(3.0) and beta_at(25, 100, 3.0) == pytest.approx(3.0 * 15 / 29)


def _batch(seed=0, n=8, c=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 2, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("official", [5, 20, 35, 60])
@pytest.mark.parametrize("uniform", [False, True])
def test_step_matches_the_official_loss_and_sieve(official, uniform):
    logits, y = _batch(official)
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4])
    st = CORES(FixedLogits(logits), num_train=10, num_classes=4, uniform_prior=uniform, lr_divide=False)
    st.on_epoch_start(official, 100)
    st.prior.copy_(prior)
    idx = torch.tensor([9, 0, 1, 2, 3, 4, 5, 6])
    out = st.train_step(torch.zeros(8, 1), y, idx, official)
    ref, loss_v = loss_cores_port(official, logits, y, None if uniform else prior.unsqueeze(0))
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    sel = F.cross_entropy(logits, y, reduction="none") + torch.log(logits.softmax(1) + 1e-8).mean(1)
    assert torch.allclose(st.score[idx], sel) and st.score[7] == st.score[8] == 0
    kept = torch.from_numpy(loss_v).bool()
    if official > 30:
        assert 0 < kept.sum() < 8  # the sieve drops some of this batch
    removed = torch.bincount(y[~kept], minlength=4).float()
    assert torch.equal(st.sieved_counts, removed)


def test_loss_is_divided_by_one_plus_beta_and_reaches_only_kept_samples():
    logits, y = _batch(3)
    table = nn.Parameter(logits.clone())

    class Rows(nn.Module):
        def __init__(self):
            super().__init__()
            self.t = table

        def forward(self, x):
            return self.t

    st = CORES(Rows(), num_train=8, num_classes=4)
    st.on_epoch_start(60, 100)
    out = st.train_step(torch.zeros(8, 1), y, torch.arange(8), 60)
    ref, loss_v = loss_cores_port(60, logits, y, st.prior.unsqueeze(0))
    assert out.loss.item() == pytest.approx(ref.item() / 3.0, rel=1e-5)
    out.loss.backward()
    got = set(torch.nonzero(table.grad.abs().sum(1)).squeeze(1).tolist())
    assert got == set(np.nonzero(loss_v)[0].tolist()) and 0 < len(got) < 8


def test_the_prior_is_the_label_distribution_less_the_last_epochs_sieved_labels():
    logits, y = _batch(1, n=6)
    y[:2] = (logits[:2].argmax(1) + 1) % 4  # two labels against the prediction, for the sieve to drop
    st = CORES(FixedLogits(logits), num_train=6, num_classes=4)
    st.on_epoch_start(0, 4)
    assert torch.allclose(st.prior, torch.full((4,), 0.25))
    st.train_step(torch.zeros(6, 1), y, torch.arange(6), 0)
    counts = torch.bincount(y, minlength=4).float()
    assert torch.equal(st.label_counts, counts)
    st.on_epoch_start(1, 4)
    assert torch.allclose(st.prior, counts / 6)  # nothing sieved yet: the noisy-label prior
    st.train_step(torch.zeros(6, 1), y, torch.arange(6), 1)
    assert torch.equal(st.label_counts, counts)  # counted in the first epoch only
    st.on_epoch_start(3, 4)  # official epoch 75: the sieve is on
    st.train_step(torch.zeros(6, 1), y, torch.arange(6), 3)
    removed = st.sieved_counts.clone()
    assert removed.sum() > 0
    st.on_epoch_start(3, 4)
    assert torch.allclose(st.prior, (counts - removed) / (counts - removed).sum())
    assert not st.sieved_counts.any()


def test_selection_precision_and_recall_of_the_sieve():
    logits = torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 3.0], [0.1, 0.0]])
    y = torch.tensor([0, 1, 1, 1])  # samples 1 and 3 go against the prediction: sieved out
    clean = torch.tensor([0, 0, 1, 0])  # samples 1 and 3 carry wrong labels
    st = CORES(FixedLogits(logits), num_train=4, num_classes=2, clean_labels=clean)
    st.on_epoch_start(50, 100)
    st.train_step(torch.zeros(4, 1), y, torch.arange(4), 50)
    sel = st.score
    kept = sel <= 0
    assert kept.tolist() == [True, False, True, False]  # sel = CE - mean(-log p) > 0 iff the label is the less likely class
    m = st.epoch_metrics()
    assert m["label_precision"] == pytest.approx(1.0)  # kept 0 and 2, both clean
    assert m["label_recall"] == pytest.approx(1.0)     # the clean ones: 0 and 2
    assert m["cores_beta"] == pytest.approx(2.0)
    st.on_epoch_start(0, 100)  # early epochs keep everything
    st.train_step(torch.zeros(4, 1), y, torch.arange(4), 0)
    assert st.epoch_metrics()["label_precision"] == pytest.approx(0.5)


def test_nothing_kept_gives_a_zero_loss():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    st = CORES(FixedLogits(logits), num_train=2, num_classes=2)
    st.on_epoch_start(90, 100)
    out = st.train_step(torch.zeros(2, 1), torch.tensor([1, 0]), torch.arange(2), 90)
    assert out.loss.item() == 0.0


def test_defaults_and_bad_options():
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=10), num_classes=10, num_train=7)
    st = create_strategy("cores", context=ctx)
    assert st.options() == {"beta_max": 2.0, "uniform_prior": False, "lr_divide": True}
    assert st.score.shape == (7,) and {"score", "label_counts", "sieved_counts", "prior"} <= set(st.state_dict())
    assert set(CORES.presets) == {"quick", "paper", "fast"}
    CORESConfig(beta_max=0.0).validate()
    with pytest.raises(UsageError) as err:
        make_config("cores", {"beta_max": -1})
    assert str(err.value) == "strategy 'cores': beta_max must be >= 0, got -1.0"
    for kwargs, message in (({"num_train": 0}, "CORES needs the training-set size (num_train) for its per-sample sieve scores"),
                            ({"num_classes": 1}, "CORES needs >= 2 classes, got 1"),
                            ({"beta_max": -0.5}, "CORES beta_max must be >= 0, got -0.5")):
        with pytest.raises(UsageError) as err:
            CORES(nn.Linear(2, 2), **{"num_train": 3, "num_classes": 2, **kwargs})
        assert str(err.value) == message


def _cores(seed):
    torch.manual_seed(seed)
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=4), num_classes=4, num_train=96)
    return create_strategy("cores", context=ctx)


def test_sieve_state_survives_checkpoint_and_resume_bit_exactly(tmp_path):
    images, labels = _toy()
    labels = labels.clone()
    labels[::4] = (labels[::4] + 1) % 4
    norm = Normalize((0.5,) * 3, (0.25,) * 3)
    cfg = TrainConfig(epochs=4, batch_size=32, tta="none",
                      optim=OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant"))
    test = DeviceLoader(*_toy(40, seed=1), 40, norm, shuffle=False)
    full = _cores(0)
    result = fit(full, DeviceLoader(images, labels, 32, norm, seed=0), cfg, test_loader=test, run_dir=tmp_path / "f",
                 quiet=True, num_classes=4)
    assert result.metrics["test_acc"] > 0.5
    assert full.score.abs().sum() > 0 and torch.equal(full.label_counts, torch.bincount(labels, minlength=4).float())
    part = _cores(0)
    with pytest.raises(KeyboardInterrupt):
        fit(part, InterruptAt(images, labels, 32, norm, seed=0), cfg, test_loader=test, run_dir=tmp_path / "p",
            quiet=True, num_classes=4)
    resumed = _cores(1)
    fit(resumed, DeviceLoader(images, labels, 32, norm, seed=0), cfg, test_loader=test, run_dir=tmp_path / "p",
        resume=tmp_path / "p" / "last.pt", quiet=True, num_classes=4)
    a, b = full.state_dict(), resumed.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert result.history[-1]["cores_beta"] == pytest.approx(2.0)
