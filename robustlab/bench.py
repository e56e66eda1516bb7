"""Training throughput: the device-resident batch loader against a torchvision DataLoader pipeline.

    python -m robustlab.bench --model resnet18 --batch-size 512 --steps 50 [--workers 8]

Both pipelines train the same model with the same batch size, optimizer, augmentation
(random crop with reflect padding 4 + flip) and precision; only the input pipeline differs.
Real CIFAR-10 is used when found (--data-dir / ROBUSTLAB_DATA), random images otherwise.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from robustlab.cli import Parser, nonneg_int, positive_int
from robustlab.data import AugmentConfig, BatchAugment, DeviceLoader
from robustlab.errors import UsageError, cli_entry
from robustlab.experiment import resolve_device
from robustlab.models import create_model

MEAN, STD = (0.4913, 0.4821, 0.4465), (0.2452, 0.2428, 0.2606)


class _ArrayDataset(torch.utils.data.Dataset):
    """uint8 (N, 3, H, W) array -> per-sample PIL transforms, as a classic CIFAR pipeline does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        from torchvision import transforms as T

        self.images, self.labels = images, labels
        self.transform = T.Compose([T.RandomCrop(32, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(),
                                    T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i].transpose(1, 2, 0))), int(self.labels[i])


def _images(args) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from robustlab.data import load_dataset

        train, _ = load_dataset("cifar10", args.data_dir, download=False)
        return train.images, train.labels, "CIFAR-10 train"
    except UsageError:
        n = 10_000
        g = torch.Generator().manual_seed(0)
        return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                torch.randint(0, 10, (n,), generator=g), "random images")


def _time_steps(model, batches, steps: int, warmup: int, device, amp: bool) -> float:
    """Images per second over `steps` training steps after `warmup` steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    cuda = device.type == "cuda"
    seen, start = 0, None
    for step, (x, y) in enumerate(batches):
        if step == warmup:
            if cuda:
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
        if step + 1 == warmup + steps:
            break
    if cuda:
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def _cycle(loader):
    while True:
        for batch in loader:
            yield batch[0], batch[1]


@cli_entry
def main(argv=None) -> int:
    p = Parser(prog="python -m robustlab.bench", description=__doc__)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--steps", type=positive_int, default=30)
    p.add_argument("--warmup", type=nonneg_int, default=5)
    p.add_argument("--workers", type=nonneg_int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    model = create_model(args.model, num_classes=10).to(device)  # a bad name fails before data loads
    images, labels, source = _images(args)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    amp = not args.no_amp

    augment = BatchAugment(AugmentConfig(crop_pad=4, pad_mode="reflect", flip=True), MEAN, STD)
    resident = DeviceLoader(images, labels, args.batch_size, augment, drop_last=True, device=device)
    rate_resident = _time_steps(model, _cycle(resident), args.steps, args.warmup, device, amp)

    dataset = _ArrayDataset(images.numpy(), labels.numpy())
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    rate_loader = _time_steps(model, _cycle(loader), args.steps, args.warmup, device, amp)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model {args.model}, batch {args.batch_size}, {args.steps} timed steps, {source}, {name}, "
          f"bf16 {'on' if amp and device.type == 'cuda' else 'off'}")
    print(f"device-resident loader : {rate_resident:9.0f} img/s")
    print(f"DataLoader ({args.workers} workers) : {rate_loader:9.0f} img/s")
    print(f"speed-up               : {rate_resident / rate_loader:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
