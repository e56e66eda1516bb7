"""Per-sample training dynamics: loss and margin by hand, float16 rows written atomically after
every epoch, resume continuing the file, AUM and AUROC by hand, AUM finding the flipped labels of
a toy, and the memorization figure's panels."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from noisy_toy import CLASSES, NORM, flip_labels, toy_images
from robustlab.data import DeviceLoader
from robustlab.dynamics import (DYNAMICS_FILE, DynamicsRecorder, area_under_margin, aum_detector_auroc, auroc,
                                load_dynamics, loss_and_margin)
from robustlab.dynamics_plots import has_both_groups, memorization_figure
from robustlab.engine import TrainConfig, fit
from robustlab.errors import UsageError
from robustlab.fileio import atomic_write
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import create_strategy

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0], [1.0, 1.0, 0.0], [-4.0, 2.0, 1.5]])
LABELS = torch.tensor([0, 1, 0, 2])


def test_loss_and_margin_by_hand():
    loss, margin = loss_and_margin(LOGITS, LABELS)
    assert margin.tolist() == [1.5, -2.0, 0.0, -0.5]  # assigned logit minus the largest other one (a tie: 0)
    for i, (z, y) in enumerate(zip(LOGITS.tolist(), LABELS.tolist())):
        assert loss[i].item() == pytest.approx(-z[y] + math.log(sum(math.exp(v) for v in z)), rel=1e-6)


def test_recorder_rows_are_float16_and_clipped(tmp_path):
    rec = DynamicsRecorder(tmp_path / DYNAMICS_FILE, LABELS, clean_labels=torch.tensor([0, 1, 2, 2]))
    rec.add_epoch(LOGITS)
    rec.add_epoch(LOGITS * 1e5)  # margins beyond float16's range are clipped to +-65504, never inf
    saved = load_dynamics(tmp_path / DYNAMICS_FILE)
    assert saved["loss"].dtype == saved["margin"].dtype == np.float16
    assert saved["loss"].shape == saved["margin"].shape == (2, 4)
    assert saved["labels"].tolist() == LABELS.tolist() and saved["clean_labels"].tolist() == [0, 1, 2, 2]
    assert saved["labels"].dtype == saved["clean_labels"].dtype == np.int64
    np.testing.assert_array_equal(saved["margin"][0], np.float16([1.5, -2.0, 0.0, -0.5]))
    assert saved["margin"][1].tolist() == [65504.0, -65504.0, 0.0, float(np.float16(-50000.0))]
    assert np.isfinite(saved["loss"]).all() and saved["loss"][1, 1] == 65504.0
    np.testing.assert_allclose(saved["loss"][0], loss_and_margin(LOGITS, LABELS)[0].numpy(), rtol=1e-3)
    with pytest.raises(UsageError, match="got logits for 3 samples, the training set has 4"):
        rec.add_epoch(LOGITS[:3])
    with pytest.raises(UsageError, match=r"clean labels \(2\) and training labels \(4\) differ in length"):
        DynamicsRecorder(None, LABELS, clean_labels=torch.tensor([0, 1]))


def test_rows_are_preallocated_for_the_planned_epochs_and_grow_beyond():
    rec = DynamicsRecorder(None, LABELS, capacity=3)
    assert rec._loss.shape == (3, 4) and rec.epochs == 0 and rec.loss.shape == (0, 4)
    for _ in range(4):
        rec.add_epoch(LOGITS)
    assert rec._loss.shape == (6, 4) and rec.loss.shape == rec.margin.shape == (4, 4)
    assert np.isfinite(rec.loss).all() and np.isnan(rec._margin[4:]).all()
    assert DynamicsRecorder(None, LABELS)._loss.shape == (1, 4)
    with pytest.raises(UsageError, match="capacity must be >= 1, got 0"):
        DynamicsRecorder(None, LABELS, capacity=0)


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / DYNAMICS_FILE
    rec = DynamicsRecorder(path, LABELS)
    rec.add_epoch(LOGITS)

    def broken(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError):
        rec.add_epoch(LOGITS)
    assert load_dynamics(path)["loss"].shape == (1, 4)
    assert [p.name for p in tmp_path.iterdir()] == [DYNAMICS_FILE]  # no temp file left behind


def test_resume_keeps_checkpointed_rows_and_marks_missing_ones(tmp_path):
    path = tmp_path / DYNAMICS_FILE
    rec = DynamicsRecorder(path, LABELS)
    for scale in (1.0, 2.0, 3.0):
        rec.add_epoch(LOGITS * scale)
    again = DynamicsRecorder(path, LABELS, resume_epochs=2)  # epoch 3's checkpoint was never written
    assert again.epochs == 2
    np.testing.assert_array_equal(again.margin, load_dynamics(path)["margin"][:2])
    gap = DynamicsRecorder(path, LABELS, resume_epochs=4)  # a row never written: NaN
    assert gap.epochs == 4 and np.isnan(gap.loss[3]).all() and np.isfinite(gap.loss[:3]).all()
    fresh = DynamicsRecorder(tmp_path / "none.npz", LABELS, resume_epochs=2)
    assert fresh.loss.shape == (2, 4) and np.isnan(fresh.margin).all()
    with pytest.raises(UsageError, match="has 4 samples per epoch, this run trains on 3; delete it or use another --out"):
        DynamicsRecorder(path, LABELS[:3], resume_epochs=1)


def test_load_rejects_foreign_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="not a readable dynamics file"):
        load_dynamics(tmp_path / "junk.npz")
    atomic_write(tmp_path / "other.npz", lambda f: np.savez(f, loss=np.zeros((2, 3))))
    with pytest.raises(UsageError, match="is not a dynamics file"):
        load_dynamics(tmp_path / "other.npz")
    atomic_write(tmp_path / "shape.npz", lambda f: np.savez(f, loss=np.zeros((2, 3)), margin=np.zeros((2, 4)),
                                                             labels=np.zeros(3)))
    with pytest.raises(UsageError, match="is not a dynamics file"):
        load_dynamics(tmp_path / "shape.npz")
    atomic_write(tmp_path / "flat.npz", lambda f: np.savez(f, loss=np.zeros(3), margin=np.zeros(3), labels=np.zeros(3)))
    with pytest.raises(UsageError, match="is not a dynamics file"):
        load_dynamics(tmp_path / "flat.npz")


def test_area_under_margin_by_hand():
    margin = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, 0.5], [np.nan, 4.0, -1.0]], dtype=np.float16)
    np.testing.assert_allclose(area_under_margin(margin), [2.0, 2 / 3, 0.0])  # NaN epochs are skipped
    np.testing.assert_allclose(area_under_margin(margin, epochs=2), [2.0, -1.0, 0.5])
    np.testing.assert_allclose(area_under_margin(margin, epochs=1), [1.0, -2.0, 0.5])
    np.testing.assert_allclose(area_under_margin(margin, epochs=3), area_under_margin(margin))
    assert area_under_margin(np.full((2, 1), np.nan)).tolist() == [0.0]
    assert area_under_margin(np.full((3, 1), 60000, np.float16)).tolist() == [60000.0]  # summed in float64, no overflow
    for bad in (0, 4):
        with pytest.raises(UsageError, match=r"AUM epochs must be in \[1, 3\]"):
            area_under_margin(margin, epochs=bad)
    with pytest.raises(UsageError, match="must be"):
        area_under_margin(np.zeros(3))


def test_auroc_by_hand_and_against_scikit_learn():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auroc(np.array([1.0, 1.0, 2.0]), np.array([1, 0, 0])) == 0.25  # a tie counts one half
    assert auroc(np.array([3.0, 1.0, 2.0]), np.array([1, 0, 0])) == 1.0
    assert auroc(np.array([0.0, 1.0, 2.0]), np.array([1, 0, 0])) == 0.0
    assert auroc(np.array([2.0, 1.0]), np.array([1, 0])) == 1.0  # one positive, one negative
    assert auroc(np.array([3, 3, 1, 3]), np.array([0, 1, 0, 1])) == 0.75  # integer scores, ties
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores, positive = rng.integers(0, 6, 200).astype(float), rng.random(200) < 0.3
    assert auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)
    with pytest.raises(UsageError, match="^AUROC needs both positives and negatives$"):
        auroc(np.array([1.0, 2.0]), np.array([1, 1]))
    with pytest.raises(UsageError, match="both positives and negatives"):
        auroc(np.array([1.0, 2.0]), np.array([0, 0]))
    with pytest.raises(UsageError, match="two equal 1-D arrays"):
        auroc(np.array([1.0, 2.0]), np.array([1, 0, 0]))


def toy_run(run_dir=None, epochs=4, resume=None, train=160):
    """CE on a toy with 30% flipped labels, recording dynamics; returns (FitResult, clean, noisy)."""
    torch.manual_seed(0)
    images, clean = toy_images(train + 64, seed=0)
    noisy = flip_labels(clean[:train], 0.3, seed=1)
    strategy = create_strategy("ce", create_model("tiny_cnn", num_classes=CLASSES), num_classes=CLASSES)
    cfg = TrainConfig(epochs=epochs, batch_size=32, tta="none", precision="fp32", record_dynamics=True,
                      optim=OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant"))
    result = fit(strategy, DeviceLoader(images[:train], noisy, 32, NORM, seed=0), cfg,
                 test_loader=DeviceLoader(images[train:], clean[train:], 64, NORM, shuffle=False), quiet=True,
                 num_classes=CLASSES, run_dir=run_dir, resume=resume, clean_train_labels=clean[:train],
                 train_pass_loader=DeviceLoader(images[:train], noisy, 64, NORM, shuffle=False))
    return result, clean[:train], noisy, strategy


def test_engine_records_every_epoch_and_aum_finds_the_flipped_labels(tmp_path):
    result, clean, noisy, strategy = toy_run(tmp_path, epochs=4)
    saved = load_dynamics(tmp_path / DYNAMICS_FILE)
    assert saved["loss"].shape == (4, 160) and saved["loss"].dtype == np.float16
    for key, value in result.dynamics.items():
        np.testing.assert_array_equal(saved[key], value)
    assert saved["labels"].tolist() == noisy.tolist() and saved["clean_labels"].tolist() == clean.tolist()
    # the last row is the final network's loss and margin on the unaugmented training images
    strategy.eval()
    with torch.no_grad():
        loss, margin = loss_and_margin(strategy.predict(NORM(toy_images(224, seed=0)[0][:160])), noisy)
    np.testing.assert_allclose(saved["loss"][-1], loss.numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(saved["margin"][-1], margin.numpy(), rtol=2e-3, atol=2e-3)
    wrong = noisy != clean
    assert saved["loss"][0][wrong.numpy()].mean() > saved["loss"][0][~wrong.numpy()].mean() + 0.5
    assert aum_detector_auroc(saved) > 0.9
    first = auroc(-saved["margin"][0].astype(np.float64), wrong.numpy())
    assert aum_detector_auroc(saved, epochs=1) == first != aum_detector_auroc(saved)
    with pytest.raises(UsageError, match="^the dynamics file has no clean labels: mislabeled samples are unknown$"):
        aum_detector_auroc({k: v for k, v in saved.items() if k != "clean_labels"})


def test_an_interrupted_run_keeps_finished_epochs_and_resume_continues_them(tmp_path, monkeypatch):
    whole, *_ = toy_run(tmp_path / "whole", epochs=3)
    import robustlab.engine as engine

    real_save = engine.save_checkpoint

    def crash_at_epoch_2(path, state):
        if path.name == "last.pt" and state["epoch"] == 1:
            raise KeyboardInterrupt  # killed after epoch 2's dynamics row, before its checkpoint
        real_save(path, state)

    monkeypatch.setattr(engine, "save_checkpoint", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        toy_run(tmp_path / "cut", epochs=3)
    assert load_dynamics(tmp_path / "cut" / DYNAMICS_FILE)["loss"].shape == (2, 160)
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    resumed, *_ = toy_run(tmp_path / "cut", epochs=3, resume=tmp_path / "cut" / "last.pt")
    saved = load_dynamics(tmp_path / "cut" / DYNAMICS_FILE)
    np.testing.assert_array_equal(saved["loss"], whole.dynamics["loss"])
    np.testing.assert_array_equal(saved["margin"], whole.dynamics["margin"])


def test_record_dynamics_needs_the_training_set_pass():
    images, labels = toy_images(32, seed=0)
    strategy = create_strategy("ce", create_model("tiny_cnn", num_classes=CLASSES), num_classes=CLASSES)
    cfg = TrainConfig(epochs=1, batch_size=32, tta="none", precision="fp32", record_dynamics=True)
    with pytest.raises(UsageError) as err:
        fit(strategy, DeviceLoader(images, labels, 32, NORM), cfg, quiet=True, num_classes=CLASSES)
    assert str(err.value) == ("record_dynamics needs a pass over the training set: give fit() a train_pass_loader "
                              "(unaugmented, dataset order)")
    strategy.classifies = False
    with pytest.raises(UsageError) as err:
        fit(strategy, DeviceLoader(images, labels, 32, NORM), cfg, quiet=True, num_classes=CLASSES)
    assert str(err.value) == "record_dynamics needs a classifier; strategy 'ce' does not classify"


def fake_dynamics(epochs=5, n=60, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    clean = labels.copy()
    clean[:15] = (labels[:15] + 1) % 3
    margin = rng.normal(1.0, 1.0, (epochs, n)).astype(np.float16)
    margin[:, :15] -= 2
    loss = np.abs(rng.normal(1.0, 0.5, (epochs, n))).astype(np.float16)
    return {"loss": loss, "margin": margin, "labels": labels, "clean_labels": clean}


def test_memorization_figure_has_three_panels_per_run(tmp_path):
    import matplotlib.pyplot as plt

    fig = memorization_figure([("noisy_ce", fake_dynamics()), ("noisy_forward_t", fake_dynamics(seed=1))], epoch=2)
    try:
        assert len(fig.axes) == 6
        assert [len(ax.get_lines()) for ax in fig.axes[:2]] == [2, 3]  # two groups (+ zero line on the margin)
        assert fig.axes[2].get_title() == "loss at epoch 2" and len(fig.axes[2].patches) == 80
        assert "AUM detector AUROC" in fig.axes[1].get_title()
        np.testing.assert_allclose(fig.axes[0].get_lines()[1].get_ydata(),
                                   fake_dynamics()["loss"][:, :15].astype(np.float32).mean(1), rtol=1e-6)
        fig.savefig(tmp_path / "m.png")
        assert (tmp_path / "m.png").stat().st_size > 0
    finally:
        plt.close(fig)
    clean_only = {**fake_dynamics(), "clean_labels": fake_dynamics()["labels"]}
    assert not has_both_groups(clean_only) and not has_both_groups({"labels": np.zeros(3)})
    with pytest.raises(UsageError, match="both clean and mislabeled"):
        memorization_figure([("x", clean_only)])
    with pytest.raises(UsageError, match=r"histogram epoch must be in \[1, 5\]"):
        memorization_figure([("x", fake_dynamics())], epoch=6)


def test_the_study_writes_the_memorization_figure(tmp_path):
    """studies.noisy_labels' figure step: one row per noisy arm with dynamics, in both folders."""
    from types import SimpleNamespace

    import matplotlib.image

    from robustlab.fileio import atomic_write as write
    from studies.noisy_labels_plots import plot_memorization

    runs = []
    for tag, noise, seed in (("clean_ce", None, 0), ("noisy_ce", {"realized_rate": 0.25}, 0),
                             ("noisy_ce", {"realized_rate": 0.25}, 1), ("noisy_elr", {"realized_rate": 0.25}, 0)):
        run_id = f"{tag}-s{seed}"
        d = fake_dynamics(seed=seed)
        if tag == "clean_ce":
            d["clean_labels"] = d["labels"]
        write(tmp_path / "res" / "runs" / run_id / DYNAMICS_FILE, lambda f, d=d: np.savez(f, **d))
        runs.append(SimpleNamespace(record={"run_id": run_id, "noise": noise},
                                    config=SimpleNamespace(tag=tag, seed=seed)))
    runs.append(SimpleNamespace(record={"run_id": "noisy_gce-s0", "noise": {"realized_rate": 0.25}},
                                config=SimpleNamespace(tag="noisy_gce", seed=0)))  # no dynamics recorded
    res = SimpleNamespace(runs=runs, dirs=[tmp_path / "res", tmp_path / "fig"])
    paths = plot_memorization(res, epoch=9)  # beyond the recorded epochs: the last
    assert paths == [tmp_path / "res" / "memorization.png", tmp_path / "fig" / "memorization.png"]
    height, width = matplotlib.image.imread(paths[1]).shape[:2]
    assert height == pytest.approx(2 * 3.3 * 120, abs=2) and width == pytest.approx(13 * 120, abs=2)  # 2 rows
    assert plot_memorization(SimpleNamespace(runs=runs[:1], dirs=res.dirs)) == []


def test_train_cli_records_dynamics_and_the_aum_auroc(tiny_cifar10, tmp_path):
    """`robustlab.train --record-dynamics`: dynamics.npz in the run folder, its summary in the record."""
    import json

    from robustlab.train import main

    out = tmp_path / "out"
    assert main(["--record-dynamics", "--noise-rate", "0.4", "--epochs", "2", "--val-size", "0", "--model", "tiny_cnn",
                 "--batch-size", "50", "--tta", "none", "--data-dir", str(tiny_cifar10.root), "--cache-dir",
                 str(tmp_path / "cache"), "--device", "cpu", "--quiet", "--no-tensorboard", "--out", str(out)]) == 0
    record = json.loads(next((out / "records").glob("*.json")).read_text())
    assert record["config"]["train"]["record_dynamics"] is True
    saved = load_dynamics(record["dynamics"]["file"])
    assert saved["loss"].shape == (2, 100) and saved["loss"].dtype == np.float16 and record["dynamics"]["epochs"] == 2
    wrong = saved["labels"] != saved["clean_labels"]
    assert wrong.mean() == pytest.approx(record["noise"]["realized_rate"])
    assert record["dynamics"]["aum_auroc"] == pytest.approx(aum_detector_auroc(saved))


def test_clean_labels_give_dynamics_without_a_detector_score(tiny_cifar10, tmp_path):
    """No mislabeled sample: AUM has nothing to detect, so the record holds no aum_auroc."""
    import json

    from robustlab.train import main

    out = tmp_path / "out"
    assert main(["--record-dynamics", "--epochs", "1", "--val-size", "0", "--model", "tiny_cnn", "--batch-size", "50",
                 "--tta", "none", "--data-dir", str(tiny_cifar10.root), "--cache-dir", str(tmp_path / "cache"),
                 "--device", "cpu", "--quiet", "--no-tensorboard", "--out", str(out)]) == 0
    record = json.loads(next((out / "records").glob("*.json")).read_text())
    assert record["dynamics"] == {"file": str(out / "runs" / record["run_id"] / "dynamics.npz"), "epochs": 1}
