"""A corpus of many tiny synthetic videos and its Parquet manifest, for the job's fixed cost per video.

    python benchmarks/make_tiny_corpus.py /tmp/tiny --videos 10000               # 4 frames of 64x96 each
    python benchmarks/make_tiny_corpus.py /tmp/tiny --videos 1000 --frames 4 --height 64 --width 96

Each video is a folder of JPEG frames (a bright square moving over fixed noise, one seed per
video) and a first-frame id-map PNG of that square (object 1). ``--clips K`` writes only K
distinct videos and lists them ``--videos`` times under distinct ids (``vid0000123``), to keep
the disk small for very large manifests; the default writes every video. The manifest is
``<root>/manifest.parquet`` (written in row groups, never held whole), columns ``video_id``,
``video_uri``, ``annotations_uri``. ``--manifest-only`` rewrites the manifest for clips that
are already there.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

#: Manifest rows per Parquet row group (and per write).
ROWS_PER_GROUP = 65_536


def write_clip(folder: Path, frames: int, h: int, w: int, seed: int) -> tuple[Path, Path]:
    """One video: ``frames`` JPEGs and the mask of frame 0. Returns (frames folder, mask PNG)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    d = folder / "frames"
    d.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
    side = max(4, min(h, w) // 4)
    y0 = int(rng.integers(0, h - side))
    x0 = int(rng.integers(0, w - side - 2 * frames)) if w > side + 2 * frames else 0
    for i in range(frames):
        img = base.copy()
        img[y0:y0 + side, x0 + 2 * i:x0 + 2 * i + side] = (230, 200, 40)
        Image.fromarray(img).save(d / f"{i:05d}.jpg", quality=90)
    ids = np.zeros((h, w), dtype=np.uint8)
    ids[y0:y0 + side, x0:x0 + side] = 1
    mask = folder / "mask.png"
    Image.fromarray(ids, mode="L").save(mask)
    return d, mask


def make(root: Path, videos: int, frames: int = 4, h: int = 64, w: int = 96, clips: int | None = None,
         manifest_only: bool = False) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    clips = min(clips or videos, videos)
    if not manifest_only:
        for c in range(clips):
            write_clip(root / "clips" / f"c{c:07d}", frames, h, w, seed=c)
    manifest = root / "manifest.parquet"
    schema = pa.schema([("video_id", pa.string()), ("video_uri", pa.string()), ("annotations_uri", pa.string())])
    with pq.ParquetWriter(manifest, schema) as wr:
        for lo in range(0, videos, ROWS_PER_GROUP):
            n = np.arange(lo, min(videos, lo + ROWS_PER_GROUP))
            folders = [str(root / "clips" / f"c{c:07d}") for c in n % clips]
            wr.write_table(pa.table({"video_id": [f"vid{i:07d}" for i in n],
                                     "video_uri": [f + "/frames" for f in folders],
                                     "annotations_uri": [f + "/mask.png" for f in folders]}, schema=schema))
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path)
    p.add_argument("--videos", type=int, default=10_000)
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--clips", type=int, default=None, help="distinct videos written (default: all of them)")
    p.add_argument("--manifest-only", action="store_true", help="only (re)write the manifest")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    m = make(args.root, args.videos, args.frames, args.height, args.width, args.clips, args.manifest_only)
    print(f"{m}: {args.videos} videos of {args.frames} frames {args.height}x{args.width} "
          f"({min(args.clips or args.videos, args.videos)} distinct) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
