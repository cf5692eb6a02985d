"""``torchvision.transforms`` stand-in: ToTensor for the authors' test datasets.

Training-time augmentations (ColorJitter ...) can be constructed, so the
authors' dataset modules import and their test datasets work, but raise when
applied.
"""
from __future__ import annotations

from . import functional  # noqa: F401
from .functional import to_tensor


class ToTensor:
    """PIL image / H×W×C uint8 array -> C×H×W float tensor in [0, 1] (torchvision's semantics)."""

    def __call__(self, pic):
        return to_tensor(pic)

    def __repr__(self):
        return "ToTensor()"


class _Unavailable:
    def __init__(self, *args, **kwargs):
        self._args = args

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"torchvision shim: {type(self).__name__} is not implemented")


class ColorJitter(_Unavailable):
    pass


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x
