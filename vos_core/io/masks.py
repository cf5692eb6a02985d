"""Object-id maps: reading annotation PNGs, writing DAVIS palette PNGs.

An id map is an H×W integer array, 0 = background, 1..N = objects. On disk it
is a palette ('P') PNG whose palette *indices* are the ids (DAVIS, YouTube-VOS)
or a greyscale PNG whose grey values are the ids. Colours are never decoded
back to ids: an RGB PNG is refused.
"""
from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Iterator

import numpy as np
from PIL import Image

from ..errors import AnnotationError
from . import _fs

#: Modes whose pixel values are ids. 'PA'/'LA' carry an alpha band, which is dropped.
_ID_MODES = ("P", "PA", "L", "LA", "1", "I", "I;16", "I;16B", "I;16L")


def davis_palette() -> np.ndarray:
    """256×3 uint8: the palette DAVIS masks use (the PASCAL VOC colour map:
    the bits of the id, three at a time, spread over R, G and B from the top bit down)."""
    ids = np.arange(256)
    pal = np.zeros((256, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            pal[:, channel] |= bit << (7 - shift)
    return pal.astype(np.uint8)


def _decode_id_map(data: bytes, source: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            if mode not in _ID_MODES:
                raise AnnotationError(
                    f"{source}: is a {mode} image, but an annotation must be an id map: a palette (P) or greyscale "
                    f"(L/I) PNG whose pixel values are object ids (0 = background); convert colours to ids first")
            if mode in ("PA", "LA"):
                img = img.getchannel(0)
            ids = np.array(img)
    except AnnotationError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise AnnotationError(f"{source}: cannot decode PNG ({type(e).__name__}: {e})") from e
    if ids.dtype == bool:
        ids = ids.astype(np.uint8)
    if ids.size and (ids.min() < 0 or ids.max() > 65535):
        raise AnnotationError(f"{source}: object ids must lie in 0..65535, found {ids.min()}..{ids.max()}")
    return ids.astype(np.uint8 if not ids.size or ids.max() <= 255 else np.uint16)


def read_id_map(path_or_bytes: str | os.PathLike | bytes, storage_options: dict | None = None) -> np.ndarray:
    """Reads an id-map PNG (path, fsspec URL or the file's bytes) as H×W uint8,
    or uint16 when an id exceeds 255. Raises AnnotationError naming the file."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return _decode_id_map(bytes(path_or_bytes), "<PNG bytes>")
    uri = str(path_or_bytes)
    try:
        fs, path = _fs.resolve(uri, storage_options)
        data = _fs.read_bytes(fs, path)
    except FileNotFoundError as e:
        raise AnnotationError(f"{uri}: annotation file not found") from e
    except Exception as e:
        raise AnnotationError(f"{uri}: cannot read ({type(e).__name__}: {e})") from e
    return _decode_id_map(data, uri)


def write_palette_png(path: str | os.PathLike, id_map: np.ndarray, storage_options: dict | None = None) -> None:
    """Writes an H×W id map as a PNG to a path or fsspec URL: a DAVIS palette PNG when every
    id is in 0..255 (what DAVIS tools expect), else a 16-bit greyscale PNG (ids up to 65535,
    which a palette cannot hold). read_id_map reads both back exactly."""
    ids = np.asarray(id_map)
    if ids.ndim != 2:
        raise ValueError(f"{path}: expected an H×W id map, got shape {ids.shape}")
    if ids.dtype != bool and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{path}: expected integer ids, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() > 65535):
        raise ValueError(f"{path}: an id-map PNG holds ids 0..65535, got {ids.min()}..{ids.max()}")
    buf = io.BytesIO()
    if ids.size == 0 or ids.max() <= 255:
        img = Image.fromarray(ids.astype(np.uint8))
        img.putpalette(davis_palette().tobytes())  # turns the 'L' image into 'P' with the same indices
        img.save(buf, format="PNG")
    else:
        Image.fromarray(ids.astype(np.uint16)).save(buf, format="PNG")  # mode I;16: 16-bit grey
    fs, fpath = _fs.resolve(path, storage_options)
    if _fs.is_local(fs):  # object stores have no folders to create
        fs.makedirs(fs._parent(fpath), exist_ok=True)
    with fs.open(fpath, "wb") as f:
        f.write(buf.getvalue())


class Annotations(Mapping):
    """Mapping {frame index: H×W id map}, each PNG read when it is accessed
    (nothing is cached, so memory does not grow with the number of masks)."""

    def __init__(self, uri: str, fs, paths: dict[int, str]):
        self.uri = uri
        self._fs = fs
        self._paths = dict(sorted(paths.items()))

    def __getitem__(self, t: int) -> np.ndarray:
        path = self._paths[t]  # KeyError for frames without a mask, as a Mapping should
        try:
            data = _fs.read_bytes(self._fs, path)
        except Exception as e:
            raise AnnotationError(f"{self.source(t)}: cannot read ({type(e).__name__}: {e})") from e
        return _decode_id_map(data, self.source(t))

    def __iter__(self) -> Iterator[int]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, t) -> bool:  # without reading the PNG (Mapping's default would)
        return t in self._paths

    def source(self, t: int) -> str:
        """The PNG holding frame ``t``'s mask, for error messages."""
        return _fs.display(self._fs, self._paths[t])

    def validate(self) -> None:
        """Reads every PNG's header now, so an unusable one fails before a long run
        rather than when its frame comes up."""
        for t, path in self._paths.items():
            try:
                with self._fs.open(path, "rb") as f, Image.open(f) as img:
                    mode = img.mode
            except Exception as e:
                raise AnnotationError(f"{self.source(t)}: cannot read as a PNG ({type(e).__name__}: {e})") from e
            if mode not in _ID_MODES:
                raise AnnotationError(f"{self.source(t)}: is a {mode} image, but an annotation must be an id map "
                                      f"(palette or greyscale PNG of object ids)")

    def __repr__(self) -> str:
        return f"Annotations({self.uri!r}, frames={list(self._paths)})"


def _frame_index(stem: str, frame_names: list[str] | None, positions: dict[str, int] | None, shown: str) -> int:
    if positions is not None:
        if stem not in positions:
            near = ", ".join(frame_names[:3]) + (", ..." if len(frame_names) > 3 else "")
            raise AnnotationError(f"{shown}: '{stem}' is not the name of a frame (frames are named {near})")
        return positions[stem]
    try:
        return int(stem)
    except ValueError:
        raise AnnotationError(f"{shown}: cannot tell which frame '{stem}' is: name masks by frame number "
                              f"(00000.png) or pass the frame names") from None


def load_annotations(uri: str | os.PathLike, frame_names: list[str] | None = None,
                     storage_options: dict | None = None) -> Annotations:
    """Annotations from a folder of id-map PNGs named like their frames, or from
    one PNG (the mask of frame 0). A mask's frame index is the position of its
    file stem in ``frame_names`` when given, else the stem as an integer.
    PNGs are read lazily; see Annotations.validate to check them all up front."""
    uri = str(uri)
    try:
        fs, path = _fs.resolve(uri, storage_options)
        is_dir = fs.isdir(path)
        is_file = not is_dir and fs.isfile(path)
    except Exception as e:
        raise AnnotationError(f"{uri}: cannot access ({type(e).__name__}: {e})") from e
    if is_file:
        if _fs.stem_and_ext(path)[1] != ".png":
            raise AnnotationError(f"{uri}: expected a PNG id map or a folder of them")
        return Annotations(uri, fs, {0: path})
    if not is_dir:
        raise AnnotationError(f"{uri}: no such annotation file or folder")
    files = _fs.list_files(fs, path, (".png",))
    if not files:
        raise AnnotationError(f"{uri}: no PNG masks in this folder")
    positions = {n: i for i, n in enumerate(frame_names)} if frame_names is not None else None
    paths = {}
    for p in files:
        t = _frame_index(_fs.stem_and_ext(p)[0], frame_names, positions, _fs.display(fs, p))
        if t in paths:  # e.g. 5.png next to 00005.png
            raise AnnotationError(f"{_fs.display(fs, p)}: frame {t} already has a mask, "
                                  f"{_fs.display(fs, paths[t])}")
        paths[t] = p
    return Annotations(uri, fs, paths)
