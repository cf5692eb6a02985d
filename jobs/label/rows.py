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
            "bank_size": o.bank_size, "bank_evicted": o.bank_evicted}


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
              "annotated": annotated}
             for o, rle in zip(objects, encode_rles(mask, [o.object_id for o in objects]))]
    u_objects = [o.u_mean for o in objects if o.u_mean is not None]
    frame = {**common, "frame_name": frame_name, "height": h, "width": w, "annotated": annotated,
             "num_objects": len(objects), "u_mean": _f32(stats.u_mean),
             "u_frac_uncertain": _f32(stats.u_frac_uncertain), "u_threshold": _f32(stats.u_threshold),
             "u_max_object": max(u_objects) if u_objects else None,
             "bank_size": int(sum(o.bank_size for o in stats.objects)),
             "u_map_png": encode_u_map(result.uncertainty) if result.uncertainty is not None else None,
             "objects": [_object_stats(o) for o in stats.objects]}
    return masks, frame


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
