"""The per-sample pass over the training set (`needs_train_pass` / `on_train_pass`) as the engine
and run_experiment drive it: in eval mode with BatchNorm statistics untouched, over the noisy labels
in dataset order without augmentation, on every epoch including the first one after a resume; and
the warning (kept in the run record) for a run that never leaves its strategy's warm-up."""
from __future__ import annotations

import pytest
import torch

from robustlab.config import Context, DataConfig, ExperimentConfig, StrategyConfig
from robustlab.data import AugmentConfig, BatchAugment, DeviceLoader, Normalize
from robustlab.data.augment import MultiView
from robustlab.engine import TrainConfig, fit, warmup_warning
from robustlab.experiment import prepare_data, run_experiment
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import BuildContext, CrossEntropy, create_strategy
from robustlab.strategies.dividemix import DivideMix

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


# ---- a DivideMix run through run_experiment ---------------------------------------------------

def dividemix_experiment(epochs: int, warmup: int) -> ExperimentConfig:
    return ExperimentConfig(
        data=DataConfig(dataset="cifar10", val_size=20, noise_type="symmetric", noise_rate=0.4), model="tiny_cnn",
        strategy=StrategyConfig("dividemix", {"warmup_epochs": warmup}), seed=0, tag="dm",
        train=TrainConfig(epochs=epochs, batch_size=32, tta="none",
                          optim=OptimConfig(optimizer="sgd", lr=0.02, schedule="constant")))


def _running_stats(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running_" in k or "num_batches" in k}


@pytest.fixture
def spied_dividemix_run(tiny_cifar10, tmp_path, monkeypatch):
    """A 2-epoch DivideMix run (1 warm-up epoch) whose train passes are recorded: the modules in
    training mode when the pass starts, BatchNorm statistics before and after it, and what the
    loader hands over."""
    calls = []
    original = DivideMix.on_train_pass

    def spy(self, epoch, loader):
        seen = [(x.clone(), y.clone(), idx.clone()) for x, y, idx in loader]
        before = _running_stats(self)
        training = [name for name, m in self.named_modules() if m.training]
        original(self, epoch, loader)
        calls.append({"epoch": epoch, "training": training, "before": before, "after": _running_stats(self),
                      "x": torch.cat([s[0] for s in seen]), "y": torch.cat([s[1] for s in seen]),
                      "idx": torch.cat([s[2] for s in seen])})

    monkeypatch.setattr(DivideMix, "on_train_pass", spy)
    ctx = Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "cache"), device="cpu", quiet=True)
    cfg = dividemix_experiment(epochs=2, warmup=1)
    record = run_experiment(cfg, tmp_path / "results", ctx)
    return cfg, ctx, record, calls


def test_dividemix_pass_runs_every_epoch_and_divides_after_the_warm_up(spied_dividemix_run):
    cfg, ctx, record, calls = spied_dividemix_run
    assert [c["epoch"] for c in calls] == [0, 1]
    assert ["clean_fraction" in row for row in record["history"]] == [False, True]  # divided from epoch 2 on
    assert record["warnings"] == []  # 2 epochs > 1 warm-up epoch


def test_dividemix_pass_runs_both_networks_in_eval_mode_and_leaves_batchnorm_alone(spied_dividemix_run):
    cfg, ctx, record, calls = spied_dividemix_run
    for call in calls:
        assert call["training"] == [], f"modules in train mode during the pass: {call['training'][:3]}"
        assert call["before"].keys() and call["before"].keys() == call["after"].keys()
        for key, value in call["before"].items():
            assert torch.equal(value, call["after"][key]), f"the pass moved {key}"
    # The dividing pass did run both networks over the data (and the BN statistics did move in training).
    divided = calls[1]
    assert any(not torch.equal(calls[0]["before"][k], divided["before"][k]) for k in divided["before"])


def test_dividemix_pass_gets_the_noisy_labels_unaugmented_in_dataset_order(spied_dividemix_run):
    cfg, ctx, record, calls = spied_dividemix_run
    data = prepare_data(cfg.data, cfg.seed, ctx)  # the same noisy labels: the noise is seeded by the run
    noisy, clean = data.splits.train.labels, data.clean_train_labels
    flipped = int((noisy != clean).sum())
    assert flipped > 0 and flipped == round(record["noise"]["realized_rate"] * len(noisy))
    expected_x = Normalize(data.splits.mean, data.splits.std)(data.splits.train.images)
    for call in calls:
        assert torch.equal(call["idx"], torch.arange(len(noisy)))
        assert torch.equal(call["y"], noisy), "the train pass must see the noisy labels the network trains on"
        assert torch.allclose(call["x"], expected_x)


def test_a_run_no_longer_than_the_warm_up_warns_and_says_so_in_its_record(tiny_cifar10, tmp_path, capsys):
    ctx = Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "cache"), device="cpu", quiet=True)
    record = run_experiment(dividemix_experiment(epochs=1, warmup=1), tmp_path / "results", ctx)
    assert len(record["warnings"]) == 1
    assert "'dividemix' never leaves its warm-up: 1 warm-up epoch(s) and the run trains 1" in record["warnings"][0]
    assert f"warning: {record['warnings'][0]}" in capsys.readouterr().err  # printed although quiet
    assert "clean_fraction" not in record["history"][0]  # indeed never divided


@pytest.mark.parametrize("warmup, epochs, warns", [(2, 1, True), (2, 2, True), (2, 3, False), (0, 1, False)])
def test_dividemix_warns_exactly_when_its_epochs_do_not_exceed_the_warm_up(warmup, epochs, warns):
    st = DivideMix(create_model("tiny_cnn"), create_model("tiny_cnn"), num_train=8, num_classes=10,
                   warmup_epochs=warmup)
    assert st.warmup_length() == warmup
    note = warmup_warning(st, epochs)
    assert (note is not None) == warns
    if warns:
        assert note.startswith(f"strategy 'dividemix' never leaves its warm-up: {warmup} warm-up epoch(s) and the "
                               f"run trains {epochs}")


@pytest.mark.parametrize("truncate_k, prune_start, epochs, length, warns",
                         [(0.5, 3, 2, 2, True), (0.5, 3, 3, 2, False), (None, 40, 2, 0, False)])
def test_truncated_gce_warm_up_is_the_epochs_before_its_first_pruning(truncate_k, prune_start, epochs, length, warns):
    from robustlab.strategies.gce import GeneralizedCE

    st = GeneralizedCE(create_model("tiny_cnn"), truncate_k=truncate_k, num_train=8, prune_start=prune_start,
                       prune_every=1)
    assert st.warmup_length() == length
    assert (warmup_warning(st, epochs) is not None) == warns
    # The first pruning pass falls on 0-based epoch `length` exactly.
    assert [st.prunes_before(e) for e in range(length + 1)] == [False] * length + [truncate_k is not None]


def test_a_strategy_without_warm_up_never_warns():
    st = CrossEntropy(create_model("tiny_cnn"))
    assert st.warmup_length() == 0 and warmup_warning(st, 1) is None


# ---- resume of a strategy with a train pass ---------------------------------------------------

def _toy(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 100, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    for i in range(n):  # a bright channel and half per class makes the labels learnable
        images[i, labels[i] % 3, : 4 if labels[i] < 3 else 8] += 120
    flip = torch.rand(n, generator=g) < 0.3
    return images, torch.where(flip, (labels + 1) % 4, labels), labels


class StopAt(DeviceLoader):
    """A training loader that stops the run (as Ctrl-C would) when epoch `stop` (0-based) begins."""

    stop = 2

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.stop:
            raise KeyboardInterrupt
        super().set_epoch(epoch)


def _dividemix(seed: int, clean: torch.Tensor):
    torch.manual_seed(seed)
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=4), num_classes=4, num_train=len(clean),
                       noise_rate=0.3, clean_train_labels=clean)
    return create_strategy("dividemix", context=ctx, warmup_epochs=1, lambda_u=25)


def _truncated_gce(seed: int, clean: torch.Tensor):
    torch.manual_seed(seed)
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=4), num_classes=4, num_train=len(clean),
                       noise_rate=0.3, clean_train_labels=clean)
    return create_strategy("gce", context=ctx, truncate_k=0.3, prune_start=2, prune_every=1)


@pytest.mark.parametrize("make", [_dividemix, _truncated_gce], ids=["dividemix", "truncated_gce"])
def test_resume_runs_the_train_pass_on_its_first_epoch_and_ends_like_an_uninterrupted_run(make, tmp_path):
    images, noisy, clean = _toy(96)
    views = 2 if make is _dividemix else 1
    augment = BatchAugment(AugmentConfig(crop_pad=1, flip=True), MEAN, STD)
    augment = MultiView(augment, views) if views > 1 else augment
    cfg = TrainConfig(epochs=4, batch_size=32, tta="none",
                      optim=OptimConfig(optimizer="sgd", lr=0.05, schedule="constant"))

    def run(strategy, loader_cls=DeviceLoader, **kwargs):
        train = loader_cls(images, noisy, 32, augment, seed=0)
        whole = DeviceLoader(images, noisy, 48, Normalize(MEAN, STD), shuffle=False)
        return fit(strategy, train, cfg, quiet=True, num_classes=4, train_pass_loader=whole, **kwargs)

    passes = []
    full = make(0, clean)
    original = type(full).on_train_pass
    type(full).on_train_pass = lambda self, epoch, loader: (passes.append(epoch), original(self, epoch, loader))[1]
    try:
        ref = run(full, run_dir=tmp_path / "full")
        with pytest.raises(KeyboardInterrupt):
            run(make(0, clean), StopAt, run_dir=tmp_path / "part")
        torch.manual_seed(999)  # the checkpoint restores the RNG
        resumed = make(1, clean)  # other weights: the checkpoint replaces them
        out = run(resumed, run_dir=tmp_path / "part", resume=tmp_path / "part" / "last.pt")
    finally:
        type(full).on_train_pass = original
    # full run; interrupted run (stopped as epoch 3's batches begin, after its pass); resumed run
    assert passes == [0, 1, 2, 3] + [0, 1, 2] + [2, 3]
    a, b = full.state_dict(), resumed.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]
    assert strip(out.history) == strip(ref.history)
    mechanism = "clean_fraction" if make is _dividemix else "kept_fraction"
    assert [mechanism in row for row in out.history] == [False, True, True, True]  # acts from epoch 2 on
