"""CIFAR-N human label noise: mapping to image folders and torchvision pickles, following samples
through the split, safe loading, the export CLI, the class-conditional twin and bad input."""
from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import _data_dir, write_tiny_cifar100

from robustlab.corruptions.dataset_noise import dataset_noisy_labels, parse_noise_type
from robustlab.corruptions.human import CIFAR10_CLASSES, PUBLISHED_RATES, image_folder_train_files, original_index
from robustlab.corruptions.labelfiles import read_label_dict
from robustlab.corruptions.labels import corrupt_with_transition, noise_report
from robustlab.data import load_dataset
from robustlab.errors import UsageError
from robustlab.experiment import Context, DataConfig, prepare_data

N_TRAIN = 90
REAL = _data_dir() / "cifar-n"  # ROBUSTLAB_DATA (or ../shared/data next to the checkout)
KEYS = {"aggre": "aggre_label", "random1": "random_label1", "random2": "random_label2", "random3": "random_label3",
        "worst": "worse_label"}


def _image(value: int) -> np.ndarray:
    """An 8x8 RGB image whose pixel (0, 0, red) stores `value` (lossless PNG)."""
    img = np.full((8, 8, 3), 7, dtype=np.uint8)
    img[0, 0, 0] = value
    return img


def write_cifar_n(path: Path, clean: np.ndarray, rng: np.random.Generator, rates=(0.1, 0.2, 0.2, 0.2, 0.45)) -> dict:
    """A CIFAR-10N-format .pt: torch.save of a dict of int64 numpy arrays (original order)."""
    labels = {"clean_label": clean.astype(np.int64)}
    for (name, key), rate in zip(KEYS.items(), rates):
        flip = rng.random(len(clean)) < rate
        labels[key] = np.where(flip, (clean + rng.integers(1, 10, len(clean))) % 10, clean).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(labels, path)
    return labels


@pytest.fixture
def folder_cifar(tmp_path):
    """data/cifar10/{train,test}/<class>/NNNN.png numbered by the CIFAR-N rule, with each training
    image carrying its original index in a pixel, and data/cifar-n/CIFAR-10_human.pt."""
    rng = np.random.default_rng(5)
    root = tmp_path / "data"
    clean = np.concatenate([np.arange(10), rng.integers(0, 10, N_TRAIN - 10)])  # uneven class sizes
    rng.shuffle(clean)
    seen = np.zeros(10, dtype=int)
    for i, c in enumerate(clean):
        d = root / "cifar10" / "train" / CIFAR10_CLASSES[c]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(i)).save(d / f"{seen[c]:04d}.png")
        seen[c] += 1
    for c, name in enumerate(CIFAR10_CLASSES):
        d = root / "cifar10" / "test" / name
        d.mkdir(parents=True)
        Image.fromarray(_image(200 + c)).save(d / "0000.png")
    labels = write_cifar_n(root / "cifar-n" / "CIFAR-10_human.pt", clean, rng)
    return root, labels


def _orig(dataset) -> np.ndarray:
    return dataset.images[:, 0, 0, 0].numpy().astype(np.int64)


# ---------------------------------------------------------------------------------------------
# mapping


def test_image_folder_mapping_follows_the_numbering_rule(folder_cifar, tmp_path):
    root, labels = folder_cifar
    train, _ = load_dataset("cifar10", root, cache_dir=tmp_path / "cache", download=False)
    orig = _orig(train)
    assert not np.array_equal(orig, np.arange(N_TRAIN))  # the folder order is not the original order
    for name, key in KEYS.items():
        noise = dataset_noisy_labels(f"human:{name}", 0.0, 0, "cifar10", root, train)
        np.testing.assert_array_equal(noise.noisy, labels[key][orig])
    # file NNNN of class c is the NNNN-th original image of class c
    files = image_folder_train_files(root / "cifar10")
    index = original_index(files, labels["clean_label"], CIFAR10_CLASSES, Path("x.pt"))
    np.testing.assert_array_equal(index, orig)
    path, c = files[-1]
    assert index[-1] == np.flatnonzero(labels["clean_label"] == c)[int(Path(path).stem)]


def test_labels_follow_samples_through_the_split(folder_cifar, tmp_path):
    root, labels = folder_cifar
    worst = labels["worse_label"]
    ctx = Context(data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    for noisy_val in (True, False):
        cfg = DataConfig(dataset="cifar10", val_size=20, noise_type="human:worst", noisy_val=noisy_val)
        data = prepare_data(cfg, seed=3, ctx=ctx)
        s = data.splits
        np.testing.assert_array_equal(s.train.labels.numpy(), worst[_orig(s.train)])
        np.testing.assert_array_equal(data.clean_train_labels.numpy(), labels["clean_label"][_orig(s.train)])
        expected_val = worst if noisy_val else labels["clean_label"]
        np.testing.assert_array_equal(s.val.labels.numpy(), expected_val[_orig(s.val)])
        # report: realised rate and transition matrix of the training split, counted by hand
        clean_t, noisy_t = labels["clean_label"][_orig(s.train)], worst[_orig(s.train)]
        assert data.noise["realized_rate"] == pytest.approx(np.mean(clean_t != noisy_t))
        t = np.array(data.noise["transition"])
        for c in range(10):
            members = clean_t == c
            np.testing.assert_allclose(t[c], np.bincount(noisy_t[members], minlength=10) / members.sum())
        assert data.noise["noise_type"] == "human:worst" and data.noise["label_key"] == "worse_label"


def test_torchvision_layout_needs_no_mapping(tiny_cifar10, tmp_path):
    rng = np.random.default_rng(0)
    labels = write_cifar_n(tiny_cifar10.root / "cifar-n" / "CIFAR-10_human.pt", tiny_cifar10.train_labels, rng)
    cfg = DataConfig(dataset="cifar10", val_size=10, noise_type="human:random2", noisy_val=True)
    data = prepare_data(cfg, 0, Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "c")))
    s = data.splits
    np.testing.assert_array_equal(s.train.labels.numpy(), labels["random_label2"][s.train_index])
    np.testing.assert_array_equal(s.val.labels.numpy(), labels["random_label2"][s.val_index])
    # the recorded original index really is the image's position in the file order
    rows = tiny_cifar10.train_data[s.train_index].reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(s.train.images.numpy(), rows)


def test_instance_and_twin_follow_samples_too(folder_cifar, tmp_path):
    root, labels = folder_cifar
    train, _ = load_dataset("cifar10", root, cache_dir=tmp_path / "cache", download=False)
    ctx = Context(data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    for kind, rate in (("instance", 0.4), ("transition:human:worst", 0.0)):
        full = dataset_noisy_labels(kind, rate, 1, "cifar10", root, train).noisy
        data = prepare_data(DataConfig(dataset="cifar10", val_size=20, noise_type=kind, noise_rate=rate), 1, ctx)
        np.testing.assert_array_equal(data.splits.train.labels.numpy(), full[data.splits.train_index])


# ---------------------------------------------------------------------------------------------
# export


def test_export_writes_every_image_and_round_trips(folder_cifar, tmp_path, capsys):
    from robustlab.noise import main

    root, labels = folder_cifar
    out = tmp_path / "labels.csv"
    assert main(["export", "--dataset", "cifar10", "--data-dir", str(root), "--cache-dir", str(tmp_path / "c"),
                 "--noise-type", "human:worst", "--out", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_TRAIN and list(rows[0]) == ["index", "path", "clean", "noisy", "split"]
    clean = labels["clean_label"]
    for r in rows:
        c = CIFAR10_CLASSES.index(Path(r["path"]).parent.name)
        orig = np.flatnonzero(clean == c)[int(Path(r["path"]).stem)]  # the README rule, by hand
        assert (int(r["clean"]), int(r["noisy"]), r["split"]) == (c, labels["worse_label"][orig], "train")
    # the CSV read back as the user's own label file gives the same labels
    train, _ = load_dataset("cifar10", root, cache_dir=tmp_path / "c", download=False)
    again = dataset_noisy_labels("file", 0.0, 0, "cifar10", root, train, noise_file=out).noisy
    np.testing.assert_array_equal(again, [int(r["noisy"]) for r in rows])


def test_export_of_synthetic_noise_repeats_the_run(tiny_cifar10, tmp_path):
    from robustlab.noise import main

    out = tmp_path / "sym.csv"
    argv = ["export", "--data-dir", str(tiny_cifar10.root), "--cache-dir", str(tmp_path / "c"), "--noise", "0.4",
            "--seed", "2", "--val-size", "10", "--out", str(out)]
    assert main(argv) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    cfg = DataConfig(dataset="cifar10", val_size=10, noise_type="symmetric", noise_rate=0.4)
    run = prepare_data(cfg, 2, Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "c"))).splits
    noisy = np.array([int(r["noisy"]) for r in rows])
    np.testing.assert_array_equal(noisy[run.train_index], run.train.labels.numpy())
    assert [rows[i]["split"] for i in run.val_index] == ["val"] * 10
    np.testing.assert_array_equal(noisy[run.val_index], tiny_cifar10.train_labels[run.val_index])  # clean val
    assert 0 < np.mean(noisy[run.train_index] != tiny_cifar10.train_labels[run.train_index])


# ---------------------------------------------------------------------------------------------
# safe loading


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_label_files_load_without_running_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"clean_label": np.zeros(3, dtype=np.int64), "x": _Exploit(marker)}, bad)
    with pytest.raises(UsageError, match=r"evil\.pt is not a label file"):
        read_label_dict(bad)
    assert not marker.exists()
    plain = tmp_path / "plain.pkl.npy"
    with open(plain, "wb") as f:
        pickle.dump(_Exploit(marker), f)
    with pytest.raises(UsageError, match=r"plain\.pkl\.npy is not a label file"):
        read_label_dict(plain)
    assert not marker.exists()
    weights = tmp_path / "model.pt"
    torch.save({"conv.weight": torch.randn(3, 3)}, weights)
    with pytest.raises(UsageError, match=r"model\.pt is not a label file"):
        read_label_dict(weights)


@pytest.mark.skipif(not (REAL / "CIFAR-10_human.pt").is_file(), reason="CIFAR-N files not present")
def test_real_cifar_n_files_load_safely_with_published_rates():
    ten = read_label_dict(REAL / "CIFAR-10_human.pt")  # torch.load(weights_only=True) inside
    published = {"aggre": 0.0901, "random1": 0.1723, "random2": 0.1812, "random3": 0.1764, "worst": 0.4021}
    assert {k: PUBLISHED_RATES[k] for k in published} == published and PUBLISHED_RATES["noisy"] == 0.4020
    for name, rate in published.items():
        assert np.mean(ten[KEYS[name]] != ten["clean_label"]) == pytest.approx(rate, abs=5e-5)
    hundred = read_label_dict(REAL / "CIFAR-100_human.pt")
    assert np.mean(hundred["noisy_label"] != hundred["clean_label"]) == pytest.approx(0.4020, abs=5e-5)
    folder = REAL.parent / "cifar10"
    if (folder / "train").is_dir():  # the mapping onto the real image folder is a permutation
        index = original_index(image_folder_train_files(folder), ten["clean_label"], CIFAR10_CLASSES, REAL)
        assert np.array_equal(np.sort(index), np.arange(50_000))


@pytest.mark.skipif(not (REAL / "CIFAR-10_human.pt").is_file(), reason="CIFAR-N files not present")
def test_transition_twin_reproduces_the_real_matrix():
    ten = read_label_dict(REAL / "CIFAR-10_human.pt")
    clean, worst = ten["clean_label"], ten["worse_label"]
    source = noise_report(clean, worst, 10).transition
    twin = corrupt_with_transition(clean, source, seed=0)
    got = noise_report(clean, twin, 10).transition
    assert np.abs(got - source).max() < 0.03  # 5,000 draws per row
    np.testing.assert_allclose(1 - np.diag(got), 1 - np.diag(source), atol=0.03)  # off-diagonal mass per class
    assert np.mean(twin != clean) == pytest.approx(np.mean(worst != clean), abs=0.01)
    assert np.mean(twin != worst) > 0.3  # same matrix, different images flipped


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit 2


def _train(root, tmp_path, capsys, *extra):
    from robustlab.train import main

    try:
        code = main(["--data-dir", str(root), "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "out"),
                     "--epochs", "1", "--val-size", "10", "--quiet", "--device", "cpu", *extra])
    except SystemExit as exc:  # argparse rejects a bad option value itself
        code = exc.code
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("case, pattern", [
    ("unknown_set", r"unknown human label set 'best'"),
    ("wrong_length", r"has 89 labels; the cifar10 training set has 90 images"),
    ("clean_mismatch", r"clean labels in .* do not match the dataset"),
    ("not_labels", r"junk\.pt is not a label file"),
    ("rate_given", r"--noise-rate 0\.2 conflicts with human:worst"),
    ("no_cifar_n_folder", r"human:worst needs CIFAR-10_human\.pt: not found"),
    ("file_with_synthetic", r"--noise-file needs --noise-type file"),
])
def test_bad_human_noise_input(case, pattern, folder_cifar, tmp_path, capsys):
    root, labels = folder_cifar
    pt = tmp_path / "user.pt"
    args = ["--noise-type", "human:worst"]
    if case == "unknown_set":
        args = ["--noise-type", "human:best"]
    elif case == "wrong_length":
        torch.save({k: v[:-1] for k, v in labels.items()}, pt)
        args += ["--noise-file", str(pt)]
    elif case == "clean_mismatch":
        changed = dict(labels, clean_label=labels["clean_label"].copy())
        changed["clean_label"][0] = (changed["clean_label"][0] + 1) % 10
        torch.save(changed, pt)
        args += ["--noise-file", str(pt)]
    elif case == "not_labels":
        junk = tmp_path / "junk.pt"
        junk.write_text("this is not a tensor file\n")
        args += ["--noise-file", str(junk)]
    elif case == "rate_given":
        args += ["--noise-rate", "0.2"]
    elif case == "no_cifar_n_folder":
        (root / "cifar-n" / "CIFAR-10_human.pt").unlink()
    elif case == "file_with_synthetic":
        args = ["--noise-type", "pair", "--noise-rate", "0.2", "--noise-file", str(root / "cifar-n" / "CIFAR-10_human.pt")]
    code, err = _train(root, tmp_path, capsys, *args)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(pattern, err), err


def test_human_noise_needs_a_cifar_n_dataset(folder_cifar, tmp_path, capsys):
    root, _ = folder_cifar
    other = tmp_path / "other"  # an image folder with other class names
    for split in ("train", "test"):
        for name in ("a", "b"):
            (other / split / name).mkdir(parents=True)
            Image.fromarray(_image(1)).save(other / split / name / "0000.png")
    code, err = _train(root, tmp_path, capsys, "--dataset", f"imagefolder:{other}", "--noise-type", "human:aggre",
                       "--val-size", "0")
    assert code == 2 and len(err.splitlines()) == 1 and "has no such labels" in err
    c100 = write_tiny_cifar100(tmp_path / "c100", n_train=200)
    code, err = _train(c100.root, tmp_path, capsys, "--dataset", "cifar100", "--noise-type", "human:worst",
                       "--val-size", "0")
    assert code == 2 and "human:worst is a CIFAR-10N label set; dataset 'cifar100' has no such labels" in err
    # the same folder read as imagefolder:<path> finds cifar-n/ next to it
    train, _ = load_dataset(f"imagefolder:{root / 'cifar10'}", cache_dir=tmp_path / "c")
    assert len(dataset_noisy_labels("human:aggre", 0.0, 0, f"imagefolder:{root / 'cifar10'}", None, train).noisy) == N_TRAIN


def test_rate_equal_to_the_files_is_accepted(folder_cifar, tmp_path):
    root, labels = folder_cifar
    train, _ = load_dataset("cifar10", root, cache_dir=tmp_path / "c", download=False)
    rate = float(np.mean(labels["aggre_label"] != labels["clean_label"]))
    noise = dataset_noisy_labels("human:aggre", round(rate, 3), 0, "cifar10", root, train)
    assert noise.info["file_rate"] == pytest.approx(rate)
    with pytest.raises(UsageError, match="conflicts"):
        dataset_noisy_labels("human:aggre", rate + 0.01, 0, "cifar10", root, train)


def test_noise_type_forms():
    for ok in ("symmetric", "instance", "file", "human:noisy", "transition:human:worst", "transition:pair"):
        assert parse_noise_type(ok) == ok
    for bad, msg in (("human:", "unknown human label set"), ("transition:transition:pair", "cannot itself"),
                     ("gaussian", "unknown noise type")):
        with pytest.raises(UsageError, match=msg):
            parse_noise_type(bad)


def test_cifar100n_on_the_torchvision_pickles(tmp_path):
    c100 = write_tiny_cifar100(tmp_path / "c100", n_train=200)
    rng = np.random.default_rng(2)
    fine = c100.train_labels.astype(np.int64)
    noisy = np.where(rng.random(len(fine)) < 0.4, rng.integers(0, 100, len(fine)), fine).astype(np.int64)
    path = c100.root / "cifar-n" / "CIFAR-100_human.pt"
    path.parent.mkdir()
    torch.save({"clean_label": fine, "noisy_label": noisy, "clean_coarse_label": [int(v) for v in c100.train_coarse],
                "noisy_coarse_label": [int(v) for v in c100.train_coarse]}, path)
    cfg = DataConfig(dataset="cifar100", val_size=0, noise_type="human:noisy")
    data = prepare_data(cfg, 0, Context(data_dir=str(c100.root), cache_dir=str(tmp_path / "c")))
    np.testing.assert_array_equal(data.splits.train.labels.numpy(), noisy[data.splits.train_index])
    assert data.noise["realized_rate"] == pytest.approx(np.mean(noisy != fine))
    assert len(data.noise["transition"]) == 100


# ---------------------------------------------------------------------------------------------
# the mapping pieces one by one, on a folder of empty files (only the names matter)


import hashlib  # noqa: E402
import re  # noqa: E402

from robustlab.corruptions import human  # noqa: E402


def _exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def test_label_sets_and_their_families():
    assert human.LABEL_SETS == {"aggre": ("cifar10", "aggre_label"), "random1": ("cifar10", "random_label1"),
                                "random2": ("cifar10", "random_label2"), "random3": ("cifar10", "random_label3"),
                                "worst": ("cifar10", "worse_label"), "noisy": ("cifar100", "noisy_label")}
    for name in ("aggre", "random1", "random2", "random3", "worst"):
        assert human.check_label_set(name) == "cifar10"
    assert human.check_label_set("noisy") == "cifar100"
    for bad in ("best", "", "Aggre", "noisy_label"):
        with pytest.raises(UsageError, match=_exact(f"unknown human label set {bad!r}; CIFAR-10N: aggre, random1, "
                                                    "random2, random3, worst; CIFAR-100N: noisy")):
            human.check_label_set(bad)
    assert human.CIFAR_N_FILES == {"cifar10": "CIFAR-10_human.pt", "cifar100": "CIFAR-100_human.pt"}
    # Wei et al. 2022 (and shared/data/README.md): fraction differing from clean_label, without the files
    assert human.PUBLISHED_RATES == {"aggre": 0.0901, "random1": 0.1723, "random2": 0.1812, "random3": 0.1764,
                                     "worst": 0.4021, "noisy": 0.4020}
    assert human.CIFAR_N_FOLDER == "cifar-n"
    assert human.TORCHVISION_FOLDERS == {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
    assert human.CIFAR10_CLASSES == sorted(human.CIFAR10_CLASSES) and len(human.CIFAR10_CLASSES) == 10


def test_locate_dataset_follows_the_loaders_search_order(tmp_path, monkeypatch):
    base = tmp_path / "d"
    tv = human.locate_dataset("cifar10", base)  # nothing there: the torchvision folder (to download)
    assert (tv.kind, tv.root, tv.name) == ("torchvision", base / "cifar-10-batches-py", "cifar10")
    assert tv.cifar_n_dir == base / "cifar-n"
    (base / "cifar10" / "train").mkdir(parents=True)
    folder = human.locate_dataset("cifar10", str(base))
    assert (folder.kind, folder.root) == ("imagefolder", base / "cifar10")
    assert folder.cifar_n_dir == base / "cifar-n"
    (base / "cifar-10-batches-py").mkdir()  # the pickles win when both are there
    assert human.locate_dataset("cifar10", base).kind == "torchvision"
    assert human.locate_dataset("cifar100", base).root == base / "cifar-100-python"
    (base / "cifar100").mkdir()  # a folder without train/ is not an image folder
    assert human.locate_dataset("cifar100", base).kind == "torchvision"
    (base / "svhn" / "train").mkdir(parents=True)  # only CIFAR names have an image-folder form
    assert (human.locate_dataset("svhn", base).kind, human.locate_dataset("svhn", base).root) == ("torchvision", base / "svhn")
    monkeypatch.setenv("ROBUSTLAB_DATA", str(base))  # no data_dir: the default one
    assert human.locate_dataset("cifar10", None).root == base / "cifar-10-batches-py"
    assert human.locate_dataset("cifar10", "").root == base / "cifar-10-batches-py"
    monkeypatch.setenv("HOME", str(tmp_path))
    mine = human.locate_dataset("imagefolder:~/pics:x", base)
    assert (mine.kind, mine.root, mine.name) == ("imagefolder", tmp_path / "pics:x", "imagefolder:~/pics:x")
    assert mine.cifar_n_dir == tmp_path / "cifar-n"


def test_dataset_family():
    assert human.dataset_family("cifar10", ["x"]) == "cifar10"
    assert human.dataset_family("cifar100", []) == "cifar100"
    assert human.dataset_family("imagefolder:/a", tuple(CIFAR10_CLASSES)) == "cifar10"
    assert human.dataset_family("imagefolder:/a", CIFAR10_CLASSES[:9]) is None
    assert human.dataset_family("svhn", CIFAR10_CLASSES) is None  # CIFAR classes, but not an image folder


def _empty_folder(root: Path, counts: dict[int, list[str]]) -> Path:
    for c, name in enumerate(CIFAR10_CLASSES):
        d = root / "train" / name
        d.mkdir(parents=True, exist_ok=True)
        for stem in counts.get(c, []):
            (d / stem).write_bytes(b"")
    return root


def test_image_folder_files_in_loader_order(tmp_path):
    counts = {c: ["0000.png"] for c in range(1, 9)}
    root = _empty_folder(tmp_path / "f", {**counts, 0: ["0001.png", "0000.jpg", "notes.txt"], 9: ["0000.JPEG", "0001.bmp"]})
    files = human.image_folder_train_files(root)
    assert [(Path(p).relative_to(root / "train").as_posix(), c) for p, c in files] == [
        ("airplane/0000.jpg", 0), ("airplane/0001.png", 0), *((f"{CIFAR10_CLASSES[c]}/0000.png", c) for c in range(1, 9)),
        ("truck/0000.JPEG", 9), ("truck/0001.bmp", 9)]


def test_original_index_rule_and_its_messages(tmp_path):
    classes = ["a", "b"]
    file_clean = np.array([1, 0, 1, 1, 0])  # class 0 at 1, 4; class 1 at 0, 2, 3
    files = [("x/a/0001.png", 0), ("x/a/0000.png", 0), ("x/b/0002.png", 1), ("x/b/0000.png", 1), ("x/b/0001.png", 1)]
    np.testing.assert_array_equal(human.original_index(files, file_clean, classes, Path("f.pt")), [4, 1, 3, 0, 2])
    src = Path("s/f.pt")
    with pytest.raises(UsageError, match=_exact(f"clean labels in {src} do not match the dataset: class 'b' has 2 training "
                                                "images, the file has 3 images of that class (wrong file or dataset?)")):
        human.original_index(files[:4], file_clean, classes, src)
    with pytest.raises(UsageError, match=_exact(f"clean labels in {src} do not match the dataset: class 'a' has 3 training "
                                                "images, the file has 2 images of that class (wrong file or dataset?)")):
        human.original_index([*files, ("x/a/0002.png", 0)], file_clean, classes, src)
    named = [files[0], ("x/a/img0.png", 0), *files[2:]]
    with pytest.raises(UsageError, match=_exact(f"cannot match {src} to the image folder: x/a/img0.png is not named "
                                                "NNNN.<ext> (CIFAR-N needs class folders numbered in original training order)")):
        human.original_index(named, file_clean, classes, src)
    beyond = [files[0], ("x/a/0002.png", 0), *files[2:]]  # number == class size is one too many
    with pytest.raises(UsageError, match=_exact(f"cannot match {src} to the image folder: x/a/0002.png is numbered beyond "
                                                "the 2 images of class 'a'")):
        human.original_index(beyond, file_clean, classes, src)
    twice = [files[0], ("x/a/1.png", 0), *files[2:]]  # 1 and 0001 are the same number
    with pytest.raises(UsageError, match=_exact(f"cannot match {src} to the image folder: two files of one class carry "
                                                "the same number")):
        human.original_index(twice, file_clean, classes, src)


def _human_setup(tmp_path, per_class=(2, 1, 3, 1, 1, 2, 1, 1, 1, 2), folder=True, seed=0):
    """data/cifar10/train/<class>/NNNN.png (empty files) and data/cifar-n/CIFAR-10_human.pt; returns
    (base, clean labels in folder order, file dict, original index of each folder sample)."""
    rng = np.random.default_rng(seed)
    clean_orig = np.repeat(np.arange(10), per_class)
    rng.shuffle(clean_orig)
    base = tmp_path / "data"
    if folder:
        _empty_folder(base / "cifar10", {c: [f"{k:04d}.png" for k in range(n)] for c, n in enumerate(per_class)})
        # folder order: class by class, by number; the k-th file of class c is the k-th original of c
        orig = np.concatenate([np.flatnonzero(clean_orig == c) for c in range(10)])
    else:
        orig = np.arange(len(clean_orig))
    labels = {"clean_label": clean_orig}
    for name, key in KEYS.items():
        labels[key] = np.where(rng.random(len(clean_orig)) < 0.4, rng.integers(0, 10, len(clean_orig)), clean_orig)
    (base / "cifar-n").mkdir(parents=True)
    torch.save(labels, base / "cifar-n" / "CIFAR-10_human.pt")
    return base, clean_orig[orig], labels, orig


def test_human_labels_on_an_image_folder(tmp_path):
    base, clean, labels, orig = _human_setup(tmp_path)
    path = base / "cifar-n" / "CIFAR-10_human.pt"
    for name, key in KEYS.items():
        got = human.human_labels(name, "cifar10", base, clean, CIFAR10_CLASSES)
        np.testing.assert_array_equal(got.noisy, labels[key][orig])
        np.testing.assert_array_equal(got.original_index, orig)
        assert got.info == {"source": f"human:{name}", "label_file": str(path), "label_key": key,
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                            "file_rate": pytest.approx(np.mean(labels[key] != labels["clean_label"])),
                            "layout": "imagefolder"}


def test_human_labels_on_torchvision_pickles_and_an_explicit_file(tmp_path, monkeypatch):
    base, clean, labels, orig = _human_setup(tmp_path, folder=False)
    got = human.human_labels("worst", "cifar10", base, clean, CIFAR10_CLASSES)
    np.testing.assert_array_equal(got.noisy, labels["worse_label"])
    np.testing.assert_array_equal(got.original_index, np.arange(len(clean)))
    assert got.info["layout"] == "torchvision"
    moved = tmp_path / "elsewhere.pt"
    (base / "cifar-n" / "CIFAR-10_human.pt").rename(moved)
    monkeypatch.setenv("HOME", str(tmp_path))
    for given in (moved, "~/elsewhere.pt"):
        got = human.human_labels("aggre", "cifar10", base, clean, CIFAR10_CLASSES, noise_file=given)
        np.testing.assert_array_equal(got.noisy, labels["aggre_label"])
        assert got.info["label_file"] == str(moved)
    default = base / "cifar-n" / "CIFAR-10_human.pt"
    with pytest.raises(UsageError, match=_exact(f"human:aggre needs CIFAR-10_human.pt: not found at {default} (put the "
                                                "CIFAR-N files in a cifar-n/ folder next to the dataset, or pass --noise-file)")):
        human.human_labels("aggre", "cifar10", base, clean, CIFAR10_CLASSES)


def test_human_labels_family_messages(tmp_path):
    clean = np.zeros(3, dtype=np.int64)
    with pytest.raises(UsageError, match=_exact("human:aggre is a CIFAR-10N label set; dataset 'svhn' has no such labels "
                                                "(it needs cifar10 or an image folder with the CIFAR-10 classes)")):
        human.human_labels("aggre", "svhn", tmp_path, clean, CIFAR10_CLASSES)
    with pytest.raises(UsageError, match=_exact("human:noisy is a CIFAR-100N label set; dataset 'cifar10' has no such "
                                                "labels (it needs cifar100)")):
        human.human_labels("noisy", "cifar10", tmp_path, clean, CIFAR10_CLASSES)
    with pytest.raises(UsageError, match=_exact(f"human:noisy needs CIFAR-100_human.pt: not found at "
                                                f"{tmp_path / 'cifar-n' / 'CIFAR-100_human.pt'} (put the CIFAR-N files in a "
                                                "cifar-n/ folder next to the dataset, or pass --noise-file)")):
        human.human_labels("noisy", "cifar100", tmp_path, clean, [str(i) for i in range(100)])


def test_human_labels_bad_files(tmp_path):
    base, clean, labels, orig = _human_setup(tmp_path, folder=False)
    pt = tmp_path / "u.pt"
    n = len(clean)

    def check(content, message, name="worst", classes=CIFAR10_CLASSES, train=clean):
        torch.save(content, pt)
        with pytest.raises(UsageError, match=_exact(message.format(pt=pt))):
            human.human_labels(name, "cifar10", base, train, classes, noise_file=pt)

    check({"worse_label": labels["worse_label"]}, "{pt} is not a CIFAR-N label file for human:worst: no 'clean_label' "
          "array (it holds worse_label)")
    check({"clean_label": labels["clean_label"], "b": clean, "a": clean},
          "{pt} is not a CIFAR-N label file for human:random2: no 'random_label2' array (it holds a, b, clean_label)",
          name="random2")
    check(dict(labels, clean_label=labels["clean_label"][:-1]),
          f"label file {{pt}} has {n} labels; the cifar10 training set has {n} images")
    check(dict(labels, worse_label=labels["worse_label"][:-1]),
          f"label file {{pt}} has {n - 1} labels; the cifar10 training set has {n} images")
    few = CIFAR10_CLASSES[:9]  # label 9 appears in the file
    assert labels["clean_label"].max() == 9
    check(dict(labels, worse_label=np.minimum(labels["worse_label"], 8)),
          "label file {pt} holds labels >= 9, the number of classes of cifar10", classes=few,
          train=np.minimum(clean, 8))
    check(dict(labels, clean_label=np.minimum(labels["clean_label"], 8)),
          "label file {pt} holds labels >= 9, the number of classes of cifar10", classes=few,
          train=np.minimum(clean, 8))
    wrong = clean.copy()
    wrong[[0, 1, 2]] = (wrong[[0, 1, 2]] + 1) % 10
    check(labels, f"clean labels in {{pt}} do not match the dataset's labels (3 of {n} differ; wrong file or dataset?)",
          train=wrong)
    # labels up to C - 1 are fine
    torch.save(labels, pt)
    assert len(human.human_labels("worst", "cifar10", base, clean, CIFAR10_CLASSES, noise_file=pt).noisy) == n


def test_human_labels_image_folder_changed_since_decoding(tmp_path):
    base, clean, labels, orig = _human_setup(tmp_path)
    (base / "cifar10" / "train" / "cat" / "0099.png").write_bytes(b"")
    with pytest.raises(UsageError, match=_exact(f"the image folder {base / 'cifar10' / 'train'} changed since it was "
                                                "decoded; clear the cache")):
        human.human_labels("aggre", "cifar10", base, clean, CIFAR10_CLASSES)


def test_human_labels_on_an_imagefolder_name(tmp_path):
    base, clean, labels, orig = _human_setup(tmp_path)
    got = human.human_labels("random3", f"imagefolder:{base / 'cifar10'}", None, clean, CIFAR10_CLASSES)
    np.testing.assert_array_equal(got.noisy, labels["random_label3"][orig])
    assert got.info["layout"] == "imagefolder"


def test_human_labels_name_the_file_when_the_folder_does_not_match(tmp_path):
    base, clean, labels, orig = _human_setup(tmp_path)
    pt = tmp_path / "other.pt"
    changed = dict(labels, clean_label=labels["clean_label"].copy())
    first = int(np.flatnonzero(changed["clean_label"] == 2)[0])  # class bird: 3 images, one becomes a cat
    changed["clean_label"][first] = 3
    torch.save(changed, pt)
    with pytest.raises(UsageError, match=_exact(f"clean labels in {pt} do not match the dataset: class 'bird' has 3 "
                                                "training images, the file has 2 images of that class (wrong file or dataset?)")):
        human.human_labels("aggre", "cifar10", base, clean, CIFAR10_CLASSES, noise_file=pt)
