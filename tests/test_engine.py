"""The training loop: learning on real CIFAR-10, exact resume, divergence, history and metrics,
test-time augmentation, and run records."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustlab.experiment as experiment
from robustlab.data import AugmentConfig, BatchAugment, DeviceLoader, Normalize, make_splits
from robustlab.engine import TrainConfig, TrainingDiverged, fit
from robustlab.errors import UsageError
from robustlab.evaluate import tta_logits
from robustlab.experiment import Context, DataConfig, ExperimentConfig, run_experiment
from robustlab.models import create_model
from robustlab.models.base import Classifier
from robustlab.precision import resolve_precision
from robustlab.schedules import OptimConfig, warmup_cosine_factor
from robustlab.strategies import CrossEntropy, StepOutput

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
TIMING = {"seconds", "images_per_s", "train_seconds"}


def synthetic(n: int, seed: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images whose labels are learnable (class = brightest quadrant-ish pattern)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 120, (n, 3, size, size), generator=g, dtype=torch.uint8)
    rows = (labels % 4) * (size // 4)
    for i in range(n):  # a bright band whose position and channel depend on the class
        images[i, labels[i] % 3, rows[i]:rows[i] + size // 4] += 120
    return images, labels


def loaders(n_train=256, n_test=100, batch=32, seed=0, augment=None, loader_cls=DeviceLoader, val=True):
    x, y = synthetic(n_train + n_test + 64, seed)
    aug = augment or BatchAugment(AugmentConfig(crop_pad=2, flip=True), MEAN, STD)
    norm = Normalize(MEAN, STD)
    train = loader_cls(x[:n_train], y[:n_train], batch, aug, seed=seed)
    val_loader = DeviceLoader(x[n_train:n_train + 64], y[n_train:n_train + 64], 64, norm, shuffle=False) if val else None
    test = DeviceLoader(x[-n_test:], y[-n_test:], 50, norm, shuffle=False)
    return train, val_loader, test


def sgd(epochs=2, **kwargs) -> TrainConfig:
    optim = OptimConfig(optimizer="sgd", lr=0.05, weight_decay=5e-4, schedule="warmup_cosine", warmup_epochs=1)
    return TrainConfig(epochs=epochs, batch_size=32, optim=optim, tta="flip", **kwargs)


def without(d: dict, keys=TIMING) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


# ---- learning on real data --------------------------------------------------------------------

@pytest.mark.slow
def test_small_cnn_learns_real_cifar10(cifar10):
    splits = make_splits(*cifar10, val_size=0, train_size=5000, test_size=2000, seed=0)
    assert splits.test.labels.bincount().tolist() == [200] * 10
    torch.manual_seed(0)
    train = DeviceLoader(splits.train.images, splits.train.labels, 128,
                         BatchAugment(AugmentConfig(crop_pad=0, flip=True), splits.mean, splits.std), seed=0)
    test = DeviceLoader(splits.test.images, splits.test.labels, 500, Normalize(splits.mean, splits.std), shuffle=False)
    cfg = TrainConfig(epochs=3, batch_size=128, tta="none",
                      optim=OptimConfig(optimizer="adam", lr=2e-3, weight_decay=0.0, schedule="constant"))
    result = fit(CrossEntropy(create_model("small_cnn", widths=(16, 32, 64))), train, cfg, test_loader=test,
                 quiet=True, num_classes=10)
    accs = [row["test_acc"] for row in result.history]
    assert result.metrics["test_acc"] > 0.35, accs  # chance is 0.10
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.metrics["test_acc_best"] == max(accs)


# ---- resume -----------------------------------------------------------------------------------

class InterruptAt(DeviceLoader):
    """A loader that stops the run (as Ctrl-C would) when epoch `stop` (0-based) begins."""

    stop = 2

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.stop:
            raise KeyboardInterrupt
        super().set_epoch(epoch)


def new_strategy(seed: int) -> CrossEntropy:
    torch.manual_seed(seed)
    return CrossEntropy(create_model("tiny_cnn", dropout=0.3))  # dropout draws from the global RNG


def test_resumed_run_ends_exactly_like_an_uninterrupted_run(tmp_path):
    cfg = sgd(epochs=3)

    torch.manual_seed(0)
    full = new_strategy(0)
    train, val, test = loaders(n_train=512)
    ref = fit(full, train, cfg, val, test, run_dir=tmp_path / "full", quiet=True, num_classes=10)

    part = new_strategy(0)
    train, val, test = loaders(n_train=512, loader_cls=InterruptAt)
    with pytest.raises(KeyboardInterrupt):
        fit(part, train, cfg, val, test, run_dir=tmp_path / "part", quiet=True, num_classes=10)
    state = torch.load(tmp_path / "part" / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and len(state["history"]) == 2

    torch.manual_seed(999)  # the checkpoint must restore the RNG, whatever the state now
    resumed = new_strategy(1)  # other initial weights: the checkpoint must replace them
    train, val, test = loaders(n_train=512)
    out = fit(resumed, train, cfg, val, test, run_dir=tmp_path / "part", resume=tmp_path / "part" / "last.pt",
              quiet=True, num_classes=10)

    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [without(r) for r in out.history] == [without(r) for r in ref.history]
    assert len(out.history) == 3 and [r["epoch"] for r in out.history] == [1, 2, 3]
    assert without(out.metrics) == without(ref.metrics)
    assert out.best == ref.best
    # The weights really moved during training (the comparison is not of two untouched nets).
    assert not torch.equal(a["model.head.1.weight"], new_strategy(0).state_dict()["model.head.1.weight"])


def test_resume_from_a_garbage_checkpoint_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    train, val, test = loaders(n_train=64, val=False)
    with pytest.raises(UsageError, match="unreadable or corrupt"):
        fit(new_strategy(0), train, sgd(1), test_loader=test, resume=bad, quiet=True, num_classes=10)
    with pytest.raises(UsageError, match="does not exist"):
        fit(new_strategy(0), train, sgd(1), test_loader=test, resume=tmp_path / "none.pt", quiet=True, num_classes=10)


def _interrupted_then_resumed(tmp_path, make, cfg, n_train=192, val=True):
    """(uninterrupted strategy and result, resumed strategy and result): stopped when epoch 2 begins."""
    torch.manual_seed(0)
    full = make(0)
    ref = _fit(full, loaders(n_train=n_train, val=val), cfg, run_dir=tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _fit(make(0), loaders(n_train=n_train, loader_cls=InterruptAt, val=val), cfg, run_dir=tmp_path / "part")
    torch.manual_seed(999)
    resumed = make(1)
    out = _fit(resumed, loaders(n_train=n_train, val=val), cfg, run_dir=tmp_path / "part",
               resume=tmp_path / "part" / "last.pt")
    return full, ref, resumed, out


def _fit(strategy, train_val_test, cfg, **kwargs):
    train, val, test = train_val_test
    return fit(strategy, train, cfg, val, test, quiet=True, num_classes=10, **kwargs)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_resume_of_a_two_network_strategy_restores_both_networks_and_its_schedule(tmp_path):
    from robustlab.strategies.coteaching import CoTeaching

    def make(seed):
        torch.manual_seed(seed)
        return CoTeaching(create_model("tiny_cnn"), create_model("tiny_cnn"), forget_rate=0.3, num_gradual=3)

    full, ref, resumed, out = _interrupted_then_resumed(tmp_path, make, sgd(epochs=3))
    _same_weights(full, resumed)
    assert [without(r) for r in out.history] == [without(r) for r in ref.history]
    assert [r["remember_rate"] for r in out.history] == pytest.approx([1.0, 0.85, 0.7])  # official ramp, Tk 3
    assert without(out.metrics) == without(ref.metrics)  # net2 and ensemble metrics included
    assert "test_net2_acc" in out.metrics
    assert not all(torch.equal(a, b) for a, b in zip(full.model.parameters(), full.peer.parameters()))


def test_resume_keeps_the_plateau_schedules_patience_and_reductions(tmp_path):
    optim = OptimConfig(optimizer="sgd", lr=0.5, schedule="plateau", plateau_patience=0, gamma=0.5)
    cfg = TrainConfig(epochs=5, batch_size=32, optim=optim, tta="none")
    full, ref, resumed, out = _interrupted_then_resumed(tmp_path, new_strategy, cfg)
    _same_weights(full, resumed)
    assert [r["lr"] for r in out.history] == [r["lr"] for r in ref.history]
    assert len(set(r["lr"] for r in ref.history)) > 1  # the LR really dropped during the run


def test_a_run_that_stopped_early_stays_stopped_on_resume(tmp_path):
    torch.manual_seed(0)
    cfg = sgd(epochs=6, early_stop_patience=1)
    # lr 0: validation accuracy never improves after epoch 1, so the run stops after epoch 2
    cfg.optim.lr, cfg.optim.schedule = 1e-12, "constant"
    first = _fit(new_strategy(0), loaders(n_train=64), cfg, run_dir=tmp_path)
    assert first.stopped_early and len(first.history) == 2
    again = _fit(new_strategy(1), loaders(n_train=64), cfg, run_dir=tmp_path, resume=tmp_path / "last.pt")
    assert again.stopped_early and [without(r) for r in again.history] == [without(r) for r in first.history]


def test_resume_with_a_changed_training_config_is_refused(tmp_path):
    train, val, test = loaders(n_train=64, val=False)
    fit(new_strategy(0), train, sgd(1), test_loader=test, run_dir=tmp_path, quiet=True, num_classes=10)
    with pytest.raises(UsageError) as info:
        fit(new_strategy(0), train, sgd(2), test_loader=test, resume=tmp_path / "last.pt", quiet=True, num_classes=10)
    assert str(info.value) == f"{tmp_path / 'last.pt'} was written with a different training config"
    with pytest.raises(UsageError) as info:
        fit(new_strategy(0), train, sgd(1), test_loader=test, resume=tmp_path / "best.pt", quiet=True, num_classes=10)
    assert str(info.value) == f"{tmp_path / 'best.pt'} is not a resumable checkpoint (use the run's last.pt)"


# ---- divergence -------------------------------------------------------------------------------

class BadLossAt(CrossEntropy):
    """Cross-entropy whose loss becomes `value` at (epoch, step), both 0-based; counts its steps."""

    def __init__(self, model, epoch: int, step: int, value: float = float("nan")):
        super().__init__(model)
        self.at, self.value, self.calls, self._step = (epoch, step), value, 0, 0

    def on_epoch_start(self, epoch, num_epochs):
        self._step = 0

    def train_step(self, x, y, idx, epoch):
        out = super().train_step(x, y, idx, epoch)
        if (epoch, self._step) == self.at:
            out = StepOutput(out.loss * self.value, out.logits)
        self._step += 1
        self.calls += 1
        return out


@pytest.mark.parametrize("value, check_every, calls", [(float("nan"), 50, 16), (float("inf"), 1, 12), (float("nan"), 3, 14)])
def test_non_finite_loss_stops_naming_epoch_and_step(tmp_path, value, check_every, calls):
    torch.manual_seed(0)
    strategy = BadLossAt(create_model("tiny_cnn"), epoch=1, step=3, value=value)
    train, val, test = loaders(n_train=256, val=False)  # 8 steps per epoch
    with pytest.raises(TrainingDiverged) as info:
        fit(strategy, train, sgd(epochs=3, nan_check_every=check_every), test_loader=test, run_dir=tmp_path,
            quiet=True, num_classes=10)
    assert str(info.value) == (f"training diverged: the loss became NaN or inf at epoch 2, step 4; last good "
                               f"checkpoint: {tmp_path / 'last.pt'}; try a lower learning rate than 0.05 (--lr)")
    assert isinstance(info.value, UsageError)
    # Checked every step: stops right at the bad step; every 3: after the 6th step; every 50: at the epoch's end.
    assert strategy.calls == calls
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 0  # epoch 1 is kept


class NaNPredictionsAfter(CrossEntropy):
    """Finite training loss, but predictions that are NaN from (0-based) epoch `epoch` on (e.g. BatchNorm
    running statistics that overflowed): only the evaluation can see it."""

    def __init__(self, model, epoch: int):
        super().__init__(model)
        self.bad_from, self.epoch = epoch, 0

    def on_epoch_start(self, epoch, num_epochs):
        self.epoch = epoch

    @torch.no_grad()
    def predict(self, x):
        logits = self.model(x)
        return logits * float("nan") if self.epoch >= self.bad_from else logits


@pytest.mark.parametrize("val, split", [(True, "validation"), (False, "test")])
def test_non_finite_predictions_stop_naming_the_split_and_epoch(tmp_path, val, split):
    torch.manual_seed(0)
    train, val_loader, test = loaders(n_train=64, n_test=50, val=val)
    with pytest.raises(TrainingDiverged) as info:
        fit(NaNPredictionsAfter(create_model("tiny_cnn"), epoch=1), train, sgd(epochs=3), val_loader, test,
            run_dir=tmp_path, quiet=True, num_classes=10)
    assert str(info.value) == (f"training diverged: the {split} predictions became NaN or inf after epoch 2; last "
                               f"good checkpoint: {tmp_path / 'last.pt'}; try a lower learning rate than 0.05 (--lr)")
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 0  # epoch 1 is kept


# ---- history and metrics ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_epochs():
    torch.manual_seed(0)
    strategy = CrossEntropy(create_model("tiny_cnn"))
    train, val, test = loaders(n_train=256, n_test=100)
    cfg = sgd(epochs=2)
    return strategy, train, test, cfg, fit(strategy, train, cfg, val, test, quiet=True, num_classes=10)


def test_history_has_one_row_per_epoch_with_all_fields(two_epochs):
    _, train, _, cfg, result = two_epochs
    assert [r["epoch"] for r in result.history] == [1, 2]
    spe = len(train)
    for e, row in enumerate(result.history):
        assert {"train_loss", "train_acc", "val_acc", "val_loss", "test_acc", "test_loss", "lr", "seconds",
                "images_per_s"} <= row.keys()
        assert math.isfinite(row["train_loss"]) and 0 <= row["train_acc"] <= 1
        assert 0 <= row["val_acc"] <= 1 and 0 <= row["test_acc"] <= 1
        assert row["seconds"] > 0 and row["images_per_s"] == pytest.approx(256 / row["seconds"])
        # The LR at the start of each epoch: the scheduler steps every iteration.
        expected = cfg.optim.lr * warmup_cosine_factor(e * spe, spe, 2 * spe)
        assert row["lr"] == pytest.approx(expected)
    assert result.history[0]["lr"] == pytest.approx(0.05 / 8)
    assert result.seconds == pytest.approx(sum(r["seconds"] for r in result.history))
    assert result.metrics["train_seconds"] == pytest.approx(result.seconds)
    assert result.best["epoch"] in (1, 2)
    assert result.best["val_acc"] == max(r["val_acc"] for r in result.history)


def test_final_metrics_match_a_direct_evaluation(two_epochs):
    strategy, _, test, cfg, result = two_epochs
    m = result.metrics
    strategy.eval()
    assert result.precision["precision"] == resolve_precision(cfg.precision, "cpu").name
    with torch.no_grad(), resolve_precision(cfg.precision, "cpu").autocast():  # the policy fit() used
        x = Normalize(MEAN, STD)(test.images)
        logits = strategy.model(x)
    assert m["test_acc"] == pytest.approx((logits.argmax(1) == test.labels).float().mean().item())
    assert m["test_loss"] == pytest.approx(F.cross_entropy(logits, test.labels).item(), rel=1e-5)
    assert m["test_acc"] == result.history[-1]["test_acc"]
    assert m["test_acc_best"] == max(r["test_acc"] for r in result.history)
    assert len(m["test_per_class_acc"]) == 10 and sum(map(sum, m["test_confusion"])) == 100
    # Cost = loss + wd / 2 * sum of squared conv/linear kernels (no biases, no norm parameters).
    l2 = sum(float(mod.weight.detach().pow(2).sum()) for mod in strategy.model.modules() if isinstance(mod, (nn.Conv2d, nn.Linear)))
    assert m["l2_sum"] == pytest.approx(l2, rel=1e-6)
    assert m["test_cost"] == pytest.approx(m["test_loss"] + cfg.optim.weight_decay / 2 * l2, rel=1e-9)
    assert m["test_cost"] > m["test_loss"]


class FlipInvariant(Classifier):
    """Logits of x + mirror(x): exactly the same for an image and its mirror."""

    def __init__(self, size: int = 16):
        super().__init__()
        self.num_features = 3 * size * size
        self.head = nn.Linear(self.num_features, 10)

    def forward_features(self, x):
        return (x + x.flip(3)).flatten(1)


def test_flip_tta_of_a_flip_invariant_model_equals_plain_accuracy():
    torch.manual_seed(0)
    train, _, test = loaders(n_train=128, val=False)
    result = fit(CrossEntropy(FlipInvariant()), train, sgd(epochs=1), test_loader=test, quiet=True)  # infers 10 classes
    assert result.metrics["test_acc_tta"] == result.metrics["test_acc"]
    assert 0.0 < result.metrics["test_acc"] <= 1.0


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x = torch.randn(6, 3, 4, 4)
    expected = (net(x) + net(x.flip(3))) / 2
    assert torch.allclose(tta_logits(net, x, "flip"), expected, atol=1e-6)
    assert not torch.allclose(tta_logits(net, x, "flip"), net(x), atol=1e-3)
    assert torch.equal(tta_logits(net, x, "none"), net(x))
    with pytest.raises(UsageError, match="unknown TTA mode"):
        tta_logits(net, x, "rotate")


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, "epochs must be >= 1"), ({"batch_size": 0}, "batch size"), ({"tta": "x"}, "TTA"),
    ({"early_stop_patience": -1}, "patience"), ({"optim": OptimConfig(lr=0)}, "learning rate"),
])
def test_bad_train_config_raises_usage_error(kwargs, match):
    with pytest.raises(UsageError, match=match):
        TrainConfig(**kwargs).validate()


# ---- run records ------------------------------------------------------------------------------

def tiny_experiment(seed=0) -> ExperimentConfig:
    return ExperimentConfig(data=DataConfig(dataset="cifar10", val_size=20), model="tiny_cnn", seed=seed,
                            train=TrainConfig(epochs=1, batch_size=32, tta="flip"), tag="tiny")


def test_run_experiment_writes_a_record_and_reuses_it(tiny_cifar10, tmp_path, monkeypatch):
    ctx = Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "cache"), device="cpu", quiet=True)
    cfg = tiny_experiment()
    record = run_experiment(cfg, tmp_path / "results", ctx)
    path = tmp_path / "results" / "records" / f"{cfg.run_id}.json"
    assert path.is_file() and cfg.run_id.startswith("tiny-s0-")
    stored = json.loads(path.read_text())
    assert stored["run_id"] == record["run_id"] and stored["metrics"]["test_acc"] == record["metrics"]["test_acc"]
    assert stored["data"]["train"] == 80 and stored["data"]["val"] == 20 and stored["data"]["test"] == 40
    assert stored["data"]["classes"][0] == "airplane" and len(stored["history"]) == 1
    assert 0 <= stored["metrics"]["test_acc"] <= 1 and "test_acc_tta" in stored["metrics"]
    assert stored["config"]["model"] == "tiny_cnn"
    assert (tmp_path / "results" / "runs" / cfg.run_id / "last.pt").is_file()

    monkeypatch.setattr(experiment, "fit", lambda *a, **k: pytest.fail("trained although the record exists"))
    again = run_experiment(tiny_experiment(), tmp_path / "results", ctx)
    assert again == stored
    # Another seed is another run.
    assert tiny_experiment(seed=1).run_id != cfg.run_id


def test_truncated_record_is_a_usage_error(tiny_cifar10, tmp_path, monkeypatch):
    ctx = Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "cache"), device="cpu", quiet=True)
    cfg = tiny_experiment()
    run_experiment(cfg, tmp_path / "results", ctx)
    path = tmp_path / "results" / "records" / f"{cfg.run_id}.json"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    monkeypatch.setattr(experiment, "fit", lambda *a, **k: pytest.fail("trained over a damaged record"))
    with pytest.raises(UsageError, match=r"corrupt or truncated.*delete it to recompute") as info:
        run_experiment(cfg, tmp_path / "results", ctx)
    assert str(path) in str(info.value)
    path.write_text('{"run_id": "x"}')  # valid JSON but not a record
    with pytest.raises(UsageError, match="not a complete run record"):
        run_experiment(cfg, tmp_path / "results", ctx)


def test_after_step_hook_runs_once_per_optimizer_step_on_the_updated_weights():
    class Watch(CrossEntropy):
        def __init__(self, model):
            super().__init__(model)
            self.calls, self.seen = [], []

        def train_step(self, x, y, idx, epoch):
            self.seen.append(self.model.head.weight.detach().clone())
            return super().train_step(x, y, idx, epoch)

        def after_step(self):
            self.calls.append(self.model.head.weight.detach().clone())

    torch.manual_seed(0)
    images = torch.randint(0, 255, (40, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(40) % 4
    norm = Normalize((0.5,) * 3, (0.25,) * 3)
    st = Watch(create_model("tiny_cnn", num_classes=4))
    cfg = TrainConfig(epochs=2, batch_size=16, tta="none",
                      optim=OptimConfig(optimizer="sgd", lr=0.1, weight_decay=0.0, schedule="constant"))
    fit(st, DeviceLoader(images, labels, 16, norm, seed=0), cfg, quiet=True, num_classes=4)
    assert len(st.calls) == len(st.seen) == 6  # 3 batches (16, 16, 8) x 2 epochs
    for i, after in enumerate(st.calls):  # each call sees the step's update: the next step starts from it
        assert not torch.equal(after, st.seen[i])
        if i + 1 < len(st.seen):
            assert torch.equal(after, st.seen[i + 1])


# ---- gradient clipping, class inference, what a run prints ---------------------------------------

def one_step_change(grad_clip: float) -> tuple[float, float]:
    """(norm of the weight change of one plain SGD step at lr 1, norm of that step's gradient)."""
    torch.manual_seed(0)
    images = torch.randint(0, 255, (32, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(32) % 4
    norm = Normalize((0.5,) * 3, (0.25,) * 3)
    st = CrossEntropy(create_model("tiny_cnn", num_classes=4))
    before = [p.detach().clone() for p in st.parameters()]
    probe = CrossEntropy(create_model("tiny_cnn", num_classes=4))
    probe.load_state_dict(st.state_dict())
    probe.train()
    probe.train_step(norm(images), labels, torch.arange(32), 0).loss.backward()
    grad = torch.sqrt(sum((p.grad ** 2).sum() for p in probe.parameters())).item()
    cfg = TrainConfig(epochs=1, batch_size=32, tta="none", grad_clip=grad_clip, precision="fp32",
                      optim=OptimConfig(optimizer="sgd", lr=1.0, momentum=0.0, nesterov=False, weight_decay=0.0,
                                        schedule="constant"))
    fit(st, DeviceLoader(images, labels, 32, norm, seed=0), cfg, quiet=True, num_classes=4)
    change = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(st.parameters(), before))).item()
    return change, grad


def test_grad_clip_caps_the_global_gradient_norm_of_a_step():
    free, grad = one_step_change(0.0)
    assert free == pytest.approx(grad, rel=1e-4)  # lr 1, no momentum: the step is the gradient
    clipped, _ = one_step_change(grad / 4)
    assert clipped == pytest.approx(grad / 4, rel=1e-3)
    loose, _ = one_step_change(grad * 4)  # a cap above the norm changes nothing
    assert loose == pytest.approx(grad, rel=1e-4)


def test_the_number_of_classes_is_read_off_the_head():
    from types import SimpleNamespace

    from robustlab.engine import _infer_classes

    assert _infer_classes(CrossEntropy(create_model("tiny_cnn", num_classes=7))) == 7
    mlp = SimpleNamespace(model=SimpleNamespace(head=nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5),
                                                                   nn.ReLU(), nn.Linear(5, 3))))
    assert _infer_classes(mlp) == 3  # the last linear layer of a head without out_features
    for headless in (SimpleNamespace(model=nn.Identity()), SimpleNamespace(model=SimpleNamespace(head=nn.ReLU()))):
        with pytest.raises(UsageError) as err:
            _infer_classes(headless)
        assert str(err.value) == "cannot infer the number of classes; pass num_classes to fit()"


def test_summary_line_lists_the_rows_numbers():
    from robustlab.engine import _summary

    row = {"epoch": 3, "lr": 0.012345, "train_loss": 1.5, "train_acc": 0.25, "val_acc": 0.5, "test_acc": 0.75,
           "label_precision": 0.875, "seconds": 2.04, "images_per_s": 1234.4}
    assert _summary(row, 10) == ("epoch 3/10 | lr 0.01235 | train_loss 1.5000 | train_acc 0.2500 | val_acc 0.5000 | "
                                 "test_acc 0.7500 | label_precision 0.8750 | 2.0s (1234 img/s)")
    bare = {"epoch": 1, "lr": 1.0, "train_loss": 0.25, "seconds": 1.0, "images_per_s": 10.0}
    assert _summary(bare, 2) == "epoch 1/2 | lr 1 | train_loss 0.2500 | 1.0s (10 img/s)"


def test_a_run_prints_one_summary_per_epoch_unless_quiet(tmp_path, capsys):
    cfg = sgd(epochs=2)
    train, val, test = loaders(n_train=64)
    fit(new_strategy(0), train, cfg, val, test, run_dir=tmp_path / "a", quiet=True, num_classes=10)
    assert capsys.readouterr().err == ""
    fit(new_strategy(0), train, cfg, val, test, run_dir=tmp_path / "b", num_classes=10)  # not quiet by default
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ") and " | lr " in line]
    assert [line.split(" | ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]


def test_resume_and_early_stop_are_announced(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = sgd(epochs=6, early_stop_patience=1)
    cfg.optim.lr, cfg.optim.schedule = 1e-12, "constant"  # validation never improves after epoch 1
    train, val, test = loaders(n_train=64)
    fit(new_strategy(0), train, cfg, val, test, run_dir=tmp_path, quiet=False, num_classes=10)
    assert "early stop: no validation improvement for 1 epochs" in capsys.readouterr().err.splitlines()
    fit(new_strategy(0), train, cfg, val, test, run_dir=tmp_path, resume=tmp_path / "last.pt", quiet=False,
        num_classes=10)
    assert f"resumed from {tmp_path / 'last.pt'} after epoch 2" in capsys.readouterr().err.splitlines()


def test_a_run_record_holds_what_a_rerun_and_a_table_need(tiny_cifar10, tmp_path):
    from robustlab.prepare import prepare_data
    from robustlab.recipes import recipe_parts

    ctx = Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "cache"), device="cpu", quiet=True,
                  tensorboard=False)
    from robustlab.experiment import StrategyConfig

    cfg = tiny_experiment()
    cfg.strategy = StrategyConfig("ce", {"smoothing": 0.1})
    record = run_experiment(cfg, tmp_path / "results", ctx)
    splits = prepare_data(cfg.data, cfg.seed, ctx).splits
    model = create_model("tiny_cnn")
    assert record["num_params"] == sum(p.numel() for p in model.parameters())
    assert record["data"] == {"train": 80, "val": 20, "test": 40, "mean": splits.mean, "std": splits.std,
                              "classes": splits.classes}
    assert record["recipe_parts"] == recipe_parts(cfg, record["strategy_options"])
    assert "label smoothing 0.1" in record["recipe_parts"]  # the strategy's own options count
    assert record["config"] == cfg.key() and record["strategy_options"] == {"smoothing": 0.1}
    assert record["environment"]["threads"] == torch.get_num_threads()
    assert record["environment"]["deterministic"] is False and record["environment"]["torch"] == torch.__version__
    assert record["checkpoint"] == str(tmp_path / "results" / "runs" / cfg.run_id / "last.pt")
    assert record["stopped_early"] is False and record["warnings"] == [] and record["dynamics"] is None
    assert 0 < record["wall_seconds"] < 600 and record["precision"]["requested"] == "auto"
    assert record["precision"]["device"] == "cpu"
    assert record["best"]["epoch"] == 1 and len(record["history"]) == 1
    assert not list((tmp_path / "results" / "runs" / cfg.run_id).rglob("events.out.tfevents*"))  # tensorboard off


def test_resume_from_a_named_checkpoint_continues_that_run(tiny_cifar10, tmp_path):
    ctx = Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "cache"), device="cpu", quiet=True)
    short = tiny_experiment()
    run_experiment(short, tmp_path / "a", ctx)
    longer = tiny_experiment()
    longer.train.epochs = 2
    full = run_experiment(longer, tmp_path / "full", ctx)
    # A checkpoint of the 2-epoch run after its first epoch, handed over by path.
    part_cfg = tiny_experiment()
    part_cfg.train.epochs = 2
    from robustlab.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(tmp_path / "full" / "runs" / longer.run_id / "last.pt")
    first = load_checkpoint(tmp_path / "a" / "runs" / short.run_id / "last.pt")
    assert state["epoch"] == 1 and first["epoch"] == 0
    with pytest.raises(UsageError, match="different training config"):  # a 1-epoch run's checkpoint does not fit
        run_experiment(part_cfg, tmp_path / "b", replace(ctx, resume=str(tmp_path / "a" / "runs" / short.run_id / "last.pt")))
    resumed = run_experiment(part_cfg, tmp_path / "c", replace(ctx, resume=str(tmp_path / "full" / "runs" / longer.run_id / "last.pt")))
    assert len(resumed["history"]) == 2 and resumed["history"] == full["history"]  # nothing left to train
    assert resumed["metrics"]["test_acc"] == full["metrics"]["test_acc"]


def test_a_run_that_diverges_before_its_first_checkpoint_names_none(tmp_path):
    torch.manual_seed(0)
    train, val, test = loaders(n_train=64, n_test=50)
    with pytest.raises(TrainingDiverged) as info:
        fit(NaNPredictionsAfter(create_model("tiny_cnn"), epoch=0), train, sgd(epochs=2), val, test,
            run_dir=tmp_path, quiet=True, num_classes=10)
    assert str(info.value) == ("training diverged: the validation predictions became NaN or inf after epoch 1; "
                               "try a lower learning rate than 0.05 (--lr)")
    with pytest.raises(TrainingDiverged) as info:  # no run folder at all
        fit(NaNPredictionsAfter(create_model("tiny_cnn"), epoch=0), train, sgd(epochs=2), val, test,
            quiet=True, num_classes=10)
    assert "checkpoint" not in str(info.value)


def test_a_strategy_that_does_not_classify_gets_no_accuracies(tiny_cifar10, tmp_path):
    from robustlab.experiment import StrategyConfig

    ctx = Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "cache"), device="cpu", quiet=True)
    cfg = tiny_experiment()
    cfg.strategy = StrategyConfig("supcon_pretrain")
    cfg.data.val_size = 0
    record = run_experiment(cfg, tmp_path / "results", ctx)
    assert record["data"]["val"] == 0 and record["data"]["train"] == 100
    assert record["metrics"].keys() == {"train_seconds", "images_per_s"}
    assert not any(k.startswith(("val_", "test_")) for k in record["history"][0])
    assert "train_acc" not in record["history"][0]  # no logits, no training accuracy
    assert record["best"]["epoch"] == 1 and "val_acc" not in record["best"]


def test_run_experiment_resumes_an_interrupted_run_from_its_last_checkpoint(tiny_cifar10, tmp_path, monkeypatch):
    ctx = Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "cache"), device="cpu", quiet=True,
                  resume=True)
    cfg = tiny_experiment()
    cfg.train.epochs = 2
    full = run_experiment(cfg, tmp_path / "full", ctx)  # --resume on a fresh folder is a fresh run
    assert len(full["history"]) == 2
    real = DeviceLoader.set_epoch
    started = []

    def interrupt_at_epoch_2(self, epoch):
        if self.shuffle:  # the training loader
            started.append(epoch)
            if epoch == 1 and len(started) == 2:
                raise KeyboardInterrupt
        real(self, epoch)

    monkeypatch.setattr(DeviceLoader, "set_epoch", interrupt_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "part", ctx)
    assert started == [0, 1]
    resumed = run_experiment(cfg, tmp_path / "part", ctx)
    assert started == [0, 1, 1]  # only the unfinished epoch is trained again
    assert [without(r) for r in resumed["history"]] == [without(r) for r in full["history"]]
    assert resumed["metrics"]["test_acc"] == full["metrics"]["test_acc"]
    fresh = run_experiment(cfg, tmp_path / "again", replace(ctx, resume=False))
    assert started == [0, 1, 1, 0, 1] and [without(r) for r in fresh["history"]] == [without(r) for r in full["history"]]


def test_a_strategy_that_needs_a_train_pass_refuses_to_run_without_one():
    class NeedsPass(CrossEntropy):
        needs_train_pass = True
        name = "needs_pass"

    train, val, test = loaders(n_train=64)
    with pytest.raises(UsageError) as err:
        fit(NeedsPass(create_model("tiny_cnn")), train, sgd(1), val, test, quiet=True, num_classes=10)
    assert str(err.value) == ("strategy 'needs_pass' needs a pass over the training set each epoch: give fit() a "
                              "train_pass_loader")


def test_per_epoch_test_metrics_use_the_runs_precision():
    """Under bf16 the epoch's test row and the final metrics come from the same autocast evaluation."""
    torch.manual_seed(0)
    train, val, test = loaders(n_train=64)
    cfg = sgd(epochs=1, precision="bf16")
    result = fit(new_strategy(0), train, cfg, val, test, quiet=True, num_classes=10)
    assert result.precision["precision"] == "bf16"
    assert result.history[-1]["test_loss"] == result.metrics["test_loss"]
    assert result.history[-1]["test_acc"] == result.metrics["test_acc"]


class EpochProbe(CrossEntropy):
    """Cross-entropy that records the epoch hooks it receives and whether its train pass runs under autocast."""

    needs_train_pass = True
    name = "epoch_probe"

    def __init__(self, model):
        super().__init__(model)
        self.starts, self.passes = [], []

    def on_epoch_start(self, epoch, num_epochs):
        self.starts.append((epoch, num_epochs))

    def on_train_pass(self, epoch, loader):
        self.passes.append((epoch, torch.is_autocast_enabled("cpu"), torch.is_grad_enabled(), self.training))

    def train_step(self, x, y, idx, epoch):
        self.step_autocast = torch.is_autocast_enabled("cpu")
        return super().train_step(x, y, idx, epoch)


class ScheduledLayer(nn.Module):
    """A layer with an epoch schedule of its own (as airbench's whitening bias)."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def begin_epoch(self, epoch):
        self.epochs.append(epoch)

    def forward(self, x):
        return x


@pytest.mark.parametrize("precision, autocast", [("fp32", False), ("bf16", True)])
def test_epoch_hooks_reach_the_strategy_and_its_scheduled_layers(precision, autocast):
    torch.manual_seed(0)
    model = create_model("tiny_cnn")
    model.scheduled = ScheduledLayer()
    strategy = EpochProbe(model)
    strategy.begin_epoch = lambda epoch: pytest.fail("the strategy itself is not a scheduled layer")
    train, val, test = loaders(n_train=64)
    fit(strategy, train, sgd(epochs=2, precision=precision), val, test, quiet=True, num_classes=10,
        train_pass_loader=train)
    assert strategy.starts == [(0, 2), (1, 2)]
    assert model.scheduled.epochs == [0, 1]
    assert strategy.passes == [(0, autocast, False, False), (1, autocast, False, False)]  # eval mode, no grad
    assert strategy.step_autocast is autocast  # bf16 autocast in training steps only when the run asks for it


def test_lookahead_hears_every_step_with_its_global_index(monkeypatch):
    import robustlab.engine as engine

    calls = []
    real = engine.Lookahead.after_step

    def spy(self, strategy, epoch, step, total):
        calls.append((strategy is st, epoch, step, total))
        return real(self, strategy, epoch, step, total)

    monkeypatch.setattr(engine.Lookahead, "after_step", spy)
    torch.manual_seed(0)
    st = new_strategy(0)
    train, val, test = loaders(n_train=70)  # batches of 32, 32, 6
    fit(st, train, sgd(epochs=2), val, test, quiet=True, num_classes=10)
    assert calls == [(True, e, e * 3 + s + 1, 6) for e in range(2) for s in range(3)]


def test_train_loss_is_the_sample_weighted_mean_of_the_batch_losses():
    class Recorded(CrossEntropy):
        def __init__(self, model):
            super().__init__(model)
            self.batches = []

        def train_step(self, x, y, idx, epoch):
            out = super().train_step(x, y, idx, epoch)
            self.batches.append((out.loss.item(), len(y), (out.logits.argmax(1) == y).sum().item()))
            return out

    torch.manual_seed(0)
    st = Recorded(create_model("tiny_cnn"))
    train, val, test = loaders(n_train=70)
    result = fit(st, train, sgd(epochs=1, precision="fp32"), val, test, quiet=True, num_classes=10)
    assert [n for _, n, _ in st.batches] == [32, 32, 6]
    want = sum(loss * n for loss, n, _ in st.batches) / 70
    assert result.history[0]["train_loss"] == pytest.approx(want, rel=1e-6)
    assert result.history[0]["train_acc"] == pytest.approx(sum(c for *_, c in st.batches) / 70)


def test_train_accuracy_is_measured_against_the_strategys_own_targets():
    class ShiftedTargets(CrossEntropy):
        def train_step(self, x, y, idx, epoch):
            out = super().train_step(x, y, idx, epoch)
            self.last = (out.logits.argmax(1) == (y + 1) % 10).float().mean().item()
            self.plain = (out.logits.argmax(1) == y).float().mean().item()
            return StepOutput(out.loss, out.logits, targets=(y + 1) % 10)

    torch.manual_seed(0)
    st = ShiftedTargets(create_model("tiny_cnn"))
    train, val, test = loaders(n_train=64)
    result = fit(st, DeviceLoader(train.images, train.labels, 64, train.augment, seed=0), sgd(epochs=1), val, test,
                 quiet=True, num_classes=10)
    assert result.history[0]["train_acc"] == pytest.approx(st.last) and st.last != st.plain


def test_a_strategy_without_trainable_parameters_is_refused_and_one_tensor_is_enough():
    frozen = CrossEntropy(create_model("tiny_cnn"))
    for p in frozen.parameters():
        p.requires_grad_(False)
    train, val, test = loaders(n_train=64)
    with pytest.raises(UsageError) as err:
        fit(frozen, train, sgd(1), val, test, quiet=True, num_classes=10)
    assert str(err.value) == "the strategy has no trainable parameters"
    head_only = CrossEntropy(create_model("tiny_cnn"))
    for name, p in head_only.named_parameters():
        p.requires_grad_(name == "model.head.weight")
    before = head_only.model.head.weight.detach().clone()
    fit(head_only, train, sgd(1), val, test, quiet=True, num_classes=10)
    assert not torch.equal(head_only.model.head.weight, before)


def test_a_resumed_run_with_lookahead_weights_ends_like_an_uninterrupted_one(tmp_path):
    from robustlab.settings import LookaheadConfig

    cfg = sgd(epochs=3, lookahead=LookaheadConfig(start_epoch=1, every=2, decay=0.9, power=1.0))
    torch.manual_seed(0)
    full = new_strategy(0)
    train, val, test = loaders(n_train=256)
    ref = fit(full, train, cfg, val, test, run_dir=tmp_path / "full", quiet=True, num_classes=10)
    torch.manual_seed(0)
    part = new_strategy(0)
    train, val, test = loaders(n_train=256, loader_cls=InterruptAt)
    with pytest.raises(KeyboardInterrupt):
        fit(part, train, cfg, val, test, run_dir=tmp_path / "part", quiet=True, num_classes=10)
    assert torch.load(tmp_path / "part" / "last.pt", weights_only=False)["lookahead"]  # the EMA weights were saved
    resumed = new_strategy(1)
    train, val, test = loaders(n_train=256)
    out = fit(resumed, train, cfg, val, test, run_dir=tmp_path / "part", resume=tmp_path / "part" / "last.pt",
              quiet=True, num_classes=10)
    _same_weights(full, resumed)
    assert [without(r) for r in out.history] == [without(r) for r in ref.history]


def test_resume_is_silent_when_quiet_and_old_checkpoints_without_the_early_stop_flag_resume(tmp_path, capsys):
    cfg = sgd(epochs=2)
    train, val, test = loaders(n_train=64, loader_cls=InterruptAt)
    InterruptAt.stop = 1
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(new_strategy(0), train, cfg, val, test, run_dir=tmp_path, quiet=True, num_classes=10)
    finally:
        InterruptAt.stop = 2
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    del state["stopped_early"]  # written before the flag existed
    torch.save(state, tmp_path / "last.pt")
    capsys.readouterr()
    train, val, test = loaders(n_train=64)
    out = fit(new_strategy(0), train, cfg, val, test, run_dir=tmp_path, resume=tmp_path / "last.pt", quiet=True,
              num_classes=10)
    assert len(out.history) == 2 and not out.stopped_early
    assert capsys.readouterr().err == ""


def test_resume_into_another_model_names_the_checkpoint_and_the_mismatch(tmp_path):
    train, val, test = loaders(n_train=64)
    fit(new_strategy(0), train, sgd(1), val, test, run_dir=tmp_path, quiet=True, num_classes=10)
    other = CrossEntropy(create_model("tiny_cnn", num_classes=4))
    with pytest.raises(UsageError) as err:
        fit(other, train, sgd(1), val, test, resume=tmp_path / "last.pt", quiet=True, num_classes=10)
    assert str(err.value) == (f"{tmp_path / 'last.pt'} does not fit this model (Error(s) in loading state_dict for "
                              f"CrossEntropy:)")
