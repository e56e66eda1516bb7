"""Bad input across every command: exit code 2 and one line on stderr, never a traceback.

The commands run in-process (`main(argv)`), which exercises the same argparse and `cli_entry`
paths as `python -m ...` without paying the interpreter start-up per case.
"""
import importlib
from pathlib import Path

import pytest

from conftest import write_tiny_cifar10

GARBAGE = "garbage.pt"


MODELS = "unknown model 'no_such_model'; known models: airbench, airbench_s, convnext_cifar, "  # the list goes on


def _cases(tmp):
    """(module, argv, the message after "error: "; a message ending in ", " is its start)."""
    unwritable = str(tmp / "a-file" / "out")  # a folder under a regular file cannot be created
    garbage = str(tmp / GARBAGE)
    # The robustlab.train cases of tests/test_cli_errors.py (lr, epochs, batch size, noise rate, data dir,
    # output dir, coteach without noise) are not repeated here.
    return [
        ("robustlab.models", ["--format", "yaml", "--list"],
         "argument --format: invalid choice: 'yaml' (choose from 'table', 'json') (see --help)"),
        ("robustlab.models", ["--info", "no_such_model"], MODELS),
        ("robustlab.train", ["--model", "no_such_model"], MODELS),
        ("robustlab.train", ["--noise-rate", "-0.1"], "argument --noise-rate: must be in [0, 1), got -0.1 (see --help)"),
        ("robustlab.train", ["--schedule", "sawtooth"], "argument --schedule: invalid choice: 'sawtooth' (choose from "
         "'constant', 'step', 'multistep', 'cosine', 'warmup_cosine', 'cosine_restarts', 'cyclic', 'onecycle', "
         "'plateau', 'triangular') (see --help)"),
        ("robustlab.train", ["--model-arg", "no_equals_sign"], "--model-arg expects KEY=VALUE, got 'no_equals_sign'"),
        ("robustlab.train", ["--seed", "-1"], "argument --seed: must be >= 0, got -1 (see --help)"),
        ("robustlab.train", ["--device", "abacus"], "unknown device 'abacus'; use auto, cpu, cuda or cuda:N"),
        ("robustlab.train", ["--schedule", "plateau", "--gamma", "1"], "the plateau schedule needs gamma < 1"),
        ("robustlab.train", ["--model", "small_cnn", "--model-arg", "dropout=2"], "dropout must be in [0, 1), got 2"),
        ("robustlab.train", ["--model", "small_cnn", "--model-arg", "depth=3"],
         "model 'small_cnn' does not take option 'depth'"),
        # real (generated) data, so that the checkpoint check is the one that refuses it
        ("robustlab.train", ["--resume", garbage, "--data-dir", str(tmp / "data"), "--model", "tiny_cnn",
                             "--val-size", "0", "--epochs", "1"],
         f"checkpoint {garbage} is unreadable or corrupt (UnpicklingError)"),
        ("studies.noisy_labels", ["--noise", "0", "--coteach"], "--noise 0 leaves nothing to study; use a rate in (0, 1)"),
        ("studies.noisy_labels", ["--noise", "1.5"], "argument --noise: must be in [0, 1), got 1.5 (see --help)"),
        ("studies.noisy_labels", ["--noise-type", "diagonal"], "argument --noise-type: unknown noise type 'diagonal'; "),
        ("studies.noisy_labels", ["--seeds", "a,b"], "argument --seeds: expected comma-separated integers, got 'a,b' "
                                                     "(see --help)"),
        ("studies.noisy_labels", ["--seeds", "0,-1"], "argument --seeds: seeds must be >= 0, got '0,-1' (see --help)"),
        ("studies.noisy_labels", ["--label-smoothing", "0.1"], "unrecognized arguments: --label-smoothing 0.1 (see --help)"),
        ("studies.noisy_labels", ["--shard", "3/2"], "argument --shard: need 0 <= I < N, got '3/2' (see --help)"),
        ("studies.noisy_labels", ["--model", "no_such_model"], MODELS),
        ("studies.architectures", ["--models", "resnet18,no_such_model"], MODELS),
        ("studies.architectures", ["--preset", "huge"],
         "argument --preset: invalid choice: 'huge' (choose from 'quick', 'paper', 'fast') (see --help)"),
        ("studies.supcon", ["--temperature", "0"], "argument --temperature: must be > 0, got 0 (see --help)"),
        ("studies.supcon", ["--head", "transformer"], "unknown head 'transformer'; choose from mlp, linear, finetune"),
        ("studies.regularization", ["--ablation", "everything"], "argument --ablation: invalid choice: 'everything' "
         "(choose from 'basic', 'augment', 'schedule', 'arch', 'norm', 'all') (see --help)"),
        ("studies.regularization", ["--model", "no_such_model"], MODELS),
        ("studies.robustness", ["--corruptions", "snowstorm", "--checkpoint", garbage], "unknown corruption 'snowstorm'; "),
        ("studies.robustness", ["--checkpoint", garbage], f"checkpoint {garbage} is unreadable or corrupt (UnpicklingError)"),
        ("robustlab.embed", ["--checkpoint", garbage, "--out", str(tmp / "emb")],
         f"checkpoint {garbage} is unreadable or corrupt (UnpicklingError)"),
        ("robustlab.bench", ["--batch-size", "0"], "argument --batch-size: must be >= 1, got 0 (see --help)"),
        ("robustlab.bench", ["--model", "no_such_model"], MODELS),
    ]


# Paths are written against a placeholder and rebased onto each test's tmp_path.
CASES = _cases(Path("/tmp/placeholder"))


@pytest.mark.parametrize("module,argv,message", CASES, ids=[f"{m}:{' '.join(a)}" for m, a, _ in CASES])
def test_bad_input_exits_2_with_its_own_one_line_message(module, argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default --out folders land in the temp dir
    (tmp_path / "a-file").write_text("")
    (tmp_path / GARBAGE).write_bytes(b"\x00not a checkpoint")
    write_tiny_cifar10(tmp_path / "data")
    argv = [a.replace("/tmp/placeholder", str(tmp_path)) for a in argv]
    message = message.replace("/tmp/placeholder", str(tmp_path))
    if module.startswith("studies.") or module == "robustlab.train":
        argv = argv + ["--quiet"] if "--quiet" not in argv else argv
    main = importlib.import_module(module + (".__main__" if module == "robustlab.models" else "")).main
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    prog, _, text = err[0].partition(": error: ")
    assert prog.removeprefix("python -m ").startswith(module), err[0]
    assert text.startswith(message) if message.endswith(", ") or message.endswith("; ") else text == message


# ---- a user's own data: each case stopped by its own check, with its own message --------------

def _png_folder(root: Path, per_class: int = 4) -> Path:
    import numpy as np
    from PIL import Image

    for split in ("train", "test"):
        for c, cls in enumerate(("ant", "bee")):
            (root / split / cls).mkdir(parents=True)
            for n in range(per_class):
                Image.fromarray(np.full((8, 8, 3), 40 * c + n, np.uint8)).save(root / split / cls / f"{n}.png")
    return root


def _train(argv, capsys) -> tuple[int, list[str]]:
    from robustlab.train import main

    code = main(argv + ["--model", "tiny_cnn", "--epochs", "1", "--batch-size", "4", "--val-size", "0", "--tta", "none",
                        "--device", "cpu", "--quiet", "--no-tensorboard"])
    return code, capsys.readouterr().err.strip().splitlines()


def test_undecodable_image_exits_2_naming_it(tmp_path, capsys):
    root = _png_folder(tmp_path / "imgs")
    bad = root / "train" / "bee" / "3.png"
    bad.write_bytes(b"\x89PNG but not really")
    code, err = _train(["--dataset", f"imagefolder:{root}", "--out", str(tmp_path / "out"),
                        "--cache-dir", str(tmp_path / "cache")], capsys)
    assert (code, err) == (2, [f"robustlab.train: error: cannot decode image {bad} (UnidentifiedImageError: cannot "
                               f"identify image file '{bad}'); fix or remove it, or pass --skip-bad-images"])


def test_skip_bad_images_trains_on_the_rest_and_says_how_many(tmp_path, capsys):
    root = _png_folder(tmp_path / "imgs")
    bad = root / "train" / "bee" / "3.png"
    bad.write_bytes(b"")
    code, err = _train(["--dataset", f"imagefolder:{root}", "--out", str(tmp_path / "out"), "--skip-bad-images",
                        "--cache-dir", str(tmp_path / "cache")], capsys)
    assert code == 0 and err[0] == f"warning: skipped 1 undecodable image(s) of 8, e.g. {bad}"
    (record,) = (tmp_path / "out" / "records").glob("*.json")
    import json

    assert json.loads(record.read_text())["data"]["train"] == 7


def test_class_folder_without_images_exits_2_naming_it(tmp_path, capsys):
    root = _png_folder(tmp_path / "imgs")
    (root / "train" / "cat").mkdir()
    code, err = _train(["--dataset", f"imagefolder:{root}", "--out", str(tmp_path / "out"),
                        "--cache-dir", str(tmp_path / "cache")], capsys)
    assert (code, err) == (2, [f"robustlab.train: error: class folder {root / 'train' / 'cat'} has no images "
                               f"(.png, .jpg, .jpeg, .bmp); add images or remove the folder"])


def test_diverging_run_exits_2_naming_the_epoch_and_a_lower_lr(tmp_path, capsys):
    root = _png_folder(tmp_path / "imgs")
    out = tmp_path / "out"
    code, err = _train(["--dataset", f"imagefolder:{root}", "--out", str(out), "--lr", "1e30", "--optimizer", "sgd",
                        "--schedule", "constant", "--cache-dir", str(tmp_path / "cache")], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("robustlab.train: error: training diverged: the loss became NaN or inf at epoch 1, step ")
    assert err[0].endswith("; try a lower learning rate than 1e+30 (--lr)")
