"""MobileNetV2 (torchvision layout), plain PyTorch.

Depthwise convs and inverted residuals give the zoo memory-bound, fusion-friendly
conv chains that ResNet lacks. The full variant is width 1.0 at 3.5 M params and
0.30 GMACs at 224x224 (as torchvision); the classifier's dropout is left out because
it is the identity at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from .models import ZooModel
from .resnet import cnn_zoo_model, global_avg_pool
from .squeeze_excite import SqueezeExcite

# (expansion t, output channels c, repeats n, first stride s), from the MobileNetV2 paper.
PAPER_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


@dataclass(frozen=True)
class MobileNetV2Config:
    """Architecture of one MobileNetV2 variant."""

    width_mult: float
    settings: tuple[tuple[int, int, int, int], ...]
    last_channel: int
    num_classes: int


MOBILENET_V2 = {
    "full": MobileNetV2Config(width_mult=1.0, settings=PAPER_SETTINGS, last_channel=1280, num_classes=1000),
    # The five stride-2 stages (total stride 32), one residual block, a quarter of the channels.
    "small": MobileNetV2Config(
        width_mult=0.25,
        settings=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 1, 2), (6, 64, 1, 2), (6, 160, 1, 2)),
        last_channel=64,
        num_classes=10,
    ),
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of 8 without losing more than 10 %, as torchvision."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                activation: type[nn.Module] = nn.ReLU6) -> nn.Sequential:
    """Conv, batch norm, activation: the basic MobileNet (ReLU6) and EfficientNet (SiLU) unit."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        activation(),
    )


class InvertedResidual(nn.Module):
    """1x1 expand, kxk depthwise, SE gate (EfficientNet only), linear 1x1 project; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, kernel: int = 3,
                 activation: type[nn.Module] = nn.ReLU6, se_channels: int = 0) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_act(cin, hidden, 1, activation=activation))
        layers.append(conv_bn_act(hidden, hidden, kernel, stride=stride, groups=hidden, activation=activation))
        if se_channels:
            layers.append(SqueezeExcite(hidden, se_channels, activation()))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        self.cout = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class InvertedResidualNet(nn.Module):
    """Stem conv (3x3/2), inverted-residual blocks, 1x1 head conv, global average pool, classifier."""

    def __init__(self, stem: int, blocks: list[InvertedResidual], last_channel: int, num_classes: int,
                 activation: type[nn.Module]) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn_act(3, stem, 3, stride=2, activation=activation), *blocks,
                                      conv_bn_act(blocks[-1].cout, last_channel, 1, activation=activation))
        self.classifier = nn.Linear(last_channel, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(global_avg_pool(self.features(x)))


def inverted_residual_blocks(cin: int, stages: Iterable[tuple[int, int, int, int, int]], width_mult: float,
                             activation: type[nn.Module] = nn.ReLU6, squeeze_excite: bool = False
                             ) -> list[InvertedResidual]:
    """The blocks of stages of (expansion, kernel, first stride, output channels, repeats), channels
    scaled by ``width_mult``; with ``squeeze_excite`` each block's SE gate squeezes to a quarter of
    its input channels (EfficientNet)."""
    blocks = []
    for expansion, kernel, stride, channels, repeats in stages:
        cout = make_divisible(channels * width_mult)
        for i in range(repeats):
            blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion, kernel, activation,
                                           se_channels=max(1, cin // 4) if squeeze_excite else 0))
            cin = cout
    return blocks


def mobilenet_v2(cfg: MobileNetV2Config) -> InvertedResidualNet:
    """The paper's stages of (expansion t, channels c, repeats n, first stride s), 3x3 depthwise, widths scaled."""
    stem = make_divisible(32 * cfg.width_mult)
    blocks = inverted_residual_blocks(stem, [(t, 3, s, c, n) for t, c, n, s in cfg.settings], cfg.width_mult)
    last = make_divisible(cfg.last_channel * max(1.0, cfg.width_mult))
    return InvertedResidualNet(stem, blocks, last, cfg.num_classes, nn.ReLU6)


def build_mobilenet_v2(variant: str) -> ZooModel:
    """MobileNetV2 (full: width 1.0, 3.5 M params, 0.30 GMACs at 224x224)."""
    torch.manual_seed(0)
    module = mobilenet_v2(MOBILENET_V2[variant]).eval()
    return cnn_zoo_model("mobilenet_v2", variant, module,
                         "MobileNetV2 image classifier (inverted residuals, depthwise convs)")
