"""Label noise defined for the whole training set, which then follows each image through the
train/validation split.

Noise types (the `--noise-type` values):

* ``symmetric | uniform | pair | asymmetric`` - synthetic, drawn on the training split after it
  is carved (`robustlab.corruptions.labels`); they need a rate.
* ``instance`` - instance-dependent noise (`robustlab.corruptions.instance`); needs a rate.
* ``human:<set>`` - CIFAR-10N ``aggre | random1 | random2 | random3 | worst`` or CIFAR-100N
  ``noisy`` (`robustlab.corruptions.human`); the rate is the file's.
* ``file`` - the user's own labels (`--noise-file`, one per training image in dataset order).
* ``transition:<source>`` - class-conditional noise drawn from the empirical transition matrix
  of `<source>` (any type above) on the same training set: the class-conditional twin.

All but the first group are computed for every training image in dataset order (seeded by the run
seed) and indexed by each split sample's original position (`DataSplits.train_index`), so
validation images get their own labels too.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from robustlab.corruptions.human import human_labels
from robustlab.corruptions.instance import NORM_STD, instance_dependent_labels
from robustlab.corruptions.labelfiles import file_sha256, read_label_dict
from robustlab.corruptions.labels import NOISE_TYPES, corrupt_labels, corrupt_with_transition, noise_report
from robustlab.errors import UsageError, require
from robustlab.noise_types import NOISE_TYPE_HELP, parse_noise_type  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from robustlab.data.datasets import ImageDataset
    from robustlab.data.splits import DataSplits

RATE_TOLERANCE = 0.005  # a --noise-rate given with file-defined noise must match the file's rate this closely


def is_dataset_noise(noise_type: str) -> bool:
    """True for noise defined on the whole training set (not drawn on the split)."""
    return noise_type not in NOISE_TYPES


@dataclass
class DatasetNoise:
    noisy: np.ndarray  # (N,) int64 for the whole training set, dataset order
    info: dict         # provenance for the noise report


def _check_rate(noise_type: str, rate: float, actual: float) -> None:
    require(rate == 0 or abs(rate - actual) <= RATE_TOLERANCE,
            f"--noise-rate {rate} conflicts with {noise_type}, whose labels are {actual:.2%} noisy; "
            "leave --noise-rate out")


def _user_labels(path: Path, clean: np.ndarray, num_classes: int) -> np.ndarray:
    arrays = read_label_dict(path)
    names = sorted(k for k in arrays if k != "noisy_label" and "clean" not in k)
    if "noisy_label" in arrays:
        noisy = arrays["noisy_label"]
    elif len(names) == 1:
        noisy = arrays[names[0]]
    elif not names:
        raise UsageError(f"{path} holds no noisy labels, only {', '.join(sorted(arrays))}")
    else:
        raise UsageError(f"{path} holds several label arrays ({', '.join(names)}); for a CIFAR-N file use "
                         "--noise-type human:<set>")
    require(len(noisy) == len(clean), f"label file {path} has {len(noisy)} labels; the training set has {len(clean)} images")
    require(int(noisy.max()) < num_classes, f"label file {path} holds labels >= {num_classes}, the number of classes")
    if "clean_label" in arrays:
        file_clean = arrays["clean_label"]
        differ = int(np.sum(file_clean != clean)) if len(file_clean) == len(clean) else len(clean)
        require(differ == 0, f"clean labels in {path} do not match the dataset's labels ({differ} of {len(clean)} "
                             "differ; wrong file or dataset?)")
    return noisy


def dataset_noisy_labels(noise_type: str, rate: float, seed: int, dataset: str, data_dir: str | Path | None,
                         train: "ImageDataset", noise_file: str | Path | None = None) -> DatasetNoise:
    """Noisy labels for every image of the full training set `train` (dataset order)."""
    parse_noise_type(noise_type)
    clean = train.labels.numpy()
    c = train.num_classes
    if noise_type.startswith("human:"):
        found = human_labels(noise_type.split(":", 1)[1], dataset, data_dir, clean, train.classes, noise_file)
        _check_rate(noise_type, rate, found.info["file_rate"])
        return DatasetNoise(found.noisy, found.info)
    if noise_type.startswith("transition:"):
        source_type = noise_type.split(":", 1)[1]
        source = dataset_noisy_labels(source_type, rate, seed, dataset, data_dir, train, noise_file)
        matrix = noise_report(clean, source.noisy, c).transition
        noisy = corrupt_with_transition(clean, matrix, seed)
        return DatasetNoise(noisy, {"source": noise_type, "twin_of": source.info,
                                    "source_rate": float(np.mean(source.noisy != clean)),
                                    "source_transition": matrix.tolist()})
    require(noise_file is None or noise_type == "file",
            f"--noise-file needs --noise-type file, human:<set> or transition:<source>, not {noise_type}")
    if noise_type == "file":
        require(noise_file is not None, "--noise-type file needs --noise-file PATH")
        path = Path(noise_file).expanduser()
        noisy = _user_labels(path, clean, c)
        _check_rate(f"--noise-file {path}", rate, float(np.mean(noisy != clean)))
        return DatasetNoise(noisy, {"source": "file", "label_file": str(path), "sha256": file_sha256(path)})
    require(0 < rate < 1, f"--noise-type {noise_type} needs --noise-rate in (0, 1)")
    if noise_type == "instance":
        noisy = instance_dependent_labels(train.images, clean, c, rate, seed)
        return DatasetNoise(noisy, {"source": "instance", "nominal_rate": rate, "norm_std": NORM_STD, "seed": seed})
    noisy = corrupt_labels(clean, c, noise_type, rate, seed, coarse_labels=train.coarse_labels)
    return DatasetNoise(np.asarray(noisy), {"source": noise_type, "nominal_rate": rate, "seed": seed})


def apply_dataset_noise(splits: "DataSplits", full_train: "ImageDataset", noise_type: str, rate: float, seed: int,
                        dataset: str, data_dir: str | Path | None, noise_file: str | Path | None = None,
                        noisy_val: bool = False) -> dict:
    """Replace the split's training labels (and validation labels with `noisy_val`) by the dataset
    noise of each sample's original image; returns the noise report of the training split."""
    require(splits.train_index is not None, "these splits do not record each sample's original index")
    noise = dataset_noisy_labels(noise_type, rate, seed, dataset, data_dir, full_train, noise_file)
    clean = splits.train.labels.clone()
    splits.train.labels = torch.from_numpy(noise.noisy[splits.train_index]).clone()
    if noisy_val and splits.val is not None:
        splits.val.labels = torch.from_numpy(noise.noisy[splits.val_index]).clone()
    report = noise_report(clean, splits.train.labels, splits.num_classes).to_dict()
    report["noise_type"] = noise_type
    report["full_set_rate"] = float(np.mean(noise.noisy != full_train.labels.numpy()))
    report.update(noise.info)
    return report
