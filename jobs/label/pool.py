"""The Ray side of the job: joining or starting Ray, sizing the actor pool, and the Ray Data
pipeline (the offline batch inference pattern) that runs ``worker.VideoLabeler`` over the videos."""
from __future__ import annotations

import contextlib
import json
import os
import uuid
import warnings
from typing import Iterator

from ..errors import BadInput
from . import reaper, streams
from .manifest import Tasks
from .options import JobOptions
from .progress import LiveFrames
from .quiet import without_lines
from .worker import VideoLabeler, WorkerConfig

#: Where the job's own local Ray listens (GCS, raylet, workers, dashboard): this machine only.
LOCAL_HOST = "127.0.0.1"
#: Ray's C++ client logs this once a second for 20 s when a cluster refuses it: one line says it instead.
_AUTH_RETRY_LINE = (b"Failed to get cluster ID from GCS server: Unauthenticated",)


class RayError(BadInput):
    """Ray cannot be joined or started as asked (the message says what to set)."""


def _address(options: JobOptions) -> tuple[str | None, str]:
    if options.ray_address:
        return options.ray_address, "--ray-address"
    return os.environ.get("RAY_ADDRESS") or None, "$RAY_ADDRESS"


def check_ray_options(options: JobOptions) -> None:
    """Ray options that cannot work together, refused before anything runs (exit 2)."""
    address, source = _address(options)
    if address and options.num_cpus:
        raise RayError(f"--num-cpus {options.num_cpus} sizes the local Ray the job starts, but it joins the Ray cluster "
                       f"at {address} ({source}), which has its own resources: drop --num-cpus (or unset "
                       f"{source.lstrip('$')} to run on a local Ray)")


def _auth_refused(e: BaseException) -> bool:
    while e is not None:
        if "InvalidAuthToken" in str(e) or type(e).__name__ == "AuthenticationError":
            return True
        e = e.__cause__ or e.__context__
    return False


def _join(address: str, source: str) -> None:
    import ray

    try:
        with without_lines(_AUTH_RETRY_LINE):
            ray.init(address=address, log_to_driver=True)
    except (ConnectionError, RuntimeError) as e:
        if not _auth_refused(e):
            raise
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            raise RayError(f"the Ray cluster at {address} ({source}) requires token authentication: set "
                           f"RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<a file holding the cluster's token, "
                           f"`ray get-auth-token` on its head> (or RAY_AUTH_TOKEN=<the token>)") from None
        raise RayError(f"the Ray cluster at {address} ({source}) refused this driver's token: RAY_AUTH_TOKEN_PATH / "
                       f"RAY_AUTH_TOKEN (or ~/.ray/auth_token) must hold the token of that cluster's head "
                       f"(`ray get-auth-token` there)") from None


def _start_local(num_cpus: int | None) -> None:
    import ray
    from ray._private import ray_constants

    kwargs = {"log_to_driver": True, "_node_ip_address": LOCAL_HOST, "dashboard_host": LOCAL_HOST}
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    # ray.init turns 127.0.0.1 into this machine's external address (for multi-node clusters) unless
    # ray_constants.ENABLE_RAY_CLUSTER is off, and that is all that flag decides (Ray 2.60): off for
    # this call, so the GCS, raylet, agents and workers bind to 127.0.0.1 instead of every interface.
    had = hasattr(ray_constants, "ENABLE_RAY_CLUSTER")
    saved = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(**kwargs)
    finally:
        if had:
            ray_constants.ENABLE_RAY_CLUSTER = saved
        else:
            del ray_constants.ENABLE_RAY_CLUSTER


@contextlib.contextmanager
def ray_session(options: JobOptions):
    """Joins a cluster (--ray-address, $RAY_ADDRESS: e.g. under `ray job submit`) or starts a local
    one on 127.0.0.1, which it shuts down at the end and which does not outlive this process even
    when it is killed (jobs/label/reaper.py)."""
    import ray

    if ray.is_initialized():
        yield
        return
    address, source = _address(options)
    watcher = None
    if address:
        _join(address, source)
    else:
        watcher = reaper.start()
        try:
            _start_local(options.num_cpus)
        except BaseException:
            reaper.stop(watcher)
            raise
        reaper.watch_ray(watcher)
    try:
        yield
    finally:
        try:
            ray.shutdown()
        finally:
            reaper.stop(watcher)


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


#: Tasks per actor a run gets at least (so the last ones balance): fewer videos per task on small runs.
MIN_TASKS_PER_ACTOR = 4


def videos_per_task(pending: int, actors: int, most: int) -> int:
    """Videos in one Ray task: ``most`` (``--videos-per-task``), fewer when the run is too small to give
    every one of ``actors`` actors MIN_TASKS_PER_ACTOR tasks."""
    return max(1, min(most, pending // (actors * MIN_TASKS_PER_ACTOR)))


def build_dataset(tasks: Tasks, config: WorkerConfig, lo: int, hi: int, options: JobOptions, per_task: int):
    """Blocks of ``per_task`` videos (Arrow tables), ``map_batches`` over an actor pool of ``lo..hi`` actors:
    one Ray task per block, so Ray's per-task cost (scheduling, the block's hand-off, the result's way
    back) is paid once per ``per_task`` videos; each video is still committed on its own."""
    import ray
    from ray.data import ActorPoolStrategy

    with warnings.catch_warnings():
        # max_restarts / max_task_retries only exist as ray_remote_args, deprecated from Ray 2.64 on
        # (their defaults there are -1: retry for ever, which would loop on a video that kills its actor).
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        # from_blocks, not from_arrow: the same blocks, but their metadata is read here; from_arrow runs a
        # Ray task per block for it (45 s for 125 blocks on the loaded 2-core machine, 1 s this way)
        return ray.data.from_blocks(list(tasks.slices(per_task))).map_batches(
            VideoLabeler,
            fn_constructor_args=(config,),
            batch_size=per_task,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(min_size=lo, max_size=hi, **streams.pool_args(options.streams_per_actor)),
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor or None,
            max_restarts=options.max_retries,
            # Unbounded: a video's task is retried for as long as its actor comes back; --max-retries bounds
            # the restarts. A count of task retries is spent within seconds when a node is lost (each try
            # fails "actor unavailable" until the GCS declares the node dead) and the video was not retried.
            max_task_retries=-1,
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


def label_videos(tasks: Tasks, config: WorkerConfig, options: JobOptions, lo: int, hi: int,
                 per_task: int | None = None) -> Iterator[dict]:
    """Runs the pool over ``tasks``, ``per_task`` videos per Ray task (default: ``videos_per_task``);
    yields each video's summary as its task finishes (the videos of a task whose actor died more than
    --max-retries times yield nothing)."""
    _configure_data_context(scaling=hi > lo)
    per_task = per_task or videos_per_task(len(tasks), hi, options.videos_per_task)
    ds = build_dataset(tasks, config, lo, hi, options, per_task)
    with without_lines():
        for row in ds.iter_rows():
            yield json.loads(row["result"])
