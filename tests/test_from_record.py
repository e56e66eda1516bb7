"""`robustlab.train --from-record` re-runs a record's exact config (bit-identical metrics on the CPU),
options given alongside override it, `--print-config` round-trips to the run id, and --help shows
grouped options with their defaults."""
from __future__ import annotations

import json
import re

import pytest
import torch

from robustlab.experiment import ExperimentConfig, StrategyConfig
from robustlab.runs import config_from_record
from robustlab.train import main

ARGS = ["--model", "tiny_cnn", "--epochs", "2", "--val-size", "20", "--batch-size", "20", "--noise-rate", "0.2",
        "--seed", "3", "--cutout", "8", "--tta", "none", "--device", "cpu", "--quiet"]
TIMING = ("seconds", "images_per_s", "train_seconds")  # wall-clock numbers differ between runs


@pytest.fixture
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def only_record(out):
    (path,) = (out / "records").glob("*.json")
    return path, json.loads(path.read_text())


def without_timing(values: dict) -> dict:
    return {k: v for k, v in values.items() if k not in TIMING}


def test_from_record_reproduces_the_run_exactly(tiny_cifar10, tmp_path, capsys, restore_determinism):
    where = ["--data-dir", str(tiny_cifar10.root), "--cache-dir", str(tmp_path / "cache")]
    assert main([*ARGS, "--deterministic", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert not (tmp_path / "a").exists()  # --print-config runs nothing

    assert main([*ARGS, *where, "--deterministic", "--out", str(tmp_path / "a")]) == 0
    path, original = only_record(tmp_path / "a")
    assert original["environment"]["deterministic"] is True
    assert printed["run_id"] == original["run_id"] == config_from_record(printed).run_id
    assert printed["config"] == original["config"]

    torch.use_deterministic_algorithms(False)  # the re-run must switch it on because the record says so
    assert main(["--from-record", str(path), *where, "--out", str(tmp_path / "b")]) == 0
    assert torch.are_deterministic_algorithms_enabled()
    _, rerun = only_record(tmp_path / "b")
    assert rerun["run_id"] == original["run_id"] and rerun["config"] == original["config"]
    assert rerun["noise"] == original["noise"]
    assert without_timing(rerun["metrics"]) == without_timing(original["metrics"])
    assert [without_timing(r) for r in rerun["history"]] == [without_timing(r) for r in original["history"]]


def test_options_given_with_from_record_override_the_record(tmp_path, capsys):
    cfg = ExperimentConfig(model="tiny_cnn", seed=3, tag="noisy_coteach",
                           strategy=StrategyConfig("coteach", {"forget_rate": 0.1}))
    cfg.data.noise_rate, cfg.data.train_size, cfg.train.epochs, cfg.augment.cutout = 0.2, 100, 7, 8
    path = tmp_path / "record.json"
    path.write_text(json.dumps({"run_id": cfg.run_id, "config": cfg.key(), "metrics": {}}))

    assert main(["--from-record", str(path), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == cfg.run_id  # nothing given: the record as it is

    # --seed 0 equals the parser default, yet it was typed, so it wins over the record's seed 3
    assert main(["--from-record", str(path), "--epochs", "2", "--seed", "0", "--strategy-arg", "num_gradual=3",
                 "--print-config"]) == 0
    out = json.loads(capsys.readouterr().out)["config"]
    assert (out["train"]["epochs"], out["seed"]) == (2, 0)
    assert out["strategy"] == {"name": "coteach", "options": {"forget_rate": 0.1, "num_gradual": 3}}
    assert (out["model"], out["tag"], out["data"]["dataset"], out["data"]["noise_rate"]) == ("tiny_cnn", "noisy_coteach",
                                                                                           "cifar10", 0.2)
    assert (out["data"]["train_size"], out["augment"]["cutout"]) == (100, 8)

    assert main(["--from-record", str(path), "--strategy", "ce", "--print-config"]) == 0
    out = json.loads(capsys.readouterr().out)["config"]
    assert out["strategy"] == {"name": "ce", "options": {}} and out["tag"] == ""  # the arm's tag no longer fits


def test_no_tensorboard_leaves_the_run_id_unchanged(capsys):
    assert main([*ARGS, "--print-config"]) == 0
    with_tb = json.loads(capsys.readouterr().out)["run_id"]
    assert main([*ARGS, "--no-tensorboard", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == with_tb


def test_missing_or_foreign_record_is_a_one_line_error(tmp_path, capsys):
    assert main(["--from-record", str(tmp_path / "nope.json"), "--print-config"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    (tmp_path / "other.json").write_text('{"a": 1}')
    assert main(["--from-record", str(tmp_path / "other.json"), "--print-config"]) == 2
    assert "not a run record" in capsys.readouterr().err


def test_help_groups_options_and_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for group in ("run:", "label noise:", "reproduce and inspect:", "data:", "training recipe:", "augmentation:",
                  "where and how:"):
        assert f"\n{group}\n" in text, group
    assert re.search(r"--epochs EPOCHS\s+\(default: 10\)", text)  # the recipe's value, though the parser default is None
    assert re.search(r"--lr LR\s+\(default: 0\.1\)", text)
    assert re.search(r"--seed SEED\s+\(default: 0\)", text)
    assert "(default: None)" not in text and "(default: False)" not in text

    from studies.common import study_parser
    assert re.search(r"--preset \{[a-z,]+\}\s+quick: .*\(default:\s+quick\)", study_parser("x", "d").format_help(), re.S)


def test_study_print_config_lists_every_run_without_running(tmp_path, capsys):
    from studies import noisy_labels

    out = tmp_path / "out"
    assert noisy_labels.main(["--print-config", "--seeds", "0,1", "--methods", "ce,coteach", "--data-dir",
                              str(tmp_path), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len({line["run_id"] for line in lines}) == len(lines) == 6  # clean_ce, noisy_ce, noisy_coteach x 2 seeds
    assert all(config_from_record(line).run_id == line["run_id"] for line in lines)
    assert sorted(line["config"]["seed"] for line in lines) == [0, 0, 0, 1, 1, 1]
    assert not out.exists()

    saved = tmp_path / "arm.json"  # one line is a valid --from-record input
    saved.write_text(json.dumps(lines[-1]))
    assert main(["--from-record", str(saved), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == lines[-1]["run_id"]


def test_run_grid_print_config_exits_before_running(capsys):
    import argparse

    from robustlab.experiment import Context
    from studies.common import run_grid

    configs = [ExperimentConfig(model="tiny_cnn", seed=s) for s in (0, 1)]
    args = argparse.Namespace(print_config=True, deterministic=True, collect=False, shard=None, out="unused",
                              device="cpu")
    with pytest.raises(SystemExit) as stop:
        run_grid(configs, args, Context())
    assert stop.value.code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["run_id"] for line in lines] == [c.run_id for c in configs]
    assert all(line["environment"] == {"deterministic": True} for line in lines)
