"""The run record ``_run.json``: written first, it pins a run's id, shard count, settings and
weights, so that a resumed run cannot mix results; and which videos a run has committed."""
from __future__ import annotations

import datetime as dt
import json
import os
import uuid

from .. import storage as st
from ..errors import BadInput
from ..layout import DEFAULT_SHARDS, RUN_FILE, Layout, read_run, read_videos
from ..schema import SCHEMA_VERSION

#: What a resumed run must share with the run it resumes (besides its id and shard count).
RESUME_KEYS = ("model_checksum", "settings")


class OutputError(BadInput):
    """The output location cannot be used for this run (another run, other settings ...)."""


def check_output_location(layout: Layout) -> None:
    """Refuses, before anything is written, an output the job cannot use: an unknown URL scheme (or
    one whose fsspec package is not installed), a local path that is a file or lies under one, a
    local folder that cannot be written (read-only folder or file system). Object stores are
    checked by the first write, the run's lease (jobs/label/lease.py)."""
    shown = layout.uri
    try:
        fs, path = layout.fs, layout.root
    except (ValueError, ImportError) as e:  # fsspec: "Protocol not known: foo", or its package missing
        raise OutputError(f"--output {shown}: not a usable location ({e}); give a local path or a URL such as "
                          f"s3://bucket/prefix") from None
    if not st.is_local(fs):
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"--output {shown}: is a file, not a folder")
    existing = path
    while not os.path.exists(existing):  # the folder is created below its nearest existing parent
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputError(f"--output {shown}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):  # also False on a read-only file system, even for root
        raise OutputError(f"--output {shown}: {existing} is not writable (a read-only folder or file system)")


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _check_same_run(layout: Layout, existing: dict, run_id: str | None, info: dict, resume_keys) -> None:
    found = existing.get("run_id")
    if run_id and found != run_id:
        raise OutputError(f"{layout.url()} already holds run {found!r} (started {existing.get('created_at')}): pass "
                          f"--run-id {found} to resume it, or write run {run_id!r} to another --output")
    if int(existing.get("shards", DEFAULT_SHARDS)) != layout.shards:
        raise OutputError(f"{layout.url()}: run {found!r} uses {existing.get('shards')} shards, not {layout.shards}: "
                          f"resume it with --shards {existing.get('shards')}")
    for k in resume_keys:
        if k in info and existing.get(k) != info[k]:
            raise OutputError(f"{layout.url()}: run {found!r} was started with {k}={json.dumps(existing.get(k))}, "
                              f"now {k}={json.dumps(info[k])}; resuming would mix results. Use the same settings "
                              f"and checkpoint, or another --output/--run-id")


def open_run(layout: Layout, run_id: str | None, info: dict, resume_keys=RESUME_KEYS) -> tuple[str, bool]:
    """Creates ``_run.json`` for a new run, or checks that an existing one is the same run.

    Returns (run_id, resumed). A missing ``run_id`` adopts the run found at the output.
    Refuses another run id, another shard count, or other ``resume_keys`` values."""
    layout.fs.invalidate_cache(layout.root)
    existing = read_run(layout)
    if existing is not None:
        _check_same_run(layout, existing, run_id, info, resume_keys)
        return existing["run_id"], True
    run_id = run_id or new_run_id()
    record = {"run_id": run_id, "shards": layout.shards, "schema_version": SCHEMA_VERSION,
              "created_at": dt.datetime.now(dt.timezone.utc).isoformat(), **info}
    st.makedirs(layout.fs, layout.root)
    st.put_atomic(layout.fs, layout.path(RUN_FILE), json.dumps(record, indent=1, sort_keys=True).encode(),
                  layout.staging)
    return run_id, False


def committed(layout: Layout, run_id: str) -> dict[str, str]:
    """{video_id: status} of the videos this run has committed (ok or failed)."""
    t = read_videos(layout, ["video_id", "status", "run_id"])
    return {v: s for v, s, r in zip(t["video_id"].to_pylist(), t["status"].to_pylist(), t["run_id"].to_pylist())
            if r == run_id}
