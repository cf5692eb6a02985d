"""Makes docs/sample_overlay.png: a few frames of the sample video with their pseudo-labels drawn
(top row) and the uncertainty map U of the same frames (bottom row, dark = confident).

    python docs/make_picture.py                                  # the shipped weights
    python docs/make_picture.py --checkpoint my.pth --out /tmp/x.png

Segments jobs/sample_corpus/davis/JPEGImages/judo-a from its annotations with vos_core's
Segmenter (as `vos segment` does) and draws with jobs.inspect.draw (as `vos render` does).
Only commit a picture made with trained weights.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "jobs", "sample_corpus", "davis")


def pick(indices: list[int], annotated: set[int], count: int) -> list[int]:
    """``count`` frames spread over the video, preferring predicted (not annotated) ones."""
    pool = [i for i in indices if i not in annotated] or indices
    at = np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int)
    return [pool[i] for i in sorted(set(at))]


def make_picture(checkpoint: str, frames_uri: str, annotations_uri: str, count: int = 4, size: int | None = None,
                 device: str = "cpu") -> np.ndarray:
    from vos_core import Segmenter, SegmenterConfig, load_model
    from vos_core.io import load_annotations, open_frames

    from jobs.inspect.draw import draw_objects, heatmap, hstack, label

    frames = open_frames(frames_uri)
    annotations = load_annotations(annotations_uri, frame_names=frames.names)
    segmenter = Segmenter(load_model(checkpoint, device=device), SegmenterConfig(size=size, keep_probs=True))
    results = {r.index: r for r in segmenter.run(frames, annotations)}  # a short video: all kept
    shown = pick(sorted(results), set(annotations), count)
    overlays, heatmaps = [], []
    for i in shown:
        r = results[i]
        rgb = frames.read(i)
        masks = [(oid, r.mask == oid) for oid in r.object_ids if oid != 0]
        overlays.append(label(draw_objects(rgb, masks), f"frame {i}"))
        heatmaps.append(label(heatmap(r.uncertainty, *rgb.shape[:2]), f"U, frame {i}"))
    top, bottom = hstack(overlays), hstack(heatmaps)
    return np.concatenate([top, np.full((4, top.shape[1], 3), 255, np.uint8), bottom])


def main(argv: list[str] | None = None) -> int:
    from vos_core.model import SHIPPED_CHECKPOINT

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=SHIPPED_CHECKPOINT)
    p.add_argument("--frames", default=os.path.join(SAMPLE, "JPEGImages", "judo-a"))
    p.add_argument("--annotations", default=os.path.join(SAMPLE, "Annotations", "judo-a"))
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "sample_overlay.png"))
    p.add_argument("--count", type=int, default=4, help="frames to show (3-4 fit a README)")
    p.add_argument("--size", type=int, default=0, help="shorter side to process at; 0 = the input size")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if "://" not in args.checkpoint and not os.path.exists(args.checkpoint):
        print(f"error: no checkpoint at {args.checkpoint}; pass --checkpoint PATH", file=sys.stderr)
        return 2
    from jobs.inspect.draw import write_png

    picture = make_picture(args.checkpoint, args.frames, args.annotations, args.count, args.size or None, args.device)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_png(args.out, picture)
    print(f"wrote {args.out} ({picture.shape[1]}x{picture.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
