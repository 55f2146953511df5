"""Swin Transformer (Liu et al. 2021, Swin-T layout), plain PyTorch.

A vision transformer unlike ViT in how tokens meet: attention runs inside 7x7 windows of
the token grid (a reshape and permute into windows and back), every second block shifts
the grid by half a window first (``torch.roll``, which TVM imports as two slices and a
concat) and masks the pairs the shift wrapped around, a learned bias indexed by the
relative position of each query-key pair is added to the scores, and patch merging
halves the grid between stages (four strided slices, concat, LayerNorm, linear).

The image size is static, as in ViT: the windows must tile each stage's grid, and the
relative-position index and shift masks are buffers of the grid's size. Only the batch is
dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models import ZooModel
from .vit import static_image_zoo_model


@dataclass(frozen=True)
class SwinConfig:
    """Architecture of one Swin variant."""

    image: int
    patch: int
    window: int
    hidden: int  # channels of the first stage; each patch merging doubles them
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    mlp_ratio: int
    num_classes: int


SWIN = {
    # Swin-T at 224x224: 28.3 M params; grids 56, 28, 14, 7.
    "full": SwinConfig(image=224, patch=4, window=7, hidden=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24),
                       mlp_ratio=4, num_classes=1000),
    "small": SwinConfig(image=32, patch=2, window=4, hidden=16, depths=(2, 2), heads=(2, 4),
                        mlp_ratio=2, num_classes=10),
}


def relative_position_index(window: int) -> torch.Tensor:
    """(window², window²) row of the bias table for each query-key pair of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    delta = (coords[:, :, None] - coords[:, None, :]) + (window - 1)  # (2, N, N), each in [0, 2w - 2]
    return delta[0] * (2 * window - 1) + delta[1]


def shift_mask(grid: int, window: int, shift: int) -> torch.Tensor:
    """(windows, N, N) additive mask: -100 where a shifted window joins tokens that were not adjacent."""
    region = torch.zeros(grid, grid)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(bounds):
        for j, cols in enumerate(bounds):
            region[rows, cols] = 3 * i + j
    labels = to_windows(region[None, :, :, None], window).squeeze(-1)  # (windows, N)
    return (labels[:, None, :] != labels[:, :, None]).float() * -100.0


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window², C)."""
    _, height, width, channels = x.shape
    x = x.reshape(-1, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def from_windows(x: torch.Tensor, window: int, grid: int) -> torch.Tensor:
    """(B * windows, window², C) -> (B, H, W, C)."""
    channels = x.shape[-1]
    x = x.reshape(-1, grid // window, grid // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, grid, grid, channels)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, plus the relative-position bias and the shift mask."""

    def __init__(self, dim: int, heads: int, window: int, mask: torch.Tensor | None) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        self.register_buffer("bias_index", relative_position_index(window).flatten(), persistent=False)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, dim = x.shape[1], x.shape[2]  # x: (B * windows, N, C)
        q, k, v = self.qkv(x).reshape(-1, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q * (dim // self.heads) ** -0.5) @ k.transpose(-2, -1)  # (B * windows, heads, N, N)
        bias = self.bias_table[self.bias_index].reshape(tokens, tokens, self.heads).permute(2, 0, 1)
        scores = scores + bias
        if self.mask is not None:
            windows = self.mask.shape[0]
            scores = (scores.reshape(-1, windows, self.heads, tokens, tokens) + self.mask[:, None]).reshape(
                -1, self.heads, tokens, tokens)
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(-1, tokens, dim)
        return self.proj(out)


class SwinBlock(nn.Module):
    """Pre-LN block: (shifted) window attention and a GELU MLP, each with a residual."""

    def __init__(self, dim: int, heads: int, grid: int, shift: int, cfg: SwinConfig) -> None:
        super().__init__()
        window = min(cfg.window, grid)
        self.shift = shift if grid > window else 0  # one window covers the grid: nothing to shift
        self.window, self.grid = window, grid
        mask = shift_mask(grid, window, self.shift) if self.shift else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window, mask)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, cfg.mlp_ratio * dim), nn.GELU(), nn.Linear(cfg.mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)  # (B, H, W, C)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = from_windows(self.attn(to_windows(y, self.window)), self.window, self.grid)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Each 2x2 patch's four tokens concatenated, normed and projected: (B, H, W, C) -> (B, H/2, W/2, 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class Swin(nn.Module):
    """Patch embedding (strided conv, LayerNorm), stages of Swin blocks joined by patch merging, head."""

    def __init__(self, cfg: SwinConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, cfg.hidden, cfg.patch, stride=cfg.patch)
        self.embed_norm = nn.LayerNorm(cfg.hidden)
        layers: list[nn.Module] = []
        dim, grid = cfg.hidden, cfg.image // cfg.patch
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.heads, strict=True)):
            if i > 0:
                layers.append(PatchMerging(dim))
                dim, grid = 2 * dim, grid // 2
            layers += [SwinBlock(dim, heads, grid, shift=cfg.window // 2 if j % 2 else 0, cfg=cfg)
                       for j in range(depth)]
        self.stages = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))  # (B, H, W, C)
        y = self.norm(self.stages(y))
        return self.head(y.mean(dim=(1, 2)))


def build_swin(variant: str) -> ZooModel:
    """Swin Transformer (full: Swin-T at 224x224, 28.3 M params)."""
    cfg = SWIN[variant]
    torch.manual_seed(0)
    module = Swin(cfg).eval()
    return static_image_zoo_model("swin", variant, module, cfg.image, "transformer",
                                  f"Swin Transformer, window {cfg.window}, static image {cfg.image}x{cfg.image}")
