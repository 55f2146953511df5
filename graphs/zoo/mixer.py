"""MLP-Mixer (Mixer-S/16 layout), plain PyTorch.

No attention and no convolution after the patch embedding: token mixing is an MLP applied
across patches (a transpose, two matmuls along the token axis, a transpose back), channel
mixing an MLP across features. Like the ViT, the image size is a static attribute of the
variant (the token-mixing weights have one row per patch); only the batch is dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models import ZooModel
from .vit import static_image_zoo_model


@dataclass(frozen=True)
class MixerConfig:
    """Architecture of one Mixer variant."""

    image: int
    patch: int
    layers: int
    hidden: int
    token_mlp: int
    channel_mlp: int
    num_classes: int

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2


MIXER = {
    # Mixer-S/16 at 224x224: 18.5 M params, 196 tokens.
    "full": MixerConfig(image=224, patch=16, layers=8, hidden=512, token_mlp=256, channel_mlp=2048, num_classes=1000),
    "small": MixerConfig(image=32, patch=8, layers=2, hidden=32, token_mlp=16, channel_mlp=64, num_classes=10),
}


def mlp(width: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))


class MixerBlock(nn.Module):
    """x + token_mlp(LN(x) over tokens), then x + channel_mlp(LN(x))."""

    def __init__(self, cfg: MixerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden, eps=1e-6)
        self.token_mlp = mlp(cfg.tokens, cfg.token_mlp)
        self.norm2 = nn.LayerNorm(cfg.hidden, eps=1e-6)
        self.channel_mlp = mlp(cfg.hidden, cfg.channel_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                       # (B, tokens, hidden)
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mlp(self.norm2(x))


class Mixer(nn.Module):
    """Patch embedding (strided conv), Mixer blocks, LayerNorm, mean over tokens, linear head."""

    def __init__(self, cfg: MixerConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, cfg.hidden, cfg.patch, stride=cfg.patch)
        self.blocks = nn.Sequential(*(MixerBlock(cfg) for _ in range(cfg.layers)))
        self.norm = nn.LayerNorm(cfg.hidden, eps=1e-6)
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


def build_mlp_mixer(variant: str) -> ZooModel:
    """MLP-Mixer (full: Mixer-S/16 at 224x224, 8 layers)."""
    cfg = MIXER[variant]
    torch.manual_seed(0)
    module = Mixer(cfg).eval()
    return static_image_zoo_model("mlp_mixer", variant, module, cfg.image, "mlp",
                                  f"MLP-Mixer, patch {cfg.patch}, static image {cfg.image}x{cfg.image} "
                                  f"({cfg.tokens} tokens)")
