"""Draws one committed video's pseudo-labels over its frames: an mp4, a GIF or a folder of PNGs.

Reads the video's ``masks`` rows (RLE) and ``frames`` rows (U map) of its committed attempt
through the read layer (its own files only, however large the run), reopens the frames from
``videos.video_uri`` and draws each object in its DAVIS palette colour with a contour; the
uncertainty map is drawn beside the frame, blended over it, or not at all. Frames are decoded
and written one at a time (a GIF, which Pillow writes in one go, is held in memory: prefer mp4
or a folder for long videos).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..codec import decode_u_map
from ..errors import BadInput
from ..layout import video_key
from .draw import compose, fit, write_png
from .read import FrameLabels, VideoLabels, labelled_frames, load_labels, open_layout, png_name

DEFAULT_FPS = 10.0  # slower than real time: a reviewer follows the contours


class RenderError(BadInput):
    """The request cannot be drawn (an unusable ``--to``, a writer that fails)."""


def rendered(labels: VideoLabels, mode: str = "beside", storage=None) -> Iterator[tuple[FrameLabels, np.ndarray]]:
    """(frame labels, drawn RGB frame) for each labelled frame, in order."""
    for f, rgb in labelled_frames(labels, storage):
        u = decode_u_map(f.u_map_png) if f.u_map_png is not None and mode != "none" else None
        yield f, compose(rgb, labels.decoded(f), u, mode)


# -- writers ---------------------------------------------------------------------------------

class PngFolderWriter:
    """One PNG per frame, named like the frame (as ``jobs.query --decode-video`` names masks)."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def write(self, frame: FrameLabels, rgb: np.ndarray) -> None:
        write_png(os.path.join(self.folder, png_name(frame.name, frame.index)), rgb)

    def close(self) -> None:
        pass


class Mp4Writer:
    """H.264 is not in every OpenCV build; MPEG-4 part 2 (``mp4v``) is, and plays in browsers and VLC."""

    def __init__(self, path: str, fps: float):
        self.path, self.fps = path, fps
        self._writer = None
        self._size = None

    def write(self, frame: FrameLabels, rgb: np.ndarray) -> None:
        import cv2

        h, w = rgb.shape[:2]
        if self._writer is None:
            self._size = (w, h)
            self._writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self._size)
            if not self._writer.isOpened():
                raise RenderError(f"{self.path}: OpenCV cannot write an mp4 here (mp4v codec missing, or the "
                                  f"folder does not exist)")
        if (w, h) != self._size:  # VideoWriter would silently drop the frame
            raise RenderError(f"frame {frame.index} is {w}x{h}, not {self._size[0]}x{self._size[1]} like the first")
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


class GifWriter:
    """Pillow (palette-quantised frames, held until the end), else imageio."""

    def __init__(self, path: str, fps: float):
        self.path, self.duration_ms = path, max(20, round(1000 / fps))
        if importlib.util.find_spec("PIL") is not None:
            self.backend = "pillow"
        elif importlib.util.find_spec("imageio") is not None:
            self.backend = "imageio"
        else:
            raise RenderError("writing a GIF needs Pillow or imageio (pip install pillow); or render to .mp4 or a "
                              "folder/")
        self._frames: list = []

    def write(self, frame: FrameLabels, rgb: np.ndarray) -> None:
        if self.backend == "pillow":
            from PIL import Image

            # quantised now: 1 byte per pixel kept instead of 3
            self._frames.append(Image.fromarray(rgb).quantize(256, method=Image.Quantize.FASTOCTREE))
        else:
            self._frames.append(rgb)

    def close(self) -> None:
        if not self._frames:
            return
        if self.backend == "pillow":
            first, *rest = self._frames
            first.save(self.path, save_all=True, append_images=rest, duration=self.duration_ms, loop=0)
        else:
            import imageio.v2 as imageio

            imageio.mimsave(self.path, self._frames, duration=self.duration_ms / 1000, loop=0)


def writer_for(to: str, fps: float):
    """The writer ``--to`` asks for: ``*.mp4``, ``*.gif``, or a folder (trailing ``/``, an existing
    folder, or a name without extension)."""
    ext = os.path.splitext(to.rstrip("/"))[1].lower()
    if to.endswith(("/", os.sep)) or os.path.isdir(to) or not ext:
        return PngFolderWriter(to)
    parent = os.path.dirname(os.path.abspath(to))
    if ext == ".mp4":
        os.makedirs(parent, exist_ok=True)
        return Mp4Writer(to, fps)
    if ext == ".gif":
        writer = GifWriter(to, fps)
        os.makedirs(parent, exist_ok=True)
        return writer
    raise RenderError(f"--to {to}: expected a .mp4 or .gif file, or a folder/ for PNGs")


@dataclass
class RenderResult:
    to: str
    frames: int
    uncertainty: str  # the mode actually drawn


def render_video(output: str, video_id: str, to: str | None = None, uncertainty: str = "beside",
                 fps: float = DEFAULT_FPS, max_side: int | None = None, storage=None) -> RenderResult:
    """Draws ``video_id`` of the run at ``output`` to ``to`` (default ``<video_key>.mp4``)."""
    labels = load_labels(open_layout(output, storage), video_id)
    if not labels.frames:
        raise RenderError(f"{video_id!r}: no frames rows")
    if uncertainty != "none" and not labels.has_u_maps:
        print(f"note: {video_id!r} has no stored U maps (u_map_png); drawing the masks only", file=sys.stderr)
        uncertainty = "none"
    to = to or f"{video_key(video_id)}.mp4"
    writer = writer_for(to, fps)
    n = 0
    try:
        for frame, rgb in rendered(labels, uncertainty, storage):
            writer.write(frame, fit(rgb, max_side=max_side))
            n += 1
    finally:
        writer.close()
    return RenderResult(to, n, uncertainty)
