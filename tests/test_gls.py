"""GLS: the loss against a line-by-line port of the official `loss_gls` and a hand calculation, the
CE warm-up then GLS schedule, presets scaled from the official 120 + 100 epochs, and bad options."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.strategies import BuildContext, create_strategy, make_config
from robustlab.strategies.gls import GLS, OFFICIAL_SHARE, GLSConfig, gls_loss, warmup_length
from coteach_helpers import FixedLogits


def official_loss_gls_port(epoch, y, t, smooth_rate=0.1, wa=0, wb=1):
    """Line-by-line port of UCSC-REAL/negative-label-smoothing loss.py `loss_gls`."""
    confidence = 1. - smooth_rate
    logprobs = F.log_softmax(y, dim=-1)
    nll_loss = -logprobs.gather(dim=-1, index=t.unsqueeze(1))
    nll_loss = nll_loss.squeeze(1)
    smooth_loss = -logprobs.mean(dim=-1)
    loss = (wa + wb * confidence) * nll_loss + wb * smooth_rate * smooth_loss
    loss_numpy = loss.data.cpu().numpy()
    num_batch = len(loss_numpy)
    return torch.sum(loss) / num_batch


@pytest.mark.parametrize("rate,wa,wb", [(0.1, 0, 1), (-0.4, 0, 1), (-6.0, 0, 1), (0.8, 0.5, 2.0), (0.0, 1, 0)])
def test_loss_and_gradient_match_the_official_port(rate, wa, wb):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(7, 5, generator=g) * 3)
    y = torch.randint(0, 5, (7,), generator=g)
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    mine, ref = gls_loss(a, y, rate, wa, wb), official_loss_gls_port(0, b, y, rate, wa, wb)
    assert mine.item() == pytest.approx(ref.item(), rel=1e-6)
    mine.backward()
    ref.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-7)


def test_hand_calculation():
    logits = torch.tensor([[math.log(3.0), 0.0]])  # p = (0.75, 0.25)
    y = torch.tensor([0])
    nll, smooth = -math.log(0.75), -(math.log(0.75) + math.log(0.25)) / 2
    assert gls_loss(logits, y, -0.5).item() == pytest.approx(1.5 * nll - 0.5 * smooth, abs=1e-6)
    assert gls_loss(logits, y, 0.2).item() == pytest.approx(0.8 * nll + 0.2 * smooth, rel=1e-6)
    assert gls_loss(logits, y, 0.0).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    # negative smoothing keeps pushing past a confident correct prediction, positive pulls back
    z = torch.tensor([[4.0, 0.0]], requires_grad=True)
    gls_loss(z, y, -0.5).backward()
    assert z.grad[0, 0] < 0  # descent raises the label's logit further
    z.grad = None
    gls_loss(z, y, 0.5).backward()
    assert z.grad[0, 0] > 0  # PLS: descent lowers an over-confident label logit


def test_warm_up_is_cross_entropy_then_gls_from_the_given_epoch():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 2])
    st = GLS(FixedLogits(logits), smooth_rate=-0.4, warmup_epochs=2)
    ce = F.cross_entropy(logits, y).item()
    gls = official_loss_gls_port(0, logits, y, -0.4).item()
    seen = []
    for epoch in range(4):
        st.on_epoch_start(epoch, 4)
        out = st.train_step(torch.zeros(2, 1), y, torch.tensor([0, 1]), epoch)
        seen.append((out.loss.item(), st.epoch_metrics()["smooth_rate_now"]))
        assert torch.equal(out.logits, logits)
    assert seen[0][0] == pytest.approx(ce) and seen[1][0] == pytest.approx(ce)
    assert seen[2][0] == pytest.approx(gls) and seen[3][0] == pytest.approx(gls)
    assert [s[1] for s in seen] == [0.0, 0.0, -0.4, -0.4]
    direct = GLS(FixedLogits(logits), smooth_rate=-0.4)  # no warm-up: GLS from the first step
    assert direct.train_step(torch.zeros(2, 1), y, None, 0).loss.item() == pytest.approx(gls)
    assert gls != pytest.approx(ce)


def test_presets_keep_the_official_warm_up_share_and_options_resolve():
    assert OFFICIAL_SHARE == 120 / 220
    assert [warmup_length(e, 0, OFFICIAL_SHARE) for e in (220, 20, 100, 10, 2)] == [120, 11, 55, 5, 1]
    assert warmup_length(20, 3) == 3 and warmup_length(20, 3, 0.5) == 10
    for name in ("quick", "paper", "fast"):
        assert GLS.presets[name] == {"smooth_rate": -0.4, "warmup_share": OFFICIAL_SHARE}
    shared = GLS(nn.Linear(2, 2), -0.4, warmup_share=0.5)
    shared.on_epoch_start(4, 10)
    assert shared.epoch_metrics()["smooth_rate_now"] == 0.0
    shared.on_epoch_start(5, 10)
    assert shared.epoch_metrics()["smooth_rate_now"] == -0.4
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=10), num_classes=10, num_train=7)
    st = create_strategy("gls", context=ctx)
    assert (st.smooth_rate, st.warmup_epochs, st.wa, st.wb) == (0.1, 0, 0.0, 1.0)  # official defaults
    assert st.options() == {"smooth_rate": 0.1, "warmup_epochs": 0, "warmup_share": None, "wa": 0.0, "wb": 1.0}
    assert st.epoch_metrics()["smooth_rate_now"] == 0.1  # GLS from the start
    st = create_strategy("gls", context=ctx, smooth_rate=-6, warmup_epochs=3)
    assert (st.smooth_rate, st.warmup_epochs) == (-6.0, 3)


def test_bad_options_give_one_line_naming_the_option_and_range():
    GLSConfig(smooth_rate=-1e6, warmup_epochs=0, wa=0, wb=1e-9).validate()
    GLSConfig(smooth_rate=0.999).validate()
    for bad, message in (({"smooth_rate": 1.0}, "smooth_rate must be in (-inf, 1), got 1.0"),
                         ({"smooth_rate": 1.5}, "smooth_rate must be in (-inf, 1), got 1.5"),
                         ({"smooth_rate": float("-inf")}, "option smooth_rate must be a finite number, got -inf"),
                         ({"warmup_epochs": -1}, "warmup_epochs must be >= 0, got -1"),
                         ({"warmup_share": 1.0}, "warmup_share must be in [0, 1), got 1.0"),
                         ({"warmup_share": -0.1}, "warmup_share must be in [0, 1), got -0.1"),
                         ({"warmup_share": 0.5, "warmup_epochs": 2}, "give warmup_epochs or warmup_share, not both"),
                         ({"wa": -1}, "wa and wb must be >= 0, got wa=-1.0, wb=1.0"),
                         ({"wb": -0.1}, "wa and wb must be >= 0, got wa=0.0, wb=-0.1"),
                         ({"wa": 0, "wb": 0}, "wa + wb must be > 0")):
        with pytest.raises(UsageError) as err:
            make_config("gls", bad)
        assert str(err.value) == f"strategy 'gls': {message}"
    for kwargs, message in (({"smooth_rate": 1.0}, "GLS smooth_rate must be in (-inf, 1), got 1.0"),
                            ({"smooth_rate": float("nan")}, "GLS smooth_rate must be in (-inf, 1), got nan"),
                            ({"warmup_epochs": -2}, "GLS warmup_epochs must be >= 0, got -2"),
                            ({"warmup_share": 1.0}, "GLS warmup_share must be in [0, 1), got 1.0")):
        with pytest.raises(UsageError) as err:
            GLS(nn.Linear(2, 2), **{"smooth_rate": 0.1, **kwargs})
        assert str(err.value) == message


def test_a_warm_up_that_leaves_no_gls_epoch_is_refused():
    exp = SimpleNamespace(train=SimpleNamespace(epochs=5))
    ctx = BuildContext(new_model=lambda: nn.Linear(2, 2), num_classes=2, num_train=3, experiment=exp)
    create_strategy("gls", context=ctx, warmup_epochs=4)
    create_strategy("gls", context=ctx, warmup_share=0.8)  # 4 of 5
    for options in ({"warmup_epochs": 5}, {"warmup_share": 0.95}):
        with pytest.raises(UsageError) as err:
            create_strategy("gls", context=ctx, **options)
        assert str(err.value) == "gls warm-up (5 epochs) must leave a GLS epoch: it must be < the run's epochs (5)"
    st = GLS(nn.Linear(2, 2), 0.1, warmup_epochs=3)
    st.on_epoch_start(0, 4)
    with pytest.raises(UsageError, match=r"gls warm-up \(3 epochs\) must leave a GLS epoch: it must be < the run's epochs \(3\)"):
        st.on_epoch_start(0, 3)


def test_float32_loss_for_bf16_logits():
    logits = torch.tensor([[2.0, -1.0]], dtype=torch.bfloat16)
    assert gls_loss(logits, torch.tensor([0]), -0.5).dtype == torch.float32
    assert np.isfinite(gls_loss(logits, torch.tensor([0]), -0.5).item())
