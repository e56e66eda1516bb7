"""How training cost grows: seconds per epoch against training-set size, and per strategy against CE.

Both run the real path (robustlab.experiment's data split, strategy registry and augmentation,
robustlab.engine.fit with the default precision policy), one model, no evaluation.
"""
from __future__ import annotations

from robustlab.engine import fit
from robustlab.experiment import (Context, ExperimentConfig, StrategyConfig, build_strategy, default_train_augment,
                                  prepare_data, resolve_device)
from robustlab.data import DeviceLoader, Normalize

# Strategies compared with CE, their options, and the README goal for their cost relative to CE.
STRATEGY_COSTS = {"coteach": ({"forget_rate": 0.2}, 2.1), "supcon_pretrain": ({}, 2.2)}


def epoch_seconds(model: str, train_size: int, ctx: Context, strategy: str = "ce", options: dict | None = None,
                  epochs: int = 2, batch_size: int = 128, precision: str = "auto", seed: int = 0) -> float:
    """The fastest epoch's training seconds (the first one also pays for warm-up) of `strategy`."""
    cfg = ExperimentConfig(model=model, seed=seed, strategy=StrategyConfig(strategy, dict(options or {})))
    cfg.data.train_size, cfg.data.val_size, cfg.data.test_size = train_size, 0, None
    cfg.train.epochs, cfg.train.batch_size, cfg.train.precision, cfg.train.tta = epochs, batch_size, precision, "none"
    device = resolve_device(ctx.device)
    data = prepare_data(cfg.data, seed, ctx)
    splits = data.splits
    strat = build_strategy(cfg, data, device)
    augment = default_train_augment(cfg, splits, strat)
    train = DeviceLoader(splits.train.images, splits.train.labels, batch_size, augment, seed=seed, device=device)
    train_pass = None
    if strat.needs_train_pass:
        train_pass = DeviceLoader(splits.train.images, splits.train.labels, 512, Normalize(splits.mean, splits.std),
                                  shuffle=False, device=device)
    result = fit(strat, train, cfg.train, quiet=True, num_classes=splits.num_classes, train_pass_loader=train_pass)
    return min(row["seconds"] for row in result.history)


def scaling_rows(model: str, sizes: list[int], ctx: Context, epochs: int = 1, batch_size: int = 128) -> list[dict]:
    rows = []
    for n in sizes:
        seconds = epoch_seconds(model, n, ctx, epochs=epochs, batch_size=batch_size)
        rows.append({"model": model, "train_images": n, "seconds_per_epoch": seconds, "img_per_s": n / seconds})
    if rows:
        base = rows[0]
        for r in rows:  # 1.0 = cost grows exactly linearly with the data
            r["per_image_vs_smallest"] = (r["seconds_per_epoch"] / r["train_images"]) / (
                base["seconds_per_epoch"] / base["train_images"])
    return rows


def strategy_cost_rows(model: str, train_size: int, ctx: Context, epochs: int = 2, batch_size: int = 128) -> list[dict]:
    """CE is timed before and after the other strategies and averaged: on a shared machine whose load
    drifts, the bracket keeps the ratios from following the drift."""
    before = epoch_seconds(model, train_size, ctx, "ce", epochs=epochs, batch_size=batch_size)
    others = {name: (epoch_seconds(model, train_size, ctx, name, options, epochs=epochs, batch_size=batch_size), goal)
              for name, (options, goal) in STRATEGY_COSTS.items()}
    after = epoch_seconds(model, train_size, ctx, "ce", epochs=epochs, batch_size=batch_size)
    ce = (before + after) / 2
    rows = [{"strategy": "ce", "seconds_per_epoch": ce, "vs_ce": 1.0, "goal": None, "ce_before_after": [before, after]}]
    for name, (seconds, goal) in others.items():
        rows.append({"strategy": name, "seconds_per_epoch": seconds, "vs_ce": seconds / ce, "goal": goal})
    for r in rows:
        r.update(model=model, train_images=train_size)
    return rows
