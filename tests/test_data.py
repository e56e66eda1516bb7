"""Dataset sources, the decode cache and the class-balanced splits."""
from __future__ import annotations

import hashlib
import json
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robustlab.data.datasets as datasets_mod
from robustlab.data import ImageDataset, load_dataset, make_splits
from robustlab.data.splits import channel_stats
from robustlab.errors import UsageError

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def image_hashes(images: torch.Tensor) -> list[bytes]:
    flat = images.reshape(len(images), -1).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


# ---- the real CIFAR-10 ------------------------------------------------------------------------

def test_real_cifar10_shapes_classes_and_counts(cifar10):
    train, test = cifar10
    assert train.images.shape == (50000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and test.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.labels.shape == (50000,)
    assert train.classes == CLASSES and test.classes == CLASSES
    assert train.labels.bincount().tolist() == [5000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    assert train.coarse_labels is None


def test_real_cifar10_pixels_match_the_jpeg_files(cifar10, cifar10_dir):
    train, test = cifar10
    # Image folders are read class by class, files sorted: index 5000 * c + i is <class c>/<i:04d>.jpg.
    for split, ds, index, cls, number in (("train", train, 0, "airplane", 0), ("train", train, 5000 * 3 + 17, "cat", 17),
                                          ("test", test, 1000 * 9 + 999, "truck", 999)):
        with Image.open(cifar10_dir / "cifar10" / split / cls / f"{number:04d}.jpg") as img:
            expected = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(ds.images[index], expected)
        assert ds.classes[int(ds.labels[index])] == cls


def test_channel_stats_of_the_real_training_set(cifar10):
    # Figures from shared/data/README.md (train mean/std of the JPEG copy).
    mean, std = channel_stats(cifar10[0].images)
    assert mean == pytest.approx((0.4913, 0.4821, 0.4465), abs=2e-4)
    assert std == pytest.approx((0.2452, 0.2428, 0.2606), abs=2e-4)


def test_channel_stats_by_hand():
    images = torch.tensor([[[[0, 255]], [[51, 51]], [[0, 0]]], [[[255, 255]], [[102, 0]], [[0, 255]]]], dtype=torch.uint8)
    mean, std = channel_stats(images)  # channel 0: {0, 1, 1, 1}; channel 1: {.2, .2, .4, 0}; channel 2: {0, 0, 0, 1}
    assert mean == pytest.approx((0.75, 0.2, 0.25), abs=1e-4)
    assert std == pytest.approx((0.5, np.std([0.2, 0.2, 0.4, 0.0], ddof=1), 0.5), abs=1e-4)
    assert channel_stats(images.float()) == (mean, std)


@pytest.fixture(scope="module")
def full_splits(cifar10):
    return make_splits(*cifar10, val_size=5000, seed=0)


def test_default_split_sizes_and_class_balance(full_splits, cifar10):
    s = full_splits
    assert len(s.val) == 5000 and len(s.train) == 45000
    assert s.val.labels.bincount().tolist() == [500] * 10
    assert s.train.labels.bincount().tolist() == [4500] * 10
    assert s.test is cifar10[1]  # the test split is never touched
    assert s.classes == CLASSES and s.num_classes == 10


def test_train_and_val_are_disjoint_and_cover_the_training_set(full_splits, cifar10):
    train_h, val_h, all_h = image_hashes(full_splits.train.images), image_hashes(full_splits.val.images), image_hashes(cifar10[0].images)
    assert len(set(all_h)) == 50000  # no duplicates, so a hash identifies an image
    assert not set(train_h) & set(val_h)
    assert set(train_h) | set(val_h) == set(all_h)
    # Labels travel with their images.
    label_of = dict(zip(all_h, cifar10[0].labels.tolist()))
    assert [label_of[h] for h in val_h[:200]] == full_splits.val.labels[:200].tolist()


def test_train_size_and_test_size_subsets_are_class_balanced(cifar10):
    s = make_splits(*cifar10, val_size=1000, train_size=2000, test_size=500, seed=3)
    assert s.train.labels.bincount().tolist() == [200] * 10
    assert s.val.labels.bincount().tolist() == [100] * 10
    assert s.test.labels.bincount().tolist() == [50] * 10
    assert not set(image_hashes(s.train.images)) & set(image_hashes(s.val.images))
    # The test subset is the same for every seed; train/val are not.
    t = make_splits(*cifar10, val_size=1000, train_size=2000, test_size=500, seed=4)
    assert torch.equal(s.test.images, t.test.images)
    # Normalization statistics come from the training subset.
    assert (s.mean, s.std) == channel_stats(s.train.images)


def test_splits_are_deterministic_by_seed(cifar10):
    a = make_splits(*cifar10, val_size=500, train_size=500, seed=7)
    b = make_splits(*cifar10, val_size=500, train_size=500, seed=7)
    c = make_splits(*cifar10, val_size=500, train_size=500, seed=8)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert len(set(image_hashes(a.val.images)) & set(image_hashes(c.val.images))) < 100


# ---- the same split rules on a small synthetic set (every image unique: its index is in its pixels) ----

def indexed(n: int, classes: int = 10, offset: int = 0) -> ImageDataset:
    """n images whose first pixel encodes their index; label = index % classes; coarse = label // 5."""
    idx = torch.arange(offset, offset + n)
    images = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 1, 0, 0] = idx % 256, idx // 256
    images[:, 2] = (idx % 7 * 30).to(torch.uint8).view(n, 1, 1)  # statistics that differ between subsets
    labels = idx % classes
    return ImageDataset(images, labels, [f"c{k}" for k in range(classes)], labels // 5, ["low", "high"])


def index_of(ds: ImageDataset) -> list[int]:
    return (ds.images[:, 0, 0, 0].long() + 256 * ds.images[:, 1, 0, 0].long()).tolist()


def test_synthetic_splits_are_class_balanced_disjoint_and_record_their_positions():
    train, test = indexed(1000), indexed(300, offset=5000)
    s = make_splits(train, test, val_size=200, train_size=500, test_size=100, seed=3)
    assert len(s.val) == 200 and len(s.train) == 500 and len(s.test) == 100
    assert s.val.labels.bincount().tolist() == [20] * 10 and s.train.labels.bincount().tolist() == [50] * 10
    assert s.test.labels.bincount().tolist() == [10] * 10
    assert index_of(s.train) == s.train_index.tolist() and index_of(s.val) == s.val_index.tolist()
    assert [i - 5000 for i in index_of(s.test)] == s.test_index.tolist()
    assert s.train_index.tolist() == sorted(s.train_index.tolist()) and s.val_index.tolist() == sorted(s.val_index.tolist())
    assert not set(s.train_index.tolist()) & set(s.val_index.tolist())
    assert torch.equal(s.train.coarse_labels, s.train.labels // 5) and s.train.coarse_classes == ["low", "high"]
    assert (s.mean, s.std) == channel_stats(s.train.images) != channel_stats(train.images)
    assert s.num_classes == 10 and s.classes == train.classes
    other = make_splits(train, test, val_size=200, train_size=500, test_size=100, seed=4)
    again = make_splits(train, test, val_size=200, train_size=500, test_size=100, seed=3)
    assert other.test_index.tolist() == s.test_index.tolist()  # the test subset does not follow the seed
    assert other.val_index.tolist() != s.val_index.tolist() and other.train_index.tolist() != s.train_index.tolist()
    assert again.val_index.tolist() == s.val_index.tolist() and again.train_index.tolist() == s.train_index.tolist()


def test_synthetic_full_sizes_keep_every_image_and_the_test_set_itself():
    train, test = indexed(100), indexed(50, offset=5000)
    s = make_splits(train, test, val_size=20, train_size=80, test_size=50, seed=0)
    assert sorted(s.train_index.tolist() + s.val_index.tolist()) == list(range(100))
    assert s.test is test and s.test_index.tolist() == list(range(50))
    t = make_splits(train, test, val_size=0, train_size=None, seed=0)
    assert t.val is None and t.val_index is None and t.train_index.tolist() == list(range(100))
    smallest = make_splits(train, test, val_size=90, train_size=10, test_size=10, seed=1)
    assert smallest.train.labels.bincount().tolist() == [1] * 10 and smallest.test.labels.bincount().tolist() == [1] * 10


@pytest.mark.parametrize("kwargs, message", [
    ({"val_size": 91}, "validation size 91 plus training size 10 exceeds the 100 training images"),
    ({"val_size": 50, "train_size": 51}, "validation size 50 plus training size 51 exceeds the 100 training images"),
    ({"val_size": -1}, "--val-size must be >= 0, got -1"),
    ({"val_size": 10, "train_size": 9}, "--train-size must be at least the number of classes (10), got 9"),
    ({"val_size": 10, "test_size": 9}, "--test-size must be at least the number of classes (10), got 9"),
])
def test_impossible_synthetic_splits_name_the_sizes(kwargs, message):
    with pytest.raises(UsageError) as err:
        make_splits(indexed(100), indexed(50, offset=5000), **kwargs)
    assert str(err.value) == message


def test_a_class_too_rare_to_split_is_a_usage_error():
    train = indexed(100)
    train.labels[:] = 0
    train.labels[0] = 1  # one image of class 1 cannot go to both sides
    with pytest.raises(UsageError, match="cannot take a class-balanced subset of 50 from 100 images"):
        make_splits(train, indexed(50, offset=5000), val_size=50, seed=0)


def test_val_size_zero_keeps_the_whole_training_set(tiny_cifar10):
    train, test = load_dataset("cifar10", tiny_cifar10.root, download=False)
    s = make_splits(train, test, val_size=0)
    assert s.val is None and torch.equal(s.train.images, train.images)


@pytest.mark.parametrize("kwargs, match", [
    ({"val_size": 100}, "exceeds the 100 training images"),
    ({"val_size": 95}, "exceeds"),  # 95 + at least one image per class
    ({"val_size": 50, "train_size": 51}, "exceeds"),
    ({"val_size": -1}, "val-size must be >= 0"),
    ({"val_size": 10, "train_size": 5}, "at least the number of classes"),
    ({"val_size": 10, "test_size": 3}, "at least the number of classes"),
])
def test_impossible_splits_raise_usage_error(tiny_cifar10, kwargs, match):
    train, test = load_dataset("cifar10", tiny_cifar10.root, download=False)
    with pytest.raises(UsageError, match=match):
        make_splits(train, test, **kwargs)


# ---- torchvision pickle folders ---------------------------------------------------------------

def test_tiny_cifar10_pickles_load_exactly(tiny_cifar10, tmp_path):
    t = tiny_cifar10
    train, test = load_dataset("cifar10", t.root, cache_dir=tmp_path / "cache", download=False)
    assert train.images.shape == (100, 3, 32, 32) and test.images.shape == (40, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.labels.tolist() == t.train_labels.tolist()  # data_batch_1..5 in order
    assert test.labels.tolist() == t.test_labels.tolist()
    assert train.classes == CLASSES
    # A row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    row = t.train_data[37]
    assert torch.equal(train.images[37, 0], torch.from_numpy(row[:1024].reshape(32, 32)))
    assert torch.equal(train.images[37, 2], torch.from_numpy(row[2048:].reshape(32, 32)))
    assert torch.equal(test.images.reshape(40, -1), torch.from_numpy(t.test_data))
    assert not (tmp_path / "cache").exists()  # pickles need no decode cache


def test_tiny_cifar100_loads_fine_and_coarse_labels_and_names(tiny_cifar100):
    t = tiny_cifar100
    train, test = load_dataset("cifar100", t.root, download=False)
    assert len(train) == 60 and len(test) == 30 and train.num_classes == 100
    assert train.classes == [f"fine{i:02d}" for i in range(100)]
    assert train.coarse_classes == [f"coarse{i:02d}" for i in range(20)] == test.coarse_classes
    assert train.labels.tolist() == t.train_labels.tolist() and test.labels.tolist() == t.test_labels.tolist()
    assert train.coarse_labels.tolist() == t.train_coarse.tolist()
    assert test.coarse_labels.tolist() == t.test_coarse.tolist()
    assert torch.equal(train.images.reshape(60, -1), torch.from_numpy(t.train_data))
    # Subsets keep the coarse labels aligned.
    sub = train.subset(torch.tensor([5, 2]))
    assert sub.coarse_labels.tolist() == [int(t.train_coarse[5]), int(t.train_coarse[2])]
    assert sub.coarse_classes == train.coarse_classes


def test_torchvision_folder_wins_over_an_image_folder(tiny_cifar10, monkeypatch):
    (tiny_cifar10.root / "cifar10" / "train").mkdir(parents=True)
    (tiny_cifar10.root / "cifar10" / "test").mkdir(parents=True)
    monkeypatch.setattr(datasets_mod, "_load_image_folder", lambda *a: pytest.fail("image folder was read"))
    assert len(load_dataset("cifar10", tiny_cifar10.root, download=False)[0]) == 100


@pytest.mark.parametrize("damage", ["truncate", "missing", "wrong_shape"])
def test_damaged_pickles_raise_usage_error(tiny_cifar100, damage):
    path = tiny_cifar100.folder / "train"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:5000])
    elif damage == "missing":
        path.unlink()
    else:
        with open(path, "wb") as f:
            pickle.dump({"data": np.zeros((4, 100), np.uint8), "fine_labels": [0] * 4, "coarse_labels": [0] * 4}, f)
    with pytest.raises(UsageError, match="cifar-100-python is incomplete or corrupt"):
        load_dataset("cifar100", tiny_cifar100.root, download=False)


# ---- errors -----------------------------------------------------------------------------------

def test_missing_data_dir_names_every_path_tried(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UsageError) as info:
        load_dataset("cifar10", missing, cache_dir=tmp_path / "cache", download=False)
    msg = str(info.value)
    assert str(missing / "cifar-10-batches-py") in msg
    assert str(missing / "cifar10" / "{train,test}") in msg
    assert "--data-dir" in msg and "\n" not in msg


def test_failed_download_is_reported_with_the_paths_and_fails_fast(tmp_path, monkeypatch):
    import torchvision.datasets

    timeouts = []

    def no_network(*args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        raise OSError("Name or service not known\nsecond line")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", no_network)
    before = socket.getdefaulttimeout()
    with pytest.raises(UsageError) as info:
        load_dataset("cifar100", tmp_path, cache_dir=tmp_path / "cache", download=True)
    msg = str(info.value)
    assert str(tmp_path / "cifar-100-python") in msg and str(tmp_path / "cifar100" / "{train,test}") in msg
    assert "torchvision download (OSError: Name or service not known)" in msg and "\n" not in msg
    assert timeouts and timeouts[0] is not None  # a socket timeout is set, so no download can hang
    assert socket.getdefaulttimeout() == before  # and it is restored afterwards


@pytest.mark.parametrize("name", ["cifar11", "mnist", "CIFAR10"])
def test_unknown_dataset_name(name, tmp_path):
    with pytest.raises(UsageError, match=r"unknown dataset .*known datasets: cifar10, cifar100, imagefolder"):
        load_dataset(name, tmp_path, download=False)


def test_imagefolder_without_train_and_test(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(UsageError, match="needs .*train/<class>/ and .*test/<class>/"):
        load_dataset(f"imagefolder:{tmp_path}")


# ---- image folders and the decode cache -------------------------------------------------------

@pytest.fixture
def png_folder(tmp_path):
    """2 classes x 3 PNGs (lossless) per split, each pixel (i, j) = (10 * k, i, j) for image k."""
    root = tmp_path / "imgs"
    k = 0
    expected = {"train": [], "test": []}
    for split in ("train", "test"):
        for cls in ("bee", "ant"):  # sorted order gives ant = 0, bee = 1
            (root / split / cls).mkdir(parents=True)
    for split in ("train", "test"):
        for cls in ("ant", "bee"):
            for n in range(3):
                arr = np.zeros((8, 8, 3), np.uint8)
                arr[..., 0] = 10 * k
                arr[..., 1] = np.arange(8)[:, None]
                arr[..., 2] = np.arange(8)[None, :]
                Image.fromarray(arr).save(root / split / cls / f"{n}.png")
                expected[split].append(torch.from_numpy(arr).permute(2, 0, 1))
                k += 1
    return root, {s: torch.stack(v) for s, v in expected.items()}


def test_image_folder_reads_pixels_and_sorted_classes(png_folder, tmp_path):
    root, expected = png_folder
    train, test = load_dataset(f"imagefolder:{root}", cache_dir=tmp_path / "cache")
    assert train.classes == ["ant", "bee"] == test.classes
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(train.images, expected["train"]) and torch.equal(test.images, expected["test"])


def test_second_load_hits_the_cache_and_a_corrupt_cache_is_rebuilt(png_folder, tmp_path, monkeypatch, capsys):
    root, expected = png_folder
    cache = tmp_path / "cache"
    real_decode = datasets_mod._decode_all
    calls = []

    def counting_decode(paths, skip_bad_images=False):
        calls.append(len(paths))
        return real_decode(paths, skip_bad_images)

    monkeypatch.setattr(datasets_mod, "_decode_all", counting_decode)
    load_dataset(f"imagefolder:{root}", cache_dir=cache)
    assert calls == [6, 6]  # train and test decoded once
    npz = sorted(cache.glob("*.npz"))
    assert len(npz) == 2 and len(list(cache.glob("*.json"))) == 2

    monkeypatch.setattr(datasets_mod, "_decode_all", lambda paths, skip: pytest.fail("decoded although cached"))
    train, test = load_dataset(f"imagefolder:{root}", cache_dir=cache)
    assert torch.equal(train.images, expected["train"]) and torch.equal(test.images, expected["test"])

    # Truncate one cache file: it is detected, reported and rebuilt.
    for path in npz:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    monkeypatch.setattr(datasets_mod, "_decode_all", counting_decode)
    capsys.readouterr()
    train, test = load_dataset(f"imagefolder:{root}", cache_dir=cache)
    assert calls == [6, 6, 6, 6]
    err = capsys.readouterr().err
    assert "is corrupt" in err and "rebuilding" in err
    assert torch.equal(train.images, expected["train"]) and torch.equal(test.images, expected["test"])
    monkeypatch.setattr(datasets_mod, "_decode_all", lambda paths, skip: pytest.fail("rebuilt cache not used"))
    assert torch.equal(load_dataset(f"imagefolder:{root}", cache_dir=cache)[0].images, expected["train"])


def test_cache_with_wrong_content_is_rebuilt(tmp_path):
    from robustlab.data.cache import ArrayCache

    cache = ArrayCache(tmp_path)
    cache.put("k", {"a": np.arange(5, dtype=np.int64)})
    assert cache.get("k")["a"].tolist() == [0, 1, 2, 3, 4]
    assert cache.get("other") is None
    npz = next(tmp_path.glob("*.npz"))
    np.savez(npz, a=np.arange(6, dtype=np.int64))  # a valid file with other content: checksum mismatch
    assert cache.get("k") is None


def test_cache_files_are_named_by_key_and_checked_by_content(tmp_path, capsys):
    from robustlab.data.cache import ArrayCache, _digest

    cache = ArrayCache(tmp_path / "new" / "dir")  # created on first write
    arrays = {"b": np.arange(6, dtype=np.uint8).reshape(2, 3), "a": np.ones(2)}
    cache.put("cifar10|train", arrays)
    stem = hashlib.sha1(b"cifar10|train").hexdigest()[:16]
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == [f"{stem}.json", f"{stem}.npz"]
    meta = json.loads((tmp_path / "new" / "dir" / f"{stem}.json").read_text())
    assert meta == {"key": "cifar10|train", "sha256": _digest(arrays)}
    got = cache.get("cifar10|train")
    assert sorted(got) == ["a", "b"] and np.array_equal(got["b"], arrays["b"]) and got["b"].dtype == np.uint8
    # The digest sees names, dtypes, shapes and bytes, and not the dict's order.
    assert _digest(dict(reversed(list(arrays.items())))) == _digest(arrays)
    for other in ({"c": arrays["b"], "a": arrays["a"]}, {"b": arrays["b"].astype(np.int8), "a": arrays["a"]},
                  {"b": arrays["b"].reshape(3, 2), "a": arrays["a"]}, {"b": arrays["b"] + 1, "a": arrays["a"]}):
        assert _digest(other) != _digest(arrays)
    (tmp_path / "new" / "dir" / f"{stem}.json").unlink()  # half a cache entry is a miss, without a word
    assert cache.get("cifar10|train") is None and capsys.readouterr().err == ""


def test_an_unwritable_cache_only_warns(tmp_path, capsys):
    from robustlab.data.cache import ArrayCache

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = ArrayCache(blocker / "cache")
    cache.put("k", {"a": np.arange(3)})
    assert capsys.readouterr().err.startswith(f"robustlab: cannot write cache in {blocker / 'cache'} (")
    assert cache.get("k") is None


def test_subset_and_len():
    ds = ImageDataset(torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 2, 2).clone(),
                      torch.tensor([0, 1, 0, 1]), ["x", "y"])
    sub = ds.subset(np.array([3, 0]))
    assert len(sub) == 2 and sub.labels.tolist() == [1, 0] and sub.images[:, 0, 0, 0].tolist() == [3, 0]


# ---- bad files in a user's image folder -------------------------------------------------------

def test_undecodable_image_names_the_file(png_folder, tmp_path):
    root, _ = png_folder
    bad = root / "train" / "bee" / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(UsageError) as info:
        load_dataset(f"imagefolder:{root}", cache_dir=tmp_path / "cache")
    assert str(info.value) == (f"cannot decode image {bad} (UnidentifiedImageError: cannot identify image file "
                               f"'{bad}'); fix or remove it, or pass --skip-bad-images")


def test_truncated_image_names_the_file_and_counts_the_others(png_folder, tmp_path):
    root, _ = png_folder
    for name in ("0.png", "1.png"):
        path = root / "test" / "ant" / name
        path.write_bytes(path.read_bytes()[:40])  # a valid header, cut-off pixel data
    with pytest.raises(UsageError) as info:
        load_dataset(f"imagefolder:{root}", cache_dir=tmp_path / "cache")
    msg = str(info.value)
    assert msg.startswith(f"cannot decode image {root / 'test' / 'ant' / '0.png'} (")
    assert msg.endswith(" (1 more); fix or remove it, or pass --skip-bad-images")


def test_skip_bad_images_leaves_them_out_and_says_how_many(png_folder, tmp_path, capsys):
    root, expected = png_folder
    (root / "train" / "bee" / "-broken.png").write_bytes(b"junk")  # first of its class: labels must skip it too
    (root / "train" / "ant" / "zz.jpg").write_bytes(b"")
    train, test = load_dataset(f"imagefolder:{root}", cache_dir=tmp_path / "cache", skip_bad_images=True)
    assert capsys.readouterr().err.strip() == (f"warning: skipped 2 undecodable image(s) of 8, e.g. "
                                               f"{root / 'train' / 'ant' / 'zz.jpg'}")
    assert torch.equal(train.images, expected["train"]) and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(test.images, expected["test"])


def test_class_folder_without_images_names_the_folder(png_folder, tmp_path):
    root, _ = png_folder
    empty = root / "test" / "cat"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    for skip in (False, True):  # skipping cannot help: the class lists would differ
        with pytest.raises(UsageError) as info:
            load_dataset(f"imagefolder:{root}", cache_dir=tmp_path / "cache", skip_bad_images=skip)
        assert str(info.value) == (f"class folder {empty} has no images (.png, .jpg, .jpeg, .bmp); "
                                   f"add images or remove the folder")


def test_default_data_and_cache_dirs_follow_the_environment(monkeypatch, tmp_path):
    from robustlab.data.datasets import default_cache_dir, default_data_dir

    monkeypatch.delenv("ROBUSTLAB_DATA", raising=False)
    monkeypatch.delenv("ROBUSTLAB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir() == Path("data")
    assert default_cache_dir() == tmp_path / ".cache" / "robustlab"
    monkeypatch.setenv("ROBUSTLAB_DATA", "/d")
    monkeypatch.setenv("ROBUSTLAB_CACHE", "/c")
    assert (default_data_dir(), default_cache_dir()) == (Path("/d"), Path("/c"))
