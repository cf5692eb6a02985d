"""``python -m jobs.pseudo_label``: pseudo-label a corpus of videos with AFB-URR on Ray
(masks as COCO RLE, uncertainty, one commit record per video, as Parquet).

    python -m jobs.pseudo_label --manifest s3://bucket/manifest.parquet --output s3://bucket/labels/run1 \\
        --checkpoint s3://bucket/afburr.pth --gpus-per-actor 1 --actors 2:8 --size 480 --run-id run1

The same command runs locally (a Ray instance is started in-process) and through
``ray job submit --working-dir . -- python -m jobs.pseudo_label ...`` (it joins the cluster).
With no arguments it runs on the shipped sample corpus with the shipped weights into
``./vos_output/<run_id>``. This module is the command line only: the options become a
``JobOptions`` and ``jobs.label.driver.run`` runs the job.
"""
from __future__ import annotations

import argparse
import json
import sys

from vos_core.inference import config as segmenter_options

from . import storage as st
from .command import HelpFormatter, OneLineErrors, run_command
from .label.options import DEFAULT_OUTPUT_ROOT, JOB_OUTPUTS, ActorPool, JobOptions, parse_shard

D = JobOptions()  # the defaults, shown in --help


def _actors(spec: str) -> ActorPool:
    try:
        return ActorPool.parse(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _shard(spec: str) -> tuple[int, int]:
    try:
        return parse_shard(spec)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrors(
        prog="python -m jobs.pseudo_label", formatter_class=HelpFormatter,
        description="Pseudo-label videos with AFB-URR on Ray; writes masks/, frames/ and videos/ Parquet tables. "
                    "With no arguments: the sample corpus, the shipped weights, a local Ray, ./vos_output/<run_id>.")
    io_ = p.add_argument_group("input and output")
    io_.add_argument("--manifest", default=D.manifest,
                     help="Parquet/CSV/JSON Lines manifest (video_id, video_uri, annotations_uri[, start_frame]) or a "
                          "DAVIS-layout root; any fsspec URL (default: the sample corpus)")
    io_.add_argument("--output", default=None,
                     help=f"dataset root for this run, any fsspec URL (default: ./{DEFAULT_OUTPUT_ROOT}/<run_id>)")
    io_.add_argument("--checkpoint", default=D.checkpoint, help="AFB-URR weights (default: the shipped "
                     "vos_core/weights/compact.pth)")
    io_.add_argument("--run-id", default=None, help="id of the run; rerunning with the same id and output resumes it "
                     "(default: the run already at --output, else a new timestamped id)")
    io_.add_argument("--davis-resolution", default=None, help="resolution folder of a DAVIS root (e.g. 480p)")
    st.add_storage_arguments(io_)
    io_.add_argument("--shards", type=int, default=D.shards, help="hash shards of video_id in the output (fixed for "
                     "a run)")
    segmenter_options.add_arguments(p.add_argument_group("segmentation"))
    ray_ = p.add_argument_group("Ray")
    ray_.add_argument("--actors", type=_actors, default=D.actors, metavar="N|MIN:MAX|auto",
                      help="actor pool size: N, or MIN:MAX to autoscale (default auto: 1 up to what the cluster fits)")
    ray_.add_argument("--gpus-per-actor", type=float, default=D.gpus_per_actor,
                      help="GPUs per actor (0: CPU; 0.5: two per GPU)")
    ray_.add_argument("--cpus-per-actor", type=float, default=D.cpus_per_actor,
                      help="CPUs per actor (also torch threads on CPU)")
    ray_.add_argument("--streams-per-actor", type=int, default=D.streams_per_actor,
                      help="videos an actor segments at once, their frames batched through one model (each with "
                           "its own memory; a video that ends is replaced by the next at once): for GPUs, with "
                           "--gpus-per-actor (fractions put several actors on a GPU)")
    ray_.add_argument("--max-retries", type=int, default=D.max_retries,
                      help="restarts of a dead actor and retries of its video")
    ray_.add_argument("--prefetch", type=int, default=D.prefetch,
                      help="frames decoded ahead, and results waiting to be encoded, per actor (at least 1)")
    ray_.add_argument("--videos-per-task", type=int, default=D.videos_per_task,
                      help="videos an actor is handed at once (one Ray task; each still committed on its own): "
                           "amortises Ray's per-task cost over short clips; lowered for small runs so every actor "
                           "gets at least 4 tasks")
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
    run_.add_argument("--limit", type=int, default=None, help="process only the first N manifest rows (of the "
                      "--manifest-shard slice when given)")
    run_.add_argument("--manifest-shard", type=_shard, default=None, metavar="I/N",
                      help="process only slice I (0-based) of N equal contiguous slices of the manifest's rows: "
                           "the N slices are disjoint and cover the manifest")
    run_.add_argument("--progress-interval", type=float, default=D.progress_interval,
                      help="seconds between heartbeat lines (0: none)")
    review = p.add_argument_group("review and corrections (docs/review-loop.md)")
    review.add_argument("--review-quality", type=float, default=D.review_quality,
                        help="frames whose quality (predicted J of their weakest mask) is below this are counted "
                             "for review (videos.frames_below_quality)")
    review.add_argument("--corrections", default=None, metavar="URI",
                        help="corrected masks: a COCO JSON (vos export --format review, edited) or a folder of "
                             "<video>/<frame>.png id maps; re-segments only the corrected videos of --parent into a "
                             "new run at --output")
    review.add_argument("--parent", default=None, metavar="RUN",
                        help="output URI of the run the corrections are for (default: the one the COCO JSON names)")
    return p


def options_from_args(args: argparse.Namespace) -> JobOptions:
    """JobOptions from the parsed command line; ValueError for values out of range."""
    try:
        storage_options = json.loads(args.storage_options) if (args.storage_options or "").strip() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"--storage-options is not JSON: {e}") from None
    if not isinstance(storage_options, dict):
        raise ValueError("--storage-options must be a JSON object")
    return JobOptions(
        manifest=args.manifest, output=args.output, checkpoint=args.checkpoint, run_id=args.run_id,
        davis_resolution=args.davis_resolution, endpoint_url=args.endpoint_url, storage_options=storage_options,
        shards=args.shards, segmenter=segmenter_options.from_args(args, **JOB_OUTPUTS), actors=args.actors,
        gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
        streams_per_actor=args.streams_per_actor, max_retries=args.max_retries,
        prefetch=args.prefetch, videos_per_task=args.videos_per_task, encode_inline=args.encode_inline,
        ray_address=args.ray_address,
        num_cpus=args.num_cpus, retry_failed=args.retry_failed, fail_on_error=args.fail_on_error, limit=args.limit,
        manifest_shard=args.manifest_shard,
        progress_interval=args.progress_interval, review_quality=args.review_quality, corrections=args.corrections,
        parent=args.parent)


def main(argv: list[str] | None = None) -> int:
    from .label.driver import run

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    return run_command("pseudo-label", lambda: run(options))


if __name__ == "__main__":
    sys.exit(main())
