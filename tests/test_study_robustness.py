"""studies.robustness: corruption and calibration evaluation of a tiny trained run on real CIFAR-10."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from robustlab.corruptions.inputs import list_input_corruptions
from robustlab.experiment import Context, ExperimentConfig, run_experiment
from studies import robustness

TOL = 0.03  # severity-5 noise may not lower accuracy by more than chance on a weak model


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cifar10_dir, session_cache_dir):
    """One epoch of tiny_cnn on 300 images (100 validation images for temperature scaling)."""
    out = tmp_path_factory.mktemp("robust-train")
    cfg = ExperimentConfig(model="tiny_cnn", tag="tiny")
    cfg.data.train_size, cfg.data.val_size, cfg.data.test_size = 300, 100, 300
    cfg.train.epochs, cfg.train.batch_size, cfg.train.tta = 1, 64, "none"
    ctx = Context(data_dir=str(cifar10_dir), cache_dir=str(session_cache_dir), quiet=True)
    record = run_experiment(cfg, out, ctx)
    return out, record


def common(cifar10_dir, session_cache_dir, out: Path) -> list[str]:
    return ["--data-dir", str(cifar10_dir), "--cache-dir", str(session_cache_dir), "--out", str(out),
            "--figures-dir", str(out / "fig"), "--quiet"]


def test_checkpoint_evaluation_writes_table_long_csv_and_figures(trained, cifar10_dir, session_cache_dir, tmp_path):
    run_out, record = trained
    ckpt = run_out / "runs" / record["run_id"] / "last.pt"
    out = tmp_path / "rob"
    assert robustness.main(["--checkpoint", str(ckpt), "--test-size", "60", *common(cifar10_dir, session_cache_dir, out)]) == 0
    names = list_input_corruptions()

    rows = read_csv(out / "table.csv")
    assert len(rows) == 1 and rows[0]["model"] == "tiny"
    r = rows[0]
    for col in ("clean_acc", "mean_corruption_acc", "extra_corruption_acc", "clean_ece", "mean_corruption_ece",
                *[f"acc_{c}" for c in names]):
        assert 0.0 <= float(r[col]) <= 1.0, col
    assert float(r["mce"]) == pytest.approx(1.0)  # one model is its own baseline

    long = read_csv(out / "corruptions_long.csv")
    assert len(long) == len(names) * 5 == 19 * 5
    assert {(x["corruption"], int(x["severity"])) for x in long} == {(c, s) for c in names for s in range(1, 6)}
    assert all(0.0 <= float(x["acc"]) <= 1.0 for x in long)
    acc = {(x["corruption"], int(x["severity"])): float(x["acc"]) for x in long}
    assert acc[("gaussian_noise", 5)] <= float(r["clean_acc"]) + TOL
    for c in names:  # the table's per-corruption column is the mean over the five severities
        assert float(r[f"acc_{c}"]) == pytest.approx(sum(acc[(c, s)] for s in range(1, 6)) / 5, abs=1e-9)
    bench = {x["corruption"] for x in long} - {"speckle_noise", "gaussian_blur", "spatter", "saturate"}
    assert float(r["mean_corruption_acc"]) == pytest.approx(sum(acc[(c, s)] for c in bench for s in range(1, 6)) / 75)

    calib = read_csv(out / "calibration.csv")[0]
    assert float(calib["temperature"]) > 0 and 0.0 <= float(calib["test_ece_ts"]) <= 1.0
    assert float(calib["test_nll_ts"]) <= float(calib["test_nll"]) + 0.05  # fitted on 100 validation images
    for d in (out, out / "fig"):
        for name in ("table.md", "table.csv", "calibration.md", "heatmap_tiny.png", "reliability_tiny.png",
                     "reliability_tiny_ts.png", "accuracy_by_family.png", "ece_by_severity.png"):
            assert (d / name).stat().st_size > 0, name


def test_two_checkpoints_give_an_mce_relative_to_the_first(trained, cifar10_dir, session_cache_dir, tmp_path):
    run_out, record = trained
    run_dir = run_out / "runs" / record["run_id"]
    out = tmp_path / "rob2"
    argv = ["--checkpoint", str(run_dir / "last.pt"), "--checkpoint", str(run_dir / "best.pt"),
            "--corruptions", "gaussian_noise,contrast", *common(cifar10_dir, session_cache_dir, out)]
    assert robustness.main(argv) == 0
    rows = read_csv(out / "table.csv")
    # the evaluation runs on the run's own test split, so the clean accuracy is the record's
    assert float(rows[0]["clean_acc"]) == pytest.approx(record["metrics"]["test_acc"], abs=1e-6)
    assert [r["model"] for r in rows] == [f"tiny-{record['run_id'].rsplit('-', 1)[-1]}-{n}" for n in ("last", "best")]
    assert float(rows[0]["mce"]) == pytest.approx(1.0)
    # one epoch: best.pt holds the same weights as last.pt
    assert float(rows[1]["mce"]) == pytest.approx(1.0) and float(rows[1]["relative_mce"]) == pytest.approx(1.0)
    assert len(read_csv(out / "corruptions_long.csv")) == 2 * 2 * 5
    assert "N = 300 test images per run" in (out / "table.md").read_text() and "not the published mCE" in (out / "table.md").read_text()


@pytest.mark.parametrize("bad", ["missing", "no_record", "corrupt"])
def test_bad_checkpoint_exits_2_with_one_line(bad, trained, tmp_path, capsys):
    run_out, record = trained
    if bad == "missing":
        path = tmp_path / "nope" / "last.pt"
    elif bad == "no_record":
        path = tmp_path / "runs" / "x" / "last.pt"
        path.parent.mkdir(parents=True)
        path.write_bytes((run_out / "runs" / record["run_id"] / "last.pt").read_bytes())
    else:
        path = run_out / "runs" / record["run_id"] / "broken.pt"
        path.write_bytes(b"not a checkpoint")
    assert robustness.main(["--checkpoint", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and "checkpoint" in err[0]


def test_methods_train_ce_and_augmix_with_the_same_budget_and_compare_them(cifar10_dir, session_cache_dir, tmp_path):
    out = tmp_path / "methods"
    argv = ["--methods", "ce,augmix", "--models", "tiny_cnn", "--train-size", "200", "--val-size", "50", "--epochs", "1",
            "--batch-size", "50", "--test-size", "100", "--corruptions", "gaussian_noise,contrast,speckle_noise",
            *common(cifar10_dir, session_cache_dir, out)]
    assert robustness.main(argv) == 0
    rows = {r["model"]: r for r in read_csv(out / "table.csv")}
    assert set(rows) == {"ce", "augmix"}
    assert float(rows["ce"]["mce"]) == pytest.approx(1.0)  # the first method is the baseline
    long = read_csv(out / "corruptions_long.csv")
    err = {m: {c: sum(1 - float(x["acc"]) for x in long if x["model"] == m and x["corruption"] == c)
               for c in ("gaussian_noise", "contrast")} for m in rows}
    hand = sum(err["augmix"][c] / err["ce"][c] for c in err["ce"]) / 2  # speckle noise is an extra: not in the mCE
    assert float(rows["augmix"]["mce"]) == pytest.approx(hand, rel=1e-6)
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert sorted(r["config"]["strategy"]["name"] for r in records) == ["augmix", "ce"]
    assert len({json.dumps([r["config"]["train"], r["config"]["model"], r["config"]["data"]]) for r in records}) == 1

    # another study's results become rows without retraining
    out2 = tmp_path / "from"
    assert robustness.main(["--from-results", str(out), "--corruptions", "contrast", "--baseline", "augmix",
                            *common(cifar10_dir, session_cache_dir, out2)]) == 0
    rows2 = {r["model"]: r for r in read_csv(out2 / "table.csv")}
    assert set(rows2) == {"ce", "augmix"} and float(rows2["augmix"]["mce"]) == pytest.approx(1.0)
    assert float(rows2["ce"]["clean_acc"]) == pytest.approx(float(rows["ce"]["clean_acc"]))


def test_released_cifar_c_files_are_scored_on_the_runs_own_test_images(tiny_cifar10, tmp_path):
    """A run on a tiny CIFAR-10 (torchvision pickles: 40 test images in the original order) and a
    release of that test set: blocks identical to the clean images score exactly as clean, and the
    note gives N and says that a lone model's mCE is relative to itself."""
    from robustlab.engine import TrainConfig
    from robustlab.experiment import DataConfig

    cfg = ExperimentConfig(data=DataConfig(val_size=20), model="tiny_cnn", tag="tiny",
                           train=TrainConfig(epochs=1, batch_size=40, tta="none"))
    ctx = Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "cache"), device="cpu", quiet=True)
    record = run_experiment(cfg, tmp_path / "train", ctx)
    ckpt = str(tmp_path / "train" / "runs" / record["run_id"] / "last.pt")
    release = tmp_path / "CIFAR-10-C"
    release.mkdir()
    clean = tiny_cifar10.test_data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.save(release / "fog.npy", np.concatenate([clean] * 5))
    np.save(release / "labels.npy", np.tile(tiny_cifar10.test_labels, 5).astype(np.uint8))
    common_args = ["--data-dir", str(tiny_cifar10.root), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    out = tmp_path / "rel"
    argv = ["--checkpoint", ckpt, "--cifar-c", str(release), "--corruptions", "fog", "--test-size", "20",
            "--out", str(out), "--figures-dir", str(out / "fig"), *common_args]
    assert robustness.main(argv) == 0
    long = read_csv(out / "corruptions_long.csv")
    row = read_csv(out / "table.csv")[0]
    assert [int(x["severity"]) for x in long] == [1, 2, 3, 4, 5]
    assert [float(x["acc"]) for x in long] == [float(row["clean_acc"])] * 5  # the same 20 images, clean and "fogged"
    assert [float(x["ece"]) for x in long] == [float(row["clean_ece"])] * 5
    assert float(row["mce"]) == pytest.approx(1.0)
    table = (out / "table.md").read_text()
    assert "N = 20 test images per run (the run's test split, or a class-balanced subset of 20 when it is larger" in table
    assert f"each evaluated clean and under every corruption at severities 1-5 (the same images' rows of every " \
           f"severity block of the released files in {release})" in table
    assert "Only one model is evaluated, so mCE and relative mCE are relative to that model itself" in table
    assert "normalized by the baseline model" not in table
    # two models: the mCE is relative to the baseline, as the note says
    out2 = tmp_path / "rel2"
    best = ckpt.replace("last.pt", "best.pt")
    assert robustness.main(["--checkpoint", ckpt, "--checkpoint", best, "--cifar-c", str(release), "--corruptions",
                            "fog", "--out", str(out2), "--figures-dir", str(out2 / "fig"), *common_args]) == 0
    table = (out2 / "table.md").read_text()
    assert "N = 40 test images per run (the run's test split, or a class-balanced subset of 500 when it is larger" in table
    assert "normalized by the baseline model 'tiny-" in table and "Only one model" not in table
    # a corruption without a release file is refused before anything runs
    assert robustness.main([*argv[:4], "--corruptions", "fog,snow", "--out", str(tmp_path / "x"), *common_args]) == 2


def test_missing_release_file_exits_2_naming_it(tmp_path, capsys):
    assert robustness.main(["--cifar-c", str(tmp_path), "--corruptions", "fog", "--out", str(tmp_path / "o")]) == 2
    assert "fog.npy" in capsys.readouterr().err


def test_unknown_corruption_exits_2(tmp_path, capsys):
    assert robustness.main(["--corruptions", "rain", "--out", str(tmp_path)]) == 2
    assert "unknown corruption" in capsys.readouterr().err
