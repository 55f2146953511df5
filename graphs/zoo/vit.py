"""Vision Transformer encoder (ViT-B/16 layout, pre-LayerNorm), plain PyTorch.

The image size is a static attribute of each variant, not a dynamic dim: the learned
position embeddings have one row per patch, so another image size would need them
resampled (bicubic interpolation of the table), which is not a graph op over a symbolic
size that torch.export and TVM's importer can carry. Only the batch is dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .bert import PreLNBlock
from .models import DynamicDim, ZooModel


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of one ViT variant."""

    image: int
    patch: int
    layers: int
    hidden: int
    heads: int
    mlp: int
    num_classes: int

    @property
    def tokens(self) -> int:
        """Patches plus the class token."""
        return (self.image // self.patch) ** 2 + 1


VIT = {
    # ViT-B/16 at 224x224, all 12 layers: 86 M params, 197 tokens.
    "full": ViTConfig(image=224, patch=16, layers=12, hidden=768, heads=12, mlp=3072, num_classes=1000),
    "small": ViTConfig(image=32, patch=8, layers=2, hidden=32, heads=2, mlp=64, num_classes=10),
}


class ViT(nn.Module):
    """Patch embedding (strided conv), class token, position embeddings, blocks, head on the class token."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, cfg.hidden, cfg.patch, stride=cfg.patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.hidden) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.tokens, cfg.hidden) * 0.02)
        self.blocks = nn.Sequential(*(PreLNBlock(cfg.hidden, cfg.heads, cfg.mlp, 1e-6, nn.GELU())
                                      for _ in range(cfg.layers)))
        self.norm = nn.LayerNorm(cfg.hidden, eps=1e-6)
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        y = self.blocks(torch.cat([cls, patches], dim=1) + self.pos_embed)
        return self.head(self.norm(y)[:, 0])


def build_vit(variant: str) -> ZooModel:
    """ViT encoder (full: ViT-B/16 at 224x224, 12 layers)."""
    cfg = VIT[variant]
    torch.manual_seed(0)
    module = ViT(cfg).eval()
    return static_image_zoo_model("vit", variant, module, cfg.image, "transformer",
                                  f"ViT encoder, patch {cfg.patch}, static image {cfg.image}x{cfg.image} "
                                  f"({cfg.tokens} tokens)")


def static_image_zoo_model(name: str, variant: str, module: nn.Module, image: int, family: str,
                           description: str) -> ZooModel:
    """Wrap a classifier of (batch, 3, image, image) images, image size fixed, into a ZooModel."""
    batch = DynamicDim("batch", min=1, max=64, default=2)
    return ZooModel(
        name=name,
        variant=variant,
        module=module,
        example_inputs=(torch.randn(batch.default, 3, image, image),),
        dynamic_shapes=({0: batch.export_dim()},),
        dims=(batch,),
        family=family,
        description=description,
    )
