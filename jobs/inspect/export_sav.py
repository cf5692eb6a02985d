"""SA-V-style masklet JSON, one file per video: the format of SAM 2's data engine (SA-V train's
``{video_id}_manual.json`` / ``_auto.json``, facebookresearch/sam2 ``sav_dataset/README.md``).

Matched: ``masklet`` is a list over the exported frames of a list over the video's objects of
COCO compressed RLE dicts ``{"size": [H, W], "counts": str}`` (an object absent from a frame gets
the RLE of an empty mask, as SA-V does), ``masklet_id`` the objects in that inner order, and the
per-masklet fields ``masklet_size_rel``/``_abs``/``_bucket`` (mean area where visible;
small < 32², medium < 96²), ``masklet_visibility_changes``, ``masklet_first_appeared_frame``,
``masklet_frame_count``, ``masklet_edited_frame_count`` (0: nothing edited by people),
``masklet_type`` (``"auto"``: pseudo-labels), ``masklet_stability_score`` (null), ``masklet_num``,
and the ``video_*`` fields (unknown ones null: ``video_duration``, ``video_environment``).
Not matched: SA-V annotates every 4th frame of 24 fps videos; this writes the frames the export
selected, and says which in ``masklet_frame_index`` / ``masklet_frame_name`` (additions, as is
``masklet_quality``, the per-mask quality estimate, same nesting as ``masklet``), so a loader
that steps through the video by a fixed stride must use those instead.
"""
from __future__ import annotations

import json

import numpy as np
from pycocotools import mask as mask_utils

from .export_select import VideoSel


def _empty_rle(h: int, w: int) -> str:
    return mask_utils.encode(np.zeros((h, w, 1), np.uint8, order="F"))[0]["counts"].decode("ascii")


def _bucket(area: float) -> str:
    return "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"


def masklet_json(video: VideoSel) -> dict:
    info, frames = video.info, video.frames
    h, w = int(info["height"]), int(info["width"])
    ids = sorted({m.object_id for f in frames for m in f.masks})
    empty = _empty_rle(h, w)
    masklet, quality, areas = [], [], {o: [] for o in ids}
    for f in frames:
        by_id = {m.object_id: m for m in f.masks}
        masklet.append([{"size": [h, w], "counts": by_id[o].rle if o in by_id else empty} for o in ids])
        quality.append([by_id[o].quality if o in by_id else None for o in ids])
        for o in ids:
            areas[o].append(int(by_id[o].area) if o in by_id else 0)
    visible = {o: np.asarray(a) > 0 for o, a in areas.items()}
    size_abs = [float(np.mean(np.asarray(areas[o])[visible[o]])) if visible[o].any() else 0.0 for o in ids]
    first = [float(frames[int(np.argmax(visible[o]))].frame_index) if visible[o].any() else None for o in ids]
    changes = []
    for o in ids:
        v = visible[o]
        start = int(np.argmax(v)) if v.any() else len(v)
        changes.append(int(np.count_nonzero(v[start + 1:] != v[start:-1])) if start < len(v) else 0)
    return {
        "video_id": info["video_id"], "video_duration": None,
        "video_frame_count": float(info["frames"]) if info.get("frames") is not None else None,
        "video_height": float(h), "video_width": float(w), "video_resolution": float(h * w),
        "video_environment": None, "video_split": None,
        "masklet": masklet, "masklet_id": ids,
        "masklet_size_rel": [a / (h * w) for a in size_abs], "masklet_size_abs": size_abs,
        "masklet_size_bucket": [_bucket(a) for a in size_abs], "masklet_visibility_changes": changes,
        "masklet_first_appeared_frame": first, "masklet_frame_count": [len(frames)] * len(ids),
        "masklet_edited_frame_count": [0] * len(ids), "masklet_type": ["auto"] * len(ids),
        "masklet_stability_score": [None] * len(ids), "masklet_num": len(ids),
        # additions: which frames the outer list holds, and the quality of each mask
        "masklet_frame_index": [f.frame_index for f in frames], "masklet_frame_name": [f.frame_name for f in frames],
        "masklet_quality": quality,
        "vos_run_id": info.get("run_id"), "quality_calibrated": info.get("quality_calibrated"),
    }


def masklet_bytes(video: VideoSel) -> bytes:
    return json.dumps(masklet_json(video), separators=(",", ":")).encode("utf-8")
