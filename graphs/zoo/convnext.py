"""ConvNeXt (the "ConvNet for the 2020s" layout), plain PyTorch.

Depthwise 7x7 convs, LayerNorm over channels, GELU MLPs and layer scale: a CNN whose
fusion questions look like a transformer's (norm + MLP chains) around memory-bound
depthwise convs, unlike ResNet or MobileNet. The layout is the channels-first one (timm's
``conv_mlp=True``): LayerNorm written as mean and variance over the channel axis, the MLP as
1x1 convs. Between stages it downsamples with 3x3 stride-2 convs (padding 1), not the
reference 2x2 ones: after a 2x2 stride-2 conv the feature map is ``image // 8`` (then
``// 16``, ``// 32``), and torch.export cannot prove such a size larger than 1 over a
symbolic image range, so it refuses the export; ``(h - 1) // 2 + 1`` (ResNet's form) it
can. That adds ~0.2 GMACs at 224x224.
Stochastic depth is left out: it is the identity at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models import ZooModel
from .resnet import cnn_zoo_model, global_avg_pool


@dataclass(frozen=True)
class ConvNeXtConfig:
    """Architecture of one ConvNeXt variant: blocks and channels per stage."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    num_classes: int


CONVNEXT = {
    # ConvNeXt-T stages: 30.5 M params, 4.67 GMACs at 224x224 (the reference's 2x2 downsampling: 28.6 M, 4.5 G).
    "full": ConvNeXtConfig(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), num_classes=1000),
    "small": ConvNeXtConfig(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=10),
}


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channels of an (N, C, H, W) tensor: mean and variance along C."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - x.mean(dim=1, keepdim=True)
        normalized = centered * torch.rsqrt(centered.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return normalized * self.weight[:, None, None] + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    """x + gamma * MLP(LN(dwconv7x7(x))), the MLP as two 1x1 convs (4x wider inside)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = ChannelsFirstLayerNorm(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 4 * dim, 1), nn.GELU(), nn.Conv2d(4 * dim, dim, 1))
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * self.mlp(self.norm(self.dwconv(x)))


class ConvNeXt(nn.Module):
    """Patchify stem (4x4, stride 4), four stages joined by LN + 3x3 stride-2 downsampling convs."""

    def __init__(self, cfg: ConvNeXtConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, cfg.dims[0], 4, stride=4), ChannelsFirstLayerNorm(cfg.dims[0])]
        for stage, (depth, dim) in enumerate(zip(cfg.depths, cfg.dims)):
            if stage > 0:
                layers += [ChannelsFirstLayerNorm(cfg.dims[stage - 1]),
                           nn.Conv2d(cfg.dims[stage - 1], dim, 3, stride=2, padding=1)]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(cfg.dims[-1], eps=1e-6)
        self.head = nn.Linear(cfg.dims[-1], cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(global_avg_pool(self.features(x))))


def build_convnext(variant: str) -> ZooModel:
    """ConvNeXt-T stages (full: 30.5 M params, 4.67 GMACs at 224x224)."""
    torch.manual_seed(0)
    module = ConvNeXt(CONVNEXT[variant]).eval()
    return cnn_zoo_model("convnext", variant, module,
                         "ConvNeXt-T image classifier (depthwise 7x7, LayerNorm, GELU MLP, layer scale)")
