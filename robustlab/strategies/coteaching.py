"""Co-Teaching (Han et al., NeurIPS 2018): two networks teach each other with small-loss samples.

At epoch T each network ranks the batch by its own per-sample loss and keeps the fraction
R(T) = 1 - forget_rate(T) with the smallest losses; each network is then updated on the samples
its *peer* kept. Two ramps of the forget rate over the first Tk epochs:

- "official" (default), the official code's `rate_schedule` (bhanML/Co-teaching, also in
  xingruiyu/coteaching_plus and hongxin001/JoCoR): `np.linspace(0, tau ** c, Tk)` for epochs
  0..Tk-1, then tau. It reaches tau ** c at epoch Tk - 1, one epoch before the paper's formula
  (c = 1: tau * T / (Tk - 1)); with c != 1 the ramp is still linear (to tau ** c, then a step to tau).
- "paper": R(T) = 1 - tau * min(T / Tk, 1) ** c (Han et al. 2018, sec. 3 and the sensitivity
  analysis of c).

The paper sets tau to the known noise rate. Here tau is a given fraction, `forget_rate="estimate"`
(the noise rate that confident learning estimates from K-fold out-of-fold predictions on the noisy
labels alone, `robustlab.labelissues`), or by default the realised noise rate, which only an
oracle knows; the run record's `strategy_options.forget_rate_source` says which (given, estimate,
oracle). The same holds for Co-teaching+ and JoCoR.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import UsageError, require
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.registry import register_strategy
from robustlab.strategies.selection import SelectionMeter


RAMPS = ("official", "paper")


def forget_rate(epoch: int, tau: float, num_gradual: int, exponent: float = 1.0, ramp: str = "official") -> float:
    """Fraction of each batch dropped at (0-based) epoch `epoch` (Tk = num_gradual, c = exponent).

    official: element `epoch` of np.linspace(0, tau ** c, Tk) while epoch < Tk, else tau;
    computed as numpy does (step (tau ** c) / (Tk - 1) times epoch, the last point exactly tau ** c),
    so the kept counts int((1 - rate) * batch) agree with the official code's to the sample.
    paper: tau * min(epoch / Tk, 1) ** c.
    """
    if ramp == "paper":
        return tau if num_gradual <= 0 else tau * min(epoch / num_gradual, 1.0) ** exponent
    require(ramp == "official", f"ramp must be one of {', '.join(RAMPS)}, got {ramp!r}")
    if epoch >= num_gradual:
        return tau
    top = tau ** exponent
    if epoch == num_gradual - 1:  # numpy sets the last point to `stop` exactly (and linspace(0, x, 1) = [0])
        return top if num_gradual > 1 else 0.0
    return epoch * (top / (num_gradual - 1))


def remember_rate(epoch: int, tau: float, num_gradual: int, exponent: float = 1.0, ramp: str = "official") -> float:
    """R(T): the fraction of each batch that is kept."""
    return 1.0 - forget_rate(epoch, tau, num_gradual, exponent, ramp)


def cross_update_indices(loss1: torch.Tensor, loss2: torch.Tensor, num_remember: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (indices to update net1 on, indices to update net2 on).

    Net 1 learns from the `num_remember` samples with the smallest loss under net 2, and vice versa.
    """
    keep1 = torch.argsort(loss1)[:num_remember]  # net 1's small-loss picks
    keep2 = torch.argsort(loss2)[:num_remember]
    return keep2, keep1


class EnsembleLogits(nn.Module):
    """Log of the mean softmax of two networks, usable wherever logits are expected."""

    def __init__(self, net1: nn.Module, net2: nn.Module):
        super().__init__()
        self.nets = nn.ModuleList([net1, net2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([n(x).float().softmax(1) for n in self.nets]).mean(0)
        return probs.clamp_min(1e-12).log()


FORGET_RATE_MODES = ("estimate", "oracle")


@dataclass
class CoTeachingConfig:
    # tau: a fraction; None or "oracle" = the realised noise rate of the training labels (an oracle);
    # "estimate" = the noise rate estimated from the noisy labels alone (K-fold confident learning,
    # robustlab.labelissues.noise_rate_for_run, cached per data set, noise and seed in the results folder)
    forget_rate: float | str | None = None
    num_gradual: int = 10             # Tk: epochs to reach tau
    exponent: float = 1.0             # c: the official ramp ends at tau ** c; the paper's is tau * (T / Tk) ** c
    ramp: str = "official"            # "official" (np.linspace(0, tau ** c, Tk)) or "paper" (tau * min(T / Tk, 1) ** c)

    def __post_init__(self) -> None:
        if isinstance(self.forget_rate, str) and self.forget_rate not in FORGET_RATE_MODES:
            try:  # a number typed on the command line (--strategy-arg forget_rate=0.2)
                self.forget_rate = float(self.forget_rate)
            except ValueError:
                pass

    def validate(self) -> None:
        require(self.forget_rate is None or self.forget_rate in FORGET_RATE_MODES
                or (not isinstance(self.forget_rate, str) and 0.0 <= self.forget_rate < 1.0),
                f"forget_rate must be in [0, 1), 'estimate' or 'oracle', got {self.forget_rate!r}")
        require(self.num_gradual >= 0, f"num_gradual must be >= 0, got {self.num_gradual}")
        require(self.exponent > 0, f"exponent must be > 0, got {self.exponent}")
        require(self.ramp in RAMPS, f"ramp must be one of {', '.join(RAMPS)}, got {self.ramp!r}")


def resolve_forget_rate(configured: float | str | None, ctx, name: str) -> tuple[float, str]:
    """(rate, source): a given fraction ("given"); the noise rate estimated from the noisy labels
    ("estimate", through ctx.estimate_noise_rate); else the realised noise rate ("oracle": a user
    without clean labels does not have it)."""
    if configured == "estimate":
        estimate = getattr(ctx, "estimate_noise_rate", None)
        if estimate is None:
            raise UsageError(f"{name}: forget_rate='estimate' needs the run's data and results folder to estimate "
                             "the noise rate; run it through robustlab.experiment or a study, or pass a fraction")
        rate, source = estimate(), "estimate"
        if not rate > 0:
            raise UsageError(f"{name}: the estimated noise rate is {rate:.4g}, nothing to forget; "
                             "pass forget_rate=<fraction>")
        return float(rate), source
    if configured is not None and configured != "oracle":
        return float(configured), "given"
    rate = ctx.noise_rate
    if not rate:
        raise UsageError(f"{name} needs a forget rate: train on noisy labels or pass forget_rate=<fraction>")
    return float(rate), "oracle"


@register_strategy("coteach")
class CoTeaching(Strategy):
    """Co-Teaching (Han et al. 2018): two networks cross-update on each other's small-loss samples.

    Pass `clean_labels` (indexed by the loader's sample indices) to record label precision, the
    fraction of kept samples whose label is clean, and label recall, the fraction of the batches'
    clean-labelled samples that were kept (measurement only).

    Deviations from the official code (bhanML/Co-teaching): each network's loss is the mean
    cross-entropy over the samples its peer kept; the official `loss_coteaching` returns that mean
    divided by num_remember once more (`torch.sum(mean) / num_remember`), i.e. num_remember times
    smaller (with Adam, the official optimiser, which ignores a constant gradient scale up to its eps, the
    updates are nearly the same; with SGD the official scale amounts to a num_remember times smaller
    learning rate). At least one sample is kept per
    batch. Epochs count from 0 and epoch T uses element T of the schedule (the official loop trains
    epochs 1..n-1, so it never trains at element 0 and runs one epoch fewer). The official recipe
    (Adam lr 1e-3, linear decay from epoch 80 of 200, at most 400 batches an epoch) is the study's to
    choose.
    """

    Config = CoTeachingConfig
    # fast (10 epochs): Tk = 2, the official ramp [0, tau] is full from the second epoch on, before
    # the fast recipe's network starts to memorise (the paper's Tk = 10 of 200 epochs would leave no
    # epoch at the full rate).
    presets: ClassVar[dict[str, dict]] = {"quick": {"num_gradual": 5}, "paper": {"num_gradual": 10},
                                          "fast": {"num_gradual": 2}}

    def __init__(self, model: nn.Module, peer: nn.Module, forget_rate: float, num_gradual: int = 10,
                 exponent: float = 1.0, clean_labels: torch.Tensor | None = None, ramp: str = "official"):
        super().__init__()
        require(0.0 <= forget_rate < 1.0, f"co-teaching forget rate must be in [0, 1), got {forget_rate}")
        require(num_gradual >= 0, f"num_gradual must be >= 0, got {num_gradual}")
        require(exponent > 0, f"exponent must be > 0, got {exponent}")
        require(ramp in RAMPS, f"ramp must be one of {', '.join(RAMPS)}, got {ramp!r}")
        self.model, self.peer = model, peer
        self.tau, self.num_gradual, self.exponent, self.ramp = forget_rate, num_gradual, exponent, ramp
        self._remember = 1.0
        self.forget_rate_source: str | None = None  # set by build(): given | estimate | oracle
        self.selection = SelectionMeter(clean_labels)  # measurement only, never used to train

    @classmethod
    def build(cls, config: CoTeachingConfig, ctx):
        """Two fresh networks; every config field is a constructor argument (also for the
        Co-Teaching variants), with the forget rate resolved from the noise prior."""
        rate, source = resolve_forget_rate(config.forget_rate, ctx, cls.name)
        resolved = replace(config, forget_rate=rate)
        strategy = cls(ctx.new_model(), ctx.new_model(), clean_labels=ctx.clean_train_labels, **asdict(resolved))
        strategy.config, strategy.forget_rate_source = resolved, source
        return strategy

    def options(self) -> dict:
        """The resolved options and, when built from a config, where the forget rate came from
        (`forget_rate_source`: given, estimate, or oracle = the realised noise rate)."""
        out = super().options()
        if self.forget_rate_source is not None:
            out["forget_rate_source"] = self.forget_rate_source
        return out

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self._remember = remember_rate(epoch, self.tau, self.num_gradual, self.exponent, self.ramp)
        self.selection.reset()

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        logits1, logits2 = self.model(x), self.peer(x)
        # float32 losses: the ranking must not depend on bf16 rounding under autocast
        loss1 = F.cross_entropy(logits1.float(), y, reduction="none")
        loss2 = F.cross_entropy(logits2.float(), y, reduction="none")
        num_remember = max(1, int(self._remember * len(y)))
        update1, update2 = cross_update_indices(loss1.detach(), loss2.detach(), num_remember)
        # Mean over the selected samples, once per network.
        loss = loss1[update1].mean() + loss2[update2].mean()
        self.selection.update(y, idx, update1, update2)
        return StepOutput(loss, logits1)

    def epoch_metrics(self) -> dict[str, float]:
        return {"remember_rate": self._remember, **self.selection.metrics()}

    def extra_predictors(self) -> dict[str, nn.Module]:
        return {"net2": self.peer, "ensemble": EnsembleLogits(self.model, self.peer)}
