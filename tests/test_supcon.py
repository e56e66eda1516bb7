"""SupCon pretraining, its two-view augmentation, and the classifier stage on a pretrained encoder."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from robustlab.errors import UsageError
from robustlab.models import create_model
from robustlab.strategies.supcon import (
    FrozenEncoderClassifier,
    ProjectionHead,
    SupConPretrain,
    SupConViews,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
)

MEAN = STD = (0.5, 0.5, 0.5)


class PixelReader(nn.Module):
    """A stand-in encoder whose features are the per-channel means of its input images."""

    num_features = 3

    def forward_features(self, x):
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return self.forward_features(x)


def supcon_by_hand(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Khosla et al. eq. 2 (L_out) on unit vectors z, averaged over anchors, written out term by term."""
    z = z / z.norm(dim=1, keepdim=True)
    n = len(z)
    per_anchor = []
    for i in range(n):
        others = [a for a in range(n) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        denom = sum(torch.exp(z[i] @ z[a] / tau) for a in others)
        terms = [torch.log(torch.exp(z[i] @ z[p] / tau) / denom) for p in positives]
        per_anchor.append(-sum(terms) / len(positives))
    return torch.stack(per_anchor).mean()


def views_from_vectors(v: torch.Tensor) -> torch.Tensor:
    """(N, V, 3) vectors -> (N, V, 3, 2, 2) constant images that PixelReader reads back exactly."""
    return v[..., None, None].expand(*v.shape, 2, 2).clone()


# ----------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_loss_matches_supcon_formula_on_known_vectors(tau):
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(4, 2, 3, generator=g)  # 4 samples x 2 views
    y = torch.tensor([0, 0, 1, 2])  # class 0 anchors have 3 positives, the others only their other view
    strategy = SupConPretrain(PixelReader(), temperature=tau)
    strategy.head = nn.Identity()  # embeddings are exactly the given vectors
    out = strategy.train_step(views_from_vectors(vectors), y, torch.arange(4), 0)

    expected = supcon_by_hand(vectors.reshape(8, 3), y.repeat_interleave(2), tau)
    assert out.logits is None
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # Hand check of one anchor on a tiny case: 2 samples, different classes, orthogonal/opposite views.
    e = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]], [[-1.0, 0, 0], [0, -1.0, 0]]])
    loss = strategy.train_step(views_from_vectors(e), torch.tensor([0, 1]), torch.arange(2), 0).loss
    # Every anchor: positive at cos 0, the two negatives at cos -1 and 0.
    manual = -math.log(1 / (1 + math.exp(-1 / tau) + 1))
    assert loss.item() == pytest.approx(manual, rel=1e-5)


def test_loss_with_projection_head_matches_formula_on_its_embeddings():
    torch.manual_seed(0)
    strategy = SupConPretrain(create_model("tiny_cnn", 10), temperature=0.1, proj_dim=16)
    x = torch.randn(4, 2, 3, 16, 16)
    y = torch.tensor([3, 1, 3, 7])
    loss = strategy.train_step(x, y, torch.arange(4), 0).loss
    z, views = strategy.embed(x)
    assert views == 2 and z.shape == (8, 16)
    assert torch.allclose(z.norm(dim=1), torch.ones(8), atol=1e-5)  # projection lands on the unit sphere
    assert loss.item() == pytest.approx(supcon_by_hand(z.detach(), y.repeat_interleave(2), 0.1).item(), rel=1e-5)
    loss.backward()
    assert strategy.head.net[0].weight.grad is not None
    assert strategy.model.features[0].weight.grad is not None


def test_labels_stay_aligned_with_views_after_flattening():
    """Each image encodes (label, view, sample) in its channels; the loss must see matching labels."""
    n = 5
    y = torch.tensor([4, 0, 4, 2, 9])
    codes = torch.stack(
        [torch.stack([torch.tensor([float(y[i]), float(v), float(i)]) for v in range(2)]) for i in range(n)]
    )
    strategy = SupConPretrain(PixelReader())
    strategy.head = nn.Identity()
    seen = {}

    class Recorder(nn.Module):
        def __init__(self, loss):
            super().__init__()
            self.loss = loss

        def forward(self, emb, labels):
            seen["emb"], seen["labels"] = emb, labels
            return self.loss(emb, labels)

    strategy.loss_fn = Recorder(strategy.loss_fn)
    strategy.train_step(views_from_vectors(codes), y, torch.arange(n), 0)
    emb, labels = seen["emb"], seen["labels"]
    assert emb.shape == (2 * n, 3)
    assert torch.equal(labels, emb[:, 0].round().long())
    pairs = {(int(s), int(v)) for s, v in zip(emb[:, 2].round(), emb[:, 1].round())}
    assert pairs == {(i, v) for i in range(n) for v in range(2)}  # every view of every sample once


def test_supcon_errors():
    with pytest.raises(UsageError, match="temperature"):
        SupConPretrain(PixelReader(), temperature=0.0)
    with pytest.raises(UsageError, match=r"\(N, V>=2, C, H, W\)"):
        SupConPretrain(PixelReader()).train_step(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), None, 0)


def test_projection_head_shapes_and_unit_norm():
    head = ProjectionHead(12, out_dim=5)
    assert head.net[0].out_features == 12  # hidden width defaults to the input width
    z = head(torch.randn(7, 12))
    assert z.shape == (7, 5)
    assert torch.allclose(z.norm(dim=1), torch.ones(7), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Two-view augmentation
# ----------------------------------------------------------------------------------------------


def _uint8_batch(n=6, h=32, w=32, seed=0):
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_views_shape_randomness_and_reproducibility():
    aug = SupConViews(MEAN, STD, size=24)
    images = _uint8_batch()
    a = aug(images, torch.Generator().manual_seed(1))
    b = aug(images, torch.Generator().manual_seed(1))
    c = aug(images, torch.Generator().manual_seed(2))
    assert a.shape == (6, 2, 3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    for i in range(6):
        assert not torch.allclose(a[i, 0], a[i, 1])  # the two views of a sample differ
    assert a.min() >= -1 - 1e-6 and a.max() <= 1 + 1e-6  # normalized from [0, 1] with mean = std = 0.5


def test_views_without_augmentation_are_the_normalized_image():
    aug = SupConViews((0.4, 0.5, 0.6), (0.2, 0.25, 0.3), size=32, scale=(1, 1), ratio=(1, 1), flip=0, jitter_p=0, grayscale_p=0)
    images = _uint8_batch(n=3)
    expected = (images.float() / 255 - torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    out = aug(images, torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, 0], expected, atol=1e-5)
    assert torch.allclose(out[:, 1], expected, atol=1e-5)

    flipped = SupConViews(MEAN, STD, scale=(1, 1), ratio=(1, 1), flip=1.0, jitter_p=0, grayscale_p=0)(images, torch.Generator())
    assert torch.allclose(flipped[:, 0], (images.float() / 255 - 0.5).div(0.5).flip(-1), atol=1e-5)


def test_grayscale_always_gives_equal_channels():
    out = SupConViews(MEAN, STD, grayscale_p=1.0)(_uint8_batch(), torch.Generator().manual_seed(0))
    assert torch.allclose(out[:, :, 0], out[:, :, 1], atol=1e-6)
    assert torch.allclose(out[:, :, 1], out[:, :, 2], atol=1e-6)


def test_per_sample_colour_ops_match_torchvision():
    images = _uint8_batch(n=3, h=8, w=8).float() / 255
    factors = torch.tensor([0.6, 1.0, 1.4])
    shifts = torch.tensor([-0.1, 0.0, 0.35])
    ours = [adjust_brightness(images, factors), adjust_contrast(images, factors), adjust_saturation(images, factors), adjust_hue(images, shifts)]
    for i in range(3):
        ref = [
            TF.adjust_brightness(images[i], factors[i].item()),
            TF.adjust_contrast(images[i], factors[i].item()),
            TF.adjust_saturation(images[i], factors[i].item()),
            TF.adjust_hue(images[i], shifts[i].item()),
        ]
        for got, want in zip(ours, ref):
            assert torch.allclose(got[i], want, atol=1e-5)


def test_views_reject_bad_input():
    aug = SupConViews(MEAN, STD)
    with pytest.raises(UsageError, match="uint8"):
        aug(torch.zeros(2, 3, 32, 32), torch.Generator())
    with pytest.raises(UsageError, match="scale"):
        SupConViews(MEAN, STD, scale=(0.0, 1.0))
    with pytest.raises(UsageError, match="probability"):
        SupConViews(MEAN, STD, grayscale_p=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_views_on_cuda_match_shape_and_seed():
    aug = SupConViews(MEAN, STD)
    images = _uint8_batch().cuda()
    a = aug(images, torch.Generator(device="cuda").manual_seed(3))
    b = aug(images, torch.Generator(device="cuda").manual_seed(3))
    c = aug(images, torch.Generator().manual_seed(3))  # a CPU generator also works on CUDA images
    assert a.is_cuda and c.is_cuda and a.shape == (6, 2, 3, 32, 32)
    assert torch.equal(a, b)
    # Same CPU-drawn parameters on both devices give the same views up to float rounding.
    d = aug(images.cpu(), torch.Generator().manual_seed(3))
    assert torch.allclose(c.cpu(), d, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Classifier stage
# ----------------------------------------------------------------------------------------------


def _one_sgd_step(strategy, x, y):
    params = [p for p in strategy.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    strategy.train()
    out = strategy.train_step(x, y, torch.arange(len(y)), 0)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    return out


@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_frozen_encoder_does_not_change(head):
    torch.manual_seed(0)
    encoder = create_model("tiny_cnn", 10)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}  # includes BN running stats
    strategy = FrozenEncoderClassifier(encoder, num_classes=4, head=head, hidden=32)
    head_before = [p.clone() for p in strategy.model.head.parameters()]
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,))
    out = _one_sgd_step(strategy, x, y)

    assert out.logits.shape == (8, 4)
    assert out.loss.item() == pytest.approx(nn.functional.cross_entropy(out.logits, y).item())
    assert all(p.grad is None and not p.requires_grad for p in encoder.parameters())
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(head_before, strategy.model.head.parameters()))
    assert not encoder.training and not encoder.features[1].training  # BN stays in eval after strategy.train()
    assert strategy.model.training and strategy.model.head.training
    expected_head = nn.Sequential if head == "mlp" else nn.Linear
    assert isinstance(strategy.model.head, expected_head)


def test_finetune_trains_the_encoder():
    torch.manual_seed(0)
    encoder = create_model("tiny_cnn", 10)
    conv_before = encoder.features[0].weight.clone()
    strategy = FrozenEncoderClassifier(encoder, num_classes=4, head="finetune")
    _one_sgd_step(strategy, torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,)))
    assert encoder.training and encoder.features[1].training
    assert not torch.equal(conv_before, encoder.features[0].weight)
    assert encoder.head.weight.grad is None  # the encoder's old classifier is bypassed


def test_predict_is_the_new_heads_logits():
    torch.manual_seed(0)
    encoder = create_model("tiny_cnn", 10)
    strategy = FrozenEncoderClassifier(encoder, num_classes=3, head="linear").eval()
    x = torch.randn(5, 3, 16, 16)
    logits = strategy.predict(x)
    with torch.no_grad():
        expected = strategy.model.head(encoder.eval().forward_features(x))
    assert logits.shape == (5, 3)
    assert torch.allclose(logits, expected)
    assert strategy.model.num_features == encoder.num_features


def test_classifier_errors():
    with pytest.raises(UsageError, match="unknown classifier head 'knn'"):
        FrozenEncoderClassifier(create_model("tiny_cnn", 10), num_classes=10, head="knn")


def test_distributed_wrapper_falls_back_to_the_plain_loss_without_a_process_group():
    torch.manual_seed(0)
    vectors, y = torch.randn(4, 2, 3), torch.tensor([0, 1, 0, 1])
    plain = SupConPretrain(PixelReader(), temperature=0.2)
    wrapped = SupConPretrain(PixelReader(), temperature=0.2, distributed=True)
    plain.head = wrapped.head = nn.Identity()
    with pytest.warns(UserWarning, match="non-distributed"):
        loss = wrapped.train_step(views_from_vectors(vectors), y, None, 0).loss
    assert loss.item() == pytest.approx(plain.train_step(views_from_vectors(vectors), y, None, 0).loss.item())
