"""``torchvision.models.resnet50`` stand-in, built from our ResNet trunk.

Only what AFB-URR takes from the network exists: conv1, bn1, relu, maxpool,
layer1, layer2, layer3 (layer4/avgpool/fc are never used by it and are left
out). Submodule and parameter names inside the stages match torchvision's.
"""
from __future__ import annotations

from torch import nn

from vos_core.model.trunk import TrunkStem

__all__ = ["ResNetTrunk", "resnet50", "resnet18", "resnet34"]


class ResNetTrunk(TrunkStem):
    def __init__(self, name: str):
        super().__init__()
        self._build_trunk(name)
        # torchvision's stage names, pointing at the same modules.
        self.layer1, self.layer2, self.layer3 = self.res2, self.res3, self.res4
        del self._modules["res2"], self._modules["res3"], self._modules["res4"]

    def forward(self, x):  # not used by AFB-URR; here for completeness
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


def _make(name: str, pretrained: bool = False, weights=None, progress: bool = True, **kwargs) -> nn.Module:
    if pretrained or weights is not None:
        raise RuntimeError("torchvision shim: no pretrained ImageNet weights here (load a checkpoint instead)")
    if kwargs:
        raise TypeError(f"torchvision shim: unsupported arguments {sorted(kwargs)}")
    return ResNetTrunk(name)


def resnet50(pretrained: bool = False, weights=None, progress: bool = True, **kwargs) -> nn.Module:
    return _make("resnet50", pretrained, weights, progress, **kwargs)


def resnet34(pretrained: bool = False, weights=None, progress: bool = True, **kwargs) -> nn.Module:
    return _make("resnet34", pretrained, weights, progress, **kwargs)


def resnet18(pretrained: bool = False, weights=None, progress: bool = True, **kwargs) -> nn.Module:
    return _make("resnet18", pretrained, weights, progress, **kwargs)
