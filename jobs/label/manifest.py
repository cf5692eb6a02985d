"""The job's input: one row per video.

A manifest is a Parquet, CSV or JSON Lines file (local or any fsspec URL) with columns

* ``video_id`` (required, non-empty, unique): any string; it is kept as is in the output rows
  (file names use a safe key derived from it, see jobs.layout.video_key);
* ``video_uri`` (required): an mp4/avi/... file or a folder of frames;
* ``annotations_uri`` (required): a folder of id-map PNGs named by frame (``00000.png``),
  or one PNG: the mask of frame ``start_frame`` (0 unless given);
* ``start_frame`` (optional): where tracking starts; earlier frames and masks are ignored.
  Default: the first annotated frame.
* ``corrections_uri`` (optional): a folder of id-map PNGs named by frame whose objects replace
  the prediction at that frame and restart that object's memory (vos_core's corrections).

Relative URIs are taken relative to the manifest's folder. Other columns are ignored.
Instead of a manifest file, a DAVIS-layout root (``JPEGImages/<seq>``, ``Annotations/<seq>``)
gives one row per sequence (``video_id`` = sequence name).

Problems with the manifest itself (unreadable, a required column missing, an empty or
duplicate ``video_id``, a bad ``start_frame``) stop the job before it starts, naming the row.
A row whose files are missing or bad is not a manifest problem: that video fails alone.

At scale: a Parquet manifest is read ``BATCH_ROWS`` rows at a time and checked with Arrow compute
(no Python object per row), and the job keeps its videos as one Arrow table (``Tasks``), so a
10^6-row manifest costs its Arrow buffers (about the file's uncompressed size), not 10^6 objects.
CSV and JSON manifests are parsed row by row in Python: use Parquet for large corpora.
"""
from __future__ import annotations

import csv
import io
import json
import math
import posixpath
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import storage as st
from ..errors import BadInput

REQUIRED = ("video_id", "video_uri", "annotations_uri")
OPTIONAL = ("start_frame", "corrections_uri")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl"}


class ManifestError(BadInput):
    """The manifest cannot be used; the message names the file and the row."""


@dataclass(frozen=True)
class VideoTask:
    video_id: str
    video_uri: str | None
    annotations_uri: str | None
    start_frame: int | None = None
    corrections_uri: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VideoTask":
        return cls(**{k: d.get(k) for k in ("video_id", "video_uri", "annotations_uri", "start_frame",
                                             "corrections_uri")})


#: The job's videos as Arrow columns (``Tasks``): the manifest's columns, checked and resolved.
TASK_SCHEMA = pa.schema([("video_id", pa.string()), ("video_uri", pa.string()), ("annotations_uri", pa.string()),
                         ("start_frame", pa.int64()), ("corrections_uri", pa.string())])
#: Parquet manifest rows read and checked at a time.
BATCH_ROWS = 65_536


class Tasks:
    """Videos as one Arrow table of ``TASK_SCHEMA`` rows. ``len``, iteration (``VideoTask`` one at a
    time, never all at once) and the selections the driver makes are Arrow operations."""

    def __init__(self, table: pa.Table):
        self.table = table

    @classmethod
    def from_list(cls, tasks) -> "Tasks":
        return cls(pa.Table.from_pylist([t.to_dict() for t in tasks], schema=TASK_SCHEMA))

    def __len__(self) -> int:
        return self.table.num_rows

    def __iter__(self):
        for batch in self.table.to_batches(max_chunksize=4096):
            for d in batch.to_pylist():
                yield VideoTask(**d)

    def to_list(self) -> list[VideoTask]:
        return list(self)

    def ids(self) -> pa.ChunkedArray:
        return self.table["video_id"]

    def exclude(self, video_ids) -> "Tasks":
        """The videos whose id is not in ``video_ids`` (an Arrow array), in manifest order."""
        if len(video_ids) == 0 or not len(self):
            return self
        if isinstance(video_ids, pa.ChunkedArray):
            video_ids = video_ids.combine_chunks()
        keep = pc.invert(pc.is_in(self.table["video_id"], value_set=video_ids.cast(pa.string())))
        return Tasks(self.table.filter(keep))

    def head(self, n: int | None) -> "Tasks":
        return self if n is None else Tasks(self.table.slice(0, n))

    def shard(self, index: int, count: int) -> "Tasks":
        """Slice ``index`` (0-based) of ``count`` contiguous slices of the rows: the slices are disjoint and
        together hold every row (sizes differ by one at most). Depends on the manifest's row order only."""
        n = len(self)
        lo, hi = index * n // count, (index + 1) * n // count
        return Tasks(self.table.slice(lo, hi - lo))

    def slices(self, rows: int):
        """Tables of at most ``rows`` rows each, copied (``take``: a zero-copy slice could carry, when
        serialised, its parent's whole buffers)."""
        import numpy as np

        n = len(self)
        for lo in range(0, n, rows):
            yield self.table.take(np.arange(lo, min(lo + rows, n)))


def _format(path: str) -> str | None:
    ext = posixpath.splitext(path.lower())[1]
    return FORMATS.get(ext)


def _read_rows(fs, path: str, fmt: str, shown: str) -> list[dict]:
    """Rows of a CSV or JSON (Lines) manifest."""
    text = fs.cat_file(path).decode("utf-8-sig")  # Parquet: _read_parquet
    if fmt == "csv":
        return [dict(r) for r in csv.DictReader(io.StringIO(text))]
    stripped = text.lstrip()
    if stripped.startswith("["):  # a .json file holding one array of objects
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ManifestError(f"{shown}: expected a JSON array of objects")
        return rows
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{shown}: line {n} is not JSON ({e})") from None
        if not isinstance(row, dict):
            raise ManifestError(f"{shown}: line {n} is not a JSON object")
        rows.append(row)
    return rows


def _text(v) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return str(v)


#: The largest frame index the output can hold (``start_frame`` and ``frame_index`` are int32 columns).
MAX_FRAME_INDEX = 2**31 - 1


def _start_frame(v, where: str) -> int | None:
    if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
        return None
    bad = ManifestError(f"{where}: start_frame must be a frame index 0..{MAX_FRAME_INDEX}, got {v!r}")
    if isinstance(v, bool):  # JSON true is not frame 1
        raise bad
    if isinstance(v, int):
        f = v
    else:
        try:
            f = float(str(v).strip()) if isinstance(v, str) else float(v)
        except (TypeError, ValueError, OverflowError):
            raise bad from None
        if not math.isfinite(f) or f != int(f):
            raise bad
        f = int(f)
    if not 0 <= f <= MAX_FRAME_INDEX:  # a value the int32 column cannot hold would fail the video's record
        raise bad
    return f


def _check_text(row: dict, where: str) -> None:
    """Text the Parquet output cannot store (a lone surrogate from a JSON ``\\ud800`` escape) would fail
    the video's record, not the video: refuse it here."""
    for column in REQUIRED + OPTIONAL:
        v = row.get(column)
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ManifestError(f"{where}: {column} is not valid Unicode text: {v!r}") from None


def _task(r: dict, where: str, base_dir: str) -> VideoTask:
    """One manifest row -> its task; raises ManifestError naming ``where``."""
    _check_text(r, where)
    vid = _text(r.get("video_id"))
    if vid is None or not vid.strip():
        raise ManifestError(f"{where}: empty video_id (every video needs a non-empty, unique id)")
    if "\x00" in vid:
        raise ManifestError(f"{where}: video_id contains a NUL character")
    video_uri, ann_uri = _text(r.get("video_uri")), _text(r.get("annotations_uri"))
    fix_uri = _text(r.get("corrections_uri"))
    return VideoTask(
        video_id=vid,
        video_uri=st.resolve_relative(video_uri, base_dir) if video_uri and video_uri.strip() else None,
        annotations_uri=st.resolve_relative(ann_uri, base_dir) if ann_uri and ann_uri.strip() else None,
        start_frame=_start_frame(r.get("start_frame"), where),
        corrections_uri=st.resolve_relative(fix_uri, base_dir) if fix_uri and fix_uri.strip() else None,
    )


def _check_columns(columns, shown: str) -> None:
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ManifestError(f"{shown}: missing column(s) {', '.join(missing)} (has: {', '.join(sorted(columns))}); "
                            f"required: {', '.join(REQUIRED)}")


def validate(rows: list[dict], shown: str, base_dir: str = "") -> list[VideoTask]:
    """Manifest rows -> tasks; raises ManifestError for empty/duplicate ids, missing columns, bad start_frame."""
    if not rows:
        raise ManifestError(f"{shown}: the manifest has no rows")
    _check_columns(set().union(*(r.keys() for r in rows)), shown)
    tasks, seen = [], {}
    for i, r in enumerate(rows):
        where = f"{shown}: row {i + 1}"
        task = _task(r, where, base_dir)
        if task.video_id in seen:
            raise ManifestError(f"{where}: duplicate video_id {task.video_id!r} (also row {seen[task.video_id] + 1})")
        seen[task.video_id] = i
        tasks.append(task)
    return tasks


# -- Parquet, streamed: Arrow compute on BATCH_ROWS rows at a time ------------------------------------

_TEXT_COLUMNS = ("video_id", "video_uri", "annotations_uri", "corrections_uri")


def _as_text(arr: pa.Array) -> pa.Array | None:
    """``arr`` as a string array when it holds text (or only nulls), else None (the per-row path)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        return arr.cast(pa.string())
    return None


def _first(mask: pa.Array) -> int | None:
    """Index of the first true value of a boolean array (nulls are false), or None."""
    hits = pc.indices_nonzero(pc.fill_null(mask, False))
    return hits[0].as_py() if len(hits) else None


def _blank(arr: pa.Array) -> pa.Array:
    return pc.fill_null(pc.equal(pc.utf8_trim_whitespace(arr), ""), True)


def _check_batch(batch: pa.RecordBatch, shown: str, base_dir: str, offset: int) -> pa.Table:
    """One batch of manifest rows (row numbers from ``offset + 1``) -> a ``TASK_SCHEMA`` table, with the
    per-row checks of ``_task`` done by Arrow compute; columns of other types take ``_task`` row by row."""
    n = batch.num_rows
    names = batch.schema.names
    text = {c: (_as_text(batch.column(c)) if c in names else pa.nulls(n, pa.string())) for c in _TEXT_COLUMNS}
    frames = batch.column("start_frame") if "start_frame" in names else pa.nulls(n, pa.int64())
    int_frames = pa.types.is_integer(frames.type) or pa.types.is_null(frames.type)
    if any(a is None for a in text.values()) or not int_frames:  # ids as numbers, frames as floats or text ...
        rows = batch.to_pylist()
        return Tasks.from_list(_task(r, f"{shown}: row {offset + i + 1}", base_dir) for i, r in enumerate(rows)).table
    for c, a in text.items():
        try:
            a.validate(full=True)
        except pa.ArrowInvalid:
            raise ManifestError(f"{shown}: rows {offset + 1}..{offset + n}: {c} is not valid Unicode text") from None
    vid = text["video_id"]
    i = _first(_blank(vid))
    if i is not None:
        raise ManifestError(f"{shown}: row {offset + i + 1}: empty video_id (every video needs a non-empty, unique id)")
    i = _first(pc.match_substring(vid, "\x00"))
    if i is not None:
        raise ManifestError(f"{shown}: row {offset + i + 1}: video_id contains a NUL character")
    cols = {"video_id": vid}
    for c in _TEXT_COLUMNS[1:]:
        a = pc.if_else(_blank(text[c]), pa.scalar(None, pa.string()), text[c])
        if base_dir:  # relative URIs (no scheme, not absolute) are taken relative to the manifest's folder
            rel = pc.fill_null(pc.invert(pc.or_(pc.starts_with(a, "/"), pc.match_substring(a, "://"))), False)
            if _first(rel) is not None:
                resolved = [st.resolve_relative(v, base_dir) for v in a.filter(rel).to_pylist()]
                a = pc.replace_with_mask(a, rel, pa.array(resolved, pa.string()))
        cols[c] = a
    frames = frames.cast(pa.int64()) if frames.type != pa.int64() else frames  # uint64 beyond int64: ArrowInvalid
    i = _first(pc.or_(pc.less(frames, 0), pc.greater(frames, MAX_FRAME_INDEX)))
    if i is not None:
        raise ManifestError(f"{shown}: row {offset + i + 1}: start_frame must be a frame index 0..{MAX_FRAME_INDEX}, "
                            f"got {frames[i].as_py()!r}")
    cols["start_frame"] = frames
    return pa.Table.from_pydict(cols, schema=TASK_SCHEMA)


def _check_unique(ids: pa.ChunkedArray, shown: str) -> None:
    """Raises for the first row whose video_id an earlier row has (Arrow: only duplicated ids reach Python)."""
    counts = pc.value_counts(ids)
    dups = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if not len(dups):
        return
    rows = pc.indices_nonzero(pc.is_in(ids, value_set=dups))
    first = {}
    for i, v in zip(rows.to_pylist(), pc.take(ids, rows).to_pylist()):
        if v in first:
            raise ManifestError(f"{shown}: row {i + 1}: duplicate video_id {v!r} (also row {first[v] + 1})")
        first[v] = i


def _read_parquet(fs, path: str, shown: str, base_dir: str) -> Tasks:
    # use_threads=False: with torch loaded, a threaded read from a Python file object sometimes aborted
    # the process at exit (pyarrow 26, torch 2.13); one batch at a time, threads buy little here
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        if pf.metadata.num_rows == 0:
            raise ManifestError(f"{shown}: the manifest has no rows")
        _check_columns(names, shown)
        tables, offset = [], 0
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=[c for c in REQUIRED + OPTIONAL if c in names],
                                     use_threads=False):
            tables.append(_check_batch(batch, shown, base_dir, offset))
            offset += batch.num_rows
    table = pa.concat_tables(tables)
    _check_unique(table["video_id"], shown)
    return Tasks(table)


def from_davis(root: str, storage: st.Storage | None = None, resolution: str | None = None) -> list[VideoTask]:
    """One task per sequence of a DAVIS-layout root."""
    from vos_core.errors import VOSInputError
    from vos_core.io import davis_sequences

    storage = storage or st.Storage()
    try:
        seqs = davis_sequences(root, resolution=resolution, storage_options=storage.options_for(root))
    except VOSInputError as e:
        raise ManifestError(str(e)) from e
    return [VideoTask(seq, frames, ann) for seq, frames, ann in seqs]


def is_davis_root(fs, path: str) -> bool:
    return fs.isdir(posixpath.join(path, "JPEGImages")) and fs.isdir(posixpath.join(path, "Annotations"))


def read_tasks(uri: str, storage: st.Storage | None = None, davis_resolution: str | None = None) -> Tasks:
    """The videos of a manifest file (Parquet: streamed; CSV, JSON Lines) or of a DAVIS-layout root."""
    storage = storage or st.Storage()
    uri = str(uri)
    try:
        fs, path = storage.resolve(uri)
        is_dir = fs.isdir(path)
        exists = is_dir or fs.isfile(path)
    except Exception as e:
        raise ManifestError(f"{uri}: cannot access the manifest ({type(e).__name__}: {e})") from e
    if is_dir:
        if is_davis_root(fs, path):
            return Tasks.from_list(from_davis(uri, storage, davis_resolution))
        raise ManifestError(f"{uri}: a folder, but not a DAVIS-layout root (no JPEGImages/ and Annotations/); "
                            f"pass a manifest file (.parquet, .csv, .jsonl) or a DAVIS root")
    if not exists:
        raise ManifestError(f"{uri}: manifest not found")
    fmt = _format(path)
    if fmt is None:
        raise ManifestError(f"{uri}: unknown manifest format; use .parquet, .csv, .jsonl/.ndjson/.json")
    try:
        if fmt == "parquet":
            return _read_parquet(fs, path, uri, st.parent_uri(uri))
        rows = _read_rows(fs, path, fmt, uri)
    except ManifestError:
        raise
    except Exception as e:
        raise ManifestError(f"{uri}: cannot read as {fmt} ({type(e).__name__}: {e})") from e
    return Tasks.from_list(validate(rows, uri, base_dir=st.parent_uri(uri)))


def load_manifest(uri: str, storage: st.Storage | None = None, davis_resolution: str | None = None) -> list[VideoTask]:
    """Tasks from a manifest file (Parquet, CSV, JSON Lines) or a DAVIS-layout root, as a list
    (small manifests; the job keeps them as ``Tasks``: ``read_tasks``)."""
    return read_tasks(uri, storage, davis_resolution).to_list()


def write_manifest(tasks: list[VideoTask], uri: str, storage: st.Storage | None = None) -> None:
    """Writes tasks as a manifest (format from the extension). Handy to turn a DAVIS root into a file."""
    import pyarrow as pa

    storage = storage or st.Storage()
    fs, path = storage.resolve(uri)
    fmt = _format(path)
    rows = [t.to_dict() for t in tasks]
    if fmt == "parquet":
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        data = buf.getvalue()
    elif fmt == "csv":
        s = io.StringIO()
        w = csv.DictWriter(s, fieldnames=list(REQUIRED + OPTIONAL))
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
        data = s.getvalue().encode()
    elif fmt == "jsonl":
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    else:
        raise ManifestError(f"{uri}: unknown manifest format; use .parquet, .csv, .jsonl")
    st.makedirs(fs, posixpath.dirname(path))
    fs.pipe_file(path, data)
