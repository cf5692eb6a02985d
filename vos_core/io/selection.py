"""Which annotations start a video: the start frame and the masks from it on."""
from __future__ import annotations

from collections.abc import Mapping

from ..errors import AnnotationError


class SelectedAnnotations(Mapping):
    """Annotations re-indexed for a start frame: {frame index: id map}, keeping ``.source``."""

    def __init__(self, ann, index_map: dict[int, int]):
        self._ann = ann
        self._map = dict(sorted(index_map.items()))

    def __getitem__(self, t):
        return self._ann[self._map[t]]

    def __iter__(self):
        return iter(self._map)

    def __len__(self):
        return len(self._map)

    def __contains__(self, t):
        return t in self._map

    def source(self, t):
        source = getattr(self._ann, "source", None)
        return source(self._map[t]) if source else f"annotation of frame {t}"


def select_annotations(ann: Mapping, uri: str, start_frame: int | None) -> tuple[Mapping, int]:
    """(annotations to use, start frame). One PNG (``uri`` ends in .png) is the mask of ``start_frame``
    (0 by default); a folder's masks before ``start_frame`` are dropped and ``start_frame`` must have one
    (default: the first annotated frame)."""
    if str(uri).rstrip("/").lower().endswith(".png"):
        start = start_frame or 0
        return SelectedAnnotations(ann, {start: next(iter(ann))}), start
    keys = sorted(ann)
    if not keys:
        raise AnnotationError(f"{uri}: no annotation")
    if start_frame is None:
        return ann, keys[0]
    if start_frame not in ann:
        shown = ", ".join(str(k) for k in keys[:8]) + (" ..." if len(keys) > 8 else "")
        raise AnnotationError(f"{uri}: no mask for start_frame {start_frame} (masks for frames {shown})")
    return SelectedAnnotations(ann, {t: t for t in keys if t >= start_frame}), start_frame
