"""Draws one committed video's pseudo-labels over its frames: an mp4, a GIF or a folder of PNGs.

    vos render --output ./vos_output/run1 --video judo-a --to judo-a.mp4
    vos render --output s3://bucket/labels/run1 --video judo-a --to frames/ --uncertainty blend
    python -m jobs.render ...            (the same)

Reads the video's ``masks`` rows (RLE) and ``frames`` rows (U map) of its committed attempt
with pyarrow (its own files only, however large the run), reopens the frames from
``videos.video_uri`` and draws each object in its DAVIS palette colour with a contour; the
uncertainty map is drawn beside the frame, blended over it, or not at all. Frames are decoded
and written one at a time (a GIF, which Pillow writes in one go, is held in memory: prefer mp4
or a folder for long videos).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from . import storage as st

DEFAULT_FPS = 10.0  # slower than real time: a reviewer follows the contours


class RenderError(ValueError):
    """The request cannot be drawn (unknown or failed video, unusable ``--to``, frames missing)."""


@dataclass
class FrameLabels:
    index: int
    name: str | None
    masks: list[tuple[int, str]] = field(default_factory=list)  # (object_id, RLE) of non-empty masks
    u_map_png: bytes | None = None


@dataclass
class VideoLabels:
    video_id: str
    video_uri: str
    height: int
    width: int
    frames: list[FrameLabels]

    @property
    def has_u_maps(self) -> bool:
        return any(f.u_map_png is not None for f in self.frames)

    def decoded(self, frame: FrameLabels) -> list[tuple[int, np.ndarray]]:
        from .commit import decode_rle

        return [(oid, decode_rle(rle, self.height, self.width)) for oid, rle in frame.masks]


def open_layout(output: str, storage=None):
    """The ``Layout`` of the run at ``output``, with the shard count its ``_run.json`` records."""
    from .commit import DEFAULT_SHARDS, Layout, read_run

    storage = storage or st.Storage.from_env()
    layout = Layout(output, storage)
    run = read_run(layout)
    if run is None:
        if not layout.table_files("videos"):
            raise RenderError(f"{layout.url()}: no pseudo-label output here (no _run.json, no videos/)")
        run = {}
    return Layout(output, storage, shards=int(run.get("shards", DEFAULT_SHARDS)))


def _read_video_file(layout, table: str, video_id: str, columns: list[str]):
    """The rows of one video's file of ``table`` (one file per video: no scan of the whole run)."""
    import pyarrow.parquet as pq

    path = layout.data_path(table, video_id)
    if not layout.fs.exists(path):
        return None
    # by path and filesystem, not from a Python file object: reading one of those on pyarrow's
    # threads while torch is loaded can abort the process at exit ("terminate called ...")
    names = pq.read_schema(path, filesystem=layout.fs).names
    present = [c for c in columns if c in names]  # older outputs lack newer columns
    return pq.read_table(path, filesystem=layout.fs, columns=present)


def _rows_of(table, attempt: str, frame_indices):
    import pyarrow.compute as pc

    keep = pc.equal(table["attempt"], attempt)
    if frame_indices is not None:
        keep = pc.and_(keep, pc.is_in(table["frame_index"], value_set=_int_array(frame_indices)))
    return table.filter(keep)


def _int_array(values):
    import pyarrow as pa

    return pa.array(sorted(set(map(int, values))), pa.int32())


def load_labels(layout, video_id: str, frame_indices: list[int] | None = None) -> VideoLabels:
    """One committed video's frames and masks (``frame_indices``: only these frames) from its own
    files under ``layout`` (``open_layout``): only rows of the attempt its ``videos`` record
    committed, as the ``masks``/``frames`` views of jobs.query keep."""
    rec = _read_video_file(layout, "videos", video_id, ["status", "error", "video_uri", "height", "width", "attempt"])
    if rec is None or not rec.num_rows:
        raise RenderError(f"{video_id!r}: no such video in {layout.url()}")
    status, error, video_uri, height, width, attempt = (rec[c][0].as_py() for c in rec.column_names)
    if status != "ok":
        raise RenderError(f"{video_id!r}: the video failed ({error}), it has no labels to draw")
    ft = _read_video_file(layout, "frames", video_id, ["frame_index", "frame_name", "u_map_png", "attempt"])
    mt = _read_video_file(layout, "masks", video_id, ["frame_index", "object_id", "rle", "area", "attempt"])
    if ft is None or mt is None:
        raise RenderError(f"{video_id!r}: committed, but its frames or masks file is missing from {layout.url()}")
    ft, mt = _rows_of(ft, attempt, frame_indices), _rows_of(mt, attempt, frame_indices)
    pngs = ft["u_map_png"].to_pylist() if "u_map_png" in ft.column_names else [None] * ft.num_rows
    frames = {i: FrameLabels(i, name, [], png)
              for i, name, png in zip(ft["frame_index"].to_pylist(), ft["frame_name"].to_pylist(), pngs)}
    for i, oid, rle, area in zip(*(mt[c].to_pylist() for c in ("frame_index", "object_id", "rle", "area"))):
        if area:
            frames[i].masks.append((oid, rle))
    for f in frames.values():
        f.masks.sort()
    return VideoLabels(video_id, video_uri, height, width, [frames[i] for i in sorted(frames)])


def frames_at(source, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB) of the frames ``indices`` (sorted): read directly from a folder, decoded in
    order (stopping after the last one) from a video file."""
    if not indices:
        return
    if hasattr(source, "read"):  # a folder of images: random access
        for i in indices:
            if i >= len(source):
                raise RenderError(f"{source.uri}: has {len(source)} frames, but the labels reach frame {indices[-1]}")
            yield i, source.read(i)
        return
    wanted = iter(indices)
    nxt = next(wanted)
    with contextlib.closing(iter(source)) as decoded:
        for i, rgb in enumerate(decoded):
            if i == nxt:
                yield i, rgb
                nxt = next(wanted, None)
                if nxt is None:
                    return
    raise RenderError(f"{source.uri}: the video ends before frame {nxt}, which has labels")


def rendered(labels: VideoLabels, mode: str = "beside", storage=None) -> Iterator[tuple[FrameLabels, np.ndarray]]:
    """(frame labels, drawn RGB frame) for each labelled frame, in order."""
    from vos_core.io import open_frames

    from .visual import compose, decode_u_map

    storage = storage or st.Storage.from_env()
    by_index = {f.index: f for f in labels.frames}
    with open_frames(labels.video_uri, storage_options=storage.options_for(labels.video_uri)) as source:
        for i, rgb in frames_at(source, sorted(by_index)):
            if rgb.shape[:2] != (labels.height, labels.width):
                raise RenderError(f"{labels.video_uri}: frame {i} is {rgb.shape[1]}x{rgb.shape[0]}, but its labels "
                                  f"are {labels.width}x{labels.height} (the video changed since it was labelled?)")
            f = by_index[i]
            u = decode_u_map(f.u_map_png) if f.u_map_png is not None and mode != "none" else None
            yield f, compose(rgb, labels.decoded(f), u, mode)


# -- writers ---------------------------------------------------------------------------------

class PngFolderWriter:
    """One PNG per frame, named like the frame (as ``jobs.query --decode-video`` names masks)."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def write(self, frame: FrameLabels, rgb: np.ndarray) -> None:
        from .query import _png_name
        from .visual import write_png

        write_png(os.path.join(self.folder, _png_name(frame.name, frame.index)), rgb)

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
    from .commit import video_key
    from .visual import fit

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


# -- command line ------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="the run's --output URI (local path, file://, s3:// ...)")
    p.add_argument("--video", required=True, metavar="VIDEO_ID", help="the video_id to draw")
    p.add_argument("--to", help="out.mp4, out.gif, or dir/ for one PNG per frame (default: <video_key>.mp4)")
    p.add_argument("--uncertainty", choices=["beside", "blend", "none"], default="beside",
                   help="draw the U map as a heatmap beside the frame (default), blended over it, or not")
    p.add_argument("--fps", type=float, default=DEFAULT_FPS, help=f"frame rate of mp4/gif (default {DEFAULT_FPS:g})")
    p.add_argument("--max-side", type=int, default=None, help="scale frames down to this longest side")
    st.add_storage_arguments(p)


def run(args) -> int:

    storage = st.Storage.from_env(args.endpoint_url, args.storage_options)
    result = render_video(args.output, args.video, args.to, args.uncertainty, args.fps, args.max_side, storage)
    print(f"wrote {result.frames} frame(s) of {args.video!r} to {result.to} (uncertainty: {result.uncertainty})")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("render", help="draw one video's pseudo-labels (mp4, gif or PNGs)",
                       description="Draws a committed video's masks (and uncertainty) over its frames.")
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    from .cli import run_command

    p = argparse.ArgumentParser(prog="python -m jobs.render", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run, command="render")
    return run_command(p.parse_args(argv))


if __name__ == "__main__":
    # run the package's copy of this module, whose RenderError is the one jobs.cli catches
    from jobs.render import main as package_main

    sys.exit(package_main())
