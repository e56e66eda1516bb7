"""Label files (.pt/.pth/.npy/.csv): safe loading, the label-vector contract, and one exact message
per bad file; plus the dataset-noise plumbing (`--noise-type file`, the transition twin, rate checks)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab.corruptions.labelfiles import read_label_dict
from robustlab.errors import UsageError


def _exact(message: str) -> str:
    """`match=` pattern for the whole message, nothing before or after."""
    return "^" + re.escape(message) + "$"


def test_npy_round_trip_is_int64(tmp_path):
    path = tmp_path / "labels.npy"
    np.save(path, np.array([3, 0, 2], dtype=np.int32))
    out = read_label_dict(path)
    assert list(out) == ["noisy_label"] and out["noisy_label"].dtype == np.int64
    np.testing.assert_array_equal(out["noisy_label"], [3, 0, 2])


INT_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)


def _torch_refusal(path: Path) -> str:
    """The first line of torch's own weights_only refusal for `path`, integer numpy arrays allowed."""
    from numpy._core.multiarray import _reconstruct

    allowed = [_reconstruct, np.ndarray, np.dtype, *(type(np.dtype(t)) for t in INT_DTYPES)]
    with pytest.raises(Exception) as info, torch.serialization.safe_globals(allowed):
        torch.load(path, map_location="cpu", weights_only=True)
    text = str(info.value).strip()
    return text.splitlines()[0] if text else type(info.value).__name__


# ---------------------------------------------------------------------------------------------
# .pt / .pth


def test_pt_dict_of_every_integer_dtype_loads_with_names_kept(tmp_path):
    # each integer dtype class is its own allow-listed global; dropping one refuses that dtype
    arrays = {f"labels_{np.dtype(t).name}": np.array([2, 0, 1], dtype=t) for t in INT_DTYPES}
    for name, value in arrays.items():
        path = tmp_path / f"{name}.pt"
        torch.save({name: value}, path)
        out = read_label_dict(path)
        assert list(out) == [name] and out[name].dtype == np.int64
        np.testing.assert_array_equal(out[name], [2, 0, 1])
    both = tmp_path / "all.pth"  # .pth is read like .pt
    torch.save(dict(arrays, tensor=torch.tensor([4, 5]), plain=[1, 2, 3], note="text", rate=0.2, **{"7": np.array([7])}), both)
    out = read_label_dict(both)
    assert sorted(out) == sorted([*arrays, "tensor", "plain", "7"])  # non-array entries dropped
    np.testing.assert_array_equal(out["tensor"], [4, 5])
    np.testing.assert_array_equal(out["plain"], [1, 2, 3])
    assert all(v.dtype == np.int64 for v in out.values())


def test_pt_written_by_numpy_1_loads_under_its_old_module_name(tmp_path):
    """The CIFAR-N files were pickled under numpy 1.x: `numpy.core.multiarray._reconstruct`."""
    import zipfile

    src, dst = tmp_path / "new.pt", tmp_path / "old.pt"
    torch.save({"clean_label": np.array([1, 2, 3]), "noisy_label": np.array([1, 0, 3])}, src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\n" in data
                data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            zout.writestr(item, data)
    out = read_label_dict(dst)
    np.testing.assert_array_equal(out["noisy_label"], [1, 0, 3])
    np.testing.assert_array_equal(out["clean_label"], [1, 2, 3])


def test_pt_single_array_or_tensor_is_the_noisy_label(tmp_path):
    for i, value in enumerate((np.array([3, 1], dtype=np.int32), torch.tensor([3, 1]), [3, 1])):
        path = tmp_path / f"one{i}.PT"  # suffix case does not matter
        torch.save(value, path)
        out = read_label_dict(str(path))
        assert list(out) == ["noisy_label"]
        np.testing.assert_array_equal(out["noisy_label"], [3, 1])


def test_pt_refusals_quote_torchs_first_line(tmp_path):
    floats = tmp_path / "floats.pt"  # float dtypes are not allow-listed
    torch.save({"noisy_label": np.array([1.0, 2.0])}, floats)
    junk = tmp_path / "junk.pt"
    junk.write_text("this is not a tensor file\n")
    for path in (floats, junk):
        first = _torch_refusal(path)
        with pytest.raises(UsageError, match=_exact(
                f"{path} is not a label file (torch.load(weights_only=True) refused it: {first[:160]})")):
            read_label_dict(path)
    assert len(_torch_refusal(floats)) > 160  # the quote is cut at 160 characters
    empty = tmp_path / "empty.pt"  # EOFError() has no text: its type name stands in
    empty.write_bytes(b"")
    with pytest.raises(UsageError, match=_exact(
            f"{empty} is not a label file (torch.load(weights_only=True) refused it: EOFError)")):
        read_label_dict(empty)


def test_pt_refusal_with_blank_message_and_surrounding_space(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    path.write_bytes(b"x")

    def fake_load(message):
        def load(*args, **kwargs):
            assert kwargs == {"map_location": "cpu", "weights_only": True}
            raise RuntimeError(message)
        return load

    for message, shown in (("   \n ", "RuntimeError"), ("\n  first line  \nsecond", "first line  ")):
        monkeypatch.setattr(torch, "load", fake_load(message))
        with pytest.raises(UsageError, match=_exact(
                f"{path} is not a label file (torch.load(weights_only=True) refused it: {shown})")):
            read_label_dict(path)


def test_pt_content_that_is_not_labels(tmp_path):
    cases = {
        "nodict.pt": ({"rate": 0.2, "name": "x"}, "a dict without label arrays"),
        "ragged.pt": ({"n": [[1], [1, 2]]}, "'n' is not an array"),
        "scalar.pt": (torch.tensor(3), "its content must be a non-empty 1-D integer array, got dtype int64 shape ()"),
        "matrix.pt": ({"m": torch.zeros(2, 2, dtype=torch.long)},
                      "'m' must be a non-empty 1-D integer array, got dtype int64 shape (2, 2)"),
        "empty.pt": ({"e": torch.zeros(0, dtype=torch.long)}, "'e' must be a non-empty 1-D integer array, got dtype int64 shape (0,)"),
        "float_tensor.pt": ({"f": torch.tensor([1.5, 2.0])},
                            "'f' must be a non-empty 1-D integer array, got dtype float32 shape (2,)"),
        "bool.pt": ({"b": torch.tensor([True, False])}, "'b' must be a non-empty 1-D integer array, got dtype bool shape (2,)"),
    }
    for name, (content, why) in cases.items():
        path = tmp_path / name
        torch.save(content, path)
        with pytest.raises(UsageError, match=_exact(f"{path} is not a label file ({why})")):
            read_label_dict(path)
    negative = tmp_path / "neg.pt"
    torch.save({"noisy_label": torch.tensor([0, -1])}, negative)
    with pytest.raises(UsageError, match=_exact(f"{negative}: 'noisy_label' holds negative labels")):
        read_label_dict(negative)


def test_integer_valued_float_tensors_become_int64(tmp_path):
    path = tmp_path / "f.pt"
    torch.save({"noisy_label": torch.tensor([2.0, 0.0, 9.0])}, path)
    out = read_label_dict(path)["noisy_label"]
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [2, 0, 9])


# ---------------------------------------------------------------------------------------------
# .npy


def test_npy_floats_infinities_and_refusals(tmp_path):
    ok = tmp_path / "ok.npy"
    np.save(ok, np.array([1.0, 0.0, 4.0]))
    np.testing.assert_array_equal(read_label_dict(ok)["noisy_label"], [1, 0, 4])
    bad = {
        "inf.npy": (np.array([1.0, np.inf]), "its array must be a non-empty 1-D integer array, got dtype float64 shape (2,)"),
        "nan.npy": (np.array([np.nan]), "its array must be a non-empty 1-D integer array, got dtype float64 shape (1,)"),
        "half.npy": (np.array([1.5]), "its array must be a non-empty 1-D integer array, got dtype float64 shape (1,)"),
        "nofloat.npy": (np.zeros(0), "its array must be a non-empty 1-D integer array, got dtype float64 shape (0,)"),
        "grid.npy": (np.zeros((2, 3), dtype=np.int64),
                     "its array must be a non-empty 1-D integer array, got dtype int64 shape (2, 3)"),
        "obj.npy": (np.array([1, "a"], dtype=object),
                    "np.load refused it: Object arrays cannot be loaded when allow_pickle=False"),
    }
    for name, (value, why) in bad.items():
        path = tmp_path / name
        np.save(path, value, allow_pickle=True)
        with pytest.raises(UsageError, match=_exact(f"{path} is not a label file ({why})")):
            read_label_dict(path)
    neg = tmp_path / "neg.npy"
    np.save(neg, np.array([3, -2]))
    with pytest.raises(UsageError, match=_exact(f"{neg}: its array holds negative labels")):
        read_label_dict(neg)


def test_npy_truncated_empty_or_unreadable(tmp_path, monkeypatch):
    full = tmp_path / "full.npy"
    np.save(full, np.arange(100))
    cut = tmp_path / "cut.npy"
    cut.write_bytes(full.read_bytes()[:200])
    with pytest.raises(ValueError) as numpy_says:
        np.load(cut, allow_pickle=False)
    first = str(numpy_says.value).splitlines()[0]
    with pytest.raises(UsageError, match=_exact(f"{cut} is not a label file (np.load refused it: {first[:160]})")):
        read_label_dict(cut)
    empty = tmp_path / "empty.npy"  # was an EOFError traceback
    empty.write_bytes(b"")
    with pytest.raises(UsageError, match=_exact(f"{empty} is not a label file (np.load refused it: No data left in file)")):
        read_label_dict(empty)

    def unreadable(path, allow_pickle):
        assert allow_pickle is False
        raise OSError("disk gone\nmore detail " + "x" * 200)

    monkeypatch.setattr(np, "load", unreadable)
    with pytest.raises(UsageError, match=_exact(f"{full} is not a label file (np.load refused it: disk gone)")):
        read_label_dict(full)
    long = "y" * 300

    def wordy(path, allow_pickle):
        raise ValueError(long)

    monkeypatch.setattr(np, "load", wordy)
    with pytest.raises(UsageError, match=_exact(f"{full} is not a label file (np.load refused it: {'y' * 160})")):
        read_label_dict(full)


# ---------------------------------------------------------------------------------------------
# paths and suffixes


def test_missing_file_and_wrong_suffix(tmp_path):
    missing = tmp_path / "nope.npy"
    with pytest.raises(UsageError, match=_exact(f"label file {missing} does not exist")):
        read_label_dict(missing)
    with pytest.raises(UsageError, match=_exact(f"label file {tmp_path} does not exist")):
        read_label_dict(tmp_path)  # a folder is not a file
    txt = tmp_path / "labels.txt"
    txt.write_text("1\n2\n")
    with pytest.raises(UsageError, match=_exact(f"label file {txt} must end in .pt, .pth, .npy, .csv")):
        read_label_dict(txt)


def test_user_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    np.save(tmp_path / "mine.npy", np.array([1, 2]))
    np.testing.assert_array_equal(read_label_dict("~/mine.npy")["noisy_label"], [1, 2])


# ---------------------------------------------------------------------------------------------
# .csv


def _csv(tmp_path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_csv_with_header_reads_noisy_and_clean_columns(tmp_path):
    path = _csv(tmp_path, "export.csv", "index,path,Clean, NOISY ,split\n0,a.png,3,5,train\n\n1,b.png,2.0,2,val\n")
    out = read_label_dict(path)
    assert list(out) == ["noisy_label", "clean_label"]
    np.testing.assert_array_equal(out["noisy_label"], [5, 2])
    np.testing.assert_array_equal(out["clean_label"], [3, 2])
    assert all(v.dtype == np.int64 for v in out.values())
    only = read_label_dict(_csv(tmp_path, "noisy.csv", "noisy,other\n4,x\n1,y\n"))
    assert list(only) == ["noisy_label"]
    np.testing.assert_array_equal(only["noisy_label"], [4, 1])


def test_csv_single_column_without_header(tmp_path):
    out = read_label_dict(_csv(tmp_path, "plain.csv", "7\n0\n3.0\n"))
    assert list(out) == ["noisy_label"]
    np.testing.assert_array_equal(out["noisy_label"], [7, 0, 3])


@pytest.mark.parametrize("text, why", [
    ("", "empty CSV"),
    ("\n\n", "empty CSV"),
    ("noisy\n1\n2.5\n", "column 'noisy' holds a non-integer or missing value"),  # was silently read as 2
    ("noisy\ninf\n", "column 'noisy' holds a non-integer or missing value"),  # was an OverflowError
    ("noisy\nnan\n", "column 'noisy' holds a non-integer or missing value"),
    ("noisy\ncat\n", "column 'noisy' holds a non-integer or missing value"),
    ("a,noisy\n1\n", "column 'noisy' holds a non-integer or missing value"),
    ("noisy,clean\n1,2\n3\n", "column 'clean' holds a non-integer or missing value"),
    ("noisy,clean\n1,x\n", "column 'clean' holds a non-integer or missing value"),
    ("noisy\n", "noisy_label must be a non-empty 1-D integer array, got dtype int64 shape (0,)"),
    (b"\xff\xfe1\n", "unreadable CSV: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
    ('"' + "1" * 140_000 + '"\n', "unreadable CSV: field larger than field limit (131072)"),
])
def test_bad_csv_files_have_their_own_message(tmp_path, text, why):
    path = _csv(tmp_path, "bad.csv", text)
    with pytest.raises(UsageError, match=_exact(f"{path} is not a label file ({why})")):
        read_label_dict(path)


def test_csv_without_a_noisy_column_and_negative_labels(tmp_path):
    path = _csv(tmp_path, "two.csv", "a,b\n1,2\n")
    with pytest.raises(UsageError, match=_exact(
            f"{path} is not a label file (a CSV needs a 'noisy' column or a single column of labels)")):
        read_label_dict(path)
    neg = _csv(tmp_path, "neg.csv", "noisy,clean\n1,-1\n")
    with pytest.raises(UsageError, match=_exact(f"{neg}: clean_label holds negative labels")):
        read_label_dict(neg)


def test_file_sha256_is_the_digest_of_the_whole_file(tmp_path):
    import hashlib

    from robustlab.corruptions.labelfiles import file_sha256

    path = tmp_path / "big.bin"
    data = np.random.default_rng(0).integers(0, 256, (1 << 20) + 123, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path)) == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# dataset noise: noise types, user label files, the transition twin, rate checks


from robustlab.corruptions import dataset_noise as dn  # noqa: E402
from robustlab.corruptions.labels import corrupt_labels, corrupt_with_transition  # noqa: E402
from robustlab.data.datasets import ImageDataset  # noqa: E402
from robustlab.data.splits import DataSplits  # noqa: E402


def _train_set(n: int = 60, classes: int = 4, seed: int = 0, coarse=None) -> ImageDataset:
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, 2, 2), dtype=np.uint8))
    labels = torch.from_numpy(np.arange(n) % classes)
    return ImageDataset(images, labels, [f"c{i}" for i in range(classes)], coarse)


def _count_matrix(clean: np.ndarray, noisy: np.ndarray, c: int) -> np.ndarray:
    """Row-normalised counts, by hand."""
    m = np.zeros((c, c))
    for a, b in zip(clean, noisy):
        m[a, b] += 1
    return m / m.sum(axis=1, keepdims=True)


def test_parse_noise_type_forms_and_messages():
    for ok in ("symmetric", "uniform", "pair", "asymmetric", "instance", "file", "human:aggre", "human:random1",
               "human:random3", "human:worst", "human:noisy", "transition:file", "transition:instance",
               "transition:human:noisy", "transition:symmetric"):
        assert dn.parse_noise_type(ok) == ok
        assert dn.parse_noise_type(f"  {ok}\n") == ok  # surrounding space is dropped
    help_text = ("symmetric | uniform | pair | asymmetric | instance | human:<aggre|random1|random2|random3|worst> "
                 "(CIFAR-10N) | human:noisy (CIFAR-100N) | file (with --noise-file) | transition:<one of these>")
    assert dn.NOISE_TYPE_HELP == help_text
    for bad in ("gaussian", "transition:gaussian", "Symmetric", "transition", "human"):
        shown = bad.split(":", 1)[1] if bad.startswith("transition:") else bad
        with pytest.raises(UsageError, match=_exact(f"unknown noise type {shown!r}; valid: {help_text}")):
            dn.parse_noise_type(bad)
    with pytest.raises(UsageError, match=_exact("noise type 'transition:transition:pair': the source of a transition "
                                                "twin cannot itself be a transition twin")):
        dn.parse_noise_type("transition:transition:pair")
    with pytest.raises(UsageError, match=_exact(
            "unknown human label set 'best'; CIFAR-10N: aggre, random1, random2, random3, worst; CIFAR-100N: noisy")):
        dn.parse_noise_type("transition:human:best")
    with pytest.raises(UsageError, match=_exact(
            "unknown human label set 'aggre:x'; CIFAR-10N: aggre, random1, random2, random3, worst; CIFAR-100N: noisy")):
        dn.parse_noise_type("human:aggre:x")  # everything after the first colon is the set's name


def test_is_dataset_noise():
    for synthetic in ("symmetric", "uniform", "pair", "asymmetric"):
        assert dn.is_dataset_noise(synthetic) is False
    for whole_set in ("instance", "file", "human:worst", "transition:pair"):
        assert dn.is_dataset_noise(whole_set) is True


def test_rate_check_tolerance_boundary_and_message():
    assert dn.RATE_TOLERANCE == 0.005
    dn._check_rate("human:x", 0.0, 0.4)  # no rate given: anything goes
    dn._check_rate("human:x", 0.01, 0.005)  # exactly the tolerance away (0.01 - 0.005 == 0.005 in floats)
    dn._check_rate("human:x", 0.0, 0.0)
    assert 0.1 - 0.005 < 0.0951
    with pytest.raises(UsageError, match=_exact("--noise-rate 0.0951 conflicts with human:x, whose labels are 9.00% "
                                                "noisy; leave --noise-rate out")):
        dn._check_rate("human:x", 0.0951, 0.09)
    with pytest.raises(UsageError, match=_exact("--noise-rate 0.3 conflicts with human:y, whose labels are 31.25% "
                                                "noisy; leave --noise-rate out")):
        dn._check_rate("human:y", 0.3, 0.3125)


def test_synthetic_noise_is_corrupt_labels_on_the_whole_set():
    coarse = torch.tensor([0, 0, 1, 1]).repeat(15)  # per-sample superclasses: 0<->1, 2<->3
    train = _train_set(coarse=coarse)
    for kind in ("symmetric", "uniform", "pair", "asymmetric"):
        out = dn.dataset_noisy_labels(kind, 0.5, 3, "toy", None, train)
        expected = corrupt_labels(train.labels.numpy(), 4, kind, 0.5, 3, coarse_labels=coarse)
        np.testing.assert_array_equal(out.noisy, expected)
        assert isinstance(out.noisy, np.ndarray) and out.noisy.dtype == np.int64
        assert out.info == {"source": kind, "nominal_rate": 0.5, "seed": 3}
    asym = dn.dataset_noisy_labels("asymmetric", 0.6, 1, "toy", None, train).noisy
    clean = train.labels.numpy()
    moved = asym != clean
    assert moved.any() and np.array_equal(asym[moved], clean[moved] ^ 1)  # the superclass partner, from coarse labels


def test_synthetic_and_instance_noise_need_a_rate_in_the_open_interval():
    train = _train_set()
    for kind in ("symmetric", "instance"):
        for rate in (0.0, 1.0, -0.1):
            with pytest.raises(UsageError, match=_exact(f"--noise-type {kind} needs --noise-rate in (0, 1)")):
                dn.dataset_noisy_labels(kind, rate, 0, "toy", None, train)
    assert dn.dataset_noisy_labels("pair", 0.999, 0, "toy", None, train).noisy.shape == (60,)


def test_instance_noise_on_the_whole_set():
    from robustlab.corruptions.instance import instance_dependent_labels

    train = _train_set(n=80, classes=5)
    out = dn.dataset_noisy_labels("instance", 0.4, 2, "toy", None, train)
    np.testing.assert_array_equal(out.noisy, instance_dependent_labels(train.images.numpy(), train.labels.numpy(), 5, 0.4, 2))
    assert out.info == {"source": "instance", "nominal_rate": 0.4, "norm_std": 0.1, "seed": 2}


def test_noise_file_only_with_file_human_or_transition(tmp_path):
    train = _train_set()
    path = tmp_path / "l.npy"
    np.save(path, train.labels.numpy())
    for kind in ("pair", "instance"):
        with pytest.raises(UsageError, match=_exact(
                f"--noise-file needs --noise-type file, human:<set> or transition:<source>, not {kind}")):
            dn.dataset_noisy_labels(kind, 0.2, 0, "toy", None, train, noise_file=path)
    with pytest.raises(UsageError, match=_exact("--noise-type file needs --noise-file PATH")):
        dn.dataset_noisy_labels("file", 0.0, 0, "toy", None, train)
    with pytest.raises(UsageError, match=_exact("unknown noise type 'bogus'; valid: " + dn.NOISE_TYPE_HELP)):
        dn.dataset_noisy_labels("bogus", 0.2, 0, "toy", None, train)


def test_user_label_file_is_taken_as_is_with_provenance(tmp_path, monkeypatch):
    import hashlib

    train = _train_set()
    clean = train.labels.numpy()
    noisy = clean.copy()
    noisy[:15] = (noisy[:15] + 1) % 4  # 25% noisy
    path = tmp_path / "mine.npy"
    np.save(path, noisy)
    monkeypatch.setenv("HOME", str(tmp_path))
    for given in (str(path), "~/mine.npy"):
        out = dn.dataset_noisy_labels("file", 0.0, 9, "toy", None, train, noise_file=given)
        np.testing.assert_array_equal(out.noisy, noisy)
        assert out.info == {"source": "file", "label_file": str(path),
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert dn.dataset_noisy_labels("file", 0.25, 0, "toy", None, train, noise_file=path).noisy.shape == (60,)
    with pytest.raises(UsageError, match=_exact(f"--noise-rate 0.3 conflicts with --noise-file {path}, whose labels "
                                                "are 25.00% noisy; leave --noise-rate out")):
        dn.dataset_noisy_labels("file", 0.3, 0, "toy", None, train, noise_file=path)


def test_user_label_file_array_choice(tmp_path):
    clean = np.arange(12) % 3
    noisy = (clean + 1) % 3
    path = tmp_path / "x.pt"
    cases = [
        ({"noisy_label": noisy, "other": clean, "clean_label": clean}, noisy),  # noisy_label wins
        ({"mine": noisy, "clean_label": clean, "clean_coarse_label": clean}, noisy),  # the one non-clean array
        ({"mine": noisy}, noisy),
    ]
    for content, expected in cases:
        torch.save(content, path)
        np.testing.assert_array_equal(dn._user_labels(path, clean, 3), expected)
    torch.save({"aggre_label": noisy, "worse_label": noisy, "clean_label": clean}, path)
    with pytest.raises(UsageError, match=_exact(f"{path} holds several label arrays (aggre_label, worse_label); for a "
                                                "CIFAR-N file use --noise-type human:<set>")):
        dn._user_labels(path, clean, 3)
    torch.save({"clean_label": clean}, path)
    with pytest.raises(UsageError, match=_exact(f"{path} holds no noisy labels, only clean_label")):
        dn._user_labels(path, clean, 3)
    torch.save({"clean_label": clean, "clean_coarse_label": clean}, path)
    with pytest.raises(UsageError, match=_exact(f"{path} holds no noisy labels, only clean_coarse_label, clean_label")):
        dn._user_labels(path, clean, 3)


def test_user_label_file_is_checked_against_the_dataset(tmp_path):
    clean = np.arange(12) % 3
    path = tmp_path / "x.pt"
    torch.save({"noisy_label": clean[:-1]}, path)
    with pytest.raises(UsageError, match=_exact(f"label file {path} has 11 labels; the training set has 12 images")):
        dn._user_labels(path, clean, 3)
    top = clean.copy()
    top[4] = 2
    torch.save({"noisy_label": top}, path)
    np.testing.assert_array_equal(dn._user_labels(path, clean, 3), top)  # C - 1 is a label
    top[4] = 3
    torch.save({"noisy_label": top}, path)
    with pytest.raises(UsageError, match=_exact(f"label file {path} holds labels >= 3, the number of classes")):
        dn._user_labels(path, clean, 3)
    wrong = clean.copy()
    wrong[[0, 5]] = [1, 0]
    torch.save({"noisy_label": clean, "clean_label": wrong}, path)
    with pytest.raises(UsageError, match=_exact(f"clean labels in {path} do not match the dataset's labels (2 of 12 "
                                                "differ; wrong file or dataset?)")):
        dn._user_labels(path, clean, 3)
    torch.save({"noisy_label": clean, "clean_label": clean[:5]}, path)  # a clean array of another length
    with pytest.raises(UsageError, match=_exact(f"clean labels in {path} do not match the dataset's labels (12 of 12 "
                                                "differ; wrong file or dataset?)")):
        dn._user_labels(path, clean, 3)
    torch.save({"noisy_label": (clean + 1) % 3, "clean_label": clean}, path)
    np.testing.assert_array_equal(dn._user_labels(path, clean, 3), (clean + 1) % 3)


def test_transition_twin_draws_from_the_sources_empirical_matrix(tmp_path):
    train = _train_set(n=80, classes=4)
    clean = train.labels.numpy()
    source = corrupt_labels(clean, 4, "pair", 0.3, 5)
    matrix = _count_matrix(clean, source, 4)
    out = dn.dataset_noisy_labels("transition:pair", 0.3, 5, "toy", None, train)
    np.testing.assert_array_equal(out.noisy, corrupt_with_transition(clean, matrix, 5))
    assert out.info["source"] == "transition:pair"
    assert out.info["twin_of"] == {"source": "pair", "nominal_rate": 0.3, "seed": 5}
    assert out.info["source_rate"] == pytest.approx(np.mean(source != clean))
    np.testing.assert_allclose(out.info["source_transition"], matrix)
    assert isinstance(out.info["source_transition"], list)
    # the twin of a user file reads the same file
    path = tmp_path / "u.npy"
    np.save(path, source)
    twin = dn.dataset_noisy_labels("transition:file", 0.0, 7, "toy", None, train, noise_file=path)
    np.testing.assert_array_equal(twin.noisy, corrupt_with_transition(clean, matrix, 7))
    assert twin.info["twin_of"]["label_file"] == str(path)


def _splits(train: ImageDataset, train_index, val_index) -> DataSplits:
    sub = train.subset(train_index)
    val = None if val_index is None else train.subset(val_index)
    return DataSplits(sub, val, train.subset([0]), (0.5,) * 3, (0.2,) * 3, np.asarray(train_index),
                      None if val_index is None else np.asarray(val_index))


def test_apply_dataset_noise_follows_the_original_index(tmp_path):
    train = _train_set(n=40, classes=4)
    clean = train.labels.numpy()
    noisy = (clean + 1) % 4
    noisy[::4] = clean[::4]  # three quarters noisy
    path = tmp_path / "n.npy"
    np.save(path, noisy)
    train_index, val_index = np.arange(40)[::-1][:30].copy(), np.arange(10)
    for noisy_val in (False, True):
        splits = _splits(train, train_index, val_index)
        report = dn.apply_dataset_noise(splits, train, "file", 0.0, 0, "toy", None, noise_file=path, noisy_val=noisy_val)
        np.testing.assert_array_equal(splits.train.labels.numpy(), noisy[train_index])
        assert splits.train.labels.dtype == torch.int64
        np.testing.assert_array_equal(splits.val.labels.numpy(), (noisy if noisy_val else clean)[val_index])
        assert report["realized_rate"] == pytest.approx(np.mean(noisy[train_index] != clean[train_index]))
        np.testing.assert_allclose(report["transition"], _count_matrix(clean[train_index], noisy[train_index], 4))
        assert report["num_classes"] == 4 and report["noise_type"] == "file"
        assert report["full_set_rate"] == pytest.approx(0.75)
        assert report["source"] == "file" and report["label_file"] == str(path)
    splits = _splits(train, train_index, val_index)  # by default validation keeps its clean labels
    dn.apply_dataset_noise(splits, train, "file", 0.0, 0, "toy", None, noise_file=path)
    np.testing.assert_array_equal(splits.val.labels.numpy(), clean[val_index])
    # the noisy array is not shared with the split's tensor
    splits = _splits(train, train_index, None)
    dn.apply_dataset_noise(splits, train, "file", 0.0, 0, "toy", None, noise_file=path, noisy_val=True)
    splits.train.labels[0] = 3 - splits.train.labels[0]
    assert splits.val is None and np.array_equal(np.load(path), noisy)


def test_apply_dataset_noise_needs_the_original_index():
    train = _train_set(n=8)
    splits = DataSplits(train, None, train, (0.5,) * 3, (0.2,) * 3)
    with pytest.raises(UsageError, match=_exact("these splits do not record each sample's original index")):
        dn.apply_dataset_noise(splits, train, "instance", 0.3, 0, "toy", None)
