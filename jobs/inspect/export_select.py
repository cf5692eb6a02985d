"""Which rows an export writes, streamed one video at a time from DuckDB.

``--where`` is a DuckDB predicate over the ``masks`` view (committed rows only): its columns
unqualified (``quality >= 0.8``, ``video_id IN ('a', 'b')``, ``NOT annotated``), the other views
through subqueries (``video_id IN (SELECT video_id FROM videos WHERE quality_min > 0.5)``). A
frame is written with the objects the predicate selects in it; to keep whole frames, select
frames (``(video_id, frame_index) IN (SELECT video_id, frame_index FROM frames WHERE quality >= 0.8)``).

Memory: the rows come out of one ``ORDER BY video_id, frame_index, object_id`` query read as Arrow
record batches; DuckDB sorts within ``EXPORT_MEMORY`` and spills the rest to a temporary folder,
and only one video's selected rows (RLE strings) are held here at a time.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..codec import decode_rle
from ..errors import BadInput
from .read import UnsafeQuery, check_read_only, connect, lock_down, open_layout

#: DuckDB's memory for the selection's sort; beyond it, it spills to a temporary folder.
EXPORT_MEMORY = "1GB"
BATCH_ROWS = 4096
#: The ``videos`` columns an export uses (older runs lack some: they come back as null).
VIDEO_COLUMNS = ("video_id", "video_key", "video_uri", "height", "width", "frames", "objects", "start_frame",
                 "run_id", "quality_mean", "quality_min", "review_quality", "quality_calibrated")


class SelectionError(BadInput):
    """The ``--where`` predicate is not one expression DuckDB accepts."""


@dataclass
class MaskSel:
    object_id: int
    rle: str
    area: int
    bbox: list | None
    quality: float | None


@dataclass
class FrameSel:
    video_id: str
    frame_index: int
    frame_name: str | None
    height: int
    width: int
    annotated: bool
    masks: list[MaskSel] = field(default_factory=list)  # ascending object_id, empty masks included

    def decoded(self) -> list[tuple[int, np.ndarray]]:
        return [(m.object_id, decode_rle(m.rle, self.height, self.width)) for m in self.masks]

    def id_map(self) -> np.ndarray:
        """The frame as one id map (uint8, or uint16 when an id exceeds 255); objects do not overlap."""
        wide = any(m.object_id > 255 for m in self.masks)
        ids = np.zeros((self.height, self.width), np.uint16 if wide else np.uint8)
        for oid, bits in self.decoded():
            ids[bits.astype(bool)] = oid
        return ids


@dataclass
class VideoSel:
    info: dict  # its ``videos`` record (VIDEO_COLUMNS)
    frames: list[FrameSel]

    @property
    def video_id(self) -> str:
        return self.info["video_id"]


def _columns(con, view: str) -> set[str]:
    return {r[0] for r in con.sql(f"DESCRIBE {view}").fetchall()}


def check_predicate(con, where: str) -> str:
    """``where`` as one parenthesised expression over ``masks``, or SelectionError with DuckDB's message."""
    import duckdb

    where = (where or "").strip()
    if not where:
        return "TRUE"
    sql = f"SELECT * FROM masks WHERE ({where}) LIMIT 0"
    try:  # one read statement, bound against the view now (LIMIT 0: nothing read but the schema)
        check_read_only(con, sql)
        con.sql(sql).fetchall()
    except UnsafeQuery:
        raise SelectionError(f"--where must be one expression over masks, not statements: {where!r}") from None
    except duckdb.Error as e:
        raise SelectionError(f"--where {where!r}: {str(e).splitlines()[0]}") from None
    return f"({where})"


class Selection:
    """The rows of one export: ``videos()`` yields each selected video's frames, in order."""

    def __init__(self, output: str, storage=None, where: str | None = None, whole_frames: bool = False):
        """``whole_frames``: every object of each frame that has a row matching ``where`` (the review
        set). ``frame_keys`` (set after construction): an Arrow table (video_id, frame_index) that
        limits the export to those frames."""
        self.con = connect(output, storage)
        self._tmp = tempfile.mkdtemp(prefix="vos-export-")
        self.con.execute(f"SET memory_limit = '{EXPORT_MEMORY}'")
        self.con.execute(f"SET temp_directory = '{self._tmp}'")
        lock_down(self.con, open_layout(output, storage))  # --where reads the run's tables, nothing else
        self.where = check_predicate(self.con, where)
        self.whole_frames = whole_frames
        self.frame_keys = None
        self.frame_keys_sql = None  # or a query of (video_id, frame_index) over the views
        cols = _columns(self.con, "videos")
        select = ", ".join(c if c in cols else f"NULL AS {c}" for c in VIDEO_COLUMNS)
        self._videos = {r["video_id"]: r for r in self.con.sql(
            f"SELECT {select} FROM videos WHERE status = 'ok'").to_arrow_table().to_pylist()}
        self._has_quality = "quality" in _columns(self.con, "masks")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.con.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def has_quality(self) -> bool:
        return self._has_quality

    def _rows(self) -> str:
        conds = [self.where if not self.whole_frames else
                 f"(video_id, frame_index) IN (SELECT video_id, frame_index FROM masks WHERE {self.where})"]
        if self.frame_keys is not None:
            self.con.register("_export_frames", self.frame_keys)
            conds.append("(video_id, frame_index) IN (SELECT video_id, frame_index FROM _export_frames)")
        if self.frame_keys_sql:
            conds.append(f"(video_id, frame_index) IN ({self.frame_keys_sql})")
        return f"SELECT * FROM masks WHERE {' AND '.join(conds)}"

    def object_ids(self) -> list[int]:
        """The objects with a non-empty selected mask (the review set's categories)."""
        return [r[0] for r in self.con.sql(f"SELECT DISTINCT object_id FROM ({self._rows()}) WHERE area > 0 "
                                           f"ORDER BY 1").fetchall()]

    def _sql(self) -> str:
        quality = "m.quality" if self._has_quality else "NULL::FLOAT AS quality"
        rows = self._rows()
        return (f"SELECT m.video_id, m.frame_index, m.object_id, m.height, m.width, m.rle, m.area, m.bbox, {quality}, "
                f"m.annotated, f.frame_name FROM ({rows}) AS m "
                f"JOIN (SELECT video_id, frame_index, frame_name FROM frames) AS f USING (video_id, frame_index) "
                f"ORDER BY m.video_id, m.frame_index, m.object_id")

    def count(self) -> tuple[int, int]:
        """(videos, frames) the export will write: for the progress bar."""
        sql = self._sql().split(" ORDER BY ")[0]
        return self.con.sql(f"SELECT count(DISTINCT video_id), count(DISTINCT (video_id, frame_index)) "
                            f"FROM ({sql})").fetchall()[0]

    def frames(self) -> Iterator[FrameSel]:
        """The selected frames in (video_id, frame_index) order, each with its selected masks."""
        current: FrameSel | None = None
        for batch in self.con.sql(self._sql()).to_arrow_reader(BATCH_ROWS):
            cols = {n: batch.column(n).to_pylist() for n in batch.schema.names}
            for i in range(batch.num_rows):
                key = (cols["video_id"][i], cols["frame_index"][i])
                if current is None or key != (current.video_id, current.frame_index):
                    if current is not None:
                        yield current
                    current = FrameSel(key[0], key[1], cols["frame_name"][i], cols["height"][i], cols["width"][i],
                                       bool(cols["annotated"][i]))
                current.masks.append(MaskSel(cols["object_id"][i], cols["rle"][i], cols["area"][i], cols["bbox"][i],
                                             cols["quality"][i]))
        if current is not None:
            yield current

    def videos(self) -> Iterator[VideoSel]:
        """One selected video at a time, with its frames (only that video's rows are held)."""
        frames: list[FrameSel] = []
        for f in self.frames():
            if frames and f.video_id != frames[0].video_id:
                yield VideoSel(self._videos[frames[0].video_id], frames)
                frames = []
            frames.append(f)
        if frames:
            yield VideoSel(self._videos[frames[0].video_id], frames)
