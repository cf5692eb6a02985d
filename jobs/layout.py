"""One run's dataset on storage: the names of its files, and the two records both the job and
the readers open (``_run.json`` and the ``videos`` commit records).

Layout of one run's dataset under ``--output`` (any fsspec URL)::

    _run.json                                  run id, shard count, settings, model checksum (written first)
    _lease.json                                who is writing the run now (jobs/label/lease.py)
    masks/shard=NN/<video_key>.parquet         one file per video: its mask rows
    frames/shard=NN/<video_key>.parquet        one file per video: its frame rows
    videos/shard=NN/<video_key>.parquet        one file per video, ONE row: the commit record (written last)
    _attempts/<video_key>/<attempt>.json       one small file per processing attempt (who, when)
    _staging/                                  local filesystems only: temporary files before their rename
    _sample_corpus/                            only for the sample corpus run under `ray job submit`

``video_key`` = sanitised slug of ``video_id`` + ``-`` + 12 hex digits of its SHA-1, so an id
such as ``../x``, ``a/b`` or 10 kB of text still gives one file name inside its shard folder
(the original id stays in the rows). ``NN`` = SHA-1(video_id) mod ``shards`` (16 unless
``--shards``), zero-padded: files spread over a fixed number of folders, not one per video.
Readers add ``shard`` as a hive partition column; it is not stored in the files.
How the files get there, exactly once per video, is jobs/label/commit.py.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads

from . import storage as st
from .schema import SCHEMAS

DEFAULT_SHARDS = 16
RUN_FILE = "_run.json"
LEASE_FILE = "_lease.json"
STAGING = "_staging"
ATTEMPTS = "_attempts"
SAMPLE_COPY = "_sample_corpus"
_KEY_SLUG_MAX = 48


def _digest(video_id: str) -> str:
    return hashlib.sha1(video_id.encode("utf-8", "surrogatepass")).hexdigest()


def video_key(video_id: str) -> str:
    """A file name for ``video_id``: only ``[A-Za-z0-9_-]``, at most 61 characters,
    unique per id (it ends with 12 hex digits of the id's SHA-1)."""
    slug = re.sub(r"[^A-Za-z0-9_]+", "-", video_id).strip("-")[:_KEY_SLUG_MAX].strip("-")
    return f"{slug or 'video'}-{_digest(video_id)[:12]}"


def shard_of(video_id: str, shards: int) -> int:
    return int(_digest(video_id)[:15], 16) % shards


def shard_dir(shard: int, shards: int) -> str:
    return f"shard={shard:0{max(2, len(str(shards - 1)))}d}"


@dataclass
class Layout:
    """Paths of one run's dataset. Picklable (its filesystem is re-made after unpickling)."""

    uri: str
    storage: st.Storage
    shards: int = DEFAULT_SHARDS

    def __post_init__(self):
        self.uri = str(self.uri).rstrip("/") or str(self.uri)
        if "://" not in self.uri:
            self.uri = os.path.abspath(self.uri)
        self._fs = None

    def __getstate__(self):
        return {"uri": self.uri, "storage": self.storage, "shards": self.shards}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fs = None

    def _resolve(self):
        if self._fs is None:
            self._fs, self._root = self.storage.resolve(self.uri)
        return self._fs, self._root

    @property
    def fs(self):
        return self._resolve()[0]

    @property
    def root(self) -> str:
        return self._resolve()[1]

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def url(self, *parts: str) -> str:
        """A URI for readers (DuckDB, pyarrow): a plain path locally, with the scheme otherwise."""
        return st.display(self.fs, self.path(*parts))

    def data_path(self, table: str, video_id: str) -> str:
        return self.path(table, shard_dir(shard_of(video_id, self.shards), self.shards), f"{video_key(video_id)}.parquet")

    @property
    def staging(self) -> str:
        return self.path(STAGING)

    def table_files(self, table: str) -> list[str]:
        fs = self.fs
        fs.invalidate_cache(self.path(table))
        return sorted(fs.glob(self.path(table, "shard=*", "*.parquet")))


def read_run(layout: Layout) -> dict | None:
    """The run record ``_run.json``, or None when there is none."""
    return st.read_json(layout.fs, layout.path(RUN_FILE))


def read_videos(layout: Layout, columns: list[str] | None = None) -> pa.Table:
    """All commit records (the ``videos`` table) as one Arrow table."""
    files = layout.table_files("videos")
    if not files:
        t = SCHEMAS["videos"].empty_table()
        return t.select(columns) if columns else t
    ds = pads.dataset(files, filesystem=layout.fs, format="parquet", schema=SCHEMAS["videos"])
    return ds.to_table(columns=columns)
