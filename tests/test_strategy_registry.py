"""The strategy registry: names, typed options validated once, and the engine hooks plug-ins use."""
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from robustlab.data import DeviceLoader, Normalize
from robustlab.data.augment import MultiView
from robustlab.engine import TrainConfig, fit
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.strategies import (BuildContext, StepOutput, Strategy, create_strategy, get_strategy, list_strategies,
                                  make_config, register_strategy)
from robustlab.strategies.registry import _REGISTRY


def test_builtin_strategies_are_registered_under_their_names():
    names = list_strategies()
    for name in ("ce", "ls", "coteach", "supcon_pretrain", "supcon_probe"):
        assert name in names
        assert get_strategy(name).name == name


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(UsageError, match=r"unknown strategy 'nope'; known: .*coteach"):
        get_strategy("nope")


def test_unknown_option_names_it_and_lists_the_fields():
    with pytest.raises(UsageError, match=r"unknown option\(s\) bogus for strategy 'coteach'; known: forget_rate, num_gradual, exponent, ramp"):
        make_config("coteach", {"bogus": 1})


def test_options_are_coerced_to_their_declared_types_and_validated():
    cfg = make_config("coteach", {"forget_rate": "0.25", "num_gradual": "3", "exponent": 2})
    assert cfg.forget_rate == 0.25 and cfg.num_gradual == 3 and cfg.exponent == 2.0 and isinstance(cfg.exponent, float)
    with pytest.raises(UsageError, match="option num_gradual must be int"):
        make_config("coteach", {"num_gradual": "many"})
    with pytest.raises(UsageError, match=r"strategy 'coteach': forget_rate must be in \[0, 1\), 'estimate' or 'oracle', got 1.5"):
        make_config("coteach", {"forget_rate": 1.5})


def test_coteach_forget_rate_defaults_to_the_realised_noise_rate():
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=10), num_classes=10, noise_rate=0.18)
    st = create_strategy("coteach", context=ctx)
    assert st.tau == pytest.approx(0.18) and st.options()["forget_rate"] == pytest.approx(0.18)
    assert create_strategy("coteach", context=ctx, forget_rate=0.3).tau == pytest.approx(0.3)
    assert st.model is not st.peer


def test_one_model_instead_of_a_factory_is_refused_for_two_network_strategies():
    with pytest.raises(UsageError, match="needs more than one network"):
        create_strategy("coteach", create_model("tiny_cnn"), forget_rate=0.2)
    st = create_strategy("ls", create_model("tiny_cnn"), smoothing=0.2)
    assert st.smoothing == 0.2


@dataclass
class _PassConfig:
    scale: float = 1.0


class _RecordsTrainPass(Strategy):
    """Test plug-in: records the train-pass losses into a per-sample buffer."""

    Config = _PassConfig
    needs_train_pass = True

    def __init__(self, model, num_train):
        super().__init__()
        self.model = model
        self.register_buffer("seen_loss", torch.full((num_train,), -1.0))
        self.calls = []

    @classmethod
    def build(cls, config, ctx):
        return cls(ctx.new_model(), ctx.num_train)

    def on_train_pass(self, epoch, loader):
        assert not self.training and not torch.is_grad_enabled()
        self.calls.append(epoch)
        for x, y, idx in loader:
            self.seen_loss[idx] = F.cross_entropy(self.model(x).float(), y, reduction="none")

    def train_step(self, x, y, idx, epoch):
        logits = self.model(x)
        return StepOutput(F.cross_entropy(logits, y), logits)


def test_a_registered_plugin_gets_the_train_pass_before_every_epoch():
    register_strategy("_test_pass")(_RecordsTrainPass)
    try:
        images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
        labels = torch.arange(40) % 2
        norm = Normalize((0.5,) * 3, (0.25,) * 3)
        ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=2), num_classes=2, num_train=40)
        st = create_strategy("_test_pass", context=ctx)
        train = DeviceLoader(images, labels, 16, norm, seed=0)
        whole = DeviceLoader(images, labels, 64, norm, shuffle=False)
        fit(st, train, TrainConfig(epochs=3, tta="none"), quiet=True, num_classes=2, train_pass_loader=whole)
        assert st.calls == [0, 1, 2]
        assert (st.seen_loss >= 0).all()  # every training sample was scored, by its dataset index
        with pytest.raises(UsageError, match="needs a pass over the training set"):
            fit(create_strategy("_test_pass", context=ctx), train, TrainConfig(epochs=1, tta="none"), quiet=True, num_classes=2)
    finally:
        _REGISTRY.pop("_test_pass")


def test_a_name_cannot_be_taken_twice():
    with pytest.raises(ValueError, match="taken"):
        register_strategy("ce")(_RecordsTrainPass)


def test_multiview_stacks_independent_draws():
    from robustlab.data import AugmentConfig, BatchAugment
    aug = MultiView(BatchAugment(AugmentConfig(crop_pad=4, flip=True), (0.5,) * 3, (0.25,) * 3), 2)
    x = aug(torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert x.shape == (6, 2, 3, 8, 8)
    assert not torch.equal(x[:, 0], x[:, 1])


def test_library_users_give_the_training_set_size_and_noise_prior_directly():
    elr = create_strategy("elr", lambda: create_model("tiny_cnn", num_classes=10), num_classes=10, num_train=37)
    assert elr.options()["beta"] == 0.7 and elr.options()["lam"] == 3.0  # CIFAR-10 defaults from the class count
    assert [b.shape for b in elr.buffers() if b.dim() == 2 and b.shape[0] == 37] == [(37, 10)]
    jocor = create_strategy("jocor", lambda: create_model("tiny_cnn", num_classes=10), num_classes=10, noise_rate=0.4)
    assert jocor.tau == pytest.approx(0.4)
