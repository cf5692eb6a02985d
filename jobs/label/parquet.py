"""Parquet files of the output: one video's rows of one table streamed into a file that is
published atomically (``TableFile``), and the one-row commit record (``one_row_file``)."""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage as st
from ..layout import Layout
from ..schema import SCHEMAS, SORT_KEYS

#: Rows buffered before a row group is written: bounds memory however long the video
#: (a masks row is ~0.1-2 kB, mostly RLE), and keeps row groups at tens of MB at most.
#: A frames row is ~0.5 kB plus its U-map PNG (a few kB), hence fewer rows per group.
ROW_GROUP_ROWS = {"masks": 65_536, "frames": 4_096, "videos": 1}
ZSTD_LEVEL = 3
#: Object stores: multipart part size, i.e. the most of a file held in memory before it is uploaded.
UPLOAD_PART_BYTES = 16 * 2**20
#: Dictionary-encoded columns (few distinct values per file) and columns without min/max statistics
#: (long strings and binaries nobody filters on by range).
DICTIONARY_COLUMNS = ("video_id", "run_id", "attempt", "frame_name")
NO_STATISTICS = ("rle", "objects", "u_map_png")


def writer_options(table: str) -> dict:
    """``pq.ParquetWriter`` settings of every file of ``table`` (one video's, or a compacted one)."""
    names = SCHEMAS[table].names
    return dict(compression="zstd", compression_level=ZSTD_LEVEL,
                use_dictionary=[c for c in DICTIONARY_COLUMNS if c in names],
                write_statistics=[c for c in names if c not in NO_STATISTICS],
                sorting_columns=[pq.SortingColumn(names.index(k)) for k in SORT_KEYS[table]])


class TableFile:
    """Rows of one table for one video, streamed into a Parquet file that is published atomically."""

    def __init__(self, layout: Layout, table: str, video_id: str):
        self.table = table
        self.schema = SCHEMAS[table]
        self.path = layout.data_path(table, video_id)
        self._file = st.AtomicFile(layout.fs, self.path, layout.staging, block_size=UPLOAD_PART_BYTES)
        self._writer = pq.ParquetWriter(self._file.file, self.schema, **writer_options(table))
        self._cols: dict[str, list] = {n: [] for n in self.schema.names}
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


def one_row_file(table: str, row: dict) -> bytes:
    """A complete Parquet file of one row (the ``videos`` commit record), to PUT in one request."""
    schema = SCHEMAS[table]
    t = pa.table({f.name: pa.array([row.get(f.name)], type=f.type) for f in schema}, schema=schema)
    buf = io.BytesIO()
    pq.write_table(t, buf, compression="zstd", compression_level=ZSTD_LEVEL)
    return buf.getvalue()
