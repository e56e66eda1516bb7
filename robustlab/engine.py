"""The one training loop every strategy uses: a flat, readable loop with checkpoint and resume.

fit() owns the optimizer, LR schedule, the precision policy (robustlab.precision), early stopping,
the best checkpoint, a resumable checkpoint after every epoch, and the per-epoch history.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from robustlab import distributed
from robustlab.checkpoint import load_checkpoint, save_checkpoint
from robustlab.dynamics import DYNAMICS_FILE, DynamicsRecorder
from robustlab.errors import UsageError, require
from robustlab.evaluate import classification_metrics, collect_logits, l2_term
from robustlab.loggers import as_logger, log_final_results
from robustlab.lookahead import Lookahead
from robustlab.precision import resolve_precision
from robustlab.schedules import build_optimizer, build_scheduler, param_groups, steps_per_iteration
from robustlab.settings import TrainConfig  # noqa: F401  (re-exported)
from robustlab.strategies.base import Strategy


class TrainingDiverged(UsageError):
    """The loss or the predictions became NaN or inf; the last good checkpoint is kept."""


def _diverged(what: str, lr: float, run_dir: Path | None) -> TrainingDiverged:
    """The error for a diverged run: what went non-finite and when, where the last good weights are, what to try."""
    where = f"; last good checkpoint: {run_dir / 'last.pt'}" if run_dir and (run_dir / "last.pt").exists() else ""
    return TrainingDiverged(f"training diverged: {what}{where}; try a lower learning rate than {lr:g} (--lr)")


def _finite_logits(logits: torch.Tensor, labels: torch.Tensor, split: str, epoch: int, lr: float, run_dir):
    """(logits, labels) unchanged, or TrainingDiverged naming the split and epoch whose predictions are NaN/inf."""
    if not bool(torch.isfinite(logits).all()):
        raise _diverged(f"the {split} predictions became NaN or inf after epoch {epoch + 1}", lr, run_dir)
    return logits, labels


@dataclass
class FitResult:
    history: list[dict]
    metrics: dict          # final test metrics (last epoch weights)
    best: dict             # epoch and metrics of the best checkpoint
    seconds: float
    stopped_early: bool = False
    precision: dict = field(default_factory=dict)  # the resolved policy (Precision.describe())
    warnings: list[str] = field(default_factory=list)  # what the run record should flag (e.g. warmup_warning)
    dynamics: dict | None = None  # with record_dynamics: robustlab.dynamics arrays (loss, margin, labels, ...)


def warmup_warning(strategy: Strategy, epochs: int) -> str | None:
    """The warning for a run that never leaves the strategy's warm-up (strategy.warmup_length() >= epochs), else None."""
    warmup = strategy.warmup_length()
    if warmup < epochs:
        return None
    return (f"strategy {strategy.name or type(strategy).__name__!r} never leaves its warm-up: {warmup} warm-up "
            f"epoch(s) and the run trains {epochs}, so the method itself never acts (raise --epochs above {warmup} "
            f"or shorten the warm-up)")


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def fit(strategy: Strategy, train_loader, cfg: TrainConfig, val_loader=None, test_loader=None,
        run_dir: str | Path | None = None, resume: str | Path | None = None, quiet: bool = False,
        num_classes: int | None = None, train_pass_loader=None, loggers=None,
        clean_train_labels: torch.Tensor | None = None) -> FitResult:
    """Train `strategy` and return its history and final test metrics.

    `train_pass_loader` (the whole training set, unaugmented) is handed to the strategy's
    `on_train_pass` before every epoch when the strategy sets `needs_train_pass`.

    With `cfg.record_dynamics`, after every epoch the strategy's predictor (eval mode, no grad)
    scores `train_pass_loader` and each image's loss and margin against its assigned label are
    appended to `run_dir/dynamics.npz` (robustlab.dynamics), with `clean_train_labels` beside
    them when given (measurement only: which samples are mislabeled).

    `loggers` (a `robustlab.loggers.RunLogger` or a list of them) get every history row as its
    epoch ends and, at the end, the final metrics, figures and training config; the caller closes them.

    `resume` is a checkpoint path; training continues after its last finished epoch and, on CPU
    with a fixed seed, ends with exactly the weights of an uninterrupted run.
    """
    cfg.validate()
    notes = [w for w in [warmup_warning(strategy, cfg.epochs)] if w]
    for note in notes if distributed.current().is_main else ():
        print(f"warning: {note}", file=sys.stderr, flush=True)  # even when quiet: the run is not what was asked
    device = train_loader.device
    cuda = device.type == "cuda"
    strategy.to(device)
    precision = resolve_precision(cfg.precision, device, cfg.channels_last, strategy)
    precision.prepare(strategy)
    if cfg.compile:
        for module in strategy.children():
            module.compile()
    autocast = precision.autocast if precision.bf16 else None
    info = distributed.current()
    train_module = distributed.wrap_for_training(strategy, device) if info.enabled else strategy
    if not info.is_main:  # only rank 0 writes checkpoints and logs
        run_dir, quiet = None, True
    logger = as_logger(loggers) if info.is_main else None
    params = [p for p in strategy.parameters() if p.requires_grad]
    require(len(params) > 0, "the strategy has no trainable parameters")
    optimizer = build_optimizer(param_groups(strategy, cfg.optim), cfg.optim)
    lookahead = Lookahead(strategy, cfg.lookahead)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.epochs, len(train_loader))
    per_step = steps_per_iteration(cfg.optim)
    run_dir = Path(run_dir) if run_dir else None
    num_classes = num_classes or _infer_classes(strategy)
    if cfg.record_dynamics:
        require(strategy.classifies, f"record_dynamics needs a classifier; strategy {strategy.name!r} does not classify")
        require(train_pass_loader is not None, "record_dynamics needs a pass over the training set: "
                                               "give fit() a train_pass_loader (unaugmented, dataset order)")

    history: list[dict] = []
    best = {"epoch": -1, "score": -math.inf}
    start_epoch, stale, elapsed = 0, 0, 0.0
    if resume:
        state = load_checkpoint(resume, map_location=device)
        require({"optimizer", "scheduler", "epoch", "config"} <= state.keys(),
                f"{resume} is not a resumable checkpoint (use the run's last.pt)")
        require(state["config"] == asdict(cfg), f"{resume} was written with a different training config")
        try:
            strategy.load_state_dict(state["strategy"])
        except RuntimeError as exc:
            raise UsageError(f"{resume} does not fit this model ({str(exc).splitlines()[0]})") from None
        optimizer.load_state_dict(state["optimizer"])
        lookahead.load_state_dict(state.get("lookahead") or {})
        scheduler.load_state_dict(state["scheduler"])
        history, best, stale, elapsed = state["history"], state["best"], state["stale"], state["elapsed"]
        start_epoch = state["epoch"] + 1
        torch.set_rng_state(state["rng_cpu"].cpu())  # RNG states must be CPU byte tensors
        if cuda and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"].cpu())
        stopped_early = state.get("stopped_early", False)
        _log(f"resumed from {resume} after epoch {start_epoch}", quiet)

    if not resume:
        stopped_early = False
    dynamics = None
    if cfg.record_dynamics and info.is_main:
        dynamics = DynamicsRecorder(run_dir / DYNAMICS_FILE if run_dir else None, train_pass_loader.labels,
                                    clean_train_labels, resume_epochs=start_epoch, capacity=cfg.epochs)
    for epoch in range(start_epoch, cfg.epochs if not stopped_early else start_epoch):
        t0 = time.perf_counter()
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        row.update(_train_epoch(strategy, train_module, train_loader, optimizer, scheduler if per_step else None,
                                cfg, epoch, autocast, quiet, run_dir, train_pass_loader, precision, lookahead))
        lookahead.end_epoch(strategy)
        seconds = time.perf_counter() - t0
        row.update(seconds=seconds, images_per_s=row.pop("_samples") / seconds)
        elapsed += seconds
        strategy.eval()
        if val_loader is not None:
            val = _finite_logits(*collect_logits(strategy.predict, val_loader, autocast=autocast), "validation", epoch,
                                 cfg.optim.lr, run_dir)
            row.update(classification_metrics(*val, num_classes, prefix="val_"))
        if test_loader is not None:
            row.update(_test_metrics(strategy, test_loader, num_classes, autocast, epoch, cfg.optim.lr, run_dir))
        if dynamics is not None:  # written before last.pt: a resumed run never lacks a checkpointed epoch's row
            dynamics.add_epoch(collect_logits(strategy.predict, train_pass_loader, autocast=autocast)[0])
        if info.enabled:  # one set of numbers drives every rank's schedule and early stopping
            row = distributed.broadcast_object(row)
        if not per_step:
            scheduler.step(row.get("val_loss", row["train_loss"]))
        row.update(strategy.epoch_metrics())
        history.append(row)
        if logger is not None:
            logger.log_epoch(row)
        _log(_summary(row, cfg.epochs), quiet)

        # Model selection never looks at the test split: validation accuracy, else training loss.
        score = row.get("val_acc", -row["train_loss"])
        improved = score > best["score"]
        if improved:
            best = {"epoch": epoch + 1, "score": score, **{k: v for k, v in row.items() if k.startswith(("val_", "test_"))}}
            stale = 0
        else:
            stale += 1
        if run_dir is not None:
            if improved:
                save_checkpoint(run_dir / "best.pt", {"strategy": strategy.state_dict(), "epoch": epoch, "best": best})
            save_checkpoint(run_dir / "last.pt", {
                "strategy": strategy.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history, "best": best,
                "stale": stale, "elapsed": elapsed, "rng_cpu": torch.get_rng_state(),
                "stopped_early": cfg.early_stop_patience > 0 and val_loader is not None and stale >= cfg.early_stop_patience,
                "rng_cuda": torch.cuda.get_rng_state() if cuda else None, "config": asdict(cfg),
                "lookahead": lookahead.state_dict()})
        if cfg.early_stop_patience and val_loader is not None and stale >= cfg.early_stop_patience:
            _log(f"early stop: no validation improvement for {stale} epochs", quiet)
            stopped_early = True
            break

    metrics = {}
    if test_loader is not None:
        strategy.eval()
        logits, labels = collect_logits(strategy.predict, test_loader, autocast=autocast)
        metrics = classification_metrics(logits, labels, num_classes, prefix="test_", full=True)
        l2 = l2_term(strategy.model)
        metrics["l2_sum"] = l2
        # Cost as in report 000: loss + lambda * sum(W^2) over conv/linear kernels, with
        # lambda = weight_decay / 2 (SGD's weight decay is the gradient of that penalty; the
        # optimizer also decays biases and norm parameters, which the cost leaves out).
        metrics["test_cost"] = metrics["test_loss"] + cfg.optim.weight_decay / 2 * l2
        if cfg.tta != "none":
            tta_logits, tta_labels = collect_logits(strategy.predict, test_loader, tta=cfg.tta, autocast=autocast)
            metrics["test_acc_tta"] = classification_metrics(tta_logits, tta_labels, num_classes)["acc"]
        for name, module in strategy.extra_predictors().items():
            module.eval()
            extra = _finite_logits(*collect_logits(module, test_loader, autocast=autocast), f"test ({name})",
                                   len(history) - 1, cfg.optim.lr, run_dir)
            metrics.update(classification_metrics(*extra, num_classes, prefix=f"test_{name}_"))
        metrics["test_acc_best"] = max(r["test_acc"] for r in history)
    if history:
        metrics["train_seconds"] = elapsed
        metrics["images_per_s"] = sum(r["images_per_s"] for r in history) / len(history)
    if logger is not None:
        log_final_results(logger, metrics, asdict(cfg), *((logits, labels) if test_loader is not None else ()))
    return FitResult(history, metrics, best, elapsed, stopped_early, precision.describe(), notes,
                     dynamics.arrays() if dynamics is not None else None)


NO_BAD_STEP = 2 ** 62  # "no non-finite loss yet": larger than any step, so a min over ranks finds the first bad one


def _train_epoch(strategy, train_module, loader, optimizer, scheduler, cfg, epoch, autocast, quiet, run_dir,
                 train_pass_loader=None, precision=None, lookahead=None) -> dict:
    """One epoch; `train_module` is the strategy itself or its DDP wrapper (forward = train_step)."""
    if strategy.needs_train_pass:
        require(train_pass_loader is not None, f"strategy {strategy.name!r} needs a pass over the training set "
                                               "each epoch: give fit() a train_pass_loader")
        strategy.eval()
        with torch.no_grad(), autocast() if autocast else contextlib.nullcontext():
            strategy.on_train_pass(epoch, train_pass_loader)
    strategy.train()
    for module in strategy.modules():  # layers with an epoch schedule of their own (airbench's whitening bias)
        if module is not strategy and hasattr(module, "begin_epoch"):
            module.begin_epoch(epoch)
    strategy.on_epoch_start(epoch, cfg.epochs)
    loader.set_epoch(epoch)
    device = loader.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = torch.zeros((), device=device)
    counted = torch.zeros((), device=device)
    bad_step = torch.full((), NO_BAD_STEP, device=device, dtype=torch.long)
    bar = None
    if not quiet:
        from tqdm import tqdm
        bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr)
    for step, (x, y, idx) in enumerate(loader):
        if precision is not None:
            x = precision.format_input(x)
        with autocast() if autocast else contextlib.nullcontext():
            out = train_module(x, y, idx, epoch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
        optimizer.step()
        strategy.after_step()
        if scheduler is not None:
            scheduler.step()
        if lookahead is not None:
            lookahead.after_step(strategy, epoch, epoch * len(loader) + step + 1, cfg.epochs * len(loader))
        loss = out.loss.detach().float()
        # Record the first non-finite step on the device: no per-step host sync.
        bad_step = torch.where((bad_step == NO_BAD_STEP) & ~torch.isfinite(loss), torch.full_like(bad_step, step), bad_step)
        n = len(y)
        loss_sum += loss * n
        seen += n
        if out.logits is not None:
            targets = out.targets if out.targets is not None else y
            correct += (out.logits.detach().argmax(1) == targets).sum()
            counted += len(targets)
        if (step + 1) % cfg.nan_check_every == 0 or step + 1 == len(loader):
            distributed.all_reduce_min(bad_step)  # every rank stops together, naming the first bad step of any rank
            if int(bad_step) != NO_BAD_STEP:
                raise _diverged(f"the loss became NaN or inf at epoch {epoch + 1}, step {int(bad_step) + 1}",
                                cfg.optim.lr, run_dir)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    distributed.all_reduce_sum(loss_sum, correct, seen, counted)
    row = {"train_loss": (loss_sum / seen.clamp(min=1)).item(), "_samples": int(seen)}
    if counted > 0:
        row["train_acc"] = (correct / counted).item()
    return row


def _test_metrics(strategy: Strategy, loader, num_classes: int, autocast, epoch: int, lr: float, run_dir) -> dict:
    logits = _finite_logits(*collect_logits(strategy.predict, loader, autocast=autocast), "test", epoch, lr, run_dir)
    return classification_metrics(*logits, num_classes, prefix="test_")


def _infer_classes(strategy: Strategy) -> int:
    head = getattr(strategy.model, "head", None)
    out = getattr(head, "out_features", None)
    if out is None and head is not None:
        linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
        out = linears[-1].out_features if linears else None
    if out is None:
        raise UsageError("cannot infer the number of classes; pass num_classes to fit()")
    return out


def _summary(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", f"lr {row['lr']:.4g}", f"train_loss {row['train_loss']:.4f}"]
    for key in ("train_acc", "val_acc", "test_acc", "label_precision"):
        if key in row:
            parts.append(f"{key} {row[key]:.4f}")
    parts.append(f"{row['seconds']:.1f}s ({row['images_per_s']:.0f} img/s)")
    return " | ".join(parts)
