"""Compaction (``vos compact``): each shard's committed per-video files merged into a few large
files, atomically, also while the job is still writing other videos (names: jobs/layout.py).

A million videos are three million small objects: a LIST of them and a scan that opens each are
slow and costly. Per shard (``shard=NN``), holding the output's compaction lease
``_compact_lease.json`` (jobs/label/lease.py: one compaction at a time; the job's own lease is
left alone, so the job keeps running):

1. Finish an interrupted compaction: delete the per-video files of the videos the shard's
   generation already covers, and the compacted files it does not list.
2. Read the commit records no compacted file covers yet; take the ``ok`` ones whose masks and
   frames files hold exactly the rows the record counts, of its attempt (a video being retried
   right now, or committed after this listing, waits for the next compaction). ``failed``
   records stay per-video files: ``--retry-failed`` replaces them as before.
3. Write those videos' rows, sorted by ``video_id``, into
   ``<table>/shard=NN/compacted/gNNNNNN-PPPP.parquet`` (about ``target_mb`` of input per part,
   the same three tables and columns). Nothing reads them before step 4 names them.
4. Publish: replace ``_compaction/shard=NN.json`` (ONE PUT, or one rename locally) with the
   previous parts plus the new ones. This is the commit: from now on readers take the compacted
   files and ignore the per-video files of the videos they cover (``layout.live_files``, which
   lists the per-video files before it reads the generation): old set or new, never both, never
   neither. A compacted video is final: a late retry's per-video files for it are ignored too.
5. Delete the per-video files of the videos just compacted (``_attempts/`` stays).

A crash anywhere loses nothing: before step 4 the new files are unreferenced (the rerun's step 1
deletes them), after it they are the data (step 1 deletes the per-video files left). A rerun
with nothing new changes nothing. A compacted video stays committed: the driver's resume reads
the commit records through ``live_files`` too. A reader holding a connection opened before a
compaction may get "file not found" for a per-video file deleted in step 5 (never a wrong
answer): open it again.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import posixpath
from dataclasses import dataclass
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage as st
from ..layout import (COMPACTED, DEFAULT_SHARDS, Layout, covered_keys, file_key, generation_path, read_generation,
                      read_run, shard_dir)
from ..schema import SCHEMAS, TABLES
from . import lease
from .parquet import UPLOAD_PART_BYTES, writer_options
from .run_record import OutputError

#: The compaction's own lease (one ``vos compact`` per output at a time).
LEASE = "_compact_lease.json"
#: Local filesystems: its own staging folder (the job clears ``_staging/`` when it ends).
STAGING = "_compact_staging"
DEFAULT_TARGET_MB = 256
DEFAULT_THREADS = 16
#: Row groups of compacted files: small enough that one video's lookup reads little of the file
#: (the rows are sorted by video_id, so row-group statistics skip the rest).
ROW_GROUP_ROWS = {"masks": 16_384, "frames": 1_024, "videos": 1_024}
#: Videos read at once (concurrently) and appended together: bounds memory.
CHUNK_VIDEOS = 64


@dataclass
class ShardReport:
    shard: str
    generation: int  # the shard's generation after this call (0: never compacted)
    covered: int = 0  # videos its compacted files hold now
    compacted: int = 0  # of which compacted by this call
    parts: int = 0  # new compacted files per table
    bytes: int = 0  # bytes of the new compacted files, all tables
    removed: int = 0  # per-video files deleted (step 5)
    leftovers: int = 0  # files of an interrupted compaction cleaned up (step 1)
    waiting: int = 0  # ok videos left for the next compaction (rows being replaced, or a file missing)


def _ls(fs, d: str) -> dict[str, tuple[str, int]]:
    """{video key or part name: (path, size)} of the Parquet files directly in ``d``."""
    fs.invalidate_cache(d)
    try:
        entries = fs.ls(d, detail=True)
    except FileNotFoundError:
        return {}
    return {file_key(e["name"]): (e["name"], int(e.get("size") or 0)) for e in entries
            if e.get("type") == "file" and e["name"].endswith(".parquet")}


def _remove(fs, paths: list[str]) -> int:
    if not paths:
        return 0
    if st.is_local(fs):
        return sum(st.remove(fs, p) for p in paths)
    fs.rm(paths)  # object stores: bulk deletes (S3 DeleteObjects, 1000 keys a request)
    return len(paths)


def _read(fs, path: str, table: str) -> pa.Table:
    """One per-video file, with the table's current columns (an older file's missing ones null)."""
    t = pq.read_table(pa.BufferReader(fs.cat_file(path)))
    schema = SCHEMAS[table]
    cols = [t[f.name].cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


class _Part:
    """The three compacted files of one part, each published atomically (jobs/storage.py)."""

    def __init__(self, layout: Layout, shard: str, generation: int, index: int):
        self.names = {t: posixpath.join(t, shard, COMPACTED, f"g{generation:06d}-{index:04d}.parquet") for t in TABLES}
        self.files = {t: st.AtomicFile(layout.fs, layout.path(self.names[t]), layout.path(STAGING),
                                       block_size=UPLOAD_PART_BYTES) for t in TABLES}
        self.writers = {t: pq.ParquetWriter(self.files[t].file, SCHEMAS[t], **writer_options(t)) for t in TABLES}
        self.videos: list[str] = []

    def append(self, tables: dict[str, pa.Table], video_ids: list[str]) -> None:
        for t in TABLES:
            self.writers[t].write_table(tables[t], row_group_size=ROW_GROUP_ROWS[t])
        self.videos += video_ids

    def publish(self, layout: Layout) -> dict:
        for t in TABLES:
            self.writers[t].close()
            self.files[t].publish()
        size = sum(layout.fs.size(layout.path(n)) for n in self.names.values())
        return {**self.names, "first": self.videos[0], "last": self.videos[-1], "video_count": len(self.videos),
                "bytes": size}

    def abort(self) -> None:
        for t in TABLES:
            try:
                self.writers[t].close()
            except Exception:
                pass
            self.files[t].abort()


def _matches(rec: dict, masks: pa.Table, frames: pa.Table) -> bool:
    """The files hold exactly the committed attempt's rows, as many as its record says."""
    return (masks.num_rows == rec["masks_rows"] and frames.num_rows == rec["frames"]
            and set(masks["attempt"].to_pylist()) <= {rec["attempt"]}
            and set(frames["attempt"].to_pylist()) <= {rec["attempt"]})


def _batches(keys: list[str], size: dict[str, int], target: int) -> list[list[str]]:
    out, cur, n = [], [], 0
    for k in keys:
        if cur and n + size[k] > target:
            out.append(cur)
            cur, n = [], 0
        cur.append(k)
        n += size[k]
    return out + ([cur] if cur else [])


def compact_shard(layout: Layout, shard: str, target_bytes: int, pool: cf.Executor, held: lease.Lease,
                  hook: Callable[[str, str], None] | None = None) -> ShardReport:
    """Steps 1-5 of the module's docstring for one shard folder (``shard=NN``)."""
    fs = layout.fs
    hook = hook or (lambda step, shard: None)
    gen = read_generation(layout, shard) or {"generation": 0, "parts": []}
    parts = list(gen["parts"])
    covered = covered_keys(layout, [layout.path(p["videos"]) for p in parts])
    files = {t: _ls(fs, layout.path(t, shard)) for t in TABLES}
    report = ShardReport(shard, gen["generation"], covered=len(covered))

    # 1. what an interrupted compaction left
    named = {layout.path(p[t]) for p in parts for t in TABLES}
    orphans = [p for t in TABLES for p, _ in _ls(fs, layout.path(t, shard, COMPACTED)).values() if p not in named]
    dead = [p for t in TABLES for k, (p, _) in files[t].items() if k in covered]
    report.leftovers = _remove(fs, orphans + dead)

    # 2. the ok records not compacted yet (failed ones have no masks/frames files: not read)
    todo = sorted(k for k in files["videos"] if k not in covered and k in files["masks"] and k in files["frames"])
    recs = {}
    for k, t in zip(todo, pool.map(lambda k: _try_read(fs, files["videos"][k][0], "videos"), todo)):
        row = t.to_pylist()[0] if t is not None and t.num_rows == 1 else None
        if row and row["status"] == "ok" and row["video_key"] == k:
            recs[k] = row
    keys = sorted(recs, key=lambda k: recs[k]["video_id"])  # rows of a part sorted by video_id
    size = {k: sum(files[t][k][1] for t in TABLES) for k in keys}

    # 3. the new parts
    n = gen["generation"] + 1
    new_parts, done = [], []
    for index, batch in enumerate(_batches(keys, size, target_bytes)):
        part = _Part(layout, shard, n, index)
        try:
            for i in range(0, len(batch), CHUNK_VIDEOS):
                chunk = batch[i:i + CHUNK_VIDEOS]
                got = list(pool.map(lambda k: (_try_read(fs, files["masks"][k][0], "masks"),
                                               _try_read(fs, files["frames"][k][0], "frames")), chunk))
                ok = [(k, m, f) for k, (m, f) in zip(chunk, got)
                      if m is not None and f is not None and _matches(recs[k], m, f)]
                report.waiting += len(chunk) - len(ok)
                if ok:
                    part.append({"masks": pa.concat_tables([m for _, m, _ in ok]),
                                 "frames": pa.concat_tables([f for _, _, f in ok]),
                                 "videos": pa.Table.from_pylist([recs[k] for k, _, _ in ok], schema=SCHEMAS["videos"])},
                                [recs[k]["video_id"] for k, _, _ in ok])
                    done += [k for k, _, _ in ok]
            if not part.videos:
                part.abort()
                continue
            new_parts.append(part.publish(layout))
        except BaseException:
            part.abort()
            raise
    if not new_parts:
        return report
    hook("written", shard)

    # 4. publish: the one atomic step
    held.check()  # S3: another compaction took the lease over (this one's heartbeats had stopped)
    record = {"generation": n, "shard": shard, "updated_at": dt.datetime.now(dt.timezone.utc).isoformat(),
              "video_count": sum(p["video_count"] for p in parts + new_parts), "parts": parts + new_parts}
    st.put_atomic(fs, generation_path(layout, shard), json.dumps(record, indent=1).encode(), layout.path(STAGING))
    hook("published", shard)

    # 5. the per-video files of the videos now compacted (records last)
    report.removed = _remove(fs, [files[t][k][0] for t in ("masks", "frames") for k in done])
    hook("removing", shard)
    report.removed += _remove(fs, [files["videos"][k][0] for k in done])
    report.generation, report.compacted, report.parts = n, len(done), len(new_parts)
    report.covered += len(done)
    report.bytes = sum(p["bytes"] for p in new_parts)
    return report


def _try_read(fs, path: str, table: str) -> pa.Table | None:
    try:
        return _read(fs, path, table)
    except FileNotFoundError:  # replaced or removed since the listing: the next compaction takes it
        return None


def compact(output: str, storage: st.Storage | None = None, target_mb: float = DEFAULT_TARGET_MB,
            threads: int = DEFAULT_THREADS, hook: Callable[[str, str], None] | None = None) -> list[ShardReport]:
    """Compacts every shard of the run at ``output``; returns one report per shard. ``hook(step,
    shard)`` is called after steps 3 (``written``), 4 (``published``) and half of 5 (``removing``):
    tests make a compaction fail there."""
    storage = storage or st.Storage.from_env()
    layout = Layout(output, storage)
    run = read_run(layout)
    if run is None:
        raise OutputError(f"{layout.url()}: no pseudo-label run here (no _run.json)")
    layout = Layout(output, storage, shards=int(run.get("shards", DEFAULT_SHARDS)))
    try:
        held = lease.acquire(layout, LEASE)
    except lease.LeaseHeld:
        raise lease.LeaseHeld(f"{layout.url()}: another `vos compact` is running on it (it holds "
                              f"{layout.url(LEASE)}); rerun when it has finished") from None
    try:
        if st.is_local(layout.fs) and layout.fs.exists(layout.path(STAGING)):
            layout.fs.rm(layout.path(STAGING), recursive=True)  # temporary files of a killed compaction
        with cf.ThreadPoolExecutor(max(1, threads)) as pool:
            return [compact_shard(layout, shard_dir(s, layout.shards), int(target_mb * 2**20), pool, held, hook)
                    for s in range(layout.shards)]
    finally:
        held.release()
