"""SQL over a run's output with DuckDB, locally or on object storage.

    python -m jobs.query --output s3://bucket/labels/run1 "SELECT status, count(*) FROM videos GROUP BY 1"
    python -m jobs.query --output ./vos_output/run1 --decode-video judo-a --to /tmp/judo-a-masks

Views (see README.md for every column):

* ``videos``: every commit record, ``ok`` and ``failed``;
* ``masks``, ``frames``: the rows of committed videos only - those whose ``(video_id, attempt)``
  match a ``videos`` row with ``status = 'ok'`` (the commit protocol of jobs/commit.py);
* ``masks_all``, ``frames_all``: every data file as a plain glob reads it (may include a video
  being written, or one whose worker died before committing).

All views carry ``shard`` (the hive partition, a string such as ``'07'``). Remote outputs are read
through fsspec (``duckdb.register_filesystem``), so no DuckDB extension is downloaded.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

import numpy as np

from . import storage as st
from .commit import Layout, decode_rle
from .schema import SCHEMAS, TABLES


def _sql_str(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def table_glob(layout: Layout, table: str) -> str:
    return layout.url(table, "**", "*.parquet")


def connect(output: str, storage: st.Storage | None = None, con=None):
    """A DuckDB connection with the views ``videos``, ``masks``, ``frames`` (committed rows),
    ``masks_all`` and ``frames_all`` over the dataset at ``output``."""
    import duckdb
    import pyarrow as pa

    storage = storage or st.Storage.from_env()
    layout = Layout(output, storage)
    fs = layout.fs
    from .commit import read_run
    if read_run(layout) is None and not any(layout.table_files(t) for t in TABLES):
        raise FileNotFoundError(f"{layout.url()}: no pseudo-label output here (no _run.json, no tables)")
    con = con or duckdb.connect()
    if not st.is_local(fs):
        con.register_filesystem(fs)
    for table in TABLES:
        raw = "videos" if table == "videos" else f"{table}_all"
        if layout.table_files(table):
            src = f"read_parquet({_sql_str(table_glob(layout, table))}, hive_partitioning = true)"
        else:  # no file yet: an empty view with the documented columns
            empty = SCHEMAS[table].empty_table().append_column("shard", pa.array([], pa.string()))
            con.register(f"_empty_{table}", empty)
            src = f"_empty_{table}"
        con.execute(f"CREATE OR REPLACE VIEW {raw} AS SELECT * FROM {src}")
    for table in ("masks", "frames"):
        con.execute(f"""
            CREATE OR REPLACE VIEW {table} AS
            SELECT t.* FROM {table}_all AS t
            SEMI JOIN (SELECT video_id, attempt FROM videos WHERE status = 'ok') AS c
              ON t.video_id = c.video_id AND t.attempt = c.attempt""")
    return con


def query(output: str, sql: str, storage: st.Storage | None = None):
    """Runs ``sql`` over the views; returns a pyarrow Table."""
    rel = connect(output, storage).sql(sql)
    if rel is None:  # a statement without a result
        import pyarrow as pa
        return pa.table({})
    return rel.to_arrow_table()


def _png_name(frame_name, frame_index: int) -> str:
    if frame_name and re.fullmatch(r"[A-Za-z0-9_.-]+", frame_name) and frame_name not in (".", ".."):
        return f"{frame_name}.png"
    return f"{frame_index:05d}.png"


def decode_video(output: str, video_id: str, to: str, storage: st.Storage | None = None) -> list[str]:
    """Writes one committed video's masks back as id-map PNGs (DAVIS palette; 16-bit greyscale
    when an id exceeds 255) named like its frames. Returns the paths written."""
    from vos_core.io import write_palette_png

    con = connect(output, storage)
    frames = con.execute("SELECT frame_index, frame_name, height, width FROM frames WHERE video_id = ? "
                         "ORDER BY frame_index", [video_id]).fetchall()
    if not frames:
        status = con.execute("SELECT status, error FROM videos WHERE video_id = ?", [video_id]).fetchall()
        why = f"its status is {status[0][0]}: {status[0][1]}" if status else "no such committed video"
        raise KeyError(f"{video_id!r}: nothing to decode ({why})")
    rows = con.execute("SELECT frame_index, object_id, rle FROM masks WHERE video_id = ? "
                       "ORDER BY frame_index, object_id", [video_id]).fetchall()
    by_frame: dict[int, list] = {}
    for fi, oid, rle in rows:
        by_frame.setdefault(fi, []).append((oid, rle))
    wide = any(oid > 255 for _, oid, _ in rows)
    os.makedirs(to, exist_ok=True)
    written = []
    for fi, name, h, w in frames:
        ids = np.zeros((h, w), dtype=np.uint16 if wide else np.uint8)
        for oid, rle in by_frame.get(fi, []):
            ids[decode_rle(rle, h, w).astype(bool)] = oid
        path = os.path.join(to, _png_name(name, fi))
        if wide:
            import cv2
            cv2.imwrite(path, ids)
        else:
            write_palette_png(path, ids)
        written.append(path)
    return written


def _print_table(tbl, fmt: str, out=None) -> None:
    out = out or sys.stdout
    if fmt == "csv":
        import pyarrow.csv as pcsv
        buf = __import__("io").BytesIO()
        pcsv.write_csv(tbl, buf)
        out.write(buf.getvalue().decode())
    elif fmt == "jsonl":
        import json
        for row in tbl.to_pylist():
            out.write(json.dumps(row, default=str) + "\n")
    else:
        import duckdb
        rel = duckdb.from_arrow(tbl)
        out.write(str(rel) if tbl.num_rows else f"(no rows; columns: {', '.join(tbl.column_names)})\n")
        if not str(rel).endswith("\n"):
            out.write("\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.query",
                                description="DuckDB SQL over a pseudo-label run: views videos, masks, frames "
                                            "(committed rows), masks_all, frames_all.")
    p.add_argument("sql", nargs="?", help="the query, e.g. \"SELECT * FROM videos WHERE status = 'failed'\"")
    p.add_argument("--output", required=True, help="the run's --output URI (local path, file://, s3:// ...)")
    p.add_argument("--format", choices=["table", "csv", "jsonl"], default="table")
    p.add_argument("--decode-video", metavar="ID", help="write this video's masks as PNGs (needs --to)")
    p.add_argument("--to", metavar="DIR", help="folder for --decode-video")
    st.add_storage_arguments(p)
    args = p.parse_args(argv)
    storage = st.Storage.from_env(args.endpoint_url, args.storage_options)
    if args.decode_video is not None:
        if not args.to:
            p.error("--decode-video needs --to DIR")
        try:
            written = decode_video(args.output, args.decode_video, args.to, storage)
        except (KeyError, FileNotFoundError) as e:
            print(f"error: {e.args[0]}", file=sys.stderr)
            return 1
        print(f"wrote {len(written)} PNG(s) to {args.to}")
        if not args.sql:
            return 0
    if not args.sql:
        p.error("give a SQL query (or --decode-video ID --to DIR)")
    try:
        tbl = query(args.output, args.sql, storage)
    except FileNotFoundError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 1
    _print_table(tbl, args.format)
    return 0


if __name__ == "__main__":
    sys.exit(main())
