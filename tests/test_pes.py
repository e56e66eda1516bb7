"""PES: the layer-group rule on the robustlab models, gradients reaching exactly the unfrozen
groups in every stage (preact_resnet18, airbench), re-initialisation, the confident split and its
class weights against a port of the official update_trainloader(), stages that do not fit the
epochs, bit-exact resume across every stage, and a run through the noisy-label study."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.data import AugmentConfig, BatchAugment, DeviceLoader
from robustlab.data.augment import MultiView
from robustlab.engine import TrainConfig, fit
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import BuildContext, create_strategy, make_config
from robustlab.strategies import pes as pes_module
from robustlab.strategies.pes import PES, PESConfig, check_stages, class_weights, layer_groups, reinitialise
from resume_helpers import TOY_MEAN, TOY_STD, flip_toy_labels, toy_eval_loaders
from resume_helpers import toy_images as _toy


# ---- port of the official class weights (tmllab/2021_NeurIPS_PES, PES_cs.py update_trainloader) --

def official_class_weights_port(confident_noisy_targets, num_class, semi=False):
    train_nums = np.zeros(num_class, dtype=int)
    for item in confident_noisy_targets:
        train_nums[item] += 1
    with np.errstate(divide='ignore'):
        cw = np.mean(train_nums[train_nums != 0]) / train_nums
        cw[cw == np.inf] = 0
        if semi:  # PES_semi.py update_trainloader
            cw[cw > 3] = 3
    return torch.FloatTensor(cw)


def official_mixmatch_loss_port(net, inputs_x, inputs_x2, targets_x, inputs_u, inputs_u2, class_weights, T, lam, idx,
                                rampup_weight, num_class):
    """PES_semi.py MixMatch_train, one batch, with the Beta draw `lam`, the permutation `idx` and
    linear_rampup(...) = `rampup_weight` given."""
    batch_size = inputs_x.size(0)
    targets_x = torch.zeros(batch_size, num_class).scatter_(1, targets_x.view(-1, 1), 1)
    with torch.no_grad():
        outputs_u11 = net(inputs_u)
        outputs_u12 = net(inputs_u2)
        pu = (torch.softmax(outputs_u11, dim=1) + torch.softmax(outputs_u12, dim=1)) / 2
        ptu = pu**(1 / T)
        targets_u = ptu / ptu.sum(dim=1, keepdim=True)
        targets_u = targets_u.detach()
    all_inputs = torch.cat([inputs_x, inputs_x2, inputs_u, inputs_u2], dim=0)
    all_targets = torch.cat([targets_x, targets_x, targets_u, targets_u], dim=0)
    input_a, input_b = all_inputs, all_inputs[idx]
    target_a, target_b = all_targets, all_targets[idx]
    mixmatch_l = max(lam, 1 - lam)
    mixed_input = mixmatch_l * input_a + (1 - mixmatch_l) * input_b
    mixed_target = mixmatch_l * target_a + (1 - mixmatch_l) * target_b
    logits = net(mixed_input)
    logits_x = logits[:batch_size * 2]
    logits_u = logits[batch_size * 2:]
    Lx_mean = -torch.mean(F.log_softmax(logits_x, dim=1) * mixed_target[:batch_size * 2], 0)
    Lx = torch.sum(Lx_mean * class_weights)
    probs_u = torch.softmax(logits_u, dim=1)
    Lu = torch.mean((probs_u - mixed_target[batch_size * 2:])**2)
    return Lx + rampup_weight * Lu


# ---- helpers -----------------------------------------------------------------------------------

def _names(model: nn.Module, group: nn.Module) -> set[str]:
    ids = {id(p) for p in group.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _pes(model_name="tiny_cnn", classes=4, num_train=8, seed=0, **options):
    torch.manual_seed(seed)
    ctx = BuildContext(new_model=lambda: create_model(model_name, num_classes=classes), num_classes=classes,
                       num_train=num_train)
    return create_strategy("pes", context=ctx, **options)


def _begin(st: PES, epoch: int, epochs: int) -> None:
    """What the engine does before an epoch: the modules' own schedules, then the strategy's."""
    for m in st.modules():
        if m is not st and hasattr(m, "begin_epoch"):
            m.begin_epoch(epoch)
    st.on_epoch_start(epoch, epochs)


def _graded(st: PES, x, y, epoch) -> set[str]:
    st.zero_grad(set_to_none=True)
    st.train_step(x, y, torch.arange(len(y)), epoch).loss.backward()
    return {n for n, p in st.model.named_parameters() if p.grad is not None}


# ---- layer groups ------------------------------------------------------------------------------

def test_layer_group_rule_on_the_robustlab_models():
    def prefixes(name):
        m = create_model(name, num_classes=10)
        return [sorted({n.rsplit(".", 2 if n.count(".") >= 2 else 1)[0] for n in _names(m, g)}) for g in layer_groups(m)]

    small = create_model("small_cnn", num_classes=10)
    groups = layer_groups(small)
    assert [_names(small, g) for g in groups] == [
        {"features.0.weight", "features.1.weight", "features.1.bias"},
        {"features.4.weight", "features.5.weight", "features.5.bias"},
        {"features.8.weight", "features.9.weight", "features.9.bias"}, {"head.weight", "head.bias"}]
    pre = create_model("preact_resnet18", num_classes=10)
    groups = layer_groups(pre)
    assert len(groups) == 6 and groups[-1] is pre.head and groups[-2] is pre.stages[3]  # official layer4
    assert [groups[i] for i in (1, 2, 3)] == [pre.stages[0], pre.stages[1], pre.stages[2]]
    assert _names(pre, groups[0]) == {n for n, _ in pre.stem.named_parameters(prefix="stem")}
    air = create_model("airbench", num_classes=10)
    groups = layer_groups(air)
    assert groups[0] is air.whiten and groups[1] is air.body[1] and groups[2] is air.body[2]
    assert _names(air, groups[3]) == {n for n, _ in air.body[3].named_parameters(prefix="body.3")}
    assert groups[-1] is air.head and len(groups) == 5
    # every parameter is in exactly one group
    for m in (small, pre, air):
        names = [n for g in layer_groups(m) for n in _names(m, g)]
        assert sorted(names) == sorted(n for n, _ in m.named_parameters())
    assert prefixes("tiny_cnn")[-1] == ["head"]


def test_a_model_may_name_its_groups_and_models_without_groups_are_refused():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.out = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)

        def layer_groups(self):
            return [self.a, nn.ModuleList([self.b, nn.ReLU()]), self.c, self.out]

        def forward(self, x):
            return self.out(self.c(self.b(self.a(x))))

    m = Custom()
    assert [g for g in layer_groups(m)][-1] is m.out and layer_groups(m)[0] is m.a

    class Headless(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

    message = r"^PES needs the model's layer groups: Headless has neither layer_groups\(\) nor a head$"
    with pytest.raises(UsageError, match=message):
        layer_groups(Headless())

    class OneBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(3, 3), nn.Linear(3, 2)

    with pytest.raises(UsageError, match="^PES needs at least two blocks before the head; OneBlock has 1$"):
        layer_groups(OneBlock())


# ---- stages, freezing, gradients ---------------------------------------------------------------

@pytest.mark.parametrize("model_name,last_block", [("preact_resnet18", "stages.3."), ("airbench", "body.3.")])
def test_gradients_reach_exactly_the_unfrozen_groups(model_name, last_block):
    st = _pes(model_name, classes=10, num_train=4, t1=1, t2=1, t3=1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    fixed = {n for n, p in st.model.named_parameters() if not p.requires_grad}
    if model_name == "airbench":  # the whitening filters and BN scales are the model's own frozen ones
        assert "whiten.weight" in fixed and "body.1.norm1.weight" in fixed
    everything = {n for n, _ in st.model.named_parameters()}
    st.train()
    _begin(st, 0, 4)
    assert _graded(st, x, y, 0) == everything - fixed  # stage 1: the whole network
    _begin(st, 1, 4)
    stage2 = {n for n in everything - fixed if n.startswith((last_block, "head."))}
    assert stage2 and _graded(st, x, y, 1) == stage2  # stage 2: the last block and the head
    assert {n for n, p in st.model.named_parameters() if p.requires_grad} == stage2
    _begin(st, 2, 4)
    assert _graded(st, x, y, 2) == {n for n in everything if n.startswith("head.")}  # stage 3: the head
    st.confident.fill_(True)
    _begin(st, 3, 4)
    graded = _graded(st, x, y, 3)
    if model_name == "airbench":  # the whitening bias trains for its own 3 epochs only
        assert graded == everything - fixed - {"whiten.bias"}
    else:
        assert graded == everything - fixed


def test_frozen_groups_do_not_move_under_momentum_and_weight_decay():
    st = _pes("tiny_cnn", num_train=8, t1=1, t2=1, t3=1)
    opt = torch.optim.SGD([p for p in st.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=0.1)
    x, y = torch.randn(8, 3, 8, 8), torch.arange(8) % 4
    st.train()
    _begin(st, 0, 4)
    for _ in range(2):  # momentum builds up in stage 1
        opt.zero_grad(set_to_none=True)
        st.train_step(x, y, torch.arange(8), 0).loss.backward()
        opt.step()
    _begin(st, 1, 4)
    before = {n: p.detach().clone() for n, p in st.model.named_parameters()}
    opt.zero_grad(set_to_none=True)
    st.train_step(x, y, torch.arange(8), 1).loss.backward()
    opt.step()
    for n, p in st.model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == n.startswith(("features.4.", "features.5.", "head.")), n


def test_stage_starts_reinitialise_the_last_block_and_head_then_the_head():
    st = _pes("tiny_cnn", num_train=8, t1=2, t2=1, t3=1)
    model = st.model
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # as if trained
        model.features[5].running_mean.fill_(3.0)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    _begin(st, 1, 5)  # still stage 1: nothing re-initialised
    assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters())
    reference = create_model("tiny_cnn", num_classes=4)
    reference.load_state_dict(model.state_dict())
    torch.manual_seed(7)
    reinitialise(reference.features[4]), reinitialise(reference.features[5]), reinitialise(reference.head)
    torch.manual_seed(7)
    _begin(st, 2, 5)
    for n, p in model.named_parameters():
        renewed = n.startswith(("features.4.", "features.5.", "head."))
        assert torch.equal(p, dict(reference.named_parameters())[n]), n
        assert torch.equal(p, trained[n]) != renewed, n
    assert torch.equal(model.features[5].running_mean, torch.zeros(16))  # fresh statistics too
    assert not any(torch.equal(p, start[n]) for n, p in model.named_parameters() if n.startswith("head."))
    after2 = {n: p.detach().clone() for n, p in model.named_parameters()}
    _begin(st, 3, 5)
    for n, p in model.named_parameters():
        assert torch.equal(p, after2[n]) != n.startswith("head."), n
    head = {n: p.detach().clone() for n, p in model.named_parameters()}
    _begin(st, 4, 5)  # stage 4: no re-initialisation, everything trainable
    assert all(torch.equal(p, head[n]) for n, p in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())
    assert [st.stage(e) for e in range(6)] == [1, 1, 2, 3, 4, 4]


def test_zero_length_stages_are_skipped():
    st = _pes("small_cnn", num_train=8, t1=1, t2=0, t3=2, blocks=2)
    assert [st.stage(e) for e in range(4)] == [1, 3, 3, 4]
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    st.train()
    before = {n: p.detach().clone() for n, p in st.model.named_parameters()}
    _begin(st, 1, 4)  # stage 3 starts at t1: only the head is re-initialised
    assert all(torch.equal(p, before[n]) != n.startswith("head.") for n, p in st.model.named_parameters())
    assert _graded(st, x, y, 1) == {"head.weight", "head.bias"}
    st2 = _pes("small_cnn", num_train=8, t1=1, t2=1, t3=0, blocks=2)
    _begin(st2, 1, 4)
    head = st2.model.head.weight.detach().clone()
    _begin(st2, 2, 4)  # no stage 3: stage 4 re-initialises nothing
    assert torch.equal(st2.model.head.weight, head)
    _begin(st2, 1, 4)
    assert {n for n, p in st2.model.named_parameters() if p.requires_grad} == {
        "features.4.weight", "features.5.weight", "features.5.bias", "features.8.weight", "features.9.weight",
        "features.9.bias", "head.weight", "head.bias"}
    assert [st2.stage(e) for e in range(4)] == [1, 2, 4, 4]


# ---- the confident split and the loss -----------------------------------------------------------

@pytest.mark.parametrize("labels,classes", [([0, 0, 0, 1], 3), ([2, 2, 1, 0, 0, 2], 4), ([1], 2), ([], 3)])
def test_class_weights_match_the_official_port(labels, classes):
    got = class_weights(torch.tensor(labels, dtype=torch.long), classes)
    if labels:
        assert torch.allclose(got, official_class_weights_port(np.array(labels), classes))
    else:
        assert torch.equal(got, torch.zeros(classes))
    if labels == [0, 0, 0, 1]:
        assert torch.allclose(got, torch.tensor([2 / 3, 2.0, 0.0]))  # mean count 2 over the present classes


class Fixed(nn.Module):
    """Logits looked up by the first pixel of each image (an integer id)."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(torch.tensor(table))
        self.head = nn.Linear(1, 1)
        self.a, self.b = nn.Linear(1, 1), nn.Linear(1, 1)

    def forward(self, x):
        return self.table[x.flatten(1)[:, 0].long()]


def test_train_pass_keeps_the_samples_predicted_as_labelled_and_measures_them():
    table = [[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]]
    clean = torch.tensor([0, 1, 2, 0, 0])
    st = PES(Fixed(table), num_train=5, num_classes=3, t1=1, t2=0, t3=0, clean_labels=clean)
    noisy = torch.tensor([0, 1, 1, 1, 1])  # predictions 0,1,2,0,1
    x = torch.arange(5).float().view(5, 1, 1, 1)
    loader = [(x[:3], noisy[:3], torch.tensor([0, 1, 2])), (x[3:], noisy[3:], torch.tensor([3, 4]))]
    st.on_train_pass(0, loader)  # stage 1: no split
    assert st.confident.all() and st.epoch_metrics() == {}
    st.on_train_pass(1, loader)
    assert st.confident.tolist() == [True, True, False, False, True]
    assert torch.allclose(st.class_weight, official_class_weights_port(np.array([0, 1, 1]), 3))
    # kept 0, 1, 4: clean-labelled among them 0 and 1; clean-labelled overall 0 and 1
    assert st.epoch_metrics() == pytest.approx({"clean_fraction": 0.6, "label_precision": 2 / 3, "label_recall": 1.0})
    blind = PES(Fixed(table), num_train=5, num_classes=3, t1=1, t2=0, t3=0)
    blind.on_train_pass(1, loader)
    assert blind.epoch_metrics() == {"clean_fraction": pytest.approx(0.6)}


def test_stage_four_loss_is_class_weighted_ce_on_the_confident_samples():
    table = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)).tolist()
    st = PES(Fixed(table), num_train=6, num_classes=3, t1=1, t2=0, t3=0)
    st.confident.copy_(torch.tensor([True, False, True, True, False, True]))
    st.class_weight.copy_(torch.tensor([0.5, 2.0, 1.0]))
    x = torch.arange(6).float().view(6, 1, 1, 1)
    y = torch.tensor([0, 1, 1, 2, 0, 0])
    idx = torch.tensor([0, 1, 2, 3, 4, 5])
    out = st.train_step(x, y, idx, 1)
    keep = [0, 2, 3, 5]
    logp = F.log_softmax(torch.tensor(table), 1)
    w = torch.tensor([0.5, 2.0, 1.0])[y[keep]]
    expected = -(w * logp[keep, y[keep]]).sum() / w.sum()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.targets.tolist() == y[keep].tolist() and out.logits.shape == (4, 3)
    out.loss.backward()
    assert st.model.table.grad[[1, 4]].abs().sum() == 0 and st.model.table.grad[keep].abs().sum() > 0
    # stage 1: plain CE on every sample
    st.t1 = 5
    assert st.train_step(x, y, idx, 0).loss.item() == pytest.approx(F.cross_entropy(torch.tensor(table), y).item())
    # a batch without confident samples: a zero loss that still back-propagates
    st.t1 = 1
    st.confident.fill_(False)
    none = st.train_step(x, y, idx, 1)
    assert none.loss.item() == 0.0 and none.logits.shape == (0, 3) and none.targets.shape == (0,)
    none.loss.backward()


# ---- options, presets and bad input -------------------------------------------------------------

def test_official_defaults_and_presets():
    semi_defaults = {"semi": False, "lambda_u": 150.0, "temperature": 0.5, "alpha": 4.0, "rampup_epochs": 16.0}
    assert _pes("tiny_cnn", classes=10).options() == {"t1": 25, "t2": 7, "t3": 7, "blocks": 1, **semi_defaults}
    assert _pes("tiny_cnn", classes=100).options()["t1"] == 30
    assert _pes("tiny_cnn", classes=100, t1=3).options()["t1"] == 3
    semi = _pes("tiny_cnn", classes=10, semi=True)
    assert semi.options() == {"t1": 30, "t2": 0, "t3": 5, "blocks": 1, **semi_defaults, "semi": True}
    assert semi.views == 2 and _pes("tiny_cnn").views == 1
    assert _pes("tiny_cnn", semi=True, t2=2, t3=1).options()["t2"] == 2
    assert PES.presets == {"quick": {"t1": 6, "t2": 3, "t3": 2}, "paper": {}, "fast": {"t1": 3, "t2": 2, "t3": 1}}
    assert PES.needs_train_pass and PES.unused_parameters


@pytest.mark.parametrize("bad,message", [
    ({"t1": 0}, "t1 must be >= 1 epoch, got 0"),
    ({"t2": -1}, "t2 must be >= 0 epochs, got -1"),
    ({"t3": -2}, "t3 must be >= 0 epochs, got -2"),
    ({"blocks": 0}, "blocks must be >= 1, got 0"),
    ({"lambda_u": -1}, "lambda_u must be >= 0, got -1.0"),
    ({"lambda_u": float("inf")}, "option lambda_u must be a finite number, got inf"),
    ({"temperature": 0}, "temperature must be > 0, got 0.0"),
    ({"alpha": 0}, "alpha must be > 0, got 0.0"),
    ({"rampup_epochs": 0}, "rampup_epochs must be > 0, got 0.0"),
    ({"rampup_epochs": float("inf")}, "option rampup_epochs must be a finite number, got inf"),
])
def test_config_bounds_and_exact_messages(bad, message):
    with pytest.raises(UsageError) as err:
        make_config("pes", bad)
    assert str(err.value) == f"strategy 'pes': {message}"
    PESConfig(t1=1, t2=0, t3=0, blocks=1).validate()


def test_stages_that_do_not_fit_the_epochs_are_one_line():
    message = ("pes stages t1 + t2 + t3 = 25 + 7 + 7 = 39 epochs do not fit the run's 20 epochs: lower t1, t2 or t3 "
               "(or train longer)")
    with pytest.raises(UsageError) as err:
        check_stages(25, 7, 7, 20)
    assert str(err.value) == message
    check_stages(25, 7, 7, 39)  # the stages may fill the run
    for stages in ((1, 1, 3), (1, 3, 1), (3, 1, 1)):  # each stage counts
        with pytest.raises(UsageError):
            check_stages(*stages, 4)
    st = _pes("tiny_cnn", classes=10)
    with pytest.raises(UsageError, match=r"^pes stages .* do not fit the run's 20 epochs"):
        st.on_epoch_start(0, 20)
    st.on_epoch_start(0, 39)

    class Experiment:
        class train:
            epochs = 12

    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=10), num_classes=10, num_train=4,
                       experiment=Experiment())
    with pytest.raises(UsageError, match=r"^pes stages t1 \+ t2 \+ t3 = 25 \+ 7 \+ 7 = 39 epochs do not fit the run's 12 "):
        create_strategy("pes", context=ctx)
    assert create_strategy("pes", context=ctx, t1=5, t2=4, t3=3).t1 == 5


def test_blocks_must_leave_a_block_frozen():
    message = r"^blocks must be in \[1, 1\] for SmallCNN \(the t2 stage keeps at least its first of 2 blocks\), got 2$"
    with pytest.raises(UsageError, match=message):
        _pes("tiny_cnn", blocks=2)
    assert _pes("small_cnn", blocks=2).blocks == 2
    with pytest.raises(UsageError, match="num_train"):
        PES(create_model("tiny_cnn", num_classes=4), 0, 4, t1=1)


# ---- training and resume ------------------------------------------------------------------------

class InterruptAt(DeviceLoader):
    stop = 2

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.stop:
            raise KeyboardInterrupt
        super().set_epoch(epoch)


@pytest.mark.parametrize("stop,semi", [(1, False), (2, False), (4, False), (4, True)])  # before stage 2's and 3's
def test_fit_runs_every_stage_and_resume_is_bit_exact(tmp_path, stop, semi):  # re-initialisation, inside stage 4
    n = 96
    images, clean = _toy(n + 40)
    noisy, _ = flip_toy_labels(clean[:n], 0.3)
    augment = BatchAugment(AugmentConfig(crop_pad=1, flip=True), TOY_MEAN, TOY_STD)
    if semi:
        augment = MultiView(augment, 2)
    whole, test = toy_eval_loaders(images, noisy, clean, n, 48, 40)
    cfg = TrainConfig(epochs=6, batch_size=32, tta="none",
                      optim=OptimConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="constant"))

    def make(seed):
        torch.manual_seed(seed)
        ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=4), num_classes=4, num_train=n,
                           clean_train_labels=clean[:n])
        return create_strategy("pes", context=ctx, t1=2, t2=1, t3=1, semi=semi, lambda_u=5.0, rampup_epochs=1.0)

    full = make(0)
    result = fit(full, DeviceLoader(images[:n], noisy, 32, augment, seed=0), cfg, test_loader=test,
                 run_dir=tmp_path / "full", quiet=True, num_classes=4, train_pass_loader=whole)
    assert ["label_precision" in r for r in result.history] == [False] * 4 + [True] * 2  # stage 4 only
    assert result.history[-1]["label_precision"] > 0.75  # cleaner than the 70% clean labels
    assert result.metrics["test_acc"] > 0.4  # chance is 0.25

    part = make(0)
    loader = InterruptAt(images[:n], noisy, 32, augment, seed=0)
    loader.stop = stop
    with pytest.raises(KeyboardInterrupt):
        fit(part, loader, cfg, test_loader=test, run_dir=tmp_path / "part", quiet=True, num_classes=4,
            train_pass_loader=whole)
    resumed = make(1)
    torch.manual_seed(123)
    fit(resumed, DeviceLoader(images[:n], noisy, 32, augment, seed=0), cfg, test_loader=test, run_dir=tmp_path / "part",
        resume=tmp_path / "part" / "last.pt", quiet=True, num_classes=4, train_pass_loader=whole)
    a, b = full.state_dict(), resumed.state_dict()
    assert {"confident", "class_weight"} <= set(a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ---- the noisy-label study on real data ---------------------------------------------------------

def _study_argv(out, cifar10_dir, session_cache_dir, epochs):
    return ["--noise", "0.4", "--methods", "pes", "--epochs", str(epochs), "--train-size", "200", "--val-size", "100",
            "--test-size", "200", "--data-dir", str(cifar10_dir), "--cache-dir", str(session_cache_dir),
            "--out", str(out), "--figures-dir", str(out / "fig"), "--quiet", "--model", "tiny_cnn"]


def test_runs_end_to_end_in_the_noisy_label_study(cifar10, cifar10_dir, session_cache_dir, tmp_path):
    from studies import noisy_labels

    out = tmp_path / "study"
    assert noisy_labels.main(_study_argv(out, cifar10_dir, session_cache_dir, 12)) == 0  # quick: 6 + 3 + 2 of 12
    rows = {r["arm"]: r for r in csv.DictReader(open(out / "table.csv"))}
    record = next(json.loads(p.read_text()) for p in (out / "records").glob("*.json")
                  if json.loads(p.read_text())["config"]["tag"] == "noisy_pes")
    assert {k: record["strategy_options"][k] for k in ("t1", "t2", "t3", "blocks", "semi")} == {
        "t1": 6, "t2": 3, "t3": 2, "blocks": 1, "semi": False}
    hist = record["history"]
    assert len(hist) == 12 and "label_precision" in hist[-1] and "label_precision" not in hist[-2]
    assert float(rows["noisy_pes"]["label_precision"]) == pytest.approx(hist[-1]["label_precision"])


def test_study_with_too_few_epochs_for_the_stages_exits_2(cifar10, cifar10_dir, session_cache_dir, tmp_path, capsys):
    from studies import noisy_labels

    code = None
    try:
        code = noisy_labels.main(_study_argv(tmp_path / "s", cifar10_dir, session_cache_dir, 5))
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pes stages t1 + t2 + t3 = 6 + 3 + 2 = 11 epochs do not fit the run's 5 epochs" in err[0]


# ---- PES-semi -----------------------------------------------------------------------------------

class Lin(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, classes)

    def forward(self, x):
        return self.head(self.b(self.a(x.flatten(1))))


def test_semi_class_weights_are_capped_at_three_as_the_official_port():
    labels = np.array([0] * 9 + [1] + [2] * 2)  # counts 9, 1, 2: mean 4, weights 4/9, 4 -> 3, 2
    got = class_weights(torch.tensor(labels), 3, cap=3.0)
    assert torch.allclose(got, official_class_weights_port(labels, 3, semi=True))
    assert torch.allclose(got, torch.tensor([4 / 9, 3.0, 2.0]))


def test_semi_mixmatch_loss_matches_the_official_port(monkeypatch):
    st = PES(Lin(), num_train=6, num_classes=3, t1=1, t2=0, t3=0, semi=True, lambda_u=7.0, temperature=0.5,
             rampup_epochs=2.0)
    st.confident.copy_(torch.tensor([True, False, True, True, False, False]))
    st.class_weight.copy_(torch.tensor([0.5, 3.0, 1.0]))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 2, 1, 2, 2, generator=g), torch.tensor([0, 2, 1, 0, 1, 1])
    idx = torch.tensor([3, 1, 0, 5, 2, 4])  # confident: rows 0, 2, 4 (samples 3, 0, 2)
    alphas = []
    monkeypatch.setattr(pes_module, "mixup_lambda", lambda alpha: alphas.append(alpha) or 0.7)
    st.on_epoch_start(2, 10)
    st._seen = 3  # half of epoch 2 done: progress 2.5, lambda_u * clip((2.5 - 1) / 2, 0, 1)
    torch.manual_seed(5)
    out = st.train_step(x, y, idx, 2)
    torch.manual_seed(5)
    perm = torch.randperm(12)  # both views of 3 labeled and 3 unlabeled samples
    lab, unl = [0, 2, 4], [1, 3, 5]
    expected = official_mixmatch_loss_port(st.model, x[lab, 0], x[lab, 1], y[lab], x[unl, 0], x[unl, 1],
                                           st.class_weight, 0.5, 0.7, perm, 7.0 * 0.75, 3)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert alphas == [4.0] and st._seen == 9
    st.on_epoch_start(4, 10)  # before half the run: still alpha
    st.train_step(x, y, idx, 4)
    assert alphas[-1] == 4.0
    st.on_epoch_start(5, 10)  # from half the run on, alpha 0.75
    st.train_step(x, y, idx, 5)
    assert alphas[-1] == 0.75
    out.loss.backward()
    assert all(p.grad is not None for p in st.model.parameters())


def test_semi_ramp_and_empty_parts(monkeypatch):
    st = PES(Lin(), num_train=4, num_classes=3, t1=2, t2=1, t3=1, semi=True, lambda_u=10.0, rampup_epochs=4.0)
    st.on_epoch_start(4, 20)
    assert [st.unlabeled_weight(4, 2), st.unlabeled_weight(4, 2)] == [0.0, 10.0 * 0.5 / 4]
    st.on_epoch_start(9, 20)
    assert st.unlabeled_weight(9, 4) == 10.0
    x, y, idx = torch.randn(4, 2, 1, 2, 2), torch.tensor([0, 1, 2, 0]), torch.arange(4)
    st.confident.fill_(True)  # no unlabeled part: Lx alone
    out = st.train_step(x, y, idx, 5)
    assert out.logits.shape == (8, 3) and out.loss.requires_grad
    st.confident.fill_(False)  # no labeled part: Lu alone, no train-accuracy rows
    out = st.train_step(x, y, idx, 5)
    assert out.logits.shape == (0, 3) and out.loss.requires_grad
    out.loss.backward()
    for bad in (torch.randn(4, 1, 2, 2), torch.randn(4, 1, 1, 2, 2)):
        with pytest.raises(UsageError, match=r"^PES-semi needs two augmented views per sample"):
            st.train_step(bad, y, idx, 0)
    first = st.train_step(x, y, idx, 0)  # stages 1-3 train on the first view
    assert torch.equal(first.logits, st.model(x[:, 0]))
    assert first.loss.item() == pytest.approx(F.cross_entropy(st.model(x[:, 0]), y).item())


def _onehot_table(predictions, classes=3):
    return F.one_hot(torch.tensor(predictions), classes).float().mul(3.0).tolist()


def test_train_pass_caps_the_class_weights_only_with_semi():
    labels = torch.tensor([0] * 9 + [1] + [2] * 2)  # all predicted as labelled: counts 9, 1, 2, mean 4
    x = torch.arange(12).float().view(12, 1, 1, 1)
    loader = [(x, labels, torch.arange(12))]
    plain = PES(Fixed(_onehot_table(labels.tolist())), num_train=12, num_classes=3, t1=1, t2=0, t3=0)
    plain.on_train_pass(1, loader)
    assert torch.allclose(plain.class_weight, torch.tensor([4 / 9, 4.0, 2.0]))
    semi = PES(Fixed(_onehot_table(labels.tolist())), num_train=12, num_classes=3, t1=1, t2=0, t3=0, semi=True)
    semi.on_train_pass(1, loader)
    assert torch.allclose(semi.class_weight, torch.tensor([4 / 9, 3.0, 2.0]))


def test_selection_metrics_with_a_single_kept_and_a_single_clean_sample():
    clean = torch.tensor([0, 2, 2])
    st = PES(Fixed(_onehot_table([0, 0, 0])), num_train=3, num_classes=3, t1=1, t2=0, t3=0, clean_labels=clean)
    x = torch.arange(3).float().view(3, 1, 1, 1)
    st.on_train_pass(1, [(x, torch.tensor([0, 1, 1]), torch.arange(3))])  # keeps sample 0 only, the one clean label
    assert st.epoch_metrics() == pytest.approx({"clean_fraction": 1 / 3, "label_precision": 1.0, "label_recall": 1.0})
