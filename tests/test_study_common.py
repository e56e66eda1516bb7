"""The study skeleton: seed aggregation and table writing against hand values, and run_study's
grid / collect / table / figure plumbing with a runner that writes records without training."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from robustlab.errors import UsageError
from robustlab.experiment import Context, ExperimentConfig
from robustlab.records import write_record
from studies.common import aggregate, csv_table, markdown_table, study_parser
from studies.skeleton import Study, Table, run_study


def test_aggregate_mean_and_sample_std_per_group_in_first_seen_order():
    rows = [{"arm": "b", "acc": 0.5}, {"arm": "a", "acc": 0.2}, {"arm": "b", "acc": 0.7}, {"arm": "b", "acc": 0.9}]
    b, a = aggregate(rows, ["arm"], ["acc"])
    assert (b["arm"], a["arm"]) == ("b", "a")
    # b: mean 0.7; sample std sqrt((0.04 + 0 + 0.04) / 2) = 0.2
    assert b["acc"] == pytest.approx(0.7) and b["acc_std"] == pytest.approx(0.2) and b["n_seeds"] == 3
    assert a["acc"] == 0.2 and a["acc_std"] == 0.0 and a["n_seeds"] == 1


def test_aggregate_groups_by_several_keys():
    rows = [{"m": "x", "p": 1, "v": 1.0}, {"m": "x", "p": 2, "v": 3.0}, {"m": "x", "p": 1, "v": 2.0}]
    out = aggregate(rows, ["m", "p"], ["v"])
    assert [(r["m"], r["p"], r["v"], r["n_seeds"]) for r in out] == [("x", 1, 1.5, 2), ("x", 2, 3.0, 1)]
    assert out[0]["v_std"] == pytest.approx(math.sqrt(0.5))


def test_aggregate_skips_missing_values_and_keeps_agreeing_text():
    rows = [{"arm": "a", "v": 1.0, "p": None, "h": "net1", "t": "x"},
            {"arm": "a", "v": float("nan"), "h": "net1", "t": "y"},
            {"arm": "a", "v": 3.0, "h": "net1", "t": "x"}]
    (r,) = aggregate(rows, ["arm"], ["v", "p", "h", "t", "absent"])
    assert r["v"] == 2.0 and r["v_std"] == pytest.approx(math.sqrt(2.0))  # NaN left out: mean of 1 and 3
    assert r["n_seeds"] == 3  # seeds are counted even where one metric is missing
    assert r["p"] is None and r["p_std"] is None and r["absent"] is None
    assert r["h"] == "net1" and r["t"] is None  # text is kept only when every seed agrees


def test_markdown_table_exact_with_percent_and_std():
    rows = [{"arm": "ce", "test_acc": 0.5, "test_acc_std": 0.01, "train_seconds": 12.345, "n_seeds": 2},
            {"arm": "ls", "test_acc": 0.25, "test_acc_std": 0.0, "train_seconds": None, "n_seeds": 1}]
    assert markdown_table(rows, ["arm", "test_acc", "train_seconds"]) == (
        "| arm | test_acc (%) | train_seconds |\n"
        "|---|---|---|\n"
        "| ce | 50.00 ± 1.00 | 12.35 |\n"
        "| ls | 25.00 |  |\n")


def test_markdown_shows_rates_in_percent_and_other_numbers_as_they_are():
    row = {"label_precision": 0.875, "label_recall": 0.5, "realized_noise": 0.25, "test_ece": 0.125,
           "noise_rate": 0.3, "wall_seconds": 3.0}
    assert markdown_table([row], list(row)).splitlines()[::2] == [
        "| label_precision (%) | label_recall (%) | realized_noise (%) | test_ece (%) | noise_rate | wall_seconds |",
        "| 87.50 | 50.00 | 25.00 | 12.50 | 0.3 | 3 |"]


def test_csv_table_exact_with_std_columns_and_seed_count():
    rows = [{"arm": "ce", "test_acc": 0.5, "test_acc_std": 0.01, "extra": 1, "n_seeds": 2},
            {"arm": "ls", "test_acc": None, "test_acc_std": None, "n_seeds": 1}]
    assert csv_table(rows, ["arm", "test_acc"]) == "arm,test_acc,test_acc_std,n_seeds\nce,0.5,0.01,2\nls,,,1\n"
    assert csv_table([{"arm": "a,b", "v": 1}], ["arm", "v"]) == 'arm,v\n"a,b",1\n'


def test_accuracy_summary_by_hand():
    from studies.common import accuracy_summary

    hist = [{"epoch": e, "test_acc": e / 100} for e in range(1, 13)]  # 0.01 .. 0.12
    record = {"metrics": {"test_acc": 0.12, "test_acc_best": 0.5}, "history": hist, "best": {"epoch": 4, "test_acc": 0.04}}
    s = accuracy_summary(record)
    assert s["test_acc_last"] == 0.12 and s["test_acc_best_oracle"] == 0.5 and s["test_acc_val_selected"] == 0.04
    assert s["test_acc_last10"] == pytest.approx(sum(range(3, 13)) / 1000)  # epochs 3..12: mean 0.075
    short = accuracy_summary({"metrics": {"test_acc": 0.3}, "history": hist[:2]})
    assert short["test_acc_last10"] == pytest.approx(0.015) and short["test_acc_val_selected"] is None


# ---- run_study -------------------------------------------------------------------------------

def fake_runner(cfg: ExperimentConfig, out: Path, ctx) -> dict:
    """A record whose accuracy is a known function of arm and seed: no training."""
    acc = {"a": 0.5, "b": 0.8}[cfg.tag] + 0.1 * cfg.seed
    record = {"run_id": cfg.run_id, "config": cfg.key(), "metrics": {"test_acc": acc}, "history": []}
    write_record(out, record)
    return record


def grid(seeds=(0, 1)) -> list[ExperimentConfig]:
    out = []
    for tag in ("a", "b"):
        for seed in seeds:
            out.append(ExperimentConfig(tag=tag, seed=seed))
    return out


def make_study(figures=None) -> Study:
    return Study(arms=grid(), row=lambda run: {"arm": run.config.tag, "test_acc": run.record["metrics"]["test_acc"]},
                 tables=[Table(["arm", "test_acc"], keys=["arm"], title="T", note="the note")], figures=figures,
                 runner=fake_runner)


def parse(tmp_path: Path, *extra: str):
    return study_parser("fake", "d").parse_args(["--out", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f"),
                                                 "--quiet", *extra])


def test_run_study_runs_aggregates_writes_tables_and_calls_figures(tmp_path, capsys):
    seen = []
    args = parse(tmp_path)
    assert run_study(make_study(figures=seen.append), args, Context(quiet=True)) == 0
    for d in ("r", "f"):
        rows = list(csv.DictReader(open(tmp_path / d / "table.csv")))
        assert [(r["arm"], r["n_seeds"]) for r in rows] == [("a", "2"), ("b", "2")]
        assert [float(r["test_acc"]) for r in rows] == pytest.approx([0.55, 0.85])
        assert float(rows[0]["test_acc_std"]) == pytest.approx(math.sqrt(0.005))  # seeds 0.5 and 0.6
    md = (tmp_path / "r" / "table.md").read_text()
    assert md.startswith("## T\n\n") and md.rstrip().endswith("the note") and "| a | 55.00 ± 7.07 |" in md
    per_run = list(csv.DictReader(open(tmp_path / "r" / "runs.csv")))
    assert [(r["arm"], r["seed"]) for r in per_run] == [("a", "0"), ("a", "1"), ("b", "0"), ("b", "1")]
    assert not (tmp_path / "f" / "runs.csv").exists()
    (results,) = seen
    assert len(results.runs) == 4 and [r["seed"] for r in results.rows] == [0, 1, 0, 1]
    assert results.dirs == [tmp_path / "r", tmp_path / "f"]
    assert "| b | 85.00 ± 7.07 |" in capsys.readouterr().out


def test_collect_with_nothing_to_collect_is_an_error_and_shards_skip_tables(tmp_path):
    with pytest.raises(UsageError, match="nothing to collect: none of the 4 runs"):
        run_study(make_study(), parse(tmp_path, "--collect"), Context(quiet=True))
    assert run_study(make_study(), parse(tmp_path, "--shard", "0/2"), Context(quiet=True)) == 0
    assert len(list((tmp_path / "r" / "records").glob("*.json"))) == 2 and not (tmp_path / "r" / "table.csv").exists()
    # a collect of a half-finished grid tabulates what exists
    assert run_study(make_study(), parse(tmp_path, "--collect"), Context(quiet=True)) == 0
    assert sum(int(r["n_seeds"]) for r in csv.DictReader(open(tmp_path / "r" / "table.csv"))) == 2


def test_collect_exits_2_with_one_line_from_a_study_command(tmp_path, capsys):
    from studies import architectures

    assert architectures.main(["--models", "tiny_cnn", "--collect", "--out", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nothing to collect" in err


def test_table_select_splits_rows_into_tables(tmp_path):
    study = make_study()
    study.tables = [Table(["arm", "test_acc"], ["arm"], "A", stem="table_a", runs_stem="runs_a",
                          select=lambda r: r["arm"] == "a"),
                    Table(["arm", "test_acc"], ["arm"], "B", stem="table_b", runs_stem="runs_b",
                          select=lambda r: r["arm"] == "b")]
    assert run_study(study, parse(tmp_path), Context(quiet=True)) == 0
    assert [r["arm"] for r in csv.DictReader(open(tmp_path / "r" / "table_a.csv"))] == ["a"]
    assert [r["arm"] for r in csv.DictReader(open(tmp_path / "f" / "table_b.csv"))] == ["b"]
    assert len(list(csv.DictReader(open(tmp_path / "r" / "runs_b.csv")))) == 2


def test_outer_progress_bar_counts_runs_with_arm_and_seed(tmp_path, capsys):
    args = study_parser("fake", "d").parse_args(["--out", str(tmp_path / "r"), "--figures-dir", str(tmp_path / "f")])
    assert run_study(make_study(), args, Context(quiet=False)) == 0
    err = capsys.readouterr().err
    for k, (arm, seed) in enumerate([("a", 0), ("a", 1), ("b", 0), ("b", 1)], 1):
        assert f"run {k}/4 {arm} seed {seed}" in err
    assert "4/4 done" in err and "elapsed" in err and "ETA" in err
    # --quiet: no bar at all (the records exist now, so make a fresh grid)
    assert run_study(make_study(), parse(tmp_path / "q"), Context(quiet=True)) == 0
    assert "run 1/4" not in capsys.readouterr().err


def test_prerequisites_finish_before_the_arms_and_reach_the_figures(tmp_path, monkeypatch):
    from robustlab.records import find_record

    pre = ExperimentConfig(tag="a", seed=7)

    def arm_runner(cfg, out_dir, ctx):
        assert find_record(out_dir, pre.run_id) is not None, "the prerequisite must have its record first"
        return fake_runner(cfg, out_dir, ctx)

    seen = []
    study = make_study(figures=seen.append)
    study.prerequisites, study.runner = [pre], arm_runner
    monkeypatch.setattr("studies.launcher.run_experiment", fake_runner)  # the prerequisites' default runner
    assert run_study(study, parse(tmp_path), Context(quiet=True)) == 0
    (results,) = seen
    assert [r.config.run_id for r in results.prerequisites] == [pre.run_id] and len(results.runs) == 4
    assert len(results.rows) == 4  # prerequisites make no table rows
