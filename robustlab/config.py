"""What a run is: typed configs for data, strategy, model and recipe, and where it executes.

`ExperimentConfig` is a run's identity (its hash is the run id); `Context` says where and how it
runs and is not part of that identity.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from robustlab.records import config_hash
from robustlab.settings import AugmentConfig, TrainConfig

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
