"""Drawing pseudo-labels: object colours, mask overlays with contours, the uncertainty heatmap.

Pure numpy/OpenCV on H×W×3 uint8 RGB arrays; no Parquet, no Ray. (The stored U-map PNG itself
is jobs/codec.py's.)"""
from __future__ import annotations

import functools

import cv2
import numpy as np

#: Weight of the object colour inside its mask.
FILL_ALPHA = 0.5
#: At most this much heatmap over the frame where U = 1 (``--uncertainty blend``).
BLEND_ALPHA = 0.7
UNCERTAINTY_MODES = ("beside", "blend", "none")


# -- colours -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    from vos_core.io import davis_palette

    return davis_palette()


def object_colour(object_id: int) -> tuple[int, int, int]:
    """RGB of an object: the DAVIS palette entry of its id, so an object keeps its colour across
    frames, videos and tools. Ids above 255 wrap onto 1..255 (never the black of background)."""
    oid = int(object_id)
    index = oid if oid < 256 else 1 + (oid - 1) % 255
    return tuple(int(c) for c in _palette()[index])


# -- drawing -----------------------------------------------------------------------------

def contour_thickness(height: int, width: int) -> int:
    """1 px up to ~800p, 2 px at 1080p: the line stays visible once a large frame is scaled down."""
    return max(1, round(min(height, width) / 540))


def draw_objects(rgb: np.ndarray, masks: list[tuple[int, np.ndarray]], alpha: float = FILL_ALPHA) -> np.ndarray:
    """``rgb`` with each (object_id, H×W mask) filled in its colour at ``alpha`` and outlined."""
    out = rgb.astype(np.float32)
    for oid, mask in masks:
        m = mask.astype(bool)
        out[m] = out[m] * (1.0 - alpha) + np.asarray(object_colour(oid), np.float32) * alpha
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    thickness = contour_thickness(*rgb.shape[:2])
    for oid, mask in masks:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        if contours:  # RETR_LIST: holes are outlined too
            cv2.drawContours(out, contours, -1, object_colour(oid), thickness)
    return out


def heatmap(u_small: np.ndarray, height: int, width: int) -> np.ndarray:
    """H×W×3 RGB heatmap (inferno: dark = confident, yellow = U near 1) of a stored U map."""
    u = cv2.resize(u_small, (width, height), interpolation=cv2.INTER_LINEAR)
    grey = np.clip(np.rint(u * 255.0), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def blend_uncertainty(rgb: np.ndarray, u_small: np.ndarray, alpha: float = BLEND_ALPHA) -> np.ndarray:
    """The heatmap laid over ``rgb`` in proportion to U: confident areas stay as they are."""
    h, w = rgb.shape[:2]
    u = cv2.resize(u_small, (w, h), interpolation=cv2.INTER_LINEAR)[..., None] * alpha
    return np.clip(np.rint(rgb * (1.0 - u) + heatmap(u_small, h, w) * u), 0, 255).astype(np.uint8)


def compose(rgb: np.ndarray, masks: list[tuple[int, np.ndarray]], u_small: np.ndarray | None,
            mode: str = "beside") -> np.ndarray:
    """One rendered frame. ``mode``: ``beside`` (overlay | heatmap, twice as wide; a grey panel
    when the frame has no U map, so every frame of a video has the same size), ``blend``, ``none``."""
    if mode not in UNCERTAINTY_MODES:
        raise ValueError(f"uncertainty mode must be one of {UNCERTAINTY_MODES}, got {mode!r}")
    overlay = draw_objects(rgb, masks)
    h, w = rgb.shape[:2]
    if mode == "blend":
        return overlay if u_small is None else blend_uncertainty(overlay, u_small)
    if mode == "beside":
        panel = heatmap(u_small, h, w) if u_small is not None else np.full_like(overlay, 64)
        return np.concatenate([overlay, panel], axis=1)
    return overlay


def label(rgb: np.ndarray, text: str) -> np.ndarray:
    """``text`` in the top-left corner, white on a dark box (readable on any frame)."""
    out = rgb.copy()
    scale = max(0.35, min(rgb.shape[:2]) / 400)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (tw + 6, th + base + 6), (0, 0, 0), -1)
    cv2.putText(out, text, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def fit(rgb: np.ndarray, max_side: int | None = None, height: int | None = None) -> np.ndarray:
    """``rgb`` scaled down so its longest side is at most ``max_side``, or to ``height`` rows."""
    h, w = rgb.shape[:2]
    scale = 1.0
    if height:
        scale = height / h
    elif max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
    if scale == 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def hstack(images: list[np.ndarray], gap: int = 4, fill: int = 255) -> np.ndarray:
    """Images of one height side by side with a ``gap`` of ``fill`` between them."""
    h = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        if i:
            parts.append(np.full((h, gap, 3), fill, np.uint8))
        if im.shape[0] < h:
            im = np.concatenate([im, np.full((h - im.shape[0], im.shape[1], 3), fill, np.uint8)])
        parts.append(im)
    return np.concatenate(parts, axis=1)


def write_png(path: str, rgb: np.ndarray) -> None:
    """RGB array to a PNG file (cv2 writes BGR)."""
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: cannot write PNG")
