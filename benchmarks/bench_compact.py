"""Reading a run before and after ``vos compact``: locally and on S3 (moto on 127.0.0.1).

    python benchmarks/bench_compact.py                          # 10,000 videos, 16 shards
    python benchmarks/bench_compact.py --videos 1000 --no-s3

The run is synthetic but written by the job's own commit writer (``jobs.label.commit.VideoCommit``:
the same rows, files and commit records as the job; no model): each video has ``--frames``
frames of ``--objects`` objects (24x40 px, with U maps). The local run is copied to a moto S3
server on 127.0.0.1 (a bucket upload of the same files). Then, on each storage, before and after
compaction: ``SELECT count(*) FROM masks`` through ``jobs.query`` (a fresh connection: listing,
views, the committed-rows join), one video's rows by DuckDB (``... FROM masks WHERE video_id =``),
and ``load_labels`` of one video (what ``vos render`` and ``vos export`` read per video; no
scan). Each figure is the median of ``--repeat`` runs (different videos for the lookups).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN = "bench"


def _results(frames: int, objects: int):
    """Frame results of random probabilities, statistics computed as the segmenter does."""
    import numpy as np
    import torch
    from vos_core.inference.segmenter import FrameResult
    from vos_core.inference.stats import compute_stats

    ids = list(range(objects + 1))
    out = []
    for t in range(frames):
        g = torch.Generator().manual_seed(t)
        probs = torch.softmax(torch.randn(len(ids), 24, 40, generator=g) * 3, 0)
        labels = probs.argmax(0)
        u = torch.rand(24, 40, generator=g)
        stats = compute_stats(probs, labels, u, ids, [10] * len(ids), [0] * len(ids))
        out.append(FrameResult(index=t, object_ids=ids, mask=np.asarray(ids, np.uint8)[labels.numpy()], probs=None,
                               uncertainty=u.numpy(), stats=stats, annotated=t == 0))
    return out


def build(out: str, videos: int, frames: int, objects: int, shards: int) -> float:
    """Writes ``videos`` committed videos with the job's commit writer; returns the seconds it took."""
    from jobs.label.commit import VideoCommit
    from jobs.label.run_record import open_run
    from jobs.layout import Layout
    from jobs.storage import Storage

    layout = Layout(out, Storage(), shards=shards)
    open_run(layout, RUN, {"settings": {}})
    results = _results(frames, objects)
    t0 = time.perf_counter()
    for i in range(videos):
        vc = VideoCommit(layout, f"video-{i:07d}", RUN)
        for r in results:
            vc.add(r, f"{r.index:05d}")
        vc.commit()
    return time.perf_counter() - t0


def _timed(fn, repeat: int) -> float:
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(out: str, storage, videos: int, frames: int, objects: int, repeat: int) -> dict:
    from jobs.inspect.read import load_labels, open_layout, query

    want = videos * frames * objects
    picks = [f"video-{(v * 7919) % videos:07d}" for v in range(repeat)]

    def count(_):
        (n,) = query(out, "SELECT count(*) AS n FROM masks", storage)["n"].to_pylist()
        assert n == want, (n, want)

    def sql_lookup(i):
        t = query(out, f"SELECT * FROM masks WHERE video_id = '{picks[i]}'", storage)
        assert t.num_rows == frames * objects, t.num_rows

    def labels(i):
        v = load_labels(open_layout(out, storage), picks[i])
        assert len(v.frames) == frames

    return {"count": _timed(count, repeat), "sql": _timed(sql_lookup, repeat), "labels": _timed(labels, repeat)}


def _files(fs, root: str) -> int:
    fs.invalidate_cache()
    return len([p for p in fs.find(root) if p.endswith(".parquet")])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=10_000)
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--objects", type=int, default=2)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--s3-before-repeat", type=int, default=1,
                   help="repeats on S3 before compaction (each query lists and opens every file: minutes)")
    p.add_argument("--no-s3", action="store_true", help="local only")
    args = p.parse_args(argv)

    from benchmarks.machine import command_line, describe_machine
    from jobs import storage as st
    from jobs.label.compact import compact

    print(command_line())
    print(describe_machine())
    work = tempfile.mkdtemp(prefix="bench_compact_")
    rows = []
    try:
        local = os.path.join(work, "run")
        built = build(local, args.videos, args.frames, args.objects, args.shards)
        print(f"{args.videos} videos x {args.frames} frames x {args.objects} objects written by the commit writer in "
              f"{built:.0f} s, {args.shards} shards", flush=True)
        targets = [("local", local, st.Storage(), None)]
        server = None
        if not args.no_s3:
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
            for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                         "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
                os.environ.setdefault(k, v)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            storage = st.Storage(endpoint_url=f"http://{host}:{port}")
            fs, _ = storage.resolve("s3://bench")
            fs.mkdir("bench")
            t0 = time.perf_counter()
            fs.put(local + "/", "bench/run/", recursive=True)
            print(f"uploaded to moto S3 in {time.perf_counter() - t0:.0f} s", flush=True)
            targets.append(("moto S3", "s3://bench/run", storage, fs))
        for name, out, storage, fs in targets:
            fs = fs or storage.resolve(out)[0]
            root = storage.resolve(out)[1]
            slow = args.s3_before_repeat if fs is not None else args.repeat
            before = measure(out, storage, args.videos, args.frames, args.objects, slow)
            n_before = _files(fs, root)
            t0 = time.perf_counter()
            reports = compact(out, storage)
            took = time.perf_counter() - t0
            assert sum(r.compacted for r in reports) == args.videos
            after = measure(out, storage, args.videos, args.frames, args.objects, args.repeat)
            rows.append((name, "before", n_before, before, None, slow))
            rows.append((name, "after", _files(fs, root), after, took, args.repeat))
            print(f"{name}: done", flush=True)
        if server is not None:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{args.videos} videos, {args.videos * args.frames * args.objects} masks rows; seconds, median of 'runs'")
    print("| storage | when | Parquet files | compaction s | SELECT count(*) FROM masks | "
          "masks WHERE video_id = (DuckDB) | load_labels (one video) | runs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, when, files, m, took, runs in rows:
        print(f"| {name} | {when} compaction | {files} | {'-' if took is None else f'{took:.1f}'} | {m['count']:.2f} | "
              f"{m['sql']:.2f} | {m['labels']:.3f} | {runs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
