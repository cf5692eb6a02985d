"""Throughput of the whole Ray job against the segmenter alone on the same videos.

    python benchmarks/bench_job.py                       # sample corpus x2, 1 and 2 actors
    python benchmarks/bench_job.py --copies 4 --size 120 --actors 1,2 --checkpoint vos_core/weights/compact.pth

"segmenter alone": one process, videos one after another, ``vos_core.Segmenter`` on frames
decoded in the same thread, nothing written, 1 torch thread (what one 1-CPU actor gets).
"job": ``jobs.pseudo_label`` in-process on an already started local Ray (Ray start-up is
measured once, separately): manifest, checkpoint check, actor start-up and model load,
decode-ahead, segmentation, RLE encoding, Parquet writes and commits. "job, encode inline" is
the same with ``--encode-inline`` (results encoded on the model's thread, not overlapped); "job, N streams" is
1 actor with ``--streams-per-actor N`` (``--streams``: N videos at once, their frames batched). ``overhead`` compares
the job's frames/s with the segmenter's times the number of actors (ideal scaling); on a
machine with fewer free cores than actors the ideal is not reachable.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _manifest(copies: int, dest: Path) -> tuple[Path, list]:
    from jobs.label.manifest import load_manifest

    base = load_manifest(str(ROOT / "jobs" / "sample_corpus" / "manifest.csv"))
    tasks = []
    with open(dest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "video_uri", "annotations_uri", "start_frame"])
        for c in range(copies):
            for t in base:
                w.writerow([f"{t.video_id}-{c}", t.video_uri, t.annotations_uri,
                            "" if t.start_frame is None else t.start_frame])
                tasks.append(t)
    return dest, tasks


def segmenter_alone(ckpt: str, tasks, size) -> tuple[float, int]:
    import torch
    from vos_core.io import select_annotations
    from vos_core import Segmenter, SegmenterConfig, load_model
    from vos_core.io import load_annotations, open_frames

    torch.set_num_threads(1)
    seg = Segmenter(load_model(ckpt), SegmenterConfig(size=size, keep_probs=False))
    frames = 0
    t0 = time.perf_counter()
    for t in tasks:
        src = open_frames(t.video_uri)
        ann, _ = select_annotations(load_annotations(t.annotations_uri, frame_names=src.names), t.annotations_uri,
                                    t.start_frame)
        for _ in seg.run(src, ann):
            frames += 1
    return time.perf_counter() - t0, frames


def job(ckpt: str, manifest: Path, out: Path, actors: int, size, encode_inline: bool = False,
        streams: int = 1) -> tuple[float, int]:
    import io
    from contextlib import redirect_stdout

    from jobs import pseudo_label
    from jobs.layout import Layout, read_videos
    from jobs.storage import Storage

    args = ["--manifest", str(manifest), "--output", str(out), "--checkpoint", ckpt, "--actors", str(actors),
            "--progress-interval", "0"] + (["--size", str(size)] if size else []) + \
        (["--encode-inline"] if encode_inline else []) + ["--streams-per-actor", str(streams)]
    t0 = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        rc = pseudo_label.main(args)
    wall = time.perf_counter() - t0
    assert rc == 0
    v = read_videos(Layout(str(out), Storage()), ["status", "frames", "seconds"]).to_pylist()
    assert all(r["status"] == "ok" for r in v)
    return wall, sum(r["frames"] for r in v), sum(r["seconds"] for r in v)


def encode_cost(h: int, w: int, objects: int, frames: int = 50) -> float:
    """Seconds per frame of what the job's encode thread does (``VideoCommit.add``: COCO RLE per
    object, the U-map PNG, row buffers, Parquet row groups as they fill) for synthetic H×W results."""
    import torch

    from jobs.label.commit import VideoCommit
    from jobs.layout import Layout
    from jobs.storage import Storage
    from vos_core.model.decoder import uncertainty_map
    from vos_core.inference.segmenter import FrameResult
    from vos_core.inference.stats import compute_stats

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(objects + 1, h // 8, w // 8, generator=g) * 4, 0)
    probs = torch.nn.functional.interpolate(probs[None], size=(h, w), mode="bilinear")[0]  # blobby masks
    labels = probs.max(0).indices
    u = uncertainty_map(probs, dim=0)[0]
    ids = list(range(objects + 1))
    stats = compute_stats(probs, labels, u, ids, [1000] * len(ids), [0] * len(ids))
    result = FrameResult(index=0, object_ids=ids, mask=labels.numpy().astype(np.uint8), probs=None,
                         uncertainty=u.numpy(), stats=stats, annotated=False)
    with tempfile.TemporaryDirectory() as out:
        vc = VideoCommit(Layout(out, Storage()), "encode-cost", "bench")
        vc.begin()
        t0 = time.perf_counter()
        for t in range(frames):
            result.index = t
            vc.add(result, f"{t:05d}.jpg")
        seconds = (time.perf_counter() - t0) / frames
        vc.abort()
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="default: the shipped weights, else a random compact model "
                                                      "(same compute)")
    p.add_argument("--copies", type=int, default=2, help="times the 3 sample videos are listed (default 2)")
    p.add_argument("--size", type=int, default=None, help="working resolution (default: input size, 180)")
    p.add_argument("--actors", default="1,2")
    p.add_argument("--streams", default="", metavar="N[,N...]",
                   help="also run 1 actor with --streams-per-actor N for each N > 1 (e.g. 2,4)")
    p.add_argument("--encode-cost", default=None, metavar="HxW[,HxW...]",
                   help="only time the per-frame encoding (VideoCommit.add) of synthetic 1- and 3-object results "
                        "at these sizes, and exit")
    p.add_argument("--no-inline-ab", action="store_true",
                   help="skip the A/B run of 1 actor with results encoded on the model's thread (--encode-inline)")
    args = p.parse_args(argv)
    if args.encode_cost:
        print("per-frame encoding on one thread (COCO RLE per object, U-map PNG, row buffers, Parquet row groups)")
        print("| size (HxW) | objects | ms per frame |")
        print("| --- | --- | --- |")
        for size in args.encode_cost.split(","):
            h, w = (int(v) for v in size.lower().split("x"))
            for k in (1, 3):
                print(f"| {h}x{w} | {k} | {1000 * encode_cost(h, w, k):.1f} |", flush=True)
        return 0
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from vos_core.model import SHIPPED_CHECKPOINT as DEFAULT_CHECKPOINT

    tmp = Path(tempfile.mkdtemp(prefix="bench_job_"))
    ckpt = args.checkpoint or (DEFAULT_CHECKPOINT if os.path.exists(DEFAULT_CHECKPOINT) else None)
    if ckpt is None:
        import torch
        from vos_core.model import AFBURR, COMPACT, save_checkpoint
        torch.manual_seed(0)
        ckpt = str(tmp / "compact_random.pth")
        save_checkpoint(AFBURR(COMPACT), ckpt)
    manifest, tasks = _manifest(args.copies, tmp / "manifest.csv")
    actor_counts = [int(a) for a in args.actors.split(",")]

    import ray
    t0 = time.perf_counter()
    ray.init(num_cpus=max(actor_counts), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    rows = []
    alone_s, alone_frames = segmenter_alone(ckpt, tasks, args.size)
    rows.append(("segmenter alone", 1, len(tasks), alone_frames, alone_s, alone_s))
    for n in actor_counts:
        s, f, busy = job(ckpt, manifest, tmp / f"out_{n}", n, args.size)
        assert f == alone_frames
        rows.append(("job", n, len(tasks), f, s, busy))
        if n == 1 and not args.no_inline_ab:
            s, f, busy = job(ckpt, manifest, tmp / "out_inline", 1, args.size, encode_inline=True)
            assert f == alone_frames
            rows.append(("job, encode inline", 1, len(tasks), f, s, busy))
    for k in [int(x) for x in args.streams.split(",") if x.strip() and int(x) > 1]:
        s, f, _ = job(ckpt, manifest, tmp / f"out_streams_{k}", 1, args.size, streams=k)
        assert f == alone_frames
        rows.append((f"job, {k} streams", 1, len(tasks), f, s, None))  # videos overlap: no busy time per video
    ray.shutdown()

    alone_fps = alone_frames / alone_s
    print(f"\n{len(tasks)} videos, {alone_frames} frames, {'size ' + str(args.size) if args.size else 'input size'}, "
          f"checkpoint {os.path.basename(ckpt)}, {os.cpu_count()} CPUs; Ray start-up {ray_start:.1f} s (not counted)")
    print("| mode | actors | videos | frames | wall s | videos/s | frames/s | vs segmenter x actors "
          "| frames/s per actor while busy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, n, v, f, s, busy in rows:
        rel = f / s / (alone_fps * n)
        print(f"| {mode} | {n} | {v} | {f} | {s:.1f} | {v / s:.2f} | {f / s:.1f} | "
              f"{'-' if not mode.startswith('job') else f'{rel:.0%}'} | {f'{f / busy:.1f}' if busy else '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
