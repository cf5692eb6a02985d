"""Frames and annotations into the network's input: working size, padding to /16, id maps at working size."""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AnnotationError, VOSInputError


def pad_to_multiple(x: torch.Tensor, d: int = 16) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pads the last two dims up to a multiple of ``d``; the smaller half
    goes on top/left, as the authors do. Returns (padded, (left, right, top, bottom))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % d, (-w) % d
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return (F.pad(x, pad) if any(pad) else x), pad


def unpad(x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    left, right, top, bottom = pad
    h, w = x.shape[-2:]
    return x[..., top: h - bottom, left: w - right]


def working_size(h: int, w: int, short_side: int | None) -> tuple[int, int]:
    """(h, w) scaled down so the shorter side is at most ``short_side`` (None: unchanged). A smaller input
    keeps its size: upscaling adds no detail, only compute (Cutie's ``max_internal_size`` does the same)."""
    if not short_side or min(h, w) <= short_side:
        return h, w
    s = short_side / min(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def check_frame(frame, index: int) -> np.ndarray:
    if isinstance(frame, torch.Tensor):
        frame = frame.cpu().numpy()
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise VOSInputError(f"frame {index}: expected H×W×3 uint8 RGB, got shape {frame.shape} {frame.dtype}")
    return frame


def frame_tensor(frame: np.ndarray, work_hw: tuple[int, int], device, dtype, channels_last: bool) -> torch.Tensor:
    """H×W×3 uint8 RGB -> 1×3×h×w in [0, 1] at the working size."""
    if frame.shape[:2] != work_hw:
        frame = cv2.resize(frame, (work_hw[1], work_hw[0]), interpolation=cv2.INTER_AREA)
    t = torch.from_numpy(np.ascontiguousarray(frame)).to(device, non_blocking=True)
    t = t.permute(2, 0, 1).unsqueeze(0).to(dtype).div_(255)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _keep_small_objects(small: np.ndarray, full: np.ndarray, ids: list[int]) -> np.ndarray:
    """Nearest-neighbour downscaling can drop an object of a few pixels. Each id of ``full`` missing from
    ``small`` gets the working-size pixel onto which most of its pixels fall (an object is never lost
    to resizing)."""
    present = set(np.unique(small).tolist())
    missing = [i for i in ids if i not in present]
    if not missing:
        return small
    small = small.copy()
    sy, sx = small.shape[0] / full.shape[0], small.shape[1] / full.shape[1]
    for i in missing:
        ys, xs = np.nonzero(full == i)
        cells = np.minimum((ys * sy).astype(np.int64), small.shape[0] - 1) * small.shape[1] + \
            np.minimum((xs * sx).astype(np.int64), small.shape[1] - 1)
        cell = int(np.bincount(cells).argmax())
        small.flat[cell] = i
    return small


def annotation_at(ann, in_hw: tuple[int, int], work_hw: tuple[int, int], source: str,
                  resize_annotations: bool) -> np.ndarray:
    """An annotation (H×W id map, as given) checked against its frame's size and brought to the working
    size (nearest; objects too small to survive it keep one pixel). Returns int64 ids."""
    ann = np.asarray(ann)
    if ann.ndim == 3 and ann.shape[2] == 1:
        ann = ann[..., 0]
    if ann.ndim != 2:
        raise AnnotationError(f"{source}: expected an H×W id map, got shape {ann.shape}")
    if ann.dtype == bool:
        ann = ann.astype(np.uint8)
    if not np.issubdtype(ann.dtype, np.integer):
        raise AnnotationError(f"{source}: expected integer object ids, got {ann.dtype}")
    if ann.size and (ann.min() < 0 or ann.max() > 65535):
        raise AnnotationError(f"{source}: object ids must lie in 0..65535, found {ann.min()}..{ann.max()}")
    ann = ann.astype(np.uint16)
    ids = [int(i) for i in np.unique(ann) if i != 0]
    if ann.shape != in_hw:
        if not resize_annotations:
            raise AnnotationError(
                f"{source}: annotation is {ann.shape[1]}x{ann.shape[0]} but its frame is {in_hw[1]}x{in_hw[0]} "
                f"(pass resize_annotations=True / --resize-annotations to resize it to the frame)")
        full = ann
        ann = cv2.resize(ann, (in_hw[1], in_hw[0]), interpolation=cv2.INTER_NEAREST)
        ann = _keep_small_objects(ann, full, ids)
    if ann.shape != work_hw:
        full = ann
        ann = cv2.resize(ann, (work_hw[1], work_hw[0]), interpolation=cv2.INTER_NEAREST)
        ann = _keep_small_objects(ann, full, ids)
    return ann.astype(np.int64)
