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
"""
from __future__ import annotations

import csv
import io
import json
import math
import posixpath
from dataclasses import asdict, dataclass

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


def _format(path: str) -> str | None:
    ext = posixpath.splitext(path.lower())[1]
    return FORMATS.get(ext)


def _read_rows(fs, path: str, fmt: str, shown: str) -> list[dict]:
    data = fs.cat_file(path)
    if fmt == "parquet":
        # use_threads=False: with torch loaded, a threaded read from a buffer sometimes aborted the
        # process at exit (pyarrow 26, torch 2.13); a manifest is small, threads buy nothing here
        table = pq.read_table(io.BytesIO(data), use_threads=False)
        return table.to_pylist()
    text = data.decode("utf-8-sig")
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


def validate(rows: list[dict], shown: str, base_dir: str = "") -> list[VideoTask]:
    """Manifest rows -> tasks; raises ManifestError for empty/duplicate ids, missing columns, bad start_frame."""
    if not rows:
        raise ManifestError(f"{shown}: the manifest has no rows")
    columns = set().union(*(r.keys() for r in rows))
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ManifestError(f"{shown}: missing column(s) {', '.join(missing)} (has: {', '.join(sorted(columns))}); "
                            f"required: {', '.join(REQUIRED)}")
    tasks, seen = [], {}
    for i, r in enumerate(rows):
        where = f"{shown}: row {i + 1}"
        _check_text(r, where)
        vid = _text(r.get("video_id"))
        if vid is None or not vid.strip():
            raise ManifestError(f"{where}: empty video_id (every video needs a non-empty, unique id)")
        if "\x00" in vid:
            raise ManifestError(f"{where}: video_id contains a NUL character")
        if vid in seen:
            raise ManifestError(f"{where}: duplicate video_id {vid!r} (also row {seen[vid] + 1})")
        seen[vid] = i
        video_uri, ann_uri = _text(r.get("video_uri")), _text(r.get("annotations_uri"))
        fix_uri = _text(r.get("corrections_uri"))
        tasks.append(VideoTask(
            video_id=vid,
            video_uri=st.resolve_relative(video_uri, base_dir) if video_uri and video_uri.strip() else None,
            annotations_uri=st.resolve_relative(ann_uri, base_dir) if ann_uri and ann_uri.strip() else None,
            start_frame=_start_frame(r.get("start_frame"), where),
            corrections_uri=st.resolve_relative(fix_uri, base_dir) if fix_uri and fix_uri.strip() else None,
        ))
    return tasks


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


def load_manifest(uri: str, storage: st.Storage | None = None, davis_resolution: str | None = None) -> list[VideoTask]:
    """Tasks from a manifest file (Parquet, CSV, JSON Lines) or a DAVIS-layout root."""
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
            return from_davis(uri, storage, davis_resolution)
        raise ManifestError(f"{uri}: a folder, but not a DAVIS-layout root (no JPEGImages/ and Annotations/); "
                            f"pass a manifest file (.parquet, .csv, .jsonl) or a DAVIS root")
    if not exists:
        raise ManifestError(f"{uri}: manifest not found")
    fmt = _format(path)
    if fmt is None:
        raise ManifestError(f"{uri}: unknown manifest format; use .parquet, .csv, .jsonl/.ndjson/.json")
    try:
        rows = _read_rows(fs, path, fmt, uri)
    except ManifestError:
        raise
    except Exception as e:
        raise ManifestError(f"{uri}: cannot read as {fmt} ({type(e).__name__}: {e})") from e
    return validate(rows, uri, base_dir=st.parent_uri(uri))


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
