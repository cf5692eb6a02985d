"""A COCO instances JSON written as it streams: images and annotations go to two temporary files
while the rows come, and are joined into one JSON at the end, so memory does not grow with the
export. Masks stay the Parquet's compressed RLE strings (``segmentation.counts``), so
``pycocotools.coco.COCO(...).annToMask(ann)`` decodes exactly the ``masks`` row."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

from .export_select import FrameSel, MaskSel

#: One class for every object of the ``coco`` format: object ids are instances of a video, not classes.
OBJECT_CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


def object_category_name(object_id: int) -> str:
    """The label of an object in the review set (one per object id, so that it survives an
    annotation tool's round trip; corrections.py reads it back)."""
    return f"object_{int(object_id)}"


class CocoWriter:
    """Add images and annotations as they come; ``finish`` writes the JSON (through ``Dest``)."""

    def __init__(self, info: dict, categories: list[dict]):
        self.info, self.categories = info, categories
        self._dir = tempfile.mkdtemp(prefix="vos-coco-")
        self._parts = {k: open(os.path.join(self._dir, k), "w", encoding="utf-8") for k in ("images", "annotations")}
        self._count = {"images": 0, "annotations": 0}

    def _append(self, part: str, record: dict) -> int:
        self._count[part] += 1
        record["id"] = self._count[part]
        f = self._parts[part]
        f.write(("," if self._count[part] > 1 else "") + json.dumps(record, separators=(",", ":")))
        return record["id"]

    @property
    def images(self) -> int:
        return self._count["images"]

    @property
    def annotations(self) -> int:
        return self._count["annotations"]

    def add_image(self, frame: FrameSel, info: dict, file_name: str, **extra) -> int:
        return self._append("images", {"file_name": file_name, "height": frame.height, "width": frame.width,
                                       "video_id": frame.video_id, "video_key": info["video_key"],
                                       "frame_index": frame.frame_index, "frame_name": frame.frame_name, **extra})

    def add_annotation(self, image_id: int, frame: FrameSel, mask: MaskSel, category_id: int, **extra) -> int | None:
        """One object's mask (None, and nothing written, for an empty one: the object is absent)."""
        if not mask.area:
            return None
        return self._append("annotations", {
            "image_id": image_id, "category_id": category_id,
            "segmentation": {"size": [frame.height, frame.width], "counts": mask.rle},
            "area": int(mask.area), "bbox": [int(v) for v in mask.bbox], "iscrowd": 0,
            "video_id": frame.video_id, "frame_index": frame.frame_index, "object_id": mask.object_id,
            **({} if mask.quality is None else {"score": float(mask.quality)}), **extra})

    def finish(self, dest, rel: str) -> None:
        for f in self._parts.values():
            f.close()
        out = os.path.join(self._dir, "coco.json")
        with open(out, "w", encoding="utf-8") as f:
            head = json.dumps({"info": self.info, "licenses": [], "categories": self.categories})
            f.write(head[:-1] + ', "images": [')
            for part in ("images", "annotations"):
                with open(os.path.join(self._dir, part), encoding="utf-8") as src:
                    shutil.copyfileobj(src, f)
                f.write('], "annotations": [' if part == "images" else "]}")
        dest.put(out, rel)
        self.close()

    def close(self) -> None:
        for f in self._parts.values():
            if not f.closed:
                f.close()
        shutil.rmtree(self._dir, ignore_errors=True)
