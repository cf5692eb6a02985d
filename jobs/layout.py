"""One run's dataset on storage: the names of its files, and the two records both the job and
the readers open (``_run.json`` and the ``videos`` commit records).

Layout of one run's dataset under ``--output`` (any fsspec URL)::

    _run.json                                  run id, shard count, settings, model checksum (written first)
    _lease.json                                who is writing the run now (jobs/label/lease.py)
    masks/shard=NN/<video_key>.parquet         one file per video: its mask rows
    frames/shard=NN/<video_key>.parquet        one file per video: its frame rows
    videos/shard=NN/<video_key>.parquet        one file per video, ONE row: the commit record (written last)
    _attempts/<video_key>/<attempt>.json       one small file per processing attempt (who, when)
    <table>/shard=NN/compacted/gNNNNNN-PPPP.parquet  after `vos compact`: many committed videos' rows in one file
    _compaction/shard=NN.json                  the shard's generation: which compacted files are live (replaced whole)
    _staging/                                  local filesystems only: temporary files before their rename
    _sample_corpus/                            only for the sample corpus run under `ray job submit`

``video_key`` = sanitised slug of ``video_id`` + ``-`` + 12 hex digits of its SHA-1, so an id
such as ``../x``, ``a/b`` or 10 kB of text still gives one file name inside its shard folder
(the original id stays in the rows). ``NN`` = SHA-1(video_id) mod ``shards`` (16 unless
``--shards``), zero-padded: files spread over a fixed number of folders, not one per video.
Readers add ``shard`` as a hive partition column; it is not stored in the files.
How the files get there, exactly once per video, is jobs/label/commit.py.

Compaction (jobs/label/compact.py) merges committed videos' files into ``compacted/`` files; the
live files of a table are then ``live_files``: the compacted files the generation files list plus
the per-video files of the videos those do not cover. ``read_videos`` and ``read_video`` (one
video's rows) read through it, so a compacted video reads as before.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads

from . import storage as st
from .schema import SCHEMAS, TABLES

DEFAULT_SHARDS = 16
RUN_FILE = "_run.json"
LEASE_FILE = "_lease.json"
STAGING = "_staging"
ATTEMPTS = "_attempts"
SAMPLE_COPY = "_sample_corpus"
COMPACTION = "_compaction"
COMPACTED = "compacted"
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
    """All commit records (the ``videos`` table) as one Arrow table (compacted ones too)."""
    for tries in range(3):
        files = live_files(layout, ("videos",))["videos"]
        if not files:
            t = SCHEMAS["videos"].empty_table()
            return t.select(columns) if columns else t
        ds = pads.dataset(files, filesystem=layout.fs, format="parquet", schema=SCHEMAS["videos"])
        try:
            return ds.to_table(columns=columns)
        except FileNotFoundError:  # compacted and removed since it was listed: the new generation has it
            if tries == 2:
                raise


# -- compacted files (written by jobs/label/compact.py) ----------------------------------------

def generation_path(layout: Layout, shard: str) -> str:
    """``_compaction/shard=NN.json``: the ONE object whose replacement publishes a compaction of the shard."""
    return layout.path(COMPACTION, f"{shard}.json")


def read_generation(layout: Layout, shard: str) -> dict | None:
    """The shard's generation: ``{"generation": n, "parts": [{"masks": path, "frames": path, "videos": path,
    "first": video_id, "last": video_id, ...}]}`` (paths relative to the output), or None (never compacted)."""
    return st.read_json(layout.fs, generation_path(layout, shard))


def read_generations(layout: Layout) -> dict[str, dict]:
    """{shard folder: generation} of every compacted shard."""
    fs, d = layout.fs, layout.path(COMPACTION)
    fs.invalidate_cache(d)
    try:
        names = [p for p in fs.ls(d, detail=False) if p.endswith(".json")]
    except FileNotFoundError:
        return {}
    if not names:
        return {}
    return {posixpath.basename(p)[:-5]: json.loads(data) for p, data in sorted(fs.cat(names).items())}


def file_key(path: str) -> str:
    """The video key of a per-video file (its name without ``.parquet``)."""
    return posixpath.basename(path)[:-len(".parquet")]


def covered_keys(layout: Layout, videos_parts: list[str]) -> set[str]:
    """The keys of the videos the compacted ``videos`` files hold (their per-video files are dead)."""
    if not videos_parts:
        return set()
    ds = pads.dataset(videos_parts, filesystem=layout.fs, format="parquet", schema=SCHEMAS["videos"])
    return set(ds.to_table(columns=["video_key"])["video_key"].to_pylist())


def live_files(layout: Layout, tables=TABLES) -> dict[str, list[str]]:
    """{table: the files a reader reads now}: the compacted files of every shard's generation, plus
    the per-video files of videos they do not cover (never both for one video, nor neither).

    The per-video files are listed BEFORE the generations are read: a compaction publishes its
    generation and only then removes the per-video files it covers, so a listing that misses a
    removed file comes with the generation that covers it."""
    per_video = {t: layout.table_files(t) for t in tables}
    gens = read_generations(layout)
    if not gens:
        return per_video
    parts = {t: [layout.path(p[t]) for g in gens.values() for p in g["parts"]] for t in (*TABLES,)}
    covered = covered_keys(layout, parts["videos"]) if any(per_video.values()) else set()
    return {t: parts[t] + [f for f in per_video[t] if file_key(f) not in covered] for t in tables}


def _covering_part(layout: Layout, gen: dict | None, video_id: str, columns: list[str]) -> tuple[dict | None, pa.Table | None]:
    """(the part of ``gen`` whose ``videos`` file has the video's row, that row's ``columns``), or (None, None)."""
    import pyarrow.parquet as pq

    for part in (gen or {}).get("parts", []):
        if part["first"] <= video_id <= part["last"]:
            t = pq.read_table(layout.path(part["videos"]), filesystem=layout.fs, columns=columns,
                              filters=[("video_id", "=", video_id)])
            if t.num_rows:
                return part, t
    return None, None


def read_video(layout: Layout, video_id: str, columns: dict[str, list[str]]) -> dict[str, pa.Table | None]:
    """{table: one video's rows} for the tables (and columns) of ``columns``, from the compacted file
    that covers the video, else from its own file (one file, no scan of the run); None for a table
    that has neither. Columns an older output lacks are left out."""
    import pyarrow.parquet as pq

    shard = shard_dir(shard_of(video_id, layout.shards), layout.shards)
    for tries in range(3):
        part, rec = _covering_part(layout, read_generation(layout, shard), video_id, columns.get("videos", ["video_id"]))
        out = {}
        try:
            for table, cols in columns.items():
                if part is not None:
                    out[table] = rec if table == "videos" else pq.read_table(
                        layout.path(part[table]), filesystem=layout.fs, columns=cols, filters=[("video_id", "=", video_id)])
                    continue
                path = layout.data_path(table, video_id)
                if not layout.fs.exists(path):
                    out[table] = None
                    continue
                # by path and filesystem, not from a Python file object: reading one of those on pyarrow's
                # threads while torch is loaded can abort the process at exit ("terminate called ...")
                names = pq.read_schema(path, filesystem=layout.fs).names
                out[table] = pq.read_table(path, filesystem=layout.fs, columns=[c for c in cols if c in names])
        except FileNotFoundError:  # compacted and removed meanwhile: the shard's new generation covers it
            if part is None and tries < 2:
                continue
            raise
        if part is None and any(v is None for v in out.values()) and tries < 2 and read_generation(layout, shard):
            continue  # a file went between the lookups: look again in the (new) generation
        return out
    return out
