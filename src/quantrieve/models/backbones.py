"""Backbones trained from scratch (no pretrained weights anywhere).

- ``resnet18_cifar``: ResNet-18 adapted to 32x32 inputs (3x3 stride-1 stem, no max-pool), 512-d.
- ``resnet18`` / ``resnet50``: the ImageNet layouts (7x7 stride-2 stem, max-pool), 512-d / 2048-d.
- ``small_cnn``: a compact VGG-style CNN for CPU work on small (e.g. 28x28 grayscale) images.

Every backbone takes any input channel count and ends in global average pooling, so it maps
(B, C, H, W) to (B, out_dim).
"""

from __future__ import annotations

from torch import Tensor, nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class ResNet(nn.Module):
    """ResNet with a CIFAR (3x3, stride 1, no max-pool) or ImageNet (7x7, stride 2) stem."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        in_channels: int,
        small_input: bool,
        width: int = 64,
    ) -> None:
        super().__init__()
        if small_input:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        stages: list[nn.Module] = []
        in_planes = width
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = in_planes

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.stages(self.stem(x))).flatten(1)


class SmallCNN(nn.Module):
    """Conv stages of width, 2*width, 4*width, ..., each two 3x3 conv-BN-ReLU, for CPU training.

    A 2x2 max-pool precedes every stage but the first. With the default three stages, 28x28
    inputs are seen at 28, 14 and 7 pixels and the output is 4*width; a fourth stage adds a 3x3
    level and doubles the output to 8*width for little extra compute.
    """

    def __init__(self, in_channels: int, width: int = 32, stages: int = 3) -> None:
        super().__init__()
        if stages < 1:
            raise ValueError(f"stages must be >= 1, got {stages}")
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, out in enumerate(width * 2**i for i in range(stages)):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [
                    nn.Conv2d(channels, out, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                ]
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = channels

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)


def build_backbone(name: str, in_channels: int, width: int = 32, stages: int = 3) -> nn.Module:
    """Backbone by name; ``width`` and ``stages`` apply to ``small_cnn`` only. Has ``out_dim``."""
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if name == "small_cnn":
        return SmallCNN(in_channels, width, stages)
    if name == "resnet18_cifar":
        return ResNet(BasicBlock, [2, 2, 2, 2], in_channels, small_input=True)
    if name == "resnet18":
        return ResNet(BasicBlock, [2, 2, 2, 2], in_channels, small_input=False)
    if name == "resnet50":
        return ResNet(Bottleneck, [3, 4, 6, 3], in_channels, small_input=False)
    raise ValueError(
        f"unknown backbone '{name}'; one of small_cnn, resnet18_cifar, resnet18, resnet50"
    )
