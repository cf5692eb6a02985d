"""ResNet trunks cut after layer3, with torchvision's parameter names.

There is no CPU torchvision here, and we only need conv1..layer3, so the blocks
are written out. Parameter names inside each stage (``conv1``, ``bn1``,
``downsample.0`` ...) follow torchvision so ImageNet or official AFB-URR weights
map one to one. The stages are exposed as ``res2``/``res3``/``res4`` because that
is what the authors' checkpoints call ``layer1``/``layer2``/``layer3``.
"""
from __future__ import annotations

from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    # torchvision's v1.5 bottleneck: the stride sits on the 3x3 conv.
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


TRUNKS = {
    # name: (block, blocks per stage for layer1..layer3)
    "resnet18": (BasicBlock, (2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6)),
    "resnet50": (Bottleneck, (3, 4, 6)),
}


def resnet_channels(name: str) -> tuple[int, int, int]:
    """Channels of (res2, res3, res4) for a ResNet trunk name."""
    block, _ = TRUNKS[name]
    return 64 * block.expansion, 128 * block.expansion, 256 * block.expansion


def _make_stage(block, inplanes: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample)]
    inplanes = planes * block.expansion
    layers += [block(inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers), inplanes


class TrunkStem(nn.Module):
    """conv1/bn1/relu/maxpool plus res2..res4, registered directly on the module
    that owns them (the encoders subclass this) so state-dict keys read
    ``encoder_q.conv1.weight``, ``encoder_q.res2.0.conv1.weight``, ..."""

    def _build_trunk(self, name: str) -> None:
        if name not in TRUNKS:
            raise ValueError(f"unknown trunk {name!r}; choose one of {sorted(TRUNKS)}")
        block, counts = TRUNKS[name]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        self.res2, inplanes = _make_stage(block, inplanes, 64, counts[0], 1)
        self.res3, inplanes = _make_stage(block, inplanes, 128, counts[1], 2)
        self.res4, inplanes = _make_stage(block, inplanes, 256, counts[2], 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
