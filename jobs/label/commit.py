"""The commit protocol: how one video's rows land exactly once (names: jobs/layout.py).

Per video (``VideoCommit``):

1. ``begin``: PUT ``_attempts/<key>/<attempt>.json`` (attempt = fresh uuid).
2. Stream the video's rows into ``frames/…/<key>.parquet`` and ``masks/…/<key>.parquet``.
   Each file becomes visible in ONE atomic step when it is complete (object stores: the upload
   is completed by its final request, a single PUT or CompleteMultipartUpload, and aborted on
   error; local filesystems: a temporary file under ``_staging/`` then ``os.replace``). Names
   are deterministic per video, so a retry replaces the earlier attempt's file and never adds
   a second one.
3. Commit: PUT ``videos/…/<key>.parquet`` (one row, ``status='ok'``, the ``attempt`` id,
   ``masks_rows``, ``frames``) - atomically, LAST. A video is committed iff this record exists.
4. Failure (bad input, any exception): abort the open uploads, DELETE the video's masks/frames
   files (a crashed earlier attempt may have left them), then PUT the record with
   ``status='failed'`` and the error (``write_failed``; the driver uses it too, for a video
   whose workers kept dying). A video already committed ``ok`` by another attempt is left alone.
   When not even the failed record can be written (read-only or full output), the worker reports
   ``committed: False`` and the driver exits 3: the rerun does the video again.

One driver writes a run at a time: it holds the run's lease (jobs/label/lease.py) from before
``_run.json`` to its end, so the steps above never race with another driver's attempts.

What readers see:

* A plain glob (``read_parquet('<out>/masks/**/*.parquet')``, ``pyarrow.dataset``) sees, for
  each video, all of its rows of that table or none (one file, published atomically), and
  never a video twice (one deterministic name per video). Files are never appended to. It may
  see the masks of a video whose commit record is not written yet (being processed, or its
  worker died after step 2 and a retry is due).
* Committed-only reading: keep masks/frames rows whose ``(video_id, attempt)`` match a
  ``videos`` row with ``status = 'ok'`` - the ``masks`` and ``frames`` views of the read layer
  (jobs/inspect/read.py) do exactly this. That shows a video only once all three tables hold
  it, and only the rows of the attempt that committed.
* A rerun with the same run id (a restarted driver) reads ``videos/`` and skips every video
  that has a record (``--retry-failed`` also reruns the failed ones); an actor killed mid-video
  leaves no record, so Ray's retry (or a rerun) does it again, overwriting whatever the dead
  attempt had published.

Temporary files of killed workers stay in ``_staging/`` (local) until the run ends
(``clear_staging``); on S3 their multipart uploads stay incomplete and invisible (a bucket
lifecycle rule ``AbortIncompleteMultipartUpload`` reclaims them).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import posixpath
import uuid

from .. import storage as st
from ..layout import ATTEMPTS, Layout, video_key
from .parquet import TableFile, one_row_file
from .rows import frame_rows, video_row, worker_name


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def ray_node_id() -> str | None:
    """The Ray node this process runs on (None outside Ray): on a cluster, where an attempt ran."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # a record field, never a reason to fail
        return None


def count_attempts(layout: Layout, video_id: str) -> int:
    fs = layout.fs
    d = layout.path(ATTEMPTS, video_key(video_id))
    fs.invalidate_cache(d)
    try:
        return sum(1 for p in fs.ls(d, detail=False) if p.endswith(".json"))
    except FileNotFoundError:
        return 0


def _put_record(layout: Layout, row: dict) -> None:
    st.put_atomic(layout.fs, layout.data_path("videos", row["video_id"]), one_row_file("videos", row), layout.staging)


#: What a ``failed`` record keeps when one of its other fields cannot be stored (written anyway,
#: so that the video has a row and the run says why).
_FAILED_ESSENTIALS = ("video_id", "video_key", "run_id", "schema_version", "worker", "status", "error", "error_type",
                      "frames", "masks_rows", "attempts", "attempt", "started_at", "finished_at")


def committed_record(layout: Layout, video_id: str, run_id: str) -> dict | None:
    """The video's ``ok`` record of this run, if there is one (a missing or unreadable record: None)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(layout.data_path("videos", video_id), filesystem=layout.fs).to_pylist()
    except (OSError, pa.ArrowException):
        return None
    row = rows[0] if rows else None
    return row if row and row.get("status") == "ok" and row.get("run_id") == run_id else None


def write_failed(layout: Layout, video_id: str, run_id: str, error: str, error_type: str, **fields) -> dict:
    """Step 4: deletes the video's data files, then writes its ``failed`` record. Returns the record.

    A video another attempt of the run has committed (``ok``) is left as it is and its record
    returned: a failure never deletes what was committed (e.g. an attempt that committed and whose
    actor died before reporting it, when the driver then records the video as WorkerDied)."""
    done = committed_record(layout, video_id, run_id)
    if done is not None and done.get("attempt") != fields.get("attempt"):
        return done
    for table in ("masks", "frames"):
        st.remove(layout.fs, layout.data_path(table, video_id))
    fields.setdefault("attempts", count_attempts(layout, video_id))
    fields.setdefault("finished_at", now())
    row = video_row(video_id, run_id, status="failed", error=error, error_type=error_type, frames=0, masks_rows=0,
                    **fields)
    try:
        data = one_row_file("videos", row)
    except (OverflowError, TypeError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        row = {k: row[k] for k in _FAILED_ESSENTIALS if k in row}
        row["error"] = f"{error} (the record's other fields could not be stored: {type(e).__name__}: {e})"
        data = one_row_file("videos", row)
    st.put_atomic(layout.fs, layout.data_path("videos", video_id), data, layout.staging)
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
        self.started_at = now()
        self._files: dict[str, TableFile] = {}
        self.frames = 0
        self.objects = 0
        self.hw: tuple[int, int] | None = None

    def begin(self, **info) -> None:
        """Step 1: records that this attempt started (and where: host, pid, Ray node; for debugging and tests)."""
        marker = {"video_id": self.video_id, "attempt": self.attempt, "run_id": self.run_id,
                  "worker": worker_name(), "pid": os.getpid(), "node_id": ray_node_id(),
                  "started_at": self.started_at.isoformat(), **info}
        path = self.layout.path(ATTEMPTS, video_key(self.video_id), f"{self.attempt}.json")
        st.makedirs(self.layout.fs, posixpath.dirname(path))
        st.put_atomic(self.layout.fs, path, json.dumps(marker).encode(), self.layout.staging)

    def _file(self, table: str) -> TableFile:
        if table not in self._files:
            self._files[table] = TableFile(self.layout, table, self.video_id)
        return self._files[table]

    def add(self, result, frame_name: str | None = None) -> None:
        """Step 2, one frame: a ``vos_core.FrameResult``'s masks and statistics."""
        masks, frame = frame_rows(result, frame_name,
                                  {"video_id": self.video_id, "run_id": self.run_id, "attempt": self.attempt})
        masks_file = self._file("masks")
        for row in masks:
            masks_file.append(row)
        self._file("frames").append(frame)
        self.hw = result.mask.shape
        self.frames += 1
        self.objects = frame["num_objects"]

    def commit(self, **fields) -> dict:
        """Steps 2-3: publishes frames and masks, then the ``ok`` record (last). Returns the record."""
        if not self.frames:
            raise ValueError(f"{self.video_id}: no frame was segmented, nothing to commit")
        masks_rows = self._files["masks"].rows
        for table in ("frames", "masks"):
            self._files[table].publish()
        finished = now()
        seconds = (finished - self.started_at).total_seconds()
        fields.setdefault("attempts", count_attempts(self.layout, self.video_id))
        row = video_row(self.video_id, self.run_id, status="ok", error=None, error_type=None, frames=self.frames,
                        objects=self.objects, masks_rows=masks_rows, height=self.hw[0], width=self.hw[1],
                        seconds=seconds, fps=self.frames / seconds if seconds > 0 else None,
                        started_at=self.started_at, finished_at=finished, attempt=self.attempt, **fields)
        _put_record(self.layout, row)
        return row

    def abort(self) -> None:
        for f in self._files.values():
            f.abort()
        self._files.clear()

    def fail(self, error: str, error_type: str, **fields) -> dict:
        """Step 4: nothing of this attempt is published; the video gets a ``failed`` record."""
        self.abort()
        finished = now()
        if self.hw:
            fields.setdefault("height", self.hw[0])
            fields.setdefault("width", self.hw[1])
        return write_failed(self.layout, self.video_id, self.run_id, error, error_type, objects=self.objects,
                            seconds=(finished - self.started_at).total_seconds(), started_at=self.started_at,
                            finished_at=finished, attempt=self.attempt, **fields)


def clear_staging(layout: Layout) -> bool:
    """Removes temporary files left by killed workers (local filesystems). Call when no worker of
    the run is running: the driver does, at its end, while it still holds the run's lease
    (jobs/label/lease.py), so no other driver's workers can be writing there. False when they could
    not be removed (a read-only or full output: the next run removes them)."""
    fs = layout.fs
    try:
        if st.is_local(fs) and fs.exists(layout.staging):
            fs.rm(layout.staging, recursive=True)
    except OSError:
        return False
    return True
