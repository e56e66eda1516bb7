"""DistributedDataParallel set-up from torchrun's environment, and the few collectives fit() needs.

Under `torchrun --nproc_per_node=N`, every rank trains on an interleaved shard of each epoch's
permutation with batch_size / N images, DDP averages the gradients, so a step sees the same
global batch as a single process would. BatchNorm is converted to SyncBatchNorm on CUDA; on
CPU (gloo) it stays per-rank, because SyncBatchNorm has no CPU kernel.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str = "auto") -> DistInfo:
    """Join the process group that torchrun describes (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local)


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum tensors across ranks in place (no-op without a process group)."""
    if current().enabled:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def all_reduce_max(tensor: torch.Tensor) -> None:
    if current().enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


def all_reduce_min(tensor: torch.Tensor) -> None:
    if current().enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)


def barrier() -> None:
    """Wait until every rank gets here (no-op without a process group): e.g. until rank 0's file exists."""
    if current().enabled:
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's copy of a picklable object, on every rank."""
    if not current().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_for_training(strategy: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP around the whole strategy: its forward is train_step, so every network it owns
    (both Co-Teaching peers, a SupCon projection head) gets its gradients averaged."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    unused = getattr(strategy, "unused_parameters", False)
    if device.type == "cuda":
        strategy = torch.nn.SyncBatchNorm.convert_sync_batchnorm(strategy)
        return DDP(strategy, device_ids=[device.index], find_unused_parameters=unused)
    return DDP(strategy, find_unused_parameters=unused)
