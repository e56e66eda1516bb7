"""Numeric precision and memory format: one policy for training, evaluation and feature extraction.

    auto  the fastest plain setting: bf16 autocast + channels_last where the hardware computes bf16
          natively (CUDA GPUs with bf16, Ampere and newer; CPUs with AVX512-BF16 or AMX-BF16);
          elsewhere fp32 (emulated bf16 is slower than fp32), with channels_last on a CPU for a
          convolutional network (oneDNN's fp32 convolutions are faster on it: small_cnn 1.44x on an
          idle Xeon, 1.23x on an AMD EPYC without bf16, `python -m robustlab.bench`; README, Speed)
          and contiguous tensors otherwise (a CUDA GPU without bf16, unmeasured; a network that is
          not convolutional, e.g. a ViT, whose only convolution embeds the patches).
    bf16  bf16 autocast + channels_last on any CPU or CUDA device.
    fp32  plain fp32, contiguous tensors: the reference path.

Under bf16 only the autocast-listed ops (convolutions, matmuls) run in bf16. The networks' outputs
are cast back to float32 (`float_outputs`), so everything a strategy computes from logits or
features (losses, softmax statistics, loss rankings, mixture models) and every metric (accuracy,
ECE) is computed in float32.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from robustlab.errors import require
from robustlab.settings import PRECISIONS  # noqa: F401  (re-exported)

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that compute bf16 dot products


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> dict[str, bool]:
    """CPU flags from /proc/cpuinfo (torch before 2.9 has no `torch.cpu.get_capabilities`)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        if line.startswith("flags"):
            return {flag: True for flag in line.split(":", 1)[1].split()}
    return {}


def cpu_capabilities() -> Mapping[str, object]:
    get = getattr(torch.cpu, "get_capabilities", None)
    return get() if get is not None else _cpuinfo_flags()


def cpu_has_native_bf16(capabilities: Mapping[str, object] | None = None) -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16)."""
    caps = cpu_capabilities() if capabilities is None else capabilities
    return any(bool(caps.get(flag)) for flag in NATIVE_BF16_FLAGS)


def has_native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


@dataclass(frozen=True)
class Precision:
    """A resolved policy: `name` is "bf16" or "fp32"; `requested` is what the user asked for."""
    name: str
    channels_last: bool
    device_type: str
    requested: str = "auto"

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    @property
    def memory_format(self) -> str:
        return "channels_last" if self.channels_last else "contiguous"

    def autocast(self):
        """A fresh autocast context (bf16) or a no-op one (fp32)."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    def format_input(self, x: torch.Tensor) -> torch.Tensor:
        """Image batches (N, C, H, W) in the policy's memory format; other tensors unchanged."""
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare(self, module: nn.Module) -> nn.Module:
        """Put `module`'s weights in the memory format; under bf16 its submodules hand back float32."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        if self.bf16:
            for child in module.children():
                float_outputs(child)
        return module

    def describe(self) -> dict:
        """What the run record stores."""
        return {"requested": self.requested, "precision": self.name, "memory_format": self.memory_format,
                "device": self.device_type}


def is_convolutional(model: nn.Module) -> bool:
    """Whether `model` is a convolutional network: two or more 2-d convolutions (a vision
    transformer's single patch-embedding convolution does not make it one)."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) >= 2


def resolve_precision(requested: str, device: str | torch.device, channels_last: bool = True,
                      model: nn.Module | None = None) -> Precision:
    """The policy for `device` (and, under auto, for `model`: None = not known to be convolutional);
    `channels_last=False` keeps contiguous tensors always."""
    require(requested in PRECISIONS, f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if requested == "auto":
        name = "bf16" if has_native_bf16(device) else "fp32"
    else:
        require(requested == "fp32" or device.type in ("cpu", "cuda"),
                f"bf16 is supported on CPU and CUDA devices only, not {device.type!r}")
        name = requested
    fp32_cpu_conv = (requested == "auto" and name == "fp32" and device.type == "cpu"
                     and model is not None and is_convolutional(model))
    return Precision(name, channels_last and (name == "bf16" or fp32_cpu_conv), device.type, requested)


def _to_float(value):
    if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16):
        return value.float()
    if isinstance(value, tuple):
        return tuple(_to_float(v) for v in value)
    if isinstance(value, list):
        return [_to_float(v) for v in value]
    return value


def _float_hook(module, args, output):
    return _to_float(output)


def float_outputs(module: nn.Module) -> nn.Module:
    """Cast `module`'s bf16/fp16 outputs to float32 (idempotent: one hook per module)."""
    if not getattr(module, "_float_outputs", False):
        module.register_forward_hook(_float_hook)
        module._float_outputs = True
    return module
