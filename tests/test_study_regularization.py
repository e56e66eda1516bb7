"""studies.regularization: the arms of every ablation (no training) and the basic table end to end."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from studies import regularization as reg

COLUMNS = ["arm", "setting", "test_acc", "test_loss", "test_cost", "test_acc_tta", "test_ece", "train_seconds"]


def flat(cfg, prefix="") -> dict:
    """Every leaf of the config as {'train.optim.lr': 0.05, ...}; tag and seed left out."""
    out = {}
    for key, value in (asdict(cfg) if prefix == "" else cfg).items():
        if prefix == "" and key in ("tag", "seed"):
            continue
        if isinstance(value, dict) and key != "options":
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def diff(a, b) -> set[str]:
    fa, fb = flat(a), flat(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def arms(ablation, preset="quick", seeds=(0,)):
    base, s = reg.preset(preset)
    return {reg.arm_name(c): c for c in reg.build_arms(ablation, base, s, list(seeds))}, base, s


AUG = {"augment.crop_pad", "augment.flip"}


def test_basic_arms_switch_exactly_their_components():
    a, base, s = arms("basic")
    assert list(a) == ["none", "l2", "dropout", "l2_dropout", "augment", "all"]
    wd = lambda c: c.train.optim.weight_decay  # noqa: E731
    p = lambda c: c.model_kwargs["dropout"]  # noqa: E731
    aug = lambda c: (c.augment.crop_pad > 0, c.augment.flip)  # noqa: E731
    expect = {"none": (0, 0, False), "l2": (1, 0, False), "dropout": (0, 1, False), "l2_dropout": (1, 1, False),
              "augment": (0, 0, True), "all": (1, 1, True)}
    for name, (l2, drop, augmented) in expect.items():
        c = a[name]
        assert (wd(c) > 0) == bool(l2) and (p(c) > 0) == bool(drop), name
        assert aug(c) == ((True, True) if augmented else (False, False)), name
        assert c.augment.cutout == 0 and not c.strategy.options.get("smoothing") and c.train.optim.schedule == "constant"
    assert wd(a["l2"]) == pytest.approx(2 * s.lam) and p(a["dropout"]) == s.dropout
    # each arm differs from the baseline in exactly its own components
    none = a["none"]
    assert diff(a["l2"], none) == {"train.optim.weight_decay"}
    assert diff(a["dropout"], none) == {"model_kwargs.dropout"}
    assert diff(a["l2_dropout"], none) == {"train.optim.weight_decay", "model_kwargs.dropout"}
    assert diff(a["augment"], none) == AUG
    assert diff(a["all"], none) == AUG | {"train.optim.weight_decay", "model_kwargs.dropout"}


def test_augment_arms_add_cutout_or_smoothing_to_the_basic_recipe():
    a, base, s = arms("augment")
    assert list(a) == ["basic", "basic_cutout", "basic_smoothing"]
    assert diff(a["basic_cutout"], a["basic"]) == {"augment.cutout"} and a["basic_cutout"].augment.cutout == s.cutout
    assert diff(a["basic_smoothing"], a["basic"]) == {"strategy.options"}
    assert a["basic_smoothing"].strategy.options["smoothing"] == s.smoothing
    b = a["basic"]
    assert b.train.optim.weight_decay > 0 and b.model_kwargs["dropout"] > 0 and b.augment.crop_pad and b.augment.flip


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_schedule_arms_change_only_the_optimizer_schedule(preset):
    a, base, s = arms("schedule", preset)
    restarts = [n for n in a if n.startswith("cosine_restarts")]
    assert set(a) - set(restarts) == {"constant", "warmup_cosine", "step", "cyclic"} and len(restarts) >= 2
    for name, c in a.items():
        assert all(k.startswith("train.optim.") for k in diff(c, a["constant"])), name
        assert c.train.epochs == s.epochs
    assert {a[n].train.optim.schedule for n in a} == {"constant", "cosine_restarts", "warmup_cosine", "step", "cyclic"}
    if preset == "paper":  # report 000 table 3, lr_max 1e-3 -> lr_min 1e-5
        assert sorted((a[n].train.optim.t0, a[n].train.optim.t_mult) for n in restarts) == [(10, 2), (15, 2), (20, 1)]
        assert all(a[n].train.optim.min_lr == pytest.approx(1e-5) for n in restarts)
        assert a["step"].train.optim.step_size == 10 and a["step"].train.optim.gamma == 0.1


@pytest.mark.parametrize("preset", ["quick", "paper"])
def test_arch_arms_cover_pool_vs_stride_and_fc_vs_gap_over_the_grid(preset):
    a, base, s = arms("arch", preset)
    pool = a.pop("pool_fc")
    assert pool.model_kwargs["downsample"] == "pool" and pool.model_kwargs["head"] == "fc"
    grid = {(c.model_kwargs["head"], c.model_kwargs["dropout"], c.train.optim.weight_decay / 2) for c in a.values()}
    full = {(p, lam) for p in s.arch_dropouts for lam in s.arch_lams}
    fc = full if s.arch_fc_grid else {(s.dropout, s.lam)}
    assert grid == {("gap", *x) for x in full} | {("fc", *x) for x in fc}
    assert s.arch_fc_grid == (preset == "paper") and len(full) == len(s.arch_dropouts) * len(s.arch_lams) >= 4
    assert len(grid) == len(a) and all(c.model_kwargs["downsample"] == "stride" for c in a.values())
    same = a[f"stride_fc_p{s.dropout:g}_lam{s.lam:g}"]
    assert diff(same, pool) == {"model_kwargs.downsample"}
    for c in a.values():
        scale = s.gap_lr_scale if c.model_kwargs["head"] == "gap" else 1.0
        assert c.train.optim.lr == pytest.approx(base.train.optim.lr * scale)


def test_norm_arms_differ_only_in_the_norm_layer():
    a, base, s = arms("norm")
    assert list(a) == ["bn", "gn", "ln", "in"]
    for name, c in a.items():
        assert c.model_kwargs["norm"] == name
        assert diff(c, a["bn"]) <= {"model_kwargs.norm"}


def test_paper_preset_follows_report_000():
    base, s = reg.preset("paper")
    o = base.train.optim
    assert base.model == "vgg3" and base.train.batch_size == 100
    assert (o.optimizer, o.lr, o.momentum, o.weight_decay) == ("sgd", 1e-3, 0.9, 2e-3)
    assert s.basic_epochs == 30 and s.epochs == 50 and s.lam == 1e-3
    a, _, _ = arms("basic", "paper")
    assert all(c.train.epochs == 30 for c in a.values())


def test_every_ablation_shares_budget_and_run_ids_are_unique():
    base, s = reg.preset("quick")
    ids = []
    for ablation in reg.ABLATIONS:
        configs = reg.build_arms(ablation, base, s, [0, 1])
        ids += [c.run_id for c in configs]
        assert {(c.train.epochs, c.train.batch_size, json.dumps(asdict(c.data))) for c in configs}.__len__() == 1
        assert all(reg.ablation_of(c) == ablation for c in configs)
    assert len(ids) == len(set(ids))


# ---- end to end ------------------------------------------------------------------------------

def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_basic_ablation_end_to_end(cifar10_dir, session_cache_dir, tmp_path):
    out = tmp_path / "reg"
    argv = ["--ablation", "basic", "--epochs", "1", "--train-size", "300", "--test-size", "300", "--val-size", "0",
            "--data-dir", str(cifar10_dir), "--cache-dir", str(session_cache_dir), "--out", str(out),
            "--figures-dir", str(out / "fig"), "--quiet"]
    assert reg.main(argv) == 0
    for d in (out, out / "fig"):
        for name in ("table_basic.md", "table_basic.csv", "test_acc_basic.png"):
            assert (d / name).stat().st_size > 0, name
    with open(out / "table_basic.csv", newline="") as f:
        header = next(csv.reader(f))
    assert [c for c in header if not c.endswith("_std") and c != "n_seeds"] == COLUMNS
    rows = {r["arm"]: r for r in read_csv(out / "table_basic.csv")}
    assert list(rows) == ["none", "l2", "dropout", "l2_dropout", "augment", "all"]
    for r in rows.values():
        for col in ("test_acc", "test_acc_tta", "test_ece"):
            assert 0.0 <= float(r[col]) <= 1.0, (col, r[col])
        assert float(r["test_loss"]) > 0 and float(r["train_seconds"]) > 0
    md = (out / "table_basic.md").read_text()
    assert "preset quick" in md and "| none |" in md

    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert len(records) == 6
    for rec in records:
        m, wd = rec["metrics"], rec["config"]["train"]["optim"]["weight_decay"]
        assert m["test_cost"] == pytest.approx(m["test_loss"] + wd / 2 * m["l2_sum"], rel=1e-9)
        arm = rec["config"]["tag"].split("-", 1)[1]
        assert float(rows[arm]["test_cost"]) == pytest.approx(m["test_cost"], rel=1e-6)
        if arm in ("none", "dropout", "augment"):
            assert wd == 0 and m["test_cost"] == m["test_loss"]
        else:
            assert wd > 0 and m["test_cost"] > m["test_loss"]


@pytest.mark.parametrize("argv", [["--ablation", "bogus"], ["--model", "nope"], ["--ablation", "arch", "--model", "tiny_cnn"],
                                  ["--dropout", "1.5"], ["--shard", "3/2"]])
def test_bad_arguments_exit_2_with_one_line(argv, tmp_path, capsys):
    code = None
    try:
        code = reg.main(argv + ["--out", str(tmp_path)])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]
