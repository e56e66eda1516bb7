"""`python -m robustlab.embed --split train` scores the kNN and the linear probe on held-out training rows."""
from __future__ import annotations

import json

import pytest
import torch

import robustlab.embeddings as embeddings
from robustlab import embed
from robustlab.experiment import Context, ExperimentConfig, run_experiment


def test_probe_rows_split_the_training_set_in_two_disjoint_parts():
    bank, scored = embed.probe_rows("train", 100, 100, max_train=30, seed=0)
    assert len(bank) == 30 and len(scored) == 70
    assert sorted(torch.cat([bank, scored]).tolist()) == list(range(100))
    bank, scored = embed.probe_rows("train", 100, 100, max_train=5000, seed=0)
    assert len(bank) == 50 and len(scored) == 50 and not set(bank.tolist()) & set(scored.tolist())
    bank, scored = embed.probe_rows("test", 100, 40, max_train=30, seed=0)  # another split: scored whole
    assert len(bank) == 30 and scored.tolist() == list(range(40))


@pytest.mark.parametrize("split", ["train", "test"])
def test_embed_never_scores_a_point_of_its_own_memory_bank(tiny_cifar10, tmp_path, monkeypatch, split):
    cfg = ExperimentConfig(model="tiny_cnn", seed=0)
    cfg.data.val_size, cfg.train.epochs, cfg.train.batch_size, cfg.train.tta = 0, 1, 50, "none"
    results = tmp_path / "results"
    record = run_experiment(cfg, results, Context(data_dir=str(tiny_cifar10.root), device="cpu", quiet=True))
    seen = {}

    def capture(bank_feats, bank_labels, feats, labels, **kwargs):
        seen.update(bank=bank_feats, scored=feats)
        return {"knn_acc": 0.0}

    monkeypatch.setattr(embeddings, "embedding_report", capture)
    monkeypatch.setattr(embeddings, "plot_embedding", lambda *a, **k: embeddings.PlotSummary(tmp_path / "x.png", 0, 0))
    out = tmp_path / "emb"
    assert embed.main(["--checkpoint", record["checkpoint"], "--out", str(out), "--split", split, "--method", "pca",
                       "--data-dir", str(tiny_cifar10.root), "--device", "cpu"]) == 0
    bank = {tuple(row) for row in seen["bank"].tolist()}
    scored = {tuple(row) for row in seen["scored"].tolist()}
    # random images: every feature row is distinct, so a shared row is a shared image
    assert len(bank) == len(seen["bank"]) and not bank & scored
    summary = json.loads((out / f"embedding_{split}.json").read_text())
    n_train, n_test = len(tiny_cifar10.train_labels), len(tiny_cifar10.test_labels)
    assert (summary["memory_bank"]["size"], summary["num_points"]) == ((50, 50) if split == "train" else (n_train, n_test))
