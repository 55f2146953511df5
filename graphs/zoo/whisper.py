"""Whisper encoder (Radford et al. 2022, whisper-base shapes), plain PyTorch.

An audio transformer: two 1-D convs (the second strided) turn log-mel frames into tokens,
sinusoidal positions are added, then pre-LN blocks with GELU MLPs, as in ViT, over a
sequence whose length is a run-time dim. The positions are a fixed table of 1,500 rows (30 s)
looked up with ``arange(tokens)``, as Llama's RoPE tables: a slice ``table[:tokens]`` would
be typed ``min(tokens, rows)`` rows by TVM and no longer broadcast against the tokens (ZOO.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .bert import PreLNBlock
from .models import DynamicDim, ZooModel


@dataclass(frozen=True)
class WhisperConfig:
    """Architecture of one Whisper encoder variant."""

    mels: int
    layers: int
    hidden: int
    heads: int
    mlp: int
    default_frames: int
    max_frames: int = 3000

    @property
    def max_tokens(self) -> int:
        """Tokens after the stride-2 conv at the longest input: the rows of the position table."""
        return (self.max_frames - 1) // 2 + 1


WHISPER = {
    # whisper-base encoder: 6 layers, hidden 512, 19.8 M params; 3000 frames (30 s) -> 1500 tokens.
    "full": WhisperConfig(mels=80, layers=6, hidden=512, heads=8, mlp=2048, default_frames=3000),
    "small": WhisperConfig(mels=16, layers=2, hidden=32, heads=2, mlp=64, default_frames=32),
}


def sinusoids(tokens: int, channels: int) -> torch.Tensor:
    """(tokens, channels): sin of the first half of channels, cos of the second, Whisper's timescales."""
    log_timescale = math.log(10000) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(tokens, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


class WhisperEncoder(nn.Module):
    """Conv stem (k3, then k3 stride 2, GELU each), positions, pre-LN blocks, final LayerNorm."""

    def __init__(self, cfg: WhisperConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(cfg.mels, cfg.hidden, 3, padding=1)
        self.conv2 = nn.Conv1d(cfg.hidden, cfg.hidden, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*(PreLNBlock(cfg.hidden, cfg.heads, cfg.mlp, 1e-5, nn.GELU())
                                      for _ in range(cfg.layers)))
        self.norm = nn.LayerNorm(cfg.hidden)
        self.positions = nn.Embedding.from_pretrained(sinusoids(cfg.max_tokens, cfg.hidden))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:                   # (B, mels, frames)
        x = nn.functional.gelu(self.conv1(mel))
        x = nn.functional.gelu(self.conv2(x)).transpose(1, 2)                # (B, tokens, hidden)
        x = x + self.positions(torch.arange(x.shape[1], device=x.device))
        return self.norm(self.blocks(x))


def build_whisper(variant: str) -> ZooModel:
    """Whisper encoder (full: whisper-base, 6 layers); the mel frame count ``seq`` is dynamic."""
    cfg = WHISPER[variant]
    torch.manual_seed(0)
    module = WhisperEncoder(cfg).eval()
    batch = DynamicDim("batch", min=1, max=64, default=2)
    frames = DynamicDim("seq", min=16, max=cfg.max_frames, default=cfg.default_frames)
    return ZooModel(
        name="whisper",
        variant=variant,
        module=module,
        example_inputs=(torch.randn(batch.default, cfg.mels, frames.default),),
        dynamic_shapes=({0: batch.export_dim(), 2: frames.export_dim()},),
        dims=(batch, frames),
        family="transformer",
        description=f"Whisper encoder, {cfg.layers} layers, hidden {cfg.hidden}, seq = mel frames "
                    f"(tokens = (seq - 1) // 2 + 1)",
    )
