"""Run records: one JSON per finished run, keyed by a hash of the config that defines the run."""
from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

from robustlab.errors import UsageError
from robustlab.fileio import read_json, write_json


def config_hash(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def environment() -> dict:
    import timm
    import torch
    import torchvision

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or platform.machine()
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "device": device, "host": platform.node()}


def record_path(results_dir: str | Path, run_id: str) -> Path:
    return Path(results_dir) / "records" / f"{run_id}.json"


def write_record(results_dir: str | Path, record: dict) -> Path:
    path = record_path(results_dir, record["run_id"])
    write_json(path, record)
    return path


def read_record(path: str | Path) -> dict:
    record = read_json(path)
    if not isinstance(record, dict) or not {"run_id", "config", "metrics"} <= record.keys():
        raise UsageError(f"{path} is not a complete run record; delete it to recompute the run")
    return record


def find_record(results_dir: str | Path, run_id: str) -> dict | None:
    path = record_path(results_dir, run_id)
    return read_record(path) if path.exists() else None


def load_records(results_dir: str | Path) -> list[dict]:
    # a missing records folder globs to nothing: no records yet
    return [read_record(p) for p in sorted((Path(results_dir) / "records").glob("*.json"))]
