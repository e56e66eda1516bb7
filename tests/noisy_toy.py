"""A learnable toy task with symmetric label noise, for end-to-end checks of the noisy-label strategies."""
from __future__ import annotations

import torch

from robustlab.data import DeviceLoader, Normalize
from robustlab.engine import FitResult, TrainConfig, fit
from robustlab.models import create_model
from robustlab.schedules import OptimConfig
from robustlab.strategies import BuildContext, Strategy, create_strategy

CLASSES, SIZE = 4, 8
NORM = Normalize((0.5,) * 3, (0.25,) * 3)


def toy_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 noise images with a bright band whose row (and channel) encode the class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    images = torch.randint(0, 100, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        images[i, c % 3, 2 * c:2 * c + 2] += 150
    return images, labels


def flip_labels(labels: torch.Tensor, rate: float, seed: int) -> torch.Tensor:
    """Exactly round(rate * n) labels moved to another class (chosen uniformly)."""
    g = torch.Generator().manual_seed(seed)
    noisy = labels.clone()
    wrong = torch.randperm(len(labels), generator=g)[:round(rate * len(labels))]
    noisy[wrong] = (labels[wrong] + torch.randint(1, CLASSES, (len(wrong),), generator=g)) % CLASSES
    return noisy


def fit_toy(name: str, noise: float = 0.3, epochs: int = 8, n_train: int = 192, **options) -> tuple[Strategy, FitResult]:
    """Train strategy `name` (tiny CNNs, Adam) on noisy toy labels; test on clean held-out images."""
    torch.manual_seed(0)
    images, clean = toy_images(n_train + 96, seed=0)
    train_x, train_clean = images[:n_train], clean[:n_train]
    noisy = flip_labels(train_clean, noise, seed=1)
    ctx = BuildContext(new_model=lambda: create_model("tiny_cnn", num_classes=CLASSES), num_classes=CLASSES,
                       num_train=n_train, noise_rate=float((noisy != train_clean).float().mean()),
                       clean_train_labels=train_clean)
    strategy = create_strategy(name, context=ctx, **options)
    cfg = TrainConfig(epochs=epochs, batch_size=32, tta="none", precision="fp32",
                      optim=OptimConfig(optimizer="adam", lr=1e-2, weight_decay=0.0, schedule="constant"))
    whole = DeviceLoader(train_x, noisy, 96, NORM, shuffle=False) if strategy.needs_train_pass else None
    result = fit(strategy, DeviceLoader(train_x, noisy, 32, NORM, seed=0), cfg,
                 test_loader=DeviceLoader(images[n_train:], clean[n_train:], 96, NORM, shuffle=False),
                 quiet=True, num_classes=CLASSES, train_pass_loader=whole)
    return strategy, result
