"""airbench and the fast recipe's parts, each shown on its own."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from robustlab.data.augment import AugmentConfig, BatchAugment, alternating_flip_mask
from robustlab.errors import UsageError
from robustlab.evaluate import tta_logits
from robustlab.lookahead import Lookahead, LookaheadConfig, averaged_tensors
from robustlab.models import create_model
from robustlab.models.airbench import WHITEN_EPS, patches, whitening_filters
from robustlab.recipes import FAST_DECAY, FAST_LR, apply_fast_recipe
from robustlab.schedules import OptimConfig, build_optimizer, build_scheduler, param_groups, triangle_factor


def correlated_images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 3, 12, 12, generator=g)
    mix = torch.tensor([[1.0, 0.5, 0.2], [0.3, 1.0, 0.1], [0.0, 0.4, 1.0]])
    return torch.einsum("dc,nchw->ndhw", mix, base) * 3 + 0.5


def test_whitening_layer_whitens_its_fitting_patches():
    images = correlated_images()
    model = create_model("airbench", whiten_images=64)
    model.init_whitening(images)
    w = model.whiten.weight
    assert w.shape == (24, 3, 2, 2) and not w.requires_grad
    torch.testing.assert_close(w[12:], -w[:12])  # the negated copies
    rows = patches(images.double(), 2)
    out = rows @ w[:12].double().reshape(12, -1).T   # the first 12 channels, bias excluded
    second_moment = out.T @ out / len(out)
    eig = torch.linalg.eigvalsh(rows.T @ rows / len(rows)).flip(0)
    # Exactly diag(lambda / (lambda + eps)), which is the identity up to eps / lambda.
    torch.testing.assert_close(second_moment, torch.diag(eig / (eig + WHITEN_EPS)), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(second_moment, torch.eye(12, dtype=torch.float64), atol=5e-3, rtol=0)
    assert bool(model.whiten.fitted)


def test_whitening_filters_order_eigenvectors_largest_first():
    images = correlated_images(32, seed=1)
    filters = whitening_filters(images, 2, eps=0.0).double().reshape(24, -1)
    rows = patches(images.double(), 2)
    variances = (rows @ filters[:12].T).pow(2).mean(0)
    torch.testing.assert_close(variances, torch.ones(12, dtype=torch.float64), atol=1e-6, rtol=0)
    raw = (rows @ (filters[:12] / filters[:12].norm(dim=1, keepdim=True)).T).pow(2).mean(0)
    assert torch.all(raw[:-1] >= raw[1:] - 1e-9)  # unnormalised variance along each filter decreases


def test_whitening_set_must_fit_the_training_set_and_is_saved_in_checkpoints(tmp_path):
    model = create_model("airbench_s", whiten_images=10)
    with pytest.raises(UsageError, match=r"whitening set \(10 images\) is larger than the training set \(4\)"):
        model.init_whitening(torch.randn(4, 3, 8, 8))
    with pytest.raises(UsageError, match="whitening set is empty"):
        model.whiten.fit(torch.randn(0, 3, 8, 8))
    model.init_whitening(torch.randn(10, 3, 8, 8))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    fresh = create_model("airbench_s", whiten_images=10)
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    torch.testing.assert_close(fresh.whiten.weight, model.whiten.weight)
    assert bool(fresh.whiten.fitted)


@pytest.mark.parametrize("kwargs, message", [({"width": 0}, "width must be a positive integer, got 0"),
                                             ({"width": 2.5}, "width must be a positive integer, got 2.5"),
                                             ({"whiten_images": 0}, "whiten_images must be a positive integer"),
                                             ({"whiten_bias_epochs": -1}, "whiten_bias_epochs must be an integer >= 0")])
def test_bad_airbench_options_name_themselves(kwargs, message):
    with pytest.raises(UsageError, match=message):
        create_model("airbench", **kwargs)


def test_airbench_layout_and_registry_contract():
    model = create_model("airbench", num_classes=7)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [24, 64, 64, 256, 256, 256, 256]
    assert model.num_features == 256 and model.head.bias is None
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not b.weight.requires_grad and b.bias.requires_grad and b.eps == 1e-12 and b.momentum == 0.4 for b in bns)
    conv = model.body[1].conv1
    torch.testing.assert_close(conv.weight[:24, :, 1, 1], torch.eye(24))  # Dirac: identity on its inputs
    model.init_whitening(torch.randn(5000, 3, 4, 4))
    x = torch.randn(2, 3, 32, 32)
    f = model.forward_features(x)
    assert f.shape == (2, 256)
    torch.testing.assert_close(model(x), model.head(f) / 9)
    assert sum(p.numel() for p in create_model("airbench_s").parameters()) < sum(p.numel() for p in model.parameters()) / 3


def test_whitening_bias_trains_only_in_its_first_epochs():
    model = create_model("airbench_s", whiten_bias_epochs=2)
    for epoch, trains in [(0, True), (1, True), (2, False), (5, False)]:
        model.whiten.begin_epoch(epoch)
        assert model.whiten.bias.requires_grad is trains


def test_norm_lr_scale_reaches_the_optimizer_with_unchanged_decay_strength():
    model = create_model("airbench_s")
    cfg = OptimConfig(lr=2.0, weight_decay=0.01, decoupled_wd=True, norm_lr_scale=64.0)
    opt = build_optimizer(param_groups(model, cfg), cfg)
    main, norms = opt.param_groups
    bn_biases = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in norms["params"]} == bn_biases
    assert bn_biases.isdisjoint(id(p) for p in main["params"])
    assert id(model.whiten.bias) in {id(p) for p in main["params"]}
    assert main["lr"] == 2.0 and norms["lr"] == 128.0
    assert main["weight_decay"] == pytest.approx(0.01 / 2.0) and norms["weight_decay"] == pytest.approx(0.01 / 128.0)
    assert main["lr"] * main["weight_decay"] == pytest.approx(norms["lr"] * norms["weight_decay"])
    plain = build_optimizer(param_groups(model, OptimConfig(lr=2.0, weight_decay=0.01)), OptimConfig(lr=2.0, weight_decay=0.01))
    assert len(plain.param_groups) == 1 and plain.param_groups[0]["weight_decay"] == 0.01


def test_decoupled_decay_shrinks_weights_by_the_fraction_per_step():
    p = nn.Parameter(torch.ones(3))
    cfg = OptimConfig(optimizer="sgd", lr=0.5, momentum=0.0, weight_decay=0.1, decoupled_wd=True)
    opt = build_optimizer([p], cfg)
    p.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.9))


def official_triangle(steps, start, end, peak):
    """Line-by-line numpy port of airbench94.py's triangle()."""
    xp = np.array([0, int(peak * steps), steps])
    fp = np.array([start, 1, end])
    x = np.arange(1 + steps)
    m = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    b = fp[:-1] - (m * xp[:-1])
    indices = np.clip(np.sum(x[:, None] >= xp[None, :], 1) - 1, 0, len(m) - 1)
    return m[indices] * x + b[indices]


@pytest.mark.parametrize("steps", [10, 97, 480])
def test_triangle_schedule_matches_the_official_port(steps):
    ours = [triangle_factor(i, steps, 0.2, 0.23, 0.07) for i in range(steps + 1)]
    np.testing.assert_allclose(ours, official_triangle(steps, 0.2, 0.07, 0.23), rtol=1e-12, atol=1e-12)


def test_triangular_scheduler_drives_the_lr():
    p = nn.Parameter(torch.zeros(1))
    cfg = OptimConfig(lr=2.0, schedule="triangular", triangle=(0.2, 0.5, 0.0))
    opt = build_optimizer([p], cfg)
    sched = build_scheduler(opt, cfg, epochs=2, steps_per_epoch=5)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs, [0.4, 0.72, 1.04, 1.36, 1.68, 2.0, 1.6, 1.2, 0.8, 0.4])
    with pytest.raises(UsageError, match="peak position in"):
        OptimConfig(triangle=(0.2, 1.0, 0.1)).validate()


def test_lookahead_weights_equal_the_formula_after_k_steps():
    net = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    cfg = LookaheadConfig(start_epoch=1, every=2, decay=0.9, power=2.0)
    la = Lookahead(net, cfg)
    total = 8
    ema, w_hist = None, []
    for step in range(1, total + 1):
        epoch = (step - 1) // 4
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * step)  # stands in for an optimizer step
        w = torch.cat([t.detach().flatten().clone() for t in averaged_tensors(net).values()])
        if epoch >= 1 and step % 2 == 0:
            if ema is None:
                ema = w.clone()
            else:
                rho = 0.9 ** 2 * (step / total) ** 2.0
                ema = rho * ema + (1 - rho) * w
                w = ema.clone()
        la.after_step(net, epoch, step, total)
        now = torch.cat([t.detach().flatten() for t in averaged_tensors(net).values()])
        torch.testing.assert_close(now, w, rtol=1e-6, atol=1e-6)
        w_hist.append(now.clone())
    assert la.ema is not None and set(la.ema) == {"p:0.weight", "p:0.bias", "p:1.weight", "p:1.bias",
                                                 "b:1.running_mean", "b:1.running_var"}
    la.end_epoch(net)
    torch.testing.assert_close(torch.cat([t.flatten() for t in averaged_tensors(net).values()]), ema)
    assert not LookaheadConfig().enabled
    with pytest.raises(UsageError, match="lookahead every"):
        LookaheadConfig(start_epoch=1, every=0).validate()


def test_lookahead_leaves_per_sample_buffers_alone():
    class WithMemory(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(1, 1)
            self.register_buffer("targets", torch.zeros(4))
    assert set(averaged_tensors(WithMemory())) == {"p:net.weight", "p:net.bias"}


def test_mirror_translate_tta_averages_exactly_the_listed_views():
    x = torch.randn(3, 2, 5, 5)
    seen = []
    predict = lambda v: (seen.append(v.clone()), v.flatten(1)[:, :4])[1]  # noqa: E731 - a linear probe
    out = tta_logits(predict, x, "mirror_translate")
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    up, down = padded[..., :5, :5], padded[..., 2:, 2:]
    views = [(x, 0.25), (x.flip(3), 0.25), (up, 0.125), (up.flip(3), 0.125), (down, 0.125), (down.flip(3), 0.125)]
    expected = sum(w * v.flatten(1)[:, :4] for v, w in views)
    torch.testing.assert_close(out, expected)
    assert len(seen) == 6


def test_alternating_flip_sees_every_image_both_ways():
    idx = torch.arange(1000)
    m0, m1, m2 = (alternating_flip_mask(idx, e) for e in range(3))
    assert torch.equal(m0, ~m1) and torch.equal(m0, m2)
    assert 0.45 < m0.float().mean() < 0.55
    aug = BatchAugment(AugmentConfig(crop_pad=0, flip=True, flip_mode="alternate"), (0.0,) * 3, (1.0,) * 3)
    images = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8)
    out = aug(images, torch.Generator().manual_seed(0), idx=torch.arange(6), epoch=1)
    mask = alternating_flip_mask(torch.arange(6), 1)
    x = images.float() / 255
    torch.testing.assert_close(out, torch.where(mask[:, None, None, None], x.flip(3), x))
    with pytest.raises(UsageError, match="unknown flip mode"):
        AugmentConfig(flip_mode="sometimes").validate()


def test_fast_recipe_is_airbench94s_numbers():
    from robustlab.config import ExperimentConfig
    cfg = apply_fast_recipe(ExperimentConfig())
    o = cfg.train.optim
    kilostep = 1024 * (1 + 1 / (1 - 0.85))
    assert FAST_LR == pytest.approx(11.5 / kilostep * 1024) and FAST_LR == pytest.approx(1.5, abs=1e-4)
    assert FAST_DECAY == pytest.approx(0.0153 * 1024 / kilostep)
    assert (o.momentum, o.nesterov, o.norm_lr_scale, o.schedule, tuple(o.triangle)) == (0.85, True, 64.0, "triangular",
                                                                                       (0.2, 0.23, 0.07))
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.drop_last, cfg.train.tta) == (1024, 10, True, "mirror_translate")
    la = cfg.train.lookahead
    assert (la.start_epoch, la.every, la.decay, la.power) == (3, 5, 0.95, 3.0)
    assert (cfg.augment.crop_pad, cfg.augment.pad_mode, cfg.augment.flip_mode) == (2, "reflect", "alternate")
    # The official per-step decay of an ordinary weight: lr_official * (wd / lr_official) = wd.
    assert o.lr * (o.weight_decay / o.lr) == pytest.approx(0.0153 * 1024 / kilostep)
    assert math.isclose(o.weight_decay, 0.0019957, rel_tol=1e-4)


def test_default_whitening_set_is_5000_images_or_the_whole_smaller_training_set():
    small = create_model("airbench_s")
    images = correlated_images(40, seed=3)
    small.init_whitening(images)  # fewer than 5,000 images: all of them
    torch.testing.assert_close(small.whiten.weight, whitening_filters(images, 2))
    capped = create_model("airbench_s", whiten_images=30)
    capped.init_whitening(images)
    torch.testing.assert_close(capped.whiten.weight, whitening_filters(images[:30], 2))


def test_fast_recipe_scales_lr_and_decay_with_the_batch():
    from robustlab.config import ExperimentConfig
    cfg = apply_fast_recipe(ExperimentConfig(), epochs=16, batch_size=256)
    o = cfg.train.optim
    assert (cfg.train.epochs, cfg.train.batch_size) == (16, 256)
    assert o.lr == pytest.approx(FAST_LR / 4) and o.weight_decay == pytest.approx(FAST_DECAY / 4)


def test_fast_run_fits_whitening_on_training_images_and_records_its_parts(tiny_cifar10, tmp_path):
    from robustlab.checkpoint import load_checkpoint
    from robustlab.config import Context, DataConfig, ExperimentConfig, StrategyConfig
    from robustlab.data import Normalize
    from robustlab.experiment import run_experiment
    from robustlab.prepare import prepare_data

    cfg = ExperimentConfig(data=DataConfig(dataset="cifar10", val_size=20), model="airbench_s",
                           model_kwargs={"width": 4}, strategy=StrategyConfig("ce", {"smoothing": 0.2}), tag="fast")
    apply_fast_recipe(cfg, epochs=2, batch_size=16)
    cfg.train.lookahead.start_epoch = 1
    ctx = Context(data_dir=str(tiny_cifar10.root), cache_dir=str(tmp_path / "cache"), device="cpu", quiet=True)
    record = run_experiment(cfg, tmp_path / "results", ctx)
    parts = record["recipe_parts"]
    for part in ("sgd nesterov", "schedule triangular (0.2, 0.23, 0.07)", "decoupled weight decay",
                 "normalization-parameter LR x64", "label smoothing 0.2", "lookahead from epoch 1 every 5 steps",
                 "alternating flip", "2-pixel reflect translation", "drop last partial batch", "TTA mirror_translate"):
        assert part in parts
    assert "test_acc_tta" in record["metrics"]
    # The whitening filters are those of the run's own (normalized) training images, never val/test.
    splits = prepare_data(cfg.data, cfg.seed, ctx).splits
    state = load_checkpoint(tmp_path / "results" / "runs" / cfg.run_id / "last.pt")
    weight = next(v for k, v in state["strategy"].items() if k.endswith("whiten.weight"))
    norm = Normalize(splits.mean, splits.std)
    torch.testing.assert_close(weight, whitening_filters(norm(splits.train.images), 2))
    assert state["lookahead"]["ema"] is not None  # the averaged weights travel with the checkpoint
    plain = cfg.train.__class__()
    assert not plain.lookahead.enabled and plain.optim.schedule != "triangular"


def test_fast_recipe_cli_sets_smoothing_for_ce_and_rejects_unknown_recipes(capsys):
    import json

    from robustlab.train import main

    assert main(["--recipe", "fast", "--model", "airbench", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)["config"]
    assert printed["strategy"]["options"] == {"smoothing": 0.2} and printed["train"]["batch_size"] == 1024
    assert printed["train"]["lookahead"]["start_epoch"] == 3 and printed["augment"]["flip_mode"] == "alternate"
    assert main(["--recipe", "fast", "--strategy", "ce", "--strategy-arg", "smoothing=0.1", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["strategy"]["options"] == {"smoothing": 0.1}
    assert main(["--recipe", "turbo", "--print-config"]) == 2
    assert capsys.readouterr().err.strip().endswith("unknown recipe 'turbo'; choose one of default, fast")


def test_fast_recipe_overrides_every_part_of_a_different_recipe():
    from robustlab.config import ExperimentConfig
    from robustlab.settings import LookaheadConfig, OptimConfig
    cfg = ExperimentConfig()
    cfg.train.optim = OptimConfig(optimizer="adam", nesterov=False, schedule="cosine", triangle=(0.5, 0.5, 0.5))
    cfg.train.lookahead = LookaheadConfig(start_epoch=1, every=2, decay=0.5, power=1.0)
    a = cfg.augment
    a.cutout, a.rotate, a.shear, a.zoom, a.jitter = 8, 10.0, 5.0, 0.1, 0.2
    apply_fast_recipe(cfg)
    o, la = cfg.train.optim, cfg.train.lookahead
    assert (o.optimizer, o.nesterov, o.schedule, tuple(o.triangle)) == ("sgd", True, "triangular", (0.2, 0.23, 0.07))
    assert (la.start_epoch, la.every, la.decay, la.power) == (3, 5, 0.95, 3.0)
    assert (a.cutout, a.rotate, a.shear, a.zoom, a.jitter) == (0, 0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("optimizer, nesterov, momentum, word", [
    ("sgd", True, 0.9, "sgd nesterov"), ("sgd", False, 0.9, "sgd"), ("sgd", True, 0.0, "sgd"), ("adam", True, 0.9, "adam")])
def test_recipe_parts_of_a_plain_recipe_name_only_what_runs(optimizer, nesterov, momentum, word):
    from robustlab.config import ExperimentConfig
    from robustlab.recipes import recipe_parts
    from robustlab.settings import OptimConfig
    cfg = ExperimentConfig()
    cfg.train.optim = OptimConfig(optimizer=optimizer, nesterov=nesterov, momentum=momentum, schedule="cosine")
    cfg.train.drop_last, cfg.train.tta = False, "none"
    cfg.augment.flip, cfg.augment.flip_mode, cfg.augment.crop_pad, cfg.augment.pad_mode = True, "random", 4, "zeros"
    assert recipe_parts(cfg) == [word, "schedule cosine", "random flip", "4-pixel zeros translation", "TTA none"]
    cfg.train.optim.norm_lr_scale, cfg.augment.flip = 2.0, False
    assert recipe_parts(cfg, {"smoothing": 0.1}) == [word, "schedule cosine", "normalization-parameter LR x2",
                                                     "label smoothing 0.1", "4-pixel zeros translation", "TTA none"]


def test_lookahead_rho_follows_the_formula_before_the_last_step():
    la = Lookahead(nn.Linear(1, 1), LookaheadConfig(start_epoch=1, every=2, decay=0.9, power=2.0))
    assert la.rho(2, 8) == pytest.approx(0.9 ** 2 * (2 / 8) ** 2)
    assert la.rho(8, 8) == pytest.approx(0.81)


def test_lookahead_epoch_end_copies_the_average_back_and_resumes_from_its_state():
    net = nn.Linear(2, 1)
    la = Lookahead(net, LookaheadConfig(start_epoch=1, every=1, decay=0.5, power=0.0))
    before = [p.detach().clone() for p in net.parameters()]
    la.end_epoch(net)  # no snapshot yet: nothing to copy back
    assert la.ema is None and all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
    la.after_step(net, 1, 1, 4)  # the snapshot
    snapshot = {k: v.clone() for k, v in la.ema.items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # an optimizer step after the last lookahead update
    la.end_epoch(net)  # w <- ema exactly, whatever the steps since
    for (name, p) in net.named_parameters():
        torch.testing.assert_close(p.detach(), snapshot[f"p:{name}"])
    twin = Lookahead(net, LookaheadConfig(start_epoch=1, every=1, decay=0.5, power=0.0))
    twin.load_state_dict(la.state_dict())
    assert twin.ema is la.ema
    assert Lookahead(net, LookaheadConfig()).state_dict() == {"ema": None}
    fresh = Lookahead(net, LookaheadConfig())
    fresh.load_state_dict({})
    assert fresh.ema is None
