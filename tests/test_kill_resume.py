"""A training process killed with SIGKILL resumes from its last checkpoint and ends exactly like
an uninterrupted run (CPU, fixed seed), on a generated CIFAR-10 of 1,000 random images."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_cifar10

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 6
ARGS = ["-m", "robustlab.train", "--model", "tiny_cnn", "--model-arg", "dropout=0.3", "--epochs", str(EPOCHS),
        "--val-size", "100", "--batch-size", "50", "--device", "cpu", "--quiet", "--no-tensorboard"]


def _final(out: Path):
    (record,) = (out / "records").glob("*.json")
    rec = json.loads(record.read_text())
    state = torch.load(out / "runs" / rec["run_id"] / "last.pt", weights_only=True)["strategy"]
    return rec, state


@pytest.mark.slow  # three interpreter start-ups
def test_sigkill_then_resume_matches_uninterrupted(session_cache_dir, tmp_path):
    data = write_tiny_cifar10(tmp_path / "data", per_batch=200, n_test=100)  # 1,000 training images
    env = {**os.environ, "ROBUSTLAB_DATA": str(data.root), "ROBUSTLAB_CACHE": str(session_cache_dir),
           "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([sys.executable, *ARGS, "--out", str(whole)], cwd=REPO, env=env, check=True, timeout=600)

    proc = subprocess.Popen([sys.executable, *ARGS, "--out", str(killed)], cwd=REPO, env=env)
    deadline = time.time() + 600
    while not list(killed.glob("runs/*/last.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(killed.glob("records/*.json")), "the run finished before it could be killed"
    epochs_done = torch.load(next(killed.glob("runs/*/last.pt")), weights_only=True)["epoch"] + 1
    assert 1 <= epochs_done < EPOCHS

    subprocess.run([sys.executable, *ARGS, "--out", str(killed), "--resume"], cwd=REPO, env=env, check=True,
                   timeout=600)
    rec_a, state_a = _final(whole)
    rec_b, state_b = _final(killed)
    assert rec_a["run_id"] == rec_b["run_id"]
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    for key in ("test_acc", "test_loss", "test_acc_best"):
        assert rec_b["metrics"][key] == rec_a["metrics"][key]
    assert [h["train_loss"] for h in rec_b["history"]] == [h["train_loss"] for h in rec_a["history"]]
