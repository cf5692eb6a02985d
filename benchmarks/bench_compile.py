"""Does ``--compile`` pay on the CPU? Compile time (paid on the first segmented frame) against the per-frame
gain of the compiled encoders and decoder, and the frames a video needs to pay the compile back.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_compile.py --frames 16

Models: the official configuration (a random checkpoint in the official format, as compare_reference.py
saves it: the authors' arithmetic) and the shipped weights (vos_core/weights/compact.pth), on the stored
427x240 DAVIS frames of one sequence (one object), processed at that size.

Each run is a fresh process holding an eager Segmenter (compile off, the default), a compiled one
(``SegmenterConfig(compile=MODE)``) and, for the official model, the authors' eval loop (third_party/afb_urr,
when present), stepped frame by frame in turn, the order rotating: a machine whose load changes (this one is
shared with a training run) slows them alike, and each ratio is the median of per-frame ratios. Per model
two runs: with an empty inductor cache directory (``cold``: what a new actor on a new machine pays) and
with the cache that run left (``warm``, inductor's on-disk FX graph cache: a second or restarted actor on
the same machine).

"first step" is the first segmented frame (memorise frame 0, query frame 1, read, decode): with compile on
it includes the compilation; compile s = compiled first step - eager first step. "steady" is the median of
the later steps. Payback = compile s / (median per-frame time saved) + 1: the frames of one shape (frame
size and object count: each new one compiles again) an actor must segment before compiling has saved time;
"never" when compiled frames are not faster.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def their_steps(ref, model, layout: Path):
    """The authors' eval loop (compare_reference.run_reference, the same calls) one step at a time: each
    ``next`` segments frame t and memorises it (the last frame is not memorised)."""
    import torch
    import torch.nn.functional as F

    ds = ref.DAVIS_Test_DS(str(layout), "2017/val.txt")
    frames, masks, obj_n, info = ds[0]
    frame_n = int(info["num_frames"])
    with torch.no_grad():
        fb = ref.FeatureBank(int(obj_n), 300_000, "cpu", update_rate=0.1, thres_close=0.95)
        k4, v4 = model.memorize(frames[0:1], masks[0:1])
        fb.init_bank(k4, v4)
        yield
        for t in range(1, frame_n):
            score, _ = model.segment(frames[t:t + 1], fb)
            pred = F.softmax(score, dim=1)
            if t < frame_n - 1:
                k4, v4 = model.memorize(frames[t:t + 1], pred)
                fb.update(k4, v4, t)
            yield


def child(spec: dict) -> dict:
    """One run in this (fresh) process: eager and compiled (and the authors' loop) stepped frame by frame in
    turn, the order rotating, so a machine whose load changes slows them alike. Returns each one's step
    seconds; saves both probability sequences for the agreement."""
    import contextlib

    import torch

    import compare_reference as cr
    from vos_core import Segmenter, SegmenterConfig, load_model

    torch.set_num_threads(spec["threads"])
    data = np.load(spec["frames"])
    frames, mask = list(data["frames"]), data["mask"]
    config = SegmenterConfig(size=0, keep_uncertainty=False)
    sessions = {"eager": Segmenter(load_model(spec["checkpoint"]), config).start(),
                "compiled": Segmenter(load_model(spec["checkpoint"]), config.replace(compile=spec["compile"])).start()}
    with contextlib.ExitStack() as stack:
        loops = {}
        if spec["authors"]:
            ref = stack.enter_context(cr.reference_modules(cr.default_reference_dir()))
            theirs, _ = cr.load_reference_model(ref, Path(spec["checkpoint"]), "cpu")
            loops["authors"] = their_steps(ref, theirs, Path(spec["layout"]))
        names = list(sessions) + list(loops)
        steps = {n: [] for n in names}
        probs = {n: [] for n in sessions}
        with torch.inference_mode():
            for t, frame in enumerate(frames):
                k = t % len(names)
                for n in names[k:] + names[:k]:
                    t0 = time.perf_counter()
                    if n in sessions:
                        r = sessions[n].step(frame, mask if t == 0 else None)
                    else:
                        next(loops[n])
                    if t > 0:  # memorise(t-1) + segment(t): one step of their loop
                        steps[n].append(time.perf_counter() - t0)
                        if n in sessions:
                            probs[n].append(r.probs)
    for n, p in probs.items():
        np.save(spec["probs"].replace(".npy", f"_{n}.npy"), np.stack(p))
    return {"steps": steps}


def run_child(spec: dict, cache_dir: str | None) -> dict:
    env = dict(os.environ)
    if cache_dir:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                       text=True)
    if p.returncode != 0:
        raise RuntimeError(f"run failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--frames", type=int, default=16, help="frames per video (first one annotated)")
    ap.add_argument("--repeats", type=int, default=1, help="times each pair of (cold, warm) runs is repeated")
    ap.add_argument("--models", default="official,shipped")
    ap.add_argument("--mode", default="default", help="torch.compile mode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", default=None, help="WxH to resize the frames to (default: as stored, 427x240)")
    ap.add_argument("--seq", default="horsejump-low")
    ap.add_argument("--no-authors", action="store_true", help="skip the authors' loop")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return 0

    import compare_reference as cr
    from machine import command_line, describe_machine
    from vos_core.model import SHIPPED_CHECKPOINT

    print(f"command: {command_line()}")
    print(f"machine: {describe_machine(a.threads)}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; "
          f"load average at start {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        size = tuple(int(v) for v in a.size.lower().split("x")) if a.size else None
        layout = cr.make_davis_layout(tmp / "davis", cr.DEFAULT_DATA, a.seq, a.frames, size)
        frames, mask = cr.load_frames_like_reference(layout, a.seq)
        np.savez(tmp / "frames.npz", frames=np.stack(frames), mask=mask)
        official = tmp / "official_random.pth"
        cr.save_random_official(official)
        checkpoints = {"official": str(official), "shipped": SHIPPED_CHECKPOINT}
        authors = not a.no_authors and cr.reference_present(cr.default_reference_dir())
        h, w = frames[0].shape[:2]
        print(f"{a.seq}: {a.frames} frames {w}x{h}, 1 object, processed at that size; {a.threads} threads; "
              f"compile mode {a.mode!r}; each run a fresh process stepping eager, compiled"
              f"{' and the authors (official model)' if authors else ''} in turn, frame by frame", flush=True)
        runs = []
        for rep in range(a.repeats):
            for name in [m for m in a.models.split(",") if m]:
                cache = str(tmp / f"inductor_{name}_{rep}")
                for cache_state in ("cold", "warm"):
                    spec = {"compile": a.mode, "checkpoint": checkpoints[name], "threads": a.threads,
                            "frames": str(tmp / "frames.npz"), "layout": str(layout),
                            "authors": authors and name == "official",
                            "probs": str(tmp / f"probs_{name}_{cache_state}_{rep}.npy")}
                    r = run_child(spec, cache)
                    p = {n: np.load(spec["probs"].replace(".npy", f"_{n}.npy")) for n in ("eager", "compiled")}
                    r.update(model=name, cache=cache_state, max_abs_dp=float(np.abs(p["eager"] - p["compiled"]).max()),
                             mask_agree=float((p["eager"].argmax(1) == p["compiled"].argmax(1)).mean()))
                    runs.append(r)
                    st = r["steps"]
                    print(f"  {name}, {cache_state} cache: first step eager {st['eager'][0]:.2f} s, compiled "
                          f"{st['compiled'][0]:.2f} s; steady eager {np.median(st['eager'][1:]):.3f}, compiled "
                          f"{np.median(st['compiled'][1:]):.3f} s/frame", flush=True)
        rows = table_rows(runs)
    print()
    print(format_table(rows))
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "runs": runs}, indent=1))
    return 0


def table_rows(runs: list[dict]) -> list[dict]:
    """Per model: eager, compiled with a cold and a warm cache, the authors; steady figures are medians over
    steps after the first, ratios medians of the per-frame ratios of the implementations stepped in turn."""
    rows = []
    for m in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == m]
        eager = [s for r in mine for s in r["steps"]["eager"][1:]]
        theirs = [s for r in mine for s in r["steps"].get("authors", [])[1:]]
        vs_authors = lambda name, rs: float(np.median([a / b for r in rs for a, b in  # noqa: E731
                                                       zip(r["steps"]["authors"][1:], r["steps"][name][1:])])) \
            if theirs else None
        rows.append({"model": m, "run": "eager (default)", "first_step_s": float(np.median([r["steps"]["eager"][0]
                                                                                         for r in mine])),
                     "compile_s": None, "steady_s": float(np.median(eager)), "vs_eager": 1.0,
                     "vs_authors": vs_authors("eager", mine), "payback_frames": None, "max_abs_dp": None,
                     "mask_agree": None})
        for cache in ("cold", "warm"):
            rs = [r for r in mine if r["cache"] == cache]
            first_c = float(np.median([r["steps"]["compiled"][0] for r in rs]))
            first_e = float(np.median([r["steps"]["eager"][0] for r in rs]))
            gain = float(np.median([e - c for r in rs for e, c in zip(r["steps"]["eager"][1:],
                                                                      r["steps"]["compiled"][1:])]))
            extra = max(0.0, first_c - first_e)
            rows.append({"model": m, "run": f"compiled ({cache} cache)", "first_step_s": first_c, "compile_s": extra,
                         "steady_s": float(np.median([s for r in rs for s in r["steps"]["compiled"][1:]])),
                         "vs_eager": float(np.median([e / c for r in rs for e, c in zip(r["steps"]["eager"][1:],
                                                                                          r["steps"]["compiled"][1:])])),
                         "vs_authors": vs_authors("compiled", rs),
                         "payback_frames": extra / gain + 1 if gain > 0 else float("inf"),
                         "max_abs_dp": max(r["max_abs_dp"] for r in rs), "mask_agree": min(r["mask_agree"] for r in rs)})
        if theirs:
            rows.append({"model": m, "run": "authors' eval loop", "first_step_s": None, "compile_s": None,
                         "steady_s": float(np.median(theirs)), "vs_eager": None, "vs_authors": 1.0,
                         "payback_frames": None, "max_abs_dp": None, "mask_agree": None})
    return rows


def format_table(rows: list[dict]) -> str:
    def f(v, fmt):
        return "-" if v is None else ("never" if v == float("inf") else format(v, fmt))

    out = ["| model | run | first step s | compile s (first step - eager's) | steady s/frame | "
           "speed vs eager (per frame) | speed vs authors (per frame) | payback (frames of one shape) | "
           "max abs dp vs eager | mask agree |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['run']} | {f(r['first_step_s'], '.2f')} | {f(r['compile_s'], '.1f')} | "
                   f"{r['steady_s']:.3f} | {f(r['vs_eager'], '.2f')} | {f(r['vs_authors'], '.2f')} | "
                   f"{f(r['payback_frames'], '.0f')} | {f(r['max_abs_dp'], '.1e')} | {f(r['mask_agree'], '.5f')} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
