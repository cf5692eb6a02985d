"""Pseudo-label a corpus of videos with AFB-URR on Ray: masks (COCO RLE) and uncertainty as Parquet.

    python -m jobs.pseudo_label --manifest s3://bucket/manifest.parquet --output s3://bucket/labels/run1 \\
        --checkpoint s3://bucket/afburr.pth --gpus-per-actor 1 --actors 2:8 --size 480 --run-id run1

The same command runs locally (a Ray instance is started in-process) and through
``ray job submit --working-dir . -- python -m jobs.pseudo_label ...`` (it joins the cluster).
With no arguments it runs on the shipped sample corpus with the shipped weights into
``./vos_output/<run_id>``.

How it runs (the Ray Data offline batch inference pattern): the manifest becomes a
dataset of one row per video, in one block per video; ``map_batches`` with a class
(:class:`VideoLabeler`) and ``batch_size=1`` runs it on an actor pool of
``--actors MIN:MAX`` actors, each holding the model (loaded once) and segmenting the
videos it is given one after another, frame by frame (frames are decoded ahead in a
background thread, ``vos_core.io.prefetch``, and results are encoded on another,
``jobs.background``). Each video's rows are written by the
actor that segmented it and committed per video (jobs/commit.py); only a one-line
summary per video comes back to the driver, which prints progress. An actor that
dies is restarted and its video retried (``max_restarts``/``max_task_retries``);
a restarted driver with the same ``--run-id`` skips the committed videos.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import storage as st
from .background import InOrderWorker
from .commit import DEFAULT_SHARDS, Layout, VideoCommit, clear_staging, committed, open_run, write_failed
from .manifest import ManifestError, VideoTask, load_manifest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Weights shipped in the repository (compact AFB-URR); the default --checkpoint.
DEFAULT_CHECKPOINT = str(REPO_ROOT / "vos_core" / "weights" / "compact.pth")
#: The tiny corpus the no-argument run uses (see jobs/sample_corpus/README.md).
SAMPLE_MANIFEST = str(Path(__file__).resolve().parent / "sample_corpus" / "manifest.csv")
DEFAULT_OUTPUT_ROOT = "vos_output"

#: Seconds between live frame-count reports from a worker.
_REPORT_EVERY_S = 2.0


# -- configuration shipped to the workers ---------------------------------------------

class SettingsError(ValueError):
    """Options this job (or this vos_core) cannot honour."""


@dataclass
class JobConfig:
    checkpoint: str
    model_checksum: str
    layout: Layout
    run_id: str
    settings: dict  # Segmenter settings, recorded with every video
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    prefetch_depth: int = 4
    encode_thread: bool = True  # encode results on a thread of their own (False: on the model's thread)
    live: object = None  # LiveFrames actor handle (None: no live progress)

    @property
    def storage(self) -> st.Storage:
        return self.layout.storage


def segmenter_kwargs(settings: dict) -> dict:
    """Segmenter(...) keyword arguments from the recorded settings (only those this Segmenter knows)."""
    from vos_core import Segmenter

    known = set(inspect.signature(Segmenter.__init__).parameters)
    kw = {k: v for k, v in settings.items() if k in known}
    unknown = {k: v for k, v in settings.items() if k not in known}
    if unknown.get("precision", "fp32") != "fp32":
        raise SettingsError(f"this vos_core Segmenter has no precision option (asked for {unknown['precision']})")
    kw["keep_probs"] = False  # the job needs masks and statistics, not the probability maps
    kw["keep_uncertainty"] = True  # ... and the U map, stored downscaled as frames.u_map_png
    return kw


# -- one video --------------------------------------------------------------------------

class _Selected(Mapping):
    """Annotations re-indexed for a start frame: {frame index: id map}, keeping ``.source``."""

    def __init__(self, ann, index_map: dict[int, int]):
        self._ann = ann
        self._map = dict(sorted(index_map.items()))

    def __getitem__(self, t):
        return self._ann[self._map[t]]

    def __iter__(self):
        return iter(self._map)

    def __len__(self):
        return len(self._map)

    def __contains__(self, t):
        return t in self._map

    def source(self, t):
        return self._ann.source(self._map[t])


def select_annotations(ann, uri: str, start_frame: int | None):
    """(annotations to use, start frame). One PNG is the mask of ``start_frame`` (0 by default);
    a folder's masks before ``start_frame`` are dropped and ``start_frame`` must have one."""
    from vos_core.errors import AnnotationError

    if uri.rstrip("/").lower().endswith(".png"):
        start = start_frame or 0
        return _Selected(ann, {start: next(iter(ann))}), start
    keys = sorted(ann)
    if start_frame is None:
        return ann, keys[0]
    if start_frame not in ann:
        shown = ", ".join(str(k) for k in keys[:8]) + (" ..." if len(keys) > 8 else "")
        raise AnnotationError(f"{uri}: no mask for start_frame {start_frame} (masks for frames {shown})")
    return _Selected(ann, {t: t for t in keys if t >= start_frame}), start_frame


def process_video(task: VideoTask, segmenter, config: JobConfig, device: str = "cpu") -> dict:
    """Segments one video and commits its rows. Never raises for a bad video: it gets a
    ``failed`` record. Returns the video's summary (its ``videos`` row, plus ``committed``)."""
    from vos_core.errors import AnnotationError, VideoReadError
    from vos_core.io import load_annotations, open_frames, prefetch

    layout, storage = config.layout, config.storage
    common = {"video_uri": task.video_uri, "annotations_uri": task.annotations_uri, "device": device,
              "model_checksum": config.model_checksum, "checkpoint_uri": config.checkpoint,
              "settings": config.settings}
    vc = VideoCommit(layout, task.video_id, config.run_id)
    start = None
    live, last_report = config.live, 0.0
    try:
        vc.begin(video_uri=task.video_uri)
        if not task.video_uri:
            raise VideoReadError("the manifest row has no video_uri")
        if not task.annotations_uri:
            raise AnnotationError("the manifest row has no annotations_uri")
        frames = open_frames(task.video_uri, storage_options=storage.options_for(task.video_uri))
        try:
            ann = load_annotations(task.annotations_uri, frame_names=frames.names,
                                   storage_options=storage.options_for(task.annotations_uri))
            ann, start = select_annotations(ann, task.annotations_uri, task.start_frame)
            # Frames are decoded ahead on one thread and each result is encoded (RLE, PNG,
            # row buffers) on another, so the model's thread only runs the model.
            encode_depth = config.prefetch_depth if config.encode_thread else 0
            with InOrderWorker(vc.add, depth=encode_depth, name="vos-encode") as encoder:
                for r in segmenter.run(prefetch(frames, depth=config.prefetch_depth), ann):
                    encoder.submit(r, frames.name(r.index))
                    if live is not None and time.monotonic() - last_report > _REPORT_EVERY_S:
                        last_report = time.monotonic()
                        live.report.remote(task.video_id, vc.frames)
        finally:
            frames.close()
        if not vc.frames:
            raise VideoReadError(f"{task.video_uri}: the video ends before its start frame {start}")
        row = vc.commit(start_frame=start, **common)
        row["committed"] = True
    except Exception as e:  # a bad video (or a storage error): record it and go on
        try:
            row = vc.fail(str(e) or repr(e), type(e).__name__, start_frame=start, **common)
            row["committed"] = True
        except Exception as e2:  # the record itself cannot be written: the driver reports it
            row = {"video_id": task.video_id, "status": "failed", "committed": False, "frames": 0,
                   "error": f"{type(e).__name__}: {e}; and its failure record could not be written: "
                            f"{type(e2).__name__}: {e2}", "error_type": type(e).__name__}
    finally:
        if live is not None:
            with contextlib.suppress(Exception):
                live.done.remote(task.video_id)
    return row


def _summary(row: dict) -> dict:
    keep = ("video_id", "status", "error", "error_type", "frames", "seconds", "fps", "attempts", "masks_rows",
            "committed")
    return {k: row.get(k) for k in keep}


class VideoLabeler:
    """The Ray Data UDF: one instance per actor, holding the model; one call per video."""

    def __init__(self, config: JobConfig):
        import torch
        from vos_core import Segmenter, load_model

        self.config = config
        if config.gpus_per_actor > 0:
            if not torch.cuda.is_available():
                raise RuntimeError("--gpus-per-actor > 0 but this worker sees no CUDA device")
            self.device = "cuda:0"  # Ray sets CUDA_VISIBLE_DEVICES to the GPU(s) it gave this actor
        else:
            self.device = "cpu"
            torch.set_num_threads(max(1, int(config.cpus_per_actor)))
        model = load_model(config.checkpoint, device=self.device,
                           storage_options=config.storage.options_for(config.checkpoint))
        self.segmenter = Segmenter(model, **segmenter_kwargs(config.settings))

    def __call__(self, batch: dict) -> dict:
        out = []
        for task_json in batch["task"]:
            task = VideoTask.from_dict(json.loads(str(task_json)))
            out.append(json.dumps(_summary(process_video(task, self.segmenter, self.config, self.device)),
                                  default=str))
        return {"result": np.array(out, dtype=object)}


def build_dataset(tasks: list[VideoTask], config: JobConfig, min_actors: int, max_actors: int, cpus_per_actor: float,
                  gpus_per_actor: float, max_retries: int):
    """The Ray Data pipeline: one row and one block per video, ``map_batches`` over an actor pool."""
    import warnings

    import ray
    from ray.data import ActorPoolStrategy

    items = [{"task": json.dumps(t.to_dict())} for t in tasks]
    with warnings.catch_warnings():
        # max_restarts / max_task_retries only exist as ray_remote_args, deprecated from Ray 2.64 on
        # (their defaults there are -1: retry for ever, which would loop on a video that kills its actor).
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            VideoLabeler,
            fn_constructor_args=(config,),
            batch_size=1,
            compute=ActorPoolStrategy(min_size=min_actors, max_size=max_actors, max_tasks_in_flight_per_actor=1),
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor or None,
            max_restarts=max_retries,
            max_task_retries=max_retries,
        )


# -- the driver ----------------------------------------------------------------------

def parse_actors(spec: str) -> tuple[int, int | None]:
    """'4' -> (4, 4); '1:8' or '1-8' -> (1, 8); 'auto' -> (1, None: as many as the cluster fits)."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        return 1, None
    for sep in (":", "-", ","):
        if sep in spec:
            lo, hi = spec.split(sep, 1)
            lo, hi = int(lo), int(hi)
            break
    else:
        lo = hi = int(spec)
    if lo < 1 or hi < lo:
        raise argparse.ArgumentTypeError(f"--actors: need 1 <= min <= max, got {spec!r}")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.pseudo_label",
        description="Pseudo-label videos with AFB-URR on Ray; writes masks/, frames/ and videos/ Parquet tables. "
                    "With no arguments: the sample corpus, the shipped weights, a local Ray, ./vos_output/<run_id>.")
    io_ = p.add_argument_group("input and output")
    io_.add_argument("--manifest", default=SAMPLE_MANIFEST,
                     help="Parquet/CSV/JSON Lines manifest (video_id, video_uri, annotations_uri[, start_frame]) or a "
                          "DAVIS-layout root; any fsspec URL (default: the sample corpus)")
    io_.add_argument("--output", default=None,
                     help=f"dataset root for this run, any fsspec URL (default: ./{DEFAULT_OUTPUT_ROOT}/<run_id>)")
    io_.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="AFB-URR weights (default: the shipped "
                     "vos_core/weights/compact.pth)")
    io_.add_argument("--run-id", default=None, help="id of the run; rerunning with the same id and output resumes it "
                     "(default: the run already at --output, else a new timestamped id)")
    io_.add_argument("--davis-resolution", default=None, help="resolution folder of a DAVIS root (e.g. 480p)")
    st.add_storage_arguments(io_)
    io_.add_argument("--shards", type=int, default=DEFAULT_SHARDS, help="hash shards of video_id in the output "
                     f"(default {DEFAULT_SHARDS}; fixed for a run)")
    seg = p.add_argument_group("segmentation")
    seg.add_argument("--size", type=int, default=None, help="working resolution: shorter side in pixels "
                     "(default: the input size); outputs are always at the input size")
    seg.add_argument("--budget", type=int, default=300_000, help="feature bank budget: features over all objects (budget // K each, background included)")
    seg.add_argument("--merge-thres", type=float, default=0.95, help="feature bank merge threshold (cosine)")
    seg.add_argument("--update-rate", type=float, default=0.1, help="feature bank update rate")
    seg.add_argument("--u-threshold", type=float, default=0.5, help="U above which a pixel counts as uncertain")
    seg.add_argument("--resize-annotations", action="store_true",
                     help="resize an annotation whose size differs from its frame (nearest) instead of failing "
                          "the video")
    seg.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                     help="network precision (autocast); fp32 is exact")
    ray_ = p.add_argument_group("Ray")
    ray_.add_argument("--actors", default="auto", help="actor pool size: N, or MIN:MAX to autoscale "
                      "(default auto: 1 up to what the cluster fits)")
    ray_.add_argument("--gpus-per-actor", type=float, default=0.0, help="GPUs per actor (0: CPU; 0.5: two per GPU)")
    ray_.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per actor (also torch threads on CPU)")
    ray_.add_argument("--max-retries", type=int, default=3,
                      help="restarts of a dead actor and retries of its video (default 3)")
    ray_.add_argument("--prefetch", type=int, default=4,
                      help="frames decoded ahead, and results waiting to be encoded, per actor (at least 1)")
    ray_.add_argument("--encode-inline", action="store_true",
                      help="encode results (RLE, PNG, Parquet rows) on the model's thread instead of a thread of "
                           "their own (the A/B baseline of benchmarks/bench_job.py)")
    ray_.add_argument("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local "
                      "Ray started in-process)")
    ray_.add_argument("--num-cpus", type=int, default=None, help="CPUs of the in-process Ray (default: all)")
    run_ = p.add_argument_group("run")
    run_.add_argument("--retry-failed", action="store_true",
                      help="when resuming, also rerun the videos that failed (default: skip every committed video)")
    run_.add_argument("--fail-on-error", action="store_true", help="exit with status 1 when a video failed")
    run_.add_argument("--limit", type=int, default=None, help="process only the first N manifest rows")
    run_.add_argument("--progress-interval", type=float, default=15.0, help="seconds between heartbeat lines (0: none)")
    return p


def settings_from_args(args) -> dict:
    s = {"size": args.size, "budget": args.budget, "merge_thres": args.merge_thres, "update_rate": args.update_rate,
         "u_threshold": args.u_threshold, "resize_annotations": bool(args.resize_annotations)}
    if args.precision != "fp32":
        s["precision"] = args.precision
    return s


def checksum(uri: str, storage: st.Storage) -> str:
    fs, path = storage.resolve(uri)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _check_checkpoint(uri: str, storage: st.Storage) -> str:
    """Validates the checkpoint on the driver (clear error before any actor starts); returns its checksum."""
    from vos_core import CheckpointError, load_model

    if uri == DEFAULT_CHECKPOINT and not os.path.exists(uri):
        raise CheckpointError(f"{uri}: the shipped weights are not in this checkout; pass --checkpoint URI")
    load_model(uri, device="cpu", storage_options=storage.options_for(uri))
    return checksum(uri, storage)


def _pool_size(lo: int, hi: int | None, args, pending: int) -> tuple[int, int]:
    import ray

    if hi is None:
        res = ray.cluster_resources()
        if args.gpus_per_actor > 0:
            hi = int(res.get("GPU", 0) // args.gpus_per_actor)
        else:
            hi = int(res.get("CPU", 1) // max(args.cpus_per_actor, 1e-9))
        hi = max(1, hi)
    hi = max(1, min(hi, pending))
    return min(lo, hi), hi


def _init_ray(args) -> bool:
    """Joins a cluster (--ray-address, $RAY_ADDRESS: e.g. under `ray job submit`) or starts a local one.
    Returns whether this call started Ray (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = {"log_to_driver": True}
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    elif args.num_cpus:
        kwargs["num_cpus"] = args.num_cpus
    ray.init(**kwargs)
    return True


def run(args) -> int:
    """The job. Returns the exit status."""
    from .progress import LiveFrames, Progress

    storage = st.Storage.from_env(args.endpoint_url, args.storage_options)
    tasks = load_manifest(args.manifest, storage, davis_resolution=args.davis_resolution)
    if args.limit is not None:
        tasks = tasks[: args.limit]
    settings = settings_from_args(args)
    segmenter_kwargs(settings)  # refuses settings this vos_core cannot honour, before anything starts
    model_checksum = _check_checkpoint(args.checkpoint, storage)

    from .commit import new_run_id
    run_id = args.run_id
    output = args.output
    if output is None:
        run_id = run_id or new_run_id()
        output = os.path.join(DEFAULT_OUTPUT_ROOT, run_id)
    layout = Layout(output, storage, shards=args.shards)
    run_id, resumed = open_run(layout, run_id, {"model_checksum": model_checksum, "settings": settings,
                                                "checkpoint_uri": args.checkpoint, "manifest": args.manifest})
    done = committed(layout, run_id)
    redo = {"failed"} if args.retry_failed else set()
    pending = [t for t in tasks if t.video_id not in done or done[t.video_id] in redo]
    skipped = len(tasks) - len(pending)
    print(f"vos pseudo-label run {run_id}{' (resumed)' if resumed else ''}: {len(tasks)} video(s) in "
          f"{args.manifest}; output {layout.url()}", flush=True)

    started_ray = False
    progress = Progress(total=len(pending), skipped=skipped, interval=args.progress_interval)
    seen: set[str] = set()
    try:
        if pending:
            import ray
            from ray.data import DataContext

            started_ray = _init_ray(args)
            ctx = DataContext.get_current()
            ctx.enable_progress_bars = False  # our own progress lines instead
            ctx.max_errored_blocks = -1  # a video whose actor kept dying must not stop the others
            live = ray.remote(num_cpus=0)(LiveFrames).remote()
            progress.live = live
            config = JobConfig(checkpoint=args.checkpoint, model_checksum=model_checksum, layout=layout,
                               run_id=run_id, settings=settings, gpus_per_actor=args.gpus_per_actor,
                               cpus_per_actor=args.cpus_per_actor, prefetch_depth=args.prefetch,
                               encode_thread=not args.encode_inline, live=live)
            lo, hi = _pool_size(*parse_actors(args.actors), args, len(pending))
            if hi > lo:
                # One video in flight per actor (a second one queued behind a long video would wait while a
                # new actor idles), so utilisation tops out at 100%: scale up when every actor is busy.
                ctx.autoscaling_config.actor_pool_util_upscaling_threshold = 1.0
            ds = build_dataset(pending, config, lo, hi, args.cpus_per_actor, args.gpus_per_actor,
                               args.max_retries)
            print(f"actors: {lo}..{hi} x ({args.cpus_per_actor:g} CPU, {args.gpus_per_actor:g} GPU), "
                  f"settings {json.dumps(settings)}", flush=True)
            progress.start()
            for row in ds.iter_rows():
                r = json.loads(row["result"])
                seen.add(r["video_id"])
                progress.video_done(r)
            # A video without a result: its actor died more than --max-retries times.
            for t in pending:
                if t.video_id not in seen:
                    r = write_failed(layout, t.video_id, run_id,
                                     f"no result: the worker processing it died {args.max_retries + 1} time(s) "
                                     f"(killed, out of memory or crashed); see the Ray logs", "WorkerDied",
                                     video_uri=t.video_uri, annotations_uri=t.annotations_uri,
                                     model_checksum=model_checksum, checkpoint_uri=args.checkpoint,
                                     settings=settings)
                    progress.video_done(r)
        else:
            progress.start()
    finally:
        progress.stop()
        if started_ray:
            import ray
            ray.shutdown()
    if pending:
        clear_staging(layout)
    print(progress.summary(run_id, layout.url()), flush=True)
    if progress.failures:
        print(f"failed videos ({len(progress.failures)}):", flush=True)
        for vid, err in progress.failures[:20]:
            print(f"  {vid!r}: {err}", flush=True)
    return 1 if (args.fail_on_error and progress.failed) else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.prefetch < 1:
        parser.error(f"--prefetch must be at least 1, got {args.prefetch}")
    from vos_core import CheckpointError

    from .commit import OutputError
    try:
        return run(args)
    except (ManifestError, CheckpointError, OutputError, SettingsError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
