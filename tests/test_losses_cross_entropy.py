"""Cross-entropy and label smoothing (`ce`, `ls`): the loss against the smoothed-target formula by hand,
defaults, validation boundaries and the build from a config."""
import math
import re

import pytest
import torch
from torch import nn

from robustlab.errors import UsageError
from robustlab.strategies import BuildContext, make_config
from robustlab.strategies.cross_entropy import CEConfig, CrossEntropy, LabelSmoothing, LSConfig

LOGITS = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 2.0], [-1.0, 3.0, 0.5]])
Y = torch.tensor([0, 2, 0])


class Fixed(nn.Module):
    """Returns fixed logits (a row per sample id), with a gradient."""

    def __init__(self, logits):
        super().__init__()
        self.table = nn.Parameter(logits.clone())

    def forward(self, ids):
        return self.table[ids]


def smoothed_ce_by_hand(row, label, eps):
    """-sum_k t_k log p_k with the smoothed target t = (1 - eps) one-hot + eps / C (Szegedy et al. 2016)."""
    log_z = math.log(sum(math.exp(v) for v in row))
    log_p = [v - log_z for v in row]
    c = len(row)
    return -sum(((1 - eps) * (k == label) + eps / c) * log_p[k] for k in range(c))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.4])
def test_per_sample_loss_is_cross_entropy_against_the_smoothed_target(eps):
    got = CrossEntropy(Fixed(LOGITS), smoothing=eps).per_sample_loss(LOGITS, Y)
    want = [smoothed_ce_by_hand(r, t, eps) for r, t in zip(LOGITS.tolist(), Y.tolist())]
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    # sample 0 by hand: p = (e^2, 1, 1) / (e^2 + 2); eps = 0.1 -> 0.9 * 0.239545 + 0.1 * (0.239545 + 2 * 2.239545) / 3
    if eps == 0.1:
        assert got[0].item() == pytest.approx(0.9 * 0.239545 + 0.1 * (0.239545 + 2 * 2.239545) / 3, rel=1e-5)


def test_train_step_averages_the_batch_in_float32_and_returns_the_logits():
    st = LabelSmoothing(Fixed(LOGITS), eps=0.2)
    ids = torch.arange(3)
    out = st.train_step(ids, Y, ids, 0)
    want = sum(smoothed_ce_by_hand(r, t, 0.2) for r, t in zip(LOGITS.tolist(), Y.tolist())) / 3
    assert out.loss.item() == pytest.approx(want, rel=1e-6)
    assert torch.equal(out.logits, LOGITS)
    assert st.per_sample_loss(LOGITS.bfloat16(), Y).dtype == torch.float32


def test_defaults_plain_ce_and_label_smoothing_0_1():
    model = Fixed(LOGITS)
    assert CrossEntropy(model).smoothing == 0.0 and CEConfig().smoothing == 0.0
    ls = LabelSmoothing(model)
    assert ls.smoothing == 0.1 and LSConfig().smoothing == 0.1 and ls.model is model


def test_build_takes_the_configs_smoothing_and_a_new_model():
    made = []
    ctx = BuildContext(new_model=lambda: made.append(Fixed(LOGITS)) or made[-1], num_classes=3)
    ce = CrossEntropy.build(make_config("ce", {"smoothing": 0.3}), ctx)
    ls = LabelSmoothing.build(make_config("ls", {"smoothing": 0.25}), ctx)
    assert (ce.smoothing, ls.smoothing) == (0.3, 0.25)
    assert ce.model is made[0] and ls.model is made[1]


def test_smoothing_validation_boundaries_and_messages():
    make_config("ce", {"smoothing": 0.0})  # ce allows 0 (plain cross-entropy) ...
    make_config("ls", {"smoothing": 0.999})
    cases = [("ce", 1.0, "smoothing must be in [0, 1), got 1.0"),
             ("ce", -0.1, "smoothing must be in [0, 1), got -0.1"),
             ("ls", 0.0, "smoothing must be in (0, 1), got 0.0"),  # ... ls does not: that is ce
             ("ls", 1.0, "smoothing must be in (0, 1), got 1.0"),
             ("ls", 1.5, "smoothing must be in (0, 1), got 1.5")]
    for name, value, message in cases:
        with pytest.raises(UsageError, match=f"^strategy '{name}': {re.escape(message)}$"):
            make_config(name, {"smoothing": value})
    for bad in (1.0, -0.1):
        with pytest.raises(UsageError, match=f"^{re.escape(f'label smoothing must be in [0, 1), got {bad}')}$"):
            CrossEntropy(Fixed(LOGITS), smoothing=bad)
    with pytest.raises(UsageError, match=r"^label smoothing must be in \[0, 1\), got 1.0$"):
        LabelSmoothing(Fixed(LOGITS), eps=1.0)
