"""The output dataset and its commit protocol: how a video's rows land exactly once.

Layout of one run's dataset under ``--output`` (any fsspec URL)::

    _run.json                                  run id, shard count, settings, model checksum (written first)
    masks/shard=NN/<video_key>.parquet         one file per video: its mask rows
    frames/shard=NN/<video_key>.parquet        one file per video: its frame rows
    videos/shard=NN/<video_key>.parquet        one file per video, ONE row: the commit record (written last)
    _attempts/<video_key>/<attempt>.json       one small file per processing attempt (who, when)
    _staging/                                  local filesystems only: temporary files before their rename

``video_key`` = sanitised slug of ``video_id`` + ``-`` + 12 hex digits of its
SHA-1, so an id such as ``../x``, ``a/b`` or 10 kB of text still gives one
file name inside its shard folder (the original id stays in the rows).
``NN`` = SHA-1(video_id) mod ``shards`` (16 unless ``--shards``), zero-padded:
files spread over a fixed number of folders, not one folder per video.
Readers add ``shard`` as a hive partition column; it is not stored in the files.

The protocol, per video (``VideoCommit``):

1. ``begin``: PUT ``_attempts/<key>/<attempt>.json`` (attempt = fresh uuid).
2. Stream the video's rows into ``frames/…/<key>.parquet`` and
   ``masks/…/<key>.parquet``. Each file becomes visible in ONE atomic step when
   it is complete (object stores: the upload is completed by its final
   request, a single PUT or CompleteMultipartUpload, and aborted on error;
   local filesystems: a temporary file under ``_staging/`` then
   ``os.replace``). Names are deterministic per video, so a retry replaces
   the earlier attempt's file and never adds a second one.
3. Commit: PUT ``videos/…/<key>.parquet`` (one row, ``status='ok'``, the
   ``attempt`` id, ``masks_rows``, ``frames``) - atomically, LAST. A video is
   committed iff this record exists.
4. Failure (bad input, any exception): abort the open uploads, DELETE the
   video's masks/frames files (a crashed earlier attempt may have left them),
   then PUT the record with ``status='failed'`` and the error.

What readers see:

* A plain glob (``read_parquet('<out>/masks/**/*.parquet')``, ``pyarrow.dataset``)
  sees, for each video, all of its rows of that table or none (one file, published
  atomically), and never a video twice (one deterministic name per video). Files are
  never appended to. It may see the masks of a video whose commit record is not
  written yet (being processed, or its worker died after step 2 and a retry is due).
* Committed-only reading: keep masks/frames rows whose ``(video_id, attempt)`` match
  a ``videos`` row with ``status = 'ok'`` - the ``masks`` and ``frames`` views of
  ``jobs.query`` do exactly this. That shows a video only once all three tables hold
  it, and only the rows of the attempt that committed.
* A rerun with the same run id (a restarted driver) reads ``videos/`` and skips every
  video that has a record (``--retry-failed`` also reruns the failed ones); an
  actor killed mid-video leaves no record, so Ray's retry (or a rerun) does it again,
  overwriting whatever the dead attempt had published.

Temporary files of killed workers stay in ``_staging/`` (local) until the run ends;
on S3 their multipart uploads stay incomplete and invisible (add a bucket lifecycle
rule ``AbortIncompleteMultipartUpload`` to reclaim them).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import posixpath
import re
import socket
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pycocotools import mask as mask_utils

from . import storage as st
from .schema import SCHEMA_VERSION, SCHEMAS, SORT_KEYS, TABLES
from .visual import encode_u_map

DEFAULT_SHARDS = 16
#: Rows buffered before a row group is written: bounds memory however long the video
#: (a masks row is ~0.1-2 kB, mostly RLE), and keeps row groups at tens of MB at most.
#: A frames row is ~0.5 kB plus its U-map PNG (a few kB), hence fewer rows per group.
ROW_GROUP_ROWS = {"masks": 65_536, "frames": 4_096, "videos": 1}
ZSTD_LEVEL = 3
#: Object stores: multipart part size, i.e. the most of a file held in memory before it is uploaded.
UPLOAD_PART_BYTES = 16 * 2**20
_KEY_SLUG_MAX = 48

RUN_FILE = "_run.json"
STAGING = "_staging"
ATTEMPTS = "_attempts"


class OutputError(RuntimeError):
    """The output location cannot be used for this run (another run, other settings ...)."""


# -- names ------------------------------------------------------------------------

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


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# -- the output location ------------------------------------------------------------

@dataclass
class Layout:
    """Paths of one run's dataset. Picklable (shipped to the actors)."""

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


# -- the run record -----------------------------------------------------------------

def open_run(layout: Layout, run_id: str | None, info: dict, resume_keys=("model_checksum", "settings")) -> tuple[str, bool]:
    """Creates ``_run.json`` for a new run, or checks that an existing one is the same run.

    Returns (run_id, resumed). A missing ``run_id`` adopts the run found at the output.
    Refuses another run id, another shard count, or other ``resume_keys`` values
    (a resumed run must not mix results of other settings or weights)."""
    fs = layout.fs
    path = layout.path(RUN_FILE)
    fs.invalidate_cache(layout.root)
    existing = st.read_json(fs, path)
    if existing is not None:
        if run_id and existing.get("run_id") != run_id:
            raise OutputError(
                f"{layout.url()} already holds run {existing.get('run_id')!r} (started {existing.get('created_at')}): "
                f"pass --run-id {existing.get('run_id')} to resume it, or write run {run_id!r} to another --output")
        if int(existing.get("shards", DEFAULT_SHARDS)) != layout.shards:
            raise OutputError(f"{layout.url()}: run {existing['run_id']!r} uses {existing.get('shards')} shards, "
                              f"not {layout.shards}: resume it with --shards {existing.get('shards')}")
        for k in resume_keys:
            if k in info and existing.get(k) != info[k]:
                raise OutputError(
                    f"{layout.url()}: run {existing['run_id']!r} was started with {k}={json.dumps(existing.get(k))}, "
                    f"now {k}={json.dumps(info[k])}; resuming would mix results. Use the same settings and "
                    f"checkpoint, or another --output/--run-id")
        return existing["run_id"], True
    run_id = run_id or new_run_id()
    record = {"run_id": run_id, "shards": layout.shards, "schema_version": SCHEMA_VERSION,
              "created_at": _now().isoformat(), **info}
    st.makedirs(fs, layout.root)
    st.put_atomic(fs, path, json.dumps(record, indent=1, sort_keys=True).encode(), layout.staging)
    return run_id, False


def new_run_id() -> str:
    return _now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def read_run(layout: Layout) -> dict | None:
    return st.read_json(layout.fs, layout.path(RUN_FILE))


def read_videos(layout: Layout, columns: list[str] | None = None) -> pa.Table:
    """All commit records (the ``videos`` table) as one Arrow table."""
    files = layout.table_files("videos")
    if not files:
        t = SCHEMAS["videos"].empty_table()
        return t.select(columns) if columns else t
    ds = pads.dataset(files, filesystem=layout.fs, format="parquet", schema=SCHEMAS["videos"])
    return ds.to_table(columns=columns)


def committed(layout: Layout, run_id: str) -> dict[str, str]:
    """{video_id: status} of the videos this run has committed (ok or failed)."""
    t = read_videos(layout, ["video_id", "status", "run_id"])
    return {v: s for v, s, r in zip(t["video_id"].to_pylist(), t["status"].to_pylist(), t["run_id"].to_pylist())
            if r == run_id}


def clear_staging(layout: Layout) -> None:
    """Removes temporary files left by killed workers (local filesystems). Call when no worker runs."""
    fs = layout.fs
    if st.is_local(fs) and fs.exists(layout.staging):
        fs.rm(layout.staging, recursive=True)


# -- one video ------------------------------------------------------------------------

def encode_rles(mask: np.ndarray, object_ids: list[int]) -> list[str]:
    """COCO compressed RLE of ``mask == id`` for each id (pycocotools, column-major)."""
    if not object_ids:
        return []
    ids = np.asarray(object_ids, dtype=mask.dtype)
    stack = np.asfortranarray((mask[:, :, None] == ids[None, None, :]).astype(np.uint8))
    return [r["counts"].decode("ascii") for r in mask_utils.encode(stack)]


def decode_rle(rle: str, height: int, width: int) -> np.ndarray:
    """H×W uint8 0/1 mask of one ``masks`` row."""
    return mask_utils.decode({"size": [int(height), int(width)], "counts": rle.encode("ascii")})


def _f32(x):
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x)


class _TableFile:
    """Rows of one table for one video, streamed into a Parquet file that is published atomically."""

    def __init__(self, layout: Layout, table: str, video_id: str):
        self.table = table
        self.schema = SCHEMAS[table]
        self.path = layout.data_path(table, video_id)
        self._file = st.AtomicFile(layout.fs, self.path, layout.staging, block_size=UPLOAD_PART_BYTES)
        names = self.schema.names
        self._writer = pq.ParquetWriter(
            self._file.file, self.schema, compression="zstd", compression_level=ZSTD_LEVEL,
            use_dictionary=[c for c in ("video_id", "run_id", "attempt", "frame_name") if c in names],
            write_statistics=[c for c in names if c not in ("rle", "objects", "u_map_png")],
            sorting_columns=[pq.SortingColumn(names.index(k)) for k in SORT_KEYS[table]],
        )
        self._cols: dict[str, list] = {n: [] for n in names}
        self._n = 0
        self.rows = 0

    def append(self, row: dict) -> None:
        for n, col in self._cols.items():
            col.append(row.get(n))
        self._n += 1
        self.rows += 1
        if self._n >= ROW_GROUP_ROWS[self.table]:
            self.flush()

    def flush(self) -> None:
        if self._n:
            batch = pa.table({n: pa.array(v, type=self.schema.field(n).type) for n, v in self._cols.items()},
                             schema=self.schema)
            self._writer.write_table(batch, row_group_size=ROW_GROUP_ROWS[self.table])
            for v in self._cols.values():
                v.clear()
            self._n = 0

    def publish(self) -> None:
        self.flush()
        self._writer.close()
        self._file.publish()

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:
            pass
        self._file.abort()


def _row_bytes(table: str, row: dict) -> bytes:
    schema = SCHEMAS[table]
    t = pa.table({f.name: pa.array([row.get(f.name)], type=f.type) for f in schema}, schema=schema)
    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd", compression_level=ZSTD_LEVEL)
    return buf.getvalue()


def _video_row(video_id: str, run_id: str, layout: Layout, **fields) -> dict:
    row = {"video_id": video_id, "video_key": video_key(video_id), "run_id": run_id,
           "schema_version": SCHEMA_VERSION, "worker": worker_name()}
    if isinstance(fields.get("settings"), dict):
        fields["settings"] = json.dumps(fields["settings"], sort_keys=True)
    row.update(fields)
    unknown = set(row) - set(SCHEMAS["videos"].names)
    if unknown:
        raise ValueError(f"unknown videos columns: {sorted(unknown)}")
    return row


def count_attempts(layout: Layout, video_id: str) -> int:
    fs = layout.fs
    d = layout.path(ATTEMPTS, video_key(video_id))
    fs.invalidate_cache(d)
    try:
        return sum(1 for p in fs.ls(d, detail=False) if p.endswith(".json"))
    except FileNotFoundError:
        return 0


def write_failed(layout: Layout, video_id: str, run_id: str, error: str, error_type: str,
                 **fields) -> dict:
    """Step 4 of the protocol, also usable by the driver (a video whose workers kept dying):
    deletes the video's data files, then writes its ``failed`` record."""
    fs = layout.fs
    for table in ("masks", "frames"):
        st.remove(fs, layout.data_path(table, video_id))
    fields.setdefault("attempts", count_attempts(layout, video_id))
    fields.setdefault("finished_at", _now())
    row = _video_row(video_id, run_id, layout, status="failed", error=error, error_type=error_type,
                     frames=0, masks_rows=0, **fields)
    st.put_atomic(fs, layout.data_path("videos", video_id), _row_bytes("videos", row), layout.staging)
    return row


class VideoCommit:
    """Writes one video's rows following the protocol in this module's docstring.

        vc = VideoCommit(layout, video_id, run_id)
        vc.begin()
        for r in segmenter.run(...):
            vc.add(r, frame_name)
        vc.commit(seconds=..., ...)      # or vc.fail(error, type, ...)
    """

    def __init__(self, layout: Layout, video_id: str, run_id: str, attempt: str | None = None):
        self.layout = layout
        self.video_id = video_id
        self.run_id = run_id
        self.attempt = attempt or uuid.uuid4().hex
        self.started_at = _now()
        self._files: dict[str, _TableFile] = {}
        self.frames = 0
        self.objects = 0
        self.hw: tuple[int, int] | None = None

    def begin(self, **info) -> None:
        """Step 1: records that this attempt started (and where: for debugging and tests)."""
        fs = self.layout.fs
        marker = {"video_id": self.video_id, "attempt": self.attempt, "run_id": self.run_id,
                  "worker": worker_name(), "pid": os.getpid(), "started_at": self.started_at.isoformat(), **info}
        path = self.layout.path(ATTEMPTS, video_key(self.video_id), f"{self.attempt}.json")
        st.makedirs(fs, posixpath.dirname(path))
        st.put_atomic(fs, path, json.dumps(marker).encode(), self.layout.staging)

    def _file(self, table: str) -> _TableFile:
        f = self._files.get(table)
        if f is None:
            f = self._files[table] = _TableFile(self.layout, table, self.video_id)
        return f

    def add(self, result, frame_name: str | None = None) -> None:
        """Step 2, one frame: a ``vos_core.FrameResult``'s masks and statistics."""
        mask = result.mask
        h, w = mask.shape
        self.hw = (h, w)
        stats = result.stats
        objects = [o for o in stats.objects if o.object_id != 0]
        rles = encode_rles(mask, [o.object_id for o in objects])
        common = {"video_id": self.video_id, "frame_index": int(result.index), "run_id": self.run_id,
                  "attempt": self.attempt}
        masks = self._file("masks")
        for o, rle in zip(objects, rles):
            masks.append({**common, "object_id": o.object_id, "height": h, "width": w, "rle": rle, "area": o.area,
                          "bbox": o.bbox, "mean_prob": _f32(o.mean_prob), "u_mean": _f32(o.u_mean),
                          "u_p95": _f32(o.u_p95), "annotated": bool(result.annotated)})
        u_objects = [o.u_mean for o in objects if o.u_mean is not None]
        self._file("frames").append({
            **common, "frame_name": frame_name, "height": h, "width": w, "annotated": bool(result.annotated),
            "num_objects": len(objects), "u_mean": _f32(stats.u_mean), "u_frac_uncertain": _f32(stats.u_frac_uncertain),
            "u_threshold": _f32(stats.u_threshold), "u_max_object": max(u_objects) if u_objects else None,
            "bank_size": int(sum(o.bank_size for o in stats.objects)),
            "u_map_png": encode_u_map(result.uncertainty) if result.uncertainty is not None else None,
            "objects": [{"object_id": o.object_id, "area": o.area, "bbox": o.bbox, "mean_prob": _f32(o.mean_prob),
                         "u_mean": _f32(o.u_mean), "u_p95": _f32(o.u_p95), "band_area": o.band_area,
                         "bank_size": o.bank_size, "bank_evicted": o.bank_evicted} for o in stats.objects],
        })
        self.frames += 1
        self.objects = len(objects)

    def commit(self, **fields) -> dict:
        """Steps 2-3: publishes frames and masks, then the ``ok`` record (last). Returns the record."""
        if not self.frames:
            raise ValueError(f"{self.video_id}: no frame was segmented, nothing to commit")
        masks_rows = self._files["masks"].rows
        for table in ("frames", "masks"):
            self._files[table].publish()
        finished = _now()
        seconds = (finished - self.started_at).total_seconds()
        h, w = self.hw
        fields.setdefault("attempts", count_attempts(self.layout, self.video_id))
        row = _video_row(self.video_id, self.run_id, self.layout, status="ok", error=None, error_type=None,
                         frames=self.frames, objects=self.objects, masks_rows=masks_rows, height=h, width=w,
                         seconds=seconds, fps=self.frames / seconds if seconds > 0 else None,
                         started_at=self.started_at, finished_at=finished, attempt=self.attempt, **fields)
        st.put_atomic(self.layout.fs, self.layout.data_path("videos", self.video_id), _row_bytes("videos", row),
                      self.layout.staging)
        return row

    def abort(self) -> None:
        for f in self._files.values():
            f.abort()
        self._files.clear()

    def fail(self, error: str, error_type: str, **fields) -> dict:
        """Step 4: nothing of this attempt is published; the video gets a ``failed`` record."""
        self.abort()
        finished = _now()
        if self.hw:
            fields.setdefault("height", self.hw[0])
            fields.setdefault("width", self.hw[1])
        return write_failed(self.layout, self.video_id, self.run_id, error, error_type, objects=self.objects,
                            seconds=(finished - self.started_at).total_seconds(), started_at=self.started_at,
                            finished_at=finished, attempt=self.attempt, **fields)


def check_tables(layout: Layout) -> None:
    """Raises if a data file's schema differs from this version's (e.g. another tool wrote there)."""
    for table in TABLES:
        for p in layout.table_files(table)[:1]:
            with layout.fs.open(p, "rb") as f:
                got = pq.read_schema(f)
            if not got.remove_metadata().equals(SCHEMAS[table].remove_metadata()):
                raise OutputError(f"{st.display(layout.fs, p)}: schema differs from the {table} schema of this version")
