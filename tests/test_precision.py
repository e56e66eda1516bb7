"""The precision policy: what `auto` picks, what runs in bf16, what stays float32, and the CLI."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab import precision as P
from robustlab.cli import Parser, add_train_args, apply_train_args
from robustlab.data import AugmentConfig, BatchAugment, DeviceLoader, Normalize
from robustlab.engine import TrainConfig, fit
from robustlab.errors import UsageError
from robustlab.evaluate import collect_logits
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import CrossEntropy, StepOutput
from toy_images import band_images

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


# ---- detection and resolution -----------------------------------------------------------------

@pytest.mark.parametrize("caps, native", [({"avx512_bf16": True}, True), ({"amx_bf16": True, "avx512_f": True}, True),
                                          ({"avx512_f": True, "avx512_bw": True, "avx2": True}, False),
                                          ({"avx512_bf16": False, "amx_bf16": False}, False), ({}, False)])
def test_native_bf16_needs_a_bf16_dot_product_instruction(caps, native):
    assert P.cpu_has_native_bf16(caps) is native


def test_cpuinfo_flags_are_read_from_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile\n\n")
    flags = P._cpuinfo_flags(str(info))
    assert flags["avx512_bf16"] and flags["avx512f"] and "amx_bf16" not in flags
    assert P.cpu_has_native_bf16(flags)
    assert P._cpuinfo_flags(str(tmp_path / "missing")) == {}


def test_auto_is_bf16_with_channels_last_only_on_a_cpu_with_native_bf16(monkeypatch):
    monkeypatch.setattr(P, "cpu_capabilities", lambda: {"avx512_bf16": True})
    auto = P.resolve_precision("auto", "cpu")
    assert (auto.name, auto.channels_last, auto.memory_format) == ("bf16", True, "channels_last")
    assert auto.describe() == {"requested": "auto", "precision": "bf16", "memory_format": "channels_last", "device": "cpu"}
    assert not P.resolve_precision("auto", "cpu", channels_last=False).channels_last
    monkeypatch.setattr(P, "cpu_capabilities", lambda: {"avx512_f": True, "avx2": True})
    plain = P.resolve_precision("auto", "cpu")
    assert (plain.name, plain.channels_last) == ("fp32", False)
    # An explicit choice wins over detection; fp32 never uses channels_last.
    assert P.resolve_precision("bf16", "cpu").name == "bf16"
    assert P.resolve_precision("fp32", "cpu").memory_format == "contiguous"


def _fake_native_bf16(monkeypatch, device: str, native: bool) -> None:
    """Fake the device's bf16 capability: CPU flags, or CUDA's bf16 support (no GPU needed)."""
    if device == "cpu":
        monkeypatch.setattr(P, "cpu_capabilities", lambda: {"amx_bf16": True} if native else {"avx512_f": True})
    else:
        monkeypatch.setattr(P.torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)


class _Mlp(nn.Module):
    """Not convolutional: a ViT-like patch embedding (one convolution) and linear layers."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 10))

    def forward(self, x):
        return self.head(self.embed(x))


# (device, native bf16, convolutional model) -> (precision, memory format) under --precision auto
AUTO_POLICY = [
    ("cpu", True, True, "bf16", "channels_last"),
    ("cpu", True, False, "bf16", "channels_last"),
    ("cpu", False, True, "fp32", "channels_last"),   # the fastest plain fp32 for a CNN on a CPU
    ("cpu", False, False, "fp32", "contiguous"),
    ("cuda", True, True, "bf16", "channels_last"),
    ("cuda", True, False, "bf16", "channels_last"),
    ("cuda", False, True, "fp32", "contiguous"),     # GPUs without bf16: unmeasured, left as they were
    ("cuda", False, False, "fp32", "contiguous"),
]


@pytest.mark.parametrize("device, native, conv, precision, memory_format", AUTO_POLICY)
def test_auto_policy_per_device_bf16_capability_and_model_kind(monkeypatch, device, native, conv, precision,
                                                               memory_format):
    _fake_native_bf16(monkeypatch, device, native)
    model = create_model("tiny_cnn") if conv else _Mlp()
    assert P.is_convolutional(model) is conv
    policy = P.resolve_precision("auto", device, model=model)
    assert (policy.name, policy.memory_format) == (precision, memory_format)
    assert policy.describe() == {"requested": "auto", "precision": precision, "memory_format": memory_format,
                                 "device": device}
    # channels_last=False (TrainConfig.channels_last) keeps contiguous tensors whatever the policy
    assert not P.resolve_precision("auto", device, channels_last=False, model=model).channels_last
    # explicit choices ignore the model: fp32 is the contiguous reference, bf16 always channels_last
    assert P.resolve_precision("fp32", device, model=model).memory_format == "contiguous"
    assert P.resolve_precision("bf16", device, model=model).memory_format == "channels_last"
    # without a model (evaluation helpers) nothing is known to be convolutional
    assert P.resolve_precision("auto", device).memory_format == ("channels_last" if native else "contiguous")


def test_convolutional_means_two_or_more_2d_convolutions():
    assert P.is_convolutional(create_model("small_cnn"))
    assert not P.is_convolutional(create_model("vit_cifar"))  # its only convolution embeds the patches
    assert not P.is_convolutional(nn.Sequential(nn.Conv2d(3, 4, 3)))
    assert P.is_convolutional(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)))
    assert not P.is_convolutional(nn.Linear(3, 4))


def test_unknown_precision_and_unsupported_device_are_usage_errors():
    with pytest.raises(UsageError, match="unknown precision 'fp16'"):
        P.resolve_precision("fp16", "cpu")
    with pytest.raises(UsageError, match="bf16 is supported on CPU and CUDA"):
        P.resolve_precision("bf16", "meta")
    with pytest.raises(UsageError, match="unknown precision"):
        TrainConfig(precision="half").validate()


# ---- what runs in bf16 and what stays float32 ---------------------------------------------------

def test_bf16_autocast_runs_convolutions_in_bf16_and_fp32_does_not():
    conv, x = nn.Conv2d(3, 4, 3), torch.randn(2, 3, 8, 8)
    with P.resolve_precision("bf16", "cpu").autocast():
        assert conv(x).dtype == torch.bfloat16
    with P.resolve_precision("fp32", "cpu").autocast():
        assert conv(x).dtype == torch.float32


def test_prepare_sets_channels_last_weights_and_float32_network_outputs():
    torch.manual_seed(0)
    strategy = CrossEntropy(create_model("tiny_cnn"))
    policy = P.resolve_precision("bf16", "cpu")
    policy.prepare(strategy)
    policy.prepare(strategy)  # idempotent: one cast hook per network
    conv = strategy.model.features[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    assert len(strategy.model._forward_hooks) == 1
    x = policy.format_input(torch.randn(4, 3, 16, 16))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with policy.autocast():
        assert strategy.model.forward_features(x).dtype == torch.bfloat16  # the body runs in bf16
        logits = strategy.model(x)
    assert logits.dtype == torch.float32  # ...and hands float32 logits to losses and statistics
    # Outputs equal the bf16 result, only widened: the cast adds no rounding of its own.
    with P.resolve_precision("bf16", "cpu").autocast():
        raw = strategy.model.head(strategy.model.forward_features(x))
    assert torch.equal(logits, raw.float())
    fp32 = P.resolve_precision("fp32", "cpu")
    net = fp32.prepare(create_model("tiny_cnn"))
    assert net.features[0].weight.is_contiguous() and not net._forward_hooks
    assert fp32.format_input(x.contiguous()).is_contiguous()


def test_float_outputs_casts_tuples_and_leaves_other_values():
    out = P._to_float((torch.ones(2, dtype=torch.bfloat16), [torch.ones(1, dtype=torch.float16)], torch.ones(1, dtype=torch.long), 3))
    assert out[0].dtype == torch.float32 and out[1][0].dtype == torch.float32
    assert out[2].dtype == torch.long and out[3] == 3


def test_collect_logits_with_a_policy_matches_a_direct_bf16_evaluation():
    torch.manual_seed(0)
    net = create_model("tiny_cnn").eval()
    x, y = torch.rand(24, 3, 16, 16), torch.arange(24) % 10
    policy = P.resolve_precision("bf16", "cpu")
    logits, labels = collect_logits(net, [(x[:12], y[:12], None), (x[12:], y[12:], None)], precision=policy)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = net(x.contiguous(memory_format=torch.channels_last)).float()
    assert logits.dtype == torch.float32 and torch.equal(labels, y)
    assert torch.allclose(logits, expected, atol=1e-6)
    with torch.no_grad():
        fp32 = net(x)
    assert not torch.allclose(logits, fp32, atol=1e-4)  # it really ran in bf16
    assert torch.allclose(logits, fp32, atol=0.1)


# ---- the engine -------------------------------------------------------------------------------

class Probe(CrossEntropy):
    """Cross-entropy that records the dtype and memory format of what its train_step sees."""

    def __init__(self, model):
        super().__init__(model)
        self.seen = set()

    def train_step(self, x, y, idx, epoch):
        logits = self.model(x)
        self.seen.add((x.is_contiguous(memory_format=torch.channels_last), logits.dtype,
                       torch.is_autocast_enabled("cpu")))
        loss = F.cross_entropy(logits, y)
        self.seen.add(("loss", loss.dtype))
        return StepOutput(loss, logits)


def _fit(precision: str):
    torch.manual_seed(0)
    x, y = band_images(320)
    train = DeviceLoader(x[:256], y[:256], 32, BatchAugment(AugmentConfig(crop_pad=0, flip=True), MEAN, STD), seed=0)
    test = DeviceLoader(x[256:], y[256:], 64, Normalize(MEAN, STD), shuffle=False)
    cfg = TrainConfig(epochs=3, batch_size=32, precision=precision, tta="none",
                      optim=OptimConfig(optimizer="adam", lr=3e-3, weight_decay=0.0, schedule="constant"))
    strategy = Probe(create_model("tiny_cnn", num_classes=4))
    return strategy, fit(strategy, train, cfg, test_loader=test, quiet=True, num_classes=4)


def test_fit_under_bf16_trains_in_bf16_with_float32_losses_and_records_the_policy():
    strategy, result = _fit("bf16")
    assert strategy.seen == {(True, torch.float32, True), ("loss", torch.float32)}
    assert result.precision == {"requested": "bf16", "precision": "bf16", "memory_format": "channels_last", "device": "cpu"}
    assert strategy.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert result.metrics["test_acc"] > 0.6  # chance is 0.25


def test_fit_under_auto_without_native_bf16_trains_a_cnn_in_fp32_channels_last(monkeypatch):
    _fake_native_bf16(monkeypatch, "cpu", native=False)
    strategy, result = _fit("auto")
    assert strategy.seen == {(True, torch.float32, False), ("loss", torch.float32)}  # channels_last input, no autocast
    assert result.precision == {"requested": "auto", "precision": "fp32", "memory_format": "channels_last", "device": "cpu"}
    assert strategy.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert result.metrics["test_acc"] > 0.6  # chance is 0.25


def test_fit_under_fp32_runs_plain_float32_and_learns_as_well_as_bf16():
    strategy, result = _fit("fp32")
    assert strategy.seen == {(False, torch.float32, False), ("loss", torch.float32)}
    assert result.precision["precision"] == "fp32" and result.precision["memory_format"] == "contiguous"
    assert result.metrics["test_acc"] > 0.6
    _, bf16 = _fit("bf16")
    assert abs(bf16.metrics["test_acc"] - result.metrics["test_acc"]) <= 0.15


# ---- command line -----------------------------------------------------------------------------

def _parse(argv):
    p = Parser(prog="t")
    add_train_args(p)
    args = p.parse_args(argv)
    train = TrainConfig()
    apply_train_args(args, train, AugmentConfig())
    return train


def test_precision_flag_and_no_amp_alias():
    assert TrainConfig().precision == "auto" and _parse([]).precision == "auto"
    assert _parse(["--precision", "bf16"]).precision == "bf16"
    assert _parse(["--no-amp"]).precision == "fp32"
    assert _parse(["--no-amp", "--precision", "fp32"]).precision == "fp32"
    with pytest.raises(UsageError, match="--no-amp contradicts --precision bf16"):
        _parse(["--no-amp", "--precision", "bf16"])
    with pytest.raises(SystemExit) as exit_info:
        _parse(["--precision", "fp16"])
    assert exit_info.value.code == 2
