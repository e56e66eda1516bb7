"""One run = data + corruption + model + strategy + training recipe, described by a dataclass.

`run_experiment(config, results_dir)` builds everything (robustlab.prepare), trains with
`robustlab.engine.fit`, and writes the run record (robustlab.records); a run whose record exists
is returned without recomputation. The configs live in robustlab.config and are re-exported here.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from robustlab import distributed
from robustlab.config import EVAL_BATCH_SIZE, Context, DataConfig, ExperimentConfig, StrategyConfig
from robustlab.data import DeviceLoader, Normalize
from robustlab.engine import FitResult, fit
from robustlab.loggers import run_loggers
from robustlab.prepare import (PreparedData, build_strategy, default_train_augment, make_loaders, prepare_data,
                               resolve_device)
from robustlab.recipes import recipe_parts
from robustlab.records import environment, find_record, write_record

__all__ = ["EVAL_BATCH_SIZE", "Context", "DataConfig", "ExperimentConfig", "PreparedData", "StrategyConfig",
           "build_strategy", "default_train_augment", "make_loaders", "prepare_data", "reproducibility",
           "resolve_device", "run_experiment"]


def reproducibility() -> dict:
    """What a re-run needs to repeat the numbers bit for bit (`robustlab.train --from-record`):
    deterministic kernels (--deterministic) and, on the CPU, the same number of threads."""
    return {"deterministic": torch.are_deterministic_algorithms_enabled(), "threads": torch.get_num_threads()}


def _dynamics_summary(result: FitResult, run_dir: Path) -> dict | None:
    """Where the per-sample dynamics are and, with label noise, the AUROC of AUM as a mislabel detector."""
    if result.dynamics is None:
        return None
    from robustlab.dynamics import DYNAMICS_FILE, aum_detector_auroc

    summary = {"file": str(run_dir / DYNAMICS_FILE), "epochs": int(len(result.dynamics["loss"]))}
    mislabeled = result.dynamics["labels"] != result.dynamics["clean_labels"]
    if mislabeled.any() and not mislabeled.all():
        summary["aum_auroc"] = aum_detector_auroc(result.dynamics)
    return summary


def run_experiment(cfg: ExperimentConfig, results_dir: str | Path, ctx: Context | None = None,
                   train_augment=None) -> dict:
    """Train one run (or return its existing record) and write its record atomically."""
    ctx = ctx or Context()
    results_dir = Path(results_dir)
    existing = find_record(results_dir, cfg.run_id)
    if existing is not None:
        return existing
    cfg.train.validate()
    device = resolve_device(ctx.device)
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg.data, cfg.seed, ctx)
    strategy = build_strategy(cfg, data, device, results_dir)
    augment = train_augment or default_train_augment(cfg, data.splits, strategy)
    train_loader, val_loader, test_loader = make_loaders(data.splits, cfg.train, augment, cfg.seed, device)
    train_pass = None
    if strategy.needs_train_pass or cfg.train.record_dynamics:  # the whole noisy training set, unaugmented, in dataset order
        train_pass = DeviceLoader(data.splits.train.images, data.splits.train.labels, EVAL_BATCH_SIZE,
                                  Normalize(data.splits.mean, data.splits.std), shuffle=False, device=device)
    if not getattr(strategy, "classifies", True):
        val_loader = test_loader = None  # e.g. contrastive pretraining: accuracies would be meaningless
    run_dir = results_dir / "runs" / cfg.run_id
    last = run_dir / "last.pt"
    if isinstance(ctx.resume, (str, Path)):
        resume = Path(ctx.resume)
    else:
        resume = last if ctx.resume and last.exists() else None
    t0 = time.time()
    loggers = None
    if distributed.current().is_main:  # metrics.csv and event files beside the checkpoints, from rank 0
        loggers = run_loggers(run_dir, ctx.tensorboard,
                              hparams={**cfg.key(), "strategy_options": strategy.options(), "run_id": cfg.run_id},
                              class_names=data.splits.classes)
    try:
        result: FitResult = fit(strategy, train_loader, cfg.train, val_loader, test_loader, run_dir=run_dir,
                                resume=resume, quiet=ctx.quiet, num_classes=data.splits.num_classes,
                                train_pass_loader=train_pass, loggers=loggers,
                                clean_train_labels=data.clean_train_labels)
    finally:
        if loggers is not None:
            loggers.close()
    record = {
        "run_id": cfg.run_id, "config": cfg.key(), "strategy_options": strategy.options(),
        "recipe_parts": recipe_parts(cfg, strategy.options()), "metrics": result.metrics, "best": result.best,
        "history": result.history, "noise": data.noise, "stopped_early": result.stopped_early,
        "num_params": sum(p.numel() for p in strategy.model.parameters()),
        "data": {"train": len(data.splits.train), "val": len(data.splits.val) if data.splits.val else 0,
                 "test": len(data.splits.test), "mean": data.splits.mean, "std": data.splits.std,
                 "classes": data.splits.classes},
        "dynamics": _dynamics_summary(result, run_dir),
        "precision": result.precision, "warnings": result.warnings, "environment": {**environment(), **reproducibility()}, "wall_seconds": time.time() - t0, "checkpoint": str(run_dir / "last.pt"),
    }
    if distributed.current().is_main:
        write_record(results_dir, record)
    distributed.barrier()  # the other ranks may look the record up next (e.g. a probe reading its encoder run)
    return record
