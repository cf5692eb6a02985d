"""The job's fixed cost per video on many short clips: job against bare segmenter, where an actor's
time goes, and the driver's peak memory against the manifest's length.

    python benchmarks/make_tiny_corpus.py /tmp/tiny --videos 10000
    python benchmarks/bench_many_videos.py --manifest /tmp/tiny/manifest.parquet --videos 1000 --actors 1,2
    python benchmarks/bench_many_videos.py --manifest /tmp/tiny/manifest.parquet --rss 1000,10000 --actors 2
    python benchmarks/bench_many_videos.py --code /tmp/before ...     # the same against another checkout

Parts (each prints a table):

* ``--profile K`` (default 60): in one process, no Ray, 1 torch thread: the bare segmenter (frames
  decoded in the same thread, nothing written) and the actor's ``process_video`` (decode-ahead, the
  segmenter, encoding, Parquet, commit) on the same K videos, alternated ``--rounds`` times (the
  machine may be loaded: medians). The actor's time is split by wrapping the functions it calls:
  attempt record, frames/masks Parquet publish, attempt count, commit record, opening the video and
  its annotations, the model loop, the rest.
* ``--actors A,...``: the whole job (``jobs.pseudo_label`` in this process, on a local Ray started
  once) on the first ``--videos`` videos with A actors of 1 CPU; the bare segmenter on the first
  ``--bare`` videos right before and after. "steady" videos/s counts from the first video's result
  to the last (actor start-up and model load excluded); "per actor" divides by A. "Ray hand-off"
  is the job's time per video and actor (steady) less the in-process time per video of part 1.
* ``--rss N,...``: ``python -m jobs.pseudo_label`` as a child process (its own local Ray) on the
  first N videos; the driver's peak RSS (VmHWM) read by the driver itself at its end, wall time,
  videos/s.
* ``--driver-memory N,...``: what the driver holds per video before the pool runs, up to manifests
  far longer than this machine can segment: a child process per N runs the driver's ``plan`` (manifest
  read and checked, checkpoint check, run opened, videos still to do) and ``pool.build_dataset`` (the
  Ray Data dataset of the pending videos, its blocks put in a local Ray's object store) on the first N
  rows of ``--manifest``, and reports its RSS before, after ``plan`` and after the dataset, and its
  peak (VmHWM). Nothing is segmented.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_code(code: Path) -> None:
    """Imports (and Ray workers: they start in the driver's working directory and import from there) use
    the checkout at ``code``."""
    os.chdir(code)
    sys.path.insert(0, str(code))
    os.environ["PYTHONPATH"] = str(code) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH")
                                            else "")


def _tasks(manifest: str, n: int):
    import pyarrow.parquet as pq

    from jobs.label.manifest import VideoTask

    t = pq.read_table(manifest).slice(0, n).to_pylist()
    return [VideoTask(r["video_id"], r["video_uri"], r["annotations_uri"]) for r in t]


def _segmenter(settings: dict):
    import torch

    from vos_core import Segmenter, SegmenterConfig, load_model
    from vos_core.model import SHIPPED_CHECKPOINT

    torch.set_num_threads(1)
    return Segmenter(load_model(SHIPPED_CHECKPOINT), SegmenterConfig.from_dict(settings))


def _settings() -> tuple[str, dict]:
    from jobs.label.driver import check_checkpoint
    from jobs.label.options import JobOptions

    opts = JobOptions()
    return check_checkpoint(opts, opts.storage())


def bare(seg, tasks) -> float:
    """Seconds for the bare segmenter over ``tasks`` (decode in this thread, nothing written)."""
    from vos_core.io import load_annotations, open_frames, select_annotations

    t0 = time.perf_counter()
    for t in tasks:
        with open_frames(t.video_uri) as src:
            ann, _ = select_annotations(load_annotations(t.annotations_uri, frame_names=src.names), t.annotations_uri,
                                        t.start_frame)
            for _ in seg.run(src, ann):
                pass
    return time.perf_counter() - t0


class Timers:
    """Wall time spent in wrapped functions, by name (only the outermost call of a name counts)."""

    def __init__(self):
        self.s = defaultdict(float)
        self._depth = defaultdict(int)

    def wrap(self, owner, attr: str, name: str):
        fn = getattr(owner, attr)
        timers = self

        def timed(*a, **k):
            timers._depth[name] += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timers._depth[name] -= 1
                if not timers._depth[name]:
                    timers.s[name] += time.perf_counter() - t0

        setattr(owner, attr, timed)


class TimedSegmenter:
    """The segmenter, with the time its ``run`` loop takes on the caller's thread counted as 'model'."""

    def __init__(self, seg, timers: Timers):
        self._seg, self._t = seg, timers

    def __getattr__(self, name):
        return getattr(self._seg, name)

    def run(self, *a, **k):
        it = iter(self._seg.run(*a, **k))
        while True:
            t0 = time.perf_counter()
            try:
                r = next(it)
            except StopIteration:
                self._t.s["model loop (decode-ahead waits included)"] += time.perf_counter() - t0
                return
            self._t.s["model loop (decode-ahead waits included)"] += time.perf_counter() - t0
            yield r


PARTS = ("attempt record (begin)", "Parquet publish (frames, masks)", "attempt count", "commit record",
         "open video + annotations", "segmenter.start", "model loop (decode-ahead waits included)")


def profile(manifest: str, k: int, rounds: int) -> dict:
    """Part 1: bare segmenter vs process_video, alternated; returns medians in ms per video."""
    import vos_core.io as vio

    from jobs.label import commit, parquet
    from jobs.label.worker import WorkerConfig, process_video
    from jobs.layout import Layout

    checksum, settings = _settings()
    seg = _segmenter(settings)
    tasks = _tasks(manifest, k)
    timers = Timers()
    timers.wrap(commit.VideoCommit, "begin", PARTS[0])
    timers.wrap(parquet.TableFile, "publish", PARTS[1])
    timers.wrap(commit, "count_attempts", PARTS[2])
    timers.wrap(commit, "_put_record", PARTS[3])
    for f in ("open_frames", "load_annotations", "select_annotations"):
        timers.wrap(vio, f, PARTS[4])
    timed = TimedSegmenter(seg, timers)
    timers.wrap(seg, "start", PARTS[5])
    bare(seg, tasks[:5])  # warm-up
    # and of process_video: its first call imports Ray (the attempt record's node id) and the writers, which
    # an actor has done before its first video; counted, it added ~8 ms per video to the attempt record
    from vos_core.model import SHIPPED_CHECKPOINT

    def worker(prefix: str, run_id: str):
        cfg = WorkerConfig(checkpoint=SHIPPED_CHECKPOINT, model_checksum=checksum,
                           output=tempfile.mkdtemp(prefix=prefix), shards=16, run_id=run_id, settings=settings)
        return cfg, Layout(cfg.output, cfg.storage(), shards=16)

    wcfg, wlayout = worker("bench_many_warm_", "warm")
    for t in tasks[:3]:
        process_video(t, seg, wcfg, wlayout)
    bare_ms, job_ms, parts = [], [], defaultdict(list)
    for r in range(rounds):
        bare_ms.append(1000 * bare(seg, tasks) / k)
        cfg, layout = worker("bench_many_", "bench")
        timers.s.clear()
        t0 = time.perf_counter()
        for t in tasks:
            row = process_video(t, timed, cfg, layout)
            assert row["status"] == "ok", row
        job_ms.append(1000 * (time.perf_counter() - t0) / k)
        for p in PARTS:
            parts[p].append(1000 * timers.s[p] / k)
        parts["rest"].append(job_ms[-1] - sum(parts[p][-1] for p in PARTS))
    return {"bare": statistics.median(bare_ms), "job": statistics.median(job_ms),
            "parts": {p: statistics.median(v) for p, v in parts.items()}, "rounds": rounds, "k": k,
            "bare_all": bare_ms, "job_all": job_ms}


def job(manifest: str, n: int, actors: int, extra: list[str]) -> dict:
    """Part 2: the job in this process on the local Ray; result times as the driver sees them."""
    import io
    from contextlib import redirect_stdout

    from jobs import pseudo_label
    from jobs.label import progress
    from jobs.layout import Layout, read_videos
    from jobs.storage import Storage

    times = []
    orig = progress.Progress.video_done

    def video_done(self, r):
        times.append(time.perf_counter())
        return orig(self, r)

    progress.Progress.video_done = video_done
    out = tempfile.mkdtemp(prefix="bench_many_job_")
    args = ["--manifest", manifest, "--output", out, "--actors", str(actors), "--limit", str(n),
            "--progress-interval", "0", *extra]
    t0 = time.perf_counter()
    try:
        with redirect_stdout(io.StringIO()):
            rc = pseudo_label.main(args)
    finally:
        progress.Progress.video_done = orig
    wall = time.perf_counter() - t0
    v = read_videos(Layout(out, Storage()), ["status"]).to_pylist()
    assert rc == 0 and len(v) == n and all(r["status"] == "ok" for r in v), (rc, len(v))
    steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return {"wall": wall, "videos_s": n / wall, "steady": steady}


_RSS_DRIVER = """
import sys, resource
from jobs import pseudo_label
rc = pseudo_label.main(sys.argv[1:])
hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
ru = resource.getrusage(resource.RUSAGE_SELF)
print('VMHWM_KB', hwm, 'RC', rc, 'CPU_S', ru.ru_utime + ru.ru_stime, flush=True)
"""


def rss(code: Path, manifest: str, n: int, actors: int, extra: list[str]) -> dict:
    """Part 3: the driver as a child process; its peak RSS as it reads it itself."""
    out = tempfile.mkdtemp(prefix="bench_many_rss_")
    cmd = [sys.executable, "-c", _RSS_DRIVER, "--manifest", manifest, "--output", out, "--actors", str(actors),
           "--num-cpus", str(actors), "--limit", str(n), "--progress-interval", "0", *extra]
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_DEDUP_LOGS": "0"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("VMHWM_KB")]
    if p.returncode != 0 or not line:
        raise RuntimeError(f"driver failed ({p.returncode}): {p.stdout[-2000:]} {p.stderr[-2000:]}")
    summary = [ln for ln in p.stdout.splitlines() if ln.startswith("run ")]
    fields = line[0].split()
    return {"rss_mb": int(fields[1]) / 1024, "wall": wall, "videos_s": n / wall,
            "driver_cpu_ms": 1000 * float(fields[fields.index("CPU_S") + 1]) / n,
            "summary": summary[-1] if summary else ""}


_MEMORY_DRIVER = """
import inspect, json, os, sys, tempfile, time
def rss(key='VmRSS'):
    return int([l.split()[1] for l in open('/proc/self/status') if l.startswith(key)][0]) / 1024
manifest, n = sys.argv[1], int(sys.argv[2])
import ray
from jobs import pseudo_label
from jobs.label import driver, pool
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
base = rss()
opts = pseudo_label.options_from_args(pseudo_label.build_parser().parse_args(
    ['--manifest', manifest, '--output', tempfile.mkdtemp(prefix='bench_mem_'), '--limit', str(n), '--actors', '1']))
t0 = time.perf_counter()
p = driver.plan(opts)
planned, plan_s = rss(), time.perf_counter() - t0
args = [p.pending, p.worker, 1, 1, opts]
if 'per_task' in inspect.signature(pool.build_dataset).parameters:
    args.append(pool.videos_per_task(len(p.pending), 1, opts.videos_per_task))
t0 = time.perf_counter()
ds = pool.build_dataset(*args)
built, build_s = rss(), time.perf_counter() - t0
print('MEMORY', json.dumps({'videos': len(p.pending), 'base': base, 'planned': planned, 'built': built,
                            'peak': rss('VmHWM'), 'plan_s': plan_s, 'build_s': build_s}), flush=True)
"""


def driver_memory(code: Path, manifest: str, n: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    p = subprocess.run([sys.executable, "-c", _MEMORY_DRIVER, manifest, str(n)], cwd=code, env=env,
                       capture_output=True, text=True)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("MEMORY ")]
    if p.returncode != 0 or not line:
        raise RuntimeError(f"failed ({p.returncode}): {p.stdout[-2000:]} {p.stderr[-3000:]}")
    return json.loads(line[0][len("MEMORY "):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", required=True, help="from benchmarks/make_tiny_corpus.py")
    p.add_argument("--code", type=Path, default=ROOT, help="checkout to run (default: this one)")
    p.add_argument("--profile", type=int, default=60, metavar="K", help="videos of part 1 (0: skip it)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--actors", default="", help="part 2: actor counts, e.g. 1,2 (default: skip)")
    p.add_argument("--videos", type=int, default=1000, help="videos of part 2")
    p.add_argument("--bare", type=int, default=100, help="videos of the bare segmenter next to each job run")
    p.add_argument("--rss", default="", help="part 3: manifest lengths, e.g. 1000,10000 (default: skip)")
    p.add_argument("--rss-actors", type=int, default=2)
    p.add_argument("--driver-memory", default="", help="part 4: manifest lengths, e.g. 1000,100000,1000000")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("job_args", nargs="*", help="after --: more pseudo_label options")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    _setup_code(args.code.resolve())
    load = os.getloadavg()
    print(f"code {args.code.resolve()}; {os.cpu_count()} CPUs; load average at start {load[0]:.2f}, {load[1]:.2f}, "
          f"{load[2]:.2f}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}", flush=True)
    figures = {}
    if args.profile:
        pr = profile(args.manifest, args.profile, args.rounds)
        figures["profile"] = pr
        print(f"\n(1) one actor's time per video, in-process, no Ray, 1 torch thread; {pr['k']} videos x "
              f"{pr['rounds']} rounds alternated, medians (all rounds: bare {[round(x) for x in pr['bare_all']]}, "
              f"job {[round(x) for x in pr['job_all']]} ms)")
        print("| | ms per video |\n| --- | --- |")
        print(f"| bare segmenter (decode in-thread, nothing written) | {pr['bare']:.1f} |")
        print(f"| process_video (the actor's work for one video) | {pr['job']:.1f} |")
        for k, v in pr["parts"].items():
            print(f"| - {k} | {v:.1f} |")
        print(f"| videos/s of process_video / videos/s of bare | {pr['bare'] / pr['job']:.0%} |", flush=True)
    if args.actors:
        _, settings = _settings()
        seg = _segmenter(settings)
        bare_tasks = _tasks(args.manifest, args.bare)
        bare(seg, bare_tasks[:5])
        import ray

        ray.init(num_cpus=max(int(a) for a in args.actors.split(",")), include_dashboard=False, log_to_driver=False)
        rows = []
        for a in (int(x) for x in args.actors.split(",")):
            b0 = args.bare / bare(seg, bare_tasks)
            j = job(args.manifest, args.videos, a, args.job_args)
            b1 = args.bare / bare(seg, bare_tasks)
            rows.append((a, b0, b1, j))
        ray.shutdown()
        figures["job"] = [{"actors": a, "bare_before": b0, "bare_after": b1, **j} for a, b0, b1, j in rows]
        print(f"\n(2) the job on {args.videos} videos (1 CPU per actor) against the bare segmenter on {args.bare} "
              f"videos (1 thread) run just before and after it")
        print("| actors | bare videos/s (before, after) | job wall s | job videos/s (wall) | job videos/s steady "
              "| steady per actor | per actor / bare | job ms per video and actor (steady) | Ray hand-off ms |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for a, b0, b1, j in rows:
            per = j["steady"] / a
            ms = 1000 / per
            hand = f"{ms - figures['profile']['job']:.0f}" if "profile" in figures else "-"
            print(f"| {a} | {b0:.2f}, {b1:.2f} | {j['wall']:.1f} | {j['videos_s']:.2f} | {j['steady']:.2f} | "
                  f"{per:.2f} | {per / ((b0 + b1) / 2):.0%} | {ms:.0f} | {hand} |", flush=True)
    if args.rss:
        rows = []
        for n in (int(x) for x in args.rss.split(",")):
            rows.append((n, rss(args.code.resolve(), args.manifest, n, args.rss_actors, args.job_args)))
        figures["rss"] = [{"videos": n, **r} for n, r in rows]
        print(f"\n(3) the driver as its own process (python -m jobs.pseudo_label, its own local Ray, "
              f"{args.rss_actors} actors)")
        print("| videos | driver peak RSS MB | wall s | videos/s (wall, start-up included) "
              "| driver process CPU ms per video (start-up included) |")
        print("| --- | --- | --- | --- | --- |")
        for n, r in rows:
            print(f"| {n} | {r['rss_mb']:.0f} | {r['wall']:.1f} | {r['videos_s']:.2f} | {r['driver_cpu_ms']:.1f} |",
                  flush=True)
        for n, r in rows:
            print(f"  {n}: {r['summary']}")
    if args.driver_memory:
        print("\n(4) the driver before the pool runs: plan (manifest, checkpoint, run, pending) + the dataset of "
              "the pending videos; RSS in MB")
        print("| videos | RSS at start (Ray, torch imported) | after plan | after the dataset | peak (VmHWM) "
              "| per video after the dataset, kB | plan s | dataset s |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
        figures["driver_memory"] = []
        for x in args.driver_memory.split(","):
            r = driver_memory(args.code.resolve(), args.manifest, int(x))
            figures["driver_memory"].append(r)
            print(f"| {r['videos']} | {r['base']:.0f} | {r['planned']:.0f} | {r['built']:.0f} | {r['peak']:.0f} | "
                  f"{1024 * (r['built'] - r['base']) / r['videos']:.2f} | {r['plan_s']:.1f} | {r['build_s']:.1f} |",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
