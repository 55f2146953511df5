"""ResNet-18 and ResNet-50 (torchvision layout, v1.5: stride on the 3x3 conv), plain PyTorch.

torchvision is not installable here, so the architecture is written out; the full
variants match torchvision's MAC counts (1.82 / 4.09 GMACs at 224x224, batch 1).
The image size stays symbolic through export: every conv/pool output size is a
floor-division expression of it, and a global mean removes it before the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models import DynamicDim, ZooModel


@dataclass(frozen=True)
class ResNetConfig:
    """Architecture of one ResNet variant."""

    bottleneck: bool
    layers: tuple[int, ...]
    width: int  # channels of the stem and of the first stage's 3x3 convs
    num_classes: int


RESNET18 = {
    "full": ResNetConfig(bottleneck=False, layers=(2, 2, 2, 2), width=64, num_classes=1000),
    "small": ResNetConfig(bottleneck=False, layers=(1, 1, 1, 1), width=8, num_classes=10),
}
RESNET50 = {
    "full": ResNetConfig(bottleneck=True, layers=(3, 4, 6, 3), width=64, num_classes=1000),
    "small": ResNetConfig(bottleneck=True, layers=(1, 1, 1, 1), width=8, num_classes=10),
}


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Bias-free conv followed by batch norm, the unit every ResNet layer is made of."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1-projected) shortcut: ResNet-18/34."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = conv_bn(cin, width, 3, stride)
        self.conv2 = conv_bn(width, cout, 3)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        return torch.relu(self.conv2(y) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand x4, plus shortcut: ResNet-50/101/152."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = conv_bn(cin, width, 1)
        self.conv2 = conv_bn(width, width, 3, stride)
        self.conv3 = conv_bn(width, cout, 1)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        y = torch.relu(self.conv2(y))
        return torch.relu(self.conv3(y) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem (7x7/2 conv, 3x3/2 max pool), four stages, global average pool, classifier."""

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        block = Bottleneck if cfg.bottleneck else BasicBlock
        self.stem = nn.Sequential(
            conv_bn(3, cfg.width, 7, stride=2), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)
        )
        stages = []
        cin = cfg.width
        for i, depth in enumerate(cfg.layers):
            width = cfg.width * 2**i
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, width, stride=2 if i > 0 and j == 0 else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stages(self.stem(x))
        return self.fc(global_avg_pool(y))


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over H and W, flattened: AdaptiveAvgPool2d(1) + flatten in one reduction op."""
    return x.mean(dim=(2, 3))


def image_dims(variant: str) -> tuple[DynamicDim, DynamicDim]:
    """Batch and square image size shared by the CNNs.

    Any image size works numerically, but with the total stride of 32 an image of at most
    32 pixels ends in a 1x1 feature map, and torch.export refuses a symbolic size that may
    become 1 (broadcasting and reductions guard on it). Hence the minimum of 64 (2x2).
    """
    return (
        DynamicDim("batch", min=1, max=64, default=2),
        DynamicDim("image", min=64, max=512, default=224 if variant == "full" else 64),
    )


def cnn_zoo_model(name: str, variant: str, module: nn.Module, description: str) -> ZooModel:
    """Wrap an image classifier taking (batch, 3, image, image) into a ZooModel."""
    batch, image = image_dims(variant)
    b, hw = batch.export_dim(), image.export_dim()
    x = torch.randn(batch.default, 3, image.default, image.default)
    return ZooModel(
        name=name,
        variant=variant,
        module=module,
        example_inputs=(x,),
        dynamic_shapes=({0: b, 2: hw, 3: hw},),
        dims=(batch, image),
        family="cnn",
        description=description,
    )


def _build(name: str, cfg: ResNetConfig, variant: str, description: str) -> ZooModel:
    torch.manual_seed(0)
    module = ResNet(cfg).eval()
    return cnn_zoo_model(name, variant, module, description)


def build_resnet18(variant: str) -> ZooModel:
    """ResNet-18 (full: 11.7 M params, 1.82 GMACs at 224x224)."""
    return _build("resnet18", RESNET18[variant], variant, "ResNet-18 image classifier (basic blocks)")


def build_resnet50(variant: str) -> ZooModel:
    """ResNet-50 (full: 25.6 M params, 4.09 GMACs at 224x224)."""
    return _build("resnet50", RESNET50[variant], variant, "ResNet-50 v1.5 image classifier (bottleneck blocks)")
