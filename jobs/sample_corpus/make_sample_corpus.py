"""Rebuilds this sample corpus from the MIT-licensed Cutie "judo" example
(16 frames, 854x480, masks at frames 0, 5, 8 and 13, each adding an object).

    python jobs/sample_corpus/make_sample_corpus.py /path/to/cutie-judo

Frames are downscaled to 320x180 (JPEG quality 80), masks with nearest
neighbour (which also fixes the source's 853-pixel-wide 00005.png).
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
W, H = 320, 180


def _palette() -> bytes:
    ids = np.arange(256)
    pal = np.zeros((256, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            pal[:, channel] |= ((ids >> (3 * shift + channel)) & 1) << (7 - shift)
    return pal.astype(np.uint8).tobytes()


def _frame(src: Path, i: int) -> np.ndarray:
    rgb = np.array(Image.open(src / "JPEGImages" / f"{i:05d}.jpg").convert("RGB"))
    return cv2.resize(rgb, (W, H), interpolation=cv2.INTER_AREA)


def _mask(src: Path, i: int) -> np.ndarray:
    ids = np.array(Image.open(src / "Annotations" / f"{i:05d}.png"))
    return cv2.resize(ids, (W, H), interpolation=cv2.INTER_NEAREST)


def _save_jpg(rgb: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, quality=80)


def _save_png(ids: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(ids.astype(np.uint8), mode="L")
    img.putpalette(_palette())
    img.save(path, optimize=True)


def main(src: str) -> None:
    src = Path(src)
    davis = HERE / "davis"
    # judo-a: frames 0..7, masks at 0 (object 1) and 5 (object 2 appears later)
    for j, i in enumerate(range(0, 8)):
        _save_jpg(_frame(src, i), davis / "JPEGImages" / "judo-a" / f"{j:05d}.jpg")
    for i in (0, 5):
        _save_png(_mask(src, i), davis / "Annotations" / "judo-a" / f"{i:05d}.png")
    # judo-b: frames 5..15 renumbered from 0, masks at source frames 5, 8, 13
    for j, i in enumerate(range(5, 16)):
        _save_jpg(_frame(src, i), davis / "JPEGImages" / "judo-b" / f"{j:05d}.jpg")
    for i in (5, 8, 13):
        _save_png(_mask(src, i), davis / "Annotations" / "judo-b" / f"{i - 5:05d}.png")
    # judo.mp4: all 16 frames (MPEG-4 part 2, 8 fps) + one PNG: the mask of frame 0
    videos = HERE / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(videos / "judo.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 8, (W, H))
    for i in range(16):
        writer.write(cv2.cvtColor(_frame(src, i), cv2.COLOR_RGB2BGR))
    writer.release()
    _save_png(_mask(src, 0), videos / "judo-00000.png")
    rows = [
        {"video_id": "judo-a", "video_uri": "davis/JPEGImages/judo-a", "annotations_uri": "davis/Annotations/judo-a",
         "start_frame": ""},
        {"video_id": "judo-b", "video_uri": "davis/JPEGImages/judo-b", "annotations_uri": "davis/Annotations/judo-b",
         "start_frame": ""},
        {"video_id": "judo-mp4", "video_uri": "videos/judo.mp4", "annotations_uri": "videos/judo-00000.png",
         "start_frame": "0"},
    ]
    with open(HERE / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(HERE.parents[2] / "shared" / "data" / "cutie-judo"))
