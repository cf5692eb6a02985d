"""The driver: ``run(JobOptions)`` reads the manifest, checks the checkpoint, opens (or resumes)
the run, runs the actor pool over the videos still to do, prints progress and the summary.

How it runs (the Ray Data offline batch inference pattern, jobs/label/pool.py): the videos to do
(an Arrow table, jobs/label/manifest.py ``Tasks``) become a dataset of one row per video, in blocks
of up to ``--videos-per-task`` videos; ``map_batches`` with a class (jobs/label/worker.py) runs it
on an actor pool of ``--actors MIN:MAX`` actors, each holding the model (loaded once) and
segmenting the videos it is given one after another. Each video's rows are written and committed
by the actor that segmented it (jobs/label/commit.py); only a one-line summary per video comes
back here. An actor that dies is restarted and its task retried (``max_restarts``/
``max_task_retries``; the retry skips the task's videos already committed); videos whose task got
no result (their actor kept dying) are run again one per task, so that only the video that kills
its actor fails; a restarted driver with the same ``--run-id`` skips the committed videos.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from .. import storage as st
from ..errors import EXIT_INCOMPLETE, EXIT_OK, EXIT_VIDEOS_FAILED
from ..layout import Layout, read_run, read_videos
from . import inputs, lease
from .commit import clear_staging, count_attempts, write_failed
from .manifest import Tasks, VideoTask
from .options import DEFAULT_OUTPUT_ROOT, JobOptions
from .progress import Progress
from .run_record import OutputError, new_run_id, open_run
from .worker import WorkerConfig

#: Failures listed after the summary line.
FAILURES_SHOWN = 20


@dataclass
class Plan:
    """What this invocation does: the run, its settings, and the videos still to do."""

    run_id: str
    resumed: bool
    layout: Layout
    manifest: str
    worker: WorkerConfig
    tasks: Tasks  # the manifest's videos (an Arrow table; iterating gives VideoTask)
    pending: Tasks  # those still to do
    rejected: dict = None  # corrections run: {video_id: why its corrections were refused} (failed records)
    unchanged: list = None  # corrections run: videos whose masks came back as they were


def checksum(uri: str, storage: st.Storage) -> str:
    fs, path = storage.resolve(uri)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def check_checkpoint(options: JobOptions, storage: st.Storage) -> tuple[str, dict]:
    """Loads the checkpoint on the driver (a clear error before any actor starts). Returns its
    checksum and the segmenter settings as they will run: every field, ``size`` resolved to the
    working size used with these weights (0: the input size)."""
    from vos_core import CheckpointError, load_model
    from vos_core.model import SHIPPED_CHECKPOINT

    if options.checkpoint == SHIPPED_CHECKPOINT and not os.path.exists(SHIPPED_CHECKPOINT):
        raise CheckpointError(f"{SHIPPED_CHECKPOINT}: the shipped weights are not in this checkout; pass --checkpoint URI")
    model = load_model(options.checkpoint, device="cpu", storage_options=storage.options_for(options.checkpoint))
    config = options.segmenter.replace(size=options.segmenter.working_size_for(model) or 0)
    return checksum(options.checkpoint, storage), config.to_dict()


def _layout(options: JobOptions, storage: st.Storage) -> tuple[Layout, str | None]:
    run_id, output = options.run_id, options.output
    if output is None:
        run_id = run_id or new_run_id()
        output = os.path.join(DEFAULT_OUTPUT_ROOT, run_id)
    package = inputs.ray_package_root()
    if inputs.inside(output, package):
        raise OutputError(inputs.temporary_package_message("--output", output, package))
    return Layout(output, storage, shards=options.shards), run_id


def plan(options: JobOptions) -> Plan:
    """Everything checked before Ray starts: manifest, checkpoint, output and run record."""
    storage = options.storage()
    fixes = None
    if options.corrections:  # re-segment the corrected videos of --parent (jobs/label/corrections.py)
        from . import corrections

        fixes = corrections.prepare(options, storage)
        options, tasks = fixes.options, Tasks.from_list(fixes.tasks)
    else:
        tasks = inputs.load_tasks(options.manifest, storage, options.davis_resolution, options.limit,
                                  options.manifest_shard)
    model_checksum, settings = check_checkpoint(options, storage)
    layout, run_id = _layout(options, storage)
    lease.claim(layout)  # one driver per output (exit 2 while another holds it); checks the output can be used
    manifest = options.manifest
    if fixes is None and inputs.needs_sample_copy(manifest):
        manifest = layout.url(inputs.SAMPLE_COPY, "manifest.csv")
    info = {"model_checksum": model_checksum, "settings": settings, "checkpoint_uri": options.checkpoint,
            "manifest": manifest, "streams_per_actor": options.streams_per_actor, **(fixes.record if fixes else {})}
    run_id, resumed = open_run(layout, run_id, info)
    if fixes is not None:
        tasks = Tasks.from_list(fixes.stage(layout))
    elif manifest != options.manifest:  # the sample corpus, read from its copy next to the output
        inputs.copy_sample(layout)
        tasks = inputs.load_tasks(manifest, storage, options.davis_resolution, options.limit,
                                  options.manifest_shard)
    records = _records(layout, run_id)  # before the refused corrections' records below, as pending wants
    rejected = {}
    if fixes is not None:  # corrections that cannot be used fail their video only
        ids = records["video_id"]
        done = set(ids.filter(pc.is_in(ids, value_set=pa.array(list(fixes.rejected), pa.string()))).to_pylist()
                   ) if fixes.rejected else set()
        for vid, why in fixes.rejected.items():
            rejected[vid] = why
            if vid not in done:
                v = fixes.parent.videos.get(vid, {})
                write_failed(layout, vid, run_id, why, "CorrectionError", video_uri=v.get("video_uri"),
                             annotations_uri=v.get("annotations_uri"), model_checksum=model_checksum,
                             checkpoint_uri=options.checkpoint, settings=settings)
    if options.retry_failed:
        records = records.filter(pc.not_equal(records["status"], "failed"))
    pending = tasks.exclude(records["video_id"])
    worker = WorkerConfig(checkpoint=options.checkpoint, model_checksum=model_checksum, output=layout.uri,
                          shards=layout.shards, run_id=run_id, settings=settings, endpoint_url=storage.endpoint_url,
                          storage_options=storage.options, gpus_per_actor=options.gpus_per_actor,
                          cpus_per_actor=options.cpus_per_actor, streams_per_actor=options.streams_per_actor,
                          prefetch=options.prefetch,
                          encode_thread=not options.encode_inline, review_quality=options.review_quality)
    return Plan(run_id, resumed, layout, manifest, worker, tasks, pending, rejected,
                fixes.unchanged if fixes else [])


def _records(layout: Layout, run_id: str) -> pa.Table:
    """(video_id, status) of the videos this run has a record of (ok or failed): an Arrow table, so a
    resumed run of 10^6 videos holds no Python object per video."""
    t = read_videos(layout, ["video_id", "status", "run_id"])
    return t.filter(pc.fill_null(pc.equal(t["run_id"], run_id), False)).select(["video_id", "status"])


class SeenIds:
    """The ids of the videos whose result came back, as Arrow chunks (not a Python set of 10^6 strings)."""

    CHUNK = 65_536

    def __init__(self):
        self._chunks: list[pa.Array] = []
        self._buf: list[str] = []
        self.count = 0

    def add(self, video_id: str) -> None:
        self._buf.append(video_id)
        self.count += 1
        if len(self._buf) >= self.CHUNK:
            self._chunks.append(pa.array(self._buf, pa.string()))
            self._buf = []

    def array(self) -> pa.Array:
        return pa.concat_arrays(self._chunks + [pa.array(self._buf, pa.string())])


def _worker_died(p: Plan, task: VideoTask, options: JobOptions) -> dict:
    return write_failed(p.layout, task.video_id, p.run_id,
                        f"no result: the worker processing it died {options.max_retries + 1} time(s) (killed, out of "
                        f"memory or crashed); see the Ray logs", "WorkerDied",
                        video_uri=task.video_uri, annotations_uri=task.annotations_uri,
                        model_checksum=p.worker.model_checksum, checkpoint_uri=p.worker.checkpoint,
                        settings=p.worker.settings)


def _unrecorded(task: VideoTask, e: Exception) -> dict:
    return {"video_id": task.video_id, "status": "failed", "committed": False, "frames": 0, "error_type": "WorkerDied",
            "error": f"no result (its worker kept dying), and its failure record could not be written: "
                     f"{type(e).__name__}: {e}"}


def _run_pool(p: Plan, options: JobOptions, progress: Progress) -> list[str]:
    """Runs the pool over the pending videos; returns those whose outcome could not be recorded."""
    from .pool import label_videos, live_frames, pool_size, ray_session, videos_per_task

    unrecorded = []

    def report(r: dict) -> None:
        progress.video_done(r)
        if r.get("committed") is False:  # not even its failure record could be written
            unrecorded.append(r["video_id"])

    def record(t: VideoTask) -> None:  # no result: its actor died more than --max-retries times
        try:
            r = _worker_died(p, t, options)
        except Exception as e:  # a read-only or full output
            r = _unrecorded(t, e)
            unrecorded.append(t.video_id)
        progress.video_done(r)

    with ray_session(options), live_frames() as (live_name, live):
        progress.live = live
        lo, hi = pool_size(options, len(p.pending))
        print(f"actors: {lo}..{hi} x ({options.cpus_per_actor:g} CPU, {options.gpus_per_actor:g} GPU, "
              f"{options.streams_per_actor} video(s) at once), "
              f"settings {json.dumps(p.worker.settings, sort_keys=True)}", flush=True)
        progress.start()
        try:
            todo, config = p.pending, replace(p.worker, live_actor=live_name)
            per_task = videos_per_task(len(todo), hi, options.videos_per_task)
            while True:
                seen = SeenIds()
                for r in label_videos(todo, config, options, lo, hi, per_task):
                    seen.add(r["video_id"])
                    report(r)
                    if lease.current():
                        lease.current().check()  # taken over by another driver: stop writing
                missing = todo.exclude(seen.array()) if seen.count < len(todo) else todo.head(0)
                if not len(missing) or per_task == 1:
                    break
                # A task whose actor kept dying took its other videos down with it. The video that killed it
                # has its tries' attempt records: it has failed. The others run again, one per task.
                died = {t.video_id for t in missing if count_attempts(p.layout, t.video_id) > options.max_retries}
                for t in missing:
                    if t.video_id in died:
                        record(t)
                missing = missing.exclude(pa.array(sorted(died), pa.string()))
                if not len(missing):
                    break
                print(f"{len(missing)} video(s) got no result (a video of their task kept killing its actor): "
                      f"running them again one per task", flush=True)
                todo, per_task, config = missing, 1, replace(config, skip_committed=True)
            for t in missing:  # no result: its actor died more than --max-retries times
                record(t)
        finally:
            progress.stop()  # before Ray goes: the heartbeat asks the LiveFrames actor
    return unrecorded


def run(options: JobOptions) -> int:
    """The job. Returns the exit status: 0; 1 with ``fail_on_error`` when a video failed; 3 when a
    video's outcome could not be recorded or the run's lease was lost (rerun to finish). The run's
    lease (jobs/label/lease.py) is held from before anything is written to the end."""
    from .pool import check_ray_options

    check_ray_options(options)
    with lease.scope():
        try:
            return _run(options)
        except lease.LeaseLost as e:
            print(f"vos pseudo-label: stopped: {e}", flush=True)
            return EXIT_INCOMPLETE


def _run(options: JobOptions) -> int:
    p = plan(options)
    if p.manifest != options.manifest:
        print(f"sample corpus copied next to the output: this driver runs from Ray's temporary working-dir package "
              f"{inputs.ray_package_root()}, which goes when the job ends", flush=True)
    if options.corrections:
        print(f"corrections {options.corrections} for run {read_run(p.layout).get('parent_run')!r}: "
              f"{len(p.tasks)} video(s) to re-segment, {len(p.rejected)} refused, {len(p.unchanged)} handed back "
              f"unchanged (not re-run)", flush=True)
    print(f"vos pseudo-label run {p.run_id}{' (resumed)' if p.resumed else ''}: {len(p.tasks)} video(s) in "
          f"{p.manifest}; output {p.layout.url()}", flush=True)
    progress = Progress(total=len(p.pending), skipped=len(p.tasks) - len(p.pending), interval=options.progress_interval)
    unrecorded = []
    try:
        if p.pending:
            unrecorded = _run_pool(p, options, progress)
        else:
            progress.start()
    finally:
        progress.stop()
    if p.pending:
        clear_staging(p.layout)
    print(progress.summary(p.run_id, p.layout.url()), flush=True)
    if progress.failures:
        print(f"failed videos ({len(progress.failures)}):", flush=True)
        for vid, err in progress.failures[:FAILURES_SHOWN]:
            print(f"  {vid!r}: {err}", flush=True)
    for vid, why in (p.rejected or {}).items():
        print(f"  corrections refused for {vid!r}: {why}", flush=True)
    if unrecorded:
        print(f"run incomplete: {len(unrecorded)} video(s) have no record, their outcome could not be written to "
              f"{p.layout.url()} (read-only or full?, see above); rerun the same command to finish them: "
              f"{', '.join(repr(v) for v in unrecorded[:FAILURES_SHOWN])}", flush=True)
        return EXIT_INCOMPLETE
    failed = progress.failed or bool(p.rejected)
    return EXIT_VIDEOS_FAILED if (options.fail_on_error and failed) else EXIT_OK
