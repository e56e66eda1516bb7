"""Shared by the per-sample-state resume tests (ELR, SOP, peer loss, CORES²): a learnable toy image
set and a loader that stops the run as Ctrl-C would."""
from __future__ import annotations

import torch

from robustlab.data import DeviceLoader


def toy_images(n=96, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 100, (n, 3, size, size), generator=g, dtype=torch.uint8)
    for i in range(n):  # a bright channel per class makes the labels learnable
        images[i, labels[i] % 3, : size // 2 if labels[i] < 3 else size] += 120
    return images, labels


class InterruptAt(DeviceLoader):
    """Stops the run (as Ctrl-C would) when epoch 2 (0-based) begins."""

    def set_epoch(self, epoch: int) -> None:
        if epoch == 2:
            raise KeyboardInterrupt
        super().set_epoch(epoch)
