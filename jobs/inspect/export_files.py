"""Where an export writes (a local folder or any fsspec URL such as ``s3://``), how it names a
video's and a frame's files, and the frames' images (JPEG) and id maps (PNG) it writes there."""
from __future__ import annotations

import posixpath
import re

import cv2
import numpy as np

from .. import storage as st
from ..codec import encode_id_map_png
from .read import ReadError, frames_at, png_name

JPEG_QUALITY = 95
_SAFE = re.compile(r"[A-Za-z0-9_.-]+")


def video_dir(info: dict) -> str:
    """A video's folder name: its id when that is a safe file name, else its ``video_key``."""
    vid = str(info["video_id"])
    return vid if _SAFE.fullmatch(vid) and vid not in (".", "..") else info["video_key"]


def frame_stem(frame_name: str | None, frame_index: int) -> str:
    return png_name(frame_name, frame_index)[: -len(".png")]


def flat_image_name(video_key: str, frame_index: int) -> str:
    """One image name per frame of a run, without folders (annotation tools flatten or prefix
    paths): ``<video_key>__<frame_index>.jpg``. corrections.py reads it back."""
    return f"{video_key}__{int(frame_index):05d}.jpg"


class Dest:
    """A destination folder: local (created) or any fsspec URL."""

    def __init__(self, uri: str, storage: st.Storage | None = None):
        self.storage = storage or st.Storage.from_env()
        self.uri = str(uri)
        self.fs, self.root = self.storage.resolve(self.uri)
        st.makedirs(self.fs, self.root)

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def url(self, rel: str = "") -> str:
        return st.display(self.fs, self.path(rel) if rel else self.root)

    def write(self, rel: str, data: bytes) -> None:
        path = self.path(rel)
        st.makedirs(self.fs, posixpath.dirname(path))
        self.fs.pipe_file(path, data)

    def put(self, local_file: str, rel: str) -> None:
        path = self.path(rel)
        st.makedirs(self.fs, posixpath.dirname(path))
        self.fs.put_file(local_file, path)


def id_map_png(ids: np.ndarray) -> bytes:
    return encode_id_map_png(ids)


def jpeg(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("cannot encode a JPEG")
    return data.tobytes()


def frame_images(info: dict, indices: list[int], storage: st.Storage) -> "_FrameImages":
    """(frame index, JPEG bytes) of ``indices`` of a video, reopened from ``videos.video_uri``: a
    folder's JPEG files are copied as they are (no re-encoding), other frames encoded at quality
    ``JPEG_QUALITY``; a frame whose size differs from its labels is refused."""
    return _FrameImages(info, sorted(set(indices)), storage)


class _FrameImages:
    def __init__(self, info, indices, storage):
        self.info, self.indices, self.storage = info, indices, storage

    def __enter__(self):
        from vos_core.io import open_frames

        uri = self.info["video_uri"]
        self._opened = open_frames(uri, storage_options=self.storage.options_for(uri))
        self._source = self._opened.__enter__()
        return self._iter()

    def __exit__(self, *exc):
        self._opened.__exit__(*exc)

    def _iter(self):
        src, h, w = self._source, self.info["height"], self.info["width"]
        for i, rgb in frames_at(src, self.indices):
            if rgb.shape[:2] != (h, w):
                raise ReadError(f"{self.info['video_uri']}: frame {i} is {rgb.shape[1]}x{rgb.shape[0]}, but its "
                                f"labels are {w}x{h} (the video changed since it was labelled?)")
            original = src.source(i) if hasattr(src, "read") else ""
            if original.lower().endswith((".jpg", ".jpeg")):
                fs, path = self.storage.resolve(original)
                yield i, fs.cat_file(path)
            else:
                yield i, jpeg(rgb)
