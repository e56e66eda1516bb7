"""studies.architectures end to end on small slices of the real CIFAR-10."""
from __future__ import annotations

import csv
from pathlib import Path


from robustlab.models import create_model
from studies import architectures

TINY = ["--epochs", "1", "--train-size", "300", "--val-size", "100", "--test-size", "300", "--quiet"]


def args_for(out: Path, data_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [*TINY, "--out", str(out), "--figures-dir", str(out / "fig"), "--data-dir", str(data_dir),
            "--cache-dir", str(cache_dir), *extra]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def n_params(name: str) -> int:
    return sum(p.numel() for p in create_model(name, num_classes=10).parameters())


def no_training(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("training was started")

    monkeypatch.setattr("robustlab.experiment.fit", fail)


def test_table_and_figure_then_collect(tmp_path, cifar10_dir, session_cache_dir, monkeypatch):
    out = tmp_path / "arch"
    argv = args_for(out, cifar10_dir, session_cache_dir, "--models", "tiny_cnn,small_cnn")
    assert architectures.main(argv) == 0

    for d in (out, out / "fig"):
        assert (d / "table.md").is_file() and (d / "test_acc.png").is_file()
        rows = read_csv(d / "table.csv")
        assert [r["model"] for r in rows] == ["tiny_cnn", "small_cnn"]
    for r in rows:
        assert int(r["params"]) == n_params(r["model"])
        for col in ("test_acc_last", "test_acc_val_selected", "test_acc_best_oracle", "test_acc_tta", "test_ece"):
            assert 0.0 <= float(r[col]) <= 1.0, (col, r[col])
        assert float(r["test_acc_best_oracle"]) >= max(float(r["test_acc_last"]), float(r["test_acc_val_selected"]))
        assert float(r["test_loss"]) > 0 and float(r["images_per_s"]) > 0
    md = (out / "table.md").read_text()
    assert "cifar10" in md and "preset quick" in md and "1 epochs" in md and "seeds [0]" in md
    assert "test_acc_best_oracle (%)" in md and "an oracle" in md
    assert len(read_csv(out / "runs.csv")) == 2

    # --collect rebuilds tables and figures from the records alone
    for d in (out, out / "fig"):
        for name in ("table.md", "table.csv", "test_acc.png"):
            (d / name).unlink()
    no_training(monkeypatch)
    assert architectures.main(argv + ["--collect"]) == 0
    assert [r["model"] for r in read_csv(out / "table.csv")] == ["tiny_cnn", "small_cnn"]
    assert (out / "fig" / "test_acc.png").is_file()
    # a plain rerun finds every record and trains nothing either
    assert architectures.main(argv) == 0


def test_unknown_model_is_a_one_line_usage_error(tmp_path, capsys, monkeypatch):
    no_training(monkeypatch)
    code = architectures.main(["--models", "tiny_cnn,resnet_nope", "--out", str(tmp_path / "x"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "resnet_nope" in err and "known models" in err and "tiny_cnn" in err
    assert not (tmp_path / "x").exists()  # validated before anything is created
    assert architectures.main(["--models", "tiny_cnn,tiny_cnn", "--out", str(tmp_path / "x")]) == 2


def test_shards_cover_the_grid_and_collect_builds_the_table(tmp_path, cifar10_dir, session_cache_dir, capsys):
    out = tmp_path / "sharded"
    argv = args_for(out, cifar10_dir, session_cache_dir, "--models", "tiny_cnn", "--seeds", "0,1")
    assert architectures.main(argv + ["--shard", "0/2"]) == 0
    assert len(list((out / "records").glob("*.json"))) == 1
    assert not (out / "table.csv").exists()  # shards never tabulate
    assert architectures.main(argv + ["--shard", "1/2"]) == 0
    assert len(list((out / "records").glob("*.json"))) == 2
    assert architectures.main(argv + ["--collect"]) == 0
    (row,) = read_csv(out / "table.csv")
    assert row["model"] == "tiny_cnn" and row["n_seeds"] == "2" and row["test_acc_last_std"] != ""
    assert "seeds [0, 1]" in (out / "table.md").read_text()


def test_paper_preset_recipe():
    args = architectures.build_parser().parse_args(["--preset", "paper"])
    base = architectures.preset("paper")
    assert base.data.train_size is None and base.data.val_size == 5000 and base.train.tta == "flip"
    arms = {c.model: c for c in architectures.build_arms(base, ["resnet18", "vit_cifar"], [0], args)}
    assert arms["resnet18"].train.optim.optimizer == "sgd" and arms["resnet18"].train.optim.lr == 0.1
    assert arms["vit_cifar"].train.optim.optimizer == "adamw" and arms["vit_cifar"].train.optim.weight_decay == 0.05
    # options given on the command line apply to every model, overrides included
    args = architectures.build_parser().parse_args(["--preset", "paper", "--lr", "0.2"])
    arms = architectures.build_arms(base, ["resnet18", "vit_cifar"], [0], args)
    assert {c.train.optim.lr for c in arms} == {0.2}


def test_quick_preset_models():
    from robustlab.models import list_models

    assert architectures.default_models("quick") == ["vgg1", "vgg3_gap", "resnet_cifar"]
    args = architectures.build_parser().parse_args([])
    arms = {c.model: c for c in architectures.build_arms(architectures.preset("quick"), ["resnet_cifar", "vgg1"], [0], args)}
    assert arms["resnet_cifar"].model_kwargs and not arms["vgg1"].model_kwargs
    assert set(architectures.PAPER_MODELS) <= set(list_models())
