"""Tiny generated image sets for tests that need a model to learn something in seconds."""
import torch


def band_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 16x16 images whose class (0-3) is the row of a bright band: a tiny CNN learns it in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randint(0, 100, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    for i in range(n):
        x[i, :, 4 * y[i]:4 * y[i] + 4] += 150
    return x, y
