"""J&F and CPU speed of several checkpoints side by side, on DAVIS-layout sequences: one table.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/compare_checkpoints.py --checkpoints old.pth,vos_core/weights/compact.pth

Each checkpoint runs at its own default settings (``SegmenterConfig()``: its recorded working size, or
``--size``), from the first frame's mask only (the DAVIS semi-supervised protocol), scored with the DAVIS
toolkit's J and F (``vos_core.metrics``; first and last frame unscored) at the stored frame size. Per
sequence the checkpoints run one after the other on the same decoded frames (alternating, so a busy machine
slows them alike). frames/s counts whole runs from the annotated frame; "median step" is 1 / the median
time of one frame step.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_precision import DEFAULT_DATA, score, segment  # noqa: E402


def run(checkpoints: list[str], data: str, sequences: list[str] | None, size: int | None, precision: str,
        max_frames: int | None, log=print) -> dict:
    from vos_core.model import load_model
    from vos_train.data import DavisIndex

    models = {c: load_model(c) for c in checkpoints}
    work = {c: (size or None) if size is not None else m.working_size for c, m in models.items()}
    index = DavisIndex(data, sequences=sequences)
    out = {c: {"sequences": {}, "working_size": work[c], "trunk": models[c].config.trunk} for c in checkpoints}
    for seq in index.sequences:
        stems = index.frames[seq][:max_frames] if max_frames else index.frames[seq]
        pairs = [index.load(seq, s, cache=False) for s in stems]
        frames, gt = [p[0] for p in pairs], [p[1] for p in pairs]
        for c in checkpoints:
            masks, seconds, steps = segment(models[c], frames, gt[0], precision, work[c])
            r = score(gt, masks) | {"frames": len(frames), "seconds": seconds,
                                    "median_step": float(np.median(steps[1:]))}
            out[c]["sequences"][seq] = r
            log(f"  {seq} {c}: J&F {r['JF']:.4f}, {len(frames) / seconds:.2f} frames/s")
    for c in checkpoints:
        seqs = out[c]["sequences"].values()
        j = float(np.mean([x for s in seqs for x in s["J_objects"]]))
        f = float(np.mean([x for s in seqs for x in s["F_objects"]]))
        out[c]["overall"] = {"J": j, "F": f, "JF": (j + f) / 2,
                             "fps": sum(s["frames"] for s in seqs) / sum(s["seconds"] for s in seqs),
                             "median_step_fps": 1 / float(np.median([s["median_step"] for s in seqs]))}
    return out


def table(res: dict) -> str:
    seqs = list(next(iter(res.values()))["sequences"])
    head = ["checkpoint", "trunk", "working size"] + [f"{s} J&F" for s in seqs] + \
        ["J", "F", "**J&F**", "frames/s (whole runs)", "frames/s (median step)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c, r in res.items():
        o = r["overall"]
        lines.append("| " + " | ".join([os.path.basename(c), r["trunk"], str(r["working_size"] or "input")]
                                       + [f"{r['sequences'][s]['JF']:.3f}" for s in seqs]
                                       + [f"{o['J']:.3f}", f"{o['F']:.3f}", f"**{o['JF']:.3f}**",
                                          f"{o['fps']:.2f}", f"{o['median_step_fps']:.2f}"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    from benchmarks.machine import command_line, describe_machine

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", required=True, help="comma-separated checkpoint paths")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--sequences", default="", help="comma-separated (default: every sequence under --data)")
    ap.add_argument("--size", type=int, default=None, help="working size for all (default: each checkpoint's)")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--max-frames", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"command: {command_line()}")
    print(f"machine: {describe_machine(a.threads)}; load average at start "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    t0 = time.time()
    res = run([c for c in a.checkpoints.split(",") if c], a.data, [s for s in a.sequences.split(",") if s] or None,
              a.size, a.precision, a.max_frames or None)
    print(f"\ndata {a.data}; precision {a.precision}; first-frame mask only; {time.time() - t0:.0f} s")
    print(table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
