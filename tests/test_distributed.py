"""torchrun with 2 CPU processes (gloo) matches a single process with the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# No BatchNorm (per-rank statistics would differ), no augmentation: the runs must agree.
COMMON = ["-m", "robustlab.train", "--model", "small_cnn", "--model-arg", "norm=none", "--epochs", "2",
          "--train-size", "512", "--val-size", "0", "--test-size", "500", "--batch-size", "64", "--crop-pad", "0",
          "--no-flip", "--optimizer", "sgd", "--lr", "0.05", "--tta", "none", "--quiet", "--device", "cpu"]


def _record(out: Path) -> dict:
    (path,) = (out / "records").glob("*.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_torchrun_two_ranks_matches_single_process(cifar10, cifar10_dir, session_cache_dir, tmp_path):
    env = {**os.environ, "ROBUSTLAB_DATA": str(cifar10_dir), "ROBUSTLAB_CACHE": str(session_cache_dir),
           "OMP_NUM_THREADS": "1"}
    single, multi = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, *COMMON, "--out", str(single)], cwd=REPO, env=env, check=True, timeout=600)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *COMMON,
                    "--out", str(multi)], cwd=REPO, env=env, check=True, timeout=600)
    a, b = _record(single), _record(multi)
    assert a["run_id"] == b["run_id"]
    for key in ("test_acc", "test_loss"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], abs=1e-3)
    for ha, hb in zip(a["history"], b["history"]):
        # train loss is reduced across ranks: the same mean over the same 512 images
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-3)
    # only rank 0 wrote: one record, one run directory
    assert len(list((multi / "records").glob("*.json"))) == 1
