"""Batch augmentations pixel by pixel, BatchAugment's seeding, and the device-resident loader."""
from __future__ import annotations

import pytest
import torch

from robustlab.data.augment import AugmentConfig, BatchAugment, Normalize, crop_padded, cutout, hflip, normalize
from robustlab.data.loader import DeviceLoader
from robustlab.errors import UsageError


def grid(n: int = 1, c: int = 1, h: int = 4, w: int = 4) -> torch.Tensor:
    """Every pixel holds a distinct value: 100 * sample + 10 * row + col (+ 1000 * channel)."""
    s = torch.arange(n).view(n, 1, 1, 1) * 100
    ch = torch.arange(c).view(1, c, 1, 1) * 1000
    i = torch.arange(h).view(1, 1, h, 1) * 10
    j = torch.arange(w).view(1, 1, 1, w)
    return (s + ch + i + j).float()


def reflect(k: int, n: int) -> int:
    """Index into a reflect-padded axis of length n (edge not repeated), as numpy's 'reflect'."""
    if k < 0:
        return -k
    if k >= n:
        return 2 * (n - 1) - k
    return k


# ---- crop -------------------------------------------------------------------------------------

def test_crop_at_pad_pad_is_the_identity():
    x = grid(3, 3, 5, 6)
    pad = 2
    out = crop_padded(x, torch.full((3,), pad), torch.full((3,), pad), pad, "reflect")
    assert torch.equal(out, x)
    assert torch.equal(crop_padded(x, torch.full((3,), pad), torch.full((3,), pad), pad, "zeros"), x)


@pytest.mark.parametrize("oy, ox", [(0, 0), (4, 4), (0, 4), (1, 3), (4, 0)])
def test_crop_with_zeros_padding_shifts_and_fills_zero(oy, ox):
    x = grid(1, 1, 4, 4) + 1  # no zero pixels inside
    pad = 2
    out = crop_padded(x, torch.tensor([oy]), torch.tensor([ox]), pad, "zeros")
    for i in range(4):
        for j in range(4):
            si, sj = i + oy - pad, j + ox - pad
            expected = x[0, 0, si, sj].item() if 0 <= si < 4 and 0 <= sj < 4 else 0.0
            assert out[0, 0, i, j].item() == expected, (i, j)
    if (oy, ox) == (0, 0):  # image moved down-right by 2: a 2-pixel zero border at the top-left
        assert out[0, 0].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 2], [0, 0, 11, 12]]


@pytest.mark.parametrize("oy, ox", [(0, 0), (4, 4), (0, 3), (2, 0)])
def test_crop_with_reflect_padding_mirrors_the_border(oy, ox):
    x = grid(1, 1, 4, 4)
    pad = 2
    out = crop_padded(x, torch.tensor([oy]), torch.tensor([ox]), pad, "reflect")
    expected = [[x[0, 0, reflect(i + oy - pad, 4), reflect(j + ox - pad, 4)].item() for j in range(4)] for i in range(4)]
    assert out[0, 0].tolist() == expected
    if (oy, ox) == (0, 0):
        assert out[0, 0].tolist() == [[22, 21, 20, 21], [12, 11, 10, 11], [2, 1, 0, 1], [12, 11, 10, 11]]


def test_crop_uses_each_samples_own_offsets_on_every_channel():
    x = grid(2, 3, 4, 4)
    out = crop_padded(x, torch.tensor([4, 2]), torch.tensor([2, 4]), 2, "zeros")
    # Sample 0 (oy 4, ox 2): out[i, j] = x[i + 2, j], so the image moves up by 2 rows.
    assert torch.equal(out[0, :, :2], x[0, :, 2:])
    assert torch.equal(out[0, :, 2:], torch.zeros(3, 2, 4))
    # Sample 1 (oy 2, ox 4): out[i, j] = x[i, j + 2], so it moves left by 2 columns.
    assert torch.equal(out[1, :, :, :2], x[1, :, :, 2:])
    assert torch.equal(out[1, :, :, 2:], torch.zeros(3, 4, 2))


# ---- flip, cutout, normalize --------------------------------------------------------------------

def test_hflip_mirrors_only_masked_samples():
    x = grid(3, 2, 3, 5)
    out = hflip(x, torch.tensor([True, False, True]))
    for j in range(5):
        assert torch.equal(out[0, :, :, j], x[0, :, :, 4 - j])
        assert torch.equal(out[2, :, :, j], x[2, :, :, 4 - j])
    assert torch.equal(out[1], x[1])
    assert out[0, 1, 2].tolist() == [1024, 1023, 1022, 1021, 1020]


def test_cutout_zeroes_exactly_the_square():
    x = torch.ones(1, 3, 10, 10)
    out = cutout(x, torch.tensor([5]), torch.tensor([5]), 4)
    zero = out[0] == 0
    assert zero.sum().item() == 3 * 16
    assert zero[:, 3:7, 3:7].all()  # top-left = centre - size // 2 = 3
    assert torch.equal(x, torch.ones(1, 3, 10, 10))  # input untouched


@pytest.mark.parametrize("cy, cx, size, rows, cols", [
    (0, 0, 4, range(0, 2), range(0, 2)),      # rows -2..1 clipped to 0..1
    (0, 9, 3, range(0, 2), range(8, 10)),     # odd size: rows -1..1, cols 8..10 -> 8..9
    (9, 9, 4, range(7, 10), range(7, 10)),    # rows 7..10 clipped at 9
    (4, 0, 5, range(2, 7), range(0, 3)),
])
def test_cutout_is_clipped_at_the_border(cy, cx, size, rows, cols):
    x = torch.ones(1, 1, 10, 10)
    out = cutout(x, torch.tensor([cy]), torch.tensor([cx]), size, fill=-2.0)
    expected = torch.ones(10, 10)
    for i in rows:
        for j in cols:
            expected[i, j] = -2.0
    assert torch.equal(out[0, 0], expected)
    assert (out == -2).sum().item() == len(rows) * len(cols)


def test_cutout_uses_per_sample_centres():
    out = cutout(torch.ones(2, 1, 6, 6), torch.tensor([1, 4]), torch.tensor([1, 4]), 2)
    assert (out[0, 0] == 0).nonzero().tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert (out[1, 0] == 0).nonzero().tolist() == [[3, 3], [3, 4], [4, 3], [4, 4]]


def test_normalize_by_hand():
    x = torch.tensor([[[[0.0, 1.0]], [[0.5, 0.25]], [[0.2, 0.2]]]])
    out = normalize(x, (0.5, 0.25, 0.2), (0.5, 0.25, 0.1))
    assert torch.allclose(out, torch.tensor([[[[-1.0, 1.0]], [[1.0, 0.0]], [[0.0, 0.0]]]]))
    u8 = torch.tensor([[[[0, 255]], [[51, 102]], [[255, 0]]]], dtype=torch.uint8)
    out = Normalize((0.0, 0.2, 0.5), (1.0, 0.2, 0.5))(u8)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[[[0.0, 1.0]], [[0.0, 1.0]], [[1.0, -1.0]]]]))


# ---- BatchAugment -----------------------------------------------------------------------------

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
FULL = AugmentConfig(crop_pad=4, pad_mode="reflect", flip=True, cutout=8, rotate=15, shear=5, zoom=0.1, jitter=0.2)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("config", [AugmentConfig(), FULL, AugmentConfig(pad_mode="zeros", cutout=6)])
def test_batch_augment_is_reproducible_by_seed(batch, config):
    aug = BatchAugment(config, MEAN, STD)
    before = batch.clone()
    a = aug(batch, torch.Generator().manual_seed(1))
    b = aug(batch, torch.Generator().manual_seed(1))
    c = aug(batch, torch.Generator().manual_seed(2))
    assert a.dtype == torch.float32 and a.shape == (16, 3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(batch, before)  # the uint8 input is not modified


def test_batch_augment_without_augmentations_is_normalize(batch):
    aug = BatchAugment(AugmentConfig(crop_pad=0, flip=False), MEAN, STD)
    assert torch.equal(aug(batch, torch.Generator().manual_seed(0)), Normalize(MEAN, STD)(batch))


def test_crop_and_flip_only_move_pixels(batch):
    # With mean 0 and std 1, every output of crop + flip is a shifted (and maybe mirrored) copy of its input.
    aug = BatchAugment(AugmentConfig(crop_pad=2, pad_mode="zeros", flip=True), (0.0,) * 3, (1.0,) * 3)
    out = aug(batch[:8], torch.Generator().manual_seed(3)) * 255
    x = batch[:8].float()
    offsets = torch.cartesian_prod(torch.arange(5), torch.arange(5))  # all 25 (oy, ox)
    kinds = []
    for n in range(len(x)):
        shifted = crop_padded(x[n:n + 1].expand(25, -1, -1, -1), offsets[:, 0], offsets[:, 1], 2, "zeros")
        candidates = torch.cat([shifted, shifted.flip(3)])  # (50, 3, 32, 32)
        err = (candidates - out[n]).abs().flatten(1).max(1).values
        assert err.min() < 1e-3, n
        kinds.append(int(err.argmin()))
    # Both flipped and unflipped samples occur, and not every offset is the identity (index 12).
    assert any(k < 25 for k in kinds) and any(k >= 25 for k in kinds)
    assert any(k % 25 != 12 for k in kinds)


def test_cutout_square_holds_the_mean_after_normalization():
    images = torch.full((8, 3, 16, 16), 200, dtype=torch.uint8)
    aug = BatchAugment(AugmentConfig(crop_pad=0, flip=False, cutout=4), MEAN, STD)
    out = aug(images, torch.Generator().manual_seed(0))
    value = (200 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    for n in range(8):
        hole = (out[n] == 0).all(0)
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        assert hole.sum().item() == len(rows) * len(cols)  # one rectangle
        assert 2 <= len(rows) <= 4 and 2 <= len(cols) <= 4  # a 4x4 square, clipped at most to 2x2
        keep = ~hole
        assert torch.allclose(out[n][:, keep], value[:, None].expand(3, int(keep.sum())), atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"pad_mode": "edge"}, "unknown pad mode"), ({"crop_pad": -1}, "crop padding"), ({"cutout": -2}, "cutout"),
    ({"zoom": 1.0}, "zoom"), ({"jitter": 1.5}, "jitter"), ({"rotate": -1}, "rotation"),
])
def test_bad_augment_config_raises_usage_error(kwargs, match):
    with pytest.raises(UsageError, match=match):
        BatchAugment(AugmentConfig(**kwargs), MEAN, STD)


# ---- DeviceLoader -----------------------------------------------------------------------------

def encoded(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose pixels encode their index (low byte, high byte); labels = index % 7."""
    idx = torch.arange(n)
    images = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    images[:, 0] = (idx % 256).view(n, 1, 1).to(torch.uint8)
    images[:, 1] = (idx // 256).view(n, 1, 1).to(torch.uint8)
    return images, idx % 7


def identity(x, g):
    return x.long()


def decode(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0, 0, 0] + 256 * x[:, 1, 0, 0]


def epoch_batches(loader) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return list(loader)


def test_each_epoch_covers_every_index_once_with_aligned_labels():
    images, labels = encoded(300)
    loader = DeviceLoader(images, labels, 32, identity, shuffle=True, seed=5)
    assert len(loader) == 10
    batches = epoch_batches(loader)
    assert [len(y) for _, y, _ in batches] == [32] * 9 + [12]
    idx = torch.cat([i for _, _, i in batches])
    assert sorted(idx.tolist()) == list(range(300))
    assert idx.tolist() != list(range(300))  # shuffled
    for x, y, i in batches:
        assert torch.equal(decode(x), i)
        assert torch.equal(y, i % 7)


def test_drop_last_and_no_shuffle():
    images, labels = encoded(100)
    loader = DeviceLoader(images, labels, 32, identity, shuffle=False, drop_last=True)
    batches = epoch_batches(loader)
    assert len(loader) == 3 == len(batches)
    assert torch.cat([i for _, _, i in batches]).tolist() == list(range(96))


def test_set_epoch_is_reproducible_and_epochs_differ():
    images, labels = encoded(200)
    aug = BatchAugment(AugmentConfig(crop_pad=1), (0.5,) * 3, (0.5,) * 3)

    def run(epoch=None, seed=0):
        loader = DeviceLoader(images, labels, 64, aug, seed=seed)
        if epoch is not None:
            loader.set_epoch(epoch)
        return epoch_batches(loader)

    a, b, c = run(3), run(3), run(4)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[2], q[2]) for p, q in zip(a, b))
    assert not torch.equal(a[0][2], c[0][2])
    assert not torch.equal(run(3, seed=1)[0][2], a[0][2])
    # Iterating advances the epoch: the second pass equals a fresh loader set to epoch 1.
    loader = DeviceLoader(images, labels, 64, aug)
    epoch_batches(loader)
    second = epoch_batches(loader)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[2], q[2]) for p, q in zip(second, run(1)))


@pytest.mark.parametrize("n, drop_last, per_rank", [(100, False, 50), (103, False, 52), (103, True, 51)])
def test_two_ranks_take_disjoint_shards_that_cover(n, drop_last, per_rank):
    images, labels = encoded(n)
    shards = []
    for rank in range(2):
        loader = DeviceLoader(images, labels, 16, identity, seed=9, drop_last=drop_last, rank=rank, world_size=2)
        loader.set_epoch(2)
        batches = epoch_batches(loader)
        for x, y, i in batches:
            assert torch.equal(decode(x), i) and torch.equal(y, i % 7)
        got = torch.cat([i for _, _, i in batches]).tolist()
        assert len(loader) == len(batches) == (per_rank // 16 if drop_last else -(-per_rank // 16))
        shards.append(got)
    if drop_last:  # 102 of the 103 indices, none twice, whole batches only
        assert len(shards[0]) == len(shards[1]) == 48
        assert not set(shards[0]) & set(shards[1])
        return
    assert len(shards[0]) == len(shards[1]) == per_rank
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    overlap = len(shards[0]) + len(shards[1]) - n  # padding repeats the first indices (DistributedSampler)
    assert len(set(shards[0]) & set(shards[1])) <= overlap
    if n % 2 == 0:
        assert not set(shards[0]) & set(shards[1])


def test_rank_shards_of_one_permutation():
    images, labels = encoded(64)
    full = DeviceLoader(images, labels, 64, identity, seed=4)
    order = next(iter(full))[2]
    shards = [next(iter(DeviceLoader(images, labels, 64, identity, seed=4, rank=r, world_size=2)))[2] for r in range(2)]
    assert torch.equal(shards[0], order[0::2]) and torch.equal(shards[1], order[1::2])


@pytest.mark.parametrize("batch_size", [0, -3])
def test_bad_batch_size_raises_usage_error(batch_size):
    images, labels = encoded(10)
    with pytest.raises(UsageError, match="batch size must be >= 1"):
        DeviceLoader(images, labels, batch_size, identity)


def test_mismatched_or_empty_data_raise_usage_error():
    images, labels = encoded(10)
    with pytest.raises(UsageError, match="differ in length"):
        DeviceLoader(images, labels[:5], 4, identity)
    with pytest.raises(UsageError, match="empty"):
        DeviceLoader(images[:0], labels[:0], 4, identity)
