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


def main(argv=None) -> int:
    import vos_core.inference.feature_bank as feature_bank
    from benchmarks import sequence_ab
    from benchmarks.bench_precision import segment
    from vos_core import SegmenterConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sequence_ab.add_arguments(ap)
    a = ap.parse_args(argv)
    model, frames, first = sequence_ab.load(a)
    config = SegmenterConfig(keep_probs=False, keep_uncertainty=False)
    dropping = feature_bank.drop_subnormal_

    def run_with(fn):
        feature_bank.drop_subnormal_ = fn
        try:
            return segment(model, frames, first, "fp32", None)
        finally:
            feature_bank.drop_subnormal_ = dropping

    modes = {"dropped (default)": lambda: run_with(dropping), "kept": lambda: run_with(lambda attn: attn)}
    runs, steps, masks = sequence_ab.alternate(modes, a.repeats)
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
