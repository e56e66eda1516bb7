"""airbench's lookahead weights: an exponential moving average that is copied back into the network.

Every `every` optimizer steps from epoch `start_epoch` on, each weight and BatchNorm statistic
becomes  ema <- ema + (1 - rho) * (w - ema);  w <- ema,  with rho = (decay ** every) * (t / T) ** power
(t the step, T the total steps), so the averaging is weak early and strong at the end. The first
such step only takes the snapshot; every epoch ends with w <- ema. Per-sample state of a strategy
(buffers outside normalization layers, e.g. ELR's targets) is not averaged.
"""
from __future__ import annotations

import torch
from torch import nn

from robustlab.settings import LookaheadConfig  # noqa: F401  (re-exported)


def averaged_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> tensor of what the lookahead averages: float parameters and normalization statistics."""
    norm_types = (nn.modules.batchnorm._NormBase,)
    out = {f"p:{n}": p for n, p in module.named_parameters() if p.is_floating_point()}
    for name, m in module.named_modules():
        if isinstance(m, norm_types):
            for bname, b in m.named_buffers(recurse=False):
                if b.is_floating_point():
                    out[f"b:{name}.{bname}"] = b
    return out


class Lookahead:
    def __init__(self, module: nn.Module, cfg: LookaheadConfig):
        cfg.validate()
        self.cfg = cfg
        self.ema: dict[str, torch.Tensor] | None = None

    def rho(self, step: int, total: int) -> float:
        return self.cfg.decay ** self.cfg.every * (step / total) ** self.cfg.power

    @torch.no_grad()
    def update(self, module: nn.Module, decay: float) -> None:
        tensors = averaged_tensors(module)
        if self.ema is None:
            self.ema = {k: v.detach().clone() for k, v in tensors.items()}
            return
        for key, value in tensors.items():
            ema = self.ema[key]
            ema.lerp_(value.detach().to(ema.dtype), 1 - decay)
            value.copy_(ema)

    def after_step(self, module: nn.Module, epoch: int, step: int, total: int) -> None:
        """Call after optimizer step number `step` (1-based over the whole run) of epoch `epoch` (0-based)."""
        if self.cfg.enabled and epoch >= self.cfg.start_epoch and step % self.cfg.every == 0:
            self.update(module, self.rho(step, total))

    def end_epoch(self, module: nn.Module) -> None:
        if self.ema is not None:
            self.update(module, 1.0)

    def state_dict(self) -> dict:
        return {"ema": self.ema}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state.get("ema")
