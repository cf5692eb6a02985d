"""A run's labels out to the formats other tools read (``vos export``), and one committed video's
masks back to id-map PNGs (``jobs.query --decode-video``).

    export_run(output, to, "davis" | "coco" | "sav" | "review", where=None, with_images=False)

* ``davis``: ``Annotations/<video>/<frame>.png`` palette PNGs (16-bit greyscale when an id
  exceeds 255), the DAVIS / YouTube-VOS layout XMem, Cutie and STCN train from;
  ``JPEGImages/<video>/<frame>.jpg`` with ``with_images``;
* ``coco``: ``annotations.json``, COCO instances (images = frames, one annotation per non-empty
  object mask: compressed RLE, ``video_id``, ``frame_index``, ``object_id``, ``score`` = quality,
  one category ``object``); ``images/<video_key>__<frame_index>.jpg`` with ``with_images``;
* ``sav``: ``<video>.json`` per video, SA-V's masklet format (jobs/inspect/export_sav.py);
  ``JPEGImages/<video>/<frame>.jpg`` with ``with_images``;
* ``review``: the frames to review with their images and pre-annotations for CVAT and Label
  Studio (jobs/inspect/export_review.py).

Rows: the committed ``masks`` rows matching ``where`` (jobs/inspect/export_select.py), streamed
one video at a time; the destination is a local folder or any fsspec URL (``s3://``).
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import numpy as np

from .. import storage as st
from ..layout import read_run
from .export_coco import OBJECT_CATEGORY, CocoWriter
from .export_files import Dest, flat_image_name, frame_images, frame_stem, id_map_png, video_dir
from .export_review import ReviewWriter, review_selection
from .export_sav import masklet_bytes
from .export_select import Selection, SelectionError  # noqa: F401  (SelectionError: part of the API)
from .read import load_labels, open_layout, png_name

FORMATS = ("davis", "coco", "sav", "review")


@dataclass
class ExportResult:
    to: str
    format: str
    videos: int = 0
    frames: int = 0
    masks: int = 0
    images: int = 0


def _info(output: str, layout) -> dict:
    run = read_run(layout) or {}
    return {"description": f"vos pseudo-labels of run {run.get('run_id')}", "version": "1",
            "date_created": dt.datetime.now(dt.timezone.utc).isoformat(), "vos_run_id": run.get("run_id"),
            "vos_output": layout.url(), "vos_model_checksum": run.get("model_checksum")}


def _progress(total: int, fmt: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc=f"export {fmt}", disable=not enabled, leave=False)


def export_run(output: str, to: str, fmt: str, where: str | None = None, with_images: bool = False,
               storage: st.Storage | None = None, progress: bool = True) -> ExportResult:
    """Writes the run at ``output`` to ``to`` as ``fmt``; returns what was written. Raises
    SelectionError for a ``where`` DuckDB refuses, ReadError when there is no run."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    storage = storage or st.Storage.from_env()
    layout = open_layout(output, storage)
    info = _info(output, layout)
    dest = Dest(to, storage)
    sel = review_selection(output, storage, where) if fmt == "review" else Selection(output, storage, where)
    result = ExportResult(dest.url(), fmt)
    with sel:
        _, total = sel.count()
        writer = None
        if fmt == "coco":
            writer = CocoWriter(info, [OBJECT_CATEGORY])
        elif fmt == "review":
            writer = ReviewWriter(dest, storage, info, sel.object_ids())
        try:
            with _progress(total, fmt, progress) as bar:
                for video in sel.videos():
                    result.videos += 1
                    result.masks += sum(len(f.masks) for f in video.frames)
                    if fmt == "review":
                        result.images += writer.add_video(video)
                    else:
                        result.images += _write_video(fmt, video, dest, storage, with_images, writer)
                    result.frames += len(video.frames)
                    bar.update(len(video.frames))
            if writer is not None:
                writer.finish(dest, "annotations.json") if fmt == "coco" else writer.finish()
        finally:
            if writer is not None:
                writer.close()
    return result


def _write_images(video, dest, storage, name_of) -> int:
    n = 0
    with frame_images(video.info, [f.frame_index for f in video.frames], storage) as images:
        for i, data in images:
            dest.write(name_of(i), data)
            n += 1
    return n


def _write_video(fmt: str, video, dest: Dest, storage, with_images: bool, coco: CocoWriter | None) -> int:
    info, vdir = video.info, video_dir(video.info)
    stems = {f.frame_index: frame_stem(f.frame_name, f.frame_index) for f in video.frames}
    if fmt == "davis":
        for f in video.frames:
            dest.write(f"Annotations/{vdir}/{stems[f.frame_index]}.png", id_map_png(f.id_map()))
    elif fmt == "sav":
        dest.write(f"{vdir}.json", masklet_bytes(video))
    else:  # coco
        for f in video.frames:
            image_id = coco.add_image(f, info, flat_image_name(info["video_key"], f.frame_index))
            for m in f.masks:
                coco.add_annotation(image_id, f, m, OBJECT_CATEGORY["id"])
    if not with_images:
        return 0
    if fmt == "coco":
        return _write_images(video, dest, storage, lambda i: f"images/{flat_image_name(info['video_key'], i)}")
    return _write_images(video, dest, storage, lambda i: f"JPEGImages/{vdir}/{stems[i]}.jpg")


def decode_video(output: str, video_id: str, to: str, storage: st.Storage | None = None) -> list[str]:
    """Writes one committed video's masks as id-map PNGs (DAVIS palette; 16-bit greyscale when an
    id exceeds 255) named like its frames. Returns the paths written."""
    import cv2
    from vos_core.io import write_palette_png

    labels = load_labels(open_layout(output, storage), video_id)
    wide = any(oid > 255 for f in labels.frames for oid, _ in f.masks)
    os.makedirs(to, exist_ok=True)
    written = []
    for frame in labels.frames:
        ids = np.zeros((labels.height, labels.width), dtype=np.uint16 if wide else np.uint8)
        for oid, bits in labels.decoded(frame):
            ids[bits.astype(bool)] = oid
        path = os.path.join(to, png_name(frame.name, frame.index))
        if wide:
            cv2.imwrite(path, ids)
        else:
            write_palette_png(path, ids)
        written.append(path)
    return written
