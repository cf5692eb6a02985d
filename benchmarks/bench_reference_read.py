"""What the quality estimate's reference read costs: the Segmenter with and without it, one table.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_reference_read.py            # shipped weights, car-shadow
    python benchmarks/bench_reference_read.py --sequence motocross-jump --frames 12 --repeats 2

With ``reference_read`` (the default) each frame is also read from the memory of each object's annotated
frame alone and decoded to rough masks (the decoder without its uncertain-region refinement); the IoU of
those with the bank's own rough masks is the quality signal ``ref_agreement``. "off" is
``--no-reference-read``. Both run the Segmenter (fp32, its defaults) on the same decoded frames, alternating,
first-frame mask only. Columns: frames/s of the best whole run, 1 / median step time, the cost against off,
and the share of mask pixels equal to off's (expected 1.00000: the second read changes no mask).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "davis16-val-public"


def main(argv=None) -> int:
    import torch

    from benchmarks.bench_precision import segment
    from benchmarks.machine import command_line, describe_machine
    from vos_core.model import SHIPPED_CHECKPOINT, load_model
    from vos_train.data import DavisIndex

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--sequence", default="car-shadow")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--size", type=int, default=None, help="working size (default: the checkpoint's)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(f"command: {command_line()}")
    print(f"machine: {describe_machine(a.threads)}", flush=True)
    model = load_model(a.checkpoint)
    index = DavisIndex(a.data, sequences=[a.sequence])
    pairs = [index.load(a.sequence, s, cache=False) for s in index.frames[a.sequence][: a.frames]]
    frames, first = [p[0] for p in pairs], pairs[0][1]
    modes = {"on (default)": True, "off (--no-reference-read)": False}
    runs = {m: [] for m in modes}
    steps = {m: [] for m in modes}
    masks = {}
    for _ in range(a.repeats):
        for name, flag in modes.items():
            m, seconds, st = segment(model, frames, first, "fp32", a.size, reference_read=flag)
            runs[name].append(seconds)
            steps[name] += st[1:]  # the annotated frame's step is no segmentation
            masks.setdefault(name, m)
    h, w = frames[0].shape[:2]
    objects = len(np.unique(first)) - 1
    print(f"\n{a.sequence}: {len(frames)} frames {w}x{h}, {objects} object(s), working size "
          f"{a.size or model.working_size or 'input'}, checkpoint {a.checkpoint}, fp32, {a.threads} threads, "
          f"{a.repeats} alternating runs each")
    print("| reference read | frames/s (best run) | frames/s (median step) | step time vs off | mask pixels equal to off |")
    print("|---|---|---|---|---|")
    off = "off (--no-reference-read)"
    off_step = float(np.median(steps[off]))
    for name in modes:
        agree = float(np.mean([(x == y).mean() for x, y in zip(masks[name], masks[off])]))
        med = float(np.median(steps[name]))
        print(f"| {name} | {len(frames) / min(runs[name]):.2f} | {1 / med:.2f} | {med / off_step:.2f}x | {agree:.5f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
