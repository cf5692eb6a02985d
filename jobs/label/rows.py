"""Row encoding: one ``vos_core.FrameResult`` into its ``masks`` rows and its ``frames`` row,
and the fields of a ``videos`` commit record (columns: jobs/schema.py)."""
from __future__ import annotations

import json
import os
import socket

import numpy as np

from ..codec import encode_rles, encode_u_map
from ..layout import video_key
from ..schema import SCHEMA_VERSION, SCHEMAS


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _f32(x):
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


def _object_stats(o) -> dict:
    return {"object_id": o.object_id, "area": o.area, "bbox": o.bbox, "mean_prob": _f32(o.mean_prob),
            "u_mean": _f32(o.u_mean), "u_p95": _f32(o.u_p95), "band_area": o.band_area,
            "bank_size": o.bank_size, "bank_evicted": o.bank_evicted, "quality": _f32(getattr(o, "quality", None)),
            "components": int(getattr(o, "components", 0) or 0)}


def _quality(o) -> float | None:
    return _f32(getattr(o, "quality", None))


def frame_rows(result, frame_name: str | None, common: dict) -> tuple[list[dict], dict]:
    """(masks rows, frames row) of one frame; ``common``: video_id, run_id, attempt."""
    mask = result.mask
    h, w = mask.shape
    stats = result.stats
    annotated = bool(result.annotated)
    common = {**common, "frame_index": int(result.index)}
    objects = [o for o in stats.objects if o.object_id != 0]  # background has no masks row
    masks = [{**common, "object_id": o.object_id, "height": h, "width": w, "rle": rle, "area": o.area,
              "bbox": o.bbox, "mean_prob": _f32(o.mean_prob), "u_mean": _f32(o.u_mean), "u_p95": _f32(o.u_p95),
              "quality": _quality(o), "annotated": annotated}
             for o, rle in zip(objects, encode_rles(mask, [o.object_id for o in objects]))]
    u_objects = [o.u_mean for o in objects if o.u_mean is not None]
    q_objects = [q for q in map(_quality, objects) if q is not None]
    frame = {**common, "frame_name": frame_name, "height": h, "width": w, "annotated": annotated,
             "num_objects": len(objects), "u_mean": _f32(stats.u_mean),
             "u_frac_uncertain": _f32(stats.u_frac_uncertain), "u_threshold": _f32(stats.u_threshold),
             "u_max_object": max(u_objects) if u_objects else None,
             "quality": min(q_objects) if q_objects else None,  # a frame is as good as its weakest mask
             "bank_size": int(sum(o.bank_size for o in stats.objects)),
             "u_map_png": encode_u_map(result.uncertainty) if result.uncertainty is not None else None,
             "objects": [_object_stats(o) for o in stats.objects]}
    return masks, frame


class VideoSummary:
    """Per-video quality and protocol figures of a ``videos`` record, accumulated frame by frame
    (``add`` each FrameResult; ``fields(session)`` at the end)."""

    def __init__(self, review_quality: float, calibrated: bool):
        self.review_quality = float(review_quality)
        self.calibrated = bool(calibrated)
        self._sum, self._n, self._min = 0.0, 0, None
        self.frames_below = 0

    def add(self, result) -> None:
        given = set(getattr(result, "new_objects", ()) or ()) | set(getattr(result, "corrected_objects", ()) or ())
        weakest = None
        for o in result.stats.objects:
            q = _quality(o) if o.object_id != 0 else None
            if q is None:
                continue
            weakest = q if weakest is None else min(weakest, q)
            if o.object_id in given:  # a given mask is not a prediction: its quality (1) says nothing
                continue
            self._sum, self._n = self._sum + q, self._n + 1
            self._min = q if self._min is None else min(self._min, q)
        if weakest is not None and weakest < self.review_quality and not result.annotated:
            self.frames_below += 1  # as vos report flags: a frame with a given mask is not sent to review

    def fields(self, session=None) -> dict:
        out = {"quality_mean": self._sum / self._n if self._n else None, "quality_min": self._min,
               "frames_below_quality": self.frames_below, "review_quality": self.review_quality,
               "quality_calibrated": self.calibrated}
        if session is not None:  # what the annotation protocol used (vos_core.VideoSession)
            out.update(annotation_frames=len(session.annotation_frames), annotation_objects=len(session.objects),
                       correction_frames=len(session.correction_frames))
        return out


def video_row(video_id: str, run_id: str, **fields) -> dict:
    """A ``videos`` record: the identity columns plus ``fields`` (``settings`` as a dict is stored as JSON)."""
    row = {"video_id": video_id, "video_key": video_key(video_id), "run_id": run_id,
           "schema_version": SCHEMA_VERSION, "worker": worker_name()}
    if isinstance(fields.get("settings"), dict):
        fields["settings"] = json.dumps(fields["settings"], sort_keys=True)
    row.update(fields)
    unknown = set(row) - set(SCHEMAS["videos"].names)
    if unknown:
        raise ValueError(f"unknown videos columns: {sorted(unknown)}")
    return row
