"""Scenarios run by tests/test_distributed.py under `torchrun --nproc_per_node=2` (gloo, CPU).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py OUT DATA_DIR

Each scenario writes what this rank saw to OUT/<scenario>-rank<R>.json; the test compares the ranks
with each other and with the same computation done in one process. The helpers that build the
shared inputs (`tiny_config`, `supcon_batch`) are imported by the test for that reference.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn


def tiny_config():
    """Two epochs of an un-normalized tiny CNN on the generated 100-image CIFAR-10, no augmentation:
    one process and two ranks (each with half of every batch) must agree."""
    from robustlab.experiment import ExperimentConfig
    from robustlab.schedules import OptimConfig

    cfg = ExperimentConfig(model="tiny_cnn", model_kwargs={"norm": "none"}, seed=0)
    cfg.data.val_size = 20
    cfg.train.epochs, cfg.train.batch_size, cfg.train.tta = 2, 20, "none"
    cfg.train.optim = OptimConfig(optimizer="sgd", lr=0.05, schedule="constant", weight_decay=0.0)
    cfg.augment.crop_pad, cfg.augment.flip = 0, False
    return cfg


class TinyEncoder(nn.Module):
    """The smallest network SupConPretrain accepts: flatten + linear features."""

    num_features = 6

    def __init__(self):
        super().__init__()
        self.features = nn.Linear(3 * 4 * 4, self.num_features)

    def forward_features(self, x):
        return self.features(x.flatten(1))


def supcon_batch():
    """(strategy factory, 8 samples of 2 views, labels): every class has positives across both halves."""
    from robustlab.strategies.supcon import SupConPretrain

    def make(distributed: bool):
        torch.manual_seed(0)
        return SupConPretrain(TinyEncoder(), temperature=0.1, proj_dim=4, distributed=distributed)

    g = torch.Generator().manual_seed(1)
    return make, torch.randn(8, 2, 3, 4, 4, generator=g), torch.tensor([0, 1, 0, 2, 1, 2, 0, 1])


def _dump(out: Path, scenario: str, rank: int, payload: dict) -> None:
    (out / f"{scenario}-rank{rank}.json").write_text(json.dumps(payload))


def record_scenario(out: Path, data_dir: str, rank: int) -> None:
    """run_experiment: rank 0 alone writes the record (slowly here), and no rank returns before it exists.
    Rank 1's own test evaluation is made to disagree: the history must still be rank 0's."""
    from robustlab import engine, experiment, records

    real_write = experiment.write_record

    def slow_write(results_dir, record):
        (out / f"write_record-called-by-rank{rank}").touch()
        time.sleep(1.5)  # a slow shared filesystem
        return real_write(results_dir, record)

    experiment.write_record = slow_write
    if rank == 1:
        engine._test_metrics = lambda *args, **kwargs: {"test_acc": -1.0, "test_loss": -1.0}
    cfg = tiny_config()
    results = out / "results"
    record = experiment.run_experiment(cfg, results, experiment.Context(data_dir=data_dir, device="cpu", quiet=True))
    found = records.find_record(results, cfg.run_id) is not None
    _dump(out, "record", rank, {"found_record": found, "history": record["history"], "metrics": record["metrics"]})


def supcon_scenario(out: Path, rank: int) -> None:
    """One SupCon step through DDP, each rank holding half of the batch: loss value and gradients."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    make, x, y = supcon_batch()
    strategy = make(distributed=True)
    ddp = DDP(strategy)
    part = slice(4 * rank, 4 * rank + 4)
    step = ddp(x[part], y[part], torch.arange(4), 0)
    step.loss.backward()
    grads = {n: p.grad.tolist() for n, p in strategy.named_parameters() if p.grad is not None}
    _dump(out, "supcon", rank, {"loss": step.loss.item(), "grads": grads})


def nan_scenario(out: Path, rank: int) -> None:
    """Only rank 1's loss value is NaN, at epoch 1 step 2 (its gradient stays finite): both ranks must stop there."""
    from robustlab.data import DeviceLoader, Normalize
    from robustlab.engine import TrainConfig, TrainingDiverged, fit
    from robustlab.schedules import OptimConfig
    from robustlab.strategies.cross_entropy import CrossEntropy

    class NaNOnRank1(CrossEntropy):
        steps = 0

        def train_step(self, x, y, idx, epoch):
            out = super().train_step(x, y, idx, epoch)
            self.steps += 1
            if rank == 1 and self.steps == 2:
                out.loss = out.loss + torch.tensor(float("nan"))  # a non-finite value, finite gradient
            return out

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.arange(40) % 10
    loader = DeviceLoader(images, labels, 5, Normalize([0.5] * 3, [0.25] * 3), shuffle=False, rank=rank, world_size=2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    cfg = TrainConfig(epochs=2, batch_size=10, tta="none", optim=OptimConfig(lr=0.01, schedule="constant"))
    try:
        fit(NaNOnRank1(model), loader, cfg, quiet=True, num_classes=10)
        message = None
    except TrainingDiverged as exc:
        message = str(exc)
    _dump(out, "nan", rank, {"message": message})


def main(out: str, data_dir: str) -> None:
    import torch.distributed as dist

    from robustlab import distributed

    info = distributed.init_from_env("cpu")
    torch.set_num_threads(1)
    out_dir = Path(out)
    record_scenario(out_dir, data_dir, info.rank)
    supcon_scenario(out_dir, info.rank)
    nan_scenario(out_dir, info.rank)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
