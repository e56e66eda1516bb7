"""The SupCon study end to end (real CIFAR-10 slices, a tiny CIFAR-100 file) and `robustlab.embed`."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_cifar100
from robustlab import embed
from robustlab.errors import UsageError
from robustlab.experiment import Context, ExperimentConfig, StrategyConfig, run_experiment
from studies import supcon

ARMS = {"ce", "supcon_mlp", "supcon_linear"}


def cifar10_slice(src: Path, dst: Path, per_class_train: int, per_class_test: int) -> Path:
    """The first images of every class of the real CIFAR-10 image folder, as a smaller image folder."""
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        for class_dir in sorted((src / "cifar10" / split).iterdir()):
            out = dst / "cifar10" / split / class_dir.name
            out.mkdir(parents=True)
            for image in sorted(class_dir.iterdir())[:n]:
                shutil.copyfile(image, out / image.name)
    return dst


@pytest.fixture(scope="module")
def small_slice(cifar10_dir, tmp_path_factory) -> Path:
    return cifar10_slice(cifar10_dir, tmp_path_factory.mktemp("cifar10-small"), 20, 10)


def study(data_dir: Path, out: Path, *extra: str) -> int:
    return supcon.main(["--data-dir", str(data_dir), "--cache-dir", str(out / "cache"), "--out", str(out / "results"),
                        "--figures-dir", str(out / "figures"), "--quiet", *extra])


def read_table(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {row["arm"]: row for row in csv.DictReader(f)}


def test_tiny_run_writes_table_figures_and_a_pretraining_run_without_accuracies(small_slice, tmp_path, capsys):
    code = study(small_slice, tmp_path, "--model", "tiny_cnn", "--epochs", "1", "--pretrain-epochs", "1",
                 "--train-size", "200", "--test-size", "100", "--head", "finetune")
    assert code == 0
    results, figures = tmp_path / "results", tmp_path / "figures"
    table = read_table(results / "table.csv")
    assert set(table) == ARMS | {"supcon_finetune"}
    for row in table.values():
        for column in ("test_acc", "knn_acc", "linear_probe_acc", "silhouette", "alignment", "uniformity",
                       "test_ece", "train_seconds"):
            assert row[column] != "", (row["arm"], column)
    # The frozen heads share one encoder, so their feature scores coincide.
    assert table["supcon_mlp"]["knn_acc"] == table["supcon_linear"]["knn_acc"]
    for d in (results, figures):
        for name in ("table.md", "table.csv", "tsne_test.png", "loss_curves.png", "test_acc.png"):
            assert (d / name).stat().st_size > 0, d / name
    tsne = json.loads((results / "tsne_test.json").read_text())
    assert [name for name, _ in tsne["panels"]] == ["cross-entropy", "SupCon encoder", "SupCon fine-tuned"]
    assert all(n == 100 for _, n in tsne["panels"])  # one point per test image
    assert tsne["colour"] == "class" and tsne["num_colour_groups"] == 10

    records = {json.loads(p.read_text())["config"]["tag"]: json.loads(p.read_text())
               for p in (results / "records").glob("*.json")}
    pre = records["supcon_pretrain"]
    assert "test_acc" not in pre["metrics"] and all("test_acc" not in h for h in pre["history"])
    assert (results / "runs" / pre["run_id"] / "last.pt").exists()
    probe = records["supcon_mlp"]
    assert probe["config"]["strategy"]["options"]["encoder_run"] == pre["run_id"]  # no path in the run identity
    assert 0.0 <= probe["metrics"]["test_acc"] <= 1.0

    # A second call finds every record and every embedding cached.
    capsys.readouterr()
    assert study(small_slice, tmp_path, "--model", "tiny_cnn", "--epochs", "1", "--pretrain-epochs", "1",
                 "--train-size", "200", "--test-size", "100", "--head", "finetune", "--collect") == 0
    assert "SupCon vs cross-entropy" in capsys.readouterr().out

    # robustlab.embed on a classifier-stage checkpoint: the encoder's features of the run's test split.
    ckpt = results / "runs" / probe["run_id"] / "last.pt"
    out = tmp_path / "embed"
    assert embed.main(["--checkpoint", str(ckpt), "--out", str(out), "--data-dir", str(small_slice),
                       "--cache-dir", str(tmp_path / "cache"), "--method", "pca", "--max-points", "50"]) == 0
    report = json.loads((out / "embedding_test.json").read_text())
    assert report["run_id"] == probe["run_id"] and report["num_points"] == 100 and report["plotted_points"] == 50
    assert report["knn_acc"] == pytest.approx(float(table["supcon_mlp"]["knn_acc"]))
    assert (out / "embedding_test_pca.png").stat().st_size > 0


@pytest.mark.slow
def test_supcon_heads_beat_chance_on_a_quick_run(cifar10_dir, tmp_path):
    data = cifar10_slice(cifar10_dir, tmp_path / "data", 150, 40)
    code = study(data, tmp_path, "--model", "tiny_cnn", "--train-size", "1500", "--test-size", "400",
                 "--pretrain-epochs", "4", "--epochs", "12")
    assert code == 0
    table = read_table(tmp_path / "results" / "table.csv")
    for arm in ("supcon_mlp", "supcon_linear"):
        assert float(table[arm]["test_acc"]) > 0.2, table[arm]  # chance is 0.1
        assert float(table[arm]["linear_probe_acc"]) > 0.2, table[arm]


def test_cifar100_runs_end_to_end_coloured_by_superclass(tmp_path):
    tiny = write_tiny_cifar100(tmp_path / "data", n_train=300, n_test=100)
    code = study(tiny.root, tmp_path, "--dataset", "cifar100", "--model", "tiny_cnn", "--epochs", "1",
                 "--pretrain-epochs", "1", "--train-size", "300", "--test-size", "100")
    assert code == 0
    assert set(read_table(tmp_path / "results" / "table.csv")) == ARMS
    tsne = json.loads((tmp_path / "results" / "tsne_test.json").read_text())
    assert tsne["colour"] == "superclass"
    assert tsne["num_colour_groups"] == len(set(tiny.test_coarse.tolist())) <= 20
    assert (tmp_path / "figures" / "tsne_test.png").exists()


# ---- bad input -------------------------------------------------------------------------------

def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_embed_rejects_files_that_are_not_robustlab_checkpoints(tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    assert embed.main(["--checkpoint", str(garbage), "--out", str(tmp_path / "o")]) == 2
    assert "corrupt" in _one_line_error(capsys)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    assert embed.main(["--checkpoint", str(other), "--out", str(tmp_path / "o")]) == 2
    assert "not a robustlab checkpoint" in _one_line_error(capsys)
    orphan = tmp_path / "runs" / "x-s0-000" / "last.pt"
    orphan.parent.mkdir(parents=True)
    torch.save({"strategy": {}}, orphan)
    assert embed.main(["--checkpoint", str(orphan), "--out", str(tmp_path / "o")]) == 2
    assert "no run record" in _one_line_error(capsys)
    assert embed.main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in _one_line_error(capsys)


def test_study_rejects_an_unknown_head(tmp_path, capsys):
    assert supcon.main(["--head", "bogus", "--out", str(tmp_path)]) == 2
    assert "unknown head 'bogus'" in _one_line_error(capsys)


def test_probe_needs_an_existing_encoder_run(tmp_path, tiny_cifar10):
    cfg = ExperimentConfig(model="tiny_cnn", strategy=StrategyConfig("supcon_probe", options={"encoder_run": "nope"}))
    cfg.data.val_size, cfg.train.epochs = 0, 1
    ctx = Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "cache"), quiet=True)
    with pytest.raises(UsageError, match="encoder run nope has no record"):
        run_experiment(cfg, tmp_path / "r", ctx)
    cfg.strategy.options = {"encoder_run": "nope", "bogus": 1}
    with pytest.raises(UsageError, match="unknown option"):
        run_experiment(cfg, tmp_path / "r", ctx)


def test_run_ids_do_not_depend_on_the_results_dir():
    p, heads = supcon.configure(supcon.build_parser().parse_args(["--out", "/a"]))
    q, _ = supcon.configure(supcon.build_parser().parse_args(["--out", "/b"]))
    ids = [c.run_id for group in supcon.build_arms(p, heads, [0, 1]) for c in group]
    assert ids == [c.run_id for group in supcon.build_arms(q, heads, [0, 1]) for c in group]
    assert len(set(ids)) == len(ids) == 2 * 4
