"""Memory and query encoders (a trunk cut at stride 16) and the key/value projection.

Two trunk families: the ResNets of the paper (``resnet50`` for the official checkpoints, cut after layer3)
and EfficientNet-Lite (the shipped compact model, ImageNet-pretrained). Both give the same four feature
maps: r1 (stride 2, for the URR local branch), r2/r3 (strides 4 and 8, the decoder's skips) and r4
(stride 16, keys and values). The memory encoder adds two convolutions of the object's soft mask and its
complement to the trunk's stem convolution, as STM does.
"""
from __future__ import annotations

import torch
from torch import nn

from .rows import per_frame_sum
from .efficientnet import LITE_MEAN, LITE_STD, LITE_VARIANTS, LiteTrunk, lite_channels
from .trunk import TRUNKS, TrunkStem, resnet_channels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def encoder_channels(trunk: str) -> tuple[int, int, int, int]:
    """Channels of (r1, r2, r3, r4) for a trunk name."""
    if trunk in TRUNKS:
        return (64, *resnet_channels(trunk))
    if trunk in LITE_VARIANTS:
        return lite_channels(trunk)
    raise ValueError(f"unknown trunk {trunk!r}; choose one of {sorted([*TRUNKS, *LITE_VARIANTS])}")


class _ResNetEncoder(TrunkStem):
    def _build(self, trunk: str) -> None:
        self._build_trunk(trunk)
        # Buffers, as in the official checkpoints (``encoder_q.mean``/``std``).
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def stem(self, frame: torch.Tensor) -> torch.Tensor:
        return self.conv1((frame - self.mean) / self.std)

    def _stages(self, x):
        r1 = self.relu(self.bn1(x))  # 1/2, 64
        r2 = self.res2(self.maxpool(r1))  # 1/4
        r3 = self.res3(r2)  # 1/8
        r4 = self.res4(r3)  # 1/16
        return r4, r3, r2, r1


class _LiteEncoder(LiteTrunk):
    def _build(self, trunk: str) -> None:
        self._build_lite(trunk)
        self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1))

    def stem(self, frame: torch.Tensor) -> torch.Tensor:
        return self._conv_stem((frame - self.mean) / self.std)

    def _stages(self, x):
        return self._stages_from_stem(x)


class _MemoryMixin:
    MASK_CONVS: tuple[str, str]  # names of the mask and complement convolutions (checkpoint keys)

    def forward(self, frame: torch.Tensor, mask: torch.Tensor, other: torch.Tensor):
        """frame: B×3×H×W RGB in [0,1]; mask/other: (B·K)×1×H×W, K soft masks per frame.
        Returns (r4, r1) with B·K rows: the frame's stem convolution runs once per frame, not per object."""
        mask_conv, other_conv = (getattr(self, name) for name in self.MASK_CONVS)
        x = per_frame_sum(self.stem(frame), mask_conv(mask)) + other_conv(other)
        r4, _, _, r1 = self._stages(x)
        return r4, r1


class _QueryMixin:
    def forward(self, frame: torch.Tensor):
        """frame: B×3×H×W RGB in [0,1]. Returns (r4, r3, r2, r1)."""
        return self._stages(self.stem(frame))


class MemoryEncoder(_MemoryMixin, _ResNetEncoder):
    """ResNet memory encoder (official key names ``conv1_m``/``conv1_o``)."""

    MASK_CONVS = ("conv1_m", "conv1_o")

    def __init__(self, trunk: str = "resnet50"):
        super().__init__()
        self.conv1_m = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        self.conv1_o = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        self._build(trunk)


class QueryEncoder(_QueryMixin, _ResNetEncoder):
    def __init__(self, trunk: str = "resnet50"):
        super().__init__()
        self._build(trunk)


class LiteMemoryEncoder(_MemoryMixin, _LiteEncoder):
    MASK_CONVS = ("_conv_stem_m", "_conv_stem_o")

    def __init__(self, trunk: str = "efficientnet_lite0"):
        super().__init__()
        self._build(trunk)
        self._conv_stem_m = nn.Conv2d(1, 32, 3, 2, 1, bias=False)
        self._conv_stem_o = nn.Conv2d(1, 32, 3, 2, 1, bias=False)
        # Small, so a pretrained stem starts close to what it saw on ImageNet.
        for conv in (self._conv_stem_m, self._conv_stem_o):
            nn.init.normal_(conv.weight, std=0.05)


class LiteQueryEncoder(_QueryMixin, _LiteEncoder):
    def __init__(self, trunk: str = "efficientnet_lite0"):
        super().__init__()
        self._build(trunk)


def make_encoders(trunk: str) -> tuple[nn.Module, nn.Module]:
    """(memory encoder, query encoder) for a trunk name."""
    encoder_channels(trunk)  # validates the name
    if trunk in LITE_VARIANTS:
        return LiteMemoryEncoder(trunk), LiteQueryEncoder(trunk)
    return MemoryEncoder(trunk), QueryEncoder(trunk)


class KeyValue(nn.Module):
    """Shared key/value projection on res4 (3x3 convs with bias)."""

    def __init__(self, indim: int, keydim: int, valdim: int):
        super().__init__()
        self.Key = nn.Conv2d(indim, keydim, 3, 1, 1)
        self.Value = nn.Conv2d(indim, valdim, 3, 1, 1)

    def forward(self, x: torch.Tensor):
        """Returns keys N×keydim×HW and values N×valdim×HW."""
        return self.Key(x).flatten(2), self.Value(x).flatten(2)
