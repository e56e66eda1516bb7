"""A finished run, rebuilt from its files: `<out>/records/<run_id>.json` and `<out>/runs/<run_id>/*.pt`."""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from robustlab.checkpoint import load_checkpoint
from robustlab.errors import UsageError, require
from robustlab.experiment import ExperimentConfig
from robustlab.fileio import read_json
from robustlab.records import read_record


def _build(cls, values):
    """A dataclass from a dict, recursively; unknown keys are ignored and missing ones take defaults,
    so records written by older or newer versions of robustlab still load."""
    if not dataclasses.is_dataclass(cls) or not isinstance(values, dict):
        return values
    kwargs = {}
    hints = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in values.items():
        f = hints.get(name)
        if f is None or not f.init:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kwargs[name] = _build(type(default), value) if dataclasses.is_dataclass(default) else value
    return cls(**kwargs)


def config_from_record(record: dict) -> ExperimentConfig:
    """The ExperimentConfig a run record was written from."""
    config = record.get("config")
    require(isinstance(config, dict) and "model" in config, f"run record {record.get('run_id', '?')} has no model config")
    return _build(ExperimentConfig, config)


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
    except TypeError as exc:  # a config value of the wrong shape (hand-edited file)
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
