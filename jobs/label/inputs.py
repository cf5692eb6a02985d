"""The job's input: the manifest's videos, and inputs that would not outlive the job.

Under ``ray job submit --working-dir .`` the driver runs inside Ray's temporary copy of the
working dir (``.../runtime_resources/working_dir_files/_ray_pkg_<hash>/``), which Ray deletes
once no job uses it. A URI recorded there (``videos.video_uri``, the output itself) would point
nowhere afterwards and ``vos render`` would fail. So: the sample corpus, the no-argument input,
is copied next to the output (``<output>/_sample_corpus/``) and read from there; any other
manifest, video or output inside the package is refused before anything runs.
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import storage as st
from ..layout import SAMPLE_COPY, Layout
from .manifest import ManifestError, Tasks, read_tasks

SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "sample_corpus"
#: The tiny corpus the no-argument run uses (see jobs/sample_corpus/README.md).
SAMPLE_MANIFEST = str(SAMPLE_CORPUS / "manifest.csv")
RAY_PACKAGE_PREFIX = "_ray_pkg_"  # ray._private.runtime_env.packaging.RAY_PKG_PREFIX


def ray_package_root() -> Path | None:
    """The root of Ray's temporary working-dir package this code runs from, else None."""
    root = Path(__file__).resolve().parents[2]
    return root if root.name.startswith(RAY_PACKAGE_PREFIX) else None


def inside(uri: str | None, root: Path | None) -> bool:
    """Whether ``uri`` is a local path under ``root`` (None: never)."""
    if root is None or not uri or st.protocol_of(uri) != "file":
        return False
    path = Path(uri.split("://", 1)[1] if "://" in uri else uri).resolve()
    return path == root or root in path.parents


def temporary_package_message(what: str, uri: str, root: Path) -> str:
    return (f"{what} {uri} is inside Ray's temporary working-dir package ({root}), which Ray deletes after "
            f"the job, so the run would record paths that disappear. Put it where the job, its workers and later "
            f"readers all reach it (s3://..., gs://..., a shared or absolute local path)")


def is_sample(manifest: str) -> bool:
    return st.protocol_of(manifest) == "file" and Path(manifest).resolve() == Path(SAMPLE_MANIFEST).resolve()


def load_tasks(manifest: str, storage: st.Storage, davis_resolution: str | None = None,
               limit: int | None = None, shard: tuple[int, int] | None = None) -> Tasks:
    """The manifest's videos: slice ``shard`` = (index, count) of its rows, then the first ``limit``
    (the whole manifest is checked either way); refuses videos inside a temporary Ray package (the
    sample corpus excepted: see ``copy_sample``)."""
    tasks = read_tasks(manifest, storage, davis_resolution=davis_resolution)
    if shard is not None:
        tasks = tasks.shard(*shard)
    tasks = tasks.head(limit)
    root = ray_package_root()
    if root is not None and not is_sample(manifest):
        if inside(manifest, root):
            raise ManifestError(temporary_package_message("the manifest", manifest, root))
        for t in tasks:
            for uri in (t.video_uri, t.annotations_uri):
                if inside(uri, root):
                    raise ManifestError(temporary_package_message(f"video {t.video_id!r}: {uri}", uri, root))
    return tasks


def needs_sample_copy(manifest: str) -> bool:
    return is_sample(manifest) and ray_package_root() is not None


def copy_sample(layout: Layout) -> str:
    """Copies the sample corpus to ``<output>/_sample_corpus/``; returns the copy's manifest URI."""
    fs = layout.fs
    dest = layout.path(SAMPLE_COPY)
    for src in sorted(p for p in SAMPLE_CORPUS.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        target = f"{dest}/{src.relative_to(SAMPLE_CORPUS).as_posix()}"
        st.makedirs(fs, os.path.dirname(target))
        fs.put_file(str(src), target)
    return layout.url(SAMPLE_COPY, "manifest.csv")
