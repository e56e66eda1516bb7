"""Batch augmentations pixel by pixel, BatchAugment's seeding, and the device-resident loader."""
from __future__ import annotations

import pytest
import torch

from robustlab.data.augment import (AugmentConfig, BatchAugment, MultiView, Normalize, _uniform, affine,
                                    alternating_flip_mask, crop_padded, cutout,
                                    hflip, normalize)
from robustlab.data.loader import DeviceLoader
from robustlab.errors import UsageError
from robustlab.seeds import mixed_seed


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


def test_normalize_keeps_shape_and_dtype_per_channel():
    x = torch.rand(2, 3, 4, 5)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    for out in (normalize(x, mean, std), Normalize(mean, std)((x * 255).round().to(torch.uint8))):
        assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32
    out = normalize(x, mean, std)
    for c in range(3):
        assert torch.allclose(out[:, c], (x[:, c] - mean[c]) / std[c])
    u8 = (x * 255).round().to(torch.uint8)
    norm = Normalize(mean, std)(u8)
    for c in range(3):
        assert torch.allclose(norm[:, c], (u8[:, c].float() / 255 - mean[c]) / std[c])


def test_normalize_by_hand():
    x = torch.tensor([[[[0.0, 1.0]], [[0.5, 0.25]], [[0.2, 0.2]]]])
    out = normalize(x, (0.5, 0.25, 0.2), (0.5, 0.25, 0.1))
    assert torch.allclose(out, torch.tensor([[[[-1.0, 1.0]], [[1.0, 0.0]], [[0.0, 0.0]]]]))
    u8 = torch.tensor([[[[0, 255]], [[51, 102]], [[255, 0]]]], dtype=torch.uint8)
    out = Normalize((0.0, 0.2, 0.5), (1.0, 0.2, 0.5))(u8)
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.tensor([[[[0.0, 1.0]], [[0.0, 1.0]], [[1.0, -1.0]]]]))


# ---- affine (pixel maps that land on pixel centres are exact under bilinear sampling) ----------

def odd_grid(n: int = 2) -> torch.Tensor:
    return grid(n=n, c=2, h=5, w=5)


def affine_of(x, angle=0.0, shear=0.0, scale=1.0, mode="reflect"):
    n = len(x)
    return affine(x, torch.full((n,), float(angle)), torch.full((n,), float(shear)), torch.full((n,), float(scale)), mode)


def test_affine_at_zero_angle_zero_shear_unit_scale_is_the_identity():
    x = odd_grid()
    assert torch.allclose(affine_of(x), x, atol=1e-4)


def test_affine_rotation_by_90_degrees_is_rot90_and_by_180_mirrors_both_axes():
    x = odd_grid()
    # out[i, j] = in[j, 4 - i]: a positive angle turns the image counter-clockwise, as torchvision's rotate.
    assert torch.allclose(affine_of(x, angle=90), torch.rot90(x, 1, dims=(2, 3)), atol=1e-3)
    assert torch.allclose(affine_of(x, angle=-90), torch.rot90(x, -1, dims=(2, 3)), atol=1e-3)
    assert torch.allclose(affine_of(x, angle=180), x.flip(2, 3), atol=1e-3)


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_affine_shear_of_45_degrees_shifts_each_row_by_its_distance_from_the_centre(mode):
    x = odd_grid(1)
    out = affine_of(x, shear=45, mode=mode)
    for i in range(5):
        for j in range(5):
            src = j + (i - 2)  # x_in = x_out + tan(45) * y_out, in pixels of a square image
            # grid_sample's reflection mirrors about the image border, so the edge pixel repeats.
            sym = -src - 1 if src < 0 else 9 - src if src >= 5 else src
            want = x[0, :, i, sym] if mode == "reflect" or 0 <= src < 5 else torch.zeros(2)
            assert torch.allclose(out[0, :, i, j], want, atol=1e-3), (i, j)


def test_affine_zoom_scales_distances_from_the_centre():
    ramp = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 5, 5).contiguous()  # bilinear is exact on a ramp
    out = affine_of(ramp, scale=2.0)
    assert torch.allclose(out[0, 0, 0], 2 + (torch.arange(5.0) - 2) / 2, atol=1e-4)  # zoom in: half the distance
    assert torch.allclose(affine_of(ramp, scale=0.5)[0, 0, 2, 1:4], torch.tensor([0.0, 2.0, 4.0]), atol=1e-4)


def test_affine_zoom_divides_every_coordinate_also_under_rotation():
    i = torch.arange(5.0).view(5, 1)
    j = torch.arange(5.0).view(1, 5)
    ramp = (i + 10 * j).expand(5, 5).reshape(1, 1, 5, 5).contiguous()  # in(i, j) = 22 + v + 10 u around the centre
    u, v = j - 2, i - 2
    out = affine_of(ramp, angle=90, scale=2.0)
    assert torch.allclose(out[0, 0], 22 + (u - 10 * v) / 2, atol=1e-3)  # rotated by 90 degrees, then zoomed in 2x
    assert torch.allclose(affine_of(ramp, scale=2.0)[0, 0], 22 + (v + 10 * u) / 2, atol=1e-3)


def test_affine_pads_by_reflection_unless_asked_for_zeros():
    x = odd_grid(1)
    n = torch.ones(1)
    default = affine(x, 45 * n, 0 * n, n)  # corners come from outside the image
    assert torch.equal(default, affine_of(x, angle=45, mode="reflect"))
    assert not torch.equal(default, affine_of(x, angle=45, mode="zeros"))


def test_affine_applies_the_shear_after_the_rotation_per_sample():
    x = odd_grid()
    both = affine(x, torch.tensor([90.0, 0.0]), torch.tensor([45.0, 0.0]), torch.tensor([1.0, 1.0]), "zeros")
    step = affine_of(affine_of(x[:1], shear=45, mode="zeros"), angle=90, mode="zeros")
    assert torch.allclose(both[:1], step, atol=1e-3)  # input = shear(rotate(output))
    assert torch.allclose(both[1:], x[1:], atol=1e-4)  # the second sample's own parameters: identity


def test_uniform_draws_cover_exactly_the_interval():
    u = _uniform(20000, -3.0, 5.0, torch.Generator().manual_seed(0), "cpu")
    assert u.min() >= -3.0 and u.max() <= 5.0
    assert u.min() < -2.99 and u.max() > 4.99
    assert u.mean().item() == pytest.approx(1.0, abs=0.05)


def test_multiview_stacks_independent_reproducible_views():
    x = torch.randint(0, 256, (4, 3, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    mv = MultiView(BatchAugment(AugmentConfig(crop_pad=2), (0.5,) * 3, (0.5,) * 3), views=2)  # the least allowed
    torch.manual_seed(1)
    a = mv(x, torch.Generator().manual_seed(7))
    torch.manual_seed(2)  # the global RNG must not matter: every draw comes from the generator
    b = mv(x, torch.Generator().manual_seed(7))
    assert a.shape == (4, 2, 3, 8, 8) and torch.equal(a, b)  # sample-major: (N, V, C, H, W)
    assert not torch.equal(a[:, 0], a[:, 1])
    with pytest.raises(UsageError, match="MultiView needs views >= 2, got 1"):
        MultiView(mv.augment, views=1)


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


def test_epoch_permutation_and_augment_generators_are_seeded_by_seed_epoch_and_stream():
    images, labels = encoded(50)
    seeds = []

    def record(x, g):
        seeds.append(g.initial_seed())
        return x.long()

    loader = DeviceLoader(images, labels, 50, record, seed=3)
    loader.set_epoch(4)
    order = next(iter(loader))[2]
    want = torch.randperm(50, generator=torch.Generator().manual_seed(mixed_seed(3, 4, 0)))
    assert torch.equal(order, want) and seeds == [mixed_seed(3, 4, 0)]
    seeds.clear()
    for rank in range(2):  # one shared permutation, but each rank's augmentations from its own stream
        ranked = DeviceLoader(images, labels, 50, record, seed=3, rank=rank, world_size=2)
        ranked.set_epoch(4)
        assert torch.equal(next(iter(ranked))[2], want[rank::2])
    assert seeds == [mixed_seed(3, 4, 1), mixed_seed(3, 4, 2)]


# ---- BatchAugment draws each parameter from its documented range -------------------------------

def _spy(monkeypatch, name):
    """Record the arguments of robustlab.data.augment.<name> and pass them on."""
    import robustlab.data.augment as augment_module

    calls, real = [], getattr(augment_module, name)

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(augment_module, name, spy)
    return calls


def test_crop_offsets_cover_every_shift_of_the_pad_and_keep_the_pad_mode():
    x = (grid(n=400, c=1, h=6, w=6) % 200 + 1).to(torch.uint8)  # distinct, non-zero pixels.expand(400, 3, 6, 6).contiguous()
    aug = BatchAugment(AugmentConfig(crop_pad=2, pad_mode="reflect", flip=False), (0.0,) * 3, (1 / 255,) * 3)
    out = aug(x, torch.Generator().manual_seed(0))[:, 0]
    src, n = x[:, :1].float(), len(x)
    match = torch.stack([torch.isclose(out, crop_padded(src, torch.full((n,), oy), torch.full((n,), ox), 2)[:, 0],
                                       atol=1e-3).flatten(1).all(1) for oy in range(5) for ox in range(5)], dim=1)
    assert match.sum(1).tolist() == [1] * n  # each output is exactly one shift of its image
    shifts = {divmod(int(k), 5) for k in match.float().argmax(1)}
    assert shifts == {(oy, ox) for oy in range(5) for ox in range(5)}  # reflect padding: no zero ever appears
    assert bool((out > 0.5).all())


def test_random_and_alternating_flips_of_batch_augment(monkeypatch):
    x = torch.randint(1, 256, (64, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    base = Normalize(MEAN, STD)(x)
    rand = BatchAugment(AugmentConfig(crop_pad=0, flip=True), MEAN, STD)
    coin = torch.rand(64, generator=torch.Generator().manual_seed(3)) < 0.5
    assert torch.equal(rand(x, torch.Generator().manual_seed(3)), hflip(base, coin))
    alt = BatchAugment(AugmentConfig(crop_pad=0, flip=True, flip_mode="alternate"), MEAN, STD)
    idx = torch.arange(100, 164)
    for epoch in (0, 1):
        got = alt(x, torch.Generator().manual_seed(3), idx=idx, epoch=epoch)
        assert torch.equal(got, hflip(base, alternating_flip_mask(idx, epoch)))
    # Without the index or the epoch the alternating flip falls back to the random coin.
    assert torch.equal(alt(x, torch.Generator().manual_seed(3), idx=idx), hflip(base, coin))
    assert torch.equal(alt(x, torch.Generator().manual_seed(3), epoch=1), hflip(base, coin))
    assert not torch.equal(hflip(base, coin), hflip(base, alternating_flip_mask(idx, 1)))


@pytest.mark.parametrize("rotate, shear, zoom", [(30.0, 0.0, 0.0), (0.0, 10.0, 0.0), (0.0, 0.0, 0.25), (30.0, 10.0, 0.25)])
def test_affine_parameters_are_drawn_symmetric_about_the_identity(monkeypatch, rotate, shear, zoom):
    calls = _spy(monkeypatch, "affine")
    x = torch.randint(0, 256, (2000, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    BatchAugment(AugmentConfig(crop_pad=0, flip=False, pad_mode="zeros", rotate=rotate, shear=shear, zoom=zoom),
                 MEAN, STD)(x, torch.Generator().manual_seed(1))
    (_, angle, sh, scale, mode), = calls
    assert mode == "zeros"
    for values, centre, half in ((angle, 0.0, rotate), (sh, 0.0, shear), (scale, 1.0, zoom)):
        assert values.min() >= centre - half and values.max() <= centre + half
        if half:
            assert values.min() < centre - 0.95 * half and values.max() > centre + 0.95 * half
        else:
            assert bool((values == centre).all())


def test_colour_jitter_factors_are_drawn_in_one_plus_minus_jitter(monkeypatch):
    names = ("adjust_brightness", "adjust_contrast", "adjust_saturation")
    calls = {name: _spy(monkeypatch, name) for name in names}
    affine_calls = _spy(monkeypatch, "affine")
    x = torch.randint(0, 256, (2000, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    BatchAugment(AugmentConfig(crop_pad=0, flip=False, jitter=0.4), MEAN, STD)(x, torch.Generator().manual_seed(1))
    assert affine_calls == []  # no geometric augmentation asked for
    for name in names:
        (_, factors), = calls[name]
        assert factors.min() >= 0.6 and factors.max() <= 1.4
        assert factors.min() < 0.62 and factors.max() > 1.38


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_colour_ops_match_torchvision_with_a_factor_per_image(op):
    import torchvision.transforms.functional as TF

    from robustlab.data import color

    images = torch.rand(4, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    images[:, :, 0, 0] = 0.0  # a black pixel: hue and saturation undefined there
    images[:, :, 0, 1] = 0.5  # a grey one
    factors = torch.tensor([-0.3, 0.1, 0.45, 0.0]) if op == "hue" else torch.tensor([0.0, 0.5, 1.0, 1.7])
    got = getattr(color, f"adjust_{op}")(images, factors)
    for n in range(4):
        want = getattr(TF, f"adjust_{op}")(images[n], float(factors[n]))
        assert torch.allclose(got[n], want, atol=1e-5), (op, n)
    gray = color.to_grayscale(images)
    assert gray.shape == (4, 1, 5, 6)
    assert torch.allclose(gray, TF.rgb_to_grayscale(images), atol=1e-6)


def test_loader_defaults_start_at_epoch_zero_on_rank_zero():
    images, labels = encoded(40)
    fresh = DeviceLoader(images, labels, 40, identity, seed=2)
    zero = DeviceLoader(images, labels, 40, identity, seed=2)
    zero.set_epoch(0)
    assert torch.equal(next(iter(fresh))[2], next(iter(zero))[2])
    default_rank = DeviceLoader(images, labels, 40, identity, seed=2, world_size=2)
    assert torch.equal(next(iter(default_rank))[2], next(iter(zero))[2][0::2])
    one = DeviceLoader(images[:1], labels[:1], 1, identity)  # a single image in batches of one is a valid loader
    assert len(one) == 1 and next(iter(one))[2].tolist() == [0]


def test_loader_hands_the_index_and_epoch_to_an_alternating_flip():
    images = torch.randint(0, 256, (32, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    aug = BatchAugment(AugmentConfig(crop_pad=0, flip=True, flip_mode="alternate"), (0.5,) * 3, (0.5,) * 3)
    loader = DeviceLoader(images, torch.arange(32) % 7, 8, aug, seed=1)
    loader.set_epoch(5)
    norm = Normalize((0.5,) * 3, (0.5,) * 3)
    for x, _, idx in loader:  # mirrored images differ from the originals: the flip is visible
        assert torch.equal(x, hflip(norm(images[idx]), alternating_flip_mask(idx, 5)))
        assert not torch.equal(x, hflip(norm(images[idx]), ~alternating_flip_mask(idx, 5)))
    cropped = BatchAugment(AugmentConfig(crop_pad=2, flip=True, flip_mode="alternate"), (0.5,) * 3, (0.5,) * 3)
    runs = []
    for global_seed in (0, 1):  # crops come from the loader's generator, never from the global RNG
        torch.manual_seed(global_seed)
        runs.append(list(DeviceLoader(images, torch.arange(32) % 7, 8, cropped, seed=1)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(*runs))
    third = DeviceLoader(images, torch.arange(32) % 7, 32, aug, seed=1)
    passes = [list(third)[0] for _ in range(3)]  # each whole pass advances the epoch by one
    for epoch, (x, _, idx) in enumerate(passes):
        assert torch.equal(x, hflip(norm(images[idx]), alternating_flip_mask(idx, epoch)))


def test_loader_error_messages_are_exact():
    images, labels = encoded(10)
    for args, message in (((images, labels[:5], 4), "images and labels differ in length"),
                          ((images[:0], labels[:0], 4), "empty dataset"),
                          ((images, labels, 0), "batch size must be >= 1, got 0")):
        with pytest.raises(UsageError) as err:
            DeviceLoader(*args, identity)
        assert str(err.value) == message


def test_alternating_flip_coin_is_bit_16_of_knuths_multiplicative_hash():
    # (i * 2654435761) >> 16 for i = 0..5: 0, 40503, 81006, 121510, 162013, 202517; their lowest bits:
    coins = [0, 1, 0, 0, 1, 1]
    idx = torch.arange(6)
    assert alternating_flip_mask(idx, 0).tolist() == [c == 1 for c in coins]  # even epochs mirror coin 1
    for epoch in (1, 3):
        assert alternating_flip_mask(idx, epoch).tolist() == [c == 0 for c in coins]
    assert alternating_flip_mask(idx, 2).tolist() == alternating_flip_mask(idx, 0).tolist()
    assert alternating_flip_mask(torch.tensor([345]), 0).tolist() == [False]  # (345 * 2654435761) >> 16 is even


def test_the_pure_augmentations_stay_on_the_inputs_device():
    """Meta tensors stand in for a GPU: any helper tensor made on the CPU instead would raise."""
    from robustlab.data import color

    x = torch.empty(4, 3, 8, 8, device="meta")
    zeros = torch.zeros(4, dtype=torch.long, device="meta")
    factors = torch.ones(4, device="meta")
    outputs = [crop_padded(x, zeros, zeros, 2), cutout(x, zeros, zeros, 3), affine(x, factors, factors, factors),
               normalize(x, MEAN, STD), Normalize(MEAN, STD)(torch.empty(4, 3, 8, 8, device="meta", dtype=torch.uint8)),
               hflip(x, torch.ones(4, dtype=torch.bool, device="meta"))]
    outputs += [getattr(color, f"adjust_{op}")(x, factors) for op in ("brightness", "contrast", "saturation", "hue")]
    assert [(o.device.type, tuple(o.shape), o.dtype) for o in outputs] == [("meta", (4, 3, 8, 8), torch.float32)] * 10


def test_cutout_centres_are_drawn_over_every_row_and_column(monkeypatch):
    calls = _spy(monkeypatch, "cutout")
    x = torch.randint(0, 256, (3000, 3, 5, 7), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    BatchAugment(AugmentConfig(crop_pad=0, flip=False, cutout=2), MEAN, STD)(x, torch.Generator().manual_seed(1))
    (_, cy, cx, size), = calls
    assert size == 2
    assert sorted(set(cy.tolist())) == list(range(5)) and sorted(set(cx.tolist())) == list(range(7))
