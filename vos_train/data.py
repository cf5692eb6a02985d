"""Training data for AFB-URR: static-image pseudo-videos (stage 1) and real
DAVIS clips (stage 2).

Everything is read through fsspec, so roots may be local paths or any fsspec
URI (``s3://...``, ``memory://...``). A sample is

    frames: T×3×H×W float32 in [0, 1]
    labels: T×H×W int64, 0 = background, 1..n = objects (n ≤ max_objects)
    n:      number of objects present in frame 0

and :func:`collate` pads a list of samples to a common object count K
(background included) with a validity mask, so absent objects can be masked
out of the soft aggregation.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import cv2
import fsspec
import numpy as np
import torch

from vos_core.io import read_id_map
from vos_core.io._fs import entries

cv2.setNumThreads(1)

IMG_EXT = (".jpg", ".jpeg", ".png")


# --------------------------------------------------------------------------- io
def _fs(root: str):
    fs, path = fsspec.core.url_to_fs(str(root))
    return fs, path.rstrip("/")


def _join(root: str, *parts: str) -> str:
    return "/".join([str(root).rstrip("/"), *parts])


def read_rgb(uri: str) -> np.ndarray:
    with fsspec.open(uri, "rb") as f:
        buf = np.frombuffer(f.read(), np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{uri}: not an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_ids(uri: str) -> np.ndarray:
    """An id-map PNG (grey, palette or 16-bit; vos_core.io's reader and its errors) as int64."""
    return read_id_map(uri).astype(np.int64)


def load_pair(image_uri: str, ids_uri: str) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its id map, the map resized (nearest) to the image where they differ."""
    img, ids = read_rgb(image_uri), read_ids(ids_uri)
    if ids.shape != img.shape[:2]:
        ids = cv2.resize(ids.astype(np.uint16), (img.shape[1], img.shape[0]),
                         interpolation=cv2.INTER_NEAREST).astype(np.int64)
    return img, ids


def list_names(root: str, sub: str, exts=IMG_EXT) -> list[str]:
    fs, base = _fs(root)
    out = []
    for p in fs.ls(f"{base}/{sub}", detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        if not exts or name.lower().endswith(exts):
            out.append(name)
    return sorted(out)


def list_dirs(root: str, sub: str) -> list[str]:
    fs, base = _fs(root)
    return sorted(d["name"].rstrip("/").rsplit("/", 1)[-1] for d in entries(fs, f"{base}/{sub}")
                  if d.get("type") == "directory")  # entries(): sequence folders may be symbolic links


class DavisIndex:
    """DAVIS layout: <root>/JPEGImages/<seq>/*.jpg, <root>/Annotations/<seq>/*.png."""

    def __init__(self, root: str, sequences: list[str] | None = None, exclude: list[str] | None = None):
        self.root = str(root)
        seqs = sequences or list_dirs(self.root, "JPEGImages")
        seqs = [s for s in seqs if s not in set(exclude or [])]
        self.frames: dict[str, list[str]] = {}
        for s in seqs:
            jpgs = [n.rsplit(".", 1)[0] for n in list_names(self.root, f"JPEGImages/{s}")]
            anns = {n.rsplit(".", 1)[0] for n in list_names(self.root, f"Annotations/{s}", (".png",))}
            stems = [j for j in jpgs if j in anns]
            if len(stems) >= 2:
                self.frames[s] = stems
        if not self.frames:
            raise ValueError(f"{root}: no DAVIS sequences with annotated frames found")
        self.sequences = sorted(self.frames)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def load(self, seq: str, stem: str, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
        key = f"{seq}/{stem}"
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        pair = load_pair(_join(self.root, "JPEGImages", seq, stem + ".jpg"),
                         _join(self.root, "Annotations", seq, stem + ".png"))
        if cache:
            self._cache[key] = pair
        return pair


class CocoIndex:
    """coco128-seg: images/train2017/*.jpg with instance_masks/*.png id maps."""

    def __init__(self, root: str):
        self.root = str(root)
        masks = {n.rsplit(".", 1)[0] for n in list_names(self.root, "instance_masks", (".png",))}
        imgs = list_names(self.root, "images/train2017")
        self.items = [n for n in imgs if n.rsplit(".", 1)[0] in masks]
        if not self.items:
            raise ValueError(f"{root}: no images with instance masks found")
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        name = self.items[i]
        hit = self._cache.get(name)
        if hit is None:
            hit = self._cache[name] = load_pair(_join(self.root, "images/train2017", name),
                                                _join(self.root, "instance_masks", name.rsplit(".", 1)[0] + ".png"))
        return hit


# ---------------------------------------------------------------- augmentation
def colour_jitter(img: np.ndarray, rng: random.Random, strength: float = 1.0) -> np.ndarray:
    """Brightness/contrast/saturation/hue jitter on uint8 RGB; returns float32 [0,1]."""
    x = img.astype(np.float32) / 255.0
    b = 1 + rng.uniform(-0.3, 0.3) * strength
    c = 1 + rng.uniform(-0.3, 0.3) * strength
    s = 1 + rng.uniform(-0.3, 0.3) * strength
    x = x * b
    mean = x.mean()
    x = (x - mean) * c + mean
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * s + grey
    h = rng.uniform(-0.03, 0.03) * strength
    if abs(h) > 1e-4:  # small hue rotation in YIQ-like space
        th = 2 * math.pi * h
        cs, sn = math.cos(th), math.sin(th)
        u = np.float32(1 / 3)
        w = np.float32(math.sqrt(1 / 3))
        m = np.array([[cs + (1 - cs) * u, u * (1 - cs) - w * sn, u * (1 - cs) + w * sn],
                      [u * (1 - cs) + w * sn, cs + u * (1 - cs), u * (1 - cs) - w * sn],
                      [u * (1 - cs) - w * sn, u * (1 - cs) + w * sn, cs + u * (1 - cs)]], np.float32)
        x = x @ m.T
    return np.clip(x, 0, 1)


def _affine(center_src, center_dst, scale, angle_deg, shear_deg=0.0, flip=False) -> np.ndarray:
    """2×3 matrix: source point -> destination, rotating/scaling/shearing about center_src."""
    a = math.radians(angle_deg)
    sh = math.tan(math.radians(shear_deg))
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    s = np.array([[1, sh], [0, 1]])
    f = np.array([[-1, 0], [0, 1]]) if flip else np.eye(2)
    lin = scale * r @ s @ f
    t = np.asarray(center_dst, float) - lin @ np.asarray(center_src, float)
    return np.hstack([lin, t[:, None]]).astype(np.float32)


def _warp(img, ids, m, size):
    out_img = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    out_ids = cv2.warpAffine(ids.astype(np.uint8), m, (size, size), flags=cv2.INTER_NEAREST,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out_img, out_ids.astype(np.int64)


def _pick_objects(ids: np.ndarray, max_objects: int, rng: random.Random, min_area: int) -> list[int]:
    vals, counts = np.unique(ids, return_counts=True)
    cand = [int(v) for v, c in zip(vals, counts) if v != 0 and c >= min_area]
    rng.shuffle(cand)
    return cand[:max_objects]


def _relabel(ids: np.ndarray, keep: list[int]) -> np.ndarray:
    lut = np.zeros(max(int(ids.max()), max(keep, default=0)) + 1, np.int64)
    for j, v in enumerate(keep, 1):
        lut[v] = j
    return lut[ids]


@dataclass
class Sample:
    frames: torch.Tensor  # T×3×H×W
    labels: torch.Tensor  # T×H×W
    n: int  # objects (without background)


def _to_sample(frames: list[np.ndarray], labels: list[np.ndarray], n: int) -> Sample:
    f = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous().float()
    lab = torch.from_numpy(np.stack(labels)).long()
    return Sample(f, lab, n)


def pseudo_video(img: np.ndarray, ids: np.ndarray, rng: random.Random, crop: int, frames: int,
                 max_objects: int = 3) -> Sample | None:
    """Stage 1: one image -> ``frames`` frames by independent random affine
    transforms around a shared base view, plus colour jitter per frame.
    Objects are picked from frame 0's visible instances (up to ``max_objects``)."""
    h, w = img.shape[:2]
    min_area = max(64, int(0.002 * h * w))
    keep = _pick_objects(ids, max_objects, rng, min_area)
    if not keep:
        return None
    lab = _relabel(ids, keep)
    # base view: shorter side -> crop * U(1.0, 1.6), centred near a random picked object
    base_scale = crop * rng.uniform(1.0, 1.6) / min(h, w)
    ys, xs = np.nonzero(lab == rng.randint(1, len(keep)))
    cy, cx = float(ys.mean()), float(xs.mean())
    jit = 0.25 * crop / base_scale
    cy = min(max(cy + rng.uniform(-jit, jit), 0), h - 1)
    cx = min(max(cx + rng.uniform(-jit, jit), 0), w - 1)
    flip = rng.random() < 0.5
    out_f, out_l = [], []
    for t in range(frames):
        m = _affine((cx, cy), (crop / 2 + rng.uniform(-0.12, 0.12) * crop, crop / 2 + rng.uniform(-0.12, 0.12) * crop),
                    base_scale * rng.uniform(0.85, 1.15), rng.uniform(-20, 20), rng.uniform(-10, 10), flip)
        fi, li = _warp(img, lab, m, crop)
        out_f.append(colour_jitter(fi, rng))
        out_l.append(li)
    present = [j for j in range(1, len(keep) + 1) if (out_l[0] == j).sum() >= 32]
    if not present:
        return None
    if len(present) < len(keep):  # objects absent from frame 0 are dropped everywhere
        remap = np.zeros(len(keep) + 1, np.int64)
        for new, old in enumerate(present, 1):
            remap[old] = new
        out_l = [remap[x] for x in out_l]
    return _to_sample(out_f, out_l, len(present))


def davis_clip(index: DavisIndex, seq: str, rng: random.Random, crop: int, frames: int, max_skip: int = 5,
               tries: int = 10) -> Sample | None:
    """Stage 2: ``frames`` frames of one sequence in order, consecutive gaps in
    1..max_skip, one shared random scale/crop/flip, mild colour jitter."""
    stems = index.frames[seq]
    span = min(len(stems) - 1, (frames - 1) * max_skip)
    gaps = [rng.randint(1, max_skip) for _ in range(frames - 1)]
    while sum(gaps) > span:
        j = max(range(len(gaps)), key=lambda g: gaps[g])
        gaps[j] -= 1
        if gaps[j] == 0:
            return None
    start = rng.randint(0, len(stems) - 1 - sum(gaps))
    idx = [start]
    for g in gaps:
        idx.append(idx[-1] + g)
    if rng.random() < 0.2:  # sometimes play backwards
        idx = idx[::-1]
    data = [index.load(seq, stems[i]) for i in idx]
    h, w = data[0][0].shape[:2]
    keep = _pick_objects(data[0][1], 3, rng, 32)
    if not keep:
        return None
    keep.sort()
    for _ in range(tries):
        scale = crop * rng.uniform(0.9, 1.35) / min(h, w)
        angle = rng.uniform(-8, 8)
        flip = rng.random() < 0.5
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.35, 0.65) * h
        m = _affine((cx, cy), (crop / 2, crop / 2), scale, angle, 0.0, flip)
        _, l0 = _warp(data[0][0], _relabel(data[0][1], keep), m, crop)
        if (l0 > 0).sum() >= 0.01 * crop * crop:
            break
    else:
        return None
    jseed = rng.random()
    out_f, out_l = [], []
    for t, (img, ids) in enumerate(data):
        # a little per-frame jitter of the view on top of the real motion
        mt = m.copy() if t == 0 else _affine((cx, cy), (crop / 2 + rng.uniform(-4, 4), crop / 2 + rng.uniform(-4, 4)),
                                             scale * rng.uniform(0.97, 1.03), angle + rng.uniform(-2, 2), 0.0, flip)
        fi, li = _warp(img, _relabel(ids, keep), mt, crop)
        out_f.append(colour_jitter(fi, random.Random(jseed + 0.001 * t), strength=0.5))
        out_l.append(li)
    return _to_sample(out_f, out_l, len(keep))


class SampleStream:
    """Infinite random samples for one stage. Stage 1 mixes COCO pseudo-videos
    with pseudo-videos of single DAVIS frames; stage 2 gives real DAVIS clips, and with
    ``static_fraction`` > 0 that share of COCO pseudo-videos among them (more object variety than the
    few training videos have)."""

    def __init__(self, stage: int, crop: int, frames: int, davis: DavisIndex | None = None,
                 coco: CocoIndex | None = None, seed: int = 0, max_skip: int = 5, coco_fraction: float = 0.7,
                 max_objects: int = 3, static_fraction: float = 0.0):
        if stage == 1 and davis is None and coco is None:
            raise ValueError("stage 1 needs --coco-root and/or --data-root")
        if stage == 2 and davis is None:
            raise ValueError("stage 2 needs --data-root (DAVIS layout)")
        self.stage, self.crop, self.frames = stage, crop, frames
        self.davis, self.coco = davis, coco
        self.rng = random.Random(seed)
        self.max_skip = max_skip
        self.coco_fraction = coco_fraction if (coco is not None and davis is not None) else (1.0 if coco else 0.0)
        self.max_objects = max_objects
        if static_fraction and coco is None:
            raise ValueError("a static fraction in stage 2 needs --coco-root")
        self.static_fraction = static_fraction

    def one(self) -> Sample:
        rng = self.rng
        for _ in range(100):
            if self.stage == 1:
                if rng.random() < self.coco_fraction:
                    img, ids = self.coco.load(rng.randrange(len(self.coco.items)))
                else:
                    seq = rng.choice(self.davis.sequences)
                    img, ids = self.davis.load(seq, rng.choice(self.davis.frames[seq]))
                s = pseudo_video(img, ids, rng, self.crop, self.frames, self.max_objects)
            elif self.static_fraction and rng.random() < self.static_fraction:
                img, ids = self.coco.load(rng.randrange(len(self.coco.items)))
                s = pseudo_video(img, ids, rng, self.crop, self.frames, self.max_objects)
            else:
                seq = rng.choice(self.davis.sequences)
                s = davis_clip(self.davis, seq, rng, self.crop, self.frames, self.max_skip)
            if s is not None:
                return s
        raise RuntimeError("could not draw a valid training sample in 100 tries")

    def batch(self, size: int):
        return collate([self.one() for _ in range(size)])


def collate(samples: list[Sample]):
    """-> frames B×T×3×H×W, labels B×T×H×W, valid B×K (K = 1 + max objects;
    valid[:, 0] is the background, always true)."""
    k = 1 + max(s.n for s in samples)
    valid = torch.zeros(len(samples), k, dtype=torch.bool)
    for i, s in enumerate(samples):
        valid[i, : s.n + 1] = True
    return torch.stack([s.frames for s in samples]), torch.stack([s.labels for s in samples]), valid
