"""A small Vision Transformer for 32x32 inputs (report 002): timm's ViT with 4x4 patches (64 tokens)."""
from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from robustlab.errors import require
from robustlab.models.base import Classifier
from robustlab.models.checks import check_choice, check_positive, check_rate
from robustlab.models.heads import linear_head
from robustlab.models.registry import register_model

POOLS = ("token", "avg")


class ViTCifar(Classifier):
    """Patch embedding, class token and learned position embeddings, `depth` pre-norm transformer
    blocks; the features are the final-normed class token (`global_pool="token"`) or the mean of
    the patch tokens (`"avg"`)."""

    def __init__(
        self,
        num_classes: int = 10,
        img_size: int = 32,
        patch_size: int = 4,
        embed_dim: int = 256,
        depth: int = 7,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        global_pool: str = "token",
        drop_path_rate: float = 0.1,
        dropout: float = 0.0,
        in_chans: int = 3,
    ):
        super().__init__()
        for name, value in (("img_size", img_size), ("patch_size", patch_size), ("embed_dim", embed_dim),
                            ("depth", depth), ("num_heads", num_heads)):
            check_positive(name, value)
        require(img_size % patch_size == 0, f"patch_size {patch_size} must divide img_size {img_size}")
        require(embed_dim % num_heads == 0, f"num_heads {num_heads} must divide embed_dim {embed_dim}")
        require(mlp_ratio > 0, f"mlp_ratio must be > 0, got {mlp_ratio!r}")
        check_choice("global_pool", global_pool, POOLS)
        drop_path_rate, dropout = check_rate("drop_path_rate", drop_path_rate), check_rate("dropout", dropout)
        self.backbone = VisionTransformer(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0, global_pool=global_pool,
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate,
        )
        self.num_features = self.backbone.num_features
        self.head = linear_head(self.num_features, num_classes, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)


@register_model
def vit_cifar(num_classes: int = 10, **kwargs) -> ViTCifar:
    return ViTCifar(num_classes=num_classes, **kwargs)
