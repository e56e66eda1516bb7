"""Atomic file writes: a reader (or a second process) never sees a partial file."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

from robustlab.errors import UsageError


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write via a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    data = json.dumps(obj, indent=1, sort_keys=True, default=str).encode()
    atomic_write(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a truncated or corrupt one is a UsageError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is corrupt or truncated ({exc.__class__.__name__}); delete it to recompute") from None
