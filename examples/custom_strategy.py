"""A training strategy defined in your own file, registered, and compared in the noisy-label study.

The bootstrapping loss of Reed et al. (ICLR 2015 workshop, "Training deep neural networks on noisy
labels with bootstrapping") mixes the given label with the network's own prediction:

    soft:  L = -sum_k (beta * q_k + (1 - beta) * p_k) * log p_k        (beta = 0.95)
    hard:  L = -sum_k (beta * q_k + (1 - beta) * z_k) * log p_k        (beta = 0.8, z = one-hot argmax p)

q is the (noisy) one-hot label and p the softmax. As in the paper, the soft target keeps its
gradient (soft bootstrapping is cross-entropy plus an entropy penalty); the hard target is an
argmax and has none.

    python examples/custom_strategy.py --data-dir ../shared/data --out results/bootstrap \\
        --train-size 4000 --epochs 20

runs the noisy-label study (quick preset, 30% symmetric noise) with the arms clean_ce, noisy_ce and
noisy_bootstrap, and writes its table under --out.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout without installing

from robustlab.errors import require  # noqa: E402
from robustlab.strategies import StepOutput, Strategy, register_strategy  # noqa: E402

MODES = ("soft", "hard")


@dataclass
class BootstrapConfig:
    mode: str = "soft"
    beta: float | None = None  # None: the paper's value for the mode (soft 0.95, hard 0.8)

    def validate(self) -> None:
        require(self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        require(self.beta is None or 0.0 <= self.beta <= 1.0, f"beta must be in [0, 1], got {self.beta}")


def bootstrap_loss(logits: torch.Tensor, labels: torch.Tensor, beta: float, mode: str) -> torch.Tensor:
    """Per-sample bootstrapping loss."""
    log_p = F.log_softmax(logits.float(), dim=1)
    q = F.one_hot(labels, logits.shape[1]).float()
    if mode == "soft":
        own = log_p.exp()
    else:
        own = F.one_hot(log_p.argmax(1), logits.shape[1]).float()
    return -((beta * q + (1 - beta) * own) * log_p).sum(1)


@register_strategy("bootstrap")
class Bootstrap(Strategy):
    """Bootstrapping (Reed et al. 2015): the target mixes the label with the network's prediction."""

    Config = BootstrapConfig
    presets = {"quick": {}, "paper": {}}

    def __init__(self, model: torch.nn.Module, mode: str = "soft", beta: float | None = None):
        super().__init__()
        self.model, self.mode = model, mode
        self.beta = beta if beta is not None else (0.95 if mode == "soft" else 0.8)

    @classmethod
    def build(cls, config: BootstrapConfig, ctx):
        strategy = cls(ctx.new_model(), config.mode, config.beta)
        strategy.config = BootstrapConfig(config.mode, strategy.beta)
        return strategy

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        logits = self.model(x)
        return StepOutput(bootstrap_loss(logits, y, self.beta, self.mode).mean(), logits)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder holding cifar10/ (default: ROBUSTLAB_DATA)")
    p.add_argument("--out", default="results/bootstrap")
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--noise", type=float, default=0.3)
    args, rest = p.parse_known_args(argv)
    from studies import noisy_labels

    study = ["--noise", str(args.noise), "--methods", "ce,bootstrap", "--preset", "quick", "--out", args.out,
             "--figures-dir", args.out, "--train-size", str(args.train_size), "--epochs", str(args.epochs), *rest]
    if args.data_dir:
        study += ["--data-dir", args.data_dir]
    return noisy_labels.main(study)


if __name__ == "__main__":
    sys.exit(main())
