"""studies.noisy_labels on real CIFAR-10 slices with a tiny budget: the grid is trained once (in two
shards), then collected; the table columns are checked against the run records by hand."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from robustlab.strategies import registry
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.coteaching import CoTeaching
from robustlab.strategies.selection import SelectionMeter
from studies import noisy_labels


@dataclass
class KeepConfig:
    keep: float = 1.0


class KeepSmallLoss(Strategy):
    """A test-only method: cross-entropy on the `keep` smallest-loss fraction of each batch."""
    Config = KeepConfig
    presets: ClassVar[dict] = {"quick": {"keep": 0.5}, "paper": {"keep": 0.8}}

    def __init__(self, model, keep, clean_labels):
        super().__init__()
        self.model, self.keep, self.meter = model, keep, SelectionMeter(clean_labels)

    @classmethod
    def build(cls, config, ctx):
        strategy = cls(ctx.new_model(), config.keep, ctx.clean_train_labels)
        strategy.config = config
        return strategy

    def on_epoch_start(self, epoch, num_epochs):
        self.meter.reset()

    def train_step(self, x, y, idx, epoch):
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, reduction="none")
        kept = torch.argsort(loss.detach())[:max(1, int(self.keep * len(y)))]
        self.meter.update(y, idx, kept)
        return StepOutput(loss[kept].mean(), logits)

    def epoch_metrics(self):
        return self.meter.metrics()


@pytest.fixture(scope="module")
def keep_strategy():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KeepSmallLoss, "name", "keep_small")
        mp.setitem(registry._REGISTRY, "keep_small", KeepSmallLoss)
        yield "keep_small"


def argv_for(out: Path, data_dir, cache_dir, *extra) -> list[str]:
    return ["--noise", "0.4", "--methods", "ce,coteach,keep_small", "--smooth", "0.1", "--epochs", "2",
            "--train-size", "512", "--val-size", "100", "--test-size", "400", "--data-dir", str(data_dir),
            "--cache-dir", str(cache_dir), "--out", str(out), "--figures-dir", str(out / "fig"), "--quiet", *extra]


@pytest.fixture(scope="module")
def study(keep_strategy, cifar10, cifar10_dir, session_cache_dir, tmp_path_factory):
    """The grid trained once, in two shards; the tables come from a --collect that may not train."""
    out = tmp_path_factory.mktemp("noisy")
    argv = argv_for(out, cifar10_dir, session_cache_dir)
    assert noisy_labels.main(argv + ["--shard", "0/2"]) == 0
    assert not (out / "table.csv").exists()  # shards never tabulate
    first = len(list((out / "records").glob("*.json")))
    assert noisy_labels.main(argv + ["--shard", "1/2"]) == 0
    records = {json.loads(p.read_text())["config"]["tag"]: json.loads(p.read_text())
               for p in (out / "records").glob("*.json")}

    def no_training(*a, **k):
        raise AssertionError("collect must not train")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("robustlab.experiment.fit", no_training)
        assert noisy_labels.main(argv + ["--collect"]) == 0
    rows = {r["arm"]: r for r in csv.DictReader(open(out / "table.csv"))}
    return out, first, records, rows


ARMS = {"clean_ce", "noisy_ce", "noisy_ls", "noisy_coteach", "noisy_keep_small"}


def test_shards_split_the_grid_and_collect_tabulates_every_arm(study):
    out, first, records, rows = study
    assert first in (2, 3) and set(records) == ARMS and set(rows) == ARMS
    for d in (out, out / "fig"):
        for name in ("table.md", "table.csv", "test_acc.png", "label_precision.png", "remember_rate.png"):
            assert (d / name).stat().st_size > 0, name
    assert len(list(csv.DictReader(open(out / "runs.csv")))) == 5


def test_each_method_gets_its_preset_options_and_the_same_noisy_data(study):
    _, _, records, rows = study
    assert records["noisy_keep_small"]["strategy_options"] == {"keep": 0.5}  # KeepSmallLoss.presets["quick"]
    assert records["noisy_coteach"]["strategy_options"]["num_gradual"] == CoTeaching.presets["quick"]["num_gradual"]
    # the default forget rate is the realised noise rate, recorded
    assert records["noisy_coteach"]["strategy_options"]["forget_rate"] == pytest.approx(
        records["noisy_coteach"]["noise"]["realized_rate"])
    assert records["noisy_ls"]["config"]["strategy"] == {"name": "ls", "options": {"smoothing": 0.1}}
    assert float(rows["clean_ce"]["realized_noise"]) == 0.0 and rows["clean_ce"]["noise_type"] == "none"
    # 40% symmetric noise on 512 labels: realized rate within a few binomial std of 0.4 * 9/10 or 0.4.
    assert abs(float(rows["noisy_ce"]["realized_noise"]) - 0.38) < 0.08
    assert len({rows[a]["realized_noise"] for a in ARMS - {"clean_ce"}}) == 1
    budgets = {json.dumps([r["config"]["model"], r["config"]["train"], r["config"]["data"]["train_size"]])
               for r in records.values()}
    assert len(budgets) == 1


def test_accuracy_columns_match_the_records(study):
    out, _, records, rows = study
    for arm, rec in records.items():
        row, hist, m = rows[arm], rec["history"], rec["metrics"]
        accs = [h["test_acc"] for h in hist]
        assert float(row["test_acc_last"]) == pytest.approx(m["test_acc"])
        assert float(row["test_acc_last10"]) == pytest.approx(sum(accs) / len(accs))  # 2 epochs < 10
        best = max(hist, key=lambda h: h["val_acc"])  # first epoch with the highest validation accuracy
        assert float(row["test_acc_val_selected"]) == pytest.approx(best["test_acc"])
        assert float(row["test_acc_best_oracle"]) == pytest.approx(max(accs))
        assert float(row["wall_seconds"]) > 0
    assert records["noisy_ce"]["config"]["data"]["noisy_val"] is True  # validation is noisy by default
    md = (out / "table.md").read_text()
    assert "Validation labels: noisy" in md and "oracle" in md and "test_acc_best_oracle (%)" in md


def test_two_network_and_selection_columns(study):
    _, _, records, rows = study
    co, m = rows["noisy_coteach"], records["noisy_coteach"]["metrics"]
    assert co["headline"] == "net1" and float(co["test_acc_net1"]) == pytest.approx(m["test_acc"])
    assert float(co["test_acc_net2"]) == pytest.approx(m["test_net2_acc"])
    assert float(co["test_acc_ensemble"]) == pytest.approx(m["test_ensemble_acc"])
    for arm in ("noisy_ce", "noisy_ls", "noisy_keep_small", "clean_ce"):
        assert rows[arm]["headline"] == rows[arm]["test_acc_net2"] == ""
    assert 0.0 < float(co["label_precision"]) <= 1.0
    keep = rows["noisy_keep_small"]
    last = records["noisy_keep_small"]["history"][-1]
    assert float(keep["label_precision"]) == pytest.approx(last["label_precision"])
    assert float(keep["label_recall"]) == pytest.approx(last["label_recall"])
    # recall / precision = kept / clean-labelled seen: 512 images in two full batches of 256 keep 128 + 128
    clean_seen = 512 * (1 - records["noisy_keep_small"]["noise"]["realized_rate"])
    assert last["label_recall"] == pytest.approx(last["label_precision"] * 256 / clean_seen)
    assert rows["noisy_ce"]["label_precision"] == rows["noisy_ce"]["label_recall"] == ""


def _arms(*argv):
    args = noisy_labels.build_parser().parse_args(list(argv))
    return args, noisy_labels.choose_methods(args)


def test_method_choice_shortcuts_and_options(keep_strategy):
    _, methods = _arms("--coteach", "--smooth", "0.2")
    assert list(methods) == ["noisy_ce", "noisy_coteach", "noisy_ls"]
    assert methods["noisy_ls"].options == {"smoothing": 0.2}
    _, methods = _arms("--methods", "keep_small,coteach", "--coteach", "--preset", "paper", "--num-gradual", "3",
                       "--forget-rate", "0.2")
    assert list(methods) == ["noisy_keep_small", "noisy_coteach"]
    assert methods["noisy_keep_small"].options == {"keep": 0.8}  # its paper preset; no num_gradual field
    assert methods["noisy_coteach"].options == {**CoTeaching.presets["paper"], "num_gradual": 3, "forget_rate": 0.2}


def test_noise_type_is_passed_through_and_validation_noise_is_the_default():
    args, methods = _arms("--noise-type", "human:worst", "--clean-val")
    base = noisy_labels.preset("quick")
    arms = noisy_labels.build_arms(base, methods, 0.0, "human:worst", [0, 1])
    assert [(a.tag, a.seed) for a in arms] == [("clean_ce", 0), ("noisy_ce", 0), ("clean_ce", 1), ("noisy_ce", 1)]
    assert arms[1].data.noise_type == "human:worst" and arms[0].data.noise_rate == 0.0
    assert noisy_labels.build_parser().parse_args([]).clean_val is False


@pytest.mark.parametrize("argv", [["--noise", "0"], ["--noise", "1.0"], ["--noise", "0.3", "--model", "nope"],
                                  ["--noise", "0.3", "--noise-type", "bogus"], ["--noise", "0.3", "--shard", "2/2"],
                                  ["--methods", "ce,nope"], ["--coteach", "--forget-rate", "1.5"],
                                  ["--collect"]])
def test_bad_arguments_exit_2(argv, tmp_path, capsys):
    code = None
    try:
        code = noisy_labels.main(argv + ["--out", str(tmp_path)])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]
    if argv[0] == "--methods":
        assert "noisy-label methods:" in err[0] and "coteach" in err[0] and "ce" in err[0]


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


def test_human_noise_passes_through_to_the_data_layer_with_its_heatmap(cifar10, cifar10_dir, session_cache_dir,
                                                                         tmp_path):
    out = tmp_path / "human"
    argv = ["--noise-type", "human:worst", "--epochs", "1", "--train-size", "300", "--val-size", "100",
            "--test-size", "200", "--data-dir", str(cifar10_dir), "--cache-dir", str(session_cache_dir),
            "--out", str(out), "--figures-dir", str(out / "fig"), "--quiet"]
    assert noisy_labels.main(argv) == 0
    rows = {r["arm"]: r for r in csv.DictReader(open(out / "table.csv"))}
    assert set(rows) == {"clean_ce", "noisy_ce"}
    assert rows["noisy_ce"]["noise_type"] == "human:worst" and rows["clean_ce"]["noise_type"] == "none"
    # CIFAR-10N "worst" flips about 40% of the labels (40.21% of the full training set)
    assert 0.3 < float(rows["noisy_ce"]["realized_noise"]) < 0.5 and float(rows["clean_ce"]["realized_noise"]) == 0
    report = json.loads((out / "noise_report.json").read_text())
    assert report["noise_type"] == "human:worst" and len(report["transition"]) == 10
    assert (out / "fig" / "transition_matrix.png").stat().st_size > 0
