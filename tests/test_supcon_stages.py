"""SupCon stages pinned to their definitions: the loss against a numpy port of the official
SupContrast loss (and its T/0.07 factor), the projection head, the configs and their messages,
building from a run context, the frozen/trained parameters of the classifier stage and loading
the pretrained encoder from a checkpoint or a run of the same study."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustlab.strategies.supcon as supcon
from robustlab.checkpoint import save_checkpoint
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.records import write_record
from robustlab.strategies.supcon import (
    EncoderWithHead,
    FrozenEncoderClassifier,
    ProjectionHead,
    SupConPretrain,
    SupConPretrainConfig,
    SupConProbeConfig,
    SupConViews,
    load_encoder_weights,
)
from test_supcon import PixelReader


def message(excinfo) -> str:
    return str(excinfo.value)


def constant_views(v: torch.Tensor) -> torch.Tensor:
    """(N, V, 3) vectors -> (N, V, 3, 2, 2) constant images that PixelReader reads back exactly."""
    return v[..., None, None].expand(*v.shape, 2, 2).clone()


def official_supcon_loss(features: np.ndarray, labels: np.ndarray, temperature: float,
                         base_temperature: float = 0.07) -> float:
    """numpy port of HobbitLong/SupContrast losses.SupConLoss (contrast_mode='all').

    features: (bsz, n_views, dim), L2-normalised; view-major anchors as in the official code.
    """
    bsz, n_views, _ = features.shape
    contrast = np.concatenate([features[:, v] for v in range(n_views)], axis=0)  # torch.cat(torch.unbind(f, 1))
    logits = contrast @ contrast.T / temperature
    logits = logits - logits.max(axis=1, keepdims=True)
    mask = np.tile((labels[:, None] == labels[None, :]).astype(float), (n_views, n_views))
    logits_mask = 1.0 - np.eye(bsz * n_views)
    mask = mask * logits_mask
    exp_logits = np.exp(logits) * logits_mask
    log_prob = logits - np.log(exp_logits.sum(axis=1, keepdims=True))
    mean_log_prob_pos = (mask * log_prob).sum(axis=1) / mask.sum(axis=1)
    return float((-(temperature / base_temperature) * mean_log_prob_pos).mean())


def identity_head_strategy(temperature: float = 0.1, **kw) -> SupConPretrain:
    strategy = SupConPretrain(PixelReader(), temperature=temperature, **kw)
    strategy.head = nn.Identity()  # embeddings are exactly the given (unit) vectors
    return strategy


# ----------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.07, 0.1, 0.3])
def test_loss_is_the_official_supcon_loss_without_its_t_over_007_factor(tau):
    g = torch.Generator().manual_seed(3)
    f = F.normalize(torch.randn(6, 2, 5, generator=g, dtype=torch.float64), dim=2)
    y = torch.tensor([1, 0, 1, 2, 1, 0])
    loss = identity_head_strategy(tau).train_step(constant_views(f.float()), y, torch.arange(6), 0).loss
    official = official_supcon_loss(f.numpy(), y.numpy(), tau)
    assert loss.item() * tau / 0.07 == pytest.approx(official, rel=1e-5)
    assert loss.dtype == torch.float32 and loss.dim() == 0


def test_loss_with_three_views_counts_every_other_view_as_positive():
    g = torch.Generator().manual_seed(5)
    f = F.normalize(torch.randn(4, 3, 4, generator=g, dtype=torch.float64), dim=2)
    y = torch.tensor([0, 1, 2, 3])  # only the other views are positives
    loss = identity_head_strategy(0.2).train_step(constant_views(f.float()), y, None, 0).loss
    assert loss.item() == pytest.approx(official_supcon_loss(f.numpy(), y.numpy(), 0.2) * 0.07 / 0.2, rel=1e-5)


def test_loss_runs_in_float32_with_autocast_off():
    """A bfloat16 embedding is promoted, and the loss is not autocast to bfloat16 on the way."""

    class ToBF16(nn.Module):
        def forward(self, z):
            return z.to(torch.bfloat16)

    g = torch.Generator().manual_seed(8)
    f = F.normalize(torch.randn(8, 2, 6, generator=g), dim=2).to(torch.bfloat16).float()  # exact in bf16
    y = torch.tensor([0, 1, 0, 1, 2, 2, 3, 0])
    strategy = identity_head_strategy(0.1)
    strategy.head = ToBF16()
    loss = strategy.train_step(constant_views(f), y, None, 0).loss
    unit = F.normalize(f.double(), dim=2)  # the bf16-rounded vectors are off the sphere; the loss uses cosines
    ref = official_supcon_loss(unit.numpy(), y.numpy(), 0.1) * 0.07 / 0.1
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("world", [2, 3])
def test_gathered_loss_reports_the_global_loss_and_keeps_the_wrapper_gradient(monkeypatch, world):
    """With world_size ranks the wrapper's loss is world x the global one: report it / world, keep its gradient."""
    g = torch.Generator().manual_seed(2)
    v = torch.randn(4, 2, 3, generator=g)
    y = torch.tensor([0, 1, 0, 1])

    def loss_and_grad(strategy):
        x = constant_views(v).requires_grad_()
        loss = strategy.train_step(x, y, None, 0).loss
        loss.backward()
        return loss, x.grad

    plain_loss, plain_grad = loss_and_grad(identity_head_strategy(0.2))
    strategy = identity_head_strategy(0.2)
    monkeypatch.setattr(supcon, "_gathering_world_size", lambda loss_fn: world if loss_fn is strategy.loss_fn else 1)
    loss, grad = loss_and_grad(strategy)
    assert loss.item() == pytest.approx(plain_loss.item() / world, rel=1e-6)
    assert torch.allclose(grad, plain_grad, atol=1e-7)


def test_gathering_world_size_is_the_process_groups_only_for_the_wrapper(monkeypatch):
    from pytorch_metric_learning.losses import SupConLoss
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

    wrapper, plain = DistributedLossWrapper(SupConLoss()), SupConLoss()
    assert supcon._gathering_world_size(wrapper) == 1 and supcon._gathering_world_size(plain) == 1  # no group
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a, **k: 4)
    assert supcon._gathering_world_size(wrapper) == 4
    assert supcon._gathering_world_size(plain) == 1
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    assert supcon._gathering_world_size(wrapper) == 1


def test_strategy_holds_the_loss_at_its_temperature_and_wraps_it_when_distributed():
    from pytorch_metric_learning.losses import SupConLoss
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

    plain = SupConPretrain(PixelReader(), temperature=0.25)
    assert type(plain.loss_fn) is SupConLoss and plain.loss_fn.temperature == 0.25 and plain.temperature == 0.25
    wrapped = SupConPretrain(PixelReader(), temperature=0.3, distributed=True)
    assert isinstance(wrapped.loss_fn, DistributedLossWrapper) and wrapped.loss_fn.loss.temperature == 0.3
    default = SupConPretrain(PixelReader())
    assert default.temperature == 0.1 and default.loss_fn.temperature == 0.1
    assert type(default.loss_fn) is SupConLoss  # not distributed unless asked
    assert default.min_crop_scale == 0.2
    assert default.head.net[2].out_features == 128  # proj_dim default
    assert SupConPretrain.views == 2 and SupConPretrain.classifies is False and SupConPretrain.unused_parameters is True


# ----------------------------------------------------------------------------------------------
# Projection head and embedding
# ----------------------------------------------------------------------------------------------


def test_projection_head_is_linear_relu_linear_onto_the_unit_sphere():
    torch.manual_seed(0)
    head = ProjectionHead(6, hidden=4, out_dim=3)
    first, relu, last = head.net
    assert (first.in_features, first.out_features, last.in_features, last.out_features) == (6, 4, 4, 3)
    assert isinstance(relu, nn.ReLU)
    x = torch.randn(5, 6)
    h = np.maximum(x.numpy() @ first.weight.detach().numpy().T + first.bias.detach().numpy(), 0)
    out = h @ last.weight.detach().numpy().T + last.bias.detach().numpy()
    want = out / np.linalg.norm(out, axis=1, keepdims=True)
    np.testing.assert_allclose(head(x).detach().numpy(), want, atol=1e-6)
    assert ProjectionHead(7).net[0].out_features == 7 and ProjectionHead(7).net[2].out_features == 128


@pytest.mark.parametrize("kwargs, text", [({"in_dim": 0}, "0, 0, 128"), ({"in_dim": 5, "out_dim": 0}, "5, 5, 0"),
                                          ({"in_dim": 5, "hidden": 3, "out_dim": 0}, "5, 3, 0"),
                                          ({"in_dim": 0, "hidden": 3}, "0, 3, 128")])
def test_projection_head_rejects_empty_layers(kwargs, text):
    with pytest.raises(UsageError) as err:
        ProjectionHead(**kwargs)
    assert message(err) == f"projection sizes must be >= 1, got {text}"


def test_projection_head_accepts_size_one():
    assert ProjectionHead(1, hidden=1, out_dim=1)(torch.tensor([[2.0]])).abs().item() == pytest.approx(1.0)


def test_embed_projects_the_encoder_features_of_every_view_sample_major():
    torch.manual_seed(1)
    strategy = SupConPretrain(PixelReader(), proj_dim=4)
    assert (strategy.head.net[0].in_features, strategy.head.net[0].out_features) == (3, 3)  # hidden = num_features
    v = torch.randn(3, 2, 3)
    z, views = strategy.embed(constant_views(v))
    assert views == 2 and z.shape == (6, 4)
    assert torch.allclose(z, strategy.head(v.reshape(6, 3)), atol=1e-6)
    z3, views3 = strategy.embed(constant_views(torch.randn(2, 3, 3)))
    assert views3 == 3 and z3.shape == (6, 4)


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (4, 1, 3, 8, 8), (2, 2, 2, 3, 4, 4)])
def test_embed_rejects_anything_but_two_or_more_views(shape):
    with pytest.raises(UsageError) as err:
        SupConPretrain(PixelReader()).embed(torch.zeros(shape))
    assert message(err) == f"SupConPretrain expects views of shape (N, V>=2, C, H, W) from SupConViews, got {shape}"


def test_pretrain_rejects_bad_temperature_and_models_without_features():
    with pytest.raises(UsageError) as err:
        SupConPretrain(PixelReader(), temperature=0.0)
    assert message(err) == "SupCon temperature must be > 0, got 0.0"
    SupConPretrain(PixelReader(), temperature=1e-3)
    with pytest.raises(UsageError) as err:
        SupConPretrain(nn.Linear(3, 3))
    assert message(err) == "SupConPretrain needs a model with forward_features and num_features"

    class NoWidth(nn.Module):
        def forward_features(self, x):
            return x

    with pytest.raises(UsageError) as err:
        SupConPretrain(NoWidth())
    assert message(err) == "SupConPretrain needs a model with forward_features and num_features"


# ----------------------------------------------------------------------------------------------
# Configs and build
# ----------------------------------------------------------------------------------------------


def test_pretrain_config_defaults_and_boundaries():
    cfg = SupConPretrainConfig()
    assert (cfg.temperature, cfg.proj_dim, cfg.min_crop_scale) == (0.1, 128, 0.2)
    cfg.validate()
    SupConPretrainConfig(temperature=1e-4, proj_dim=1, min_crop_scale=1.0).validate()
    for kwargs, text in [
        ({"temperature": 0.0}, "temperature must be > 0, got 0.0"),
        ({"proj_dim": 0}, "proj_dim must be >= 1, got 0"),
        ({"min_crop_scale": 0.0}, "min_crop_scale must be in (0, 1], got 0.0"),
        ({"min_crop_scale": 1.5}, "min_crop_scale must be in (0, 1], got 1.5"),
    ]:
        with pytest.raises(UsageError) as err:
            SupConPretrainConfig(**kwargs).validate()
        assert message(err) == text


def test_probe_config_defaults_and_messages():
    cfg = SupConProbeConfig(encoder_run="r")
    assert (cfg.encoder_checkpoint, cfg.head, cfg.hidden) == (None, "mlp", 256)
    cfg.validate()
    SupConProbeConfig(encoder_checkpoint="x.pt", head="finetune", hidden=1).validate()
    both = "supcon_probe needs exactly one of the options encoder_run (a run id) or encoder_checkpoint (a path)"
    for kwargs, text in [
        ({}, both),
        ({"encoder_run": "r", "encoder_checkpoint": "x.pt"}, both),
        ({"encoder_run": "r", "head": "knn"}, "unknown classifier head 'knn'; choose one of mlp, linear, finetune"),
        ({"encoder_run": "r", "hidden": 0}, "hidden width must be >= 1, got 0"),
    ]:
        with pytest.raises(UsageError) as err:
            SupConProbeConfig(**kwargs).validate()
        assert message(err) == text


def ctx_for(tmp_path=None, experiment=None, distributed=False, num_classes=4):
    return SimpleNamespace(new_model=lambda: create_model("tiny_cnn", 10), num_classes=num_classes,
                           results_dir=tmp_path, experiment=experiment, distributed=distributed)


@pytest.mark.parametrize("distributed", [False, True])
def test_pretrain_build_takes_every_option_from_config_and_context(distributed):
    from pytorch_metric_learning.utils.distributed import DistributedLossWrapper

    cfg = SupConPretrainConfig(temperature=0.3, proj_dim=7, min_crop_scale=0.45)
    strategy = SupConPretrain.build(cfg, ctx_for(distributed=distributed))
    assert strategy.temperature == 0.3 and strategy.min_crop_scale == 0.45
    assert strategy.head.net[0].in_features == 16 and strategy.head.net[2].out_features == 7
    assert isinstance(strategy.loss_fn, DistributedLossWrapper) == distributed
    assert isinstance(strategy.model, nn.Module) and strategy.model.num_features == 16


def test_train_augment_is_two_views_at_the_image_size_and_min_crop_scale():
    strategy = SupConPretrain(PixelReader())
    strategy.min_crop_scale = 0.35
    splits = SimpleNamespace(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6),
                             train=SimpleNamespace(images=torch.zeros(2, 3, 24, 20, dtype=torch.uint8)))
    aug = strategy.train_augment("unused default", splits)
    assert isinstance(aug, SupConViews)
    assert aug.size == 20 and aug.scale == (0.35, 1.0)
    assert torch.allclose(aug.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(aug.std.flatten(), torch.tensor([0.4, 0.5, 0.6]))
    # the SimCLR / SupCon defaults for everything else
    assert aug.flip == 0.5 and aug.jitter == (0.4, 0.4, 0.4, 0.1) and aug.jitter_p == 0.8 and aug.grayscale_p == 0.2
    assert aug.ratio == pytest.approx((3 / 4, 4 / 3))


# ----------------------------------------------------------------------------------------------
# Classifier stage
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head, frozen", [("mlp", True), ("linear", True), ("finetune", False)])
def test_probe_trains_exactly_the_new_head_or_everything_but_the_old_head(head, frozen):
    torch.manual_seed(0)
    encoder = create_model("tiny_cnn", 10)
    strategy = FrozenEncoderClassifier(encoder, num_classes=5, head=head, hidden=9)
    trainable = {name for name, p in strategy.named_parameters() if p.requires_grad}
    new_head = {f"model.head.{n}" for n, _ in strategy.model.head.named_parameters()}
    body = {f"model.encoder.{n}" for n, _ in encoder.named_parameters() if not n.startswith("head.")}
    assert trainable == (new_head if frozen else new_head | body)
    assert not encoder.head.weight.requires_grad and not encoder.head.bias.requires_grad
    assert strategy.model.frozen is frozen and strategy.head_kind == head
    assert strategy.model.num_features == 16


def test_probe_heads_have_the_documented_layers():
    torch.manual_seed(0)
    mlp = FrozenEncoderClassifier(create_model("tiny_cnn", 10), num_classes=5, head="mlp", hidden=9).model.head
    first, relu, last = mlp
    assert (first.in_features, first.out_features, last.in_features, last.out_features) == (16, 9, 9, 5)
    assert isinstance(relu, nn.ReLU)
    x = torch.randn(3, 16)
    assert torch.allclose(mlp(x), last(torch.relu(first(x))))
    for head in ("linear", "finetune"):
        lin = FrozenEncoderClassifier(create_model("tiny_cnn", 10), num_classes=5, head=head).model.head
        assert isinstance(lin, nn.Linear) and (lin.in_features, lin.out_features) == (16, 5)
    default = FrozenEncoderClassifier(create_model("tiny_cnn", 10), num_classes=3)
    assert default.head_kind == "mlp" and default.model.head[0].out_features == 256 and default.model.frozen


def test_probe_step_is_cross_entropy_of_the_new_head_on_encoder_features():
    torch.manual_seed(0)
    encoder = create_model("tiny_cnn", 10)
    strategy = FrozenEncoderClassifier(encoder, num_classes=3, head="linear").train()
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 2, 1, 0])
    out = strategy.train_step(x, y, torch.arange(6), 0)
    logits = strategy.model.head(encoder.eval().forward_features(x))
    assert torch.allclose(out.logits, logits, atol=1e-6)
    expected = -torch.log_softmax(logits, 1)[torch.arange(6), y].mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.targets is None


def test_frozen_features_carry_no_graph_and_finetuned_ones_do():
    encoder = PixelReader()
    frozen = EncoderWithHead(encoder, nn.Linear(3, 2), frozen=True)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert not frozen.forward_features(x).requires_grad
    assert torch.allclose(frozen.forward_features(x), x.mean(dim=(2, 3)))
    tuned = EncoderWithHead(PixelReader(), nn.Linear(3, 2), frozen=False)
    assert tuned.forward_features(x).requires_grad


def test_frozen_encoder_stays_in_eval_mode_and_a_trained_one_follows_train():
    frozen = EncoderWithHead(create_model("tiny_cnn", 10), nn.Linear(16, 2), frozen=True)
    assert not frozen.encoder.training and all(not p.requires_grad for p in frozen.encoder.parameters())
    assert frozen.train() is frozen
    assert frozen.training and frozen.head.training and not frozen.encoder.training
    frozen.eval()
    assert not frozen.training and not frozen.head.training
    tuned = EncoderWithHead(create_model("tiny_cnn", 10), nn.Linear(16, 2), frozen=False)
    assert all(p.requires_grad for p in tuned.encoder.parameters())
    tuned.eval()
    assert tuned.train() is tuned and tuned.encoder.training
    tuned.train(False)
    assert not tuned.encoder.training and not tuned.training


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"head": "knn"}, "unknown classifier head 'knn'; choose one of mlp, linear, finetune"),
        ({"num_classes": 1}, "num_classes must be >= 2, got 1"),
        ({"hidden": 0}, "hidden width must be >= 1, got 0"),
    ],
)
def test_probe_rejects_bad_arguments(kwargs, text):
    args = {"num_classes": 3, **kwargs}
    with pytest.raises(UsageError) as err:
        FrozenEncoderClassifier(create_model("tiny_cnn", 10), **args)
    assert message(err) == text


def test_probe_boundaries_and_encoders_without_features():
    FrozenEncoderClassifier(create_model("tiny_cnn", 10), num_classes=2, hidden=1)
    with pytest.raises(UsageError) as err:
        FrozenEncoderClassifier(nn.Linear(3, 3), num_classes=3)
    assert message(err) == "FrozenEncoderClassifier needs a model with forward_features and num_features"

    class NoWidth(nn.Module):
        def forward_features(self, x):
            return x

    with pytest.raises(UsageError) as err:
        FrozenEncoderClassifier(NoWidth(), num_classes=3)
    assert message(err) == "FrozenEncoderClassifier needs a model with forward_features and num_features"
    # An encoder without a module called `head` is fine (nothing to freeze).
    FrozenEncoderClassifier(PixelReader(), num_classes=3, head="finetune")


# ----------------------------------------------------------------------------------------------
# Loading the pretrained encoder
# ----------------------------------------------------------------------------------------------


def pretrained_state(seed: int = 0, num_classes: int = 10) -> tuple[dict, nn.Module]:
    torch.manual_seed(seed)
    strategy = SupConPretrain(create_model("tiny_cnn", num_classes))
    with torch.no_grad():
        strategy.model.features[1].running_mean.add_(1.5)  # a buffer, too
    return strategy.state_dict(), strategy.model


def test_load_encoder_weights_from_a_pretraining_and_from_a_probe_checkpoint():
    state, source = pretrained_state()
    net = create_model("tiny_cnn", 10)
    assert load_encoder_weights(net, state) == "model."
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in net.state_dict().items())

    probe = FrozenEncoderClassifier(create_model("tiny_cnn", 10), num_classes=3, head="finetune")
    probe.model.encoder.load_state_dict(source.state_dict())
    net2 = create_model("tiny_cnn", 10)
    assert load_encoder_weights(net2, probe.state_dict()) == "model.encoder."
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in net2.state_dict().items())


def test_load_encoder_weights_names_the_source_on_mismatch():
    state, _ = pretrained_state(num_classes=4)
    with pytest.raises(UsageError) as err:
        load_encoder_weights(create_model("tiny_cnn", 10), state, source="run X")
    assert message(err) == ("run X does not fit this model: size mismatch for head.weight: copying a param with "
                            "shape torch.Size([4, 16]) from checkpoint, the shape in current model is "
                            "torch.Size([10, 16]).")
    with pytest.raises(UsageError) as err:
        load_encoder_weights(create_model("small_cnn", 10), state)
    assert message(err) == "checkpoint does not hold weights of this model (its parameter names differ)"


def test_load_encoder_weights_falls_back_to_a_generic_detail(monkeypatch):
    state, _ = pretrained_state()
    net = create_model("tiny_cnn", 10)

    def refuse(*a, **k):
        raise RuntimeError("Error(s) in loading state_dict:\n\tsomething else")

    monkeypatch.setattr(net, "load_state_dict", refuse)
    with pytest.raises(UsageError) as err:
        load_encoder_weights(net, state, source="ckpt")
    assert message(err) == "ckpt does not fit this model: shape mismatch"


def experiment(model="tiny_cnn", model_kwargs=None, dataset="cifar10"):
    return SimpleNamespace(model=model, model_kwargs=model_kwargs if model_kwargs is not None else {},
                           data=SimpleNamespace(dataset=dataset))


def write_pretrain_run(results: Path, run_id: str, config: dict, state: dict) -> Path:
    write_record(results, {"run_id": run_id, "config": config, "metrics": {}})
    path = results / "runs" / run_id / "last.pt"
    save_checkpoint(path, {"strategy": state})
    return path


def test_probe_build_loads_the_encoder_of_a_run(tmp_path):
    state, source = pretrained_state()
    write_pretrain_run(tmp_path, "pre1", {"model": "tiny_cnn", "data": {"dataset": "cifar10"}}, state)
    cfg = SupConProbeConfig(encoder_run="pre1", head="linear", hidden=7)
    strategy = FrozenEncoderClassifier.build(cfg, ctx_for(tmp_path, experiment(), num_classes=6))
    assert strategy.head_kind == "linear" and strategy.model.head.out_features == 6
    encoder = strategy.model.encoder
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in encoder.state_dict().items())

    mlp = FrozenEncoderClassifier.build(SupConProbeConfig(encoder_run="pre1", hidden=7), ctx_for(tmp_path, None))
    assert mlp.head_kind == "mlp" and mlp.model.head[0].out_features == 7 and mlp.model.head[2].out_features == 4


def test_probe_build_loads_an_encoder_checkpoint_path(tmp_path):
    state, source = pretrained_state(seed=3)
    path = tmp_path / "enc.pt"
    save_checkpoint(path, {"strategy": state})
    strategy = FrozenEncoderClassifier.build(SupConProbeConfig(encoder_checkpoint=str(path), head="finetune"),
                                             ctx_for(None, None))
    assert strategy.head_kind == "finetune" and not strategy.model.frozen
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in strategy.model.encoder.state_dict().items())

    other = tmp_path / "other.pt"
    save_checkpoint(other, {"strategy": {"model.weight": torch.zeros(2)}})
    with pytest.raises(UsageError) as err:
        FrozenEncoderClassifier.build(SupConProbeConfig(encoder_checkpoint=str(other)), ctx_for(None, None))
    assert message(err) == f"encoder checkpoint {other} does not hold weights of this model (its parameter names differ)"


def test_encoder_run_checkpoint_path_and_checks(tmp_path):
    run_ckpt = supcon._encoder_run_checkpoint
    write_record(tmp_path, {"run_id": "ok", "config": {"model": "tiny_cnn", "model_kwargs": None,
                                                        "data": {"dataset": "cifar10"}}, "metrics": {}})
    assert run_ckpt("ok", ctx_for(tmp_path, experiment())) == tmp_path / "runs" / "ok" / "last.pt"
    assert run_ckpt("ok", ctx_for(str(tmp_path), None)) == tmp_path / "runs" / "ok" / "last.pt"  # no config: no checks

    with pytest.raises(UsageError) as err:
        run_ckpt("ok", ctx_for(None, experiment()))
    assert message(err) == "supcon_probe with encoder_run needs the results directory of that run"
    with pytest.raises(UsageError) as err:
        run_ckpt("missing", ctx_for(tmp_path, experiment()))
    assert message(err) == f"encoder run missing has no record in {tmp_path}; run its pretraining first"
    with pytest.raises(UsageError) as err:
        run_ckpt("ok", ctx_for(tmp_path, experiment(model="small_cnn")))
    assert message(err) == "encoder run ok trained model 'tiny_cnn' {}, but this run uses 'small_cnn' {}"
    with pytest.raises(UsageError) as err:
        run_ckpt("ok", ctx_for(tmp_path, experiment(model_kwargs={"width": 2})))
    assert message(err) == "encoder run ok trained model 'tiny_cnn' {}, but this run uses 'tiny_cnn' {'width': 2}"
    with pytest.raises(UsageError) as err:
        run_ckpt("ok", ctx_for(tmp_path, experiment(dataset="cifar100")))
    assert message(err) == "encoder run ok trained on 'cifar10', this run uses 'cifar100'"

    write_record(tmp_path, {"run_id": "kw", "config": {"model": "tiny_cnn", "model_kwargs": {"width": 2}},
                            "metrics": {}})
    with pytest.raises(UsageError) as err:
        run_ckpt("kw", ctx_for(tmp_path, experiment()))
    assert message(err) == "encoder run kw trained model 'tiny_cnn' {'width': 2}, but this run uses 'tiny_cnn' {}"
    assert run_ckpt("kw", ctx_for(tmp_path, experiment(model_kwargs={"width": 2}, dataset=None))).name == "last.pt"
    with pytest.raises(UsageError) as err:
        run_ckpt("kw", ctx_for(tmp_path, experiment(model_kwargs={"width": 2})))
    assert message(err) == "encoder run kw trained on None, this run uses 'cifar10'"
