"""AugMix (Hendrycks et al., ICLR 2020): augmentation chains mixed with random convex weights and a
Jensen-Shannon consistency loss between a clean view and two AugMix views.

Follows the official CIFAR code (google-research/augmix, cifar.py and augmentations.py):
- the clean view is the run's standard augmentation (random crop + flip); both AugMix views start
  from that same augmented image;
- an AugMix view: `width` (3) chains, each of `depth` operations (-1: uniform in 1..3 per chain and
  image), each operation drawn uniformly from autocontrast, equalize, posterize, rotate, solarize,
  shear_x, shear_y, translate_x, translate_y (the list without the ops that overlap CIFAR-10-C:
  colour, contrast, brightness, sharpness) at severity 3; chain weights w ~ Dirichlet(1, ..., 1),
  skip weight m ~ Beta(1, 1); view = (1 - m) x + m sum_i w_i chain_i;
- loss = CE(clean logits, y) + 12 * JS(p_clean, p_aug1, p_aug2), with JS the mean KL of each
  distribution to their mixture, the mixture clamped to [1e-7, 1] as in the official code; the
  three views go through the network as one batch (shared BatchNorm statistics).

Operations run batched on uint8-valued images on the training device: autocontrast and equalize
are torchvision.transforms.v2.functional's (per image and channel, as PIL's); posterize and
solarize use per-image bits/thresholds; the geometric ones are one bilinear affine resampling
with black fill per image, PIL's pixel-centre convention, rounded back to 8 bits as PIL does.
Deviations: the chains start from the standard augmentation rounded to 8 bits (it already is for
crop + flip); at the image border the geometric ops blend with the black fill (PIL leaves pixels
that map outside black and does not blend); the Dirichlet/Beta parameters are fixed at 1 (as in
the official code, where they are not options); random numbers come from torch generators. All
three views are normalised with the run's per-channel mean/std (e.g. the CIFAR statistics, like
every other strategy's inputs); the official code normalises with mean 0.5, std 0.5 per channel
(`transforms.Normalize([0.5] * 3, [0.5] * 3)` in cifar.py). The official code mixes normalised
tensors, robustlab mixes 0..255 values and then normalises: with convex weights the two agree up to
float rounding, so only the input scaling the network sees differs (an affine map per channel,
which the first convolution and BatchNorm can absorb).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustlab.data.augment import normalize
from robustlab.errors import require
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.registry import register_strategy

OPERATIONS = ("autocontrast", "equalize", "posterize", "rotate", "solarize", "shear_x", "shear_y",
              "translate_x", "translate_y")


# ---- pure pieces ------------------------------------------------------------------------------

def jensen_shannon(logits: list[torch.Tensor], clamp: float = 1e-7) -> torch.Tensor:
    """Mean over the distributions of KL(p_i || M), M = clamp(mean_i p_i, 1e-7, 1), batch-averaged
    (F.kl_div(log M, p_i, reduction='batchmean'), as the official code)."""
    probs = [F.softmax(z.float(), dim=1) for z in logits]
    log_mixture = torch.clamp(sum(probs) / len(probs), clamp, 1).log()
    return sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / len(probs)


def mix(base: torch.Tensor, chains: list[torch.Tensor], weights: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """(1 - m) base + m sum_i w_i chain_i per image; weights (N, width), skip m (N,)."""
    mixed = sum(weights[:, i, None, None, None] * chain for i, chain in enumerate(chains))
    m = skip[:, None, None, None]
    return (1 - m) * base + m * mixed


def sample_mixing_weights(n: int, width: int, generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Dirichlet(1, ..., 1) chain weights (N, width) and Beta(1, 1) skip weights (N,).

    Dirichlet(1) = normalized Exp(1) draws, Beta(1, 1) = Uniform(0, 1): both from `generator`
    (torch's Gamma sampler takes no generator)."""
    u = torch.rand(n, width, generator=generator, device=generator.device, dtype=torch.float64)
    e = -torch.log1p(-u)  # Exp(1)
    weights = (e / e.sum(dim=1, keepdim=True)).float().to(device)
    skip = torch.rand(n, generator=generator, device=generator.device).to(device)
    return weights, skip


# ---- the operations on (k, C, H, W) float images with integer values 0..255 ---------------------

def _int_parameter(level: torch.Tensor, maxval: float) -> torch.Tensor:
    return torch.floor(level * maxval / 10)  # int(level * maxval / 10); levels are positive


def _autocontrast(x, level, sign):
    import torchvision.transforms.v2.functional as TF
    return TF.autocontrast(x.to(torch.uint8)).to(x.dtype)


def _equalize(x, level, sign):
    import torchvision.transforms.v2.functional as TF
    return TF.equalize(x.to(torch.uint8)).to(x.dtype)


def _posterize(x, level, sign):
    bits = 4 - _int_parameter(level, 4)  # keep 4 or 3 bits
    step = (2 ** (8 - bits))[:, None, None, None]
    return torch.floor(x / step) * step


def _solarize(x, level, sign):
    threshold = (256 - _int_parameter(level, 256))[:, None, None, None]
    return torch.where(x >= threshold, 255 - x, x)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """out(p) = x(A p + b) with p in pixel-centre coordinates relative to the image centre,
    theta = [A | b] (k, 2, 3); bilinear, black outside, rounded to 8 bits."""
    k, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=x.dtype) - (h - 1) / 2,
                            torch.arange(w, device=x.device, dtype=x.dtype) - (w - 1) / 2, indexing="ij")
    p = torch.stack([xs, ys, torch.ones_like(xs)]).reshape(3, -1)
    src = (theta.to(x.dtype) @ p).reshape(k, 2, h, w)
    grid = torch.stack([(src[:, 0] + (w - 1) / 2 + 0.5) * 2 / w - 1, (src[:, 1] + (h - 1) / 2 + 0.5) * 2 / h - 1], dim=-1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.round().clamp(0, 255)


def _theta(n: int, device, a=None, b=None, c=None, d=None, tx=None, ty=None) -> torch.Tensor:
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = 1 if a is None else a
    theta[:, 1, 1] = 1 if d is None else d
    if b is not None:
        theta[:, 0, 1] = b
    if c is not None:
        theta[:, 1, 0] = c
    if tx is not None:
        theta[:, 0, 2] = tx
    if ty is not None:
        theta[:, 1, 2] = ty
    return theta


def _rotate(x, level, sign):
    """PIL rotate(degrees, BILINEAR): counter-clockwise about the centre, degrees = int(level * 3)."""
    rad = torch.deg2rad(_int_parameter(level, 30) * sign)
    cos, sin = torch.cos(rad), torch.sin(rad)
    return _affine(x, _theta(len(x), x.device, a=cos, b=-sin, c=sin, d=cos))


def _shear_x(x, level, sign):
    """PIL transform AFFINE (1, s, 0, 0, 1, 0): source x = x + s (y + 1/2) in PIL's coordinates."""
    s = level * 0.3 / 10 * sign
    h = x.shape[2]
    return _affine(x, _theta(len(x), x.device, b=s, tx=s * (h / 2)))  # s * (y_c + (h-1)/2 + 1/2)


def _shear_y(x, level, sign):
    s = level * 0.3 / 10 * sign
    w = x.shape[3]
    return _affine(x, _theta(len(x), x.device, c=s, ty=s * (w / 2)))


def _translate_x(x, level, sign):
    """PIL transform AFFINE (1, 0, t, 0, 1, 0): source x = x + t, t = int(level * size / 30)."""
    return _affine(x, _theta(len(x), x.device, tx=_int_parameter(level, x.shape[3] / 3) * sign))


def _translate_y(x, level, sign):
    return _affine(x, _theta(len(x), x.device, ty=_int_parameter(level, x.shape[2] / 3) * sign))


_OPS = {"autocontrast": _autocontrast, "equalize": _equalize, "posterize": _posterize, "rotate": _rotate,
        "solarize": _solarize, "shear_x": _shear_x, "shear_y": _shear_y, "translate_x": _translate_x,
        "translate_y": _translate_y}


def apply_operation(name: str, x: torch.Tensor, level: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Operation `name` on uint8-valued float images (k, C, H, W), levels in (0, 10], signs +-1 per image."""
    return _OPS[name](x, level.to(x.dtype), sign.to(x.dtype))


# ---- the batch augmentation -------------------------------------------------------------------

class AugMixViews:
    """uint8 (N, 3, H, W) -> normalized (N, 3, 3, H, W): clean, AugMix 1, AugMix 2.

    `standard` is the run's augmentation (a BatchAugment: crop + flip + normalize); its output is
    the clean view, and the AugMix chains start from it (un-normalized, 8-bit)."""

    def __init__(self, standard, mean, std, width: int = 3, depth: int = -1, severity: int = 3):
        require(width >= 1, f"AugMix width must be >= 1, got {width}")
        require(depth == -1 or depth >= 1, f"AugMix depth must be -1 (random 1-3) or >= 1, got {depth}")
        require(1 <= severity <= 10, f"AugMix severity must be in 1..10, got {severity}")
        self.standard, self.mean, self.std = standard, tuple(mean), tuple(std)
        self.width, self.depth, self.severity = width, depth, severity

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        clean = self.standard(images, generator)
        m = torch.tensor(self.mean, device=clean.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=clean.device).view(1, -1, 1, 1)
        base = ((clean * s + m) * 255).round().clamp(0, 255)
        views = [normalize(v / 255, self.mean, self.std) for v in self.augmix(base, generator, count=2)]
        return torch.stack([clean, *views], dim=1)

    def augmix(self, base: torch.Tensor, generator: torch.Generator, count: int = 1) -> list[torch.Tensor]:
        """`count` AugMix views of uint8-valued float images (N, C, H, W), still in 0..255. All
        count x width chains run as one batch (each image its own ops), so an operation is called
        once per chain step for the whole batch."""
        n = len(base)
        chains = self.chain(base.repeat(count * self.width, 1, 1, 1), generator)
        chains = chains.view(count, self.width, *base.shape)
        out = []
        for view in chains:
            weights, skip = sample_mixing_weights(n, self.width, generator, base.device)
            out.append(mix(base, list(view), weights, skip))
        return out

    def chain(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, g = len(x), generator
        depth = (torch.randint(1, 4, (n,), generator=g, device=g.device) if self.depth == -1
                 else torch.full((n,), self.depth, device=g.device))
        for step in range(int(depth.max())):
            op = torch.randint(len(OPERATIONS), (n,), generator=g, device=g.device)
            level = torch.rand(n, generator=g, device=g.device) * (self.severity - 0.1) + 0.1  # uniform(0.1, severity)
            sign = torch.where(torch.rand(n, generator=g, device=g.device) > 0.5, -1.0, 1.0)
            out = x.clone()
            for k, name in enumerate(OPERATIONS):
                chosen = ((op == k) & (depth > step)).nonzero().flatten()
                if len(chosen):
                    idx = chosen.to(x.device)
                    out[idx] = apply_operation(name, x[idx], level[chosen].to(x.device), sign[chosen].to(x.device))
            x = out
        return x


# ---- the strategy -----------------------------------------------------------------------------

@dataclass
class AugMixConfig:
    width: int = 3            # chains mixed per view
    depth: int = -1           # operations per chain; -1: uniform in 1..3
    severity: int = 3         # operation strength (levels uniform in [0.1, severity] of 10)
    jsd_weight: float = 12.0  # lambda of the Jensen-Shannon consistency term

    def validate(self) -> None:
        require(self.width >= 1, f"width must be >= 1, got {self.width}")
        require(self.depth == -1 or self.depth >= 1, f"depth must be -1 (random 1-3) or >= 1, got {self.depth}")
        require(1 <= self.severity <= 10, f"severity must be in 1..10, got {self.severity}")
        require(self.jsd_weight >= 0, f"jsd_weight must be >= 0, got {self.jsd_weight}")


@register_strategy("augmix")
class AugMix(Strategy):
    """AugMix (Hendrycks et al. 2020): CE on the clean view + Jensen-Shannon consistency over clean and two AugMix views."""

    Config = AugMixConfig

    def __init__(self, model: nn.Module, config: AugMixConfig | None = None):
        super().__init__()
        self.model = model
        self.config = config or AugMixConfig()

    @classmethod
    def build(cls, config: AugMixConfig, ctx):
        return cls(ctx.new_model(), config)

    def train_augment(self, default, splits):
        c = self.config
        return AugMixViews(default, splits.mean, splits.std, width=c.width, depth=c.depth, severity=c.severity)

    def train_step(self, x, y, idx, epoch) -> StepOutput:
        require(x.dim() == 5 and x.shape[1] == 3, f"augmix expects (N, 3, C, H, W) batches (clean + 2 views), got {tuple(x.shape)}")
        n = x.shape[0]
        logits = self.model(x.transpose(0, 1).reshape(3 * n, *x.shape[2:]))  # clean batch, then aug1, then aug2
        clean, aug1, aug2 = logits.split(n)
        loss = F.cross_entropy(clean.float(), y) + self.config.jsd_weight * jensen_shannon([clean, aug1, aug2])
        return StepOutput(loss, clean)
