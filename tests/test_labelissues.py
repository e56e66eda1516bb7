"""`python -m robustlab.labelissues` end to end on a tiny CIFAR-10 (tiny CNN, one epoch per fold):
the files and their columns, per-fold resume, shards, bad input (exit 2, one line, nothing
written); and the forget-rate estimate of the small-loss strategies (`forget_rate="estimate"`)."""
from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import robustlab.labelissues as li
from robustlab.config import Context, ExperimentConfig, StrategyConfig
from robustlab.errors import UsageError
from robustlab.strategies import BuildContext, create_strategy
from robustlab.strategies.coteaching import CoTeachingConfig, resolve_forget_rate


def argv(data, out, *extra):
    return ["--data-dir", str(data.root), "--cache-dir", str(data.root / "cache"), "--out", str(out), "--quiet",
            "--model", "tiny_cnn", "--train-size", "80", "--val-size", "20", "--test-size", "20", "--epochs", "1",
            "--noise-type", "symmetric", "--noise", "0.4", "--folds", "2", *extra,
            *(() if "--top" in extra else ("--no-figures",))]


def refuse_training(*args, **kwargs):
    def trainer(k, train, heldout):
        raise AssertionError(f"fold {k} was trained again")
    return trainer


def read_csv(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_end_to_end_files_columns_and_rerun(tiny_cifar10, tmp_path, monkeypatch, capsys):
    out = tmp_path / "li"
    assert li.main(argv(tiny_cifar10, out, "--top", "4")) == 0
    probs = np.load(out / "pred_probs.npy")
    assert probs.shape == (80, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    rows = read_csv(out / "label_issues.csv")
    assert rows[0] == ["index", "path", "given_label", "suggested_label", "label_quality", "is_issue"]
    body = rows[1:]
    assert len(body) == 80 and len({r[0] for r in body}) == 80
    quality = [float(r[4]) for r in body]
    assert quality == sorted(quality)  # worst first
    spec = json.loads((out / "noise_estimate.json").read_text())
    # symmetric 0.4 of 80 labels: the report carries the realised rate and T next to the estimate
    assert 0.2 < spec["true_noise_rate"] < 0.6 and len(spec["estimated_transition"]) == 10
    assert set(spec["detectors"]) == {"confident_learning", "dividemix_gmm", "small_loss", "aum"}
    table = read_csv(out / "detectors.csv")
    assert table[0] == li.DETECTOR_COLUMNS and [r[0] for r in table[1:]] == ["confident_learning", "dividemix_gmm",
                                                                              "small_loss", "aum"]
    with np.load(out / "folds" / "fold_0.npz") as f:
        assert f["train_aum"].shape == (40,)  # the AUM of the 40 images fold model 0 trained on
    for name in ("detectors.md", "worst_labels.png", "transition_estimate.png", "folds/fold_0.npz", "folds/fold_1.npz"):
        assert (out / name).exists(), name
    assert not (out / "folds" / "fold_0").exists()  # a finished fold keeps its probabilities, not its checkpoints
    assert "noise rate estimated" in capsys.readouterr().out
    # a rerun trains nothing and writes the same probabilities
    monkeypatch.setattr(li, "fold_trainer", refuse_training)
    assert li.main(argv(tiny_cifar10, out, "--no-figures")) == 0
    np.testing.assert_array_equal(np.load(out / "pred_probs.npy"), probs)


def test_shards_train_their_folds_and_the_report_waits(tiny_cifar10, tmp_path, capsys):
    out = tmp_path / "li"
    assert li.main(argv(tiny_cifar10, out, "--shard", "1/2")) == 0
    assert (out / "folds" / "fold_1.npz").exists() and not (out / "folds" / "fold_0.npz").exists()
    assert not (out / "label_issues.csv").exists()
    assert li.main(argv(tiny_cifar10, out, "--collect")) == 2
    assert "fold(s) 0 of 2 have not finished" in capsys.readouterr().err
    assert li.main(argv(tiny_cifar10, out, "--shard", "0/2")) == 0
    assert li.main(argv(tiny_cifar10, out, "--collect")) == 0
    assert (out / "label_issues.csv").exists()


def test_given_pred_probs_skip_training(tiny_cifar10, tmp_path, monkeypatch):
    monkeypatch.setattr(li, "fold_trainer", refuse_training)
    path = tmp_path / "p.npy"
    rng = np.random.default_rng(0)
    p = rng.random((80, 10))
    np.save(path, p / p.sum(1, keepdims=True))
    out = tmp_path / "li"
    assert li.main(argv(tiny_cifar10, out, "--pred-probs", str(path))) == 0
    np.testing.assert_allclose(np.load(out / "pred_probs.npy"), p / p.sum(1, keepdims=True), rtol=1e-6)
    assert not (out / "folds").exists()


@pytest.mark.parametrize("extra, message", [
    (["--folds", "1"], "--folds must be at least 2, got 1"),
    (["--folds", "9", "--noise", "0"], "--folds 9 is larger than the smallest class (8 images of class 0); use 2..8"),
    (["--pred-probs", "WRONG_SHAPE"], "expected probabilities of shape (80, 10), got (80, 9)"),
    (["--pred-probs", "NOT_ONE"], "every row must sum to 1 (row 0 sums to 0.5)"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_cifar10, tmp_path, capsys, extra, message):
    np.save(tmp_path / "WRONG_SHAPE.npy", np.full((80, 9), 1 / 9))
    np.save(tmp_path / "NOT_ONE.npy", np.full((80, 10), 0.05))
    extra = [str(tmp_path / f"{e}.npy") if e in ("WRONG_SHAPE", "NOT_ONE") else e for e in extra]
    out = tmp_path / "li"
    assert li.main(argv(tiny_cifar10, out, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("robustlab.labelissues: error:")
    assert not out.exists()


def test_a_folder_of_another_configuration_is_refused(tiny_cifar10, tmp_path, capsys, monkeypatch):
    out = tmp_path / "li"
    assert li.main(argv(tiny_cifar10, out, "--shard", "0/2")) == 0
    monkeypatch.setattr(li, "fold_trainer", refuse_training)
    assert li.main(argv(tiny_cifar10, out, "--noise", "0.2")) == 2
    assert "holds label issues of another configuration" in capsys.readouterr().err


# ---- forget_rate = "estimate" ------------------------------------------------------------------

def test_forget_rate_config_values():
    assert CoTeachingConfig(forget_rate="0.2").forget_rate == 0.2  # typed on a command line
    for ok in ("estimate", "oracle", None, 0.0, 0.5):
        CoTeachingConfig(forget_rate=ok).validate()
    for bad in ("sometimes", 1.0, -0.1):
        with pytest.raises(UsageError, match="forget_rate must be in \\[0, 1\\), 'estimate' or 'oracle'"):
            CoTeachingConfig(forget_rate=bad).validate()


def test_resolve_forget_rate_names_its_source():
    ctx = SimpleNamespace(noise_rate=0.4, estimate_noise_rate=lambda: 0.31)
    assert resolve_forget_rate("estimate", ctx, "coteach") == (0.31, "estimate")
    assert resolve_forget_rate(None, ctx, "coteach") == (0.4, "oracle")
    assert resolve_forget_rate("oracle", ctx, "coteach") == (0.4, "oracle")
    assert resolve_forget_rate(0.2, ctx, "coteach") == (0.2, "given")
    with pytest.raises(UsageError, match="coteach: forget_rate='estimate' needs the run's data and results folder"):
        resolve_forget_rate("estimate", SimpleNamespace(noise_rate=0.4, estimate_noise_rate=None), "coteach")
    with pytest.raises(UsageError, match="the estimated noise rate is 0, nothing to forget"):
        resolve_forget_rate("estimate", SimpleNamespace(noise_rate=0.4, estimate_noise_rate=lambda: 0.0), "coteach")
    with pytest.raises(UsageError, match="needs a forget rate"):
        resolve_forget_rate("oracle", SimpleNamespace(noise_rate=0.0), "coteach")


@pytest.mark.parametrize("name", ["coteach", "coteach_plus", "jocor"])
def test_small_loss_strategies_take_the_estimate_and_record_it(name):
    from robustlab.models import create_model

    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=10), num_classes=10, noise_rate=0.4,
                       estimate_noise_rate=lambda: 0.27)
    st = create_strategy(name, context=ctx, forget_rate="estimate")
    assert st.tau == pytest.approx(0.27)
    assert st.options()["forget_rate"] == pytest.approx(0.27) and st.options()["forget_rate_source"] == "estimate"
    assert create_strategy(name, context=ctx).options()["forget_rate_source"] == "oracle"
    with pytest.raises(UsageError, match="forget_rate='estimate' needs"):
        create_strategy(name, lambda: create_model("tiny_cnn", num_classes=10), num_classes=10, forget_rate="estimate")


def fake_prepared(n_per_class=10, classes=4, rate=0.3, seed=0):
    rng = np.random.default_rng(seed)
    clean = np.repeat(np.arange(classes), n_per_class)
    flip = rng.random(len(clean)) < rate
    noisy = np.where(flip, (clean + 1) % classes, clean)
    from robustlab.corruptions import noise_report

    train = SimpleNamespace(labels=torch.as_tensor(noisy))
    return SimpleNamespace(splits=SimpleNamespace(train=train, num_classes=classes), clean_train_labels=torch.as_tensor(clean),
                           noise=noise_report(clean, noisy, classes).to_dict()), clean, noisy


def test_noise_rate_for_run_estimates_once_and_caches(tmp_path, monkeypatch):
    data, clean, noisy = fake_prepared()
    seen = []

    def knows_the_truth(cfg, data, device, folder, resume=False, quiet=True):
        def trainer(k, train, heldout):  # a perfect model of the clean labels
            seen.append(k)
            p = np.full((len(heldout), 4), 0.02)
            p[np.arange(len(heldout)), clean[heldout]] = 0.94
            return p
        return trainer

    monkeypatch.setattr(li, "fold_trainer", knows_the_truth)
    cfg = ExperimentConfig(strategy=StrategyConfig("coteach", {"forget_rate": "estimate"}))
    cfg.data.noise_type, cfg.data.noise_rate = "symmetric", 0.3
    result = li.noise_rate_for_run(cfg, data, torch.device("cpu"), tmp_path)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert result["estimated_noise_rate"] == pytest.approx(np.mean(clean != noisy), abs=0.03)
    assert result["true_noise_rate"] == pytest.approx(np.mean(clean != noisy))
    cached = list((tmp_path / "noise_estimates").glob("*.json"))
    assert len(cached) == 1 and cached[0].name.startswith("cifar10-symmetric-s0-")
    # another arm of the same data, noise and seed reuses it; another seed does not
    monkeypatch.setattr(li, "fold_trainer", refuse_training)
    other_arm = ExperimentConfig(strategy=StrategyConfig("jocor"), data=cfg.data)
    assert li.noise_rate_for_run(other_arm, data, torch.device("cpu"), tmp_path) == result
    with pytest.raises(AssertionError, match="trained again"):
        li.noise_rate_for_run(ExperimentConfig(data=cfg.data, seed=1), data, torch.device("cpu"), tmp_path)


def test_no_estimate_with_too_few_images_per_class(tmp_path):
    data, _, _ = fake_prepared(n_per_class=3)
    with pytest.raises(UsageError, match="forget_rate='estimate': no noise estimate for cifar10 symmetric: "
                                         "--folds 5 is larger than the smallest class"):
        li.noise_rate_for_run(ExperimentConfig(), data, torch.device("cpu"), tmp_path)
    assert not (tmp_path / "noise_estimates").exists()


def test_coteaching_run_with_the_estimated_rate(tiny_cifar10, tmp_path):
    """A real run: the K-fold estimate is trained once, cached, and named in the record."""
    from robustlab.experiment import run_experiment

    cfg = ExperimentConfig(model="tiny_cnn", strategy=StrategyConfig("coteach", {"forget_rate": "estimate"}))
    cfg.data.val_size, cfg.data.noise_rate, cfg.train.epochs = 20, 0.4, 1
    cfg.train.record_dynamics = True  # as the noisy-label study runs it: the fold models record nothing
    ctx = Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "cache"), quiet=True, tensorboard=False)
    record = run_experiment(cfg, tmp_path / "out", ctx)
    assert record["dynamics"]["epochs"] == 1
    cached = json.loads(next((tmp_path / "out" / "noise_estimates").glob("*.json")).read_text())
    assert record["strategy_options"]["forget_rate_source"] == "estimate"
    assert record["strategy_options"]["forget_rate"] == pytest.approx(cached["estimated_noise_rate"])
    assert cached["folds"] == 5 and cached["true_noise_rate"] == pytest.approx(record["noise"]["realized_rate"])


def test_study_note_and_option():
    from studies.common import Run, forget_rate_note
    from studies.noisy_labels import build_parser, choose_methods

    args = build_parser().parse_args(["--methods", "coteach,jocor,ce", "--forget-rate", "estimate"])
    methods = choose_methods(args)
    assert methods["noisy_coteach"].options["forget_rate"] == "estimate" and "forget_rate" not in methods["noisy_ce"].options
    def run(tag, options):
        return Run(ExperimentConfig(tag=tag), {"strategy_options": options})
    runs = [run("noisy_coteach", {"forget_rate": 0.4, "forget_rate_source": "oracle"}),
            run("noisy_jocor", {"forget_rate": 0.312, "forget_rate_source": "estimate"}),
            run("noisy_ce", {})]
    assert forget_rate_note(runs) == ("Forget rate: noisy_coteach 0.400 (oracle: the realised noise rate), noisy_jocor "
                                      "0.312 (estimated from the noisy labels (K-fold confident learning)).")
    assert forget_rate_note(runs[2:]) == ""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--forget-rate", "1.5"])


def test_local_launcher_trains_each_fold_in_a_job_and_gives_the_direct_report(tiny_cifar10, tmp_path):
    direct, local = tmp_path / "direct", tmp_path / "local"
    assert li.main(argv(tiny_cifar10, direct)) == 0
    assert li.main(argv(tiny_cifar10, local, "--launcher", "local", "--local-parallelism", "2")) == 0
    assert len(list((local / "submitit").glob("*_result.pkl"))) == 2  # one job per fold
    np.testing.assert_array_equal(np.load(local / "pred_probs.npy"), np.load(direct / "pred_probs.npy"))
    assert read_csv(local / "detectors.csv") == read_csv(direct / "detectors.csv")


@pytest.mark.parametrize("extra, message", [
    (["--launcher", "local", "--collect"], "--launcher local submits fold training; with --collect or --pred-probs"),
    (["--launcher", "local", "--no-wait"], "--no-wait needs --launcher slurm"),
])
def test_launcher_bad_combinations(tiny_cifar10, tmp_path, capsys, extra, message):
    assert li.main(argv(tiny_cifar10, tmp_path / "li", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "li").exists()
