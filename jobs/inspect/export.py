"""A committed video's masks back to files: one id-map PNG per frame (``jobs.query --decode-video``)."""
from __future__ import annotations

import os

import numpy as np

from .. import storage as st
from .read import load_labels, open_layout, png_name


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
