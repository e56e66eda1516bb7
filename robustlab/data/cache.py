"""Decode-once cache of uint8 arrays, validated by a checksum so a corrupt file is rebuilt."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from robustlab.fileio import atomic_write


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype}:{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


class ArrayCache:
    """Stores dicts of numpy arrays as `<key-hash>.npz` plus a `.json` with their checksum."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _paths(self, key: str) -> tuple[Path, Path]:
        name = hashlib.sha1(key.encode()).hexdigest()[:16]
        return self.root / f"{name}.npz", self.root / f"{name}.json"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        data_path, meta_path = self._paths(key)
        if not data_path.exists() or not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            with np.load(data_path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            if meta.get("key") != key or meta.get("sha256") != _digest(arrays):
                raise ValueError("checksum mismatch")
        except Exception as exc:  # truncated zip, bad JSON, wrong content: rebuild
            print(f"robustlab: cache {data_path} is corrupt ({exc}); rebuilding", file=sys.stderr)
            return None
        return arrays

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        data_path, meta_path = self._paths(key)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(data_path, lambda f: np.savez(f, **arrays))
            atomic_write(meta_path, lambda f: f.write(json.dumps({"key": key, "sha256": _digest(arrays)}).encode()))
        except OSError as exc:  # a read-only cache only costs speed
            print(f"robustlab: cannot write cache in {self.root} ({exc}); continuing without it", file=sys.stderr)
