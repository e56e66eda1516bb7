"""torchrun with 2 CPU processes (gloo) on a tiny generated CIFAR-10: every reduced metric equals the
single-process value, rank 0 alone writes the run record and every rank waits for it, SupCon logs the
single-process loss, and a NaN on one rank stops both at the first bad step.

One torchrun launch (tests/ddp_worker.py) runs every scenario; the single-process reference runs here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_cifar10
from ddp_worker import supcon_batch, tiny_config
from robustlab.experiment import Context, run_experiment

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, session_cache_dir):
    """(folder with every scenario's per-rank JSON, data dir) after one 2-process torchrun launch."""
    root = tmp_path_factory.mktemp("ddp")
    data = write_tiny_cifar10(root / "data")
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ROBUSTLAB_CACHE": str(session_cache_dir)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "tests" / "ddp_worker.py"), str(out), str(data.root)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    (out / "stderr.txt").write_text(proc.stderr)  # a crashed scenario fails its own test, naming the cause
    return out, data.root


def _ranks(out: Path, scenario: str) -> list[dict]:
    paths = [out / f"{scenario}-rank{r}.json" for r in (0, 1)]
    assert all(p.exists() for p in paths), f"scenario {scenario} did not finish:\n{(out / 'stderr.txt').read_text()[-3000:]}"
    return [json.loads(p.read_text()) for p in paths]


@pytest.fixture(scope="module")
def single_process_record(ddp, tmp_path_factory):
    _, data_root = ddp
    return run_experiment(tiny_config(), tmp_path_factory.mktemp("single"),
                          Context(data_dir=str(data_root), device="cpu", quiet=True))


def test_every_reduced_metric_matches_one_process(ddp, single_process_record):
    rank0, rank1 = _ranks(ddp[0], "record")
    single = single_process_record
    assert len(rank0["history"]) == len(single["history"]) == 2
    for mine, ref in zip(rank0["history"], single["history"]):
        # summed over ranks: the same mean over the same 80 training images
        assert mine["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-4)
        assert mine["train_acc"] == pytest.approx(ref["train_acc"], abs=1e-6)
        for key in ("val_acc", "val_loss", "test_acc", "test_loss"):
            assert mine[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6)
    assert rank0["metrics"]["test_acc"] == pytest.approx(single["metrics"]["test_acc"], abs=1e-6)


def test_every_rank_keeps_rank_0s_history(ddp):
    # rank 1's own test evaluation returned -1: the broadcast replaced it with rank 0's row
    rank0, rank1 = _ranks(ddp[0], "record")
    assert rank1["history"] == rank0["history"]
    assert all(row["test_acc"] >= 0 for row in rank1["history"])


def test_only_rank_0_writes_the_record_and_every_rank_waits_for_it(ddp):
    out, _ = ddp
    assert sorted(p.name for p in out.glob("write_record-called-by-rank*")) == ["write_record-called-by-rank0"]
    assert len(list((out / "results" / "records").glob("*.json"))) == 1
    # rank 0 took 1.5 s to write; rank 1 looked the record up as soon as run_experiment returned
    assert [r["found_record"] for r in _ranks(out, "record")] == [True, True]


def test_supcon_logs_the_single_process_loss_with_the_single_process_gradient(ddp):
    make, x, y = supcon_batch()
    strategy = make(distributed=False)
    step = strategy.train_step(x, y, torch.arange(8), 0)
    step.loss.backward()
    for rank in _ranks(ddp[0], "supcon"):
        assert rank["loss"] == pytest.approx(step.loss.item(), rel=1e-5)  # not world_size x larger
        for name, param in strategy.named_parameters():
            assert torch.tensor(rank["grads"][name]) == pytest.approx(param.grad, rel=1e-4, abs=1e-6), name


def test_nan_on_one_rank_stops_every_rank_at_that_step(ddp):
    messages = [r["message"] for r in _ranks(ddp[0], "nan")]
    for message in messages:
        assert message is not None and "the loss became NaN or inf at epoch 1, step 2" in message

