"""J&F and speed of one checkpoint in fp32 and in bf16 autocast, on DAVIS-layout sequences: one table.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_precision.py                 # shipped weights, DAVIS-2016 val
    python benchmarks/bench_precision.py --checkpoint new.pth --precisions fp32,bf16

The DAVIS-2016 semi-supervised protocol: each sequence is segmented from its first frame's mask only
(``Segmenter.run`` with ``{0: mask}``), at the checkpoint's working size (the ``working_size`` it records;
``--size`` overrides; a checkpoint that records none is run at ``--fallback-size``, the shipped model
card's 240), and scored with ``vos_core.metrics.evaluate_sequence`` (the DAVIS toolkit's J and F, first and
last frame unscored). Overall J and F are means over the sequences' objects (over sequences for
single-object DAVIS-2016); J&F = (J + F) / 2.

Per sequence the precisions run one after the other on the same decoded frames (alternating, so a busy
machine slows them alike); frames/s counts the whole run from the annotated frame, model preparation
excluded. The last column is the share of pixels (all frames, input size) where bf16's mask equals fp32's.

The rule this measures (issue 15): bf16 becomes the CPU default only where J&F moves by at most
``--rule`` (0.002) against fp32. The verdict line says whether it does; nothing is changed here.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "davis16-val-public"
#: the shipped weights' model card: trained on 160x160 crops of 240p frames, run at shorter side 240
FALLBACK_SIZE = 240


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 natively (AVX-512 BF16 or AMX): where bf16 autocast is a speed-up."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def segment(model, frames, first_mask, precision: str, size: int | None, budget: int | None = None,
            **settings) -> tuple[list[np.ndarray], float, list[float]]:
    """Masks of every frame (frame 0: the annotation as the Segmenter returns it), the whole run's seconds
    and each step's seconds."""
    from vos_core import Segmenter, SegmenterConfig

    config = SegmenterConfig(precision=precision, size=size, keep_probs=False, keep_uncertainty=False,
                             **({"budget": budget} if budget else {}), **settings)
    seg = Segmenter(model, config)
    masks, steps = [], []
    t0 = tp = time.perf_counter()
    for r in seg.run(frames, {0: first_mask}):
        masks.append(r.mask)
        now = time.perf_counter()
        steps.append(now - tp)
        tp = now
    return masks, time.perf_counter() - t0, steps


def score(gt: list[np.ndarray], masks: list[np.ndarray]) -> dict:
    from vos_core.metrics import evaluate_sequence

    sc = evaluate_sequence(gt, masks)
    objs = sc["objects"]
    return {"J": sc["J_mean"], "F": sc["F_mean"], "JF": (sc["J_mean"] + sc["F_mean"]) / 2, "objects": len(objs),
            "J_objects": [o["J_mean"] for o in objs.values()], "F_objects": [o["F_mean"] for o in objs.values()]}


def run(checkpoint: str, data: str, sequences: list[str] | None, precisions: list[str], size: int | None,
        max_frames: int | None, fallback_size: int = FALLBACK_SIZE, log=print) -> dict:
    """Every sequence in every precision. Returns {"size", "size_source", "sequences": {seq: {precision:
    {...}}}, "overall": {precision: {...}}}."""
    from vos_core.model import load_model
    from vos_train.data import DavisIndex

    model = load_model(checkpoint)
    if size is not None:
        work, source = size or None, "--size" if size else "input size (--size 0)"
    elif model.working_size:
        work, source = model.working_size, "the checkpoint's working_size"
    else:
        work, source = fallback_size, f"the checkpoint records none: --fallback-size {fallback_size}"
    index = DavisIndex(data, sequences=sequences)
    out = {"size": work, "size_source": source, "sequences": {}, "overall": {}}
    for seq in index.sequences:
        stems = index.frames[seq][:max_frames] if max_frames else index.frames[seq]
        pairs = [index.load(seq, s, cache=False) for s in stems]
        frames, gt = [p[0] for p in pairs], [p[1] for p in pairs]
        res, ref_masks = {}, None
        for p in precisions:
            masks, seconds, steps = segment(model, frames, gt[0], p, work)
            r = score(gt, masks) | {"frames": len(frames), "seconds": seconds, "fps": len(frames) / seconds,
                                    "fps_median_step": 1 / float(np.median(steps[1:])) if len(steps) > 1 else None}
            if ref_masks is None:
                ref_masks = masks
            else:
                r["agree_with_first"] = float(np.mean([(a == b).mean() for a, b in zip(masks, ref_masks)]))
            res[p] = r
            log(f"  {seq} {p}: J&F {r['JF']:.4f} (J {r['J']:.4f}, F {r['F']:.4f}), {r['fps']:.2f} frames/s")
        out["sequences"][seq] = res
    for p in precisions:
        js = [j for s in out["sequences"].values() for j in s[p]["J_objects"]]
        fs = [f for s in out["sequences"].values() for f in s[p]["F_objects"]]
        frames = sum(s[p]["frames"] for s in out["sequences"].values())
        seconds = sum(s[p]["seconds"] for s in out["sequences"].values())
        j, f = float(np.mean(js)), float(np.mean(fs))
        out["overall"][p] = {"J": j, "F": f, "JF": (j + f) / 2, "frames": frames, "seconds": seconds,
                             "fps": frames / seconds}
        agrees = [s[p]["agree_with_first"] for s in out["sequences"].values() if "agree_with_first" in s[p]]
        if agrees:
            n = [s[p]["frames"] for s in out["sequences"].values()]
            out["overall"][p]["agree_with_first"] = float(np.average(agrees, weights=n))
    return out


def table(result: dict, precisions: list[str]) -> str:
    base = precisions[0]
    others = precisions[1:]
    head = ["sequence", "frames"] + [f"{p} J / F / J&F" for p in precisions] + \
        [f"Δ J&F {p} − {base}" for p in others] + [f"{p} frames/s" for p in precisions] + \
        [f"{p} / {base} speed" for p in others] + [f"mask pixels {p} = {base}" for p in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = list(result["sequences"].items()) + [("**overall**", result["overall"])]
    for name, res in rows:
        cells = [name, str(res[base]["frames"])]
        cells += [f"{res[p]['J']:.4f} / {res[p]['F']:.4f} / {res[p]['JF']:.4f}" for p in precisions]
        cells += [f"{res[p]['JF'] - res[base]['JF']:+.4f}" for p in others]
        cells += [f"{res[p]['fps']:.2f}" for p in precisions]
        cells += [f"{res[p]['fps'] / res[base]['fps']:.2f}x" for p in others]
        cells += [f"{res[p]['agree_with_first']:.5f}" if "agree_with_first" in res[p] else "-" for p in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(result: dict, precisions: list[str], rule: float) -> list[str]:
    base = result["overall"][precisions[0]]["JF"]
    out = []
    for p in precisions[1:]:
        d = result["overall"][p]["JF"] - base
        ok = abs(d) <= rule
        out.append(f"{p}: overall J&F {result['overall'][p]['JF']:.4f} against {precisions[0]} {base:.4f}, "
                   f"difference {d:+.4f}: {'within' if ok else 'OUTSIDE'} the ±{rule:g} rule "
                   f"({'may become' if ok else 'must not become'} the CPU default on these weights)")
    return out


def main(argv=None) -> int:
    import torch

    from vos_core.inference.config import PRECISIONS
    from vos_core.model import SHIPPED_CHECKPOINT

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="DAVIS-layout root (JPEGImages/<seq>, Annotations/<seq>)")
    ap.add_argument("--sequences", default="", help="comma-separated (default: every sequence under --data)")
    ap.add_argument("--precisions", default="fp32,bf16", help="the first is the baseline the others are compared to")
    ap.add_argument("--size", type=int, default=None,
                    help="working size, shorter side (default: the checkpoint's; 0: the input size)")
    ap.add_argument("--fallback-size", type=int, default=FALLBACK_SIZE,
                    help="working size for a checkpoint that records none (the shipped model card's 240)")
    ap.add_argument("--max-frames", type=int, default=0, help="first N frames of each sequence (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rule", type=float, default=0.002, help="largest |Δ J&F| for the low precision to be the default")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    precisions = [p for p in a.precisions.split(",") if p]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or len(precisions) < 1:
        ap.error(f"--precisions: unknown {bad} (choose from {list(PRECISIONS)})")
    if not Path(a.data).is_dir():
        ap.error(f"--data {a.data}: not a folder")
    torch.set_num_threads(a.threads)
    from benchmarks.machine import command_line, describe_machine

    print(f"command: {command_line()}")
    print(f"machine: {describe_machine(a.threads)}; native bf16 (oneDNN): {bf16_supported()}; os.nice {os.nice(0)}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; load average at start "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if "bf16" in precisions and not bf16_supported():
        print("warning: this CPU has no native bf16 (AVX-512 BF16 / AMX): bf16 is emulated, its speed says nothing")
    t0 = time.time()
    res = run(a.checkpoint, a.data, [s for s in a.sequences.split(",") if s] or None, precisions, a.size,
              a.max_frames or None, a.fallback_size)
    print(f"\ncheckpoint {a.checkpoint}; data {a.data}; working size {res['size']} ({res['size_source']}); "
          f"first-frame mask only, DAVIS toolkit J and F (vos_core.metrics), first and last frame unscored; "
          f"{time.time() - t0:.0f} s")
    print(table(res, precisions))
    for line in verdict(res, precisions, a.rule):
        print(line)
    if a.json:
        a.json.write_text(json.dumps(res | {"checkpoint": str(a.checkpoint), "rule": a.rule}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
