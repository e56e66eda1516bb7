"""End-to-end: studies.noisy_labels on real CIFAR-10 slices with a tiny budget."""
import csv

import pytest
import torch

from studies import noisy_labels


def _run(cifar10_dir, session_cache_dir, out, *extra):
    argv = ["--noise", "0.4", "--coteach", "--smooth", "0.1", "--epochs", "2", "--train-size", "400",
            "--val-size", "100", "--test-size", "400", "--data-dir", str(cifar10_dir), "--cache-dir",
            str(session_cache_dir), "--out", str(out), "--figures-dir", str(out / "fig"), "--quiet", *extra]
    return noisy_labels.main(argv)


def test_noisy_labels_study_writes_tables_and_figures(cifar10, cifar10_dir, session_cache_dir, tmp_path):
    assert _run(cifar10_dir, session_cache_dir, tmp_path) == 0
    for d in (tmp_path, tmp_path / "fig"):
        for name in ("table.md", "table.csv", "test_acc.png", "label_precision.png", "remember_rate.png"):
            assert (d / name).stat().st_size > 0, name
    rows = {r["arm"]: r for r in csv.DictReader(open(tmp_path / "table.csv"))}
    assert set(rows) == {"clean_ce", "noisy_ce", "noisy_ls", "noisy_coteach"}
    assert float(rows["clean_ce"]["realized_noise"]) == 0.0
    # 40% symmetric noise on 400 labels: realized rate within a few binomial std of 0.4.
    assert abs(float(rows["noisy_ce"]["realized_noise"]) - 0.4) < 0.08
    # Co-Teaching keeps mostly clean labels: precision above the clean fraction is not guaranteed
    # after 2 epochs, but it is a fraction, and only Co-Teaching reports it.
    assert 0.0 < float(rows["noisy_coteach"]["label_precision"]) <= 1.0
    assert rows["noisy_ce"]["label_precision"] == ""
    for r in rows.values():
        assert 0.0 <= float(r["test_acc_last"]) <= 1.0
        assert float(r["test_acc_best"]) >= float(r["test_acc_last"]) - 1e-9
    # noisy arms share the same corrupted labels: same realized rate
    assert rows["noisy_ce"]["realized_noise"] == rows["noisy_coteach"]["realized_noise"]


def test_shards_split_the_grid_and_collect_builds_the_table(cifar10, cifar10_dir, session_cache_dir, tmp_path, monkeypatch):
    assert _run(cifar10_dir, session_cache_dir, tmp_path, "--shard", "0/2") == 0
    assert not (tmp_path / "table.csv").exists()
    first = {p.name for p in (tmp_path / "records").glob("*.json")}
    assert _run(cifar10_dir, session_cache_dir, tmp_path, "--shard", "1/2") == 0
    both = {p.name for p in (tmp_path / "records").glob("*.json")}
    assert len(first) == 2 and len(both) == 4

    def no_training(*a, **k):
        raise AssertionError("collect must not train")

    monkeypatch.setattr("robustlab.experiment.fit", no_training)
    assert _run(cifar10_dir, session_cache_dir, tmp_path, "--collect") == 0
    assert len(list(csv.DictReader(open(tmp_path / "table.csv")))) == 4


@pytest.mark.parametrize("argv", [["--noise", "0"], ["--noise", "1.0"], ["--noise", "0.3", "--model", "nope"],
                                  ["--noise", "0.3", "--noise-type", "bogus"], ["--noise", "0.3", "--shard", "2/2"]])
def test_bad_arguments_exit_2(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        code = noisy_labels.main(argv + ["--out", str(tmp_path)])
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]


def test_validation_is_clean_unless_noisy_val(cifar10, cifar10_dir, session_cache_dir):
    from robustlab.experiment import Context, DataConfig, prepare_data

    ctx = Context(data_dir=str(cifar10_dir), cache_dir=str(session_cache_dir))
    cfg = DataConfig(train_size=2000, val_size=1000, test_size=500, noise_rate=0.4)
    clean_val = prepare_data(cfg, 0, ctx).splits.val.labels
    data = prepare_data(cfg, 0, ctx)
    assert (data.splits.train.labels != data.clean_train_labels).float().mean().item() > 0.3
    assert torch.equal(data.splits.val.labels, clean_val)
    cfg.noisy_val = True
    noisy_val = prepare_data(cfg, 0, ctx).splits.val.labels
    assert 0.3 < (noisy_val != clean_val).float().mean().item() < 0.5
    assert torch.equal(prepare_data(cfg, 0, ctx).splits.test.labels, data.splits.test.labels)  # test stays clean
