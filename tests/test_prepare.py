"""robustlab.prepare: the device, the data splits with their label noise, the loaders, the strategy
and its augmentation, as run_experiment assembles them (tiny generated CIFAR-10, no training)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import robustlab.prepare as prepare
from robustlab.config import EVAL_BATCH_SIZE, Context, DataConfig, ExperimentConfig, StrategyConfig
from robustlab.data import BatchAugment, Normalize
from robustlab.data.augment import MultiView
from robustlab.engine import TrainConfig
from robustlab.errors import UsageError


def _message(call) -> str:
    with pytest.raises(UsageError) as info:
        call()
    return str(info.value)


@pytest.fixture
def ctx(tiny_cifar10, tmp_path):
    return Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "cache"), device="cpu", quiet=True)


# ---- device ---------------------------------------------------------------------------------------

def test_device_names_resolve_or_fail_with_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert prepare.resolve_device("auto") == torch.device("cpu")
    assert prepare.resolve_device("cpu") == torch.device("cpu")
    assert _message(lambda: prepare.resolve_device("gpu0")) == "unknown device 'gpu0'; use auto, cpu, cuda or cuda:N"
    assert _message(lambda: prepare.resolve_device("cuda")) == "device 'cuda' requested but CUDA is not available"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert prepare.resolve_device("auto") == torch.device("cuda")
    assert prepare.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert prepare.resolve_device("cuda") == torch.device("cuda")
    assert _message(lambda: prepare.resolve_device("cuda:2")) == "device 'cuda:2' does not exist; 2 GPU(s) visible"


def test_under_torchrun_auto_and_cuda_mean_the_processs_own_gpu(monkeypatch):
    from robustlab.distributed import DistInfo

    monkeypatch.setattr(prepare.distributed, "current", lambda: DistInfo(rank=3, world_size=4, local_rank=1))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert prepare.resolve_device("auto") == torch.device("cuda", 1)
    assert prepare.resolve_device("cuda") == torch.device("cuda", 1)
    assert prepare.resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is kept
    assert prepare.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert prepare.resolve_device("auto") == torch.device("cpu")
    # one process: auto and cuda are the current GPU, whatever LOCAL_RANK says
    monkeypatch.setattr(prepare.distributed, "current", lambda: DistInfo(local_rank=1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert prepare.resolve_device("cuda") == torch.device("cuda") and prepare.resolve_device("auto") == torch.device("cuda")


# ---- data and label noise -------------------------------------------------------------------------

def test_without_noise_the_labels_are_the_files_and_no_report(tiny_cifar10, ctx):
    data = prepare.prepare_data(DataConfig(val_size=20), 0, ctx)
    assert data.noise is None
    assert len(data.splits.train) == 80 and len(data.splits.val) == 20 and len(data.splits.test) == 40
    index = torch.as_tensor(data.splits.train_index)
    assert torch.equal(data.splits.train.labels, torch.as_tensor(tiny_cifar10.train_labels)[index])
    assert torch.equal(data.clean_train_labels, data.splits.train.labels)
    assert data.clean_train_labels is not data.splits.train.labels  # a copy, not the tensor noise may replace
    # sizes and the seed reach the splits: class-balanced subsets, another seed another validation split
    sub = prepare.prepare_data(DataConfig(val_size=20, train_size=30, test_size=20), 0, ctx).splits
    assert (len(sub.train), len(sub.val), len(sub.test)) == (30, 20, 20)
    other = prepare.prepare_data(DataConfig(val_size=20), 1, ctx).splits
    assert not np.array_equal(other.val_index, data.splits.val_index)


@pytest.mark.parametrize("noisy_val", [False, True])
def test_noise_corrupts_the_training_labels_and_keeps_the_clean_ones(tiny_cifar10, ctx, noisy_val):
    cfg = DataConfig(val_size=20, noise_type="symmetric", noise_rate=0.5, noisy_val=noisy_val)
    data = prepare.prepare_data(cfg, 3, ctx)
    plain = prepare.prepare_data(DataConfig(val_size=20), 3, ctx)
    assert torch.equal(data.clean_train_labels, plain.splits.train.labels)
    flipped = data.splits.train.labels != data.clean_train_labels
    assert data.noise["realized_rate"] == pytest.approx(flipped.float().mean().item())
    assert 0.2 < data.noise["realized_rate"] < 0.8
    val_flipped = (data.splits.val.labels != plain.splits.val.labels).sum().item()
    assert (val_flipped > 0) is noisy_val
    # the same seed gives the same noise; another seed other noise
    again = prepare.prepare_data(cfg, 3, ctx)
    assert torch.equal(again.splits.train.labels, data.splits.train.labels)
    other = prepare.prepare_data(cfg, 4, ctx)
    assert not torch.equal(other.splits.train.labels, data.splits.train.labels)
    from robustlab.corruptions import corrupt_labels

    # the training labels are drawn with the run's seed, the validation labels apart with seed + 1
    assert torch.equal(data.splits.train.labels, torch.as_tensor(corrupt_labels(plain.splits.train.labels, 10,
                                                                                "symmetric", 0.5, 3)))
    if noisy_val:
        assert torch.equal(data.splits.val.labels, torch.as_tensor(corrupt_labels(plain.splits.val.labels, 10,
                                                                                  "symmetric", 0.5, 4)))


@pytest.mark.parametrize("noisy_val", [False, True])
def test_dataset_noise_follows_each_samples_original_image(tiny_cifar10, ctx, tmp_path, noisy_val):
    # a label file for the whole training set (dataset order): every label shifted by one class
    noisy_all = (tiny_cifar10.train_labels + 1) % 10
    np.save(tmp_path / "labels.npy", noisy_all)
    cfg = DataConfig(val_size=20, noise_type="file", noise_file=str(tmp_path / "labels.npy"), noisy_val=noisy_val)
    data = prepare.prepare_data(cfg, 0, ctx)
    splits = data.splits
    assert torch.equal(splits.train.labels, torch.from_numpy(noisy_all[splits.train_index]))
    assert torch.equal(data.clean_train_labels, torch.from_numpy(tiny_cifar10.train_labels[splits.train_index]))
    clean_val = torch.from_numpy(tiny_cifar10.train_labels[splits.val_index])
    assert torch.equal(splits.val.labels, torch.from_numpy(noisy_all[splits.val_index]) if noisy_val else clean_val)
    assert data.noise["realized_rate"] == 1.0 and data.noise["source"] == "file"
    assert data.noise["label_file"] == str(tmp_path / "labels.npy") and data.noise["full_set_rate"] == 1.0
    # instance-dependent noise is drawn on the whole training set with the run's seed and rate
    from robustlab.corruptions.dataset_noise import dataset_noisy_labels
    from robustlab.data import load_dataset

    inst = prepare.prepare_data(DataConfig(val_size=20, noise_type="instance", noise_rate=0.4), 2, ctx)
    full, _ = load_dataset("cifar10", ctx.data_dir, ctx.cache_dir)
    expected = dataset_noisy_labels("instance", 0.4, 2, "cifar10", ctx.data_dir, full).noisy
    assert torch.equal(inst.splits.train.labels, torch.from_numpy(expected[inst.splits.train_index]))
    assert inst.noise["nominal_rate"] == 0.4 and inst.noise["seed"] == 2


@pytest.mark.parametrize("rate", [1.0, -0.1])
def test_noise_rate_outside_zero_one_is_a_usage_error(ctx, rate):
    assert _message(lambda: prepare.prepare_data(DataConfig(val_size=20, noise_rate=rate), 0, ctx)) == (
        f"noise rate must be in [0, 1), got {rate}")


def test_zero_noise_rate_is_accepted(ctx):
    assert prepare.prepare_data(DataConfig(val_size=20, noise_rate=0.0), 0, ctx).noise is None


# ---- loaders ----------------------------------------------------------------------------------------

def test_loaders_train_shuffled_and_augmented_evaluate_normalized_in_order(ctx):
    data = prepare.prepare_data(DataConfig(val_size=20), 0, ctx)
    augment = BatchAugment(ExperimentConfig().augment, data.splits.mean, data.splits.std)
    train, val, test = prepare.make_loaders(data.splits, TrainConfig(batch_size=16), augment, 5, "cpu")
    assert (train.batch_size, train.augment, train.seed) == (16, augment, 5)
    assert train.shuffle is True and train.drop_last is False and (train.rank, train.world_size) == (0, 1)
    assert torch.equal(train.labels, data.splits.train.labels)
    for loader, split in ((val, data.splits.val), (test, data.splits.test)):
        assert loader.batch_size == EVAL_BATCH_SIZE and loader.shuffle is False
        x, y, idx = next(iter(loader))
        assert torch.equal(y, split.labels) and torch.equal(idx, torch.arange(len(split)))
        assert torch.allclose(x, Normalize(data.splits.mean, data.splits.std)(split.images))
    big = TrainConfig(batch_size=EVAL_BATCH_SIZE + 1)  # evaluation batches are never smaller than training ones
    assert prepare.make_loaders(data.splits, big, augment, 0, "cpu")[2].batch_size == EVAL_BATCH_SIZE + 1
    # drop_last only when a full batch exists; no validation split, no validation loader
    assert prepare.make_loaders(data.splits, TrainConfig(batch_size=80, drop_last=True), augment, 0, "cpu")[0].drop_last
    assert not prepare.make_loaders(data.splits, TrainConfig(batch_size=81, drop_last=True), augment, 0, "cpu")[0].drop_last
    no_val = prepare.prepare_data(DataConfig(val_size=0), 0, ctx)
    assert prepare.make_loaders(no_val.splits, TrainConfig(batch_size=16), augment, 0, "cpu")[1] is None
    # every loader lives on the device asked for (the meta device shows it without a GPU)
    assert [x.device for x in prepare.make_loaders(data.splits, TrainConfig(batch_size=16), augment, 0, "meta")] == \
        [torch.device("meta")] * 3


def test_under_torchrun_each_rank_loads_its_share_of_the_global_batch(ctx, monkeypatch):
    from robustlab.distributed import DistInfo

    data = prepare.prepare_data(DataConfig(val_size=20), 0, ctx)
    monkeypatch.setattr(prepare.distributed, "current", lambda: DistInfo(rank=1, world_size=2, local_rank=1))
    train, val, test = prepare.make_loaders(data.splits, TrainConfig(batch_size=16), None, 0, "cpu")
    assert train.batch_size == 8 and type(train.batch_size) is int and (train.rank, train.world_size) == (1, 2)
    assert (val.world_size, test.world_size) == (1, 1) and val.batch_size == test.batch_size == EVAL_BATCH_SIZE
    assert _message(lambda: prepare.make_loaders(data.splits, TrainConfig(batch_size=15), None, 0, "cpu")) == (
        "batch size 15 is not divisible by the 2 processes")


# ---- strategy and augmentation ---------------------------------------------------------------------

def test_strategy_gets_fresh_networks_sizes_realised_noise_and_clean_labels(ctx, tmp_path):
    cfg = ExperimentConfig(data=DataConfig(val_size=20, noise_rate=0.4), model="tiny_cnn",
                           strategy=StrategyConfig("dividemix", {"warmup_epochs": 1}))
    data = prepare.prepare_data(cfg.data, cfg.seed, ctx)
    st = prepare.build_strategy(cfg, data, torch.device("cpu"), tmp_path)
    assert st.num_train == 80 and st.num_classes == 10 and st.model is not st.peer
    assert not torch.equal(st.model.features[0].weight, st.peer.model.features[0].weight if hasattr(st.peer, "model")
                           else st.peer.features[0].weight)  # independently initialised
    assert torch.equal(st.clean_labels, data.clean_train_labels)
    assert st.lambda_u == 25.0  # the paper's lambda_u for CIFAR-10 at the realised rate (about 40%: 25)
    assert data.noise["realized_rate"] > 0.3
    plain = ExperimentConfig(data=DataConfig(val_size=20), model="tiny_cnn", strategy=StrategyConfig("dividemix"))
    clean = prepare.prepare_data(plain.data, 0, ctx)
    assert prepare.build_strategy(plain, clean, torch.device("cpu")).lambda_u == 0.0  # noise rate 0: the 20% row


@pytest.mark.parametrize("world", [1, 2])
def test_build_context_carries_the_run(ctx, tmp_path, monkeypatch, world):
    import robustlab.strategies as S
    from robustlab.distributed import DistInfo

    seen = {}
    monkeypatch.setattr(S, "create_strategy", lambda name, context, **options: seen.update(
        name=name, ctx=context, options=options) or "built")
    monkeypatch.setattr(prepare.distributed, "current", lambda: DistInfo(world_size=world))
    cfg = ExperimentConfig(data=DataConfig(val_size=20), model="tiny_cnn", strategy=StrategyConfig("elr", {"lam": 2.0}))
    data = prepare.prepare_data(cfg.data, 0, ctx)
    assert prepare.build_strategy(cfg, data, torch.device("cpu"), str(tmp_path)) == "built"
    built = seen["ctx"]
    assert (seen["name"], seen["options"]) == ("elr", {"lam": 2.0})
    assert built.results_dir == tmp_path and isinstance(built.results_dir, type(tmp_path))
    assert built.experiment is cfg and built.distributed is (world > 1) and built.noise_rate == 0.0
    assert built.new_model().head.out_features == 10
    assert torch.equal(built.clean_train_labels, data.clean_train_labels)
    prepare.build_strategy(cfg, data, torch.device("meta"))
    assert seen["ctx"].results_dir is None and seen["ctx"].clean_train_labels.device == torch.device("meta")


def test_networks_get_the_class_count_of_the_data_and_the_model_options():
    from types import SimpleNamespace

    cfg = ExperimentConfig(model="tiny_cnn", model_kwargs={"dropout": 0.25})
    net = prepare._new_network(cfg, SimpleNamespace(num_classes=100), "cpu")  # no whitening: only the class count
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)] == [0.25]


def test_augmentation_is_repeated_to_the_strategys_views(ctx):
    data = prepare.prepare_data(DataConfig(val_size=20), 0, ctx)
    cfg = ExperimentConfig(data=DataConfig(val_size=20), model="tiny_cnn")
    alone = prepare.default_train_augment(cfg, data.splits)
    assert isinstance(alone, BatchAugment)
    one = prepare.build_strategy(cfg, data, torch.device("cpu"))
    assert isinstance(prepare.default_train_augment(cfg, data.splits, one), BatchAugment)
    cfg.strategy = StrategyConfig("dividemix")
    two = prepare.build_strategy(cfg, data, torch.device("cpu"))
    multi = prepare.default_train_augment(cfg, data.splits, two)
    cfg.strategy = StrategyConfig("augmix")  # a strategy's own augmentation gets the run's splits
    own = prepare.default_train_augment(cfg, data.splits, prepare.build_strategy(cfg, data, torch.device("cpu")))
    assert type(own).__name__ == "AugMixViews" and own.mean == data.splits.mean and own.std == data.splits.std
    assert isinstance(multi, MultiView) and multi.views == 2
    x = multi(data.splits.train.images[:4], torch.Generator().manual_seed(0))
    assert x.shape == (4, 2, 3, 32, 32)
    assert torch.allclose(x.mean(), torch.zeros(()), atol=1.0)  # normalized by the run's mean/std


def test_airbench_whitening_is_fitted_to_the_training_images_only(ctx, monkeypatch):
    cfg = ExperimentConfig(data=DataConfig(val_size=20), model="airbench_s")
    data = prepare.prepare_data(cfg.data, 0, ctx)
    seen = []

    class Spy(torch.nn.Module):
        whiten_images = 0

        def init_whitening(self, images):
            seen.append(images)

    monkeypatch.setattr(prepare, "create_model", lambda name, **kw: Spy())
    prepare._new_network(cfg, data.splits, "cpu")
    Spy.whiten_images = 30
    prepare._new_network(cfg, data.splits, "cpu")
    norm = Normalize(data.splits.mean, data.splits.std)
    assert torch.allclose(seen[0], norm(data.splits.train.images))  # WHITEN_IMAGES exceeds the 80: all of them
    assert torch.allclose(seen[1], norm(data.splits.train.images[:30]))  # the model's own request
