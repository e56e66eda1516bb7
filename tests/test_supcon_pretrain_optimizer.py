"""SupCon pretraining takes the user's momentum settings, and the paper preset's step matches the official recipe."""
from __future__ import annotations

import pytest
import torch

from robustlab.schedules import build_optimizer
from studies.supcon import build_parser, configure, preset


def test_no_nesterov_and_momentum_reach_the_pretraining_optimizer(tmp_path):
    p, _ = configure(build_parser().parse_args(["--out", str(tmp_path), "--preset", "paper", "--no-nesterov",
                                                "--momentum", "0.5"]))
    for stage in (p.pretrain, p.ce, p.probe):
        assert stage.train.optim.nesterov is False and stage.train.optim.momentum == 0.5
    group = build_optimizer([torch.nn.Parameter(torch.zeros(1))], p.pretrain.train.optim).param_groups[0]
    assert group["nesterov"] is False and group["momentum"] == 0.5


def test_paper_preset_takes_the_official_sgd_step():
    # Official SupContrast: lr 0.5 at batch 1024, weight decay 1e-4, loss x T/0.07. pytorch-metric-learning's
    # loss lacks that factor, so lr x 0.1/0.07 and weight decay x 0.07/0.1 give the same update at batch 512.
    optim = preset("paper").pretrain.train.optim
    official_lr = 0.5 * 512 / 1024
    assert optim.lr == pytest.approx(official_lr * 0.1 / 0.07, rel=2e-3)
    assert optim.lr * optim.weight_decay == pytest.approx(official_lr * 1e-4, rel=2e-3)  # decay step unchanged


def test_paper_preset_pretraining_optimizer_and_warmup_cosine_schedule():
    """SGD with momentum 0.9 (official SupContrast), the preset's lr / weight decay, 10 linear warm-up
    epochs to the peak and a cosine decay to 0 at epoch 200, stepped per iteration."""
    import math

    from robustlab.schedules import build_scheduler

    cfg = preset("paper").pretrain.train
    assert cfg.epochs == 200 and cfg.batch_size == 512
    assert cfg.optim.schedule == "warmup_cosine" and cfg.optim.warmup_epochs == 10 and cfg.optim.min_lr == 0.0
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.optim)
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert group["nesterov"] is False  # the official SupContrast optimizer is plain momentum SGD
    assert group["momentum"] == 0.9 and group["weight_decay"] == pytest.approx(7e-5) and group["lr"] == 0.357
    steps = 3  # iterations per epoch
    sched = build_scheduler(opt, cfg.optim, cfg.epochs, steps)
    lrs = []
    for _ in range(cfg.epochs * steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    warm, total = 10 * steps, cfg.epochs * steps
    for t in (0, 1, warm - 1):  # linear warm-up: (t + 1) / warm of the peak
        assert lrs[t] == pytest.approx(0.357 * (t + 1) / warm)
    for t in (warm, warm + 7, (warm + total) // 2, total - 1):  # cosine over the remaining iterations
        assert lrs[t] == pytest.approx(0.357 * 0.5 * (1 + math.cos(math.pi * (t - warm) / (total - warm))))
    assert max(lrs) == pytest.approx(0.357)
