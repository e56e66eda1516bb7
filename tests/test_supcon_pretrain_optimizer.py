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
