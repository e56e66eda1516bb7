"""Every LR schedule against hand-computed values, and the optimizer/schedule validation."""
from __future__ import annotations

import math
import re
import warnings

import pytest
import torch

from robustlab.errors import UsageError
from robustlab.schedules import (SCHEDULES, OptimConfig, build_optimizer, build_scheduler, steps_per_iteration,
                                 warmup_cosine_factor)


def lr_trace(cfg: OptimConfig, epochs: int, steps_per_epoch: int) -> list[float]:
    """The LR used at each iteration 0 .. epochs * steps_per_epoch - 1, stepping as the engine does."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([param], cfg)
    sched = build_scheduler(opt, cfg, epochs, steps_per_epoch)
    lrs = []
    per_step = steps_per_iteration(cfg)
    for step in range(epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if per_step:
            sched.step()
        elif (step + 1) % steps_per_epoch == 0:
            sched.step(1.0)  # plateau: once per epoch, on a validation loss that never improves
    return lrs


def approx(x):
    return pytest.approx(x, rel=1e-9, abs=1e-12)


def test_every_schedule_is_tested():
    tested = {"constant", "step", "multistep", "cosine", "warmup_cosine", "cosine_restarts", "cyclic", "onecycle", "plateau",
              "triangular"}  # triangular: tests/test_airbench.py
    assert set(SCHEDULES) == tested


def test_constant():
    lrs = lr_trace(OptimConfig(schedule="constant", lr=0.05), 3, 7)
    assert lrs == [0.05] * 21


def test_step_decays_every_step_size_epochs():
    lrs = lr_trace(OptimConfig(schedule="step", lr=0.1, step_size=2, gamma=0.1), 5, 10)
    assert lrs[0] == approx(0.1) and lrs[19] == approx(0.1)
    assert lrs[20] == approx(0.01) and lrs[39] == approx(0.01)
    assert lrs[40] == approx(0.001) and lrs[49] == approx(0.001)


def test_multistep_decays_at_each_milestone():
    lrs = lr_trace(OptimConfig(schedule="multistep", lr=0.2, milestones=[1, 3], gamma=0.5), 4, 10)
    assert lrs[:10] == [approx(0.2)] * 10
    assert lrs[10:30] == [approx(0.1)] * 20
    assert lrs[30:] == [approx(0.05)] * 10


def test_cosine_decays_to_min_lr_over_the_whole_run():
    lrs = lr_trace(OptimConfig(schedule="cosine", lr=0.1), 4, 25)  # T = 100 iterations
    assert lrs[0] == approx(0.1)
    assert lrs[50] == approx(0.05)
    assert lrs[25] == approx(0.05 * (1 + math.cos(math.pi / 4)))
    assert lrs[99] == approx(0.05 * (1 + math.cos(math.pi * 99 / 100)))
    floor = lr_trace(OptimConfig(schedule="cosine", lr=0.1, min_lr=0.02), 4, 25)
    assert floor[50] == approx(0.02 + 0.08 / 2)


def test_warmup_cosine_by_hand():
    # lr 0.1, 2 warm-up epochs x 10 steps = 20 warm-up iterations, 10 epochs = 100 iterations.
    lrs = lr_trace(OptimConfig(schedule="warmup_cosine", lr=0.1, warmup_epochs=2), 10, 10)
    assert lrs[0] == approx(0.1 / 20)      # (step + 1) / warmup
    assert lrs[9] == approx(0.1 * 10 / 20)
    assert lrs[19] == approx(0.1)          # end of warm-up
    assert lrs[20] == approx(0.1)          # cosine starts at the peak
    assert lrs[60] == approx(0.05)         # half-way through the 80 cosine steps
    assert lrs[99] == approx(0.05 * (1 + math.cos(math.pi * 79 / 80)))
    assert max(lrs) == approx(0.1)
    assert warmup_cosine_factor(100, 20, 100) == 0.0 and warmup_cosine_factor(500, 20, 100) == 0.0


def test_warmup_cosine_min_lr_and_no_warmup():
    lrs = lr_trace(OptimConfig(schedule="warmup_cosine", lr=0.1, warmup_epochs=0, min_lr=0.01), 2, 10)
    assert lrs[0] == approx(0.1)
    assert lrs[10] == approx(0.01 + 0.09 * 0.5)  # progress 10 / 20
    assert min(lrs) > 0.01


def test_cosine_restarts_with_doubling_periods():
    # T0 = 1 epoch of 10 steps, T_mult = 2: restarts at 10, 30 and 70.
    lrs = lr_trace(OptimConfig(schedule="cosine_restarts", lr=0.1, t0=1, t_mult=2), 8, 10)
    for restart in (0, 10, 30, 70):
        assert lrs[restart] == approx(0.1)
    for before in (9, 29, 69):
        assert lrs[before] < 0.01
    assert lrs[5] == approx(0.05)   # 5 of 10
    assert lrs[20] == approx(0.05)  # 10 of 20
    assert lrs[50] == approx(0.05)  # 20 of 40
    assert lrs[15] == approx(0.05 * (1 + math.cos(math.pi * 5 / 20)))


def test_cyclic_triangular_between_base_and_max():
    cfg = OptimConfig(schedule="cyclic", lr=0.1, cyclic_base_lr=0.01, cyclic_half_epochs=1.0)
    lrs = lr_trace(cfg, 4, 10)  # half cycle = 10 steps
    assert lrs[0] == approx(0.01) and lrs[20] == approx(0.01) and lrs[40 - 1] == approx(0.01 + 0.09 * 0.1)
    assert lrs[10] == approx(0.1) and lrs[30] == approx(0.1)  # the peak at each half cycle
    assert lrs[5] == approx(0.055) and lrs[15] == approx(0.055)
    assert min(lrs) == approx(0.01) and max(lrs) == approx(0.1)


def test_cyclic_keeps_the_chosen_momentum():
    # Only the LR cycles, so a cyclic arm differs from the other schedules in LR alone.
    cfg = OptimConfig(schedule="cyclic", optimizer="sgd", momentum=0.5, cyclic_half_epochs=1.0)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = build_scheduler(opt, cfg, 2, 10)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["momentum"] == approx(0.5)
    adam = OptimConfig(schedule="cyclic", optimizer="adam", lr=1e-3)
    assert lr_trace(adam, 1, 4)[0] == approx(1e-4)


def test_onecycle_peaks_at_pct_start():
    lrs = lr_trace(OptimConfig(schedule="onecycle", lr=0.1), 10, 10)  # 100 steps, pct_start 0.3
    assert lrs[0] == approx(0.1 / 25)           # max_lr / div_factor
    peak = max(range(100), key=lrs.__getitem__)
    assert peak == 29 and lrs[29] == approx(0.1)
    assert lrs[99] == approx(0.1 / 25 / 1e4)    # initial / final_div_factor
    assert all(a <= b for a, b in zip(lrs[:29], lrs[1:30]))
    assert all(a >= b for a, b in zip(lrs[29:], lrs[30:]))


def test_plateau_drops_after_patience_epochs_without_improvement():
    cfg = OptimConfig(schedule="plateau", lr=0.1, gamma=0.5, plateau_patience=2)
    assert not steps_per_iteration(cfg) and steps_per_iteration(OptimConfig(schedule="cosine"))
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = build_scheduler(opt, cfg, 10, 5)
    lrs = []
    for val_loss in [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5, 0.5]:
        sched.step(val_loss)
        lrs.append(opt.param_groups[0]["lr"])
    # Best at epoch 2; epochs 3, 4, 5 do not improve: the third exceeds patience 2 and halves the LR.
    assert lrs == [approx(v) for v in [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025]]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_keeps_a_positive_finite_lr(schedule):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lrs = lr_trace(OptimConfig(schedule=schedule, lr=0.1, step_size=1, milestones=[1], t0=1), 3, 4)
    assert all(0 < v <= 0.1 + 1e-12 and math.isfinite(v) for v in lrs)


@pytest.mark.parametrize("optimizer, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_build_optimizer_settings(optimizer, cls):
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(optimizer=optimizer, lr=0.3, weight_decay=1e-3))
    assert type(opt) is cls
    assert opt.param_groups[0]["lr"] == 0.3 and opt.param_groups[0]["weight_decay"] == 1e-3
    if optimizer == "sgd":
        assert opt.param_groups[0]["nesterov"] is True and opt.param_groups[0]["momentum"] == 0.9
    no_momentum = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(momentum=0.0))
    assert no_momentum.param_groups[0]["nesterov"] is False  # torch refuses nesterov without momentum


@pytest.mark.parametrize("kwargs, match", [
    ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; choose one of sgd, adam, adamw"),
    ({"schedule": "linear"}, "unknown schedule 'linear'"),
    ({"lr": 0.0}, "learning rate must be > 0"),
    ({"lr": -1.0}, "learning rate must be > 0"),
    ({"lr": float("nan")}, "learning rate must be > 0"),
    ({"lr": float("inf")}, "learning rate must be > 0"),
    ({"weight_decay": -1e-4}, "weight decay"),
    ({"momentum": 1.0}, "momentum"),
    ({"gamma": 0.0}, "gamma"),
    ({"t0": 0}, "cosine restarts"),
    ({"step_size": 0}, "step size"),
    ({"warmup_epochs": -1}, "warm-up"),
])
def test_bad_optimizer_settings_raise_usage_error(kwargs, match):
    with pytest.raises(UsageError, match=match):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(**kwargs))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_no_schedule_changes_the_configured_momentum(schedule, optimizer):
    # --momentum (SGD) and Adam's betas hold at every step: onecycle would otherwise cycle them.
    cfg = OptimConfig(schedule=schedule, optimizer=optimizer, momentum=0.5, cyclic_half_epochs=1.0)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = build_scheduler(opt, cfg, 3, 10)
    before = {k: opt.param_groups[0][k] for k in ("momentum", "betas") if k in opt.param_groups[0]}
    seen = []
    for step in range(30):
        opt.step()
        sched.step() if steps_per_iteration(cfg) else (step + 1) % 10 == 0 and sched.step(1.0)
        seen.append({k: opt.param_groups[0][k] for k in before})
    expected = {"momentum": 0.5} if optimizer == "sgd" else {"betas": (0.9, 0.999)}
    assert before == expected
    assert all(s == expected for s in seen)


def test_warmup_cosine_reaches_min_factor_at_total_even_for_a_one_step_cosine():
    # warm-up 2, total 3: one cosine step; at step 3 (= total) progress is 1, the factor is min_factor
    assert warmup_cosine_factor(2, 2, 3) == 1.0
    assert warmup_cosine_factor(3, 2, 3) == 0.0
    assert warmup_cosine_factor(3, 2, 3, min_factor=0.25) == 0.25
    # all warm-up (total == warmup): no division by zero; a step past the end is at the floor
    assert warmup_cosine_factor(1, 2, 2) == 1.0 and warmup_cosine_factor(3, 2, 2, 0.1) == pytest.approx(0.1)


def test_step_uses_the_configured_gamma():
    lrs = lr_trace(OptimConfig(schedule="step", lr=0.2, step_size=1, gamma=0.5), 3, 4)
    assert lrs == [approx(0.2)] * 4 + [approx(0.1)] * 4 + [approx(0.05)] * 4


@pytest.mark.parametrize("kwargs, message", [
    ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; choose one of sgd, adam, adamw"),
    ({"schedule": "linear"}, "unknown schedule 'linear'; choose one of constant, step, multistep, cosine, "
                             "warmup_cosine, cosine_restarts, cyclic, onecycle, plateau, triangular"),
    ({"lr": 0.0}, "learning rate must be > 0, got 0.0"),
    ({"weight_decay": -1e-4}, "weight decay must be >= 0, got -0.0001"),
    ({"momentum": 1.0}, "momentum must be in [0, 1), got 1.0"),
    ({"momentum": -0.1}, "momentum must be in [0, 1), got -0.1"),
    ({"t0": 0}, "cosine restarts need t0 >= 1 and t_mult >= 1"),
    ({"t_mult": 0}, "cosine restarts need t0 >= 1 and t_mult >= 1"),
    ({"step_size": 0}, "step size must be >= 1 epoch, got 0"),
    ({"gamma": 0.0}, "gamma must be in (0, 1], got 0.0"),
    ({"gamma": 1.5}, "gamma must be in (0, 1], got 1.5"),
    ({"schedule": "plateau", "gamma": 1.0}, "the plateau schedule needs gamma < 1"),
    ({"warmup_epochs": -0.5}, "warm-up epochs must be >= 0"),
])
def test_optimizer_settings_errors_name_the_setting_and_its_range(kwargs, message):
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        OptimConfig(**kwargs).validate()


def test_optimizer_settings_at_their_boundaries_are_accepted():
    for kwargs in [{"lr": 1e-12}, {"weight_decay": 0.0}, {"momentum": 0.0}, {"t0": 1, "t_mult": 1},
                   {"step_size": 1}, {"gamma": 1.0}, {"schedule": "plateau", "gamma": 0.999}, {"warmup_epochs": 0.0}]:
        OptimConfig(**kwargs).validate()


def test_cosine_restarts_floor_at_min_lr():
    lrs = lr_trace(OptimConfig(schedule="cosine_restarts", lr=0.1, min_lr=0.02, t0=1, t_mult=1), 2, 10)
    assert lrs[0] == approx(0.1) and lrs[10] == approx(0.1)
    assert lrs[5] == approx(0.02 + 0.08 * 0.5)  # half-way through a 10-step period
    assert lrs[9] == approx(0.02 + 0.04 * (1 + math.cos(math.pi * 9 / 10)))


def test_cyclic_half_cycle_is_at_least_one_iteration():
    # 0.1 epochs x 4 steps rounds to 0 iterations: the half cycle is 1, so the LR alternates base, max, base, ...
    cfg = OptimConfig(schedule="cyclic", lr=0.1, cyclic_base_lr=0.01, cyclic_half_epochs=0.1)
    assert lr_trace(cfg, 1, 4) == [approx(0.01), approx(0.1), approx(0.01), approx(0.1)]


def test_onecycle_of_a_single_iteration_is_a_two_step_cycle():
    # torch's OneCycleLR needs >= 2 steps: a 1-iteration run gets the 2-step cycle. Its warm-up ends at
    # step pct_start * 2 - 1 = -0.4, so step 0 is already annealing from max_lr to max_lr / 25 / 1e4 (reached at
    # step 1), at the fraction (0 + 0.4) / (1 + 0.4) of the way: lr = min + (max - min) (1 + cos(pi * 0.4 / 1.4)) / 2
    cfg = OptimConfig(schedule="onecycle", lr=0.1)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    sched = build_scheduler(opt, cfg, 1, 1)
    low = 0.1 / 25 / 1e4
    assert opt.param_groups[0]["lr"] == approx(low + (0.1 - low) * (1 + math.cos(math.pi * 0.4 / 1.4)) / 2)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == approx(low)


def test_build_scheduler_refuses_an_unvalidated_unknown_schedule():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig())
    with pytest.raises(UsageError, match=r"^unknown schedule 'linear'$"):
        build_scheduler(opt, OptimConfig(schedule="linear"), 1, 1)
