"""The `fast` preset of every study: airbench with airbench94's recipe on the 45k/5k split, each
method's own options for the 10-epoch schedule, and one end-to-end noisy-label run on real data."""
from __future__ import annotations

import csv

import pytest

from robustlab.errors import UsageError
from robustlab.recipes import FAST_DECAY, FAST_LR
from robustlab.strategies.registry import get_strategy, list_strategies, make_config
from studies import architectures, noisy_labels, regularization, robustness, supcon_recipes


def assert_fast_recipe(cfg, model="airbench", val_size=5000):
    t, o = cfg.train, cfg.train.optim
    assert (cfg.model, cfg.data.val_size, cfg.data.train_size, cfg.data.test_size) == (model, val_size, None, None)
    assert (t.epochs, t.batch_size, t.drop_last, o.schedule, o.lr, o.momentum) == (10, 1024, True, "triangular",
                                                                                   FAST_LR, 0.85)
    assert o.decoupled_wd and o.norm_lr_scale == 64.0 and t.lookahead.start_epoch == 3
    assert (cfg.augment.crop_pad, cfg.augment.flip_mode) == (2, "alternate")


def test_noisy_labels_fast_preset_is_the_recipe_on_45k_5k():
    cfg = noisy_labels.preset("fast")
    assert_fast_recipe(cfg)
    assert cfg.train.tta == "none" and cfg.strategy.options == {}  # the table's columns are without TTA


def test_robustness_and_architectures_fast_presets():
    assert_fast_recipe(robustness.preset("fast"))
    assert robustness.PRESET_MODELS["fast"] == ("airbench",) and robustness.EVAL_TEST_SIZE["fast"] is None
    assert_fast_recipe(architectures.preset("fast"))
    assert architectures.default_models("fast") == ["airbench", "airbench_s"]
    assert architectures.default_models("quick") == list(architectures.QUICK_MODELS)


def test_architectures_fast_gives_every_model_the_recipe(tmp_path):
    args = architectures.build_parser().parse_args(["--preset", "fast", "--models", "vit_cifar,airbench"])
    arms = architectures.build_arms(architectures.preset("fast"), ["vit_cifar", "airbench"], [0], args)
    assert [a.train.optim.optimizer for a in arms] == ["sgd", "sgd"]  # no AdamW override under fast
    quick = architectures.build_parser().parse_args(["--models", "vit_cifar"])
    assert architectures.build_arms(architectures.preset("quick"), ["vit_cifar"], [0], quick)[0].train.optim.optimizer == "adamw"


def test_regularization_fast_preset_uses_the_recipes_decay_as_its_l2_arm():
    cfg, s = regularization.preset("fast")
    assert_fast_recipe(cfg)
    assert s.lam == pytest.approx(FAST_DECAY / 2) and (s.basic_epochs, s.epochs, s.smoothing) == (10, 10, 0.2)
    arms = regularization.build_arms("basic", cfg, s, [0])
    decays = {regularization.arm_name(a): a.train.optim.weight_decay for a in arms}
    assert decays["none"] == 0 and decays["l2"] == pytest.approx(FAST_DECAY) and decays["all"] == pytest.approx(FAST_DECAY)
    dropout = next(a for a in arms if regularization.arm_name(a) == "dropout")
    regularization.check_models([dropout])  # airbench takes the dropout arms
    with pytest.raises(UsageError, match="model 'airbench' does not take option 'norm'"):
        regularization.check_models(regularization.build_arms("norm", cfg, s, [0]))


def test_supcon_fast_presets():
    p = supcon_recipes.preset("fast")
    assert_fast_recipe(p.ce, val_size=0)
    assert p.ce.strategy.options == {"smoothing": 0.2}
    assert (p.pretrain.model, p.pretrain.train.epochs, p.pretrain.train.batch_size) == ("airbench", 20, 512)
    assert p.pretrain.strategy.name == "supcon_pretrain" and not p.pretrain.train.lookahead.enabled
    assert p.pretrain.train.optim.optimizer == "adam" and p.probe.train.epochs == 5


@pytest.mark.parametrize("name", ["ce", "coteach", "coteach_plus", "jocor", "dividemix", "elr", "gce", "sce"])
def test_every_noisy_label_method_has_valid_fast_options(name):
    assert "fast" in get_strategy(name).presets
    make_config(name, get_strategy(name).presets["fast"])


def test_fast_ramps_are_shorter_than_the_schedule():
    assert get_strategy("coteach").presets["fast"] == {"num_gradual": 2}
    dm = get_strategy("dividemix").presets["fast"]
    assert dm["warmup_epochs"] + dm["rampup_epochs"] < 10


def test_fast_noisy_label_study_runs_end_to_end(cifar10, cifar10_dir, session_cache_dir, tmp_path):
    out = tmp_path / "fast"
    argv = ["--preset", "fast", "--model", "airbench_s", "--noise", "0.4", "--methods", "ce,coteach",
            "--epochs", "3", "--batch-size", "100", "--train-size", "600", "--val-size", "100", "--test-size", "400",
            "--data-dir", str(cifar10_dir), "--cache-dir", str(session_cache_dir), "--out", str(out),
            "--figures-dir", str(out / "fig"), "--quiet"]
    assert noisy_labels.main(argv) == 0
    rows = {r["arm"]: r for r in csv.DictReader(open(out / "table.csv"))}
    assert set(rows) == {"clean_ce", "noisy_ce", "noisy_coteach"}
    assert float(rows["clean_ce"]["test_acc_last"]) > 0.2  # 10 classes: chance is 10%
    assert "coteach" in list_strategies()
