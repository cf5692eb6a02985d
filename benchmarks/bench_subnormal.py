"""What zeroing subnormal attention weights buys: the feature bank's read with and without it, one table.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_subnormal.py            # shipped weights, car-shadow
    python benchmarks/bench_subnormal.py --sequence motocross-jump --frames 12 --repeats 2

A trained model's attention over its bank is peaked: about a tenth of the softmax weights underflow into
float32 subnormals (below 1.2e-38; measured 10-11% on car-shadow at 480p with the shipped weights). x86 cores
multiply subnormal operands through a slow path, so the bank's value product, which reads every weight, slows
down many times on CPUs that penalise them (the Intel Xeon of BENCHMARKS.md (i); the AMD EPYC of the second
round ran the same weights at 0.65 frames/s at 480 without this fix, so it seems to pay less: not measured
side by side).
``vos_core.model.memory_read.drop_subnormal_`` sets those weights to zero before the product; "kept" runs the
same code with it replaced by the identity. Both run the Segmenter (fp32, its defaults) on the same decoded
frames, alternating, first-frame mask only. Columns: frames/s of the best whole run, 1 / median step time,
and the share of mask pixels on which the two agree (expected 1.00000: the dropped weights add < 1e-30).
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

    import vos_core.inference.feature_bank as feature_bank
    from benchmarks.bench_precision import segment
    from vos_core import SegmenterConfig
    from vos_core.model import SHIPPED_CHECKPOINT, load_model
    from vos_train.data import DavisIndex

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--sequence", default="car-shadow")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from benchmarks.machine import command_line, describe_machine

    print(f"command: {command_line()}")
    print(f"machine: {describe_machine(a.threads)}", flush=True)
    model = load_model(a.checkpoint)
    index = DavisIndex(a.data, sequences=[a.sequence])
    pairs = [index.load(a.sequence, s, cache=False) for s in index.frames[a.sequence][: a.frames]]
    frames, first = [p[0] for p in pairs], pairs[0][1]
    config = SegmenterConfig(keep_probs=False, keep_uncertainty=False)
    dropping = feature_bank.drop_subnormal_
    modes = {"dropped (default)": dropping, "kept": lambda attn: attn}
    runs = {m: [] for m in modes}
    steps = {m: [] for m in modes}
    masks = {}
    for _ in range(a.repeats):
        for name, fn in modes.items():
            feature_bank.drop_subnormal_ = fn
            try:
                m, seconds, st = segment(model, frames, first, "fp32", None)
            finally:
                feature_bank.drop_subnormal_ = dropping
            runs[name].append(seconds)
            steps[name] += st[1:]  # the annotated frame's step is no segmentation
            masks.setdefault(name, m)
    h, w = frames[0].shape[:2]
    print(f"\n{a.sequence}: {len(frames)} frames {w}x{h}, working size {config.working_size_for(model) or 'input'}, "
          f"checkpoint {a.checkpoint}, fp32, {a.threads} threads, {a.repeats} alternating runs each")
    print("| subnormal attention weights | frames/s (best run) | frames/s (median step) | speed vs kept (median step) "
          "| mask pixels equal to kept |")
    print("|---|---|---|---|---|")
    kept_step = float(np.median(steps["kept"]))
    for name in modes:
        agree = float(np.mean([(x == y).mean() for x, y in zip(masks[name], masks["kept"])]))
        med = float(np.median(steps[name]))
        print(f"| {name} | {len(frames) / min(runs[name]):.2f} | {1 / med:.2f} | {kept_step / med:.2f}x | {agree:.5f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
