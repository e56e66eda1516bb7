"""Everything a run needs before training: device, data splits with their label noise, loaders,
the strategy from the registry and its training augmentation."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from robustlab import distributed
from robustlab.config import EVAL_BATCH_SIZE, Context, DataConfig, ExperimentConfig
from robustlab.data import BatchAugment, DeviceLoader, Normalize, load_dataset, make_splits
from robustlab.data.augment import MultiView
from robustlab.data.splits import DataSplits
from robustlab.engine import TrainConfig
from robustlab.errors import UsageError, require
from robustlab.models import create_model
from robustlab.models.airbench import WHITEN_IMAGES


def resolve_device(name: str) -> torch.device:
    info = distributed.current()
    if info.enabled and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", info.local_rank)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r} does not exist; {torch.cuda.device_count()} GPU(s) visible")
    return device


@functools.lru_cache(maxsize=4)
def _cached_dataset(name: str, data_dir: str | None, cache_dir: str | None, skip_bad_images: bool = False):
    return load_dataset(name, data_dir, cache_dir, skip_bad_images=skip_bad_images)


@dataclass
class PreparedData:
    splits: DataSplits
    clean_train_labels: torch.Tensor
    noise: dict | None


def prepare_data(cfg: DataConfig, seed: int, ctx: Context) -> PreparedData:
    require(0.0 <= cfg.noise_rate < 1.0, f"noise rate must be in [0, 1), got {cfg.noise_rate}")
    train, test = _cached_dataset(cfg.dataset, ctx.data_dir, ctx.cache_dir, ctx.skip_bad_images)
    splits = make_splits(train, test, cfg.val_size, cfg.train_size, cfg.test_size, seed)
    clean = splits.train.labels.clone()
    noise = None
    from robustlab.corruptions.dataset_noise import apply_dataset_noise, is_dataset_noise
    if is_dataset_noise(cfg.noise_type) or cfg.noise_file:  # per-image labels: CIFAR-N, file, instance, twin
        noise = apply_dataset_noise(splits, train, cfg.noise_type, cfg.noise_rate, seed, cfg.dataset,
                                    ctx.data_dir, cfg.noise_file, cfg.noisy_val)
    elif cfg.noise_rate > 0:
        from robustlab.corruptions import corrupt_labels, noise_report

        coarse = splits.train.coarse_labels
        splits.train.labels = corrupt_labels(clean, splits.num_classes, cfg.noise_type, cfg.noise_rate, seed,
                                             coarse_labels=coarse)
        noise = noise_report(clean, splits.train.labels, splits.num_classes).to_dict()
        if cfg.noisy_val and splits.val is not None:
            splits.val.labels = corrupt_labels(splits.val.labels, splits.num_classes, cfg.noise_type, cfg.noise_rate,
                                               seed + 1, coarse_labels=splits.val.coarse_labels)
    return PreparedData(splits, clean, noise)


def make_loaders(splits: DataSplits, train_cfg: TrainConfig, train_augment, seed: int, device):
    """Train loader with `train_augment`; val/test loaders normalize only, in larger batches.

    Under torchrun each rank trains on its shard with batch_size / world_size images (the
    configured batch size stays the global one); evaluation runs on the full splits on every rank.
    """
    info = distributed.current()
    require(train_cfg.batch_size % info.world_size == 0,
            f"batch size {train_cfg.batch_size} is not divisible by the {info.world_size} processes")
    norm = Normalize(splits.mean, splits.std)
    eval_bs = max(train_cfg.batch_size, EVAL_BATCH_SIZE)
    train = DeviceLoader(splits.train.images, splits.train.labels, train_cfg.batch_size // info.world_size,
                         train_augment, shuffle=True, seed=seed, device=device, rank=info.rank,
                         world_size=info.world_size,
                         drop_last=train_cfg.drop_last and len(splits.train) >= train_cfg.batch_size)
    val = DeviceLoader(splits.val.images, splits.val.labels, eval_bs, norm, shuffle=False, device=device) if splits.val else None
    test = DeviceLoader(splits.test.images, splits.test.labels, eval_bs, norm, shuffle=False, device=device)
    return train, val, test


def _new_network(cfg: ExperimentConfig, splits: DataSplits, device):
    """A fresh network; one with data-dependent weights (airbench's whitening layer) is fitted to
    the run's own training images (never validation or test), normalized as training sees them."""
    model = create_model(cfg.model, num_classes=splits.num_classes, **cfg.model_kwargs)
    if hasattr(model, "init_whitening"):
        norm = Normalize(splits.mean, splits.std)
        wanted = model.whiten_images or WHITEN_IMAGES  # a request above the training set fails in init_whitening
        model.init_whitening(norm(splits.train.images[:wanted]))
    return model


def build_strategy(cfg: ExperimentConfig, data: PreparedData, device, results_dir: str | Path | None = None):
    """The run's strategy from the registry, with networks from the model registry."""
    from robustlab.strategies import BuildContext, create_strategy

    num_classes = data.splits.num_classes
    ctx = BuildContext(
        new_model=lambda: _new_network(cfg, data.splits, device),
        num_classes=num_classes, num_train=len(data.splits.train),
        noise_rate=(data.noise or {}).get("realized_rate", 0.0),
        clean_train_labels=data.clean_train_labels.to(device),
        noise_transition=(data.noise or {}).get("transition"),
        results_dir=Path(results_dir) if results_dir is not None else None, experiment=cfg,
        distributed=distributed.current().enabled,
        estimate_noise_rate=_noise_rate_estimator(cfg, data, device, results_dir))
    return create_strategy(cfg.strategy.name, context=ctx, **cfg.strategy.options)


def _noise_rate_estimator(cfg: ExperimentConfig, data: PreparedData, device, results_dir):
    """A call that estimates the run's noise rate from its noisy labels (K-fold confident learning,
    cached in the results folder), or None without a results folder to cache it in."""
    if results_dir is None:
        return None

    def estimate() -> float:
        from robustlab.labelissues import noise_rate_for_run

        return noise_rate_for_run(cfg, data, device, Path(results_dir))["estimated_noise_rate"]

    return estimate


def default_train_augment(cfg: ExperimentConfig, splits: DataSplits, strategy=None):
    """BatchAugment(cfg.augment), repeated to the strategy's views, or the strategy's own augmentation."""
    augment = BatchAugment(cfg.augment, splits.mean, splits.std)
    if strategy is None:
        return augment
    if strategy.views > 1:
        augment = MultiView(augment, strategy.views)
    return strategy.train_augment(augment, splits)
