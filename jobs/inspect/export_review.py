"""The review set: the frames a person should check, as images plus the pseudo-labels as
pre-annotations, for CVAT and Label Studio (importing them: docs/review-loop.md).

Which frames: by default those ``vos report`` flags for review (jobs/inspect/flags.py): frames
whose weakest mask's quality is below the run's ``review_quality``, or, for runs without a quality
estimate, those a relative rule flags. ``--where`` replaces that: frames with a ``masks`` row
matching it. Each frame comes with all its objects (a reviewer corrects frames, not single masks).

Written: ``images/<video_key>__<frame_index>.jpg``; ``annotations.json`` (COCO instances, one
category ``object_<id>`` per object id, RLE masks, ``score`` = quality, ``attributes`` as CVAT and
Datumaro read them); ``cvat_labels.json`` (the task's labels, for CVAT's raw label editor);
``label_studio_tasks.json`` and ``label_studio_config.xml`` (brush pre-annotations).
The edited COCO JSON goes back to the job as ``--corrections`` (jobs/label/corrections.py).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import pyarrow as pa

from .draw import object_colour
from .export_coco import CocoWriter, object_category_name
from .export_files import flat_image_name, frame_images
from .export_labelstudio import label_config, task
from .export_select import Selection, VideoSel
from .flags import REVIEW_QUALITY, review_frames
from .report import load_entries

ANNOTATIONS = "annotations.json"
IMAGES = "images"
LS_TASKS = "label_studio_tasks.json"
LS_CONFIG = "label_studio_config.xml"
CVAT_LABELS = "cvat_labels.json"


def review_keys(con) -> pa.Table:
    """(video_id, frame_index) of the frames the report flags for review."""
    keys = []
    for e in load_entries(con):
        if e.series is not None:
            keys += [(e.row["video_id"], t) for t in review_frames(e.flags, e.series.has_quality)]
    return pa.table({"video_id": pa.array([k[0] for k in keys], pa.string()),
                     "frame_index": pa.array([k[1] for k in keys], pa.int32())})


def review_selection(output: str, storage, where: str | None) -> Selection:
    """Every object of the frames to review: those with a ``masks`` row matching ``where``, else
    the report's flagged frames."""
    sel = Selection(output, storage, where=where, whole_frames=True)
    if (where or "").strip():
        return sel
    if sel.has_quality:  # the report's rule in SQL: nothing of the run is held here
        sel.frame_keys_sql = (f"SELECT f.video_id, f.frame_index FROM frames AS f JOIN videos AS v USING (video_id) "
                              f"WHERE NOT f.annotated AND f.quality < coalesce(v.review_quality, {REVIEW_QUALITY})")
    else:  # a run without quality: the report's relative rules, over its per-frame series
        sel.frame_keys = review_keys(sel.con)
    return sel


def _hex(object_id: int) -> str:
    return "#{:02x}{:02x}{:02x}".format(*object_colour(object_id))


class ReviewWriter:
    """Writes the review set video by video (images at once; the JSON files stream into temporary
    files and are published by ``finish``)."""

    def __init__(self, dest, storage, info: dict, object_ids: list[int]):
        self.dest, self.storage, self.info = dest, storage, info
        self.ids = list(object_ids)
        self.category = {o: i + 1 for i, o in enumerate(self.ids)}
        self.coco = CocoWriter(info, [{"id": self.category[o], "name": object_category_name(o),
                                       "supercategory": "object"} for o in self.ids])
        self._dir = tempfile.mkdtemp(prefix="vos-review-")
        self._tasks = open(os.path.join(self._dir, LS_TASKS), "w", encoding="utf-8")
        self._ntasks = 0

    def add_video(self, video: VideoSel) -> int:
        """The video's frames: their images, COCO records and Label Studio tasks. Returns frames written."""
        info = video.info
        by_index = {f.frame_index: f for f in video.frames}
        with frame_images(info, list(by_index), self.storage) as images:
            for i, data in images:
                f, name = by_index[i], flat_image_name(info["video_key"], i)
                self.dest.write(f"{IMAGES}/{name}", data)
                self._add_frame(info, f, name)
        return len(by_index)

    def _add_frame(self, info: dict, f, name: str) -> None:
        qualities = [m.quality for m in f.masks if m.quality is not None and m.area]
        frame_q = min(qualities) if qualities else None
        image_id = self.coco.add_image(f, info, name, **({} if frame_q is None else {"quality": frame_q}))
        for m in f.masks:
            attributes = {"object_id": m.object_id, **({} if m.quality is None else {"quality": float(m.quality)})}
            self.coco.add_annotation(image_id, f, m, self.category.get(m.object_id, 0), attributes=attributes)
        quality = {m.object_id: m.quality for m in f.masks}
        masks = [(object_category_name(oid), bits, quality[oid]) for oid, bits in f.decoded() if bits.any()]
        record = task(f"/data/local-files/?d={IMAGES}/{name}", masks, str(self.info.get("vos_run_id")), frame_q,
                      {"video_id": f.video_id, "frame_index": f.frame_index})
        self._tasks.write(("," if self._ntasks else "[") + json.dumps(record, separators=(",", ":")))
        self._ntasks += 1

    def finish(self) -> dict:
        counts = {"images": self.coco.images, "annotations": self.coco.annotations, "objects": len(self.ids)}
        self.coco.finish(self.dest, ANNOTATIONS)
        self._tasks.write("]" if self._ntasks else "[]")
        self._tasks.close()
        self.dest.put(self._tasks.name, LS_TASKS)
        names = [object_category_name(o) for o in self.ids]
        self.dest.write(LS_CONFIG, label_config(names, [_hex(o) for o in self.ids]).encode())
        self.dest.write(CVAT_LABELS, json.dumps([{"name": n, "color": _hex(o), "type": "mask", "attributes": []}
                                                 for n, o in zip(names, self.ids)], indent=1).encode())
        self.close()
        return counts

    def close(self) -> None:
        if not self._tasks.closed:
            self._tasks.close()
        self.coco.close()
        shutil.rmtree(self._dir, ignore_errors=True)
