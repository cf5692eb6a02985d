"""``vos query`` / ``python -m jobs.query``: DuckDB SQL over a run's output, locally or on object storage.

    python -m jobs.query --output s3://bucket/labels/run1 "SELECT status, count(*) FROM videos GROUP BY 1"
    python -m jobs.query --output ./vos_output/run1 --format csv "SELECT * FROM masks" > masks.csv
    python -m jobs.query --output ./vos_output/run1 --decode-video judo-a --to /tmp/judo-a-masks

Views: ``videos`` (every commit record), ``masks`` and ``frames`` (committed rows only),
``masks_all`` and ``frames_all`` (every data file); see jobs/inspect/read.py, which also gives
them to Python (``connect(output)``, ``query(output, sql)``).

The query runs sandboxed: one read-only statement (SELECT, EXPLAIN; DESCRIBE and SHOW too) that
reads the run's own tables only, no other file, no URL, no extension install, no COPY/ATTACH.
``--unsafe-sql`` runs any SQL with DuckDB's full file and network access.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys

from . import storage as st
from .command import HelpFormatter, run_command
from .errors import EXIT_BAD_INPUT
from .inspect.export import decode_video
from .inspect.read import connect, query

__all__ = ["main", "build_parser", "write_table", "connect", "query", "decode_video"]  # connect: the Python API
FORMATS = ("table", "csv", "jsonl")
#: Rows the table format shows unless --max-rows says otherwise.
TABLE_ROWS = 40


def _json_default(v):
    """JSON for what json cannot write: bytes (``u_map_png``) as base64, the rest (timestamps) as text."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    return str(v)


def flat_for_csv(tbl):
    """``tbl`` with its nested columns (``bbox``, ``objects`` ...) as JSON text and binary ones
    as base64: CSV has no lists, structs or bytes."""
    import pyarrow as pa

    columns = []
    for col in tbl.columns:
        t = col.type
        if pa.types.is_nested(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t) \
                or pa.types.is_fixed_size_binary(t):
            nested = pa.types.is_nested(t)
            col = pa.array([None if v is None else (json.dumps(v, default=_json_default) if nested else _json_default(v))
                            for v in col.to_pylist()], pa.string())
        columns.append(col)
    return pa.table(columns, names=tbl.column_names)


def write_table(tbl, fmt: str, out=None, max_rows: int = TABLE_ROWS) -> None:
    """``tbl`` as ``fmt``: ``table`` (the first ``max_rows`` rows, 0: all, and how many were cut),
    ``csv`` or ``jsonl`` (every row)."""
    out = out or sys.stdout
    if fmt == "csv":
        import io

        import pyarrow.csv as pcsv

        buf = io.BytesIO()
        pcsv.write_csv(flat_for_csv(tbl), buf)
        out.write(buf.getvalue().decode())
    elif fmt == "jsonl":
        for row in tbl.to_pylist():
            out.write(json.dumps(row, default=_json_default) + "\n")
    elif not tbl.num_rows:
        out.write(f"(no rows; columns: {', '.join(tbl.column_names)})\n")
    else:
        import duckdb

        shown = tbl if not max_rows else tbl.slice(0, max_rows)
        with contextlib.redirect_stdout(out):
            duckdb.from_arrow(shown).show(max_rows=shown.num_rows)
        if shown.num_rows < tbl.num_rows:
            out.write(f"{tbl.num_rows - shown.num_rows} more row(s) not shown: {tbl.num_rows} in all, the first "
                      f"{shown.num_rows} above (--max-rows N, 0: every row; or --format csv/jsonl)\n")


def sql_error_line(e: Exception) -> str:
    """DuckDB's message on one line (its error type, the problem, a 'Did you mean'), without the
    quoted query and caret that follow."""
    head = str(e).split("\n\n", 1)[0]
    return " ".join(line.strip() for line in head.splitlines() if line.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.query", formatter_class=HelpFormatter,
                                description="DuckDB SQL over a pseudo-label run: views videos, masks, frames "
                                            "(committed rows), masks_all, frames_all.")
    p.add_argument("sql", nargs="?", help="the query, e.g. \"SELECT * FROM videos WHERE status = 'failed'\"")
    p.add_argument("--output", required=True, help="the run's --output URI (local path, file://, s3:// ...)")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="table, csv (lists and structs as JSON text, binary as base64) or jsonl")
    p.add_argument("--max-rows", type=int, default=TABLE_ROWS, help="rows the table format shows (0: all)")
    p.add_argument("--decode-video", metavar="ID", help="write this video's masks as PNGs (needs --to)")
    p.add_argument("--to", metavar="DIR", help="folder for --decode-video")
    p.add_argument("--unsafe-sql", action="store_true",
                   help="run any SQL (several statements, COPY ... TO, ATTACH, other files and URLs, extensions); "
                        "default: one read-only query over the run's tables")
    st.add_storage_arguments(p)
    return p


def _run(args: argparse.Namespace) -> int:
    import duckdb

    storage = st.Storage.from_env(args.endpoint_url, args.storage_options)
    if args.decode_video is not None:
        written = decode_video(args.output, args.decode_video, args.to, storage)
        print(f"wrote {len(written)} PNG(s) to {args.to}")
        if not args.sql:
            return 0
    try:
        tbl = query(args.output, args.sql, storage, unsafe=args.unsafe_sql)
    except duckdb.Error as e:
        line = sql_error_line(e)
        if isinstance(e, duckdb.PermissionException):
            line += " (the query may read the run's tables only; --unsafe-sql lifts this)"
        print(f"vos query: error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    write_table(tbl, args.format, max_rows=args.max_rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.decode_video is not None and not args.to:
        p.error("--decode-video needs --to DIR")
    if args.decode_video is None and not args.sql:
        p.error("give a SQL query (or --decode-video ID --to DIR)")
    if args.max_rows < 0:
        p.error("--max-rows must be >= 0")
    return run_command("vos query", lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
