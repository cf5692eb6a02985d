"""The Ray side of the job: joining or starting Ray, sizing the actor pool, and the Ray Data
pipeline (the offline batch inference pattern) that runs ``worker.VideoLabeler`` over the videos."""
from __future__ import annotations

import contextlib
import json
import os
import uuid
import warnings
from typing import Iterator

from .manifest import VideoTask
from .options import JobOptions
from .progress import LiveFrames
from .quiet import without_lines
from .worker import VideoLabeler, WorkerConfig


@contextlib.contextmanager
def ray_session(options: JobOptions):
    """Joins a cluster (--ray-address, $RAY_ADDRESS: e.g. under `ray job submit`) or starts a local
    one, which it shuts down at the end."""
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs = {"log_to_driver": True}
    address = options.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs["address"] = address
    elif options.num_cpus:
        kwargs["num_cpus"] = options.num_cpus
    ray.init(**kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def pool_size(options: JobOptions, pending: int) -> tuple[int, int]:
    """(min, max) actors: ``--actors`` capped by the videos to do; ``auto``'s max from the cluster."""
    import ray

    lo, hi = options.actors.min, options.actors.max
    if hi is None:
        res = ray.cluster_resources()
        if options.gpus_per_actor > 0:
            hi = int(res.get("GPU", 0) // options.gpus_per_actor)
        else:
            hi = int(res.get("CPU", 1) // options.cpus_per_actor)
    hi = max(1, min(hi, pending))
    return min(lo, hi), hi


def build_dataset(tasks: list[VideoTask], config: WorkerConfig, lo: int, hi: int, options: JobOptions):
    """One row and one block per video, ``map_batches`` over an actor pool of ``lo..hi`` actors."""
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
            compute=ActorPoolStrategy(min_size=lo, max_size=hi, max_tasks_in_flight_per_actor=1),
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor or None,
            max_restarts=options.max_retries,
            max_task_retries=options.max_retries,
        )


def _configure_data_context(scaling: bool) -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # our own progress lines instead
    ctx.max_errored_blocks = -1  # a video whose actor kept dying must not stop the others
    if scaling:
        # One video in flight per actor (a second one queued behind a long video would wait while a new
        # actor idles), so utilisation tops out at 100%: scale up when every actor is busy.
        ctx.autoscaling_config.actor_pool_util_upscaling_threshold = 1.0


@contextlib.contextmanager
def live_frames():
    """A named LiveFrames actor the workers report to (by name: no handle in their arguments)."""
    import ray

    name = f"vos-live-frames-{uuid.uuid4().hex[:12]}"
    actor = ray.remote(num_cpus=0)(LiveFrames).options(name=name).remote()
    try:
        yield name, actor
    finally:
        with contextlib.suppress(Exception):
            ray.kill(actor)


def label_videos(tasks: list[VideoTask], config: WorkerConfig, options: JobOptions, lo: int, hi: int) -> Iterator[dict]:
    """Runs the pool over ``tasks``; yields each video's summary as it finishes (a video whose actor
    died more than --max-retries times yields nothing)."""
    _configure_data_context(scaling=hi > lo)
    ds = build_dataset(tasks, config, lo, hi, options)
    with without_lines():
        for row in ds.iter_rows():
            yield json.loads(row["result"])
