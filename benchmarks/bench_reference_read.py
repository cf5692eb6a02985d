"""What the quality estimate's reference read costs: the Segmenter with and without it, one table.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_reference_read.py            # shipped weights, car-shadow
    python benchmarks/bench_reference_read.py --sequence motocross-jump --frames 12 --repeats 2

With ``reference_read`` (the default) each frame is also read from each object's reference memory (its
annotated frame and up to ``reference_frames`` recent frames that agreed with it; give ``--frames`` 16 or
more to see it full) and decoded to rough masks (the decoder without its uncertain-region refinement); the IoU of
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


def main(argv=None) -> int:
    from benchmarks import sequence_ab
    from benchmarks.bench_precision import segment

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sequence_ab.add_arguments(ap)
    ap.add_argument("--size", type=int, default=None, help="working size (default: the checkpoint's)")
    a = ap.parse_args(argv)
    model, frames, first = sequence_ab.load(a)
    off = "off (--no-reference-read)"
    modes = {name: (lambda flag=flag: segment(model, frames, first, "fp32", a.size, reference_read=flag))
             for name, flag in (("on (default)", True), (off, False))}
    runs, steps, masks = sequence_ab.alternate(modes, a.repeats)
    h, w = frames[0].shape[:2]
    objects = len(np.unique(first)) - 1
    print(f"\n{a.sequence}: {len(frames)} frames {w}x{h}, {objects} object(s), working size "
          f"{a.size or model.working_size or 'input'}, checkpoint {a.checkpoint}, fp32, {a.threads} threads, "
          f"{a.repeats} alternating runs each")
    print("| reference read | frames/s (best run) | frames/s (median step) | step time vs off | mask pixels equal to off |")
    print("|---|---|---|---|---|")
    off_step = float(np.median(steps[off]))
    for name in modes:
        agree = float(np.mean([(x == y).mean() for x, y in zip(masks[name], masks[off])]))
        med = float(np.median(steps[name]))
        print(f"| {name} | {len(frames) / min(runs[name]):.2f} | {1 / med:.2f} | {med / off_step:.2f}x | {agree:.5f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
