"""Sequences of a dataset in the DAVIS layout:

    <root>/JPEGImages/<seq>/00000.jpg ...      <root>/Annotations/<seq>/00000.png ...
or, as the DAVIS downloads are, with a resolution level in between:
    <root>/JPEGImages/480p/<seq>/...           <root>/Annotations/480p/<seq>/...
"""
from __future__ import annotations

import os

from ..errors import VOSInputError
from . import _fs
from .frames import IMAGE_EXTENSIONS

#: Chosen when a root holds several resolutions, as the DAVIS benchmark is run at 480p.
PREFERRED_RESOLUTION = "480p"


def _sequence_parent(fs, folder: str, resolution: str | None, uri: str) -> str:
    """The folder whose sub-folders are the sequences: ``folder`` itself, or
    ``folder/<resolution>`` when ``folder`` holds resolution levels."""
    if resolution:
        return f"{folder}/{resolution}"
    subdirs = _fs.list_dirs(fs, folder)
    first = subdirs[0] if subdirs else None
    if first is None or _fs.list_files(fs, first, IMAGE_EXTENSIONS) or not _fs.list_dirs(fs, first):
        return folder  # the sub-folders hold images, not folders: they are the sequences
    names = [_fs.basename(d) for d in subdirs]
    if PREFERRED_RESOLUTION in names:
        return f"{folder}/{PREFERRED_RESOLUTION}"
    if len(names) == 1:
        return subdirs[0]
    raise VOSInputError(f"{uri}: several resolution folders ({', '.join(names)}); pick one with resolution=")


def davis_sequences(root: str | os.PathLike, resolution: str | None = None,
                    storage_options: dict | None = None) -> list[tuple[str, str, str]]:
    """[(sequence name, frames URI, annotations URI)] sorted by name, for a DAVIS-layout root
    (local or fsspec URL). Every sequence with frames must have an annotation folder."""
    uri = str(root).rstrip("/")
    try:
        fs, path = _fs.resolve(uri, storage_options)
        has_layout = fs.isdir(f"{path}/JPEGImages") and fs.isdir(f"{path}/Annotations")
    except Exception as e:
        raise VOSInputError(f"{uri}: cannot access ({type(e).__name__}: {e})") from e
    if not has_layout:
        raise VOSInputError(f"{uri}: not a DAVIS-layout root (expected JPEGImages/ and Annotations/ folders)")
    frames_parent = _sequence_parent(fs, f"{path}/JPEGImages", resolution, uri)
    level = frames_parent[len(f"{path}/JPEGImages"):]  # "" or "/480p"
    ann_parent = f"{path}/Annotations{level}"
    names = [_fs.basename(d) for d in _fs.list_dirs(fs, frames_parent)] if fs.isdir(frames_parent) else []
    if not names:
        raise VOSInputError(f"{_fs.display(fs, frames_parent)}: no sequence folders")
    annotated = {_fs.basename(d) for d in _fs.list_dirs(fs, ann_parent)} if fs.isdir(ann_parent) else set()
    missing = [n for n in names if n not in annotated]
    if missing:
        raise VOSInputError(f"{_fs.display(fs, ann_parent)}: no annotation folder for sequence(s) "
                            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return [(n, _fs.display(fs, f"{frames_parent}/{n}"), _fs.display(fs, f"{ann_parent}/{n}")) for n in names]
