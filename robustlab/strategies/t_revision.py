"""T-Revision (Xia et al., NeurIPS 2019, "Are Anchor Points Really Indispensable in Label-Noise
Learning?"): importance reweighting with a transition matrix T that is estimated from the network
itself and then revised by a learned slack Delta T.

T[i, j] = P(noisy label = j | true class = i), rows true class, columns noisy class. One run of E
epochs holds the official script's three phases (xiaoboxia/T-Revision, main.py) as stages:

1. epochs [0, estimate_epochs): cross-entropy on the noisy labels;
2. before epoch estimate_epochs: T is estimated from the stage-1 network's softmax on every
   training image (`anchor_point_transition`, the official tools.fit with filter_outlier): for each
   class i the probabilities p_i of all samples are taken, those at or above their 97th percentile
   (numpy's 'higher' percentile, an actual value) are dropped as outliers, the sample with the
   largest remaining p_i is the anchor of class i, and row i of T is that sample's softmax row
   (rows then normalised to sum to 1, tools.norm). Epochs [estimate_epochs, estimate_epochs +
   reweight_epochs) train with importance reweighting (official reweight_loss):

       beta_i = p(y_i | x_i) / (T^T p(x_i))_{y_i}   (no gradient),   L = mean_i beta_i * CE(f(x_i), y_i)

   with p = softmax(f(x)) and (T^T p)_y = sum_c T[c, y] p_c, the network's noisy-class posterior;
3. the remaining epochs revise T: the slack Delta T (K x K, zero at the start of the stage, the
   official T_revision layer's weight) enters beta through T + Delta T and beta keeps its gradient
   with respect to Delta T (official reweighting_revision_loss), so the loss trains Delta T and the
   network together:

       beta_i = p(y_i | x_i) / ((T + Delta T)^T p(x_i))_{y_i},   L = mean_i beta_i * CE(f(x_i), y_i)

Predictions are the network's own softmax (the clean-class posterior), as the official test loop.

Official defaults (main.py): stage 1 (n_epoch_estimate) 20 epochs for CIFAR-10, 15 for CIFAR-100;
stage 2 (n_epoch) 200; stage 3 (n_epoch_revision) 200; percentile 97 with the outlier filter for
CIFAR-10 (estimate_state True) and the plain argmax for CIFAR-100 (estimate_state False); Delta T
trained by Adam at lr_revision 5e-7 with weight decay 1e-4 (L2, added to the gradient); networks:
SGD lr 0.01, weight decay 1e-4 (stage 1 without momentum; stage 2 momentum 0.9, lr /10 at epochs 40
and 80), ResNet-18 (CIFAR-10) / ResNet-34 (CIFAR-100), batch 128, 10% of the noisy training set held
out for validation. The network's recipe (optimizer, schedule, epochs, model) is the run's own here.

Option `t_source`: `anchor` (default, the official estimator on this run's own stage-1 network);
`oracle` (the realised noise's empirical T, robustlab.strategies.transition; an oracle) or `file`
(`t_file`, .npy/.csv K x K) replace the estimate, stage 1 then only warms the network up
(estimate_epochs may be 0). Where the clean labels are known the history records, from stage 2
on, the error of T + Delta T against the realised noise's T: `t_error_fro` (Frobenius norm of the
difference) and `t_error` (the official tools.error, sum |T - T_true| / sum |T_true|), with `stage`
and `slack_max` (max |Delta T|).

How Delta T is optimised. The engine has one optimizer, for the network. Delta T is a buffer
(`slack`), not a parameter: each revision step uses a leaf copy of it whose gradient, caught by a
hook during the engine's backward pass, is applied at once by Adam with the official settings
(lr_revision, betas 0.9/0.999, eps 1e-8, L2 weight decay 1e-4, torch.optim.Adam's update), its
moments and step count being buffers too (`slack_avg`, `slack_sq`, `slack_steps`). So the run's LR
schedule, weight decay, gradient clipping and lookahead never touch Delta T, and T, Delta T and
Adam's state are checkpointed with the weights (resume is bit-exact). Under DDP the hook averages
Delta T's gradient over the ranks (the official code is single-GPU; not exercised by the tests).

Presets for the noisy-label study: the stages keep their roles at the run's length and Delta T's
learning rate is scaled so that lr_revision x (revision steps) stays the official 5e-7 x 200 epochs
x 352 batches = 0.0352, the most an Adam step sequence can move an entry (at 5e-7 over a few
hundred steps Delta T would not move at all). quick (20 epochs, 19 batches of 256): 6 CE epochs
(before a small network memorises the noise, as PES's quick t1), 7 reweighting, 7 revision, lr
2.6e-4; fast (airbench, 10 epochs of 43 batches, ~80% clean accuracy after 3): 3 + 4 + 3, lr 2.7e-4;
paper (100 epochs, 352 batches of 128): the official 20 CE epochs, then 40 + 40 (the official
equal shares), lr 2.5e-6.

Deviations from the official code:
- One run, one optimizer and schedule: the official phases are separate loops with fresh
  optimizers (SGD without momentum at lr 0.01; SGD with momentum and its own step schedule; Adam at
  5e-7 for the network as well as Delta T). Here the network is trained by the run's optimizer at
  its scheduled rate throughout, including the revision stage (where the official Adam at 5e-7
  nearly freezes it); only Delta T has its own Adam (above).
- In the revision stage beta is not differentiated through the network: the network's gradient is
  beta * dCE (as in stage 2, with T + Delta T), Delta T's is the official one (the loss's value is
  the official one too). The official network also follows beta's own gradient, which lowers the
  loss by pushing p(y | x) of the given label to 0 (beta * CE -> 0 as p_y -> 0); at the official
  lr 5e-7 that is harmless, at a run's learning rate it is not: with beta's gradient kept, the quick
  preset (noise 0.4) collapsed to chance accuracy within the first revision epoch (train loss 4e-4,
  test accuracy 10%).
- No model selection between stages: the official code reloads the stage-1 epoch with the best
  accuracy on its noisy validation split (and estimates T from that epoch's probabilities) and the
  reweighting epoch with the best validation accuracy before revising; here each stage continues
  from the last weights of the one before, and T comes from the network at the end of stage 1.
- The probabilities for the estimate are the network's softmax on the unaugmented training images,
  in eval mode (the official estimate loader applies the training augmentation, random crop and
  flip, in eval mode).
- The official tools.fit zeroes each class's outliers in the probability matrix in place, so
  classes estimated later read an anchor row whose earlier-class outlier entries are 0; here every
  anchor row is read from the unmodified probabilities (the two differ only where a class's anchor
  is itself in the top 3% of an earlier class's column). tools.norm divides column j by row sum j
  (numpy broadcasting); here rows are divided by their own sums (the same for softmax rows, which
  sum to 1).
- The denominator (T^T p)_y is clamped at 1e-12, so a softmax that underflows to 0 gives beta = 0
  instead of 0 / 0; the official code has no clamp.
- The CIFAR-100 defaults (15 estimate epochs, argmax anchors) are chosen by the class count
  (>= 100 classes), the CIFAR-10 ones otherwise. The stage lengths are given as estimate_epochs and
  reweight_epochs, the revision stage being the rest of the run (official: three epoch counts,
  20 + 200 + 200).
- The training accuracy in the history is the network's own prediction against the noisy labels
  (the official one is the argmax of (T + Delta T)^T p).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustlab import distributed
from robustlab.errors import require
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.registry import register_strategy
from robustlab.strategies.transition import check_transition, load_transition, oracle_transition

# Official main.py defaults.
ESTIMATE_CIFAR10, ESTIMATE_CIFAR100 = 20, 15  # n_epoch_estimate
REWEIGHT_EPOCHS = 200                         # n_epoch (reweighting); n_epoch_revision 200 is the rest of the run
PERCENTILE = 97.0                             # tools.fit's outlier percentile
LR_REVISION, WEIGHT_DECAY_REVISION = 5e-7, 1e-4  # Adam of the revision stage
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8     # torch.optim.Adam's defaults, as the official optimizer
DENOM_MIN = 1e-12                             # floor of (T^T p)_y (no official clamp; avoids 0 / 0)
T_SOURCES = ("anchor", "oracle", "file")


def anchor_point_transition(probs, percentile: float = PERCENTILE, filter_outlier: bool = True) -> np.ndarray:
    """T estimated from a network's softmax `probs` (N x K) with anchor points (official tools.fit +
    tools.norm): row i is the probability row of the sample with the largest p_i, after dropping
    (with `filter_outlier`) every p_i at or above the column's `percentile` ('higher' method); rows
    normalised to sum to 1."""
    eta = np.asarray(probs)
    require(eta.ndim == 2 and eta.shape[0] >= 1 and eta.shape[1] >= 2,
            f"the anchor-point estimate needs an N x K probability matrix with K >= 2, got shape {eta.shape}")
    require(0 < percentile <= 100, f"percentile must be in (0, 100], got {percentile}")
    k = eta.shape[1]
    t = np.empty((k, k))
    for i in range(k):
        column = eta[:, i]
        if filter_outlier:
            threshold = np.percentile(column, percentile, method="higher")
            column = np.where(column >= threshold, 0.0, column)
        t[i] = eta[int(np.argmax(column))]
    return t / t.sum(1, keepdims=True)


def importance_weight(logits: torch.Tensor, y: torch.Tensor, transition: torch.Tensor) -> torch.Tensor:
    """beta = p_y / (T^T p)_y per sample, p = softmax(logits) in float32; the gradient flows into
    the logits and `transition` (detach it where the official code does)."""
    p = logits.float().softmax(1)
    clean = p.gather(1, y[:, None]).squeeze(1)
    # (T^T p)_y = sum_c T[c, y] p_c: elementwise, so that autocast leaves it in float32
    noisy = (p * transition.to(p.dtype).t()[y]).sum(1)
    return clean / noisy.clamp_min(DENOM_MIN)


def reweight_loss(logits: torch.Tensor, y: torch.Tensor, transition: torch.Tensor) -> torch.Tensor:
    """Official reweight_loss: mean_i beta_i CE_i with beta without gradient."""
    beta = importance_weight(logits, y, transition).detach()
    return (beta * F.cross_entropy(logits.float(), y, reduction="none")).mean()


def revision_loss(logits: torch.Tensor, y: torch.Tensor, transition: torch.Tensor, slack: torch.Tensor) -> torch.Tensor:
    """Official reweighting_revision_loss: mean_i beta_i CE_i with beta from T + slack. Its value and the
    slack's gradient are the official ones; the network's gradient is that of CE weighted by beta, beta
    not differentiated through the network (see the module docstring)."""
    beta = importance_weight(logits.detach(), y, transition + slack)
    return (beta * F.cross_entropy(logits.float(), y, reduction="none")).mean()


@torch.no_grad()
def adam_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
              steps: torch.Tensor, lr: float, weight_decay: float) -> None:
    """One torch.optim.Adam step (L2 weight decay, no amsgrad) on `param` in place; `steps` counts."""
    steps += 1
    t = int(steps)
    beta1, beta2 = ADAM_BETAS
    grad = grad + weight_decay * param
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** t)).add_(ADAM_EPS)
    param.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1 ** t))


def transition_errors(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Frobenius norm of estimate - truth, and the official tools.error (relative L1)."""
    truth = np.asarray(truth)
    diff = np.asarray(estimate) - truth
    return {"t_error_fro": float(np.linalg.norm(diff)), "t_error": float(np.abs(diff).sum() / np.abs(truth).sum())}


@dataclass
class TRevisionConfig:
    estimate_epochs: int | None = None   # stage 1 (CE); None = official 20 (15 for >= 100 classes)
    reweight_epochs: int = REWEIGHT_EPOCHS  # stage 2 (reweighting with T); the rest of the run revises T
    percentile: float = PERCENTILE       # outlier percentile of the anchor-point estimate, in (0, 100]
    filter_outlier: bool | None = None   # None = official: on for < 100 classes, off (argmax) for >= 100
    lr_revision: float = LR_REVISION     # Adam learning rate of Delta T
    weight_decay_revision: float = WEIGHT_DECAY_REVISION  # Adam (L2) weight decay of Delta T
    t_source: str = "anchor"             # anchor (estimated from stage 1) | oracle | file
    t_file: str | None = None            # .npy or .csv K x K, with t_source=file

    def validate(self) -> None:
        require(self.estimate_epochs is None or self.estimate_epochs >= 0,
                f"estimate_epochs must be >= 0, got {self.estimate_epochs}")
        require(self.reweight_epochs >= 0, f"reweight_epochs must be >= 0, got {self.reweight_epochs}")
        require(0 < self.percentile <= 100, f"percentile must be in (0, 100], got {self.percentile}")
        require(self.lr_revision > 0 and math.isfinite(self.lr_revision),
                f"lr_revision must be > 0, got {self.lr_revision}")
        require(self.weight_decay_revision >= 0 and math.isfinite(self.weight_decay_revision),
                f"weight_decay_revision must be >= 0, got {self.weight_decay_revision}")
        require(self.t_source in T_SOURCES, f"t_source must be one of {', '.join(T_SOURCES)}, got {self.t_source!r}")
        require((self.t_file is not None) == (self.t_source == "file"),
                f"t_file is given exactly with t_source=file (got t_source={self.t_source}, t_file={self.t_file})")
        require(self.t_source != "anchor" or self.estimate_epochs != 0,
                "estimate_epochs must be >= 1 with t_source=anchor (T is estimated from the stage-1 network)")


def check_stages(estimate: int, reweight: int, epochs: int) -> None:
    """One line unless stages 1 and 2 fit the run's epochs with an epoch after the estimate."""
    require(estimate + reweight <= epochs and estimate < epochs,
            f"t_revision stages estimate_epochs + reweight_epochs = {estimate} + {reweight} epochs do not fit the "
            f"run's {epochs} epochs (estimate_epochs must be < {epochs} and the sum <= {epochs}; the rest revises T)")


@register_strategy("t_revision")
class TRevision(Strategy):
    """T-Revision (Xia et al. 2019): CE, an anchor-point estimate of T, importance reweighting with
    T, then reweighting with T + Delta T, the slack Delta T trained by its own Adam.

    See the module docstring for the method, the official constants and every deviation."""

    Config = TRevisionConfig
    needs_train_pass = True  # the anchor-point estimate reads the stage-1 network's softmax on every training image
    # quick 6 + 7 (+ 7 revision) of 20 epochs, fast 3 + 4 (+ 3) of 10, paper the official 20 + 40 (+ 40) of 100;
    # lr_revision keeps the official lr x revision steps (see the module docstring).
    presets: ClassVar[dict[str, dict]] = {
        "quick": {"estimate_epochs": 6, "reweight_epochs": 7, "lr_revision": 2.6e-4},
        "paper": {"estimate_epochs": 20, "reweight_epochs": 40, "lr_revision": 2.5e-6},
        "fast": {"estimate_epochs": 3, "reweight_epochs": 4, "lr_revision": 2.7e-4}}

    def __init__(self, model: nn.Module, num_classes: int, estimate_epochs: int, reweight_epochs: int,
                 transition=None, percentile: float = PERCENTILE, filter_outlier: bool = True,
                 lr_revision: float = LR_REVISION, weight_decay_revision: float = WEIGHT_DECAY_REVISION,
                 true_transition=None):
        super().__init__()
        require(num_classes >= 2, f"T-Revision needs >= 2 classes, got {num_classes}")
        require(estimate_epochs >= (1 if transition is None else 0),
                f"estimate_epochs must be >= {1 if transition is None else 0}, got {estimate_epochs}")
        require(reweight_epochs >= 0, f"reweight_epochs must be >= 0, got {reweight_epochs}")
        require(0 < percentile <= 100, f"percentile must be in (0, 100], got {percentile}")
        require(lr_revision > 0, f"lr_revision must be > 0, got {lr_revision}")
        require(weight_decay_revision >= 0, f"weight_decay_revision must be >= 0, got {weight_decay_revision}")
        self.model = model
        self.num_classes = num_classes
        self.estimate_epochs, self.reweight_epochs = estimate_epochs, reweight_epochs
        self.percentile, self.filter_outlier = percentile, filter_outlier
        self.lr_revision, self.weight_decay_revision = lr_revision, weight_decay_revision
        given = transition is not None
        start = check_transition(transition, "T-Revision", num_classes) if given else np.eye(num_classes)
        self.register_buffer("transition", torch.as_tensor(start, dtype=torch.float32))
        self.register_buffer("has_transition", torch.tensor(given))
        self.register_buffer("slack", torch.zeros(num_classes, num_classes))
        self.register_buffer("slack_avg", torch.zeros(num_classes, num_classes))
        self.register_buffer("slack_sq", torch.zeros(num_classes, num_classes))
        self.register_buffer("slack_steps", torch.zeros((), dtype=torch.long))
        self.true_transition = (None if true_transition is None
                                else check_transition(true_transition, "the true T", num_classes))
        self.source = "given" if given else "anchor"
        self._epoch = 0

    @classmethod
    def build(cls, config: TRevisionConfig, ctx):
        k = ctx.num_classes
        estimate = config.estimate_epochs
        if estimate is None:
            estimate = ESTIMATE_CIFAR100 if k >= 100 else ESTIMATE_CIFAR10
        filter_outlier = config.filter_outlier if config.filter_outlier is not None else k < 100
        epochs = getattr(getattr(ctx.experiment, "train", None), "epochs", None)
        if epochs is not None:
            check_stages(estimate, config.reweight_epochs, epochs)
        transition = None
        if config.t_source == "oracle":
            transition = oracle_transition(ctx)
        elif config.t_source == "file":
            transition = load_transition(config.t_file, k)
        truth = oracle_transition(ctx) if ctx.noise_transition is not None else None
        strategy = cls(ctx.new_model(), k, estimate, config.reweight_epochs, transition, config.percentile,
                       filter_outlier, config.lr_revision, config.weight_decay_revision, truth)
        strategy.source = config.t_source if config.t_source != "file" else f"file {config.t_file}"
        strategy.config = replace(config, estimate_epochs=estimate, filter_outlier=filter_outlier)
        return strategy

    def options(self) -> dict:
        return {**super().options(), "t_origin": self.source}

    def warmup_length(self) -> int:
        return self.estimate_epochs

    def stage(self, epoch: int) -> int:
        """1: cross-entropy, 2: reweighting with T, 3: reweighting with T + Delta T (revision)."""
        if epoch < self.estimate_epochs:
            return 1
        return 2 if epoch < self.estimate_epochs + self.reweight_epochs else 3

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        check_stages(self.estimate_epochs, self.reweight_epochs, num_epochs)
        self._epoch = epoch

    @torch.no_grad()
    def on_train_pass(self, epoch: int, loader) -> None:
        """Before the first epoch after stage 1: T from the network's softmax on every training image."""
        if epoch < self.estimate_epochs or bool(self.has_transition):
            return
        probs = torch.zeros(len(loader.labels), self.num_classes)
        for x, _, idx in loader:
            probs[idx.cpu()] = self.model(x).float().softmax(1).cpu()
        t = anchor_point_transition(probs.numpy(), self.percentile, self.filter_outlier)
        self.transition.copy_(torch.as_tensor(t, dtype=torch.float32))
        self.has_transition.fill_(True)

    def revised_transition(self) -> np.ndarray:
        """T + Delta T in float64."""
        return (self.transition.double() + self.slack.double()).cpu().numpy()

    def _slack_hook(self, grad: torch.Tensor) -> None:
        grad = grad.detach().clone()  # float32, as the leaf
        info = distributed.current()
        if info.enabled:
            distributed.all_reduce_sum(grad)
            grad /= info.world_size
        adam_step(self.slack, grad, self.slack_avg, self.slack_sq, self.slack_steps, self.lr_revision,
                  self.weight_decay_revision)

    def slack_leaf(self) -> torch.Tensor:
        """A leaf copy of Delta T whose gradient, once back-propagated, takes one Adam step on the buffer."""
        leaf = self.slack.detach().clone().requires_grad_(True)
        if torch.is_grad_enabled():
            leaf.register_hook(self._slack_hook)
        return leaf

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        logits = self.model(x)
        stage = self.stage(epoch)
        if stage == 1:
            return StepOutput(F.cross_entropy(logits.float(), y), logits)
        require(bool(self.has_transition), "T-Revision has no T yet: the anchor-point estimate runs in on_train_pass "
                                           "before the first epoch after stage 1 (give fit() a train_pass_loader)")
        if stage == 2:
            return StepOutput(reweight_loss(logits, y, self.transition), logits)
        return StepOutput(revision_loss(logits, y, self.transition, self.slack_leaf()), logits)

    def epoch_metrics(self) -> dict[str, float]:
        out = {"stage": float(self.stage(self._epoch))}
        if self._epoch >= self.estimate_epochs:  # T exists from stage 2 on (stage 2 and 3 steps need it)
            out["slack_max"] = float(self.slack.abs().max())
            if self.true_transition is not None:
                out.update(transition_errors(self.revised_transition(), self.true_transition))
        return out
