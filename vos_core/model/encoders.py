"""Memory and query encoders (ResNet cut after layer3) and the key/value projection."""
from __future__ import annotations

import torch
from torch import nn

from .trunk import TrunkStem

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Normalising(TrunkStem):
    def _build(self, trunk: str) -> None:
        self._build_trunk(trunk)
        # Buffers, as in the official checkpoints (``encoder_q.mean``/``std``).
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def _stages(self, x):
        r1 = self.relu(self.bn1(x))  # 1/2, 64
        r2 = self.res2(self.maxpool(r1))  # 1/4
        r3 = self.res3(r2)  # 1/8
        r4 = self.res4(r3)  # 1/16
        return r4, r3, r2, r1


class MemoryEncoder(_Normalising):
    """Encodes a frame together with one object's soft mask and its complement."""

    def __init__(self, trunk: str = "resnet50"):
        super().__init__()
        self.conv1_m = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        self.conv1_o = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        self._build(trunk)

    def forward(self, frame: torch.Tensor, mask: torch.Tensor, other: torch.Tensor):
        """frame: N×3×H×W RGB in [0,1]; mask/other: N×1×H×W. Returns (r4, r1)."""
        # frame may be batch 1 (shared by all objects): its conv1 then runs once and broadcasts.
        x = self.conv1((frame - self.mean) / self.std) + self.conv1_m(mask) + self.conv1_o(other)
        r4, _, _, r1 = self._stages(x)
        return r4, r1


class QueryEncoder(_Normalising):
    def __init__(self, trunk: str = "resnet50"):
        super().__init__()
        self._build(trunk)

    def forward(self, frame: torch.Tensor):
        """frame: B×3×H×W RGB in [0,1]. Returns (r4, r3, r2, r1)."""
        return self._stages(self.conv1((frame - self.mean) / self.std))


class KeyValue(nn.Module):
    """Shared key/value projection on res4 (3x3 convs with bias)."""

    def __init__(self, indim: int, keydim: int, valdim: int):
        super().__init__()
        self.Key = nn.Conv2d(indim, keydim, 3, 1, 1)
        self.Value = nn.Conv2d(indim, valdim, 3, 1, 1)

    def forward(self, x: torch.Tensor):
        """Returns keys N×keydim×HW and values N×valdim×HW."""
        return self.Key(x).flatten(2), self.Value(x).flatten(2)
