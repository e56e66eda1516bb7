"""The CUDA path: bf16 autocast, channels_last, the device-resident loader on the GPU, torch.compile,
one-process NCCL. Marked `cuda`; skipped where no GPU is present (run: pytest -m cuda)."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F

from robustlab.data import AugmentConfig, BatchAugment, DeviceLoader, Normalize
from robustlab.engine import TrainConfig, fit
from robustlab.models import create_model
from robustlab.precision import resolve_precision
from robustlab.schedules import OptimConfig
from robustlab.strategies import CrossEntropy, StepOutput
from toy_images import band_images

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class Probe(CrossEntropy):
    """Cross-entropy that records where and how its train_step runs."""

    def __init__(self, model):
        super().__init__(model)
        self.seen = set()

    def train_step(self, x, y, idx, epoch):
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        self.seen.add((x.device.type, x.is_contiguous(memory_format=torch.channels_last),
                       torch.is_autocast_enabled("cuda"), logits.dtype, loss.dtype))
        return StepOutput(loss, logits)


def _fit(compile: bool = False, precision: str = "auto"):
    torch.manual_seed(0)
    x, y = band_images(576)
    train = DeviceLoader(x[:512], y[:512], 64, BatchAugment(AugmentConfig(crop_pad=0, flip=True), MEAN, STD),
                         seed=0, device="cuda")
    test = DeviceLoader(x[512:], y[512:], 64, Normalize(MEAN, STD), shuffle=False, device="cuda")
    cfg = TrainConfig(epochs=4, batch_size=64, precision=precision, compile=compile, tta="none",
                      optim=OptimConfig(optimizer="adam", lr=3e-3, weight_decay=0.0, schedule="constant"))
    strategy = Probe(create_model("tiny_cnn", num_classes=4))
    return strategy, train, fit(strategy, train, cfg, test_loader=test, quiet=True, num_classes=4)


def test_auto_is_bf16_with_channels_last_on_a_bf16_gpu():
    policy = resolve_precision("auto", "cuda")
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert (policy.name, policy.channels_last) == (("bf16", True) if native else ("fp32", False))
    conv = torch.nn.Conv2d(3, 8, 3).cuda()
    with resolve_precision("bf16", "cuda").autocast():
        assert conv(torch.randn(2, 3, 8, 8, device="cuda")).dtype == torch.bfloat16


def test_fit_on_the_gpu_trains_from_the_device_loader_in_bf16_channels_last():
    strategy, train, result = _fit()
    assert train.images.device.type == "cuda" and train.labels.device.type == "cuda"
    x, y, idx = next(iter(train))
    assert x.device.type == y.device.type == idx.device.type == "cuda"
    policy = resolve_precision("auto", "cuda")
    assert strategy.seen == {("cuda", policy.channels_last, policy.bf16, torch.float32, torch.float32)}
    assert result.precision["precision"] == policy.name and result.precision["device"] == "cuda"
    assert strategy.model.features[0].weight.is_contiguous(memory_format=torch.channels_last) == policy.channels_last
    assert result.metrics["test_acc"] > 0.6  # chance is 0.25


def test_compiled_networks_train_and_match_eager_outputs():
    strategy, _, result = _fit(compile=True)
    assert result.metrics["test_acc"] > 0.6
    x = torch.rand(8, 3, 16, 16, device="cuda")
    strategy.eval()
    with torch.no_grad(), resolve_precision("auto", "cuda").autocast():
        compiled = strategy.model(x)
        eager = strategy.model._orig_mod(x) if hasattr(strategy.model, "_orig_mod") else strategy.model.forward(x)
    assert torch.allclose(compiled.float(), eager.float(), atol=5e-2)


def test_fp32_on_the_gpu_has_no_autocast_and_contiguous_inputs():
    strategy, _, result = _fit(precision="fp32")
    assert strategy.seen == {("cuda", False, False, torch.float32, torch.float32)}
    assert result.precision["memory_format"] == "contiguous"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_nccl_group_reduces_and_wraps_ddp():
    import torch.distributed as dist

    from robustlab import distributed

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        t = torch.full((3,), 2.0, device="cuda")
        dist.all_reduce(t)
        assert t.tolist() == [2.0, 2.0, 2.0]
        strategy = CrossEntropy(create_model("tiny_cnn")).cuda()
        ddp = distributed.wrap_for_training(strategy, torch.device("cuda", torch.cuda.current_device()))
        assert isinstance(ddp.module.model.features[1], torch.nn.SyncBatchNorm)
        x, y = torch.rand(4, 3, 16, 16, device="cuda"), torch.arange(4, device="cuda")
        ddp(x, y, None, 0).loss.backward()
        assert all(p.grad is not None for p in strategy.parameters())
    finally:
        dist.destroy_process_group()
