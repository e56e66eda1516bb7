"""One run = data + corruption + model + strategy + training recipe, described by a dataclass.

`run_experiment(config, results_dir)` builds everything, trains with `robustlab.engine.fit`,
and writes the run record; a run whose record exists is returned without recomputation.
"""
from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from robustlab import distributed
from robustlab.data import AugmentConfig, BatchAugment, DeviceLoader, Normalize, load_dataset, make_splits
from robustlab.data.splits import DataSplits
from robustlab.engine import FitResult, TrainConfig, fit
from robustlab.errors import UsageError, require
from robustlab.models import create_model
from robustlab.records import config_hash, environment, find_record, write_record


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    val_size: int = 5000
    train_size: int | None = None   # class-balanced subset of the training split
    test_size: int | None = None    # class-balanced subset of the test split (quick runs only)
    noise_type: str = "symmetric"
    noise_rate: float = 0.0         # fraction of training labels corrupted
    noisy_val: bool = False         # corrupt the validation labels too


@dataclass
class StrategyConfig:
    name: str = "ce"                # a key of STRATEGIES
    smoothing: float = 0.0          # ce: label smoothing epsilon
    forget_rate: float | None = None  # coteach: tau; None = the noise rate
    num_gradual: int = 10           # coteach: epochs to reach tau
    exponent: float = 1.0           # coteach: shape of the R(T) ramp
    options: dict = field(default_factory=dict)  # extra keyword arguments for other strategies


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
def _cached_dataset(name: str, data_dir: str | None, cache_dir: str | None):
    return load_dataset(name, data_dir, cache_dir)


@dataclass
class PreparedData:
    splits: DataSplits
    clean_train_labels: torch.Tensor
    noise: dict | None


def prepare_data(cfg: DataConfig, seed: int, ctx: Context) -> PreparedData:
    require(0.0 <= cfg.noise_rate < 1.0, f"noise rate must be in [0, 1), got {cfg.noise_rate}")
    train, test = _cached_dataset(cfg.dataset, ctx.data_dir, ctx.cache_dir)
    splits = make_splits(train, test, cfg.val_size, cfg.train_size, cfg.test_size, seed)
    clean = splits.train.labels.clone()
    noise = None
    if cfg.noise_rate > 0:
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
    eval_bs = max(train_cfg.batch_size, 512)
    train = DeviceLoader(splits.train.images, splits.train.labels, train_cfg.batch_size // info.world_size,
                         train_augment, shuffle=True, seed=seed, device=device, rank=info.rank,
                         world_size=info.world_size)
    val = DeviceLoader(splits.val.images, splits.val.labels, eval_bs, norm, shuffle=False, device=device) if splits.val else None
    test = DeviceLoader(splits.test.images, splits.test.labels, eval_bs, norm, shuffle=False, device=device)
    return train, val, test


# Strategy factories: (config, model factory, prepared data, device) -> Strategy
StrategyFactory = Callable[..., torch.nn.Module]


def _ce(cfg: ExperimentConfig, new_model, data: PreparedData, device):
    from robustlab.strategies import CrossEntropy
    return CrossEntropy(new_model(), smoothing=cfg.strategy.smoothing)


def _coteach(cfg: ExperimentConfig, new_model, data: PreparedData, device):
    from robustlab.strategies.coteaching import CoTeaching
    s = cfg.strategy
    forget = s.forget_rate if s.forget_rate is not None else cfg.data.noise_rate
    return CoTeaching(new_model(), new_model(), forget_rate=forget, num_gradual=s.num_gradual, exponent=s.exponent,
                      clean_labels=data.clean_train_labels.to(device), **s.options)


def _supcon_pretrain(cfg: ExperimentConfig, new_model, data: PreparedData, device):
    """Stage 1 of SupCon. options: temperature (0.1), proj_dim (128), min_crop_scale (0.2, of SupConViews)."""
    from robustlab.strategies.supcon import SupConPretrain
    opts = _check_options(cfg, {"temperature", "proj_dim", "min_crop_scale"})
    return SupConPretrain(new_model(), temperature=float(opts.get("temperature", 0.1)),
                          proj_dim=int(opts.get("proj_dim", 128)),
                          distributed=distributed.current().enabled)  # gather embeddings across ranks


def _supcon_probe(cfg: ExperimentConfig, new_model, data: PreparedData, device, results_dir: Path | None = None):
    """Stage 2 of SupCon: a new head on the encoder of another run.

    options: encoder_run (a run id in the same results directory, usually a `supcon_pretrain`
    run) or encoder_checkpoint (a checkpoint path); head (mlp | linear | finetune, default mlp);
    hidden (width of the mlp head, default 256).
    """
    from robustlab.checkpoint import load_checkpoint
    from robustlab.records import find_record
    from robustlab.strategies.supcon import FrozenEncoderClassifier, load_encoder_weights
    opts = _check_options(cfg, {"encoder_run", "encoder_checkpoint", "head", "hidden"})
    require(("encoder_run" in opts) != ("encoder_checkpoint" in opts),
            "supcon_probe needs exactly one of the options encoder_run (a run id) or encoder_checkpoint (a path)")
    if "encoder_run" in opts:
        run_id = str(opts["encoder_run"])
        require(results_dir is not None, "supcon_probe with encoder_run needs the results directory of that run")
        record = find_record(results_dir, run_id)
        if record is None:
            raise UsageError(f"encoder run {run_id} has no record in {results_dir}; run its pretraining first")
        enc = record["config"]
        require(enc.get("model") == cfg.model and (enc.get("model_kwargs") or {}) == cfg.model_kwargs,
                f"encoder run {run_id} trained model {enc.get('model')!r} {enc.get('model_kwargs') or {}}, "
                f"but this run uses {cfg.model!r} {cfg.model_kwargs}")
        require(enc.get("data", {}).get("dataset") == cfg.data.dataset,
                f"encoder run {run_id} trained on {enc.get('data', {}).get('dataset')!r}, this run uses {cfg.data.dataset!r}")
        checkpoint = Path(results_dir) / "runs" / run_id / "last.pt"
    else:
        checkpoint = Path(opts["encoder_checkpoint"])
    encoder = new_model()
    load_encoder_weights(encoder, load_checkpoint(checkpoint)["strategy"], source=f"encoder checkpoint {checkpoint}")
    return FrozenEncoderClassifier(encoder, data.splits.num_classes, head=str(opts.get("head", "mlp")),
                                   hidden=int(opts.get("hidden", 256)))


def _check_options(cfg: ExperimentConfig, known: set[str]) -> dict:
    unknown = sorted(set(cfg.strategy.options) - known)
    require(not unknown, f"unknown option(s) {', '.join(unknown)} for strategy {cfg.strategy.name!r}; "
                         f"known: {', '.join(sorted(known))}")
    return cfg.strategy.options


STRATEGIES: dict[str, StrategyFactory] = {"ce": _ce, "coteach": _coteach}
STRATEGIES.update(supcon_pretrain=_supcon_pretrain, supcon_probe=_supcon_probe)
# Factories that read other runs (e.g. a pretrained encoder) also get `results_dir=`.
NEEDS_RESULTS_DIR = {"supcon_probe"}


def _supcon_views(cfg: ExperimentConfig, splits: DataSplits):
    from robustlab.strategies.supcon import SupConViews
    scale = float(cfg.strategy.options.get("min_crop_scale", 0.2))
    require(0 < scale <= 1, f"min_crop_scale must be in (0, 1], got {scale}")
    return SupConViews(splits.mean, splits.std, size=splits.train.images.shape[-1], scale=(scale, 1.0))


# Strategies whose training batches need their own augmentation: name -> (config, splits) -> augment.
TRAIN_AUGMENTS: dict[str, Callable] = {"supcon_pretrain": _supcon_views}


def default_train_augment(cfg: ExperimentConfig, splits: DataSplits):
    """The strategy's own train augmentation if it has one, else BatchAugment(cfg.augment)."""
    make = TRAIN_AUGMENTS.get(cfg.strategy.name)
    return make(cfg, splits) if make else BatchAugment(cfg.augment, splits.mean, splits.std)


def build_strategy(cfg: ExperimentConfig, data: PreparedData, device, results_dir: str | Path | None = None):
    if cfg.strategy.name not in STRATEGIES:
        raise UsageError(f"unknown strategy {cfg.strategy.name!r}; known: {', '.join(sorted(STRATEGIES))}")
    num_classes = data.splits.num_classes
    new_model = lambda: create_model(cfg.model, num_classes=num_classes, **cfg.model_kwargs)  # noqa: E731
    if cfg.strategy.name in NEEDS_RESULTS_DIR:
        return STRATEGIES[cfg.strategy.name](cfg, new_model, data, device, results_dir=results_dir)
    return STRATEGIES[cfg.strategy.name](cfg, new_model, data, device)


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
    augment = train_augment or default_train_augment(cfg, data.splits)
    train_loader, val_loader, test_loader = make_loaders(data.splits, cfg.train, augment, cfg.seed, device)
    if not getattr(strategy, "classifies", True):
        val_loader = test_loader = None  # e.g. contrastive pretraining: accuracies would be meaningless
    run_dir = results_dir / "runs" / cfg.run_id
    last = run_dir / "last.pt"
    if isinstance(ctx.resume, (str, Path)):
        resume = Path(ctx.resume)
    else:
        resume = last if ctx.resume and last.exists() else None
    t0 = time.time()
    result: FitResult = fit(strategy, train_loader, cfg.train, val_loader, test_loader, run_dir=run_dir,
                            resume=resume, quiet=ctx.quiet, num_classes=data.splits.num_classes)
    record = {
        "run_id": cfg.run_id, "config": cfg.key(), "metrics": result.metrics, "best": result.best,
        "history": result.history, "noise": data.noise, "stopped_early": result.stopped_early,
        "num_params": sum(p.numel() for p in strategy.model.parameters()),
        "data": {"train": len(data.splits.train), "val": len(data.splits.val) if data.splits.val else 0,
                 "test": len(data.splits.test), "mean": data.splits.mean, "std": data.splits.std,
                 "classes": data.splits.classes},
        "environment": environment(), "wall_seconds": time.time() - t0, "checkpoint": str(run_dir / "last.pt"),
    }
    if distributed.current().is_main:
        write_record(results_dir, record)
    return record
