"""The read layer: everything query, render, report and export know about reading a run.

* ``open_layout(output)``: the run's ``Layout`` (its shard count from ``_run.json``);
* ``connect(output)``: DuckDB with the views ``videos`` (every record), ``masks`` and ``frames``
  (committed rows only: those whose ``(video_id, attempt)`` match a ``videos`` row with
  ``status = 'ok'``, see jobs/label/commit.py), ``masks_all`` and ``frames_all`` (every data
  file, as a plain glob reads it). Each view has ``shard`` (the hive partition, e.g. ``'07'``).
  The views read the files listed when connecting (``jobs.layout.live_files``: after ``vos
  compact``, the compacted files plus the per-video files they do not cover), not a glob.
  Remote outputs are read through fsspec (``duckdb.register_filesystem``): no DuckDB extension
  is downloaded (extension auto-install and auto-load are off). ``sandboxed=True`` then locks
  the connection to reading the run's three tables (``lock_down``);
* ``query(output, sql)``: one read-only statement (SELECT, EXPLAIN) on a sandboxed connection,
  unless ``unsafe=True`` (``vos query --unsafe-sql``);
* ``load_labels(layout, video_id)``: one committed video's frames and masks from its own files,
  or the compacted ones that cover it (no scan of the run), and ``labelled_frames`` to reopen its
  frames beside them;
* ``decode_rle``, ``png_name``: a mask row to pixels, a frame to a file name.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .. import storage as st
from ..codec import decode_rle  # noqa: F401  (part of the read layer)
from ..errors import BadInput
from ..layout import DEFAULT_SHARDS, Layout, live_files, read_run, read_video
from ..schema import SCHEMAS, TABLES


class ReadError(BadInput):
    """What was asked for is not in the output (no run there, an unknown or failed video ...)."""


class UnsafeQuery(BadInput):
    """A query the sandbox refuses (more than one statement, or one that is not a read)."""


#: Statement types ``query`` runs on a sandboxed connection: reads (DESCRIBE, SHOW and SUMMARIZE
#: are SELECTs to DuckDB). COPY, ATTACH, INSTALL/LOAD, SET, CREATE ... are refused.
READ_STATEMENTS = ("SELECT", "EXPLAIN")


def _sql_str(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def png_name(frame_name: str | None, frame_index: int) -> str:
    """The file name of a frame's PNG: its own name when that is a safe file name, else its index."""
    if frame_name and re.fullmatch(r"[A-Za-z0-9_.-]+", frame_name) and frame_name not in (".", ".."):
        return f"{frame_name}.png"
    return f"{frame_index:05d}.png"


def open_layout(output: str, storage: st.Storage | None = None) -> Layout:
    """The ``Layout`` of the run at ``output``, with the shard count its ``_run.json`` records."""
    storage = storage or st.Storage.from_env()
    layout = Layout(output, storage)
    run = read_run(layout)
    if run is None:
        if not any(layout.table_files(t) for t in TABLES):
            raise ReadError(f"{layout.url()}: no pseudo-label output here (no _run.json, no tables)")
        run = {}
    return Layout(output, storage, shards=int(run.get("shards", DEFAULT_SHARDS)))


def connect(output: str, storage: st.Storage | None = None, con=None, *, sandboxed: bool = False):
    """A DuckDB connection with the views ``videos``, ``masks``, ``frames`` (committed rows),
    ``masks_all`` and ``frames_all`` over the dataset at ``output``; ``sandboxed``: locked to
    reading those tables (see ``lock_down``)."""
    import duckdb
    import pyarrow as pa

    layout = open_layout(output, storage)
    con = con or duckdb.connect()
    # Never fetch an extension from the internet (an http:// URL or a function of an extension
    # would otherwise make DuckDB download one): s3:// goes through the fsspec filesystem below.
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    if not st.is_local(layout.fs):
        con.register_filesystem(layout.fs)
    # The files as listed now (compacted ones + the per-video files they do not cover), not a glob
    # DuckDB would expand at each query: during a compaction (jobs/label/compact.py) a glob sees both.
    live = live_files(layout)
    for table in TABLES:
        raw = "videos" if table == "videos" else f"{table}_all"
        if live[table]:
            files = ", ".join(_sql_str(st.display(layout.fs, f)) for f in live[table])
            src = f"read_parquet([{files}], hive_partitioning = true)"
        else:  # no file yet: an empty view with the documented columns
            con.register(f"_empty_{table}", SCHEMAS[table].empty_table().append_column("shard", pa.array([], pa.string())))
            src = f"_empty_{table}"
        con.execute(f"CREATE OR REPLACE VIEW {raw} AS SELECT * FROM {src}")
    for table in ("masks", "frames"):
        con.execute(f"""
            CREATE OR REPLACE VIEW {table} AS
            SELECT t.* FROM {table}_all AS t
            SEMI JOIN (SELECT video_id, attempt FROM videos WHERE status = 'ok') AS c
              ON t.video_id = c.video_id AND t.attempt = c.attempt""")
    if sandboxed:
        lock_down(con, layout)
    return con


def lock_down(con, layout: Layout) -> None:
    """Only the run's own tables can be read from now on: DuckDB's external access is off except
    for the folders of ``masks``, ``frames`` and ``videos`` (no other file, no URL, no ATTACH, no
    extension install), and the configuration is locked so that SQL cannot undo it. Writes into
    those folders (COPY ... TO) are left to ``check_read_only``, which refuses every statement
    but a read."""
    allowed = ", ".join(_sql_str(layout.url(t) + "/") for t in TABLES)
    con.execute(f"SET allowed_directories = [{allowed}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def check_read_only(con, sql: str):
    """The one statement of ``sql`` when it is a read (``READ_STATEMENTS``); else UnsafeQuery.
    A syntax error is DuckDB's own error."""
    statements = con.extract_statements(sql)
    hint = "(--unsafe-sql runs any SQL, with full file and network access)"
    if len(statements) != 1:
        raise UnsafeQuery(f"give exactly one SQL statement, got {len(statements)} {hint}")
    kind = {"LOAD": "INSTALL/LOAD"}.get(statements[0].type.name, statements[0].type.name)  # DuckDB's name for both
    if kind not in READ_STATEMENTS:
        raise UnsafeQuery(f"only a read-only query ({', '.join(READ_STATEMENTS)}) over the run's tables is run, "
                          f"not {kind} {hint}")
    return statements[0]


def query(output: str, sql: str, storage: st.Storage | None = None, *, unsafe: bool = False):
    """Runs ``sql`` over the views; returns a pyarrow Table (empty for a statement without a result).
    Unless ``unsafe``: one read-only statement, on a connection that reads the run's tables only."""
    import pyarrow as pa

    con = connect(output, storage, sandboxed=not unsafe)
    if not unsafe:
        check_read_only(con, sql)
    rel = con.sql(sql)
    return pa.table({}) if rel is None else rel.to_arrow_table()


# -- one video ---------------------------------------------------------------------------------

@dataclass
class FrameLabels:
    index: int
    name: str | None
    masks: list[tuple[int, str]] = field(default_factory=list)  # (object_id, RLE) of non-empty masks
    u_map_png: bytes | None = None


@dataclass
class VideoLabels:
    video_id: str
    video_uri: str
    height: int
    width: int
    frames: list[FrameLabels]

    @property
    def has_u_maps(self) -> bool:
        return any(f.u_map_png is not None for f in self.frames)

    def decoded(self, frame: FrameLabels) -> list[tuple[int, np.ndarray]]:
        return [(oid, decode_rle(rle, self.height, self.width)) for oid, rle in frame.masks]


def _rows_of(table, attempt: str, frame_indices):
    import pyarrow as pa
    import pyarrow.compute as pc

    keep = pc.equal(table["attempt"], attempt)
    if frame_indices is not None:
        wanted = pa.array(sorted(set(map(int, frame_indices))), pa.int32())
        keep = pc.and_(keep, pc.is_in(table["frame_index"], value_set=wanted))
    return table.filter(keep)


def load_labels(layout: Layout, video_id: str, frame_indices: list[int] | None = None) -> VideoLabels:
    """One committed video's frames and masks (``frame_indices``: only these frames) from its own
    files under ``layout`` (``open_layout``): only rows of the attempt its ``videos`` record
    committed, as the ``masks``/``frames`` views keep."""
    # its own files, or the compacted files that cover it (one lookup, no scan of the run)
    rows = read_video(layout, video_id, {"videos": ["status", "error", "video_uri", "height", "width", "attempt"],
                                         "frames": ["frame_index", "frame_name", "u_map_png", "attempt"],
                                         "masks": ["frame_index", "object_id", "rle", "area", "attempt"]})
    rec, ft, mt = rows["videos"], rows["frames"], rows["masks"]
    if rec is None or not rec.num_rows:
        raise ReadError(f"{video_id!r}: no such video in {layout.url()}")
    status, error, video_uri, height, width, attempt = (rec[c][0].as_py() for c in rec.column_names)
    if status != "ok":
        raise ReadError(f"{video_id!r}: the video failed ({error}), it has no labels")
    if ft is None or mt is None:
        raise ReadError(f"{video_id!r}: committed, but its frames or masks file is missing from {layout.url()}")
    ft, mt = _rows_of(ft, attempt, frame_indices), _rows_of(mt, attempt, frame_indices)
    pngs = ft["u_map_png"].to_pylist() if "u_map_png" in ft.column_names else [None] * ft.num_rows
    frames = {i: FrameLabels(i, name, [], png)
              for i, name, png in zip(ft["frame_index"].to_pylist(), ft["frame_name"].to_pylist(), pngs)}
    for i, oid, rle, area in zip(*(mt[c].to_pylist() for c in ("frame_index", "object_id", "rle", "area"))):
        if area:
            frames[i].masks.append((oid, rle))
    for f in frames.values():
        f.masks.sort()
    return VideoLabels(video_id, video_uri, height, width, [frames[i] for i in sorted(frames)])


def frames_at(source, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB) of the frames ``indices`` (sorted): read directly from a folder, decoded in
    order (stopping after the last one) from a video file."""
    if not indices:
        return
    if hasattr(source, "read"):  # a folder of images: random access
        for i in indices:
            if i >= len(source):
                raise ReadError(f"{source.uri}: has {len(source)} frames, but the labels reach frame {indices[-1]}")
            yield i, source.read(i)
        return
    wanted = iter(indices)
    nxt = next(wanted)
    with contextlib.closing(iter(source)) as decoded:
        for i, rgb in enumerate(decoded):
            if i == nxt:
                yield i, rgb
                nxt = next(wanted, None)
                if nxt is None:
                    return
    raise ReadError(f"{source.uri}: the video ends before frame {nxt}, which has labels")


def labelled_frames(labels: VideoLabels, storage: st.Storage | None = None) -> Iterator[tuple[FrameLabels, np.ndarray]]:
    """(frame labels, RGB frame) for each labelled frame, in order, the frames reopened from
    ``videos.video_uri``; a frame whose size differs from its labels is refused."""
    from vos_core.io import open_frames

    storage = storage or st.Storage.from_env()
    by_index = {f.index: f for f in labels.frames}
    with open_frames(labels.video_uri, storage_options=storage.options_for(labels.video_uri)) as source:
        for i, rgb in frames_at(source, sorted(by_index)):
            if rgb.shape[:2] != (labels.height, labels.width):
                raise ReadError(f"{labels.video_uri}: frame {i} is {rgb.shape[1]}x{rgb.shape[0]}, but its labels "
                                f"are {labels.width}x{labels.height} (the video changed since it was labelled?)")
            yield by_index[i], rgb
