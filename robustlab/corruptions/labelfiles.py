"""Read label files without executing pickled code: .pt (torch.save of a dict of numpy arrays or
tensors, e.g. the CIFAR-N files), .npy and .csv.

`.pt` files go through `torch.load(weights_only=True)` with only the numpy globals that an
array needs allow-listed (array reconstruction, ndarray, dtype and the integer dtype classes);
`.npy` through `np.load(allow_pickle=False)`. Anything else, or a file that does not hold labels,
is a UsageError that names the file.
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustlab.errors import UsageError, require

LABEL_FILE_SUFFIXES = (".pt", ".pth", ".npy", ".csv")


def _numpy_safe_globals() -> list:
    """The numpy objects a pickled integer array refers to, under both of numpy's module names."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    allowed: list = [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one class per dtype
    if dtypes is not None:
        allowed += [type(np.dtype(t)) for t in (np.int8, np.int16, np.int32, np.int64,
                                                 np.uint8, np.uint16, np.uint32, np.uint64)]
    return allowed


def _not_labels(path: Path, why: str) -> UsageError:
    return UsageError(f"{path} is not a label file ({why})")


def load_pt(path: Path) -> Any:
    """torch.load with weights_only=True and numpy arrays allowed; any failure names the file."""
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a malformed file can fail anywhere in the unpickler; all mean "not labels"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _not_labels(path, f"torch.load(weights_only=True) refused it: {first[:160]}") from None


def as_label_vector(value: Any, path: Path, what: str) -> np.ndarray:
    """A 1-D int64 array of non-negative labels from a list, numpy array or tensor."""
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        raise _not_labels(path, f"{what} is not an array") from None
    if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)  # integer labels written as floats (common in CSV tools)
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or arr.size == 0:
        raise _not_labels(path, f"{what} must be a non-empty 1-D integer array, got dtype {arr.dtype} shape {arr.shape}")
    arr = arr.astype(np.int64)
    require(arr.min() >= 0, f"{path}: {what} holds negative labels")
    return arr


def read_label_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The label arrays a file holds, by name.

    .pt: a dict of arrays (names kept) or one array ("noisy_label"); .npy: one array
    ("noisy_label"); .csv: a header row with a `noisy` column (and optionally `clean`), as written
    by `python -m robustlab.noise export`, or a single column of labels without a header.
    """
    path = Path(path).expanduser()
    require(path.is_file(), f"label file {path} does not exist")
    suffix = path.suffix.lower()
    require(suffix in LABEL_FILE_SUFFIXES,
            f"label file {path} must end in {', '.join(LABEL_FILE_SUFFIXES)}")
    if suffix in (".pt", ".pth"):
        obj = load_pt(path)
        if isinstance(obj, dict):
            arrays = {str(k): v for k, v in obj.items() if isinstance(v, (np.ndarray, torch.Tensor, list))}
            if not arrays:
                raise _not_labels(path, "a dict without label arrays")
            return {k: as_label_vector(v, path, repr(k)) for k, v in arrays.items()}
        return {"noisy_label": as_label_vector(obj, path, "its content")}
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:  # EOFError: an empty file
            raise _not_labels(path, f"np.load refused it: {str(exc).splitlines()[0][:160]}") from None
        return {"noisy_label": as_label_vector(arr, path, "its array")}
    return _read_csv(path)


def _csv_integer(text: str) -> int:
    """An integer label from a CSV cell ("3" or "3.0"); ValueError for "3.5", "inf", "nan" or text."""
    value = float(text)
    if not value.is_integer():
        raise ValueError
    return int(value)


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise _not_labels(path, f"unreadable CSV: {exc}") from None
    if not rows:
        raise _not_labels(path, "empty CSV")
    header = [h.strip().lower() for h in rows[0]]
    if "noisy" in header:
        columns = {"noisy_label": header.index("noisy")}
        if "clean" in header:
            columns["clean_label"] = header.index("clean")
        body = rows[1:]
    else:
        require(len(header) == 1, f"{path} is not a label file (a CSV needs a 'noisy' column or a single column of labels)")
        columns, body = {"noisy_label": 0}, rows
    out = {}
    for name, col in columns.items():
        try:
            out[name] = np.array([_csv_integer(r[col]) for r in body], dtype=np.int64)
        except (ValueError, IndexError):
            raise _not_labels(path, f"column {name.split('_')[0]!r} holds a non-integer or missing value") from None
        out[name] = as_label_vector(out[name], path, name)
    return out


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
