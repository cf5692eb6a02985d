"""Streaming frame readers: a folder of images or a video file, local or on any fsspec filesystem.

    frames = open_frames("s3://bucket/videos/judo.mp4")
    for rgb in frames:          # H×W×3 uint8 RGB, decoded one at a time
        ...

Nothing holds the whole video: a folder reads one image's bytes per step, a
video is streamed by OpenCV (a remote video is first copied to a temporary
file, because OpenCV cannot read from a file object).
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import weakref
from typing import Iterator

import cv2
import numpy as np
from PIL import Image

from ..errors import VideoReadError
from . import _fs

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")

#: A video may decode a few frames fewer than its container reports (edit lists,
#: estimated counts in mkv/webm). A larger shortfall means decoding broke off.
_SHORTFALL_FRAMES = 2
_SHORTFALL_FRACTION = 0.02


class FrameSource:
    """Iterable over a video's frames as H×W×3 uint8 RGB arrays, one at a time.

    ``names``: frame names (file stems for a folder, ``00000``… for a video whose
    frame count is known, else None). ``len()`` works when the count is known.
    Each ``iter()`` starts again from the first frame."""

    kind: str = ""

    def __init__(self, uri: str, count: int | None, names: list[str] | None):
        self.uri = uri
        self._count = count
        self.names = names

    def __len__(self) -> int:
        if self._count is None:
            raise TypeError(f"{self.uri}: the number of frames is not known before decoding")
        return self._count

    def name(self, i: int) -> str:
        """Name of frame ``i`` (also past the end of ``names``, when a video's count was short)."""
        if self.names is not None and i < len(self.names):
            return self.names[i]
        return f"{i:05d}"

    def source(self, i: int) -> str:
        raise NotImplementedError

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r}, frames={self._count})"


def decode_image(data: bytes, source: str) -> np.ndarray:
    """Decodes an image file's bytes to H×W×3 uint8 RGB.

    PIL rather than cv2.imdecode: PIL refuses a truncated JPEG (libjpeg via
    OpenCV returns it grey-filled with only a warning), and it does not apply
    EXIF rotation, so frames keep the pixel order their masks were drawn on."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise VideoReadError(f"{source}: cannot decode image ({type(e).__name__}: {e})") from e
    return np.array(rgb)  # a writable copy (torch.from_numpy warns on read-only arrays)


class ImageFolderSource(FrameSource):
    """Frames from image files in one folder, sorted by file name."""

    kind = "folder"

    def __init__(self, fs, path: str, uri: str):
        self._fs = fs
        self._paths = _fs.list_files(fs, path, IMAGE_EXTENSIONS)
        if not self._paths:
            raise VideoReadError(f"{uri}: no frames in this folder (no {'/'.join(IMAGE_EXTENSIONS)} files)")
        names = [_fs.stem_and_ext(p)[0] for p in self._paths]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:  # 00000.jpg next to 00000.png: which one is frame 0?
            raise VideoReadError(f"{uri}: several images share a frame name: {', '.join(dupes[:5])}")
        super().__init__(uri, len(self._paths), names)

    def source(self, i: int) -> str:
        return _fs.display(self._fs, self._paths[i])

    def read(self, i: int) -> np.ndarray:
        try:
            data = _fs.read_bytes(self._fs, self._paths[i])
        except Exception as e:
            raise VideoReadError(f"{self.source(i)}: cannot read ({type(e).__name__}: {e})") from e
        return decode_image(data, self.source(i))

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self._paths)):
            yield self.read(i)


class VideoFileSource(FrameSource):
    """Frames of a video file decoded by OpenCV.

    The count comes from CAP_PROP_FRAME_COUNT, which is the container's claim:
    exact for most mp4/mov, estimated from duration × fps for some mkv/webm, so
    it may be off by a frame or two. After a complete pass it is replaced by the
    number actually decoded. Decoding that yields no frame, or stops well short
    of the claim, raises VideoReadError (OpenCV just reports end-of-stream)."""

    kind = "video"

    def __init__(self, fs, path: str, uri: str):
        self._cleanup = None
        if _fs.is_local(fs):
            self._file = path
        else:  # the copy lives as long as this object (or until close())
            tmpdir = tempfile.mkdtemp(prefix="vos_video_")
            self._cleanup = weakref.finalize(self, shutil.rmtree, tmpdir, ignore_errors=True)
            self._file = os.path.join(tmpdir, "video" + _fs.stem_and_ext(path)[1])
            try:
                fs.get_file(path, self._file)
            except Exception as e:
                raise VideoReadError(f"{uri}: cannot copy the video locally ({type(e).__name__}: {e})") from e
        cap = self._open(uri)
        reported = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        cap.release()
        count = reported if reported > 0 else None
        self._reported = count
        super().__init__(uri, count, [f"{i:05d}" for i in range(count)] if count else None)

    def _open(self, uri: str | None = None) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(self._file)
        if not cap.isOpened():
            cap.release()
            raise VideoReadError(f"{uri or self.uri}: cannot open as a video (not a video, truncated or corrupt)")
        return cap

    def source(self, i: int) -> str:
        return f"{self.uri} (frame {i})"

    def __iter__(self) -> Iterator[np.ndarray]:
        cap = self._open()
        decoded = 0
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                decoded += 1
        finally:  # also runs when the consumer stops early
            cap.release()
        self._check_complete(decoded)

    def _check_complete(self, decoded: int) -> None:
        if decoded == 0:
            raise VideoReadError(f"{self.uri}: no frame could be decoded (corrupt or unsupported video)")
        expected = self._reported
        if expected and expected - decoded > max(_SHORTFALL_FRAMES, _SHORTFALL_FRACTION * expected):
            raise VideoReadError(
                f"{self.uri}: decoding stopped after frame {decoded - 1} but the file claims {expected} frames "
                f"(truncated or corrupt video)")
        self._count = decoded
        self.names = [f"{i:05d}" for i in range(decoded)]

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()


def open_frames(uri: str | os.PathLike, storage_options: dict | None = None) -> FrameSource:
    """Opens a folder of frames (jpg/jpeg/png, sorted by name) or a video file
    (mp4/avi/mov/mkv/webm): a local path, ``file://`` or any fsspec URL.
    Raises VideoReadError naming the path when it is missing or unusable."""
    uri = str(uri)
    try:
        fs, path = _fs.resolve(uri, storage_options)
        is_dir = fs.isdir(path)
        is_file = not is_dir and fs.isfile(path)
    except Exception as e:  # bad protocol, unreachable bucket, permissions...
        raise VideoReadError(f"{uri}: cannot access ({type(e).__name__}: {e})") from e
    if is_dir:
        return ImageFolderSource(fs, path, uri)
    if not is_file:
        raise VideoReadError(f"{uri}: no such file or folder")
    ext = _fs.stem_and_ext(path)[1]
    if ext not in VIDEO_EXTENSIONS:
        raise VideoReadError(f"{uri}: expected a folder of frames or a video file ({', '.join(VIDEO_EXTENSIONS)}), "
                             f"not a '{ext or 'extension-less'}' file")
    return VideoFileSource(fs, path, uri)
