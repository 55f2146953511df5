"""EfficientNet-B0 (Tan & Le 2019, torchvision layout), plain PyTorch.

MobileNetV2's inverted residuals with what it lacks: SiLU activations, 5x5 depthwise convs
in some stages and a squeeze-and-excitation gate in every block. Stochastic depth and
dropout are the identity at inference and are left out. The image size stays symbolic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .mobilenet import InvertedResidualNet, inverted_residual_blocks, make_divisible
from .models import ZooModel
from .resnet import cnn_zoo_model

# (expansion, kernel, first stride, output channels, repeats) of B0's seven stages.
B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


@dataclass(frozen=True)
class EfficientNetConfig:
    """Architecture of one EfficientNet variant."""

    width_mult: float
    stages: tuple[tuple[int, int, int, int, int], ...]
    last_channel: int
    num_classes: int


EFFICIENTNET = {
    # B0: 5.29 M params, 0.39 GMACs at 224x224.
    "full": EfficientNetConfig(width_mult=1.0, stages=B0_STAGES, last_channel=1280, num_classes=1000),
    # The five stride-2 stages, one block each, a quarter of the channels.
    "small": EfficientNetConfig(
        width_mult=0.25,
        stages=((1, 3, 1, 16, 1), (6, 3, 2, 24, 1), (6, 5, 2, 40, 1), (6, 3, 2, 80, 1), (6, 5, 2, 192, 1)),
        last_channel=64,
        num_classes=10,
    ),
}


def efficientnet(cfg: EfficientNetConfig) -> InvertedResidualNet:
    """B0's stages, widths scaled; each block's SE squeezes to a quarter of its input channels."""
    stem = make_divisible(32 * cfg.width_mult)
    blocks = inverted_residual_blocks(stem, cfg.stages, cfg.width_mult, nn.SiLU, squeeze_excite=True)
    return InvertedResidualNet(stem, blocks, cfg.last_channel, cfg.num_classes, nn.SiLU)


def build_efficientnet(variant: str) -> ZooModel:
    """EfficientNet (full: B0, 16 MBConv blocks)."""
    torch.manual_seed(0)
    module = efficientnet(EFFICIENTNET[variant]).eval()
    return cnn_zoo_model("efficientnet", variant, module,
                         "EfficientNet image classifier (MBConv: SiLU, depthwise convs, SE gates)")
