"""examples/custom_strategy.py: a strategy in the user's own file, registered and run in the study."""
import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from robustlab.strategies import create_strategy, list_strategies
from robustlab.strategies.registry import _REGISTRY

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_strategy.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("custom_strategy_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the file's annotations through it
    spec.loader.exec_module(module)
    yield module
    _REGISTRY.pop("bootstrap", None)
    sys.modules.pop(spec.name, None)


def test_bootstrap_loss_matches_the_hand_computation(example):
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([1, 2])
    p = logits.softmax(1).tolist()
    # soft, beta = 0.95: target 0.95 * onehot + 0.05 * p
    want_soft = [-(0.95 * math.log(p[0][1]) + 0.05 * sum(p[0][k] * math.log(p[0][k]) for k in range(3))),
                 -(0.95 * math.log(p[1][2]) + 0.05 * sum(p[1][k] * math.log(p[1][k]) for k in range(3)))]
    assert example.bootstrap_loss(logits, labels, 0.95, "soft").tolist() == pytest.approx(want_soft, rel=1e-5)
    # hard, beta = 0.8: sample 0 predicts class 0 (label 1), sample 1 predicts its label
    want_hard = [-(0.8 * math.log(p[0][1]) + 0.2 * math.log(p[0][0])), -math.log(p[1][2])]
    assert example.bootstrap_loss(logits, labels, 0.8, "hard").tolist() == pytest.approx(want_hard, rel=1e-5)


def test_soft_bootstrap_keeps_the_gradient_through_its_own_prediction(example):
    logits = torch.tensor([[1.0, 0.5, -0.5]], requires_grad=True)
    example.bootstrap_loss(logits, torch.tensor([0]), 0.0, "soft").sum().backward()
    # beta = 0: the loss is the prediction's entropy, whose gradient is not zero for a non-uniform p
    p = logits.detach().softmax(1)
    entropy_grad = -p * (p.log() + (-(p * p.log()).sum()))
    assert logits.grad[0].tolist() == pytest.approx(entropy_grad[0].tolist(), abs=1e-6)


def test_registered_by_importing_the_users_file(example):
    from robustlab.models import create_model

    assert "bootstrap" in list_strategies()
    st = create_strategy("bootstrap", create_model("tiny_cnn"), mode="hard")
    assert st.beta == 0.8 and st.options() == {"mode": "hard", "beta": 0.8}


def test_the_example_runs_the_noisy_label_study_with_a_bootstrap_row(example, cifar10, cifar10_dir,
                                                                      session_cache_dir, tmp_path):
    code = example.main(["--data-dir", str(cifar10_dir), "--out", str(tmp_path), "--train-size", "300",
                         "--epochs", "1", "--val-size", "100", "--test-size", "300", "--cache-dir",
                         str(session_cache_dir), "--quiet", "--no-tensorboard"])
    assert code == 0
    rows = {r["arm"]: r for r in csv.DictReader(open(tmp_path / "table.csv"))}
    assert set(rows) == {"clean_ce", "noisy_ce", "noisy_bootstrap"}
    assert 0.0 < float(rows["noisy_bootstrap"]["test_acc_last"]) <= 1.0
