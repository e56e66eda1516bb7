"""Supervised contrastive learning (Khosla et al. 2020) and the classifier stage that follows it.

Stage 1, `SupConPretrain`: two augmented views per image go through the encoder and a projection
head; pytorch-metric-learning's `SupConLoss` pulls together every pair of embeddings that share a
label (so each image's other view is always a positive) and pushes apart the rest.
Stage 2, `FrozenEncoderClassifier`: a new classifier head on the pretrained encoder, trained with
cross-entropy, either on frozen features (`mlp`, `linear`) or end to end (`finetune`).

`SupConViews` is the batch augmentation that produces the two views on the training device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.data.color import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, to_grayscale
from robustlab.errors import UsageError, require
from robustlab.models.base import Classifier
from robustlab.settings import SUPCON_HEADS
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.registry import register_strategy

# ----------------------------------------------------------------------------------------------
# Two-view augmentation
# ----------------------------------------------------------------------------------------------


class SupConViews:
    """Batch augmentation for SupCon: uint8 (N, 3, H, W) -> normalized float (N, 2, 3, size, size).

    Each view of each sample gets its own random resized crop (area fraction in `scale`, aspect
    ratio in `ratio`), horizontal flip, colour jitter (applied with probability `jitter_p`;
    brightness, contrast, saturation factors in [1-j, 1+j], hue shift in [-j, j]) and grayscale
    (probability `grayscale_p`), as in SimCLR/SupCon. Everything runs batched on the images'
    device, and every random number comes from `generator`, so a seed reproduces the batch.

    Differences from torchvision's RandomResizedCrop + ColorJitter: a crop whose side would exceed
    the image is clipped to it (instead of re-drawing), and the jitter operations always run in the
    order brightness, contrast, saturation, hue (instead of a random order).
    """

    def __init__(
        self,
        mean,
        std,
        size: int = 32,
        scale: tuple[float, float] = (0.2, 1.0),
        flip: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ):
        require(len(mean) == 3 and len(std) == 3, "mean and std need one value per RGB channel")
        require(all(s > 0 for s in std), f"std must be positive, got {tuple(std)}")
        require(size >= 1, f"crop size must be >= 1, got {size}")
        require(0 < scale[0] <= scale[1] <= 1, f"scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
        require(0 < ratio[0] <= ratio[1], f"ratio must satisfy 0 < min <= max, got {tuple(ratio)}")
        require(len(jitter) == 4 and all(j >= 0 for j in jitter), "jitter must be 4 non-negative numbers (brightness, contrast, saturation, hue)")
        require(jitter[3] <= 0.5, f"hue jitter must be <= 0.5, got {jitter[3]}")
        for name, p in (("flip", flip), ("jitter_p", jitter_p), ("grayscale_p", grayscale_p)):
            require(0 <= p <= 1, f"{name} is a probability, got {p}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.size = size
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.flip, self.jitter, self.jitter_p, self.grayscale_p = flip, tuple(jitter), jitter_p, grayscale_p

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        require(
            images.dtype == torch.uint8 and images.dim() == 4 and images.shape[1] == 3,
            f"SupConViews expects a uint8 batch of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}",
        )
        n = images.shape[0]
        # Sample-major: rows 2i and 2i+1 are the two views of sample i.
        x = images.float().div_(255).repeat_interleave(2, dim=0)
        x = self._crop_and_flip(x, generator)
        x = self._colour_jitter(x, generator)
        x = self._grayscale(x, generator)
        if self.mean.device != x.device:  # move once, not per batch
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        x = (x - self.mean) / self.std
        return x.view(n, 2, 3, self.size, self.size)

    # Random numbers are drawn on the generator's device (it may differ from the images'), then moved.
    def _uniform(self, n: int, lo: float, hi: float, gen: torch.Generator, device) -> torch.Tensor:
        return (torch.rand(n, generator=gen, device=gen.device) * (hi - lo) + lo).to(device)

    def _coin(self, n: int, p: float, gen: torch.Generator, device) -> torch.Tensor:
        return self._uniform(n, 0.0, 1.0, gen, device) < p

    def _crop_and_flip(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        area = self._uniform(b, *self.scale, gen, x.device)
        aspect = self._uniform(b, math.log(self.ratio[0]), math.log(self.ratio[1]), gen, x.device).exp()
        # Box sides as fractions of the image sides (a box of `area` * H * W pixels).
        bw = (area * aspect * h / w).sqrt().clamp(max=1.0)
        bh = (area / aspect * w / h).sqrt().clamp(max=1.0)
        # Box centres in grid_sample's [-1, 1] coordinates, chosen so the box stays inside.
        cx = self._uniform(b, -1.0, 1.0, gen, x.device) * (1 - bw)
        cy = self._uniform(b, -1.0, 1.0, gen, x.device) * (1 - bh)
        mirror = torch.where(self._coin(b, self.flip, gen, x.device), -1.0, 1.0)
        zero = torch.zeros_like(bw)
        theta = torch.stack([torch.stack([bw * mirror, zero, cx], 1), torch.stack([zero, bh, cy], 1)], 1)
        grid = F.affine_grid(theta, [b, 3, self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _colour_jitter(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        apply = self._coin(b, self.jitter_p, gen, x.device)
        bri, con, sat, hue = self.jitter

        def factors(j: float) -> torch.Tensor:
            f = self._uniform(b, max(0.0, 1 - j), 1 + j, gen, x.device)
            return torch.where(apply, f, torch.ones_like(f))  # factor 1 leaves an image unchanged

        x = adjust_brightness(x, factors(bri))
        x = adjust_contrast(x, factors(con))
        x = adjust_saturation(x, factors(sat))
        if hue > 0:
            shift = self._uniform(b, -hue, hue, gen, x.device)
            x = adjust_hue(x, torch.where(apply, shift, torch.zeros_like(shift)))
        return x

    def _grayscale(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        gray = self._coin(x.shape[0], self.grayscale_p, gen, x.device).view(-1, 1, 1, 1)
        return torch.where(gray, to_grayscale(x).expand_as(x), x)


# ----------------------------------------------------------------------------------------------
# Stage 1: contrastive pretraining
# ----------------------------------------------------------------------------------------------


class ProjectionHead(nn.Module):
    """Linear-ReLU-Linear MLP onto the unit sphere, where the contrastive loss is computed."""

    def __init__(self, in_dim: int, hidden: int | None = None, out_dim: int = 128):
        super().__init__()
        hidden = hidden or in_dim
        require(in_dim >= 1 and hidden >= 1 and out_dim >= 1, f"projection sizes must be >= 1, got {in_dim}, {hidden}, {out_dim}")
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features), dim=1)


@dataclass
class SupConPretrainConfig:
    temperature: float = 0.1
    proj_dim: int = 128
    min_crop_scale: float = 0.2  # SupConViews' smallest crop, as a fraction of the image area

    def validate(self) -> None:
        require(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        require(self.proj_dim >= 1, f"proj_dim must be >= 1, got {self.proj_dim}")
        require(0 < self.min_crop_scale <= 1, f"min_crop_scale must be in (0, 1], got {self.min_crop_scale}")


@register_strategy("supcon_pretrain")
class SupConPretrain(Strategy):
    """Stage 1 of SupCon: train the encoder with the supervised contrastive loss on two views.

    Expects batches from `SupConViews`: x of shape (N, V, C, H, W) with V >= 2 views. The views are
    flattened sample-major to (N*V, C, H, W) and the labels repeated to match, so all views of an
    image (and all images of its class) are positives of each other.

    The loss is pytorch-metric-learning's SupConLoss (eq. 2 of Khosla et al., L_out), averaged over
    anchors rather than summed. `distributed=True` wraps it in DistributedLossWrapper so that
    negatives and positives are gathered from all ranks; the logged loss is that of the whole global
    batch, as one process would compute it (the wrapper's world_size factor only scales the gradient).

    Deviation from the official code (HobbitLong/SupContrast): its loss carries an extra factor
    temperature / base_temperature with base_temperature = 0.07, which pytorch-metric-learning's
    SupConLoss leaves out. At the default temperature 0.1 the official loss (and its gradient) is
    0.1 / 0.07 = 1.43x larger, so the same SGD step needs a 1.43x larger learning rate here
    (the `paper` preset of studies.supcon accounts for it).

    `predict` returns `model`'s own classifier logits; its head is not trained in this stage, so
    accuracies measured during pretraining are meaningless. Use FrozenEncoderClassifier afterwards.
    `classifies = False` tells `run_experiment` not to evaluate classification during this stage.
    """

    Config = SupConPretrainConfig
    classifies = False
    views = 2
    unused_parameters = True  # the encoder's classifier head is not used while pretraining

    def __init__(self, model: nn.Module, temperature: float = 0.1, proj_dim: int = 128, distributed: bool = False):
        super().__init__()
        # Imported here: pytorch-metric-learning takes seconds to import.
        from pytorch_metric_learning.losses import SupConLoss
        from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

        require(temperature > 0, f"SupCon temperature must be > 0, got {temperature}")
        require(hasattr(model, "forward_features") and hasattr(model, "num_features"), "SupConPretrain needs a model with forward_features and num_features")
        self.model = model
        self.head = ProjectionHead(model.num_features, out_dim=proj_dim)
        self.temperature = temperature
        loss = SupConLoss(temperature=temperature)
        self.loss_fn = DistributedLossWrapper(loss) if distributed else loss
        self.min_crop_scale = 0.2

    @classmethod
    def build(cls, config: SupConPretrainConfig, ctx):
        strategy = cls(ctx.new_model(), temperature=config.temperature, proj_dim=config.proj_dim,
                       distributed=ctx.distributed)  # gather embeddings across ranks
        strategy.min_crop_scale = config.min_crop_scale
        return strategy

    def train_augment(self, default, splits):
        return SupConViews(splits.mean, splits.std, size=splits.train.images.shape[-1], scale=(self.min_crop_scale, 1.0))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(N, V, C, H, W) views -> ((N*V, proj_dim) unit embeddings, V), sample-major."""
        require(
            x.dim() == 5 and x.shape[1] >= 2,
            f"SupConPretrain expects views of shape (N, V>=2, C, H, W) from SupConViews, got {tuple(x.shape)}",
        )
        views = x.shape[1]
        z = self.head(self.model.forward_features(x.flatten(0, 1)))
        return z, views

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        z, views = self.embed(x)
        labels = y.repeat_interleave(views)
        # float32 for the exp/log-sum-exp at temperature ~0.1: autocast off for the loss
        with torch.autocast(z.device.type, enabled=False):
            loss = self.loss_fn(z.float(), labels)
        world = _gathering_world_size(self.loss_fn)
        if world > 1:
            # DistributedLossWrapper returns world_size x the global-batch loss so that DDP's gradient
            # averaging gives the single-process gradient. Keep that gradient, report the loss itself.
            loss = loss - loss.detach() + loss.detach() / world
        return StepOutput(loss)


def _gathering_world_size(loss_fn: nn.Module) -> int:
    """The factor DistributedLossWrapper multiplied the loss by (1 for a plain loss or without a process group)."""
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

    if isinstance(loss_fn, DistributedLossWrapper) and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


# ----------------------------------------------------------------------------------------------
# Stage 2: classifier on the pretrained encoder
# ----------------------------------------------------------------------------------------------

HEADS = SUPCON_HEADS


class EncoderWithHead(Classifier):
    """An encoder's features followed by a new head; with `frozen` the encoder is fixed.

    A frozen encoder runs under no_grad and stays in eval mode (BatchNorm keeps its pretrained
    statistics) even when the module is put in train mode.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, frozen: bool):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.frozen = frozen
        self.num_features = encoder.num_features
        if frozen:
            encoder.requires_grad_(False)
            encoder.eval()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                return self.encoder.forward_features(x)
        return self.encoder.forward_features(x)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self


@dataclass
class SupConProbeConfig:
    encoder_run: str | None = None         # a run id in the same results directory (usually supcon_pretrain)
    encoder_checkpoint: str | None = None  # or a checkpoint path
    head: str = "mlp"                      # mlp | linear | finetune
    hidden: int = 256                      # width of the mlp head

    def validate(self) -> None:
        require((self.encoder_run is None) != (self.encoder_checkpoint is None),
                "supcon_probe needs exactly one of the options encoder_run (a run id) or encoder_checkpoint (a path)")
        require(self.head in HEADS, f"unknown classifier head {self.head!r}; choose one of {', '.join(HEADS)}")
        require(self.hidden >= 1, f"hidden width must be >= 1, got {self.hidden}")


@register_strategy("supcon_probe")
class FrozenEncoderClassifier(Strategy):
    """Stage 2 of SupCon: cross-entropy training of a new head on a pretrained encoder.

    head="mlp":      Linear-ReLU-Linear head (width `hidden`) on frozen features
    head="linear":   linear probe on frozen features
    head="finetune": linear head, and the whole encoder is trained too

    `self.model` maps images to logits (and keeps forward_features), so evaluation, TTA and
    feature extraction treat it like any other classifier.
    """

    def __init__(self, encoder_model: nn.Module, num_classes: int, head: str = "mlp", hidden: int = 256):
        super().__init__()
        require(head in HEADS, f"unknown classifier head {head!r}; choose one of {', '.join(HEADS)}")
        require(num_classes >= 2, f"num_classes must be >= 2, got {num_classes}")
        require(hidden >= 1, f"hidden width must be >= 1, got {hidden}")
        require(hasattr(encoder_model, "forward_features") and hasattr(encoder_model, "num_features"), "FrozenEncoderClassifier needs a model with forward_features and num_features")
        d = encoder_model.num_features
        if head == "mlp":
            new_head = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
        else:
            new_head = nn.Linear(d, num_classes)
        old_head = getattr(encoder_model, "head", None)
        if isinstance(old_head, nn.Module):
            # The encoder's own classifier is bypassed; freezing it keeps it out of the optimizer.
            old_head.requires_grad_(False)
        self.head_kind = head
        self.model = EncoderWithHead(encoder_model, new_head, frozen=head != "finetune")

    Config = SupConProbeConfig

    @classmethod
    def build(cls, config: SupConProbeConfig, ctx):
        from robustlab.checkpoint import load_checkpoint

        checkpoint = Path(config.encoder_checkpoint) if config.encoder_checkpoint else _encoder_run_checkpoint(config.encoder_run, ctx)
        encoder = ctx.new_model()
        load_encoder_weights(encoder, load_checkpoint(checkpoint)["strategy"], source=f"encoder checkpoint {checkpoint}")
        return cls(encoder, ctx.num_classes, head=config.head, hidden=config.hidden)

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        logits = self.model(x)
        return StepOutput(F.cross_entropy(logits, y), logits)


# Where a checkpointed strategy keeps the network whose features are used: `model` for every
# strategy, except FrozenEncoderClassifier, whose `model` wraps it as `model.encoder`.
_NETWORK_PREFIXES = ("model.", "model.encoder.")


def load_encoder_weights(network: nn.Module, strategy_state: dict, source: str = "checkpoint") -> str:
    """Load a strategy checkpoint's main network (`model.*` or `model.encoder.*`) into `network`.

    The prefix whose keys are exactly those of `network` is used (and returned); a checkpoint of
    another architecture or class count is a UsageError naming `source`.
    """
    want = set(network.state_dict())
    for prefix in _NETWORK_PREFIXES:
        sub = {k[len(prefix):]: v for k, v in strategy_state.items() if k.startswith(prefix)}
        if set(sub) == want:
            try:
                network.load_state_dict(sub)
            except RuntimeError as exc:  # same names, other shapes (e.g. another number of classes)
                detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), "shape mismatch")
                raise UsageError(f"{source} does not fit this model: {detail}") from None
            return prefix
    raise UsageError(f"{source} does not hold weights of this model (its parameter names differ)")


def _encoder_run_checkpoint(run_id: str, ctx) -> Path:
    """The last checkpoint of run `run_id` in the study's results, checked against this run's model and data."""
    from robustlab.records import find_record

    require(ctx.results_dir is not None, "supcon_probe with encoder_run needs the results directory of that run")
    record = find_record(ctx.results_dir, run_id)
    if record is None:
        raise UsageError(f"encoder run {run_id} has no record in {ctx.results_dir}; run its pretraining first")
    cfg, enc = ctx.experiment, record["config"]
    if cfg is not None:
        require(enc.get("model") == cfg.model and (enc.get("model_kwargs") or {}) == cfg.model_kwargs,
                f"encoder run {run_id} trained model {enc.get('model')!r} {enc.get('model_kwargs') or {}}, "
                f"but this run uses {cfg.model!r} {cfg.model_kwargs}")
        require(enc.get("data", {}).get("dataset") == cfg.data.dataset,
                f"encoder run {run_id} trained on {enc.get('data', {}).get('dataset')!r}, this run uses {cfg.data.dataset!r}")
    return Path(ctx.results_dir) / "runs" / run_id / "last.pt"
