"""Find, decode and cache CIFAR-10 / CIFAR-100 / image-folder datasets as uint8 tensors.

Sources, tried in order for `cifar10` / `cifar100`:
  1. torchvision's `cifar-10-batches-py` / `cifar-100-python` folder under the data dir;
  2. an image-folder tree `<data_dir>/<name>/{train,test}/<class>/*.(png|jpg)`;
  3. torchvision's download into the data dir, where a network exists.
`imagefolder:<path>` reads `<path>/{train,test}/<class>/...` directly.

In an image folder, a file that cannot be decoded or a class folder without images is a UsageError
naming it; with `skip_bad_images=True` undecodable files are left out instead, with a warning that
counts them (a class folder without images stays an error: the classes would no longer match).
"""
from __future__ import annotations

import os
import pickle
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from robustlab.data.cache import ArrayCache
from robustlab.errors import UsageError

KNOWN_DATASETS = ("cifar10", "cifar100", "imagefolder:<path>")
TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class ImageDataset:
    """One split held as tensors: images uint8 (N, 3, H, W), labels int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    coarse_labels: torch.Tensor | None = None
    coarse_classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: torch.Tensor | np.ndarray) -> "ImageDataset":
        index = torch.as_tensor(index, dtype=torch.long)
        coarse = None if self.coarse_labels is None else self.coarse_labels[index]
        return ImageDataset(self.images[index], self.labels[index], self.classes, coarse, self.coarse_classes)


def default_data_dir() -> Path:
    return Path(os.environ.get("ROBUSTLAB_DATA", "data"))


def default_cache_dir() -> Path:
    return Path(os.environ.get("ROBUSTLAB_CACHE", Path.home() / ".cache" / "robustlab"))


def load_dataset(name: str, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                 download: bool = True, skip_bad_images: bool = False) -> tuple[ImageDataset, ImageDataset]:
    """Return (train, test) for `cifar10`, `cifar100` or `imagefolder:<path>`."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    cache = ArrayCache(Path(cache_dir) if cache_dir else default_cache_dir())
    if name.startswith("imagefolder:"):
        root = Path(name.split(":", 1)[1]).expanduser()
        if not (root / "train").is_dir() or not (root / "test").is_dir():
            raise UsageError(f"image folder dataset needs {root}/train/<class>/ and {root}/test/<class>/; not found")
        return _load_image_folder(root, cache, skip_bad_images)
    if name not in TORCHVISION_FOLDERS:
        raise UsageError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")

    tried = []
    tv_dir = data_dir / TORCHVISION_FOLDERS[name]
    tried.append(str(tv_dir))
    if tv_dir.is_dir():
        return _load_torchvision(name, data_dir)
    folder = data_dir / name
    tried.append(str(folder / "{train,test}"))
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        return _load_image_folder(folder, cache, skip_bad_images)
    if download:
        tried.append("torchvision download")
        try:
            return _load_torchvision(name, data_dir, download=True)
        except Exception as exc:  # no network, read-only dir, ...
            tried[-1] += f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'failed'})"
    raise UsageError(
        f"dataset {name!r} not found; tried: {'; '.join(tried)}. "
        f"Pass --data-dir DIR (or set ROBUSTLAB_DATA) to a folder holding {TORCHVISION_FOLDERS[name]}/ or {name}/train and {name}/test")


# Files of torchvision's CIFAR folders: (train files, test files, meta file, label key, class-name key).
_PICKLE_LAYOUT = {
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta", "labels", "label_names"),
    "cifar100": (["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


def _load_torchvision(name: str, data_dir: Path, download: bool = False) -> tuple[ImageDataset, ImageDataset]:
    """Read torchvision's pickled CIFAR folder; torchvision itself is used only to download it.

    The pickles are read directly (not through torchvision's CIFAR classes), because those refuse
    any file whose md5 differs from the original release (a re-packed or subsetted copy).
    """
    if download:
        import socket

        from torchvision import datasets

        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(old_timeout or 60.0)  # an unreachable network fails instead of hanging
        try:
            cls(root=str(data_dir), train=True, download=True)  # downloads, extracts and checks md5
        finally:
            socket.setdefaulttimeout(old_timeout)
    return _read_cifar_pickles(name, data_dir / TORCHVISION_FOLDERS[name])


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    if not isinstance(entry, dict):
        raise ValueError(f"{path.name} does not hold a dict")
    return entry


def _read_cifar_pickles(name: str, base: Path) -> tuple[ImageDataset, ImageDataset]:
    train_files, test_files, meta_file, label_key, names_key = _PICKLE_LAYOUT[name]
    try:
        meta = _unpickle(base / meta_file)
        classes = [str(c) for c in meta[names_key]]
        coarse_classes = [str(c) for c in meta["coarse_label_names"]] if name == "cifar100" else None
        splits = []
        for files in (train_files, test_files):
            entries = [_unpickle(base / f) for f in files]
            data = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries])
            labels = np.concatenate([np.asarray(e[label_key], dtype=np.int64) for e in entries])
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels) or len(data) == 0:
                raise ValueError(f"expected data (N, 3072) and N labels, got data {data.shape} and {len(labels)} labels")
            if labels.min() < 0 or labels.max() >= len(classes):
                raise ValueError(f"labels outside [0, {len(classes)})")
            images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))
            coarse = None
            if name == "cifar100":
                coarse_np = np.concatenate([np.asarray(e["coarse_labels"], dtype=np.int64) for e in entries])
                if len(coarse_np) != len(labels) or coarse_np.min() < 0 or coarse_np.max() >= len(coarse_classes):
                    raise ValueError("coarse_labels do not match the data or the coarse class names")
                coarse = torch.from_numpy(coarse_np)
            splits.append(ImageDataset(images, torch.from_numpy(labels), classes, coarse, coarse_classes))
    except (OSError, EOFError, KeyError, ValueError, TypeError, pickle.UnpicklingError) as exc:
        detail = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__
        raise UsageError(f"{base} is incomplete or corrupt: {detail}".splitlines()[0]) from None
    return splits[0], splits[1]


def _folder_samples(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(sorted class names, [(image path, class index)]); a class folder without images is a UsageError."""
    classes = sorted(d.name for d in os.scandir(folder) if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UsageError(f"no class folders under {folder}: expected {folder}/<class>/<image>")
    samples = []
    for index, name in enumerate(classes):
        files = sorted(str(Path(dirpath) / f) for dirpath, _, names in os.walk(folder / name, followlinks=True)
                       for f in names if f.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise UsageError(f"class folder {folder / name} has no images ({', '.join(IMAGE_SUFFIXES)}); "
                             f"add images or remove the folder")
        samples += [(path, index) for path in files]
    return classes, samples


def _load_image_folder(root: Path, cache: "ArrayCache", skip_bad_images: bool = False) -> tuple[ImageDataset, ImageDataset]:
    splits = []
    for split in ("train", "test"):
        classes, samples = _folder_samples(root / split)
        key = f"{root.resolve()}|{split}|{len(samples)}|{samples[0][0]}|{samples[-1][0]}" + ("|skip-bad" if skip_bad_images else "")
        arrays = cache.get(key)
        if arrays is None:
            images, ok = _decode_all([p for p, _ in samples], skip_bad_images)
            labels = np.array([c for _, c in samples], dtype=np.int64)[ok]
            arrays = {"images": images, "labels": labels}
            cache.put(key, arrays)
        splits.append(ImageDataset(torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"]), classes))
    if splits[0].classes != splits[1].classes:
        raise UsageError(f"train and test class folders differ under {root}")
    return splits[0], splits[1]


def _decode_one(path: str) -> np.ndarray | str:
    """The RGB pixels, or why the file cannot be decoded."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"


def _decode_all(paths: list[str], skip_bad_images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, 3, H, W) of the decodable images, bool mask of which paths they are)."""
    # Pillow releases the GIL while decoding, so threads give a real speed-up.
    with ThreadPoolExecutor(max_workers=min(16, (os.cpu_count() or 1) * 2)) as pool:
        decoded = list(pool.map(_decode_one, paths, chunksize=256))
    ok = np.array([not isinstance(d, str) for d in decoded], dtype=bool)
    bad = [(p, d) for p, d in zip(paths, decoded) if isinstance(d, str)]
    if bad and not skip_bad_images:
        path, reason = bad[0]
        more = f" ({len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UsageError(f"cannot decode image {path} ({reason}){more}; fix or remove it, or pass --skip-bad-images")
    if bad:
        print(f"warning: skipped {len(bad)} undecodable image(s) of {len(paths)}, e.g. {bad[0][0]}",
              file=sys.stderr, flush=True)
    arrays = [d for d in decoded if not isinstance(d, str)]
    if not arrays:
        raise UsageError(f"none of the {len(paths)} images could be decoded (e.g. {paths[0]})")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise UsageError(f"images must all have one size; found {sorted(shapes)[:3]} (e.g. {paths[0]})")
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)), ok
