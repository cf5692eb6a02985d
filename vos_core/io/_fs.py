"""Small fsspec helpers shared by the readers: one place that turns a URI into
(filesystem, path) and a path back into the string shown in error messages."""
from __future__ import annotations

import os
import posixpath

import fsspec
from fsspec.implementations.local import LocalFileSystem


def resolve(uri: str | os.PathLike, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path, ``file://`` or any fsspec URL."""
    fs, path = fsspec.core.url_to_fs(str(uri), **(storage_options or {}))
    return fs, path.rstrip("/") or path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The path as a user would write it: plain for local files, with the protocol otherwise."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def stem_and_ext(path: str) -> tuple[str, str]:
    stem, ext = posixpath.splitext(basename(path))
    return stem, ext.lower()


def entries(fs: fsspec.AbstractFileSystem, path: str) -> list[dict]:
    """``fs.ls(path, detail=True)``, with symbolic links followed: fsspec's local listing types a
    link as "other" whatever it points to, so a results folder assembled from links to sequence
    folders (or a frame folder of linked JPEGs) would look empty. A dangling link is left out."""
    out = []
    for e in fs.ls(path, detail=True):
        if e.get("islink"):
            try:
                e = {**fs.info(e["name"]), "name": e["name"]}  # info() of a path follows the link
            except OSError:
                continue
        out.append(e)
    return out


def list_files(fs: fsspec.AbstractFileSystem, path: str, extensions: tuple[str, ...]) -> list[str]:
    """Files directly in ``path`` whose extension (case-insensitive) is in
    ``extensions``, sorted by file name."""
    found = [e["name"] for e in entries(fs, path)
             if e.get("type") == "file" and stem_and_ext(e["name"])[1] in extensions]
    return sorted(found, key=basename)


def list_dirs(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """Sub-folders directly in ``path``, sorted by name."""
    return sorted((e["name"].rstrip("/") for e in entries(fs, path) if e.get("type") == "directory"),
                  key=basename)


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    return fs.cat_file(path)
