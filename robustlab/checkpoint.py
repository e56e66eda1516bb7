"""Checkpoints written atomically and read with a clear error when unusable."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from robustlab.errors import UsageError
from robustlab.fileio import atomic_write


def save_checkpoint(path: str | Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint written by `save_checkpoint`, read with `weights_only=True`: tensors and plain
    Python containers only, so a crafted file cannot run code while it is loaded."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise UsageError(f"checkpoint {path} is unreadable or corrupt ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "strategy" not in state:
        raise UsageError(f"{path} is not a robustlab checkpoint")
    return state
