"""SOP, GLS, peer loss and CORES^2 end to end in the noisy-label study on real CIFAR-10 slices with a
tiny budget (2 epochs), each with its quick preset, and SOP+ (two views) through run_experiment."""
from __future__ import annotations

import csv
import json
import math

import pytest

from robustlab.experiment import Context, ExperimentConfig, StrategyConfig, run_experiment
from robustlab.schedules import OptimConfig
from robustlab.strategies.gls import GLS
from studies import noisy_labels

METHODS = ("sop", "gls", "peer", "cores")


@pytest.fixture(scope="module")
def study(cifar10, cifar10_dir, session_cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("noisy_methods")
    argv = ["--noise", "0.5", "--methods", ",".join(METHODS), "--epochs", "2", "--batch-size", "100", "--train-size", "300",
            "--val-size", "100", "--test-size", "200", "--data-dir", str(cifar10_dir),
            "--cache-dir", str(session_cache_dir), "--out", str(out), "--figures-dir", str(out / "fig"), "--quiet"]
    assert noisy_labels.main(argv) == 0
    records = {json.loads(p.read_text())["config"]["tag"]: json.loads(p.read_text())
               for p in (out / "records").glob("*.json")}
    rows = {r["arm"]: r for r in csv.DictReader(open(out / "table.csv"))}
    return records, rows


def test_every_method_trains_on_the_same_noisy_data_with_its_quick_preset(study):
    records, rows = study
    assert set(rows) == {"clean_ce", *(f"noisy_{m}" for m in METHODS)}
    noise = {rows[f"noisy_{m}"]["realized_noise"] for m in METHODS}
    assert len(noise) == 1 and 0.35 < float(noise.pop()) < 0.6
    for m in METHODS:
        rec = records[f"noisy_{m}"]
        assert len(rec["history"]) == 2 and all(math.isfinite(h["train_loss"]) for h in rec["history"])
        assert 0.0 <= rec["metrics"]["test_acc"] <= 1.0 and float(rows[f"noisy_{m}"]["wall_seconds"]) > 0
    assert records["noisy_sop"]["strategy_options"] == {"lr_u": 10.0, "lr_v": 10.0, "init_std": 1e-8, "plus": False,
                                                       "ratio_consistency": 0.0, "ratio_balance": 0.0, "cutout": 16}
    assert records["noisy_gls"]["strategy_options"]["warmup_share"] == GLS.presets["quick"]["warmup_share"]
    # 2 epochs: round(2 * 120 / 220) = 1 warm-up epoch of cross-entropy, then GLS at -0.4
    assert [h["smooth_rate_now"] for h in records["noisy_gls"]["history"]] == [0.0, -0.4]
    # 2 epochs stand for official epochs 0 and 150 of the 300-epoch alpha schedule
    assert [h["peer_alpha"] for h in records["noisy_peer"]["history"]] == [0.0, pytest.approx(5 + 5 * 50 / 99)]


def test_cores_reports_its_sieve_selection(study):
    records, rows = study
    hist = records["noisy_cores"]["history"]
    # 2 epochs stand for official epochs 0 and 50: beta 0 then 2, the sieve on in the second
    assert [h["cores_beta"] for h in hist] == [0.0, pytest.approx(2.0)]
    first, last = hist
    clean_share = 1 - records["noisy_cores"]["noise"]["realized_rate"]
    assert first["label_recall"] == pytest.approx(1.0)  # everything is kept before the sieve starts
    assert first["label_precision"] == pytest.approx(clean_share, abs=1e-6)
    assert 0.0 <= last["label_precision"] <= 1.0 and last["label_recall"] <= 1.0
    assert float(rows["noisy_cores"]["label_precision"]) == pytest.approx(last["label_precision"])


def test_sop_plus_runs_with_two_views_on_real_data(cifar10, cifar10_dir, session_cache_dir, tmp_path):
    cfg = ExperimentConfig()
    cfg.model, cfg.seed, cfg.tag = "small_cnn", 0, "sop_plus"
    cfg.data.train_size, cfg.data.val_size, cfg.data.test_size = 200, 50, 100
    cfg.data.noise_rate = 0.5
    cfg.train.epochs, cfg.train.batch_size, cfg.train.tta = 1, 64, "none"
    cfg.train.optim = OptimConfig(optimizer="adam", lr=1e-3, weight_decay=0.0, schedule="constant")
    cfg.strategy = StrategyConfig("sop", {"plus": True})
    record = run_experiment(cfg, tmp_path, Context(data_dir=str(cifar10_dir), cache_dir=str(session_cache_dir),
                                                   device="cpu", quiet=True))
    options = record["strategy_options"]
    assert options["plus"] is True and (options["ratio_consistency"], options["ratio_balance"]) == (0.9, 0.1)
    assert math.isfinite(record["history"][0]["train_loss"]) and 0.0 <= record["metrics"]["test_acc"] <= 1.0
