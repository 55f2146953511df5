"""Squeeze-and-excitation (Hu et al. 2018): the channel gate of RegNetY and EfficientNet blocks."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """x * sigmoid(W2 act(W1 mean_hw(x))): a per-channel gate from the global context
    (act is ReLU in RegNet, SiLU in EfficientNet)."""

    def __init__(self, channels: int, squeezed: int, activation: nn.Module | None = None) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.activation = activation if activation is not None else nn.ReLU()
        self.expand = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                       # (B, C, H, W)
        squeezed = self.activation(self.reduce(x.mean(dim=(2, 3), keepdim=True)))
        return x * torch.sigmoid(self.expand(squeezed))                      # gate: (B, C, 1, 1)
