"""The GPU measurement in one run (under 10 minutes on an H100-class GPU): frames/s at 480p, batched streams,
precision, torch.compile, the authors' code on the same GPU, GPU memory over 1,000 frames, share of bf16 peak.

    python benchmarks/bench_gpu.py --out gpu_results            # on the GPU machine
    python benchmarks/bench_gpu.py --device cpu --quick          # checks the script's logic on a CPU

Everything runs on synthetic 854x480 videos (textured background, one moving object) so it needs no data
set: speed and memory do not depend on what the pixels show. Models: the official configuration (random
weights in the official format: same arithmetic as the authors' checkpoints) and the shipped compact one.
Tables go to stdout and ``--out``/results.json; a section that would overrun ``--budget-s`` is skipped and
says so. Ours runs with its defaults, the quality estimate's second read included; ``--no-reference-read``
drops it everywhere, which is the like-for-like comparison with the authors' loop (it estimates no quality).

Sections:
1. streams: aggregate frames/s of B videos stepped together in one process (``step_many``), for B in
   --streams, fp32 and bf16 autocast, one object each;
2. compile: the best B of (1) again with ``torch.compile`` (--compile-mode, CUDA graphs by default);
3. authors: their eval loop (third_party/afb_urr, if present) on the same GPU, fp32, one video;
4. memory: GPU memory allocated over --long-frames frames of one stream (official, fp32 and bf16);
5. peak: FLOPs per frame (torch's FlopCounterMode) x frames/s against the GPU's dense bf16 peak;
6. job: the whole Ray job (jobs.pseudo_label on a local Ray, synthetic videos written as JPEG folders, the
   official model, fp32) with --actors / --gpus-per-actor / --streams-per-actor as in --job-configs
   (default: 1 actor x 1 GPU with 1 and --job-streams streams, 2 actors x 0.5 GPU with 1 and half as many).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: the quality estimate's second read in every section (``--no-reference-read`` turns it off: the authors' loop
#: of section 3 estimates no quality, so that is the like-for-like ratio); one mutable slot, set in main()
REFERENCE_READ = [True]

#: NVIDIA's dense (no sparsity) bf16 tensor peaks, TFLOP/s, by a substring of torch.cuda.get_device_name()
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0,
                    "A10": 125.0}


def synthetic_video(n: int, h: int, w: int, seed: int = 0):
    """``n`` frames of a textured background with one square object drifting across; its first mask."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    background = np.kron(base, np.ones((8, 8, 1), np.uint8))[:h, :w]
    side = max(8, min(h, w) // 4)
    patch = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
    frames = []
    for t in range(n):
        f = background.copy()
        y = (h // 4 + t * 2) % (h - side)
        x = (w // 4 + t * 3) % (w - side)
        f[y:y + side, x:x + side] = patch
        frames.append(f)
    mask = np.zeros((h, w), np.uint8)
    y, x = h // 4 % (h - side), w // 4 % (w - side)
    mask[y:y + side, x:x + side] = 1
    return frames, mask


class Clock:
    def __init__(self, device):
        import torch

        self.sync = (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()


def models(device, quick: bool):
    """name -> model on ``device``: the official configuration (random, official format) and the shipped one
    (with ``quick``: the official configuration narrowed to ResNet-18 trunks, the same code paths, cheaper)."""
    import torch

    from vos_core.model import AFBURR, OFFICIAL, SHIPPED_CHECKPOINT, load_model

    torch.manual_seed(0)
    config = OFFICIAL.__class__(trunk="resnet18", keydim=64, valdim=128, mdim_global=64) if quick else OFFICIAL
    out = {"official": AFBURR(config).eval().to(device)}
    if os.path.exists(SHIPPED_CHECKPOINT):
        out["shipped"] = load_model(SHIPPED_CHECKPOINT, device=device)
    return out


def run_streams(model, device, streams: int, frames: int, warm: int, h: int, w: int, precision: str,
                compile_mode: str = "off") -> dict:
    """Aggregate frames/s of ``streams`` videos stepped together (after ``warm`` frames each)."""
    from vos_core import Segmenter, SegmenterConfig
    from vos_core.inference.session import StepRequest, step_many

    seg = Segmenter(model, SegmenterConfig(size=0, keep_probs=False, keep_uncertainty=False, precision=precision,
                                           compile=compile_mode, reference_read=REFERENCE_READ[0]))
    videos = [synthetic_video(warm + frames, h, w, seed=s) for s in range(streams)]
    sessions = [seg.start() for _ in range(streams)]
    clock = Clock(device)
    t_first = None
    for t in range(warm + frames):
        if t == warm:
            t_first = clock.now()
        reqs = [StepRequest(s, v[0][t], v[1] if t == 0 else None) for s, v in zip(sessions, videos)]
        for r in step_many(reqs):
            if isinstance(r, BaseException):
                raise r
    seconds = clock.now() - t_first
    return {"streams": streams, "precision": precision, "compile": compile_mode, "frames": frames * streams,
            "seconds": seconds, "fps": frames * streams / seconds, "fps_per_stream": frames / seconds}


def flops_per_frame(model, device, h: int, w: int, bank: int) -> float:
    """FLOPs of one step (memorise the previous frame, read a bank of ``bank`` features, decode), one object."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vos_core import Segmenter, SegmenterConfig

    seg = Segmenter(model, SegmenterConfig(size=0, keep_probs=False, keep_uncertainty=False,
                                           reference_read=REFERENCE_READ[0]))
    frames, mask = synthetic_video(3, h, w)
    session = seg.start()
    session.step(frames[0], mask)
    session.step(frames[1])
    with torch.inference_mode():  # a bank of ``bank`` features per row: the read of a long video
        for mem in session.memory.objects:
            extra = max(0, bank - mem.n)
            if extra:
                mem.append(torch.randn(mem.keydim, extra, device=device),
                           torch.randn(mem.valdim, extra, device=device), 1, limit=bank)
    with FlopCounterMode(display=False) as fc:
        session.step(frames[2])
    return float(fc.get_total_flops())


def run_authors(device, frames: int, h: int, w: int, workdir: Path) -> dict | None:
    """Their eval loop on one synthetic video, fp32; None when their code is not checked out."""
    import compare_reference as cr
    from PIL import Image

    ref_dir = cr.default_reference_dir()
    if not cr.reference_present(ref_dir):
        return None
    src = workdir / "src"
    seq = "synthetic"
    (src / "JPEGImages" / seq).mkdir(parents=True)
    (src / "Annotations" / seq).mkdir(parents=True)
    video, mask = synthetic_video(frames, h, w)
    for t, f in enumerate(video):
        Image.fromarray(f).save(src / "JPEGImages" / seq / f"{t:05d}.jpg", quality=95)
    Image.fromarray(mask).save(src / "Annotations" / seq / "00000.png")
    layout = cr.make_davis_layout(workdir / "layout", src, seq, frames)
    ckpt = workdir / "official_random.pth"
    cr.save_random_official(ckpt)
    with cr.reference_modules(ref_dir) as ref:
        ref_model, _ = cr.load_reference_model(ref, ckpt, device)
        cr.run_reference(ref, ref_model, layout, 300_000, 0.95, 0.1, device=str(device))  # warm-up
        r = cr.run_reference(ref, ref_model, layout, 300_000, 0.95, 0.1, device=str(device))
    steps = sorted(r.frame_seconds)
    return {"frames": frames, "seconds": r.seconds, "fps_median_step": 1.0 / steps[len(steps) // 2]}


def memory_over_length(model, device, n: int, h: int, w: int, precision: str, marks) -> dict:
    import torch

    from vos_core import Segmenter, SegmenterConfig

    seg = Segmenter(model, SegmenterConfig(size=0, keep_probs=False, keep_uncertainty=False, precision=precision,
                                           reference_read=REFERENCE_READ[0]))
    frames, mask = synthetic_video(min(n, 64), h, w)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    session = seg.start()
    out, clock = {}, Clock(device)
    t0 = clock.now()
    for t in range(n):
        session.step(frames[t % len(frames)], mask if t == 0 else None)
        if t + 1 in marks:
            alloc = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else None
            peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
            out[t + 1] = {"allocated_mb": alloc, "peak_mb": peak, "bank": sum(session.memory.sizes())}
    out["fps"] = n / (clock.now() - t0)
    return out


def job_runs(device, model, configs: list[tuple[int, float, int]], videos: int, frames: int, h: int, w: int,
             workdir: Path) -> list[dict]:
    """frames/s of the whole job over ``videos`` synthetic videos for each (actors, gpus per actor, streams per
    actor); a fresh output each, one local Ray for all (its start-up not counted)."""
    import contextlib
    import io
    from contextlib import redirect_stdout

    import ray
    from PIL import Image

    from jobs import pseudo_label
    from jobs.layout import Layout, read_videos
    from jobs.storage import Storage
    from vos_core.model import save_checkpoint

    ckpt = workdir / "model.pth"
    save_checkpoint(model.cpu(), ckpt)
    model.to(device)
    lines = ["video_id,video_uri,annotations_uri"]
    for v in range(videos):
        d = workdir / f"v{v:02d}"
        (d / "frames").mkdir(parents=True)
        video, mask = synthetic_video(frames, h, w, seed=v)
        for t, f in enumerate(video):
            Image.fromarray(f).save(d / "frames" / f"{t:05d}.jpg", quality=95)
        Image.fromarray(mask).save(d / "mask.png")
        lines.append(f"vid{v:02d},{d / 'frames'},{d / 'mask.png'}")
    (workdir / "manifest.csv").write_text("\n".join(lines) + "\n")
    # the job's own local Ray (on 127.0.0.1, reaped with this process), started once for every run; on a
    # loaded machine its start can time out: one more try
    from jobs.label.options import JobOptions
    from jobs.label.pool import ray_session

    session = contextlib.ExitStack()
    for attempt in (1, 2):
        try:
            session.enter_context(ray_session(JobOptions()))
            break
        except Exception:
            if attempt == 2 or ray.is_initialized():
                raise
    out = []
    try:
        for i, (actors, gpus, streams) in enumerate(configs):
            args = ["--manifest", str(workdir / "manifest.csv"), "--output", str(workdir / f"out{i}"), "--checkpoint",
                    str(ckpt), "--actors", str(actors), "--gpus-per-actor", str(gpus), "--streams-per-actor",
                    str(streams), "--size", "0", "--progress-interval", "0"] + \
                (["--no-reference-read"] if not REFERENCE_READ[0] else [])
            t0 = time.perf_counter()
            with redirect_stdout(io.StringIO()):
                rc = pseudo_label.main(args)
            wall = time.perf_counter() - t0
            v = read_videos(Layout(str(workdir / f"out{i}"), Storage()), ["status", "frames"]).to_pylist()
            n = sum(r["frames"] for r in v if r["status"] == "ok")
            out.append({"actors": actors, "gpus_per_actor": gpus, "streams_per_actor": streams, "rc": rc,
                        "videos_ok": sum(r["status"] == "ok" for r in v), "frames": n, "wall_s": wall,
                        "fps": n / wall})
            print(f"  job {actors} actor(s) x {gpus:g} GPU x {streams} stream(s): {n / wall:.1f} frames/s "
                  f"(wall {wall:.1f} s, with actor start-up)", flush=True)
    finally:
        session.close()
    return out


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                                       for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny frames and few of them: checks the logic")
    ap.add_argument("--streams", default="1,2,4,8,16,32")
    ap.add_argument("--frames", type=int, default=40, help="timed frames per stream")
    ap.add_argument("--warm", type=int, default=8, help="untimed frames per stream first")
    ap.add_argument("--long-frames", type=int, default=1000)
    ap.add_argument("--compile-mode", default=None,
                    help="torch.compile mode for section 2 (default reduce-overhead; off with --quick)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="skip sections once this much time has passed")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak (default: by GPU name)")
    ap.add_argument("--job-videos", type=int, default=8, help="videos of section 6")
    ap.add_argument("--job-streams", type=int, default=8, help="streams per actor of section 6's batched runs")
    ap.add_argument("--job-configs", default=None, metavar="A:G:S[,...]",
                    help="section 6's runs as actors:gpus-per-actor:streams-per-actor (default: see above)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-reference-read", action="store_true",
                    help="run ours without the quality estimate's second read (like for like with the authors' loop)")
    a = ap.parse_args(argv)
    REFERENCE_READ[0] = not a.no_reference_read
    device = torch.device(a.device)
    h, w = (64, 112) if a.quick else (480, 854)
    if a.quick:
        a.streams, a.frames, a.warm, a.long_frames, a.job_videos, a.job_streams = "1,2", 2, 1, 4, 2, 2
    a.compile_mode = a.compile_mode or ("off" if a.quick else "reduce-overhead")
    marks = sorted({10, 100, 300, a.long_frames} & set(range(1, a.long_frames + 1))) or [a.long_frames]
    t_start = time.perf_counter()
    left = lambda: a.budget_s - (time.perf_counter() - t_start)  # noqa: E731
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = a.peak_tflops or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
    res: dict = {"device": name, "torch": torch.__version__, "size": [h, w], "skipped": []}
    print(f"device {name}, torch {torch.__version__}, frames {w}x{h}, 1 object", flush=True)
    nets = models(device, a.quick)

    res["streams"] = []
    for mname, model in nets.items():
        for precision in ("fp32", "bf16"):
            for b in [int(x) for x in a.streams.split(",")]:
                if left() < 60:
                    res["skipped"].append(f"streams {mname} {precision} B={b}")
                    continue
                try:
                    r = run_streams(model, device, b, a.frames, a.warm, h, w, precision)
                except torch.cuda.OutOfMemoryError:
                    res["skipped"].append(f"streams {mname} {precision} B={b}: out of memory")
                    torch.cuda.empty_cache()
                    break
                r["model"] = mname
                res["streams"].append(r)
                print(f"  {mname} {precision} B={b}: {r['fps']:.1f} frames/s", flush=True)
    print(table(res["streams"], ["model", "precision", "streams", "fps", "fps_per_stream"]), flush=True)

    res["compile"] = []
    for mname, model in nets.items():
        best = max((r for r in res["streams"] if r["model"] == mname), key=lambda r: r["fps"], default=None)
        if best is None or left() < 120 or a.compile_mode == "off":
            res["skipped"].append(f"compile {mname}")
            continue
        try:
            t0 = time.perf_counter()
            r = run_streams(model, device, best["streams"], a.frames, a.warm, h, w, best["precision"], a.compile_mode)
            r.update(model=mname, wall_with_compile_s=time.perf_counter() - t0)
            res["compile"].append(r)
            print(f"  compiled {mname} {best['precision']} B={best['streams']}: {r['fps']:.1f} frames/s", flush=True)
        except Exception as e:  # a compile failure is a result too
            res["skipped"].append(f"compile {mname}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    if res["compile"]:
        print(table(res["compile"], ["model", "precision", "streams", "compile", "fps", "wall_with_compile_s"]))

    res["authors"] = None
    if left() > 90:
        with tempfile.TemporaryDirectory() as tmp:
            res["authors"] = run_authors(device, a.warm + a.frames, h, w, Path(tmp))
        if res["authors"]:
            ours = next((r for r in res["streams"] if r["model"] == "official" and r["precision"] == "fp32"
                         and r["streams"] == 1), None)
            print(f"authors' code, official, fp32, 1 video: {res['authors']['fps_median_step']:.1f} frames/s "
                  f"(median step); ours fp32 1 stream {ours['fps']:.1f}" if ours else "", flush=True)
        else:
            res["skipped"].append("authors: third_party/afb_urr not present")
    else:
        res["skipped"].append("authors: out of time")

    res["memory"] = {}
    for precision in ("fp32", "bf16"):
        if left() < 90:
            res["skipped"].append(f"memory {precision}")
            continue
        res["memory"][precision] = memory_over_length(nets["official"], device, a.long_frames, h, w, precision, marks)
        print(f"memory, official {precision}: " + ", ".join(
            f"{k} frames {v['allocated_mb']} MB (peak {v['peak_mb']})" for k, v in res["memory"][precision].items()
            if isinstance(k, int)), flush=True)

    res["peak"] = []
    for mname, model in nets.items():
        best = max((r for r in res["streams"] if r["model"] == mname and r["precision"] == "bf16"),
                   key=lambda r: r["fps"], default=None)
        if best is None:
            continue
        bank = res["memory"].get("bf16", {}).get(marks[-1], {}).get("bank", 2000) if mname == "official" else 2000
        fl = flops_per_frame(model, device, h, w, max(1, bank // 2))
        achieved = fl * best["fps"] / 1e12
        res["peak"].append({"model": mname, "gflop_per_frame": fl / 1e9, "fps": best["fps"], "tflops": achieved,
                            "share_of_bf16_peak": achieved / peak if peak else None})
    if res["peak"]:
        print(table(res["peak"], ["model", "gflop_per_frame", "fps", "tflops", "share_of_bf16_peak"]))

    res["job"] = []
    gpu = 1.0 if device.type == "cuda" else 0.0
    s = a.job_streams
    configs = [tuple(float(x) if j == 1 else int(x) for j, x in enumerate(c.split(":"))) for c in a.job_configs.split(",")] \
        if a.job_configs else ([(1, gpu, 1), (1, gpu, s), (2, gpu / 2, 1), (2, gpu / 2, max(1, s // 2))] if gpu else
                               [(1, 0.0, 1), (1, 0.0, s)])
    if left() > 120:
        with tempfile.TemporaryDirectory() as tmp:
            res["job"] = job_runs(device, nets["official"], configs, a.job_videos, a.warm + a.frames, h, w, Path(tmp))
        print(table(res["job"], ["actors", "gpus_per_actor", "streams_per_actor", "videos_ok", "frames", "wall_s",
                                 "fps"]), flush=True)
    else:
        res["skipped"].append("job: out of time")
    print(f"skipped: {res['skipped'] or 'nothing'}; {time.perf_counter() - t_start:.0f} s")
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
