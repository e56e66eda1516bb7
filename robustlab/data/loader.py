"""A batch loader whose whole dataset lives on the device as uint8.

Each epoch draws one permutation from a generator seeded by (seed, epoch), so an epoch's batches
and augmentations are the same whether the run was interrupted or not. Under DDP every rank
takes an interleaved shard of that permutation (as DistributedSampler does).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from robustlab.errors import require
from robustlab.seeds import mixed_seed

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class DeviceLoader:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, augment: Augment,
                 shuffle: bool = True, drop_last: bool = False, seed: int = 0, device: str | torch.device = "cpu",
                 rank: int = 0, world_size: int = 1):
        require(batch_size >= 1, f"batch size must be >= 1, got {batch_size}")
        require(len(images) == len(labels), "images and labels differ in length")
        require(len(images) > 0, "empty dataset")
        self.device = torch.device(device)
        self.images = images.to(self.device, non_blocking=True)
        self.labels = labels.to(self.device, non_blocking=True)
        self.batch_size, self.augment = batch_size, augment
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _generator(self, stream: int = 0) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(mixed_seed(self.seed, self.epoch, stream))
        return g

    def _indices(self, g: torch.Generator) -> torch.Tensor:
        n = len(self.labels)
        order = torch.randperm(n, generator=g, device=self.device) if self.shuffle else torch.arange(n, device=self.device)
        if self.world_size > 1:
            per_rank = n // self.world_size if self.drop_last else math.ceil(n / self.world_size)
            order = torch.cat([order, order[: per_rank * self.world_size - n]]) if per_rank * self.world_size > n else order
            order = order[self.rank: per_rank * self.world_size: self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self.labels)
        if self.world_size > 1:
            n = n // self.world_size if self.drop_last else math.ceil(n / self.world_size)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        g = self._generator()
        order = self._indices(g)  # the same permutation on every rank
        # Under DDP each rank draws its own augmentations, so ranks do not share crops and flips.
        aug = g if self.world_size == 1 else self._generator(stream=self.rank + 1)
        for b in range(len(self)):
            idx = order[b * self.batch_size: (b + 1) * self.batch_size]
            if getattr(self.augment, "takes_index", False):  # e.g. the alternating flip: per-index, per-epoch
                batch = self.augment(self.images[idx], aug, idx=idx, epoch=self.epoch)
            else:
                batch = self.augment(self.images[idx], aug)
            yield batch, self.labels[idx], idx
        self.epoch += 1
