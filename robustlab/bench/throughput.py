"""Training throughput of one configuration: loader x precision x memory format x compile x batch size.

Every configuration trains the same model with cross-entropy (the `ce` strategy, as robustlab.train
does), SGD, and the same augmentation (random crop with reflect padding 4 + flip); only the
pipeline differs:
  device      the whole uint8 dataset on the device, whole batches augmented there (DeviceLoader);
  dataloader  torchvision DataLoader with per-sample PIL transforms in `workers` processes.
Configurations are timed round-robin (`repeats` windows of `steps` steps each, median reported),
so a shared, noisy machine slows all of them alike.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from robustlab.data import AugmentConfig, BatchAugment, DeviceLoader
from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.precision import Precision, resolve_precision

MEAN, STD = (0.4913, 0.4821, 0.4465), (0.2452, 0.2428, 0.2606)  # CIFAR-10 (JPEG copy) train statistics
LOADERS = ("device", "dataloader")


@dataclass(frozen=True)
class Setting:
    loader: str = "device"
    precision: str = "fp32"        # resolved: fp32 | bf16
    channels_last: bool = False
    compile: bool = False
    batch_size: int = 128
    workers: int = 0               # DataLoader worker processes (dataloader only)

    def label(self) -> str:
        loader = f"dataloader({self.workers}w)" if self.loader == "dataloader" else "device"
        fmt = "channels_last" if self.channels_last else "contiguous"
        return f"{loader} {self.precision} {fmt}{' compile' if self.compile else ''} b{self.batch_size}"


def default_setting(device: torch.device, batch_size: int = 128, model: str = "small_cnn") -> Setting:
    """What robustlab.train uses for `model` on `device` (TrainConfig defaults: precision auto, no compile)."""
    policy = resolve_precision("auto", device, model=create_model(model))
    return Setting("device", policy.name, policy.channels_last, False, batch_size)


def bench_images(data_dir: str | None, cache_dir: str | None = None, limit: int | None = None):
    """(uint8 images (N, 3, H, W), labels, source): CIFAR-10 train when found, random images otherwise."""
    from robustlab.data import load_dataset

    try:
        train, _ = load_dataset("cifar10", data_dir, cache_dir, download=False)
        images, labels, source = train.images, train.labels, "CIFAR-10 train (JPEG q75 copy)"
    except UsageError:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels, source = torch.randint(0, 10, (10_000,), generator=g), "random images"
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels, source


class PILDataset(torch.utils.data.Dataset):
    """uint8 (N, 3, H, W) array -> per-sample PIL transforms, as a classic CIFAR pipeline does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from torchvision import transforms as T

        self.images, self.labels = images, labels
        self.transform = T.Compose([T.RandomCrop(images.shape[-1], padding=4, padding_mode="reflect"),
                                    T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i].transpose(1, 2, 0))), int(self.labels[i])


def _cycle(loader, device_loader: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        if device_loader:
            loader.set_epoch(epoch)
        for batch in loader:
            yield batch[0], batch[1]
        epoch += 1


@dataclass
class Contender:
    """One configuration, built once (model, optimizer, compiled graph, loader workers) and timed often."""
    setting: Setting
    strategy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    policy: Precision
    batches: Iterator
    device: torch.device
    rates: list[float] = field(default_factory=list)

    def step(self) -> int:
        x, y = next(self.batches)
        x = self.policy.format_input(x.to(self.device, non_blocking=True))
        y = y.to(self.device, non_blocking=True)
        with self.policy.autocast():
            loss = self.strategy.train_step(x, y, None, 0).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return len(y)

    def time(self, steps: int) -> float:
        """Images per second over `steps` steps."""
        _sync(self.device)
        start, seen = time.perf_counter(), 0
        for _ in range(steps):
            seen += self.step()
        _sync(self.device)
        rate = seen / (time.perf_counter() - start)
        self.rates.append(rate)
        return rate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_contender(setting: Setting, model: str, images: torch.Tensor, labels: torch.Tensor,
                    device: torch.device, num_classes: int = 10, seed: int = 0,
                    compile_backend: str = "inductor") -> Contender:
    from robustlab.strategies import CrossEntropy

    torch.manual_seed(seed)
    strategy = CrossEntropy(create_model(model, num_classes=num_classes)).to(device).train()
    policy = Precision(setting.precision, setting.channels_last, device.type, setting.precision)
    policy.prepare(strategy)
    if setting.compile:
        strategy.model.compile(backend=compile_backend)
    optimizer = torch.optim.SGD(strategy.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if setting.loader == "device":
        augment = BatchAugment(AugmentConfig(crop_pad=4, pad_mode="reflect", flip=True), MEAN, STD)
        loader = DeviceLoader(images, labels, setting.batch_size, augment, drop_last=True, seed=seed, device=device)
        batches = _cycle(loader, device_loader=True)
    else:
        loader = torch.utils.data.DataLoader(
            PILDataset(images.numpy(), labels.numpy()), batch_size=setting.batch_size, shuffle=True, drop_last=True,
            num_workers=setting.workers, pin_memory=device.type == "cuda", persistent_workers=setting.workers > 0)
        batches = _cycle(loader, device_loader=False)
    return Contender(setting, strategy, optimizer, policy, batches, device)


def measure(settings: list[Setting], model: str, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
            steps: int = 20, warmup: int = 3, repeats: int = 3, log=None, compile_backend: str = "inductor") -> list[dict]:
    """One row per setting: the median img/s over `repeats` round-robin windows of `steps` steps."""
    contenders = []
    for setting in settings:
        c = build_contender(setting, model, images, labels, device, compile_backend=compile_backend)
        for _ in range(warmup + (2 if setting.compile else 0)):  # compilation happens in the first steps
            c.step()
        contenders.append(c)
        if log:
            log(f"built {setting.label()}")
    for _ in range(repeats):
        for c in contenders:
            c.time(steps)
    default = default_setting(device, model=model)
    rows = []
    for c in contenders:
        s = c.setting
        rows.append({"model": model, "device": device_name(device), "loader": s.loader, "workers": s.workers,
                     "precision": s.precision, "channels_last": s.channels_last, "compile": s.compile,
                     "batch_size": s.batch_size, "img_per_s": statistics.median(c.rates),
                     "img_per_s_all": [round(r, 1) for r in c.rates],
                     "default": s == default})
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
