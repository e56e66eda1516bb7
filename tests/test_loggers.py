"""Per-run logs: metrics.csv and TensorBoard event files hold exactly the run's history, survive an
interrupted run without duplicate epochs, and --no-tensorboard leaves only the CSV."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab import experiment
from robustlab.experiment import Context, ExperimentConfig, StrategyConfig, run_experiment
from robustlab.loggers import CSVLogger, confusion_figure, final_figures, flatten_hparams

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402


@pytest.fixture(autouse=True)
def _tensorboard_on(monkeypatch):
    monkeypatch.setenv("ROBUSTLAB_TENSORBOARD", "1")  # the suite turns it off elsewhere (conftest.py)


def tiny_config(strategy: str = "ce", epochs: int = 2, **options) -> ExperimentConfig:
    cfg = ExperimentConfig(model="tiny_cnn", strategy=StrategyConfig(strategy, options), seed=1)
    cfg.data.val_size, cfg.data.noise_rate = 20, 0.2
    cfg.train.epochs, cfg.train.batch_size, cfg.train.tta = epochs, 20, "none"
    return cfg


def context(tiny, tmp_path, **kw) -> Context:
    return Context(data_dir=str(tiny.root), cache_dir=str(tmp_path / "cache"), device="cpu", quiet=True, **kw)


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def f32(value: float) -> float:
    return float(np.float32(value))  # event files store scalars as float32


def assert_csv_equals_history(path: Path, history: list[dict]) -> None:
    rows = csv_rows(path)
    assert len(rows) == len(history)
    for row, expected in zip(rows, history):
        assert set(row) == set(expected)
        for key, value in expected.items():
            assert float(row[key]) == value, key  # repr() floats read back bit for bit


def test_tensorboard_and_csv_hold_the_history_figures_and_hparams(tiny_cifar10, tmp_path):
    cfg = tiny_config("coteach")
    record = run_experiment(cfg, tmp_path / "out", context(tiny_cifar10, tmp_path))
    run_dir = tmp_path / "out" / "runs" / record["run_id"]
    history = record["history"]
    assert "label_precision" in history[0]  # a method-specific number reaches the logs too

    acc = events(run_dir)
    for key in history[0]:
        if key == "epoch":
            continue
        logged = acc.Scalars(key)
        assert [e.step for e in logged] == [row["epoch"] for row in history], key
        assert [e.value for e in logged] == [f32(row[key]) for row in history], key
    assert acc.Scalars("final/test_acc")[-1].value == f32(record["metrics"]["test_acc"])

    for tag in ("test/confusion_matrix", "test/reliability_diagram"):
        (image,) = acc.Images(tag)
        assert image.encoded_image_string.startswith(b"\x89PNG") and image.width > 100

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["strategy.name"].string_value == "coteach"
    assert hp["run_id"].string_value == record["run_id"]
    assert hp["data.noise_rate"].number_value == 0.2
    assert hp["train.optim.lr"].number_value == cfg.train.optim.lr
    assert hp["strategy_options.forget_rate"].number_value == record["strategy_options"]["forget_rate"]
    experiment_info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "final/test_acc" in {m.name.tag for m in experiment_info.metric_infos}

    assert_csv_equals_history(run_dir / "metrics.csv", history)


class Interrupt(Exception):
    pass


class InterruptAt:
    """Stops training right after the other loggers saw `epoch`, before its checkpoint is written."""
    wants_figures = False

    def __init__(self, epoch: int):
        self.epoch = epoch

    def log_epoch(self, row):
        if row["epoch"] == self.epoch:
            raise Interrupt

    def log_final(self, metrics, figures, hparams):
        pass

    def close(self):
        pass


def test_resumed_run_logs_each_epoch_once(tiny_cifar10, tmp_path, monkeypatch):
    cfg, out = tiny_config(epochs=3), tmp_path / "out"
    make = experiment.run_loggers

    def interrupted(run_dir, tensorboard=True, **kw):
        group = make(run_dir, tensorboard, **kw)
        group.loggers.append(InterruptAt(2))
        return group

    monkeypatch.setattr(experiment, "run_loggers", interrupted)
    with pytest.raises(Interrupt):
        run_experiment(cfg, out, context(tiny_cifar10, tmp_path))
    run_dir = out / "runs" / cfg.run_id
    assert [int(r["epoch"]) for r in csv_rows(run_dir / "metrics.csv")] == [1, 2]
    assert torch.load(run_dir / "last.pt", weights_only=False)["epoch"] == 0  # epoch 2 is trained again

    monkeypatch.setattr(experiment, "run_loggers", make)
    record = run_experiment(cfg, out, context(tiny_cifar10, tmp_path, resume=True))
    assert_csv_equals_history(run_dir / "metrics.csv", record["history"])
    logged = events(run_dir).Scalars("train_loss")
    assert [e.step for e in logged] == [1, 2, 3]
    assert [e.value for e in logged] == [f32(r["train_loss"]) for r in record["history"]]


@pytest.mark.parametrize("how", ["context", "environment"])
def test_no_tensorboard_writes_only_the_csv(tiny_cifar10, tmp_path, monkeypatch, how):
    if how == "environment":
        monkeypatch.setenv("ROBUSTLAB_TENSORBOARD", "0")
    cfg = tiny_config(epochs=1)
    record = run_experiment(cfg, tmp_path / "out", context(tiny_cifar10, tmp_path, tensorboard=how == "environment"))
    assert record["run_id"] == tiny_config(epochs=1).run_id
    assert not list((tmp_path / "out").rglob("events.out.tfevents*"))
    assert_csv_equals_history(tmp_path / "out" / "runs" / cfg.run_id / "metrics.csv", record["history"])


def test_csv_logger_replaces_reran_epochs_and_widens_for_new_columns(tmp_path):
    path = tmp_path / "metrics.csv"
    first = CSVLogger(path)
    for epoch in (1, 2, 3):
        first.log_epoch({"epoch": epoch, "train_loss": 1.0 / epoch})
    again = CSVLogger(path)  # a new session, resumed after epoch 1
    again.log_epoch({"epoch": 2, "train_loss": 0.25})
    again.log_epoch({"epoch": 3, "train_loss": 0.125, "label_precision": 0.9})
    rows = csv_rows(path)
    assert [(r["epoch"], r["train_loss"], r["label_precision"]) for r in rows] == [
        ("1", "1.0", ""), ("2", "0.25", ""), ("3", "0.125", "0.9")]


def test_flatten_hparams_gives_dotted_tensorboard_values():
    flat = flatten_hparams({"train": {"optim": {"lr": 0.1, "milestones": [50, 75], "nesterov": True}},
                            "data": {"train_size": None}, "model_kwargs": {}, "tag": "x"})
    assert flat == {"train.optim.lr": 0.1, "train.optim.milestones": "[50, 75]", "train.optim.nesterov": True,
                    "data.train_size": "None", "tag": "x"}


def test_final_figures_draw_the_confusion_counts_and_reliability_bins():
    import matplotlib.pyplot as plt

    from robustlab.calibration import reliability_bins

    confusion = [[3, 1, 0], [0, 2, 2], [1, 0, 5]]
    fig = confusion_figure(confusion)
    try:
        assert [t.get_text() for t in fig.axes[0].texts] == [str(v) for row in confusion for v in row]
    finally:
        plt.close(fig)

    logits = torch.tensor([[4.0, 0, 0], [0, 1, 0], [0, 0, 2], [1, 0, 0], [0, 3, 0], [2, 2, 0]])
    labels = torch.tensor([0, 1, 1, 2, 1, 0])
    figures = final_figures(logits, labels, confusion)
    try:
        bars = figures["test/reliability_diagram"].axes[0].containers[0]
        bins = reliability_bins(logits, labels, from_logits=True)
        filled = bins.counts > 0
        assert np.allclose([b.get_height() for b in bars], bins.accuracy[filled])
        assert len(figures["test/confusion_matrix"].axes[0].texts) == 9
    finally:
        for figure in figures.values():
            plt.close(figure)


def test_tensorboard_logdir_of_a_study_shows_every_arm(tiny_cifar10, tmp_path):
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    arms = [tiny_config(epochs=2), tiny_config(epochs=2)]
    arms[0].tag, arms[1].tag, arms[1].data.noise_rate = "noisy_ce", "clean_ce", 0.0
    records = [run_experiment(cfg, tmp_path / "study", context(tiny_cifar10, tmp_path)) for cfg in arms]

    mux = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "study"))  # what `tensorboard --logdir` loads
    mux.Reload()
    assert set(mux.Runs()) == {f"runs/{r['run_id']}" for r in records}
    for record in records:
        logged = mux.Tensors(f"runs/{record['run_id']}", "val_acc")
        assert [e.step for e in logged] == [1, 2]
        assert [float(e.tensor_proto.float_val[0]) for e in logged] == [f32(r["val_acc"]) for r in record["history"]]
