"""DenseNet-121 (Huang et al. 2017, torchvision layout), plain PyTorch.

What no other zoo CNN has: every layer's input is the concatenation of all earlier
outputs of its block, and layers are pre-activation (batch norm and ReLU before each
conv). Each layer appends its ``growth`` channels with one two-input concat, which is the
same tensor as torchvision's concat of the list of all earlier outputs. The image size
stays symbolic, as in ResNet; the transitions halve it with a 2x2 average pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models import ZooModel
from .resnet import cnn_zoo_model, conv_bn, global_avg_pool


@dataclass(frozen=True)
class DenseNetConfig:
    """Architecture of one DenseNet variant."""

    stem: int
    growth: int
    blocks: tuple[int, ...]  # dense layers per block
    bottleneck: int  # channels of each layer's 1x1 conv, as a multiple of growth
    num_classes: int


DENSENET = {
    # DenseNet-121: 7.98 M params, 2.83 GMACs at 224x224.
    "full": DenseNetConfig(stem=64, growth=32, blocks=(6, 12, 24, 16), bottleneck=4, num_classes=1000),
    "small": DenseNetConfig(stem=8, growth=4, blocks=(2, 2, 2, 2), bottleneck=2, num_classes=10),
}


def bn_relu_conv(cin: int, cout: int, kernel: int) -> nn.Sequential:
    """Pre-activation unit: batch norm, ReLU, then a bias-free conv."""
    return nn.Sequential(
        nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
    )


class DenseLayer(nn.Module):
    """1x1 bottleneck conv, 3x3 conv to ``growth`` channels, appended to the input."""

    def __init__(self, cin: int, cfg: DenseNetConfig) -> None:
        super().__init__()
        width = cfg.bottleneck * cfg.growth
        self.body = nn.Sequential(bn_relu_conv(cin, width, 1), bn_relu_conv(width, cfg.growth, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class DenseNet(nn.Module):
    """Stem (7x7/2 conv, 3x3/2 max pool), dense blocks joined by transitions, norm, mean, classifier."""

    def __init__(self, cfg: DenseNetConfig) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            conv_bn(3, cfg.stem, 7, stride=2), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)
        )
        layers: list[nn.Module] = []
        channels = cfg.stem
        for i, depth in enumerate(cfg.blocks):
            for _ in range(depth):
                layers.append(DenseLayer(channels, cfg))
                channels += cfg.growth
            if i < len(cfg.blocks) - 1:  # transition: halve the channels and the image
                layers += [bn_relu_conv(channels, channels // 2, 1), nn.AvgPool2d(2, stride=2)]
                channels //= 2
        self.features = nn.Sequential(*layers, nn.BatchNorm2d(channels), nn.ReLU())
        self.fc = nn.Linear(channels, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(global_avg_pool(self.features(self.stem(x))))


def build_densenet(variant: str) -> ZooModel:
    """DenseNet-121 (full: 7.98 M params, 2.83 GMACs at 224x224)."""
    torch.manual_seed(0)
    module = DenseNet(DENSENET[variant]).eval()
    return cnn_zoo_model("densenet", variant, module, "DenseNet-121 image classifier (dense blocks of concatenated features)")
