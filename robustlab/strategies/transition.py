"""The noise transition matrix T of the loss-correction strategies (forward_t, backward_t):
where it comes from, how it is checked, and the options they share.

T[i, j] = P(noisy label = j | true class = i): K x K, rows = true class, columns = noisy class,
every row a probability distribution. Three sources (`t_source`):

- `oracle`: the realised noise of the run's training labels (the empirical matrix of clean vs
  noisy labels, robustlab.corruptions.noise_report); the clean labels are an oracle, so records
  and tables name it so;
- `file`: a `.npy` (read without pickles) or `.csv` (comma-separated, one row per line) file;
- `estimate`: the same file reading, for a T estimated from the noisy data alone; give the `T.npy`
  that `python -m robustlab.labelissues` writes as `t_file`. The record says `estimate`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from robustlab.errors import UsageError, require
from robustlab.strategies.base import StepOutput, Strategy

T_SOURCES = ("oracle", "file", "estimate")
ROW_SUM_ATOL = 1e-3   # rows written with 4 decimals still pass; they are then renormalized exactly
SINGULAR_COND = 1e10  # condition number from which T counts as singular (its inverse is meaningless)
CLIP_EPS = 1e-7       # Keras' epsilon: the official code clips probabilities to [eps, 1 - eps]


@dataclass
class TransitionConfig:
    t_source: str = "oracle"   # oracle (realised noise) | file | estimate
    t_file: str | None = None  # .npy or .csv with T, for t_source file or estimate

    def validate(self) -> None:
        require(self.t_source in T_SOURCES,
                f"t_source must be one of {', '.join(T_SOURCES)}, got {self.t_source!r}")
        if self.t_source == "oracle":
            require(self.t_file is None, f"t_file is read only with t_source=file or estimate, not {self.t_source}")
        else:
            require(self.t_file is not None,
                    f"t_source={self.t_source} needs t_file=PATH (.npy or .csv"
                    + ("; robustlab.labelissues writes T.npy)" if self.t_source == "estimate" else ")"))
            load_transition(self.t_file)


def check_transition(t, what: str, num_classes: int | None = None) -> np.ndarray:
    """`t` as a float64 K x K row-stochastic matrix (rows renormalized to sum to exactly 1), or a
    UsageError naming `what` and the problem."""
    t = np.asarray(t, dtype=np.float64)
    require(t.ndim == 2 and t.shape[0] == t.shape[1] and t.shape[0] >= 2,
            f"{what}: the transition matrix must be square K x K with K >= 2, got shape {t.shape}")
    if num_classes is not None:
        require(t.shape[0] == num_classes,
                f"{what}: the transition matrix is {t.shape[0]}x{t.shape[1]}, the dataset has {num_classes} classes")
    require(bool(np.isfinite(t).all()), f"{what}: the transition matrix has NaN or inf entries")
    require(bool((t >= 0).all()), f"{what}: the transition matrix has negative entries (min {t.min():.4g})")
    sums = t.sum(1)
    bad = np.flatnonzero(np.abs(sums - 1) > ROW_SUM_ATOL)
    if bad.size:
        raise UsageError(f"{what}: every row of the transition matrix must sum to 1 "
                         f"(row {bad[0]} sums to {sums[bad[0]]:.4g})")
    return t / sums[:, None]


def load_transition(path: str | Path, num_classes: int | None = None) -> np.ndarray:
    """T from a `.npy` (no pickles) or `.csv` file, checked by `check_transition`."""
    path = Path(path)
    require(path.suffix.lower() in (".npy", ".csv"), f"t_file {path}: use a .npy or .csv file")
    require(path.is_file(), f"t_file {path} does not exist")
    try:
        if path.suffix.lower() == ".npy":
            t = np.load(path, allow_pickle=False)
        else:
            t = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"t_file {path} is not a readable matrix ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return check_transition(t, f"t_file {path}", num_classes)


def oracle_transition(ctx) -> np.ndarray:
    """The realised noise's empirical T from the build context; identity without label noise.
    A class absent from the training labels gets an identity row (nothing is known of it)."""
    k = ctx.num_classes
    if ctx.noise_transition is None:
        return np.eye(k)
    t = np.asarray(ctx.noise_transition, dtype=np.float64)
    require(t.shape == (k, k), f"the realised noise's transition matrix is {t.shape}, the dataset has {k} classes")
    empty = t.sum(1) == 0
    t[empty] = np.eye(k)[empty]
    return check_transition(t, "the realised noise (oracle)", k)


def resolve_transition(config: TransitionConfig, ctx) -> np.ndarray:
    """T for `config`'s source, K x K for the run's classes."""
    if config.t_source == "oracle":
        return oracle_transition(ctx)
    return load_transition(config.t_file, ctx.num_classes)


def require_invertible(t: np.ndarray, what: str) -> np.ndarray:
    """T^-1, or a UsageError when T is singular (backward correction needs the inverse)."""
    cond = np.linalg.cond(t)
    require(np.isfinite(cond) and cond < SINGULAR_COND,
            f"{what}: the transition matrix is singular (condition number {cond:.3g}); backward correction "
            "needs an invertible T (use forward_t)")
    return np.linalg.inv(t)


def describe_source(config: TransitionConfig) -> str:
    return {"oracle": "oracle (realised noise)", "file": f"file {config.t_file}",
            "estimate": f"estimate {config.t_file}"}[config.t_source]


class TransitionCorrected(Strategy):
    """One network trained with a loss corrected by T (a buffer, so it is checkpointed with the
    weights); subclasses give `corrected_loss(logits, y)` per sample."""

    Config = TransitionConfig
    presets: ClassVar[dict[str, dict]] = {"quick": {}, "paper": {}, "fast": {}}  # T's source is the user's choice

    def __init__(self, model: nn.Module, transition):
        super().__init__()
        self.model = model
        self.register_buffer("transition", torch.as_tensor(check_transition(transition, f"{self.name or 'T'}"),
                                                           dtype=torch.float32))
        self.source = "given"

    @classmethod
    def build(cls, config: TransitionConfig, ctx):
        strategy = cls(ctx.new_model(), resolve_transition(config, ctx))
        strategy.source = describe_source(config)
        return strategy

    def options(self) -> dict:
        t = self.transition.double().cpu().numpy()
        return {**super().options(), "t_origin": self.source, "t_diagonal_mean": float(np.diag(t).mean())}

    def corrected_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        logits = self.model(x)
        return StepOutput(self.corrected_loss(logits, y).mean(), logits)
