"""Shared fixtures: the real CIFAR-10 (decoded once per session), an isolated decode cache, and
tiny CIFAR-10 / CIFAR-100 folders written in torchvision's exact pickle format."""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    """ROBUSTLAB_DATA (CI: `../shared/data`, relative to the repo) or <repo>/../shared/data."""
    env = os.environ.get("ROBUSTLAB_DATA")
    if not env:
        return (REPO.parent / "shared" / "data").resolve()
    path = Path(env).expanduser()
    if not path.is_absolute():
        path = path if path.exists() else REPO / path
    return path.resolve()


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory) -> Path:
    """The decode cache for the whole session: a temp dir, never the user's home.

    An explicit ROBUSTLAB_CACHE is honoured (developers can keep decoded arrays between sessions).
    """
    env = os.environ.get("ROBUSTLAB_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("robustlab-cache")


@pytest.fixture(scope="session", autouse=True)
def _no_tensorboard():
    """Runs skip TensorBoard files (about 0.4 s of CPU per run); tests/test_loggers.py turns them on."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTLAB_TENSORBOARD", "0")
        yield


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(session_cache_dir):
    """Code that falls back to the default cache dir writes into the session cache, not ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROBUSTLAB_CACHE", str(session_cache_dir))
        yield


def _threads_for_tests() -> int | None:
    """Torch threads for tests: ROBUSTLAB_TEST_THREADS, else 1 on a small or busy machine.

    On an oversubscribed CPU, OpenMP threads spin-waiting on each other make a training step
    several times slower than one thread does (measured: 0.9 s vs 0.24 s for a small CNN).
    """
    env = os.environ.get("ROBUSTLAB_TEST_THREADS")
    if env:
        return int(env)
    cpus = os.cpu_count() or 1
    return 1 if cpus <= 2 or os.getloadavg()[0] >= cpus else None


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    threads, before = _threads_for_tests(), torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    yield threads
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    """The folder holding `cifar10/{train,test}/<class>/*.jpg`; skips when the real data is absent."""
    path = _data_dir()
    if not (path / "cifar10" / "train").is_dir():
        pytest.skip(f"real CIFAR-10 not found: {path / 'cifar10' / 'train'} is missing "
                    f"(set ROBUSTLAB_DATA to the folder holding cifar10/train and cifar10/test)")
    return path


@pytest.fixture(scope="session")
def cifar10(cifar10_dir, session_cache_dir):
    """(train, test) of the real CIFAR-10, decoded once per session (~15-40 s on a CPU)."""
    from robustlab.data import load_dataset

    return load_dataset("cifar10", cifar10_dir, cache_dir=session_cache_dir, download=False)


# ---- tiny datasets in torchvision's pickle format ---------------------------------------------

def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _random_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)


@dataclass
class TinyCifar:
    root: Path            # pass as data_dir
    folder: Path          # root / cifar-10-batches-py or root / cifar-100-python
    train_data: np.ndarray  # (N, 3072) uint8 rows as written: 1024 R, then 1024 G, then 1024 B
    train_labels: np.ndarray
    test_data: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    train_coarse: np.ndarray | None = None
    test_coarse: np.ndarray | None = None
    coarse_classes: list[str] | None = None


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_tiny_cifar10(root: Path, per_batch: int = 20, n_test: int = 40, seed: int = 0) -> TinyCifar:
    """`cifar-10-batches-py`: data_batch_1..5 and test_batch ({'data', 'labels', 'filenames',
    'batch_label'}) and batches.meta ({'label_names', 'num_cases_per_batch', 'num_vis'})."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    datas, labels = [], []
    for b in range(1, 6):
        data = _random_rows(rng, per_batch)
        lab = [int(v) for v in np.arange(per_batch) % 10]  # every class in every batch
        _dump(folder / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5", "labels": lab, "data": data,
                                            "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)]})
        datas.append(data)
        labels += lab
    test = _random_rows(rng, n_test)
    test_labels = [int(v) for v in (np.arange(n_test) * 3) % 10]
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_labels, "data": test,
                                   "filenames": [f"test_{i}.png" for i in range(n_test)]})
    _dump(folder / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": CIFAR10_CLASSES,
                                     "num_vis": 3072})
    return TinyCifar(root, folder, np.concatenate(datas), np.array(labels), test, np.array(test_labels),
                     list(CIFAR10_CLASSES))


def write_tiny_cifar100(root: Path, n_train: int = 60, n_test: int = 30, seed: int = 1) -> TinyCifar:
    """`cifar-100-python`: train and test ({'filenames', 'batch_label', 'fine_labels',
    'coarse_labels', 'data'}) and meta ({'fine_label_names', 'coarse_label_names'})."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine_names = [f"fine{i:02d}" for i in range(100)]
    coarse_names = [f"coarse{i:02d}" for i in range(20)]
    coarse_of = np.arange(100) % 20  # each superclass holds 5 fine classes
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = _random_rows(rng, n)
        fine = rng.integers(0, 100, size=n)
        _dump(folder / split, {"filenames": [f"{split}_{i}.png" for i in range(n)], "batch_label": f"{split} batch",
                               "fine_labels": [int(v) for v in fine], "coarse_labels": [int(v) for v in coarse_of[fine]],
                               "data": data})
        out[split] = (data, fine, coarse_of[fine])
    _dump(folder / "meta", {"fine_label_names": fine_names, "coarse_label_names": coarse_names})
    (tr_data, tr_fine, tr_coarse), (te_data, te_fine, te_coarse) = out["train"], out["test"]
    return TinyCifar(root, folder, tr_data, tr_fine, te_data, te_fine, fine_names, tr_coarse, te_coarse, coarse_names)


@pytest.fixture
def tiny_cifar10(tmp_path) -> TinyCifar:
    return write_tiny_cifar10(tmp_path / "data")


@pytest.fixture
def tiny_cifar100(tmp_path) -> TinyCifar:
    return write_tiny_cifar100(tmp_path / "data")
