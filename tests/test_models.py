"""The model registry: every architecture trains a step, splits into features + head, has the
parameter count its source reports, and honours its options."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, SEModule
from torch import nn

from robustlab.errors import UsageError
from robustlab.models import create_model, list_models
from robustlab.models.base import Classifier
from robustlab.models.resnet import BasicBlock

ALL = list_models()
REPORT_MODELS = ("vgg", "vgg1", "vgg3", "vgg3_strided", "vgg3_gap", "vgg_patchify", "resnet18", "se_resnet18",
                 "resnet34", "resnet_cifar", "resnet_cifar_1m", "se_resnet80", "convnext_cifar", "vit_cifar",
                 "coteach_cnn", "preact_resnet18")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def of_type(model: nn.Module, cls) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, cls)]


def convs(model: nn.Module) -> list[nn.Conv2d]:
    return of_type(model, nn.Conv2d)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_every_report_architecture_is_registered():
    assert set(REPORT_MODELS) <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_train_step_and_feature_head_split(name, images):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    assert isinstance(model, Classifier)
    model.train()
    logits = model(images)
    assert logits.shape == (2, 10)
    F.cross_entropy(logits, torch.tensor([1, 7])).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"parameters without gradient: {unused[:5]}"
    trained = [p for p in model.parameters() if p.requires_grad]  # airbench freezes its whitening and BN scales
    assert all(torch.isfinite(p.grad).all() for p in trained)
    assert sum(p.grad.abs().sum() for p in trained) > 0

    model.eval()
    with torch.no_grad():
        features = model.forward_features(images)
        logits = model(images)
        assert features.shape == (2, model.num_features)
        torch.testing.assert_close(model.forward_head(features), logits)


@pytest.mark.parametrize("name", ALL)
def test_hundred_classes(name, images):
    model = create_model(name, num_classes=100).eval()
    with torch.no_grad():
        assert model(images).shape == (2, 100)
    last = of_type(model.head, nn.Linear)[-1]
    assert (last.in_features, last.out_features) == (model.num_features, 100)


# ---- parameter counts reported by the sources ----

def test_resnet18_is_the_standard_cifar_resnet18():
    model = create_model("resnet18")
    assert n_params(model) == 11_173_962
    stem = model.stem[0]
    assert (stem.kernel_size, stem.stride, stem.out_channels) == ((3, 3), (1, 1), 64)
    assert not of_type(model, nn.MaxPool2d)
    assert [len(stage) for stage in model.stages] == [2, 2, 2, 2]
    assert [stage[-1].conv2.out_channels for stage in model.stages] == [64, 128, 256, 512]
    assert n_params(create_model("resnet34")) == 21_282_122


def test_resnet_cifar_1m_matches_report_004_exactly():
    model = create_model("resnet_cifar_1m")
    assert n_params(model) == 1_177_130  # the report's total, to the parameter
    assert abs(n_params(model) - 1_177_130) <= 0.01 * 1_177_130
    assert [len(stage) for stage in model.stages] == [4, 4, 3]
    assert [stage[0].conv1.out_channels for stage in model.stages] == [32, 64, 128]
    assert model.stem[0].out_channels == 32 and model.stem[0].bias is None
    # dropout after each of the 22 block convolutions; 1x1 conv + BN shortcuts where the width changes
    assert len(of_type(model.stages, nn.Dropout)) == 22
    projections = [b.shortcut for b in of_type(model, BasicBlock) if isinstance(b.shortcut, nn.Sequential)]
    assert len(projections) == 2
    assert all(p[0].kernel_size == (1, 1) and p[0].stride == (2, 2) for p in projections)


def test_se_resnet80_matches_report_003_exactly():
    model = create_model("se_resnet80")
    running = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    # The report counts as Keras does: BN moving statistics are 11,200 non-trainable parameters.
    assert running == 11_200
    assert n_params(model) == 4_617_010
    assert n_params(model) + running == 4_628_210
    assert abs(n_params(model) - 4_628_210) <= 0.01 * 4_628_210
    blocks = of_type(model, BasicBlock)
    assert len(blocks) == 36 and all(isinstance(b.se, SEModule) for b in blocks)
    assert [len(stage) for stage in model.stages] == [12, 12, 12]


def test_se_resnet18_adds_reduction_16_se_modules():
    plain, se = create_model("resnet18"), create_model("se_resnet18")
    widths = [64] * 2 + [128] * 2 + [256] * 2 + [512] * 2
    assert n_params(se) - n_params(plain) == sum(2 * c * (c // 16) + c // 16 + c for c in widths)
    assert [b.se.fc1.out_channels for b in of_type(se, BasicBlock)] == [c // 16 for c in widths]


def test_se_rescales_the_residual_branch_after_its_last_norm_before_the_addition(images):
    model = create_model("se_resnet18").eval()
    block = model.stages[1][0]  # has a projection shortcut
    seen = {}
    block.bn2.register_forward_hook(lambda m, i, o: seen.__setitem__("bn2", o.clone()))
    block.se.register_forward_hook(lambda m, i, o: seen.update(se_in=i[0].clone(), se_out=o.clone()))
    with torch.no_grad():
        x = model.stages[0](model.stem(images))
        out = block(x)
        torch.testing.assert_close(seen["se_in"], seen["bn2"])
        torch.testing.assert_close(out, torch.relu(seen["se_out"] + block.shortcut(x)))


def test_preact_resnet18():
    model = create_model("preact_resnet18")
    assert n_params(model) == 11_171_274
    projections = [b.shortcut for stage in model.stages for b in stage if b.shortcut is not None]
    assert [(p.kernel_size, p.stride) for p in projections] == [((1, 1), (2, 2))] * 3
    # pre-activation: no ReLU after the additions, so the last stage's output has negative values
    with torch.no_grad():
        assert (model.eval().stages(model.stem(torch.randn(2, 3, 32, 32))) < 0).any()


# ---- registry and option errors ----

def test_unknown_name_lists_known_models():
    with pytest.raises(UsageError) as err:
        create_model("resnet19")
    message = str(err.value)
    assert "resnet19" in message and "\n" not in message
    assert all(name in message for name in ALL)


@pytest.mark.parametrize("name, kwargs", [
    ("vgg3", {"downsample": "avg"}),
    ("vgg3", {"head": "mlp"}),
    ("vgg3", {"dropout": 1.5}),
    ("vgg3", {"norm": "batch"}),
    ("vgg3", {"batchnorm": False, "norm": "gn"}),
    ("vgg3", {"widths": [32, 64]}),
    ("vgg", {"blocks": 0}),
    ("vgg", {"blocks": 6}),
    ("resnet18", {"norm": "xx"}),
    ("resnet_cifar", {"depths": (2, 2)}),
    ("resnet_cifar", {"block_dropout": -0.1}),
    ("convnext_cifar", {"stem": "conv7"}),
    ("convnext_cifar", {"dims": (32, 64, 128)}),
    ("vit_cifar", {"patch_size": 5}),
    ("vit_cifar", {"num_heads": 5}),
    ("coteach_cnn", {"dropout": 1.0}),
    ("preact_resnet18", {"norm": "bn2d"}),
])
def test_bad_option_values_are_usage_errors(name, kwargs):
    with pytest.raises(UsageError) as err:
        create_model(name, num_classes=10, **kwargs)
    assert "\n" not in str(err.value) and str(err.value)


# ---- normalization options (report 001) ----

NORM_TYPES = {"bn": nn.BatchNorm2d, "gn": nn.GroupNorm, "ln": LayerNorm2d, "in": nn.InstanceNorm2d}


@pytest.mark.parametrize("name", ["vgg3", "resnet_cifar", "coteach_cnn", "preact_resnet18"])
def test_norm_option_selects_the_layer_type(name):
    for norm, cls in NORM_TYPES.items():
        model = create_model(name, norm=norm)
        present = {c for c in NORM_TYPES.values() if of_type(model, c)}
        assert present == {cls}, (norm, present)
    model = create_model(name, norm="none")
    assert not any(of_type(model, c) for c in NORM_TYPES.values())


def test_vgg_hidden_layer_norm_follows_the_norm_option():
    assert len(of_type(create_model("vgg3"), nn.BatchNorm1d)) == 1
    vector_norms = [m for m in create_model("vgg3", norm="ln").modules() if type(m) is nn.LayerNorm]
    assert [m.normalized_shape for m in vector_norms] == [(128,)]
    plain = create_model("vgg3", batchnorm=False)
    assert not of_type(plain, nn.BatchNorm2d) and not of_type(plain, nn.BatchNorm1d)
    assert all(c.bias is not None for c in convs(plain))


# ---- VGG variants (reports 000 and 002) ----

def test_vgg3_pools_twice_and_feeds_an_8x8x128_map_to_fc128():
    model = create_model("vgg3")
    assert [c.out_channels for c in convs(model)] == [32, 32, 64, 64, 128, 128]
    assert all(c.stride == (1, 1) for c in convs(model))
    assert len(of_type(model, nn.MaxPool2d)) == 2  # the last block is not pooled
    hidden = of_type(model.pool, nn.Linear)[0]
    assert (hidden.in_features, hidden.out_features) == (128 * 8 * 8, 128)
    assert model.num_features == 128


def test_vgg1_is_one_pooled_block():
    model = create_model("vgg1")
    assert [c.out_channels for c in convs(model)] == [32, 32]
    assert len(of_type(model, nn.MaxPool2d)) == 1
    assert of_type(model.pool, nn.Linear)[0].in_features == 32 * 16 * 16


def test_vgg3_strided_replaces_pooling_by_stride_2_second_convs():
    model, pooled = create_model("vgg3_strided"), create_model("vgg3")
    assert not of_type(model, nn.MaxPool2d)
    assert [c.stride for c in convs(model)] == [(1, 1), (2, 2), (1, 1), (2, 2), (1, 1), (1, 1)]
    assert of_type(model.pool, nn.Linear)[0].in_features == 128 * 8 * 8
    assert n_params(model) == n_params(pooled)


def test_vgg3_gap_has_no_large_fc():
    model = create_model("vgg3_gap")
    assert not of_type(model, nn.MaxPool2d) and of_type(model, nn.AdaptiveAvgPool2d)
    linears = of_type(model, nn.Linear)
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 10)]
    assert n_params(model) < n_params(create_model("vgg3_strided")) / 4


def test_vgg_patchify_is_report_002s_net():
    model = create_model("vgg_patchify")
    stem = convs(model)[0]
    assert (stem.kernel_size, stem.stride, stem.out_channels) == ((2, 2), (2, 2), 64)
    assert [c.out_channels for c in convs(model)[1:]] == [64, 64, 128, 128, 256, 256]
    assert len(of_type(model, nn.MaxPool2d)) == 3
    hidden = of_type(model.pool, nn.Linear)[0]
    assert (hidden.in_features, hidden.out_features) == (256 * 2 * 2, 128)
    assert of_type(model.head, nn.Dropout)[0].p == 0.5


def test_vgg_width_and_head_options():
    assert [c.out_channels for c in convs(create_model("vgg", blocks=2, base_width=16))] == [16, 16, 32, 32]
    assert [c.out_channels for c in convs(create_model("vgg3", widths=[16, 32, 64]))][::2] == [16, 32, 64]
    assert of_type(create_model("vgg3", dropout=0.3).head, nn.Dropout)[0].p == 0.3
    assert not of_type(create_model("vgg3").head, nn.Dropout)
    # the regularization study's arch arms: presets accept downsample/head overrides
    gap = create_model("vgg3", downsample="stride", head="gap")
    assert n_params(gap) == n_params(create_model("vgg3_gap"))


# ---- the other families ----

def test_convnext_cifar_stem_and_resolutions(images):
    model = create_model("convnext_cifar").eval()
    stem = model.backbone.stem[0]
    assert (stem.kernel_size, stem.stride) == ((3, 3), (1, 1))
    depthwise = [c for c in convs(model) if c.groups > 1]
    assert depthwise and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert {c.kernel_size for c in depthwise} == {(7, 7)}
    assert of_type(model, LayerNorm2d)
    with torch.no_grad():
        assert model.backbone.forward_features(images).shape == (2, 384, 4, 4)
        patch2 = create_model("convnext_cifar", stem="patch2").eval()
        assert patch2.backbone.forward_features(images).shape == (2, 384, 2, 2)
    assert 1_000_000 < n_params(model) < 10_000_000


def test_vit_cifar_uses_4x4_patches_and_a_pooled_embedding(images):
    model = create_model("vit_cifar").eval()
    proj = model.backbone.patch_embed.proj
    assert (proj.kernel_size, proj.stride) == ((4, 4), (4, 4))
    with torch.no_grad():
        tokens = model.backbone.forward_features(images)
        assert tokens.shape == (2, 1 + 64, model.num_features)  # class token + 8x8 patches
        torch.testing.assert_close(model.forward_features(images), tokens[:, 0])
        avg = create_model("vit_cifar", global_pool="avg", depth=1).eval()
        assert avg.forward_features(images).shape == (2, avg.num_features)


def test_coteach_cnn_follows_the_paper_table():
    model = create_model("coteach_cnn")
    layers = convs(model)
    assert [c.out_channels for c in layers] == [128] * 3 + [256] * 3 + [512, 256, 128]
    assert [c.kernel_size[0] for c in layers] == [3] * 7 + [1] * 2
    assert layers[6].padding == (0, 0)  # the 512 conv is "valid"
    assert len(of_type(model, nn.BatchNorm2d)) == 9
    assert {m.negative_slope for m in of_type(model, nn.LeakyReLU)} == {0.01}
    assert [m.p for m in of_type(model, nn.Dropout)] == [0.25, 0.25]
    assert len(of_type(model, nn.MaxPool2d)) == 2
    with torch.no_grad():
        assert model.eval().features(torch.randn(1, 3, 32, 32)).shape == (1, 128, 6, 6)


# ---- command line ----

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustlab.models", *args], capture_output=True, text=True, timeout=300)


def test_cli_json_list_matches_create_model():
    proc = run_cli("--list", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert sorted(listed) == ALL
    for name, row in listed.items():
        model = create_model(name, num_classes=10)
        assert row == {"params": n_params(model), "features": model.num_features}, name


@pytest.mark.parametrize("argv", [["--list", "--format", "xml"], ["--info", "resnet19"], [], ["--list", "--num-classes", "0"]])
def test_cli_bad_input_is_a_one_line_error(argv, capsys):
    from robustlab.models.__main__ import main

    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "error" in err


def test_cli_info(capsys):
    from robustlab.models.__main__ import main

    assert main(["--info", "vgg3_gap", "--num-classes", "100"]) == 0
    params = n_params(create_model("vgg3_gap", num_classes=100))
    assert capsys.readouterr().out.strip().endswith(f"vgg3_gap: {params:,} parameters, 128 features, 100 classes")
