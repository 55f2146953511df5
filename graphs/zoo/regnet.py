"""RegNetY-400MF (Radosavovic et al. 2020, ``pycls`` layout), plain PyTorch.

A bottleneck CNN like ResNet-50, with what ResNet lacks: grouped 3x3 convs (a fixed group
width of 8 channels) and a squeeze-and-excitation gate in every block (a global mean, two
1x1 convs, a sigmoid, a broadcast multiply). The image size stays symbolic, as in ResNet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models import ZooModel
from .resnet import cnn_zoo_model, conv_bn, global_avg_pool
from .squeeze_excite import SqueezeExcite


@dataclass(frozen=True)
class RegNetConfig:
    """Architecture of one RegNetY variant."""

    stem: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    group_width: int
    se_ratio: float  # SE channels as a share of the block's input channels
    num_classes: int


REGNET = {
    # RegNetY-400MF: 4.3 M params, 0.40 GMACs at 224x224.
    "full": RegNetConfig(stem=32, widths=(48, 104, 208, 440), depths=(1, 3, 6, 6), group_width=8,
                         se_ratio=0.25, num_classes=1000),
    "small": RegNetConfig(stem=8, widths=(8, 16, 32, 64), depths=(1, 1, 1, 1), group_width=8,
                          se_ratio=0.25, num_classes=10),
}


class YBlock(nn.Module):
    """1x1 conv, grouped 3x3 conv (strided), SE, 1x1 conv, plus shortcut (bottleneck ratio 1)."""

    def __init__(self, cin: int, width: int, stride: int, cfg: RegNetConfig) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, width, 1)
        self.conv2 = nn.Sequential(
            nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=width // cfg.group_width, bias=False),
            nn.BatchNorm2d(width),
        )
        self.se = SqueezeExcite(width, max(1, int(cin * cfg.se_ratio)))
        self.conv3 = conv_bn(width, width, 1)
        self.shortcut = conv_bn(cin, width, 1, stride) if stride != 1 or cin != width else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = self.se(torch.relu(self.conv2(y)))
        return torch.relu(self.conv3(y) + self.shortcut(x))


class RegNet(nn.Module):
    """Stem (3x3/2 conv), four stages each starting with a stride-2 block, global mean, classifier."""

    def __init__(self, cfg: RegNetConfig) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, cfg.stem, 3, stride=2), nn.ReLU())
        blocks = []
        cin = cfg.stem
        for width, depth in zip(cfg.widths, cfg.depths, strict=True):
            for j in range(depth):
                blocks.append(YBlock(cin, width, stride=2 if j == 0 else 1, cfg=cfg))
                cin = width
        self.stages = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(global_avg_pool(self.stages(self.stem(x))))


def build_regnet(variant: str) -> ZooModel:
    """RegNetY (full: RegNetY-400MF, 16 blocks)."""
    cfg = REGNET[variant]
    torch.manual_seed(0)
    module = RegNet(cfg).eval()
    return cnn_zoo_model("regnet", variant, module,
                         f"RegNetY, widths {cfg.widths}, depths {cfg.depths}, group width {cfg.group_width}, SE")
