"""One run = data + corruption + model + strategy + training recipe, described by a dataclass.

`run_experiment(config, results_dir)` builds everything, trains with `robustlab.engine.fit`,
and writes the run record; a run whose record exists is returned without recomputation.
"""
from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from robustlab import distributed
from robustlab.data import AugmentConfig, BatchAugment, DeviceLoader, Normalize, load_dataset, make_splits
from robustlab.data.augment import MultiView
from robustlab.data.splits import DataSplits
from robustlab.engine import FitResult, TrainConfig, fit
from robustlab.errors import UsageError, require
from robustlab.loggers import run_loggers
from robustlab.models import create_model
from robustlab.records import config_hash, environment, find_record, write_record


EVAL_BATCH_SIZE = 512  # evaluation needs no gradients: large batches, fewer steps


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    val_size: int = 5000
    train_size: int | None = None   # class-balanced subset of the training split
    test_size: int | None = None    # class-balanced subset of the test split (quick runs only)
    noise_type: str = "symmetric"
    noise_rate: float = 0.0         # fraction of training labels corrupted
    noisy_val: bool = False         # corrupt the validation labels too
    noise_file: str | None = None   # label file for human:<set> / file noise (default: cifar-n/ beside the data)


@dataclass
class StrategyConfig:
    name: str = "ce"                # a registered strategy (`robustlab.strategies.list_strategies()`)
    options: dict = field(default_factory=dict)  # its Config's fields, validated by the registry

    def validate(self) -> None:
        from robustlab.strategies import make_config
        make_config(self.name, self.options)


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: str = "small_cnn"
    model_kwargs: dict = field(default_factory=dict)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    tag: str = ""                   # arm name shown in tables

    def key(self) -> dict:
        """What defines the run's result (not where data lives or how it is logged)."""
        return asdict(self)

    @property
    def run_id(self) -> str:
        return f"{self.tag or self.strategy.name}-s{self.seed}-{config_hash(self.key())}"


@dataclass
class Context:
    """Where and how runs execute: not part of a run's identity."""
    data_dir: str | None = None
    cache_dir: str | None = None
    device: str = "auto"
    quiet: bool = False
    resume: bool | str = False      # True: continue from the run's last.pt if any; str: from that checkpoint
    tensorboard: bool = True        # TensorBoard event files in the run folder (metrics.csv is always written)
    skip_bad_images: bool = False   # image folders: leave out undecodable files (with a warning) instead of stopping


def reproducibility() -> dict:
    """What a re-run needs to repeat the numbers bit for bit (`robustlab.train --from-record`):
    deterministic kernels (--deterministic) and, on the CPU, the same number of threads."""
    return {"deterministic": torch.are_deterministic_algorithms_enabled(), "threads": torch.get_num_threads()}


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
                         world_size=info.world_size)
    val = DeviceLoader(splits.val.images, splits.val.labels, eval_bs, norm, shuffle=False, device=device) if splits.val else None
    test = DeviceLoader(splits.test.images, splits.test.labels, eval_bs, norm, shuffle=False, device=device)
    return train, val, test


def build_strategy(cfg: ExperimentConfig, data: PreparedData, device, results_dir: str | Path | None = None):
    """The run's strategy from the registry, with networks from the model registry."""
    from robustlab.strategies import BuildContext, create_strategy

    num_classes = data.splits.num_classes
    ctx = BuildContext(
        new_model=lambda: create_model(cfg.model, num_classes=num_classes, **cfg.model_kwargs),
        num_classes=num_classes, num_train=len(data.splits.train),
        noise_rate=(data.noise or {}).get("realized_rate", 0.0),
        clean_train_labels=data.clean_train_labels.to(device),
        results_dir=Path(results_dir) if results_dir is not None else None, experiment=cfg,
        distributed=distributed.current().enabled)
    return create_strategy(cfg.strategy.name, context=ctx, **cfg.strategy.options)


def default_train_augment(cfg: ExperimentConfig, splits: DataSplits, strategy=None):
    """BatchAugment(cfg.augment), repeated to the strategy's views, or the strategy's own augmentation."""
    augment = BatchAugment(cfg.augment, splits.mean, splits.std)
    if strategy is None:
        return augment
    if strategy.views > 1:
        augment = MultiView(augment, strategy.views)
    return strategy.train_augment(augment, splits)


def run_experiment(cfg: ExperimentConfig, results_dir: str | Path, ctx: Context | None = None,
                   train_augment=None) -> dict:
    """Train one run (or return its existing record) and write its record atomically."""
    ctx = ctx or Context()
    results_dir = Path(results_dir)
    existing = find_record(results_dir, cfg.run_id)
    if existing is not None:
        return existing
    cfg.train.validate()
    device = resolve_device(ctx.device)
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg.data, cfg.seed, ctx)
    strategy = build_strategy(cfg, data, device, results_dir)
    augment = train_augment or default_train_augment(cfg, data.splits, strategy)
    train_loader, val_loader, test_loader = make_loaders(data.splits, cfg.train, augment, cfg.seed, device)
    train_pass = None
    if strategy.needs_train_pass:  # the whole noisy training set, unaugmented, in dataset order
        train_pass = DeviceLoader(data.splits.train.images, data.splits.train.labels, EVAL_BATCH_SIZE,
                                  Normalize(data.splits.mean, data.splits.std), shuffle=False, device=device)
    if not getattr(strategy, "classifies", True):
        val_loader = test_loader = None  # e.g. contrastive pretraining: accuracies would be meaningless
    run_dir = results_dir / "runs" / cfg.run_id
    last = run_dir / "last.pt"
    if isinstance(ctx.resume, (str, Path)):
        resume = Path(ctx.resume)
    else:
        resume = last if ctx.resume and last.exists() else None
    t0 = time.time()
    loggers = None
    if distributed.current().is_main:  # metrics.csv and event files beside the checkpoints, from rank 0
        loggers = run_loggers(run_dir, ctx.tensorboard,
                              hparams={**cfg.key(), "strategy_options": strategy.options(), "run_id": cfg.run_id},
                              class_names=data.splits.classes)
    try:
        result: FitResult = fit(strategy, train_loader, cfg.train, val_loader, test_loader, run_dir=run_dir,
                                resume=resume, quiet=ctx.quiet, num_classes=data.splits.num_classes,
                                train_pass_loader=train_pass, loggers=loggers)
    finally:
        if loggers is not None:
            loggers.close()
    record = {
        "run_id": cfg.run_id, "config": cfg.key(), "strategy_options": strategy.options(), "metrics": result.metrics, "best": result.best,
        "history": result.history, "noise": data.noise, "stopped_early": result.stopped_early,
        "num_params": sum(p.numel() for p in strategy.model.parameters()),
        "data": {"train": len(data.splits.train), "val": len(data.splits.val) if data.splits.val else 0,
                 "test": len(data.splits.test), "mean": data.splits.mean, "std": data.splits.std,
                 "classes": data.splits.classes},
        "precision": result.precision, "environment": {**environment(), **reproducibility()}, "wall_seconds": time.time() - t0, "checkpoint": str(run_dir / "last.pt"),
    }
    if distributed.current().is_main:
        write_record(results_dir, record)
    distributed.barrier()  # the other ranks may look the record up next (e.g. a probe reading its encoder run)
    return record
