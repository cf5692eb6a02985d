"""``torchvision.transforms.functional`` stand-in: the conversions only.

Geometric helpers (affine, crop, resize ...) are used by the authors only for
training augmentation; asking for one raises AttributeError naming it.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def _is_pil_image(img) -> bool:
    return isinstance(img, Image.Image)


def to_tensor(pic) -> torch.Tensor:
    """torchvision semantics: uint8 images are scaled to [0, 1]; C×H×W float32."""
    if _is_pil_image(pic):
        if pic.mode == "I":
            arr = np.array(pic, np.int32, copy=True)
        elif pic.mode == "I;16":
            arr = np.array(pic, np.int16, copy=True)
        elif pic.mode == "F":
            arr = np.array(pic, np.float32, copy=True)
        elif pic.mode == "1":
            arr = 255 * np.array(pic, np.uint8, copy=True)
        else:
            arr = np.array(pic, copy=True)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        return t.to(torch.get_default_dtype()).div(255) if t.dtype == torch.uint8 else t
    if isinstance(pic, np.ndarray):
        arr = pic[:, :, None] if pic.ndim == 2 else pic
        t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        return t.to(torch.get_default_dtype()).div(255) if t.dtype == torch.uint8 else t
    raise TypeError(f"pic should be a PIL Image or ndarray, got {type(pic)}")


def to_pil_image(pic, mode=None):
    if isinstance(pic, torch.Tensor):
        arr = pic.detach().cpu()
        if arr.is_floating_point():
            arr = arr.mul(255).byte()
        arr = arr.numpy()
        if arr.ndim == 3:
            arr = arr.transpose(1, 2, 0)
            if arr.shape[2] == 1:
                arr = arr[:, :, 0]
        pic = arr
    img = Image.fromarray(np.asarray(pic))
    return img.convert(mode) if mode else img


def __getattr__(name: str):
    raise AttributeError(f"torchvision shim: transforms.functional.{name} is not implemented "
                         "(only what the authors' inference path needs is)")
