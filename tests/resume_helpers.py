"""Shared by the per-sample-state resume tests (ELR, SOP, peer loss, CORES², DivideMix, PES,
T-Revision): a learnable toy image set, its seeded label flips and loaders, and a loader that stops
the run as Ctrl-C would."""
from __future__ import annotations

import torch

from robustlab.data import DeviceLoader, Normalize

TOY_MEAN, TOY_STD = (0.5,) * 3, (0.25,) * 3


def toy_images(n=96, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 100, (n, 3, size, size), generator=g, dtype=torch.uint8)
    for i in range(n):  # a bright channel per class makes the labels learnable
        images[i, labels[i] % 3, : size // 2 if labels[i] < 3 else size] += 120
    return images, labels


def flip_toy_labels(clean: torch.Tensor, rate: float, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy, flipped): each of the 4 classes' labels moved to another class with probability `rate`."""
    g = torch.Generator().manual_seed(seed)
    n = len(clean)
    flipped = torch.rand(n, generator=g) < rate
    return torch.where(flipped, (clean + torch.randint(1, 4, (n,), generator=g)) % 4, clean), flipped


def toy_eval_loaders(images, noisy, clean, n: int, whole_batch: int, test_batch: int) -> tuple[DeviceLoader, DeviceLoader]:
    """The unaugmented pass over the first n images with their noisy labels, and the clean test loader
    over the rest."""
    norm = Normalize(TOY_MEAN, TOY_STD)
    return (DeviceLoader(images[:n], noisy, whole_batch, norm, shuffle=False),
            DeviceLoader(images[n:], clean[n:], test_batch, norm, shuffle=False))


class InterruptAt(DeviceLoader):
    """Stops the run (as Ctrl-C would) when epoch 2 (0-based) begins."""

    def set_epoch(self, epoch: int) -> None:
        if epoch == 2:
            raise KeyboardInterrupt
        super().set_epoch(epoch)
