"""Real human label noise: CIFAR-10N / CIFAR-100N (Wei et al., "Learning with Noisy Labels
Revisited: A Study Using Real-World Human Annotations", ICLR 2022), matched to robustlab's
training images.

The CIFAR-N files hold one label per training image in the original CIFAR order (index 0..49999
of `data_batch_1..5`, or of `cifar-100-python/train`). robustlab reads CIFAR either as
torchvision's pickles (same order: no mapping) or as an image folder
`train/<class>/NNNN.<ext>`, where original image i with clean label c is file number NNNN = the
count of earlier images with label c. The folder loader orders samples by class, then by file
name; `original_index` inverts that numbering, so each sample keeps its own label through any
train/validation split. The file's `clean_label` must equal the dataset's labels under the
mapping, otherwise the file or the dataset is the wrong one and loading stops.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robustlab.corruptions.labelfiles import file_sha256, read_label_dict
from robustlab.errors import require
from robustlab.noise_types import LABEL_SETS, check_label_set  # noqa: F401  (re-exported)

CIFAR_N_FILES = {"cifar10": "CIFAR-10_human.pt", "cifar100": "CIFAR-100_human.pt"}
CIFAR_N_FOLDER = "cifar-n"
# Fraction of labels that differ from clean_label in the released files (Wei et al. 2022).
PUBLISHED_RATES = {"aggre": 0.0901, "random1": 0.1723, "random2": 0.1812, "random3": 0.1764, "worst": 0.4021,
                   "noisy": 0.4020}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


@dataclass
class DatasetLayout:
    """Where a training set is read from, as `robustlab.data.load_dataset` would read it."""

    name: str
    kind: str            # "torchvision" (pickled CIFAR, original order) or "imagefolder"
    root: Path           # the torchvision folder, or the image-folder root holding train/ and test/

    @property
    def cifar_n_dir(self) -> Path:
        """CIFAR-N files live in a `cifar-n/` folder next to the dataset's folder."""
        return self.root.parent / CIFAR_N_FOLDER


def locate_dataset(name: str, data_dir: str | Path | None) -> DatasetLayout:
    """The layout `load_dataset(name, data_dir)` reads (same search order)."""
    from robustlab.data.datasets import default_data_dir

    if name.startswith("imagefolder:"):
        return DatasetLayout(name, "imagefolder", Path(name.split(":", 1)[1]).expanduser())
    base = Path(data_dir) if data_dir else default_data_dir()
    tv = base / TORCHVISION_FOLDERS.get(name, name)
    if name in TORCHVISION_FOLDERS and not tv.is_dir() and (base / name / "train").is_dir():
        return DatasetLayout(name, "imagefolder", base / name)
    return DatasetLayout(name, "torchvision", tv)


def dataset_family(name: str, classes: list[str]) -> str | None:
    """'cifar10' / 'cifar100' when the dataset is a CIFAR training set CIFAR-N can label."""
    if name in ("cifar10", "cifar100"):
        return name
    if name.startswith("imagefolder:") and list(classes) == CIFAR10_CLASSES:
        return "cifar10"
    return None


def image_folder_train_files(root: Path) -> list[tuple[str, int]]:
    """(path, class index) of every training image, in the order the image-folder loader uses."""
    from torchvision.datasets.folder import find_classes, make_dataset

    from robustlab.data.datasets import IMAGE_SUFFIXES

    _, class_to_idx = find_classes(str(root / "train"))
    return make_dataset(str(root / "train"), class_to_idx, extensions=IMAGE_SUFFIXES)


def original_index(files: list[tuple[str, int]], file_clean: np.ndarray, classes: list[str], source: Path) -> np.ndarray:
    """Original CIFAR index of each image-folder sample: class c's file NNNN is the NNNN-th
    (0-based) original image with clean label c."""
    by_class = [np.flatnonzero(file_clean == c) for c in range(len(classes))]
    classes_of = np.array([c for _, c in files], dtype=np.int64)
    for c, name in enumerate(classes):
        have, want = int(np.sum(classes_of == c)), len(by_class[c])
        require(have == want, f"clean labels in {source} do not match the dataset: class {name!r} has {have} "
                              f"training images, the file has {want} images of that class (wrong file or dataset?)")
    index = np.empty(len(files), dtype=np.int64)
    for pos, (path, c) in enumerate(files):
        stem = Path(path).stem
        require(stem.isdigit(), f"cannot match {source} to the image folder: {path} is not named NNNN.<ext> "
                                "(CIFAR-N needs class folders numbered in original training order)")
        number = int(stem)
        require(number < len(by_class[c]), f"cannot match {source} to the image folder: {path} is numbered beyond "
                                           f"the {len(by_class[c])} images of class {classes[c]!r}")
        index[pos] = by_class[c][number]
    require(len(np.unique(index)) == len(index), f"cannot match {source} to the image folder: two files of one class "
                                                 "carry the same number")
    return index


@dataclass
class HumanLabels:
    """Noisy labels for a whole training set, in the dataset's own order."""

    noisy: np.ndarray          # (N,) int64, dataset order
    original_index: np.ndarray  # (N,) original CIFAR index of each dataset sample
    info: dict                 # provenance for the noise report


def default_label_file(label_set: str, layout: DatasetLayout) -> Path:
    family = LABEL_SETS[label_set][0]
    path = layout.cifar_n_dir / CIFAR_N_FILES[family]
    require(path.is_file(), f"human:{label_set} needs {CIFAR_N_FILES[family]}: not found at {path} "
                            "(put the CIFAR-N files in a cifar-n/ folder next to the dataset, or pass --noise-file)")
    return path


def human_labels(label_set: str, dataset_name: str, data_dir: str | Path | None, train_labels: np.ndarray,
                 classes: list[str], noise_file: str | Path | None = None) -> HumanLabels:
    """The CIFAR-N label set `label_set` for the training set (labels `train_labels`, dataset order)."""
    family = check_label_set(label_set)
    have = dataset_family(dataset_name, classes)
    require(have == family, f"human:{label_set} is a {'CIFAR-10N' if family == 'cifar10' else 'CIFAR-100N'} label set; "
                            f"dataset {dataset_name!r} has no such labels (it needs {family}"
                            f"{' or an image folder with the CIFAR-10 classes' if family == 'cifar10' else ''})")
    layout = locate_dataset(dataset_name, data_dir)
    path = Path(noise_file).expanduser() if noise_file else default_label_file(label_set, layout)
    arrays = read_label_dict(path)
    key = LABEL_SETS[label_set][1]
    for needed in ("clean_label", key):
        require(needed in arrays, f"{path} is not a CIFAR-N label file for human:{label_set}: no {needed!r} array "
                                  f"(it holds {', '.join(sorted(arrays))})")  # never empty: read_label_dict refuses that
    file_clean, file_noisy = arrays["clean_label"], arrays[key]
    n = len(train_labels)
    require(len(file_clean) == n and len(file_noisy) == n,
            f"label file {path} has {len(file_noisy)} labels; the {dataset_name} training set has {n} images")
    require(int(file_noisy.max()) < len(classes) and int(file_clean.max()) < len(classes),
            f"label file {path} holds labels >= {len(classes)}, the number of classes of {dataset_name}")
    if layout.kind == "imagefolder":
        files = image_folder_train_files(layout.root)
        require(len(files) == n, f"the image folder {layout.root / 'train'} changed since it was decoded; clear the cache")
        index = original_index(files, file_clean, classes, path)
    else:
        index = np.arange(n)
    differ = int(np.sum(file_clean[index] != train_labels))
    require(differ == 0, f"clean labels in {path} do not match the dataset's labels ({differ} of {n} differ; "
                         "wrong file or dataset?)")
    info = {"source": f"human:{label_set}", "label_file": str(path), "label_key": key,
            "sha256": file_sha256(path), "file_rate": float(np.mean(file_clean != file_noisy)),
            "layout": layout.kind}
    return HumanLabels(file_noisy[index], index, info)

