"""Bad input across every command: exit code 2 and one line on stderr, never a traceback.

The commands run in-process (`main(argv)`), which exercises the same argparse and `cli_entry`
paths as `python -m ...` without paying the interpreter start-up per case.
"""
import importlib
from pathlib import Path

import pytest

GARBAGE = "garbage.pt"


def _cases(tmp):
    unwritable = str(tmp / "a-file" / "out")  # a folder under a regular file cannot be created
    missing = str(tmp / "no-such-dir")
    garbage = str(tmp / GARBAGE)
    return [
        ("robustlab.models", ["--format", "yaml", "--list"]),
        ("robustlab.models", ["--info", "no_such_model"]),
        ("robustlab.train", ["--model", "no_such_model"]),
        ("robustlab.train", ["--lr", "0"]),
        ("robustlab.train", ["--lr", "-0.1"]),
        ("robustlab.train", ["--epochs", "0"]),
        ("robustlab.train", ["--batch-size", "0"]),
        ("robustlab.train", ["--noise-rate", "1.0"]),
        ("robustlab.train", ["--noise-rate", "-0.1"]),
        ("robustlab.train", ["--strategy", "coteach"]),
        ("robustlab.train", ["--data-dir", missing]),
        ("robustlab.train", ["--out", unwritable]),
        ("robustlab.train", ["--schedule", "sawtooth"]),
        ("robustlab.train", ["--model-arg", "no_equals_sign"]),
        ("robustlab.train", ["--seed", "-1"]),
        ("robustlab.train", ["--device", "abacus"]),
        ("robustlab.train", ["--schedule", "plateau", "--gamma", "1"]),
        ("robustlab.train", ["--model", "small_cnn", "--model-arg", "dropout=2"]),
        ("robustlab.train", ["--model", "small_cnn", "--model-arg", "depth=3"]),
        ("robustlab.train", ["--resume", garbage, "--data-dir", missing]),
        ("studies.noisy_labels", ["--noise", "0", "--coteach"]),
        ("studies.noisy_labels", ["--noise", "1.5"]),
        ("studies.noisy_labels", ["--noise-type", "diagonal"]),
        ("studies.noisy_labels", ["--seeds", "a,b"]),
        ("studies.noisy_labels", ["--seeds", "0,-1"]),
        ("studies.noisy_labels", ["--label-smoothing", "0.1"]),
        ("studies.noisy_labels", ["--shard", "3/2"]),
        ("studies.noisy_labels", ["--model", "no_such_model"]),
        ("studies.architectures", ["--models", "resnet18,no_such_model"]),
        ("studies.architectures", ["--preset", "huge"]),
        ("studies.supcon", ["--temperature", "0"]),
        ("studies.supcon", ["--head", "transformer"]),
        ("studies.regularization", ["--ablation", "everything"]),
        ("studies.regularization", ["--model", "no_such_model"]),
        ("studies.robustness", ["--corruptions", "snowstorm", "--checkpoint", garbage]),
        ("studies.robustness", ["--checkpoint", garbage]),
        ("robustlab.embed", ["--checkpoint", garbage, "--out", str(tmp / "emb")]),
        ("robustlab.bench", ["--batch-size", "0"]),
        ("robustlab.bench", ["--model", "no_such_model"]),
    ]


# Paths are written against a placeholder and rebased onto each test's tmp_path.
CASES = _cases(Path("/tmp/placeholder"))


@pytest.mark.parametrize("module,argv", CASES, ids=[f"{m}:{' '.join(a)}" for m, a in CASES])
def test_bad_input_exits_2_with_one_line(module, argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default --out folders land in the temp dir
    (tmp_path / "a-file").write_text("")
    (tmp_path / GARBAGE).write_bytes(b"\x00not a checkpoint")
    argv = [a.replace("/tmp/placeholder", str(tmp_path)) for a in argv]
    if module.startswith("studies.") or module == "robustlab.train":
        argv = argv + ["--quiet"] if "--quiet" not in argv else argv
    main = importlib.import_module(module + (".__main__" if module == "robustlab.models" else "")).main
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2, err
    assert len(err) == 1, err
    assert "error" in err[0] and "Traceback" not in err[0]
