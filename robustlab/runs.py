"""A finished run, rebuilt from its files: `<out>/records/<run_id>.json` and `<out>/runs/<run_id>/*.pt`."""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from robustlab.checkpoint import load_checkpoint
from robustlab.errors import UsageError, require
from robustlab.experiment import ExperimentConfig
from robustlab.fileio import read_json
from robustlab.records import read_record


def _matches(value, hint) -> bool:
    """Whether a JSON value fits a field's declared type (ints fit floats; lists fit tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if hint in (list, tuple) or origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        inner = args[0] if args else typing.Any
        return all(_matches(v, inner) for v in value)
    return True  # a type this check does not know: leave it to the config's own validation


def _build(cls, values, where: str = "config"):
    """A dataclass from a dict, recursively; unknown keys are ignored and missing ones take defaults,
    so records written by older or newer versions of robustlab still load. A value of the wrong type
    or shape (a hand-edited file) is a UsageError naming the field."""
    if not isinstance(values, dict):
        raise UsageError(f"{where} must be a JSON object, got {values!r}")
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        f = fields.get(name)
        if f is None or not f.init:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        elif _matches(value, hints[name]):
            kwargs[name] = value
        else:
            hint = hints[name]
            shown = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            raise UsageError(f"{where}.{name} must be {shown}, got {value!r}")
    return cls(**kwargs)


def config_from_record(record: dict) -> ExperimentConfig:
    """The ExperimentConfig a run record was written from."""
    config = record.get("config")
    require(isinstance(config, dict) and "model" in config, f"run record {record.get('run_id', '?')} has no model config")
    return _build(ExperimentConfig, config)


def check_ranges(cfg: ExperimentConfig) -> None:
    """The values a run's config must hold beyond their types (the recipe and the strategy check their own)."""
    from robustlab.noise_types import parse_noise_type

    d = cfg.data
    require(d.val_size >= 0, f"config.data.val_size must be >= 0, got {d.val_size}")
    require(d.train_size is None or d.train_size >= 1, f"config.data.train_size must be >= 1, got {d.train_size}")
    require(d.test_size is None or d.test_size >= 1, f"config.data.test_size must be >= 1, got {d.test_size}")
    require(0 <= d.noise_rate < 1, f"config.data.noise_rate must be in [0, 1), got {d.noise_rate}")
    parse_noise_type(d.noise_type)
    require(cfg.seed >= 0, f"config.seed must be >= 0, got {cfg.seed}")
    require(bool(cfg.model), "config.model must name a model")


def load_run_config(path: str | Path) -> tuple[ExperimentConfig, dict]:
    """(config, environment) from a run record (`records/<run_id>.json`) or `--print-config` output.

    `environment` holds what the run was executed with, e.g. `deterministic` and `threads`; a
    config whose run id differs from the file's (fields added to robustlab since) gets a warning.
    """
    path = Path(path)
    require(path.is_file(), f"run record {path} does not exist")
    data = read_json(path)
    require(isinstance(data, dict) and isinstance(data.get("config"), dict) and "model" in data["config"],
            f"{path} is not a run record (no config with a model); pass records/<run_id>.json or --print-config output")
    try:
        cfg = config_from_record(data)
        check_ranges(cfg)
    except UsageError as exc:  # a config value of the wrong type or shape (hand-edited file)
        raise UsageError(f"{path}: {exc}") from None
    except TypeError as exc:
        raise UsageError(f"{path} holds a config robustlab cannot rebuild ({exc})") from None
    recorded_id = data.get("run_id")
    if recorded_id and recorded_id != cfg.run_id:
        print(f"warning: {path} has run id {recorded_id} but rebuilds as {cfg.run_id} "
              f"(the config gained fields with defaults since it was written)", file=sys.stderr)
    environment = data.get("environment")
    return cfg, environment if isinstance(environment, dict) else {}


def record_for_checkpoint(checkpoint: str | Path) -> Path:
    """`<results>/runs/<run_id>/<name>.pt` -> `<results>/records/<run_id>.json`."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent.parent / "records" / f"{checkpoint.parent.name}.json"


@dataclass
class RunNetwork:
    network: nn.Module      # the run's feature extractor (forward_features), in eval mode on the CPU
    record: dict
    config: ExperimentConfig
    checkpoint: Path


def load_run_network(checkpoint: str | Path, record_path: str | Path | None = None) -> RunNetwork:
    """Rebuild the network of a run from its checkpoint (last.pt or best.pt) and its record.

    For a SupCon classifier-stage run the network is its encoder; for every other strategy it is the
    strategy's `model`.
    """
    from robustlab.models import create_model
    from robustlab.strategies.supcon import load_encoder_weights

    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)  # a file that is not a robustlab checkpoint fails here
    require(isinstance(state["strategy"], dict), f"{checkpoint} is not a robustlab checkpoint")
    record_path = Path(record_path) if record_path else record_for_checkpoint(checkpoint)
    if not record_path.is_file():
        raise UsageError(f"no run record for {checkpoint} at {record_path}; pass --record PATH "
                         f"(the records/<run_id>.json of the results directory that holds runs/<run_id>/)")
    record = read_record(record_path)
    cfg = config_from_record(record)
    classes = (record.get("data") or {}).get("classes")
    require(bool(classes), f"run record {record_path} does not list the dataset's classes")
    network = create_model(cfg.model, num_classes=len(classes), **cfg.model_kwargs)
    load_encoder_weights(network, state["strategy"],
                         source=f"checkpoint {checkpoint} (model {cfg.model} of record {record_path.name})")
    return RunNetwork(network.eval(), record, cfg, checkpoint)
