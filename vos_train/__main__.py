"""python -m vos_train [train options] | python -m vos_train evaluate --ckpt CKPT --root DAVIS_ROOT"""
from __future__ import annotations

import argparse
import json
import sys

import fsspec
import torch


def evaluate_main(argv) -> int:
    from vos_core.model import load_model

    from .evaluate import evaluate_davis

    ap = argparse.ArgumentParser(prog="python -m vos_train evaluate", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--root", required=True, help="DAVIS-layout evaluation set")
    ap.add_argument("--sequences", default="", help="comma-separated (default: all)")
    ap.add_argument("--size", type=int, default=240, help="processing shorter side (0: full size)")
    ap.add_argument("--max-frames", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the scores here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = evaluate_davis(load_model(a.ckpt), a.root, [s for s in a.sequences.split(",") if s] or None,
                         a.size or None, a.max_frames or None)
    for seq, r in res.items():
        print(f"{seq:20s} J {r['J']:.4f}  F {r['F']:.4f}  J&F {r['JF']:.4f}  ({r['frames']} frames, {r['seconds']} s)")
    if a.json:
        with fsspec.open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "evaluate":
        return evaluate_main(argv[1:])
    from .trainer import parse_args, train

    res = train(parse_args(argv))
    print(json.dumps({k: v for k, v in res.items() if k != "losses"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
