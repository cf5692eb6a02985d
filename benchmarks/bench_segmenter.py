"""Segmenter speed and peak memory: one entry point, one table per question.

    python benchmarks/bench_segmenter.py --preset quick     # what a 2-core CPU box can afford
    python benchmarks/bench_segmenter.py --preset full      # the whole matrix: run it on a GPU machine
    python benchmarks/bench_segmenter.py --preset tiny      # seconds: checks the script itself

Two tables, both on synthetic videos (textured squares, one per object,
moving on Lissajous paths over a fixed noise background, plus per-frame
sensor noise) with a randomly initialised model (seeded):

(1) speed: frames/s and peak memory of ``vos_core.Segmenter`` (defaults:
    budget 300,000 features, merge_thres 0.95, fp32, channels_last, probabilities
    not kept) over sizes, numbers of objects, model configurations (official
    resnet50, compact resnet18) and video lengths;
(2) memory over video length: our adaptive feature bank against an STM-style
    memory kept by this benchmark (a thin FeatureBank subclass): every
    ``--stm-every``-th frame (and the first) appended whole, nothing merged,
    nothing evicted, plain attention reads. The AFB runs twice: with its
    default merge threshold, and with merging off (threshold 1.01) so that it
    must evict to stay in budget, which is the bound's worst case.

On a machine shared with other CPU-bound processes, set OMP_WAIT_POLICY=PASSIVE
(the workers inherit the environment): with libgomp's default spin-waiting,
a 2-thread run whose second thread is descheduled spins at every parallel
region's barrier and runs several times slower (see BENCHMARKS.md).

Every configuration runs in a fresh subprocess so its peak resident set size
(VmHWM) is its own; with a CUDA device the peak allocated CUDA memory is
reported as well. "fps" counts every frame from the annotated one (model
construction excluded); "fps, median of last n" is 1 / the median time of one
frame step over the last n = min(100, frames // 2) frames: robust to a busy
machine, and it shows whether frames get slower as the video grows.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = {"480p-like": (480, 864), "240p-like": (240, 432), "small": (96, 160), "tiny": (48, 80)}


# -- synthetic video -----------------------------------------------------------------
def _side(h: int, w: int, objects: int) -> int:
    return max(8, min(h, w) // (3 if objects == 1 else 4))


def square_position(t: int, h: int, w: int, side: int, j: int = 0) -> tuple[int, int]:
    """Top-left corner of object j's square at frame t (object 0: the original path)."""
    import math

    cy, cx = (h - side) / 2, (w - side) / 2
    py, px = (97, 61) if j == 0 else (97 + 14 * j, 61 + 9 * j)
    phase = 2.1 * j
    return (int(round(cy + cy * math.sin(2 * math.pi * t / py + phase))),
            int(round(cx + cx * math.sin(2 * math.pi * t / px + 1.3 * phase))))


def _texture(side: int, j: int):
    import numpy as np

    yy, xx = np.mgrid[0:side, 0:side]
    s = 4 + 2 * j
    return np.stack([(xx // s + yy // s) % 2 * 200 + 30, (xx * (7 + 3 * j)) % 256, (yy * (5 + 4 * j)) % 256],
                    -1).astype(np.uint8)


def synthetic_video(n: int, h: int, w: int, objects: int = 1, seed: int = 0):
    """Yields n uint8 RGB frames; ``first_mask(h, w, objects)`` is frame 0's id map
    (later objects are drawn over earlier ones)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    side = _side(h, w, objects)
    tex = [_texture(side, j) for j in range(objects)]
    for t in range(n):
        f = bg.copy()
        for j in range(objects):
            y, x = square_position(t, h, w, side, j)
            f[y:y + side, x:x + side] = tex[j]
        noise = rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
        yield np.clip(f.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def first_mask(h: int, w: int, objects: int = 1):
    import numpy as np

    side = _side(h, w, objects)
    m = np.zeros((h, w), np.uint8)
    for j in range(objects):
        y, x = square_position(0, h, w, side, j)
        m[y:y + side, x:x + side] = j + 1
    return m


# -- the STM-style memory ------------------------------------------------------------
def stm_memory(every: int):
    """A memory factory for the Segmenter: STM's memory, every ``every``-th frame appended whole, never
    merged or evicted (the feature bank's interface, so the Segmenter runs it unchanged)."""
    from vos_core import FeatureBank
    from vos_core.inference.feature_bank import ObjectMemory

    unbounded = 1 << 62

    class STMMemory(FeatureBank):
        @property
        def object_budget(self) -> int:
            return unbounded

        def add_objects(self, keys, values, frame_idx):
            for j in range(keys.shape[0]):
                mem = ObjectMemory(self.keydim, self.valdim, self.device, self.dtype)
                mem.append(keys[j], values[j], frame_idx, limit=unbounded)  # geometric growth
                self.objects.append(mem)

        def update(self, keys, values, frame_idx, objects=None):
            if frame_idx % every:
                return
            objects = list(range(self.num_objects)) if objects is None else objects
            for row, i in enumerate(objects):
                self.objects[i].append(keys[row], values[row], frame_idx, limit=unbounded)

        def read(self, query_key, count_usage=True):
            return super().read(query_key, count_usage=False)  # STM keeps no usage counts

    def factory(keydim, valdim, config, device):
        return STMMemory(keydim, valdim, budget=1, merge_thres=2.0, device=device)

    return factory


# -- the worker (one configuration per process) --------------------------------------
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def worker(cfg: dict) -> dict:
    import torch

    from vos_core import FeatureBank, Segmenter, SegmenterConfig
    from vos_core.model import AFBURR, CONFIGS

    torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    torch.manual_seed(0)
    model = AFBURR(CONFIGS[cfg["config"]]).eval().to(device)
    h, w, k = cfg["height"], cfg["width"], cfg["objects"]
    memory = FeatureBank.from_config if cfg["memory"] == "afb" else stm_memory(cfg["stm_every"])
    seg = Segmenter(model, SegmenterConfig(budget=cfg["budget"], merge_thres=cfg["merge_thres"], keep_probs=False),
                    memory=memory)
    session = seg.start()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _status_kb("VmRSS")
    n = cfg["frames"]
    tail = min(100, n // 2)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    cpu0 = time.process_time()
    t0 = tp = time.perf_counter()
    steps = []  # per frame: from the previous result to this one (memorise t-1, read frame t, segment t)
    for r in seg.run(synthetic_video(n, h, w, k), {0: first_mask(h, w, k)}, session=session):
        sync()
        now = time.perf_counter()
        steps.append(now - tp)
        tp = now
    t1 = time.perf_counter()
    import statistics
    bank = session.memory
    itemsize = 4
    return {
        "fps": n / (t1 - t0),
        "fps_tail": 1.0 / statistics.median(steps[-tail:]) if tail else None,
        "tail": tail,
        "peak_rss_mb": _status_kb("VmHWM") / 1024,
        "rss_before_mb": rss_before / 1024,
        "cuda_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "bank_sizes": bank.sizes(),
        "evicted": sum(o.evicted_total for o in bank.objects),
        "bank_mb": sum(o.n for o in bank.objects) * (bank.keydim + bank.valdim) * itemsize / 2**20,
        "bank_alloc_mb": sum(o.keys_buf.numel() + o.values_buf.numel() for o in bank.objects) * itemsize / 2**20,
        "seconds": t1 - t0,
        "cpu_seconds_loop": time.process_time() - cpu0,
    }


# -- the matrix ----------------------------------------------------------------------
def _run(table, memory, config, size, objects, frames, budget=300_000, merge_thres=0.95, stm_every=5):
    return {"table": table, "memory": memory, "config": config, "size": size, "objects": objects, "frames": frames,
            "budget": budget, "merge_thres": merge_thres, "stm_every": stm_every}


def memory_runs(config, size, lengths, budget, stm_every):
    """The memory table's own runs; its AFB rows with default settings are the
    speed table's 1-object runs of the same config and size (not run twice)."""
    runs = []
    for n in lengths:
        runs.append(_run("memory", "afb", config, size, 1, n, budget=budget, merge_thres=1.01))
        runs.append(_run("memory", "stm", config, size, 1, n, stm_every=stm_every))
    return runs


def preset(name: str, stm_every: int = 5) -> list[dict]:
    long = (100, 1000, 3000)
    if name == "quick":  # ~20 CPU-minutes on 2 cores: long videos small and compact, 480p-like short
        speed = [_run("speed", "afb", "compact", "small", 1, n) for n in long]
        speed += [_run("speed", "afb", "compact", "small", 3, n) for n in (100, 1000)]
        speed += [_run("speed", "afb", c, "480p-like", k, 10) for c in ("compact", "official") for k in (1, 3)]
        return speed + memory_runs("compact", "small", (100, 3000), 2000, stm_every)
    if name == "full":  # a GPU machine: every size x objects x config x length
        speed = [_run("speed", "afb", c, s, k, n) for c in ("compact", "official") for s in ("240p-like", "480p-like")
                 for k in (1, 3) for n in long]
        return speed + memory_runs("official", "480p-like", long, 300_000, stm_every)
    if name == "tiny":  # seconds: checks the script
        speed = [_run("speed", "afb", "compact", "tiny", k, n) for k in (1, 3) for n in (6, 20)]
        return speed + memory_runs("compact", "tiny", (6, 20), 200, stm_every)
    raise ValueError(name)


# -- the driver ----------------------------------------------------------------------
def run_config(cfg: dict, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True,
                           timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1], "process_cpu_s": cpu}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["process_cpu_s"] = cpu
    res["process_wall_s"] = time.perf_counter() - t0
    return res


def _label(c: dict) -> str:
    return f"{c['memory']} {c['config']} {c['size']} K={c['objects']} {c['frames']} merge {c['merge_thres']:g}"


def _mb(x):
    return "-" if x is None else f"{x:.0f}"


def _row(cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def speed_table(rows, cuda: bool) -> str:
    head = ["config", "size (HxW)", "objects", "frames", "fps", "fps, median of last n (n)", "peak RSS MB",
            "RSS growth MB"] + (["CUDA peak MB"] if cuda else []) + ["bank at end (bg, objs)", "evicted"]
    out = [_row(head), "|" + "---|" * len(head)]
    for c, r in rows:
        h, w = SIZES[c["size"]]
        lead = [c["config"], f"{c['size']} {h}x{w}", c["objects"], c["frames"]]
        if "error" in r:
            out.append(_row(lead + [r["error"]] + [""] * (len(head) - len(lead) - 1)))
            continue
        cells = lead + [f"{r['fps']:.2f}", "-" if r["fps_tail"] is None else f"{r['fps_tail']:.2f} ({r['tail']})",
                        _mb(r["peak_rss_mb"]), _mb(r["peak_rss_mb"] - r["rss_before_mb"])]
        if cuda:
            cells.append(_mb(r["cuda_peak_mb"]))
        cells += [str(r["bank_sizes"]), str(r["evicted"])]
        out.append(_row(cells))
    return "\n".join(out)


def memory_table(rows, cuda: bool) -> str:
    head = ["memory", "frames", "fps", "fps, median of last n (n)", "peak RSS MB", "RSS growth MB"] + \
        (["CUDA peak MB"] if cuda else []) + ["bank at end (bg, obj)", "evicted", "bank MB (used/allocated)"]
    out = [_row(head), "|" + "---|" * len(head)]
    for c, r in rows:
        if c["memory"] == "stm":
            name = f"(b) STM-style, every {c['stm_every']}th frame, unbounded"
        else:
            name = f"(a) AFB, budget {c['budget']}, merge {c['merge_thres']:g}" + \
                (" (merging off: must evict)" if c["merge_thres"] > 1 else " (defaults; = speed row)")
        if "error" in r:
            out.append(_row([name, c["frames"], r["error"]] + [""] * (len(head) - 3)))
            continue
        cells = [name, c["frames"], f"{r['fps']:.2f}",
                 "-" if r["fps_tail"] is None else f"{r['fps_tail']:.2f} ({r['tail']})",
                 _mb(r["peak_rss_mb"]), _mb(r["peak_rss_mb"] - r["rss_before_mb"])]
        if cuda:
            cells.append(_mb(r["cuda_peak_mb"]))
        cells += [str(r["bank_sizes"]), str(r["evicted"]), f"{r['bank_mb']:.1f}/{r['bank_alloc_mb']:.1f}"]
        out.append(_row(cells))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="quick", choices=["quick", "full", "tiny"],
                    help="quick: 2-core CPU (long videos small+compact, 480p-like 10 frames); full: every size x "
                         "objects x config x length (a GPU machine); tiny: checks the script")
    ap.add_argument("--tables", default="speed,memory", help="which of speed,memory to run")
    ap.add_argument("--stm-every", type=int, default=5, help="STM-style memory: memorise every N-th frame")
    ap.add_argument("--max-stm-length", type=int, default=None, help="skip the STM-style runs above this length")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--timeout", type=float, default=3600, help="per configuration, seconds")
    ap.add_argument("--only", default=None,
                    help="comma-separated substrings of run labels ('<memory> <config> <size> K=<objects> <frames> "
                         "merge <thres>', e.g. 'afb compact small K=1 100 '): run only those")
    ap.add_argument("--json", type=Path, default=None, help="also write every run's raw numbers here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    import torch

    from benchmarks.machine import command_line, describe_machine
    from vos_core.model import CONFIGS

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = args.threads or os.cpu_count()
    tables = [t for t in args.tables.split(",") if t]
    print(f"command: {command_line()}")
    print(f"machine: {describe_machine(threads, device)}")
    print(f"os.nice: {os.nice(0)}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; "
          f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("models (random weights, seed 0): " + "; ".join(
        f"{n} = {c.trunk}, keydim {c.keydim}, valdim {c.valdim}, decoder {c.mdim_global}" for n, c in CONFIGS.items()))
    print(f"preset {args.preset}; sizes: " + ", ".join(f"{k} {h}x{w} ({-(-h // 16) * -(-w // 16)} features per "
                                                      f"frame and object)" for k, (h, w) in SIZES.items()) + "\n",
          flush=True)

    every = preset(args.preset, args.stm_every)
    mem_of = {(r["config"], r["size"]) for r in every if r["table"] == "memory"}
    runs = [r for r in every if r["table"] in tables or (  # the memory table's AFB rows are speed runs
        "memory" in tables and r["objects"] == 1 and (r["config"], r["size"]) in mem_of)]
    if args.only:
        runs = [r for r in runs if any(p in _label(r) + " " for p in args.only.split(","))]
    results = []
    total_cpu = 0.0
    t_start = time.perf_counter()
    for c in runs:
        h, w = SIZES[c["size"]]
        cfg = dict(c, height=h, width=w, threads=threads, device=device)
        if c["memory"] == "stm" and args.max_stm_length and c["frames"] > args.max_stm_length:
            res = {"error": f"skipped (> --max-stm-length {args.max_stm_length})"}
        else:
            res = run_config(cfg, args.timeout)
        total_cpu += res.get("process_cpu_s", 0.0)
        results.append((c, res))
        short = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.items()}
        print(f"  [{c['table']}] {_label(c)}: {short}", file=sys.stderr, flush=True)

    cuda = device.startswith("cuda")
    if "speed" in tables:
        print("(1) speed: Segmenter defaults (budget 300000, merge 0.95, fp32, channels_last, folded batch norm), synthetic video")
        print(speed_table([(c, r) for c, r in results if c["table"] == "speed"], cuda) + "\n")
    if "memory" in tables:
        own = [c for c, _ in results if c["table"] == "memory"]
        mem = [(c, r) for c, r in results if c["table"] == "memory" or (
            own and c["memory"] == "afb" and c["objects"] == 1 and (c["config"], c["size"]) ==
            (own[0]["config"], own[0]["size"]))]
        mem.sort(key=lambda cr: (cr[0]["frames"], cr[0]["memory"], cr[0]["merge_thres"]))
        if mem:
            c0 = mem[0][0]
            h, w = SIZES[c0["size"]]
            print(f"(2) memory over video length: {c0['config']} model, {c0['size']} {h}x{w}, 1 object (+ background)")
            print(memory_table(mem, cuda) + "\n")
    print(f"{len(runs)} runs, {time.perf_counter() - t_start:.0f} s wall, {total_cpu:.0f} s CPU (all worker processes); "
          f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps([dict(c, **r) for c, r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
